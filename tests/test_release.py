"""Releases on a real S3 protocol server (moto on loopback): publish, list, pull, verify, delete.

The built mix here is made the way a build makes one (MemmapPartWriter, report, manifest
copy, quarantine file) from real text tokenized with dolma2, plus one part large enough
(> 5 MiB) to go through multipart upload and ranged download.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, S3_TEST_CREDENTIALS, shared_corpus_file
from dolmino import release, s3
from dolmino.documents import Quarantine, read_documents, write_quarantine
from dolmino.memmap import MemmapPartWriter, read_part

EOS = 100257
PART_SIZE = 5 * 1024 * 1024  # S3's minimum: the big part below is uploaded in 2 parts


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    """A finished build: 2 parts (one with a label mask, one > 5 MiB), report, manifest, quarantine."""
    from tokenizers import Tokenizer

    from dolmino.assets import dolma2_tokenizer_path

    out = tmp_path_factory.mktemp("built")
    tok = Tokenizer.from_file(str(dolma2_tokenizer_path()))
    quarantine = Quarantine()
    docs = []
    for line, doc in read_documents(str(shared_corpus_file("web.jsonl.zst")), quarantine):
        docs.append((line, doc))
        if len(docs) == 60:
            break
    encoded = [np.asarray(e.ids, dtype="<u4") for e in tok.encode_batch([d["text"] for _, d in docs],
                                                                          add_special_tokens=False)]
    small = MemmapPartWriter(str(out), 0, EOS, label_mask=True)
    for (line, doc), ids in zip(docs[:20], encoded[:20]):
        small.add(ids, doc["id"], "web", f"web/a.jsonl.zst:{line}", np.arange(len(ids)) % 7 != 0)
    small_stats = small.close()
    big = MemmapPartWriter(str(out), 1, EOS)
    copies = 0
    while big.stats.tokens * 4 < 6 * 1024 * 1024:  # repeat real documents past 6 MiB of tokens
        for (line, doc), ids in zip(docs[20:], encoded[20:]):
            big.add(ids, doc["id"], "web", f"web/b.jsonl.zst:{line}")
        copies += 1
    big_stats = big.close()
    manifest = json.loads((REPO / "manifests" / "demo.json").read_text())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    report = {"manifest": manifest["name"], "seed": manifest["seed"], "budget": 100_000,  # --budget 100K
              "output": {"tokens": small_stats.tokens + big_stats.tokens,
                         "docs": small_stats.docs + big_stats.docs, "files": 2, "files_sha256": _sha256s(out)}}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(f"# Mix {manifest['name']}\n\n{copies} copies of 40 web documents in part 1.\n")
    bad = Quarantine()
    bad.add("web/c.jsonl.zst", 3, "invalid_utf8", "byte 0xff", b"\xff\xfe broken line")
    write_quarantine(str(out / "quarantine" / "web" / "file-000002-abc.jsonl.gz"), bad.records)
    assert (out / "part-00001.npy").stat().st_size > PART_SIZE
    return out


@pytest.fixture
def root(s3_server) -> str:
    """A fresh bucket and prefix for one test's releases."""
    bucket = f"rel-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/mixes/olmo2"


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _publish(build_dir: Path, root: str, name: str, **kw) -> dict:
    return release.publish(str(build_dir), root, name, part_size=PART_SIZE, **kw)


def _s3_calls(record: list, params_of: dict | None = None):
    """Record (operation, key) of every S3 call the cached client makes (botocore event hook)."""
    def hook(params, model, **_):
        record.append((model.name, params.get("Key")))
        if params_of is not None:
            params_of[(model.name, params.get("Key"))] = dict(params)
    return hook


def test_publish_list_pull_verify_round_trip(build_dir, root, tmp_path):
    calls: list = []
    params: dict = {}
    events = s3.client().meta.events
    hook = _s3_calls(calls, params)
    events.register("before-parameter-build.s3", hook)
    try:
        record = _publish(build_dir, root, "olmo2-demo-v1")
    finally:
        events.unregister("before-parameter-build.s3", hook)

    local = _files(build_dir)
    assert {f["path"] for f in record["files"]} == set(local)
    assert record["manifest"]["budget"] == 100_000  # what was built, not manifest.json's "4M" (found by a tester)
    for entry in record["files"]:
        assert entry["size"] == len(local[entry["path"]])
        assert entry["sha256"] == hashlib.sha256(local[entry["path"]]).hexdigest()
    assert record["manifest"]["name"] == "demo" and record["manifest"]["seed"] == 1124
    assert record["dolmino_version"] and record["created"].endswith("Z")

    # Objects go under this publish's own prefix; RELEASE.json is the last write, conditional
    # (If-None-Match: *), after every data object (the big part went multipart).
    assert record["format"] == "dolmino-release/2"
    assert record["data_prefix"] == f"data/{record['publish_id']}/"
    staged = f"mixes/olmo2/olmo2-demo-v1/{record['data_prefix']}"
    writes = [(op, key) for op, key in calls if op in ("PutObject", "CreateMultipartUpload",
                                                         "UploadPart", "CompleteMultipartUpload")]
    assert writes[-1] == ("PutObject", "mixes/olmo2/olmo2-demo-v1/RELEASE.json")
    assert params[writes[-1]]["IfNoneMatch"] == "*"
    assert sum(1 for op, key in writes if key == "mixes/olmo2/olmo2-demo-v1/RELEASE.json") == 1
    assert all(key.startswith(staged) for op, key in writes[:-1])
    assert ("CompleteMultipartUpload", f"{staged}part-00001.npy") in writes

    complete, incomplete = release.list_releases(root)
    assert [r["name"] for r in complete] == ["olmo2-demo-v1"] and incomplete == []

    dest = tmp_path / "pulled" / "demo"
    pulled = release.pull(f"{root}/olmo2-demo-v1", str(dest), part_size=PART_SIZE)
    assert pulled == record
    got = _files(dest)
    assert json.loads(got.pop("RELEASE.json")) == record
    assert got == local  # byte-identical
    tokens, rows = read_part(str(dest / "part-00001.npy"))
    assert rows[-1][1] == len(tokens) and tokens[-1] == EOS
    assert [p.name for p in dest.parent.iterdir()] == ["demo"]  # no temp dir left behind
    # the same modes as a build's files and directories (not mkdtemp's 0700)
    umask = os.umask(0)
    os.umask(umask)
    for path in [dest, *dest.rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == want, path

    assert release.verify(f"{root}/olmo2-demo-v1") == []


def test_published_release_is_immutable(build_dir, root):
    _publish(build_dir, root, "v1")
    bucket, _ = s3.split_uri(root)
    before = sorted(s3.iter_keys(bucket, "mixes/olmo2/v1/"))
    with pytest.raises(release.ReleaseExistsError, match="already exists with the same content"):
        _publish(build_dir, root, "v1")
    assert sorted(s3.iter_keys(bucket, "mixes/olmo2/v1/")) == before


def test_interrupted_publish_is_invisible_then_cleaned_up(build_dir, root, tmp_path, capsys):
    bucket, _ = s3.split_uri(root)
    uploads = []

    def network_dies_on_third_upload(params, model, **_):
        if model.name in ("PutObject", "CreateMultipartUpload") and "probe" not in params["Key"]:
            uploads.append(params["Key"])  # the files' uploads (not the conditional-write probe's)
        if len(uploads) >= 3:  # from then on nothing gets through, not even the cleanup
            raise ConnectionError("simulated network loss half-way through a publish")

    events = s3.client().meta.events
    events.register("before-parameter-build.s3", network_dies_on_third_upload)
    messages: list[str] = []
    try:
        # named: the object it was putting, then the failure (s3.about)
        with pytest.raises(s3.S3ObjectError, match=r"^s3://.*/mixes/olmo2/v2/data/.*: network failure "
                                                   r"\(ConnectionError\): simulated network loss"):
            _publish(build_dir, root, "v2", log=messages.append)
    finally:
        events.unregister("before-parameter-build.s3", network_dies_on_third_upload)
    assert any("could not remove this publish's staged objects" in m for m in messages)
    leftovers = [k for k, _ in s3.iter_keys(bucket, "mixes/olmo2/v2/")]
    assert leftovers and "mixes/olmo2/v2/RELEASE.json" not in leftovers
    assert all(k.startswith("mixes/olmo2/v2/data/") for k in leftovers)

    complete, incomplete = release.list_releases(root)
    assert complete == [] and incomplete == ["v2"]
    dest = tmp_path / "dest"
    with pytest.raises(release.ReleaseNotFoundError, match="incomplete release"):
        release.pull(f"{root}/v2", str(dest))
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(release.ReleaseNotFoundError, match="incomplete release"):
        release.verify(f"{root}/v2")
    assert release.main(["list", root]) == 0
    out = capsys.readouterr()
    assert "v2" not in out.out and "ignored 1 incomplete upload(s)" in out.err

    # The leftovers are fresh: another publish may still be running, so they are left alone,
    # and they are not part of the new release (verify only notes them).
    messages = []
    record = _publish(build_dir, root, "v2", log=messages.append)
    assert any("left 1 staged upload(s) alone" in m for m in messages)
    assert set(leftovers) <= {k for k, _ in s3.iter_keys(bucket, "mixes/olmo2/v2/")}
    notes: list[str] = []
    assert release.verify(f"{root}/v2", log=notes.append) == []
    assert any(f"{len(leftovers)} object(s) under" in n and "belong to no release" in n for n in notes)
    # Once stale (here: idle for more than 0 s) they are removed; the release's objects never are.
    assert release.clean(f"{root}/v2", older_than_s=3600) == 0
    assert release.clean(f"{root}/v2", older_than_s=0) == len(leftovers)
    remaining = {k for k, _ in s3.iter_keys(bucket, "mixes/olmo2/v2/")}
    assert remaining == {"mixes/olmo2/v2/RELEASE.json"} | {f"mixes/olmo2/v2/{record['data_prefix']}{e['path']}"
                                                           for e in record["files"] + [{"path": release.PROBE_FILE}]}
    assert release.verify(f"{root}/v2") == []


def test_publish_removes_stale_leftovers_including_unfinished_multipart_uploads(build_dir, root):
    bucket, _ = s3.split_uri(root)
    cl = s3.client()
    dead = "mixes/olmo2/v8/data/20200101T000000Z-0123456789ab/"
    cl.put_object(Bucket=bucket, Key=dead + "part-00000.npy", Body=b"stale")
    upload = cl.create_multipart_upload(Bucket=bucket, Key=dead + "part-00001.npy")
    cl.upload_part(Bucket=bucket, Key=dead + "part-00001.npy", UploadId=upload["UploadId"], PartNumber=1,
                   Body=b"x" * 1024)
    messages: list[str] = []
    _publish(build_dir, root, "v8", log=messages.append)  # fresh: left alone
    assert sum("left 1 staged upload(s) alone" in m for m in messages) == 1
    # (publish refuses a NAME/ holding it: test_publish_refuses_a_name_prefix_holding_objects_no_publish_wrote)
    cl.put_object(Bucket=bucket, Key="mixes/olmo2/v8/part-09999.npy", Body=b"loose, from an old-style publish")
    assert len(cl.list_multipart_uploads(Bucket=bucket, Prefix=dead).get("Uploads", [])) == 1
    release.delete(f"{root}/v8", stale_after_s=0, log=messages.append)
    # an object no publish writes is left alone, and said (clean took anything as a leftover: a tester)
    assert list(s3.iter_keys(bucket, "mixes/olmo2/v8/")) == [("mixes/olmo2/v8/part-09999.npy", 32)]
    assert any("left 1 object(s) alone that no publish writes (e.g. part-09999.npy)" in m for m in messages)
    assert cl.list_multipart_uploads(Bucket=bucket, Prefix="mixes/olmo2/v8/").get("Uploads", []) == []


def test_clean_and_delete_never_take_a_releases_root_or_a_build_for_a_release(build_dir, root):
    """Found by a tester: given a releases root, clean and delete removed every committed release
    below it once idle ("leftovers"), and clean of a build's --out on S3 removed the build."""
    _publish(build_dir, root, "keep-1")
    _publish(build_dir, root, "keep-2")
    for command in (lambda: release.clean(root, older_than_s=0), lambda: release.delete(root, stale_after_s=0)):
        with pytest.raises(release.ReleaseError, match="holds other releases .keep-1, keep-2.: name one release"):
            command()
    assert [r["name"] for r in release.list_releases(root)[0]] == ["keep-1", "keep-2"]
    bucket, prefix = s3.split_uri(root)
    cl = s3.client()
    for name in ("part-00000.npy", "report.json", "_parts/part-00000.json"):
        cl.put_object(Bucket=bucket, Key=f"builds/A/{name}", Body=b"a build's file")
    messages: list[str] = []
    assert release.clean(f"s3://{bucket}/builds/A", older_than_s=0, log=messages.append) == 0
    assert len(list(s3.iter_keys(bucket, "builds/A/"))) == 3 and "left 3 object(s) alone" in messages[0]
    with pytest.raises(release.ReleaseNotFoundError, match="no such release"):
        release.delete(f"s3://{bucket}/builds/A", stale_after_s=0)
    # a listing names neither the build beside the releases nor a torn record's neighbours as incomplete
    cl.put_object(Bucket=bucket, Key=f"{prefix}/torn/RELEASE.json".lstrip("/"), Body=b'{"format": 2, "na')
    complete, incomplete = release.list_releases(root)
    assert [r["name"] for r in complete] == ["keep-1", "keep-2"] and incomplete == ["torn"]
    assert release.list_releases(f"s3://{bucket}/")[1] == []  # builds/ and mixes/ are no uploads
    # a torn RELEASE.json: delete removes it and what is behind it; clean and publish say so (a reviewer)
    record = _publish(build_dir, root, "torn2")
    key = f"{prefix}/torn2/RELEASE.json".lstrip("/")
    cl.put_object(Bucket=bucket, Key=key, Body=cl.get_object(Bucket=bucket, Key=key)["Body"].read()[:50])
    with pytest.raises(release.ReleaseError, match="not valid JSON .*`dolmino release delete s3://.*/torn2 --yes`"):
        release.clean(f"{root}/torn2")
    release.delete(f"{root}/torn2", stale_after_s=0)
    assert list(s3.iter_keys(bucket, f"{prefix}/torn2/".lstrip("/"))) == [] and record["data_prefix"]


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete"])
def test_tampered_object_fails_pull_and_verify(build_dir, root, tmp_path, damage):
    record = _publish(build_dir, root, "v3")
    bucket, _ = s3.split_uri(root)
    key = f"mixes/olmo2/v3/{record['data_prefix']}part-00000.csv.gz"
    cl = s3.client()
    original = cl.get_object(Bucket=bucket, Key=key)["Body"].read()
    if damage == "flip_byte":
        cl.put_object(Bucket=bucket, Key=key, Body=original[:100] + bytes([original[100] ^ 1]) + original[101:])
    elif damage == "truncate":
        cl.put_object(Bucket=bucket, Key=key, Body=original[:-10])
    else:
        cl.delete_object(Bucket=bucket, Key=key)

    problems = release.verify(f"{root}/v3")
    assert len(problems) == 1 and problems[0].startswith("part-00000.csv.gz: ")
    dest = tmp_path / "dest"
    with pytest.raises(release.ReleaseIntegrityError, match="part-00000.csv.gz") as info:
        release.pull(f"{root}/v3", str(dest))
    assert {"flip_byte": "SHA-256", "truncate": "size", "delete": "missing"}[damage] in str(info.value)
    assert not dest.exists() and list(tmp_path.iterdir()) == []  # nothing left at DEST, no temp dir


def test_pull_refuses_existing_destination(build_dir, root, tmp_path):
    _publish(build_dir, root, "v4")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(release.ReleaseError, match="already exists"):
        release.pull(f"{root}/v4", str(dest))
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    release.pull(f"{root}/v4", str(empty))  # an empty directory is fine
    assert (empty / "RELEASE.json").exists()
    # another pull into DEST finishing first: said so, not "[Errno 39] Directory not empty" (a reviewer)
    raced = tmp_path / "raced"
    raced.mkdir()

    def other_pull_lands(message: str) -> None:
        (raced / "RELEASE.json").write_text("{}")

    with pytest.raises(release.ReleaseError, match="already exists .another pull into it finished first"):
        release.pull(f"{root}/v4", str(raced), log=other_pull_lands)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".raced")] == []
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(release.ReleaseError, match=f"{afile} is a file, not a directory"):
        release.pull(f"{root}/v4", str(afile / "sub"))


