"""The build on a real Spark standalone cluster, submitted exactly as the README shows.

A master and two workers are started from pyspark's own `spark-class` (tests/cluster.py),
each worker with its own work directory, local dirs and resource cache, and the S3
endpoint and credentials in its environment as a node has them from its instance role.
Inputs, attributes and outputs live on a moto S3 server. When the tests run as root,
both workers run in private mount namespaces with a tmpfs over the driver's directory
(inputs on disk, the manifest, the local decontamination index, a local --out): nothing
but the code (venv and repository) is shared between the driver and the executors.

The build is `spark-submit --master spark://... dolmino/build_mix.py --manifest M --out
s3://... --attributes s3://... --data-root s3://...` in a subprocess. One source filters
with a fastText model given as s3:// (downloaded into each node's cache, SHA-256 checked),
another with a decontamination index given as a local path of the driver's (shipped with
SparkContext.addFile). The parts must equal, byte for byte, those of a local-mode build
of the same manifest over the same data on local disk, with the same accounting.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import re
import signal
import sys
import time
import uuid
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster import (
    StandaloneCluster, Submitted, jvm_env, kill_group, python_env, run_submit, start_submit, submit_argv,
    unshare_usable,
)
from conftest import REPO, S3_TEST_CREDENTIALS, shared_corpus_file
from dolmino import s3
from dolmino.documents import Quarantine, read_documents, write_documents

pytestmark = pytest.mark.slow

# Pools sized so that every source is tokenized whole (pool <= 1.5x its target): a prefix
# cut of a pool of a few dozen large documents needs many selection rounds (see the report).
BUDGET = 64_000
TOKENS_PER_FILE = 8_000  # 8 parts
NUM_PARTS = 8
SUBMIT_TIMEOUT_S = 900  # a loaded 2-core machine; a healthy run takes a small fraction of it
FASTTEXT_THRESHOLD = 0.87  # the tiny model below scores the web sample between ~0.7 and ~1.0
DECON_DOCS = 5  # wiki documents whose text is the "evaluation set": removed by decontamination
AWS_NAMES = ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
             "AWS_EC2_METADATA_DISABLED", *S3_TEST_CREDENTIALS)
RUN_FIELDS = ("run", "attributes", "manifest_path")  # where and how it ran; everything else must match


@dataclass
class World:
    root: Path
    driver: Path  # the driver's own files: invisible to private workers
    bucket: str
    manifest: Path  # the cluster manifest (data and model on s3://, index local)
    local_manifest: dict  # the same mix over local copies of the data and model
    model_sha256: str

    def s3(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def _docs(name: str, n: int, max_chars: int | None = None) -> list[dict]:
    docs = (d for _, d in read_documents(str(shared_corpus_file(name)), Quarantine()))
    if max_chars:
        docs = (d for d in docs if len(d["text"]) <= max_chars)
    return list(itertools.islice(docs, n))


def _manifest(data_root: str, model: str, index: str) -> dict:
    return {
        "name": "cluster", "version": 1, "seed": 5, "budget": BUDGET, "data_root": data_root,
        "output_format": {"tokens_per_file": TOKENS_PER_FILE, "label_mask": True},
        "sources": [
            {"name": "web", "paths": ["web/*.jsonl*"], "mix_percent": 50.0,
             "filters": [{"type": "fasttext_quality", "model_path": model, "label": "__label__hq",
                          "threshold": FASTTEXT_THRESHOLD}]},
            {"name": "wiki", "paths": ["wiki/*.jsonl*"], "mix_percent": 30.0,
             "filters": [{"type": "decontaminate", "index_path": index, "threshold": 0.5}]},
            {"name": "code", "paths": ["code/*.jsonl*"], "mix_percent": 20.0, "dedup": {"exact": True}},
        ],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3_server) -> World:
    from filters.decontamination import build_index
    from filters.quality import train_fasttext_classifier

    root = tmp_path_factory.mktemp("cluster")
    driver = root / "driver"
    inputs = driver / "inputs"
    web, wiki, code = _docs("web.jsonl.zst", 16), _docs("encyclopedic.jsonl.zst", 16), \
        _docs("code.jsonl.zst", 16, max_chars=8_000)
    code.append(dict(code[3], id="copy-of-3"))  # exact dedup has work
    for name, docs in (("web", web), ("wiki", wiki), ("code", code)):
        write_documents(str(inputs / name / "a.jsonl.zst"), docs[: len(docs) // 2])
        write_documents(str(inputs / name / "b.jsonl.gz"), docs[len(docs) // 2:])
    import zstandard

    bad = b'{"id": "cut", "text": "no end\n' + json.dumps({"id": "fine", "text": "A short web page."}).encode() + b"\n"
    (inputs / "web" / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(bad))

    models = driver / "models"
    model = str(models / "quality.bin")
    train_fasttext_classifier([d["text"] for d in _docs("academic.jsonl.zst", 100)],
                              [d["text"] for d in _docs("encyclopedic.jsonl.zst", 600)[500:]], model,
                              pos_label="__label__hq", neg_label="__label__lq", epoch=5, word_ngrams=1, dim=16,
                              bucket=1000)
    Instance = namedtuple("Instance", "task split text")
    index = str(models / "decon.npz")
    build_index([Instance("dict_quiz", "test", d["text"]) for d in wiki[10:10 + DECON_DOCS]], index)

    bucket = f"cluster-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    for path in sorted(inputs.rglob("*")):
        if path.is_file():
            s3.client().upload_file(str(path), bucket, f"data/{path.relative_to(inputs).as_posix()}")
    s3.client().upload_file(model, bucket, "models/quality.bin")

    manifest = driver / "manifest.json"
    # data_root names the driver's copy, which private workers cannot read: the cluster build
    # reads the bucket because --data-root s3://... says so, as the README shows
    manifest.write_text(json.dumps(_manifest(str(inputs), f"s3://{bucket}/models/quality.bin", index)))
    return World(root, driver, bucket, manifest, _manifest(str(inputs), model, index),
                 hashlib.sha256(Path(model).read_bytes()).hexdigest())


def _node_env() -> dict:
    """What every node and the submitting machine have: the code's Python, the S3 endpoint and credentials."""
    return {**python_env(), **jvm_env(), **{n: os.environ[n] for n in AWS_NAMES}}


