"""Anchor: `dolma tokens` (dolma 1.2.1) over a directory of Dolma JSONL.zst; run with the dolma venv's python.

    bench/.venvs/dolma/bin/python bench/anchor_scripts/tokenize_dolma.py \
        --input DIR --out DIR --tokenizer tokenizer.json [--processes 1]

Runs the real CLI entry point in this process (so the timing includes what a user of
`dolma tokens` pays: config parsing, the process pool, the shuffling ring) and prints one
JSON object: seconds, CPU seconds (this process and its reaped pool workers), peak RSS of this
process and of its pool workers, and the output
files. Options match OLMo 2 / dolma2: EOS 100257 after each document, no BOS, uint32
memmaps. dolma itself differs from dolmino in ways the caller must account for when it
compares outputs: documents are shuffled within and across output files, text is
`.strip()`ped before encoding, empty documents are skipped, and EOS is appended only when
the last token is not already EOS.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

from _common import peak_rss_fields, cpu_seconds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True, help="local tokenizer.json")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--eos", type=int, default=100257)
    ap.add_argument("--pad", type=int, default=100277)
    ap.add_argument("--encode-special-tokens", action="store_true",
                    help="pass --tokenizer.encode_special_tokens (special tokens in text stay text)")
    args = ap.parse_args()

    from dolma.cli.__main__ import main as dolma_main

    argv = ["tokens", "--documents", os.path.join(args.input, "*.jsonl.zst"),
            "--destination", args.out,
            "--tokenizer.name_or_path", args.tokenizer,
            "--tokenizer.eos_token_id", str(args.eos),
            "--tokenizer.pad_token_id", str(args.pad),
            "--dtype", "uint32", "--processes", str(args.processes), "--seed", "3920"]
    if args.encode_special_tokens:
        argv += ["--tokenizer.encode_special_tokens"]
    # dolma's own log lines go to stderr; stdout carries only our JSON.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    started, cpu0 = time.perf_counter(), cpu_seconds()
    try:
        dolma_main(argv)
    finally:
        sys.stdout = real_stdout
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu0
    print(json.dumps({
        "seconds": seconds, "cpu_seconds": cpu, **peak_rss_fields(),
        "npy": sorted(glob.glob(os.path.join(args.out, "*.npy"))),
        "csv": sorted(glob.glob(os.path.join(args.out, "*.csv.gz"))),
        "argv": argv,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
