"""Selection: from attributes to the documents a mix takes, without tokenizing the pool.

1. Pool (executors read attribute files only): every tagged document is decided by the
   source's tagging filters in chain order, then kept documents get their sampling hash
   `seeded_hash(seed, source, id, loc)`.
2. Dedup on small records: exact duplicates share a content hash, near duplicates a
   MinHash cluster; in each group the document with the smallest keep key survives
   (blake2b of id and loc, independent of the seed and of the partitioning).
3. Plan (driver): each source's target tokens come from the budget; the pool's tokens are
   estimated from its bytes and the tag phase's tokens-per-byte sample. A pool much larger
   than its target is cut in seeded-hash order: only the hash buckets that can hold the
   target (plus a margin) are tokenized, and the exact cut is made on their real token
   counts. A pool near or below its target is tokenized whole: whole copies plus a
   seeded fraction, as before.

Every rule depends only on the attributes, the manifest and the seed, never on how Spark
partitions the work, so the same inputs give byte-identical output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

from dolmino.build.attributes import AttributeStore, Bundle, read_table, unit_rows, unit_stats
from mixers.sampling import (
    NUM_BUCKETS, SMALL_SOURCE_DOCS, bucket_of, find_cut_bucket, find_cut_hash, greedy_fill, seeded_hash,
)

# A pool whose estimated tokens exceed its target by this factor is cut by prefix (only the
# needed hash buckets are tokenized); below it the whole pool is tokenized.
PREFIX_FACTOR = 1.5
# Extra estimated tokens tokenized beyond a prefix source's target, so that one round
# usually suffices; a short round is followed by another (a "refill").
MARGIN = 0.05
# Tokens per byte assumed before a source's tag sample says otherwise: the estimate is the
# sample's ratio shrunk toward this prior as if PRIOR_BYTES of text at the prior's ratio had
# been sampled too. A real pool samples gigabytes (the prior vanishes); a small pool samples a
# few documents, and a hard cut-off to the prior (0.25 where papers run 0.34) made prefix
# selections tokenize ~1.4x what they needed.
DEFAULT_TOKENS_PER_BYTE = 0.25
PRIOR_BYTES = 16 << 10
# A small pool cut by prefix tokenizes at least this many average documents beyond its target,
# so that its greedy fill has documents small enough for the last gap.
GREEDY_SPARE_DOCS = 32
# Refill rounds after which the rest of a pool is tokenized at once (a bound on Spark jobs).
MAX_ROUNDS = 4
BLANK_REASON = "tokenizer:empty_after_strip"


class PoolDoc(NamedTuple):
    """One pool document that passed the tagging filters (dedup fields only where needed)."""

    source_index: int
    unit_index: int
    line: int  # read line within the unit
    loc_line: int  # the line named in `loc` (global within the file)
    hash: int  # sampling order
    bytes: int
    text_hash: bytes | None = None
    cluster: bytes | None = None
    keep_key: int | None = None


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


def loc_of(name: str, offset: int, loc_line: int) -> str:
    return f"{name}:{offset + loc_line}"


def _rows(table) -> list[dict]:
    return table.to_pylist()


def duplicate_ids(records) -> dict[int, int]:
    """{source index: documents whose id occurred before in the same source} (any unit)."""
    import numpy as np

    pairs = records.flatMap(lambda r: ((r.source_index, h) for h in np.frombuffer(r.hashes, dtype="<u8").tolist()))
    return dict(pairs.map(lambda p: (p, 1)).reduceByKey(lambda a, b: a + b)
                .filter(lambda kv: kv[1] > 1).map(lambda kv: (kv[0][0], kv[1] - 1))
                .reduceByKey(lambda a, b: a + b).collect())


def _unit_slices(path: str, bundle: Bundle) -> tuple[object, list, dict]:
    """(table, [(start, end) rows per unit], metadata) of one of a bundle's attribute files."""
    table, meta = read_table(path)
    return table, unit_rows(meta, bundle), meta


