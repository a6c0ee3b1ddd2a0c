"""Input rows for generators that transform existing data (TinyGSM, MIND, labelling, GSM8K).

A transforming generator numbers its items like every other generator: item i is the i-th
non-blank line over the input files in sorted order. The driver indexes the files once
(per file: size, line count, sha256) and that small index travels to the executors with the
generator, so a partition opens only the files that overlap its slice of items and never
loads the whole input (TinyGSM is 12M rows). The sha256s make the input part of the
generator's config hash: a changed input file regenerates, an unchanged one resumes.

Paths are files and globs, local or s3:// (`**` recursive in both). Every executor reads
the files of its own partitions, so on a cluster whose nodes share no filesystem the input
must be on S3.
A line that is not a JSON object is still an item: it is handed back as a quarantine
record (`invalid_utf8`, `malformed_json`, `not_an_object`, ...) with its file and line number,
so attempted = kept + rejected + quarantined holds for every run. Lines are judged as the
build's reader judges them (`dolmino.documents.parse_line`): a UTF-8 byte-order mark is
accepted, and a lone surrogate escape (`\\ud800`), valid JSON that no UTF-8 writer can
write back, is `invalid_utf8`. A compressed file that breaks off (truncated, corrupt) keeps
its rows before the break, and the rest is one more item, quarantined as `corrupt_stream`,
as the build's reader does (`dolmino.documents.read_documents`).
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from typing import Iterator

from dolmino.documents import CorruptStreamError, is_blank_line, iter_lines, lone_surrogate, parse_json_object
from dolmino.s3 import is_s3


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    rows: int  # non-blank lines
    sha256: str


@dataclass(frozen=True)
class InputRow:
    """One item of a transforming generator: its global index, where it came from, and the
    parsed object (or, when the line is not a JSON object, why not)."""

    index: int
    path: str
    line: int  # 1-based line number in `path`
    obj: dict | None
    reason: str = ""  # quarantine reason when obj is None
    detail: str = ""
    raw: bytes = b""


def expand_inputs(patterns: str | list[str] | tuple[str, ...]) -> list[str]:
    """Files named by paths / globs (`**` recursive), sorted, each once; an error if none match."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files: list[str] = []
    for pattern in patterns:
        if is_s3(pattern):
            from dolmino.s3 import expand_uri_glob

            if not (matched := expand_uri_glob(pattern)):
                raise ValueError(f"no input objects match {pattern!r}")
            files.extend(matched)
            continue
        if any(ch in pattern for ch in "*?["):
            matched = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        else:
            matched = [pattern] if os.path.isfile(pattern) else []
        if not matched:
            raise ValueError(f"no input files match {pattern!r}")
        files.extend(os.path.abspath(p) for p in matched)
    return list(dict.fromkeys(files))


def _lines(path: str) -> Iterator[tuple[int, bytes, str | None]]:
    """(line number, raw line, None) for every line of `path`, blank ones too; where a compressed
    stream breaks, then (line number, the cut line, what broke) for the rest of the file. A cut
    line that is a whole JSON object is a line of its own first, as the build reads it."""
    line_no = 0
    try:
        for line_no, raw in enumerate(iter_lines(path), start=1):
            yield line_no, raw, None
    except CorruptStreamError as exc:  # a traceback that stopped the run (found by a tester)
        partial = bytes(exc.partial_line)
        if partial and not is_blank_line(partial) and parse_row(partial)[0] is not None:
            line_no += 1
            yield line_no, partial, None
            partial = b""
        yield line_no + 1, partial, str(exc) + (f"; line cut at {len(partial):,} bytes" if partial else "")


def index_file(path: str) -> InputFile:
    digest = hashlib.sha256()
    rows = 0
    for _, raw, broken in _lines(path):
        digest.update(raw + b"\n" + (broken or "").encode())
        if broken is not None or not is_blank_line(raw):
            rows += 1
    if is_s3(path):
        from dolmino.s3 import object_size

        size = object_size(path)
    else:
        size = os.path.getsize(path)
    return InputFile(path, size, rows, digest.hexdigest())


def parse_row(raw: bytes) -> tuple[dict | None, str, str]:
    """(object, "", "") or (None, quarantine reason, detail); never raises."""
    obj, reason, detail = parse_json_object(raw)
    if obj is None:
        return None, reason, detail
    # A lone surrogate would only fail later, when the runner encodes the partition's output,
    # and take every other row of the partition down with it.
    problem = lone_surrogate(obj)
    if problem is not None:
        return None, "invalid_utf8", f"a string holds unencodable code points: {problem}"
    return obj, "", ""


class InputFiles:
    """The indexed input of a transforming generator (picklable; index built on first use)."""

    def __init__(self, patterns: str | list[str] | tuple[str, ...]):
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        self._files: tuple[InputFile, ...] | None = None

    @property
    def files(self) -> tuple[InputFile, ...]:
        if self._files is None:
            paths = expand_inputs(self.patterns)
            from dolmino.build.inputs import SYNTH_REPORT, unfinished_synth

            if unfinished := unfinished_synth(paths):
                # `mind --input 'build/synth/tinygsm/part-*'` (or owm_math train) over a run that was
                # interrupted took what it had, which a build of the same files refuses (a tester)
                more = f" (and {len(unfinished) - 1} more)" if len(unfinished) > 1 else ""
                raise ValueError(f"{unfinished[0]}{more} holds `dolmino synth` parts without its {SYNTH_REPORT} "
                                 "(a run interrupted, or with partitions unanswered); rerun the synth command "
                                 "that writes it to finish it first")
            self._files = tuple(index_file(p) for p in paths)
        return self._files

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def fingerprint(self) -> dict:
        """What identifies the input in a config hash: file names, sizes, rows and contents."""
        return {"files": [{"name": os.path.basename(f.path), "rows": f.rows, "sha256": f.sha256}
                          for f in self.files], "rows": self.total_rows}

    def rows(self, start: int, stop: int) -> Iterator[InputRow]:
        """Rows start .. stop-1 (global indices), reading only the files that hold them."""
        offset = 0
        for f in self.files:
            if offset >= stop:
                return
            if offset + f.rows <= start:
                offset += f.rows
                continue
            k = offset
            for line_no, raw, broken in _lines(f.path):
                if broken is None and is_blank_line(raw):
                    continue
                if k >= stop:
                    break
                if k >= start:
                    obj, reason, detail = parse_row(raw) if broken is None else (None, "corrupt_stream", broken)
                    yield InputRow(k, f.path, line_no, obj, reason, detail, b"" if obj is not None else raw)
                k += 1
            if k < min(stop, offset + f.rows):
                raise ValueError(f"{f.path} changed since it was indexed ({k - offset} of {f.rows} rows left)")
            offset += f.rows
