"""Document IO: every line becomes a document or a quarantine record with a reason."""

from __future__ import annotations

import gzip
import json
import random

import pytest
import zstandard

from conftest import shared_corpus_file
from dolmino.documents import (
    DocumentFormatError, Quarantine, read_documents, write_documents, write_quarantine,
)


def _lines_file(tmp_path, name, lines: list[bytes]):
    raw = b"\n".join(lines) + b"\n"
    path = tmp_path / name
    if name.endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    elif name.endswith(".gz"):
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return str(path)


BAD_LINES = [
    json.dumps({"id": "a", "text": "good one", "source": "t"}).encode(),
    b'{"id": "b", "text": "truncated',
    b"\xff\xfe not utf-8 \x80",
    json.dumps({"id": "c", "source": "t"}).encode(),
    json.dumps(["a", "list"]).encode(),
    json.dumps({"id": "d", "text": 5}).encode(),
    json.dumps({"text": "no id"}).encode(),
    b'{"id": "e", "text": "lone surrogate \\ud800 here"}',
    json.dumps({"id": "f", "text": "", "metadata": {"k": 1}}).encode(),
    json.dumps({"id": 7, "text": "numeric id is fine"}).encode(),
    b"",
    json.dumps({"id": "g", "text": "bad meta", "metadata": [1]}).encode(),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_bad_lines_are_quarantined_with_reasons(tmp_path, suffix):
    path = _lines_file(tmp_path, "in" + suffix, BAD_LINES)
    q = Quarantine()
    docs = list(read_documents(path, q))
    assert [d["id"] for _, d in docs] == ["a", "f", "7"]
    assert [line for line, _ in docs] == [1, 9, 10]
    assert dict(q.counts) == {"malformed_json": 1, "invalid_utf8": 2, "missing_text": 1, "not_an_object": 1,
                              "bad_text": 1, "bad_id": 1, "bad_metadata": 1}
    # in = kept + quarantined (the blank line is not a document)
    assert len(docs) + q.total == len([line for line in BAD_LINES if line])
    out = tmp_path / "q.jsonl.gz"
    write_quarantine(str(out), q.records)
    rows = [json.loads(line) for line in gzip.open(out, "rt")]
    assert {r["reason"] for r in rows} == set(q.counts)
    assert all(r["path"] == path and r["line"] > 0 for r in rows)
    binary = next(r for r in rows if r["line"] == 3)
    assert "raw_base64" in binary  # non-UTF-8 bytes are kept losslessly


def test_truncated_zstd_stream_is_quarantined_not_crashing(tmp_path):
    rng = random.Random(0)
    good = b"".join(json.dumps({"id": str(i), "text": "%032x" % rng.getrandbits(128)}).encode() + b"\n"
                    for i in range(2000))
    # Streamed in blocks, as writers of large files do, so a cut keeps the blocks before it.
    cobj = zstandard.ZstdCompressor().compressobj()
    blob = b"".join(cobj.compress(good[i:i + 8192]) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                    for i in range(0, len(good), 8192)) + cobj.flush()
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(blob[: len(blob) // 2])
    q = Quarantine()
    docs = list(read_documents(str(path), q))
    assert 0 < len(docs) < 2000
    assert q.counts["corrupt_stream"] == 1


def test_unknown_suffix_is_a_clear_error(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DocumentFormatError, match="unknown document file suffix"):
        list(read_documents(str(path), Quarantine()))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_roundtrip_real_corpus(tmp_path, suffix):
    src = shared_corpus_file("academic.jsonl.zst")
    q = Quarantine()
    docs = [d for _, d in read_documents(str(src), q)]
    assert q.total == 0 and len(docs) == 225
    out = str(tmp_path / ("out" + suffix))
    assert write_documents(out, docs) == len(docs)
    again = [d for _, d in read_documents(out, Quarantine())]
    assert again == docs


def test_writes_are_deterministic(tmp_path):
    docs = [{"id": str(i), "text": f"doc {i} é", "source": "s"} for i in range(100)]
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_documents(str(a), docs)
    write_documents(str(b), docs)
    assert a.read_bytes() == b.read_bytes()