def pool_bundle(bundle: Bundle, ctx: PoolContext) -> Iterator[PoolDoc | UnitPool | UnitIds]:
    """Decide every document of a bundle from its attribute files (each read once)."""
    from filters.base import decide
    from filters.dedup import document_key
    from filters.registry import build_filter

    from dolmino.build.resources import localized_spec

    si = bundle.source_index
    plan, source = ctx.plans[si], ctx.sources[si]
    docs, doc_spans, meta = _unit_slices(ctx.store.path(plan.name, plan.docs_set, bundle), bundle)
    filters = []
    for t in plan.filters:
        table, spans, _ = _unit_slices(ctx.store.path(plan.name, t.set_name, bundle), bundle)
        if spans != doc_spans:
            raise ValueError(f"{bundle.key}: {t.set_name} rows per unit {spans[:3]}... differ from the docs set's")
        filters.append((t.index, build_filter(localized_spec(t.spec, ctx.resources), f"{plan.name}.filters[{t.index}]"),
                        _rows(table)))
    cluster_rows = None
    if plan.minhash_set:
        table, cluster_spans, _ = _unit_slices(ctx.store.path(plan.name, plan.minhash_set, bundle), bundle)
        cluster_rows = (table.column("line").to_pylist(), table.column("cluster").to_pylist(), cluster_spans)
    exact = source.dedup.exact
    cols = {c: docs.column(c).to_pylist() for c in ("line", "loc_line", "id", "bytes", "blank", "text_hash")}
    for position, (unit, entry) in enumerate(zip(bundle.units, meta["units"])):
        stats = unit_stats(entry["stats"])
        clusters = {}
        if cluster_rows is not None:
            lines, roots, spans = cluster_rows
            lo, hi = spans[position]
            clusters = dict(zip(lines[lo:hi], roots[lo:hi]))
        removed: dict[str, list[int]] = {}
        kept_docs = kept_bytes = 0
        name, offset = ctx.names[unit.index], ctx.offsets[unit.index]
        start, end = doc_spans[position]
        for i in range(start, end):
            n_bytes = cols["bytes"][i]
            reason = BLANK_REASON if ctx.strip_blank and cols["blank"][i] else None
            if reason is None:
                for _index, filt, rows in filters:
                    verdict = decide(filt, rows[i])
                    if verdict is not None:
                        reason = f"{filt.name}:{verdict}"
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
            cluster = clusters.get(cols["loc_line"][i])
            dedup = exact or cluster is not None
            yield PoolDoc(si, unit.index, cols["line"][i], cols["loc_line"][i],
                          seeded_hash(ctx.seed, plan.name, doc_id, loc), n_bytes,
                          cols["text_hash"][i] if exact else None, cluster,
                          document_key({"id": doc_id, "loc": loc}) if dedup else None)
        docs_in = stats["docs"] + sum(stats["quarantined"].values()) + sum(stats["removed"].values())
        for reason, n in stats["removed"].items():  # removed while reading (Stack Exchange rules): no bytes
            removed.setdefault(reason, [0, 0])[0] += n
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
    import numpy as np

    yield UnitIds(si, np.asarray([id_hash(i) for i in cols["id"]], dtype="<u8").tobytes())


# ---------------------------------------------------------------------------- dedup


def _keep_min(a: tuple, b: tuple) -> tuple:
    """Reduce (keep key, count, bytes, doc) holders of one group to its survivor."""
    winner = a if a[0] <= b[0] else b
    return winner[0], a[1] + b[1], a[2] + b[2], winner[3]


def _group_removed(kv) -> tuple[int, tuple[int, int]]:
    key, (_k, count, total_bytes, doc) = kv
    return doc.source_index, (count - 1, total_bytes - doc.bytes)


def _add_pairs(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], a[1] + b[1]


