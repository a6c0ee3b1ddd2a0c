"""Reading and writing Dolma JSONL documents, with a quarantine for bad lines.

Web-scale inputs always contain some broken lines: truncated JSON, bytes that are not
UTF-8, records without text, a line nested 100,000 deep or 50 MB long. One bad line must
neither crash a job that has run for hours nor vanish without trace, so every line ends up
either as a document or as a quarantine record that says where it came from and why it was
refused. Nothing a line holds can make the parser raise.

Paths may be local or `s3://` (through smart_open); compression follows the suffix:
`.jsonl`, `.jsonl.gz`, `.jsonl.zst` (also `.json.gz` / `.json.zst` as dolma writes them).

A compressed file that breaks part-way (truncated, garbage after the last member or frame,
a corrupt block) keeps every document decoded before the first bad byte; the rest of the
file becomes one `corrupt_stream` record that says how many compressed bytes were
unreadable. The decoders below are written for that: they hand out every decoded byte
before raising, which `gzip.GzipFile` (whose buffered reads drop the last partial read on
an error) and zstandard's stream reader do not.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
import os
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

import zstandard

from dolmino.errors import InputChangedError

DOLMA_FIELDS = ("id", "text", "source", "added", "created", "metadata")

# Quarantine keeps at most this many bytes of a bad line: enough to debug, not a second copy
# of a multi-gigabyte broken file.
MAX_QUARANTINED_BYTES = 4096

# A line (one JSON document, as stored, without its newline) longer than this is quarantined
# as `doc_too_large`, and the reader streams past it without holding it. 16 MiB keeps every
# real document we know of (the largest books and papers in Dolma-style sources are a few MB)
# while bounding what one line costs downstream: tokenizing costs ~100x the text in memory.
DEFAULT_MAX_DOC_BYTES = 16 * 1024 * 1024

READ_SIZE = 1 << 20          # compressed (or plain) bytes per read from the file / S3 stream
_GZIP_MAX_OUT = 1 << 20      # decompressed bytes per zlib call: bounds memory on gzip bombs
_ZSTD_MAX_BLOCK = 128 * 1024  # zstd's Block_Maximum_Size (format spec, section 3.1.1.2.3)
_BOM = b"\xef\xbb\xbf"

# Every reason read_documents can give (the build report and the tests rely on this set).
QUARANTINE_REASONS = (
    "invalid_utf8", "malformed_json", "json_too_deep", "json_number_too_long",
    "json_number_out_of_range", "not_an_object", "missing_text", "bad_text", "bad_id",
    "bad_metadata", "doc_too_large", "corrupt_stream",
)


def shift_quarantine_lines(data: bytes, offset: int) -> bytes:
    """A gzipped quarantine file (one `QuarantineRecord.to_json` per line) with every record's
    line moved by `offset`: a byte range of a file numbers its lines from the range's start
    while it is read; the build's output names lines counted over the whole file."""
    if not offset:
        return data
    records = [json.loads(line) for line in gzip.decompress(data).splitlines() if line.strip()]
    for record in records:
        record["line"] += offset
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return gzip.compress(text.encode("utf-8"), mtime=0)


@dataclass
class QuarantineRecord:
    path: str
    line: int
    reason: str
    detail: str
    raw: bytes
    size: int | None = None          # bytes of the whole line when `raw` holds only its head
    unreadable_bytes: int = 0        # corrupt_stream: compressed bytes that yielded nothing

    def to_json(self) -> str:
        raw = self.raw[:MAX_QUARANTINED_BYTES]
        size = len(self.raw) if self.size is None else self.size
        try:
            raw_field = {"raw": raw.decode("utf-8")}
        except UnicodeDecodeError:
            raw_field = {"raw_base64": base64.b64encode(raw).decode("ascii")}
        extra = {"unreadable_bytes": self.unreadable_bytes} if self.reason == "corrupt_stream" else {}
        return json.dumps({"path": self.path, "line": self.line, "reason": self.reason,
                           "detail": self.detail, "size": size, "truncated": size > len(raw), **extra,
                           **raw_field}, ensure_ascii=False)


@dataclass
class Quarantine:
    """Collects refused lines; counts by reason, and keeps the records to be written out.

    `unreadable_bytes` sums the compressed bytes of broken streams that yielded no data
    (the `corrupt_stream` records), so a report can say how much input was lost, not only
    how many files broke. `merge` adds another quarantine's counts (and records) into this one.
    """

    records: list[QuarantineRecord] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    keep_records: bool = True
    unreadable_bytes: int = 0
    lines: int = 0  # lines read (blank and refused ones included), see read_documents

    def add(self, path: str, line: int, reason: str, detail: str, raw: bytes, *,
            size: int | None = None, unreadable_bytes: int = 0) -> None:
        self.counts[reason] += 1
        self.unreadable_bytes += unreadable_bytes
        if self.keep_records:
            self.records.append(QuarantineRecord(path, line, reason, detail, raw[:MAX_QUARANTINED_BYTES],
                                                 len(raw) if size is None else size, unreadable_bytes))

    def merge(self, other: Quarantine) -> None:
        self.counts.update(other.counts)
        self.unreadable_bytes += other.unreadable_bytes
        self.lines += other.lines
        if self.keep_records:
            self.records.extend(other.records)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class DocumentFormatError(ValueError):
    """A whole file cannot be read (unknown suffix)."""


class CorruptStreamError(EOFError):
    """A compressed stream that cannot be decoded to its end.

    Everything decoded before `offset` (a compressed byte offset) has been handed out;
    `unreadable_bytes` are the compressed bytes from `offset` to the end of the file.
    `partial_line` is set by iter_lines: the decoded bytes after the last newline.
    """

    def __init__(self, message: str, offset: int, unreadable_bytes: int):
        super().__init__(message)
        self.offset = offset
        self.unreadable_bytes = unreadable_bytes
        self.partial_line: bytes = b""


class TruncatedStreamError(CorruptStreamError):
    """A compressed file ended in the middle of a member / frame / block."""


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


