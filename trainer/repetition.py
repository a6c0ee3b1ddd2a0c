"""Find runs of a repeated short n-gram in token ids (the OLMo 2 repetition safeguard).

OLMo 2 removes documents with >= 32 consecutive copies of any 1..13-token n-gram
(`255, 255, 255, ...`, `g40Dg40D...`) and the trainer also masks such spans out of the
loss at load time, because a few of them in a batch were enough to cause loss spikes.

Definition. For a period n, the positions i with tokens[i] == tokens[i + n] form maximal
runs; a run of L such positions starting at s means tokens[s : s + L + n] is periodic with
period n, i.e. (L + n) // n full copies of its first n tokens (plus a partial copy). The
whole periodic stretch is reported when it holds >= `min_repeats` full copies, so
`ab` x 31 + `a` is not reported and `ab` x 32 is. Spans of all periods are merged.

The detector itself is shared with the build's filter (filters.repeated_ngrams: the C++
path in csrc/ when built, numba otherwise), so the spans masked here are exactly the ones
the `repeated_ngrams` filter and the build's label masks use. O(len(tokens) * max_n).
"""

from __future__ import annotations

import numpy as np

from filters.repeated_ngrams import find_repeated_ngram_spans


def _as_token_array(tokens) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    if arr.dtype != np.uint32:
        arr = arr.astype(np.int64, copy=False)
    return np.ascontiguousarray(arr)


def _check_params(max_n: int, min_repeats: int) -> None:
    if int(max_n) < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    if int(min_repeats) < 2:
        raise ValueError(f"min_repeats must be >= 2, got {min_repeats}")


def repeated_ngram_span_array(tokens, max_n: int = 13, min_repeats: int = 32) -> np.ndarray:
    """Merged [start, end) spans as an int64 array of shape (k, 2), sorted by start."""
    _check_params(max_n, min_repeats)
    arr = _as_token_array(tokens)
    if len(arr) < min_repeats:
        return np.zeros((0, 2), dtype=np.int64)
    return find_repeated_ngram_spans(arr, int(max_n), int(min_repeats))


def repeated_ngram_spans(tokens: np.ndarray, max_n: int = 13, min_repeats: int = 32) -> list[tuple[int, int]]:
    """Merged [start, end) token spans holding >= min_repeats consecutive copies of an n-gram, n <= max_n."""
    return [(int(s), int(e)) for s, e in repeated_ngram_span_array(tokens, max_n, min_repeats)]


def repetition_keep_mask(tokens, max_n: int = 13, min_repeats: int = 32) -> np.ndarray:
    """Boolean array, True = token is outside every repeated span (train on it)."""
    keep = np.ones(len(tokens), dtype=np.bool_)
    for start, end in repeated_ngram_span_array(tokens, max_n, min_repeats):
        keep[start:end] = False
    return keep
