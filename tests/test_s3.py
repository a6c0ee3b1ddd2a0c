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
    "root/[lit]/e.jsonl", "root/web/.hid/h.jsonl",  # a hidden directory: skipped as glob skips it on disk
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
    assert len(rel("")) == len(TREE) - 2  # whole bucket, hidden file and hidden directory excepted


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


def test_gzip_with_trailing_garbage_on_s3_counts_unreadable_bytes(bucket):
    """The byte count comes from the object's size (smart_open seeks to the end), not a guess."""
    import gzip

    docs = _real_docs("web.jsonl.zst", 30)
    payload = b"".join(json.dumps(d).encode() + b"\n" for d in docs)
    junk = b"trailing garbage " * 1000
    _put(bucket, "junk.jsonl.gz", gzip.compress(payload) + junk)
    quarantine = Quarantine()
    kept = list(read_documents(f"s3://{bucket}/junk.jsonl.gz", quarantine))
    assert [d["id"] for _, d in kept] == [d["id"] for d in docs]
    assert dict(quarantine.counts) == {"corrupt_stream": 1} and quarantine.unreadable_bytes == len(junk)


# ---------------------------------------------------------------- failure messages


def _client_error(code: str, status: int, op: str = "GetObject", message: str = ""):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, op)


def test_s3_failure_message_covers_s3_and_network_failures(s3_server, monkeypatch):
    from botocore import exceptions as bex

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://someone:pa%24%24word@minio.local:9000")
    url = "http://someone:pa%24%24word@minio.local:9000/bucket/key"
    cases = {
        _client_error("NoSuchBucket", 404, message="The specified bucket does not exist"): "bucket does not exist",
        _client_error("404", 404, op="HeadBucket"): "bucket does not exist",
        _client_error("AccessDenied", 403, message="Access Denied"): "AccessDenied (403): access denied",
        _client_error("403", 403, op="HeadBucket"): "access denied",
        _client_error("InvalidAccessKeyId", 403): "credentials were rejected",
        _client_error("SignatureDoesNotMatch", 403, message=f"sig {S3_TEST_CREDENTIALS['AWS_SECRET_ACCESS_KEY']}"):
            "SignatureDoesNotMatch (403)",
        _client_error("SlowDown", 503, message="Please reduce your request rate."): "SlowDown (503)",
        bex.NoCredentialsError(): "no usable S3 credentials",
        bex.EndpointConnectionError(endpoint_url=url): "cannot reach the S3 endpoint",
        bex.ConnectTimeoutError(endpoint_url=url): "cannot reach the S3 endpoint",
        bex.ReadTimeoutError(endpoint_url=url): "cannot reach the S3 endpoint",
        s3.S3PathError("s3://b: bucket does not exist"): "s3://b: bucket does not exist",
        ConnectionRefusedError(111, "Connection refused"): "network failure",
        TimeoutError("timed out"): "network failure",
    }
    for exc, expected in cases.items():
        message = s3.s3_failure_message(exc)
        assert message is not None and expected in message, (exc, message)
        assert "\n" not in message
        for secret in ("pa%24%24word", "pa$$word", "someone:", *S3_TEST_CREDENTIALS.values()):
            assert secret not in message, (exc, message)
    assert "minio.local:9000" in s3.s3_failure_message(bex.EndpointConnectionError(endpoint_url=url))
    # not S3 failures
    for exc in (ValueError("bad value"), KeyError("k"), FileExistsError("x"), RuntimeError("boom")):
        assert s3.s3_failure_message(exc) is None
    # a wrapper raised from an S3 failure is that failure
    try:
        try:
            raise bex.EndpointConnectionError(endpoint_url=url)
        except bex.EndpointConnectionError as inner:
            raise RuntimeError("while listing inputs") from inner
    except RuntimeError as outer:
        assert "cannot reach the S3 endpoint" in s3.s3_failure_message(outer)


