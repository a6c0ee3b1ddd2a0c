"""A data or storage failure inside an executor reaches the build's user as one line.

Spark wraps an executor's exception in a Py4J error whose text holds the Python traceback;
`dolmino.build.cli.executor_failure` finds the failure's own line in it. The exceptions
are raised in a real Python worker, so the text is the one Spark writes (classes named by
their module: `dolmino.s3.S3PathError`, botocore's generated `botocore.errorfactory.NoSuchKey`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from dolmino.build.cli import executor_failure
from tests.conftest import one_source_manifest


@pytest.mark.parametrize("kind, line", [
    ("object", "S3PathError: s3://b/data/web/a.jsonl.zst: no such object"),
    ("bucket", "NoSuchBucket: s3://b: bucket does not exist"),
    ("delete", "S3DeleteError: could not delete 1 object(s), e.g. s3://b/out/report.json: AccessDenied"),
    ("denied", "ClientError: An error occurred (AccessDenied) when calling the GetObject operation: Access Denied"),
    ("no-such-key", "NoSuchKey: An error occurred (NoSuchKey) when calling the GetObject operation: The specified "
                    "key does not exist."),
    ("build", "BuildError: web/a.jsonl.zst: changed since it was tagged; run `dolmino tag`"),
    ("changed", "InputChangedError: web/a.jsonl: line 3 is not the document tagged there"),
    ("object-failed", "S3ObjectError: s3://b/data/web/a.jsonl.zst: cannot open for 'rb': S3 GetObject failed: "
                      "AccessDenied (403): access denied; check the credentials, the bucket name and the bucket "
                      "policy"),
    ("bug", None),
])
def test_an_executor_failure_is_one_line(spark, kind, line):
    def _raise(kind: str):  # nested: cloudpickle ships it by value (workers cannot import tests/)
        from botocore.exceptions import ClientError

        from dolmino import s3
        from dolmino.errors import BuildError, InputChangedError

        if kind == "object":
            raise s3.S3PathError("s3://b/data/web/a.jsonl.zst: no such object")
        if kind == "bucket":
            raise s3.NoSuchBucket("b")
        if kind == "delete":
            raise s3.S3DeleteError("could not delete 1 object(s), e.g. s3://b/out/report.json: AccessDenied")
        if kind == "denied":
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
        if kind == "no-such-key":
            import boto3

            client = boto3.session.Session().client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
            raise client.exceptions.NoSuchKey({"Error": {"Code": "NoSuchKey", "Message": "The specified key does not "
                                                         "exist."}}, "GetObject")
        if kind == "build":
            raise BuildError("web/a.jsonl.zst: changed since it was tagged; run `dolmino tag`")
        if kind == "changed":
            raise InputChangedError("web/a.jsonl: line 3 is not the document tagged there")
        if kind == "object-failed":
            with s3.about("s3://b/data/web/a.jsonl.zst"):  # as open_uri names a denied GET
                raise s3.S3ObjectError("s3://b/data/web/a.jsonl.zst: cannot open for 'rb': S3 GetObject failed: "
                                       "AccessDenied (403): access denied; check the credentials, the bucket name "
                                       "and the bucket policy")
        raise RuntimeError("a bug, not the data's fault")

    with pytest.raises(Exception) as info:
        spark.sparkContext.parallelize([kind], 1).map(_raise).collect()
    assert executor_failure(info.value) == (None if line is None else f"in an executor: {line}")


def test_a_model_file_that_cannot_be_used_is_one_line(spark, tmp_path):
    """A filter's model that is no model, raised while an executor loads it (dolmino.errors.ResourceError)."""
    not_a_model = tmp_path / "m.bin"
    not_a_model.write_text("this is not a model\n")
    empty_dir = tmp_path / "edu-model"
    empty_dir.mkdir()

    def _load(case: tuple[str, str]):
        kind, path = case
        if kind == "fasttext_quality":
            from filters.quality import FastTextQualityFilter

            return FastTextQualityFilter(path).reject_reason({"text": "x"})
        from filters.fineweb_edu import FineWebEduFilter

        return FineWebEduFilter(path).reject_reason({"text": "x"})

    for case, line in (
            (("fasttext_quality", str(not_a_model)), f"ResourceError: fastText model '{not_a_model}' is not a fastText "
                                                     "model: it starts with b'this', not fastText's magic number"),
            (("fasttext_quality", str(tmp_path)), f"ResourceError: fastText model '{tmp_path}' is a directory, not a "
                                                  "model file (.bin or .ftz)"),
            (("fineweb_edu", str(empty_dir)), f"ResourceError: model directory '{empty_dir}' has no config.json: not a "
                                              "directory written by save_pretrained")):
        with pytest.raises(Exception) as info:
            spark.sparkContext.parallelize([case], 1).map(_load).collect()
        assert executor_failure(info.value) == f"in an executor: {line}"


def _not_a_model_build(tmp_path, model_uri: str, capsys) -> tuple[int, str]:
    from dolmino.build.cli import main as build_main
    from dolmino.documents import write_documents

    write_documents(str(tmp_path / "data" / "web" / "a.jsonl.zst"),
                    [{"id": f"d{i}", "text": f"document number {i} about baking bread"} for i in range(20)])
    manifest = {"name": "not-a-model", "version": 1, "seed": 1, "budget": 1000, "data_root": str(tmp_path / "data"),
                "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 100,
                             "filters": [{"type": "min_length", "min_tokens": 1},
                                         {"type": "score_threshold", "scorer": "fasttext_expected_label",
                                          "model_path": model_uri}]}]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    code = build_main(["--manifest", str(path), "--out", str(tmp_path / "out"), "--attributes",
                       str(tmp_path / "attributes")])
    return code, capsys.readouterr().err


def test_a_build_whose_model_file_is_not_a_model_fails_in_one_line_before_any_task(spark, tmp_path, capsys):
    """The whole path: `dolmino build` with a fastText filter whose model file is no model. The
    driver reads the model's first bytes when it stages it, so the user reads one error line
    naming the filter and the file, and nothing was tagged (it used to fail in the executors,
    after the tag phase had started)."""
    model = tmp_path / "m.bin"
    model.write_text("this is not a model\n")
    code, err = _not_a_model_build(tmp_path, str(model), capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1, err
    assert (f"error: source 'web' filters[1].model_path: fastText model '{model}' is not a fastText model: "
            "it starts with b'this'") in errors[0]
    assert "Traceback" not in err and "PythonException" not in err and "executor" not in err
    assert not (tmp_path / "attributes").exists() or not any((tmp_path / "attributes").rglob("*.parquet"))


def test_an_s3_model_that_is_not_a_model_is_refused_on_the_driver(spark_with_s3, tmp_path, capsys):
    """The same check from an s3:// model (a range read of its head; a prefix is a directory)."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="not-a-model")
    boto3.client("s3").put_object(Bucket="not-a-model", Key="models/m.bin", Body=b"PK\x03\x04 a zip")
    boto3.client("s3").put_object(Bucket="not-a-model", Key="models/dir/model.bin", Body=b"x")
    for uri, words in (("s3://not-a-model/models/m.bin", "is not a fastText model: it starts with b'PK\\x03\\x04'"),
                       ("s3://not-a-model/models/dir", "is a directory, not a model file")):
        code, err = _not_a_model_build(tmp_path, uri, capsys)
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(errors) == 1, err
        assert f"error: source 'web' filters[1].model_path: fastText model '{uri}' {words}" in errors[0], err


@pytest.fixture(scope="module")
def hq_lq_model(tmp_path_factory):
    """A small fastText model from `python -m filters.quality train` (labels __label__hq / __label__lq)."""
    import subprocess
    import sys

    from dolmino.documents import write_documents

    d = tmp_path_factory.mktemp("hq-lq")
    write_documents(str(d / "pos.jsonl"), [{"id": f"p{i}", "text": f"theorem {i} proves the lemma"} for i in range(40)])
    write_documents(str(d / "neg.jsonl"), [{"id": f"n{i}", "text": f"buy {i} cheap shoes now"} for i in range(40)])
    proc = subprocess.run([sys.executable, "-m", "filters.quality", "train", "--pos", str(d / "pos.jsonl"), "--neg",
                           str(d / "neg.jsonl"), "--out", str(d / "q.bin"), "--epoch", "2", "--dim", "8",
                           "--bucket", "1000"], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return d / "q.bin"


def test_a_label_the_model_lacks_is_refused_on_the_driver(spark_with_s3, tmp_path, capsys, hq_lq_model):
    """The manifest's label against the model's dictionary, before any task: it failed the
    first tag task (one line, but after the Spark jobs began). Local and s3:// models; the
    driver reads the dictionary, not the matrices."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="labels")
    boto3.client("s3").upload_file(str(hq_lq_model), "labels", "models/q.bin")
    for model in (str(hq_lq_model), "s3://labels/models/q.bin"):
        for spec, words in (({"type": "fasttext_quality", "model_path": model, "label": "__label__pos"},
                             f"fastText model '{model}' has no label '__label__pos'; its labels are "
                             "['__label__hq', '__label__lq']"),
                            ({"type": "score_threshold", "scorer": "fasttext_expected_label", "model_path": model},
                             f"fastText model '{model}' has labels that are not '__label__' and a number")):
            code, err, errors = _build_with_filters(tmp_path, [spec], capsys)
            assert code == 2 and len(errors) == 1, err
            assert f"error: source 'web' filters[0]: {words}" in errors[0], err
            assert "Traceback" not in err and "executor" not in err
            assert not (tmp_path / "attributes").exists() or not any((tmp_path / "attributes").rglob("*.parquet"))


def _build_with_filters(tmp_path, filters, capsys):
    from dolmino.build.cli import main as build_main
    from dolmino.documents import write_documents

    write_documents(str(tmp_path / "data" / "web" / "a.jsonl.zst"),
                    [{"id": f"d{i}", "text": f"document number {i} about baking bread"} for i in range(20)])
    manifest = {"name": "bad-resource", "version": 1, "seed": 1, "budget": 1000, "data_root": str(tmp_path / "data"),
                "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 100, "filters": filters}]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    code = build_main(["--manifest", str(path), "--out", str(tmp_path / "out"), "--attributes",
                       str(tmp_path / "attributes")])
    err = capsys.readouterr().err
    return code, err, [line for line in err.splitlines() if "error:" in line]


