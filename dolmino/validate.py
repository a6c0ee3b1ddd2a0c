"""`dolmino validate BUILD_DIR`: check a build's token memmaps before anyone trains on them.

A broken part fails late and expensively: an id >= vocab_size crashes the embedding lookup
hours into a run, a missing EOS silently glues two documents together, and a sidecar that
does not tile its token file makes every per-document statistic wrong. This checks, for
every part `<stem>.npy` under BUILD_DIR (docs/DESIGN.md "Memmaps"):

- the file is raw uint32: a whole number of 4-byte tokens and no .npy header;
- every id is < vocab_size (the build's manifest.json tokenizer, else 100278);
- the `<stem>.csv.gz` sidecar exists and parses as `start,end,id,src,loc` rows that are
  contiguous and non-overlapping (row 0 starts at 0, each row starts where the previous
  one ended, start < end) and cover the file exactly (the last end is the token count);
- the token at every row's `end - 1` is EOS (manifest's eos_token_id, else 100257);
- no row holds EOS before its last token: a document whose text contained "<|endoftext|>"
  (encoded as EOS under the default control-token policy, as `dolma tokens` does) would be
  split in two by OLMo-core or any loader that treats EOS as a document boundary. This is
  a warning with the count (the released OLMo 2 data has such documents); `--strict` makes
  it an error;
- the optional `<stem>.label_mask.npy` has one 0/1 byte per token;
- report.json's token and document counts match the parts, and each source's the sidecars' `src` rows,
  as does its tokens-per-document histogram (`doc_tokens_hist`, what `dolmino report` draws);
- no sidecar or label mask is left without its token file.

The token scan runs in C++ (csrc) when built, else numpy; `--backend` forces one. The EOS
count of that scan makes the inside-a-span check free in the usual case: when every row
ends in EOS and the part holds exactly one EOS per row, none can be inside. Only otherwise
are the EOS offsets found (numpy, chunked) and placed in their rows with one searchsorted.
Exit status 0 with a summary (and warnings) when every part is fine, 1 with one line per
problem (each naming its file) otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import csrc
from dolmino.argtypes import at_least, is_count
from dolmino.doc_lengths import histogram

DEFAULT_VOCAB_SIZE = 100278
DEFAULT_EOS_ID = 100257
TOKEN_DTYPE = np.dtype("<u4")
NPY_MAGIC = b"\x93NUMPY"
MASK_SUFFIX = ".label_mask.npy"
SIDECAR_SUFFIX = ".csv.gz"
SIDECAR_FIELDS = ("start", "end", "id", "src", "loc")
MAX_LISTED = 5  # offending rows / offsets named per problem


@dataclass
class PartResult:
    path: Path
    tokens: int = 0
    docs: int = 0
    max_id: int = -1
    eos: int = 0
    eos_inside_docs: int = 0  # rows whose span holds EOS before its last token
    unreadable: set[str] = field(default_factory=set)  # its files said to be unreadable (their checksums are not)
    by_source: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # sidecar `src`: tokens, docs, 1st row
    hist_by_source: dict[str, list[int]] = field(default_factory=dict)  # sidecar `src`: doc_lengths histogram
    masked_by_source: dict[str, int] | None = None  # the label mask's 0 bytes per sidecar `src`; None: no mask read
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors.append(f"{self.path}: {message}")

    def warn(self, message: str) -> None:
        self.warnings.append(f"{self.path}: {message}")


@dataclass
class BuildResult:
    build_dir: Path
    vocab_size: int
    eos_id: int
    backend: str
    parts: list[PartResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # problems not tied to one part
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(not p.errors for p in self.parts)

    def all_errors(self) -> list[str]:
        return self.errors + [e for p in self.parts for e in p.errors]

    def all_warnings(self) -> list[str]:
        return self.warnings + [w for p in self.parts for w in p.warnings]

    @property
    def eos_inside_docs(self) -> int:
        return sum(p.eos_inside_docs for p in self.parts)

    def summary(self) -> str:
        tokens = sum(p.tokens for p in self.parts)
        docs = sum(p.docs for p in self.parts)
        max_id = max((p.max_id for p in self.parts), default=-1)
        inside = (f"; WARNING: {self.eos_inside_docs:,} document(s) hold EOS inside their span"
                  if self.eos_inside_docs else "; no EOS inside a document")
        return (f"{self.build_dir}: {len(self.parts)} part(s) OK, {tokens:,} tokens, {docs:,} documents, "
                f"max id {max_id} < vocab_size {self.vocab_size}, EOS {self.eos_id} ends every document"
                f"{inside} (scan: {self.backend})")


def _read_settings(build_dir: Path) -> tuple[int | None, int | None, str | None]:
    """(vocab_size, eos_id, error) from the build's manifest.json; Nones when there is none."""
    path = build_dir / "manifest.json"
    if not path.exists():
        return None, None, None
    try:
        tok = json.loads(path.read_text(encoding="utf-8")).get("tokenizer", {}) or {}
        vocab, eos = tok.get("vocab_size"), tok.get("eos_token_id")
        for name, value in (("vocab_size", vocab), ("eos_token_id", eos)):
            if value is not None and not is_count(value):
                return None, None, f"{path}: tokenizer.{name} must be a non-negative integer, got {value!r}"
        return vocab, eos, None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        return None, None, f"{path}: cannot read the build's manifest ({exc})"


