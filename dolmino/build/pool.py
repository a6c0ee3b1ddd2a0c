"""The pool of a mix: every document's verdict from its attribute files, then dedup, as columns.

1. Executors read attribute files only: every tagged document is decided by the source's
   tagging filters in chain order, then kept documents get their sampling hash
   `seeded_hash(seed, source, id, loc)`.
2. Dedup: exact duplicates share a content hash, near duplicates a MinHash cluster; in each
   group the document with the smallest keep key survives (blake2b of id and loc,
   independent of the seed and of the partitioning).

The pool is what every document that passed holds until the selection takes its share: at
the recipe's ratios about 20 times the budget. It travels between Spark stages as one
`PoolBlock` per bundle, numpy columns of tens of bytes per document, so what Spark pickles,
shuffles and persists costs per bundle, not per document. Dedup works on those columns:
each block sends its keys to the partition their hash names, each partition sorts what it
receives and names the rows that lose, and the losers go back to their blocks, which end up
partitioned by the task that tokenizes them: a tokenize round reads its candidates from the
pool without a shuffle.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import numpy as np

from dolmino.build.attributes import REMEDY, AttributeStore, Bundle, read_table, unit_rows, unit_stats
from dolmino.errors import BuildError
from dolmino.prefetch import DEFAULT_READ_AHEAD, ReadAhead
from mixers.sampling import bucket_of, seeded_hash

BLANK_REASON = "tokenizer:empty_after_strip"
_U64 = (1 << 64) - 1


class PoolDoc(NamedTuple):
    """One document a tokenize round reads (only those: the pool itself stays in blocks)."""

    source_index: int
    unit_index: int
    line: int  # read line within the unit
    loc_line: int  # the line named in `loc` (global within the file)
    hash: int  # sampling order
    bytes: int
    digest: int  # the text's content hash (its first 8 bytes, signed): tokenize checks the text it reads again


class PoolBlock(NamedTuple):
    """A bundle's documents that are in the pool, one numpy column per field (row order: unit
    by unit, lines ascending). 128-bit keys are (n, 2) uint64: high then low half, so rows
    sort as the integers do."""

    source_index: int
    bundle_index: int
    unit: np.ndarray  # int64: unit index
    line: np.ndarray  # int64: read line within the unit
    loc_line: np.ndarray  # int64
    hash: np.ndarray  # int64: sampling hash (63 bits)
    bytes: np.ndarray  # int64: UTF-8 bytes of the text
    digest: np.ndarray  # int64: first 8 bytes of the text's content hash (PoolDoc.digest)
    keep: np.ndarray | None = None  # (n, 2) uint64 keep key, where the source dedups
    text_hash: np.ndarray | None = None  # (n, 2) uint64, exact-dedup sources
    cluster: np.ndarray | None = None  # (n, 2) uint64 MinHash cluster; meaningful where `clustered`
    clustered: np.ndarray | None = None  # bool

    @property
    def size(self) -> int:
        return len(self.hash)

    def take(self, rows) -> "PoolBlock":
        """The block restricted to `rows` (indices or a boolean mask)."""
        return PoolBlock(self.source_index, self.bundle_index,
                         *(None if col is None else col[rows] for col in self[2:]))

    def slim(self) -> "PoolBlock":
        """Without the dedup columns: what selection and tokenizing need."""
        return PoolBlock(self.source_index, self.bundle_index, self.unit, self.line, self.loc_line, self.hash,
                         self.bytes, self.digest)

    def docs(self, rows: np.ndarray) -> Iterator[tuple[int, list[PoolDoc]]]:
        """(unit index, [PoolDoc]) for the given rows (ascending), unit by unit."""
        si = self.source_index
        unit, line, loc_line = self.unit[rows].tolist(), self.line[rows].tolist(), self.loc_line[rows].tolist()
        hashes, sizes, digests = self.hash[rows].tolist(), self.bytes[rows].tolist(), self.digest[rows].tolist()
        current, docs = None, []
        for u, ln, loc, h, n, d in zip(unit, line, loc_line, hashes, sizes, digests):
            if u != current:
                if docs:
                    yield current, docs
                current, docs = u, []
            docs.append(PoolDoc(si, u, ln, loc, h, n, d))
        if docs:
            yield current, docs


class UnitPool(NamedTuple):
    """A unit's accounting from its attributes: what came in, what each filter removed."""

    unit_index: int
    source_index: int
    stats: dict  # docs_in, bytes_in, quarantined, removed {reason: [docs, bytes]}, kept docs/bytes, ...
    filter_reports: dict  # "filters[i].<type>" -> mergeable report (decontamination hits)