def test_a_decontamination_index_that_is_no_index_is_refused_on_the_driver(spark, tmp_path, capsys):
    """Found by a tester: a garbage index failed in the executors after the tag phase began, as
    a Spark traceback naming a node's cache path and "pickled (object) data"."""
    index = tmp_path / "index.npz"
    index.write_bytes(b"garbage" * 100)
    code, err, errors = _build_with_filters(tmp_path, [{"type": "decontaminate", "index_path": str(index)}], capsys)
    assert code == 2 and len(errors) == 1, err
    assert (f"error: source 'web' filters[0].index_path: decontamination index {index} is not an index file (a "
            ".npz, as `python -m filters.decontamination build` writes): it starts with b'garb'") in errors[0]
    assert "Traceback" not in err and not any((tmp_path / "attributes").rglob("*.parquet"))
    index.unlink()
    index.mkdir()  # a directory: IsADirectoryError was a traceback (found by a reviewer)
    code, err, errors = _build_with_filters(tmp_path, [{"type": "decontaminate", "index_path": str(index)}], capsys)
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert f"filters[0].index_path: decontamination index {index} is a directory, not an index file" in errors[0]


def test_a_denied_model_on_s3_names_its_filter_and_object(spark, tmp_path, capsys, monkeypatch):
    """Found by a tester: with credentials the bucket refused, the error was "S3 HeadObject
    failed: 403 (403): access denied", naming neither the model nor the filter."""
    from botocore.exceptions import ClientError

    from dolmino.build import resources

    def denied(uri):
        raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"},
                           "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject")

    monkeypatch.setattr(resources, "_s3_members", denied)
    code, err, errors = _build_with_filters(
        tmp_path, [{"type": "fasttext_quality", "model_path": "s3://models/q.bin", "threshold": 0.5}], capsys)
    assert code == 2 and len(errors) == 1, err
    assert ("error: source 'web' filters[0].model_path: s3://models/q.bin: S3 HeadObject failed: 403 (403): access "
            "denied; check the credentials") in errors[0]


def test_a_model_cut_short_is_refused_on_the_driver_naming_its_filter(spark_with_s3, tmp_path, capsys, hq_lq_model):
    """A .bin cut inside its matrices failed in the first tag task, after the Spark jobs began, as
    "in an executor: ResourceError: <the node's path>: input matrix ... does not match", naming no
    filter (an s3:// model: the executor's cache path). The driver walks the headers against the
    file's size, local or s3:// (range reads), before any task."""
    import boto3

    data = hq_lq_model.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:len(data) - 100])
    boto3.client("s3").create_bucket(Bucket="cut-models")
    boto3.client("s3").put_object(Bucket="cut-models", Key="q.bin", Body=data[:len(data) - 100])
    for model in (str(cut), "s3://cut-models/q.bin"):
        spec = {"type": "fasttext_quality", "model_path": model, "label": "__label__hq", "threshold": 0.1}
        code, err, errors = _build_with_filters(tmp_path, [spec], capsys)
        assert code == 2 and len(errors) == 1, err
        assert (f"error: source 'web' filters[0]: fastText model '{model}' is truncated: it ends inside its input "
                f"matrix ({len(data) - 100:,} bytes where its headers announce") in errors[0], err
        assert "executor" not in err and not any((tmp_path / "attributes").rglob("*.parquet"))


def test_a_killed_python_worker_is_one_line_saying_to_rerun(spark):
    """Found by a tester: a Python worker killed mid-build (kill -9, the OOM killer) ended the
    build with Spark's Java stack, a traceback and "unexpected Py4JJavaError", exit 1."""
    with pytest.raises(Exception) as info:
        # a lambda: cloudpickle sends it by value (this test module is not importable in a worker)
        spark.sparkContext.parallelize([1], 1).map(lambda _: os.kill(os.getpid(), signal.SIGKILL)).collect()
    line = executor_failure(info.value)
    assert line is not None and line.startswith("a Python worker died (task 0 of stage "), str(info.value)[:2000]
    assert line.endswith("killed, out of memory, or ended by the code it ran (os._exit); rerun the same command to "
                         "resume (finished attribute files and parts are kept)")


def test_spark_submit_prints_one_line_not_sparks_copies_of_the_traceback(spark, tmp_path):
    """A damaged attribute file, found by a pool task: spark-submit's console showed Spark's
    own log of the task's Python traceback three times (~120 lines: the block manager, the
    local executor, the task set) before the command's one line (found by a tester)."""
    from cluster import jvm_env, python_env, run_submit, submit_argv

    from dolmino.build.mix import build
    from dolmino.documents import write_documents
    from dolmino.manifest import manifest_from_dict

    write_documents(str(tmp_path / "data" / "web" / "a.jsonl.zst"),
                    [{"id": f"d{i}", "text": f"document number {i} about baking bread"} for i in range(20)])
    manifest = {"name": "damaged", "version": 1, "seed": 1, "budget": 100, "data_root": str(tmp_path / "data"),
                "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 100}]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    attributes = tmp_path / "attributes"
    build(manifest_from_dict(manifest), 100, str(tmp_path / "tagged"), spark, attributes=str(attributes), phase="tag")
    [docs] = attributes.glob("web/docs-*/**/*.parquet")
    docs.write_bytes(docs.read_bytes()[:300])
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "JAVA_HOME", "LANG") if k in os.environ}
    env = {**keep, **python_env(), **jvm_env(), "SPARK_LOCAL_IP": "127.0.0.1"}
    argv = submit_argv("local[1]", "dolmino/build_mix.py", ["--manifest", str(path), "--attributes", str(attributes),
                                                           "--out", str(tmp_path / "out")])
    run = run_submit(argv, env, str(Path(__file__).resolve().parents[1]), tmp_path / "logs", "damaged", 300)
    assert run.returncode == 2, run.output[-3000:]
    assert "error: in an executor: BuildError: " in run.output and "not a readable attribute file" in run.output
    assert "Traceback" not in run.output and "PythonException" not in run.output, run.output[-5000:]
    # SparkContext's start-up INFO lines (~85) came before the build's first line: the command's
    # session starts at WARN unless spark.log.level is configured; Spark logs 3 before it applies
    assert run.output.count(" INFO ") <= 5, run.output[:3000]
    assert "Spark UI: http://" in run.output  # the address Spark's quieted INFO line gave (a reviewer)
    assert "Spark UI: http://" in run.output  # the address Spark's quieted INFO line gave (a reviewer)