@pytest.fixture(scope="module")
def cluster(world):
    why_not = unshare_usable()
    private = (0, 1) if why_not is None else ()
    c = StandaloneCluster(world.root / "spark", env=_node_env(), workers=2, private=private, hidden=world.driver)
    c.private_reason = why_not
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _submit_env() -> dict:
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "JAVA_HOME", "LANG", "TZ") if k in os.environ}
    return {**keep, **_node_env(), "SPARK_LOCAL_IP": "127.0.0.1", "DOLMINO_PROGRESS_S": "5"}


def _build_args(world: World, out: str, attributes: str) -> list[str]:
    return ["--manifest", str(world.manifest), "--out", out, "--attributes", attributes,
            "--data-root", world.s3("data"), "--task-size", "64K"]


def _submit(cluster, world, name: str, out: str, attributes: str) -> Submitted:
    argv = submit_argv(cluster.master_url, "dolmino/build_mix.py", _build_args(world, out, attributes))
    return run_submit(argv, _submit_env(), str(REPO), world.root / "logs", name, SUBMIT_TIMEOUT_S)


def _keys(prefix_uri: str) -> dict[str, int]:
    bucket, key = s3.split_uri(prefix_uri.rstrip("/") + "/")
    return {k[len(key):]: size for k, size in s3.iter_keys(bucket, key)}


def _s3_parts(out: str) -> dict[str, bytes]:
    bucket, key = s3.split_uri(out.rstrip("/") + "/")
    return {name: s3.client().get_object(Bucket=bucket, Key=key + name)["Body"].read()
            for name in sorted(_keys(out)) if name.startswith("part-")}


def _s3_report(out: str) -> dict | None:
    if "report.json" not in _keys(out):
        return None
    bucket, key = s3.split_uri(f"{out.rstrip('/')}/report.json")
    return json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def _explain(result: Submitted, cluster) -> str:
    return (f"exit {result.returncode} after {result.seconds:.0f}s\nstdout:\n{result.stdout[-3000:]}\nstderr:\n"
            f"{result.stderr[-6000:]}\n{cluster.logs()}")


