"""Attribute files: what the tag phase learned about every pool document, stored once.

Layout under the attributes root (a local directory or an s3:// prefix), one Parquet file
per *bundle* and attribute set (docs/DESIGN.md "Build at scale"):

    <root>/<source>/docs-<key>/<bundle key>.<version>.parquet     line, id, bytes, content hash, ...
    <root>/<source>/<filter type>-<key>/<bundle key>.<version>.parquet  the filter's columns
    <root>/<source>/minhash-<key>/<bundle key>.<version>.parquet  near-duplicate cluster per document
    <root>/<source>/documents/r<n>/<unit key>.<version>.jsonl.zst  Stack Exchange: the Q&A documents
    <root>/<source>/quarantine/docs-<key>/<unit key>.<version>.jsonl.gz  refused input lines

A bundle is one unit (a large file, or a byte range of one), or a run of small whole files
of one source. Writing one Parquet file per small input cost ~1 ms each, ten times the work
of tagging its documents, and one S3 PUT each: 20,000 small files took 13x the tag time of
the same bytes in 20 files. Bundle boundaries depend only on the units' names and sizes
(`plan_bundles`), never on task sizes, so `dolmino tag` and a later `dolmino mix` with other
options find the same files, and adding a file re-tags only the bundles around it.

`<key>` of a set hashes what the columns depend on (the filter's tag parameters and the
digests of its model or index), so a changed threshold reuses the stored scores and a
changed scorer writes a new column set beside the old one. A bundle's `<version>` hashes
its units' inputs (name, byte range, size, ETag or mtime) and the attribute format, so a
changed input file is tagged again (with its bundle) and stale attributes are simply never
read. One listing of a set's prefix tells the driver which bundles are done: that is how a
killed tag job resumes.

Rows are in unit order, then input order, one per document (quarantined lines have no row).
Every file's Parquet key-value metadata (under `dolmino`) lists its units with their row
counts, and the docs set adds each unit's counts, so the mix phase slices a unit's rows and
accounts for it without reading its input again.

Stack Exchange documents sit under their conversion rules' revision (`r<n>`): a file's name holds
everything its content depends on. Under one `documents/` two dolmino versions that convert alike in
all but the revision took turns overwriting each other's files in a shared root, and each one's next
mix failed on the other's lines (found by a tester).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property

from dolmino.build.inputs import Unit, Units
from dolmino.errors import BuildError
from dolmino.storage import join, list_dirs, list_files, read_bytes, write_bytes
from filters.stackexchange import CONVERSION_REVISION

_TMP_SUFFIX = re.compile(r"\.tmp\d+$")

# Bump when the meaning of the stored columns changes: every unit is then tagged again.
ATTRIBUTE_FORMAT = 2
RANGE_READER = 2  # dolmino.documents._range_chunks: part of a byte range's unit version
# Whole files smaller than this share bundles; a bundle ends after a unit with probability
# (unit bytes / BUNDLE_TARGET_BYTES), decided by a hash of the unit's name, and always before
# it would pass BUNDLE_MAX_BYTES or BUNDLE_MAX_UNITS (whose JSON row counts ride in the footer).
SMALL_UNIT_BYTES = 8 << 20
BUNDLE_TARGET_BYTES = 32 << 20
BUNDLE_MAX_BYTES = 64 << 20
BUNDLE_MAX_UNITS = 4096
METADATA_KEY = b"dolmino"
DOCS_SET = "docs"
DOCUMENTS_DIR = f"documents/r{CONVERSION_REVISION}"
EARLIER_DOCUMENTS_DIR = "documents"  # where dolmino kept them before r<n>: never read, named in `dolmino mix`'s refusal
QUARANTINE_DIR = "quarantine"


def quarantine_dir(docs_set: str) -> str:
    """A source's directory of the refused lines that go with `docs_set` (`AttributeStore.quarantine_path`)."""
    return join(QUARANTINE_DIR, docs_set)


def text_hash(text: bytes) -> bytes:
    """The docs set's `text_hash` of a document's UTF-8 text: exact dedup's key, and what the
    tokenize stage checks the text it reads again against (`content_digest`)."""
    return hashlib.blake2b(text, digest_size=16, person=b"dolmino-exact").digest()


def content_digest(text: bytes) -> int:
    """The first 8 bytes of `text_hash`, as a signed big-endian integer (pool.content_digests)."""
    return int.from_bytes(text_hash(text)[:8], "big", signed=True)


def spec_key(spec: dict) -> str:
    """A short, stable hash of a JSON-able spec (sorted keys)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def unit_version(unit: Unit) -> str:
    """Changes when the unit's input (or the attribute format) changes."""
    f = unit.file
    # A plain joined string, not spec_key's JSON: computed for every unit on the driver and in
    # the tag tasks (~2 us, where the JSON hash took ~10).
    text = f"{ATTRIBUTE_FORMAT}\0{f.name}\0{f.size}\0{f.version}\0{unit.start}\0{unit.end}"
    if unit.end is not None:
        # Byte ranges read before RANGE_READER 2 lost a line crossing the range's end and a
        # 1 MiB read (quarantined as malformed): their stored attributes are not reused.
        text += f"\0range-reader-{RANGE_READER}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


