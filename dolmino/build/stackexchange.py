"""Stack Exchange sources in the tag phase: Posts.xml -> Q&A documents under the attributes root.

The mix phase reads a Stack Exchange unit's documents from
`<attributes root>/<source>/documents/r<conversion revision>/<unit>.<version>.jsonl.zst`, written here once.

Whole files (a compressed Posts.xml, or one no larger than the split size) are converted
inside their tag task by `filters.stackexchange.iter_stackexchange`: two passes and a
spilling pending store, one core. A gzip or zstd stream can only be read from its start,
so a compressed Posts.xml always stays whole, however large.

A large uncompressed Posts.xml is cut into byte ranges like a .jsonl (`inputs.plan_units`;
rows are one per line, a row belongs to the range in which it starts), and converted by
Spark stages with output identical to the whole-file conversion:

    keys    per range, pass 1 (`scan_keys`, regex fast path): its line count, the candidate
            pairs (accepted answer id, question id) of its questions that may be kept, and
            (id, ParentId) of its answer rows; persisted, and only the line counts go to
            the driver (they give every range its first line number), with whether the range
            holds the closing `</posts>` line (no range of a file does: the file's last range
            records `truncated_file` after the file's last line, as the whole-file reader)
    accept  keys grouped by a hash of the answer id: for each range, the candidate pairs
            whose answer row lies in it
    halves  per range, pass 2 (XML parse of every row, `range_halves`): malformed rows are
            quarantined with their line in the file, questions failing the rules counted,
            and the halves of candidate pairs (questions that pass, accepted answers) emitted
            keyed by (file, question id, line)
    pair    sorted by that key: each question id's halves in file order go through the same
            pending rule as the whole-file reader (`pair_halves`), then the answer score rule
            and the document
    write   per range, in line order: its documents file, quarantine file and counts

Why a join rather than broadcasting the candidate pairs (pass 1 of the whole-file reader,
16 bytes per candidate question): stackoverflow.com has ~15M questions with an accepted
answer, ~240 MB of pairs that the driver would collect and every Python worker would hold
(16 workers on a node: ~4 GB for the lookup alone), growing with the dump. The join keeps a
task's memory bounded by its own range: the key arrays of one hash bucket (about one range's
worth), the accepted pairs whose answers lie in the range, one question id's halves at a
time, and sorted shuffles that spill. It costs a shuffle of 16 bytes per candidate and per
answer row (~1 GB for stackoverflow, about 1% of its 90 GB), plus the question and accepted
answer bodies, which the documents need anyway. The driver holds one line count per range.

Which unit holds what (the mix phase reads each unit's documents file by line):
- a document belongs to the range of the row that completes its pair (the later of its
  question and accepted answer rows: where the whole-file reader emits it), so the ranges'
  documents files, concatenated in unit order, are the whole-file documents file line for
  line; its `metadata.line` and `loc` name its question row's line in the whole file, and the
  tag phase gives Stack Exchange units no line offset (`tag.first_lines`);
- `answer_score<N` and `answer_empty` are counted in the range of the completing row,
  `answer_missing` and the question rules in the range of the question row, a quarantined
  row in its own range, a file's `truncated_file` record in its last range.
So the counts by reason, summed over the ranges, equal the whole-file counts.

Resume: a file's ranges are converted together (a range's documents depend on the whole
file); on a rerun only the ranges whose `docs` set is missing get their files written, and
rewriting an existing documents file would give the same bytes.
"""

from __future__ import annotations

import os
import tempfile
import time
from bisect import bisect_left
from collections import Counter
from itertools import groupby
from typing import Iterator, NamedTuple

import numpy as np

from dolmino.build.attributes import AttributeStore, add_counts
from dolmino.build.inputs import Unit
from dolmino.build.read import listed_input, still_listed
from dolmino.documents import Quarantine, write_documents
from dolmino.storage import write_bytes

REMOVED_PREFIX = "stackexchange:"


def _config():
    from filters.stackexchange import StackExchangeConfig

    return StackExchangeConfig()  # the Dolmino thresholds: question score >= 3, answer score >= 5


def put_documents(path: str, docs) -> int:
    """Write documents to a local or s3:// path; returns the file's size."""
    if not path.startswith("s3://"):
        write_documents(path, docs)
        return os.path.getsize(path)
    with tempfile.TemporaryDirectory(prefix="dolmino-se-") as tmp:
        tmp_path = os.path.join(tmp, "docs.jsonl.zst")
        write_documents(tmp_path, docs)
        with open(tmp_path, "rb") as fh:
            data = fh.read()
    write_bytes(path, data)
    return len(data)