class UnitIds(NamedTuple):
    """64-bit hashes of every document id of a bundle: duplicate ids across files are counted
    with one small shuffle (within a unit the tag phase already counted them)."""

    source_index: int
    hashes: bytes  # little-endian uint64


def id_hash(doc_id: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class PoolContext(NamedTuple):
    store: AttributeStore
    plans: tuple  # tag.SourceTagPlan per source
    sources: tuple  # manifest SourceSpec per source
    resources: dict
    seed: int
    names: dict  # unit index -> input name
    offsets: dict  # unit index -> lines before it in its file
    strip_blank: bool  # dolma tokenization semantics: blank documents are skipped
    read_ahead: int = DEFAULT_READ_AHEAD  # attribute files on S3 a task keeps in flight


def loc_of(name: str, offset: int, loc_line: int) -> str:
    return f"{name}:{offset + loc_line}"


def _spread_ids(ids: UnitIds, partitions: int) -> Iterator[tuple[int, tuple[int, np.ndarray]]]:
    hashes = np.frombuffer(ids.hashes, dtype="<u8")
    target = hashes % np.uint64(partitions)
    for p in np.unique(target).tolist():
        yield p, (ids.source_index, hashes[target == p])


def _repeats(pairs) -> Iterator[tuple[int, int]]:
    per_source: dict[int, list] = {}
    for _p, (si, hashes) in pairs:
        per_source.setdefault(si, []).append(hashes)
    for si, parts in per_source.items():
        _, counts = np.unique(np.concatenate(parts), return_counts=True)
        yield si, int((counts - 1).sum())


def attribute_paths(bundle: Bundle, ctx: PoolContext) -> list[str]:
    """The bundle's attribute files in the order pool_bundle reads them: docs, filters, clusters."""
    plan = ctx.plans[bundle.source_index]
    sets = [plan.docs_set, *(t.set_name for t in plan.filters), *([plan.minhash_set] if plan.minhash_set else [])]
    return [ctx.store.path(plan.name, set_name, bundle) for set_name in sets]


def fetch_attributes(bundles: Iterable[Bundle], ctx: PoolContext) -> ReadAhead:
    """A pool task's attribute files on S3, fetched ahead in the order it reads them (sizes
    unknown: the driver's listing does not travel to the tasks)."""
    return ReadAhead(((path, None) for bundle in bundles for path in attribute_paths(bundle, ctx)), ctx.read_ahead)


def _unit_slices(path: str, bundle: Bundle, ahead: ReadAhead | None, set_name: str) -> tuple[object, list, dict]:
    """(table, [(start, end) rows per unit], metadata) of one of a bundle's attribute files."""
    table, meta = read_table(path, data=None if ahead is None else ahead.take(path))
    return table, unit_rows(meta, bundle, path, set_name), meta


def _keys(values: list[bytes]) -> np.ndarray:
    """16-byte big-endian keys as (n, 2) uint64."""
    return np.frombuffer(b"".join(values), dtype=">u8").astype(np.uint64).reshape(-1, 2)


def content_digests(column) -> np.ndarray:
    """int64 PoolDoc.digest of each 16-byte text hash of a docs set's `text_hash` column: its
    first 8 bytes, big-endian, read straight from the column's buffer."""
    col = column.combine_chunks()
    if len(col) == 0:
        return np.zeros(0, dtype=np.int64)
    words = np.frombuffer(col.buffers()[1], dtype=">i8", count=2 * (col.offset + len(col)))
    return words[2 * col.offset::2].astype(np.int64)


def _int_keys(values: list[int]) -> np.ndarray:
    return np.array([(v >> 64, v & _U64) for v in values], dtype=np.uint64).reshape(-1, 2)


def pool_bundle(bundle: Bundle, ctx: PoolContext,
                ahead: ReadAhead | None = None) -> Iterator[PoolBlock | UnitPool | UnitIds]:
    """Decide every document of a bundle from its attribute files (each read once, in
    `attribute_paths` order: `ahead` may hold their bytes)."""
    from filters.base import SCORED_COLUMN, chain_labels, decide
    from filters.dedup import document_key
    from filters.registry import build_filter

    from dolmino.build.resources import localized_spec

    si = bundle.source_index
    plan, source = ctx.plans[si], ctx.sources[si]
    docs_path, *set_paths = attribute_paths(bundle, ctx)  # the order fetch_attributes fetches them in
    docs, doc_spans, meta = _unit_slices(docs_path, bundle, ahead, plan.docs_set)
    filters = []
    for t, path in zip(plan.filters, set_paths):
        table, spans, _ = _unit_slices(path, bundle, ahead, t.set_name)
        if spans != doc_spans:
            raise ValueError(f"{bundle.key}: {t.set_name} rows per unit {spans[:3]}... differ from the docs set's")
        filters.append((t.index, build_filter(localized_spec(t.spec, ctx.resources), f"{plan.name}.filters[{t.index}]"),
                        table.to_pylist()))
    cluster_rows = None
    if plan.minhash_set:
        table, cluster_spans, cluster_meta = _unit_slices(set_paths[-1], bundle, ahead, plan.minhash_set)
        if cluster_meta.get("pool") != plan.minhash_pool:  # clusters of another pool: copied in by hand
            raise BuildError(f"{set_paths[-1]}: MinHash clusters computed over other input files than this "
                             f"source's; {REMEDY}")
        cluster_rows = (table.column("line").to_pylist(), table.column("cluster").to_pylist(), cluster_spans)
    labels = chain_labels(filt for _index, filt, _rows in filters)  # "<type>#k" where a type repeats
    # a cascade filter's set (its path, for the message): rows the tag left unscored must never be reached
    cascaded = [path if t.gate else None for t, path in zip(plan.filters, set_paths)]
    exact = source.dedup.exact
    cols = {c: docs.column(c).to_pylist() for c in ("loc_line", "id", "bytes", "blank")}
    text_hashes = docs.column("text_hash").to_pylist() if exact else None
    kept_rows: list[int] = []
    kept_units: list[int] = []
    hashes: list[int] = []
    keeps: list[int] = []
    clusters: list[bytes | None] = []
    for position, (unit, entry) in enumerate(zip(bundle.units, meta["units"])):
        stats = unit_stats(entry["stats"])
        unit_clusters = {}
        if cluster_rows is not None:
            lines, roots, spans = cluster_rows
            lo, hi = spans[position]
            unit_clusters = dict(zip(lines[lo:hi], roots[lo:hi]))
        removed: dict[str, list[int]] = {}
        kept_docs = kept_bytes = 0
        name, offset = ctx.names[unit.index], ctx.offsets[unit.index]
        start, end = doc_spans[position]
        for i in range(start, end):
            n_bytes = cols["bytes"][i]
            reason = BLANK_REASON if ctx.strip_blank and cols["blank"][i] else None
            if reason is None:
                for (_index, filt, rows), label, path in zip(filters, labels, cascaded):
                    if path is not None and not rows[i][SCORED_COLUMN]:
                        raise BuildError(f"{path}: a document that the filters before it keep has no score "
                                         f"({name}:{offset + cols['loc_line'][i]}): the set is not this "
                                         f"manifest's (cascade): {REMEDY}")
                    verdict = decide(filt, rows[i])
                    if verdict is not None:
                        reason = f"{label}:{verdict}"
                        break
            if reason is not None:
                entry_removed = removed.setdefault(reason, [0, 0])
                entry_removed[0] += 1
                entry_removed[1] += n_bytes
                continue
            kept_docs += 1
            kept_bytes += n_bytes
            loc = loc_of(name, offset, cols["loc_line"][i])
            doc_id = cols["id"][i]
            cluster = unit_clusters.get(cols["loc_line"][i])
            kept_rows.append(i)
            kept_units.append(unit.index)
            hashes.append(seeded_hash(ctx.seed, plan.name, doc_id, loc))
            clusters.append(cluster)
            if exact or cluster is not None:
                keeps.append(document_key({"id": doc_id, "loc": loc}))
            else:
                keeps.append(0)
        docs_in = stats["docs"] + sum(stats["quarantined"].values()) + sum(stats["removed"].values())
        for reason, n in stats["removed"].items():  # removed while reading (Stack Exchange rules): bytes
            removed.setdefault(reason, [0, None])[0] += n  # unknown, none formed a document
        last = position == len(bundle.units) - 1
        reports = {}
        if last:  # the filters saw the whole bundle: their reports go with its last unit
            for index, filt, _rows_ in filters:
                report = getattr(filt, "report", None)
                if report is not None and hasattr(report, "merge") and hasattr(report, "to_dict"):
                    reports[f"filters[{index}].{filt.name}"] = report
        yield UnitPool(unit.index, si, {
            "docs_in": docs_in, "bytes_in": stats["bytes"], "quarantined": stats["quarantined"],
            "removed": removed, "kept_docs": kept_docs, "kept_bytes": kept_bytes,
            "files": int(not unit.is_range or unit.start == 0),
            "unreadable_bytes": stats.get("unreadable_bytes", 0), "sample_bytes": stats["sample_bytes"],
            "sample_tokens": stats["sample_tokens"], "sample_docs": stats["sample_docs"]}, reports)
    rows = np.asarray(kept_rows, dtype=np.int64)
    block = PoolBlock(si, bundle.index, np.asarray(kept_units, dtype=np.int64),
                      np.asarray(docs.column("line").to_numpy(), dtype=np.int64)[rows],
                      np.asarray(cols["loc_line"], dtype=np.int64)[rows], np.asarray(hashes, dtype=np.int64),
                      np.asarray(cols["bytes"], dtype=np.int64)[rows], content_digests(docs.column("text_hash"))[rows])
    if exact or plan.minhash_set:
        clustered = np.asarray([c is not None for c in clusters], dtype=bool)
        block = block._replace(
            keep=_int_keys(keeps),
            text_hash=_keys([text_hashes[i] for i in kept_rows]) if exact else None,
            cluster=_keys([c if c is not None else bytes(16) for c in clusters]) if plan.minhash_set else None,
            clustered=clustered if plan.minhash_set else None)
    yield block
    yield UnitIds(si, np.asarray([id_hash(i) for i in cols["id"]], dtype="<u8").tobytes())


# ---------------------------------------------------------------------------- dedup


class DedupKeys(NamedTuple):
    """Rows of one block bound for one dedup partition."""

    source_index: int
    bundle_index: int
    row: np.ndarray  # int64 rows of the block
    key: np.ndarray  # (n, 2) uint64: content hash or cluster
    keep: np.ndarray  # (n, 2) uint64
    bytes: np.ndarray  # int64


class Losers(NamedTuple):
    """Rows of one block that lost to a duplicate with a smaller keep key."""

    bundle_index: int
    rows: np.ndarray  # int64


class DedupRemoved(NamedTuple):
    source_index: int
    docs: int
    bytes: int


def _keyed_rows(block: PoolBlock, column: str, partitions: int) -> Iterator[tuple[int, DedupKeys]]:
    keys = getattr(block, column)
    rows = np.arange(block.size, dtype=np.int64) if column == "text_hash" else np.flatnonzero(block.clustered)
    if keys is None or not len(rows):
        return
    k = keys[rows]
    target = (k[:, 0] ^ k[:, 1]) % np.uint64(partitions)
    for p in np.unique(target).tolist():
        mine = rows[target == p]
        yield p, DedupKeys(block.source_index, block.bundle_index, mine, keys[mine], block.keep[mine],
                           block.bytes[mine])


def _losers(keyed: Iterable[tuple[int, DedupKeys]]) -> Iterator[Losers | DedupRemoved]:
    """One dedup partition: in each (source, key) group, every row but the smallest keep key loses."""
    parts = [d for _, d in keyed]
    if not parts:
        return
    source = np.concatenate([np.full(len(d.row), d.source_index, dtype=np.int64) for d in parts])
    bundle = np.concatenate([np.full(len(d.row), d.bundle_index, dtype=np.int64) for d in parts])
    row = np.concatenate([d.row for d in parts])
    key = np.concatenate([d.key for d in parts])
    keep = np.concatenate([d.keep for d in parts])
    size = np.concatenate([d.bytes for d in parts])
    # bundle and row break ties, so the survivor never depends on the order rows arrived in
    order = np.lexsort((row, bundle, keep[:, 1], keep[:, 0], key[:, 1], key[:, 0], source))
    s, k = source[order], key[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (s[1:] != s[:-1]) | (k[1:, 0] != k[:-1, 0]) | (k[1:, 1] != k[:-1, 1])
    lost = order[~first]
    if not len(lost):
        return
    for si in np.unique(source[lost]).tolist():
        mine = lost[source[lost] == si]
        yield DedupRemoved(si, len(mine), int(size[mine].sum()))
    by_bundle = lost[np.argsort(bundle[lost], kind="stable")]
    bundles = bundle[by_bundle]
    starts = np.flatnonzero(np.r_[True, bundles[1:] != bundles[:-1]])
    for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(by_bundle)]):
        yield Losers(int(bundles[a]), np.sort(row[by_bundle[a:b]]))


