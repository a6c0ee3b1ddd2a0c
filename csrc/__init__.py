"""Native data hot paths with pure-Python fallbacks: one facade that picks the implementation.

`csrc._native` (csrc/native.cpp, built by setup.py when a compiler and torch's pybind11
headers are present) implements:

- `repeated_ngram_spans`: the OLMo 2 repeated n-gram detector (filters/repeated_ngrams.py
  holds the definition and the numba fallback), one blocked pass over all periods;
- `scan_tokens`: one pass over a uint32 token memmap for the max id, ids >= vocab_size and
  EOS count (fallback: chunked numpy), used by `dolmino validate`;
- `eos_mismatches`: sidecar rows whose `end - 1` is not EOS (fallback: numpy gather).

Results are identical whichever implementation runs (tests/test_csrc.py checks parity on
real and adversarial token arrays). `backend="auto"` uses the native module when it
imported; "native" insists on it; "fallback" forces Python. DOLMINO_NATIVE=0 in the
environment disables the native module process-wide (a kill switch, and how the fallback is
benchmarked and tested end to end).

The shuffle / instance index of trainer/data.py stays in numpy: bench/bench_native.py
measures it, and numpy's permutation is already compiled code with nothing left to win.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

_NATIVE = None
_NATIVE_ERROR: str | None = None

if os.environ.get("DOLMINO_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
    _NATIVE_ERROR = "disabled by DOLMINO_NATIVE=0"
else:
    try:
        from csrc import _native as _NATIVE  # type: ignore[attr-defined, no-redef]
    except ImportError as exc:  # not built (no compiler / torch at install time) or stale
        _NATIVE_ERROR = f"{type(exc).__name__}: {exc}"

BACKENDS = ("auto", "native", "fallback")
SCAN_CHUNK = 1 << 24  # tokens per numpy chunk in the fallback scan: bounds its temporaries to ~80 MB
UINT32_MAX = 2**32 - 1
PARAM_BOUND = 2**62  # no array holds this many tokens and no uint32 id reaches it


def clamp_param(value) -> int:
    """`int(value)` within +-PARAM_BOUND, for the int64 parameters of the C++ and numba paths.

    Past the bound every value acts alike (a max_n, min_repeats or limit beyond any array's length, a
    vocab_size or eos_id beyond any uint32 id), so clamping changes no result; unclamped, a Python int
    past int64 (`dolmino validate --vocab-size 10**20`) raised a TypeError traceback from the C++ path
    where the fallback answered.
    """
    return max(-PARAM_BOUND, min(int(value), PARAM_BOUND))


def native_available() -> bool:
    """True when the compiled extension imported (and was not disabled)."""
    return _NATIVE is not None


def native_error() -> str | None:
    """Why the native module is not in use, or None when it is."""
    return _NATIVE_ERROR


def native_module():
    """The compiled module, or None: for callers that keep their own fallback."""
    return _NATIVE


def _use_native(backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "native" and _NATIVE is None:
        # Under DOLMINO_NATIVE=0 it said to reinstall an extension that was only switched off (found by a tester).
        remedy = ("unset DOLMINO_NATIVE" if (_NATIVE_ERROR or "").startswith("disabled by")
                  else "reinstall with `pip install --no-build-isolation -e .` after torch")
        raise RuntimeError(f"the csrc._native extension is not available ({_NATIVE_ERROR}); {remedy}, or use the "
                           f"fallback backend (`dolmino validate --backend fallback`, backend='fallback')")
    return backend != "fallback" and _NATIVE is not None


# --- repeated n-gram spans ---------------------------------------------------------------

def as_span_input(tokens) -> np.ndarray:
    """Contiguous uint32 as is (no copy for memmaps and build buffers), anything else as int64.

    The detector only compares ids for equality, so any lossless integer view gives the same spans.
    """
    arr = np.asarray(tokens)
    if arr.dtype == np.uint32 and arr.ndim == 1:
        return np.ascontiguousarray(arr)
    arr = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
    if arr.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
    return arr


def repeated_ngram_spans(tokens, max_n: int = 13, min_repeats: int = 32, *, backend: str = "auto") -> np.ndarray:
    """Merged [start, end) spans (int64, shape (k, 2)) of >= min_repeats repeats of an n-gram, n <= max_n."""
    if _use_native(backend):
        return _NATIVE.repeated_ngram_spans(as_span_input(tokens), clamp_param(max_n), clamp_param(min_repeats))
    from filters.repeated_ngrams import fallback_repeated_ngram_spans

    return fallback_repeated_ngram_spans(tokens, max_n, min_repeats)


# --- token memmap scans -------------------------------------------------------------------

class TokenScan(NamedTuple):
    max_id: int          # -1 for an empty array
    n_out_of_vocab: int  # ids >= vocab_size
    first_out_of_vocab: int  # offset of the first such id, -1 if none
    n_eos: int           # ids == eos_id


def _as_uint32(tokens) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
    if arr.dtype != np.uint32:
        raise ValueError(f"tokens must be uint32 (a token memmap), got {arr.dtype}")
    return np.ascontiguousarray(arr)


def _scan_fallback(tokens: np.ndarray, vocab_size: int, eos_id: int) -> TokenScan:
    max_id, n_oov, first_oov, n_eos = -1, 0, -1, 0
    oov_possible = vocab_size <= UINT32_MAX
    eos_possible = 0 <= eos_id <= UINT32_MAX
    for lo in range(0, len(tokens), SCAN_CHUNK):
        chunk = np.asarray(tokens[lo: lo + SCAN_CHUNK])
        max_id = max(max_id, int(chunk.max()))
        if oov_possible:
            oov = chunk >= max(vocab_size, 0)
            k = int(np.count_nonzero(oov))
            if k and first_oov < 0:
                first_oov = lo + int(np.argmax(oov))
            n_oov += k
        if eos_possible:
            n_eos += int(np.count_nonzero(chunk == eos_id))
    return TokenScan(max_id, n_oov, first_oov, n_eos)


def scan_tokens(tokens, vocab_size: int, eos_id: int, *, backend: str = "auto") -> TokenScan:
    """Max id, out-of-vocabulary count and first offset, and EOS count of a uint32 token array."""
    arr = _as_uint32(tokens)
    if _use_native(backend):
        return TokenScan(*_NATIVE.scan_tokens(arr, clamp_param(vocab_size), clamp_param(eos_id)))
    return _scan_fallback(arr, clamp_param(vocab_size), clamp_param(eos_id))


def eos_mismatches(tokens, ends, eos_id: int, *, limit: int = 2**62, backend: str = "auto") -> np.ndarray:
    """Indices (int64, ascending, at most `limit`) of `ends` where tokens[end - 1] != eos_id or end is out of range."""
    arr = _as_uint32(tokens)
    ends = np.ascontiguousarray(np.asarray(ends, dtype=np.int64))
    if ends.ndim != 1:
        raise ValueError(f"ends must be one-dimensional, got shape {ends.shape}")
    if _use_native(backend):
        return _NATIVE.eos_mismatches(arr, ends, clamp_param(eos_id), clamp_param(limit))
    valid = (ends >= 1) & (ends <= len(arr))
    bad = ~valid
    idx = np.flatnonzero(valid)
    bad[idx] = arr[ends[idx] - 1].astype(np.int64) != int(eos_id)
    return np.flatnonzero(bad)[: max(int(limit), 0)].astype(np.int64)