def _open_tokens(part: PartResult) -> np.ndarray | None:
    size = part.path.stat().st_size
    if size % TOKEN_DTYPE.itemsize:
        part.error(f"{size} bytes is not a whole number of 4-byte uint32 tokens ({size % 4} stray byte(s))")
        return None
    if size == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    try:
        with open(part.path, "rb") as fh:
            if fh.read(len(NPY_MAGIC)) == NPY_MAGIC:
                part.error("has a .npy header; token files must be raw little-endian uint32 (ndarray.tofile)")
                return None
        return np.memmap(part.path, dtype=TOKEN_DTYPE, mode="r")
    except OSError as exc:  # a copy without read permission was a traceback (found by a tester)
        part.unreadable.add(part.path.name)
        part.error(f"cannot be read ({exc.strerror or exc})")
        return None


def _read_sidecar(part: PartResult, sidecar: Path) -> tuple[np.ndarray, np.ndarray, object] | None:
    """(starts, ends) as int64 arrays and the `src` column (pyarrow), or None after recording why the
    sidecar is unusable."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    try:
        with gzip.open(sidecar, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a deflate stream damaged inside, a traceback
        part.unreadable.add(sidecar.name)
        part.error(f"sidecar {sidecar.name} is not a readable gzip file ({exc})")
        return None
    if not data.strip():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), pa.chunked_array([], pa.string())
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            # one thread: pyarrow's CSV pool of several, still shutting down at interpreter exit, aborted a
            # finished validate now and then ("terminate called without an active exception", exit 134: a
            # tester, under load; apache/arrow#34314); a sidecar is small, one thread reads it in milliseconds
            read_options=pacsv.ReadOptions(column_names=list(SIDECAR_FIELDS), use_threads=False),
            convert_options=pacsv.ConvertOptions(column_types={
                "start": pa.int64(), "end": pa.int64(), "id": pa.string(), "src": pa.string(), "loc": pa.string()}),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        part.error(f"sidecar {sidecar.name} is not `start,end,id,src,loc` CSV: {str(exc).splitlines()[0]}")
        return None
    for name in ("start", "end"):
        if table.column(name).null_count:
            part.error(f"sidecar {sidecar.name} has {table.column(name).null_count} row(s) without a {name}")
            return None
    return (table.column("start").to_numpy().astype(np.int64, copy=False),
            table.column("end").to_numpy().astype(np.int64, copy=False), table.column("src"))


def _source_codes(src) -> tuple[np.ndarray, list[str]]:
    """Each sidecar row's source as an index into the source names (every name occurs)."""
    encoded = src.combine_chunks().dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False), [str(n) for n in encoded.dictionary.to_pylist()]


def _by_source(codes: tuple[np.ndarray, list[str]], starts: np.ndarray, ends: np.ndarray
               ) -> dict[str, tuple[int, int, int]]:
    """source -> (tokens, documents, first row) of a sidecar whose rows tile its token file."""
    index, names = codes
    tokens = np.bincount(index, weights=ends - starts, minlength=len(names))
    docs = np.bincount(index, minlength=len(names))
    first = np.unique(index, return_index=True)[1]  # every dictionary entry occurs: entry k's first row
    return {name: (int(tokens[k]), int(docs[k]), int(first[k])) for k, name in enumerate(names)}


def _hist_by_source(codes: tuple[np.ndarray, list[str]], starts: np.ndarray, ends: np.ndarray
                    ) -> dict[str, list[int]]:
    """source -> histogram of its rows' lengths (dolmino.doc_lengths bins), as report.json's doc_tokens_hist."""
    index, names = codes
    lengths = ends - starts
    return {name: histogram(lengths[index == k]) for k, name in enumerate(names)}