def _without_losers(pairs) -> Iterator[PoolBlock]:
    """A task's blocks, each without its losing rows (blocks left empty are dropped)."""
    blocks: dict[int, PoolBlock] = {}
    lost: dict[int, list] = {}
    for bundle_index, record in pairs:
        if isinstance(record, PoolBlock):
            blocks[bundle_index] = record
        else:
            lost.setdefault(bundle_index, []).append(record.rows)
    for bundle_index in sorted(blocks):
        block = blocks[bundle_index]
        if bundle_index in lost:
            keep = np.ones(block.size, dtype=bool)
            keep[np.concatenate(lost[bundle_index])] = False
            block = block.take(keep)
        if block.size:
            yield block


def _without(blocks, losers, task_of_bundle, num_tasks: int):
    """`blocks` without the rows the `Losers` records of `losers` name, partitioned by tokenize task."""
    keyed = blocks.map(lambda b: (b.bundle_index, b)).union(
        losers.filter(lambda r: isinstance(r, Losers)).map(lambda r: (r.bundle_index, r)))
    return keyed.partitionBy(num_tasks, lambda bi: task_of_bundle.value[bi]).mapPartitions(
        _without_losers, preservesPartitioning=True)


def _removed(records: Iterable[DedupRemoved]) -> dict[int, tuple[int, int]]:
    removed: dict[int, tuple[int, int]] = {}
    for r in records:
        docs, nbytes = removed.get(r.source_index, (0, 0))
        removed[r.source_index] = (docs + r.docs, nbytes + r.bytes)
    return removed


