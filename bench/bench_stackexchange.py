"""Benchmark the Stack Exchange Posts.xml reader (filters/stackexchange.py): throughput and memory.

    python bench/bench_stackexchange.py              # 1x, 8x and 32x the embedded dump; split at 128x
    python bench/bench_stackexchange.py --quick      # 1x and 8x; split at 32x

Input: the embedded default corpus's Posts.xml (real TriviaQA / NQ questions and answers in
the dump schema, answers before and after their questions), repeated N times with every
Id / ParentId / AcceptedAnswerId shifted per copy, so an Nx file holds N times the posts with
the same structure. Each size runs `iter_stackexchange` (both passes: candidate pairs, then
parse, pair, filter and HTML-to-text) in a fresh interpreter, so its peak RSS (VmHWM)
is the reader's own: a streaming reader keeps it flat as the file grows, which is what a
100 GB stackoverflow Posts.xml needs. Figures are per core (one process). No anchor: neither
dolma nor datatrove reads Posts.xml.

Split conversion (the build's tag phase, `dolmino.build.stackexchange`): a `--split-scale`
file (default 128x, ~108 MB) is converted into documents files twice, each in a fresh
interpreter writing to a local attributes root: whole (`convert_whole`, what one tag task does, one core) and cut into
`--ranges` byte ranges by the Spark stages (`convert_ranges`, Spark local[2]; not timed: the
session's start and one job that starts the Python workers, as earlier stages of a build
would have). Both read the same file and write the same documents; the split side also
shuffles keys, halves and documents. Figures: MB/s of input for each, the wall-clock speedup
(whole seconds / split seconds, at most ~2 on 2 free cores), and the CPU the split conversion
spends (driver, JVM and Python workers, exited ones included: bench/proctree.CpuMeter) over
the whole-file conversion's. Until 2026-12-06 the split side's CPU was two readings of /proc
with cutime, which loses a Python worker that exits (PySpark's daemon ignores SIGCHLD). On a
shared machine the wall-clock figures depend on the load; the CPU ratio much less.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TMP = REPO / "bench" / "results" / "tmp" / "stackexchange"
_IDS = re.compile(rb'(\s(?:Id|ParentId|AcceptedAnswerId)=")(\d+)(")')


def scaled_posts(base: bytes, copies: int, out: Path) -> Path:
    """`base` (one Posts.xml) repeated `copies` times with its ids shifted per copy."""
    lines = base.split(b"\n")
    rows = [line for line in lines if line.lstrip().startswith(b"<row")]
    shift = 1 + max(int(m.group(2)) for line in rows for m in _IDS.finditer(line))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        fh.write(b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
        for copy in range(copies):
            offset = copy * shift
            for line in rows:
                fh.write(_IDS.sub(lambda m: m.group(1) + str(int(m.group(2)) + offset).encode() + m.group(3), line))
                fh.write(b"\n")
        fh.write(b"</posts>\n")
    return out


def _child(path: str) -> None:
    """Runs in a fresh interpreter: read one Posts.xml, print timings, counts and peak RSS as JSON."""
    from bench.proctree import self_peak_rss_mb
    from filters.stackexchange import StackExchangeStats, iter_stackexchange

    stats = StackExchangeStats()
    start = time.perf_counter()
    kept = sum(1 for _ in iter_stackexchange(path, stats=stats))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "kept": kept, "rows": stats.rows, "questions": stats.questions_seen,
                      "peak_rss_mb": round(self_peak_rss_mb(), 1)}))


def _metered(fn):
    """(fn(), wall s, CPU s by role) of this process and every process below it: for Spark local
    mode the driver, the JVM and the Python workers (bench/proctree.CpuMeter samples them, since
    PySpark's daemon ignores SIGCHLD and an exited worker's CPU reaches no parent's cutime)."""
    from bench.proctree import CpuMeter

    start = time.perf_counter()
    with CpuMeter() as meter:
        result = fn()
    return result, time.perf_counter() - start, meter.result()


def _warm(_):
    import filters.stackexchange  # noqa: F401
    import dolmino.build.stackexchange  # noqa: F401

    return 0


def _child_convert(path: str, mode: str, ranges: int, root: str) -> None:
    """Fresh interpreter: convert one Posts.xml as the tag phase does, whole or split; print JSON."""
    import os

    from dolmino.build.attributes import AttributeStore
    from dolmino.build.inputs import InputFile, Unit, plan_units
    from dolmino.build.stackexchange import convert_whole
    from dolmino.build.tag import UnitStats
    from dolmino.documents import Quarantine

    size = os.path.getsize(path)
    f = InputFile("stackexchange", path, "se/Posts.xml", size, "bench", "stackexchange")
    store = AttributeStore(root)
    if mode == "whole":
        files: dict = {}
        _, seconds, cpu = _metered(lambda: convert_whole(Unit(0, 0, f), "stackexchange", store, Quarantine(),
                                                         UnitStats(), files))
        print(json.dumps({"seconds": seconds, "cpu_s": cpu["total"], "cpu_by_role": cpu,
                          "documents_bytes": sum(files.values())}))
        return
    from pyspark.sql import SparkSession

    from dolmino.build.inputs import Listing
    from dolmino.build.stackexchange import convert_ranges

    spark = (SparkSession.builder.master("local[2]").appName("bench-se")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "2g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    sc = spark.sparkContext
    sc.parallelize(range(2), 2).map(_warm).collect()  # Python workers up, modules imported: as in a build
    units = plan_units(Listing([[f]], []), -(-size // ranges))
    (converted, _stages), seconds, cpu = _metered(lambda: convert_ranges(
        sc, units, {u.index for u in units}, {0: "stackexchange"}, store, {0: "docs-bench"}, quiet=True))
    spark.stop()
    print(json.dumps({"seconds": seconds, "cpu_s": cpu["total"], "cpu_by_role": cpu, "ranges": len(units),
                      "documents_bytes": sum(n for c in converted.values() for p, n in c.files.items()
                                             if "/documents/" in p)}))


def measure_conversion(path: Path, mode: str, ranges: int) -> dict:
    import os
    import shutil

    root = TMP / f"attributes-{mode}"
    shutil.rmtree(root, ignore_errors=True)
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from bench.bench_stackexchange import _child_convert; "
            f"_child_convert({str(path)!r}, {mode!r}, {ranges}, {str(root)!r})")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO), env=env)
    shutil.rmtree(root, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"converting {path} ({mode}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(path: Path) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            f"from bench.bench_stackexchange import _child; _child({str(path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"reading {path} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["mb"] = round(path.stat().st_size / 1e6, 2)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="sizes 1x and 8x only")
    ap.add_argument("--scales", default=None, help="comma-separated copies of the embedded dump (default 1,8,32)")
    ap.add_argument("--split-scale", type=int, default=None,
                    help="copies of the embedded dump for the whole vs split conversion (default 128, quick 32; "
                         "0: skip it)")
    ap.add_argument("--ranges", type=int, default=4, help="byte ranges the split conversion cuts that file into")
    args = ap.parse_args(argv)
    scales = [int(s) for s in (args.scales or ("1,8" if args.quick else "1,8,32")).split(",")]

    from dolmino.default_corpus import _posts_xml

    base = _posts_xml()
    points = []
    for scale in scales:
        path = scaled_posts(base, scale, TMP / f"{scale}x" / "Posts.xml")
        points.append({"scale": scale, **measure(path)})
        path.unlink()
    split = None
    split_scale = args.split_scale if args.split_scale is not None else (32 if args.quick else 128)
    if split_scale and args.ranges > 1:
        path = scaled_posts(base, split_scale, TMP / f"{split_scale}x" / "Posts.xml")
        whole = measure_conversion(path, "whole", 1)
        ranged = measure_conversion(path, "split", args.ranges)
        if whole["documents_bytes"] <= 0 or ranged["documents_bytes"] <= 0:
            raise RuntimeError("a conversion wrote no documents")
        split = {"scale": split_scale, "mb": round(path.stat().st_size / 1e6, 2), "whole": whole, "split": ranged}
        path.unlink()
    largest = points[-1]
    figures = [
        {"name": "stackexchange: MB/s per core", "impl": "dolmino", "unit": "MB/s", "better": "higher",
         "value": round(largest["mb"] / largest["seconds"], 2)},
        {"name": "stackexchange: rows/s per core", "impl": "dolmino", "unit": "rows/s", "better": "higher",
         "value": round(largest["rows"] / largest["seconds"], 1)},
    ]
    for p in points:
        figures.append({"name": f"stackexchange: peak RSS at {p['scale']}x ({p['mb']} MB)", "impl": "dolmino",
                        "unit": "MB", "better": "lower", "value": p["peak_rss_mb"]})
    growth = round(largest["peak_rss_mb"] / points[0]["peak_rss_mb"], 3)
    notes = [f"peak RSS grows {growth}x while the file grows {largest['mb'] / points[0]['mb']:.0f}x "
             "(streaming: pending questions/answers only); no anchor reads Posts.xml"]
    if split:
        mb, whole_s, split_s = split["mb"], split["whole"]["seconds"], split["split"]["seconds"]
        figures += [
            {"name": f"stackexchange: tag conversion MB/s, whole file, 1 task ({mb} MB)", "impl": "dolmino",
             "unit": "MB/s", "better": "higher", "value": round(mb / whole_s, 2)},
            {"name": f"stackexchange: tag conversion MB/s, {split['split']['ranges']} byte ranges, Spark local[2] "
                     f"({mb} MB)", "impl": "dolmino", "unit": "MB/s", "better": "higher", "value": round(mb / split_s, 2)},
            {"name": "stackexchange: split conversion speedup on 2 cores (whole s / split s)", "impl": "dolmino",
             "unit": "x", "better": "higher", "value": round(whole_s / split_s, 3)},
            {"name": "stackexchange: split conversion CPU s / whole-file CPU s (driver, JVM and Python workers)",
             "impl": "dolmino", "unit": "x", "better": "lower",
             "value": round(split["split"]["cpu_s"] / split["whole"]["cpu_s"], 3)},
        ]
        notes.append("split conversion: same file, same documents written; the split side adds Spark job overhead "
                     "and shuffles (keys, halves, documents); on a shared machine the 2 cores may not both be free")
    out = {"benchmark": "stackexchange", "cores": 1, "points": points, "split": split, "figures": figures,
           "notes": notes}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