def test_task_failure_loggers_are_quieted_only_in_a_session_the_command_started(spark):
    """A command run in a process with its own Spark session (a notebook) set that session's
    loggers for good (found by a reviewer); `spark.log.level=INFO` asks for every logger."""
    from pyspark import SparkConf

    from dolmino.build.spark import TASK_FAILURE_LOGGERS, SparkCommand, console_log_levels

    jvm = spark.sparkContext._jvm
    log_manager = jvm.org.apache.logging.log4j.LogManager

    def levels() -> list[str]:
        return [str(log_manager.getLogger(name).getLevel()) for name in TASK_FAILURE_LOGGERS]

    before = levels()
    assert before != ["ERROR", "ERROR", "FATAL"]
    assert SparkCommand("dolmino build", "kept").start("in-a-notebook", None, None) is not None
    assert levels() == before

    class Asked:  # a session started with --conf spark.log.level=INFO
        _jvm = jvm

        def getConf(self):
            return SparkConf(loadDefaults=False).set("spark.log.level", "info")

        def setLogLevel(self, level):
            raise AssertionError("spark.log.level was set: Spark applies it")

    console_log_levels(Asked())
    assert levels() == before


@contextlib.contextmanager
def _armed_shutdown_races(sc):
    """A command's arming of its session's shutdown races; after the test, the filters come off the
    tests' shared session and Ctrl-C is PySpark's again."""
    from dolmino.build.spark import quiet_shutdown_races

    races = quiet_shutdown_races(sc)
    try:
        yield races
    finally:
        races.disarm()
        config = sc._jvm.org.apache.logging.log4j.LogManager.getContext(False).getConfiguration()
        for log_filter in races._filters:
            config.removeFilter(log_filter)


def _log4j_writer(sc, name: str):
    """A log4j logger of the session whose events go to a StringWriter (and not to the console)."""
    jvm = sc._jvm
    layout = jvm.org.apache.logging.log4j.core.layout.PatternLayout.newBuilder().withPattern("%m%n").build()
    writer = jvm.java.io.StringWriter()
    appender = (jvm.org.apache.logging.log4j.core.appender.WriterAppender.newBuilder().setName(name)
                .setTarget(writer).setLayout(layout).build())
    appender.start()
    logger = jvm.org.apache.logging.log4j.LogManager.getContext(False).getLogger(name)
    logger.addAppender(appender)
    logger.setAdditive(False)
    return logger, writer


def test_spark_shutdown_race_messages_of_a_running_build_reach_the_log(spark):
    """The shutdown races' messages were dropped for the whole session from its start: a running
    build's TaskCompletionListener that failed for a reason of its own, or a scheduler's failed
    status update, never reached the log (found by a tester). They go only once Ctrl-C comes."""
    sc = spark.sparkContext
    logger, writer = _log4j_writer(sc, "dolmino.tests.shutdown_races")
    with _armed_shutdown_races(sc) as races:
        logger.error("Error in TaskCompletionListener: a listener of the running build failed")
        logger.error("Exception in statusUpdate: a running build's task result")
        assert str(writer.toString()).splitlines() == [
            "Error in TaskCompletionListener: a listener of the running build failed",
            "Exception in statusUpdate: a running build's task result"]
        races.drop()  # what the command's `stopped` does for Ctrl-C or SIGTERM, before it stops Spark
        logger.error("Error in TaskCompletionListener: Block broadcast_0 does not exist")
        logger.error("Some other error, after Ctrl-C")
    assert str(writer.toString()).splitlines()[2:] == ["Some other error, after Ctrl-C"]


def test_spark_shutdown_races_are_kept_off_the_console(spark, capsys, monkeypatch):
    """Ctrl-C during a build: the JVM's own shutdown hook stopped the context under running tasks,
    and Spark printed ~20 lines of Java stack per task that ended (and the driver a Python
    traceback of the closed accumulator connection) around the command's one line (found by a
    tester). From the Ctrl-C on (the signal itself, before the interrupt comes out of the py4j
    call), those messages go; others of the same loggers stay, and before it an accumulator
    connection the JVM closed keeps its traceback."""
    import time

    from dolmino.build.spark import ShutdownRaces

    monkeypatch.setattr(ShutdownRaces, "JVM_EXIT_S", 0.1)  # the tests' JVM stays
    sc = spark.sparkContext
    jvm = sc._jvm
    error = jvm.org.apache.logging.log4j.Level.ERROR
    scheduler = jvm.org.apache.logging.log4j.LogManager.getLogger("org.apache.spark.scheduler.TaskSchedulerImpl")
    dag = jvm.org.apache.logging.log4j.LogManager.getLogger("org.apache.spark.scheduler.DAGScheduler")
    server = sc._accumulatorServer

    def accumulator_errors() -> str:
        for raised in (EOFError(), ValueError("a bug in an update")):
            try:
                raise raised
            except Exception:  # noqa: BLE001 - as socketserver calls handle_error: inside the except
                server.handle_error(None, ("127.0.0.1", 1))
        return capsys.readouterr().err

    with _armed_shutdown_races(sc):
        assert scheduler.isEnabled(error, None, "Exception in statusUpdate")
        assert "EOFError" in accumulator_errors()
        with pytest.raises(KeyboardInterrupt):  # PySpark's handler, wrapped
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        deadline = time.monotonic() + 10  # the filters go in from a thread the handler woke, one at a time:
        # waiting for the first alone failed the second's check about one run in three on a busy host (a tester)
        while (scheduler.isEnabled(error, None, "Exception in statusUpdate") or dag.isEnabled(
                error, None, "Failed to update accumulator 0 (PythonAccumulatorV2) for task 0")) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not scheduler.isEnabled(error, None, "Exception in statusUpdate")
        assert not dag.isEnabled(error, None, "Failed to update accumulator 0 (PythonAccumulatorV2) for task 0")
        assert scheduler.isEnabled(error, None, "Lost executor 1 on host: worker lost")
        err = accumulator_errors()
        assert "ValueError: a bug in an update" in err and "EOFError" not in err, err