def _dedup_pass(sc, blocks, column: str, involved: set, task_of_bundle, num_tasks: int):
    """(blocks without the pass's losers, partitioned by tokenize task; {source: (docs, bytes)} removed)."""
    partitions = max(1, sc.defaultParallelism)
    involved_b = frozenset(involved)
    losers = (blocks.filter(lambda b: b.source_index in involved_b)
              .flatMap(lambda b: _keyed_rows(b, column, partitions))
              .partitionBy(partitions, lambda p: p)
              .mapPartitions(_losers))
    losers.persist()
    removed = _removed(losers.filter(lambda r: isinstance(r, DedupRemoved)).collect())
    return _without(blocks, losers, task_of_bundle, num_tasks), removed, losers


class IdRepeats(NamedTuple):
    """Documents of a source whose id occurred before in it, among one summary partition's ids."""

    source_index: int
    repeats: int


class PoolSummary(NamedTuple):
    unit_pools: list  # every unit's UnitPool, in unit order
    duplicate_ids: dict  # source index -> documents whose id occurred before in the source (any unit)
    blocks: object  # RDD of the PoolBlocks after dedup, each in its tokenize task's partition
    removed: dict  # source index -> {reason: (docs, bytes)} removed by dedup
    held: list  # RDDs to unpersist once what is made of `blocks` is persisted


