"""FineWeb-Edu after fastText: the tag phase's cost without and with `"cascade": true`.

    python bench/bench_cascade.py                 # 240 measured documents, BERT-base over 512 tokens
    python bench/bench_cascade.py --quick         # 60 measured documents
    python bench/bench_cascade.py --docs 24 --shape tiny --train-per-file 40   # a plumbing check, not FineWeb-Edu

What runs:

1. One source of real text: the first `--docs` documents of the shared corpus's web,
   academic and encyclopedic files (a third each, interleaved), written once as one plain
   JSONL under bench/results/tmp/ and reused. The tag phase splits it into `--cores` byte
   ranges, one task each, so every core scores (small files are bundled into one task).
2. Two tagged filters, the pool manifest manifests/pools/dclm.json's pair:
   - `fasttext_quality`: a classifier trained with `filters.quality.train_fasttext_classifier`
     (which trains in a fresh interpreter of its own: the fastText wheel diverges on a second
     training in one process) on the documents after the measured ones, academic +
     encyclopedic positive, web negative. Its `threshold` is the score quantile that keeps
     `--keep` (default 20%) of the measured documents. DCLM's 0.03311014 keeps ~65.6% of
     DCLM-Baseline (../shared/SPEC.md); the share is a setting here, and the cascade saves in
     proportion to what the fastText step removes.
   - `fineweb_edu`: a randomly initialised `BertForSequenceClassification` (one regression
     output) of the real classifier's shape (BERT-base: hidden 768, 12 layers, 12 heads,
     intermediate 3072, 512 positions) with a WordPiece tokenizer (vocabulary 30,522, as
     BERT's) trained offline on the training documents, saved with `save_pretrained` under
     bench/results/tmp/ (hub models are not reachable). Its scores mean nothing; its cost is
     the real one: every document truncated at the tokenizer's 512 tokens, as the model card
     does, unless `--max-length` says otherwise (the output then says so). `--shape tiny`
     (2 layers, hidden 64) is for the smoke test only: its figures are not FineWeb-Edu's.
3. Each variant, the manifest without and with `"cascade": true` on fineweb_edu, in its own
   process (`--child tag`): a fresh Spark local[cores] session (bench/bench_scale.make_spark),
   an untimed warm-up tag of a few other documents with the same filters (JVM start, Python
   workers' imports, numba compilation, model loads: paid once per worker, nothing next to a
   pool of billions of documents), then `dolmino.build.mix.build(..., phase="tag")` into a
   fresh --attributes root, timed by the CPU time of the whole process tree
   (bench/proctree.CpuMeter through bench_scale._measured: driver Python, JVM, PySpark's
   daemon and every Python worker). Both variants do the same work but for the documents
   fineweb_edu scores.

Figures: tag core-s without and with cascade, their ratio (cascade / plain, lower is better,
no goal), the share of documents the fastText step keeps (from the cascade set's stored
`scored` column, checked against the fastText survivors counted from its own stored scores)
and FineWeb-Edu documents/s per core of the plain tag (the whole tag phase's CPU: reading,
fastText and the BERT). A note turns that rate into a planning estimate for scoring
SPEC.md's DCLM-Baseline with FineWeb-Edu on this CPU, with and without the cascade; a real
run scores on GPUs, which this bench does not measure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_scale import _measured, fig, make_spark, run_child  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
TMP = REPO / "bench" / "results" / "tmp"
INPUT_FORMAT = 1  # bump when the slice, the models or their training change
SLICE_FILES = ("web", "academic", "encyclopedic")  # corpus file stems, interleaved in this order
POSITIVE = ("academic", "encyclopedic")  # the fastText classifier's __label__hq; web is __label__lq
LABEL = "__label__hq"
SOURCE = "cascade"
WARMUP_CHARS = 2_000  # the warm-up's documents: one per file and core, cut short (it only starts things)
# BERT-base, the shape of HuggingFaceFW/fineweb-edu-classifier (Snowflake arctic-embed-m); "tiny" for tests.
SHAPES = {
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
}
VOCAB = 30_522  # BERT's uncased WordPiece vocabulary size: the embedding table the real model holds
POSITIONS = 512
# ../shared/SPEC.md, OLMo 2 Mix 1124: DCLM-Baseline 1.0 holds 2.95B documents (3.71T tokens), and the DCLM fastText
# threshold 0.03311014 keeps ~65.6% of it (Dolmino Mix 1124's web row): the documents a cascade scores.
DCLM_BASELINE_DOCS = 2.95e9
DCLM_BASELINE_TOKENS = 3.71e12
DCLM_FASTTEXT_KEEPS = 0.656


def log(msg: str) -> None:
    print(f"[bench_cascade] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- inputs and models


def load_slices(corpus: Path, docs: int, train_per_file: int) -> tuple[list[dict], dict[str, list[str]]]:
    """(measured documents: the first of each file, a third each, interleaved; training texts per file:
    the `train_per_file` documents after them)."""
    from dolmino.documents import Quarantine, read_documents

    per_file = [docs // len(SLICE_FILES) + (i < docs % len(SLICE_FILES)) for i in range(len(SLICE_FILES))]
    columns, train = [], {}
    for stem, take in zip(SLICE_FILES, per_file):
        path = corpus / f"{stem}.jsonl.zst"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the shared corpus must sit beside the repository")
        measured, train[stem] = [], []
        for n, (_, doc) in enumerate(read_documents(str(path), Quarantine())):
            if n < take:
                measured.append({"id": f"{stem}-{doc['id']}", "text": doc["text"], "source": stem})
            elif n < take + train_per_file:
                train[stem].append(doc["text"])
            else:
                break
        if len(measured) < take or not train[stem]:
            raise ValueError(f"{path} holds {len(measured) + len(train[stem])} documents: too few for {take} "
                             f"measured ones and training documents after them; lower --docs")
        columns.append(measured)
    interleaved = [doc for row in zip(*[c + [None] * (max(per_file) - len(c)) for c in columns]) for doc in row if doc]
    return interleaved, train


def slice_key(args, *extra) -> str:
    return hashlib.sha256(json.dumps([INPUT_FORMAT, args.docs, args.train_per_file, str(args.corpus),
                                      *extra]).encode()).hexdigest()[:10]


def write_jsonl(path: Path, docs: list[dict]) -> None:
    """Plain JSONL (splittable into byte ranges, unlike .zst), written whole before it is named."""
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
    tmp.replace(path)


def fasttext_model(train: dict[str, list[str]], out: Path, epoch: int) -> Path:
    """Train (once) the fastText classifier: academic + encyclopedic = __label__hq, web = __label__lq."""
    from filters.quality import train_fasttext_classifier

    if not out.exists():
        pos = [t for stem in POSITIVE for t in train[stem]]
        # A small hash table (the default 2M buckets x 64 is a 0.5 GB file each worker loads); scoring
        # costs the same per document whatever its size.
        train_fasttext_classifier(pos, train["web"], str(out), pos_label=LABEL, neg_label="__label__lq",
                                  epoch=epoch, bucket=200_000)
    return out


def edu_model(texts: list[str], out: Path, shape: str) -> Path:
    """Save (once) a randomly initialised one-output BERT of `shape` with a WordPiece tokenizer trained
    on `texts`, as save_pretrained writes it: what `fineweb_edu`'s model_path names."""
    if (out / "done.json").exists():
        return out
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" on stderr, in the harness's log
    if out.exists():
        shutil.rmtree(out)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=VOCAB, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tokenizer = BertTokenizerFast(tokenizer_object=tok, model_max_length=POSITIONS)
    # The embedding table is BERT's size even where the corpus fills fewer WordPieces: its memory is the real one.
    config = BertConfig(vocab_size=max(VOCAB, tokenizer.vocab_size), max_position_embeddings=POSITIONS,
                        num_labels=1, problem_type="regression", **SHAPES[shape])
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    (out / "done.json").write_text(json.dumps({"shape": shape, "wordpieces": tokenizer.vocab_size}))
    return out


