"""The OpenWebMath math classifier: LLM labels, a fastText model, then a normal filter.

OLMo 2 kept MathCoder2's synthetic textbooks, Metamath and CodeSearchNet only where "a
fastText math classifier (trained on LLM-labelled OpenWebMath math / non-math)" said math
(SPEC.md). Three steps, each reproducible and accounted for:

1. label: the `owm_label` generator sends each OpenWebMath document to an OpenAI-compatible
   endpoint (the same client, retries and caching as the other LLM generators) and writes
   the document back with `metadata.math_label` = "math" / "non_math"; a failed request or an
   answer that is neither word is a rejection by reason, an unreadable input line is
   quarantined (`synth-report.json`: attempted = kept + rejected + quarantined).

       python -m dolmino.synth --generator owm_label --input 'data/upstream/open-web-math/*.jsonl.zst' \\
           --num-docs 200000 --partitions 32 --out build/synth/owm_labels --endpoint URL --model M

2. train: `python -m dolmino.synth.owm_math train --labelled 'build/synth/owm_labels/part-*.jsonl.zst'
   --out models/owm_math_fasttext.bin` trains a binary fastText model with
   `filters.quality.train_fasttext_classifier` (labels `__label__math` / `__label__non_math`)
   and writes `<out>.json` with the label counts and training parameters next to it.

3. filter: any manifest source applies it as a `fasttext_quality` filter,
   `{"type": "fasttext_quality", "model_path": ".../owm_math_fasttext.bin", "label": "__label__math",
   "threshold": 0.5}` (manifests/pools/math.json), so the build counts what it removes
   (`fasttext_quality:p<0.5`) like any other filter. The paper gives no threshold; 0.5 is the
   classifier's own decision boundary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator

from dolmino.s3 import local_path
from dolmino.synth import prompts
from dolmino.synth.base import make_doc, partition_range, quarantine, request_stats
from dolmino.synth.inputs import InputFiles
from dolmino.synth.llm import _LlmGenerator

MATH_LABEL = "__label__math"
NON_MATH_LABEL = "__label__non_math"
DEFAULT_THRESHOLD = 0.5


class OwmLabelGenerator(_LlmGenerator):
    """Documents -> the same documents with an LLM's math / non-math label in their metadata."""

    name = "owm_label"

    def __init__(self, endpoint: str, model: str, input_path: str | list[str], num_docs: int | None = None,
                 max_chars: int = 6000, temperature: float = 0.0, max_tokens: int = 8, **kwargs):
        if num_docs is not None and (not isinstance(num_docs, int) or num_docs < 0):
            raise ValueError(f"num_docs must be a non-negative integer, got {num_docs!r}")
        if not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")
        self.inputs = InputFiles(input_path)
        total = self.inputs.total_rows  # indexes the input on the driver, before Spark starts
        super().__init__(endpoint, model, total if num_docs is None else min(num_docs, total),
                         temperature=temperature, max_tokens=max_tokens, **kwargs)
        self.input_path, self.max_chars = input_path, max_chars

    def input_paths(self) -> list[str]:
        return self.inputs.paths

    def config(self) -> dict:
        return {**self.endpoint_config(), "input": self.inputs.fingerprint(), "max_chars": self.max_chars,
                "prompt": prompts.MATH_LABEL_TEMPLATE}

    def generate(self, partition: int, num_partitions: int, seed: int) -> Iterator[dict]:
        client = self.client(seed, partition)
        span = partition_range(partition, num_partitions, self.num_docs)
        for row in self.inputs.rows(span.start, span.stop):
            if row.obj is None:
                yield quarantine(self.name, seed, row.index, row.reason, row.path, row.line, row.detail, row.raw)
                continue
            text = row.obj.get("text")
            if not isinstance(text, str) or not text.strip():
                yield quarantine(self.name, seed, row.index, "missing_text", row.path, row.line,
                                 "needs a non-empty string 'text'")
                continue
            label, refused = self.ask_parsed(client, prompts.math_label_prompt(text, self.max_chars),
                                             prompts.parse_math_label, seed, row.index, "label",
                                             whole=False)  # a label is read from the answer, not kept
            if refused is not None:
                yield refused
                continue
            meta = {"math_label": label, "input_id": str(row.obj.get("id", f"{row.path}:{row.line}")),
                    "model": self.model}
            yield make_doc(self.name, seed, row.index, text, "owm_math_label", meta, self.added)
        yield request_stats(client.counts)


def read_labelled(patterns: str | list[str]) -> tuple[list[str], list[str], dict]:
    """(math texts, non-math texts, counts) from `owm_label` output; documents without a
    valid label are counted, not used."""
    math_texts, other_texts = [], []
    counts = {"math": 0, "non_math": 0, "unlabelled": 0, "unreadable": 0}
    inputs = InputFiles(patterns)
    for row in inputs.rows(0, inputs.total_rows):
        if row.obj is None or not isinstance(row.obj.get("text"), str):
            counts["unreadable"] += 1
            continue
        label = (row.obj.get("metadata") or {}).get("math_label")
        if label == prompts.MATH:
            math_texts.append(row.obj["text"])
        elif label == prompts.NON_MATH:
            other_texts.append(row.obj["text"])
        else:
            counts["unlabelled"] += 1
            continue
        counts[label] += 1
    return math_texts, other_texts, counts


def train_math_classifier(labelled: str | list[str], out_path: str, *, seed: int = 0, epoch: int = 25,
                          lr: float = 0.5, word_ngrams: int = 2, dim: int = 64, min_count: int = 1,
                          bucket: int = 2_000_000) -> dict:
    """Train the math classifier from labelled documents; writes the model and `<out>.json`."""
    from filters.quality import train_fasttext_classifier

    math_texts, other_texts, counts = read_labelled(labelled)
    if not math_texts or not other_texts:
        raise ValueError(f"training needs both labels; got {counts['math']} math and {counts['non_math']} "
                         f"non-math documents in {labelled}")
    params = {"seed": seed, "epoch": epoch, "lr": lr, "word_ngrams": word_ngrams, "dim": dim,
              "min_count": min_count, "bucket": bucket}
    train_fasttext_classifier(math_texts, other_texts, out_path, pos_label=MATH_LABEL, neg_label=NON_MATH_LABEL,
                              **params)
    summary = {"model": os.path.basename(out_path), "labels": {"positive": MATH_LABEL, "negative": NON_MATH_LABEL},
               "documents": counts, "params": params, "filter": {"type": "fasttext_quality", "label": MATH_LABEL,
                                                                 "threshold": DEFAULT_THRESHOLD}}
    with open(out_path + ".json", "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dolmino.synth.owm_math",
                                     description="Train the OpenWebMath math classifier from owm_label output.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the fastText math classifier",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--labelled", nargs="+", required=True, help="owm_label output files or globs")
    tr.add_argument("--out", required=True, type=local_path,
                    help="model path (.bin); the summary goes to <out>.json")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--epoch", type=int, default=25)
    tr.add_argument("--lr", type=float, default=0.5)
    tr.add_argument("--dim", type=int, default=64)
    tr.add_argument("--word-ngrams", type=int, default=2)
    tr.add_argument("--bucket", type=int, default=2_000_000, help="hashed n-gram rows (smaller = smaller model)")
    args = parser.parse_args(argv)
    try:
        summary = train_math_classifier(args.labelled, args.out, seed=args.seed, epoch=args.epoch, lr=args.lr,
                                        dim=args.dim, word_ngrams=args.word_ngrams, bucket=args.bucket)
    except (ValueError, OSError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)  # named, as every command's errors are
        return 2
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
