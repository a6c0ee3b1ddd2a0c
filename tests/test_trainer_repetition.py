"""Repeated n-gram span detector: thresholds, every period 1..13, brute-force agreement, scale."""

from __future__ import annotations

import time

import numpy as np
import pytest

from trainer.repetition import repeated_ngram_span_array, repeated_ngram_spans, repetition_keep_mask


def brute_force_spans(tokens, max_n: int, min_repeats: int) -> list[tuple[int, int]]:
    """Union over every start s and period n <= max_n of [s, s + k*n) where tokens[s:s+n]
    is repeated k >= min_repeats times back to back. Independent of the implementation."""
    t = list(tokens)
    covered = np.zeros(len(t) + 1, dtype=bool)
    for n in range(1, max_n + 1):
        for s in range(len(t) - n + 1):
            k = 1
            while s + (k + 1) * n <= len(t) and t[s + k * n: s + (k + 1) * n] == t[s: s + n]:
                k += 1
            if k >= min_repeats:
                covered[s: s + k * n] = True
    spans, start = [], None
    for i, c in enumerate(covered):
        if c and start is None:
            start = i
        elif not c and start is not None:
            spans.append((start, i))
            start = None
    return spans


@pytest.mark.parametrize("n", range(1, 14))
def test_each_period_32_repeats_found_31_not(n):
    rng = np.random.default_rng(n)
    gram = rng.choice(np.arange(1000, 2000), size=n, replace=False)  # distinct tokens: minimal period n
    left = rng.integers(5000, 6000, 50)
    right = rng.integers(7000, 8000, 50)
    hit = np.concatenate([left, np.tile(gram, 32), right])
    assert repeated_ngram_spans(hit) == [(50, 50 + 32 * n)]
    miss = np.concatenate([left, np.tile(gram, 31), gram[:-1], right])  # 31 copies + partial
    assert repeated_ngram_spans(miss) == []


def test_period_14_is_beyond_max_n():
    gram = np.arange(100, 114)
    tokens = np.tile(gram, 40)
    assert repeated_ngram_spans(tokens) == []
    assert repeated_ngram_spans(tokens, max_n=14) == [(0, len(tokens))]


def test_partial_trailing_copy_is_included():
    tokens = np.array([9] + [1, 2] * 32 + [1] + [9])
    assert repeated_ngram_spans(tokens) == [(1, 66)]


def test_random_tokens_have_no_spans_and_degenerate_inputs():
    rng = np.random.default_rng(0)
    assert repeated_ngram_spans(rng.integers(0, 100_278, 200_000).astype(np.uint32)) == []
    assert repeated_ngram_spans(np.array([], dtype=np.uint32)) == []
    assert repeated_ngram_spans(np.full(31, 7)) == []
    assert repeated_ngram_spans(np.full(32, 7)) == [(0, 32)]
    assert repeated_ngram_spans([255] * 100) == [(0, 100)]  # plain lists are fine
    with pytest.raises(ValueError, match="one-dimensional"):
        repeated_ngram_spans(np.zeros((4, 40), dtype=np.int64))
    with pytest.raises(ValueError, match="integers"):
        repeated_ngram_spans(np.zeros(40, dtype=np.float32))
    with pytest.raises(ValueError):
        repeated_ngram_spans(np.zeros(40, dtype=np.int64), min_repeats=1)


def test_adjacent_and_overlapping_runs_merge():
    a = np.tile([1, 2, 3], 32)
    b = np.full(40, 4)
    c = np.tile([5, 6], 33)
    tokens = np.concatenate([[0], a, b, [8, 9], c])
    spans = repeated_ngram_spans(tokens)
    assert spans == [(1, 1 + 96 + 40), (1 + 96 + 40 + 2, len(tokens))]
    keep = repetition_keep_mask(tokens)
    assert keep.sum() == 3 and keep[0] and keep[137] and keep[138]


def test_agrees_with_brute_force_on_small_alphabets():
    """Binary / ternary strings are full of short periodic stretches: the adversarial case."""
    rng = np.random.default_rng(42)
    for trial in range(150):
        alphabet = 2 + trial % 2
        length = int(rng.integers(0, 120))
        tokens = rng.integers(0, alphabet, length)
        if trial % 3 == 0 and length > 20:  # plant a periodic stretch
            n = int(rng.integers(1, 5))
            start = int(rng.integers(0, length - 10))
            gram = rng.integers(0, alphabet, n)
            stretch = np.tile(gram, 12)[: length - start]
            tokens[start: start + len(stretch)] = stretch
        for max_n, min_repeats in ((4, 3), (3, 5), (6, 2)):
            expected = brute_force_spans(tokens, max_n, min_repeats)
            assert repeated_ngram_spans(tokens, max_n, min_repeats) == expected, (tokens.tolist(), max_n, min_repeats)


def test_long_array_is_linear_time_and_exact():
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 100_000, 5_000_000).astype(np.uint32)
    planted = []
    for k, pos in enumerate(range(100_000, 4_900_000, 600_000)):
        n = k % 13 + 1
        reps = 32 + k
        gram = np.arange(100_100 + 20 * k, 100_100 + 20 * k + n, dtype=np.uint32)
        tokens[pos: pos + n * reps] = np.tile(gram, reps)
        planted.append((pos, pos + n * reps))
    repeated_ngram_spans(tokens[:1000])  # compile outside the timing
    t0 = time.perf_counter()
    spans = repeated_ngram_spans(tokens)
    elapsed = time.perf_counter() - t0
    assert spans == planted
    assert elapsed < 5.0, elapsed  # ~0.1 s here: 13 linear passes


def test_int64_and_uint32_agree_and_span_array_shape():
    tokens = np.concatenate([np.arange(10), np.tile([3, 1, 4], 40), np.arange(10)])
    a = repeated_ngram_span_array(tokens.astype(np.int64))
    b = repeated_ngram_span_array(tokens.astype(np.uint32))
    assert a.shape == (1, 2) and a.dtype == np.int64 and np.array_equal(a, b)