def _masked_by_source(mask: np.ndarray, codes: tuple[np.ndarray, list[str]], starts: np.ndarray, ends: np.ndarray
                      ) -> dict[str, int]:
    """source -> tokens the label mask keeps out of the loss (its 0 bytes), over sidecar rows that tile the
    mask: report.json's masked-token counts were not checked, an edited one validated OK (found by a tester).
    One pass over the mask, no copy of it: per row, its length less the sum of its 1 bytes."""
    if not len(starts):
        return {}
    index, names = codes
    kept = np.add.reduceat(mask, starts, dtype=np.int64)
    masked = np.bincount(index, weights=(ends - starts) - kept, minlength=len(names))
    return {name: int(masked[k]) for k, name in enumerate(names)}


def _rows(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:MAX_LISTED])
    return shown + (", ..." if len(indices) > MAX_LISTED else "")


def _check_layout(part: PartResult, sidecar: str, starts: np.ndarray, ends: np.ndarray, n_tokens: int) -> bool:
    """Rows tile [0, n_tokens) in order; returns False (after recording why) when they do not."""
    ok = True
    if len(starts) == 0:
        if n_tokens:
            part.error(f"sidecar {sidecar} has no rows but the token file holds {n_tokens} tokens")
            return False
        return True
    if starts[0] != 0:
        part.error(f"sidecar {sidecar} row 0 starts at {int(starts[0])}, not 0")
        ok = False
    empty = np.flatnonzero(ends <= starts)
    if len(empty):
        part.error(f"sidecar {sidecar} has {len(empty)} row(s) with end <= start (rows {_rows(empty)})")
        ok = False
    gaps = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    if len(gaps):
        k = int(gaps[0])
        kind = "overlaps" if starts[k] < ends[k - 1] else "leaves a gap after"
        part.error(f"sidecar {sidecar} rows are not contiguous at {len(gaps)} place(s) (rows {_rows(gaps)}; "
                   f"row {k} starts at {int(starts[k])} and {kind} the previous row's end {int(ends[k - 1])})")
        ok = False
    if ends[-1] != n_tokens:
        part.error(f"sidecar {sidecar} ends at {int(ends[-1])} but the token file holds {n_tokens} tokens")
        ok = False
    return ok


def eos_inside_rows(tokens: np.ndarray, ends: np.ndarray, eos_id: int) -> np.ndarray:
    """Rows (int64, ascending, unique) whose span holds EOS before its last token.

    Rows must tile the tokens (row k spans [ends[k-1], ends[k]), row 0 from 0). EOS offsets
    are found chunk by chunk (temporaries bounded as in csrc's scan) and each is placed in
    its row with searchsorted; an EOS is inside when it is not its row's last token.
    """
    ends = np.asarray(ends, dtype=np.int64)
    if not 0 <= eos_id <= np.iinfo(np.uint32).max:
        return np.zeros(0, np.int64)
    found = []
    for lo in range(0, len(tokens), csrc.SCAN_CHUNK):
        offsets = np.flatnonzero(np.asarray(tokens[lo: lo + csrc.SCAN_CHUNK]) == eos_id) + lo
        if not len(offsets):
            continue
        rows = np.searchsorted(ends, offsets, side="right")
        within = rows < len(ends)
        rows, offsets = rows[within], offsets[within]
        found.append(np.unique(rows[offsets != ends[rows] - 1]))
    return np.unique(np.concatenate(found)).astype(np.int64) if found else np.zeros(0, np.int64)


def _check_eos_inside(part: PartResult, tokens: np.ndarray, ends: np.ndarray, eos_id: int, ends_ok: bool,
                      strict: bool) -> None:
    if ends_ok and part.eos == len(ends):
        return  # one EOS per row and each row's last token is one: none can be inside
    rows = eos_inside_rows(tokens, ends, eos_id)
    part.eos_inside_docs = len(rows)
    if not len(rows):
        return
    k = int(rows[0])
    start = int(ends[k - 1]) if k else 0
    offset = start + int(np.argmax(np.asarray(tokens[start: int(ends[k]) - 1]) == eos_id))
    message = (f"{len(rows)} document(s) hold EOS {eos_id} before their last token (sidecar rows {_rows(rows)}; "
               f"row {k}: EOS at offset {offset}, the row ends at {int(ends[k])}); a loader that treats EOS as a "
               f"document boundary splits them (their text contained the EOS string: tokenizer.control_tokens "
               f"'literal' encodes it as text)")
    (part.error if strict else part.warn)(message)