def fasttext_scores(model: Path, docs: list[dict]) -> list[float]:
    """P(__label__hq) of each document, as the build's fasttext_quality filter stores it (its own tag())."""
    from filters.quality import FastTextQualityFilter

    return FastTextQualityFilter(str(model), label=LABEL, threshold=0.0).tag(docs)["score"].tolist()


def keep_threshold(scores: list[float], keep: float) -> float:
    """A threshold that `score >= threshold` keeps round(keep x n) documents with: midway between the
    scores ranked k and k + 1 from the top (no float equality decides), more where they tie (a fastText
    probability saturates near 1)."""
    ranked = sorted(scores, reverse=True)
    k = min(len(ranked), max(1, round(keep * len(ranked))))
    below = ranked[k] if k < len(ranked) else 0.0
    return min(1.0, (ranked[k - 1] + below) / 2 if ranked[k - 1] > below else ranked[k - 1])


def manifest(data_root: Path, ft_model: Path, threshold: float, edu: Path, cascade: bool,
             max_length: int | None) -> dict:
    edu_spec = {"type": "fineweb_edu", "model_path": str(edu), "min_int_score": 2}
    if max_length is not None:
        edu_spec["max_length"] = max_length
    if cascade:
        edu_spec["cascade"] = True
    return {"name": "bench-cascade", "version": 1, "seed": 11, "budget": 10_000, "data_root": str(data_root),
            "sources": [{"name": SOURCE, "paths": ["*.jsonl"], "mix_percent": 100.0,
                         "filters": [{"type": "fasttext_quality", "model_path": str(ft_model), "label": LABEL,
                                      "threshold": threshold}, edu_spec]}]}


