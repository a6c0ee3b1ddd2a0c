"""The build at scale: tag once, mix a small budget from a large pool, and what each costs.

    python bench/bench_scale.py                 # pool unit 40 MB of text: 1x / 4x / 16x = 40 / 160 / 640 MB
    python bench/bench_scale.py --quick         # pool unit 20 MB: 20 / 80 / 320 MB
    python bench/bench_scale.py --only small-files
    python bench/bench_scale.py --only s3-small-files
    python bench/bench_scale.py --only cluster-memory

What runs (issue 10, "Measured in bench/"):

1. A pool made from the shared corpus: four sources (web, code, encyclopedic, academic),
   each a stream of the corpus file's documents followed by replicas of them with seeded
   word swaps (about 12% of the words of a document swapped with other words of the same
   document, a new id per replica), so neither exact nor MinHash dedup collapses a replica
   into its original. The stream is cut into files of `--unit-mb / 8` MB of text
   (.jsonl.zst), written once under bench/results/tmp/ and reused (deterministic: same
   bytes every time). The pool at Nx is the first N units of every source.
2. One fixed budget, `pool tokens at the largest scale / --pool-ratio` (default 22), with
   Mix % proportional to each source's pool tokens, so every source's pool is the same
   multiple of its target: ~1.4x at 1x (the pool near the budget: tokenized whole), ~5.5x
   at 4x, ~22x at 16x. Manifest: min_length 16 and repeated_ngrams (both decide on token
   ids, so the mix phase runs them on what it tokenizes), label masks, exact dedup on
   every source.
3. Each scale is built in its own process (`--child point`): a fresh Spark local[cores]
   session, an untimed warm-up build on a tiny pool (JVM start, Python workers, JIT), then
   `dolmino.build.mix.build(..., phase="tag")` and `build(..., phase="mix")`, each timed
   by wall clock and by the CPU time of the whole process tree (bench/proctree.CpuMeter: the
   driver's Python, the JVM that is driver and executor in local mode, PySpark's daemon and
   every Python worker, reaped ones included). Peak RSS (VmHWM) of the driver's Python and
   the JVM is read at the end.
4. Tokenize-only, the ceiling, run between the mix and the repeated mix (the shared
   machine's load moves CPU time per token): the build's output documents (read back from
   the parts' sidecars, each distinct document once) are tokenized in a fresh process with
   `Dolma2Tokenizer.encode_batch` (= `encode_batch_fast` in batches of 256, what the build
   calls), RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false as each build worker has.
   Its core-seconds are the process's CPU time around the encode calls only (texts already
   in memory and stripped as the build strips them, tokenizer loaded; median of 3 runs). Its
   token count (ids + EOS) equals the tokens written where no document is repeated.
5. 20,000 small files: the same 20,000 documents (the first ~2 KB of pool documents) as
   20,000 one-document files and as 20 files of 1,000; the tag phase of each in one warm
   session, default task size; wall time and process-tree CPU of the phase, median of 5
   runs of each, alternating.
   Small files on S3 (`--only s3-small-files`): the first 1,000 of them as objects on a
   moto server that waits 20 ms before every GET / HEAD; the tag phase's wall time with the
   default read-ahead against `read_ahead=0` (each object opened in turn), alternating.
6. Driver memory on a cluster: in local mode the driver's JVM is also the executor, so its
   peak RSS follows what the executor moves. `--child cluster-memory` starts a standalone
   master and one Worker (all cores) from pyspark's `spark-class` and runs the README's
   `spark-submit --master spark://... dolmino/build_mix.py` (tag + mix) at every pool
   (1x / 4x / 16x), default JVM and Spark memory settings, sampling every process's
   VmHWM: the driver's (spark-submit's JVM, the Python driver) and the executor's (its
   JVM, PySpark's daemon and workers) apart.

Ratios, all per output token (tokens written, EOS included):
  mix / tokenize-only        the goal <= 1.5 at a pool >= 20x the budget (paid per mix)
  tag / tokenize-only        paid once per pool, whatever number of mixes use it
  (tag + mix) / tokenize-only   a full build from nothing
  marginal / tokenize-only   largest scale only: per extra output token, the median over
                             three alternating mixes at the budget and at twice it
Also tokens tokenized / written (goal <= 1.15 at >= 20x), persisted + shuffled bytes per
output token (from report.json: `run.persisted_bytes`, each stage's Spark shuffle write),
peak RSS in local mode (driver Python + the JVM that also holds the executor), and driver
peak RSS growth on the cluster, the largest over the pools / the smallest pool's (goal
<= 1.25: "flat").
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "corpus"
TMP = REPO / "bench" / "results" / "tmp"
POOL_FORMAT = 1  # bump when the pool's construction changes
SOURCES = {  # name -> corpus file
    "web": "web.jsonl.zst",
    "code": "code.jsonl.zst",
    "wiki": "encyclopedic.jsonl.zst",
    "papers": "academic.jsonl.zst",
}
SWAP_RATE = 0.12
MARGINAL_ROUNDS = 3
AGAIN_ROUNDS = 3  # warm mixes, each after its own tokenize-only run; the figure is the median ratio
FILES_PER_UNIT = 2  # per source
SEED = 10
SCALES = (1, 4, 16)
SMALL_FILES = 20_000
# Runs of each layout, alternating; figures are medians. Five, not three: the 20 files' runs
# took 0.57-0.75 core-s (the JVM's share moved 0.16-0.36), and a median of three followed one run.
SMALL_FILES_ROUNDS = 5
S3_SMALL_FILES = 1_000  # the first of the small files, as objects on a local S3 server
S3_LATENCY_S = 0.020  # added before every GET / HEAD: S3's first-byte latency for small objects
S3_ROUNDS = 2  # runs with and without read-ahead, alternating
SMALL_DOC_CHARS = 2_000
TOKENIZE_SAMPLE_DOCS = 200
TOKENIZE_RUNS = 3  # tokenize-only runs; the median CPU time is the yardstick (the machine's load varies)
GOAL_TOKENIZED_PER_WRITTEN = 1.15
GOAL_MIX_VS_TOKENIZE = 1.5
GOAL_SMALL_FILES = 2.0
GOAL_DRIVER_RSS_GROWTH = 1.25  # "flat": 16x the pool may not cost the driver more than 25% more memory
MIN_POOL_RATIO = 20.0


def log(msg: str) -> None:
    print(f"[bench_scale] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the pool


_SPACE = re.compile(r"(\s+)")


def perturb(text: str, rng: random.Random, rate: float = SWAP_RATE) -> str:
    """Swap about `rate` of the words with other words of the same text (whitespace kept).

    Each swapped word breaks every 5-word shingle it is in, so a replica shares well under
    80% of its shingles with its original (no MinHash cluster), yet keeps the original's
    words, hence its bytes per token."""
    parts = _SPACE.split(text)
    words = range(0, len(parts), 2)
    if len(words) < 2:
        return text + " ."
    for i in rng.sample(words, max(1, int(len(words) * rate))):
        parts[i] = parts[rng.choice(words)]
    out = "".join(parts)
    return out if out != text else text + " ."


def source_stream(corpus: Path, name: str, fname: str):
    """Documents of one source: the corpus file, then seeded replicas of it, without end."""
    from dolmino.documents import Quarantine, read_documents

    originals = [doc for _, doc in read_documents(str(corpus / fname), Quarantine())]
    for doc in originals:
        yield doc
    replica = 1
    while True:
        for i, doc in enumerate(originals):
            rng = random.Random(f"{SEED}:{name}:{replica}:{i}")
            yield {**doc, "id": f"{doc['id']}-r{replica}", "text": perturb(doc["text"], rng)}
        replica += 1


def pool_dir(unit_mb: float) -> Path:
    key = hashlib.sha256(json.dumps([POOL_FORMAT, unit_mb, max(SCALES), SWAP_RATE, SEED]).encode()).hexdigest()[:10]
    return TMP / f"scale-pool-{key}"


def make_pool(corpus: Path, unit_mb: float) -> Path:
    """Write (once) every source's files up to the largest scale; returns the pool root."""
    from dolmino.documents import write_documents

    root = pool_dir(unit_mb)
    meta_path = root / "pool.json"
    if meta_path.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    file_bytes = int(unit_mb * 1e6 / len(SOURCES) / FILES_PER_UNIT)
    files = max(SCALES) * FILES_PER_UNIT
    meta = {"unit_mb": unit_mb, "file_text_bytes": file_bytes, "files_per_unit": FILES_PER_UNIT, "sources": {}}
    started = time.time()
    for name, fname in SOURCES.items():
        (root / name).mkdir(parents=True)
        stream = source_stream(corpus, name, fname)
        text_bytes, docs, sample = 0, 0, []
        for f in range(files):
            batch, size = [], 0
            while size < file_bytes:
                doc = next(stream)
                batch.append(doc)
                size += len(doc["text"].encode("utf-8"))
                if len(sample) < TOKENIZE_SAMPLE_DOCS:
                    sample.append(doc["text"])
            write_documents(str(root / name / f"part-{f:04d}.jsonl.zst"), batch)
            text_bytes += size
            docs += len(batch)
        meta["sources"][name] = {"files": files, "docs": docs, "text_bytes": text_bytes,
                                 "tokens_per_byte": _tokens_per_byte(sample)}
        log(f"pool {name}: {files} files, {docs:,} docs, {text_bytes / 1e6:.1f} MB of text")
    meta["seconds"] = round(time.time() - started, 1)
    meta_path.write_text(json.dumps(meta, indent=2))
    return root


