"""Interop check: OLMo-core's own dataset (OLMo-core 3.0.0) reads a dolmino build as the build meant it.

    python -m bench.interop_olmo_core build/mixes/demo               # sequence length 128
    python -m bench.interop_olmo_core build/mixes/demo --seq-len 4096
    python -m bench.interop_olmo_core build/mixes/demo --location s3://bucket/mixes/demo   # OLMo-core reads S3

OLMo-core runs in bench/.venvs/olmo-core (made on first use by bench/bench_trainer.py's
`olmo_core_python`), through README's own example ("Output format"), run as written but for the
build's path, the sequence length and the work directory (bench/anchor_scripts/olmo_core_read.py). Its instances, unshuffled,
are compared one by one with what the build meant them to be, taken from the sidecars rather than
the token files' EOS bytes: each part's documents (`start,end` rows) each followed by EOS 100257, cut
on its own into seq_len-token instances in part order, the tail dropped; where the build certifies
label masks, each document's mask (0 inside its repeated n-gram spans, 1 on its EOS, as
`filters.repeated_ngrams.repeated_ngram_mask` gives it). The trainer's `MemmapDataset` (trainer/data.py)
must give the same input ids, and the labels OLMo-core's `get_labels` gives (label mask and OLMo 2's
instance filter). The data loaders' orders differ by design (README "Training"), so the order is
not compared. Exit status 0 when everything agrees, 1 otherwise; the JSON on stdout says what differs.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EOS = 100257
READER = REPO / "bench" / "anchor_scripts" / "olmo_core_read.py"
README_SECTION = "### Output format"
MAX_LISTED = 10  # differences listed per kind; all are counted


def readme_snippet() -> str:
    """The OLMo-core example of README's "Output format" section (its one python block)."""
    text = (REPO / "README.md").read_text()
    section = text.split(README_SECTION, 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    if len(blocks) != 1:
        raise RuntimeError(f"README's {README_SECTION!r} holds {len(blocks)} python blocks, expected 1")
    return blocks[0]


def _parts(build: Path) -> list[Path]:
    return sorted((p for p in build.glob("part-*.npy") if not p.name.endswith(".label_mask.npy")),
                  key=lambda p: int(p.name[len("part-"):-len(".npy")]))


def expected_instances(build: Path, seq_len: int, label_mask: bool) -> dict:
    """What the build meant: per part, its sidecar's documents each ending in EOS (the ids before
    `end - 1` from the token file, the last one from the sidecar), cut into instances."""
    from dolmino.memmap import read_part
    from filters.repeated_ngrams import repeated_ngram_mask

    ids, masks, paths = [], [], []
    for part in _parts(build):
        tokens, rows = read_part(str(part))
        stream, mask = np.empty(len(tokens), dtype=np.uint32), np.ones(len(tokens), dtype=np.bool_)
        prev = 0
        for row in rows:
            start, end = row[0], row[1]
            if start != prev or end > len(tokens):
                raise ValueError(f"{part}: sidecar row {row[:3]} does not tile the token file")
            stream[start:end - 1], stream[end - 1] = tokens[start:end - 1], EOS
            if label_mask:
                mask[start:end - 1] = repeated_ngram_mask(np.asarray(tokens[start:end - 1]))
            prev = end
        if prev != len(tokens):
            raise ValueError(f"{part}: the sidecar covers {prev} of its {len(tokens)} tokens")
        n = len(tokens) // seq_len * seq_len
        ids.append(stream[:n].reshape(-1, seq_len))
        masks.append(mask[:n].reshape(-1, seq_len))
        paths.append(str(part))
    return {"input_ids": np.concatenate(ids), "label_mask": np.concatenate(masks), "paths": paths}


def olmo_core_instances(build: str, seq_len: int, work: Path, python: Path, label_mask: bool) -> dict:
    snippet = work / "readme_olmo_core.py"
    snippet.write_text(readme_snippet())
    out = work / "olmo_core_instances.npz"
    cmd = [str(python), str(READER), "--snippet", str(snippet), "--build", str(build), "--seq-len", str(seq_len),
           "--work-dir", str(work / "olmo-core-work"), "--out", str(out)] + ([] if label_mask else ["--no-label-masks"])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"OLMo-core could not read {build}:\n{proc.stderr[-3000:]}")
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