@dataclass(frozen=True)
class Bundle:
    """Units whose attributes share one file per set: consecutive small files of one source."""

    index: int
    units: tuple[Unit, ...]

    @property
    def source_index(self) -> int:
        return self.units[0].source_index

    @cached_property  # asked by task grouping, progress totals and counters: a sum over up to 4,096 units
    def size(self) -> int:
        return sum(u.size for u in self.units)

    @property
    def key(self) -> str:
        """The file stem: the unit's key for a bundle of one (the layout of a large file does not
        change with bundling), else the first unit's key and how many follow it."""
        first = self.units[0].key
        return first if len(self.units) == 1 else f"{first}+{len(self.units) - 1}"

    @cached_property  # computed on the driver, and pickled with the bundle to its tag task
    def unit_versions(self) -> tuple[str, ...]:
        return tuple(unit_version(u) for u in self.units)

    @cached_property  # the driver asks once per set; ~10 us per unit to compute
    def version(self) -> str:
        if len(self.units) == 1:
            return self.unit_versions[0]
        return spec_key({"format": ATTRIBUTE_FORMAT,
                         "units": [[u.key, v] for u, v in zip(self.units, self.unit_versions)]})[:10]


def _ends_bundle(unit: Unit) -> bool:
    """A content-defined boundary: after this unit with probability size / BUNDLE_TARGET_BYTES.

    It hashes the name only, so inserting, removing or changing one file moves no boundary
    except those next to it (and the caps' cuts until the next hashed boundary)."""
    draw = int.from_bytes(hashlib.blake2b(unit.key.encode("utf-8"), digest_size=8).digest(), "big")
    return draw < unit.size * (1 << 64) // BUNDLE_TARGET_BYTES


def bundleable(unit: Unit) -> bool:
    return not unit.is_range and unit.size < SMALL_UNIT_BYTES


def plan_bundles(units: list[Unit]) -> list[Bundle]:
    """Bundles in unit order: each large unit alone, small whole files of one source together."""
    bundles: list[Bundle] = []
    current: list[Unit] = []
    size = 0

    def close() -> None:
        nonlocal current, size
        if current:
            bundles.append(Bundle(len(bundles), Units(current)))  # pickled to the tag tasks as columns
        current, size = [], 0

    for unit in units:
        small, unit_size = bundleable(unit), unit.size  # each asked once: a listing holds 20,000 small files
        if current and (unit.source_index != current[0].source_index or not small
                        or size + unit_size > BUNDLE_MAX_BYTES or len(current) >= BUNDLE_MAX_UNITS):
            close()
        current.append(unit)
        size += unit_size
        if not small or _ends_bundle(unit):
            close()
    close()
    return bundles


def unit_listing(bundle: Bundle, rows: list[int]) -> list[dict]:
    """The metadata's `units` entry: each unit of the bundle with its rows in one attribute file."""
    return [{"unit": u.key, "version": v, "rows": n} for u, v, n in zip(bundle.units, bundle.unit_versions, rows,
                                                                          strict=True)]


# A unit's counts in the docs set's metadata (`units[i].stats`): a zero count or an empty
# by-reason map is left out, so that a bundle of 4,096 one-document files does not spend its
# footer, and the tag task its time, on zeros. Files written before stored every key.
STAT_COUNTS = ("lines", "docs", "bytes", "unreadable_bytes", "duplicate_ids", "sample_docs", "sample_bytes",
               "sample_tokens")
STAT_MAPS = ("quarantined", "removed")  # reason -> documents


def add_counts(target: dict[str, int], counts) -> None:
    """Add reason -> count pairs into one of a unit's by-reason maps."""
    for reason, n in counts.items():
        target[reason] = target.get(reason, 0) + n


def unit_stats(stored: dict) -> dict:
    """Every count of a unit from its stored stats: what was left out is 0, or {} for a map."""
    full = dict.fromkeys(STAT_COUNTS, 0)
    full.update(quarantined={}, removed={})
    full.update(stored)
    return full


REMEDY = "delete it and run `dolmino tag` with this manifest again (it tags what is missing)"


def unit_rows(meta: dict, bundle: Bundle, path: str = "", set_name: str | None = None) -> list[tuple[int, int]]:
    """[start, end) rows of each of the bundle's units in one of its attribute files.

    The file must describe exactly these units at these versions, and belong to `set_name`
    (its directory): one copied over another, or left from an input's earlier version under
    the current name, would otherwise put other documents' attributes (or another version's,
    or another filter spec's: another fastText label's scores, another `min_stars`'s verdicts)
    under the current ones, silently. Files written before they named their set pass the set
    check."""
    listed = meta.get("units") or []
    where = path or f"attribute file of bundle {bundle.key}"
    stored_set = meta.get("set")
    if set_name is not None and stored_set not in (None, set_name):
        raise BuildError(f"{where} belongs to attribute set {stored_set}, not {set_name} (copied from another "
                         f"filter spec's or manifest's set?): {REMEDY}")
    if [u.get("unit") for u in listed] != [u.key for u in bundle.units]:
        raise BuildError(f"{where} lists units {[u.get('unit') for u in listed][:3]}..., expected "
                         f"{[u.key for u in bundle.units][:3]}...: {REMEDY}")
    stale = [u.key for u, version, entry in zip(bundle.units, bundle.unit_versions, listed)
             if entry.get("version") not in (None, version)]  # None: files written before versions were
    if stale:
        raise BuildError(f"{where} was tagged from another version of {stale[0]}"
                         f"{f' (and {len(stale) - 1} more)' if len(stale) > 1 else ''}: {REMEDY}")
    spans, start = [], 0
    for entry in listed:
        spans.append((start, start + entry["rows"]))
        start += entry["rows"]
    return spans


