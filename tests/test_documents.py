"""Document IO: every line becomes a document or a quarantine record with a reason."""

from __future__ import annotations

import gzip
import itertools
import json
import random
import zlib
from pathlib import Path
from collections import Counter

import pytest
import zstandard

from conftest import shared_corpus_file
from dolmino.documents import (
    DEFAULT_MAX_DOC_BYTES, MAX_QUARANTINED_BYTES, QUARANTINE_REASONS, DocumentFormatError, DuplicateIds,
    Quarantine, parse_line, read_documents, write_documents, write_quarantine,
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


def test_an_unknown_suffix_names_every_suffix_that_is_read(tmp_path):
    """A .jsonl.bz2 was refused "expected .jsonl, .jsonl.gz or .jsonl.zst", as if the .json.gz and .ndjson
    files read beside it were wrong too (found by a tester): the refusal names what the readers take."""
    path = tmp_path / "docs.jsonl.bz2"
    path.write_bytes(b"BZh9")
    with pytest.raises(DocumentFormatError) as info:
        list(read_documents(str(path), Quarantine()))
    assert str(info.value).endswith("unknown document file suffix (documents end in .jsonl, .json or .ndjson, "
                                    "plain or with .gz, .zst or .zstd)")
    for name in ("a.json.gz", "a.ndjson", "a.jsonl.zstd"):  # each of them is read
        write_documents(str(tmp_path / name), [{"id": "1", "text": "x"}])
        assert [doc["id"] for _, doc in read_documents(str(tmp_path / name), Quarantine())] == ["1"]


@pytest.mark.parametrize("name", ["part.JSONL", "part.jsonl.GZ", "part.JSONL.ZST", "part.ndjson.Zstd"])
def test_every_name_the_listing_takes_is_read_and_written(tmp_path, name):
    """inputs.readable_by_name lowers the name; the reader did not, so part.JSONL.ZST was listed,
    then failed in the executors (found by a tester, for Posts.XML)."""
    from dolmino.build.inputs import readable_by_name

    docs = [{"id": f"d{i}", "text": f"text {i}"} for i in range(3)]
    path = str(tmp_path / name)
    assert readable_by_name(path, "dolma")
    assert write_documents(path, docs) == 3
    lowered = tmp_path / name.lower()
    write_documents(str(lowered), docs)
    assert Path(path).read_bytes() == lowered.read_bytes()  # compressed as its lower-case name says
    assert [d for _, d in read_documents(path, Quarantine())] == docs


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


# ---------------------------------------------------------------- broken compressed streams


def _doc_lines(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [json.dumps({"id": str(i), "text": "%032x " % rng.getrandbits(128) * rng.randint(1, 40)}).encode()
            for i in range(n)]


def _oracle_docs(decoded: bytes) -> list[str]:
    """Ids a reader must keep from this decoded prefix: every complete line, and the cut last
    line only if it happens to be a whole document."""
    lines = decoded.split(b"\n")
    tail = lines.pop()
    ids = [json.loads(line)["id"] for line in lines if line]
    try:
        ids.append(json.loads(tail)["id"])
    except ValueError:
        pass
    return ids


def _read(path) -> tuple[list[str], Quarantine]:
    q = Quarantine()
    return [d["id"] for _, d in read_documents(str(path), q)], q


@pytest.mark.parametrize("junk", [b"junk" * 100, b"\x1f\x8b\x08garbage", b"\x1f", b"x"])
def test_gzip_trailing_garbage_keeps_every_document(tmp_path, junk):
    """Issue 13.1: 300 intact documents then junk (zcat: "trailing garbage ignored")."""
    lines = _doc_lines(300)
    path = tmp_path / "trailing.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n") + junk)
    ids, q = _read(path)
    assert ids == [str(i) for i in range(300)]
    assert dict(q.counts) == {"corrupt_stream": 1}
    assert q.unreadable_bytes == len(junk) and q.records[0].unreadable_bytes == len(junk)
    assert q.records[0].line == 301
    row = json.loads(q.records[0].to_json())
    assert row["unreadable_bytes"] == len(junk) and f"{len(junk):,} byte(s) unreadable" in row["detail"]


def test_garbage_after_several_mebibytes_loses_nothing(tmp_path):
    """The old reader lost the last partial 1 MiB read on an error (89 of 300 documents)."""
    lines = _doc_lines(5000, seed=1)
    raw = b"\n".join(lines) + b"\n"
    assert len(raw) > 3 * (1 << 20)
    for name, blob in (("big.jsonl.gz", gzip.compress(raw)), ("big.jsonl.zst", zstandard.ZstdCompressor().compress(raw))):
        path = tmp_path / name
        path.write_bytes(blob + b"\x00garbage after the stream")
        ids, q = _read(path)
        assert len(ids) == 5000 and dict(q.counts) == {"corrupt_stream": 1}
        # gzip skips the zero byte as padding; for zstd it is already garbage
        assert q.unreadable_bytes == (25 if name.endswith(".zst") else 24)


def test_multi_member_gzip_and_zero_padding(tmp_path):
    lines = _doc_lines(90, seed=2)
    members = [gzip.compress(b"\n".join(lines[i:i + 30]) + b"\n") for i in (0, 30, 60)]
    path = tmp_path / "members.jsonl.gz"
    path.write_bytes(b"".join(members) + b"\0" * 512)  # tape-style zero padding is not garbage
    ids, q = _read(path)
    assert ids == [str(i) for i in range(90)] and q.total == 0
    # Garbage between members: the members before it are kept, everything after is unreadable.
    path.write_bytes(members[0] + members[1] + b"JUNK" + members[2])
    ids, q = _read(path)
    assert ids == [str(i) for i in range(60)]
    assert q.unreadable_bytes == 4 + len(members[2])
    # The last document may lack its newline before the garbage: it is whole, so it is kept.
    path.write_bytes(gzip.compress(b"\n".join(lines[:5])) + b"JUNK")
    ids, q = _read(path)
    assert ids == [str(i) for i in range(5)] and q.records[0].line == 6


def _zstd_blocks(lines: list[bytes]) -> tuple[bytes, list[int]]:
    """A single-frame zstd stream flushed after every 5 lines, and the offsets where blocks start."""
    cobj = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    blob, starts = b"", []
    for i in range(0, len(lines), 5):
        chunk = cobj.compress(b"\n".join(lines[i:i + 5]) + b"\n") + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        header = 6 if not blob else 0
        starts.append(len(blob) + header)
        blob += chunk
    blob += cobj.flush()
    return blob, starts