def _build_deleting_after_listing(tmp_path, monkeypatch, capsys, source: dict, victim) -> tuple[int, list[str]]:
    """Run the build command on one source, deleting `victim` right after the input listing; its
    exit status and error lines. The command lists once, with `inputs.list_inputs`, and hands the
    listing to the build (patching `mix.list_inputs` deleted nothing since)."""
    from dolmino.build import inputs
    from dolmino.build.cli import main as build_main

    path = tmp_path / "m.json"
    path.write_text(json.dumps({"name": "gone", "version": 1, "seed": 1, "budget": 300,
                                "data_root": str(tmp_path / "data"), "sources": [{**source, "mix_percent": 100}]}))
    listed = inputs.list_inputs

    def list_then_delete(*args, **kwargs):
        listing = listed(*args, **kwargs)
        victim.unlink()
        return listing

    monkeypatch.setattr(inputs, "list_inputs", list_then_delete)
    code = build_main(["--manifest", str(path), "--out", str(tmp_path / "out"), "--attributes", str(tmp_path / "a"),
                       "--quiet"])
    return code, [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def _disappeared(path) -> str:
    return (f"build_mix: error: in an executor: InputChangedError: {path}: the input file disappeared during the "
            "build (it was listed, then not found); rerun once the inputs are stable (finished attribute files and "
            "parts are kept)")


def test_an_input_deleted_after_the_listing_is_one_line_saying_to_rerun(spark, tmp_path, capsys, monkeypatch):
    """A file deleted between the listing and the tag phase ended `dolmino build` with "in an
    executor: FileNotFoundError: [Errno 2] No such file or directory: '.../b.jsonl'" (a tester):
    the line now says the input disappeared during the build and to rerun once inputs are stable."""
    web = tmp_path / "data" / "web"
    web.mkdir(parents=True)
    for name in ("a", "b"):
        (web / f"{name}.jsonl").write_text("".join(json.dumps({"id": f"{name}{i}", "text": f"document {i} about bread"})
                                                   + "\n" for i in range(10)))
    code, errors = _build_deleting_after_listing(tmp_path, monkeypatch, capsys,
                                                 {"name": "web", "paths": ["web/*.jsonl"]}, web / "b.jsonl")
    assert code == 2 and errors == [_disappeared(web / "b.jsonl")], errors


def test_an_input_gone_from_s3_or_disk_reads_as_disappeared_in_tag_and_write(s3_server, tmp_path):
    """The readers behind the tag and the write phases say the same of a local file and of an S3
    object (NoSuchKey) that were listed, then deleted; a documents file the build derived is not
    an input and keeps its own error."""
    import boto3

    from dolmino.build.inputs import InputFile, Unit
    from dolmino.build.read import read_lines, read_unit
    from dolmino.documents import Quarantine
    from dolmino.errors import InputChangedError

    boto3.client("s3").create_bucket(Bucket="gone-inputs")
    for uri in (str(tmp_path / "web" / "b.jsonl"), "s3://gone-inputs/web/b.jsonl"):
        unit = Unit(0, 0, InputFile("web", uri, "web/b.jsonl", 120, "v1"))
        with pytest.raises(InputChangedError, match=r"the input file disappeared during the build .*rerun once"):
            list(read_unit(uri, unit, Quarantine()))
        with pytest.raises(InputChangedError, match=r"the input file disappeared during the build .*rerun once"):
            list(read_lines(uri, unit, [1, 2]))
    unit = Unit(0, 0, InputFile("se", "/in/Posts.xml", "Posts.xml", 120, "v1", "stackexchange"))
    with pytest.raises(FileNotFoundError):
        list(read_unit(str(tmp_path / "documents" / "Posts.jsonl.gz"), unit, Quarantine(), None))


def test_a_posts_xml_deleted_after_the_listing_is_one_line_saying_to_rerun(spark, tmp_path, capsys, monkeypatch):
    """A Stack Exchange Posts.xml deleted between the listing and its conversion in the tag phase
    ended the build with "in an executor: FileNotFoundError: [Errno 2] No such file or directory"
    (a tester): it is the same line as any other input that disappeared."""
    site = tmp_path / "data" / "cooking.stackexchange.com"
    site.mkdir(parents=True)
    (site / "Posts.xml").write_text('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n</posts>\n')
    code, errors = _build_deleting_after_listing(
        tmp_path, monkeypatch, capsys, {"name": "se", "paths": ["**/Posts.xml"], "format": "stackexchange"},
        site / "Posts.xml")
    assert code == 2 and errors == [_disappeared(site / "Posts.xml")], errors


def test_a_posts_xml_gone_from_s3_or_disk_reads_as_disappeared_in_every_conversion_step(s3_server, tmp_path):
    """The whole-file conversion and both passes over a split Posts.xml's ranges (the file may go
    between them) say the same of a local file and of an S3 object listed, then deleted."""
    import types

    import boto3

    from dolmino.build.attributes import AttributeStore
    from dolmino.build.inputs import InputFile, Unit
    from dolmino.build.stackexchange import ConvertContext, _range_halves, _scan_range, convert_whole
    from dolmino.build.tag import UnitStats
    from dolmino.documents import Quarantine
    from dolmino.errors import InputChangedError

    boto3.client("s3").create_bucket(Bucket="gone-posts")
    counters = types.SimpleNamespace(add=lambda name, n: None)
    store = AttributeStore(str(tmp_path / "attributes"))
    for uri in (str(tmp_path / "se" / "Posts.xml"), "s3://gone-posts/se/Posts.xml"):
        whole = Unit(0, 0, InputFile("se", uri, "se/Posts.xml", 120, "v1", "stackexchange"))
        split = Unit(0, 0, InputFile("se", uri, "se/Posts.xml", 120, "v1", "stackexchange"), 0, 60)
        ctx = ConvertContext(store, {0: "se"}, (split,), {0: 0}, (uri,), {0: 0}, {0: 0}, {0: 0}, {0: ([0], [0])},
                             frozenset({0}))
        gone = r"se/Posts.xml: the input file disappeared during the build .*rerun once"
        with pytest.raises(InputChangedError, match=gone):
            convert_whole(whole, "se", store, Quarantine(), UnitStats(), {})
        with pytest.raises(InputChangedError, match=gone):
            _scan_range(split, 0, counters)
        with pytest.raises(InputChangedError, match=gone):
            list(_range_halves(0, [None], types.SimpleNamespace(value=ctx), counters))


def test_an_input_in_a_bucket_the_executor_cannot_see_keeps_its_own_error(s3_server):
    """A listed input whose bucket an executor cannot see (its endpoint or region shows other
    buckets) is not a file deleted during the build: the one line names the bucket, as for an
    attribute file, not "disappeared ... rerun once the inputs are stable" (found by a reviewer)."""
    from dolmino.build.inputs import InputFile, Unit
    from dolmino.build.read import read_lines, read_unit
    from dolmino.documents import Quarantine
    from dolmino.s3 import NoSuchBucket

    uri = "s3://unseen-inputs-bucket/web/b.jsonl"
    unit = Unit(0, 0, InputFile("web", uri, "web/b.jsonl", 120, "v1"))
    with pytest.raises(NoSuchBucket, match="s3://unseen-inputs-bucket: bucket does not exist"):
        list(read_unit(uri, unit, Quarantine()))
    with pytest.raises(NoSuchBucket, match="s3://unseen-inputs-bucket: bucket does not exist"):
        list(read_lines(uri, unit, [1, 2]))


def test_a_closed_accumulator_connection_is_quiet_only_once_the_jvm_went_away(capsys):
    """Without Ctrl-C, the accumulator server's EOFError is kept off the console only where the
    JVM the command launched has exited (`kill` of that JVM: the command says Spark stopped under
    it, and the traceback came after that line); a JVM still there keeps it."""
    import subprocess
    import sys
    import types

    from dolmino.build.spark import ShutdownRaces

    def errors(proc) -> str:
        server = types.SimpleNamespace(handle_error=lambda request, address: print(
            f"{type(sys.exc_info()[1]).__name__} from {address[0]}", file=sys.stderr))
        sc = types.SimpleNamespace(_accumulatorServer=server, _gateway=types.SimpleNamespace(proc=proc))
        races = ShutdownRaces(sc)
        races.JVM_EXIT_S = 0.2
        races.arm()
        try:
            for raised in (EOFError(), ConnectionResetError(), ValueError("a bug in an update")):
                try:
                    raise raised
                except Exception:  # noqa: BLE001 - as socketserver calls handle_error: inside the except
                    server.handle_error(None, ("127.0.0.1", 1))
        finally:
            races.disarm()
        return capsys.readouterr().err

    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    assert errors(exited) == "ValueError from 127.0.0.1\n"
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert errors(running) == ("EOFError from 127.0.0.1\nConnectionResetError from 127.0.0.1\n"
                                   "ValueError from 127.0.0.1\n")
    finally:
        running.kill()
        running.wait()


def test_a_second_ctrl_c_while_the_races_are_dropped_is_the_first_ones_line(capsys):
    """`stopped` now calls into the JVM (the filters) before its line: a second Ctrl-C there (an
    impatient user) does not turn the interrupted command into a traceback."""
    import types

    from dolmino.build.spark import SparkCommand

    def drop():
        raise KeyboardInterrupt

    command = SparkCommand("build_mix", "finished attribute files and parts are kept")
    command.races = types.SimpleNamespace(drop=drop)
    assert command.stopped(KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == ("build_mix: interrupted; rerun the same command to resume (finished attribute "
                                       "files and parts are kept)\n")


def test_a_task_whose_broadcast_went_with_the_stopped_context_is_kept_off_the_console(spark):
    """Ctrl-C during the tag phase of `make demo`'s build: after the one interrupted line, ~50
    lines of "ERROR TaskContextImpl: Error in TaskCompletionListener ... Block broadcast_0 does not
    exist" (a task releasing a broadcast its stopped context had removed; found by a reviewer, about
    one Ctrl-C in 15). Such a listener's error also fails its task, which says it in one line."""
    from dolmino.build.spark import shutting_down

    sc = spark.sparkContext
    jvm = sc._jvm
    error = jvm.org.apache.logging.log4j.Level.ERROR
    context = jvm.org.apache.logging.log4j.LogManager.getLogger("org.apache.spark.TaskContextImpl")
    with _armed_shutdown_races(sc) as races:
        shutting_down()  # as the SIGTERM handler does
        races.drop()  # and the command's `stopped`, which waits for the handler's thread
        assert not context.isEnabled(error, None, "Error in TaskCompletionListener")
        assert context.isEnabled(error, None, "Some other error of a task's context")


def test_a_task_starting_as_the_context_stops_is_kept_off_the_console(spark):
    """SIGTERM to a build's process group (a scheduler, `kill -TERM -PGID`) as the tag stage started:
    after the one terminated line, "ERROR Utils: Exception encountered" and 35 lines of a
    NullPointerException ("SparkEnv.get() is null" in TorrentBroadcast.readBlocks: a task reading its
    broadcasts from the stopped context; found by a tester). Kept before the signal: Utils logs it for
    a broadcast that a running build cannot read."""
    from dolmino.build.spark import shutting_down

    sc = spark.sparkContext
    jvm = sc._jvm
    error = jvm.org.apache.logging.log4j.Level.ERROR
    utils = jvm.org.apache.logging.log4j.LogManager.getLogger("org.apache.spark.util.Utils")
    with _armed_shutdown_races(sc) as races:
        assert utils.isEnabled(error, None, "Exception encountered")
        shutting_down()  # as the SIGTERM handler does
        races.drop()  # and the command's `stopped`, which waits for the handler's thread
        assert not utils.isEnabled(error, None, "Exception encountered")
        assert utils.isEnabled(error, None, "Some other error of Spark's utilities")


def test_the_jvm_of_dolmino_build_killed_under_a_running_job_is_one_line(tmp_path):
    """`kill` of the JVM that `dolmino build` launched, while the driver waited in a `collect`:
    ~150 lines of traceback and exit 1 (found by a tester). The collect's Py4JJavaError, read
    once the JVM had exited ("<exception str() failed>": py4j asks the JVM for its text), was
    not taken for Spark gone, and stopping the session raised py4j's ConnectionRefusedError.
    The driver here reads it after the JVM's exit, as a slow driver (a busy machine) did. The
    command's own session, in its own process: the test session's JVM stays."""
    import subprocess
    import sys

    manifest = one_source_manifest(tmp_path)
    script = f"""
import sys
import dolmino.build.mix
from dolmino.cli import main

def run_build(_manifest, _options, spark):
    sc = spark.sparkContext
    jvm = sc._gateway.proc

    def kill_the_jvm(_item, pid=jvm.pid):  # from the task: the driver is in the collect
        import os, signal, time
        os.kill(pid, signal.SIGTERM)
        for _ in range(300):  # until the JVM is gone (its end ends this worker)
            time.sleep(0.1)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break

    try:
        sc.parallelize([1], 1).map(kill_the_jvm).collect()
    except Exception as exc:
        failed = exc
    while failed.__context__ is not None and type(failed).__name__ != "Py4JJavaError":
        failed = failed.__context__  # the collect's own error, under PySpark's cleanup's
    jvm.wait(timeout=120)
    raise failed

dolmino.build.mix.run_build = run_build
sys.exit(main(["build", "--manifest", {str(manifest)!r}, "--budget", "10K", "--out", {str(tmp_path / "o")!r},
               "--attributes", {str(tmp_path / "a")!r}, "--master", "local[1]", "--quiet"]))
"""
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).resolve().parents[1], env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.rstrip("\n").splitlines()[-1] == (
        "dolmino build: Spark stopped under it (its JVM was terminated or died, or Spark shut the application down: "
        "the Spark log above says which); rerun the same command to resume (finished attribute files and parts are "
        "kept)"), proc.stderr[-3000:]


SCORERS_OF_YOURS = '''
import numpy as np


def _helper(texts):
    raise ValueError("cannot score " + repr(texts[0][:8]))


class Raises:
    def score(self, texts):
        return _helper(texts)


class Fine:
    def score(self, texts):
        return np.asarray([float("inf") if "1" in t else -1.0 for t in texts])


class Returns:
    def __init__(self, what):
        self.what = what

    def score(self, texts):
        return {"nan": [float("nan")] * len(texts), "none": [1.0] + [None] * (len(texts) - 1),
                "string": ["high"] * len(texts), "scalar": 0.5, "2d": np.ones((len(texts), 3)),
                "short": [1.0] * (len(texts) - 1)}[self.what]


class Unbuildable:
    def __init__(self, **params):
        raise RuntimeError("no weights at /models/x")


def nan():
    return Returns("nan")


def none():
    return Returns("none")


def string():
    return Returns("string")


def scalar():
    return Returns("scalar")


def two_d():
    return Returns("2d")


def short():
    return Returns("short")


def exits():
    class Exits:
        def score(self, texts):
            raise SystemExit(3)
    return Exits()
'''


@pytest.fixture
def scorers_of_yours(tmp_path, monkeypatch):
    """A module of scorers that fail as a user's can, importable here under a name of this test's own."""
    name = f"yours_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"{name}.py").write_text(SCORERS_OF_YOURS)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    return name


@pytest.mark.parametrize("callable_name, said", [
    ("nan", "returned NaN for 3 of 3 documents (ids 'd0' .. 'd2'), the first for 'd0': a score must be a number"),
    ("none", "returned None for 2 of 3 documents (ids 'd0' .. 'd2'), the first for 'd1': a score must be a number"),
    ("string", "returned a list that is not numbers (could not convert string to float: 'high') for 3 documents "
               "(ids 'd0' .. 'd2'); score(texts) must give one number per text"),
    ("scalar", "returned a float of shape () for 3 documents (ids 'd0' .. 'd2'); score(texts) must give one number "
               "per text, an array of shape (3,)"),
    ("two_d", "returned a ndarray of shape (3, 3) for 3 documents"),
    ("short", "returned a list of shape (2,) for 3 documents"),
    ("Unbuildable", ": constructing it raised RuntimeError: no weights at /models/x"),
    ("exits", ", scoring 3 documents (ids 'd0' .. 'd2'), raised SystemExit: 3"),
    ("Raises", ", scoring 3 documents (ids 'd0' .. 'd2'), raised ValueError: cannot score 'text 0'"),
])
def test_a_custom_scorer_that_fails_or_gives_no_number_per_text_is_a_scorer_error(scorers_of_yours, callable_name,
                                                                                  said):
    """Found by a tester: a scorer returning NaN or None kept every document it scored, without a
    word (NaN is below no min_score); a string, a scalar, a 2-D array or too few scores, and a
    scorer that raised or called sys.exit, ended the build with PySpark's traceback (exit 1)."""
    from filters.quality import ScoreThresholdFilter, ScorerError

    docs = [{"id": f"d{i}", "text": f"text {i}"} for i in range(3)]
    scorer = f"{scorers_of_yours}:{callable_name}"
    with pytest.raises(ScorerError) as info:
        ScoreThresholdFilter(scorer, 0.5).tag(docs)
    first, *frames = str(info.value).split("\n")
    assert first.startswith(f"scorer {scorer!r}") and said in first, first
    if callable_name in ("Raises", "Unbuildable"):  # the user's own frames, not the filter's
        assert frames and all(line.startswith("  ") for line in frames) and "quality.py" not in str(info.value)
        assert ("in _helper" if callable_name == "Raises" else "in __init__") in frames[-2]
    scores = ScoreThresholdFilter(f"{scorers_of_yours}:Fine", 0.5).tag(docs)["score"]
    assert scores.tolist() == [-1.0, float("inf"), -1.0]  # an infinity is a number: kept or removed by it


def test_a_scorers_failure_names_every_line_of_its_batch(scorers_of_yours):
    """Found by a reviewer: the lines named were the batch's first and last document's, while a Stack
    Exchange document's line is its question row's and its documents come in the order their pairs
    complete ("lines 40-7" for rows 7 to 52): the lines span the whole batch, whatever its order."""
    from types import SimpleNamespace

    from dolmino.build.tag import _flush
    from filters.quality import ScoreThresholdFilter, ScorerError

    batch = [(i, line, {"id": f"q{line}", "text": f"question {line}"}) for i, line in enumerate((40, 7, 52, 19))]
    acc = SimpleNamespace(flushed=0, tagged=[{}])
    unit = SimpleNamespace(file=SimpleNamespace(name="cooking.stackexchange.com/Posts.xml"))
    with pytest.raises(ScorerError) as info:
        list(_flush(batch, [ScoreThresholdFilter(f"{scorers_of_yours}:Raises", 0.5)], None, acc, None, unit, [None]))
    first, *frames = str(info.value).split("\n")
    assert first.endswith(" (input cooking.stackexchange.com/Posts.xml, lines 7-52)"), first
    assert frames and "in _helper" in frames[-2]


def test_a_custom_scorer_that_raises_in_a_build_is_one_line_with_its_own_traceback_once(spark, tmp_path, capsys):
    """Found by a tester: a scorer's exception printed its whole traceback twice (PySpark's frames
    and the scorer's), then all of it again on an "unexpected PythonException" line, exit 1. Now:
    the scorer's own frames once, and one last line naming the source, the filter, the documents
    and the exception; exit 2, as for any failure that is not dolmino's."""
    from dolmino.build.cli import main as build_main
    from dolmino.documents import write_documents

    name = f"raising_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(SCORERS_OF_YOURS)
    write_documents(str(tmp_path / "data" / "web" / "a.jsonl.zst"),
                    [{"id": f"d{i}", "text": f"document number {i} about baking bread"} for i in range(20)])
    manifest = {"name": "raising-scorer", "version": 1, "seed": 1, "budget": 1000, "data_root": str(tmp_path / "data"),
                "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 100,
                             "filters": [{"type": "score_threshold", "scorer": f"{name}:Raises", "min_score": 0.5}]}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    code = build_main(["--manifest", str(tmp_path / "m.json"), "--out", str(tmp_path / "out"), "--attributes",
                       str(tmp_path / "attributes"), "--py-files", str(tmp_path / f"{name}.py"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.rstrip("\n").splitlines()
    assert lines[-1] == (f"build_mix: error: in an executor: ScorerError: source 'web' filters[0]: scorer "
                         f"'{name}:Raises', scoring 20 documents (ids 'd0' .. 'd19'), raised ValueError: cannot score "
                         "'document' (input web/a.jsonl.zst, lines 1-20)"), err
    assert [line for line in lines if "error:" in line] == [lines[-1]]
    assert err.count("Traceback") == 1 and "Traceback of the scorer, in an executor" in err, err
    assert err.count('raise ValueError("cannot score "') == 1 and err.count("in _helper") == 1, err
    assert "pyspark" not in err and "PythonException" not in err and "filters/" not in err, err
    # the scorer's file where the user keeps it, not the executor's copy (userFiles-<uuid>, gone with the session)
    assert f'  File "{tmp_path / f"{name}.py"}", line ' in err and "userFiles-" not in err, err


def test_shipped_files_in_a_scorer_traceback_are_named_as_given():
    """A worker imports its own copy of a --py-files file; a .zip's modules sit below the zip's name."""
    from dolmino.build.cli import _as_given

    given = {"boom.py": "/home/me/scorers/boom.py", "code.zip": "/home/me/code.zip"}
    frames = ('  File "/tmp/spark-1/userFiles-2/boom.py", line 3, in score\n    return helper(texts)\n'
              '  File "/work/app-0001/0/code.zip/pkg/mod.py", line 9, in helper\n'
              '  File "/usr/lib/python3.11/json/__init__.py", line 1, in loads')
    assert _as_given(frames, given) == (
        '  File "/home/me/scorers/boom.py", line 3, in score\n    return helper(texts)\n'
        '  File "/home/me/code.zip/pkg/mod.py", line 9, in helper\n'
        '  File "/usr/lib/python3.11/json/__init__.py", line 1, in loads')


def test_a_python_worker_that_crashes_is_named_with_its_python_stack(spark):
    """Found by a tester: a scorer whose native call crashed the worker (a segmentation fault) read
    "killed, or out of memory; rerun the same command to resume", and the rerun crashed the same way.
    The sessions the commands start have the workers' faulthandler (`make_spark`), as this one has
    here for the test, and the crash is named with the stack it happened in."""
    from dolmino.build.cli import executor_traceback
    from dolmino.build.spark import FAULTHANDLER

    def crash(_):  # nested: cloudpickle ships it by value
        import ctypes

        ctypes.string_at(0)

    conf = spark.sparkContext._jsc.sc().conf()  # the live configuration, which each task's runner reads
    conf.set(FAULTHANDLER, "true")
    try:
        with pytest.raises(Exception) as info:
            spark.sparkContext.parallelize([1], 1).map(crash).collect()
    finally:
        conf.remove(FAULTHANDLER)
    line = executor_failure(info.value)
    assert line is not None and line.startswith("a Python worker crashed (task 0 of stage "), str(info.value)[:3000]
    assert line.endswith(": Fatal Python error: Segmentation fault, in the code of the stack above (a native library, "
                         "a scorer of your own): a rerun crashes the same way until that code is fixed")
    stack = executor_traceback(info.value).splitlines()
    assert stack[0] == "Stack of the Python worker that crashed (most recent call first):"
    assert "in string_at" in stack[1] and "in crash" in stack[2] and not any("pyspark" in s for s in stack), stack


def _recorded_session_configs(monkeypatch, scratch_checked: bool = False) -> dict:
    """What make_spark sets on its builder (filled by each call), not under spark-submit; with no JVM started
    unless `scratch_checked` (check_scratch_space reads Spark's own reading of the configuration in the JVM)."""
    from types import SimpleNamespace

    from pyspark.sql import SparkSession

    from dolmino.build import spark as spark_module

    configs = {}

    class Builder:
        _options = configs  # PySpark's builder keeps its settings there

        def appName(self, _name):  # noqa: N802 - PySpark's
            return self

        def master(self, _master):
            return self

        def config(self, key, value):
            configs[key] = value
            return self

        def getOrCreate(self):  # noqa: N802 - PySpark's
            return SimpleNamespace(sparkContext=SimpleNamespace(uiWebUrl=None, environment={}))

    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)  # not under spark-submit
    monkeypatch.setattr(SparkSession, "builder", Builder())
    if not scratch_checked:
        monkeypatch.setattr(spark_module, "check_scratch_space", lambda _builder: None)
    return configs


def test_a_command_starts_its_session_with_the_python_faulthandler(monkeypatch):
    """The crash's stack comes only from workers with the faulthandler on: a session the command
    starts has it, unless spark-submit's configuration says otherwise."""
    from dolmino.build import spark as spark_module

    configs = _recorded_session_configs(monkeypatch)
    spark_module.make_spark("app", quiet_start=True)
    assert configs.get(spark_module.FAULTHANDLER) == "true"
    configs.clear()
    spark_module.make_spark("app", quiet_start=False)  # a caller's session: its configuration stays
    assert spark_module.FAULTHANDLER not in configs


def test_a_session_the_command_launches_keeps_the_users_spark_defaults(monkeypatch, tmp_path):
    """Found by a reviewer: `dolmino build` launches its own JVM, whose SparkConf() is empty before the launch,
    so the faulthandler and the endpoint without its password went over a spark.hadoop.fs.s3a.endpoint (an
    s3a event log's store) or a faulthandler setting in spark-defaults.conf; and over a caller's session."""
    from dolmino.build import spark as spark_module

    S3A_ENDPOINT = "spark.hadoop.fs.s3a.endpoint"  # noqa: N806 - Spark's key
    configs = _recorded_session_configs(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://dolmino:pw-reviewer@127.0.0.1:9")
    monkeypatch.delenv("PYSPARK_SUBMIT_ARGS", raising=False)
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    spark_module.make_spark("app", quiet_start=True)  # no spark-defaults.conf: both set
    assert configs == {**configs, spark_module.FAULTHANDLER: "true", S3A_ENDPOINT: "http://127.0.0.1:9"}
    (tmp_path / "spark-defaults.conf").write_text("# spark.python.worker.faulthandler.enabled true\n"
                                                  "spark.hadoop.fs.s3a.endpoint   http://logs.example:9000\n"
                                                  "  spark.python.worker.faulthandler.enabled=false\n")
    configs.clear()
    spark_module.make_spark("app", quiet_start=True)
    assert spark_module.FAULTHANDLER not in configs and S3A_ENDPOINT not in configs, configs
    (tmp_path / "spark-defaults.conf").unlink()
    configs.clear()
    spark_module.make_spark("app", quiet_start=False)  # a caller's session: it logged its settings when it started
    assert S3A_ENDPOINT not in configs, configs


def test_a_driver_scratch_space_that_cannot_be_written_is_one_line_before_spark_starts(spark, tmp_path, capsys,
                                                                                       monkeypatch):
    """`spark-submit --conf spark.local.dir=/ro dolmino/build_mix.py` (a read-only /ro) ended with exit status 53
    and Spark's "Failed to create any local dir." alone, and `dolmino build` said "Spark stopped under it" (a
    tester). Checked before the context starts, with Spark's own reading of its settings (this JVM's); one
    directory that can be written among several, or one still to be made, is enough, as it is for Spark."""
    from pyspark.sql import SparkSession

    from dolmino.build import spark as spark_module

    if spark.sparkContext._jvm.System.getenv("SPARK_LOCAL_DIRS") is not None:  # noqa: SLF001
        pytest.skip("SPARK_LOCAL_DIRS is set: it goes before spark.local.dir")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    configs = _recorded_session_configs(monkeypatch, scratch_checked=True)
    monkeypatch.setattr(SparkSession, "getActiveSession", lambda: None)  # a session the command starts
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))  # no spark-defaults.conf
    configs["spark.local.dir"] = f"{blocker}/scratch"
    assert spark_module.SparkCommand("dolmino build", "kept").start("app", None, None) is None
    assert capsys.readouterr().err == (
        f"dolmino build: error: Spark's scratch space on the driver, {blocker}/scratch (spark.local.dir), cannot be "
        "written (Not a directory): make it writable, or give Spark a writable directory (SPARK_LOCAL_DIRS=DIR, "
        "which goes before spark.local.dir)\n")
    configs["spark.local.dir"] = f"{blocker}/a,{blocker}/b"
    with pytest.raises(spark_module.ScratchSpaceError, match=r"\(spark.local.dir\), has no directory that can be "
                       r"written \(.*/a: Not a directory; .*/b: Not a directory\): make one of them writable, or "):
        spark_module.check_scratch_space(SparkSession.builder)
    configs["spark.local.dir"] = f"{blocker}/a,{tmp_path}/to-be-made/scratch"
    spark_module.check_scratch_space(SparkSession.builder)


def test_a_session_the_command_launches_prints_the_spark_ui_address(monkeypatch, tmp_path, capsys):
    """`dolmino build` launches its own JVM, which starts at PySpark's WARN: Spark's INFO line with the UI's
    address (where the executors' logs and tracebacks are) was never shown, as it is under spark-submit."""
    from types import SimpleNamespace

    from pyspark.sql import SparkSession

    from dolmino.build import spark as spark_module

    _recorded_session_configs(monkeypatch)
    session = SimpleNamespace(sparkContext=SimpleNamespace(uiWebUrl="http://127.0.0.1:4041", environment={}))
    monkeypatch.setattr(SparkSession.builder, "getOrCreate", lambda: session, raising=False)
    monkeypatch.delenv("PYSPARK_SUBMIT_ARGS", raising=False)
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))  # no spark-defaults.conf
    spark_module.make_spark("app", quiet_start=True)
    assert capsys.readouterr().err == "Spark UI: http://127.0.0.1:4041 (stages, executors' logs)\n"
    spark_module.make_spark("app", quiet_start=False)  # a caller's session: it logged its start its own way
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--conf spark.log.level=INFO pyspark-shell")  # Spark says it
    spark_module.make_spark("app", quiet_start=True)
    assert capsys.readouterr().err == ""