# ---------------------------------------------------------------------------- the child: one fresh session


def _set_rows(attributes: Path, set_type: str) -> list[dict]:
    """The rows of the source's one `set_type` set, in bundle order."""
    from dolmino.build.attributes import read_table

    sets = sorted({p.name for p in (attributes / SOURCE).glob(f"{set_type}-*") if p.is_dir()})
    if len(sets) != 1:
        raise RuntimeError(f"expected one {set_type} set under {attributes / SOURCE}, found {sets}")
    rows = []
    for path in sorted((attributes / SOURCE / sets[0]).glob("**/*.parquet")):
        rows += read_table(str(path))[0].to_pylist()
    return rows


def tag_variant(spark, work: Path, spec: dict, warm: dict, split_bytes: int, warmup_split_bytes: int) -> dict:
    """In `spark`: the warm-up tag, then the measured tag of `spec` into a fresh attributes root; what its
    sets hold. Each range of `split_bytes` is a task of its own (small files would be bundled into one)."""
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    started = time.perf_counter()
    build(manifest_from_dict(warm), 10_000, str(work / "warmup-out"), spark, attributes=str(work / "warmup-attributes"),
          phase="tag", split_bytes=warmup_split_bytes, task_bytes=warmup_split_bytes)
    warmup_wall = time.perf_counter() - started
    attributes = work / "attributes"
    tag, wall, cpu = _measured(lambda: build(
        manifest_from_dict(spec), 10_000, str(work / "out"), spark, attributes=str(attributes), phase="tag",
        split_bytes=split_bytes, task_bytes=split_bytes))
    edu = _set_rows(attributes, "fineweb_edu")
    fast = _set_rows(attributes, "fasttext_quality")
    threshold = spec["sources"][0]["filters"][0]["threshold"]
    return {"wall_s": wall, "cpu_s": cpu, "warmup_wall_s": round(warmup_wall, 3), "units": tag["units"],
            "tasks": (tag["stages"].get("tag", {}).get("spark") or {}).get("tasks"),
            "rows": len(edu), "fasttext_rows": len(fast),
            "bert_scored": sum(bool(r.get("scored", True)) for r in edu),
            "fasttext_survivors": sum(r["score"] >= threshold for r in fast),
            "int_scores": [r["int_score"] for r in edu]}


def child_tag(args) -> dict:
    """One variant in this process's own, fresh Spark session."""
    spark = make_spark(args.cores, args.driver_memory)
    try:
        return tag_variant(spark, Path(args.work), json.loads(Path(args.manifest).read_text()),
                           json.loads(Path(args.warmup_manifest).read_text()), args.split_bytes,
                           args.warmup_split_bytes)
    finally:
        spark.stop()


# ---------------------------------------------------------------------------- parent


def in_child(args):
    """A variant runner: `tag_variant` in a child process of its own (a fresh JVM and Python workers)."""
    def run(work: Path, spec: dict, warm: dict, split_bytes: int, warmup_split_bytes: int) -> dict:
        (work / "manifest.json").write_text(json.dumps(spec))
        (work / "warmup.json").write_text(json.dumps(warm))
        return run_child("tag", ["--work", str(work), "--manifest", str(work / "manifest.json"), "--warmup-manifest",
                                 str(work / "warmup.json"), "--cores", str(args.cores), "--driver-memory",
                                 args.driver_memory, "--split-bytes", str(split_bytes),
                                 "--warmup-split-bytes", str(warmup_split_bytes)], args.timeout, script=__file__)
    return run


