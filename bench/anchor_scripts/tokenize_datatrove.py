"""Anchor: datatrove 0.10.1 JsonlReader -> DocumentTokenizer; run with the datatrove venv's python.

    bench/.venvs/datatrove/bin/python bench/anchor_scripts/tokenize_datatrove.py \
        --input DIR --out DIR --tokenizer tokenizer.json

One task, one worker (the caller pins the CPU), the same tokenizer file, EOS
(`<|endoftext|>`, id 100257) appended by datatrove's TemplateProcessing post-processor,
no BOS, and no shuffling, so the output order is the reader's: files sorted by name,
lines in order, documents with empty text skipped. Output: `<name>.ds` (raw uint32 token
ids, 4 bytes since the vocabulary exceeds 65,536) and `<name>.ds.index` (uint64 document
ends). Prints one JSON object with seconds, CPU seconds (this process and any child it waited
for), peak RSS and the output paths.
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
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--batch-size", type=int, default=10000, help="datatrove's default")
    args = ap.parse_args()

    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # datatrove logs and prints stats; keep stdout for our JSON
    try:
        # Imported before the clock starts, as dolma's script and dolmino's side import theirs
        # (datatrove alone was charged its imports; found by a reviewer of the bench claims).
        from datatrove.executor.local import LocalPipelineExecutor
        from datatrove.pipeline.readers import JsonlReader
        from datatrove.pipeline.tokens import DocumentTokenizer

        started, cpu0 = time.perf_counter(), cpu_seconds()
        executor = LocalPipelineExecutor(
            pipeline=[
                JsonlReader(args.input, glob_pattern="*.jsonl.zst", compression="zstd"),
                DocumentTokenizer(output_folder=args.out, tokenizer_name_or_path=args.tokenizer,
                                  eos_token="<|endoftext|>", shuffle_documents=False,
                                  batch_size=args.batch_size, save_filename="dolmino_bench"),
            ],
            tasks=1, workers=1, logging_dir=os.path.join(args.out, "_logs"), skip_completed=False,
        )
        executor.run()
    finally:
        sys.stdout = real_stdout
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu0
    print(json.dumps({
        "seconds": seconds, "cpu_seconds": cpu, **peak_rss_fields(),
        "ds": sorted(p for p in glob.glob(os.path.join(args.out, "*.ds"))),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
