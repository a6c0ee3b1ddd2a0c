"""Reading and writing Dolma JSONL documents, with a quarantine for bad lines.

Web-scale inputs always contain some broken lines: truncated JSON, bytes that are not
UTF-8, records without text. One bad line must neither crash a job that has run for hours
nor vanish without trace, so every line ends up either as a document or as a quarantine
record that says where it came from and why it was refused.

Paths may be local or `s3://` (through smart_open); compression follows the suffix:
`.jsonl`, `.jsonl.gz`, `.jsonl.zst` (also `.json.gz` / `.json.zst` as dolma writes them).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

import zstandard

DOLMA_FIELDS = ("id", "text", "source", "added", "created", "metadata")

# Quarantine keeps at most this many bytes of a bad line: enough to debug, not a second copy
# of a multi-gigabyte broken file.
MAX_QUARANTINED_BYTES = 4096


@dataclass
class QuarantineRecord:
    path: str
    line: int
    reason: str
    detail: str
    raw: bytes

    def to_json(self) -> str:
        raw = self.raw[:MAX_QUARANTINED_BYTES]
        try:
            raw_field = {"raw": raw.decode("utf-8")}
        except UnicodeDecodeError:
            raw_field = {"raw_base64": base64.b64encode(raw).decode("ascii")}
        return json.dumps({"path": self.path, "line": self.line, "reason": self.reason,
                           "detail": self.detail, "truncated": len(self.raw) > len(raw), **raw_field},
                          ensure_ascii=False)


@dataclass
class Quarantine:
    """Collects refused lines; counts by reason, and keeps the records to be written out."""

    records: list[QuarantineRecord] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    keep_records: bool = True

    def add(self, path: str, line: int, reason: str, detail: str, raw: bytes) -> None:
        self.counts[reason] += 1
        if self.keep_records:
            self.records.append(QuarantineRecord(path, line, reason, detail, raw))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class DocumentFormatError(ValueError):
    """A whole file cannot be read (unknown suffix, corrupt compression stream)."""


def _is_s3(path: str) -> bool:
    return str(path).startswith("s3://")


def open_binary(path: str, mode: str = "rb") -> IO[bytes]:
    """Open a local or s3:// path as raw bytes (no transparent decompression)."""
    path = str(path)
    if _is_s3(path):
        from dolmino.s3 import open_uri  # imported lazily: boto3 is slow to import

        return open_uri(path, mode, compression="disable")
    if "w" in mode:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, mode)


class TruncatedStreamError(EOFError):
    """A compressed file ended in the middle of a frame."""


def _zstd_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    """Decompress possibly multi-frame zstd, failing loudly on a truncated last frame.

    `zstandard`'s stream_reader returns nothing (and no error) for a cut-off frame, which
    would turn a truncated file into silently missing documents.
    """
    dctx = zstandard.ZstdDecompressor()
    obj = dctx.decompressobj()
    pending = False
    while True:
        data = raw.read(1 << 20)
        if not data:
            break
        while data:
            pending = True
            out = obj.decompress(data)
            if out:
                yield out
            if obj.eof:
                data = obj.unused_data
                obj = dctx.decompressobj()
                pending = False
            else:
                data = b""
    if pending:
        raise TruncatedStreamError("zstd stream ends inside a frame (truncated file?)")


def _gzip_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        while chunk := gz.read(1 << 20):
            yield chunk


def _plain_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    while chunk := raw.read(1 << 20):
        yield chunk


def _chunk_reader(path: str):
    if path.endswith((".zst", ".zstd")):
        return _zstd_chunks
    if path.endswith(".gz"):
        return _gzip_chunks
    if path.endswith((".jsonl", ".json", ".ndjson")):
        return _plain_chunks
    raise DocumentFormatError(f"{path}: unknown document file suffix (expected .jsonl, .jsonl.gz or .jsonl.zst)")


def iter_lines(path: str) -> Iterator[bytes]:
    """Raw lines (without the newline) of a possibly compressed file."""
    path = str(path)
    chunks = _chunk_reader(path)
    tail = b""
    with open_binary(path) as raw:
        for chunk in chunks(raw):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                yield line.rstrip(b"\r")
    if tail:
        yield tail.rstrip(b"\r")