def _accounting(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k not in RUN_FIELDS}
    out["output"] = {k: v for k, v in report["output"].items() if k != "location"}
    return out


@pytest.fixture(scope="module")
def local_build(world, spark):
    """The reference: local mode, data and model on the driver's disk."""
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    out = world.driver / "local-mix"
    started = time.time()
    report = build(manifest_from_dict(world.local_manifest), BUDGET, str(out), spark,
                   attributes=str(world.driver / "local-attributes"))
    parts = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.startswith("part-")}
    print(f"local-mode build: {time.time() - started:.0f}s")
    return report, parts


@pytest.fixture(scope="module")
def clean_run(world, cluster):
    out = world.s3("mix-clean")
    result = _submit(cluster, world, "clean", out, world.s3("attributes"))
    print(f"cluster build: {result.seconds:.0f}s")
    assert result.returncode == 0, _explain(result, cluster)
    return result, _s3_report(out), _s3_parts(out)


# ---------------------------------------------------------------------------- the clean build


def test_cluster_build_equals_local_mode_build(clean_run, local_build):
    _, report, parts = clean_run
    local_report, local_parts = local_build
    assert report is not None, "exit 0 but no report.json at --out"
    kinds = [n.split(".", 1)[1] for n in parts]
    assert sorted(set(kinds)) == ["csv.gz", "label_mask.npy", "npy"] and len(kinds) == 3 * NUM_PARTS
    assert sorted(parts) == sorted(local_parts)
    for name in local_parts:  # memmaps, sidecars and label masks, byte for byte
        assert parts[name] == local_parts[name], name
    assert _accounting(report) == _accounting(local_report)
    by_name = {s["name"]: s for s in report["sources"]}
    assert by_name["web"]["quarantined"] == {"malformed_json": 1}
    web_removed = by_name["web"]["removed"]
    assert sum(r["docs"] for k, r in web_removed.items() if k.startswith("fasttext_quality")) > 0
    assert by_name["web"]["kept_docs"] > 0
    wiki_removed = by_name["wiki"]["removed"]
    assert sum(r["docs"] for k, r in wiki_removed.items() if k.startswith("decontaminate")) == DECON_DOCS
    assert by_name["code"]["removed"]["exact_duplicate"]["docs"] == 1
    written = _keys(report["output"]["location"])
    assert {"report.json", "report.md", "manifest.json"} <= written.keys()
    quarantine = [k for k in written if k.startswith("quarantine/web/")]
    assert len(quarantine) == 1  # copied by the driver from the attributes root, S3 to S3
    bucket, key = s3.split_uri(f"{report['output']['location']}/{quarantine[0]}")
    rows = gzip.decompress(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()).splitlines()
    assert [json.loads(r)["reason"] for r in rows] == ["malformed_json"]


def test_the_s3_build_is_published_and_pulled_as_a_release(clean_run, local_build, world, tmp_path):
    """`dolmino release publish s3://<--out> ...` takes the build where it is: parts copied
    server-side under the SHA-256 of the executors' commit records, the rest read and hashed.
    The pulled release (every digest checked) holds the local-mode build's parts, and
    `dolmino validate` passes it."""
    from dolmino import release
    from dolmino.validate import main as validate_main

    _, report, _ = clean_run
    root = world.s3("releases")
    assert release.main(["publish", report["output"]["location"], root, "--name", "cluster-mix", "--no-progress"]) == 0
    dest = tmp_path / "pulled"
    assert release.main(["pull", f"{root}/cluster-mix", str(dest), "--no-progress"]) == 0
    _, local_parts = local_build
    assert {p.name: p.read_bytes() for p in dest.iterdir() if p.name.startswith("part-")} == local_parts
    assert json.loads((dest / "report.json").read_text())["output"] == report["output"]
    assert validate_main([str(dest)]) == 0