def _build_with(run_build, tmp_path, monkeypatch, capsys) -> tuple[int, str]:
    """`build_mix`'s exit status and stderr where `run_build` (its work, after the checks and Spark's
    start) is the given function: what the command line makes of what that raises."""
    import dolmino.build.mix
    from dolmino.build.cli import main as build_main

    monkeypatch.setattr(dolmino.build.mix, "run_build", run_build)
    manifest = one_source_manifest(tmp_path)
    code = build_main(["--manifest", str(manifest), "--budget", "1K", "--out", str(tmp_path / "out"), "--quiet"])
    return code, capsys.readouterr().err


def test_an_unexpected_exception_in_an_executor_prints_its_traceback_once(spark, tmp_path, capsys, monkeypatch):
    """An exception of no known class raised in an executor (a bug, or a library's failure no filter
    names) printed the worker's traceback twice, then a third time as one "unexpected PythonException:
    An exception was thrown from the Python worker: Traceback ..." line (a tester). Now the worker's
    traceback once, from the first frame that is not PySpark's, and a last line naming the exception."""

    def _bug(_):  # nested: cloudpickle ships it by value
        raise KeyError("a bug in a task")

    with pytest.raises(Exception) as info:
        spark.sparkContext.parallelize([1], 1).map(_bug).collect()
    failure = info.value

    def run_build(*_args):
        raise failure

    code, err = _build_with(run_build, tmp_path, monkeypatch, capsys)
    assert code == 1, err
    lines = err.rstrip("\n").splitlines()
    assert lines[-1] == "build_mix: error: unexpected KeyError in an executor: 'a bug in a task'", err
    assert err.count("Traceback") == 1 and err.count('raise KeyError("a bug in a task")') == 1, err
    assert lines[-2] == "KeyError: 'a bug in a task'" and lines[-3].strip() == 'raise KeyError("a bug in a task")'
    assert lines[-5:-3] == ["Traceback (most recent call last):", lines[-4]] and "in _bug" in lines[-4], err
    assert "pyspark" not in err and "PythonException" not in err, err