def prepare(args) -> dict:
    """The measured slice, the warm-up input and both models under `args.tmp` (made once, then reused)."""
    key = slice_key(args, args.keep, args.epoch)
    root = args.tmp / f"cascade-{key}"
    meta_path = root / "inputs.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    docs, train = load_slices(args.corpus, args.docs, args.train_per_file)
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "warmup").mkdir(exist_ok=True)
    write_jsonl(root / "data" / "slice.jsonl", docs)
    warm = [{"id": f"warm-{i}", "text": t[:WARMUP_CHARS]}
            for i, t in enumerate(t for stem in SLICE_FILES for t in train[stem][:args.cores])]
    write_jsonl(root / "warmup" / "warmup.jsonl", warm)
    started = time.time()
    ft = fasttext_model(train, root / f"fasttext-e{args.epoch}.bin", args.epoch)
    scores = fasttext_scores(ft, docs)
    threshold = keep_threshold(scores, args.keep)
    log(f"fastText trained ({time.time() - started:.0f} s); threshold {threshold:.6g} keeps "
        f"{sum(s >= threshold for s in scores)} of {len(docs)}")
    meta = {"root": str(root), "docs": len(docs), "docs_by_file": {s: sum(d["source"] == s for d in docs)
                                                                   for s in SLICE_FILES},
            "train_docs_by_file": {s: len(t) for s, t in train.items()},
            "text_mb": round(sum(len(d["text"].encode("utf-8")) for d in docs) / 1e6, 3),
            "fasttext_model": str(ft), "threshold": threshold,
            "fasttext_keeps_expected": sum(s >= threshold for s in scores),
            "fasttext_kept_rows": [i for i, s in enumerate(scores) if s >= threshold],
            "slice_bytes": (root / "data" / "slice.jsonl").stat().st_size,
            "warmup_bytes": (root / "warmup" / "warmup.jsonl").stat().st_size}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def edu_texts(args) -> list[str]:
    _, train = load_slices(args.corpus, args.docs, args.train_per_file)
    return [t for stem in SLICE_FILES for t in train[stem]]


def bert_lengths(edu: Path, meta: dict, max_length: int | None) -> dict:
    """Mean BERT tokens per measured document after truncation, over all and over the fastText survivors
    (the documents the cascade scores), and the share cut at the limit: a document's cost follows its length."""
    from transformers import AutoTokenizer

    with open(Path(meta["root"]) / "data" / "slice.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    limit = max_length or POSITIONS
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(str(edu), local_files_only=True)(
        texts, truncation=True, max_length=limit)["input_ids"]]
    kept = [lengths[i] for i in meta["fasttext_kept_rows"]]
    return {"mean_tokens": sum(lengths) / len(lengths), "mean_tokens_survivors": sum(kept) / max(1, len(kept)),
            "share_at_limit": sum(n >= limit for n in lengths) / len(lengths), "limit": limit}