def _summary_keyed(record, exact: frozenset, partitions: int) -> Iterator[tuple[int, object]]:
    """A pool record's share of the summary shuffle: a unit's accounts as they are, a bundle's
    id hashes by hash, an exact-dedup source's rows by content hash."""
    if isinstance(record, UnitPool):
        yield record.unit_index % partitions, record
    elif isinstance(record, UnitIds):
        yield from _spread_ids(record, partitions)
    elif record.source_index in exact:
        yield from _keyed_rows(record, "text_hash", partitions)


def _summarize(pairs) -> Iterator[UnitPool | IdRepeats | DedupRemoved | Losers]:
    """One summary partition: its units' accounts, its id repeats per source, exact dedup's losers."""
    ids, keyed = [], []
    for p, item in pairs:
        if isinstance(item, UnitPool):
            yield item
        elif isinstance(item, DedupKeys):
            keyed.append((p, item))
        else:
            ids.append((p, item))
    for si, n in _repeats(ids):
        yield IdRepeats(si, n)
    yield from _losers(keyed)


def summarize(sc, records, sources, task_of_bundle, num_tasks: int) -> PoolSummary:
    """The pool stage's reductions of `records` (the pool tasks' UnitPool, UnitIds and PoolBlock
    records, each tokenize task's bundles in that task's partition; the blocks after dedup keep
    that layout).

    One shuffle carries the units' accounts, the id hashes (duplicate ids across units) and exact
    dedup's keys, and one job collects what they sum to: as three jobs (a collect of the units'
    accounts, a shuffle for the ids, one for exact dedup), each paid Spark's per-job and per-task
    costs again. Near dedup sees exact dedup's survivors: a job of its own."""
    partitions = max(1, sc.defaultParallelism)
    exact = frozenset(si for si, s in enumerate(sources) if s.dedup.exact)
    near = {si for si, s in enumerate(sources) if s.dedup.minhash is not None}
    summary = (records.flatMap(lambda r: _summary_keyed(r, exact, partitions))
               .partitionBy(partitions, lambda p: p).mapPartitions(_summarize))
    summary.persist()
    unit_pools: list[UnitPool] = []
    repeats: dict[int, int] = {}
    exact_removed: list[DedupRemoved] = []
    for r in summary.filter(lambda r: not isinstance(r, Losers)).collect():
        if isinstance(r, UnitPool):
            unit_pools.append(r)
        elif isinstance(r, IdRepeats):
            if r.repeats:
                repeats[r.source_index] = repeats.get(r.source_index, 0) + r.repeats
        else:
            exact_removed.append(r)
    unit_pools.sort(key=lambda up: up.unit_index)  # the report merges their filter reports in unit order
    blocks = records.filter(lambda r: isinstance(r, PoolBlock))
    removed: dict[int, dict[str, tuple[int, int]]] = {}
    if exact:
        blocks = _without(blocks, summary, task_of_bundle, num_tasks)
        for si, pair in _removed(exact_removed).items():
            removed.setdefault(si, {})["exact_duplicate"] = pair
    held = [summary]
    if near:
        blocks, counts, losers = _dedup_pass(sc, blocks, "cluster", near, task_of_bundle, num_tasks)
        held.append(losers)
        for si, pair in counts.items():
            removed.setdefault(si, {})["near_duplicate"] = pair
    return PoolSummary(unit_pools, repeats, blocks, removed, held)