def test_a_killed_pulls_partial_download_is_removed_by_the_next(build_dir, root, tmp_path):
    """Found by a tester: a pull killed with -9 (or SIGTERM) left `.DEST.pull-<id>/`, the size of
    the release, beside DEST; no later pull reused, removed or mentioned it."""
    import socket
    import subprocess
    import sys

    _publish(build_dir, root, "v5")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / ".dest.pull-0123456789ab"
    left.mkdir()
    (left / "part-00000.npy").write_bytes(b"half")
    namespace = os.stat("/proc/self/ns/pid").st_ino
    (left / ".pull-owner").write_text(f"{socket.gethostname()} {dead.stdout.strip()} {namespace}\n")
    live = tmp_path / ".dest.pull-fedcba987654"  # a pull still running (this process) is left alone
    live.mkdir()
    (live / ".pull-owner").write_text(f"{socket.gethostname()} {os.getpid()} {namespace}\n")
    # another PID namespace's (a container of the same pod): its pid says nothing here (a reviewer)
    other = tmp_path / ".dest.pull-aaaaaaaaaaaa"
    other.mkdir()
    (other / ".pull-owner").write_text(f"{socket.gethostname()} {dead.stdout.strip()} {namespace + 1}\n")
    messages: list[str] = []
    release.pull(f"{root}/v5", str(tmp_path / "dest"), log=messages.append)
    assert not left.exists() and live.exists() and other.exists()
    assert not (tmp_path / "dest" / ".pull-owner").exists()
    assert any(m.startswith(f"removed {left}: the partial download of an earlier pull") for m in messages)


@pytest.mark.parametrize("key", ["../x", "a/../b", "a/./b", "/etc/passwd", "a//b", "a/", "a\\b", "a\x00b",
                                 "a\nb", "", "C:/x", ".."])
def test_bad_keys_rejected(key):
    with pytest.raises(ValueError, match="file"):
        release.validate_key(key, "file")


@pytest.mark.parametrize("key", ["part-00000.npy", "quarantine/web/file-000001-ab.jsonl.gz", "a..b", "..a"])
def test_good_keys_accepted(key):
    assert release.validate_key(key) == key


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "with space", "x" * 129, "-dash"])
def test_bad_release_names_rejected_before_any_upload(build_dir, name):
    with pytest.raises(ValueError, match="release name"):
        release.publish(str(build_dir), "s3://never-contacted-bucket/x", name)


