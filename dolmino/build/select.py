"""Selection: from attributes to the documents a mix takes, without tokenizing the pool.

1. Pool and dedup (`dolmino.build.pool`): the documents that passed the tagging filters
   and dedup, with their sampling hashes, decided from attributes alone.
2. Plan (driver): each source's target tokens come from the budget; the pool's tokens are
   estimated from its bytes and the tag phase's tokens-per-byte sample. A pool much larger
   than its target is cut in seeded-hash order: only the hash buckets that can hold the
   target (plus a margin) are tokenized, and the exact cut is made on their real token
   counts. A pool near or below its target is tokenized whole: whole copies plus a
   seeded fraction, as before.

Every rule depends only on the attributes, the manifest and the seed, never on how Spark
partitions the work, so the same inputs give byte-identical output.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from dolmino.manifest import format_count
from mixers.sampling import NUM_BUCKETS, SMALL_SOURCE_DOCS, bucket_of, find_cut_bucket, find_cut_hash, greedy_fill

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
# Fewer spare documents than this after a round (estimates run ~2x off in small pools, so not
# GREEDY_SPARE_DOCS itself) and a greedy source is refilled.
GREEDY_MIN_SPARE_DOCS = 8
# Rounds per source, the first included: the last one tokenizes the rest of its pool at once (a bound on Spark jobs).
MAX_ROUNDS = 4


# ---------------------------------------------------------------------------- plan


@dataclass
class SourceSelection:
    """How one source is cut: which buckets were tokenized, and the exact rule that selects."""

    name: str
    target_tokens: int
    pool_docs: int
    pool_bytes: int
    tokens_per_byte: float  # estimated from the tag sample (measured on what was tokenized when a round falls short)
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
    # Tokens of the document the fraction stopped before: the smallest the greedy fill skipped, or the
    # one after the cut hash. A source short of its target names it: "wrote 0 tokens, 1,000 short of its
    # target 1,000" of a pool whose one document held 5,001 tokens did not say why (a tester).
    next_doc_tokens: int | None = None
    rounds: int = 0
    # Why nothing is left ("its pool is empty", ...): the report words the warning, adding
    # what removed the documents, which only its accounting knows.
    empty: str | None = None

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

    def instances_of(self, hashes):
        """`instances` of every hash of a numpy int64 array, as an array."""
        import numpy as np

        if self.fraction_tokens > 0:
            if self.selected is not None:
                inside = np.isin(hashes, np.fromiter(self.selected, dtype=np.int64, count=len(self.selected)))
            else:
                b = bucket_of(hashes)
                inside = (b < self.cut_bucket) | ((b == self.cut_bucket) & (hashes <= self.cut_hash))
            return self.copies + inside.astype(np.int64)
        return np.full(len(hashes), self.copies, dtype=np.int64)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "selected"}
        d["selected"] = sorted(self.selected) if self.selected is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SourceSelection":
        d = dict(d)
        d["selected"] = frozenset(d["selected"]) if d.get("selected") is not None else None
        if d.get("warnings"):  # a plan saved before `empty`: its one warning said why
            d.setdefault("empty", d["warnings"][0].split("; ", 1)[-1])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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
    if pool_docs == 0:
        return sel
    if target <= 0:  # the mix takes nothing of it (a budget too small to share): tokenize nothing
        sel.mode, sel.bucket_hi = "prefix", 0
        return sel
    if sel.estimated_pool_tokens > PREFIX_FACTOR * target:
        sel.mode = "prefix"
        sel.bucket_hi = next_bucket_hi(bucket_bytes, 0, _wanted(sel, sel.estimated_pool_tokens / pool_docs), ratio)
    return sel


def _wanted(sel: SourceSelection, doc_tokens: float) -> float:
    """Tokens a prefix source tokenizes toward: its target and a margin, and for a greedy fill
    room to find documents that fit the last gap (`doc_tokens`: an average document's tokens)."""
    want = sel.target_tokens * (1 + MARGIN)
    if sel.greedy:
        want = max(want, sel.target_tokens + GREEDY_SPARE_DOCS * doc_tokens)
    return want


def next_bucket_hi(bucket_bytes: dict[int, int], done_tokens: float, want_tokens: float, ratio: float,
                   start: int = 0) -> int:
    """The first bucket boundary past `start` where estimated tokens reach `want_tokens`."""
    running = done_tokens
    for b in sorted(k for k in bucket_bytes if k >= start):
        running += bucket_bytes[b] * ratio
        if running >= want_tokens:
            return b + 1
    return NUM_BUCKETS


def refill(sel: SourceSelection, bucket_bytes: dict[int, int], bucket_tokens: dict[int, int], docs: int) -> bool:
    """After a round: widen the prefix when what was tokenized (`docs` documents, the tokens
    of `bucket_tokens`, what token filters left) cannot reach the target, or leaves a greedy
    fill too few documents beyond it (GREEDY_MIN_SPARE_DOCS) to fit the last gap: when token
    filters removed much of a round, the fill stopped up to a document short with small
    documents further on in the pool.

    Returns True when another round is needed. The measured tokens per byte of what was
    tokenized replaces the estimate for the next buckets."""
    if sel.mode != "prefix" or sel.bucket_hi >= NUM_BUCKETS or sel.target_tokens <= 0:
        return False
    have = sum(bucket_tokens.values())
    doc_tokens = have / docs if docs else sel.estimated_pool_tokens / max(sel.pool_docs, 1)
    if have >= sel.target_tokens + (GREEDY_MIN_SPARE_DOCS * doc_tokens if sel.greedy else 0):
        return False
    done_bytes = sum(n for b, n in bucket_bytes.items() if b < sel.bucket_hi)
    if done_bytes:
        sel.tokens_per_byte = max(have / done_bytes, 1e-6)
    if sel.rounds >= MAX_ROUNDS - 1:
        sel.bucket_hi = NUM_BUCKETS
    else:
        sel.bucket_hi = next_bucket_hi(bucket_bytes, have, _wanted(sel, doc_tokens), sel.tokens_per_byte,
                                       start=sel.bucket_hi)
    return True


ALL_MEMBERS = -1  # `settle`: the cut needs every tokenized document of the source (greedy fill)
# Whole copies of a pool a mix may write. More is no training mix but a pool that is not the one
# the manifest describes: a 50B build over a partly downloaded dclm (39K tokens, the manifest's
# pool_tokens 752B) set out to write its 24B-token target as 621,074 copies, ~100 GB, warned
# about only when the report was written (found by a tester).
MAX_COPIES = 1000


def too_many_copies(sel: SourceSelection, stated_pool: int | None) -> str | None:
    """The refusal of a settled selection that repeats its pool MAX_COPIES times or more, or None."""
    if sel.copies < MAX_COPIES:
        return None
    stated = f"; the manifest's pool_tokens is {format_count(stated_pool)}" if stated_pool else ""
    return (f"source {sel.name!r}: its pool holds {format_count(sel.pool_tokens)} tokens after filtering, and its "
            f"{format_count(sel.target_tokens)}-token target would repeat it {sel.copies:,} times (at most "
            f"{MAX_COPIES - 1:,} whole copies are written{stated}): is the data root the whole pool? A lower --budget "
            "or Mix % asks for less")


def empty_reason(sel: SourceSelection) -> str:
    """Why a source gives no tokens, as its report warning says it. A pool manifest's target is what
    its pool holds: a pool the tagging filters emptied read "it contributes 0 of its 0 target tokens"
    (a tester)."""
    return "its pool is empty" if sel.whole_pool else f"it contributes 0 of its {sel.target_tokens:,} target tokens"


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
        if total <= 0:
            sel.empty = empty_reason(sel)
        return None
    if sel.mode == "all":
        sel.pool_tokens = total
        if total <= 0:
            sel.empty = empty_reason(sel)
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
        left_out = [n for h, n in members if h not in sel.selected]
    else:
        _bucket, before = find_cut_bucket(bucket_tokens, sel.fraction_tokens)
        sel.cut_hash = find_cut_hash(members, before, sel.fraction_tokens)
        after = [(h, n) for h, n in members if h > sel.cut_hash]  # the cut bucket's documents past the cut
        left_out = [min(after)[1]] if after else []
    sel.next_doc_tokens = min(left_out) if left_out else None
    return sel


def split_targets(budget: int, fractions: dict[str, float]) -> dict[str, int]:
    from mixers.sampling import split_budget

    return split_budget(budget, fractions)
