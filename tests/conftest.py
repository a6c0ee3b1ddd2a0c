"""Shared fixtures: the real-text corpus from ../shared, and one local Spark session.

Spark starts once per test session (a few seconds) in local mode with the test's own
interpreter for Python workers, the UI off and little memory, as CI has 2 cores / 24 GiB.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus"


def shared_corpus_file(name: str) -> Path:
    path = SHARED_CORPUS / name
    if not path.exists():
        pytest.skip(f"shared corpus file {path} is not present (CI clones the repo with shared/ beside it)")
    return path


def corpus_documents(name: str, n: int) -> list[dict]:
    """The first `n` documents of a shared corpus file."""
    import itertools

    from dolmino.documents import Quarantine, read_documents

    return [doc for _, doc in itertools.islice(read_documents(str(shared_corpus_file(name)), Quarantine()), n)]


def one_source_manifest(tmp_path: Path) -> Path:
    """A manifest of one source holding one document (data/a.jsonl under `tmp_path`): for the
    tests of how a command starts, stops or fails, which need a build but not its output."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text('{"id": "1", "text": "one document"}\n')
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"name": "m", "version": 1, "seed": 1, "data_root": str(tmp_path / "data"),
                                    "sources": [{"name": "a", "paths": ["*.jsonl"], "mix_percent": 100}]}))
    return manifest


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    if not SHARED_CORPUS.is_dir():
        pytest.skip(f"shared corpus directory {SHARED_CORPUS} is not present")
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def spark():
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("dolmino-tests")
               .config("spark.driver.memory", "2g")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.default.parallelism", "2")
               # PySpark's merge spills to disk once its worker's RSS passes this (default
               # 512m), and a worker reused after earlier tests' imports can: pinned above any
               # test's worker, spill figures do not depend on test order.
               .config("spark.python.worker.memory", "4g")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


# Dummy credentials for the S3 tests. They look like real ones (an AKIA... key id) so that
# a leak into any printed message is visible to the tests that check for it.
S3_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIADOLMINOTESTKEY42",
    "AWS_SECRET_ACCESS_KEY": "dolminoTestSecret/Do+Not+Print/0123456789",
    "AWS_SESSION_TOKEN": "dolminoTestSessionToken-never-printed-9876",
}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 protocol server (moto) on 127.0.0.1, an OS-chosen port; yields its endpoint URL.

    boto3 finds it through AWS_ENDPOINT_URL_S3, exactly as it would find MinIO or R2, so the
    code under test has no test-only switch. Credentials and region are dummies; config files
    and instance metadata are switched off so nothing on the machine is ever used. State lives
    for the whole session: tests create their own uniquely named buckets.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request log lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    patch = pytest.MonkeyPatch()
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        patch.delenv(name, raising=False)
    for name, value in S3_TEST_CREDENTIALS.items():
        patch.setenv(name, value)
    patch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    patch.setenv("AWS_CONFIG_FILE", os.devnull)
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    try:
        yield endpoint
    finally:
        patch.undo()
        server.stop()


@pytest.fixture(scope="module")
def spark_with_s3(spark, s3_server):
    """Spark whose Python workers see the S3 endpoint and credentials.

    Workers started by an earlier test module inherited the JVM's environment from before
    the S3 server existed; sc.environment is added to the environment of every Python
    worker started for functions created from now on, so set it there too.
    """
    names = ["AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
             "AWS_EC2_METADATA_DISABLED", *S3_TEST_CREDENTIALS]
    env = spark.sparkContext.environment
    saved = {n: env.get(n) for n in names}
    env.update({n: os.environ[n] for n in names})
    try:
        yield spark
    finally:
        for n, v in saved.items():
            if v is None:
                env.pop(n, None)
            else:
                env[n] = v