@pytest.mark.parametrize("fmt", ["gz", "zst"])
def test_every_truncation_keeps_all_decodable_documents(tmp_path, fmt):
    """Cut the file at every offset: the reader keeps exactly what a one-shot decoder can decode."""
    lines = _doc_lines(40, seed=3)
    raw = b"\n".join(lines) + b"\n"
    blob = gzip.compress(raw) if fmt == "gz" else _zstd_blocks(lines)[0]
    path = tmp_path / f"cut.jsonl.{fmt}"
    previous = 0
    for cut in range(0, len(blob) + 1, max(1, len(blob) // 400)):
        path.write_bytes(blob[:cut])
        if fmt == "gz":
            decoded = zlib.decompressobj(31).decompress(blob[:cut])
        else:
            decoded = zstandard.ZstdDecompressor().decompressobj().decompress(blob[:cut]) if cut else b""
        ids, q = _read(path)
        assert ids == _oracle_docs(decoded), cut
        assert len(ids) >= previous
        previous = len(ids)
        if 0 < cut < len(blob):
            assert dict(q.counts) == {"corrupt_stream": 1}
            assert 0 <= q.unreadable_bytes <= cut
        # every line is accounted for: kept, or the one corrupt_stream record for the cut line
        assert len(ids) + q.total >= min(len(decoded.split(b"\n")) - 1, 40)


def test_zstd_corrupt_block_keeps_the_blocks_before_it(tmp_path):
    lines = _doc_lines(60, seed=4)
    blob, starts = _zstd_blocks(lines)
    for k in (1, 5, 11):  # corrupt block k: its header says "reserved block type"
        bad = bytearray(blob)
        bad[starts[k]] |= 0b110
        path = tmp_path / "bad.jsonl.zst"
        path.write_bytes(bytes(bad))
        ids, q = _read(path)
        assert ids == [str(i) for i in range(5 * k)]
        assert q.unreadable_bytes == len(blob) - starts[k]
        # a flipped byte inside a block's content: never an exception, the earlier blocks are kept
        bad = bytearray(blob)
        bad[starts[k] + 5] ^= 0xFF
        path.write_bytes(bytes(bad))
        ids, q = _read(path)
        assert ids[:5 * k] == [str(i) for i in range(5 * k)]


def test_zstd_garbage_and_skippable_frames(tmp_path):
    lines = _doc_lines(20, seed=5)
    frame = zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n")
    skippable = b"\x50\x2a\x4d\x18" + (7).to_bytes(4, "little") + b"skipped"
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(skippable + frame + skippable + frame)
    ids, q = _read(path)
    assert ids == [str(i) for i in range(20)] * 2 and q.total == 0
    path.write_bytes(frame + b"\x28\xb5\x2f")  # the start of a magic number, then EOF
    ids, q = _read(path)
    assert len(ids) == 20 and q.unreadable_bytes == 3


def test_corrupt_gzip_data_never_raises(tmp_path):
    lines = _doc_lines(50, seed=6)
    blob = gzip.compress(b"\n".join(lines) + b"\n")
    rng = random.Random(7)
    path = tmp_path / "fuzz.jsonl.gz"
    for _ in range(200):
        bad = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        path.write_bytes(bytes(bad))
        ids, q = _read(path)
        assert q.counts["corrupt_stream"] <= 1
        if q.counts["corrupt_stream"]:
            assert q.records[-1].reason == "corrupt_stream"
            assert 0 <= q.records[-1].unreadable_bytes <= len(bad)


# ---------------------------------------------------------------- hostile lines


HOSTILE = {
    b"[" * 100_000 + b"]" * 100_000: "json_too_deep",
    b'{"id": "d", "text": "x", "metadata": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001: "json_too_deep",
    b'{"id": "n", "text": "x", "metadata": {"big": ' + b"9" * 5000 + b"}}": "json_number_too_long",
    b'{"id": ' + b"1" * 5000 + b', "text": "x"}': "json_number_too_long",
    b'{"id": "f", "text": "x", "metadata": {"f": 1e400}}': "json_number_out_of_range",
    b'{"id": "nan", "text": "x", "metadata": {"f": NaN}}': "malformed_json",
    b'{"id": "inf", "text": "x", "metadata": {"f": -Infinity}}': "malformed_json",
    b'{"id": "\\udc00", "text": "lone surrogate in the id"}': "invalid_utf8",
    b'{"id": "m", "text": "x", "metadata": {"k": ["\\ud800"]}}': "invalid_utf8",
    b'{"id": "c", "text": "control \x01 char"}': "malformed_json",
    b"\xef\xbb\xbf\xef\xbb\xbf{}": "malformed_json",
    b'{"id": "e", "text": "x"} trailing': "malformed_json",
    b'"just a string"': "not_an_object",
}


def test_hostile_lines_are_quarantined_never_raise(tmp_path):
    good = json.dumps({"id": "ok", "text": "an emoji \U0001F600 as a surrogate pair"}).encode()  # ascii escapes
    assert b"\\ud83d\\ude00" in good
    path = _lines_file(tmp_path, "hostile.jsonl.zst", [good, *HOSTILE, good])
    q = Quarantine()
    docs = list(read_documents(path, q))
    assert [d["id"] for _, d in docs] == ["ok", "ok"]
    assert [r.reason for r in q.records] == list(HOSTILE.values())
    assert all(r.reason in QUARANTINE_REASONS for r in q.records)
    assert all(len(r.raw) <= MAX_QUARANTINED_BYTES for r in q.records)
    assert "4300" in q.records[2].detail or "digits" in q.records[2].detail
    for raw, reason in HOSTILE.items():
        assert parse_line(raw)[:2] == (None, reason)


def test_byte_order_mark_is_accepted(tmp_path):
    bom = b"\xef\xbb\xbf"
    lines = [bom + json.dumps({"id": "first", "text": "file starts with a BOM"}).encode(),
             json.dumps({"id": "plain", "text": "no BOM"}).encode(),
             bom + json.dumps({"id": "line", "text": "a line starts with a BOM"}).encode(),
             bom]  # a line holding only a BOM is blank
    for suffix in (".jsonl", ".jsonl.gz"):
        q = Quarantine()
        docs = list(read_documents(_lines_file(tmp_path, "bom" + suffix, lines), q))
        assert [d["id"] for _, d in docs] == ["first", "plain", "line"] and q.total == 0


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_oversize_line_is_quarantined_without_holding_it(tmp_path, suffix):
    import tracemalloc

    limit = 1 << 20
    huge = b'{"id": "huge", "text": "' + b"abcd " * (4 * 1024 * 1024) + b'"}'  # 20 MiB
    lines = [json.dumps({"id": "before", "text": "x"}).encode(), huge,
             json.dumps({"id": "after", "text": "y"}).encode(), b'{"id": "edge", "text": "' + b"z" * (limit - 26) + b'"}']
    assert len(lines[3]) == limit
    path = _lines_file(tmp_path, "huge" + suffix, lines)
    del huge, lines
    q = Quarantine()
    tracemalloc.start()
    try:
        ids = [d["id"] for _, d in read_documents(path, q, max_doc_bytes=limit)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids == ["before", "after", "edge"]  # exactly at the limit is still a document
    assert dict(q.counts) == {"doc_too_large": 1}
    rec = q.records[0]
    assert rec.line == 2 and rec.size == len(b'{"id": "huge", "text": "') + 5 * 4 * 1024 * 1024 + 2
    assert rec.raw.startswith(b'{"id": "huge"') and len(rec.raw) == MAX_QUARANTINED_BYTES
    assert json.loads(rec.to_json())["truncated"] is True
    assert peak < 8 * limit, f"peak {peak:,} bytes"  # the 20 MiB line was never held
    assert DEFAULT_MAX_DOC_BYTES == 16 * 1024 * 1024
    q = Quarantine()
    assert len(list(read_documents(path, q, max_doc_bytes=None))) == 4 and q.total == 0


def test_oversize_line_cut_by_a_broken_stream(tmp_path):
    raw = json.dumps({"id": "a", "text": "ok"}).encode() + b"\n" + b'{"id": "b", "text": "' + b"q" * 300_000
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(raw)[:-12])
    q = Quarantine()
    assert [d["id"] for _, d in read_documents(str(path), q, max_doc_bytes=1000)] == ["a"]
    assert dict(q.counts) == {"corrupt_stream": 1}
    assert q.records[0].line == 2 and q.records[0].size > 1000


# ---------------------------------------------------------------- fuzzing


def _mutate(rng: random.Random, line: bytes) -> bytes:
    data = bytearray(line)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(10)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a byte
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:  # insert random bytes
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:  # delete a span
            del data[pos:pos + rng.randint(1, 64)]
        elif op == 3:  # truncate
            del data[pos:]
        elif op == 4:  # duplicate a span
            data[pos:pos] = data[pos:pos + rng.randint(1, 64)]
        elif op == 5:  # insert a JSON-ish token
            data[pos:pos] = rng.choice([b"{", b"}", b"[", b"]", b'"', b"\\", b"\\u", b"\\ud800", b"\\udfff", b",",
                                        b":", b"null", b"NaN", b"1e999", b"-", b"9" * 5000, b"\xef\xbb\xbf",
                                        b"\xc3", b"\xed\xa0\x80", b"\x00", b"true"])
        elif op == 6:  # deep nesting
            depth = rng.choice([10, 1000, 50_000])
            data[pos:pos] = b"[" * depth + b"]" * rng.choice([0, depth])
        elif op == 7:  # swap a field's value type
            data = bytearray(bytes(data).replace(b'"text": "', rng.choice([
                b'"text": 1, "x": "', b'"text": ["', b'"text": {"', b'"txt": "', b'"metadata": 7, "x": "',
                b'"deep": ' + b"[" * 30_000 + b"]" * 30_000 + b', "text": "',
                b'"n": ' + b"7" * 4301 + b', "text": "']), 1))
        elif op == 8:  # change the id
            data = bytearray(bytes(data).replace(b'"id": ', rng.choice([
                b'"id": null, "i": ', b'"id": [1], "i": ', b'"id": true, "i": ', b'"id": 1e999, "i": ',
                b'"id": ' + b"1" * 5000 + b', "i": ', b'"id": "\\udc80", "i": ']), 1))
        elif data.endswith(b"}") and rng.random() < 0.5:  # a last field that overrides an earlier one
            data[-1:] = rng.choice([b', "metadata": [1]}', b', "metadata": "m"}', b', "text": null}', b', "id": ""}'])
        else:  # wrap the whole line
            data = bytearray(rng.choice([b"[", b"\xef\xbb\xbf", b" "]) + bytes(data) + rng.choice([b"]", b"", b" "]))
    out = bytes(data).replace(b"\n", b" ").replace(b"\r", b" ")
    return out if out.strip() else b"x"


def test_fuzz_every_line_becomes_one_document_or_one_record(tmp_path):
    """Seeded byte mutations of real lines: nothing raises, nothing is lost or counted twice."""
    base = []
    for name in ("web.jsonl.zst", "code.jsonl.zst", "encyclopedic.jsonl.zst", "academic.jsonl.zst"):
        short = (doc for _, doc in read_documents(str(shared_corpus_file(name)), Quarantine())
                 if len(doc["text"]) < 5000)
        # web as written (UTF-8), the others with ASCII escapes as Python's json writes by default
        base += [json.dumps(doc, ensure_ascii=name != "web.jsonl.zst").encode() for doc in itertools.islice(short, 60)]
    assert len(base) >= 200
    rng = random.Random(1124)
    mutated = [_mutate(rng, rng.choice(base)) for _ in range(4000)]
    reasons = Counter()
    for raw in mutated:  # the parser alone: a document or a known reason, never an exception
        doc, reason, detail = parse_line(raw)
        reasons[reason] += 1
        assert (doc is None) == bool(reason)
        if doc is None:
            assert reason in QUARANTINE_REASONS and isinstance(detail, str)
        else:
            assert isinstance(doc["id"], str) and isinstance(doc["text"], str)
            json.dumps(doc, ensure_ascii=False).encode("utf-8")  # can be written back
    # every per-line reason was exercised (the stream-level ones have their own tests)
    assert set(reasons) == {""} | set(QUARANTINE_REASONS) - {"doc_too_large", "corrupt_stream"}
    path = _lines_file(tmp_path, "fuzz.jsonl.gz", mutated)
    q = Quarantine()
    docs = list(read_documents(path, q, max_doc_bytes=40_000))
    nonblank = [raw for raw in mutated if raw.removeprefix(b"\xef\xbb\xbf").strip()]
    assert len(docs) + q.total == len(nonblank)
    assert q.total > 1000 and len(docs) > 200  # the mutations hit both sides
    assert set(q.counts) <= set(QUARANTINE_REASONS)
    lines_seen = sorted([line for line, _ in docs] + [r.line for r in q.records])
    assert len(set(lines_seen)) == len(lines_seen)  # one outcome per line


# ---------------------------------------------------------------- counters


def test_quarantine_merge_sums_counts_and_unreadable_bytes():
    a, b = Quarantine(), Quarantine(keep_records=False)
    a.add("f1", 1, "malformed_json", "x", b"{")
    b.add("f2", 9, "corrupt_stream", "cut", b"", unreadable_bytes=123)
    b.add("f2", 3, "malformed_json", "y", b"[")
    a.merge(b)
    assert dict(a.counts) == {"malformed_json": 2, "corrupt_stream": 1}
    assert a.unreadable_bytes == 123 and a.total == 3 and len(a.records) == 1


def test_duplicate_ids_within_a_file():
    import pickle

    counter = DuplicateIds()
    flags = [counter.add(i) for i in ["a", "b", "a", "c", "a", "b"]]
    assert flags == [False, False, True, False, True, True]
    assert counter.to_dict() == {"duplicates": 3, "examples": ["a", "b"]}
    other = DuplicateIds()
    other.add("a")  # the same id in another file is not a within-file duplicate
    other.add("z")
    other.add("z")
    shipped = pickle.loads(pickle.dumps(other))
    assert shipped.to_dict() == {"duplicates": 1, "examples": ["z"]} and shipped._seen == set()
    counter.merge(shipped)
    assert counter.to_dict() == {"duplicates": 4, "examples": ["a", "b", "z"]}


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_decompression_bomb_stays_in_bounded_memory(tmp_path, suffix):
    """256 MiB of one byte in a few hundred KiB: one decompress call never inflates the whole."""
    import tracemalloc

    zeros = b"a" * (1 << 20)
    if suffix == ".jsonl.zst":
        cobj = zstandard.ZstdCompressor(level=1).compressobj()
    else:
        cobj = zlib.compressobj(1, zlib.DEFLATED, 31)
    head = json.dumps({"id": "ok", "text": "before the bomb"}).encode() + b"\n"
    blob = cobj.compress(head) + b"".join(cobj.compress(zeros) for _ in range(256)) + cobj.flush()
    path = tmp_path / ("bomb" + suffix)
    path.write_bytes(blob)
    assert len(blob) < 2 << 20
    q = Quarantine()
    tracemalloc.start()
    try:
        ids = [d["id"] for _, d in read_documents(str(path), q, max_doc_bytes=1 << 20)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids == ["ok"] and dict(q.counts) == {"doc_too_large": 1} and q.records[0].size == 256 << 20
    assert peak < 16 << 20, f"peak {peak:,} bytes"


@pytest.mark.parametrize("read_bytes", [None, 1, 3, 7])
def test_byte_ranges_tile_a_plain_file(tmp_path, monkeypatch, read_bytes):
    """Lines belong to the range in which they start: any cut into ranges reads every line once,
    oversize lines included, exactly as the whole-file read does; also when a line crosses
    the reads a range is made of (small read sizes stand in for lines of megabytes)."""
    import random

    import dolmino.documents as documents
    from dolmino.documents import OversizeLine, iter_lines

    if read_bytes:
        monkeypatch.setattr(documents, "RANGE_READ_BYTES", read_bytes)
    rng = random.Random(0)
    for trial in range(300):
        lines = [("x" * rng.choice([0, 1, 2, 5, 30]) + ("\r" if rng.random() < 0.1 else "")).encode()
                 for _ in range(rng.randint(0, 40))]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        path = tmp_path / f"t{trial}.jsonl"
        path.write_bytes(data)
        whole = list(iter_lines(str(path), 8))
        step = rng.randint(1, 20)
        pieces = [line for start in range(0, max(len(data), 1), step)
                  for line in iter_lines(str(path), 8, (start, min(len(data), start + step)))]
        assert pieces == whole, (trial, data, step)
        assert [type(x) is OversizeLine for x in pieces] == [type(x) is OversizeLine for x in whole]


def test_a_line_longer_than_a_read_is_read_whole_by_the_range_it_starts_in(tmp_path):
    """A 3 MB line crossing a range's end (and so several 1 MiB reads) belongs to that range
    whole; the next range starts after it. It was cut at the read holding the range's last
    byte and quarantined as malformed: a split build lost the document (found by a tester)."""
    path = tmp_path / "long.jsonl"
    docs = [{"id": "a", "text": "x" * 3_000_000}, {"id": "b", "text": "y"}, {"id": "c", "text": "z" * 1_500_000}]
    data = b"".join(json.dumps(d).encode() + b"\n" for d in docs)
    path.write_bytes(data)
    whole = [(n, d["id"], len(d["text"])) for n, d in read_documents(str(path), Quarantine())]
    for step in (1000, 1 << 20, (1 << 20) + 1, 2_000_000, len(data)):
        quarantine = Quarantine()
        got, before = [], 0
        for start in range(0, len(data), step):
            q = Quarantine()
            got += [(n + before, d["id"], len(d["text"]))
                    for n, d in read_documents(str(path), q, byte_range=(start, min(len(data), start + step)))]
            before += q.lines
            quarantine.counts.update(q.counts)
        assert got == whole, step
        assert not quarantine.counts, (step, quarantine.counts)


def test_read_documents_counts_lines_of_a_range(tmp_path):
    path = tmp_path / "r.jsonl"
    docs = [json.dumps({"id": str(i), "text": f"doc {i}"}) for i in range(10)]
    data = ("\n".join(docs[:4]) + "\n\n" + "\n".join(docs[4:]) + "\n").encode()
    path.write_bytes(data)
    cut = data.index(b"\n", len(data) // 2) + 3  # inside a line: that line belongs to the first range
    first, second = Quarantine(), Quarantine()
    a = [(n, d["id"]) for n, d in read_documents(str(path), first, byte_range=(0, cut))]
    b = [(n, d["id"]) for n, d in read_documents(str(path), second, byte_range=(cut, len(data)))]
    whole = [(n, d["id"]) for n, d in read_documents(str(path), Quarantine())]
    assert first.lines + second.lines == 11
    assert a + [(n + first.lines, i) for n, i in b] == whole


def test_small_zstd_fast_path_equals_the_block_reader_or_steps_aside():
    """`_zstd_small` decodes a whole small file in one call per frame. Where it answers, it
    gives exactly the block-by-block reader's bytes; on anything irregular it answers None
    (the careful reader then says where the file breaks), and it never inflates a bomb."""
    import io

    from dolmino.documents import _ZSTD_SMALL_MAX_OUT, _coalesce, _zstd_blocks, _zstd_small

    text = b"".join(json.dumps({"id": str(i), "text": "words " * i}).encode() + b"\n" for i in range(300))
    plain = zstandard.ZstdCompressor().compress(text)
    checked = zstandard.ZstdCompressor(write_checksum=True).compress(text[:5000])
    streamed = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(streamed, closefd=False) as w:  # no content size
        w.write(text)
    two_frames = plain + checked + streamed.getvalue()

    def careful(data: bytes) -> bytes:
        return b"".join(_coalesce(_zstd_blocks(io.BytesIO(data))))

    for data in (plain, checked, streamed.getvalue(), two_frames):
        assert _zstd_small(data) == careful(data) != b""
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip" + plain
    bad_checksum = checked[:-1] + bytes([checked[-1] ^ 0xFF])
    for irregular in (plain[:-3], plain + b"garbage", skippable, bad_checksum, plain[:5]):
        assert _zstd_small(irregular) is None
    assert _zstd_small(b"") == b""  # an empty file holds no frame and no document
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (4 * _ZSTD_SMALL_MAX_OUT))
    assert len(bomb) < 4096 and _zstd_small(bomb) is None


def test_small_local_file_is_split_at_once_exactly_as_the_stream_reader(tmp_path, monkeypatch):
    """A small local .jsonl or .jsonl.zst is read, decoded and split in one go
    (`_small_local_file`, `_whole_lines`); its lines, oversize ones included, must be the
    streaming reader's. A file of READ_SIZE or more, a gzip file and an irregular zstd file
    take the streaming reader."""
    import gzip
    import random

    from dolmino import documents
    from dolmino.documents import OversizeLine, _chunk_reader, _small_local_file, _stream_lines, iter_lines

    rng = random.Random(1)
    for trial in range(200):
        lines = [("y" * rng.choice([0, 1, 3, 9, 40]) + ("\r" if rng.random() < 0.1 else "")).encode()
                 for _ in range(rng.randint(0, 30))]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        for name, stored in ((f"t{trial}.jsonl", data), (f"t{trial}.jsonl.zst", zstandard.compress(data))):
            path = str(tmp_path / name)
            (tmp_path / name).write_bytes(stored)
            assert _small_local_file(path, _chunk_reader(path)) == data
            fast = list(iter_lines(path, 8))
            slow = list(_stream_lines(path, _chunk_reader(path), 8, None))
            assert fast == slow, (trial, name, data)
            assert [type(x) is OversizeLine and x.size for x in fast] == \
                [type(x) is OversizeLine and x.size for x in slow]
    gz = tmp_path / "g.jsonl.gz"
    gz.write_bytes(gzip.compress(b"a\nb\n"))
    assert _small_local_file(str(gz), _chunk_reader(str(gz))) is None and list(iter_lines(str(gz))) == [b"a", b"b"]
    broken = tmp_path / "b.jsonl.zst"
    broken.write_bytes(zstandard.compress(b"a\nb\n")[:-2])
    assert _small_local_file(str(broken), _chunk_reader(str(broken))) is None
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x\n" * 100)
    monkeypatch.setattr(documents, "READ_SIZE", 64)
    assert _small_local_file(str(big), _chunk_reader(str(big))) is None and list(iter_lines(str(big))) == [b"x"] * 100


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_small_damaged_zstd_file_reads_like_before(tmp_path, damage):
    """A small file goes through the fast path first; a damaged one must still give every
    document before the break and one counted corrupt_stream record."""
    docs = [{"id": str(i), "text": f"document number {i}"} for i in range(50)]
    good = zstandard.ZstdCompressor().compress(b"".join(json.dumps(d).encode() + b"\n" for d in docs))
    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(good[:-3] if damage == "truncated" else good + b"garbage!")
    q = Quarantine()
    ids = [d["id"] for _, d in read_documents(str(path), q)]
    assert dict(q.counts) == {"corrupt_stream": 1}
    if damage == "garbage":
        assert ids == [d["id"] for d in docs]
        assert q.records[0].unreadable_bytes == len(b"garbage!")
    else:
        assert ids == [d["id"] for d in docs][:len(ids)] and q.records[0].unreadable_bytes > 0


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.zst", "jsonl.gz"])
def test_pick_lines_gives_the_lines_iter_lines_numbers(tmp_path, monkeypatch, fmt):
    """`pick_lines` (what the write phase reads: some lines of a file) must give exactly the
    lines `iter_lines` gives at those numbers, oversize ones included, with chunks far smaller
    than the lines (so lines span chunks), and stop where the file ends."""
    import gzip
    import random

    from dolmino import documents
    from dolmino.documents import OversizeLine, iter_lines, pick_lines

    monkeypatch.setattr(documents, "READ_SIZE", 16)  # every file streams, in many small chunks

    def seen(pairs):
        """An oversize line as its size (the head it keeps for the quarantine depends on the chunks)."""
        return [(n, ("oversize", x.size) if type(x) is OversizeLine else bytes(x)) for n, x in pairs]

    rng = random.Random(7)
    for trial in range(150):
        lines = [("z" * rng.choice([0, 1, 4, 9, 40]) + ("\r" if rng.random() < 0.1 else "")).encode()
                 for _ in range(rng.randint(0, 40))]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        stored = {"jsonl": data, "jsonl.zst": zstandard.compress(data), "jsonl.gz": gzip.compress(data)}[fmt]
        path = tmp_path / f"t{trial}.{fmt}"
        path.write_bytes(stored)
        limit = rng.choice([None, 8])
        every = list(iter_lines(str(path), limit))
        wanted = sorted(rng.sample(range(1, len(every) + 3), min(len(every) + 2, rng.randint(0, 6))))
        picked = seen(pick_lines(str(path), wanted, limit))
        assert picked == seen((n, every[n - 1]) for n in wanted if n <= len(every)), (trial, data, wanted)
        if fmt == "jsonl" and data:
            cut = rng.randint(1, len(data))
            for byte_range in ((0, cut), (cut, len(data))):
                ranged = list(iter_lines(str(path), limit, byte_range))
                want = [n for n in wanted if n <= len(ranged)]
                assert seen(pick_lines(str(path), want, limit, byte_range)) == seen((n, ranged[n - 1]) for n in want)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "checksum"])
def test_pick_lines_reads_a_broken_stream_as_read_documents_does(tmp_path, damage):
    """A damaged .zst: `read_documents` keeps the documents before the break (and the cut last
    line when it still parses); `pick_lines` gives those same lines. zstandard's streaming
    decoder, which `pick_lines` tries first, stops silently on a truncated file and raises on
    the other damage, where the block reader takes over from the start."""
    from dolmino.documents import pick_lines

    docs = [json.dumps({"id": str(i), "text": "words " * (50 + i)}) for i in range(400)]
    text = ("\n".join(docs) + "\n").encode()
    whole = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(text)
    data = {"truncated": whole[: len(whole) * 2 // 3],
            "garbage": whole + b"not a zstd frame" * 10,
            "checksum": whole[:-1] + bytes([whole[-1] ^ 0xFF])}[damage]
    path = tmp_path / "broken.jsonl.zst"
    path.write_bytes(data)
    quarantine = Quarantine()
    kept = [n for n, _ in read_documents(str(path), quarantine)]
    assert quarantine.counts["corrupt_stream"] == 1 and kept
    picked = list(pick_lines(str(path), list(range(1, 401))))
    assert [n for n, _ in picked][: len(kept)] == kept
    assert all(json.loads(raw)["id"] == str(n - 1) for n, raw in picked[: len(kept)])
    assert len(picked) <= len(kept) + 1  # at most the cut line after them


def test_zstd_stream_stops_where_the_block_reader_stops_or_raises():
    """`pick_lines` trusts zstandard's stream decoder where it ends without an error: on a
    file cut anywhere, it must then have given exactly the bytes the block reader gives
    before it reports the break (otherwise a document kept by the tag phase could be missed
    or cut differently by the write phase)."""
    import io
    import random

    from dolmino.documents import CorruptStreamError, _zstd_blocks, _zstd_stream

    rng = random.Random(5)
    checked = 0
    for trial in range(12):
        text = b"".join(json.dumps({"id": i, "text": " ".join(rng.choice(["ab", "cde", "f", str(rng.random())])
                                                              for _ in range(rng.randint(1, 4000)))}).encode() + b"\n"
                        for i in range(rng.randint(1, 40)))
        frames = [zstandard.ZstdCompressor(level=rng.choice([1, 3, 9]), write_checksum=rng.random() < 0.5,
                                           write_content_size=rng.random() < 0.5).compress(text)
                  for _ in range(rng.randint(1, 2))]
        data = b"".join(frames)
        for cut in sorted({rng.randint(0, len(data)) for _ in range(30)} | {len(data)}):
            careful = []
            try:
                careful.extend(_zstd_blocks(io.BytesIO(data[:cut])))
            except CorruptStreamError:
                pass
            try:
                fast = b"".join(_zstd_stream(io.BytesIO(data[:cut])))
            except zstandard.ZstdError:
                continue
            assert fast == b"".join(careful), (trial, cut, len(data))
            checked += 1
    assert checked > 100


def test_read_lines_refuses_a_file_changed_since_it_was_tagged(tmp_path):
    """The write phase reads lines that were documents when tagged: one that no longer
    parses, or a file that now ends before it, is an error naming the line, never a
    silently shorter mix."""
    from dolmino.build.inputs import InputFile, Unit
    from dolmino.build.read import read_lines

    path = tmp_path / "a.jsonl.zst"
    lines = [json.dumps({"id": str(i), "text": f"document {i}"}) for i in range(6)]
    path.write_bytes(zstandard.compress(("\n".join(lines) + "\n").encode()))
    unit = Unit(0, 0, InputFile("s", str(path), "a.jsonl.zst", path.stat().st_size, "v"))
    assert [d["id"] for _, d in read_lines(str(path), unit, [2, 5])] == ["1", "4"]
    path.write_bytes(zstandard.compress(("\n".join(lines[:3]) + "\n").encode()))
    with pytest.raises(OSError, match="bytes where the listing found"):  # another size: said first
        list(read_lines(str(path), unit, [2, 5]))

    def relisted() -> Unit:  # the same size as the listing found (a rewrite that kept it)
        return Unit(0, 0, InputFile("s", str(path), "a.jsonl.zst", path.stat().st_size, "v"))

    with pytest.raises(OSError, match="ends before line 5"):
        list(read_lines(str(path), relisted(), [2, 5]))
    path.write_bytes(zstandard.compress(("\n".join(lines[:4] + ["{broken"] + lines[5:]) + "\n").encode()))
    with pytest.raises(OSError, match="line 5 was a document when tagged"):
        list(read_lines(str(path), relisted(), [2, 5]))


def test_a_changed_line_of_a_byte_range_is_named_with_its_range(tmp_path):
    """A byte range numbers its lines from its own start: "line 2" of the second range of a split
    file named the file's line 2, a line that had not changed (found by a tester)."""
    from dolmino.build.inputs import InputFile, Unit
    from dolmino.build.read import read_lines

    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"id": str(i), "text": f"document {i}"}) for i in range(6)]
    path.write_text("\n".join(lines) + "\n")
    size = path.stat().st_size
    cut = len("\n".join(lines[:3])) + 1
    second = Unit(1, 0, InputFile("s", str(path), "a.jsonl", size, "v"), cut, size)
    assert [d["id"] for _, d in read_lines(str(path), second, [2])] == ["4"]
    path.write_text("\n".join(lines[:4] + ["{" + lines[4][1:-1] + " "] + lines[5:]) + "\n")  # the same size
    with pytest.raises(OSError, match=f"a.jsonl: line 2 of those starting in its bytes {cut}-{size} was a document"):
        list(read_lines(str(path), second, [2]))
    with pytest.raises(OSError, match=f"ends before line 9 of those starting in its bytes {cut}-{size}"):
        list(read_lines(str(path), second, [9]))