def _bytes_left(raw: IO[bytes]) -> int:
    """Bytes of `raw` not read yet (seeks to the end where it can, else reads them)."""
    try:
        if raw.seekable():
            here = raw.tell()
            return max(raw.seek(0, os.SEEK_END) - here, 0)
    except (OSError, ValueError):
        pass
    left = 0
    while chunk := raw.read(READ_SIZE):
        left += len(chunk)
    return left


def _corrupt(cls, raw: IO[bytes], read_so_far: int, offset: int, what: str) -> CorruptStreamError:
    unreadable = read_so_far - offset + _bytes_left(raw)
    return cls(f"{what} at compressed byte {offset:,}; {unreadable:,} byte(s) unreadable", offset, unreadable)


# ---------------------------------------------------------------- zstd


class _ByteBuffer:
    """Compressed input with absolute offsets: `take(n)` returns the next n bytes or None at EOF."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.buf = bytearray()
        self.pos = 0            # index of the next unread byte in buf
        self.base = 0           # file offset of buf[0]
        self.read_so_far = 0

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _fill(self, n: int) -> bool:
        while len(self.buf) - self.pos < n:
            data = self.raw.read(max(READ_SIZE, n))
            if not data:
                return False
            self.read_so_far += len(data)
            if self.pos > READ_SIZE:  # drop what was consumed before growing the buffer
                del self.buf[:self.pos]
                self.base += self.pos
                self.pos = 0
            self.buf += data
        return True

    def peek(self, n: int) -> bytes | None:
        return bytes(self.buf[self.pos:self.pos + n]) if self._fill(n) else None

    def take(self, n: int) -> bytes | None:
        if not self._fill(n):
            return None
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def skip(self, n: int) -> bool:
        """Skip n bytes without holding them (skippable frames may be large)."""
        while n:
            if self.pos >= len(self.buf) and not self._fill(1):
                return False
            step = min(n, len(self.buf) - self.pos)
            self.pos += step
            n -= step
        return True

    def at_eof(self) -> bool:
        return not self._fill(1)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


_SUFFIX = {"gzip": ".gz", "zstd": ".zst"}


def _compressed_as(head: bytes) -> str | None:
    """"gzip" or "zstd" when a file's first bytes are that format's magic number, else None."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    return "zstd" if head.startswith(_ZSTD_MAGIC) else None


def _misnamed(expected: str, head: bytes) -> str:
    """Why a file named as `expected` compressed data breaks at its first byte: a plain .jsonl
    named .jsonl.gz, or zstd data named .gz, was said to be "garbage after the last member" of
    a file that has none (found by a tester)."""
    held = _compressed_as(head)
    if held == expected:  # its magic number, then a header zlib refuses (a flag or header CRC)
        return f"damaged {expected} header"
    if held is not None:
        what = f"the file holds {held} data: rename it to end in {_SUFFIX[held]}"
    elif head.lstrip(_BOM + b" \t\r\n")[:1] in (b"{", b"[", b"<"):
        what = "the file holds uncompressed text: drop the compression suffix from its name, or compress it"
    else:
        what = f"no {expected} header where the file starts: damaged, or another format under its name"
    return f"not {expected} data ({what})"


