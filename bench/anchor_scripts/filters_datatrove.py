"""datatrove 0.10.1's filters on the filter benchmark's input, run inside the datatrove anchor venv.

    bench/.venvs/datatrove/bin/python bench/anchor_scripts/filters_datatrove.py \
        --input docs.jsonl --model quality.bin --label __label__pos

Times each filter's `filter(doc)` over every document in this one process (one core) after
a warm-up and prints one JSON object {stage: {docs, seconds, flagged: [doc indices]}}.

Filters (the closest datatrove has to each dolmino filter):
- repeated_ngrams: `GopherRepetitionFilter` with its defaults (Gopher Table A1): duplicate
  line/paragraph fractions, top 2-4-gram and duplicate 5-10-gram character fractions
  over spaCy words. NOT the same check (dolmino/OLMo 2 look for >= 32 consecutive
  repeats of a 1..13-token n-gram); it is datatrove's repetition filter.
- fasttext_quality: `FastTextClassifierFilter` on the same .bin, document mode, newlines
  replaced by spaces, keep_labels=(label, threshold).
datatrove has no code-specific filters (stars, word frequency), so it has no figure there.
"""

from __future__ import annotations

import argparse
import json
import logging

from _common import load_jsonl, time_flags




def _rejected(result) -> bool:
    return not (result[0] if isinstance(result, tuple) else result)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--label", default="__label__pos")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--stages", default="repeated_ngrams,fasttext_quality")
    args = ap.parse_args()

    from datatrove.data import Document
    from datatrove.pipeline.filters import FastTextClassifierFilter, GopherRepetitionFilter
    from datatrove.utils.logging import logger

    logger.remove()
    logging.disable(logging.WARNING)
    docs = load_jsonl(args.input)
    out: dict = {"docs": len(docs)}
    stages = args.stages.split(",")

    def as_doc(d):  # filters may rewrite text/metadata: give each call a fresh Document
        return Document(text=d["text"], id=str(d["id"]), metadata=dict(d.get("metadata") or {}))

    if "repeated_ngrams" in stages:
        gopher = GopherRepetitionFilter()
        seconds, flagged = time_flags(lambda d: _rejected(gopher.filter(as_doc(d))), docs)
        out["repeated_ngrams"] = {"filter": "GopherRepetitionFilter", "seconds": seconds, "flagged": flagged,
                                  "note": "different check: Gopher duplicate-line/paragraph/n-gram fractions"}
    if "fasttext_quality" in stages:
        label = args.label.removeprefix("__label__")
        ft = FastTextClassifierFilter(args.model, keep_labels=(label, args.threshold), newline_replacement=" ",
                                      save_labels_in_metadata=False)
        seconds, flagged = time_flags(lambda d: _rejected(ft.filter(as_doc(d))), docs)
        out["fasttext_quality"] = {"filter": "FastTextClassifierFilter", "seconds": seconds, "flagged": flagged}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