@dataclass(frozen=True)
class AttributeStore:
    root: str

    def set_dir(self, source: str, set_name: str) -> str:
        return join(self.root, source, set_name)

    def path(self, source: str, set_name: str, bundle: Bundle) -> str:
        """A bundle's Parquet file of one attribute set."""
        return join(self.root, source, set_name, f"{bundle.key}.{bundle.version}.parquet")

    def unit_path(self, source: str, dir_name: str, unit: Unit, suffix: str) -> str:
        return join(self.root, source, dir_name, f"{unit.key}.{unit_version(unit)}{suffix}")

    def documents_path(self, source: str, unit: Unit) -> str:
        return self.unit_path(source, DOCUMENTS_DIR, unit, ".jsonl.zst")

    def earlier_documents_path(self, source: str, unit: Unit) -> str:
        """Where a dolmino from before `documents/r<n>/` kept the unit's documents: never read, only named."""
        return self.unit_path(source, EARLIER_DOCUMENTS_DIR, unit, ".jsonl.zst")

    def quarantine_path(self, source: str, docs_set: str, unit: Unit) -> str:
        """A unit's refused lines, under the name of the docs set they go with: what a unit refuses
        depends on what keys that set (the reader, `max_doc_bytes`, the Stack Exchange conversion). One
        file per unit for every manifest took the refusals of the tag that wrote it last: a mix of the
        default `max_doc_bytes` copied another manifest's `doc_too_large` lines of documents it kept."""
        return self.unit_path(source, quarantine_dir(docs_set), unit, ".jsonl.gz")

    def set_names(self, source: str) -> list[str]:
        """The attribute sets stored for a source (its directories), sorted."""
        return list_dirs(join(self.root, source))

    def sources(self) -> list[str]:
        """The sources anything is stored for (the root's directories), sorted."""
        return list_dirs(self.root)

    def existing(self, source: str, set_name: str) -> set[str]:
        """Paths of the files under one set (one listing, on the driver)."""
        base = self.set_dir(source, set_name)
        # Not a local write's temporary file (storage.write_bytes: <name>.tmp<digits>).
        return {join(base, name) for name in list_files(base) if not _TMP_SUFFIX.search(name)}


# ---------------------------------------------------------------------------- Parquet


def write_table(path: str, columns: dict, schema, meta: dict) -> int:
    """Write one attribute file (columns -> Parquet with `meta` in its metadata); returns its size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Insertion order, not sort_keys: a bundle's metadata lists up to 4,096 units with their
    # counts, and sorting every dict cost ~7 us per unit (the dicts are built in a fixed order).
    text = json.dumps(meta, separators=(",", ":"))
    table = pa.table(columns, schema=schema.with_metadata({METADATA_KEY: text}))
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    write_bytes(path, data)
    return len(data)


def read_table(path: str, columns: list[str] | None = None, data: bytes | None = None):
    """(pyarrow Table, metadata dict) of one attribute file; `data`: its bytes, already fetched."""
    import pyarrow.parquet as pq

    # ParquetFile.read, not pq.read_table: the same table and metadata without the datasets
    # layer, which costs ~0.5 ms per small file (the mix reads every unit's attribute files).
    import pyarrow as pa

    from dolmino.s3 import NoSuchBucket

    try:
        raw_bytes = read_bytes(path) if data is None else data
    except NoSuchBucket:  # not this file's fault: an executor that sees other buckets (its endpoint, region)
        raise
    except FileNotFoundError:  # listed, then gone: deleted since (a root pruned under a build), or a dead link
        remote = path.startswith("s3://")
        # A local file deleted since was "a link that leads nowhere?" to delete: a wrong guess, and nothing to delete.
        if remote or not os.path.lexists(path):
            raise BuildError(f"{path}: no such {'object' if remote else 'file'} (deleted since it was listed?): run "
                             "`dolmino tag` with this manifest again (it tags what is missing)") from None
        raise BuildError(f"{path}: not a readable attribute file (no such file: a link that leads nowhere?); "
                         f"{REMEDY}") from None
    try:
        table = pq.ParquetFile(io.BytesIO(raw_bytes)).read(columns=columns)
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        return table, (json.loads(raw) if raw else {})
    except (pa.ArrowException, ValueError) as exc:  # truncated, emptied, not Parquet, bad metadata JSON
        raise BuildError(f"{path}: not a readable attribute file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); {REMEDY}") from None