def _differing_rows(a: np.ndarray, b: np.ndarray) -> list[int]:
    if a.shape != b.shape:
        return [-1]
    return np.flatnonzero((a != b).reshape(len(a), -1).any(axis=1)).tolist()


def has_label_masks(build: Path) -> bool:
    """Whether the build certifies label masks (report.json), or holds some."""
    certified = json.loads((build / "report.json").read_text()).get("output", {}).get("files_sha256", {})
    return any(name.endswith(".label_mask.npy") for name in certified) or any(build.glob("part-*.label_mask.npy"))


def compare(build: Path, seq_len: int, olmo_core: dict) -> dict:
    """Instance by instance: OLMo-core against the build's meaning and against trainer/data.py."""
    from trainer.data import MemmapDataset

    label_mask = has_label_masks(build)
    want = expected_instances(build, seq_len, label_mask)
    trainer = MemmapDataset(build, seq_len)
    items = [trainer.instance(i) for i in range(len(trainer))]
    trainer_ids = np.stack([it.input_ids for it in items]).astype(np.uint32) if items else want["input_ids"][:0]
    trainer_labels = np.stack([it.labels for it in items]) if items else np.zeros((0, seq_len), np.int64)
    problems: dict[str, object] = {}
    if [Path(p).name for p in olmo_core["paths"]] != [Path(p).name for p in want["paths"]]:
        problems["paths"] = {"olmo_core": [str(p) for p in olmo_core["paths"]], "build": want["paths"]}
    checks = {"input_ids_vs_build": (olmo_core["input_ids"], want["input_ids"]),
              "input_ids_vs_trainer": (olmo_core["input_ids"], trainer_ids),
              "labels_vs_trainer": (olmo_core["labels"], trainer_labels)}
    if label_mask:
        checks["label_mask_vs_build"] = (olmo_core.get("label_mask", np.zeros(0, np.bool_)), want["label_mask"])
    for name, (got, expected) in checks.items():
        rows = _differing_rows(got, expected)
        if rows:
            problems[name] = {"instances": len(rows), "first": rows[:MAX_LISTED],
                              "shapes": [list(got.shape), list(expected.shape)]}
    return {"ok": not problems, "instances": int(len(olmo_core["input_ids"])), "seq_len": seq_len,
            "label_mask": label_mask, "masked_labels": int((~want["label_mask"]).sum()) if label_mask else 0,
            "filtered_instances": int(sum(it.filtered for it in items)), "problems": problems}


def run_check(build: Path, seq_len: int = 128, python: Path | None = None, location: str | None = None) -> dict:
    """`location`: where OLMo-core reads the build's parts (an s3:// copy of it), if not from `build`."""
    if python is None:
        from bench.bench_trainer import olmo_core_python

        python = olmo_core_python()
    with tempfile.TemporaryDirectory(prefix="dolmino-olmo-core-") as tmp:
        olmo_core = olmo_core_instances(location or str(build.resolve()), seq_len, Path(tmp), python,
                                        has_label_masks(build))
        return compare(build, seq_len, olmo_core)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.interop_olmo_core", description=__doc__.split("\n")[0])
    ap.add_argument("build", type=Path, help="a complete dolmino build directory (local)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--location", help="OLMo-core reads the parts from here (an s3:// copy of BUILD) instead")
    args = ap.parse_args(argv)
    if not (args.build / "report.json").is_file():
        print(f"{ap.prog}: error: {args.build} is not a complete dolmino build (no report.json)", file=sys.stderr)
        return 2
    result = run_check(args.build, args.seq_len, location=args.location)
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