def test_spark_submit_master_runs_on_the_cluster(clean_run, cluster):
    """Issue 15.1: the master given to spark-submit (not to the script) is the one the build runs on."""
    _, report, _ = clean_run
    run = report["run"]
    assert run["spark_master"] == cluster.master_url
    assert run["executors"] >= 2 and run["executor_cores"] >= 2
    assert run["executor_hosts"] == ["127.0.0.1"]
    state = cluster.state()
    apps = {a["id"]: a for a in state["completedapps"]}
    assert run["application_id"] in apps, (run["application_id"], list(apps))
    app = apps[run["application_id"]]
    assert app["name"] == "dolmino-all-cluster" and app["state"] == "FINISHED"
    assert not state["activeapps"]
    # The executors fetched their small S3 inputs ahead (dolmino.prefetch), in both phases,
    # and the pool stage its attribute files.
    assert run["stages"]["tag"]["fetched_ahead"] > 0 and run["stages"]["tokenize"]["fetched_ahead"] > 0
    assert run["stages"]["pool"]["fetched_ahead"] > 0


def test_filter_files_reach_executors_without_a_shared_disk(clean_run, cluster, world):
    """The s3:// model is downloaded into each node's cache and checked; the local index travels with addFile."""
    cached = []
    for node in cluster.nodes:
        for path in node.cache_dir.glob("resources/*/quality.bin"):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == world.model_sha256
            assert list(path.parent.glob(f"quality.bin.sha256-{world.model_sha256[:16]}.ok"))
            cached.append(node.index)
    assert cached, "no worker downloaded the s3:// model into its DOLMINO_CACHE"
    # The index lives in the driver's directory, which private workers cannot see: there the
    # exact decontamination count (test above) proves executors scored with the shipped copy.


def test_tag_and_mix_commands_run_on_the_cluster(clean_run, cluster, world):
    """README's two-phase form, `dolmino tag` then `dolmino mix`, each with `--master
    spark://...`: the `dolmino` command is the driver (client mode, no spark-submit), the
    attribute files go to a fresh S3 root, and the mix equals the one-go build's bytes."""
    dolmino = str(Path(sys.executable).parent / "dolmino")
    attributes, out = world.s3("attributes-cli"), world.s3("mix-cli")
    common = [str(world.manifest), "--attributes", attributes, "--data-root", world.s3("data"), "--task-size", "64K",
              "--master", cluster.master_url, "--quiet"]
    tag = run_submit([dolmino, "tag", *common], _submit_env(), str(REPO), world.root / "logs", "cli-tag",
                     SUBMIT_TIMEOUT_S)
    assert tag.returncode == 0, _explain(tag, cluster)
    assert re.search(r"tagged [1-9]\d* unit\(s\), writing [1-9]\d* attribute file\(s\) and 1 quarantine / "
                     r"documents file\(s\); reused 0 unit", tag.stdout), tag.stdout
    assert any(name.endswith(".parquet") for name in _keys(attributes))
    mix = run_submit([dolmino, "mix", *common, "--out", out], _submit_env(), str(REPO), world.root / "logs",
                     "cli-mix", SUBMIT_TIMEOUT_S)
    assert mix.returncode == 0, _explain(mix, cluster)
    _, report, parts = clean_run
    assert _s3_parts(out) == parts
    assert _accounting(_s3_report(out)) == _accounting(report)
    assert _s3_report(out)["run"]["spark_master"] == cluster.master_url


def _synth(cluster, world, name: str, out: str) -> Submitted:
    """`python -m dolmino.synth --master spark://...`, as the README runs it, in a subprocess."""
    import sys

    argv = [sys.executable, "-m", "dolmino.synth", "--generator", "arithmetic", "--master", cluster.master_url,
            "--out", out, "--num-docs", "200", "--partitions", "4", "--seed", "3"]
    return run_submit(argv, _submit_env(), str(REPO), world.root / "logs", name, SUBMIT_TIMEOUT_S)


def test_synth_writes_its_partitions_to_s3_from_the_cluster(cluster, world):
    """Synthetic math on the cluster: each executor writes its partitions to --out s3://, and a
    local --out that the workers cannot see fails naming what is missing, with no report."""
    out = world.s3("synth/arith")
    result = _synth(cluster, world, "synth-s3", out)
    assert result.returncode == 0, _explain(result, cluster)
    keys = _keys(out)
    assert {f"part-{i:05d}.{kind}" for i in range(4) for kind in ("jsonl.zst", "done.json")} <= keys.keys()
    bucket, key = s3.split_uri(f"{out}/synth-report.json")
    report = json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    assert report["attempted"] == 200 and report["partitions_generated"] == [0, 1, 2, 3]
    if not cluster.private:
        pytest.skip(f"the local --out half needs workers in private mount namespaces: {cluster.private_reason}")
    local = world.driver / "synth-local"
    result = _synth(cluster, world, "synth-local", str(local))
    assert result.returncode == 2, _explain(result, cluster)
    assert "partitions the executors wrote are not visible at" in result.stderr
    assert "write --out to s3://" in result.stderr and "Traceback" not in result.stderr
    assert not (local / "synth-report.json").exists()