def dedup(pool, sources) -> tuple[object, dict[int, dict[str, tuple[int, int]]]]:
    """(surviving documents, {source index: {reason: (docs, bytes) removed}})."""
    exact = {si for si, s in enumerate(sources) if s.dedup.exact}
    near = {si for si, s in enumerate(sources) if s.dedup.minhash}
    removed: dict[int, dict[str, tuple[int, int]]] = {}
    if not exact and not near:
        return pool, removed
    parts = [pool.filter(lambda d: d.source_index not in exact and d.cluster is None)]
    survivors = pool.filter(lambda d: d.source_index in exact)
    if exact:
        groups = (survivors.map(lambda d: ((d.source_index, d.text_hash), (d.keep_key, 1, d.bytes, d)))
                  .reduceByKey(_keep_min))
        for si, pair in groups.map(_group_removed).reduceByKey(_add_pairs).collect():
            removed.setdefault(si, {})["exact_duplicate"] = pair
        survivors = groups.map(lambda kv: kv[1][3])
    # Near duplicates: documents of exact-deduped sources after that stage, others directly.
    clustered = survivors.filter(lambda d: d.cluster is not None).union(
        pool.filter(lambda d: d.source_index not in exact and d.cluster is not None))
    parts.append(survivors.filter(lambda d: d.cluster is None))
    if near:
        groups = (clustered.map(lambda d: ((d.source_index, d.cluster), (d.keep_key, 1, d.bytes, d)))
                  .reduceByKey(_keep_min))
        for si, pair in groups.map(_group_removed).reduceByKey(_add_pairs).collect():
            removed.setdefault(si, {})["near_duplicate"] = pair
        parts.append(groups.map(lambda kv: kv[1][3]))
    else:
        parts.append(clustered)
    return pool.context.union(parts), removed


def slim(doc: PoolDoc) -> PoolDoc:
    return doc._replace(text_hash=None, cluster=None, keep_key=None)


# ---------------------------------------------------------------------------- plan


@dataclass
class SourceSelection:
    """How one source is cut: which buckets were tokenized, and the exact rule that selects."""

    name: str
    target_tokens: int
    pool_docs: int
    pool_bytes: int
    tokens_per_byte: float  # estimated from the tag sample (then measured on what was tokenized)
    mode: str  # "all": the whole pool is tokenized; "prefix": hash buckets [0, bucket_hi)
    bucket_hi: int = NUM_BUCKETS
    # Small pools (<= SMALL_SOURCE_DOCS documents) fill their fraction greedily in hash order over
    # everything tokenized, skipping documents that would overshoot: Mix % stays exact even when
    # documents are large next to the target. Large pools cut at one hash (within one document).
    greedy: bool = False
    whole_pool: bool = False  # a pool manifest: every document once, the target is what the pool holds
    # filled in after tokenizing:
    pool_tokens: int | None = None  # exact when mode == "all"
    copies: int = 0
    fraction_tokens: int = 0
    cut_bucket: int = -1
    cut_hash: int = -1
    selected: frozenset | None = None
    rounds: int = 0
    warnings: list = field(default_factory=list)

    @property
    def estimated_pool_tokens(self) -> int:
        return int(round(self.pool_bytes * self.tokens_per_byte))

    def in_fraction(self, h: int) -> bool:
        if self.selected is not None:
            return h in self.selected
        b = bucket_of(h)
        return b < self.cut_bucket or (b == self.cut_bucket and h <= self.cut_hash)

    def instances(self, h: int) -> int:
        """How many times the document with sampling hash `h` appears in the output."""
        return self.copies + (1 if self.fraction_tokens > 0 and self.in_fraction(h) else 0)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "selected"}
        d["selected"] = sorted(self.selected) if self.selected is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SourceSelection":
        d = dict(d)
        d["selected"] = frozenset(d["selected"]) if d.get("selected") is not None else None
        return cls(**d)


def tokens_per_byte(sample_tokens: int, sample_bytes: int) -> float:
    if sample_bytes <= 0 or sample_tokens <= 0:
        return DEFAULT_TOKENS_PER_BYTE
    return (sample_tokens + DEFAULT_TOKENS_PER_BYTE * PRIOR_BYTES) / (sample_bytes + PRIOR_BYTES)


def initial_selection(name: str, target: int | None, pool_docs: int, pool_bytes: int, ratio: float,
                      bucket_bytes: dict[int, int]) -> SourceSelection:
    """Mode and the buckets to tokenize first, from estimates only. `target` None: the whole
    pool, exactly once (a pool manifest)."""
    if target is None:
        return SourceSelection(name, 0, pool_docs, pool_bytes, ratio, "all", whole_pool=True)
    sel = SourceSelection(name, target, pool_docs, pool_bytes, ratio, "all", greedy=pool_docs <= SMALL_SOURCE_DOCS)
    if pool_docs == 0 or target <= 0:
        return sel
    if sel.estimated_pool_tokens > PREFIX_FACTOR * target:
        sel.mode = "prefix"
        want = target * (1 + MARGIN)
        if sel.greedy:  # room for the greedy fill to find documents that fit the last gap
            want = max(want, target + GREEDY_SPARE_DOCS * sel.estimated_pool_tokens / pool_docs)
        sel.bucket_hi = next_bucket_hi(bucket_bytes, 0, want, ratio)
    return sel