def summarise(args, meta: dict, runs: dict[str, dict], lengths: dict) -> dict:
    plain, cascade = runs["plain"], runs["cascade"]
    n = meta["docs"]
    plain_cpu, cascade_cpu = plain["cpu_s"]["total"], cascade["cpu_s"]["total"]
    kept_share = cascade["bert_scored"] / cascade["rows"]
    rate = n / plain_cpu
    shape = "BERT-base" if args.shape == "base" else f"a {args.shape} BERT (not FineWeb-Edu's shape)"
    tokens = f"{args.max_length} tokens (--max-length)" if args.max_length else f"{POSITIONS} tokens"
    label = f"fasttext_quality + fineweb_edu ({shape}, {tokens}), {n} docs"
    figures = [
        fig(f"cascade: tag core-s, {label}, without cascade", plain_cpu, "core-s", "lower"),
        fig(f"cascade: tag core-s, {label}, cascade on fineweb_edu", cascade_cpu, "core-s", "lower"),
        fig("cascade: tag core-s with cascade / without", cascade_cpu / plain_cpu, "ratio", "lower"),
        fig("cascade: share of documents the fastText step keeps (the cascade set's stored `scored` column; "
            f"the threshold is the quantile keeping ~{args.keep:.0%})", kept_share, "share", "lower"),
        fig(f"cascade: fineweb_edu docs/s per core, plain tag ({shape}, {tokens}; the whole tag phase's CPU)",
            rate, "docs/s/core", "higher"),
    ]
    check_ok = (cascade["bert_scored"] == cascade["fasttext_survivors"] == meta["fasttext_keeps_expected"]
                and plain["bert_scored"] == plain["rows"] == n == cascade["rows"])
    # What each document the cascade did not score saved, on average. Not the BERT's cost per document of the
    # whole slice: a document's cost follows its length, and the fastText survivors are longer (bert_lengths), so
    # no split of the plain run's cost into BERT and the rest follows from the two runs (one gave "-2%").
    skipped = n - cascade["bert_scored"]
    saved_per_doc = (plain_cpu - cascade_cpu) / skipped if skipped else None
    outside_workers = (plain["cpu_s"]["driver_python"] + plain["cpu_s"]["jvm"]) / plain_cpu
    hours_all = DCLM_BASELINE_DOCS / rate / 3600
    agree = sum(a == b for a, b in zip(plain["int_scores"], cascade["int_scores"]) if b is not None)
    notes = [
        f"input: the first {n} documents of the shared corpus's "
        f"{', '.join(f'{k} ({v})' for k, v in meta['docs_by_file'].items())} "
        f"({meta['text_mb']:.2f} MB of text) as one source in one plain JSONL, tagged as {plain['tasks']} tasks "
        f"(byte ranges) on local[{args.cores}]; fastText trained on the next documents (academic + encyclopedic "
        f"positive, web negative: {meta['train_docs_by_file']}); its threshold {meta['threshold']:.6g} is the score "
        f"quantile that keeps ~{args.keep:.0%} of the measured documents (DCLM's 0.03311014 keeps ~65.6% of "
        f"DCLM-Baseline, SPEC.md: the cascade saves in proportion to what the fastText step removes)",
        f"fineweb_edu: a randomly initialised {shape} (one regression output, torch 1 thread per Spark task, batch "
        f"32) with a WordPiece tokenizer trained on the corpus, documents truncated at {tokens}"
        + (" (--max-length: shorter than the real model's 512, so cheaper per document)" if args.max_length else
           " as the real classifier's model card does")
        + f"; its scores mean nothing, its cost is the real one. The measured documents average "
          f"{lengths['mean_tokens']:.0f} of its tokens after truncation ({lengths['share_at_limit']:.0%} cut at "
          f"{lengths['limit']}), the fastText survivors {lengths['mean_tokens_survivors']:.0f}",
        f"check: the cascade set scored {cascade['bert_scored']} of {cascade['rows']} rows, the fastText survivors "
        f"counted from its stored scores are {cascade['fasttext_survivors']} (predicted before the run: "
        f"{meta['fasttext_keeps_expected']}); the plain set scored all {plain['bert_scored']}: "
        + ("as expected" if check_ok else "**MISMATCH**")
        + f"; the int_score of the {cascade['bert_scored']} rows both scored agrees on {agree} (batches differ, "
          "so floats may move within rounding)",
        f"CPU: core-seconds of every process (driver Python, JVM, PySpark daemon and workers, from /proc) of the tag "
        f"phase only; session start and a warm-up tag of other documents with the same filters (imports, numba, "
        f"model loads: once per worker) are outside. Plain {plain_cpu:.1f} core-s ({plain['wall_s']:.0f} s wall), "
        f"cascade {cascade_cpu:.1f} core-s ({cascade['wall_s']:.0f} s wall); Python workers "
        f"{plain['cpu_s']['python_workers']:.1f} / {cascade['cpu_s']['python_workers']:.1f}, JVM "
        f"{plain['cpu_s']['jvm']:.1f} / {cascade['cpu_s']['jvm']:.1f}"
        + (f"; each document the cascade did not score saved {saved_per_doc:.3f} core-s on average" if skipped
           else ""),
        f"planning estimate (not measured): SPEC.md's DCLM-Baseline 1.0 holds {DCLM_BASELINE_DOCS / 1e9:.2f}B "
        f"documents; at this run's {rate:.3g} docs/s per core (plain tag, {tokens}) scoring them all with "
        f"FineWeb-Edu takes ~{hours_all:,.0f} core-hours on this CPU; with the cascade after the DCLM fastText "
        f"threshold 0.03311014, which keeps ~{DCLM_FASTTEXT_KEEPS:.1%} of them (SPEC.md), "
        f"~{hours_all * DCLM_FASTTEXT_KEEPS:,.0f} core-hours (the whole tag phase's cost per document counted as "
        f"the BERT's: the driver and the JVM are {outside_workers:.1%} of the plain run's core-s; reading and "
        f"fastText inside the Python workers, on every document either way, are not told apart from the BERT "
        f"there, and fastText alone scores thousands of documents per core-second: bench_filters). The rate is "
        f"for these documents' lengths ({lengths['mean_tokens']:.0f} BERT tokens on average after truncation): "
        f"DCLM-Baseline averages "
        f"~{DCLM_BASELINE_TOKENS / DCLM_BASELINE_DOCS:,.0f} dolma2 tokens per document (SPEC.md: "
        f"{DCLM_BASELINE_TOKENS / 1e12:.2f}T / {DCLM_BASELINE_DOCS / 1e9:.2f}B; its BERT token lengths are not "
        "measured here). A real run scores on GPUs (fineweb_edu's device auto), which this bench does not measure",
    ]
    return {"docs": n, "shape": args.shape, "max_length": args.max_length or POSITIONS,
            "threshold": meta["threshold"], "keep_target": args.keep, "check_scored_equals_survivors": check_ok,
            "bert_tokens": lengths,
            "runs": {k: {kk: vv for kk, vv in v.items() if kk != "int_scores"} for k, v in runs.items()},
            "figures": figures, "notes": notes, "cores": args.cores}


