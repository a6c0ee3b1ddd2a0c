"""Sampling a source to its share of the token budget.

Table 13 of the OLMo 2 report expresses each source's use as "Source %": 400 means four
whole copies, 6.85 a 6.85% sample. We do the same: `copies = floor(r)` whole copies plus a
fractional remainder chosen by a seeded hash, where `r = target tokens / available tokens`.

The fractional sample is "the documents with the smallest seeded hash until the token
target is met". That rule is deterministic, independent of how Spark partitions the data,
and hits the token target to within one document. To find the cut without sorting the
whole source on the driver, hashes are bucketed by their top bits; the driver sums tokens
per bucket, finds the bucket where the target falls, and sorts only that bucket.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

BUCKET_BITS = 16
NUM_BUCKETS = 1 << BUCKET_BITS


def seeded_hash(seed: int, *parts: str) -> int:
    """A 63-bit hash of `parts` under `seed`: stable across processes, Python versions and machines."""
    h = hashlib.blake2b(digest_size=8, key=struct.pack("<Q", seed & (2**64 - 1)))
    for p in parts:
        data = p.encode("utf-8", "surrogatepass")
        h.update(struct.pack("<I", len(data)))
        h.update(data)
    return int.from_bytes(h.digest(), "little") >> 1


def bucket_of(h: int) -> int:
    return h >> (63 - BUCKET_BITS)


@dataclass(frozen=True)
class SourcePlan:
    """How one source is sampled: whole copies plus a fraction of one more copy."""

    source: str
    available_tokens: int
    target_tokens: int
    copies: int
    fraction: float
    cut_bucket: int = -1  # documents in buckets below this are in the fractional copy
    cut_hash: int = -1  # ... and in the cut bucket, those with hash <= cut_hash

    @property
    def fraction_tokens(self) -> int:
        return int(round(self.fraction * self.available_tokens))

    def in_fraction(self, h: int) -> bool:
        b = bucket_of(h)
        return b < self.cut_bucket or (b == self.cut_bucket and h <= self.cut_hash)

    def instances(self, h: int) -> int:
        """How many times a document with seeded hash `h` appears in the output."""
        return self.copies + (1 if self.fraction > 0 and self.in_fraction(h) else 0)


class SamplingError(RuntimeError):
    pass


def plan_copies(source: str, available_tokens: int, target_tokens: int) -> SourcePlan:
    if available_tokens <= 0:
        raise SamplingError(f"source {source!r} has no tokens left after filtering; cannot fill {target_tokens} tokens")
    ratio = target_tokens / available_tokens
    copies = math.floor(ratio)
    fraction = ratio - copies
    if fraction < 1e-12:
        fraction = 0.0
    return SourcePlan(source, available_tokens, target_tokens, copies, fraction)


def find_cut_bucket(bucket_tokens: dict[int, int], fraction_tokens: int) -> tuple[int, int]:
    """The bucket where the running token sum reaches `fraction_tokens`, and the tokens before it."""
    running = 0
    for b in sorted(bucket_tokens):
        if running + bucket_tokens[b] >= fraction_tokens:
            return b, running
        running += bucket_tokens[b]
    return max(bucket_tokens), running - bucket_tokens[max(bucket_tokens)]


def find_cut_hash(bucket_docs: list[tuple[int, int]], tokens_before: int, fraction_tokens: int) -> int:
    """Within the cut bucket, the largest hash to keep so the total lands closest to the target.

    `bucket_docs` are (hash, tokens) pairs. Returns -1 to keep none of the bucket.
    """
    best_hash, best_err = -1, abs(fraction_tokens - tokens_before)
    running = tokens_before
    for h, n in sorted(bucket_docs):
        running += n
        err = abs(fraction_tokens - running)
        if err < best_err:
            best_hash, best_err = h, err
        if running >= fraction_tokens:
            break
    return best_hash


def with_cut(plan: SourcePlan, cut_bucket: int, cut_hash: int) -> SourcePlan:
    return SourcePlan(plan.source, plan.available_tokens, plan.target_tokens, plan.copies, plan.fraction,
                      cut_bucket, cut_hash)


def split_budget(budget: int, mix_fractions: dict[str, float]) -> dict[str, int]:
    """Token targets per source; rounding goes to the largest sources so targets sum to the budget."""
    raw = {name: budget * f for name, f in mix_fractions.items()}
    targets = {name: int(math.floor(v)) for name, v in raw.items()}
    short = budget - sum(targets.values())
    for name in sorted(raw, key=lambda n: (-(raw[n] - targets[n]), n))[:short]:
        targets[name] += 1
    return targets
