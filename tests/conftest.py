"""Shared fixtures: the real-text corpus from ../shared, and one local Spark session.

Spark starts once per test session (a few seconds) in local mode with the test's own
interpreter for Python workers, the UI off and little memory, as CI has 2 cores / 24 GiB.
"""

from __future__ import annotations

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
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