def convert_whole(unit: Unit, source: str, store: AttributeStore, quarantine: Quarantine, stats,
                  files: dict) -> None:
    """One whole Posts.xml -> its documents file, inside a tag task (`stats`: tag.UnitStats)."""
    from filters.stackexchange import StackExchangeStats, iter_stackexchange

    se_stats = StackExchangeStats()
    path = store.documents_path(source, unit)
    # Only the reading is wrapped: a FileNotFoundError writing the documents is not the input's.
    docs = still_listed(iter_stackexchange(unit.file.uri, _config(), se_stats, quarantine, unit.file.size),
                        unit.file.uri)
    files[path] = put_documents(path, docs)
    add_counts(stats.removed, {f"{REMOVED_PREFIX}{reason}": n for reason, n in se_stats.removed.items()})
    stats.lines = se_stats.rows


# ---------------------------------------------------------------------------- records


class RangeKeys(NamedTuple):
    """Pass 1 over one range (`filters.stackexchange.KeyScan`)."""

    unit_index: int
    file_index: int
    scan: object


class KeyPiece(NamedTuple):
    """A range's pass-1 keys whose answer id falls in one hash bucket."""

    file_index: int
    unit_index: int
    candidate_answers: np.ndarray
    candidate_questions: np.ndarray
    answer_ids: np.ndarray
    answer_parents: np.ndarray


class AcceptedPairs(NamedTuple):
    """Candidate pairs (accepted answer id, question id) whose answer row lies in one range."""

    unit_index: int
    answer_ids: np.ndarray
    question_ids: np.ndarray


class RangeAccount(NamedTuple):
    """A range's pass-2 counts and quarantine, on their way to the range's writer."""

    unit_index: int
    removed: dict  # question rules: no_accepted_answer, question_score<N
    quarantine: list  # QuarantineRecord, in line order


class RangeConverted(NamedTuple):
    """What the driver learns about one converted range; tag.tag_unit puts it in its bundle's docs set."""

    unit_index: int
    lines: int
    docs: int
    removed: dict  # "stackexchange:<reason>" -> documents
    quarantined: dict  # reason -> rows
    files: dict  # path -> size of the files written (documents, quarantine)


class ConvertContext(NamedTuple):
    store: AttributeStore
    sources: dict  # source index -> source name
    units: tuple  # the range units being converted, in unit order (= writer partition order)
    position: dict  # unit index -> its position in `units`
    files: tuple  # file index -> uri
    file_of: dict  # unit index -> file index
    lines: dict  # unit index -> lines in the range (from the keys stage)
    first_lines: dict  # unit index -> lines before it in its file
    file_starts: dict  # file index -> ([first line of each range], [its unit index]) for bisect
    due: frozenset  # unit indices whose files are written
    docs_sets: dict = {}  # source index -> its docs set (names the quarantine files); read, never changed
    truncated: dict = {}  # unit index -> line of its file's `truncated_file` record (the file's last range)


# ---------------------------------------------------------------------------- executor side


def _scan_range(unit: Unit, file_index: int, counters) -> RangeKeys:
    started = time.process_time()
    from filters.stackexchange import scan_keys

    with listed_input(unit.file.uri):
        scan = scan_keys(unit.file.uri, _config(), (unit.start, unit.end), answer_keys=True, size=unit.file.size)
    counters.add("units", 1)
    counters.add("bytes", unit.size)
    counters.add("cpu_s", time.process_time() - started)
    return RangeKeys(unit.index, file_index, scan)


def _bucket_pieces(keys: RangeKeys, buckets: int) -> Iterator[tuple[int, KeyPiece]]:
    scan = keys.scan
    cand_bucket = scan.candidate_answers % buckets
    ans_bucket = scan.answer_ids % buckets
    for b in np.union1d(cand_bucket, ans_bucket).tolist():
        c, a = cand_bucket == b, ans_bucket == b
        yield b, KeyPiece(keys.file_index, keys.unit_index, scan.candidate_answers[c], scan.candidate_questions[c],
                          scan.answer_ids[a], scan.answer_parents[a])