def main(argv=None, run_variant=None) -> dict:
    """The bench; `run_variant(work, spec, warm, split_bytes, warmup_split_bytes)` runs one variant (default:
    `in_child`, a fresh session per variant; the smoke test passes its session's)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--quick", action="store_true", help="--docs 60")
    ap.add_argument("--docs", type=int, default=None, help="measured documents, a third from each file; default 240")
    ap.add_argument("--train-per-file", type=int, default=80,
                    help="documents after the measured ones per file: fastText's and the tokenizer's training")
    ap.add_argument("--keep", type=float, default=0.2, help="share of the measured documents the fastText step keeps")
    ap.add_argument("--epoch", type=int, default=5, help="fastText training epochs")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="base",
                    help="the BERT's shape: base is FineWeb-Edu's; tiny only for smoke tests")
    ap.add_argument("--max-length", type=int, default=None,
                    help="fineweb_edu's max_length (default: the tokenizer's 512, as the real classifier)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--driver-memory", default="2g")
    ap.add_argument("--tmp", type=Path, default=TMP, help="where the slice and the models are kept between runs")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per tag child")
    ap.add_argument("--child", choices=["tag"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    ap.add_argument("--warmup-manifest", help=argparse.SUPPRESS)
    ap.add_argument("--split-bytes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--warmup-split-bytes", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child_tag(args)))
        return {}
    if args.docs is None:
        args.docs = 60 if args.quick else 240
    if args.docs < 3 or not 0 < args.keep < 1 or args.cores < 1:
        ap.error("--docs must be at least 3, --keep in (0, 1) and --cores at least 1")
    args.tmp.mkdir(parents=True, exist_ok=True)
    try:
        meta = prepare(args)
    except (OSError, ValueError) as exc:  # a missing corpus, too few documents for --docs
        ap.error(str(exc))
    root = Path(meta["root"])
    edu = root / f"edu-{args.shape}"
    if not (edu / "done.json").exists():
        edu_model(edu_texts(args), edu, args.shape)
    run_variant = run_variant or in_child(args)
    work = Path(tempfile.mkdtemp(prefix="bench-cascade-", dir=args.tmp))
    runs = {}
    try:
        for variant in ("plain", "cascade"):
            vwork = work / variant
            vwork.mkdir()
            spec = manifest(root / "data", Path(meta["fasttext_model"]), meta["threshold"], edu,
                            variant == "cascade", args.max_length)
            # the warm-up: the same filters without cascade, so that every worker loads both models
            warm = {**manifest(root / "warmup", Path(meta["fasttext_model"]), meta["threshold"], edu, False,
                               args.max_length), "name": "bench-cascade-warmup"}
            runs[variant] = run_variant(vwork, spec, warm, -(-meta["slice_bytes"] // args.cores),
                                        -(-meta["warmup_bytes"] // args.cores))
            log(f"{variant}: tag {runs[variant]['cpu_s']['total']:.1f} core-s, {runs[variant]['wall_s']:.0f} s wall, "
                f"fineweb_edu scored {runs[variant]['bert_scored']} of {runs[variant]['rows']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = summarise(args, meta, runs, bert_lengths(edu, meta, args.max_length))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