# ---------------------------------------------------------------------------- no shared filesystem


def test_local_out_on_workers_without_the_drivers_disk_fails_loudly(clean_run, cluster, world):
    if not cluster.private:
        pytest.skip(f"needs workers in private mount namespaces: {cluster.private_reason}")
    out = world.driver / "local-out"
    result = _submit(cluster, world, "local-out", str(out), world.s3("attributes"))
    assert result.returncode == 2, _explain(result, cluster)
    # spark-submit's PythonRunner sends the Python driver's stderr to its own stdout
    assert "build_mix: error:" in result.output and "are not as reported" in result.output
    assert "part-00000.npy: missing" in result.output
    assert "write --out to s3://" in result.output and "no report.json" in result.output
    assert not (out / "report.json").exists()
    assert not list(out.glob("part-*")), "parts appeared on the driver's disk though no worker can write there"
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------- failures and resume


def _wait_for(predicate, proc, timeout_s: float, what: str, interval: float = 0.1):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"spark-submit exited ({proc.returncode}) before {what}")
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def test_resume_after_the_driver_is_killed(clean_run, cluster, world):
    _, clean_report, clean_parts = clean_run
    out = world.s3("mix-resume")
    argv = submit_argv(cluster.master_url, "dolmino/build_mix.py", _build_args(world, out, world.s3("attributes")))
    proc, _, _ = start_submit(argv, _submit_env(), str(REPO), world.root / "logs", "resume-killed")
    try:
        _wait_for(lambda: any(k.startswith("_parts/") for k in _keys(out)), proc, SUBMIT_TIMEOUT_S,
                  "the first part commit record")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_group(proc)
    cluster.wait_for_no_active_apps()
    cluster.wait_for_idle_workers()  # no executor or Python worker of the killed app still writing
    listing = _keys(out)
    committed = sorted(k for k in listing if k.startswith("_parts/"))
    assert "report.json" not in listing, "the driver finished before it was killed: nothing to resume"
    assert 0 < len(committed) < NUM_PARTS, committed

    result = _submit(cluster, world, "resume-rerun", out, world.s3("attributes"))
    assert result.returncode == 0, _explain(result, cluster)
    report = _s3_report(out)
    assert report["run"]["resumed"] is True
    assert report["run"]["parts_reused"] == len(committed)
    assert report["run"]["stages"]["write"]["units"] == NUM_PARTS - len(committed)
    assert _s3_parts(out) == clean_parts
    assert _accounting(report) == _accounting(clean_report)  # the build's accounting, not the rerun's


def test_killed_executor_is_retried_and_output_unchanged(clean_run, cluster, world):
    """SIGKILL one executor JVM while the pool stage runs: its tasks and cached blocks are lost."""
    _, clean_report, clean_parts = clean_run
    out = world.s3("mix-executor-killed")
    argv = submit_argv(cluster.master_url, "dolmino/build_mix.py", _build_args(world, out, world.s3("attributes")))
    proc, out_log, err = start_submit(argv, _submit_env(), str(REPO), world.root / "logs", "executor-killed")
    node = cluster.nodes[0]
    try:
        # the pool stage's first progress line (DOLMINO_PROGRESS_S=5): tokenize and write are still to come
        _wait_for(lambda: "[pool]" in out_log.read_text(errors="replace"), proc, SUBMIT_TIMEOUT_S,
                  "the pool stage")
        victims = _wait_for(node.executor_pids, proc, 60, "worker 0's executor")
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=SUBMIT_TIMEOUT_S)
    finally:
        kill_group(proc)
    log = out_log.read_text(errors="replace") + err.read_text(errors="replace")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{log[-6000:]}\n{cluster.logs()}"
    assert "Lost executor" in log, log[-4000:]  # the driver saw it go while the build still ran
    report = _s3_report(out)
    assert _s3_parts(out) == clean_parts
    assert _accounting(report) == _accounting(clean_report)