def test_a_broadcast_into_a_full_driver_scratch_space_is_one_line(spark, tmp_path, capsys, monkeypatch):
    """The driver's broadcast of the build's context into a full spark.local.dir ended in "unexpected
    PicklingError: Could not serialize broadcast: OSError: [Errno 28] No space left on device" under the
    command's copy of the traceback, exit 1 (a tester, 3 MB tmpfs): one line naming the setting, exit 2."""
    import errno

    class Full:
        def __reduce__(self):  # what writing the broadcast's bytes into a full disk raises, from its pickling
            raise OSError(errno.ENOSPC, "No space left on device")

    def run_build(_manifest, _options, session):
        session.sparkContext.broadcast(Full())

    code, err = _build_with(run_build, tmp_path, monkeypatch, capsys)
    assert code == 2, err
    assert err.splitlines()[-1] == (
        "build_mix: error: the driver's Spark scratch space: No space left on device (spark.local.dir or "
        "SPARK_LOCAL_DIRS on the driver, where broadcasts are written; /tmp by default): free space there or point "
        "it at a larger disk (spark-submit --conf spark.local.dir=DIR), then rerun the same command (finished "
        "attribute files and parts are kept)"), err
    assert "unexpected" not in err, err
    # nor PySpark's traceback of the dump into the full disk above it (6 lines of its frames, a tester)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    from pyspark.core import broadcast
    from pyspark.util import print_exec

    assert broadcast.print_exec is print_exec  # PySpark's own again, after the command


