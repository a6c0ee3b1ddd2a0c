"""Benchmark the dedup stages on the shared real-text corpus; prints one JSON object.

    python bench/bench_dedup.py                     # whole corpus, local[1]
    python bench/bench_dedup.py --limit-per-file 2000 --cores 2 --plant-rate 0.05

Three measurements:

1. `signature_throughput`: MinHash signatures in one process (docs/s, MB/s and shingles/s
   per core), plus the peak extra memory of signing the largest document (tracemalloc) and
   the process peak RSS. Against datasketch on an evenly spaced sample, each side at its
   fastest call (datasketch: `MinHash.bulk` or one `MinHash` + `update_batch` per document,
   whichever is faster), CPU time, best of 3, in two ways: text to signature (shingling
   timed on both sides: both split words with `words_of`; datasketch, which has no shingler,
   gets its shingles as bytes from `shingles_of`, dolmino makes byte ranges) and hashing
   only (shingling excluded on both sides: shingles made before the clock). The signatures
   are checked equal.
2. `spark_minhash`: end to end on local[cores] over a corpus with planted near-duplicates,
   written as JSONL shards: read the shards, `near_duplicate_clusters`, filter (reading the
   shards again) and write the kept documents as JSONL, as datatrove's pipeline does. It
   runs in a child interpreter that holds no corpus (`--child-spark`), so the driver's peak
   RSS is the driver's own. Its cost is the CPU time of every process of the Spark session
   over that span (driver Python, JVM, PySpark daemon and workers, sampled from /proc:
   bench/proctree.CpuMeter), after an untimed warm-up job on the same session (JVM start,
   worker start, numba compiles, like datatrove's interpreter start and imports, which its
   figure leaves out too). Also wall time, peak RSS (VmHWM) of every process and the stage
   stats.
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
its input), peak memory (dolmino: the sum of every process's peak, driver Python, JVM,
PySpark daemon and workers; datatrove: its process) and recall/precision. The default is
local[1]; Spark's fixed per-job cost weighs more on small corpora. Most of datatrove's
end-to-end CPU is its signature stage, which splits words with spaCy (its default English
word tokenizer) where dolmino uses one regex: the end-to-end ratio is mostly that.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

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


def _best_cpu_s(fn, repeats: int = 3) -> float:
    """Least CPU time of this process over `repeats` calls of fn (CPU time: other processes'
    load on a shared host inflates wall time, not this)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _hash_spans(hasher: MinHasher, spans) -> np.ndarray:
    """`MinHasher.text_signature` after its `shingle_spans`: dolmino's hashing alone (the
    benchmark checks it equal to text_signature, so a change there cannot go unnoticed)."""
    from filters import minhash

    hashes = minhash._sha1_first32(*spans)
    if hashes.size > minhash.CHUNK:
        hashes = np.unique(hashes)
    if minhash._permute_min is None:
        return hasher.update(hasher.empty(), hashes)
    return minhash._permute_min(hashes, hasher.a, hasher.b, hasher.empty())