def parse_line(raw: bytes) -> tuple[dict | None, str, str]:
    """Turn one JSONL line into a document, or say why not: (doc, reason, detail)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, "invalid_utf8", str(exc)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, "malformed_json", str(exc)
    if not isinstance(doc, dict):
        return None, "not_an_object", f"top-level JSON is {type(doc).__name__}"
    if "text" not in doc:
        return None, "missing_text", "no 'text' field"
    if not isinstance(doc["text"], str):
        return None, "bad_text", f"'text' is {type(doc['text']).__name__}, expected string"
    doc_id = doc.get("id")
    if doc_id is None or isinstance(doc_id, (dict, list, bool)) or str(doc_id) == "":
        return None, "bad_id", f"'id' is {doc_id!r}"
    doc["id"] = str(doc_id)
    if "metadata" in doc and doc["metadata"] is not None and not isinstance(doc["metadata"], dict):
        return None, "bad_metadata", f"'metadata' is {type(doc['metadata']).__name__}, expected object"
    try:
        # Lone surrogates from \ud800 escapes are valid JSON but cannot be encoded back to UTF-8.
        doc["text"].encode("utf-8")
    except UnicodeEncodeError as exc:
        return None, "invalid_utf8", f"text holds unencodable code points: {exc}"
    return doc, "", ""


def read_documents(path: str, quarantine: Quarantine) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, document) for every good line; bad lines go to `quarantine`.

    Blank lines are not documents and are skipped without being counted. A file whose
    compression stream breaks part-way is quarantined from that point with reason
    `corrupt_stream` (the documents before the break are kept).
    """
    path = str(path)
    line_no = 0
    try:
        for line_no, raw in enumerate(iter_lines(path), start=1):
            if not raw.strip():
                continue
            doc, reason, detail = parse_line(raw)
            if doc is None:
                quarantine.add(path, line_no, reason, detail, raw)
            else:
                yield line_no, doc
    except (zstandard.ZstdError, OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        quarantine.add(path, line_no + 1, "corrupt_stream", f"{type(exc).__name__}: {exc}", b"")


def _compressing_writer(path: str, raw: IO[bytes]) -> IO[bytes]:
    if path.endswith((".zst", ".zstd")):
        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
    if path.endswith(".gz"):
        # mtime=0 and no file name: byte-identical output for identical input.
        return gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="")
    if path.endswith((".jsonl", ".json", ".ndjson")):
        return raw
    raise DocumentFormatError(f"{path}: unknown document file suffix (expected .jsonl, .jsonl.gz or .jsonl.zst)")


def dolma_record(doc: dict) -> dict:
    """The public Dolma fields of a document (drops the build's private keys)."""
    return {k: doc[k] for k in DOLMA_FIELDS if k in doc}


def write_documents(path: str, docs: Iterable[dict]) -> int:
    """Write documents as JSONL (compressed by suffix); returns the number written.

    Local files are written to a temporary name and renamed, so a crash never leaves a
    truncated file that looks complete.
    """
    path = str(path)
    count = 0
    tmp = path if _is_s3(path) else f"{path}.tmp{os.getpid()}"
    with open_binary(tmp, "wb") as raw:
        writer = _compressing_writer(path, raw)
        for doc in docs:
            writer.write(json.dumps(dolma_record(doc), ensure_ascii=False).encode("utf-8") + b"\n")
            count += 1
        if writer is not raw:
            writer.close()
    if tmp != path:
        os.replace(tmp, path)
    return count


def write_quarantine(path: str, records: Iterable[QuarantineRecord]) -> int:
    """Write quarantine records as JSONL (one object per refused line)."""
    count = 0
    tmp = path if _is_s3(path) else f"{path}.tmp{os.getpid()}"
    with open_binary(tmp, "wb") as raw:
        writer = _compressing_writer(path, raw)
        for rec in records:
            writer.write(rec.to_json().encode("utf-8") + b"\n")
            count += 1
        if writer is not raw:
            writer.close()
    if tmp != path:
        os.replace(tmp, path)
    return count
