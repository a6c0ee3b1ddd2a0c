"""Where the local-mode JVM's CPU goes in a mix: its threads' CPU time, by thread name.

    python bench/jvm_threads.py                                   # bench_scale's pool at 16x
    python bench/jvm_threads.py --scale 4 --java-options "-XX:TieredStopAtLevel=1"

One Spark session as bench_scale.py's scale points run it (local[2], the same untimed
warm-up build on a tiny pool), then tag, mix, and the same mix again. Around each phase it
reads /proc/<jvm>/task/*/stat and prints the CPU seconds (user + system) each kind of
thread took: JIT compiler threads, the executor's task threads (which feed the Python
workers and take their output), GC, Spark's schedulers and listeners. Digits are dropped
from thread names, so "C2 CompilerThread0" and "...1" add up as one kind.

Not a benchmark (no figures for bench/run.py): a tool for the question why the first mix
of a session costs more core-seconds than the next one (bench/README.md, bench_scale.py).
`--java-options` goes to spark.driver.extraJavaOptions, to try JVM flags that a user's
`spark-submit --driver-java-options` (or spark-defaults.conf) would set.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def jvm_pid() -> int:
    """The session's JVM: the java process below this one."""
    from bench.proctree import descendants

    for pid in descendants():
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if argv0.endswith(b"java"):
            return pid
    raise RuntimeError("no java process below this one")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of the process's threads, summed by name with digits dropped."""
    out: dict[str, float] = defaultdict(float)
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # the thread ended
            continue
        name = re.sub(r"\d+", "#", text[text.index("(") + 1:text.rindex(")")])
        fields = text.rsplit(")", 1)[1].split()
        out[name] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def spent(before: dict[str, float], after: dict[str, float]) -> list[tuple[str, float]]:
    """Threads' CPU between two readings, largest first (threads born in between count whole;
    threads that ended in between are missing: `main` reports them from the process's total)."""
    rows = [(name, after[name] - before.get(name, 0.0)) for name in after]
    return sorted(((n, s) for n, s in rows if s > 0), key=lambda r: -r[1])


def main(argv=None) -> dict:
    from bench import bench_scale as bs
    from bench.proctree import process_cpu_s

    def own_cpu_s(pid: int) -> float:  # not its children's: PySpark's daemon is one
        return process_cpu_s(pid, with_children=False)

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=int, choices=bs.SCALES, default=bs.SCALES[-1], help="pool units per source")
    ap.add_argument("--unit-mb", type=float, default=40.0, help="as bench_scale.py's --unit-mb")
    ap.add_argument("--java-options", default="", help="spark.driver.extraJavaOptions for the session")
    ap.add_argument("--top", type=int, default=8, help="thread kinds shown per phase")
    args = ap.parse_args(argv)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    pool = bs.make_pool(bs.CORPUS, args.unit_mb)
    budget, mix = bs.plan_budget(json.loads((pool / "pool.json").read_text()), 22.0)
    spec = bs.manifest_dict(pool, args.scale, budget, mix)
    manifest = manifest_from_dict(spec)
    bs.TMP.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="jvm-threads-", dir=bs.TMP))
    builder = (SparkSession.builder.master("local[2]").appName("dolmino-jvm-threads")
               .config("spark.ui.port", "0").config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.memory", "2g"))
    if args.java_options:
        builder = builder.config("spark.driver.extraJavaOptions", args.java_options)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    phases = {}
    try:
        warm_root, warm_budget = bs.make_warmup_pool(Path(spec["data_root"]), work)
        warm = {**spec, "name": "warmup", "data_root": str(warm_root), "budget": warm_budget,
                "output_format": {"tokens_per_file": max(warm_budget // 2, 1000), "label_mask": True},
                "sources": [{**s, "paths": [f"{s['name']}/part-0000.jsonl.zst"]} for s in spec["sources"]]}
        build(manifest_from_dict(warm), warm_budget, str(work / "warmup-out"), spark,
              attributes=str(work / "warmup-attributes"))
        pid = jvm_pid()
        attributes = str(work / "attributes")
        for label, phase, out in (("tag", "tag", "out"), ("mix", "mix", "out"), ("mix again", "mix", "out-again")):
            before, total_before, started = thread_cpu(pid), own_cpu_s(pid), time.perf_counter()
            build(manifest, budget, str(work / out), spark, attributes=attributes, phase=phase)
            wall = time.perf_counter() - started
            rows = spent(before, thread_cpu(pid))
            # The process's own count includes threads that ended during the phase (HotSpot starts
            # and stops compiler threads as its queue grows and shrinks), which no reading shows.
            total = own_cpu_s(pid) - total_before
            ended = max(total - sum(s for _, s in rows), 0.0)
            if ended >= 0.01:
                rows = sorted([*rows, ("(threads that ended)", ended)], key=lambda r: -r[1])
            phases[label] = {"wall_s": round(wall, 2), "jvm_cpu_s": round(total, 2),
                             "threads": {n: round(s, 2) for n, s in rows}}
            print(f"{label}: {wall:.1f} s wall, JVM {total:.2f} CPU s")
            for name, s in rows[:args.top]:
                print(f"   {s:6.2f}  {name}")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"scale": args.scale, "java_options": args.java_options, "phases": phases}


if __name__ == "__main__":
    main()
