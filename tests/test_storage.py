"""dolmino.storage: the same answers from a local directory and from an s3:// prefix (moto).

The build, synth, reports and the lock keep small files wherever --out / --attributes point;
a difference between the two kinds of location is a bug that only shows on a cluster.
"""

from __future__ import annotations

import os
import uuid

import pytest

from dolmino import s3, storage
from dolmino.build import output


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    request.getfixturevalue("s3_server")
    bucket = f"storage-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/build/out"


def test_write_read_list_delete_agree_on_both_kinds(root):
    assert storage.list_files(root) == {}
    assert storage.read_if_exists(storage.join(root, "report.json")) is None
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "report.json"))
    storage.write_bytes(storage.join(root, "_parts", "part-00000.json"), b'{"index": 0}')
    storage.write_bytes(storage.join(root, "report.json"), b"{}", sync=True)
    assert storage.list_files(root) == {"_parts/part-00000.json": 12, "report.json": 2}
    assert storage.list_files(root, "_parts/") == {"_parts/part-00000.json": 12}
    assert storage.read_bytes(storage.join(root, "_parts/part-00000.json")) == b'{"index": 0}'
    storage.delete(root, ["report.json", "never-written.json"])  # a missing name is not an error
    assert storage.list_files(root) == {"_parts/part-00000.json": 12}
    assert output.read_json(root, "report.json") is None
    assert output.read_json(root, "_parts/part-00000.json") == {"index": 0}
    storage.write_bytes(storage.join(root, "torn.json"), b'{"ind')
    assert output.read_json(root, "torn.json") is None  # not JSON: as if absent


def test_a_missing_bucket_is_not_a_missing_file(s3_server):
    path = f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/out/report.json"
    with pytest.raises(s3.NoSuchBucket, match="bucket does not exist"):
        storage.read_if_exists(path)
    with pytest.raises(s3.NoSuchBucket):
        output.read_json(path.rsplit("/", 1)[0], "report.json")


def test_a_delete_that_s3_refuses_for_some_keys_raises(s3_server, monkeypatch):
    """DeleteObjects answers 200 and lists refused keys in Errors. A build starts by deleting
    its completion marker: were a refusal passed over, an interrupted rebuild would keep the
    old report.json and read as finished."""
    bucket = f"storage-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    out = f"s3://{bucket}/out"
    storage.write_bytes(storage.join(out, "report.json"), b"{}")
    real = s3.client()

    class RefusingClient:
        def __getattr__(self, name):
            return getattr(real, name)

        def delete_objects(self, Bucket, Delete):  # noqa: N803 - boto3's argument names
            return {"Errors": [{"Key": o["Key"], "Code": "AccessDenied", "Message": "Access Denied"}
                               for o in Delete["Objects"]]}

    monkeypatch.setattr(s3, "client", lambda: RefusingClient())
    with pytest.raises(s3.S3DeleteError, match=r"could not delete 1 object\(s\), e.g. s3://.*/out/report.json: "
                                               "AccessDenied"):
        output.start(out)
    assert s3.s3_failure_message(s3.S3DeleteError("could not delete 1 object(s)")) == "could not delete 1 object(s)"


def test_a_store_without_multi_object_delete_gets_one_delete_per_key(s3_server, monkeypatch):
    """GCS's S3-compatible XML API (and Riak CS) answer DeleteObjects with NotImplemented: the
    keys are then deleted one by one, a key already gone is no error, and only the first
    batch asks."""
    from botocore.exceptions import ClientError

    bucket = f"storage-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    out = f"s3://{bucket}/out"
    names = [f"_parts/part-{i:05d}.json" for i in range(1005)]
    for name in names[:3]:
        storage.write_bytes(storage.join(out, name), b"{}")
    real = s3.client()
    calls = {"delete_objects": 0, "delete_object": 0}

    class NoMultiDelete:
        def __getattr__(self, name):
            return getattr(real, name)

        def delete_objects(self, **_):
            calls["delete_objects"] += 1
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "A header or query you provided "
                                         "requested a function that is not implemented."}}, "DeleteObjects")

        def delete_object(self, **kwargs):
            calls["delete_object"] += 1
            return real.delete_object(**kwargs)

    monkeypatch.setattr(s3, "client", lambda: NoMultiDelete())
    storage.delete(out, names)  # 1,005 keys: two batches, of which 1,002 were never written
    assert calls == {"delete_objects": 1, "delete_object": 1005}
    assert storage.list_files(out) == {}


