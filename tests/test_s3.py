"""dolmino.s3 against a real S3 protocol server (moto on loopback): streams, globs, errors.

Globs are checked for parity with the local listing, dolmino.build.inputs.expand_local: the same tree
on disk and in a bucket must give the same list, or a manifest would select different
inputs depending on where the data is mounted.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import uuid

import pytest
import zstandard

from conftest import S3_TEST_CREDENTIALS, shared_corpus_file
from dolmino import s3
from dolmino.build.inputs import expand_local
from dolmino.documents import Quarantine, read_documents, write_documents


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=name)
    return name


def _put(bucket: str, key: str, data: bytes) -> None:
    s3.client().put_object(Bucket=bucket, Key=key, Body=data)


def _real_docs(fname: str, n: int) -> list[dict]:
    docs = []
    for _, doc in read_documents(str(shared_corpus_file(fname)), Quarantine()):
        docs.append(doc)
        if len(docs) == n:
            break
    return docs


# ---------------------------------------------------------------- streams


def test_open_uri_round_trips_real_bytes(bucket):
    data = shared_corpus_file("academic.jsonl.zst").read_bytes()  # binary, not UTF-8
    with s3.open_uri(f"s3://{bucket}/corpus/academic.jsonl.zst", "wb") as fh:
        fh.write(data[:1000])
        fh.write(data[1000:])
    with s3.open_uri(f"s3://{bucket}/corpus/academic.jsonl.zst", "rb") as fh:
        assert fh.read() == data
    assert s3.object_size(f"s3://{bucket}/corpus/academic.jsonl.zst") == len(data)
    # The zstd suffix must not be decompressed behind the caller's back (documents.py does it).
    with s3.open_uri(f"s3://{bucket}/corpus/academic.jsonl.zst", "rb", compression="disable") as fh:
        assert fh.read(4) == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    with s3.open_uri(f"s3://{bucket}/empty.jsonl", "wb"):
        pass
    with s3.open_uri(f"s3://{bucket}/empty.jsonl", "rb") as fh:
        assert fh.read() == b""


def test_open_uri_missing_object_and_bucket_are_file_not_found(bucket):
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/nope.jsonl.zst: no such object"):
        s3.open_uri(f"s3://{bucket}/nope.jsonl.zst", "rb")
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-dolmino: bucket does not exist"):
        s3.open_uri("s3://no-such-bucket-dolmino/x.jsonl", "rb")
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        with s3.open_uri("s3://no-such-bucket-dolmino/x.jsonl", "wb") as fh:
            fh.write(b"x")
    with pytest.raises(ValueError, match="names a prefix"):
        s3.open_uri(f"s3://{bucket}/dir/", "rb")
    with pytest.raises(ValueError, match="not a valid S3 bucket name"):
        s3.split_uri("s3://UPPER_case/x")


# ---------------------------------------------------------------- globs

TREE = [
    "root/web/a.jsonl.zst", "root/web/b.jsonl.gz", "root/web/sub/c.jsonl.zst", "root/web/sub/deeper/d.jsonl",
    "root/web/.hidden.jsonl.zst", "root/code/x.jsonl.zst", "root/code/y.json", "root/web2/z.jsonl.zst",
    "root/[lit]/e.jsonl",
]
PATTERNS = [
    "root/web/*.jsonl.zst", "root/web/*", "root/web/**/*.jsonl.zst", "root/web/**", "root/**/*.jsonl*",
    "root/web/?.jsonl.gz", "root/[cw]eb/[!b].jsonl*", "root/*/[a-c].jsonl.*", "root/web", "root/web/",
    "root/web/a.jsonl.zst", "root/nothing/*.jsonl", "root/missing", "root/web/sub", "root/w*/**/*.jsonl",
]


@pytest.fixture
def glob_tree(bucket, tmp_path):
    for key in TREE:
        _put(bucket, key, key.encode())
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(key.encode())
    _put(bucket, "root/dirmarker/", b"")  # console-style "folder" object: never a file
    return bucket, tmp_path


@pytest.mark.parametrize("pattern", PATTERNS)
def test_expand_uri_glob_matches_local_glob(glob_tree, pattern):
    bucket, local = glob_tree
    remote = s3.expand_uri_glob(f"s3://{bucket}/{pattern}")
    assert remote == sorted(remote)
    want = [p[len(str(local)) + 1:] for p in expand_local(str(local / pattern))[0]]
    assert [u[len(f"s3://{bucket}/"):] for u in remote] == want


def test_expand_uri_glob_explicit_cases(glob_tree):
    bucket, _ = glob_tree
    rel = lambda pattern: [u.split("/", 3)[3] for u in s3.expand_uri_glob(f"s3://{bucket}/{pattern}")]  # noqa: E731
    assert rel("root/web/**/*.jsonl.zst") == ["root/web/a.jsonl.zst", "root/web/sub/c.jsonl.zst"]
    # A directory prefix lists everything under it, but not a sibling that shares the prefix.
    assert rel("root/web") == ["root/web/a.jsonl.zst", "root/web/b.jsonl.gz", "root/web/sub/c.jsonl.zst",
                               "root/web/sub/deeper/d.jsonl"]
    assert "root/web2/z.jsonl.zst" not in rel("root/web")
    assert rel("root/[[]lit]/*") == ["root/[lit]/e.jsonl"]
    assert rel("root/dirmarker") == []
    assert len(rel("")) == len(TREE) - 1  # whole bucket, hidden file excepted


def test_expand_uri_glob_missing_bucket_is_an_error(s3_server):
    with pytest.raises(FileNotFoundError, match="no-such-bucket-dolmino: bucket does not exist"):
        s3.expand_uri_glob("s3://no-such-bucket-dolmino/data/*.jsonl.zst")
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        s3.expand_uri_glob("s3://no-such-bucket-dolmino/data")


# ---------------------------------------------------------------- documents on S3


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_read_documents_from_s3_with_quarantine(bucket, suffix):
    docs = _real_docs("web.jsonl.zst", 40)
    uri = f"s3://{bucket}/docs/web{suffix}"
    assert write_documents(uri, docs) == 40
    got = [(line, d) for line, d in read_documents(uri, Quarantine())]
    assert [d["id"] for _, d in got] == [d["id"] for d in docs]
    assert [d["text"] for _, d in got] == [d["text"] for d in docs]
    assert [line for line, _ in got] == list(range(1, 41))

    # Same documents plus a truncated JSON line and a non-UTF-8 line, written as raw bytes.
    lines = [json.dumps(d, ensure_ascii=False).encode() for d in docs[:5]]
    lines[2:2] = [b'{"id": "cut", "text": "half a line', b"\xff\xfe not utf-8 \xc3"]
    payload = b"\n".join(lines) + b"\n"
    if suffix == ".jsonl.zst":
        compressed = zstandard.ZstdCompressor().compress(payload)
    else:
        import gzip

        compressed = gzip.compress(payload)
    bad_uri = f"s3://{bucket}/docs/bad{suffix}"
    _put(bucket, f"docs/bad{suffix}", compressed)
    quarantine = Quarantine()
    kept = list(read_documents(bad_uri, quarantine))
    assert [d["id"] for _, d in kept] == [d["id"] for d in docs[:5]]
    assert dict(quarantine.counts) == {"malformed_json": 1, "invalid_utf8": 1}
    assert [(r.path, r.line) for r in quarantine.records] == [(bad_uri, 3), (bad_uri, 4)]
    assert len(kept) + quarantine.total == 7  # every line accounted for


def test_truncated_s3_object_is_quarantined_not_lost(bucket):
    docs = _real_docs("code.jsonl.zst", 20)
    buf = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(buf, closefd=False) as w:
        for d in docs:
            w.write(json.dumps(d).encode() + b"\n")
    _put(bucket, "cut.jsonl.zst", buf.getvalue()[: len(buf.getvalue()) // 2])
    quarantine = Quarantine()
    kept = list(read_documents(f"s3://{bucket}/cut.jsonl.zst", quarantine))
    assert quarantine.counts["corrupt_stream"] == 1
    assert len(kept) < 20


def test_reading_a_missing_s3_file_raises_instead_of_quarantining(bucket):
    with pytest.raises(FileNotFoundError):
        list(read_documents(f"s3://{bucket}/never-written.jsonl.zst", Quarantine()))


# ---------------------------------------------------------------- clients and secrets


def _child_reads(uri: str, parent_client_id: int, queue) -> None:
    client = s3.client()
    with s3.open_uri(uri, "rb") as fh:
        queue.put((id(client) != parent_client_id, fh.read()))


def test_forked_process_builds_its_own_client(bucket):
    """Spark forks Python workers: a client inherited through fork must not be reused."""
    _put(bucket, "fork.txt", b"from the parent")
    parent = s3.client()
    assert s3.client() is parent  # cached within a process
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_reads, args=(f"s3://{bucket}/fork.txt", id(parent), queue))
    proc.start()
    fresh, data = queue.get(timeout=60)
    proc.join(60)
    assert proc.exitcode == 0
    assert fresh and data == b"from the parent"


def test_redact_removes_known_and_lookalike_credentials(s3_server):
    s3.client()  # credentials loaded: redaction also knows them through the client
    key, secret, token = (S3_TEST_CREDENTIALS[k] for k in
                          ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    message = (f"SignatureDoesNotMatch: AWSAccessKeyId={key} secret {secret} token={token} "
               "https://h/o?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101&X-Amz-Signature=abc123 "
               "http://user:pa55word@minio.local:9000/b Authorization: AWS4-HMAC-SHA256 Credential=x")
    clean = s3.redact(message)
    for leaked in (key, secret, token, "AKIAIOSFODNN7EXAMPLE", "abc123", "pa55word", "AWS4-HMAC"):
        assert leaked not in clean
    assert "SignatureDoesNotMatch" in clean and "minio.local:9000/b" in clean