def test_redact_covers_endpoint_userinfo_in_every_form(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://user:s3cr%40t-pass@127.0.0.1:9/")
    for text in ('Could not connect to the endpoint URL: "http://user:s3cr%40t-pass@127.0.0.1:9/b?list-type=2"',
                 "https://token-only@host/x", "'http://user:s3cr@t-pass@127.0.0.1:9'", "password s3cr@t-pass alone"):
        clean = s3.redact(text)
        assert "s3cr" not in clean and "token-only" not in clean, clean
    assert s3.redact("write to a@b.com or s3://bucket/key") == "write to a@b.com or s3://bucket/key"
    # no scheme, and a "/" left unencoded in the password: botocore prints the endpoint back whole
    # ("Invalid endpoint: ...", "... was not a valid URI"; found by a tester)
    for endpoint, password in (("alice:Sup3rS3cretPW@127.0.0.1:9", "Sup3rS3cretPW"),
                               ("http://alice:pa/Sup3rS3cretPW@127.0.0.1:9", "pa/Sup3rS3cretPW"),
                               ("http://alice:Sup3rS3cretPW@127.0.0.1:9/tenant@corp", "Sup3rS3cretPW"),
                               ("alice:Sup3r@S3cretPW@127.0.0.1:9", "Sup3r@S3cretPW"),
                               ("http://alice:pa/Sup3r@S3cretPW@127.0.0.1:9", "pa/Sup3r@S3cretPW")):
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        for text in (f"Invalid endpoint: {endpoint}", f"the password alone: {password} (a reviewer)"):
            clean = s3.redact(text)
            assert "S3cret" not in clean, (endpoint, clean)


def test_a_password_in_the_endpoint_url_never_reaches_an_error_message(bucket, monkeypatch):
    """botocore ignores an endpoint URL's user:password@ (it signs with SigV4), yet names the
    URL in errors: on executors Spark logs those tracebacks unredacted. The client drops the
    userinfo, and the driver forwards the endpoint to executors without it."""
    endpoint = s3.client().meta.endpoint_url
    scheme, _, authority = endpoint.partition("://")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"{scheme}://alice:PASSWORDXYZ9@{authority}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    cl = s3.client()
    assert cl.meta.endpoint_url == endpoint
    cl.put_object(Bucket=bucket, Key="k", Body=b"works")  # the same server, reached without the password
    assert cl.get_object(Bucket=bucket, Key="k")["Body"].read() == b"works"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://alice:PASSWORDXYZ9@127.0.0.1:9/")  # nothing listens there
    with pytest.raises(Exception) as info:
        s3.client().get_object(Bucket=bucket, Key="k")
    assert "127.0.0.1:9" in str(info.value) and "PASSWORDXYZ9" not in str(info.value)

    from dolmino.build.spark import forward_environment

    class FakeContext:
        environment: dict = {}

        def getConf(self):
            return {"spark.task.cpus": "1"}

    sc = FakeContext()
    forward_environment(sc, any_s3=True)
    assert sc.environment["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9/"
    assert s3.without_userinfo("https://a:b@host:1/p@q") == "https://host:1/p@q"
    assert s3.without_userinfo("http://host") == "http://host"


def test_an_endpoint_without_a_scheme_is_one_line_without_its_user(monkeypatch, capsys):
    """botocore's "Invalid endpoint" ValueError was a traceback and "unexpected ValueError",
    naming the endpoint's user (found by a tester)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "AKIAXYZ:SuperSecret123@127.0.0.1:1")
    with pytest.raises(s3.S3EndpointError) as info:
        s3.client()
    assert str(info.value) == ("AWS_ENDPOINT_URL_S3 is not an endpoint URL: '127.0.0.1:1' (user info not shown) has "
                               "no scheme; write http://HOST:PORT or https://HOST")
    assert s3.cli_errors("dolmino release").report(info.value) == 2
    assert capsys.readouterr().err == f"dolmino release: error: {info.value}\n"
    # host:port is no user:password: the port was redacted in every message (found by a reviewer)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "localhost:9000")
    with pytest.raises(s3.S3EndpointError, match="'localhost:9000' \\(user info not shown\\) has no scheme"):
        s3.client()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    assert s3.redact("budget 9000 tokens; part-09000.npy") == "budget 9000 tokens; part-09000.npy"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://u:pw9000x@127.0.0.1:9000")
    assert s3.redact("pw9000x at port 9000") == "*** at port 9000"
    # a URL botocore refuses (a docker-compose host name with "_"): one line too (found by a reviewer)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio_1:9000")
    with pytest.raises(s3.S3EndpointError, match=r"^AWS_ENDPOINT_URL_S3 is not an endpoint URL botocore accepts "
                                                 r"\(Invalid endpoint: http://minio_1:9000\)$"):
        s3.client()
    from dolmino.build.cli import executor_failure

    class PythonException(Exception):  # what a failed task raises on the driver, by name
        pass

    said = executor_failure(PythonException("Traceback ...\ndolmino.s3.S3EndpointError: AWS_ENDPOINT_URL_S3 is "
                                            "not an endpoint URL botocore accepts (x)\n"))
    assert said == "in an executor: S3EndpointError: AWS_ENDPOINT_URL_S3 is not an endpoint URL botocore accepts (x)"


def test_cli_errors_decorator_and_context_manager(s3_server, capsys, monkeypatch):
    from botocore import exceptions as bex

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://u:topsecret@127.0.0.1:1")
    url = "http://u:topsecret@127.0.0.1:1/b"

    @s3.cli_errors("tool", expected=(KeyError,))
    def main(kind: str) -> int:
        if kind == "s3":
            raise bex.EndpointConnectionError(endpoint_url=url)
        if kind == "expected":
            raise KeyError(f"no such thing at {url}")
        if kind == "bug":
            raise ZeroDivisionError(f"oops near {url} {S3_TEST_CREDENTIALS['AWS_SECRET_ACCESS_KEY']}")
        return 0

    assert main("ok") == 0
    assert main("s3") == 2
    err = capsys.readouterr().err
    assert err.startswith("tool: error: cannot reach the S3 endpoint") and err.count("\n") == 1
    assert main("expected") == 2
    err = capsys.readouterr().err
    assert err.startswith("tool: error: ") and "no such thing" in err and "Traceback" not in err
    assert main("bug") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1].startswith("tool: error: unexpected ZeroDivisionError: oops near")
    for text in (err,):
        assert "topsecret" not in text and S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in text
    with pytest.raises(SystemExit) as info:
        with s3.cli_errors("tool"):
            raise bex.NoCredentialsError()
    assert info.value.code == 2 and "no usable S3 credentials" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):  # not an error to report
        with s3.cli_errors("tool"):
            raise KeyboardInterrupt


def _checksum_headers(bucket: str, upload: str) -> dict[str, str]:
    """The checksum headers of one upload, as sent (botocore's before-send hook)."""
    sent: dict[str, str] = {}

    def hook(request, **_):
        if request.method in ("PUT", "POST"):
            sent.update({k.lower(): str(v) for k, v in request.headers.items()
                         if "checksum" in k.lower() or k.lower() == "content-encoding"})

    events = s3.client().meta.events
    events.register("before-send.s3", hook)
    try:
        if upload == "put":
            s3.client().put_object(Bucket=bucket, Key="sum.txt", Body=b"x" * 1000)
        else:
            s3.client().upload_fileobj(io.BytesIO(b"y" * 1000), bucket, "sum.txt")
    finally:
        events.unregister("before-send.s3", hook)
    return sent


@pytest.mark.parametrize("upload", ["put", "transfer"])
def test_uploads_to_an_s3_compatible_store_carry_no_default_checksum(bucket, upload, monkeypatch):
    """boto3 >= 1.36 adds a CRC checksum to every upload, which many S3-compatible stores
    refuse: an endpoint that is not AWS gets `when_required` (no checksum unless the operation
    needs one), unless the user chose otherwise; AWS itself keeps boto3's default."""
    assert _checksum_headers(bucket, upload) == {}
    assert s3.client().meta.config.request_checksum_calculation == "when_required"
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")  # the user's choice wins
    assert any(k.startswith("x-amz-checksum-") or k == "x-amz-sdk-checksum-algorithm"
               for k in _checksum_headers(bucket, upload))
    import boto3

    session = boto3.session.Session()
    assert s3._compatible_checksums(session, "https://s3.us-east-1.amazonaws.com") == {}
    assert s3._compatible_checksums(session, "https://bucket.s3.dualstack.eu-west-1.amazonaws.com") == {}
    monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION")
    assert s3._compatible_checksums(session, "https://minio.internal:9000") == {
        "request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}


def test_a_failure_about_one_object_names_it():
    """botocore's messages name the operation, not the object: a build that gave up on one
    part of thousands said "SlowDown when calling the PutObject operation (reached max
    retries: 8)", and a pull "Max Retries Exceeded" (found by a tester). `s3.about` puts
    the object first, on one credential-free line; other errors pass through untouched."""
    from boto3.exceptions import RetriesExceededError
    from botocore.exceptions import ClientError

    slow = ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                        "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
    with pytest.raises(s3.S3ObjectError) as info:
        with s3.about("s3://b/out/part-00001.npy"):
            raise slow
    assert str(info.value) == ("s3://b/out/part-00001.npy: S3 PutObject failed: SlowDown (503): Please reduce "
                               "your request rate.")
    assert s3.s3_failure_message(info.value) == str(info.value)
    with pytest.raises(s3.S3ObjectError, match=r"^s3://b/rel/part-00001\.npy: S3 transfer failed "
                                               r"\(RetriesExceededError\): Max Retries Exceeded$"):
        with s3.about("s3://b/rel/part-00001.npy"):
            raise RetriesExceededError(ConnectionResetError("reset"))
    for passes in (KeyError("k"), s3.S3PathError("s3://b/x: no such object")):
        with pytest.raises(type(passes)) as info:
            with s3.about("s3://b/other"):
                raise passes
        assert info.value is passes


def test_an_s3_write_that_fails_for_good_names_its_object(bucket, monkeypatch):
    """storage.write_bytes (reports, attribute files, commit records) names what it could not write."""
    from botocore.exceptions import ClientError

    from dolmino import storage

    class Refusing:
        def put_object(self, **kwargs):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")

    monkeypatch.setattr(s3, "client", lambda: Refusing())
    with pytest.raises(s3.S3ObjectError, match=rf"^s3://{bucket}/out/report\.json: S3 PutObject failed: "
                                               r"AccessDenied \(403\): access denied"):
        storage.write_bytes(f"s3://{bucket}/out/report.json", b"{}")


def test_attribute_store_sets_and_sources_alike_on_disk_and_on_s3(bucket, tmp_path):
    """The sets a source holds and the sources a root holds (what `dolmino mix` names when a pool
    was tagged under other settings, or a source renamed): directories, alike on disk and on S3."""
    from dolmino.build.attributes import AttributeStore
    from dolmino.storage import write_bytes

    names = ["web/docs-aaa/x.1.parquet", "web/docs-bbb/y.2.parquet", "web/fasttext_quality-ccc/x.1.parquet",
             "web/quarantine/q.jsonl.gz", "code/docs-ddd/z.parquet", "web/top-level-file"]
    roots = [str(tmp_path / "attrs"), f"s3://{bucket}/attrs"]
    for root in roots:
        for name in names:
            write_bytes(f"{root}/{name}", b"x")
    for root in roots:
        store = AttributeStore(root)
        assert store.set_names("web") == ["docs-aaa", "docs-bbb", "fasttext_quality-ccc", "quarantine"], root
        assert store.set_names("missing") == [], root
        assert store.sources() == ["code", "web"], root
    assert AttributeStore(str(tmp_path / "none")).sources() == []


def test_a_whole_object_read_cut_off_mid_body_is_read_again(monkeypatch):
    """botocore retries a GET, never the reading of its body: one connection cut mid-body failed
    a whole build, or a release verify (found by a tester with a fault-injecting proxy). The
    read is retried, a bounded number of times, and a failure names the object."""
    from botocore.exceptions import ClientError, ResponseStreamingError

    calls = []

    class Body:
        def __init__(self, cut):
            self.cut = cut

        def read(self):
            if self.cut:
                raise ResponseStreamingError(error="IncompleteRead(59 bytes read, 60 more expected)")
            return b"whole"

        def iter_chunks(self, size):
            yield b"wh"
            if self.cut:
                raise ResponseStreamingError(error="IncompleteRead")
            yield b"ole"

    class Client:
        def __init__(self, cuts, error=None):
            self.cuts, self.error = cuts, error

        def get_object(self, Bucket, Key):
            calls.append(Key)
            if self.error is not None:
                raise self.error
            return {"Body": Body(len(calls) <= self.cuts)}

    monkeypatch.setattr(s3, "client", lambda: Client(cuts=s3.BODY_READS - 1))
    assert s3.get_bytes("s3://bkt/out/_owner.json") == b"whole" and len(calls) == s3.BODY_READS
    calls.clear()
    got = []  # streamed (release publish and verify hash as they read): started again from its first byte
    s3.stream_body("bkt", "rel/part-00000.npy", got.append, got.clear, 2)
    assert b"".join(got) == b"whole" and len(calls) == s3.BODY_READS
    calls.clear()
    monkeypatch.setattr(s3, "client", lambda: Client(cuts=s3.BODY_READS))
    with pytest.raises(s3.S3ObjectError, match=r"^s3://bkt/out/_owner\.json: the S3 response was cut off mid-body"):
        s3.get_bytes("s3://bkt/out/_owner.json")
    assert len(calls) == s3.BODY_READS
    slow = ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                        "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
    monkeypatch.setattr(s3, "client", lambda: Client(cuts=0, error=slow))
    with pytest.raises(s3.S3ObjectError, match=r"^s3://bkt/a/_SOURCE\.json: S3 GetObject failed: SlowDown \(503\)"):
        s3.get_bytes("s3://bkt/a/_SOURCE.json")  # it said "S3 GetObject failed", no object (a tester)


def test_retries_are_attempts_in_all_in_standard_mode(monkeypatch, s3_server):
    """AWS_MAX_ATTEMPTS=1 made two requests (botocore's max_attempts counts retries), and the
    adaptive mode's per-process rate limiter collapsed many workers' throughput under light
    throttling (found by a tester)."""
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert s3.client().meta.config.retries == {"total_max_attempts": 1, "mode": "standard"}
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    assert s3.client().meta.config.retries == {"total_max_attempts": s3.DEFAULT_MAX_ATTEMPTS, "mode": "standard"}


def test_missing_or_partial_credentials_name_the_object_and_in_an_executor_where_to_set_them(bucket, monkeypatch):
    """A worker without credentials failed the build with "in an executor: NoCredentialsError: Unable to
    locate credentials", naming no object, where a 403 or an unreachable endpoint named it (found by a
    tester): botocore's credential errors are no OSError, and open_uri named only those. In an executor
    the advice is where executors get theirs."""
    from pyspark import TaskContext

    uri = f"s3://{bucket}/corpus/web-0000.jsonl.zst"
    _put(bucket, "corpus/web-0000.jsonl.zst", b"x")
    for name in S3_TEST_CREDENTIALS:
        monkeypatch.delenv(name)
    with pytest.raises(s3.S3ObjectError, match=rf"^{uri}: no usable S3 credentials \(NoCredentialsError\): set "
                                               "AWS_ACCESS_KEY_ID"):
        s3.open_uri(uri, "rb")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"])  # no secret
    with pytest.raises(s3.S3ObjectError, match=rf"^{uri}: no usable S3 credentials \(PartialCredentialsError\)"):
        s3.open_uri(uri, "rb")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setattr(TaskContext, "_taskContext", object())  # what TaskContext.get() returns in a task
    with pytest.raises(s3.S3ObjectError) as info:
        s3.open_uri(uri, "rb")
    assert str(info.value) == (
        f"{uri}: no usable S3 credentials in this executor (NoCredentialsError): set AWS credentials in the "
        "executors' environment (spark.executorEnv.AWS_ACCESS_KEY_ID and spark.executorEnv.AWS_SECRET_ACCESS_KEY, "
        "or the Spark workers' own environment, AWS_PROFILE or an instance role)")


def test_an_endpoint_the_user_gave_the_executors_is_kept(monkeypatch):
    """`--conf spark.executorEnv.AWS_ENDPOINT_URL_S3=...` (executors that reach the store at another
    address than the submitting machine: a port-forward on the driver, a VPC endpoint) was replaced
    by the driver's endpoint, and the executors were sent where they cannot connect (found by a
    tester on a standalone cluster). What the user did not set is still forwarded."""
    from dolmino.build.spark import forward_environment

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://localhost:19000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    conf = {"spark.task.cpus": "1", "spark.executorEnv.AWS_ENDPOINT_URL_S3": "http://minio.cluster:9000"}

    class FakeContext:  # as SparkContext starts: spark.executorEnv.* already in its environment
        environment = {"AWS_ENDPOINT_URL_S3": "http://minio.cluster:9000"}

        def getConf(self):
            return conf

    sc = FakeContext()
    forward_environment(sc, any_s3=True)
    assert sc.environment["AWS_ENDPOINT_URL_S3"] == "http://minio.cluster:9000"
    assert sc.environment["AWS_DEFAULT_REGION"] == "us-east-1"