def test_a_local_listing_skips_a_file_renamed_away_while_it_walks(tmp_path, monkeypatch):
    """Two tags share an attributes root: a file the walk saw (another writer's `.tmp<pid>`)
    may be renamed before its size is read; the listing failed with FileNotFoundError."""
    import os

    root = tmp_path / "attrs"
    storage.write_bytes(str(root / "web" / "a.parquet"), b"abc")
    (root / "web" / "a.parquet.tmp4242").write_bytes(b"x")
    real_getsize = os.path.getsize

    def renamed_meanwhile(path):
        if str(path).endswith(".tmp4242"):  # the other writer renames it into place now
            os.replace(path, str(path).removesuffix(".tmp4242"))
        return real_getsize(path)

    monkeypatch.setattr(os.path, "getsize", renamed_meanwhile)
    assert list(storage.list_files(str(root))) == ["web/a.parquet"]
    monkeypatch.undo()
    # a link that leads nowhere is no file renamed away: listed, not left out (found by a reviewer), and
    # not a FileNotFoundError (a traceback from `dolmino build`, found by the next one): what reads it names it
    (root / "web" / "b.parquet").symlink_to(tmp_path / "unmounted" / "b.parquet")
    assert sorted(storage.list_files(str(root))) == ["web/a.parquet", "web/b.parquet"]


def test_a_resume_reads_its_part_records_several_at_a_time(tmp_path, monkeypatch):
    """`committed_parts` read each `_parts/*.json` in turn: on S3, a resume of thousands of parts
    waited out one GET's latency after another (a tester). Two reads must be in flight at once."""
    import threading

    for i in range(4):
        output.write_json(str(tmp_path), f"_parts/part-{i:05d}.json", {"index": i, "plan": "other"})
    together = threading.Barrier(2, timeout=10)
    read = output.read_json

    def read_meeting_another(out, name):
        together.wait()  # raises BrokenBarrierError when no other read comes while this one waits
        return read(out, name)

    monkeypatch.setattr(output, "read_json", read_meeting_another)
    assert output.committed_parts(str(tmp_path), "this", 4) == {}


def test_a_resumed_part_committed_without_a_histogram_gets_its_sidecars(tmp_path):
    """A part committed by a build from before part records held `doc_hist` was resumed with none: the
    report's doc_tokens_hist counted only the parts the resuming run wrote, and `dolmino report` drew it as
    every part counted (found by a tester). Its histogram comes from its sidecar."""
    import numpy as np

    from dolmino.checksums import sha256_file
    from dolmino.doc_lengths import histogram
    from dolmino.memmap import MemmapPartWriter

    writer = MemmapPartWriter(str(tmp_path), 0, 100257)
    for i, (n, src) in enumerate(((5, "web"), (40, "web"), (900, "math"))):
        writer.add_document(np.append(np.arange(n - 1, dtype=np.uint32), 100257), f"d{i}", src, f"f.jsonl:{i + 1}")
    stats = writer.close()
    files = [{"name": name, "size": (tmp_path / name).stat().st_size, "sha256": sha256_file(str(tmp_path / name))}
             for name in ("part-00000.npy", "part-00000.csv.gz")]
    record = {"plan": "this", "index": 0, "tokens": stats.tokens, "docs": stats.docs, "files": files,
              "tokens_by_source": stats.tokens_by_source, "docs_by_source": stats.docs_by_source}
    output.write_json(str(tmp_path), "_parts/part-00000.json", record)
    want = {"math": histogram([900]), "web": histogram([5, 40])}
    assert output.committed_parts(str(tmp_path), "this", 1)[0].doc_hist == want
    output.write_json(str(tmp_path), "_parts/part-00000.json", {**record, "doc_hist": {"web": histogram([7])}})
    assert output.committed_parts(str(tmp_path), "this", 1)[0].doc_hist == {"web": histogram([7])}  # the record's


def test_a_write_into_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """A full --out or attributes root: the write raised "[Errno 28] No space left on device" naming no
    file, and the build ended in "in an executor: OSError: [Errno 28] No space left on device", no place
    to free (found by a tester, a 200 KB tmpfs as --attributes)."""
    import errno

    real_open = storage.open_temporary

    def full_disk(path):
        tmp, fh = real_open(path)

        class Full:  # a file whose write finds the disk full, as a tmpfs at its size does
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()

            def write(self, data):
                fh.write(data[:1])
                raise OSError(errno.ENOSPC, "No space left on device")

        return tmp, Full()

    monkeypatch.setattr(storage, "open_temporary", full_disk)
    target = tmp_path / "attributes" / "web" / "a.parquet"
    with pytest.raises(OSError) as info:
        storage.write_bytes(str(target), b"attributes")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(target.parent.iterdir()) == []


def test_a_write_into_a_read_only_directory_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    """A read-only directory: "small.lock.json.tmp4110110: Read-only file system", the random name of the
    write's own temporary file, which the user never gave (a tester, on a tmpfs remounted read-only)."""
    import builtins
    import errno

    real_open = builtins.open

    def read_only(file, mode="r", *args, **kwargs):
        if "r" not in mode:
            raise OSError(errno.EROFS, "Read-only file system", file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    target = str(tmp_path / "report.json")
    with pytest.raises(OSError) as raised:
        storage.write_bytes(target, b"{}")
    assert (raised.value.errno, raised.value.filename) == (errno.EROFS, target)
    assert os.listdir(tmp_path) == []