# ---------------------------------------------------------------------------- selection helpers


class BucketTotals(NamedTuple):
    """A source's pool per sampling-hash bucket (buckets ascending)."""

    bucket: np.ndarray  # int64
    docs: np.ndarray  # int64
    bytes: np.ndarray  # int64


def _summed(buckets: np.ndarray, docs: np.ndarray, sizes: np.ndarray) -> BucketTotals:
    unique, inverse = np.unique(buckets, return_inverse=True)
    return BucketTotals(unique, np.bincount(inverse, weights=docs, minlength=len(unique)).astype(np.int64),
                        np.bincount(inverse, weights=sizes, minlength=len(unique)).astype(np.int64))


def merge_totals(a: BucketTotals, b: BucketTotals) -> BucketTotals:
    return _summed(np.concatenate([a.bucket, b.bucket]), np.concatenate([a.docs, b.docs]),
                   np.concatenate([a.bytes, b.bytes]))


def partition_totals(blocks: Iterable[PoolBlock]) -> Iterator[tuple[int, BucketTotals]]:
    """mapPartitions: (source index, its documents and bytes per bucket) over a partition's blocks."""
    per_source: dict[int, list[PoolBlock]] = {}
    for block in blocks:
        per_source.setdefault(block.source_index, []).append(block)
    for si, mine in sorted(per_source.items()):
        buckets = bucket_of(np.concatenate([b.hash for b in mine]))
        sizes = np.concatenate([b.bytes for b in mine])
        yield si, _summed(buckets, np.ones(len(buckets), dtype=np.int64), sizes)


def bucket_totals(eligible, sources: int) -> dict[int, BucketTotals]:
    """{source index: documents and bytes per bucket} of the whole pool (one small shuffle).

    Its keys are the `sources` source indices: with its partitions left to PySpark (those of
    the pool, one per tokenize task, unless spark.default.parallelism is set), the reduce side
    ran a task per pool task, thousands on a cluster, nearly all of them empty."""
    partitions = max(1, min(sources, eligible.context.defaultParallelism))
    return dict(eligible.mapPartitions(partition_totals).reduceByKey(merge_totals, partitions).collect())


def candidates(blocks: Iterable[PoolBlock], pick) -> Iterator[tuple[int, list[PoolDoc]]]:
    """(unit index, [PoolDoc]) of the rows `pick(block)` (a boolean mask) chooses, unit by unit."""
    for block in blocks:
        rows = np.flatnonzero(pick(block))
        if len(rows):
            yield from block.docs(rows)


def bucket_range(lo: tuple, hi: tuple):
    """pick: documents whose bucket is in [lo, hi) of their source."""
    def pick(block: PoolBlock) -> np.ndarray:
        b = bucket_of(block.hash)
        return (b >= lo[block.source_index]) & (b < hi[block.source_index])
    return pick