def _check_mask(part: PartResult, mask_path: Path, n_tokens: int, rows=None) -> None:
    try:
        with open(mask_path, "rb") as fh:  # a directory in its place raised here, a traceback (found by a tester)
            has_header = fh.read(len(NPY_MAGIC)) == NPY_MAGIC
        if has_header:
            mask = np.load(mask_path, mmap_mode="r")
            if mask.ndim != 1 or mask.dtype.itemsize != 1:
                part.error(f"label mask {mask_path.name} must be 1-D one byte per token, got {mask.dtype} {mask.shape}")
                return
        else:
            size = mask_path.stat().st_size
            mask = np.memmap(mask_path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    except (OSError, ValueError) as exc:
        part.unreadable.add(mask_path.name)
        part.error(f"label mask {mask_path.name} cannot be read ({exc})")
        return
    if len(mask) != n_tokens:
        part.error(f"label mask {mask_path.name} has {len(mask)} entries but the token file holds {n_tokens} tokens")
        return
    if len(mask) and int(np.asarray(mask).view(np.uint8).max()) > 1:
        part.error(f"label mask {mask_path.name} holds bytes other than 0/1 (not a bool mask)")
        return
    if rows is not None:  # the sidecar's rows, checked to tile the token file
        part.masked_by_source = _masked_by_source(np.asarray(mask).view(np.uint8), *rows)


def validate_part(path: Path, vocab_size: int, eos_id: int, backend: str = "auto", strict: bool = False) -> PartResult:
    part = PartResult(path)
    tokens = _open_tokens(part)
    stem = path.name[: -len(".npy")]
    sidecar = path.with_name(stem + SIDECAR_SUFFIX)
    mask_path = path.with_name(stem + MASK_SUFFIX)
    if tokens is None:
        return part
    part.tokens = len(tokens)
    scan = csrc.scan_tokens(tokens, vocab_size, eos_id, backend=backend)
    part.max_id, part.eos = scan.max_id, scan.n_eos
    if scan.n_out_of_vocab:
        first = scan.first_out_of_vocab
        part.error(f"{scan.n_out_of_vocab} token id(s) >= vocab_size {vocab_size} (first: {int(tokens[first])} "
                   f"at offset {first}; max id {scan.max_id})")
    tiled = None  # (source codes, starts, ends) of a sidecar whose rows tile the token file
    if not sidecar.exists():
        part.error(f"sidecar {sidecar.name} is missing")
    else:
        rows = _read_sidecar(part, sidecar)
        if rows is not None:
            starts, ends, src = rows
            part.docs = len(starts)
            if _check_layout(part, sidecar.name, starts, ends, part.tokens):
                tiled = (_source_codes(src), starts, ends)  # the sources encoded once, for the mask's counts too
                part.by_source = _by_source(*tiled)
                part.hist_by_source = _hist_by_source(*tiled)
                bad = csrc.eos_mismatches(tokens, ends, eos_id, limit=MAX_LISTED + 1, backend=backend)
                if len(bad):
                    k = int(bad[0])
                    part.error(f"document(s) not ending in EOS {eos_id}: sidecar rows {_rows(bad)} (row {k}: "
                               f"token {int(tokens[ends[k] - 1])} at offset {int(ends[k] - 1)})")
                _check_eos_inside(part, tokens, ends, eos_id, ends_ok=not len(bad), strict=strict)
    if mask_path.exists():
        _check_mask(part, mask_path, part.tokens, tiled)
    return part


def _token_files(build_dir: Path) -> list[Path]:
    return sorted((p for p in build_dir.rglob("*.npy") if p.is_file() and not p.name.endswith(MASK_SUFFIX)),
                  key=lambda p: p.relative_to(build_dir).as_posix())


# A dolmino build writes these while it runs and report.json last: its completion marker. _owner.json
# comes first: a build stopped in its pool or tokenize stage left only it, and was called "no token
# files (*.npy) found", not incomplete (found by a tester; on s3:// it was said to be incomplete).
BUILD_MARKERS = ("_owner.json", "_plan.json", "_parts")
COMPLETION_MARKER = "report.json"


def _read_report(build_dir: Path) -> tuple[dict | None, str | None]:
    """(report.json as an object, None), or (None, why it cannot be read); (None, None) without one."""
    path = build_dir / COMPLETION_MARKER
    if not path.exists():
        return None, None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path}: cannot read the build report ({exc})"
    if not isinstance(report, dict):
        return None, f"{path}: cannot read the build report (a JSON {type(report).__name__}, not an object)"
    return report, None


