"""Repeated n-grams: the OLMo 2 filter against degenerate repetition.

OLMo 2 drops documents that contain a run of 32 or more consecutive repetitions of the
same n-gram of tokens, n = 1..13 (`g40Dg40Dg40D...`, `255, 255, 255, ...`): such spans
caused loss spikes. The trainer also masks such spans out of the loss at load time, so the
detector is shared: `find_repeated_ngram_spans` on token ids, used by this filter, by the
build's optional label masks, and by the trainer.

Definition. For a period n, positions i with tokens[i] == tokens[i + n] form maximal runs;
a run of length L starting at s means tokens[s : s + L + n] repeats its first n tokens,
i.e. it holds (L + n) // n full copies. A span is reported when that count reaches
`min_repeats`. One pass per n: O(len(tokens) * max_n), in C++ (csrc/) when built, else numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

import csrc


@njit(cache=True, nogil=True)
def _spans_numba(tokens, max_n, min_repeats):  # pragma: no cover - compiled
    n_tok = tokens.shape[0]
    out = np.empty((max(16, n_tok // 8), 2), dtype=np.int64)
    k = 0
    for n in range(1, max_n + 1):
        if n_tok <= n:
            break
        run_start = -1
        for i in range(n_tok - n + 1):
            same = i < n_tok - n and tokens[i] == tokens[i + n]
            if same:
                if run_start < 0:
                    run_start = i
            elif run_start >= 0:
                length = i - run_start
                if (length + n) // n >= min_repeats:
                    if k == out.shape[0]:
                        bigger = np.empty((out.shape[0] * 2, 2), dtype=np.int64)
                        bigger[:k] = out[:k]
                        out = bigger
                    out[k, 0] = run_start
                    out[k, 1] = run_start + length + n
                    k += 1
                run_start = -1
    return out[:k]


def _merge(spans: np.ndarray) -> np.ndarray:
    if len(spans) <= 1:
        return spans.reshape(-1, 2)
    spans = spans[np.lexsort((spans[:, 1], spans[:, 0]))]
    merged = [list(spans[0])]
    for s, e in spans[1:]:
        if s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return np.asarray(merged, dtype=np.int64)


def fallback_repeated_ngram_spans(tokens, max_n: int = 13, min_repeats: int = 32) -> np.ndarray:
    """The numba implementation: used when the csrc._native extension is not built."""
    arr = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
    if arr.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
    if len(arr) < min_repeats:
        return np.zeros((0, 2), dtype=np.int64)
    return _merge(_spans_numba(arr, int(max_n), int(min_repeats)))


def find_repeated_ngram_spans(tokens, max_n: int = 13, min_repeats: int = 32) -> np.ndarray:
    """Merged [start, end) spans (int64, shape (k, 2)) of >= min_repeats repeats of an n-gram, n <= max_n.

    Runs the C++ detector in csrc/ when it is built (same spans, several times faster, and it
    reads uint32 buffers without an int64 copy), else the numba one above.
    """
    native = csrc.native_module()
    if native is None:
        return fallback_repeated_ngram_spans(tokens, max_n, min_repeats)
    return native.repeated_ngram_spans(csrc.as_span_input(tokens), int(max_n), int(min_repeats))


def repeated_ngram_mask(tokens, max_n: int = 13, min_repeats: int = 32) -> np.ndarray:
    """Boolean mask, True = train on the token, False inside a repeated n-gram span."""
    mask = np.ones(len(tokens), dtype=np.bool_)
    for start, end in find_repeated_ngram_spans(tokens, max_n, min_repeats):
        mask[start:end] = False
    return mask


class RepeatedNgramFilter:
    """Drop documents holding >= `min_repeats` consecutive copies of any 1..`max_n` token n-gram.

    Works on the dolma2 token ids the build attaches as `doc["token_ids"]`; standalone use
    tokenizes `doc["text"]` with the packaged dolma2 tokenizer (loaded on first use).
    """

    name = "repeated_ngrams"

    def __init__(self, max_n: int = 13, min_repeats: int = 32):
        if not isinstance(max_n, int) or isinstance(max_n, bool) or not 1 <= max_n <= 64:
            raise ValueError(f"max_n must be an integer in [1, 64], got {max_n!r}")
        if not isinstance(min_repeats, int) or isinstance(min_repeats, bool) or min_repeats < 2:
            raise ValueError(f"min_repeats must be an integer >= 2, got {min_repeats!r}")
        self.max_n = max_n
        self.min_repeats = min_repeats
        self._tokenizer = None

    def __getstate__(self):
        return {"max_n": self.max_n, "min_repeats": self.min_repeats, "_tokenizer": None}

    def _tokens(self, doc: dict):
        tokens = doc.get("token_ids")
        if tokens is not None:
            return tokens
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            from dolmino.assets import dolma2_tokenizer_path

            self._tokenizer = Tokenizer.from_file(str(dolma2_tokenizer_path()))
        text = doc.get("text", "")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates from a lenient decode
            raise ValueError(f"document text is not valid UTF-8 ({exc.reason} at {exc.start}); "
                             "read documents with dolmino.documents, which quarantines such lines") from None
        encoding = self._tokenizer.encode_batch_fast([text], add_special_tokens=False)[0]  # ids only, no offsets
        return np.asarray(encoding.ids, dtype=np.uint32)

    def reject_reason(self, doc: dict) -> str | None:
        spans = find_repeated_ngram_spans(self._tokens(doc), self.max_n, self.min_repeats)
        if len(spans):
            return f"repeats>={self.min_repeats}"
        return None
