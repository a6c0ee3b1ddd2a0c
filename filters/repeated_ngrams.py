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

From text, tokenizing dominates (~99% of the time), so `RepeatedNgramFilter` first runs a
byte-level necessary condition, `may_hold_repeated_ngram`, and tokenizes only the
documents that pass it. Why it is exact: the dolma2 tokenizer is byte-level BPE with no
normalizer, so a token span decodes to a contiguous run of the text's UTF-8 bytes, and a
span of >= R copies of an n-gram is a byte run of period q (the n-gram's byte length) and
length >= R * q. Inside it every K-byte window equals the one q bytes earlier, so
(R - 1) * q - K + 1 consecutive positions each have their K-gram's previous occurrence
within q bytes. The check looks for such a run for every q (grouped in powers of two) in
one linear pass; a hashed K-gram table only ever shortens distances, so collisions can add
candidates but never hide one. Runs of one repeated ASCII byte ("-----" rulers, indentation)
would pass it at small q, so there the check also uses what BPE can emit (`min_run_periods`:
the shortest cycle of that byte's tokens with no merge between neighbours). Typical prose
and code fail the check and never reach the tokenizer; the tests compare both paths on
real text, runs of every ASCII byte and random token n-grams around the threshold.
"""

from __future__ import annotations

import json

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


@njit(cache=True, nogil=True)
def _may_repeat(buf, min_repeats, max_period, min_run_period):  # pragma: no cover - compiled
    n = buf.shape[0]
    k = min(8, min_repeats - 1)  # K-gram width; the run lengths below stay >= 1 with K <= R - 1
    top = min(max_period, n // min_repeats)  # a period-q span takes R * q bytes
    if top < 1 or n < k:
        return False
    levels = 1
    while (1 << (levels - 1)) < top:
        levels += 1
    need = np.empty(levels, dtype=np.int64)  # run length that proves a period in (D/2, D], D = 2**j
    for j in range(levels):  # (R - 2): the last period may sit in a long same-byte run (see below)
        need[j] = max(1, (min_repeats - 2) * ((1 << j) // 2 + 1) - k + 1)
    run = np.zeros(levels, dtype=np.int64)
    bits = 8
    while (1 << bits) < 4 * n:
        bits += 1
    last = np.full(1 << bits, -(1 << 40), dtype=np.int64)
    shift = np.uint64(64 - bits)
    same_start = 0
    same_end = 0
    for i in range(n - k + 1):
        key = np.uint64(0)
        for b in range(k):
            key = (key << np.uint64(8)) | np.uint64(buf[i + b])
        slot = np.int64(((key + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        d = i - last[slot]
        last[slot] = i
        if i >= same_end:  # the maximal run of one byte value that starts here
            same_start = i
            same_end = i + 1
            while same_end < n and buf[same_end] == buf[i]:
                same_end += 1
        # A window inside a same-byte run of length >= D can only belong to a period <= D
        # when the tokenizer can repeat that byte's tokens with such a period.
        floor = min_run_period[buf[i]] if same_end >= i + k else 0
        same_len = same_end - same_start
        for j in range(levels):
            width = 1 << j
            if d <= width and not (same_len >= width and floor > width):
                run[j] += 1
                if run[j] >= need[j]:
                    return True
            else:
                run[j] = 0
    return False


_CL100K_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
                 " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                 "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _byte_level_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE vocabularies."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


def min_run_periods(tokenizer_json: dict) -> np.ndarray:
    """Per ASCII byte c: the shortest byte period at which the tokenizer can repeat tokens inside c-runs.

    Why it holds: with cl100k's pre-tokenizer a run of one ASCII byte (digits aside) is cut
    into at most a few pre-tokens, and BPE never leaves two adjacent tokens of one
    pre-token that have a merge rule. So a span of >= 32 copies of an n-gram inside a run of
    c repeats a cycle of c-tokens x1 -> x2 -> ... -> x1 where no (xi, xi+1) is a merge; its
    byte period is the cycle's total length. This is the shortest such cycle (the longest
    c-token can always follow itself, so one exists). Any other tokenizer, digits, and
    non-ASCII bytes (same-byte runs of those cannot be valid UTF-8) get 1: no refinement.
    """
    periods = np.ones(256, dtype=np.int64)
    pre = tokenizer_json.get("pre_tokenizer") or {}
    splits = [p for p in pre.get("pretokenizers", []) if p.get("type") == "Split"]
    model = tokenizer_json.get("model") or {}
    if (tokenizer_json.get("normalizer") is not None or model.get("type") != "BPE" or model.get("dropout")
            or len(splits) != 1 or splits[0].get("pattern", {}).get("Regex") != _CL100K_SPLIT):
        return periods
    merges = {tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])}
    vocab = model.get("vocab", {})
    chars = _byte_level_chars()
    for byte in range(128):
        if chr(byte).isdigit():
            continue
        ch = chars[byte]
        tokens = [k for k in range(1, 257) if ch * k in vocab]
        if not tokens:
            continue
        inf = 1 << 30
        # dist[a][b]: least bytes along a non-merge path a -> ... -> b, counting every token but the first.
        dist = {a: {b: (b if (ch * a, ch * b) not in merges else inf) for b in tokens} for a in tokens}
        for via in tokens:
            for a in tokens:
                for b in tokens:
                    if dist[a][via] + dist[via][b] < dist[a][b]:
                        dist[a][b] = dist[a][via] + dist[via][b]
        periods[byte] = min(dist[a][a] for a in tokens)
    return periods


def may_hold_repeated_ngram(text_bytes: bytes, min_repeats: int = 32, max_period: int = 1 << 30,
                            run_periods: np.ndarray | None = None) -> bool:
    """False only when no run of >= `min_repeats` copies of any token n-gram can be in the text.

    `max_period` bounds the n-gram's byte length (max_n times the longest token, in bytes);
    `run_periods` is `min_run_periods(tokenizer)` (None: no tokenizer knowledge, bytes only).
    A necessary condition (see the module docstring): True means "tokenize and look".
    """
    if min_repeats < 2:  # the K-gram scan needs K = min_repeats - 1 >= 1 (it read past the text, or divided by 0)
        return bool(text_bytes)  # any two tokens may repeat: "tokenize and look"
    periods = np.ones(256, dtype=np.int64) if run_periods is None else run_periods
    return bool(_may_repeat(np.frombuffer(text_bytes, dtype=np.uint8), int(min_repeats), int(max_period), periods))


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
    return _merge(_spans_numba(arr, csrc.clamp_param(max_n), csrc.clamp_param(min_repeats)))


def find_repeated_ngram_spans(tokens, max_n: int = 13, min_repeats: int = 32) -> np.ndarray:
    """Merged [start, end) spans (int64, shape (k, 2)) of >= min_repeats repeats of an n-gram, n <= max_n.

    Runs the C++ detector in csrc/ when it is built (same spans, several times faster, and it
    reads uint32 buffers without an int64 copy), else the numba one above.
    """
    return csrc.repeated_ngram_spans(tokens, max_n, min_repeats)  # its "auto" backend: this fallback without it


def repeated_ngram_mask(tokens, max_n: int = 13, min_repeats: int = 32) -> np.ndarray:
    """Boolean mask, True = train on the token, False inside a repeated n-gram span."""
    mask = np.ones(len(tokens), dtype=np.bool_)
    for start, end in find_repeated_ngram_spans(tokens, max_n, min_repeats):
        mask[start:end] = False
    return mask


class RepeatedNgramFilter:
    """Drop documents holding >= `min_repeats` consecutive copies of any 1..`max_n` token n-gram.

    Works on the dolma2 token ids the build attaches as `doc["token_ids"]`; standalone use
    tokenizes `doc["text"]` with the packaged dolma2 tokenizer (loaded on first use), and only
    when the byte-level check `may_hold_repeated_ngram` says the repeats could be there.
    """

    name = "repeated_ngrams"
    # Decided on token ids: in a build, on the documents the mix takes (filters/base.py).
    needs_tokens = True

    def __init__(self, max_n: int = 13, min_repeats: int = 32):
        if not isinstance(max_n, int) or isinstance(max_n, bool) or not 1 <= max_n <= 64:
            raise ValueError(f"max_n must be an integer in [1, 64], got {max_n!r}")
        if not isinstance(min_repeats, int) or isinstance(min_repeats, bool) or min_repeats < 2:
            raise ValueError(f"min_repeats must be an integer >= 2, got {min_repeats!r}")
        self.max_n = max_n
        self.min_repeats = min_repeats
        self._tokenizer = None
        self._max_period = None
        self._run_periods = None

    def __getstate__(self):
        return {"max_n": self.max_n, "min_repeats": self.min_repeats, "_tokenizer": None, "_max_period": None,
                "_run_periods": None}

    def _load_tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            from dolmino.assets import dolma2_tokenizer_path

            path = dolma2_tokenizer_path()
            self._tokenizer = Tokenizer.from_file(str(path))
            # Longest token in bytes (an upper bound: byte-level symbols count as their UTF-8 length).
            longest = max(len(t.encode("utf-8")) for t in self._tokenizer.get_vocab(with_added_tokens=True))
            self._max_period = self.max_n * longest
            with open(path, encoding="utf-8") as fh:
                self._run_periods = min_run_periods(json.load(fh))
        return self._tokenizer

    @staticmethod
    def _utf8(doc: dict) -> bytes:
        text = doc.get("text", "")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates from a lenient decode
            raise ValueError(f"document text is not valid UTF-8 ({exc.reason} at {exc.start}); "
                             "read documents with dolmino.documents, which quarantines such lines") from None

    def _encode(self, text: str) -> np.ndarray:
        encoding = self._load_tokenizer().encode_batch_fast([text], add_special_tokens=False)[0]  # ids only
        return np.asarray(encoding.ids, dtype=np.uint32)

    def reject_reason(self, doc: dict) -> str | None:
        tokens = doc.get("token_ids")
        if tokens is None:
            text_bytes = self._utf8(doc)  # once: it both validates the text and feeds the byte check
            self._load_tokenizer()
            if not may_hold_repeated_ngram(text_bytes, self.min_repeats, self._max_period, self._run_periods):
                return None  # no byte run can hold the repeats: the tokenizer would find none
            tokens = self._encode(doc.get("text", ""))
        spans = find_repeated_ngram_spans(tokens, self.max_n, self.min_repeats)
        if len(spans):
            return f"repeats>={self.min_repeats}"
        return None