def _completion_errors(build_dir: Path, report: dict | None) -> tuple[list[str], dict[str, str]]:
    """An unfinished build (markers but no report.json) and parts that the report does not
    list; and the SHA-256 the report certifies for each listed file on disk (`_Hashing`
    compares them: a part changed since the build, even to other valid ids, is not the data the
    report describes)."""
    report_path = build_dir / COMPLETION_MARKER
    if report is None:  # none, or unreadable (`_read_report` says so)
        from dolmino.memmap import RELEASE_FILE

        if not report_path.exists() and (build_dir / RELEASE_FILE).is_file():
            # "rerun the same build command to finish it" sent a machine that only pulled the release to a build
            # it never had (a tester)
            return [f"{build_dir}: a pulled release ({RELEASE_FILE}) without its {COMPLETION_MARKER}, which the "
                    "release holds: removed since the pull; remove the directory and pull the release again"], {}
        if not report_path.exists() and any((build_dir / m).exists() for m in BUILD_MARKERS):
            return [f"{build_dir}: incomplete build: no {COMPLETION_MARKER}, which a build writes last (it was "
                    "interrupted or is still running; rerun the same build command to finish it)"], {}
        return [], {}
    output = report.get("output")
    listed = output.get("files_sha256") if isinstance(output, dict) else None
    if not listed:
        return [], {}
    if not isinstance(listed, dict):
        return [f"{report_path}: output.files_sha256 is not a mapping of file names to SHA-256 (a damaged "
                "report)"], {}
    from dolmino.memmap import unlisted_parts

    on_disk = {p.name for p in build_dir.glob("part-*") if p.is_file()}
    missing, stale = unlisted_parts(on_disk, listed)
    errors = [f"{build_dir / name}: listed in {COMPLETION_MARKER} but missing" for name in missing]
    errors += [f"{build_dir / name}: not written by the build that {COMPLETION_MARKER} describes (stale?)"
               for name in stale]
    return errors, {name: listed[name] for name in sorted(set(listed) & on_disk)}


