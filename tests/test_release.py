"""Releases on a real S3 protocol server (moto on loopback): publish, list, pull, verify, delete.

The built mix here is made the way a build makes one (MemmapPartWriter, report, manifest
copy, quarantine file) from real text tokenized with dolma2, plus one part large enough
(> 5 MiB) to go through multipart upload and ranged download.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    report = {"manifest": manifest["name"], "seed": manifest["seed"],
              "output": {"tokens": small_stats.tokens + big_stats.tokens,
                         "docs": small_stats.docs + big_stats.docs, "files": 2}}
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


def _s3_calls(record: list):
    """Record (operation, key) of every S3 call the cached client makes (botocore event hook)."""
    def hook(params, model, **_):
        record.append((model.name, params.get("Key")))
    return hook


def test_publish_list_pull_verify_round_trip(build_dir, root, tmp_path):
    calls: list = []
    events = s3.client().meta.events
    hook = _s3_calls(calls)
    events.register("before-parameter-build.s3", hook)
    try:
        record = _publish(build_dir, root, "olmo2-demo-v1")
    finally:
        events.unregister("before-parameter-build.s3", hook)

    local = _files(build_dir)
    assert {f["path"] for f in record["files"]} == set(local)
    for entry in record["files"]:
        assert entry["size"] == len(local[entry["path"]])
        assert entry["sha256"] == hashlib.sha256(local[entry["path"]]).hexdigest()
    assert record["manifest"]["name"] == "demo" and record["manifest"]["seed"] == 1124
    assert record["dolmino_version"] and record["created"].endswith("Z")

    # RELEASE.json is the last write, after every data object (the big part went multipart).
    writes = [(op, key) for op, key in calls if op in ("PutObject", "CreateMultipartUpload",
                                                         "UploadPart", "CompleteMultipartUpload")]
    assert writes[-1] == ("PutObject", "mixes/olmo2/olmo2-demo-v1/RELEASE.json")
    assert sum(1 for op, key in writes if key == "mixes/olmo2/olmo2-demo-v1/RELEASE.json") == 1
    assert ("CompleteMultipartUpload", "mixes/olmo2/olmo2-demo-v1/part-00001.npy") in writes

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

    assert release.verify(f"{root}/olmo2-demo-v1") == []


def test_published_release_is_immutable(build_dir, root):
    _publish(build_dir, root, "v1")
    bucket, _ = s3.split_uri(root)
    before = sorted(s3.iter_keys(bucket, "mixes/olmo2/v1/"))
    with pytest.raises(release.ReleaseExistsError, match="already exists; releases are immutable"):
        _publish(build_dir, root, "v1")
    assert sorted(s3.iter_keys(bucket, "mixes/olmo2/v1/")) == before


def test_interrupted_publish_is_invisible_then_cleaned_up(build_dir, root, tmp_path, capsys):
    bucket, _ = s3.split_uri(root)
    uploads = []

    def fail_on_third_upload(params, model, **_):
        if model.name in ("PutObject", "CreateMultipartUpload"):
            uploads.append(params["Key"])
            if len(uploads) == 3:
                raise ConnectionError("simulated crash half-way through a publish")

    events = s3.client().meta.events
    events.register("before-parameter-build.s3", fail_on_third_upload)
    try:
        with pytest.raises(ConnectionError):
            _publish(build_dir, root, "v2")
    finally:
        events.unregister("before-parameter-build.s3", fail_on_third_upload)
    leftovers = [k for k, _ in s3.iter_keys(bucket, "mixes/olmo2/v2/")]
    assert leftovers and "mixes/olmo2/v2/RELEASE.json" not in leftovers

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

    # A stale leftover that the new build does not contain must not end up in the release.
    s3.client().put_object(Bucket=bucket, Key="mixes/olmo2/v2/part-09999.npy", Body=b"stale")
    messages = []
    _publish(build_dir, root, "v2", log=messages.append)
    assert any("left by an interrupted publish" in m for m in messages)
    assert release.verify(f"{root}/v2") == []  # also fails on objects RELEASE.json does not list
    assert "mixes/olmo2/v2/part-09999.npy" not in [k for k, _ in s3.iter_keys(bucket, "mixes/olmo2/v2/")]


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete"])
def test_tampered_object_fails_pull_and_verify(build_dir, root, tmp_path, damage):
    _publish(build_dir, root, "v3")
    bucket, _ = s3.split_uri(root)
    key = "mixes/olmo2/v3/part-00000.csv.gz"
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
    with pytest.raises(Exception, match="part-00000.csv.gz|404|Not Found") as info:
        release.pull(f"{root}/v3", str(dest))
    if damage != "delete":
        assert isinstance(info.value, release.ReleaseIntegrityError)
        assert ("SHA-256" if damage == "flip_byte" else "size") in str(info.value)
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
    os.remove(partial / "report.json")
    with pytest.raises(release.ReleaseError, match="not a finished build .missing report.json"):
        release.publish(str(partial), root, "v6")
    assert release.list_releases(root) == ([], [])


def test_delete_removes_commit_record_and_objects(build_dir, root):
    _publish(build_dir, root, "v7")
    bucket, _ = s3.split_uri(root)
    assert release.delete(f"{root}/v7") == len(_files(build_dir)) + 1
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
