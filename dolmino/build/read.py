"""Reading one unit of input, in the tag phase (every line) and the write phase (chosen lines).

Whole files go through `dolmino.documents` (decompression, quarantine of bad lines). A byte
range of a plain .jsonl is read from `start`: the partial line before it belongs to the
previous range, and every line that starts before `end` is read to its end, so ranges tile
the file. Line numbers are counted within the unit (1-based, blank lines included, as
`read_documents` counts them); the build adds the lines of earlier ranges to name a
document `path:line` exactly as an unsplit read would.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import zstandard

from dolmino.build.inputs import Unit
from dolmino.documents import Quarantine, iter_lines, open_binary, parse_line, read_documents

CHUNK_BYTES = 1 << 20


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines of a byte stream without their newline (a trailing CR is kept for the caller)."""
    pending: list[bytes] = []
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            if pending:
                pending.append(chunk[start:end])
                yield b"".join(pending)
                pending = []
            else:
                yield chunk[start:end]
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        yield b"".join(pending)


def _range_lines(uri: str, start: int, end: int) -> Iterator[bytes]:
    """Every line that starts in [start, end), each read to its end."""
    with open_binary(uri) as fh:
        skip = start > 0
        pos = start - 1 if skip else 0
        fh.seek(pos)
        # Read from the byte before `start`: if it is a newline, the first piece is empty and the
        # line at `start` is ours; otherwise the first piece ends a line of the previous range.
        for line in split_lines(iter(lambda: fh.read(CHUNK_BYTES), b"")):
            if skip:
                skip = False
            elif pos >= end:
                return
            else:
                yield line
            pos += len(line) + 1


def unit_lines(uri: str, unit: Unit) -> Iterator[tuple[int, bytes]]:
    """(line number within the unit, raw line without newline or trailing CR)."""
    if not unit.is_range:
        yield from enumerate(iter_lines(uri), start=1)
        return
    for line_no, line in enumerate(_range_lines(uri, unit.start, unit.end), start=1):
        yield line_no, line.rstrip(b"\r")


def read_unit(uri: str, unit: Unit, quarantine: Quarantine, counter=None) -> Iterator[tuple[int, dict]]:
    """(line within the unit, document) for every good line; bad lines go to the quarantine.

    For a byte range, `counter.lines` is set to the number of lines read (the next range of
    the file starts its numbering there); a whole file needs no such count."""
    if not unit.is_range:
        yield from read_documents(uri, quarantine)
        return
    line_no = 0
    try:
        for line_no, raw in unit_lines(uri, unit):
            if not raw.strip():
                continue
            doc, reason, detail = parse_line(raw)
            if doc is None:
                quarantine.add(uri, line_no, reason, detail, raw)
            else:
                yield line_no, doc
    except (zstandard.ZstdError, OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        quarantine.add(uri, line_no + 1, "corrupt_stream", f"{type(exc).__name__}: {exc}", b"")
    if counter is not None:
        counter.lines = line_no


def read_lines(uri: str, unit: Unit, wanted: list[int]) -> Iterator[tuple[int, dict]]:
    """The documents at the given (sorted) lines of a unit, parsing nothing else.

    The lines were good documents when the unit was tagged; one that no longer parses means
    the input changed under the build, which must not pass silently."""
    if not wanted:
        return
    targets = iter(wanted)
    target = next(targets)
    for line_no, raw in unit_lines(uri, unit):
        if line_no < target:
            continue
        doc, reason, detail = parse_line(raw)
        if doc is None:
            raise OSError(f"{uri}: line {line_no} was a document when tagged but now is not ({reason}: {detail}); "
                          "the input changed during the build")
        yield line_no, doc
        target = next(targets, None)
        if target is None:
            return
    raise OSError(f"{uri}: ends before line {target}, which was a document when tagged; the input changed")