def _tokens_per_byte(texts: list[str]) -> float:
    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.tokenizer import Dolma2Tokenizer

    tok = Dolma2Tokenizer(dolma2_tokenizer_path().read_text(encoding="utf-8"))
    tokens = sum(len(ids) + 1 for ids in tok.encode_batch(texts))
    return tokens / sum(len(t.encode("utf-8")) for t in texts)


def plan_budget(meta: dict, pool_ratio: float) -> tuple[int, dict[str, float]]:
    """(budget, mix % per source): every source's largest pool is `pool_ratio` x its target."""
    tokens = {name: s["text_bytes"] * s["tokens_per_byte"] for name, s in meta["sources"].items()}
    total = sum(tokens.values())
    budget = int(total / pool_ratio)
    return budget, {name: round(100.0 * t / total, 4) for name, t in tokens.items()}


def manifest_dict(root: Path, scale: int, budget: int, mix: dict[str, float], name: str = "bench-scale") -> dict:
    files = scale * FILES_PER_UNIT
    return {
        "name": name, "version": 1, "seed": 11, "budget": budget, "data_root": str(root),
        "output_format": {"tokens_per_file": max(budget // 4, 100_000), "label_mask": True},
        "sources": [
            {"name": src, "paths": [f"{src}/part-{f:04d}.jsonl.zst" for f in range(files)], "mix_percent": mix[src],
             "filters": [{"type": "min_length", "min_tokens": 16},
                         {"type": "repeated_ngrams", "max_n": 13, "min_repeats": 32}],
             "dedup": {"exact": True}}
            for src in SOURCES
        ],
    }


def make_warmup_pool(root: Path, work: Path) -> tuple[Path, int]:
    """A tiny pool (the first 40 documents of each source's first file) for the untimed warm-up,
    and a budget it holds whole (~0.2 tokens per byte, below every source's rate): the warm-up
    runs every stage once without the many refill rounds a tiny prefix pool would need."""
    from dolmino.documents import Quarantine, read_documents, write_documents

    warm = work / "warmup-pool"
    text_bytes = 0
    for src in SOURCES:
        (warm / src).mkdir(parents=True, exist_ok=True)
        docs = []
        for _, doc in read_documents(str(root / src / "part-0000.jsonl.zst"), Quarantine()):
            docs.append(doc)
            if len(docs) >= 40:
                break
        write_documents(str(warm / src / "part-0000.jsonl.zst"), docs)
        text_bytes += sum(len(d["text"].encode("utf-8")) for d in docs)
    return warm, int(text_bytes * 0.2)


# ---------------------------------------------------------------------------- Spark children


def make_spark(cores: int, driver_memory: str):
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    # The UI stays on (port 0: any free port), as spark-submit leaves it: its listeners and
    # server are part of what a user's build costs.
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("dolmino-bench-scale")
             .config("spark.ui.port", "0").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", driver_memory).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _measured(fn):
    """(result, wall s, CPU s by process role) of fn() in this session (bench/proctree.CpuMeter).

    The CPU record also counts the Python worker processes PySpark started during the call:
    each new worker pays its imports and its copy of the build's broadcasts (the tokenizer
    among them) again."""
    from bench.proctree import CpuMeter

    started = time.perf_counter()
    with CpuMeter() as meter:
        result = fn()
    wall = time.perf_counter() - started
    cpu = meter.result()
    cpu["python_workers_started"] = cpu.pop("workers_started")
    return result, round(wall, 3), cpu


def _stage_io(stages: dict) -> dict:
    shuffle = spilled = 0
    known = True
    for st in stages.values():
        spark = st.get("spark")
        if spark is None:
            known = False
            continue
        shuffle += spark.get("shuffle_write_bytes", 0)
        spilled += spark.get("spilled_bytes", 0)
    return {"shuffle_write_bytes": shuffle if known else None, "spilled_bytes": spilled if known else None}


def jvm_heap_mb(spark) -> dict:
    """The driver JVM's heap: peak use of its memory pools since start, and live data after a full GC.

    The JVM's RSS peak says how far the heap grew (it grows lazily toward -Xmx and rarely
    shrinks, so it follows garbage as much as data); the live heap after GC is what the
    driver (and, in local mode, the executor's cached blocks) actually keeps."""
    jvm = spark.sparkContext._jvm
    factory = jvm.java.lang.management.ManagementFactory
    peak = sum(pool.getPeakUsage().getUsed() for pool in factory.getMemoryPoolMXBeans()
               if str(pool.getType()) == "Heap memory")
    jvm.java.lang.System.gc()
    live = factory.getMemoryMXBean().getHeapMemoryUsage().getUsed()
    return {"jvm_heap_peak_mb": round(peak / 2**20, 1), "jvm_heap_live_after_gc_mb": round(live / 2**20, 1)}


def _job_count(spark) -> int | None:
    """Spark jobs the session has run so far, to count each phase's jobs."""
    from dolmino.build.spark import job_count

    return job_count(spark.sparkContext)


def _delta(a, b):
    return None if a is None or b is None else b - a


def child_point(args) -> dict:
    """One scale: fresh session, warm-up, tag, mix; CPU, wall, memory and the reports."""
    from bench.proctree import CpuMeter, SparkProcesses
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spec = json.loads(Path(args.manifest).read_text())
    manifest = manifest_from_dict(spec)
    wall0 = time.perf_counter()
    startup_meter = CpuMeter(interval=0.5).__enter__()  # session start and warm-up
    spark = make_spark(args.cores, args.driver_memory)
    try:
        warm_root, warm_budget = make_warmup_pool(Path(spec["data_root"]), work)
        warm_spec = {**spec, "name": "bench-scale-warmup", "data_root": str(warm_root), "budget": warm_budget,
                     "output_format": {"tokens_per_file": max(warm_budget // 2, 1000), "label_mask": True},
                     "sources": [{**s, "paths": [f"{s['name']}/part-0000.jsonl.zst"]} for s in spec["sources"]]}
        sizing = {"task_bytes": args.task_bytes} if args.task_bytes else {}
        build(manifest_from_dict(warm_spec), warm_budget, str(work / "warmup-out"), spark,
              attributes=str(work / "warmup-attributes"), **sizing)
        startup_meter.__exit__(None, None, None)
        startup = {"cpu_s": startup_meter.result()["total"], "wall_s": round(time.perf_counter() - wall0, 3),
                   "cpu_by_role": startup_meter.result()}
        log(f"{args.label}: session start + warm-up {startup['cpu_s']:.1f} CPU s, {startup['wall_s']:.1f} s")
        attributes, out = str(work / "attributes"), str(work / "out")
        jobs0 = _job_count(spark)
        load_before_tag = os.getloadavg()[0]
        tag, tag_wall, tag_cpu = _measured(lambda: build(manifest, args.budget, out, spark, attributes=attributes,
                                                         phase="tag", **sizing))
        jobs1 = _job_count(spark)
        load_before_mix = os.getloadavg()[0]
        log(f"{args.label}: tag {tag_cpu['total']:.1f} CPU s, {tag_wall:.1f} s")
        report, mix_wall, mix_cpu = _measured(lambda: build(manifest, args.budget, out, spark, attributes=attributes,
                                                            phase="mix", **sizing))
        jobs2 = _job_count(spark)
        log(f"{args.label}: mix {mix_cpu['total']:.1f} CPU s, {mix_wall:.1f} s, "
            f"{report['totals']['tokens_written']:,} tokens written")
        # Tokenize-only between the two mixes, so the yardstick sees the machine as the mixes did
        # (CPU time per token moved by up to 2x with the shared machine's load over an hour).
        texts = work / "output-texts.jsonl"
        distinct = output_texts(Path(out), Path(spec["data_root"]), texts)
        load_before_tokenize = os.getloadavg()[0]

        def tokenize_only_run() -> dict:
            run = run_child("tokenize", ["--texts", str(texts)], args.timeout,
                            env={"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
            run["distinct_docs"] = distinct
            return run

        tokenize_only = tokenize_only_run()
        # "Mix many": the same mix again from the same attributes, in the now warm session (the
        # JVM's JIT has compiled the mix's code paths): the steady cost of one more mix. Each
        # round pairs it with a tokenize-only run just before it: this host's CPU time per unit
        # of work drifts by up to 1.8x over minutes, and a yardstick measured once, minutes
        # away from the mix, moved the ratio by as much as the changes it was meant to show.
        again_runs = []
        for r in range(AGAIN_ROUNDS):
            yardstick = tokenize_only if r == 0 else tokenize_only_run()
            again, again_wall, again_cpu = _measured(lambda: build(
                manifest, args.budget, str(work / f"out-again{r}"), spark, attributes=attributes, phase="mix",
                **sizing))
            if again["output"]["files_sha256"] != report["output"]["files_sha256"]:
                raise RuntimeError("the repeated mix wrote different bytes than the first")
            again_runs.append({"wall_s": again_wall, "cpu_s": again_cpu, "tokenize_only_cpu_s": yardstick["cpu_s"],
                               "tokenize_only_tokens": yardstick["tokens"],
                               "stages": {k: {"task_cpu_s": v["task_cpu_s"],
                                              "tasks": (v.get("spark") or {}).get("tasks")}
                                          for k, v in again["run"]["stages"].items()}})
            log(f"{args.label}: mix again {r + 1}: {again_cpu['total']:.1f} CPU s, {again_wall:.1f} s "
                f"(tokenize-only just before: {yardstick['cpu_s']:.1f} CPU s)")
        texts.unlink()
        double = None
        if args.marginal:
            # The same pool at the budget and at twice it, warm session: the difference is what
            # one more output token costs once the per-mix fixed costs (Spark jobs, driver
            # planning, reading every unit of the pool once) are paid; a 50B build is nearly all
            # marginal tokens. One difference is as noisy as the shared host (1.03x and 1.87x in
            # two runs): MARGINAL_ROUNDS alternating pairs, the median of their differences.
            pairs = []
            for r in range(MARGINAL_ROUNDS):
                _, _, one_cpu = _measured(lambda: build(manifest, args.budget, str(work / f"out-m{r}"), spark,
                                                        attributes=attributes, phase="mix", **sizing))
                doubled, _, double_cpu = _measured(lambda: build(
                    manifest, 2 * args.budget, str(work / f"out-double{r}"), spark, attributes=attributes,
                    phase="mix", **sizing))
                pairs.append([one_cpu["total"], double_cpu["total"]])
                log(f"{args.label}: marginal round {r + 1}: mix {one_cpu['total']:.1f} CPU s, at 2x budget "
                    f"{double_cpu['total']:.1f} CPU s")
            double = {"budget": 2 * args.budget, "cpu_pairs": pairs,
                      "extra_cpu_s": statistics.median(b - a for a, b in pairs),
                      "tokens_written": doubled["totals"]["tokens_written"],
                      "tokens_tokenized": doubled["totals"]["tokens_tokenized"]}
        memory = {**SparkProcesses.find().peaks_mb(), **jvm_heap_mb(spark)}
    finally:
        if startup_meter._thread.is_alive():
            startup_meter.__exit__(None, None, None)
        spark.stop()
    stages = report["run"]["stages"]
    persisted = report["run"].get("persisted_bytes") or {}
    sources = [{"name": s["name"], "docs_in": s["docs_in"], "text_bytes_in": s["bytes_in"],
                "kept_docs": s["kept_docs"], "kept_bytes": s["kept_bytes"],
                "pool_tokens": s["pool_tokens"], "pool_tokens_exact": s["pool_tokens_exact"],
                "target_tokens": s["target_tokens"], "output_tokens": s["output_tokens"],
                "tokenized_tokens": s["tokenized"]["tokens"], "removed_by_token_filters": s["tokenized"]["removed"],
                "mode": s["selection"]["mode"], "rounds": s["selection"]["rounds"],
                "greedy": s["selection"]["greedy"]} for s in report["sources"]]
    return {
        "label": args.label, "startup": startup, "tokenize_only": tokenize_only, "output_distinct_docs": distinct,
        "load_avg_1m": {"before_tag": load_before_tag, "before_mix": load_before_mix,
                        "before_tokenize_only": load_before_tokenize, "end": os.getloadavg()[0]},
        "tag": {"wall_s": tag_wall, "cpu_s": tag_cpu, "stages": tag["stages"], "units": tag["units"],
                "spark_jobs": _delta(jobs0, jobs1),
                "input_bytes": tag["input_bytes"], "attribute_bytes": tag["bytes_written"]},
        "mix": {"wall_s": mix_wall, "cpu_s": mix_cpu, "stages": stages, "persisted_bytes": persisted,
                "spark_jobs": _delta(jobs1, jobs2), **_stage_io(stages)},
        "mix_again": {"runs": again_runs},
        "mix_double_budget": double,
        "tag_io": _stage_io(tag["stages"]),
        "totals": report["totals"], "output": {k: report["output"][k] for k in ("tokens", "docs", "files")},
        "warnings": report["warnings"], "sources": sources, "memory": memory,
    }


def child_small_files(args) -> dict:
    """Tag phase of the same documents as 20 files and as 20,000 files, in one warm session.

    The two run alternately, SMALL_FILES_ROUNDS times each, each time into a new attribute
    root (so every run tags everything): one run's process-tree CPU moved by 0.3 core-s
    (the JVM's, mostly) between identical runs on this shared host, a third of the 20
    files' whole figure. The figures are the medians; every run is kept."""
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    work = Path(args.work)
    spec_small = json.loads(Path(args.manifest).read_text())
    runs: dict[str, list] = {"few": [], "many": []}
    spark = make_spark(args.cores, args.driver_memory)
    try:
        warm = {**spec_small, "name": "warmup", "data_root": str(Path(spec_small["data_root"]).parent / "few"),
                "sources": [{**spec_small["sources"][0], "paths": ["part-000.jsonl.zst"]}]}
        build(manifest_from_dict(warm), 10_000, str(work / "warmup-out"), spark,
              attributes=str(work / "warmup-attributes"), phase="tag")
        for r in range(SMALL_FILES_ROUNDS):
            for label in (("few", "many") if r % 2 == 0 else ("many", "few")):
                spec = {**spec_small, "data_root": str(Path(spec_small["data_root"]).parent / label)}
                manifest = manifest_from_dict(spec)
                attributes = work / f"attributes-{label}-{r}"
                tag, wall, cpu = _measured(lambda: build(manifest, 10_000, str(work / f"out-{label}-{r}"), spark,
                                                         attributes=str(attributes), phase="tag"))
                shutil.rmtree(attributes, ignore_errors=True)
                runs[label].append({"wall_s": wall, "cpu_s": cpu, "stages": tag["stages"], "units": tag["units"],
                                    "input_bytes": tag["input_bytes"], "files_written": tag["files_written"]})
                log(f"small files, {label}, round {r + 1}: tag {cpu['total']:.1f} CPU s, {wall:.1f} s, "
                    f"{tag['units']} units")
    finally:
        spark.stop()
    out = {}
    for label, done in runs.items():
        median = {"wall_s": statistics.median(run["wall_s"] for run in done),
                  "cpu_s": {key: statistics.median(run["cpu_s"][key] for run in done)
                            for key in done[0]["cpu_s"] if isinstance(done[0]["cpu_s"][key], (int, float))}}
        # What every run shares (the same input, tagged whole each time), then the medians.
        same = {key: done[0][key] for key in ("units", "input_bytes", "files_written")}
        out[label] = {**same, **median, "runs": done}
    return out


class _FirstByteLatency:
    """WSGI middleware: every GET and HEAD waits `delay` seconds first, as a request to a
    remote S3 endpoint waits for its first byte; moto on loopback answers in ~1 ms."""

    def __init__(self, app, delay: float):
        self.app, self.delay = app, delay

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            time.sleep(self.delay)
        return self.app(environ, start_response)


def _start_slow_s3(delay: float):
    """A moto S3 server on 127.0.0.1 (threaded: requests overlap, as on S3) with `delay`
    before each read; sets the environment boto3 (and Spark's Python workers) read."""
    import logging

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import make_server

    class Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            from moto.moto_server.werkzeug_app import MotoRequestHandler

            app = _FirstByteLatency(DomainDispatcherApplication(create_backend_app), delay)
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                       "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"})
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    server = Server(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL_S3"] = f"http://{host}:{port}"
    return server


def child_s3_small_files(args) -> dict:
    """Tag phase of small files on S3 with a first-byte latency: read-ahead vs one at a time.

    The inputs are S3 objects on a local moto server that waits S3_LATENCY_S before every
    GET; the attributes go to local disk, so only the input reads see the latency. The same
    files are tagged with the default read-ahead and with `read_ahead=0` (every object opened
    in turn, as before read-ahead), alternately, each into a new attribute root. Only wall
    time is compared: moto serves from this process, so its CPU is in the driver's figure."""
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict
    from dolmino.prefetch import DEFAULT_READ_AHEAD

    work = Path(args.work)
    files = sorted(Path(args.inputs).glob("part-*.jsonl.zst"))[:args.small_files]
    server = _start_slow_s3(S3_LATENCY_S)
    try:
        from dolmino.s3 import client

        client().create_bucket(Bucket="bench-small-files")
        for path in files:
            client().put_object(Bucket="bench-small-files", Key=f"many/{path.name}", Body=path.read_bytes())
        spec = {"name": "bench-s3-small-files", "version": 1, "seed": 11, "budget": 10_000,
                "data_root": "s3://bench-small-files/many",
                "sources": [{"name": "small", "paths": ["*.jsonl.zst"], "mix_percent": 100.0}]}
        manifest = manifest_from_dict(spec)
        spark = make_spark(args.cores, args.driver_memory)
        runs: dict[str, list] = {"read_ahead": [], "one_at_a_time": []}
        try:
            build(manifest, 10_000, str(work / "warmup-out"), spark, attributes=str(work / "warmup-attributes"),
                  phase="tag")
            for r in range(S3_ROUNDS):
                order = ("read_ahead", "one_at_a_time") if r % 2 == 0 else ("one_at_a_time", "read_ahead")
                for label in order:
                    ahead = DEFAULT_READ_AHEAD if label == "read_ahead" else 0
                    attributes = work / f"attributes-{label}-{r}"
                    tag, wall, cpu = _measured(lambda: build(manifest, 10_000, str(work / f"out-{label}-{r}"), spark,
                                                             attributes=str(attributes), phase="tag",
                                                             read_ahead=ahead))
                    shutil.rmtree(attributes, ignore_errors=True)
                    runs[label].append({"wall_s": wall, "read_ahead": ahead, "units": tag["units"],
                                        "fetched_ahead": tag["stages"]["tag"]["fetched_ahead"]})
                    log(f"small files on S3, {label}, round {r + 1}: tag {wall:.1f} s wall, {tag['units']} units, "
                        f"{tag['stages']['tag']['fetched_ahead']} fetched ahead")
        finally:
            spark.stop()
    finally:
        server.stop()
    return {"files": len(files), "latency_s": S3_LATENCY_S, "threads": DEFAULT_READ_AHEAD,
            **{label: {"wall_s": statistics.median(run["wall_s"] for run in done), "runs": done}
               for label, done in runs.items()}}


CLUSTER_SCALES = SCALES  # the issue asks for driver memory at 1x / 4x / 16x
SPARK_LAUNCHER = "org.apache.spark.launcher.Main"


def _sample_peaks(roots: dict[str, tuple[int, bool]], peaks: dict[int, tuple[str, str, float]]) -> None:
    """Record the VmHWM (peak RSS so far) of every process below each root (and the root itself
    where asked) under (root name, jvm or python). By descent, not process group: PySpark's
    daemon starts a process group of its own. Peaks of one kind are summed per root, so the
    launcher JVM that runs before spark-submit's own (never beside it) is left out."""
    from bench.proctree import cmdline, descendants, peak_rss_mb, process_kind

    for name, (root, with_root) in roots.items():
        for pid in ([root] if with_root else []) + descendants(root):
            command = cmdline(pid)
            if SPARK_LAUNCHER in command:
                continue  # spark-class's short-lived JVM that prints the command it then execs
            kind = process_kind(command)
            peak = peak_rss_mb(pid) if kind else 0.0
            if peak:
                peaks[pid] = (name, kind, max(peak, peaks.get(pid, (name, kind, 0.0))[2]))


def child_cluster_memory(args) -> dict:
    """Peak RSS of the driver and of the executor in `spark-submit --master spark://...` builds.

    In local mode the driver's JVM is also the executor, so its peak RSS follows the data
    the executor moves. Here the driver is alone in its processes (spark-submit's JVM and
    the Python driver it starts, client mode as the README runs it) and the executor in its
    own (the executor JVM a Worker launched, PySpark's daemon and workers): a standalone
    master and one Worker with all cores on localhost, default JVM and Spark memory
    settings, the full build (tag + mix) of the same manifest as the scale points at the
    smallest and the largest pool. VmHWM of every process of both groups is sampled every
    0.2 s while the build runs (a peak in a process's last 0.2 s would be missed)."""
    sys.path.insert(0, str(REPO / "tests"))
    from cluster import StandaloneCluster, kill_group, python_env, start_submit, submit_argv

    work = Path(args.work)
    manifests = json.loads(args.manifest)
    env_code = python_env()
    cluster = StandaloneCluster(work / "cluster", env=env_code, workers=1, cores=args.cores,
                                memory="4g").start()
    out = {}
    try:
        for label, mpath in manifests.items():
            argv = submit_argv(cluster.master_url, str(REPO / "dolmino" / "build_mix.py"),
                               ["--manifest", mpath, "--out", str(work / f"out-{label}"), "--attributes",
                                str(work / f"attributes-{label}")])
            env = {k: v for k, v in os.environ.items() if k != "JAVA_TOOL_OPTIONS"}  # default JVM flags
            env.update(env_code, SPARK_LOCAL_IP="127.0.0.1")
            started = time.perf_counter()
            proc, _, stderr = start_submit(argv, env, str(REPO), work / "logs", label)
            peaks: dict[int, tuple[str, str, float]] = {}
            try:
                while proc.poll() is None:
                    # the Worker daemon itself serves every application alike: only what it launched
                    _sample_peaks({"driver": (proc.pid, True), "executor": (cluster.nodes[0].daemon.proc.pid, False)},
                                  peaks)
                    if time.perf_counter() - started > args.timeout:
                        raise RuntimeError(f"cluster build {label} ran past {args.timeout}s")
                    time.sleep(0.2)
            finally:
                if proc.poll() is None:
                    kill_group(proc)
            if proc.returncode != 0:
                raise RuntimeError(f"cluster build {label} exited {proc.returncode}: "
                                   f"{stderr.read_text(errors='replace')[-3000:]}")
            report = json.loads((work / f"out-{label}" / "report.json").read_text())

            def total(name: str, kind: str) -> float:
                return round(sum(p for n, k, p in peaks.values() if n == name and k == kind), 1)

            workers = [p for n, k, p in peaks.values() if n == "executor" and k == "python"]
            out[label] = {"wall_s": round(time.perf_counter() - started, 1),
                          "driver_jvm_mb": total("driver", "jvm"), "driver_python_mb": total("driver", "python"),
                          "driver_total_mb": round(total("driver", "jvm") + total("driver", "python"), 1),
                          "executor_jvm_mb": total("executor", "jvm"),
                          "executor_python_max_mb": round(max(workers, default=0.0), 1),
                          "executor_python_processes": len(workers),
                          "tokens_written": report["totals"]["tokens_written"]}
            log(f"cluster {label}: driver peak RSS {out[label]['driver_total_mb']:.0f} MB "
                f"(JVM {out[label]['driver_jvm_mb']:.0f} + Python {out[label]['driver_python_mb']:.0f}), executor "
                f"JVM {out[label]['executor_jvm_mb']:.0f} MB, {out[label]['wall_s']:.0f} s")
            shutil.rmtree(work / f"attributes-{label}", ignore_errors=True)
            shutil.rmtree(work / f"out-{label}", ignore_errors=True)
    finally:
        cluster.stop()
    return out


def child_tokenize(args) -> dict:
    """Tokenize-only ceiling: encode_batch (encode_batch_fast) over texts in memory, one thread."""
    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.tokenizer import Dolma2Tokenizer

    with open(args.texts, encoding="utf-8") as fh:
        # Stripped (untimed) as the build's encode_documents strips under dolma semantics: the raw
        # texts gave ~0.01% more tokens than the build wrote (found by a reviewer of the bench claims).
        texts = [json.loads(line).strip() for line in fh]
    tok = Dolma2Tokenizer(dolma2_tokenizer_path().read_text(encoding="utf-8"))
    tok.encode_batch(texts[:8])  # tokenizer built and warm; not timed
    runs = []
    for _ in range(TOKENIZE_RUNS):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        ids = tok.encode_batch(texts)
        runs.append((time.process_time() - cpu0, time.perf_counter() - wall0))
    cpu = sorted(c for c, _ in runs)[len(runs) // 2]
    return {"docs": len(texts), "tokens": sum(len(i) + 1 for i in ids), "cpu_s": round(cpu, 3),
            "cpu_s_runs": [round(c, 3) for c, _ in runs], "wall_s_runs": [round(w, 3) for _, w in runs],
            "threads_env": {k: os.environ.get(k) for k in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")}}


# ---------------------------------------------------------------------------- parent


def run_child(kind: str, extra: list[str], timeout: float, env: dict | None = None, script: str = __file__) -> dict:
    """`script --child kind ...` in its own process (a fresh Spark session); its last stdout line is
    the JSON result, and its log lines ("[<script name>] ...") are passed on."""
    cmd = [sys.executable, str(Path(script).resolve()), "--child", kind, *extra]
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=str(REPO))
    prefix = f"[{Path(script).stem}]"
    for line in proc.stderr.splitlines():
        if line.startswith(prefix):
            print(line, file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def output_texts(out: Path, pool: Path, dest: Path) -> int:
    """Write the distinct output documents' texts (from the parts' sidecars) as JSONL; returns the count."""
    from dolmino.documents import Quarantine, read_documents

    wanted: dict[str, set[int]] = {}
    for sidecar in sorted(out.glob("part-*.csv.gz")):
        with gzip.open(sidecar, "rt", newline="") as fh:
            for _start, _end, _id, _src, loc in csv.reader(fh):
                name, line = loc.rsplit(":", 1)
                wanted.setdefault(name, set()).add(int(line))
    n = 0
    with open(dest, "w", encoding="utf-8") as fh:
        for name in sorted(wanted):
            lines = wanted[name]
            for line, doc in read_documents(str(pool / name), Quarantine()):
                if line in lines:
                    fh.write(json.dumps(doc["text"], ensure_ascii=False) + "\n")
                    n += 1
    return n


def make_small_files(pool: Path, root: Path, count: int) -> dict:
    """`count` documents (first ~2 KB of pool documents) as `count` files and as 20 files."""
    from dolmino.documents import Quarantine, read_documents, write_documents

    if (root / "done.json").exists():
        return json.loads((root / "done.json").read_text())
    if root.exists():
        shutil.rmtree(root)
    docs = []
    files = sorted(pool.glob("*/part-*.jsonl.zst"), key=lambda p: (p.name, p.parent.name))
    for path in files:
        for _, doc in read_documents(str(path), Quarantine()):
            text = doc["text"][:SMALL_DOC_CHARS]
            cut = text.rfind("\n")
            text = text[:cut] if cut > SMALL_DOC_CHARS // 2 else text
            if len(text.split()) >= 20:
                docs.append({"id": f"small-{len(docs)}", "text": text, "source": "small"})
            if len(docs) >= count:
                break
        if len(docs) >= count:
            break
    (root / "many").mkdir(parents=True)
    (root / "few").mkdir(parents=True)
    for i, doc in enumerate(docs):
        write_documents(str(root / "many" / f"part-{i:05d}.jsonl.zst"), [doc])
    per = len(docs) // 20
    for f in range(20):
        write_documents(str(root / "few" / f"part-{f:03d}.jsonl.zst"), docs[f * per:(f + 1) * per])
    info = {"docs": len(docs), "text_bytes": sum(len(d["text"].encode("utf-8")) for d in docs),
            "bytes_many": sum(p.stat().st_size for p in (root / "many").iterdir()),
            "bytes_few": sum(p.stat().st_size for p in (root / "few").iterdir())}
    (root / "done.json").write_text(json.dumps(info))
    return info


def fig(name: str, value: float, unit: str, better: str, goal: tuple[str, float] | None = None, **extra) -> dict:
    f = {"name": name, "impl": "dolmino", "value": value, "unit": unit, "better": better, **extra}
    if goal is not None:
        f["goal"] = [goal[0], goal[1]]
    return f


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--quick", action="store_true", help="--unit-mb 20")
    ap.add_argument("--unit-mb", type=float, default=None, help="MB of text per pool unit (1x); default 40")
    ap.add_argument("--pool-ratio", type=float, default=22.0,
                    help="pool tokens at the largest scale / budget")
    ap.add_argument("--cores", type=int, default=2, help="Spark local[N]")
    ap.add_argument("--driver-memory", default="2g")
    ap.add_argument("--task-mb", type=float, default=None,
                    help="input MB (compressed, as on disk) per task for the scale builds (default: the build's "
                         "own, 128 MB: per-task work as large as at real scale, one task per stage here)")
    ap.add_argument("--only", choices=("scale", "small-files", "s3-small-files", "cluster-memory"), action="append",
                    default=[])
    ap.add_argument("--small-files", type=int, default=SMALL_FILES)
    ap.add_argument("--timeout", type=float, default=3000, help="seconds per child process")
    ap.add_argument("--keep", action="store_true", help="keep the build outputs (the pool is always kept)")
    ap.add_argument("--child", choices=("point", "small-files", "s3-small-files", "tokenize", "cluster-memory"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--label", default="", help=argparse.SUPPRESS)
    ap.add_argument("--task-bytes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--texts", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--marginal", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        result = {"point": child_point, "small-files": child_small_files, "s3-small-files": child_s3_small_files,
                  "tokenize": child_tokenize, "cluster-memory": child_cluster_memory}[args.child](args)
        print(json.dumps(result))
        return result

    unit_mb = args.unit_mb or (20.0 if args.quick else 40.0)
    parts = args.only or ["scale", "small-files", "s3-small-files", "cluster-memory"]
    TMP.mkdir(parents=True, exist_ok=True)
    pool = make_pool(args.corpus, unit_mb)
    meta = json.loads((pool / "pool.json").read_text())
    budget, mix = plan_budget(meta, args.pool_ratio)
    work = Path(tempfile_dir(TMP, "scale-run-"))
    task_bytes = int(args.task_mb * 1e6) if args.task_mb else None
    figures, notes = [], []
    result = {"benchmark": "scale", "cores": args.cores, "unit_mb": unit_mb, "pool": str(pool), "pool_meta": meta,
              "budget": budget, "mix_percent": mix, "task_bytes": task_bytes, "points": {}}
    try:
        if "scale" in parts:
            for scale in SCALES:
                label = f"{scale}x"
                spec = manifest_dict(pool, scale, budget, mix)
                mpath = work / f"manifest-{label}.json"
                mpath.write_text(json.dumps(spec))
                log(f"{label}: {unit_mb * scale:.0f} MB pool, budget {budget:,} tokens")
                point = run_child("point", ["--work", str(work / label), "--manifest", str(mpath), "--budget", str(budget),
                                            "--label", label, "--cores", str(args.cores), "--driver-memory",
                                            args.driver_memory, *(["--task-bytes", str(task_bytes)] if task_bytes
                                                                  else []),
                                            *(["--marginal"] if scale == SCALES[-1] else [])], args.timeout)
                if not args.keep:
                    shutil.rmtree(work / label, ignore_errors=True)
                point["scale"] = scale
                result["points"][label] = point
                figures += point_figures(point, scale)
            notes += scale_notes(result)
            first, last = result["points"].get(f"{SCALES[0]}x"), result["points"].get(f"{SCALES[-1]}x")
            if first and last:
                growth = last["memory"]["driver_total_mb"] / first["memory"]["driver_total_mb"]
                figures.append(fig(f"scale: local mode peak RSS growth (driver Python + the JVM that is driver and "
                                   f"executor), {SCALES[-1]}x pool / {SCALES[0]}x pool", growth, "ratio", "lower"))
                notes.append(f"local mode memory: peak RSS (driver Python + the JVM, which also runs the executor) "
                             f"{first['memory']['driver_total_mb']:.0f} MB at {SCALES[0]}x, "
                             f"{last['memory']['driver_total_mb']:.0f} MB at {SCALES[-1]}x; JVM heap "
                             f"live after a full GC at the end {first['memory']['jvm_heap_live_after_gc_mb']:.0f} / "
                             f"{last['memory']['jvm_heap_live_after_gc_mb']:.0f} MB")
        if "cluster-memory" in parts:
            mpaths = {}
            for scale in CLUSTER_SCALES:
                mpath = work / f"manifest-cluster-{scale}x.json"
                mpath.write_text(json.dumps(manifest_dict(pool, scale, budget, mix)))
                mpaths[f"{scale}x"] = str(mpath)
            log(f"cluster memory: {', '.join(mpaths)} pools on a standalone master + 1 worker ({args.cores} cores)")
            mem = run_child("cluster-memory", ["--work", str(work / "cluster-memory"), "--manifest", json.dumps(mpaths),
                                               "--cores", str(args.cores), "--timeout", str(args.timeout)],
                            args.timeout)
            result["cluster_memory"] = mem
            lo = mem[f"{CLUSTER_SCALES[0]}x"]
            hi = max(mem.values(), key=lambda m: m["driver_total_mb"])  # a bump at 4x counts too
            for label, m in mem.items():
                figures.append(fig(f"scale: driver peak RSS on a standalone cluster (spark-submit JVM + Python "
                                   f"driver), tag + mix, {label} pool", m["driver_total_mb"], "MB", "lower"))
                figures.append(fig(f"scale: executor JVM peak RSS on a standalone cluster, tag + mix, {label} pool",
                                   m["executor_jvm_mb"], "MB", "lower"))
            figures.append(fig(f"scale: driver peak RSS growth on a standalone cluster, largest of the "
                               f"{' / '.join(mem)} pools / {CLUSTER_SCALES[0]}x pool",
                               hi["driver_total_mb"] / lo["driver_total_mb"], "ratio",
                               "lower", ("<=", GOAL_DRIVER_RSS_GROWTH)))
            notes.append(
                "cluster memory (`spark-submit --master spark://...` of the full build, default JVM and Spark memory "
                "settings, one Worker with all cores): " + "; ".join(
                    f"{label}: driver {m['driver_total_mb']:.0f} MB (JVM {m['driver_jvm_mb']:.0f} + Python "
                    f"{m['driver_python_mb']:.0f}), executor JVM {m['executor_jvm_mb']:.0f} MB, largest Python "
                    f"worker {m['executor_python_max_mb']:.0f} MB, {m['wall_s']:.0f} s" for label, m in mem.items())
                + f"; \"flat\" is read as at most {GOAL_DRIVER_RSS_GROWTH:g}x for "
                  f"{CLUSTER_SCALES[-1] // CLUSTER_SCALES[0]}x the pool")
        if "small-files" in parts:
            small_root = TMP / f"small-files-{args.small_files}-v{POOL_FORMAT}"
            info = make_small_files(pool, small_root, args.small_files)
            spec = {"name": "bench-small-files", "version": 1, "seed": 11, "budget": 10_000,
                    "data_root": str(small_root / "many"),
                    "sources": [{"name": "small", "paths": ["*.jsonl.zst"], "mix_percent": 100.0}]}
            mpath = work / "manifest-small.json"
            mpath.write_text(json.dumps(spec))
            small = run_child("small-files", ["--work", str(work / "small"), "--manifest", str(mpath),
                                              "--cores", str(args.cores), "--driver-memory", args.driver_memory],
                              args.timeout)
            small["input"] = info
            result["small_files"] = small
            ratio_cpu = small["many"]["cpu_s"]["total"] / small["few"]["cpu_s"]["total"]

            def totals(label: str) -> str:
                return ", ".join(f"{run['cpu_s']['total']:.2f}" for run in small[label]["runs"])

            ratio_wall = small["many"]["wall_s"] / small["few"]["wall_s"]
            figures.append(fig(f"scale: tag core-s, {info['docs']:,} files / 20 files (same bytes)", ratio_cpu,
                               "ratio", "lower", ("<=", GOAL_SMALL_FILES)))
            figures.append(fig(f"scale: tag wall, {info['docs']:,} files / 20 files (same bytes)", ratio_wall,
                               "ratio", "lower", ("<=", GOAL_SMALL_FILES)))
            notes.append(f"small files: {info['docs']:,} documents ({info['text_bytes'] / 1e6:.1f} MB of text) as "
                         f"{info['docs']:,} files: tag {small['many']['cpu_s']['total']:.1f} core-s, "
                         f"{small['many']['wall_s']:.1f} s wall; as 20 files: {small['few']['cpu_s']['total']:.1f} "
                         f"core-s, {small['few']['wall_s']:.1f} s wall (default task size, one warm session; "
                         f"medians of {SMALL_FILES_ROUNDS} runs each, alternating; totals of the runs: many "
                         f"{totals('many')}, few {totals('few')} core-s)")
        if "s3-small-files" in parts:
            small_root = TMP / f"small-files-{args.small_files}-v{POOL_FORMAT}"
            make_small_files(pool, small_root, args.small_files)
            count = min(S3_SMALL_FILES, args.small_files)
            s3 = run_child("s3-small-files", ["--work", str(work / "s3-small"), "--inputs", str(small_root / "many"),
                                              "--small-files", str(count), "--cores", str(args.cores),
                                              "--driver-memory", args.driver_memory], args.timeout)
            result["s3_small_files"] = s3
            ms = f"{s3['latency_s'] * 1000:.0f} ms"
            ahead, serial = s3["read_ahead"], s3["one_at_a_time"]
            ahead_runs = ", ".join(f"{run['wall_s']:.1f}" for run in ahead["runs"])
            serial_runs = ", ".join(f"{run['wall_s']:.1f}" for run in serial["runs"])
            figures.append(fig(f"scale: tag wall, {s3['files']:,} small files on S3 ({ms} first-byte latency), "
                               f"read-ahead {s3['threads']} / one object at a time",
                               ahead["wall_s"] / serial["wall_s"], "ratio", "lower"))
            notes.append(f"small files on S3: the first {s3['files']:,} of the small files as objects on a moto server "
                         f"that waits {ms} before every GET and HEAD, attributes on local disk; tag wall "
                         f"{ahead['wall_s']:.1f} s with read-ahead {s3['threads']} (runs "
                         f"{ahead_runs}), "
                         f"{serial['wall_s']:.1f} s one object at a time (--read-ahead 0, as before read-ahead; runs "
                         f"{serial_runs}); the wait alone, one "
                         f"GET per object in turn, is {s3['files'] * s3['latency_s']:.0f} s. Wall time only: moto "
                         f"serves from the build's driver process, so its CPU is in the driver's")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    notes.append("CPU figures are core-seconds of every process of the build (driver Python, JVM, PySpark daemon "
                 "and workers, from /proc); wall times were measured on a shared, loaded machine and say little")
    result["figures"] = figures
    result["notes"] = notes
    print(json.dumps(result, indent=2))
    return result


def tempfile_dir(parent: Path, prefix: str) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def point_figures(p: dict, scale: int) -> list[dict]:
    written = p["totals"]["tokens_written"]
    tok = p["tokenize_only"]
    tok_rate = tok["cpu_s"] / tok["tokens"]  # core-s per token, the ceiling
    tag_cpu, mix_cpu = p["tag"]["cpu_s"]["total"], p["mix"]["cpu_s"]["total"]
    pool_ratio = min((s["pool_tokens"] / s["target_tokens"]) for s in p["sources"] if s["target_tokens"])
    big = pool_ratio >= MIN_POOL_RATIO
    label = f"{scale}x pool"
    out = [
        fig(f"scale: tokens tokenized / written, {label}", p["totals"]["tokenized_per_written"], "ratio", "lower",
            ("<=", GOAL_TOKENIZED_PER_WRITTEN) if big else None),
        fig(f"scale: mix core-s per output token / tokenize-only, {label}", mix_cpu / written / tok_rate, "ratio",
            "lower", ("<=", GOAL_MIX_VS_TOKENIZE) if big else None),
        fig(f"scale: mix again (warm session) core-s per output token / tokenize-only, {label} "
            f"(median of {len(p['mix_again']['runs'])}, each against a tokenize-only run just before it)",
            again_ratio(p), "ratio", "lower", ("<=", GOAL_MIX_VS_TOKENIZE) if big else None),
        fig(f"scale: tokenize stages' Python task CPU per token / tokenize-only, {label}",
            tokenize_task_cpu(p) / p["totals"]["tokens_tokenized"] / tok_rate, "ratio", "lower"),
        fig(f"scale: tag core-s per output token / tokenize-only, {label}", tag_cpu / written / tok_rate, "ratio",
            "lower"),
        fig(f"scale: full build (tag + mix) core-s per output token / tokenize-only, {label}",
            (tag_cpu + mix_cpu) / written / tok_rate, "ratio", "lower"),
        fig(f"scale: tag MB of text per core-second, {label}",
            sum(s["text_bytes_in"] for s in p["sources"]) / 1e6 / tag_cpu, "MB/s/core", "higher"),
        fig(f"scale: driver peak RSS (driver Python + JVM), {label}", p["memory"]["driver_total_mb"], "MB", "lower"),
        fig(f"scale: driver JVM heap live after a full GC, {label}", p["memory"]["jvm_heap_live_after_gc_mb"], "MB",
            "lower"),
    ]
    double = p.get("mix_double_budget")
    if double:
        extra_tokens = double["tokens_written"] - written
        # the yardstick: the median of the session's tokenize-only runs (the marginal rounds follow them)
        yardstick = statistics.median(run["tokenize_only_cpu_s"] / run["tokenize_only_tokens"]
                                      for run in p["mix_again"]["runs"])
        out.append(fig(f"scale: mix marginal core-s per extra output token / tokenize-only, {label} "
                       f"(budget -> 2x budget, warm session, median of {len(double['cpu_pairs'])})",
                       double["extra_cpu_s"] / extra_tokens / yardstick, "ratio", "lower"))
    moved = persisted_shuffled(p)
    if moved is not None:
        out.append(fig(f"scale: persisted + shuffled bytes per output token, {label}", moved / written, "bytes/token",
                       "lower"))
    if scale == 1:
        out.append(fig("scale: tokenize-only tokens/s per core (encode_batch_fast, 1 thread)", 1 / tok_rate,
                       "tokens/s/core", "higher"))
    return out


def again_ratios(p: dict) -> list[float]:
    written = p["totals"]["tokens_written"]
    return [run["cpu_s"]["total"] / written / (run["tokenize_only_cpu_s"] / run["tokenize_only_tokens"])
            for run in p["mix_again"]["runs"]]


def again_ratio(p: dict) -> float:
    return statistics.median(again_ratios(p))


def tokenize_task_cpu(p: dict) -> float:
    """CPU s the tokenize stages' Python tasks measured themselves (read selected lines, encode, filter)."""
    return sum(st["task_cpu_s"] for name, st in p["mix"]["stages"].items() if name.startswith("tokenize"))


def persisted_shuffled(p: dict) -> int | None:
    persisted = p["mix"]["persisted_bytes"]
    if any(v is None for v in persisted.values()):
        return None
    shuffle = [x for x in (p["mix"]["shuffle_write_bytes"], p["tag_io"]["shuffle_write_bytes"]) if x is not None]
    if len(shuffle) < 2:
        return None
    return sum(persisted.values()) + sum(shuffle)


def scale_notes(result: dict) -> list[str]:
    notes = []
    pts = result["points"]
    for label, p in pts.items():
        written = p["totals"]["tokens_written"]
        ratio = min(s["pool_tokens"] / s["target_tokens"] for s in p["sources"] if s["target_tokens"])
        again_cpu = ", ".join("%.1f" % run["cpu_s"]["total"] for run in p["mix_again"]["runs"])
        again_yardsticks = ", ".join("%.1f" % run["tokenize_only_cpu_s"] for run in p["mix_again"]["runs"])
        notes.append(
            f"{label}: pool {sum(s['text_bytes_in'] for s in p['sources']) / 1e6:.0f} MB of text "
            f"({p['tag']['input_bytes'] / 1e6:.0f} MB on disk), smallest pool/target {ratio:.1f}x; "
            f"{written:,} tokens written, {p['totals']['tokens_tokenized']:,} tokenized "
            f"({p['totals']['tokenized_per_written']:.3f}); tag {p['tag']['cpu_s']['total']:.1f} core-s "
            f"(driver {p['tag']['cpu_s']['driver_python']:.1f}, JVM {p['tag']['cpu_s']['jvm']:.1f}, "
            f"Python workers {p['tag']['cpu_s']['python_workers']:.1f}); mix {p['mix']['cpu_s']['total']:.1f} core-s "
            f"(driver {p['mix']['cpu_s']['driver_python']:.1f}, JVM {p['mix']['cpu_s']['jvm']:.1f}, "
            f"Python workers {p['mix']['cpu_s']['python_workers']:.1f}; {p['mix']['spark_jobs']} Spark jobs, "
            f"{sum((st.get('spark') or {}).get('tasks', 0) for st in p['mix']['stages'].values())} tasks, "
            f"{p['mix']['cpu_s']['python_workers_started']} Python workers started; tokenize stages' own Python "
            f"CPU {tokenize_task_cpu(p):.1f}; refill rounds per source "
            f"{', '.join(str(s['rounds']) for s in p['sources'])}); "
            f"mix again in the warm session {again_cpu} core-s, each after tokenize-only {again_yardsticks} core-s "
            f"(ratios {', '.join('%.2f' % x for x in again_ratios(p))}); tokenize-only next to the first mix "
            f"{p['tokenize_only']['cpu_s']:.1f} core-s (median of {p['tokenize_only']['cpu_s_runs']}) for "
            f"{p['tokenize_only']['tokens']:,} tokens; session start + "
            f"warm-up {p['startup']['cpu_s']:.0f} core-s (not in any ratio); driver peak RSS "
            f"{p['memory']['driver_python_mb']:.0f} MB Python + {p['memory']['jvm_mb']:.0f} MB JVM; machine load "
            f"(1-min average) before tag / mix / tokenize-only: {p['load_avg_1m']['before_tag']:.1f} / "
            f"{p['load_avg_1m']['before_mix']:.1f} / {p['load_avg_1m']['before_tokenize_only']:.1f}")
        double = p.get("mix_double_budget")
        if double:
            shown = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in double["cpu_pairs"])
            notes.append(f"{label}: marginal: the budget and twice it mixed alternately in the warm session, "
                         f"core-s {shown} ({written:,} -> {double['tokens_written']:,} tokens written, "
                         f"{double['tokens_tokenized']:,} tokenized at 2x); the median difference is the marginal "
                         f"figure, the rest of a mix's cost is fixed per mix")
        if p["tokenize_only"]["tokens"] != written:
            notes.append(f"{label}: tokenize-only counted {p['tokenize_only']['tokens']:,} tokens for "
                         f"{written:,} written (it tokenizes each distinct output document once: fewer where the "
                         f"mix repeats documents; the ratios compare core-seconds per token of each)")
        for w in p["warnings"]:
            notes.append(f"{label}: build warning: {w}")
    return notes


if __name__ == "__main__":
    main()