def signature_throughput(docs: list[dict], num_perm: int = 128, ngram: int = 5, seed: int = 1,
                         datasketch_sample: int = 1000, repeats: int = 3) -> dict:
    """Single-process signature speed (one core) and memory, and datasketch's on a sample.

    datasketch gets its fastest documented call (`MinHash.bulk`, which makes the permutations
    once, or a `MinHash` + `update_batch` per document, whichever is faster here); each side
    is timed text to signature (both shingle: datasketch through `shingles_of`, since it has
    no shingler of its own) and hashing only (shingles made before the clock on both sides).
    Until 2026-12-06 datasketch got a new MinHash per document inside its clock, wall time.
    """
    from datasketch import MinHash

    from filters.minhash import shingle_spans

    hasher = MinHasher(num_perm, seed)
    hasher.text_signature("compile the kernels before timing", ngram)
    texts = [d["text"] for d in docs]
    total_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    start = time.perf_counter()
    for text in texts:
        hasher.text_signature(text, ngram)
    elapsed = time.perf_counter() - start
    sample = texts[:: max(1, len(texts) // datasketch_sample)][:datasketch_sample]

    def shingles():
        return [shingles_of(words_of(text), ngram) for text in sample]

    def bulk(made):
        return MinHash.bulk(made, num_perm=num_perm, seed=seed)

    def one_by_one(made):
        out = []
        for s in made:
            m = MinHash(num_perm=num_perm, seed=seed)
            m.update_batch(s)
            out.append(m)
        return out

    made = shingles()
    spans = [shingle_spans(text, ngram) for text in sample]
    ours = [hasher.text_signature(text, ngram) for text in sample]
    theirs = bulk(made)
    alone = [None if s is None else _hash_spans(hasher, s) for s in spans]
    if any(sig is not None and not (np.array_equal(sig, m.hashvalues) and np.array_equal(sig, a))
           for sig, m, a in zip(ours, theirs, alone)):
        raise RuntimeError("dolmino's signatures differ from datasketch's on the sample: not the same work; "
                           "check filters/minhash.py against bench_dedup._hash_spans")
    ds_calls = {"bulk": _best_cpu_s(lambda: bulk(made), repeats),
                "update_batch": _best_cpu_s(lambda: one_by_one(made), repeats)}
    ds_call = min(ds_calls, key=ds_calls.get)
    ds_call_fn = bulk if ds_call == "bulk" else one_by_one
    ds_text = _best_cpu_s(lambda: ds_call_fn(shingles()), repeats)
    ours_text = _best_cpu_s(lambda: [hasher.text_signature(text, ngram) for text in sample], repeats)
    ours_hashing = _best_cpu_s(lambda: [_hash_spans(hasher, s) for s in spans if s is not None], repeats)
    start = time.perf_counter()
    for text in sample:
        hasher.text_signature_reference(text, ngram)
    reference_elapsed = time.perf_counter() - start
    largest = max(texts, key=len)
    tracemalloc.start()
    hasher.text_signature(largest, ngram)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = len(sample)
    return {
        "docs": len(texts), "text_mb": round(total_bytes / 1e6, 2), "seconds": round(elapsed, 3),
        "docs_per_s_per_core": round(len(texts) / elapsed, 1),
        "mb_per_s_per_core": round(total_bytes / 1e6 / elapsed, 2),
        "sample_docs": n, "sample_timing": f"CPU time, best of {repeats}",
        "sample_docs_per_s": round(n / ours_text, 1),
        "sample_hashing_only_docs_per_s": round(n / ours_hashing, 1),
        "datasketch_call": ds_call,
        "datasketch_calls_hashing_only_docs_per_s": {k: round(n / v, 1) for k, v in ds_calls.items()},
        "datasketch_docs_per_s": round(n / ds_text, 1),
        "datasketch_hashing_only_docs_per_s": round(n / ds_calls[ds_call], 1),
        "hashlib_reference_docs_per_s": round(n / reference_elapsed, 1),
        "speedup_vs_datasketch": round(ds_text / ours_text, 2),
        "speedup_vs_datasketch_hashing_only": round(ds_calls[ds_call] / ours_hashing, 2),
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


def spark_peak_mb(memory: dict, cores: int) -> float:
    """dolmino's side of the peak RSS comparison: every process of the Spark session, as datatrove's
    figure is its whole process. Each process's own peak, summed (they need not peak together):
    the driver's Python, the JVM, PySpark's daemon and the largest worker once per core."""
    return (memory["driver_python_mb"] + memory["jvm_mb"] + memory["python_daemon_mb"]
            + memory["python_forked_worker_max_mb"] * max(1, cores))


def child_spark(args) -> dict:
    """`--child-spark`: the Spark run in a fresh interpreter that never loaded the corpus, so the
    driver's peak RSS is what a dedup driver needs, not the benchmark's documents."""
    shards = sorted(Path(args.shards).glob("part-*.jsonl"))
    spark = make_spark(args.cores)
    try:
        run = spark_minhash(spark, shards, Path(args.kept), num_perm=args.num_perm, ngram=args.ngram,
                            threshold=args.threshold, seed=args.seed, verify=not args.no_verify)
    finally:
        spark.stop()
    run["removed"] = sorted(run["removed"].items())  # JSON keys are strings; the keys are 128-bit ints
    return run


def run_spark_child(shards_dir: Path, kept_dir: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-spark", "--shards", str(shards_dir),
           "--kept", str(kept_dir), "--cores", str(args.cores), "--num-perm", str(args.num_perm),
           "--ngram", str(args.ngram), "--threshold", str(args.threshold), "--seed", str(args.seed),
           *(["--no-verify"] if args.no_verify else [])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"the Spark dedup run (--child-spark) exited {proc.returncode}: {proc.stderr[-3000:]}")
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    run["removed"] = dict(run["removed"])
    return run


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


# Until 2026-12-06 "dedup/minhash peak RSS" counted only the JVM and the largest Python worker on
# dolmino's side; this name is the figure that counts every process, so that bench/comparability.py
# can keep the old one's ratio out of REPORT.md without touching this one.
PEAK_RSS = "dedup/minhash summed peak RSS (every process)"


def figures(result: dict) -> list[dict]:
    """The comparable numbers, named so that bench/run.py can pair dolmino with datatrove."""
    out = []

    def add(name, impl, value, unit, better, **extra):
        if value is not None:
            out.append({"name": name, "impl": impl, "value": round(float(value), 4), "unit": unit,
                        "better": better, **extra})

    sig = result.get("signatures", {})
    add("dedup/minhash signatures docs/s per core", "dolmino", sig.get("docs_per_s_per_core"), "docs/s", "higher")
    text, hashing = ("dedup/minhash signatures docs/s per core (sample, text to signature)",
                     "dedup/minhash signatures docs/s per core (sample, hashing only)")
    add(text, "dolmino", sig.get("sample_docs_per_s"), "docs/s", "higher")
    add(text, "datasketch", sig.get("datasketch_docs_per_s"), "docs/s", "higher",
        note=f"words_of + shingles_of (datasketch has no shingler) + MinHash {sig.get('datasketch_call')}")
    add(hashing, "dolmino", sig.get("sample_hashing_only_docs_per_s"), "docs/s", "higher")
    add(hashing, "datasketch", sig.get("datasketch_hashing_only_docs_per_s"), "docs/s", "higher",
        note=f"MinHash {sig.get('datasketch_call')} on shingles made before the clock")
    spark, dt = result.get("spark_minhash"), result.get("datatrove_minhash")
    if spark:
        mem = spark["memory"]
        add("dedup/minhash end-to-end docs per CPU-second (all processes, I/O included)", "dolmino",
            spark["docs_per_cpu_s"], "docs/s", "higher",
            note=f"Spark local[{spark['cores']}]: read shards, signatures+LSH+verify+components, filter, write kept; "
                 "CPU of driver, JVM and Python workers")
        add(PEAK_RSS, "dolmino", spark_peak_mb(mem, spark["cores"]), "MB", "lower",
            note="driver Python (holds no corpus) + JVM + PySpark daemon + Python workers, each one's VmHWM")
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
        add(PEAK_RSS, "datatrove", dt["peak_rss_mb"], "MB", "lower")
        add("dedup/minhash recall", "datatrove", dt["quality"]["recall"], "fraction", "higher")
        add("dedup/minhash precision", "datatrove", dt["quality"]["precision"], "fraction", "higher")
    return out


def notes(result: dict) -> list[str]:
    """What the report should say next to the figures: where the two sides' work differs."""
    out = []
    sig = result.get("signatures", {})
    if "datasketch_call" in sig:
        calls = ", ".join(f"{k} {v:,.0f}" for k, v in sig["datasketch_calls_hashing_only_docs_per_s"].items())
        out.append(f"signatures (sample of {sig['sample_docs']:,} documents, {sig['sample_timing']}): datasketch "
                   f"timed with MinHash {sig['datasketch_call']}, its faster call here (hashing only: {calls} "
                   "docs/s); text to signature: both shingle (datasketch through words_of + shingles_of), dolmino "
                   f"{sig['speedup_vs_datasketch']}x; hashing only (shingles made before the clock on both "
                   f"sides): {sig['speedup_vs_datasketch_hashing_only']}x")
    spark, dt = result.get("spark_minhash"), result.get("datatrove_minhash")
    if spark:
        m = spark["memory"]
        out.append(f"peak RSS: dolmino sums each process's VmHWM, driver Python {m['driver_python_mb']:.0f} MB (a "
                   f"process that holds no corpus) + JVM {m['jvm_mb']:.0f} + PySpark daemon "
                   f"{m['python_daemon_mb']:.0f} + largest Python worker {m['python_forked_worker_max_mb']:.0f} x "
                   f"{spark['cores']} core(s); datatrove's is its one process's")
    if dt and "unavailable" not in dt:
        share = dt["seconds"]["signatures"] / dt["total_seconds"]
        out.append(f"end to end: datatrove's signature stage is {share:.0%} of its stages' wall time; it splits "
                   "words with spaCy's English tokenizer (datatrove's default), dolmino with one regex "
                   "(filters.minhash.words_of), and a review (2026-12-06) found that tokenizer most of the stage: "
                   "the end-to-end ratio is mostly a word tokenizer's, not MinHash's")
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
    ap.add_argument("--child-spark", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shards", help=argparse.SUPPRESS)
    ap.add_argument("--kept", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_spark:
        run = child_spark(args)
        print(json.dumps(run))
        return run

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
            write_shards(planted, work / "input", args.partitions or 4 * args.cores)
            run = run_spark_child(work / "input", work / "kept", args)
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
    result["notes"] = notes(result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
