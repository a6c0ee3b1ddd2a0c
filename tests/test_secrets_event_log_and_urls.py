"""Secrets in what the features added since the first secrets audit write or say.

Spark's event log and UI: the first audit (builds, releases, plan/lock, synth, trainer, Spark event logs)
set the endpoint through AWS_ENDPOINT_URL_S3. Spark's driver copies the other spelling, AWS_ENDPOINT_URL,
into Hadoop's `fs.s3a.endpoint` (where AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set too), which
its UI and event log show unredacted: a `user:password@` there went into every event log of a build.

The trainer's and evaluator's refusals of a URL where a local path goes quoted it whole, userinfo and all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, S3_TEST_CREDENTIALS

PASSWORD = "hunter2-t179-endpoint"

_SESSION = """
from dolmino.build.spark import make_spark

spark = make_spark("secrets-audit", quiet_start=True)
print("fs.s3a.endpoint =", spark.sparkContext._jsc.hadoopConfiguration().get("fs.s3a.endpoint"))
spark.stop()
"""


@pytest.mark.parametrize("endpoint, bare", [
    (f"http://dolmino:{PASSWORD}@127.0.0.1:9", "http://127.0.0.1:9"),
    (f"https://dolmino:{PASSWORD}/x@s3.example.com/base", "https://s3.example.com/base"),  # unencoded "/"
    (f"dolmino:{PASSWORD}@127.0.0.1:9", "127.0.0.1:9"),  # no scheme: refused by the S3 client, not by Spark
])
def test_the_hadoop_endpoint_spark_would_copy_loses_its_userinfo(monkeypatch, endpoint, bare):
    from dolmino.build.spark import _hadoop_endpoint

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert _hadoop_endpoint() == bare
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert _hadoop_endpoint() is None  # nothing to hide: Spark's own copy stays


def test_an_endpoint_password_reaches_neither_the_event_log_nor_the_ui_settings(tmp_path):
    """A build's session under spark-submit, with the event log on and AWS_ENDPOINT_URL holding a password:
    the log (Hadoop properties included) and the session's Hadoop settings hold the URL without it. The
    executors' credentials given as `--conf spark.executorEnv.AWS_ACCESS_KEY_ID=...` (as our hint for an
    executor without credentials says) are redacted too: Spark's own pattern left the key id in the log."""
    script = tmp_path / "session.py"
    script.write_text(_SESSION)
    events = tmp_path / "events"
    events.mkdir()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "PYTHONPATH": str(REPO),
           "AWS_ENDPOINT_URL": f"http://dolmino:{PASSWORD}@127.0.0.1:9", **S3_TEST_CREDENTIALS}
    env.pop("AWS_ENDPOINT_URL_S3", None)
    spark_submit = Path(sys.executable).parent / "spark-submit"
    proc = subprocess.run([str(spark_submit), "--master", "local[1]", "--driver-memory", "1g",
                           "--conf", "spark.ui.enabled=false", "--conf", "spark.eventLog.enabled=true",
                           "--conf", f"spark.eventLog.dir=file://{events}", "--conf", "spark.eventLog.compress=false",
                           *(arg for name, value in S3_TEST_CREDENTIALS.items()
                             for arg in ("--conf", f"spark.executorEnv.{name}={value}")),
                           str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [p for p in events.rglob("*") if p.is_file()]
    assert logs and any("fs.s3a.endpoint" in p.read_text(errors="replace") for p in logs)
    assert any("spark.executorEnv.AWS_ACCESS_KEY_ID" in p.read_text(errors="replace") for p in logs)
    for text in [p.read_text(errors="replace") for p in logs] + [proc.stdout, proc.stderr]:
        for secret in (PASSWORD, *S3_TEST_CREDENTIALS.values()):
            assert secret not in text, secret
    assert "fs.s3a.endpoint = http://127.0.0.1:9" in proc.stdout


def test_a_url_given_where_a_local_path_goes_is_named_without_its_password(capsys, tmp_path):
    """`--init-from https://user:hf_...@huggingface.co/...` (or `--checkpoint`, `--data`, `--mix` such a URL): the
    refusal quoted the URL whole, token and all, into the terminal and the job's log."""
    from trainer.eval import main as eval_main
    from trainer.run import main as run_main
    from trainer.schedule import main as schedule_main

    url = f"https://dolmino:{PASSWORD}@huggingface.co/allenai/OLMo-2-1124-7B"
    for command, argv in ((eval_main, ["--checkpoint", url, "--tasks", "arc_easy"]),
                          (run_main, ["--init-from", url, "--data", str(tmp_path), "--steps", "1"])):
        with pytest.raises(SystemExit) as exc:
            command(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "'https://***@huggingface.co/allenai/OLMo-2-1124-7B' is a URL; this needs a local path" in err, err
        assert PASSWORD not in err
    for command in (run_main, schedule_main):
        for flag in ("--data", "--mix"):
            assert command([flag, url, "--model", "tiny", "--steps", "1"]) == 2
            err = capsys.readouterr().err
            assert f"{flag} https://***@huggingface.co/allenai/OLMo-2-1124-7B" in err and PASSWORD not in err, err


@pytest.mark.parametrize("url", [f"https://dolmino:{PASSWORD}@huggingface.co/datasets/x/build",
                                 f"s3://dolmino:{PASSWORD}@bucket/mixes/demo"])
def test_commands_that_read_a_build_or_manifest_name_a_url_without_its_password(capsys, monkeypatch, tmp_path, url):
    """`dolmino validate URL` quoted a URL's user:password@ twice, `dolmino report URL` and `dolmino manifest
    check|fmt URL` once, into the terminal and the job's log; `dolmino assets --cache-dir URL` made a local
    directory named after it and printed its paths."""
    from dolmino.assets import main as assets_main
    from dolmino.manifest import main as manifest_main
    from dolmino.report_html import main as report_main
    from dolmino.validate import main as validate_main

    lockfile = url.rstrip("/") + ".lock.json"  # skipped, then "no manifests in ...": both named it whole
    for command, argv in ((validate_main, [url]), (report_main, [url]), (manifest_main, ["check", url]),
                          (manifest_main, ["fmt", url]), (manifest_main, ["check", lockfile]),
                          (manifest_main, ["fmt", lockfile])):
        assert command(argv) in (1, 2)
        out, err = capsys.readouterr()
        assert "***@" in out + err and PASSWORD not in out + err, (argv, out + err)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        assets_main(["--cache-dir", url, "--check"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "is a URL; this needs a local path" in err and PASSWORD not in err, err
    assert not list(tmp_path.iterdir())


def test_an_s3_uri_with_user_info_is_refused_without_quoting_its_password():
    """`s3://user:password@bucket/...` (as an endpoint URL is written) was refused by every command as
    "'user:password@bucket' is not a valid S3 bucket name": the password, quoted."""
    from dolmino.s3 import S3URIError, split_uri

    with pytest.raises(S3URIError) as exc:
        split_uri(f"s3://dolmino:{PASSWORD}@bucket/mixes/demo")
    assert "'s3://***@bucket/mixes/demo': an s3:// URI holds no user:password@" in str(exc.value)
    assert PASSWORD not in str(exc.value)