def test_hostile_release_record_cannot_escape_dest(build_dir, root, tmp_path):
    _publish(build_dir, root, "v5")
    bucket, _ = s3.split_uri(root)
    key = "mixes/olmo2/v5/RELEASE.json"
    record = json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    record["files"][0]["path"] = "../../escaped.txt"
    s3.client().put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())
    with pytest.raises(release.ReleaseError, match=r"files\[0\]\.path '\.\./\.\./escaped\.txt'"):
        release.pull(f"{root}/v5", str(tmp_path / "dest"))
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_publish_refuses_unfinished_builds(build_dir, root, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(build_dir, partial)
    (partial / "part-00002.npy.tmp4242").write_bytes(b"\0" * 8)
    with pytest.raises(release.ReleaseError, match="still being written"):
        release.publish(str(partial), root, "v6")
    os.remove(partial / "part-00002.npy.tmp4242")
    (partial / "report.json").write_text("{")  # torn: refused by name before anything is uploaded
    with pytest.raises(release.ReleaseError, match=r"report\.json: not valid JSON"):
        release.publish(str(partial), root, "v6")
    assert not list(s3.list_objects(root + "/"))
    os.remove(partial / "report.json")
    with pytest.raises(release.ReleaseError, match="not a finished build .missing report.json"):
        release.publish(str(partial), root, "v6")
    assert release.list_releases(root) == ([], [])
    # a trainer checkpoint was told it was a build "still running or killed: rerun it" (a tester)
    (tmp_path / "ckpt" / "step000010").mkdir(parents=True)
    (tmp_path / "ckpt" / "step000010" / "model.pt").write_bytes(b"weights")
    with pytest.raises(release.ReleaseError, match="a model checkpoint, not a built mix"):
        release.publish(str(tmp_path / "ckpt"), root, "v7")


def _upload_as_build(build_dir: Path, uri: str) -> dict[str, bytes]:
    """The build's files under an s3:// prefix as `--out s3://...` leaves them: each part file an
    object with its SHA-256 in the metadata, and a commit record per part naming its files."""
    bucket, prefix = s3.split_uri(uri + "/")
    files = _files(build_dir)
    records: dict[str, list] = {}
    for rel, data in sorted(files.items()):
        meta = {}
        if rel.startswith("part-"):
            meta = {"sha256": hashlib.sha256(data).hexdigest()}
            records.setdefault(rel.split(".")[0], []).append({"name": rel, "size": len(data), **meta})
        s3.client().put_object(Bucket=bucket, Key=prefix + rel, Body=data, Metadata=meta)
    for part, entries in records.items():
        body = json.dumps({"plan": "0123abcd", "index": int(part.split("-")[1]), "files": entries}).encode()
        files[f"_parts/{part}.json"] = body
        s3.client().put_object(Bucket=bucket, Key=f"{prefix}_parts/{part}.json", Body=body)
    return files


def test_publish_from_an_s3_build_copies_its_parts_server_side(build_dir, root, tmp_path):
    bucket, _ = s3.split_uri(root)
    build_uri = f"s3://{bucket}/builds/demo"
    files = _upload_as_build(build_dir, build_uri)
    calls: list = []
    events = s3.client().meta.events
    hook = _s3_calls(calls)
    events.register("before-parameter-build.s3", hook)
    try:
        record = _publish(build_uri, root, "from-s3")
    finally:
        events.unregister("before-parameter-build.s3", hook)
    assert {e["path"]: e["size"] for e in record["files"]} == {rel: len(data) for rel, data in files.items()}
    assert record["manifest"]["name"] == "demo" and record["output"]["files"] == 2

    # No part's bytes came through this process: the big one by UploadPartCopy, the rest by
    # CopyObject; the small files (reports, commit records, quarantine) were read and uploaded.
    parts = [rel for rel in files if rel.startswith("part-")]
    staged = f"mixes/olmo2/from-s3/{record['data_prefix']}"
    source_reads = {key for op, key in calls if op in ("GetObject",) and key and key.startswith("builds/demo/")}
    assert not {f"builds/demo/{rel}" for rel in parts} & source_reads
    assert {f"builds/demo/{rel}" for rel in files if rel not in parts} <= source_reads
    record_reads = [key for op, key in calls if op == "GetObject" and key and key.startswith("builds/demo/_parts/")]
    assert sorted(record_reads) == sorted(f"builds/demo/{rel}" for rel in files if rel.startswith("_parts/"))  # once
    writes = {(op, key) for op, key in calls if key and key.startswith(staged)}
    assert ("UploadPartCopy", f"{staged}part-00001.npy") in writes
    assert ("CopyObject", f"{staged}part-00000.npy") in writes
    assert not {(op, f"{staged}{rel}") for rel in parts for op in ("PutObject", "UploadPart")} & writes

    dest = tmp_path / "pulled"
    release.pull(f"{root}/from-s3", str(dest), part_size=PART_SIZE)  # checks every SHA-256
    got = _files(dest)
    assert json.loads(got.pop("RELEASE.json")) == record
    assert got == files
    assert release.verify(f"{root}/from-s3") == []


def test_publish_from_s3_refuses_a_changed_part_or_an_unfinished_build(build_dir, root):
    bucket, _ = s3.split_uri(root)
    build_uri = f"s3://{bucket}/builds/changed"
    files = _upload_as_build(build_dir, build_uri)
    # Rewritten after the build checked it, with the digest of the old bytes left in its metadata.
    old = files["part-00000.npy"]
    s3.client().put_object(Bucket=bucket, Key="builds/changed/part-00000.npy", Body=old[:-4] + b"\1\0\0\0",
                           Metadata={"sha256": "0" * 64})
    with pytest.raises(release.ReleaseIntegrityError, match="part-00000.npy: .* changed after the build checked it"):
        _publish(build_uri, root, "changed")
    assert release.list_releases(root) == ([], [])
    # A plain PUT (another tool) leaves no digest: it read "with stored SHA-256 None" (a tester).
    s3.client().put_object(Bucket=bucket, Key="builds/changed/part-00000.npy", Body=old)
    with pytest.raises(release.ReleaseIntegrityError, match=r"part-00000.npy: \d+ bytes with no stored SHA-256 "
                                                            r"\(written since by another tool\), but the build's"):
        _publish(build_uri, root, "changed")
    assert list(s3.iter_keys(bucket, "mixes/olmo2/changed/")) == []  # its staged copies were removed

    with pytest.raises(release.ReleaseError, match="inside the build .* it would publish"):
        _publish(build_uri, f"{build_uri}/releases", "changed")

    s3.client().delete_object(Bucket=bucket, Key="builds/changed/report.json")
    with pytest.raises(release.ReleaseError, match="not a finished build .missing report.json"):
        _publish(build_uri, root, "changed")
    with pytest.raises(release.ReleaseError, match="no objects under this prefix"):
        _publish(f"s3://{bucket}/builds/nothing-here", root, "changed")


def test_publish_from_s3_says_a_part_rewritten_after_listing_changed(build_dir, root, monkeypatch):
    """A part rewritten between the build's listing and its copy fails the HEAD pinned to the listed
    ETag (412): "s3://.../part-00000.npy: S3 HeadObject failed: PreconditionFailed (412)" read as
    a store fault, not as the part having changed (a reviewer)."""
    bucket, _ = s3.split_uri(root)
    build_uri = f"s3://{bucket}/builds/raced"
    files = _upload_as_build(build_dir, build_uri)
    stage = release._S3Build.stage

    def rewritten_first(self, item, *args, **kw):
        if item.path == "part-00000.npy":
            old = files["part-00000.npy"]  # other bytes under the old digest: only the ETag tells
            s3.client().put_object(Bucket=bucket, Key="builds/raced/part-00000.npy", Body=old[:-4] + b"\1\0\0\0",
                                   Metadata={"sha256": hashlib.sha256(old).hexdigest()})
        return stage(self, item, *args, **kw)

    monkeypatch.setattr(release._S3Build, "stage", rewritten_first)
    with pytest.raises(release.ReleaseIntegrityError,
                       match=rf"s3://{bucket}/builds/raced/part-00000.npy: the object was rewritten after the build "
                             r"was listed \(its ETag is not the listed one\); nothing was released"):
        _publish(build_uri, root, "raced")
    assert release.list_releases(root) == ([], [])


def test_publish_from_s3_says_a_commit_record_rewritten_after_listing_changed(build_dir, root, monkeypatch):
    """The commit records are read pinned to the listed ETag too: one a build still running rewrote between
    the listing and the read ended the publish with "S3 GetObject failed: PreconditionFailed (412)", the
    parts' HEAD and copy saying it as a rewrite (a reviewer)."""
    bucket, _ = s3.split_uri(root)
    build_uri = f"s3://{bucket}/builds/record-raced"
    files = _upload_as_build(build_dir, build_uri)
    listing = s3.iter_objects

    def rewritten_after_listing(*args, **kw):
        listed = list(listing(*args, **kw))
        s3.client().put_object(Bucket=bucket, Key="builds/record-raced/_parts/part-00000.json",
                               Body=files["_parts/part-00000.json"] + b" ")
        return listed

    monkeypatch.setattr(s3, "iter_objects", rewritten_after_listing)
    with pytest.raises(release.ReleaseIntegrityError,
                       match=rf"s3://{bucket}/builds/record-raced/_parts/part-00000.json: the object was rewritten "
                             r"after the build was listed"):
        _publish(build_uri, root, "record-raced")
    assert release.list_releases(root) == ([], [])


def test_publish_from_s3_names_the_object_whose_head_or_copy_failed(build_dir, root, capsys):
    """A HEAD or a server-side copy whose retries were spent (503 SlowDown) ended a publish with
    "release: error: S3 HeadObject failed: SlowDown (503)", naming none of the objects it touches
    (found by a tester, through a fault-injecting proxy): now the line names the object."""
    from botocore.exceptions import ClientError

    bucket, _ = s3.split_uri(root)
    build_uri = f"s3://{bucket}/builds/throttled"
    _upload_as_build(build_dir, build_uri)
    cases = [("HeadObject", "builds/"),  # the build's part, checked before its copy
             ("CopyObject", "mixes/"),  # its copy into the release's staging prefix
             ("HeadObject", "mixes/")]  # the staged copy, checked before the commit
    for i, (operation, top) in enumerate(cases):
        def throttle(params, model, **_):
            key = str(params.get("Key"))
            if model.name == operation and key.startswith(top) and key.endswith("/part-00000.npy"):
                raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                                   "ResponseMetadata": {"HTTPStatusCode": 503}}, model.name)

        events = s3.client().meta.events
        events.register("before-parameter-build.s3", throttle)
        try:
            code = release.main(["publish", build_uri, root, "--name", f"throttled{i}", "--no-progress"])
        finally:
            events.unregister("before-parameter-build.s3", throttle)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        uri = rf"s3://{bucket}/(builds/throttled|mixes/olmo2/throttled{i}/data/\S+)/part-00000\.npy"
        assert re.fullmatch(rf"release: error: {uri}: S3 {operation} failed: SlowDown \(503\): Please reduce your "
                            r"request rate\.", err[0]), err
        assert list(s3.iter_keys(bucket, f"mixes/olmo2/throttled{i}/")) == []  # nothing released, nothing left


def test_a_commit_whose_answer_was_lost_is_read_back(small_builds, root, monkeypatch, capsys):
    """RELEASE.json written, and the connection closed before its answer (a proxy, a load balancer): the
    publish said "this publish was committed (RELEASE.json is ours) before the error below", then failed
    with exit status 2 (found by a tester). What landed decides, as for a 412 on botocore's retry: the
    publish succeeds when the record read back is its own; a write that never landed still fails, naming
    RELEASE.json, and leaves nothing behind."""
    from botocore.exceptions import ConnectionClosedError
    from botocore.httpsession import URLLib3Session

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # one try: botocore's backoff would only slow the test down
    bucket, prefix = release.split_root(root)
    for name, lands in (("lost-answer", True), ("never-sent", False)):
        def cut(request, **_):
            if request.url.split("?")[0].endswith(f"/{name}/{release.RELEASE_FILE}") and request.method == "PUT":
                if lands:
                    URLLib3Session().send(request)  # the store takes the write; its answer never comes back
                raise ConnectionClosedError(endpoint_url=request.url)

        events = s3.client().meta.events
        events.register("before-send.s3.PutObject", cut)
        try:
            code = release.main(["publish", str(small_builds[0]), root, "--name", name, "--no-progress"])
        finally:
            events.unregister("before-send.s3.PutObject", cut)
        out = capsys.readouterr()
        if lands:
            assert code == 0 and not out.err, out.err
            assert release.verify(f"{root}/{name}") == []
        else:
            assert code == 2
            assert out.err.startswith(f"release: error: {root}/{name}/{release.RELEASE_FILE}: cannot reach the S3 "
                                      "endpoint (ConnectionClosedError)"), out.err
            assert len(out.err.strip().splitlines()) == 1
            assert list(s3.iter_keys(bucket, f"{prefix}{name}/")) == []


def test_delete_removes_commit_record_and_objects(build_dir, root):
    _publish(build_dir, root, "v7")
    bucket, _ = s3.split_uri(root)
    assert release.delete(f"{root}/v7") == len(_files(build_dir)) + 2  # and RELEASE.json, and the probe
    assert list(s3.iter_keys(bucket, "mixes/olmo2/v7/")) == []
    with pytest.raises(release.ReleaseNotFoundError, match="no such release"):
        release.pull(f"{root}/v7", "/nonexistent-never-created")


def test_cli_output_never_contains_credentials(build_dir, root, tmp_path, capsys):
    secrets = list(S3_TEST_CREDENTIALS.values())
    outputs = []

    def run(*argv) -> int:
        code = release.main(list(argv))
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)
        return code

    assert run("publish", str(build_dir), root, "--name", "cli-v1", "--part-size-mb", "5") == 0
    assert "released s3://" in outputs[-1]
    assert run("list", root) == 0 and "cli-v1" in outputs[-1]
    assert run("verify", f"{root}/cli-v1") == 0
    assert run("pull", f"{root}/cli-v1", str(tmp_path / "got")) == 0
    assert run("publish", str(build_dir), root, "--name", "cli-v1") == 2
    assert run("pull", f"{root}/missing", str(tmp_path / "x")) == 2 and "no such release" in outputs[-1]
    assert run("list", "s3://no-such-bucket-dolmino/x") == 2 and "bucket does not exist" in outputs[-1]
    assert run("publish", str(build_dir), "s3://no-such-bucket-dolmino/x", "--name", "n") == 2
    assert run("pull", f"{root}/../etc", str(tmp_path / "y")) == 2 and "'..' segments" in outputs[-1]
    assert run("delete", f"{root}/cli-v1") == 2 and "--yes" in outputs[-1]

    # A server error whose text carries the credentials (as SignatureDoesNotMatch bodies do).
    from botocore.exceptions import ClientError

    def leaky(params, model, **_):
        raise ClientError({"Error": {"Code": "SignatureDoesNotMatch", "Message":
                                     f"AWSAccessKeyId={secrets[0]} StringToSign uses {secrets[1]} {secrets[2]}"},
                           "ResponseMetadata": {"HTTPStatusCode": 403}}, model.name)

    events = s3.client().meta.events
    events.register("before-parameter-build.s3", leaky)
    try:
        assert run("verify", f"{root}/cli-v1") == 2
    finally:
        events.unregister("before-parameter-build.s3", leaky)
    assert "SignatureDoesNotMatch (403)" in outputs[-1]
    for text in outputs:
        for secret in secrets:
            assert secret not in text