def test_a_report_into_a_full_out_says_what_to_do_and_that_the_rerun_resumes(spark, tmp_path, capsys, monkeypatch):
    """The driver's report into an --out that filled after the parts: "build_mix: error: .../report.html: No space
    left on device", naming the file but neither what to do nor that the same command again keeps the parts
    (a tester, on a 2 MB tmpfs)."""
    import errno

    def run_build(_manifest, options, _session):
        raise OSError(errno.ENOSPC, "No space left on device", f"{options.out}/report.html")

    code, err = _build_with(run_build, tmp_path, monkeypatch, capsys)
    assert code == 2, err
    assert err.splitlines()[-1] == (
        f"build_mix: error: {tmp_path / 'out'}/report.html: No space left on device; free space there, then rerun "
        "the same command (finished attribute files and parts are kept)"), err
    assert "Traceback" not in err, err


def test_an_executor_that_cannot_import_the_project_says_to_install_it(spark):
    """An executor's Python without dolmino (a node whose venv lacks it, the checkout not at the driver's path)
    failed as "unexpected ModuleNotFoundError in an executor: No module named 'dolmino'", saying nothing of
    where or what to install (a tester, on a standalone cluster); a library missing there names the library."""
    def _missing(name: str):  # nested: shipped by value; the text is the one Python writes for a failed import
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)

    lines = {}
    for name in ("dolmino", "zstandard"):
        with pytest.raises(Exception) as info:
            spark.sparkContext.parallelize([name], 1).map(_missing).collect()
        lines[name] = executor_failure(info.value)
    python = os.environ["PYSPARK_PYTHON"]
    assert lines["dolmino"].startswith(f"in an executor: its Python ({python}, PYSPARK_PYTHON on each node) cannot "
                                       "import dolmino, which the driver's can"), lines
    assert "install this project there (`pip install .` of " in lines["dolmino"]
    assert "install zstandard there" in lines["zstandard"] and "this project" not in lines["zstandard"]
    assert "where zstandard is your own code (a custom scorer's helper), give it to --py-files" in lines["zstandard"]


def test_a_worker_running_other_code_or_libraries_than_the_driver_stops_naming_them(spark):
    """A node whose dolmino had one filter's threshold edited built another mix with exit status 0 (a tester,
    on a standalone cluster whose executors ran another venv): each worker compares itself with the driver's
    environment when it imports dolmino.build, before any task of the build runs."""
    from dolmino.build import worker_env

    sc = spark.sparkContext
    driver = worker_env.environment()
    assert "csrc/native.cpp" in driver["code"] and "dolmino/build/worker_env.py" in driver["code"]  # native kernels too
    edited = {**driver, "root": "/elsewhere", "code": {**driver["code"], "filters/length.py": "0" * 16},
              "libraries": {**driver["libraries"], "tokenizers": "9.9.9"}}
    sc.environment[worker_env.ENV] = json.dumps(edited)  # a new worker: one per environment
    try:
        with pytest.raises(Exception) as info:
            sc.parallelize([1], 1).map(lambda _: __import__("dolmino.build")).collect()
    finally:
        del sc.environment[worker_env.ENV]
    line = executor_failure(info.value)
    assert line.startswith("in an executor: BuildError: the executors' Python environment is not the driver's: "
                           "dolmino's code differs (filters/length.py; the executors import it from "), line
    assert f"tokenizers {driver['libraries']['tokenizers']} where the driver has 9.9.9" in line
    assert "pip install ." in line


