"""A build that reads its sources from s3:// gives byte-identical memmaps to the same build on disk.

Sidecar `loc` values are relative to the manifest's data_root, so where the data lives must
not show up in the output. The executors (Spark Python workers) do the S3 reads themselves.
"""

from __future__ import annotations

import gzip
import json
import uuid

import pytest
import zstandard

from conftest import shared_corpus_file
from dolmino import s3
from dolmino.build.mix import build
from dolmino.documents import Quarantine, read_documents, write_documents
from dolmino.manifest import manifest_from_dict

BUDGET = 80_000
SPLIT_BYTES = 6_000  # plain .jsonl files larger than this are read as byte ranges
SOURCES = {"web": ("web.jsonl.zst", 60, 60.0), "code": ("code.jsonl.zst", 80, 40.0)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, s3_server):
    """The same real-text files on disk and in a bucket (one with broken lines)."""
    local = tmp_path_factory.mktemp("sources")
    for name, (fname, n, _) in SOURCES.items():
        docs = []
        for _, doc in read_documents(str(shared_corpus_file(fname)), Quarantine()):
            docs.append(doc)
            if len(docs) == n:
                break
        if name == "web":  # a near-duplicate across the two files: MinHash clusters (attributes on S3) have work
            docs.append({**docs[0], "id": "near-copy-of-0", "text": docs[0]["text"] + " Shared on the web."})
        write_documents(str(local / name / "part-0.jsonl.zst"), docs[: n // 2])
        write_documents(str(local / name / "sub" / "part-1.jsonl.gz"), docs[n // 2:])
    # A plain .jsonl that the builds below split into byte ranges (ranged GETs on S3).
    plain = []
    for _, doc in read_documents(str(shared_corpus_file("academic.jsonl.zst")), Quarantine()):
        plain.append({**doc, "id": f"plain-{len(plain)}"})
        if len(plain) == 12:
            break
    write_documents(str(local / "code" / "part-2.jsonl"), plain)
    assert (local / "code" / "part-2.jsonl").stat().st_size > 4 * SPLIT_BYTES
    broken = [json.dumps({"id": "ok", "text": "A fine short line of web text.", "source": "web"}).encode(),
              b'{"id": "cut", "text": "no end', b"\xff\xfe\xfd"]
    (local / "web" / "part-2.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(broken) + b"\n"))

    bucket = f"src-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            s3.client().upload_file(str(path), bucket, f"root/{path.relative_to(local).as_posix()}")
    return str(local), f"s3://{bucket}/root"


def _manifest(data_root: str) -> dict:
    return {
        "name": "s3-parity", "version": 1, "seed": 11, "budget": BUDGET, "data_root": data_root,
        "output_format": {"tokens_per_file": "40K"},
        "sources": [{"name": name, "paths": [f"{name}/**/*.jsonl*"], "mix_percent": pct,
                     **({"dedup": {"minhash": {"num_perm": 64, "threshold": 0.8}}} if name == "web" else {})}
                    for name, (_, _, pct) in SOURCES.items()],
    }


def _outputs(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.startswith("part-")}


@pytest.mark.slow
def test_build_from_s3_is_byte_identical_to_local(inputs, spark_with_s3, tmp_path):
    local_root, s3_root = inputs
    local_out, s3_out = tmp_path / "local", tmp_path / "s3"
    local_report = build(manifest_from_dict(_manifest(local_root)), BUDGET, str(local_out), spark_with_s3,
                         split_bytes=SPLIT_BYTES)
    # Attributes on S3 too: the pool stage reads them there. And the tokenizer: only the driver
    # reads its JSON, which reaches the executors in a broadcast.
    from dolmino.assets import dolma2_tokenizer_path

    bucket, key = s3.split_uri(f"{s3_root}-tokenizer/tokenizer.json")
    s3.client().put_object(Bucket=bucket, Key=key, Body=dolma2_tokenizer_path().read_bytes())
    s3_manifest = {**_manifest(s3_root), "tokenizer": {"path": f"{s3_root}-tokenizer/tokenizer.json"}}
    s3_report = build(manifest_from_dict(s3_manifest), BUDGET, str(s3_out), spark_with_s3,
                      attributes=f"{s3_root}-attributes", split_bytes=SPLIT_BYTES)

    local_parts, s3_parts = _outputs(local_out), _outputs(s3_out)
    assert len([n for n in local_parts if n.endswith(".npy")]) >= 2
    assert local_parts == s3_parts  # memmaps and sidecars, byte for byte
    for a, b in zip(local_report["sources"], s3_report["sources"]):
        assert {k: v for k, v in a.items() if k != "files"} == {k: v for k, v in b.items() if k != "files"}
    # The plain .jsonl was read as byte ranges (ranged GETs on S3), its documents named by
    # their line in the whole file.
    assert s3_report["run"]["stages"]["tag"]["units"] > 6 == sum(s["files"] for s in s3_report["sources"])
    rows = [r.split(",") for name, data in s3_parts.items() if name.endswith(".csv.gz")
            for r in gzip.decompress(data).decode().splitlines()]
    plain = [(doc_id, loc) for _start, _end, doc_id, _src, loc in rows if doc_id.startswith("plain-")]
    assert plain and all(loc == f"code/part-2.jsonl:{int(doc_id.split('-')[1]) + 1}" for doc_id, loc in plain)
    web = next(s for s in s3_report["sources"] if s["name"] == "web")
    assert web["quarantined"] == {"invalid_utf8": 1, "malformed_json": 1}
    # Near-duplicate clusters computed and stored under an S3 attributes root (its record of
    # done units is read back on the next run, missing on this first one).
    assert web["removed"]["near_duplicate"]["docs"] == 1 and web["minhash"]["duplicate_clusters"] == 1
    assert "minhash:web" in s3_report["run"]["stages"]
    assert web["files"] == 3
    quarantined = list((s3_out / "quarantine" / "web").rglob("*.jsonl.gz"))
    assert [q.relative_to(s3_out / "quarantine" / "web").as_posix() for q in quarantined] == [
        "web/part-2.jsonl.zst.jsonl.gz"]  # the input's own path

    # Small S3 objects were fetched ahead (dolmino.prefetch), local files never are; with
    # --read-ahead 0 every object is opened in turn, and the output is the same.
    assert local_report["run"]["stages"]["tag"]["fetched_ahead"] == 0
    assert s3_report["run"]["stages"]["tag"]["fetched_ahead"] == 5  # both zst and gz, the broken one too
    assert s3_report["run"]["stages"]["tokenize"]["fetched_ahead"] > 0
    # The pool stage fetched every attribute file it read ahead: every Parquet file of the root.
    bucket, prefix = s3.split_uri(f"{s3_root}-attributes/")
    parquet = [key for key, _ in s3.iter_keys(bucket, prefix) if key.endswith(".parquet")]
    assert s3_report["run"]["stages"]["pool"]["fetched_ahead"] == len(parquet) > 0
    remix = build(manifest_from_dict(s3_manifest), BUDGET, str(tmp_path / "s3-remix"), spark_with_s3,
                  attributes=f"{s3_root}-attributes", split_bytes=SPLIT_BYTES)
    assert "minhash:web" not in remix["run"]["stages"]  # the clusters stored on S3 were reused
    assert _outputs(tmp_path / "s3-remix") == s3_parts
    one_at_a_time = tmp_path / "s3-no-read-ahead"
    report = build(manifest_from_dict(_manifest(s3_root)), BUDGET, str(one_at_a_time), spark_with_s3,
                   attributes=f"{s3_root}-attributes-no-read-ahead", read_ahead=0, split_bytes=SPLIT_BYTES)
    assert _outputs(one_at_a_time) == s3_parts
    assert report["run"]["stages"]["tag"]["fetched_ahead"] == 0
    assert report["run"]["stages"]["tokenize"]["fetched_ahead"] == 0
    assert report["run"]["stages"]["pool"]["fetched_ahead"] == 0


def test_build_with_missing_s3_source_fails_clearly(inputs, spark_with_s3, tmp_path):
    _, s3_root = inputs
    data = _manifest(s3_root)
    data["sources"][0]["paths"] = ["nothing-here/*.jsonl.zst"]
    from dolmino.errors import BuildError

    with pytest.raises(BuildError, match="no input files match 's3://.*/root/nothing-here/\\*.jsonl.zst'"):
        build(manifest_from_dict(data), BUDGET, str(tmp_path / "out"), spark_with_s3)


def test_an_s3_object_without_its_listed_size_stops_the_read(inputs, s3_server):
    """An S3 body that ends early with a matching Content-Length (a proxy, an object replaced
    after the listing) read as a broken file: a tester's build lost half a source's documents
    as one `corrupt_stream` line and stored that as the file's attributes. The tag and write
    phases' reads (fetched ahead, streamed, and a ranged read of a plain file's last range)
    now compare the bytes with the listed size and raise InputChangedError naming the object."""
    from dolmino.build.inputs import InputFile, Unit
    from dolmino.build.read import read_lines, read_unit
    from dolmino.errors import InputChangedError

    _, root = inputs
    for rel in ("web/part-0.jsonl.zst", "code/part-2.jsonl"):
        uri = f"{root}/{rel}"
        data = s3.get_bytes(uri)
        for listed in (len(data) + 7, len(data) - 7):
            f = InputFile("web", uri, rel, listed, "etag")
            units = [Unit(0, 0, f)]
            if rel.endswith(".jsonl"):
                units.append(Unit(1, 0, f, listed // 2, listed))  # the last byte range of the file
            for unit in units:
                for fetched in (None, data):
                    with pytest.raises(InputChangedError, match=f"{uri}: .* bytes where the listing found "
                                                                f"{listed:,}"):
                        list(read_unit(uri, unit, Quarantine(), data=None if unit.is_range else fetched))
                    with pytest.raises(InputChangedError):
                        list(read_lines(uri, unit, [10 ** 6], data=None if unit.is_range else fetched))
        good = Unit(0, 0, InputFile("web", uri, rel, len(data), "etag"))
        assert list(read_unit(uri, good, Quarantine())) == list(read_unit(uri, good, Quarantine(), data=data))


def test_an_input_whose_body_is_cut_off_every_time_fails_naming_it(inputs, s3_server, monkeypatch):
    """A body cut off on every GET (a fault-injecting proxy's half-sent responses) ended a build with "in an
    executor: OSError: smart_open.s3._SeekableReader('bucket', 'key'): failed to read 131072 bytes after 5
    attempts": no s3:// URI, and not why (found by a tester). The tag and write phases' reads now name the
    object and the cut."""
    import smart_open.s3
    from botocore.exceptions import ResponseStreamingError

    from dolmino.build.inputs import InputFile, Unit
    from dolmino.build.read import read_lines, read_unit

    _, root = inputs
    rel = "web/part-0.jsonl.zst"
    uri = f"{root}/{rel}"
    size = len(s3.get_bytes(uri))

    class CutOff:
        def read(self, *_):
            raise ResponseStreamingError(error="IncompleteRead(0 bytes read, more expected)")

        def close(self):
            pass

    def cut_off(parsed, model, **_):
        if model.name == "GetObject" and "Body" in parsed:
            parsed["Body"] = CutOff()

    class NoSleep:  # smart_open sleeps 1 + 2 + 4 + 8 + 16 s between its re-reads
        @staticmethod
        def sleep(_seconds):
            pass

    monkeypatch.setattr(smart_open.s3, "time", NoSleep)
    unit = Unit(0, 0, InputFile("web", uri, rel, size, "etag"))
    events = s3.client().meta.events
    events.register("after-call.s3.GetObject", cut_off)
    try:
        for read in (lambda: read_unit(uri, unit, Quarantine()), lambda: read_lines(uri, unit, [1])):
            with pytest.raises(s3.S3ObjectError) as info:
                list(read())
            assert str(info.value) == f"{uri}: the S3 response was cut off mid-body on each of 5 reads"
    finally:
        events.unregister("after-call.s3.GetObject", cut_off)