# ---------------------------------------------------------------- concurrent publishes


@pytest.fixture(scope="module")
def small_builds(tmp_path_factory) -> list[Path]:
    """Two different finished builds (tiny, so that many publish rounds stay fast)."""
    builds = []
    manifest = json.loads((REPO / "manifests" / "demo.json").read_text())
    for i in range(2):
        out = tmp_path_factory.mktemp(f"small{i}")
        tokens = np.arange(1000 * (i + 1), dtype="<u4")
        tokens.tofile(out / "part-00000.npy")
        (out / "part-00000.csv.gz").write_bytes(gzip.compress(f"0,{len(tokens)},doc{i},web,w.jsonl:1\n".encode(),
                                                              mtime=0))
        (out / "manifest.json").write_text(json.dumps(manifest) + "\n")
        (out / "report.json").write_text(json.dumps({"output": {"tokens": len(tokens), "docs": 1, "files": 1,
                                                                "files_sha256": _sha256s(out)}, "build": i}) + "\n")
        (out / "report.md").write_text(f"# build {i}\n")
        builds.append(out)
    return builds


@pytest.fixture
def atomic_conditional_puts(monkeypatch):
    """moto checks If-None-Match and then stores the object in two steps, so two requests in
    flight at once can both pass the check; S3 performs the two atomically. Serializing
    moto's PutObject handler gives it S3's semantics (the code under test is unchanged)."""
    import threading

    from moto.s3.responses import S3Response

    lock = threading.Lock()
    original = S3Response.put_object

    def put_object(self, *args, **kwargs):
        with lock:
            return original(self, *args, **kwargs)

    monkeypatch.setattr(S3Response, "put_object", put_object)


def _release_keys(bucket: str, key_prefix: str) -> set[str]:
    return {k for k, _ in s3.iter_keys(bucket, key_prefix)}


def _check_single_winner(root: str, name: str, winner: dict, builds: list[Path], tmp_path: Path) -> None:
    """list shows the winner, verify and pull accept it, and only its objects remain."""
    bucket, _ = s3.split_uri(root)
    complete, incomplete = release.list_releases(root)
    listed = {r["name"]: r for r in complete}
    assert listed[name]["publish_id"] == winner["publish_id"] and name not in incomplete
    assert release.verify(f"{root}/{name}") == []
    dest = tmp_path / f"pulled-{name}"
    assert release.pull(f"{root}/{name}", str(dest)) == winner
    got = _files(dest)
    got.pop("RELEASE.json")
    assert got in [_files(b) for b in builds]
    assert json.loads(got["report.json"])["build"] == json.loads(
        next(_files(b) for b in builds if _files(b) == got)["report.json"])["build"]
    prefix = f"mixes/olmo2/{name}/"
    assert _release_keys(bucket, prefix) == {prefix + "RELEASE.json"} | {
        f"{prefix}{winner['data_prefix']}{e['path']}" for e in winner["files"] + [{"path": release.PROBE_FILE}]}


def _publish_twice_at_once(small_builds, root: str, name: str, hook) -> tuple[list, list]:
    """Publish both builds under one name from two threads, `hook` registered on every S3
    request's parameters; (winners' releases, losers' exceptions)."""
    import threading

    events = s3.client().meta.events
    results: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            results[i] = release.publish(str(small_builds[i]), root, name)
        except Exception as exc:  # noqa: BLE001 - recorded and checked by the caller
            results[i] = exc

    events.register("before-parameter-build.s3", hook)
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        events.unregister("before-parameter-build.s3", hook)
    return ([r for r in results.values() if isinstance(r, dict)],
            [r for r in results.values() if not isinstance(r, dict)])


@pytest.mark.slow
def test_concurrent_publishes_of_one_name_have_exactly_one_winner(small_builds, root, tmp_path,
                                                                  atomic_conditional_puts):
    """Issue 13.4: two publishes of different builds under one name at the same time, 20 rounds.

    In even rounds both publishers are held at a barrier just before writing RELEASE.json, so
    the two conditional writes race for real; in odd rounds they run freely.
    """
    import threading

    for rnd in range(20):
        name = f"race-{rnd}"
        barrier = threading.Barrier(2, timeout=60) if rnd % 2 == 0 else None

        def at_commit(params, model, **_):
            if barrier is not None and model.name == "PutObject" and params["Key"].endswith(f"/{name}/RELEASE.json"):
                barrier.wait()

        winners, losers = _publish_twice_at_once(small_builds, root, name, at_commit)
        assert len(winners) == 1 and len(losers) == 1, (winners, losers)
        assert isinstance(losers[0], release.ReleaseExistsError), repr(losers[0])
        message = str(losers[0])
        assert "another publish of this name committed first" in message or "already exists" in message
        if barrier is not None:
            assert winners[0]["publish_id"] in message and "removed again" in message
        _check_single_winner(root, name, winners[0], small_builds, tmp_path)


