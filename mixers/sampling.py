"""Sampling a source to its share of the token budget.

Table 13 of the OLMo 2 report expresses each source's use as "Source %": 400 means four
whole copies, 6.85 a 6.85% sample. We do the same: `copies = floor(r)` whole copies plus a
fractional remainder chosen by a seeded hash, where `r = target tokens / available tokens`.

The fractional sample walks documents in seeded-hash order. Both rules below are
deterministic and independent of how Spark partitions the data (the build applies them in
`dolmino.build.select`, over what it tokenized of each pool):

- small sources (up to SMALL_SOURCE_DOCS documents): the driver sees every (hash, tokens)
  pair and fills greedily: take each document in hash order unless it would overshoot the
  target. The result is within the smallest skipped document of the target, which keeps
  Mix % exact even when a few documents are large next to the budget (demos, tests).
- large sources: hashes are bucketed by their top bits; the driver sums tokens per bucket,
  finds the bucket where the target falls and sorts only that bucket (a prefix in hash
  order, within one document of the target, and documents are tiny next to the target).
"""

from __future__ import annotations

import hashlib
import math
import struct
from fractions import Fraction

BUCKET_BITS = 16
# Up to this many documents the fractional sample is chosen exactly on the driver
# (16 bytes per document travel there: 4 MB at this size).
SMALL_SOURCE_DOCS = 250_000
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


def greedy_fill(docs: list[tuple[int, int]], fraction_tokens: int) -> frozenset:
    """Hashes chosen by walking (hash, tokens) in hash order, skipping documents that overshoot."""
    chosen = []
    running = 0
    for h, n in sorted(docs):
        if running >= fraction_tokens:
            break
        if running + n <= fraction_tokens:
            chosen.append(h)
            running += n
    return frozenset(chosen)


def split_budget(budget: int, mix_fractions: dict[str, float]) -> dict[str, int]:
    """Token targets per source; rounding goes to the largest remainders so targets sum to the budget.
    In exact arithmetic: a float product holds 53 bits, and a budget of 123456789012345678 split
    into targets summing to ...681 (a reviewer). The shares are normalised exactly too: float shares
    sum to 1 only within ~1e-16, and the demo's Mix % split that budget into targets 13 tokens over it
    (a share sum under 1 left more short than there are sources, one over 1 a negative slice)."""
    shares = {name: Fraction(f) for name, f in mix_fractions.items()}
    total = sum(shares.values())
    raw = {name: share / total * budget for name, share in shares.items()}
    targets = {name: math.floor(v) for name, v in raw.items()}
    short = budget - sum(targets.values())
    for name in sorted(raw, key=lambda n: (-(raw[n] - targets[n]), n))[:short]:
        targets[name] += 1
    return targets
