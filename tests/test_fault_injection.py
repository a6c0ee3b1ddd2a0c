"""Hostile inputs in one build, run as a user runs it (`spark-submit dolmino/build_mix.py`).

One manifest over every kind of bad input found so far: gzip with trailing garbage, a
truncated zstd file, JSON nested 100,000 deep, a 5,000-digit integer, a line over the
source's size limit, byte-order marks, non-UTF-8 bytes, records that are not documents,
duplicate ids, and a README.txt inside a source directory. The build must exit 0, every
source must balance, every intact document must reach the output, every bad line must be
quarantined with its reason, and no credential may appear in any output or log. Where the
input cannot be read at all (a missing bucket, an unreachable endpoint with credentials in
its URL) the build fails with one line and exit status 2, before Spark starts.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from conftest import REPO, S3_TEST_CREDENTIALS, shared_corpus_file
from dolmino.documents import Quarantine, read_documents

SECRETS = list(S3_TEST_CREDENTIALS.values()) + ["hunter2-endpoint-password"]


def _real_docs(n: int, prefix: str) -> list[dict]:
    docs = []
    for _, doc in read_documents(str(shared_corpus_file("web.jsonl.zst")), Quarantine()):
        docs.append({"id": f"{prefix}-{len(docs)}", "text": doc["text"][:3000], "source": "web"})
        if len(docs) == n:
            break
    return docs


def _lines(docs: list[dict]) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """(data root, intact document ids per source, expected quarantine reasons per source)."""
    root = tmp_path_factory.mktemp("hostile")
    intact: dict[str, set[str]] = {"web": set(), "odd": set()}
    web = root / "web"
    web.mkdir()
    # 1. gzip of 300 intact documents followed by junk: all 300 kept, the junk counted
    docs = _real_docs(300, "gz")
    (web / "a.jsonl.gz").write_bytes(gzip.compress(_lines(docs), mtime=0) + b"\x00junk-after-the-member" * 20)
    intact["web"] |= {d["id"] for d in docs}
    # 2. zstd cut in the middle of its last frame: the documents of the complete frame survive
    first, second = _real_docs(40, "zfirst"), _real_docs(40, "zsecond")
    cctx = zstandard.ZstdCompressor()
    frame2 = cctx.compress(_lines(second))
    (web / "b.jsonl.zst").write_bytes(cctx.compress(_lines(first)) + frame2[: len(frame2) // 2])
    intact["web"] |= {d["id"] for d in first}
    # 3. a README beside the documents: skipped by name, with a warning
    (web / "README.txt").write_text("This directory holds web documents.\n")

    odd = root / "odd"
    odd.mkdir()
    good = _real_docs(30, "odd")
    bom = "\ufeff".encode()
    lines = [
        bom + json.dumps(good[0]).encode(),                        # BOM at the start of the file
        json.dumps(good[1]).encode(),
        b"[" * 100_000 + b"]" * 100_000,                           # JSON nested 100,000 deep
        b'{"id": "big-int", "text": "x", "n": ' + b"9" * 5000 + b"}",  # 5,000-digit integer
        json.dumps({"id": "huge", "text": "y" * 400_000}).encode(),  # over max_doc_bytes (256K)
        bom + json.dumps(good[2]).encode(),                        # BOM at the start of a line
        b"\xff\xfe not utf-8 \xfa",
        json.dumps({"id": "no-text"}).encode(),
        json.dumps(["not", "an", "object"]).encode(),
        json.dumps({"id": "nan", "text": "t", "x": float("nan")}).encode(),
        *(json.dumps(d).encode() for d in good[3:]),
        json.dumps({**good[3], "text": good[3]["text"] + " (a second document with a repeated id)"}).encode(),
    ]
    (odd / "c.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    intact["odd"] |= {d["id"] for d in good}
    reasons = {
        "web": {"corrupt_stream": 2},
        "odd": {"json_too_deep": 1, "json_number_too_long": 1, "doc_too_large": 1, "invalid_utf8": 1,
                "missing_text": 1, "not_an_object": 1, "malformed_json": 1},
    }
    return root, intact, reasons


def _manifest(root: Path, tmp_path: Path, **source_extra) -> Path:
    data = {
        "name": "hostile", "version": 1, "seed": 5, "budget": "600K", "data_root": str(root),
        "output_format": {"tokens_per_file": "200K"},
        "sources": [
            {"name": "web", "paths": ["web"], "mix_percent": 70.0, **source_extra},
            {"name": "odd", "paths": ["odd/*.jsonl"], "mix_percent": 30.0, "max_doc_bytes": "256K"},
        ],
    }
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(data))
    return path


def _submit(args: list[str], env_extra: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "PYTHONPATH": str(REPO), **(env_extra or {})}
    spark_submit = Path(sys.executable).parent / "spark-submit"
    return subprocess.run([str(spark_submit), "--master", "local[2]", "--driver-memory", "2g",
                           "--conf", "spark.ui.enabled=false", str(REPO / "dolmino" / "build_mix.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))


def _sidecar_ids(out: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for sidecar in sorted(out.glob("part-*.csv.gz")):
        with gzip.open(sidecar, "rt", newline="") as fh:
            for _start, _end, doc_id, src, _loc in csv.reader(fh):
                found.setdefault(src, set()).add(doc_id)
    return found


@pytest.mark.slow
def test_hostile_inputs_build_balances_and_keeps_every_intact_document(hostile, tmp_path):
    root, intact, reasons = hostile
    out = tmp_path / "out"
    manifest = _manifest(root, tmp_path)
    # Credentials in the environment must never surface, even though nothing here uses S3.
    proc = _submit(["--manifest", str(manifest), "--out", str(out), "--attributes", str(tmp_path / "attrs")],
                   {**S3_TEST_CREDENTIALS, "AWS_ENDPOINT_URL_S3": "http://user:hunter2-endpoint-password@127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    by_name = {s["name"]: s for s in report["sources"]}
    for name, source in by_name.items():
        removed = sum(r["docs"] for r in source["removed"].values())
        assert source["docs_in"] == source["kept_docs"] + removed + sum(source["quarantined"].values())
        assert source["quarantined"] == reasons[name], name
        assert source["kept_docs"] == len(intact[name]) + (1 if name == "odd" else 0)  # + the repeated id
    assert by_name["odd"]["duplicate_ids"] == 1
    assert [w for w in report["warnings"] if "repeat an id" in w] == [  # counted, and said (a tester)
        "source 'odd': 1 document(s) repeat an id seen earlier in the source (the same data under two file names, "
        "such as Posts.xml beside Posts.xml.zst, or inputs that reuse ids); each is read and may be mixed, told "
        "apart by its loc"]
    assert by_name["web"]["unreadable_bytes"] > 0
    # every intact document reached the output (budgets above the pools: whole copies)
    written = _sidecar_ids(out)
    for name, ids in intact.items():
        assert ids <= written[name], sorted(ids - written[name])[:5]
    assert any("README.txt" in w for w in report["warnings"])
    assert "README.txt" in proc.stdout + proc.stderr  # spark-submit merges the driver's stderr into stdout
    # every refused line is in the quarantine files with its reason
    records = [json.loads(line) for f in (out / "quarantine").rglob("*.jsonl.gz") for line in gzip.open(f, "rt")]
    got: dict[str, int] = {}
    for r in records:
        got[r["reason"]] = got.get(r["reason"], 0) + 1
    assert got == {**reasons["odd"], **reasons["web"]}
    # no secret in any output file or log
    texts = [proc.stdout, proc.stderr] + [p.read_text(errors="replace") for p in out.rglob("*")
                                          if p.is_file() and p.suffix in (".json", ".md")]
    texts += [gzip.open(p, "rt", errors="replace").read() for p in out.rglob("*.gz")]
    for secret in SECRETS:
        assert not any(secret in t for t in texts), secret


def test_unreadable_input_fails_with_one_line_and_no_secret(hostile, tmp_path):
    """An s3:// source behind an unreachable endpoint whose URL carries a password."""
    root, _, _ = hostile
    data = json.loads(_manifest(root, tmp_path).read_text())
    data["sources"][0]["paths"] = ["s3://no-such-bucket-dolmino/web/*.jsonl.gz"]
    path = tmp_path / "s3.json"
    path.write_text(json.dumps(data))
    env = {**S3_TEST_CREDENTIALS, "AWS_ENDPOINT_URL_S3": "http://user:hunter2-endpoint-password@127.0.0.1:9",
           "AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.run([sys.executable, str(REPO / "dolmino" / "build_mix.py"), "--manifest", str(path),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env, "PYTHONPATH": str(REPO)}, cwd=str(REPO))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("build_mix: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for secret in SECRETS:
        assert secret not in proc.stderr + proc.stdout
