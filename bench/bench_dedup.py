"""Benchmark the dedup stages on the shared real-text corpus; prints one JSON object.

    python bench/bench_dedup.py                     # whole corpus, local[2]
    python bench/bench_dedup.py --limit-per-file 2000 --cores 2 --plant-rate 0.05

Three measurements:

1. `signature_throughput`: MinHash signatures in one process (docs/s, MB/s and shingles/s
   per core), against datasketch's own MinHash.update_batch on a sample, plus the peak
   extra memory of signing the largest document (tracemalloc) and the process peak RSS.
2. `spark_minhash`: end to end on local[cores] over a corpus with planted near-duplicates,
   written as JSONL shards: read the shards, `near_duplicate_clusters`, filter (reading the
   shards again) and write the kept documents as JSONL, as datatrove's pipeline does. Its
   cost is the CPU time of every process of the Spark session over that span (driver
   Python, JVM, PySpark daemon and workers, sampled from /proc: bench/proctree.CpuMeter), after an
   untimed warm-up job on the same session (JVM start, worker start, numba compiles, like
   datatrove's interpreter start and imports, which its figure leaves out too). Also wall
   time, peak RSS of the JVM and of the Python workers (VmHWM), and the stage stats.
3. `score_clusters`: recall (planted copies removed, also by true-Jaccard band, next to the
   LSH S-curve's prediction) and precision (a removal is right when the document and its
   survivor are in the same planted group or have true Jaccard >= threshold - 0.1).

4. `datatrove_minhash`: datatrove 0.10.1's four MinHash stages (signatures, buckets,
   clustering, filter) with LocalPipelineExecutor(workers=1) in the datatrove anchor venv
   (bench/anchor_scripts/minhash_datatrove.py) on the SAME JSONL shards and the same
   banding, scored by the same `score_clusters`: seconds per stage, CPU seconds of the four
   stages (its process and any child it waited for: reading, intermediate files and the
   kept output included), peak RSS of its one process.

"figures" compares them: MinHash end to end in documents per CPU-second (all processes,
I/O included, on both sides; the same input bytes in, the kept documents out as JSONL),
signatures alone (dolmino's one-process signer vs datatrove's stage 1, which also reads
its input), peak memory (dolmino: JVM + Python workers; datatrove: its process) and
recall/precision. The default is local[1]; Spark's fixed per-job cost weighs more on small
corpora.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.comparability import not_comparable  # noqa: E402
from filters.dedup import document_key, drop_keys, near_duplicate_clusters  # noqa: E402
from filters.minhash import (  # noqa: E402
    MinHashConfig, MinHasher, collision_probability, shingles_of, words_of,
)

CORPUS = REPO.parent / "shared" / "corpus"
FILES = ("web.jsonl.zst", "code.jsonl.zst", "encyclopedic.jsonl.zst", "academic.jsonl.zst")
INSERTED = "This sentence was added by a mirror of the original page .".split()


def load_corpus(corpus_dir: Path = CORPUS, files=FILES, limit_per_file: int | None = None) -> list[dict]:
    """Dolma docs from the shared corpus, each with a unique `loc` (file:line)."""
    from dolmino.documents import Quarantine, read_documents

    docs = []
    for name in files:
        path = Path(corpus_dir) / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the shared corpus must sit beside the repository")
        for n, (line_no, doc) in enumerate(read_documents(str(path), Quarantine())):
            if limit_per_file is not None and n >= limit_per_file:
                break
            doc["loc"] = f"{name}:{line_no}"
            docs.append(doc)
    return docs


def true_jaccard(a: str, b: str, ngram: int = 5) -> float:
    sa, sb = set(shingles_of(words_of(a), ngram)), set(shingles_of(words_of(b), ngram))
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def _edit(words: list[str], rng: random.Random, rate: float, vocabulary: list[str]) -> list[str]:
    """Substitute, delete or insert about `rate` of the words (mixed), like a mirrored page."""
    out = list(words)
    edits = max(1, int(len(out) * rate))
    for _ in range(edits):
        kind = rng.random()
        i = rng.randrange(len(out))
        if kind < 0.45:
            out[i] = rng.choice(vocabulary)
        elif kind < 0.9 and len(out) > 1:
            del out[i]
        else:
            out[i:i] = INSERTED
    return out


def plant_near_duplicates(docs: list[dict], rate: float = 0.05, seed: int = 0, min_words: int = 100,
                          edit_rates=(0.002, 0.005, 0.01, 0.02, 0.04)) -> tuple[list[dict], dict[str, list[str]], dict[str, float]]:
    """Add near-duplicate copies of `rate` of the documents.

    Returns (docs + copies, groups {original loc: [original loc, copy locs...]},
    true Jaccard {copy loc: similarity to its original}). Edit rates vary so that the
    copies span similarities around the threshold.
    """
    rng = random.Random(seed)
    eligible = [d for d in docs if len(d["text"].split(" ")) >= min_words]
    originals = rng.sample(eligible, min(len(eligible), int(len(docs) * rate)))
    vocabulary = [w for d in rng.sample(docs, min(200, len(docs))) for w in d["text"].split()[:200]]
    out = list(docs)
    groups: dict[str, list[str]] = {}
    similarity: dict[str, float] = {}
    for n, orig in enumerate(originals):
        groups[orig["loc"]] = [orig["loc"]]
        for c in range(1 + (n % 3 == 0)):
            text = " ".join(_edit(orig["text"].split(" "), rng, rng.choice(edit_rates), vocabulary))
            copy = {"id": f"planted-{n}-{c}", "text": text, "source": orig.get("source", ""),
                    "loc": f"planted:{n}:{c}"}
            out.append(copy)
            groups[orig["loc"]].append(copy["loc"])
            similarity[copy["loc"]] = true_jaccard(orig["text"], text)
    rng.shuffle(out)
    return out, groups, similarity


def _peak_rss_mb() -> float:
    from bench.proctree import self_peak_rss_mb

    return self_peak_rss_mb()


def signature_throughput(docs: list[dict], num_perm: int = 128, ngram: int = 5, seed: int = 1,
                         datasketch_sample: int = 1000) -> dict:
    """Single-process signature speed (one core) and memory.

    The datasketch comparison uses an evenly spaced sample of the documents (same words
    and shingles given to both), timing MinHash(num_perm, seed).update_batch.
    """
    from datasketch import MinHash

    hasher = MinHasher(num_perm, seed)
    hasher.text_signature("compile the kernels before timing", ngram)
    texts = [d["text"] for d in docs]
    total_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    start = time.perf_counter()
    for text in texts:
        hasher.text_signature(text, ngram)
    elapsed = time.perf_counter() - start
    sample = texts[:: max(1, len(texts) // datasketch_sample)][:datasketch_sample]
    start = time.perf_counter()
    for text in sample:
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(shingles_of(words_of(text), ngram))
    ds_elapsed = time.perf_counter() - start
    start = time.perf_counter()
    for text in sample:
        hasher.text_signature_reference(text, ngram)
    reference_elapsed = time.perf_counter() - start
    start = time.perf_counter()
    for text in sample:
        hasher.text_signature(text, ngram)
    ours_sample = time.perf_counter() - start
    largest = max(texts, key=len)
    tracemalloc.start()
    hasher.text_signature(largest, ngram)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "docs": len(texts), "text_mb": round(total_bytes / 1e6, 2), "seconds": round(elapsed, 3),
        "docs_per_s_per_core": round(len(texts) / elapsed, 1),
        "mb_per_s_per_core": round(total_bytes / 1e6 / elapsed, 2),
        "sample_docs": len(sample),
        "sample_docs_per_s": round(len(sample) / ours_sample, 1),
        "datasketch_update_batch_docs_per_s": round(len(sample) / ds_elapsed, 1),
        "hashlib_reference_docs_per_s": round(len(sample) / reference_elapsed, 1),
        "speedup_vs_datasketch_same_docs": round(ds_elapsed / ours_sample, 2),
        "largest_doc_mb": round(len(largest.encode("utf-8", "surrogatepass")) / 1e6, 2),
        "largest_doc_traced_peak_mb": round(traced_peak / 1e6, 2),
        "process_peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def make_spark(cores: int, driver_memory: str = "4g"):
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(f"local[{cores}]").appName("bench-dedup")
             .config("spark.driver.memory", driver_memory).config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def write_shards(docs: list[dict], directory: Path, shards: int) -> list[Path]:
    """The benchmark input as JSONL shards ({"id": loc, "text"}), read by both tools."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"part-{i:03d}.jsonl" for i in range(shards)]
    per = -(-len(docs) // shards)
    for i, path in enumerate(paths):
        with open(path, "w", encoding="utf-8") as f:
            for d in docs[i * per:(i + 1) * per]:
                f.write(json.dumps({"id": d["loc"], "text": d["text"]}, ensure_ascii=False) + "\n")
    return paths


def _read_shard(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _write_kept(out_dir: str, index: int, docs) -> list[int]:
    n = 0
    with open(os.path.join(out_dir, f"kept-{index:05d}.jsonl"), "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
            n += 1
    return [n]


def spark_minhash(spark, shards: list[Path], out_dir: Path, **params) -> dict:
    """Read shards -> clusters -> filter (reads the shards again) -> kept JSONL; CPU of every process.

    Returns timings, stats and the removal map {keep key: survivor keep key} (keys of the
    shard records, whose id is the document's loc)."""
    from bench.proctree import CpuMeter, SparkProcesses

    sc = spark.sparkContext
    out_dir.mkdir(parents=True, exist_ok=True)
    warm = sc.parallelize([{"id": f"w{i}", "text": f"warm up document number {i} " * 20} for i in range(64)], 2)
    near_duplicate_clusters(warm, **params)[0].unpersist()  # untimed: worker start, numba compiles
    start = time.perf_counter()
    with CpuMeter() as meter:
        rdd = sc.parallelize([str(p) for p in shards], len(shards)).flatMap(_read_shard)
        roots, stats = near_duplicate_clusters(rdd, **params)
        clustered = time.perf_counter()
        kept_rdd = drop_keys(rdd, document_key, roots, stats["removed_docs"])
        target = str(out_dir)
        kept = sum(kept_rdd.mapPartitionsWithIndex(lambda i, it: _write_kept(target, i, it)).collect())
    elapsed = time.perf_counter() - start
    cpu = meter.result()
    removed = dict(roots.collect())  # for scoring, after the clock
    roots.unpersist()
    assert kept == stats["kept_docs"], (kept, stats["kept_docs"])
    cores = sc.defaultParallelism
    docs = stats["docs_in"]
    return {"seconds": round(elapsed, 3), "cluster_seconds": round(clustered - start, 3), "cores": cores,
            "cpu_seconds": cpu, "docs": docs, "docs_per_cpu_s": round(docs / cpu["total"], 1),
            "docs_per_s_per_core": round(docs / elapsed / cores, 1), "stats": stats,
            "memory": SparkProcesses.find().peaks_mb(), "removed": removed}


def score_clusters(docs: list[dict], groups: dict[str, list[str]], similarity: dict[str, float],
                   removed: dict, threshold: float = 0.8, num_perm: int = 128, tolerance: float = 0.1) -> dict:
    """Recall and precision of a removal map {keep key: survivor keep key} on planted data.

    recall: planted documents removed / planted copies (all similarities).
    recall_at_or_above_threshold: copies with true Jaccard >= threshold that ended in
    their original's cluster. precision: removals whose document and survivor are in the
    same planted group or have true Jaccard >= threshold - tolerance.
    """
    bands, rows = MinHashConfig(num_perm=num_perm, threshold=threshold).banding()
    by_key = {document_key(d): d for d in docs}
    by_loc = {d["loc"]: d for d in docs}
    removed_locs = {by_key[k]["loc"] for k in removed}
    group_of = {loc: g for g, members in groups.items() for loc in members}
    expected = sum(len(m) - 1 for m in groups.values())
    hit = sum(min(len(set(m) & removed_locs), len(m) - 1) for m in groups.values())
    correct = 0
    wrong = []
    for key, root in removed.items():
        doc, survivor = by_key[key], by_key[root]
        if group_of.get(doc["loc"]) is not None and group_of.get(doc["loc"]) == group_of.get(survivor["loc"]):
            correct += 1
            continue
        j = true_jaccard(doc["text"], survivor["text"])
        if j >= threshold - tolerance:
            correct += 1
        else:
            wrong.append({"removed": doc["loc"], "kept": survivor["loc"], "true_jaccard": round(j, 3)})
    def cluster_of(doc: dict):
        key = document_key(doc)
        return removed.get(key, key)

    same_cluster = {}
    for members in groups.values():
        orig_cluster = cluster_of(by_loc[members[0]])
        for loc in members[1:]:
            same_cluster[loc] = cluster_of(by_loc[loc]) == orig_cluster
    by_band = {}
    for lo, hi in ((0.0, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01)):
        copies = [loc for loc, s in similarity.items() if lo <= s < hi]
        if not copies:
            continue
        predicted = sum(collision_probability(similarity[loc], bands, rows) for loc in copies) / len(copies)
        by_band[f"{lo:.1f}-{min(hi, 1.0):.1f}"] = {
            "copies": len(copies), "found": round(sum(same_cluster[loc] for loc in copies) / len(copies), 3),
            "lsh_predicted": round(predicted, 3)}
    above = [loc for loc, s in similarity.items() if s >= threshold]
    return {
        "planted_groups": len(groups), "planted_copies": expected,
        "recall": round(hit / expected, 4) if expected else None,
        "copies_at_or_above_threshold": len(above),
        "recall_at_or_above_threshold": round(sum(same_cluster[loc] for loc in above) / len(above), 4) if above else None,
        "removed": len(removed), "precision": round(correct / len(removed), 4) if removed else None,
        "natural_or_chained_removals": len(removed) - hit,
        "false_positives": wrong[:20], "false_positive_count": len(wrong),
        "recall_by_true_jaccard": by_band,
    }


def datatrove_minhash(docs: list[dict], shards_dir: Path, groups: dict[str, list[str]],
                      similarity: dict[str, float], num_perm: int = 128, ngram: int = 5, threshold: float = 0.8,
                      seed: int = 1) -> dict:
    """datatrove's four MinHash stages on the JSONL shards (one process), scored like dolmino's run."""
    import shutil
    import subprocess
    import tempfile

    from bench.anchors import AnchorUnavailable, anchor_python

    try:
        python = anchor_python("datatrove")
    except AnchorUnavailable as exc:
        return {"unavailable": str(exc)[:500]}
    bands, rows = MinHashConfig(num_perm=num_perm, threshold=threshold).banding()
    tmp_root = REPO / "bench" / "results" / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dedup-datatrove-", dir=tmp_root))
    try:
        cmd = [str(python), str(REPO / "bench" / "anchor_scripts" / "minhash_datatrove.py"), "--input", str(shards_dir),
               "--work", str(work / "run"), "--bands", str(bands), "--rows", str(rows), "--ngram", str(ngram),
               "--seed", str(seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
        if proc.returncode != 0:
            return {"unavailable": f"minhash_datatrove.py failed: {proc.stderr[-2000:]}"}
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    key_of = {d["loc"]: document_key(d) for d in docs}
    removed = {key_of[a]: key_of[b] for a, b in out.pop("removed").items()}
    out["bands"], out["rows"] = bands, rows
    out["docs_per_s_per_core"] = round(len(docs) / out["total_seconds"], 1)
    out["docs_per_cpu_s"] = round(len(docs) / out["cpu_seconds"], 1)
    out["quality"] = score_clusters(docs, groups, similarity, removed, threshold, num_perm)
    return out


def figures(result: dict) -> list[dict]:
    """The comparable numbers, named so that bench/run.py can pair dolmino with datatrove."""
    out = []

    def add(name, impl, value, unit, better, **extra):
        if value is not None:
            out.append({"name": name, "impl": impl, "value": round(float(value), 4), "unit": unit,
                        "better": better, **extra})

    sig = result.get("signatures", {})
    add("dedup/minhash signatures docs/s per core", "dolmino", sig.get("docs_per_s_per_core"), "docs/s", "higher")
    add("dedup/minhash signatures docs/s per core (sample)", "dolmino", sig.get("sample_docs_per_s"), "docs/s", "higher")
    add("dedup/minhash signatures docs/s per core (sample)", "datasketch",
        sig.get("datasketch_update_batch_docs_per_s"), "docs/s", "higher")
    spark, dt = result.get("spark_minhash"), result.get("datatrove_minhash")
    if spark:
        mem = spark["memory"]
        add("dedup/minhash end-to-end docs per CPU-second (all processes, I/O included)", "dolmino",
            spark["docs_per_cpu_s"], "docs/s", "higher",
            note=f"Spark local[{spark['cores']}]: read shards, signatures+LSH+verify+components, filter, write kept; "
                 "CPU of driver, JVM and Python workers")
        add("dedup/minhash peak RSS", "dolmino",
            mem["jvm_mb"] + mem["python_worker_max_mb"] * max(1, spark["cores"]), "MB", "lower",
            note="JVM + Python workers (VmHWM)")
        add("dedup/minhash recall", "dolmino", spark["quality"]["recall"], "fraction", "higher")
        add("dedup/minhash precision", "dolmino", spark["quality"]["precision"], "fraction", "higher")
    if dt and "unavailable" not in dt:
        add("dedup/minhash end-to-end docs per CPU-second (all processes, I/O included)", "datatrove",
            dt["docs_per_cpu_s"], "docs/s", "higher",
            note="4 stages, LocalPipelineExecutor workers=1: read, intermediate files, write kept; CPU of its process")
        name = "dedup/minhash signatures docs/s per core"
        add(name, "datatrove", dt["docs"] / dt["seconds"]["signatures"], "docs/s", "higher",
            note="stage 1 (includes reading the JSONL input)",
            not_comparable=not_comparable("dedup", name, "datatrove"))
        add("dedup/minhash peak RSS", "datatrove", dt["peak_rss_mb"], "MB", "lower")
        add("dedup/minhash recall", "datatrove", dt["quality"]["recall"], "fraction", "higher")
        add("dedup/minhash precision", "datatrove", dt["quality"]["precision"], "fraction", "higher")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--limit-per-file", type=int, default=None)
    ap.add_argument("--cores", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=None, help="input partitions (default 4 x cores)")
    ap.add_argument("--plant-rate", type=float, default=0.05)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--skip-datatrove", action="store_true")
    args = ap.parse_args(argv)

    docs = load_corpus(args.corpus, limit_per_file=args.limit_per_file)
    result = {"corpus_docs": len(docs),
              "signatures": signature_throughput(docs, args.num_perm, args.ngram, args.seed)}
    if not args.skip_spark:
        import shutil
        import tempfile

        planted, groups, similarity = plant_near_duplicates(docs, args.plant_rate, seed=args.seed)
        tmp_root = REPO / "bench" / "results" / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="dedup-", dir=tmp_root))
        try:
            shards = write_shards(planted, work / "input", args.partitions or 4 * args.cores)
            spark = make_spark(args.cores)
            run = spark_minhash(spark, shards, work / "kept", num_perm=args.num_perm, ngram=args.ngram,
                                threshold=args.threshold, seed=args.seed, verify=not args.no_verify)
            spark.stop()
            # The shard records' keys (id = loc) back to the planted documents' keys, for scoring.
            key_of = {document_key({"id": d["loc"]}): document_key(d) for d in planted}
            removed = {key_of[k]: key_of[v] for k, v in run.pop("removed").items()}
            run["quality"] = score_clusters(planted, groups, similarity, removed, args.threshold, args.num_perm)
            result["spark_minhash"] = run
            if not args.skip_datatrove:
                result["datatrove_minhash"] = datatrove_minhash(planted, work / "input", groups, similarity,
                                                                args.num_perm, args.ngram, args.threshold, args.seed)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    result["figures"] = figures(result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
