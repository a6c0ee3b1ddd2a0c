"""Whole build: core-seconds, wall time and how they grow with the data (local Spark).

    python bench/bench_build.py                 # 500 docs/file base, 1x 2x 5x 10x, + the demo mix
    python bench/bench_build.py --quick         # 150 docs/file base, 1x 2x 4x, no demo

The scaling series runs the real build (`dolmino.build.mix.build`: tag, then mix) on
local[cores] over a corpus made from the shared real-text corpus: source k's files are the
first `--base-docs` documents of one corpus file, replicated `scale` times. A replica
differs from the original by its `id` and by a first line naming the replica, so exact
dedup keeps it and the build does k times the work, not k times the same removal. The
manifest uses the demo's filters (min_length, repeated_ngrams with label masks) and exact
dedup on two sources; MinHash is left out here because replicas are near-duplicates by
construction (bench_dedup.py measures it). The budget scales with the data (about half the
pool's tokens), so every point mixes about half of its pool.

What a point measures, since the build tags once and tokenizes only what the mix takes:
each point starts from an empty attributes root, so it is a full build (tag every pool
document, then select, tokenize the hash-order prefix the budget needs, write). Its cost
is the CPU time of the whole process tree (bench/proctree.CpuMeter: driver Python, JVM,
PySpark daemon and workers, sampled from /proc) and its wall time; the figures are pool MB per core-second (what the
tag phase reads) and output tokens per core-second (what the mix writes), plus wall time.
Before the build was rewritten for scale (commit 2102ab1), this benchmark's "input tokens/s per core" counted every
pool token, because every pool document was tokenized; that figure no longer exists.

The growth exponent b fits cost = a * scale^b by least squares on log-log, for core-seconds
(robust on a loaded machine) and for wall time; b ~ 1 is linear, b < 1 means fixed costs
(Spark jobs, JVM round trips) still weigh at the small end. One Spark session serves every
point and is warmed up by two untimed builds of the smallest point first, so JVM start-up
and JIT compilation are not billed to the 1x point.

The "demo" point builds manifests/demo.json on build/default-corpus (the embedded default
corpus, `python -m dolmino.default_corpus`), as `make build-demo` does, when it exists.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "corpus"
SOURCES = {  # name -> (corpus file, mix %, exact dedup)
    "web": ("web.jsonl.zst", 45.0, True),
    "code": ("code.jsonl.zst", 25.0, True),
    "wiki": ("encyclopedic.jsonl.zst", 20.0, False),
    "papers": ("academic.jsonl.zst", 10.0, False),
}


def read_head(path: Path, n: int) -> list[dict]:
    """The first `n` JSON documents of a Dolma .jsonl.zst file."""
    import zstandard

    docs = []
    with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
        for line in io.TextIOWrapper(reader, encoding="utf-8"):
            if line.strip():
                docs.append(json.loads(line))
                if len(docs) >= n:
                    break
    return docs


def make_corpus(root: Path, base: dict[str, list[dict]], scale: int) -> None:
    """`scale` distinct replicas of each source's base documents, one file per replica."""
    from dolmino.documents import write_documents

    for name, docs in base.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for r in range(scale):
            replica = docs if r == 0 else [
                {**d, "id": f"{d['id']}-r{r}", "text": f"Replica {r} of {d['id']}.\n{d['text']}"} for d in docs]
            write_documents(str(root / name / f"part-{r:03d}.jsonl.zst"), replica)


