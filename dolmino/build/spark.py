"""The Spark session and what the driver learns from Spark about a running build.

`make_spark` sets nothing that spark-submit, spark-defaults.conf or `--conf` can decide:
the master comes from them (local[*] is spark-submit's own default when nothing sets
one); the script's `--master` and `--driver-memory` apply only when given. Forcing
`local[*]` from a fresh SparkConf() (which sees none of spark-submit's settings, because
the JVM is not up yet when Python reads it) ran "cluster" builds in local mode.

Stage metrics come from Spark's monitoring REST API on the driver (shuffle and spill bytes,
executor run time), per job group; with the UI disabled they are reported as unknown.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import urllib.request

# Where S3 lives (never credentials): executors must reach the same endpoint as the driver.
# On a cluster, credentials come from the executors' own chain (instance roles,
# spark.executorEnv.*); in local mode the workers inherit the driver's environment.
S3_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def make_spark(app_name: str, master: str | None = None, driver_memory: str | None = None):
    """The SparkSession for a build; explicit arguments override configuration, nothing else does."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name).config("spark.ui.showConsoleProgress", "false")
    if master:
        builder = builder.master(master)
    if driver_memory:
        builder = builder.config("spark.driver.memory", driver_memory)
    return builder.getOrCreate()


def forward_environment(sc, any_s3: bool, task_cpus: int | None = None) -> None:
    """Settings the executors' Python workers need: the S3 endpoint, and tokenizer threads.

    The tokenizer's Rust thread pool would otherwise start one thread per core in every
    Python worker: N workers x N threads on an N-core node. Each task gets the cores Spark
    reserved for it (spark.task.cpus, default 1)."""
    if any_s3:
        for key in S3_ENDPOINT_ENV:
            if os.environ.get(key):
                sc.environment[key] = os.environ[key]
    cpus = task_cpus or int(sc.getConf().get("spark.task.cpus", "1"))
    sc.environment["RAYON_NUM_THREADS"] = str(cpus)
    sc.environment["TOKENIZERS_PARALLELISM"] = "true" if cpus > 1 else "false"
    sc.environment.setdefault("OMP_NUM_THREADS", str(cpus))


def parallelize_pickled(sc, items: list, slices: int | None = None):
    """An RDD of `items` (any picklable objects) in `slices` partitions, one per item by default.

    Each item is pickled here with the standard pickler and shipped as bytes: Spark's
    cloudpickle calls back into Python for every object it writes, which took 0.126 s of
    driver CPU for the 20,000 units of bench_scale's small-files set, against 0.056 s."""
    blobs = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]
    return sc.parallelize(blobs, slices or max(len(blobs), 1)).map(pickle.loads)


def is_local(sc) -> bool:
    return sc.master.startswith("local")


def _rest(sc, path: str):
    url = sc.uiWebUrl
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url}/api/v1/applications/{sc.applicationId}{path}", timeout=10) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def cluster_info(sc) -> dict:
    """The master and the executors the build actually ran on."""
    info = {"spark_master": sc.master, "application_id": sc.applicationId,
            "default_parallelism": sc.defaultParallelism}
    executors = _rest(sc, "/allexecutors") or _rest(sc, "/executors")
    if executors is not None:
        workers = [e for e in executors if e.get("id") != "driver"] or executors
        info["executors"] = len(workers)
        info["executor_cores"] = sum(int(e.get("totalCores", 0)) for e in workers)
        info["executor_hosts"] = sorted({e.get("hostPort", "").rsplit(":", 1)[0] for e in workers})
    else:
        info["executors"] = None
    return info


def group_metrics(sc, group: str) -> dict | None:
    """Summed metrics of every stage run under one job group, from the REST API (None if off)."""
    jobs = _rest(sc, "/jobs")
    stages = _rest(sc, "/stages?details=false")
    if jobs is None or stages is None:
        return None
    ids = {sid for job in jobs if job.get("jobGroup") == group for sid in job.get("stageIds", ())}
    total = {"executor_run_s": 0.0, "executor_cpu_s": 0.0, "shuffle_write_bytes": 0, "shuffle_read_bytes": 0,
             "spilled_bytes": 0, "input_bytes": 0, "tasks": 0}
    for st in stages:
        if st.get("stageId") not in ids or st.get("status") not in ("COMPLETE", "FAILED"):
            continue
        total["executor_run_s"] += st.get("executorRunTime", 0) / 1000
        total["executor_cpu_s"] += st.get("executorCpuTime", 0) / 1e9
        total["shuffle_write_bytes"] += st.get("shuffleWriteBytes", 0)
        total["shuffle_read_bytes"] += st.get("shuffleReadBytes", 0)
        total["spilled_bytes"] += st.get("diskBytesSpilled", 0) + st.get("memoryBytesSpilled", 0)
        total["input_bytes"] += st.get("inputBytes", 0)
        total["tasks"] += st.get("numCompleteTasks", 0)
    total["executor_run_s"] = round(total["executor_run_s"], 3)
    total["executor_cpu_s"] = round(total["executor_cpu_s"], 3)
    return total


def persisted_bytes(sc, rdd) -> int | None:
    """Memory + disk bytes Spark holds for a persisted RDD (None when the REST API is off)."""
    info = _rest(sc, f"/storage/rdd/{rdd.id()}")
    if not info:
        return None
    return int(info.get("memoryUsed", 0)) + int(info.get("diskUsed", 0))