@pytest.mark.parametrize("damage", ["none", "truncated", "garbage"])
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_bytes_fetched_ahead_read_exactly_as_the_file(tmp_path, monkeypatch, suffix, damage):
    """A small S3 object's bytes fetched ahead (`dolmino.prefetch`) go through the same
    readers as the object itself: the same documents, quarantine records and line counts, and
    the same picked lines, for small files (decoded at once) and for large ones (streamed).
    The bytes are read under a name with no file behind it, as an S3 object's would be."""
    from dolmino import documents
    from dolmino.documents import pick_lines

    lines = _doc_lines(300, seed=3) + [b'{"id": "cut", "text": "no end', b"\xff\xfe"]
    path = _lines_file(tmp_path, f"f{suffix}", lines)
    raw = open(path, "rb").read()
    raw = {"none": raw, "truncated": raw[: len(raw) * 2 // 3], "garbage": raw + b"not a frame" * 3}[damage]
    with open(path, "wb") as f:
        f.write(raw)
    elsewhere = str(tmp_path / "not-here" / f"f{suffix}")
    for read_size in (documents.READ_SIZE, 256):  # decoded at once, then streamed in small reads
        monkeypatch.setattr(documents, "READ_SIZE", read_size)
        from_file, from_bytes = Quarantine(), Quarantine()
        want = list(read_documents(path, from_file))
        assert list(read_documents(elsewhere, from_bytes, data=raw)) == want
        assert [(r.line, r.reason, r.unreadable_bytes) for r in from_bytes.records] == \
               [(r.line, r.reason, r.unreadable_bytes) for r in from_file.records]
        assert from_bytes.lines == from_file.lines and from_file.records
        wanted = [n for n, _ in want][::7]
        assert list(pick_lines(elsewhere, wanted, data=raw)) == list(pick_lines(path, wanted))


def _sized_inputs(tmp_path) -> dict[str, bytes]:
    """Files of every reader path: small and large (streamed) plain, zstd and gzip."""
    docs = [{"id": str(i), "text": f"document {i} " + "word " * (i % 50)} for i in range(400)]
    lines = b"".join(json.dumps(d).encode() + b"\n" for d in docs)
    big = (lines * 200)[: 3 << 20]  # over READ_SIZE: read as a stream
    big = big[: big.rindex(b"\n") + 1]
    return {"small.jsonl": lines, "small.jsonl.zst": zstandard.ZstdCompressor().compress(lines),
            "small.jsonl.gz": gzip.compress(lines, mtime=0), "big.jsonl": big,
            "big.jsonl.zst": zstandard.ZstdCompressor(level=1).compress(big)}


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_file_without_its_listed_size_raises_instead_of_reading_as_fewer_documents(tmp_path, delta):
    """An input that no longer has the size the build listed (an S3 body cut short with a
    matching Content-Length, an object replaced after listing) read as a broken file: its
    lost documents became one `corrupt_stream` line, or nothing, and were stored as the
    file's attributes for every later mix (found by a tester). Every reader path raises
    InputChangedError naming the file, whether it reads the file, bytes fetched ahead, or a
    byte range that reaches the end; the listed size reads as before."""
    from dolmino.documents import iter_lines, pick_lines
    from dolmino.errors import InputChangedError

    for name, data in _sized_inputs(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        whole = list(read_documents(str(path), Quarantine()))
        assert list(read_documents(str(path), Quarantine(), size=len(data))) == whole
        assert list(read_documents(str(path), Quarantine(), data=data, size=len(data))) == whole
        wrong = len(data) + delta
        for kwargs in ({}, {"data": data}):
            quarantine = Quarantine()
            with pytest.raises(InputChangedError, match=f"{name}: (?:{len(data):,}|more) bytes where the "
                                                        f"listing found {wrong:,}"):
                list(read_documents(str(path), quarantine, size=wrong, **kwargs))
            assert not quarantine.counts
            with pytest.raises(InputChangedError):
                list(pick_lines(str(path), [len(whole) + 5], size=wrong, **kwargs))
        if not name.endswith((".zst", ".gz")):
            if delta == 1:
                cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
                assert [line for a, b in zip(cuts, cuts[1:])
                        for line in iter_lines(str(path), byte_range=(a, b), size=len(data))] == list(
                    iter_lines(str(path)))
            past = (len(data) + 5, 2 * len(data))  # a range that starts past the end of a shorter file
            with pytest.raises(InputChangedError, match=f": {len(data):,} bytes where the listing found "
                                                        f"{2 * len(data):,}"):
                list(iter_lines(str(path), byte_range=past, size=2 * len(data)))
            last = (len(data) // 2, wrong)  # the last range ends at the listed size and is read to the end
            with pytest.raises(InputChangedError):
                list(iter_lines(str(path), byte_range=last, size=wrong))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])  # read whole, and streamed in chunks
def test_a_crlf_terminator_does_not_count_toward_max_doc_bytes(tmp_path, suffix):
    """A document of exactly max_doc_bytes was kept with LF and quarantined as doc_too_large with
    CRLF (its CR counted; found by a tester). One byte more is too large either way."""
    from dolmino.documents import OversizeLine, Quarantine, pick_lines, read_documents

    line = b'{"id":"a","text":"' + b"x" * 80 + b'"}'  # 100 bytes
    longer = b'{"id":"b","text":"' + b"x" * 81 + b'"}'  # 101 bytes
    for end in (b"\n", b"\r\n"):
        data = line + end + longer + end + line  # the last line unterminated
        path = tmp_path / f"f{len(end)}{suffix}"
        path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
        quarantine = Quarantine()
        docs = [d["id"] for _, d in read_documents(str(path), quarantine, max_doc_bytes=100)]
        assert docs == ["a", "a"] and dict(quarantine.counts) == {"doc_too_large": 1}, (end, suffix)
        # pick_lines cuts lines exactly as iter_lines does (it still counted the CR; a reviewer)
        picked = [(n, type(raw) is OversizeLine, len(raw)) for n, raw in pick_lines(str(path), [1, 2, 3], 100)]
        assert picked == [(1, False, 100), (2, True, 101 + len(end) - 1), (3, False, 100)], (end, suffix)


def test_a_failed_or_interrupted_write_leaves_no_temporary_file(tmp_path):
    """write_documents left `path.tmp<pid>` beside the file when the documents failed or Ctrl-C
    came (found by a tester); the target is never made."""
    from dolmino.documents import QuarantineRecord, write_documents, write_quarantine

    def then(first, error):
        yield first
        raise error

    record = QuarantineRecord(path="in.jsonl", line=1, reason="invalid_json", detail="", raw=b"{")
    for error in (ValueError("bad document"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            write_documents(str(tmp_path / "out.jsonl.zst"), then({"id": "a", "text": "some text"}, error))
        with pytest.raises(type(error)):
            write_quarantine(str(tmp_path / "q.jsonl.gz"), then(record, error))
    assert list(tmp_path.iterdir()) == []


def test_a_file_not_compressed_as_its_name_says_is_named_so(tmp_path):
    """A plain .jsonl named .jsonl.gz, or zstd data named .gz, was one corrupt_stream record saying
    "garbage after the last member?" of a file that has no member (found by a tester): the record
    says what the file holds and how to name it; garbage after a real member keeps its message."""
    raw = b"\n".join(BAD_LINES[:1] * 3) + b"\n"
    held = {"plain": raw, "gzip": gzip.compress(raw), "zstd": zstandard.ZstdCompressor().compress(raw),
            "junk": b"\x00\x01junk that is no format" * 3}
    expected = {"plain": "the file holds uncompressed text: drop the compression suffix",
                "gzip": "the file holds gzip data: rename it to end in .gz",
                "zstd": "the file holds zstd data: rename it to end in .zst",
                "junk": "no {fmt} header where the file starts"}
    for suffix, fmt in ((".jsonl.gz", "gzip"), (".jsonl.zst", "zstd")):
        for kind, data in held.items():
            if kind == fmt:
                continue
            path = tmp_path / f"{kind}{suffix}"
            path.write_bytes(data)
            quarantine = Quarantine()
            assert list(read_documents(str(path), quarantine)) == []
            (record,) = quarantine.records
            assert record.reason == "corrupt_stream" and record.line == 1, (kind, suffix)
            assert record.detail.startswith(f"not {fmt} data ({expected[kind].format(fmt=fmt)}")
            assert "garbage" not in record.detail
            assert quarantine.unreadable_bytes == len(data) - (fmt == "gzip" and kind == "junk")  # a zero is padding
    damaged = bytearray(held["gzip"])
    damaged[3] = 0xE0  # reserved header flags: gzip data, not another format
    path = tmp_path / "flags.jsonl.gz"
    path.write_bytes(damaged)
    quarantine = Quarantine()
    assert list(read_documents(str(path), quarantine)) == []
    assert quarantine.records[0].detail.startswith("damaged gzip header at compressed byte 0")
    path = tmp_path / "after.jsonl.gz"
    path.write_bytes(held["gzip"] + b"garbage")
    quarantine = Quarantine()
    assert len(list(read_documents(str(path), quarantine))) == 3
    assert "garbage after the last member" in quarantine.records[0].detail
    # compressed data under a plain name: its first line's record says so
    path = tmp_path / "packed.jsonl"
    path.write_bytes(held["zstd"])
    quarantine = Quarantine()
    list(read_documents(str(path), quarantine))
    assert quarantine.records[0].detail.endswith("the file holds zstd data: add .zst to its name")


@pytest.mark.parametrize("name, inner, outer", [("twice.jsonl.gz", gzip.compress, gzip.compress),
                                                 ("mixed.jsonl.zst", gzip.compress, zstandard.compress)])
def test_a_file_compressed_twice_is_not_told_to_add_the_suffix_it_has(tmp_path, name, inner, outer):
    """A .jsonl.gz whose content is gzip again was quarantined with "the file holds gzip data: add
    .gz to its name", advice for a file already named so (found by a tester)."""
    path = tmp_path / name
    path.write_bytes(outer(inner(b'{"id": "1", "text": "x"}\n')))
    quarantine = Quarantine()
    assert list(read_documents(str(path), quarantine)) == []
    assert quarantine.records[0].detail.endswith("holds gzip data again (compressed twice): decompress it once "
                                                 "and keep the name")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_a_utf16_file_says_so_in_its_first_record(tmp_path, encoding):
    """A UTF-16 .jsonl (Windows PowerShell 5's `>`) had every line quarantined as invalid UTF-8 or
    malformed JSON, the first record not saying what the file is (found by a tester)."""
    path = tmp_path / "windows.jsonl"
    bom = b"" if encoding == "utf-16" else "\ufeff".encode(encoding)
    path.write_bytes(bom + '{"id": "1", "text": "x"}\n{"id": "2", "text": "y"}\n'.encode(encoding))
    quarantine = Quarantine()
    assert list(read_documents(str(path), quarantine)) == []
    assert quarantine.records[0].detail.endswith("; the file is UTF-16 text (it starts with a UTF-16 byte-order "
                                                 "mark): convert it to UTF-8")
    assert not any("UTF-16" in record.detail for record in quarantine.records[1:])


def test_quarantine_details_name_json_types_and_a_missing_id():
    """A missing or null id was "'id' is 'None'" (as if the id were the string "None"), and a null
    text "'text' is NoneType": the details speak JSON (found by a tester)."""
    details = {line: parse_line(line)[2] for line in (
        b'{"text": "no id"}', b'{"id": null, "text": "x"}', b'{"id": "", "text": "x"}',
        b'{"id": [1], "text": "x"}', b'{"id": "a", "text": null}', b'{"id": "a", "text": 5}',
        b'{"id": "a", "text": "x", "metadata": []}', b"[1, 2]", b"null")}
    assert list(details.values()) == [
        "no 'id' field", "'id' is null, expected a string or number", "'id' is empty",
        "'id' is an array, expected a string or number", "'text' is null, expected a string",
        "'text' is a number, expected a string", "'metadata' is an array, expected an object",
        "top-level JSON is an array", "top-level JSON is null"]


def test_carriage_return_line_ends_say_so_in_the_first_record(tmp_path):
    """A .jsonl whose lines end in a carriage return alone (classic Mac OS) read as one line, its
    documents one malformed_json record saying only "Extra data" (found by a tester)."""
    path = tmp_path / "mac.jsonl"
    path.write_bytes(b'{"id": "a", "text": "x"}\r{"id": "b", "text": "y"}\r')
    quarantine = Quarantine()
    assert list(read_documents(str(path), quarantine)) == []
    assert quarantine.records[0].detail.endswith("; its lines end in a carriage return alone (\\r, classic Mac OS "
                                                 "line ends): convert them to \\n")
    crlf = tmp_path / "windows.jsonl"  # CRLF ends are read as ever
    crlf.write_bytes(b'{"id": "a", "text": "x"}\r\n{"id": "b", "text": "y"}\r\n')
    assert [doc["id"] for _, doc in read_documents(str(crlf), Quarantine())] == ["a", "b"]


@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_array_file_says_so_in_its_first_record(tmp_path, indent):
    """A .json holding one JSON array of documents (`json.dump(docs)`, pandas' `to_json(orient="records")`)
    had every line quarantined, the first as "Expecting value: line 1 column 2 (char 1)" or "top-level
    JSON is an array", not saying that documents are read one object per line (found by a tester)."""
    path = tmp_path / "docs.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"id": "1", "text": "x"}, {"id": "2", "text": "y"}],
                                                 indent=indent).encode())
    quarantine = Quarantine()
    assert list(read_documents(str(path), quarantine)) == []
    assert quarantine.records[0].detail.endswith("; the file starts with a JSON array: documents are JSON Lines, "
                                                 "one object per line (`jq -c '.[]' FILE` converts an array)")
    assert not any("JSON array" in record.detail for record in quarantine.records[1:])


def test_a_carriage_return_inside_a_refused_line_is_not_called_a_line_end(tmp_path):
    """A raw carriage return is JSON whitespace: a first line refused for another reason (no text)
    with one between its keys was told its lines end in a carriage return alone (a tester)."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": "a",\r"txt": "x"}\n')
    quarantine = Quarantine()
    assert list(read_documents(str(path), quarantine)) == []
    assert "carriage return" not in quarantine.records[0].detail, quarantine.records[0].detail