def next_bucket_hi(bucket_bytes: dict[int, int], done_tokens: float, want_tokens: float, ratio: float,
                   start: int = 0) -> int:
    """The first bucket boundary past `start` where estimated tokens reach `want_tokens`."""
    running = done_tokens
    for b in sorted(k for k in bucket_bytes if k >= start):
        running += bucket_bytes[b] * ratio
        if running >= want_tokens:
            return b + 1
    return NUM_BUCKETS


def refill(sel: SourceSelection, bucket_bytes: dict[int, int], bucket_tokens: dict[int, int]) -> bool:
    """After a round: widen the prefix when what was tokenized cannot reach the target.

    Returns True when another round is needed. The measured tokens per byte of what was
    tokenized replaces the estimate for the next buckets."""
    if sel.mode != "prefix" or sel.bucket_hi >= NUM_BUCKETS:
        return False
    have = sum(bucket_tokens.values())
    if have >= sel.target_tokens:
        return False
    done_bytes = sum(n for b, n in bucket_bytes.items() if b < sel.bucket_hi)
    if done_bytes:
        sel.tokens_per_byte = max(have / done_bytes, 1e-6)
    if sel.rounds >= MAX_ROUNDS - 1:
        sel.bucket_hi = NUM_BUCKETS
    else:
        sel.bucket_hi = next_bucket_hi(bucket_bytes, have, sel.target_tokens * (1 + MARGIN), sel.tokens_per_byte,
                                       start=sel.bucket_hi)
    return True


ALL_MEMBERS = -1  # `settle`: the cut needs every tokenized document of the source (greedy fill)


def settle(sel: SourceSelection, bucket_tokens: dict[int, int]) -> int | None:
    """Copies and fraction from the real token counts of every tokenized bucket.

    Returns what the exact cut still needs: None (nothing: whole copies, or an empty pool),
    ALL_MEMBERS (a small source's greedy fill looks at all of its tokenized documents), or
    the one bucket whose documents hold the cut. The driver fetches every source's members
    in one Spark job, then calls `cut`."""
    total = sum(bucket_tokens.values())
    if sel.mode == "prefix" and sel.bucket_hi >= NUM_BUCKETS:
        sel.mode = "all"  # refilled to the end: the whole pool is tokenized
    if sel.whole_pool:
        sel.pool_tokens = sel.target_tokens = total
        sel.copies = 1
        return None
    if sel.mode == "all":
        sel.pool_tokens = total
        if total <= 0:
            sel.warnings.append(f"source {sel.name!r}: no documents left after filtering and dedup; "
                                f"it contributes 0 of its {sel.target_tokens:,} target tokens")
            return None
        sel.copies = sel.target_tokens // total
        sel.fraction_tokens = sel.target_tokens - sel.copies * total
    else:
        sel.fraction_tokens = sel.target_tokens
    if sel.fraction_tokens <= 0:
        return None
    if sel.greedy:
        return ALL_MEMBERS
    sel.cut_bucket, _before = find_cut_bucket(bucket_tokens, sel.fraction_tokens)
    return sel.cut_bucket


def cut(sel: SourceSelection, bucket_tokens: dict[int, int], members: list[tuple[int, int]]) -> SourceSelection:
    """The exact rule, from the (hash, tokens) of the documents `settle` asked for."""
    if sel.greedy:
        sel.selected = greedy_fill(members, sel.fraction_tokens)
        return sel
    _bucket, before = find_cut_bucket(bucket_tokens, sel.fraction_tokens)
    sel.cut_hash = find_cut_hash(members, before, sel.fraction_tokens)
    return sel


def split_targets(budget: int, fractions: dict[str, float]) -> dict[str, int]:
    from mixers.sampling import split_budget

    return split_budget(budget, fractions)