def test_a_part_task_killed_mid_upload_leaves_its_files_where_spark_removes_them(tmp_path):
    """A part task killed while it uploads (Ctrl-C or a killed driver cancelling it, a lost executor:
    Spark ends its Python worker with SIGKILL, so `finally` never runs) left the part it had staged in
    the node's /tmp for good (found by a tester, Ctrl-C of spark-submit mid-write). It stages under
    the executor's SPARK_LOCAL_DIRS, which Spark removes with the executor and the application. Fast:
    one Python process that kills itself, no cluster."""
    import subprocess

    script = """if True:
        import os, signal
        import numpy as np
        from dolmino.build import write
        ctx = write.WriteContext("s3://bucket/out", 1, 4, 100257, False, ("web",), "plan", frozenset(), None)
        doc = write.TokDoc(0, 1, "d1", "a.jsonl:1", np.asarray([5, 6, 100257], dtype="<u4").tobytes())
        write._put = lambda local, uri, sha256: os.kill(os.getpid(), signal.SIGKILL)
        list(write.write_part(2, iter([(0, doc)]), type("Broadcast", (), {"value": ctx})(), None))
    """
    local, system_tmp = tmp_path / "spark-local" / "blockmgr-1", tmp_path / "tmp"
    local.mkdir(parents=True)
    system_tmp.mkdir()
    env = {**os.environ, "SPARK_LOCAL_DIRS": str(local), "TMPDIR": str(system_tmp), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not list(system_tmp.iterdir()), "the killed task's part was staged outside Spark's local dirs"
    assert [p.name for p in local.glob("dolmino-part-*/part-00002.npy")] == ["part-00002.npy"]


def test_a_completed_build_aborts_the_uploads_its_killed_tasks_left_open(s3_server):
    """A part task killed mid-upload (Ctrl-C of spark-submit during the write stage, a lost executor)
    left its multipart upload open: unlisted, yet stored and billed for good, and the rerun that
    completed the build left it (found by a tester). The build aborts the open uploads of its own
    file names under --out once its parts are checked; anything else is not the build's to touch."""
    from dolmino.build.output import remove_stale

    bucket = f"aborts-{uuid.uuid4().hex[:12]}"
    cl = s3.client()
    cl.create_bucket(Bucket=bucket)
    cl.put_object(Bucket=bucket, Key="mix/part-00000.npy", Body=b"\0" * 8)  # the certified part

    def open_upload(key: str) -> str:
        upload = cl.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        cl.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"\1" * 1024)
        return upload

    for key in ("mix/part-00000.npy", "mix/part-00001.label_mask.npy", "mix/notes/big.bin", "mix-2/part-00000.npy"):
        open_upload(key)
    assert remove_stale(f"s3://{bucket}/mix", {"part-00000.npy", "_parts/part-00000.json"}) == []
    left = sorted(u["Key"] for u in cl.list_multipart_uploads(Bucket=bucket).get("Uploads", ()))
    assert left == ["mix-2/part-00000.npy", "mix/notes/big.bin"]  # another --out's, and no build file's
    assert cl.get_object(Bucket=bucket, Key="mix/part-00000.npy")["Body"].read() == b"\0" * 8


@pytest.mark.parametrize("code", ["NotImplemented", "AccessDenied"])
def test_a_store_that_cannot_list_uploads_does_not_fail_the_build(monkeypatch, code):
    """s3rver and some gateways lack ListMultipartUploads, and a policy may not grant it: open
    uploads are then left to the bucket's lifecycle rules, and the completed build still succeeds."""
    from botocore.exceptions import ClientError

    from dolmino.build.output import abort_unfinished_uploads

    class Store:
        def get_paginator(self, operation):
            raise ClientError({"Error": {"Code": code, "Message": "no"}}, operation)

    monkeypatch.setattr(s3, "client", lambda: Store())
    assert abort_unfinished_uploads("s3://bucket/mix") == []
