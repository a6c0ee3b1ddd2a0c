"""Reading one unit of input, in the tag phase (every line) and the write phase (chosen lines).

Both go through `dolmino.documents` (decompression, quarantine of bad lines, the maximum
document size); a unit that is a byte range of a plain .jsonl reads the lines that start
in it. Line numbers are counted within the unit (1-based, blank lines included); the build
adds the lines of earlier ranges to name a document `path:line` exactly as an unsplit
read would.
"""

from __future__ import annotations

from typing import Iterator

from dolmino.build.inputs import Unit
from dolmino.errors import InputChangedError
from dolmino.documents import DEFAULT_MAX_DOC_BYTES, OversizeLine, Quarantine, parse_line, pick_lines, read_documents
from dolmino.prefetch import ReadAhead


def byte_range(unit: Unit) -> tuple[int, int] | None:
    """The range of the unit's input to read; None for a whole file, and for every Stack
    Exchange unit, whose documents file (derived by the tag phase, one per unit) is read whole."""
    return (unit.start, unit.end) if unit.is_range and unit.file.format != "stackexchange" else None


def listed_size(uri: str, unit: Unit) -> int | None:
    """The size the listing found for the input `uri` reads; None for a Stack Exchange
    unit's documents file, which the tag phase wrote (the unit's input is the Posts.xml)."""
    return unit.file.size if uri == unit.file.uri else None


def read_unit(uri: str, unit: Unit, quarantine: Quarantine,
              max_doc_bytes: int | None = DEFAULT_MAX_DOC_BYTES, data: bytes | None = None) -> Iterator[tuple[int, dict]]:
    """(line within the unit, document) for every good line; bad lines go to the quarantine,
    and `quarantine.lines` counts the unit's lines. `data`: the file's bytes, fetched ahead."""
    docs = read_documents(uri, quarantine, max_doc_bytes=max_doc_bytes, byte_range=byte_range(unit), data=data,
                          size=listed_size(uri, unit))
    return docs if uri != unit.file.uri else still_listed(docs, uri)


def _input_gone(uri: str, exc: BaseException) -> BaseException:
    """What a listed input that raised `exc` while read raises instead: a deleted one (a local
    file, or an S3 object: both raise FileNotFoundError) ended the build with "in an executor:
    FileNotFoundError: [Errno 2] No such file or directory" (a tester). A missing bucket is not
    the file's doing (an executor whose endpoint or region sees other buckets) and keeps its own
    line, as for an attribute file (a reviewer). A read of an S3 input that failed for good is named:
    smart_open's "failed to read 131072 bytes after 5 attempts" of a body cut off every time named the object
    only as `smart_open.s3._SeekableReader('bucket', 'key')`, and not why (found by a tester)."""
    from dolmino.s3 import NoSuchBucket, is_s3, named_failure

    if isinstance(exc, FileNotFoundError) and not isinstance(exc, NoSuchBucket):
        return InputChangedError(f"{uri}: the input file disappeared during the build (it was listed, then not "
                                 "found); rerun once the inputs are stable (finished attribute files and parts are "
                                 "kept)")
    return named_failure(uri, exc) if is_s3(uri) else exc


class listed_input:
    """Reading the listed input `uri`, which must still exist (`_input_gone`). A class, not a
    @contextmanager generator: it is entered once per input file, 20,000 times for as many small files."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None and (gone := _input_gone(self.uri, exc)) is not exc:
            raise gone from None
        return False


def still_listed(items: Iterator, uri: str) -> Iterator:
    """`items`, read lazily from the listed input `uri`, as under `listed_input` (one generator,
    without a context manager's own per file)."""
    try:
        yield from items
    except OSError as exc:
        gone = _input_gone(uri, exc)
        if gone is exc:
            raise
        raise gone from None


def fetch_ahead(units, threads: int) -> ReadAhead:
    """A task's read-ahead over its units, in the order it reads them. Only whole input files
    are fetched ahead: a range is read from its own offset, and a Stack Exchange unit's
    documents file (which the reader asks for by its own URI) is read as before."""
    return ReadAhead(((unit.file.uri, unit.file.size) for unit in units
                      if not unit.is_range and unit.file.format != "stackexchange"), threads)


def read_lines(uri: str, unit: Unit, wanted: list[int],
               max_doc_bytes: int | None = DEFAULT_MAX_DOC_BYTES, data: bytes | None = None) -> Iterator[tuple[int, dict]]:
    """The documents at the given (sorted) lines of a unit, parsing nothing else.

    The lines were good documents when the unit was tagged; one that no longer parses means
    the input changed under the build, which must not pass silently."""
    expected = iter(wanted)
    lines = pick_lines(uri, wanted, max_doc_bytes, byte_range(unit), data, listed_size(uri, unit))
    for line_no, raw in (lines if uri != unit.file.uri else still_listed(lines, uri)):
        next(expected)  # pick_lines gives the wanted lines in order, stopping where the file ends
        doc, reason, detail = (None, "doc_too_large", "") if type(raw) is OversizeLine else parse_line(raw)
        if doc is None:
            raise InputChangedError(f"{uri}: {_line_name(unit, line_no)} was a document when tagged but now is not "
                                    f"({reason}: {detail}); the input changed during the build")
        yield line_no, doc
    target = next(expected, None)
    if target is not None:
        raise InputChangedError(f"{uri}: ends before {_line_name(unit, target)}, which was a document when tagged; "
                                "the input changed")


def _line_name(unit: Unit, line: int) -> str:
    """A unit's line as a message names it: a byte range counts its lines from its own start (the
    build adds the earlier ranges' lines), so "line 2" of a split file named another line (a tester)."""
    if byte_range(unit) is None:
        return f"line {line}"
    return f"line {line} of those starting in its bytes {unit.start:,}-{unit.end:,}"
