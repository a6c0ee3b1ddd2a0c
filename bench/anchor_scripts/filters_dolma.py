"""dolma 1.2.1's taggers on the filter benchmark's input, run inside the dolma anchor venv.

    bench/.venvs/dolma/bin/python bench/anchor_scripts/filters_dolma.py \
        --input docs.jsonl --tokenizer dolma2.json --model quality.bin --label __label__pos

Reads the plain JSONL that bench/bench_filters.py wrote (id, text, metadata), times each
tagger's `predict` over every document in this one process (one core) after a warm-up,
applies the OLMo 2 style threshold to the tagger's output to decide "flagged", and prints
one JSON object {stage: {docs, seconds, docs_per_s, flagged: [doc indices]}}.

Taggers (the closest dolma has to each dolmino filter):
- repeated_ngrams: `tokenizer_repetitions_v2r2` (the tagger OLMo 2 used), with the dolma2
  tokenizer loaded from the local file instead of the hub; flagged when a periodic token
  sequence of period 1..13 repeats >= 32 times.
- fasttext_quality: a document-level `BaseFastTextTagger` (as `dclm-oh-eli5`: lines
  joined by spaces, k=-1) on the same .bin; flagged when P(label) < threshold.
- code_stars: `code_starcoder_taggers_v2` (num_github_stars_doc); flagged when < min stars.
- code_word_frequency: `code_redpajama_taggers_v1` (line lengths, alnum and alpha/token
  proportions): NOT the same check; flagged with RedPajama's code rules
  (max line > 1000, avg line > 100, alnum < 0.25, alpha/token < 1.5).
"""

from __future__ import annotations

import argparse
import json

from _common import load_jsonl, time_flags




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--label", default="__label__pos")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--min-repeats", type=int, default=32)
    ap.add_argument("--min-stars", type=int, default=2)
    ap.add_argument("--stages", default="repeated_ngrams,fasttext_quality,code_stars,code_word_frequency")
    args = ap.parse_args()

    from tokenizers import Tokenizer

    from dolma.core.data_types import Document, DocumentWithMetadata, TextSlice
    from dolma.core.ft_tagger import BaseFastTextTagger, Prediction
    from dolma.taggers.repetitions.repetitions_taggers import TokenizerRepetitionsSkipEmptyTagger

    docs = load_jsonl(args.input)
    out: dict = {"docs": len(docs)}
    stages = args.stages.split(",")

    if "repeated_ngrams" in stages:
        class LocalTokenizerRepetitions(TokenizerRepetitionsSkipEmptyTagger):
            def __init__(self, path: str) -> None:  # the hub is unreachable: same tagger, local tokenizer
                self.tokenizer = Tokenizer.from_file(path)

        tagger = LocalTokenizerRepetitions(args.tokenizer)

        def repeated(d):
            result = tagger.predict(Document(source="", id=d["id"], text=d["text"]))
            return any(s.type == "repetition" and s.score >= args.min_repeats for s in result.spans)

        seconds, flagged = time_flags(repeated, docs)
        out["repeated_ngrams"] = {"tagger": "tokenizer_repetitions_v2r2", "seconds": seconds, "flagged": flagged}

    if "fasttext_quality" in stages:
        class LocalDocumentFastText(BaseFastTextTagger):
            def __init__(self, path: str) -> None:
                super().__init__(model_path=path, model_mode=self.DOCUMENT_LEVEL_TAGGER)

            def predict_slice(self, text_slice: TextSlice):
                text = " ".join(text_slice.doc.strip().splitlines())
                labels, probs = self.classifier.predict(text, k=-1)
                return [Prediction(label=label, score=float(p)) for label, p in zip(labels, probs)]

        ft = LocalDocumentFastText(args.model)

        def low_quality(d):
            result = ft.predict(Document(source="", id=d["id"], text=d["text"]))
            score = next((s.score for s in result.spans if s.type == args.label), 0.0)
            return score < args.threshold

        seconds, flagged = time_flags(low_quality, docs)
        out["fasttext_quality"] = {"tagger": "BaseFastTextTagger (document level, dclm-oh-eli5 style)",
                                   "seconds": seconds, "flagged": flagged}

    code_docs = [i for i, d in enumerate(docs) if d.get("source") == "code"]
    if ("code_stars" in stages or "code_word_frequency" in stages) and code_docs:
        try:
            from dolma.taggers.code.code_taggers import CodeRedPajamaTaggers, CodeStarCoderTaggers2
            starcoder, redpajama = CodeStarCoderTaggers2(), CodeRedPajamaTaggers()
        except Exception as exc:  # dolma[code] extras (detect-secrets, beautifulsoup4) missing
            out["code_unavailable"] = f"{type(exc).__name__}: {exc}"
        else:
            subset = [docs[i] for i in code_docs]
            if "code_stars" in stages:
                def few_stars(d):
                    doc = DocumentWithMetadata(source="code", id=d["id"], text=d["text"], metadata=d.get("metadata") or {})
                    spans = starcoder.predict(doc).spans
                    return next(s.score for s in spans if s.type == "num_github_stars_doc") < args.min_stars

                seconds, flagged = time_flags(few_stars, subset)
                out["code_stars"] = {"tagger": "code_starcoder_taggers_v2", "docs": len(subset), "seconds": seconds,
                                     "flagged": [code_docs[i] for i in flagged]}
            if "code_word_frequency" in stages:
                def redpajama_bad(d):
                    spans = {s.type: s.score for s in redpajama.predict(Document(source="code", id=d["id"], text=d["text"])).spans}
                    return (spans["max_line_length_doc"] > 1000 or spans["avg_line_length_doc"] > 100
                            or spans["alnum_prop_doc"] < 0.25 or spans["alpha_token_prop_doc"] < 1.5)

                seconds, flagged = time_flags(redpajama_bad, subset)
                out["code_word_frequency"] = {"tagger": "code_redpajama_taggers_v1", "docs": len(subset),
                                              "seconds": seconds, "flagged": [code_docs[i] for i in flagged],
                                              "note": "different check: RedPajama line-length/alnum rules, "
                                                      "not top-1/top-2 word frequency"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