def _pair_keys(file_index: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(file, id, id) rows as one 24-byte value each, for set membership."""
    return np.ascontiguousarray(np.stack([file_index, first, second], axis=1)).view("V24").ravel()


def _join_bucket(pieces) -> Iterator[tuple[int, AcceptedPairs]]:
    """Answer rows of one bucket that some question of their file names as its accepted answer."""
    pieces = list(pieces)
    full = lambda n, v: np.full(n, v, dtype=np.int64)  # noqa: E731
    cand = _pair_keys(np.concatenate([full(len(p.candidate_answers), p.file_index) for p in pieces]),
                      np.concatenate([p.candidate_answers for p in pieces]),
                      np.concatenate([p.candidate_questions for p in pieces]))
    for p in pieces:
        if not len(p.answer_ids):
            continue
        hit = np.isin(_pair_keys(full(len(p.answer_ids), p.file_index), p.answer_ids, p.answer_parents), cand)
        if hit.any():
            yield p.unit_index, AcceptedPairs(p.unit_index, p.answer_ids[hit], p.answer_parents[hit])


def _range_halves(unit_index: int, pieces, ctx_b, counters) -> Iterator[tuple[tuple, object]]:
    """Pass 2 over one range: ((file, question id, line), PostHalf) and ((-1, unit, 0), RangeAccount)."""
    from filters.stackexchange import StackExchangeStats, accepted_lookup, range_halves

    ctx = ctx_b.value
    started = time.process_time()
    unit = ctx.units[ctx.position[unit_index]]
    file_index = ctx.file_of[unit_index]
    pairs = [p for p in pieces if p is not None]
    empty = np.empty(0, np.int64)
    lookup = accepted_lookup(np.concatenate([empty, *(p.answer_ids for p in pairs)]),
                             np.concatenate([empty, *(p.question_ids for p in pairs)]))
    stats, quarantine = StackExchangeStats(), Quarantine()
    halves = range_halves(unit.file.uri, (unit.start, unit.end), ctx.first_lines[unit_index], lookup, _config(),
                          stats, quarantine, unit.file.size, ctx.truncated.get(unit_index))
    for half in still_listed(halves, unit.file.uri):  # deleted between the passes, too
        yield (file_index, half.question_id, half.line), half
    counters.add("units", 1)
    counters.add("bytes", unit.size)
    counters.add("cpu_s", time.process_time() - started)
    yield (-1, unit_index, 0), RangeAccount(unit_index, dict(stats.removed), quarantine.records)


def _pair_partition(key: tuple) -> int:
    return hash((key[0], key[1]))


def _unit_of(ctx: ConvertContext, file_index: int, line: int) -> int:
    firsts, unit_indices = ctx.file_starts[file_index]
    return unit_indices[bisect_left(firsts, line) - 1]


def _pair(items, ctx_b, counters) -> Iterator[tuple[tuple, object]]:
    """Sorted halves of this partition's question ids -> ((unit, line), PairOutcome); accounts pass through."""
    from filters.stackexchange import StackExchangeStats, pair_halves

    ctx = ctx_b.value
    config = _config()
    started = time.process_time()
    for (file_index, key), group in groupby(items, key=lambda kv: (kv[0][0], kv[0][1])):
        if file_index < 0:
            for _k, account in group:
                yield (account.unit_index, 0), account
            continue
        for outcome in pair_halves((half for _k, half in group), config, StackExchangeStats(), ctx.files[file_index]):
            yield (_unit_of(ctx, file_index, outcome.line), outcome.line), outcome
    counters.add("cpu_s", time.process_time() - started)


def _write_range(index: int, items, ctx_b, counters) -> Iterator[RangeConverted]:
    """One range's outcomes in line order -> its documents and quarantine files and counts."""
    from dolmino.build.tag import _write_quarantine

    ctx = ctx_b.value
    unit = ctx.units[index]
    plan_source = ctx.sources[unit.source_index]
    started = time.process_time()
    items = iter(items)
    (_key, account) = next(items)
    if not isinstance(account, RangeAccount) or account.unit_index != unit.index:
        raise RuntimeError(f"{unit.key}: its pass-2 counts did not reach its writer first")
    removed = Counter({f"{REMOVED_PREFIX}{r}": n for r, n in account.removed.items()})
    kept = [0]

    def documents():
        for _k, outcome in items:
            if outcome.doc is None:
                removed[f"{REMOVED_PREFIX}{outcome.reason}"] += 1
                continue
            kept[0] += 1
            yield outcome.doc

    files: dict[str, int] = {}
    if unit.index in ctx.due:
        path = ctx.store.documents_path(plan_source, unit)
        files[path] = put_documents(path, documents())
        if account.quarantine:
            qpath = ctx.store.quarantine_path(plan_source, ctx.docs_sets[unit.source_index], unit)
            files[qpath] = _write_quarantine(qpath, account.quarantine)
    else:
        for _ in documents():
            pass
    quarantined = Counter(r.reason for r in account.quarantine)
    counters.add("docs", kept[0])
    counters.add("cpu_s", time.process_time() - started)
    yield RangeConverted(unit.index, ctx.lines[unit.index], kept[0],
                         dict(sorted(removed.items())), dict(sorted(quarantined.items())), files)


# ---------------------------------------------------------------------------- driver


def convert_ranges(sc, units: list[Unit], due: set[int], sources: dict[int, str], store: AttributeStore,
                   docs_sets: dict[int, str], *, quiet: bool = False) -> tuple[dict[int, RangeConverted], dict]:
    """Convert every file that has a range unit in `due`; returns ({unit index: RangeConverted} for
    the due units, {stage name: progress record})."""
    from pyspark import StorageLevel

    from dolmino.build.progress import Stage

    due_files = {u.file.uri for u in units if u.index in due}
    ranges = tuple(sorted((u for u in units if u.is_range and u.file.uri in due_files), key=lambda u: u.index))
    if not ranges:
        return {}, {}
    files = tuple(sorted(due_files))
    file_of = {u.index: files.index(u.file.uri) for u in ranges}
    n = len(ranges)
    stages = {}
    with Stage(sc, "stackexchange:keys", total_bytes=sum(u.size for u in ranges), total_units=n, quiet=quiet) as st:
        counters = st.counters
        keys = sc.parallelize([(u, file_of[u.index]) for u in ranges], n).map(
            lambda uf: _scan_range(uf[0], uf[1], counters))
        keys.persist(StorageLevel.MEMORY_AND_DISK)
        scanned = dict(keys.map(lambda k: (k.unit_index, (k.scan.lines, k.scan.ended))).collect())
    stages["stackexchange:keys"] = st.record

    lines = {ui: n for ui, (n, _ended) in scanned.items()}
    first_lines: dict = {}
    file_starts: dict = {}
    truncated: dict = {}
    for fi, uri in enumerate(files):
        running = 0
        firsts, indices = [], []
        for u in sorted((u for u in ranges if u.file.uri == uri), key=lambda u: u.start):
            first_lines[u.index] = running
            firsts.append(running)
            indices.append(u.index)
            running += lines[u.index]
        file_starts[fi] = (firsts, indices)
        if not any(scanned[ui][1] for ui in indices):  # no `</posts>` line: recorded where the whole file does
            truncated[indices[-1]] = running + 1
    position = {u.index: i for i, u in enumerate(ranges)}
    ctx_b = sc.broadcast(ConvertContext(store, dict(sources), ranges, position, files, file_of, lines, first_lines,
                                        file_starts, frozenset(due), dict(docs_sets), truncated))
    pos_b = sc.broadcast(position)
    with Stage(sc, "stackexchange:pair", total_bytes=sum(u.size for u in ranges), total_units=n, quiet=quiet) as st:
        counters = st.counters
        accepted = (keys.flatMap(lambda k: _bucket_pieces(k, n)).groupByKey(n)
                    .flatMap(lambda kv: _join_bucket(kv[1])))
        seeds = sc.parallelize([(u.index, None) for u in ranges], n)
        halves = (seeds.union(accepted).groupByKey(n, partitionFunc=lambda u: pos_b.value[u])
                  .flatMap(lambda kv: _range_halves(kv[0], kv[1], ctx_b, counters)))
        outcomes = (halves.repartitionAndSortWithinPartitions(n, partitionFunc=_pair_partition)
                    .mapPartitions(lambda it: _pair(it, ctx_b, counters)))
        written = (outcomes.repartitionAndSortWithinPartitions(n, partitionFunc=lambda k: pos_b.value[k[0]])
                   .mapPartitionsWithIndex(lambda i, it: _write_range(i, it, ctx_b, counters)).collect())
    stages["stackexchange:pair"] = st.record
    keys.unpersist()
    return {r.unit_index: r for r in written if r.unit_index in due}, stages


def apply_conversion(converted: RangeConverted, stats, files: dict) -> None:
    """A converted range's counts into its tag.UnitStats (the docs set's metadata)."""
    stats.lines = converted.lines
    add_counts(stats.removed, converted.removed)
    add_counts(stats.quarantined, converted.quarantined)
    files.update(converted.files)