def test_a_build_on_executors_with_another_tokenizers_fails_in_one_line(spark, tmp_path, capsys):
    """The whole path, `dolmino build`, with the executors' Python finding another tokenizers' metadata first
    on its path (a node's venv of another version): the build wrote its parts with exit status 0 before."""
    fake = tmp_path / "node-site" / "tokenizers-0.20.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: tokenizers\nVersion: 0.20.0\n")
    sc = spark.sparkContext
    before = sc.environment.get("PYTHONPATH")
    sc.environment["PYTHONPATH"] = os.pathsep.join(filter(None, [before, str(fake.parent)]))
    try:
        code, err, errors = _build_with_filters(tmp_path, [{"type": "min_length", "min_tokens": 1}], capsys)
    finally:
        if before is None:
            del sc.environment["PYTHONPATH"]
        else:
            sc.environment["PYTHONPATH"] = before
    assert code == 2 and len(errors) == 1, err
    assert "the executors' Python environment is not the driver's: tokenizers 0.20.0 where the driver has " \
           in errors[0], err
    assert "Traceback" not in err and not (tmp_path / "out" / "report.json").exists()


def test_a_checkout_edited_during_a_local_build_is_not_called_another_environment(monkeypatch):
    """A local build whose checkout was edited while it ran (a `git pull`, an editor) stopped with "the executors'
    Python environment is not the driver's ... import it from /work/main, the driver from /work/main ...
    `pip install .` on every node" (a tester): one host, one checkout, one set of libraries is a change in time."""
    from dolmino.build import worker_env
    from dolmino.errors import BuildError

    driver = worker_env.environment()
    driver["code"]["filters/length.py"] = "0" * 16  # what the driver read before the edit
    monkeypatch.setenv(worker_env.ENV, json.dumps(driver))
    with pytest.raises(BuildError) as info:
        worker_env.check()
    assert str(info.value) == (f"dolmino's code in {driver['root']} changed while this build ran (edited since the "
                               "driver read it at its start: filters/length.py): rerun the build once the checkout "
                               "stops changing")
    monkeypatch.setenv(worker_env.ENV, json.dumps({**driver, "host": "driver-node"}))  # a cluster's other node
    with pytest.raises(BuildError, match="pip install ."):
        worker_env.check()


def test_an_installed_executor_without_the_native_source_is_the_checkouts_driver():
    """README sets up a node with `pip install .` and runs the driver from a checkout: the wheel holds the
    compiled extension, not csrc/native.cpp, and every such build stopped with "csrc/native.cpp (only on the
    driver)" (a tester). C++ held by both sides and different is still a difference."""
    from dolmino.build import worker_env

    driver = worker_env.environment()
    installed = {**driver, "root": "/node/site-packages",
                 "code": {k: v for k, v in driver["code"].items() if not k.endswith(".cpp")}}
    assert worker_env.differences(driver, installed) == []
    edited = {**driver, "code": {**driver["code"], "csrc/native.cpp": "0" * 16}}
    assert worker_env.differences(driver, edited)[0].startswith("dolmino's code differs (csrc/native.cpp;")


def test_a_full_or_read_only_place_says_what_to_do_and_spark_scratch_is_one_line():
    """A full --out named no place, and said nothing of the rerun; a full spark.local.dir (Spark's shuffle
    files) printed a 150-line Java stack and an "unexpected Py4JJavaError" line of 8,000 characters, exit 1
    (found by a tester, 3 MB tmpfs mounts)."""
    class PythonException(Exception):  # what a failed task raises on the driver, by name
        pass

    class Py4JJavaError(Exception):
        pass

    said = executor_failure(PythonException("Traceback ...\nOSError: [Errno 28] No space left on device: '/mnt/out'\n"))
    assert said == ("in an executor: OSError: [Errno 28] No space left on device: '/mnt/out'; free space there or "
                    "give the build another location, then rerun the same command (finished attribute files and "
                    "parts are kept)")
    said = executor_failure(PythonException("Traceback ...\nOSError: [Errno 30] Read-only file system: '/mnt/a'\n"))
    assert said.startswith("in an executor: OSError: [Errno 30] Read-only file system: '/mnt/a'; make it writable ")
    java = ("An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.\n: org.apache."
            "spark.SparkException: Job aborted due to stage failure: Task 0 in stage 38.0 failed 1 times: com."
            "esotericsoftware.kryo.KryoException: java.io.IOException: No space left on device\n\tat com.esoteric"
            "software.kryo.io.Output.flush(Output.java:188)\n" + "\tat org.apache.spark.Frame(X.scala:1)\n" * 100)
    said = executor_failure(Py4JJavaError(java))
    assert said.startswith("in an executor: Spark's scratch space: No space left on device (its shuffle and spill "
                           "files, in spark.local.dir") and "\n" not in said and len(said) < 400


def test_a_read_only_spark_scratch_space_is_not_told_to_free_space():
    """A spark.local.dir remounted read-only was told "free space there or point it at a larger disk", the
    remedy of a full one, by the driver's broadcast and by the executors' shuffle files alike (a reviewer)."""
    from dolmino.build.cli import driver_scratch_failure

    class PicklingError(Exception):  # what PySpark raises on the driver, by name
        pass

    class Py4JJavaError(Exception):
        pass

    for failure in ("No space left on device", "Read-only file system"):
        errno_ = 28 if failure.startswith("No space") else 30
        driver = driver_scratch_failure(PicklingError(f"Could not serialize broadcast: OSError: [Errno {errno_}] "
                                                      f"{failure}"))
        executor = executor_failure(Py4JJavaError(f"Job aborted: java.io.IOException: {failure}\n\tat x.y(Z.java:1)"))
        for said in (driver, executor):
            remedy = said.split(f"{failure} (", 1)[1].split("): ", 1)[1]
            if failure.startswith("Read-only"):
                assert remedy.startswith("make it writable or point it at a writable disk (spark-submit --conf "
                                         "spark.local.dir=DIR), then rerun"), said
            else:
                assert remedy.startswith("free space there or point it at a larger disk (spark-submit --conf "), said


def test_a_forbidden_place_in_an_executor_says_what_to_do_and_that_the_rerun_resumes():
    """An executor that may not write (a directory of the output made by another user, spark.local.dir
    without permission) failed with "PermissionError: [Errno 13] Permission denied: '...'" and no advice,
    or Spark's Java stack, where the driver's equivalents say what to do and that the rerun resumes (a
    reviewer; reproduced with a 555 directory under `unshare -U`)."""
    class PythonException(Exception):  # what a failed task raises on the driver, by name
        pass

    class Py4JJavaError(Exception):
        pass

    rerun = "then rerun the same command (finished attribute files and parts are kept)"
    for code, strerror in ((13, "Permission denied"), (1, "Operation not permitted")):
        said = executor_failure(PythonException(f"Traceback ...\nPermissionError: [Errno {code}] {strerror}: "
                                                "'/mnt/attributes/web/docs-1046fb145bdb'\n"))
        assert said == (f"in an executor: PermissionError: [Errno {code}] {strerror}: '/mnt/attributes/web/docs-"
                        "1046fb145bdb'; give the executors' user access to it or give the build another location, "
                        f"{rerun}")
    for java in ("Job aborted due to stage failure: java.nio.file.AccessDeniedException: /scratch/blockmgr-1/0e\n"
                 "\tat sun.nio.fs.UnixException.translateToIOException(UnixException.java:90)\n",
                 "Job aborted due to stage failure: java.io.FileNotFoundException: /scratch/blockmgr-1/0e/shuffle_0_0"
                 "_0.data (Permission denied)\n\tat java.io.FileOutputStream.open0(Native Method)\n"):
        assert executor_failure(Py4JJavaError(java)) == (
            "in an executor: Spark's scratch space: Permission denied: /scratch/blockmgr-1/0e"
            + ("/shuffle_0_0_0.data" if "shuffle" in java else "") + " (its shuffle and spill files, in "
            "spark.local.dir; SPARK_LOCAL_DIRS or YARN's LOCAL_DIRS on a cluster's nodes): make it writable for the "
            f"executors' user or point it at a writable disk (spark-submit --conf spark.local.dir=DIR), {rerun}")