@pytest.mark.slow
def test_concurrent_publish_commands_loser_exits_2_with_a_clear_message(small_builds, root, tmp_path,
                                                                        atomic_conditional_puts):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for rnd in range(2):
        name = f"cli-race-{rnd}"
        procs = [subprocess.Popen([sys.executable, "-m", "dolmino.release", "publish", str(build), root,
                                   "--name", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                  text=True, cwd=REPO) for build in small_builds]
        outcomes = [(p.wait(120), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in outcomes)
        assert codes == [0, 2], outcomes
        _, out, err = next(o for o in outcomes if o[0] == 2)
        assert err.startswith(f"release: error: {root}/{name}: ") and len(err.strip().splitlines()) == 1
        assert "another publish of this name committed first" in err or "already exists" in err
        assert "Traceback" not in err
        winner = release.read_release(f"{root}/{name}")
        _check_single_winner(root, name, winner, small_builds, tmp_path)


def test_a_publish_that_commits_while_another_checks_the_name_is_said_to_exist(small_builds, root, tmp_path):
    """The loser of two publishes at once found no RELEASE.json, then listed NAME/ after the winner committed
    and called it "1 object(s) no publish writes (e.g. RELEASE.json): not a release (a build's --out?)" (the
    CLI race above, under load): it is the release that now exists, said as such."""
    name, won = "commit-between", {}

    def commit_first(params, model, **_):
        if model.name == "ListObjectsV2" and params.get("Prefix") == f"mixes/olmo2/{name}/" and not won:
            won["record"] = None  # the winner's own listing passes through
            won["record"] = release.publish(str(small_builds[0]), root, name)

    events = s3.client().meta.events
    events.register("before-parameter-build.s3", commit_first)
    try:
        with pytest.raises(release.ReleaseExistsError, match=re.escape(f"{root}/{name}: release already exists; ")):
            release.publish(str(small_builds[1]), root, name)
    finally:
        events.unregister("before-parameter-build.s3", commit_first)
    _check_single_winner(root, name, won["record"], small_builds, tmp_path)


def test_store_that_ignores_if_none_match_still_ends_consistent(small_builds, root, tmp_path):
    """Some S3-compatible stores ignore If-None-Match: both writes land, the last one stays.
    Each publisher reads RELEASE.json back after writing it; the one whose record was
    overwritten removes its own objects and fails, so exactly one wins here too."""
    import threading

    for rnd in range(3):
        name = f"no-cas-{rnd}"
        before_put, before_read_back = threading.Barrier(2, timeout=60), threading.Barrier(2, timeout=60)
        state = threading.local()

        def store_without_conditions(params, model, **_):
            if params.get("Key", "").endswith(f"/{name}/RELEASE.json"):
                if model.name == "PutObject":
                    params.pop("IfNoneMatch", None)
                    before_put.wait()
                    state.put = True
                elif model.name == "GetObject" and getattr(state, "put", False):
                    state.put = False
                    before_read_back.wait()  # both writes have landed before either reads back

        winners, losers = _publish_twice_at_once(small_builds, root, name, store_without_conditions)
        assert len(winners) == 1 and len(losers) == 1, (winners, losers)
        assert "another publish of this name committed first" in str(losers[0])
        _check_single_winner(root, name, winners[0], small_builds, tmp_path)


# ---------------------------------------------------------------- secrets and unreachable endpoints


def test_unreachable_endpoint_with_userinfo_never_prints_it(build_dir, s3_server, tmp_path, capsys, monkeypatch):
    """Issue 13.5: AWS_ENDPOINT_URL_S3=http://user:pass@127.0.0.1:<closed port>."""
    import socket
    import subprocess
    import sys

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://dolminouser:hunter2secret@127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    root = "s3://some-bucket/mixes"
    commands = [["publish", str(build_dir), root, "--name", "v1"], ["list", root],
                ["pull", f"{root}/v1", str(tmp_path / "dest")], ["verify", f"{root}/v1"],
                ["delete", f"{root}/v1", "--yes"], ["clean", f"{root}/v1"]]
    for argv in commands:
        assert release.main(argv) == 2, argv
        captured = capsys.readouterr()
        text = captured.out + captured.err
        assert re.match(r"release: error: (s3://\S+: )?cannot reach the S3 endpoint", captured.err), (argv, text)
        assert len(captured.err.strip().splitlines()) == 1
        assert "hunter2secret" not in text and "dolminouser" not in text, text
        assert f"127.0.0.1:{port}" in text  # the redacted message still says where
    proc = subprocess.run([sys.executable, "-m", "dolmino.release", "list", root], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "hunter2secret" not in proc.stdout + proc.stderr
    assert proc.stderr.startswith("release: error: cannot reach the S3 endpoint")
    assert not (tmp_path / "dest").exists() and list(tmp_path.iterdir()) == []


def test_progress_bar_counts_bytes_and_files_and_is_off_without_a_terminal(small_builds, root, tmp_path, capsys):
    record = release.publish(str(small_builds[0]), root, "progress", progress=True)
    n = len(record["files"])
    err = capsys.readouterr().err
    assert "publish progress" in err and f"{n}/{n} files" in err and "B/s" in err
    release.pull(f"{root}/progress", str(tmp_path / "p"), progress=True)
    err = capsys.readouterr().err
    assert "pull progress" in err and f"{n}/{n} files" in err
    # the command decides by whether stderr is a terminal: here it is not, so no bar
    assert release.main(["verify", f"{root}/progress"]) == 0
    captured = capsys.readouterr()
    assert "files" not in captured.err and "B/s" not in captured.err and "all objects match" in captured.out


@pytest.mark.parametrize("failure", ["412_on_retry", "lost_response"])
def test_an_error_after_our_commit_landed_never_removes_the_release(small_builds, root, failure):
    """botocore retries a PUT whose response was lost: the retry gets 412 from our own
    RELEASE.json. Or the response is lost for good. Either way the committed objects stay, and
    the record read back is this publish's: it succeeded (a lost response failed it, exit 2,
    with the release in place; found by a tester)."""
    from botocore.exceptions import ClientError

    name = f"landed-{failure}"
    fired = []

    def after_commit(http_response, parsed, model, **kwargs):
        if model.name == "PutObject" and not fired and kwargs["context"].get("commit_key"):
            fired.append(True)
            if failure == "412_on_retry":
                raise ClientError({"Error": {"Code": "PreconditionFailed", "Message": "At least one of the "
                                             "pre-conditions you specified did not hold"},
                                   "ResponseMetadata": {"HTTPStatusCode": 412}}, "PutObject")
            raise ConnectionError("connection reset after the request was sent")

    def mark(params, model, context, **_):
        if model.name == "PutObject" and params["Key"].endswith(f"/{name}/RELEASE.json"):
            context["commit_key"] = True

    events = s3.client().meta.events
    events.register("before-parameter-build.s3", mark)
    events.register("after-call.s3", after_commit)
    messages: list[str] = []
    try:
        record = release.publish(str(small_builds[0]), root, name, log=messages.append)
    finally:
        events.unregister("before-parameter-build.s3", mark)
        events.unregister("after-call.s3", after_commit)
    assert fired
    assert messages[-1].startswith(f"released {root}/{name} ")
    assert release.verify(f"{root}/{name}") == []
    assert release.read_release(f"{root}/{name}")["publish_id"] == record["publish_id"]


# ---------------------------------------------------------------- stores without optional features


def _refused_then_published_anyway(small_builds, root, capsys, event: str, hook, what: str) -> None:
    """publish on a store `hook` (registered on `event`) makes: refused with `what`, nothing
    uploaded; then published with --allow-unconditional-store, which warns; the only probe left is
    the release's own."""
    events = s3.client().meta.events
    events.register(event, hook)
    bucket, prefix = release.split_root(root)
    try:
        assert release.main(["publish", str(small_builds[0]), root, "--name", "v1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("release: error: s3://") and what in err
        assert "Nothing was uploaded" in err and "--allow-unconditional-store" in err
        assert list(s3.iter_keys(bucket, prefix)) == []
        assert release.main(["publish", str(small_builds[0]), root, "--name", "v1", "--no-progress",
                             "--allow-unconditional-store"]) == 0
        out = capsys.readouterr().out
        assert f"warning: the store {what.split(' (')[0]}; publishing anyway" in out
    finally:
        events.unregister(event, hook)
    record = release.read_release(f"{root}/v1")
    assert [k for k, _ in s3.iter_keys(bucket, prefix) if "probe" in k] == [
        f"{prefix}v1/{record['data_prefix']}{release.PROBE_FILE}"]


def test_a_store_that_ignores_if_none_match_is_refused_before_anything_is_uploaded(small_builds, root, capsys):
    """On a store that ignores If-None-Match (s3rver; older gateways) two publishes of one
    name, each reading back its own record, both reported success and the later silently
    replaced the release. publish probes the store first and refuses it, uploading nothing;
    --allow-unconditional-store publishes anyway and says what is then not detected."""
    def ignore_conditions(params, model, **_):
        if model.name == "PutObject":
            params.pop("IfNoneMatch", None)

    _refused_then_published_anyway(small_builds, root, capsys, "before-parameter-build.s3", ignore_conditions,
                                   "ignores If-None-Match on PUT (a conditional write of an existing object went "
                                   "through)")


def test_publish_and_delete_work_on_a_store_that_does_not_list_multipart_uploads(small_builds, root, tmp_path):
    """Listing unfinished uploads is clean-up only: a store that answers NotImplemented to it
    (s3rver, some gateways) failed every publish before its first upload, and a delete after
    it had removed RELEASE.json."""
    from botocore.awsrequest import AWSResponse

    def not_implemented(**_):
        return AWSResponse("http://store", 501, {}, None), {
            "Error": {"Code": "NotImplemented", "Message": "A parameter you provided implies functionality that "
                                                          "is not implemented"},
            "ResponseMetadata": {"HTTPStatusCode": 501}}

    events = s3.client().meta.events
    events.register("before-call.s3.ListMultipartUploads", not_implemented)
    try:
        release.publish(str(small_builds[0]), root, "v1")
        release.pull(f"{root}/v1", str(tmp_path / "pulled"))
        release.delete(f"{root}/v1")
    finally:
        events.unregister("before-call.s3.ListMultipartUploads", not_implemented)
    assert (tmp_path / "pulled" / "report.json").exists()
    bucket, prefix = release.split_root(root)
    assert list(s3.iter_keys(bucket, prefix)) == []


def _sha256s(build: Path) -> dict[str, str]:
    """What a build's report.json certifies: the SHA-256 of each part file."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(build.glob("part-*"))}


def _certified_copy(build: Path, dest: Path) -> Path:
    """`build` with report.json certifying its part files, as a real build's does."""
    shutil.copytree(build, dest)
    report = json.loads((dest / "report.json").read_text())
    report["output"]["files_sha256"] = _sha256s(dest)
    (dest / "report.json").write_text(json.dumps(report) + "\n")
    return dest


def test_a_build_whose_report_certifies_no_files_is_not_released(small_builds, root, tmp_path):
    """A report.json of `{}` was published (found by a tester): the release then certified
    whatever lay beside it. Every dolmino build's report lists its files' SHA-256."""
    build = tmp_path / "build"
    shutil.copytree(small_builds[0], build)
    report = json.loads((build / "report.json").read_text())
    del report["output"]["files_sha256"]
    (build / "report.json").write_text(json.dumps(report) + "\n")
    with pytest.raises(release.ReleaseIntegrityError, match="report.json certifies no files .no output.files_sha256"):
        release.publish(str(build), root, "uncertified")
    bucket, prefix = release.split_root(root)
    assert not [k for k in s3.iter_keys(bucket, prefix) if "/uncertified/" in k]


@pytest.mark.parametrize("damage, words", [
    ("flip", "part-00000.npy: SHA-256"),
    ("remove", "part-00000.csv.gz: listed in report.json but missing"),
    ("stale", "part-00001.npy: not written by the build that report.json describes"),
])
def test_a_build_damaged_since_it_finished_is_not_released(small_builds, root, tmp_path, damage, words):
    """publish hashed what was on disk and certified it: a part changed, deleted or left by
    another build was released under fresh checksums, and pull and verify then passed it.
    The files must be the ones report.json certifies (as `dolmino validate` checks)."""
    build = _certified_copy(small_builds[0], tmp_path / "build")
    assert release.publish(str(build), root, "intact")["name"] == "intact"
    if damage == "flip":
        data = bytearray((build / "part-00000.npy").read_bytes())
        data[12] ^= 1
        (build / "part-00000.npy").write_bytes(bytes(data))
    elif damage == "remove":
        (build / "part-00000.csv.gz").unlink()
    else:
        (build / "part-00001.npy").write_bytes(b"\0" * 8)
    with pytest.raises(release.ReleaseIntegrityError, match=re.escape(words)) as info:
        release.publish(str(build), root, "damaged")
    assert "nothing was released" in str(info.value).lower()
    bucket, prefix = release.split_root(root)
    assert not [k for k, _ in s3.iter_keys(bucket, prefix + "damaged/")]


def test_a_damaged_build_on_s3_is_not_sent_to_validate_which_sends_it_back():
    """validate reads a local directory and sends an s3:// build to publish; publish's refusal
    sent it to validate: a circle (found by a tester)."""
    listed = {"part-00000.npy": "0" * 64}
    with pytest.raises(release.ReleaseIntegrityError) as on_s3:
        release.check_listed("s3://b/mixes/x", ["part-00000.npy", "part-00001.npy"], listed)
    assert "`aws s3 sync` it to a directory and `dolmino validate DIR` names every difference" in str(on_s3.value)
    with pytest.raises(release.ReleaseIntegrityError) as local:
        release.check_listed("/data/mixes/x", ["part-00000.npy", "part-00001.npy"], listed)
    assert "; `dolmino validate` names every difference; move the files it did not write out of the build before " \
        "publishing" in str(local.value)
    with pytest.raises(release.ReleaseIntegrityError) as both:
        release.check_listed("/data/mixes/x", ["part-00001.npy"], listed)
    assert ("rebuild (the same command resumes) to write the missing files and move the files it did not write "
            "out of the build before publishing") in str(both.value)


def test_a_store_that_does_not_implement_if_none_match_is_refused_or_published_unconditionally(small_builds, root,
                                                                                                capsys):
    """A store answering NotImplemented to If-None-Match was told it "ignores" the header, and
    --allow-unconditional-store then uploaded everything and failed at the commit, which sent
    the header again. It is named for what it does, and the flag commits without the header."""
    from botocore.awsrequest import AWSResponse

    def not_implemented(params, **_):
        if "If-None-Match" in params.get("headers", {}):
            return AWSResponse("http://store", 501, {}, None), {
                "Error": {"Code": "NotImplemented", "Message": "not implemented"},
                "ResponseMetadata": {"HTTPStatusCode": 501}}
        return None

    _refused_then_published_anyway(small_builds, root, capsys, "before-call.s3.PutObject", not_implemented,
                                   "does not implement If-None-Match on PUT (it answered NotImplemented)")


def test_a_team_sharing_a_bucket_cannot_lose_a_release_or_be_misled(build_dir, root, tmp_path, monkeypatch, capsys):
    """Found by a tester: clean of NAME removed a release committed below its data/<publish id>/
    (named like a publish id), and publish accepted such a root; delete of a name with only a
    running publish's staged objects said "deleted (0 objects)"; pull and verify of a releases
    root said "incomplete release"; a pull racing a delete said "damaged"; Ctrl-C printed a
    traceback."""
    bucket, prefix = s3.split_uri(root)
    cl = s3.client()
    record = _publish(build_dir, root, "mix")
    inner = f"{prefix}/mix/data/20250101T000000Z-00000000abcd".lstrip("/")
    cl.put_object(Bucket=bucket, Key=f"{inner}/RELEASE.json", Body=json.dumps({**record, "name": "x"}).encode())
    cl.put_object(Bucket=bucket, Key=f"{inner}/data/{record['data_prefix'].split('/')[1]}/part-00000.npy", Body=b"x")
    for command in (lambda: release.clean(f"{root}/mix", older_than_s=0),
                    lambda: release.delete(f"{root}/mix", stale_after_s=0)):
        with pytest.raises(release.ReleaseError, match="holds other releases"):
            command()
    assert len(list(s3.iter_keys(bucket, inner + "/"))) == 2
    with pytest.raises(release.ReleaseError, match="inside the release s3://.*/mix; publish releases side by side"):
        _publish(build_dir, f"{root}/mix/data", "20250101T000000Z-00000000abce")
    # over releases: a releases root named as the release became one, and then refused every publish
    # under it and its own delete (found by a tester)
    _publish(build_dir, f"{root}/team", "v1")
    with pytest.raises(release.ReleaseError, match=r"s3://.*/team holds other releases \(v1\): it is a releases "
                                                   "root; publish under a name of its own beside them"):
        _publish(build_dir, root, "team")
    assert s3.object_size(f"{root}/team/{release.RELEASE_FILE}") is None
    _publish(build_dir, f"{root}/team", "v2")

    cl.put_object(Bucket=bucket, Key=f"{prefix}/running/data/20250101T000000Z-00000000abcd/part-00000.npy".lstrip("/"),
                  Body=b"staged")
    with pytest.raises(release.ReleaseNotFoundError, match="no such release .only a publish's staged objects"):
        release.delete(f"{root}/running", stale_after_s=0)

    for command in (lambda: release.pull(root, str(tmp_path / "p")), lambda: release.verify(root)):
        with pytest.raises(release.ReleaseNotFoundError, match="holds other releases .*: name one release"):
            command()

    _publish(build_dir, root, "gone")
    real = release._check_local

    def delete_after_first(path, entry):
        real(path, entry)
        gone = f"{prefix}/gone/".lstrip("/")
        s3.delete_keys(bucket, [key for key, _ in s3.iter_keys(bucket, gone)])

    monkeypatch.setattr(release, "_check_local", delete_after_first)
    with pytest.raises(release.ReleaseNotFoundError, match="deleted while this pull ran"):
        release.pull(f"{root}/gone", str(tmp_path / "g"))
    assert not (tmp_path / "g").exists()

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(release, "_run", interrupted)
    capsys.readouterr()
    assert release.main(["list", root]) == 130 and capsys.readouterr().err == "release: interrupted\n"


def test_a_pull_into_a_mount_point_is_refused_before_downloading(build_dir, root, tmp_path, monkeypatch):
    """An empty mounted volume as DEST: the release was downloaded beside it, onto the parent's
    filesystem, then the rename failed with "another pull finished first?" (found by a tester)."""
    _publish(build_dir, root, "m")
    dest = tmp_path / "vol"
    dest.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(release.os.path, "ismount", lambda p: str(p) == str(dest) or real(p))
    downloads = []
    monkeypatch.setattr(release, "read_release", lambda uri: downloads.append(uri) or pytest.fail("read"))
    with pytest.raises(release.ReleaseError, match=r"a mount point, .*pull into a new directory inside it \(e\.g\. "
                                                   rf"{re.escape(str(dest / 'm'))}\)"):
        release.pull(f"{root}/m", str(dest))
    assert downloads == [] and list(tmp_path.iterdir()) == [dest]


def test_a_full_disk_during_pull_names_the_file_and_the_directory(build_dir, root, tmp_path, monkeypatch):
    """"release: error: [Errno 28] No space left on device" named no file or directory (a tester)."""
    import errno

    _publish(build_dir, root, "full")
    client = s3.client()

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(client, "download_file", full)
    monkeypatch.setattr(release.s3, "client", lambda: client)
    with pytest.raises(release.ReleaseError, match=r"dest: writing .* into .*\.dest\.pull-\w+ failed: No space left"):
        release.pull(f"{root}/full", str(tmp_path / "dest"))
    assert list(tmp_path.iterdir()) == []


def test_a_full_or_read_only_disk_during_pull_says_what_to_do(build_dir, root, tmp_path, monkeypatch):
    """"writing ... failed: No space left on device (nothing was kept)" said neither how much room the release
    needs nor what then (a tester)."""
    import errno

    _publish(build_dir, root, "full")
    client = s3.client()
    monkeypatch.setattr(release.s3, "client", lambda: client)
    for code, reason, said in (
            (errno.ENOSPC, "No space left on device",
             rf"free space in {re.escape(str(tmp_path))} \(the release holds [\d.]+ [kMG]B\) or pull into a larger "
             "disk, then pull again$"),
            (errno.EROFS, "Read-only file system",
             rf"make {re.escape(str(tmp_path))} writable or pull into a directory you can write, then pull again$")):
        def failing(*_args, code=code, reason=reason, **_kwargs):
            raise OSError(code, reason)

        monkeypatch.setattr(client, "download_file", failing)
        with pytest.raises(release.ReleaseError, match=rf"failed: {reason} \(nothing was kept\): {said}"):
            release.pull(f"{root}/full", str(tmp_path / "dest"))
        assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- fix-t123 (a tester's report)


@pytest.fixture
def no_delete_right():
    """A write-once publisher (Put but no Delete, the usual policy for immutable datasets): S3 answers
    DeleteObjects 200 with AccessDenied per key, DeleteObject and AbortMultipartUpload 403. Yields the
    delete requests made."""
    from botocore.awsrequest import AWSResponse

    denied: list = []

    def keys(params, model, context, **_):
        if model.name == "DeleteObjects":
            context["keys"] = [o["Key"] for o in params["Delete"]["Objects"]]

    def deny(model, context, **_):
        if model.name not in ("DeleteObjects", "DeleteObject", "AbortMultipartUpload"):
            return None
        denied.append(model.name)
        meta = {"HTTPStatusCode": 200 if model.name == "DeleteObjects" else 403}
        if model.name == "DeleteObjects":
            return AWSResponse("http://store", 200, {}, None), {
                "Errors": [{"Key": k, "Code": "AccessDenied", "Message": "Access Denied"} for k in context["keys"]],
                "ResponseMetadata": meta}
        return AWSResponse("http://store", 403, {}, None), {
            "Error": {"Code": "AccessDenied", "Message": "Access Denied"}, "ResponseMetadata": meta}

    events = s3.client().meta.events
    events.register("before-parameter-build.s3", keys)
    events.register("before-call.s3", deny)
    try:
        yield denied
    finally:
        events.unregister("before-parameter-build.s3", keys)
        events.unregister("before-call.s3", deny)


def test_a_write_once_publisher_needs_no_delete_right(small_builds, root, no_delete_right, capsys):
    """Found by a tester: the conditional-write probe was deleted after use, so a publisher without
    s3:DeleteObject got `could not delete 1 object(s) ... AccessDenied`, exit 2, and each retry left
    a probe. The probe is now kept, part of the release's data prefix; a stale leftover that cannot
    be removed is said, not fatal."""
    bucket, prefix = release.split_root(root)
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}wo/data/20200101T000000Z-0123456789ab/part-00000.npy",
                           Body=b"a failed publish's, long ago")
    assert release.main(["publish", str(small_builds[0]), root, "--name", "wo", "--stale-after-hours", "0"]) == 0
    out = capsys.readouterr().out
    assert "could not remove" in out and f"`dolmino release clean {root}/wo --older-than-hours 0`" in out
    record = release.read_release(f"{root}/wo")
    probe = f"{prefix}wo/{record['data_prefix']}{release.PROBE_FILE}"
    assert s3.object_size(s3.join_uri(bucket, probe)) is not None
    notes: list[str] = []
    assert release.verify(f"{root}/wo", log=notes.append) == []  # the probe is no stray of the release
    assert not any(release.PROBE_FILE in n for n in notes)
    assert [r["name"] for r in release.list_releases(root)[0]] == ["wo"]
    assert no_delete_right == ["DeleteObjects"]  # the stale leftover's, nothing of this publish


@pytest.mark.parametrize("stray, words", [
    ("part-0000.npy", "part-0000.npy: not written by the build"),
    ("sub/extra.npy", "sub/extra.npy: not written by the build"),
    ("part-00000.label_mask.npy", "part-00000.label_mask.npy: not written by the build"),
    ("quarantine/part-00009.npy", "quarantine/part-00009.npy: not written by the build"),
    ("extra.csv.gz", "extra.csv.gz: not written by the build"),
    ("part-backup/part-00000.npy", "part-backup/part-00000.npy: not written by the build"),
])
def test_a_file_report_json_does_not_list_is_not_released(small_builds, root, tmp_path, stray, words):
    """Found by a tester: only names like part-NNNNN were checked, so a stray token file, label mask
    or sidecar was released, which `dolmino validate` and the trainer refuse. The refusal said to
    rebuild, which never removes backup/part-00009.npy (a tester): it says to move it out."""
    build = _certified_copy(small_builds[0], tmp_path / "build")
    (build / stray).parent.mkdir(parents=True, exist_ok=True)
    (build / stray).write_bytes(b"\0" * 8)
    with pytest.raises(release.ReleaseIntegrityError, match=re.escape(words)) as info:
        release.publish(str(build), root, "stray")
    assert "move the files it did not write out of the build before publishing" in str(info.value)
    assert "rebuild" not in str(info.value)
    bucket, prefix = release.split_root(root)
    assert list(s3.iter_keys(bucket, prefix)) == []


def test_a_temp_file_in_an_s3_build_is_not_released(small_builds, root, tmp_path):
    """Found by a tester: a local build with part-NNNNN.npy.tmpNNN was refused, the same on S3 released."""
    bucket, _ = s3.split_uri(root)
    _upload_as_build(_certified_copy(small_builds[0], tmp_path / "build"), f"s3://{bucket}/b/t")
    s3.client().put_object(Bucket=bucket, Key="b/t/part-00000.npy.tmp123", Body=b"half")
    with pytest.raises(release.ReleaseError, match=r"part-00000\.npy\.tmp123: a file is still being written"):
        release.publish(f"s3://{bucket}/b/t", root, "tmp")
    assert release.list_releases(root) == ([], [])


def test_a_key_with_a_double_slash_in_an_s3_build_is_named_and_not_released(small_builds, root, tmp_path):
    """Found by a tester: an object `out//double.txt` beside an S3 build failed the publish with "file
    '/double.txt': must be relative, not absolute", naming neither the object nor what to do."""
    bucket, _ = s3.split_uri(root)
    _upload_as_build(_certified_copy(small_builds[0], tmp_path / "build"), f"s3://{bucket}/b/u1")
    s3.client().put_object(Bucket=bucket, Key="b/u1//double.txt", Body=b"notes")
    with pytest.raises(release.ReleaseError) as info:
        release.publish(f"s3://{bucket}/b/u1", root, "double")
    assert str(info.value) == (f"s3://{bucket}/b/u1//double.txt: not one of the build's files, and a name no release "
                               "can hold (an empty path segment ('//')); move it out of the build before publishing")
    assert release.list_releases(root) == ([], [])


@pytest.mark.parametrize("field, value", [("name", "not-demo"), ("seed", 7)])
def test_a_manifest_json_that_is_not_the_builds_is_not_released(small_builds, root, tmp_path, field, value):
    """Found by a tester: RELEASE.json's manifest name and seed came from manifest.json, which
    nothing checked: they come from report.json, and a manifest.json that disagrees is refused."""
    build = _certified_copy(small_builds[0], tmp_path / "build")
    report = json.loads((build / "report.json").read_text())
    (build / "report.json").write_text(json.dumps({**report, "manifest": "demo", "seed": 1124}) + "\n")
    record = release.publish(str(build), root, "ok")
    assert record["manifest"]["name"] == "demo" and record["manifest"]["seed"] == 1124
    manifest = json.loads((build / "manifest.json").read_text())
    (build / "manifest.json").write_text(json.dumps({**manifest, field: value}) + "\n")
    with pytest.raises(release.ReleaseIntegrityError, match=f"manifest.json's {field} is {value!r}, but report.json"):
        release.publish(str(build), root, "bad")
    assert [r["name"] for r in release.list_releases(root)[0]] == ["ok"]


def test_publish_refuses_a_name_prefix_holding_objects_no_publish_wrote(small_builds, root, tmp_path):
    """Found by a tester: publish into an S3 build's --out (NAME/ = the build) reported success and
    broke the build."""
    bucket, _ = s3.split_uri(root)
    files = _upload_as_build(_certified_copy(small_builds[0], tmp_path / "build"), f"s3://{bucket}/builds/A")
    with pytest.raises(release.ReleaseError, match=r"s3://.*/builds/A holds \d+ object\(s\) no publish writes "
                                                   r"\(e\.g\. [^)]+\): not a release"):
        release.publish(str(small_builds[1]), f"s3://{bucket}/builds", "A")
    assert {k for k, _ in s3.iter_keys(bucket, "builds/A/")} == {f"builds/A/{rel}" for rel in files}


@pytest.mark.parametrize("edit, words", [
    (lambda r: r["output"].update(tokens=r["output"]["tokens"] + 1),
     "output.tokens is 1,001, but its parts' tokens sum to 1,000 (and 1 more)"),
    (lambda r: r["output"].update(docs=2), "output.docs is 2, but its parts' docs sum to 1 (and 1 more)"),
    (lambda r: r["sources"][0].update(output_tokens=900), "output.tokens is 1,000, but its sources' output_tokens sum "
                                                          "to 1,100"),
    (lambda r: r["output"]["parts"][0].update(size=4004), "output.parts' part-00000.npy is 4,004 bytes but 1,000 "
                                                          "tokens (4 bytes each)"),
])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_report_whose_counts_do_not_add_up_is_not_released(small_builds, root, tmp_path, edit, words, where):
    """Found by a tester: a report.json whose output.tokens (or docs, or a source's output_tokens) was
    edited after the build was released, the files being what it certifies; the trainer plans from
    output.tokens and refused the pulled copy, and `dolmino validate` called it INVALID."""
    build = _certified_copy(small_builds[0], tmp_path / "build")
    report = json.loads((build / "report.json").read_text())
    report["output"]["parts"] = [{"name": "part-00000.npy", "size": 4000, "tokens": 1000, "docs": 1}]
    report["sources"] = [{"name": "web", "output_tokens": 800, "output_docs": 1},
                         {"name": "wiki", "output_tokens": 200, "output_docs": 0}]
    (build / "report.json").write_text(json.dumps(report) + "\n")
    bucket, prefix = release.split_root(root)
    source = str(build) if where == "local" else f"s3://{bucket}/builds/ok"
    if where == "s3":
        _upload_as_build(build, source)
    assert release.publish(source, root, "ok")["output"]["tokens"] == 1000
    edit(report)
    (build / "report.json").write_text(json.dumps(report) + "\n")
    source = str(build) if where == "local" else f"s3://{bucket}/builds/edited"
    if where == "s3":
        _upload_as_build(build, source)
    with pytest.raises(release.ReleaseIntegrityError) as info:
        release.publish(source, root, "edited")
    assert str(info.value) == (f"{source}/report.json: {words}: the report changed after the build finished "
                               "(`dolmino validate` says how); nothing was released")
    assert not [k for k, _ in s3.iter_keys(bucket, prefix) if "/edited/" in k]


@pytest.mark.parametrize("damaged", ["part-00000.npy", "part-00000.label_mask.npy"])
def test_a_truncated_file_is_refused_before_the_first_upload(small_builds, root, tmp_path, damaged):
    """Found by a tester: a damaged part was found by its digest only after every file before it
    had been uploaded; sizes report.json implies are checked first."""
    build = tmp_path / "build"
    shutil.copytree(small_builds[0], build)
    tokens = (build / "part-00000.npy").stat().st_size // 4
    (build / "part-00000.label_mask.npy").write_bytes(b"\1" * tokens)
    report = json.loads((build / "report.json").read_text())
    report["output"]["files_sha256"] = _sha256s(build)
    report["output"]["parts"] = [{"name": "part-00000.npy", "size": tokens * 4, "tokens": tokens, "docs": 1}]
    (build / "report.json").write_text(json.dumps(report) + "\n")
    with open(build / damaged, "r+b") as fh:
        fh.truncate(tokens - 1)
    calls: list = []
    events = s3.client().meta.events
    hook = _s3_calls(calls)
    events.register("before-parameter-build.s3", hook)
    try:
        with pytest.raises(release.ReleaseIntegrityError, match=f"{damaged}: {tokens - 1:,} bytes, but report.json"):
            release.publish(str(build), root, "trunc")
    finally:
        events.unregister("before-parameter-build.s3", hook)
    assert not [op for op, _ in calls if op in ("PutObject", "CreateMultipartUpload")]


def test_verifys_note_on_stray_objects_says_what_clean_does(small_builds, root):
    """Found by a tester: verify said `clean` removes every stray object once stale; it leaves those
    no publish writes alone."""
    record = release.publish(str(small_builds[0]), root, "n")
    bucket, prefix = release.split_root(root)
    cl = s3.client()
    cl.put_object(Bucket=bucket, Key=f"{prefix}n/notes.txt", Body=b"mine")
    cl.put_object(Bucket=bucket, Key=f"{prefix}n/data/20200101T000000Z-0123456789ab/x", Body=b"staged")
    notes: list[str] = []
    assert release.verify(f"{root}/n", log=notes.append) == []
    assert any("1 object(s) under" in n and "clean` removes them once stale" in n for n in notes), notes
    assert any("1 object(s) under" in n and "no publish writes" in n and "clean` leaves them alone" in n
               for n in notes), notes
    assert release.clean(f"{root}/n", older_than_s=0) == 1
    assert s3.object_size(f"s3://{bucket}/{prefix}n/notes.txt") == 4 and record["files"]


@pytest.mark.parametrize("entries, words", [
    ([".pull-owner"], "'.pull-owner' is reserved"),
    (["a", "a/b"], "'a' is listed both as a file and as a directory (of 'a/b')"),
])
def test_a_release_record_pull_cannot_write_is_refused_when_read(small_builds, root, tmp_path, entries, words):
    """Found by a tester: an entry `.pull-owner` was downloaded, then removed by pull's own clean-up
    while pull said success; entries `a` and `a/b` failed with a raw `[Errno 17] File exists`."""
    record = release.publish(str(small_builds[0]), root, "hostile")
    bucket, prefix = release.split_root(root)
    extra = [{"path": p, "size": 0, "sha256": hashlib.sha256(b"").hexdigest()} for p in entries]
    for p in entries:  # the objects are there: only the names are wrong
        s3.client().put_object(Bucket=bucket, Key=f"{prefix}hostile/{record['data_prefix']}{p}", Body=b"")
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}hostile/RELEASE.json",
                           Body=json.dumps({**record, "files": record["files"] + extra}).encode())
    with pytest.raises(release.ReleaseError, match=re.escape(words)) as info:
        release.pull(f"{root}/hostile", str(tmp_path / "dest"))
    assert len(str(info.value).splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_a_pull_into_a_long_directory_name_works(small_builds, root, tmp_path):
    """Found by a tester: a 250-character DEST failed with `[Errno 36] File name too long` naming
    the temporary directory beside it."""
    release.publish(str(small_builds[0]), root, "long")
    dest = tmp_path / ("d" * 250)
    release.pull(f"{root}/long", str(dest))
    assert (dest / "report.json").exists() and [p.name for p in tmp_path.iterdir()] == [dest.name]


def test_sigterm_says_interrupted(monkeypatch, capsys):
    """Found by a tester: SIGTERM exited 143 with no message (Ctrl-C says `release: interrupted`)."""
    import signal
    import time

    def terminated(_args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)

    monkeypatch.setattr(release, "_run", terminated)
    assert release.main(["list", "s3://some-bucket/x"]) == 143
    assert capsys.readouterr().err == "release: interrupted\n"


def test_republishing_the_same_build_says_so(small_builds, root, capsys):
    """Found by a tester: a CI retry could not tell "already released, identical" from a clash."""
    assert release.main(["publish", str(small_builds[0]), root, "--name", "same"]) == 0
    capsys.readouterr()
    assert release.main(["publish", str(small_builds[0]), root, "--name", "same"]) == 2
    assert "release already exists with the same content" in capsys.readouterr().err
    assert release.main(["publish", str(small_builds[1]), root, "--name", "same"]) == 2
    err = capsys.readouterr().err
    assert "release already exists;" in err and "same content" not in err


def test_a_read_only_publisher_is_told_which_key_was_denied(small_builds, root, capsys):
    """Found by a tester: `S3 PutObject failed: AccessDenied` named no object."""
    from botocore.awsrequest import AWSResponse

    def deny(**_):
        return AWSResponse("http://store", 403, {}, None), {
            "Error": {"Code": "AccessDenied", "Message": "Access Denied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}

    events = s3.client().meta.events
    events.register("before-call.s3.PutObject", deny)
    try:
        assert release.main(["publish", str(small_builds[0]), root, "--name", "ro"]) == 2
    finally:
        events.unregister("before-call.s3.PutObject", deny)
    assert re.match(r"release: error: s3://\S+/ro/data/\S+: S3 PutObject failed: AccessDenied", capsys.readouterr().err)


def test_list_sorts_by_name_and_says_when_it_lists_nothing(small_builds, root, capsys):
    """Found by a tester: S3 lists `NAME/` in key order, where '/' sorts after '-' and '.', so v1 came after v1-rc
    and v1.0; and `list` of a release's own URI (or an empty prefix) printed nothing with exit status 0."""
    record = release.publish(str(small_builds[0]), root, "v1")
    bucket, prefix = release.split_root(root)
    for name in ("v10", "v1.0", "v1-rc"):  # the same objects under other names: only the listing matters here
        s3.client().put_object(Bucket=bucket, Key=f"{prefix}{name}/RELEASE.json",
                               Body=json.dumps({**record, "name": name}).encode())
    assert [r["name"] for r in release.list_releases(root)[0]] == ["v1", "v1-rc", "v1.0", "v10"]
    assert release.main(["list", root]) == 0
    out = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.out.splitlines()] == ["v1", "v1-rc", "v1.0", "v10"] and not out.err
    assert release.main(["list", f"{root}/v1"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and out.err == (f"note: {root}/v1 is a release, not a releases root: `dolmino release list "
                                         f"{root}` lists it beside the others\n")
    assert release.main(["list", f"{root}-typo", "--json"]) == 0
    out = capsys.readouterr()
    assert out.out == "[]\n" and out.err == f"note: no releases under {root}-typo\n"


def test_list_one_prefix_too_high_says_where_the_releases_are(small_builds, root, capsys):
    """Found by a tester: `list` of the parent of the releases' prefix said only "no releases under ...". It
    names the sub-prefix holding releases, or how to point at one, from a bounded look one level down: the
    root's delimiter listing and the first page of keys under each sub-prefix, never a walk of the bucket."""
    release.publish(str(small_builds[0]), f"{root}/releases", "v1")
    release.publish(str(small_builds[1]), f"{root}/releases", "v2")
    bucket, prefix = release.split_root(root)
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}builds/a/report.json", Body=b"{}")
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}deep/er/v3/RELEASE.json", Body=b"{}")  # two levels down
    listings: list[dict] = []

    def record(params, **_):
        listings.append(dict(params))

    events = s3.client().meta.events
    events.register("provide-client-params.s3.ListObjectsV2", record)
    try:
        assert release.main(["list", root]) == 0
    finally:
        events.unregister("provide-client-params.s3.ListObjectsV2", record)
    out = capsys.readouterr()
    assert out.out == "" and out.err == (f"note: no releases directly under {root}; releases one level down: "
                                         f"`dolmino release list {root}/releases`\n")
    below = [p for p in listings if "Delimiter" not in p]  # the look below: one page under each sub-prefix
    assert sorted(p["Prefix"] for p in below) == [f"{prefix}{sub}/" for sub in ("builds", "deep", "releases")]
    assert all(p.get("MaxKeys") == release._FIRST_KEYS for p in below)
    assert release.main(["list", f"{root}/builds"]) == 0
    assert capsys.readouterr().err == (f"note: no releases under {root}/builds (a releases root is the prefix right "
                                       f"above NAME/{release.RELEASE_FILE}; below this one: a/)\n")
    assert release.main(["list", f"{root}/releases"]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["v1", "v2"]


def test_a_pull_into_the_current_directory_is_refused_before_downloading(small_builds, root, tmp_path, monkeypatch):
    """Found by a tester: `mkdir d && cd d && dolmino release pull ... .` said "pulled ... all SHA-256 verified",
    but the rename that finishes a pull replaced the directory: the shell was left in a deleted one, where `ls`
    and a trainer's `--data .` found nothing."""
    release.publish(str(small_builds[0]), root, "here")
    dest = tmp_path / "dest"
    dest.mkdir()
    monkeypatch.chdir(dest)
    with pytest.raises(release.ReleaseError, match=re.escape(f"{dest}: the current directory, which a finished pull "
                                                             "would replace")):
        release.pull(f"{root}/here", ".")
    assert list(tmp_path.iterdir()) == [dest] and list(dest.iterdir()) == []
    assert os.path.samefile(os.getcwd(), dest)


def test_a_pull_beside_an_unwritable_directory_says_what_to_do(small_builds, root, tmp_path, monkeypatch, capsys):
    """Found by a tester: a pull into /data/x, /data not writable, said `[Errno 13] Permission denied:
    '/data/.x.pull-411d0f7d4332'`, naming a directory the user never gave and no remedy."""
    release.publish(str(small_builds[0]), root, "ro")
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if ".pull-" in os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    dest = tmp_path / "x"
    assert release.main(["pull", f"{root}/ro", str(dest)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"release: error: {re.escape(str(dest))}: cannot create {re.escape(str(tmp_path))}/\.x\.pull-"
                        r"[0-9a-f]{12} \(Permission denied; pull downloads into a directory beside DEST, then renames "
                        r"it\): pull into a directory you can write\n", err), err
    assert list(tmp_path.iterdir()) == []


def test_verify_of_a_pulled_copy_says_how_to_check_it(small_builds, root, tmp_path, capsys):
    """Found by a tester: `dolmino release verify /data/v1` on a pulled release said only "not an s3:// URI", leaving
    a team that wanted its local copy re-checked with no way to."""
    release.publish(str(small_builds[0]), root, "local")
    release.pull(f"{root}/local", str(tmp_path / "v1"))
    assert release.main(["verify", str(tmp_path / "v1")]) == 2
    assert capsys.readouterr().err == (
        f"release: error: {tmp_path / 'v1'}: a pulled release on local disk; `dolmino release verify` re-hashes a "
        f"release on S3: `dolmino validate {tmp_path / 'v1'}` checks the parts here against the SHA-256 their "
        "report.json certifies\n")


def test_two_publishes_of_one_build_at_once_the_loser_says_same_content(small_builds, root, atomic_conditional_puts):
    """Found by a tester: two runs of one CI job publishing the same build at once: the loser was told "another
    publish of this name committed first ... Publish under another name", as for a clash, while a publish after
    the first says the release exists with the same content."""
    import threading

    barrier = threading.Barrier(2, timeout=60)

    def at_commit(params, model, **_):  # both at the conditional write, so that they race for real
        if model.name == "PutObject" and params["Key"].endswith("/twice/RELEASE.json"):
            barrier.wait()

    winners, losers = _publish_twice_at_once([small_builds[0], small_builds[0]], root, "twice", at_commit)
    assert len(winners) == 1 and len(losers) == 1 and isinstance(losers[0], release.ReleaseExistsError), losers
    assert str(losers[0]) == (
        f"{root}/twice: another publish of this name committed the same content first (publish id "
        f"{winners[0]['publish_id']} by {winners[0]['published_by']}; every file's size and SHA-256 match this "
        f"build); this publish's {len(winners[0]['files']) + 1} uploaded object(s) were removed again: nothing to "
        "publish")
    bucket, prefix = release.split_root(root)
    assert {k for k, _ in s3.iter_keys(bucket, f"{prefix}twice/")} == {f"{prefix}twice/RELEASE.json"} | {
        f"{prefix}twice/{winners[0]['data_prefix']}{p}" for p in [e["path"] for e in winners[0]["files"]]
        + [release.PROBE_FILE]}


def test_list_and_the_loser_of_a_race_say_who_published_and_how_many_tokens(small_builds, root, capsys,
                                                                           atomic_conditional_puts, monkeypatch):
    """Found by a tester: `list` gave a team lead files and bytes but not the tokens or documents RELEASE.json
    holds, nor who published (RELEASE.json recorded no one), and the loser of a race was told only a publish id."""
    import getpass
    import socket
    import threading

    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    barrier = threading.Barrier(2, timeout=60)

    def at_commit(params, model, **_):  # both at the conditional write, so that they race for real
        if model.name == "PutObject" and params["Key"].endswith("/who/RELEASE.json"):
            barrier.wait()

    winners, losers = _publish_twice_at_once(small_builds, root, "who", at_commit)
    assert len(winners) == 1 and len(losers) == 1, losers
    by = f"alice@{socket.gethostname()}"
    assert winners[0]["published_by"] == by
    assert f"publish id {winners[0]['publish_id']}, created {winners[0]['created']} by {by});" in str(losers[0])
    # A release whose record lacks them (an older publish, or another tool's) still lists, with '?'.
    bucket, prefix = release.split_root(root)
    old = {k: v for k, v in winners[0].items() if k not in ("published_by", "output")}
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}older/RELEASE.json",
                           Body=json.dumps({**old, "name": "older", "total_bytes": None}).encode())
    assert release.main(["list", root]) == 0
    tokens, n = winners[0]["output"]["tokens"], len(winners[0]["files"])
    assert capsys.readouterr().out.splitlines() == [
        f"older\t{winners[0]['created']}\t{n} files\t? bytes\t? tokens\t? docs\tmanifest=demo seed=1124\tby=?",
        f"who\t{winners[0]['created']}\t{n} files\t{winners[0]['total_bytes']:,} bytes\t{tokens:,} tokens\t1 docs"
        f"\tmanifest=demo seed=1124\tby={by}"]


@pytest.mark.parametrize("damage", ["flip_byte", "delete"])
def test_a_pull_of_a_damaged_release_says_nothing_was_kept_and_what_to_run(small_builds, root, tmp_path, capsys,
                                                                           damage):
    """Found by a tester: `release: error: part-00000.npy: SHA-256 ... does not match RELEASE.json (...)` named
    neither the release nor DEST, said nothing of what was kept, nor what to do."""
    record = release.publish(str(small_builds[0]), root, "bad")
    bucket, prefix = release.split_root(root)
    key = f"{prefix}bad/{record['data_prefix']}part-00000.npy"
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    if damage == "flip_byte":
        s3.client().put_object(Bucket=bucket, Key=key, Body=bytes([body[0] ^ 1]) + body[1:])
    else:
        s3.client().delete_object(Bucket=bucket, Key=key)
    dest = tmp_path / "dest"
    assert release.main(["pull", f"{root}/bad", str(dest)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("release: error: part-00000.npy: "), err
    assert err.endswith({
        "flip_byte": f": the release is damaged, or this download was; nothing was kept at {dest} (`dolmino release "
                     f"verify {root}/bad` tells which, re-hashing every object in place)\n",
        "delete": f"; the release is damaged; nothing was kept at {dest}\n"}[damage]), err
    assert list(tmp_path.iterdir()) == []


def test_a_build_holding_a_release_record_below_its_top_is_not_released(small_builds, root, tmp_path):
    """Found by a tester: a build with a pulled release's RELEASE.json in a subdirectory (old/RELEASE.json) was
    published, and then `delete` and `clean` of it were refused: "holds other releases (data/<id>/old)"."""
    build = tmp_path / "build"
    shutil.copytree(small_builds[0], build)
    (build / "old").mkdir()
    (build / "old" / "RELEASE.json").write_text("{}\n")
    with pytest.raises(release.ReleaseError, match=re.escape(
            f"{build}/old/RELEASE.json: a release's commit record inside the build (a pulled release copied into "
            "it?), which would make the release read as a releases root that delete and clean refuse; move it out "
            "of the build before publishing")):
        release.publish(str(build), root, "nested")
    bucket, prefix = release.split_root(root)
    assert list(s3.iter_keys(bucket, prefix)) == []


def test_a_pull_into_a_directory_holding_a_release_says_which(small_builds, root, tmp_path):
    """Found by a tester: a node's pull script run twice was told "already exists; pull into a new directory",
    the same words as for a directory holding another release, sending it to download the release again."""
    record = release.publish(str(small_builds[0]), root, "same")
    release.publish(str(small_builds[1]), root, "other")
    dest = tmp_path / "same"
    release.pull(f"{root}/same", str(dest))
    with pytest.raises(release.ReleaseExistsError, match=re.escape(
            f"{dest}: already holds this release (publish id {record['publish_id']}, pulled before): nothing to "
            f"pull; `dolmino validate {dest}` re-checks its parts")):
        release.pull(f"{root}/same", str(dest))
    with pytest.raises(release.ReleaseError, match=re.escape(
            f"{dest}: already exists (holding release 'same', publish id {record['publish_id']}); pull into a new "
            "directory")):
        release.pull(f"{root}/other", str(dest))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]


def test_a_pull_into_a_damaged_copy_of_the_release_names_what_it_lacks(small_builds, root, tmp_path):
    """Found by a tester: a pulled copy whose report.json was removed (or edited) since was "already holds this
    release ... nothing to pull", while validate and the trainer refused it: a copy lacking files, or holding
    some of other sizes, is named as damaged (exit 1), and pulling it again is said to need a new directory."""
    record = release.publish(str(small_builds[0]), root, "damaged")
    dest = tmp_path / "damaged"
    release.pull(f"{root}/damaged", str(dest))
    (dest / "report.json").unlink()
    with pytest.raises(release.ReleaseIntegrityError, match=re.escape(
            f"{dest}: holds this release's RELEASE.json (publish id {record['publish_id']}), but since the pull "
            f"report.json is missing: remove {dest} and pull again, or pull into a new directory")):
        release.pull(f"{root}/damaged", str(dest))
    (dest / "manifest.json").write_text((dest / "manifest.json").read_text() + "\n")
    with pytest.raises(release.ReleaseIntegrityError, match=re.escape(
            "but since the pull manifest.json is ") + r"[0-9,]+ bytes, not [0-9,]+ \(and 1 more file\(s\) missing or "
            r"of other sizes\): "):
        release.pull(f"{root}/damaged", str(dest))


def test_clean_says_how_to_remove_fresh_leftovers_when_no_publish_runs(small_builds, root):
    """Found by a tester: after a publish was killed with kill -9, `clean` (and the next publish) said only that the
    fresh leftovers were left alone as another publish may still be running; their owner knew none was, and was
    not told how to remove them."""
    bucket, prefix = release.split_root(root)
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}k/data/{release.new_publish_id()}/part-00000.npy", Body=b"x")
    notes: list[str] = []
    assert release.clean(f"{root}/k", log=notes.append) == 0
    assert notes[0] == (f"{root}/k: note: left 1 staged upload(s) alone: they changed in the last 24 h, so another "
                        f"publish may still be running (if none is, `dolmino release clean {root}/k --older-than-hours "
                        "0` removes them now)"), notes
    assert release.clean(f"{root}/k", older_than_s=0) == 1
