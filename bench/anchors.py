"""The anchors' own virtual environments: dolma 1.2.1 and datatrove 0.10.1, side by side.

Benchmarks report dolmino's figures as ratios against the tools people would otherwise
use, measured in the same run on the same machine. The anchors cannot share dolmino's venv
(dolma pins an old botocore stack, datatrove wants its own extras), so each gets a venv
under `bench/.venvs/<name>` with the pins from DEVELOPERS.md, created on first use and
reused afterwards (a marker file records the pins it was made with). The packages an
anchor's figures depend on besides the anchor itself (its tokenizers, its fastText binding,
numpy, spaCy) are pinned too and reported with its version (`anchor_version`), so a ratio
says which tokenizer and fastText build it was measured against.

    python -m bench.anchors            # create / check both, print their interpreters
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"

ANCHORS: dict[str, tuple[str, ...]] = {
    # smart_open >= 7.4 (pulled in by dolma) reads .zst through `backports.zstd` on Python < 3.14;
    # without it every .jsonl.zst input fails inside `dolma tokens` and yields zero tokens.
    "dolma": ("dolma==1.2.1", "aiobotocore==2.5.4", "boto3==1.28.17", "botocore==1.31.17", "backports.zstd",
              # dolma's code taggers need its `code` extras
              "detect-secrets", "beautifulsoup4",
              # what the anchor's speed depends on, pinned to what dolma 1.2.1 resolved to (Dec 2026)
              "tokenizers==0.19.1", "fasttext-wheel==0.9.2", "numpy==1.26.4"),
    "datatrove": ("datatrove[processing]==0.10.1", "zstandard", "orjson",
                  "spacy==3.8.18",  # its English word tokenizer (repetition filter, MinHash)
                  # what the anchor's speed depends on, pinned to what datatrove 0.10.1 resolved to (Dec 2026)
                  "tokenizers==0.23.3", "fasttext-numpy2-wheel==0.9.2", "numpy==2.4.6"),
}


class AnchorUnavailable(RuntimeError):
    """An anchor's venv could not be created (no network to the registry, no wheel, ...)."""


def _python(root: Path) -> Path:
    return root / "bin" / "python"


def anchor_python(name: str, *, create: bool = True) -> Path:
    """The interpreter of anchor `name`'s venv, creating and installing it when missing."""
    if name not in ANCHORS:
        raise KeyError(f"unknown anchor {name!r}; known: {sorted(ANCHORS)}")
    root = VENVS / name
    marker = root / ".dolmino-anchor.json"
    pins = list(ANCHORS[name])
    if marker.exists() and json.loads(marker.read_text()).get("pins") == pins and _python(root).exists():
        return _python(root)
    if not create:
        raise AnchorUnavailable(f"anchor {name!r} has no venv at {root}; run `python -m bench.anchors`")
    root.parent.mkdir(parents=True, exist_ok=True)
    if not (marker.exists() and _python(root).exists()):
        # A venv made with other pins is upgraded in place (pip resolves the new pins);
        # only a missing or half-made one is created from scratch.
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
    cmd = [str(_python(root)), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AnchorUnavailable(f"pip install {' '.join(pins)} failed for anchor {name!r}:\n{result.stderr[-3000:]}")
    marker.write_text(json.dumps({"pins": pins}))
    return _python(root)


# Packages an anchor's figures depend on (the tokenizer, the fastText binding, numpy): their
# installed versions are reported next to the anchor's own, whichever of them the venv has.
REPORTED_PACKAGES = ("tokenizers", "fasttext", "fasttext-wheel", "fasttext-numpy2-wheel", "fasttext-numpy2",
                     "numpy", "spacy")


def anchor_packages(name: str) -> dict[str, str]:
    """{package: version} of the anchor's main package and of REPORTED_PACKAGES present in its venv."""
    package = ANCHORS[name][0].split("[")[0].split("==")[0]
    wanted = [package, *REPORTED_PACKAGES]
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for p in sys.argv[1:]:\n"
            "    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    out = subprocess.run([str(anchor_python(name)), "-c", code, *wanted], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def anchor_version(name: str) -> str:
    """The anchor's version with what its figures depend on, e.g. '1.2.1 (tokenizers 0.19.1, ...)'."""
    package = ANCHORS[name][0].split("[")[0].split("==")[0]
    versions = anchor_packages(name)
    main = versions.pop(package)
    return main + (" (" + ", ".join(f"{p} {v}" for p, v in versions.items()) + ")" if versions else "")


def main() -> int:
    status = 0
    for name in ANCHORS:
        try:
            print(f"{name}: {anchor_python(name)} ({anchor_version(name)})")
        except AnchorUnavailable as exc:
            print(f"{name}: unavailable: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parents[1])
    sys.exit(main())