def _coalesce(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Join small outputs into ~READ_SIZE chunks (fewer, larger splits downstream); on a broken
    stream, what was decoded is handed out before the error."""
    pending: list[bytes] = []
    size = 0
    try:
        for block in blocks:
            pending.append(block)
            size += len(block)
            if size >= READ_SIZE:
                yield b"".join(pending)
                pending, size = [], 0
    except CorruptStreamError as exc:
        if pending:
            yield b"".join(pending)
        raise exc
    if pending:
        yield b"".join(pending)


def _frame_header_size(descriptor: int) -> int:
    """Bytes of a zstd frame header (magic included) from its descriptor byte (RFC 8878 3.1.1.1)."""
    single_segment = (descriptor >> 5) & 1
    return (5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
            + ((1 if single_segment else 0), 2, 4, 8)[descriptor >> 6])


def _block_header(head: bytes) -> tuple[int, int, int] | None:
    """(last, type, size) of a 3-byte zstd block header; None for a reserved type or an
    oversize block (RFC 8878 3.1.1.2)."""
    value = int.from_bytes(head, "little")
    last, block_type, block_size = value & 1, (value >> 1) & 3, value >> 3
    if block_type == 3 or block_size > _ZSTD_MAX_BLOCK:
        return None
    return last, block_type, block_size


def _zstd_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    """Decompressed chunks of a (multi-frame) zstd stream; CorruptStreamError where it breaks.

    A file that fits in one read and decodes cleanly takes one decompress call per frame
    (`_zstd_small`); every other file, and every irregular one, goes block by block."""
    head = _first_read(raw)
    if len(head) < READ_SIZE and not raw.read(1):
        whole = _zstd_small(head)
        if whole is not None:
            if whole:
                yield whole
            return
        raw = io.BytesIO(head)
    else:
        raw = _Prefixed(head, raw)
    yield from _coalesce(_zstd_blocks(raw))


def _first_read(raw: IO[bytes]) -> bytes:
    """Up to READ_SIZE bytes; a small local file in one read of its size.

    read(READ_SIZE) allocates a 1 MiB buffer whatever the file holds: on 20,000 files of 1 KB
    that was ~25 us per file, a third of reading one."""
    size = None
    try:
        size = os.fstat(raw.fileno()).st_size - raw.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return raw.read(size + 1 if size is not None and 0 <= size < READ_SIZE else READ_SIZE)


class _Prefixed:
    """A stream with its first bytes already read: they are served again first."""

    def __init__(self, head: bytes, raw: IO[bytes]):
        self.head, self.raw = head, raw

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(n)
        if n < 0:
            out, self.head = self.head + self.raw.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out

    def seekable(self) -> bool:
        return False


# Output bound under which a whole small file is decoded in one call per frame: two of the
# careful path's ~READ_SIZE chunks, so that memory stays what the careful path holds.
_ZSTD_SMALL_MAX_OUT = 2 * READ_SIZE


_LOCAL = threading.local()


def _thread_dctx() -> zstandard.ZstdDecompressor:
    """One decompressor per thread (they are not thread-safe): creating one allocates its
    ~160 KB context, which cost as much as decoding a 1 KB file."""
    dctx = getattr(_LOCAL, "dctx", None)
    if dctx is None:
        dctx = _LOCAL.dctx = zstandard.ZstdDecompressor()
    return dctx


def _zstd_small(data: bytes) -> bytes | None:
    """The decompressed bytes of a complete, well-formed zstd file, or None: take the careful path.

    Frame and block headers are walked first (RFC 8878) to bound the output: a raw or RLE
    block regenerates the size its header gives, a compressed block at most 128 KiB. Only a
    file whose bound is under `_ZSTD_SMALL_MAX_OUT` reaches the decompressor, so a bomb never
    inflates here. Skippable frames, truncation, garbage and any decoder error return None,
    and `_zstd_blocks` then yields what was readable and says exactly where the file breaks.
    `read_documents` over the 20,000 ~1 KB files of bench_scale's small-files set took 1.34 s
    of CPU with the careful path alone and 0.98 s with this one (same loop, same files)."""
    n, pos, bound = len(data), 0, 0
    frames = []
    while pos < n:
        if n - pos < 6 or data[pos:pos + 4] != _ZSTD_MAGIC:
            return None
        start = pos
        descriptor = data[pos + 4]
        pos += _frame_header_size(descriptor)
        last = 0
        while not last:
            block = _block_header(data[pos:pos + 3]) if pos + 3 <= n else None
            if block is None:
                return None
            last, block_type, block_size = block
            pos += 3 + (1 if block_type == 1 else block_size)
            bound += _ZSTD_MAX_BLOCK if block_type == 2 else block_size
        pos += 4 * ((descriptor >> 2) & 1)
        if pos > n or bound > _ZSTD_SMALL_MAX_OUT:
            return None
        frames.append((start, pos))
    dctx = _thread_dctx()
    out = []
    for start, end in frames:
        obj = dctx.decompressobj()
        try:
            out.append(obj.decompress(data[start:end]))
        except zstandard.ZstdError:
            return None
        if not obj.eof or obj.unused_data:
            return None
    return b"".join(out)


def _zstd_blocks(raw: IO[bytes]) -> Iterator[bytes]:
    """Decompress (multi-frame) zstd one block at a time; raise CorruptStreamError where it breaks.

    The frame and block headers are parsed here (RFC 8878) so that every decompress call
    gets exactly one block: all output before a bad block has been yielded when it raises,
    the offset of the break is exact, and one call never inflates more than 128 KiB (a
    decompression bomb cannot blow up memory). zstandard still checks every byte itself.
    """
    dctx = zstandard.ZstdDecompressor()
    buf = _ByteBuffer(raw)

    def broken(offset: int, what: str, cls=CorruptStreamError) -> CorruptStreamError:
        return _corrupt(cls, raw, buf.read_so_far, offset, what)

    while not buf.at_eof():
        frame_start = buf.offset
        magic = buf.peek(4)
        if magic is None:
            raise broken(frame_start, "zstd stream ends inside a frame header (truncated file?)", TruncatedStreamError)
        if magic[1:] == b"\x2a\x4d\x18" and 0x50 <= magic[0] <= 0x5F:  # skippable frame
            head = buf.take(8)
            if head is None or not buf.skip(int.from_bytes(head[4:8], "little")):
                raise broken(frame_start, "zstd stream ends inside a skippable frame (truncated file?)",
                             TruncatedStreamError)
            continue
        if magic != _ZSTD_MAGIC:
            raise broken(frame_start, _misnamed("zstd", magic) if frame_start == 0
                         else "not a zstd frame (garbage after the last frame?)")
        fhd = buf.peek(5)
        if fhd is None:
            raise broken(frame_start, "zstd stream ends inside a frame header (truncated file?)", TruncatedStreamError)
        descriptor = fhd[4]
        has_checksum = (descriptor >> 2) & 1
        obj = dctx.decompressobj()
        unit = buf.take(_frame_header_size(descriptor))
        if unit is None:
            raise broken(frame_start, "zstd stream ends inside a frame header (truncated file?)", TruncatedStreamError)
        try:
            obj.decompress(unit)
        except zstandard.ZstdError as exc:
            raise broken(frame_start, f"bad zstd frame header ({exc})") from None
        last = False
        while not last:
            block_start = buf.offset
            head = buf.peek(3)
            if head is None:
                raise broken(block_start, "zstd stream ends inside a frame (truncated file?)", TruncatedStreamError)
            block = _block_header(head)
            if block is None:
                raise broken(block_start, "corrupt zstd block header")
            last, block_type, block_size = block
            unit = buf.take(3 + (1 if block_type == 1 else block_size))
            if unit is None:
                raise broken(block_start, "zstd stream ends inside a block (truncated file?)", TruncatedStreamError)
            try:
                out = obj.decompress(unit)
            except zstandard.ZstdError as exc:
                raise broken(block_start, f"corrupt zstd block ({exc})") from None
            if out:
                yield out
        if has_checksum:
            check_start = buf.offset
            unit = buf.take(4)
            if unit is None:
                raise broken(check_start, "zstd stream ends inside a frame checksum (truncated file?)",
                             TruncatedStreamError)
            try:
                obj.decompress(unit)
            except zstandard.ZstdError as exc:
                raise broken(check_start, f"zstd frame checksum does not match ({exc})") from None
        if not obj.eof:
            raise broken(buf.offset, "zstd frame did not end after its last block")


# ---------------------------------------------------------------- gzip


def _longest_good_prefix(snapshot, data: bytes) -> tuple[bytes, int]:
    """(output, k): the longest prefix data[:k] that `snapshot` (a zlib state) decodes without error.

    Decoding a longer prefix never undoes an error, so the good prefixes are an interval: bisect.
    """
    lo, hi = 0, len(data)
    best = snapshot.copy().decompress(b"")  # output still pending in the state, if any
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = snapshot.copy()
        try:
            out = trial.decompress(data[:mid])
        except zlib.error:
            hi = mid - 1
        else:
            lo, best = mid, out
    return best, lo


def _gzip_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    """Decompress (multi-member) gzip; raise CorruptStreamError where it breaks.

    Zero bytes after a member are padding and ignored (as gzip and Python's gzip module do);
    anything else that is not a gzip member is garbage. Before each zlib call the decoder
    state is copied, so on an error the failing input is bisected from that copy: the output
    up to the first bad byte is yielded and the offset of that byte is exact. One call
    inflates at most 1 MiB, so a gzip bomb cannot blow up memory.
    """
    offset = 0          # file offset of data[0]
    read_so_far = 0
    data = b""
    obj = None          # decoder of the current member; None between members
    member_start = member_out = 0
    members = 0         # members decoded to their end
    while True:
        if not data:
            data = raw.read(READ_SIZE)
            if not data:
                break
            read_so_far += len(data)
        if obj is None:
            stripped = data.lstrip(b"\0")
            offset += len(data) - len(stripped)
            data = stripped
            if not data:
                continue
            obj = zlib.decompressobj(wbits=31)
            member_start, member_out = offset, 0
        while True:  # feed `data` until it is consumed (several calls when the output limit is hit)
            snapshot = obj.copy()
            try:
                out = obj.decompress(data, _GZIP_MAX_OUT)
            except zlib.error as exc:
                good, k = _longest_good_prefix(snapshot, data)
                if good:
                    yield good
                # A member that never produced a byte is unreadable from its first byte (zlib
                # only rejects a bad magic number at its second byte).
                at = member_start if member_out == 0 and not good else offset + k
                what = (_misnamed("gzip", data[:4]) if at == member_start and not members and "header" in str(exc)
                        else "not a gzip member (garbage after the last member?)" if "header" in str(exc)
                        else f"corrupt gzip data ({exc})")
                raise _corrupt(CorruptStreamError, raw, read_so_far, at, what) from None
            if out:
                member_out += len(out)
                yield out
            if obj.eof:
                members += 1
                rest = obj.unused_data
                offset += len(data) - len(rest)
                data, obj = rest, None
                break
            rest = obj.unconsumed_tail
            offset += len(data) - len(rest)
            data = rest
            if not data and len(out) < _GZIP_MAX_OUT:
                break  # all input used and no output pending: read more
    if obj is not None:
        tail = obj.flush()
        if tail:
            yield tail
        raise _corrupt(TruncatedStreamError, raw, read_so_far, member_start if member_out == 0 and not tail else offset,
                       "gzip stream ends inside a member (truncated file?)")


def _plain_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    chunk = _first_read(raw)
    while chunk:
        yield chunk
        chunk = raw.read(READ_SIZE)


DOCUMENT_STEMS = (".jsonl", ".json", ".ndjson")
# The names `compression` reads, as a refusal spells them: it said "expected .jsonl, .jsonl.gz or .jsonl.zst"
# of a .jsonl.bz2, as if a .json.gz or an .ndjson were refused too (found by a tester).
DOCUMENT_NAMES = f"{', '.join(DOCUMENT_STEMS[:-1])} or {DOCUMENT_STEMS[-1]}, plain or with .gz, .zst or .zstd"


def compression(path: str, stems: tuple[str, ...]) -> str | None:
    """"zstd", "gzip", or "" for a plain file whose name ends in one of `stems`; None: none of
    them. Read from the lower-cased name, as the build's listing reads names: Posts.XML and
    part.JSONL.ZST were listed, then refused by a reader (found by a tester)."""
    name = path.lower()
    if name.endswith((".zst", ".zstd")):
        return "zstd"
    if name.endswith(".gz"):
        return "gzip"
    return "" if name.endswith(stems) else None


CHUNK_READERS = {"zstd": _zstd_chunks, "gzip": _gzip_chunks, "": _plain_chunks}


def _chunk_reader(path: str):
    if (found := compression(path, DOCUMENT_STEMS)) is not None:
        return CHUNK_READERS[found]
    raise DocumentFormatError(f"{path}: unknown document file suffix (documents end in {DOCUMENT_NAMES})")


# ---------------------------------------------------------------- lines


class OversizeLine(bytes):
    """A line longer than the reader's limit: the bytes are its first MAX_QUARANTINED_BYTES,
    `size` its full length. The rest was streamed past, never held."""

    size: int

    def __new__(cls, head: bytes, size: int):
        obj = super().__new__(cls, head[:MAX_QUARANTINED_BYTES])
        obj.size = size
        return obj


def _oversize(line: bytes, limit: float) -> bool:
    """Longer than the limit, not counting a CRLF terminator's CR: the same document was kept with
    LF and quarantined as doc_too_large with CRLF at exactly the limit (found by a tester)."""
    return len(line) - line.endswith(b"\r") > limit


def _split_lines(chunks: Iterable[bytes], max_line_bytes: int | None) -> Iterator[bytes]:
    limit = max_line_bytes if max_line_bytes else math.inf
    parts: list[bytes] = []   # the current line so far (never more than `limit` bytes)
    parts_len = 0
    skipped = -1              # >= 0: inside an oversize line, this many bytes seen
    head = b""
    try:
        for chunk in chunks:
            if skipped >= 0:
                nl = chunk.find(b"\n")
                if len(head) < MAX_QUARANTINED_BYTES:
                    # the same head however the line was cut into chunks (a limit below
                    # MAX_QUARANTINED_BYTES started skipping with a shorter one)
                    head += chunk[:min(len(chunk) if nl < 0 else nl, MAX_QUARANTINED_BYTES - len(head))]
                if nl < 0:
                    skipped += len(chunk)
                    continue
                yield OversizeLine(head, skipped + nl)
                skipped = -1
                chunk = chunk[nl + 1:]
            lines = chunk.split(b"\n")
            if len(lines) == 1:
                parts.append(chunk)
                parts_len += len(chunk)
            else:
                first = b"".join(parts) + lines[0] if parts else lines[0]
                tail = lines.pop()
                lines[0] = first
                for line in lines:
                    if _oversize(line, limit):
                        yield OversizeLine(line, len(line))
                    else:
                        yield line.rstrip(b"\r")
                parts, parts_len = ([tail], len(tail)) if tail else ([], 0)
            if parts_len > limit + 1:  # over the limit whatever ends it (one CR is not counted)
                joined = b"".join(parts)
                head, skipped = joined[:MAX_QUARANTINED_BYTES], parts_len
                parts, parts_len = [], 0
    except CorruptStreamError as exc:
        exc.partial_line = OversizeLine(head, skipped) if skipped >= 0 else b"".join(parts)
        raise
    if skipped >= 0:
        yield OversizeLine(head, skipped)
    elif parts_len:
        last = b"".join(parts)
        yield OversizeLine(last, len(last)) if _oversize(last, limit) else last.rstrip(b"\r")


RANGE_READ_BYTES = 1 << 20  # one read of a byte range; lines may be any multiple of it


def _range_chunks(raw: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    """The bytes of the lines of an uncompressed file that start in [start, end).

    A line belongs to the range in which it starts (as in Hadoop's TextInputFormat), so
    ranges tile a file: reading starts after the first newline at or after `start - 1` and
    stops after the first newline at or after `end - 1`."""
    pos = max(start - 1, 0)
    raw.seek(pos)
    pending = b""
    if start > 0:
        while True:
            chunk = raw.read(RANGE_READ_BYTES)
            if not chunk:
                return
            nl = chunk.find(b"\n")
            if nl >= 0:
                pos += nl + 1
                pending = chunk[nl + 1:]
                break
            pos += len(chunk)
    if pos >= end:
        return  # no line starts in this range
    while True:
        if not pending:
            pending = raw.read(RANGE_READ_BYTES)
            if not pending:
                return
        # The first newline at or after end - 1 ends the range, however many reads past `end`
        # it lies: the line that crosses `end` is this range's, and the next range skips it.
        nl = pending.find(b"\n", max(end - 1 - pos, 0))
        if nl >= 0:
            yield pending[:nl + 1]
            if isinstance(raw, _SizeChecked) and end >= raw.size:
                raw.read(1)  # the last range ends where the file does: a longer one raises here
            return
        yield pending
        pos += len(pending)
        pending = b""


def size_changed(path: str, held: str, listed: int) -> InputChangedError:
    return InputChangedError(
        f"{path}: {held} where the listing found {listed:,}: the file changed after it was listed, or its "
        "transfer was cut short; rerun the build once the input is stable")


class _SizeChecked:
    """A raw stream that must hold exactly `size` bytes, the size the build listed.

    A body that ends early (an S3 GET cut short with a matching Content-Length, an object
    replaced by a shorter one) would otherwise read as a broken or shorter file: its lost
    documents counted as one corrupt line, or not at all, and stored as the file's
    attributes for every later mix. The check is made where the stream ends (a byte range
    that stops before the end checks nothing) and where it runs past `size`."""

    def __init__(self, raw: IO[bytes], path: str, size: int):
        self.raw, self.path, self.size, self.pos = raw, path, size, 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.pos += len(data)
        if self.pos > self.size:
            raise size_changed(self.path, "more bytes", self.size)
        if not data and n != 0 and self.pos != self.size:
            raise size_changed(self.path, f"{self._end():,} bytes", self.size)
        return data

    def _end(self) -> int:
        """Where the stream ended: its size where it can seek (a range may have sought past it)."""
        try:
            return self.raw.seek(0, os.SEEK_END) if self.raw.seekable() else self.pos
        except (OSError, ValueError):
            return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.pos = self.raw.seek(offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return self.raw.seekable()

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> "_SizeChecked":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _small_local_file(path: str, chunks, size: int | None = None) -> bytes | None:
    """The decoded bytes of a small, well-formed local .jsonl or .jsonl.zst, else None.

    One open, stat and read through the OS, no buffered file object and no chunk
    generators. With `iter_lines` returning the split lines whole, the tag work of
    bench_scale's 20,000 one-document files fell from 1.62 s to 1.33 s of CPU in one process
    (the same documents as 20 files: ~0.37 s). None sends the file through the streaming
    readers: S3, gzip, anything of READ_SIZE or more, and every zstd file `_zstd_small` does
    not take (irregular or broken ones, which the block reader then reports exactly).
    """
    if _is_s3(path) or chunks is _gzip_chunks:
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        actual = os.fstat(fd).st_size
        if size is not None and actual != size:
            raise size_changed(path, f"{actual:,} bytes", size)
        if actual >= READ_SIZE:
            return None
        data = os.read(fd, actual + 1)
        if len(data) != actual:  # changed while read: the streaming reader copes
            return None
    finally:
        os.close(fd)
    return _small_decoded(data, chunks)


def _small_decoded(data: bytes, chunks) -> bytes | None:
    """A small file's bytes decoded at once, or None: the streaming readers take it."""
    if chunks is _gzip_chunks or len(data) >= READ_SIZE:
        return None
    return data if chunks is _plain_chunks else _zstd_small(data)


def _whole_file(path: str, chunks, data: bytes | None, size: int | None = None) -> bytes | None:
    """The decoded bytes of a small file held whole (fetched ahead, or local), else None."""
    if data is None:
        return _small_local_file(path, chunks, size)
    if size is not None and len(data) != size:
        raise size_changed(path, f"{len(data):,} bytes", size)
    return _small_decoded(data, chunks)


def _open_raw(path: str, data: bytes | None, size: int | None = None) -> IO[bytes]:
    """The file's raw bytes as a stream: those fetched ahead (`dolmino.prefetch`), or the file;
    with `size`, a stream that must hold exactly that many bytes (`_SizeChecked`)."""
    raw = open_binary(path) if data is None else io.BytesIO(data)
    return raw if size is None else _SizeChecked(raw, path, size)


def _whole_lines(data: bytes, max_line_bytes: int | None) -> list[bytes]:
    """The lines of a decoded file held whole, exactly as `_split_lines` cuts a stream."""
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()
    limit = max_line_bytes if max_line_bytes else math.inf
    return [OversizeLine(line, len(line)) if _oversize(line, limit) else line.rstrip(b"\r") for line in lines]


def iter_lines(path: str, max_line_bytes: int | None = None,
               byte_range: tuple[int, int] | None = None, data: bytes | None = None,
               size: int | None = None) -> Iterator[bytes]:
    """Raw lines (without the newline) of a possibly compressed file.

    With `max_line_bytes`, a longer line comes out as an `OversizeLine` (its head and size)
    and memory stays bounded whatever the file holds. A compressed stream that breaks raises
    CorruptStreamError after every complete line before the break has been yielded; the
    decoded bytes after the last newline are on the exception as `partial_line`.
    `byte_range=(start, end)` reads only the lines starting in that range of an
    uncompressed file (see `_range_chunks`). A small local file is read, decoded and split
    at once (`_small_local_file`), with no generator of its own; a missing file then raises
    here rather than at the first line. `data`: the whole file's raw bytes, already fetched
    (`dolmino.prefetch`); they are read exactly as the file would be. `size`: the file's size
    when it was listed; a file found to hold another number of bytes raises InputChangedError.
    """
    path = str(path)
    chunks = _chunk_reader(path)
    if byte_range is None:
        whole = _whole_file(path, chunks, data, size)
        if whole is not None:
            return iter(_whole_lines(whole, max_line_bytes))
    return _stream_lines(path, chunks, max_line_bytes, byte_range, data, size)


def _stream_lines(path: str, chunks, max_line_bytes: int | None,
                  byte_range: tuple[int, int] | None, data: bytes | None = None,
                  size: int | None = None) -> Iterator[bytes]:
    with _open_raw(path, data, size) as raw:
        yield from _split_lines(_decoded(path, raw, chunks, byte_range), max_line_bytes)


def _decoded(path: str, raw: IO[bytes], chunks, byte_range: tuple[int, int] | None) -> Iterable[bytes]:
    """The careful readers' decoded chunks of the whole file, or of the lines starting in a
    byte range of an uncompressed one."""
    if byte_range is None:
        return chunks(raw)
    if chunks is not _plain_chunks:
        raise DocumentFormatError(f"{path}: a compressed file can only be read whole, not by byte range")
    return _range_chunks(raw, *byte_range)


def pick_lines(path: str, wanted: Iterable[int], max_line_bytes: int | None = None,
               byte_range: tuple[int, int] | None = None, data: bytes | None = None,
               size: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for each of the ascending line numbers `wanted`, numbered and
    cut exactly as `iter_lines` numbers and cuts them; it stops early where the file ends first
    (the caller sees which lines are missing).

    What the write phase reads: a few lines of each pool file, whose other lines are only
    counted, never cut out or copied (`_pick`). A stream that breaks ends the lines: its cut
    last line comes out if it is wanted (`read_documents` keeps such a line when it parses).
    `data` and `size`: as in `iter_lines` (a stream is checked against `size` only where it is
    read to its end).
    """
    path = str(path)
    targets = list(wanted)
    if not targets:
        return
    chunks = _chunk_reader(path)
    if byte_range is None:
        whole = _whole_file(path, chunks, data, size)
        if whole is not None:
            lines = _whole_lines(whole, max_line_bytes)
            for target in targets:
                if target > len(lines):
                    return
                yield target, lines[target - 1]
            return
    done = 0
    if chunks is _zstd_chunks and byte_range is None:
        try:
            with _open_raw(path, data, size) as raw:
                for pair in _pick(_zstd_stream(raw), iter(targets), max_line_bytes):
                    yield pair
                    done += 1
            return
        except zstandard.ZstdError:
            pass  # the careful reader below reads the rest again and stops exactly where the file breaks
    with _open_raw(path, data, size) as raw:
        yield from _pick(_decoded(path, raw, chunks, byte_range), iter(targets[done:]), max_line_bytes)


def _zstd_stream(raw: IO[bytes]) -> Iterator[bytes]:
    """zstandard's own streaming decoder, at most READ_SIZE bytes per read (no bomb inflates).

    It skips the block reader's Python walk of every block and its copies (`_zstd_blocks`,
    which the tag phase keeps because it hands out every byte before a break). Where this
    one stops without an error (a truncated file) it has given exactly the block reader's
    bytes (tests/test_documents.py cuts files at many points); where it raises
    zstandard.ZstdError (garbage, a corrupt block, a wrong checksum) `pick_lines` reads the
    file again with the block reader."""
    with zstandard.ZstdDecompressor().stream_reader(raw, read_size=READ_SIZE, read_across_frames=True,
                                                    closefd=False) as reader:
        while chunk := reader.read(READ_SIZE):
            yield chunk


def _pick(chunks: Iterable[bytes], targets: Iterator[int], max_line_bytes: int | None) -> Iterator[tuple[int, bytes]]:
    """The scan behind `pick_lines`: lines are passed with `find` (memchr; `bytes.count` costs
    ~0.6 s per GB here, more than the scan saves), and only target lines are copied."""
    limit = max_line_bytes if max_line_bytes else math.inf
    # bytes of a line held: an oversize one keeps its head; one over the limit, a CRLF's CR (`_oversize`)
    cap = max(limit + 1, MAX_QUARANTINED_BYTES)
    target = next(targets, None)
    if target is None:
        return
    line_no = 1  # the line the next byte belongs to
    parts: list[bytes] = []  # the target line so far (its first `cap` bytes)
    size = held = 0
    try:
        for chunk in chunks:
            pos, end = 0, len(chunk)
            while pos < end:
                nl = chunk.find(b"\n", pos)
                if line_no < target:
                    if nl < 0:
                        break
                    line_no += 1
                    pos = nl + 1
                    continue
                stop = end if nl < 0 else nl
                if held < cap:
                    piece = chunk[pos:min(stop, pos + cap - held)]
                    parts.append(piece)
                    held += len(piece)
                size += stop - pos
                if nl < 0:
                    break
                yield target, _picked_line(parts, size, limit)
                parts, size, held = [], 0, 0
                line_no += 1
                pos = nl + 1
                target = next(targets, None)
                if target is None:
                    return
    except CorruptStreamError:
        pass  # the lines end at the break; its cut last line, if wanted, comes out below
    if line_no == target and size:  # the last line, without a newline
        yield target, _picked_line(parts, size, limit)


def _picked_line(parts: list[bytes], size: int, limit: float) -> bytes:
    line = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(line) < size or _oversize(line, limit):  # not held whole: longer than limit + 1
        return OversizeLine(line, size)
    return line.rstrip(b"\r")


# ---------------------------------------------------------------- parsing


class _JsonValueError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _JsonValueError("json_number_out_of_range", f"number {text[:40]} overflows a double")
    return value


def _no_constants(name: str):
    raise _JsonValueError("malformed_json", f"{name} is not valid JSON (non-standard constant)")


# NaN / Infinity and overflowing floats are refused: Python would write them back as NaN and
# Infinity, which no strict JSON reader (dolma's Rust tools, jq) accepts.
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constants)


def _decode_json(text: str) -> tuple[object, str, str]:
    """(value, "", "") or (None, reason, detail); never raises for any input string."""
    try:
        return _DECODER.decode(text), "", ""
    except json.JSONDecodeError as exc:
        return None, "malformed_json", str(exc)
    except _JsonValueError as exc:
        return None, exc.reason, str(exc)
    except RecursionError:
        return None, "json_too_deep", "JSON nests deeper than the parser's recursion limit"
    except ValueError as exc:
        if "digits" in str(exc):  # int('9' * 5000): sys.get_int_max_str_digits()
            return None, "json_number_too_long", str(exc).split(";")[0]
        return None, "malformed_json", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - MemoryError, or whatever a future json raises
        return None, "malformed_json", f"{type(exc).__name__}: {str(exc)[:200]}"


def lone_surrogate(value: object) -> str | None:
    """A description of the first string (key or value) that cannot be encoded as UTF-8, or None.

    ASCII strings (most of them: CPython knows in O(1)) cannot hold a surrogate; only the
    others are encoded to check.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return str(exc)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return None


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _json_type(value: object) -> str:
    """A parsed JSON value's type as JSON names it: quarantine details said `NoneType` and `list`."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def is_blank_line(raw: bytes) -> bool:
    """A line that holds no record: whitespace, or a byte-order mark and whitespace."""
    return not raw.strip() or (raw[:3] == _BOM and not raw[3:].strip())


def parse_json_object(raw: bytes) -> tuple[dict | None, str, str]:
    """One JSONL line as a JSON object, or why not: (object, reason, detail). Never raises.

    A UTF-8 byte-order mark before the JSON is accepted (Windows tools write one). The
    build's documents (`parse_line`) and the synthetic-data inputs (`dolmino.synth.inputs`)
    judge lines by these rules, so a line is good or bad alike in both."""
    if raw[:3] == _BOM:
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, "invalid_utf8", str(exc)
    obj, reason, detail = _decode_json(text)
    if reason:
        return None, reason, detail
    if not isinstance(obj, dict):
        return None, "not_an_object", f"top-level JSON is {_json_type(obj)}"
    return obj, "", ""


def parse_line(raw: bytes) -> tuple[dict | None, str, str]:
    """Turn one JSONL line into a document, or say why not: (doc, reason, detail). Never raises."""
    doc, reason, detail = parse_json_object(raw)
    if doc is None:
        return None, reason, detail
    if "text" not in doc:
        return None, "missing_text", "no 'text' field"
    if not isinstance(doc["text"], str):
        return None, "bad_text", f"'text' is {_json_type(doc['text'])}, expected a string"
    doc_id = doc.get("id")
    if doc_id is None or isinstance(doc_id, (dict, list, bool)) or str(doc_id) == "":
        # a missing or null id was "'id' is 'None'", read as the string "None" (found by a tester)
        return None, "bad_id", ("no 'id' field" if "id" not in doc else "'id' is empty" if doc_id == ""
                                else f"'id' is {_json_type(doc_id)}, expected a string or number")
    doc["id"] = str(doc_id)
    if "metadata" in doc and doc["metadata"] is not None and not isinstance(doc["metadata"], dict):
        return None, "bad_metadata", f"'metadata' is {_json_type(doc['metadata'])}, expected an object"
    # Lone surrogates (\ud800 escapes without their pair) are valid JSON but cannot be written
    # back as UTF-8: in the text, the id, or any metadata string they would crash a writer later.
    problem = lone_surrogate(doc)
    if problem is not None:
        return None, "invalid_utf8", f"a string holds unencodable code points: {problem}"
    return doc, "", ""


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _first_line_hint(path: str, raw: bytes) -> str:
    """What a file whose first line is refused holds instead of UTF-8 JSONL, where its first bytes
    tell: compressed data, UTF-16 text (what Windows PowerShell 5's `>` writes), or one JSON array,
    whose every line was quarantined as invalid UTF-8 or malformed JSON, saying none of that (found by a tester)."""
    if held := _compressed_as(raw):
        return _compressed_hint(path, held)
    if raw.startswith(_UTF16_BOMS):
        return "; the file is UTF-16 text (it starts with a UTF-16 byte-order mark): convert it to UTF-8"
    if b"\r" in raw.rstrip(b"\r\n") and parse_json_object(raw.split(b"\r", 1)[0])[0] is not None:
        # lines ending in a carriage return alone (classic Mac OS): the whole file read as one line,
        # its documents one quarantined record (found by a tester). Said only where the text before
        # the first one is a whole JSON object: a raw \r is also JSON whitespace inside a line
        return "; its lines end in a carriage return alone (\\r, classic Mac OS line ends): convert them to \\n"
    if raw.removeprefix(_BOM).lstrip().startswith(b"["):
        # `json.dump(docs)`, pandas' `to_json(orient="records")`, datasets' `to_json(lines=False)`: one JSON
        # array, every line of it quarantined with a parser message ("Expecting value: line 1 column 2")
        # that did not say the file is not JSON Lines (found by a tester)
        return ("; the file starts with a JSON array: documents are JSON Lines, one object per line "
                "(`jq -c '.[]' FILE` converts an array)")
    return ""


def _compressed_hint(path: str, held: str) -> str:
    """What a file whose first line is `held` compressed data should do about it. Under a plain
    name: add the suffix. Under a compressed name the data was compressed twice, where "add .gz
    to its name" was advice for a file already named .jsonl.gz (found by a tester)."""
    outer = compression(path, DOCUMENT_STEMS)
    if not outer:
        return f"; the file holds {held} data: add {_SUFFIX[held]} to its name"
    return f"; the file's {outer} data holds {held} data again (compressed twice): decompress it once and keep the name"


def read_documents(path: str, quarantine: Quarantine, *, max_doc_bytes: int | None = DEFAULT_MAX_DOC_BYTES,
                   byte_range: tuple[int, int] | None = None, data: bytes | None = None,
                   size: int | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, document) for every good line; bad lines go to `quarantine`.

    Blank lines are not documents and are skipped without being counted. A line longer than
    `max_doc_bytes` (None: no limit) is quarantined as `doc_too_large` without being held in
    memory. A compressed stream that breaks part-way keeps every document before the break
    and ends with one `corrupt_stream` record (the cut line, if any, and the number of
    unreadable compressed bytes). A missing file raises FileNotFoundError, and a read error
    of the storage itself raises too: neither is a property of the data. With `byte_range`,
    only the lines starting in that range are read, numbered from 1; `quarantine.lines`
    grows by the number of lines read (the next range's numbering starts after them). `data`:
    the whole file's raw bytes, already fetched (`dolmino.prefetch`). `size`: the listed size,
    as in `iter_lines` (a file that no longer has it raises InputChangedError, not quarantine).
    """
    path = str(path)
    line_no = 0
    try:
        for line_no, raw in enumerate(iter_lines(path, max_doc_bytes, byte_range, data, size), start=1):
            if type(raw) is OversizeLine:
                quarantine.add(path, line_no, "doc_too_large",
                               f"line of {raw.size:,} bytes exceeds the limit of {max_doc_bytes:,}",
                               bytes(raw), size=raw.size)
                continue
            if is_blank_line(raw):
                continue
            doc, reason, detail = parse_line(raw)
            if doc is None:
                if line_no == 1 and not (byte_range and byte_range[0]):
                    detail += _first_line_hint(path, raw)
                quarantine.add(path, line_no, reason, detail, raw)
            else:
                yield line_no, doc
    except CorruptStreamError as exc:
        partial = exc.partial_line
        size = partial.size if type(partial) is OversizeLine else len(partial)
        if partial and type(partial) is not OversizeLine:
            # The last line before the break may be a whole document without its newline.
            doc, _, _ = parse_line(partial)
            if doc is not None:
                line_no += 1
                yield line_no, doc
                partial, size = b"", 0
        detail = str(exc) + (f"; line cut at {size:,} bytes" if size else "")
        quarantine.add(path, line_no + 1, "corrupt_stream", detail, bytes(partial), size=size,
                       unreadable_bytes=exc.unreadable_bytes)
    quarantine.lines += line_no


class DuplicateIds:
    """Counts documents whose id already occurred earlier in the same file.

    Feed it the ids of one file in order (`add`); the first occurrence of an id is not a
    duplicate, each later one is (an id seen 3 times counts 2). Quarantined lines have no
    trusted id and are not fed. `merge` sums the counts of several files for a per-source
    total; it does not find the same id in two files (that needs a shuffle: a Spark stage).
    The set of seen ids is dropped on pickling, so a finished counter is small to ship.
    """

    MAX_EXAMPLES = 5

    def __init__(self) -> None:
        self.duplicates = 0
        self.examples: list[str] = []
        self._seen: set[str] = set()

    def add(self, doc_id: str) -> bool:
        """True if `doc_id` was already seen in this file."""
        if doc_id in self._seen:
            self.duplicates += 1
            if len(self.examples) < self.MAX_EXAMPLES and doc_id not in self.examples:
                self.examples.append(doc_id)
            return True
        self._seen.add(doc_id)
        return False

    def merge(self, other: DuplicateIds) -> None:
        self.duplicates += other.duplicates
        for doc_id in other.examples:
            if len(self.examples) < self.MAX_EXAMPLES and doc_id not in self.examples:
                self.examples.append(doc_id)

    def to_dict(self) -> dict:
        return {"duplicates": self.duplicates, "examples": list(self.examples)}

    def __getstate__(self) -> dict:
        return {"duplicates": self.duplicates, "examples": self.examples}

    def __setstate__(self, state: dict) -> None:
        self.duplicates, self.examples, self._seen = state["duplicates"], state["examples"], set()


def _compressing_writer(path: str, raw: IO[bytes]) -> IO[bytes]:
    found = compression(path, DOCUMENT_STEMS)
    if found == "zstd":
        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
    if found == "gzip":
        # mtime=0 and no file name: byte-identical output for identical input.
        return gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="")
    if found == "":
        return raw
    raise DocumentFormatError(f"{path}: unknown document file suffix (documents end in {DOCUMENT_NAMES})")


def dolma_record(doc: dict) -> dict:
    """The public Dolma fields of a document (drops the build's private keys)."""
    return {k: doc[k] for k in DOLMA_FIELDS if k in doc}


def write_documents(path: str, docs: Iterable[dict]) -> int:
    """Write documents as JSONL (compressed by suffix); returns the number written.

    Local files are written to a temporary name and renamed, so a crash never leaves a
    truncated file that looks complete.
    """
    return write_lines(str(path), (json.dumps(dolma_record(doc), ensure_ascii=False) for doc in docs))


def write_quarantine(path: str, records: Iterable[QuarantineRecord]) -> int:
    """Write quarantine records as JSONL (one object per refused line)."""
    return write_lines(path, (rec.to_json() for rec in records))


def write_lines(path: str, lines: Iterable[str]) -> int:
    """JSON `lines` (documents, quarantine records, scores) to `path`, one per line, compressed by
    its suffix; the number written. Locally through a temporary name, removed if the write fails
    or is interrupted (it was left behind beside the file; found by a tester)."""
    from dolmino.storage import open_temporary  # a temporary of this write alone (two nodes' pids can agree)

    count = 0
    tmp, opened = (path, None) if _is_s3(path) else open_temporary(path)
    try:
        with (open_binary(tmp, "wb") if opened is None else opened) as raw:
            writer = _compressing_writer(path, raw)
            for line in lines:
                writer.write(line.encode("utf-8") + b"\n")
                count += 1
            if writer is not raw:
                writer.close()
        if tmp != path:
            os.replace(tmp, path)
    except BaseException:
        if tmp != path and os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return count