def _report_errors(build_dir: Path, report: dict, vocab_size: int | None) -> list[str]:
    """What the trainer reads from report.json and would refuse: output.tokens (it plans from
    them; a report without them validated OK and the trainer refused the build, found by a
    tester), and a vocab_size other than the build's manifest.json states (the trainer checks
    the model against it)."""
    path = build_dir / COMPLETION_MARKER
    output = report.get("output")
    errors = []
    if not isinstance(output, dict) or not is_count(output.get("tokens")):
        errors.append(f"{path}: no output.tokens (a count of tokens), which the trainer plans from (a damaged report)")
    elif "docs" in output and not is_count(output["docs"]):
        errors.append(f"{path}: output.docs is {output['docs']!r}, not a count of documents (a damaged report)")
    try:
        manifest = json.loads((build_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        manifest = None  # none, or `_read_settings` says why
    from dolmino.memmap import manifest_mismatches

    # `release publish` refused this, validate passed it (found by a tester)
    errors += [f"{build_dir / 'manifest.json'}: {key} is {theirs!r}, but {COMPLETION_MARKER} says the build's was "
               f"{built!r}: manifest.json is not the build's (replaced since?); restore it or rebuild"
               for key, theirs, built in manifest_mismatches(manifest, report)]
    stated = report.get("vocab_size")
    if stated is not None and vocab_size is not None and stated != vocab_size:
        errors.append(f"{path}: vocab_size is {stated!r}, the build's manifest.json says {vocab_size} (the trainer "
                      "checks the model against the report's; a damaged report)")
    return errors


def _count_errors(build_dir: Path, report: dict, parts: list[PartResult]) -> list[str]:
    """report.json's token and document counts against what its parts hold (each part checked
    without errors): the trainer plans from `output.tokens`, and a report edited by hand or
    copied from another build read as OK (found by a tester)."""
    path = build_dir / COMPLETION_MARKER
    output = report.get("output")
    if not isinstance(output, dict):  # `_report_errors` says so
        return []
    listed = output.get("parts") or []
    if not isinstance(listed, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in listed):
        return [f"{path}: output.parts is not a list of part records with names (a damaged report)"]
    held = {p.path.name: p for p in parts if p.path.parent == build_dir}
    errors = []
    for entry in listed:
        part = held.get(entry["name"])
        if part is None or part.errors:
            continue
        errors += [f"{part.path}: {COMPLETION_MARKER} says {entry[key]:,} {key}, the part holds {have:,}"
                   for key, have in (("tokens", part.tokens), ("docs", part.docs))
                   if isinstance(entry.get(key), int) and entry[key] != have]
    if held and not any(p.errors for p in held.values()):
        for key in ("tokens", "docs"):
            have = sum(getattr(p, key) for p in held.values())
            if isinstance(output.get(key), int) and output[key] != have:
                errors.append(f"{path}: output.{key} is {output[key]:,}, its parts hold "
                              f"{have:,}")
        # what report.md prints beside them: an edited one validated OK (found by a tester)
        totals, have = report.get("totals"), sum(p.tokens for p in held.values())
        if isinstance(totals, dict) and is_count(totals.get("tokens_written")) and totals["tokens_written"] != have:
            errors.append(f"{path}: totals.tokens_written is {totals['tokens_written']:,}, its parts hold {have:,}")
        if all(p.masked_by_source is not None for p in held.values()) and is_count(output.get("masked_tokens")):
            masked = sum(sum(p.masked_by_source.values()) for p in held.values())
            if output["masked_tokens"] != masked:
                errors.append(f"{path}: output.masked_tokens is {output['masked_tokens']:,}, its label masks hold "
                              f"{masked:,} masked (0) tokens")
        errors += _source_errors(path, report, list(held.values()))
        errors += _hist_errors(path, report, list(held.values()))
    return errors


def _source_errors(path: Path, report: dict, parts: list[PartResult]) -> list[str]:
    """report.json's sources' output_tokens / output_docs against the sidecars' `src` column: a
    source's count edited, or a sidecar row naming a source the build does not have, read as OK
    (found by a tester): only the totals were compared, and a sidecar only by its SHA-256."""
    sources = report.get("sources")
    if not isinstance(sources, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                                for s in sources):
        return []
    names = {s["name"] for s in sources}
    errors = []
    for part in parts:
        for name, (_, docs, row) in sorted(part.by_source.items()):
            if name not in names:
                errors.append(f"{part.path.with_name(part.path.name[:-len('.npy')] + SIDECAR_SUFFIX)}: {docs:,} "
                              f"row(s) name source {name!r} (first: row {row}), which {COMPLETION_MARKER} does not "
                              "have")
    for source in sources:
        for key, index in (("output_tokens", 0), ("output_docs", 1)):
            have = sum(p.by_source.get(source["name"], (0, 0, 0))[index] for p in parts)
            if is_count(source.get(key)) and source[key] != have:
                errors.append(f"{path}: source {source['name']!r} {key} is {source[key]:,}, the sidecars' rows of "
                              f"it hold {have:,}")
        if all(p.masked_by_source is not None for p in parts) and is_count(source.get("output_masked_tokens")):
            have = sum(p.masked_by_source.get(source["name"], 0) for p in parts)
            if source["output_masked_tokens"] != have:
                errors.append(f"{path}: source {source['name']!r} output_masked_tokens is "
                              f"{source['output_masked_tokens']:,}, the label masks of its rows hold {have:,}")
    return errors


def _hist_errors(path: Path, report: dict, parts: list[PartResult]) -> list[str]:
    """report.json's doc_tokens_hist against the sidecars' rows: `dolmino report` draws it as "every part
    counted", and a build resumed over parts committed without a histogram counted only the parts it wrote,
    which validated OK (found by a tester)."""
    said = report.get("doc_tokens_hist")
    if not isinstance(said, dict):  # builds from before it; `dolmino report` reads the sidecars for those
        return []
    have: dict[str, np.ndarray] = {}
    for part in parts:
        for name, counts in part.hist_by_source.items():
            have[name] = have.get(name, 0) + np.asarray(counts, dtype=np.int64)
    errors = []
    for name in sorted({*said, *have}):
        counts = said.get(name, [])
        ours = [int(c) for c in have.get(name, [])]
        counted = isinstance(counts, list) and all(is_count(c) for c in counts)
        if counted and (counts == ours or (not any(counts) and not ours)):
            continue
        total = f"{sum(counts):,} document instance(s)" if counted else "no list of counts"
        errors.append(f"{path}: doc_tokens_hist of source {name!r} holds {total}, not the lengths of the sidecars' "
                      f"{sum(ours):,} row(s) of it (a build resumed over parts that recorded none, before dolmino read "
                      "them from the sidecars: run the same build command again; it keeps the parts and rewrites "
                      "the report)")
    return errors


class _Hashing:
    """SHA-256 of the certified files, each read while its part is checked: the check and the
    hash then read a part once from disk and once from the page cache. Hashing every file first
    and checking after read a 300B-token build (1.2 TB of parts) from disk twice. At most
    `window` parts are hashed behind the checks, so those pages are still cached."""

    def __init__(self, build_dir: Path, certified: dict[str, str]):
        from concurrent.futures import ThreadPoolExecutor

        self.build_dir, self.certified = build_dir, certified
        self.window = min(8, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=self.window)  # hashlib releases the GIL
        self.digests: dict = {}
        self.behind: list = []

    def start(self, names) -> None:
        from dolmino.checksums import sha256_file

        for name in names:
            if name in self.certified and name not in self.digests:
                self.digests[name] = future = self.pool.submit(sha256_file, str(self.build_dir / name))
                self.behind.append(future)
        while len(self.behind) > self.window:
            self.behind.pop(0).exception()  # waits; a file that cannot be read is said by `errors`

    def errors(self, said: set[str]) -> list[str]:
        """Compares every certified file (those no part named are hashed now); `said`: names the part
        checks already called unreadable, each said once."""
        self.start(self.certified)
        self.pool.shutdown(wait=True)
        errors = []
        for name, future in sorted(self.digests.items()):
            try:
                digest = future.result()
            except OSError as exc:  # no read permission: a traceback from the hashing thread (found by a tester)
                if name not in said:
                    errors.append(f"{self.build_dir / name}: cannot be read ({exc.strerror or exc})")
                continue
            if digest != self.certified[name]:
                errors.append(f"{self.build_dir / name}: SHA-256 {digest[:16]}... but {COMPLETION_MARKER} certifies "
                              f"{str(self.certified[name])[:16]}...: the file changed after the build finished")
        return errors


def validate_build(build_dir: str | Path, *, vocab_size: int | None = None, eos_id: int | None = None,
                   backend: str = "auto", strict: bool = False, checksums: bool = True) -> BuildResult:
    """Check every part under build_dir; explicit vocab_size / eos_id override the build's manifest.

    `strict` turns warnings (EOS inside a document's span) into errors; `checksums` compares
    every file report.json lists with its SHA-256 (read beside its check, mostly from the page cache).
    """
    build_dir = Path(build_dir)
    m_vocab, m_eos, m_error = _read_settings(build_dir) if build_dir.is_dir() else (None, None, None)
    vocab = vocab_size if vocab_size is not None else (m_vocab if m_vocab is not None else DEFAULT_VOCAB_SIZE)
    eos = eos_id if eos_id is not None else (m_eos if m_eos is not None else DEFAULT_EOS_ID)
    native = backend != "fallback" and csrc.native_available()
    result = BuildResult(build_dir, vocab, eos, "native C++" if native else "numpy fallback")
    if not build_dir.is_dir():
        # "not a directory" for a path with nothing there sent the user looking for a file (a tester)
        result.errors.append(f"{build_dir}: {'a file, not a directory' if build_dir.exists() else 'no such directory'}")
        return result
    from dolmino.memmap import PULL_OWNER, unfinished_pull

    if (dest := unfinished_pull(build_dir)) is not None:
        # It was called an incomplete build, "rerun the same build command to finish it", with one error per
        # file the killed pull had not fetched yet, while the trainer named the pull (found by a tester)
        result.errors.append(f"{build_dir}: the temporary directory of an unfinished `dolmino release pull` into "
                             f"{dest} (it holds {PULL_OWNER}; the pull was killed or is still running, and its files "
                             "are not all verified): rerun that pull to finish it, then validate that directory")
        return result
    if m_error:
        result.errors.append(m_error)
    report, report_error = _read_report(build_dir)
    incomplete, certified = _completion_errors(build_dir, report)
    if report_error:
        incomplete.append(report_error)
    elif report is not None:
        incomplete += _report_errors(build_dir, report, m_vocab)
    result.errors += incomplete
    if checksums and not certified and not incomplete and report is not None:
        # It turned every checksum and stale-part check off, unsaid (found by a tester).
        result.warnings.append(f"{build_dir / COMPLETION_MARKER}: certifies no files (no output.files_sha256, which "
                               "every dolmino build writes): the parts are checked as memmaps only, not as the ones "
                               "this build wrote")
    at = len(result.errors)  # checksum errors go after the listing's, before orphans, as one list read
    files = _token_files(build_dir)
    if not files:
        result.errors.append(f"{build_dir}: no token files (*.npy) found")
    if report is None and not incomplete and any(build_dir.glob("part-*" + SIDECAR_SUFFIX)):
        # Checked as memmaps (other tools write this layout too), they validated OK unsaid, while
        # the trainer warns: a copy without report.json may lack parts (found by a tester).
        result.warnings.append(f"{build_dir}: holds dolmino part files but no {COMPLETION_MARKER}: nothing checks that "
                               "every part of the build is here, nor that they are the ones it wrote; copy the whole "
                               "build directory (or `dolmino release pull` it)")
    if report is not None:  # a build writes its parts at its top level
        result.errors += [f"{f}: a token file inside the build that its {COMPLETION_MARKER} does not count (the "
                          "trainer refuses the build for it); move it out" for f in files if f.parent != build_dir]
    have = {p.with_name(p.name[: -len(".npy")]) for p in files}
    for pattern, suffix in (("*" + SIDECAR_SUFFIX, SIDECAR_SUFFIX), ("*" + MASK_SUFFIX, MASK_SUFFIX)):
        for orphan in sorted(build_dir.rglob(pattern)):
            if orphan.with_name(orphan.name[: -len(suffix)]) not in have and orphan.parent.name != "quarantine":
                result.errors.append(f"{orphan}: has no token file {orphan.name[: -len(suffix)]}.npy beside it")
    hashing = _Hashing(build_dir, certified if checksums else {})
    try:
        for path in files:
            stem = path.name[: -len(".npy")]
            if path.parent == build_dir:
                hashing.start([path.name, stem + SIDECAR_SUFFIX, stem + MASK_SUFFIX])
            result.parts.append(validate_part(path, vocab, eos, backend, strict))
        checksum_errors = hashing.errors({name for p in result.parts if p.path.parent == build_dir
                                          for name in p.unreadable})
    finally:
        hashing.pool.shutdown(wait=True, cancel_futures=True)
    result.errors[at:at] = checksum_errors
    if not incomplete and report is not None:
        result.errors += _count_errors(build_dir, report, result.parts)
    if result.parts and all(p.path.stat().st_size == 0 for p in result.parts):
        # "1 part(s) OK, 0 tokens ... EOS ends every document" read as a build to train on (a tester). By
        # size, not by tokens counted: a part cut short or with a .npy header counts none, and was called empty.
        result.warnings.append(f"{build_dir}: holds no tokens (its parts are empty files): nothing to train on"
                               + (f"; its {COMPLETION_MARKER} warnings say why" if report is not None else ""))
    return result


def main(argv: list[str] | None = None) -> int:
    from dolmino.help_format import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(prog="dolmino validate", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("build_dir", help="a build's output directory (part-*.npy, part-*.csv.gz, manifest.json)")
    parser.add_argument("--vocab-size", type=at_least(1), default=None,
                        help=f"ids must be below this (default: the build's manifest.json, else {DEFAULT_VOCAB_SIZE})")
    parser.add_argument("--eos-id", type=at_least(0), default=None,
                        help=f"end-of-document token (default: the build's manifest.json, else {DEFAULT_EOS_ID})")
    parser.add_argument("--backend", choices=csrc.BACKENDS, default="auto",
                        help="token scan implementation: the C++ extension, the numpy fallback, or auto "
                             "(default: %(default)s)")
    parser.add_argument("--no-checksums", action="store_true",
                        help="skip comparing each file with the SHA-256 report.json certifies (default: compared; "
                             "`dolmino release pull` has just checked them, for instance)")
    parser.add_argument("--strict", action="store_true",
                        help="treat warnings (documents holding EOS before their last token) as errors (default: off, "
                             "they are reported with their count)")
    args = parser.parse_args(argv)
    if "://" in args.build_dir:
        from dolmino.release import fetch_hint
        from dolmino.s3 import redact

        # quoted twice, user:password@ and all (`https://user:hf_...@huggingface.co/...`; found by a tester)
        location = redact(args.build_dir.rstrip("/"))
        print(f"dolmino validate: {location}: validation reads every token, from a local directory. "
              f"{fetch_hint(location, '`dolmino validate DIR`')}", file=sys.stderr)
        return 2
    try:
        result = validate_build(args.build_dir, vocab_size=args.vocab_size, eos_id=args.eos_id, backend=args.backend,
                                strict=args.strict, checksums=not args.no_checksums)
    except RuntimeError as exc:  # --backend native without the extension
        print(f"dolmino validate: {exc}", file=sys.stderr)
        return 2
    for line in result.all_warnings():
        print(f"warning: {line}", file=sys.stderr)
    if result.ok:
        print(result.summary())
        return 0
    errors = result.all_errors()
    for line in errors:
        print(line, file=sys.stderr)
    bad_parts = sum(1 for p in result.parts if p.errors)
    # "1 problem(s) in 0 of 4 part(s)" read oddly for a build without report.json (found by a tester)
    where = f" in {bad_parts} of {len(result.parts)} part(s)" if bad_parts else " with the build as a whole"
    print(f"{result.build_dir}: INVALID: {len(errors)} problem(s){where}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
