"""Benchmark dolmino's per-document filters against dolma's taggers and datatrove's filters.

    python bench/bench_filters.py                          # 400 docs per corpus file
    python bench/bench_filters.py --limit-per-file 1000 --skip-anchors

Same input for every tool: the first N documents of each shared-corpus file, written once
to bench/results/tmp/ as plain JSONL; each tool runs in ONE process (one core) and is timed
over the documents already in memory (reading and model loading excluded, one warm-up
call first), so every figure is docs/s per core. The anchors run as scripts under
bench/anchor_scripts/ with their own venvs (bench/anchors.py).

Stages and their anchors (see the anchor scripts for what each anchor computes):
- repeated_ngrams: dolmino `RepeatedNgramFilter` from text vs dolma `tokenizer_repetitions_v2r2`
  on the same tokenizer (same definition: >= 32 repeats of a 1..13-token n-gram; the same
  decisions); datatrove's `GopherRepetitionFilter` is a different check (duplicate lines,
  paragraphs and n-gram character fractions), measured but not compared. The work differs:
  dolmino first checks the bytes for a repeat that could reach the threshold (exact: no span
  escapes it) and tokenizes only the documents that pass (at the default 400 per file, 16 of
  1,425 documents, none of which holds a repeat: neither tool flags any), where dolma
  tokenizes every document and computes every repetition span; that ratio is the shortcut's.
  `repeated_ngrams_with_repeats` is the same work on both sides: every document of the
  corpus that holds a repeat dolmino flags (tables, runs of zeros, rulers), which dolmino
  must tokenize as dolma does. Also dolmino on the token ids the build attaches
  (`doc["token_ids"]`), which is how the build runs it.
- fasttext_quality: one small classifier trained with `train_fasttext_classifier`
  (academic + encyclopedic = pos, code = neg, on documents outside the benchmark slice),
  the same .bin scored by all three tools; flagged when P(pos) < threshold. dolmino scores
  with its numba engine (filters/fasttext_numba.py); `dolmino_fasttext_binding` is the same
  filter on the fastText binding, for the engine's own gain.
- code_stars / code_word_frequency: code documents only; dolma's starcoder / RedPajama
  code taggers are measured but NOT compared (marked `not_comparable`, so the report takes
  no ratio): `code_starcoder_taggers_v2` computes several StarCoder statistics of the text
  (comment and code line ratios, ...) besides the star count dolmino reads from metadata,
  and `code_redpajama_taggers_v1` computes RedPajama's line-length / alphanumeric rules,
  not dolmino's word-frequency check. datatrove has no code filters.

"agreement" gives each tool's flagged share and the overlap of flagged sets, so that a
fast tool that flags something else is visible.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.comparability import not_comparable  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
FILES = ("web.jsonl.zst", "code.jsonl.zst", "encyclopedic.jsonl.zst", "academic.jsonl.zst")
TMP = REPO / "bench" / "results" / "tmp"
LABEL = "__label__pos"
SCRIPTS = REPO / "bench" / "anchor_scripts"


def load_slices(corpus: Path, limit: int, train_per_file: int) -> tuple[list[dict], dict[str, list[str]]]:
    """(benchmark docs: the first `limit` of each file, training texts: the next `train_per_file`)."""
    from dolmino.documents import Quarantine, read_documents

    docs, train = [], {}
    for name in FILES:
        path = corpus / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the shared corpus must sit beside the repository")
        source = name.split(".")[0]
        train[source] = []
        for n, (_, doc) in enumerate(read_documents(str(path), Quarantine())):
            if n < limit:
                docs.append({"id": str(doc["id"]), "text": doc["text"], "source": source,
                             "metadata": doc.get("metadata") or {}})
            elif n < limit + train_per_file:
                train[source].append(doc["text"])
            else:
                break
    return docs, train


def quality_model(train: dict[str, list[str]], epoch: int) -> str:
    """Train (or reuse) the one fastText model that all three tools score with."""
    from filters.quality import train_fasttext_classifier

    pos = train["academic"] + train["encyclopedic"]
    neg = train["code"]
    if not pos:  # academic has few documents: fall back on the benchmark slice's neighbours
        raise RuntimeError("no positive training documents left after the benchmark slice")
    path = TMP / f"quality_fasttext_{len(pos)}p_{len(neg)}n_e{epoch}.bin"
    if not path.exists():
        train_fasttext_classifier(pos, neg, str(path), pos_label=LABEL, neg_label="__label__neg", epoch=epoch)
    return str(path)


def _timed(fn, docs: list[dict]) -> tuple[float, list[int]]:
    fn(docs[0])  # warm-up: lazy model / tokenizer loads and numba compilation stay out of the timing
    start = time.perf_counter()
    flagged = [i for i, d in enumerate(docs) if fn(d) is not None]
    return time.perf_counter() - start, flagged


# The repeated_ngrams slice where both tools do the same work: documents that hold a repeat.
REPEATS = "repeated_ngrams_with_repeats"


def tokenized_count(rep, docs: list[dict]) -> int:
    """How many of `docs` the filter tokenizes: those its byte check cannot clear (untimed)."""
    from filters.repeated_ngrams import may_hold_repeated_ngram

    rep._load_tokenizer()
    return sum(may_hold_repeated_ngram(rep._utf8(d), rep.min_repeats, rep._max_period, rep._run_periods)
               for d in docs)


def repeats_slice(corpus: Path, min_repeats: int, limit: int) -> list[dict]:
    """Up to `limit` corpus documents, in file order, that hold >= min_repeats copies of an n-gram.

    The default slice's documents hold none, so there dolmino's byte check spares it the
    tokenizer and its ratio is that shortcut's; on these it tokenizes every one, as dolma does.
    """
    from dolmino.documents import Quarantine, read_documents
    from filters.repeated_ngrams import RepeatedNgramFilter

    rep = RepeatedNgramFilter(min_repeats=min_repeats)
    out: list[dict] = []
    for name in FILES:
        source = name.split(".")[0]
        for _, doc in read_documents(str(corpus / name), Quarantine()):
            if len(out) >= limit:
                return out
            if rep.reject_reason(doc) is not None:
                out.append({"id": str(doc["id"]), "text": doc["text"], "source": source,
                            "metadata": doc.get("metadata") or {}})
    return out


def run_dolmino(docs: list[dict], model: str, threshold: float, min_repeats: int,
                repeats: list[dict] | None = None) -> dict:
    import numpy as np

    from filters.code import CodeStarsFilter, CodeWordFrequencyFilter
    from filters.quality import FastTextQualityFilter
    from filters.repeated_ngrams import RepeatedNgramFilter

    out = {}
    rep = RepeatedNgramFilter(min_repeats=min_repeats)
    seconds, flagged = _timed(rep.reject_reason, docs)
    out["repeated_ngrams"] = {"seconds": seconds, "flagged": flagged, "docs": len(docs),
                              "tokenized": tokenized_count(rep, docs)}
    if repeats:
        seconds, flagged = _timed(rep.reject_reason, repeats)
        out[REPEATS] = {"seconds": seconds, "flagged": flagged, "docs": len(repeats),
                        "tokenized": tokenized_count(rep, repeats)}
    tok = rep._load_tokenizer()
    with_ids = [{"token_ids": np.asarray(tok.encode(d["text"], add_special_tokens=False).ids, dtype=np.uint32)}
                for d in docs]
    seconds, flagged = _timed(rep.reject_reason, with_ids)
    out["repeated_ngrams_token_ids"] = {"seconds": seconds, "flagged": flagged, "docs": len(docs)}
    ft = FastTextQualityFilter(model, label=LABEL, threshold=threshold)
    seconds, flagged = _timed(ft.reject_reason, docs)
    out["fasttext_quality"] = {"seconds": seconds, "flagged": flagged, "docs": len(docs)}
    binding = FastTextQualityFilter(model, label=LABEL, threshold=threshold, engine="fasttext")
    seconds, flagged = _timed(binding.reject_reason, docs)
    out["fasttext_quality_binding"] = {"seconds": seconds, "flagged": flagged, "docs": len(docs)}
    code = [i for i, d in enumerate(docs) if d["source"] == "code"]
    subset = [docs[i] for i in code]
    for name, filt in (("code_stars", CodeStarsFilter()), ("code_word_frequency", CodeWordFrequencyFilter())):
        seconds, flagged = _timed(filt.reject_reason, subset)
        out[name] = {"seconds": seconds, "flagged": [code[i] for i in flagged], "docs": len(subset)}
    return out


def run_anchor(name: str, script: str, args: list[str]) -> dict:
    from bench.anchors import AnchorUnavailable, anchor_python

    try:
        python = anchor_python(name)
    except AnchorUnavailable as exc:
        return {"unavailable": str(exc)[:500]}
    proc = subprocess.run([str(python), str(SCRIPTS / script), *args], capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode != 0:
        return {"unavailable": f"{script} failed: {proc.stderr[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _overlap(a: list[int], b: list[int]) -> float | None:
    sa, sb = set(a), set(b)
    return round(len(sa & sb) / len(sa | sb), 4) if sa | sb else 1.0


# Anchors that run a different computation than dolmino's filter for the same stage: their
# figures are reported with this reason and never used for a ratio (bench/run.py).

# dolmino variants measured beside the default path: (stage, impl) they are reported as.
VARIANTS = {
    "repeated_ngrams_token_ids": ("repeated_ngrams", "dolmino_token_ids"),  # as the build runs it
    "fasttext_quality_binding": ("fasttext_quality", "dolmino_fasttext_binding"),  # engine="fasttext"
}


def summarise(docs: list[dict], results: dict[str, dict]) -> tuple[list[dict], dict]:
    """Figures (docs/s per core) and agreement (flagged shares, Jaccard of flagged sets vs dolmino)."""
    figures, agreement = [], {}
    for impl, stages in results.items():
        for stage, r in stages.items():
            if not isinstance(r, dict) or "seconds" not in r:
                continue
            n = r.get("docs", len(docs))
            name, label = VARIANTS.get(stage, (stage, impl))
            figures.append({"name": f"filters/{name} docs/s per core", "impl": label,
                            "value": round(n / r["seconds"], 1) if r["seconds"] > 0 else float("inf"),
                            "unit": "docs/s", "better": "higher",
                            **({"note": r["note"]} if r.get("note") else {}),
                            **({"not_comparable": why} if (why := not_comparable("filters", name, label)) else {})})
            entry = agreement.setdefault(name, {})
            entry[label] = {"docs": n, "flagged": len(r["flagged"]),
                            "share": round(len(r["flagged"]) / n, 4) if n else None}
            ours = results["dolmino"].get(name)
            if label != "dolmino" and ours:
                entry[label]["jaccard_with_dolmino"] = _overlap(ours["flagged"], r["flagged"])
    return figures, agreement


def notes(results: dict[str, dict]) -> list[str]:
    """Where the repeated_ngrams sides' work differs, for the report (no ratio hides it)."""
    ours, dolma = results["dolmino"], results.get("dolma", {})

    def flagged(impl: dict, stage: str) -> str:
        return str(len(impl[stage]["flagged"])) if stage in impl else "-"

    out = []
    r = ours["repeated_ngrams"]
    out.append(f"repeated_ngrams: dolmino tokenized {r['tokenized']:,} of {r['docs']:,} documents (its exact byte "
               f"check clears the others), dolma tokenizes all {r['docs']:,}; flagged: dolmino {len(r['flagged'])}, "
               f"dolma {flagged(dolma, 'repeated_ngrams')}: that ratio is the shortcut's, not the same work")
    if REPEATS in ours:
        r = ours[REPEATS]
        out.append(f"{REPEATS}: the {r['docs']} corpus documents that hold a repeat (dolmino flags "
                   f"{len(r['flagged'])}, dolma {flagged(dolma, REPEATS)}); dolmino tokenized {r['tokenized']} of "
                   "them: the same work as dolma")
    out.append("repeated_ngrams: datatrove's GopherRepetitionFilter is a different check (bench/comparability.py)")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--limit-per-file", type=int, default=400)
    ap.add_argument("--train-per-file", type=int, default=400)
    ap.add_argument("--epoch", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.5, help="flag when P(__label__pos) < threshold")
    ap.add_argument("--min-repeats", type=int, default=32)
    ap.add_argument("--repeats-docs", type=int, default=200,
                    help="most documents in the repeated_ngrams slice of documents with repeats (0: no slice)")
    ap.add_argument("--skip-anchors", action="store_true")
    args = ap.parse_args(argv)

    from dolmino.assets import dolma2_tokenizer_path

    TMP.mkdir(parents=True, exist_ok=True)
    docs, train = load_slices(args.corpus, args.limit_per_file, args.train_per_file)
    model = quality_model(train, args.epoch)
    data = TMP / "filters_input.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    repeats = repeats_slice(args.corpus, args.min_repeats, args.repeats_docs) if args.repeats_docs > 0 else []
    repeats_data = TMP / "filters_repeats_input.jsonl"
    with open(repeats_data, "w", encoding="utf-8") as f:
        for d in repeats:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    results = {"dolmino": run_dolmino(docs, model, args.threshold, args.min_repeats, repeats)}
    if not args.skip_anchors:
        model_args = ["--model", model, "--label", LABEL, "--threshold", str(args.threshold)]
        common = ["--input", str(data), *model_args]
        dolma_args = [*model_args, "--tokenizer", str(dolma2_tokenizer_path()), "--min-repeats", str(args.min_repeats)]
        results["dolma"] = run_anchor("dolma", "filters_dolma.py", ["--input", str(data), *dolma_args])
        if repeats and "unavailable" not in results["dolma"]:
            slice_run = run_anchor("dolma", "filters_dolma.py",
                                   ["--input", str(repeats_data), *dolma_args, "--stages", "repeated_ngrams"])
            if "repeated_ngrams" in slice_run:
                results["dolma"][REPEATS] = {**slice_run["repeated_ngrams"], "docs": len(repeats)}
        results["datatrove"] = run_anchor("datatrove", "filters_datatrove.py", common)
    figures, agreement = summarise(docs, results)
    unavailable = {impl: r[k] for impl, r in results.items() for k in ("unavailable", "code_unavailable") if k in r}
    out = {"docs": len(docs), "docs_by_source": {s: sum(d["source"] == s for d in docs) for s in train},
           "text_mb": round(sum(len(d["text"].encode("utf-8", "surrogatepass")) for d in docs) / 1e6, 2),
           "model": Path(model).name, "threshold": args.threshold, "figures": figures, "agreement": agreement,
           "notes": notes(results),
           "seconds": {impl: {s: round(r["seconds"], 3) for s, r in stages.items()
                              if isinstance(r, dict) and "seconds" in r} for impl, stages in results.items()},
           **({"unavailable": unavailable} if unavailable else {})}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