def manifest_for(root: Path, budget: int, label_mask: bool = True):
    from dolmino.manifest import manifest_from_dict

    return manifest_from_dict({
        "name": "bench-build", "version": 1, "seed": 11, "budget": budget, "data_root": str(root),
        "output_format": {"tokens_per_file": max(budget // 4, 100_000), "label_mask": label_mask},
        "sources": [
            {"name": name, "paths": [f"{name}/*.jsonl.zst"], "mix_percent": pct,
             "filters": [{"type": "min_length", "min_tokens": 16},
                         {"type": "repeated_ngrams", "max_n": 13, "min_repeats": 32}],
             **({"dedup": {"exact": True}} if exact else {})}
            for name, (_, pct, exact) in SOURCES.items()
        ],
    })


def fit_exponent(sizes: list[float], walls: list[float]) -> tuple[float, float]:
    """(a, b) of wall = a * size^b, by least squares on log(wall) = log(a) + b log(size)."""
    if len(sizes) < 2:
        raise ValueError("need at least two points to fit a growth exponent")
    xs = [math.log(s) for s in sizes]
    ys = [math.log(w) for w in walls]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("sizes must differ to fit a growth exponent")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return math.exp(my - b * mx), b


def make_spark(cores: int):
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(f"local[{cores}]").appName("dolmino-bench-build")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "2g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def timed_build(spark, manifest, budget: int, out: Path, attributes: Path) -> dict:
    from bench.proctree import CpuMeter
    from dolmino.build.mix import build

    started = time.perf_counter()
    with CpuMeter() as meter:
        # --keep reruns into the last run's outputs, of corpora written again (another plan)
        report = build(manifest, budget, str(out), spark, attributes=str(attributes), overwrite=True)
    wall = time.perf_counter() - started
    cpu = meter.result()["total"]
    return {"wall_s": wall, "cpu_s": cpu, "pool_bytes": sum(s["bytes_in"] for s in report["sources"]),
            "docs_in": sum(s["docs_in"] for s in report["sources"]),
            "tokens_tokenized": report["totals"]["tokens_tokenized"],
            "output_tokens": report["output"]["tokens"], "output_files": report["output"]["files"],
            "tokenized_per_written": report["totals"]["tokenized_per_written"], "budget": budget}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--quick", action="store_true", help="--base-docs 150 --scales 1,2,4 --no-demo")
    ap.add_argument("--base-docs", type=int, default=None, help="documents per source at 1x (default 500)")
    ap.add_argument("--scales", default=None, help="comma-separated data multiples (default 1,2,5,10)")
    ap.add_argument("--cores", type=int, default=2, help="Spark local[N]")
    ap.add_argument("--demo", action=argparse.BooleanOptionalAction, default=None,
                    help="also build manifests/demo.json on build/default-corpus (default: on unless --quick)")
    ap.add_argument("--keep", type=Path, default=None, help="keep corpora and outputs here")
    args = ap.parse_args(argv)
    base_docs = args.base_docs or (150 if args.quick else 500)
    scales = [int(s) for s in (args.scales or ("1,2,4" if args.quick else "1,2,5,10")).split(",")]
    demo = (not args.quick) if args.demo is None else args.demo
    if len(scales) < 2 or min(scales) < 1:
        ap.error("--scales needs at least two multiples >= 1")

    work = Path(tempfile.mkdtemp(prefix="bench-build-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    base = {name: read_head(args.corpus / fname, base_docs) for name, (fname, _, _) in SOURCES.items()}
    spark = make_spark(args.cores)
    points, notes = [], []
    try:
        # Budget: about half the input tokens (~4 characters a token), so the mix is sampled.
        chars_1x = sum(len(d["text"]) for docs in base.values() for d in docs)
        for scale in scales:
            root = work / f"corpus-{scale}x"
            if root.exists():
                shutil.rmtree(root)
            make_corpus(root, base, scale)
            budget = int(chars_1x / 4 * scale / 2)
            if not points:
                # Warm-up on the smallest point, untimed and twice: JVM start, Python workers, numba
                # loads and the JVM's JIT compiling the build's code paths are paid once per session,
                # not per size (one warm-up left the first timed point ~1.7x the cost of the next).
                for w in range(2):
                    timed_build(spark, manifest_for(root, budget), budget, work / f"warmup-out-{w}",
                                work / f"warmup-attributes-{w}")
            point = timed_build(spark, manifest_for(root, budget), budget, work / f"out-{scale}x",
                                work / f"attributes-{scale}x")
            point["scale"] = scale
            points.append(point)
            print(f"[bench_build] {scale}x: {point['cpu_s']:.1f} core-s, {point['wall_s']:.1f} s, "
                  f"{point['pool_bytes'] / 1e6:.1f} MB pool, {point['output_tokens']:,} tokens written", file=sys.stderr)
            shutil.rmtree(work / f"out-{scale}x", ignore_errors=True)
            shutil.rmtree(work / f"attributes-{scale}x", ignore_errors=True)
        demo_point = None
        demo_corpus = REPO / "build" / "default-corpus"
        if demo:
            if (demo_corpus / "web").is_dir():
                from dataclasses import replace

                from dolmino.manifest import load_manifest

                manifest = replace(load_manifest(str(REPO / "manifests" / "demo.json")), data_root=str(demo_corpus))
                demo_point = timed_build(spark, manifest, manifest.budget, work / "demo-out", work / "demo-attributes")
            else:
                notes.append(f"demo point skipped: {demo_corpus} missing (python -m dolmino.default_corpus)")
    finally:
        spark.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    a, b = fit_exponent([p["scale"] for p in points], [p["cpu_s"] for p in points])
    _, b_wall = fit_exponent([p["scale"] for p in points], [p["wall_s"] for p in points])
    figures = [{"name": "build: growth exponent b (core-seconds ~ a * size^b)", "impl": "dolmino", "value": b,
                "unit": "exponent", "better": "lower"},
               {"name": "build: growth exponent b (wall ~ a * size^b)", "impl": "dolmino", "value": b_wall,
                "unit": "exponent", "better": "lower"}]

    def point_figures(label: str, p: dict) -> list[dict]:
        return [
            {"name": f"build: core-seconds at {label}", "impl": "dolmino", "value": p["cpu_s"], "unit": "core-s",
             "better": "lower"},
            {"name": f"build: wall time at {label}", "impl": "dolmino", "value": p["wall_s"], "unit": "s",
             "better": "lower"},
            {"name": f"build: pool MB per core-second at {label}", "impl": "dolmino",
             "value": p["pool_bytes"] / 1e6 / p["cpu_s"], "unit": "MB/core-s", "better": "higher"},
            {"name": f"build: output tokens per core-second at {label}", "impl": "dolmino",
             "value": p["output_tokens"] / p["cpu_s"], "unit": "tokens/core-s", "better": "higher"},
        ]

    for p in points:
        figures += point_figures(f"{p['scale']}x", p)
    if demo_point:
        figures += point_figures("demo mix", demo_point)
    notes.append(f"this run's growth exponent b = {b:.2f} in core-seconds, {b_wall:.2f} in wall time (the table "
                 f"gives the median of the runs), over scales {scales} "
                 f"(base {base_docs} docs/source, {points[0]['pool_bytes'] / 1e6:.1f} MB pool at "
                 f"{points[0]['scale']}x); each point is a full build (tag + mix) from empty attributes; "
                 "core-seconds count every process of the build (driver Python, JVM, PySpark workers); "
                 "no anchor builds a whole mix, so these figures have no ratio")
    result = {"benchmark": "build", "cores": args.cores, "base_docs_per_source": base_docs, "scales": scales,
              "fit": {"a": a, "b": b, "b_wall": b_wall}, "points": points, "demo": demo_point, "notes": notes, "figures": figures}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
