"""csrc: the C++ data paths give exactly the fallbacks' results.

Parity on dolma2 token ids of real text from the shared corpus and on adversarial arrays
(empty, shorter than min_repeats, constant, period-13 runs, runs of exactly 31 / 32 copies,
runs across the native code's 16 Ki-token block edges, overlapping periods, max uint32 ids,
large random arrays), plus an independent brute-force oracle of the definition so that
"both agree" also means "both are right". Native-only tests skip when the extension was not
built (install without a compiler); the fallback tests always run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import csrc
from filters.repeated_ngrams import fallback_repeated_ngram_spans, find_repeated_ngram_spans
from tests.conftest import REPO, shared_corpus_file
from trainer.repetition import repeated_ngram_span_array

needs_native = pytest.mark.skipif(not csrc.native_available(),
                                  reason=f"csrc._native not built: {csrc.native_error()}")
BLOCK = 1 << 14  # csrc/native.cpp kBlock
U32_MAX = 2**32 - 1


def oracle_spans(tokens, max_n: int, min_repeats: int) -> list[tuple[int, int]]:
    """The definition, written the slow obvious way: periodic stretches, then merged."""
    t = [int(x) for x in tokens]
    raw = []
    for n in range(1, max_n + 1):
        i = 0
        while i < len(t) - n:
            if t[i] != t[i + n]:
                i += 1
                continue
            s = i
            while i < len(t) - n and t[i] == t[i + n]:
                i += 1
            if (i - s + n) // n >= min_repeats:
                raw.append((s, i + n))
    merged: list[list[int]] = []
    for s, e in sorted(raw):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def both(tokens, max_n=13, min_repeats=32) -> np.ndarray:
    """Fallback result, after asserting the native one (when built) and the trainer's are identical."""
    fb = fallback_repeated_ngram_spans(tokens, max_n, min_repeats)
    assert fb.dtype == np.int64 and fb.shape[1:] == (2,)
    trainer = repeated_ngram_span_array(np.asarray(tokens), max_n, min_repeats) if min_repeats >= 2 and max_n >= 1 else fb
    np.testing.assert_array_equal(trainer, fb)
    if csrc.native_available():
        nat = csrc.repeated_ngram_spans(tokens, max_n, min_repeats, backend="native")
        assert nat.dtype == np.int64 and nat.shape == fb.shape
        np.testing.assert_array_equal(nat, fb)
        np.testing.assert_array_equal(find_repeated_ngram_spans(tokens, max_n, min_repeats), fb)
    return fb


@pytest.fixture(scope="module")
def real_tokens() -> np.ndarray:
    """dolma2 ids (uint32, EOS after each doc) of the first 250 code and 100 web documents."""
    from tokenizers import Tokenizer

    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.documents import Quarantine, read_documents

    tok = Tokenizer.from_file(str(dolma2_tokenizer_path()))
    texts = []
    for name, limit in (("code.jsonl.zst", 250), ("web.jsonl.zst", 100)):
        for k, (_, doc) in enumerate(read_documents(str(shared_corpus_file(name)), Quarantine())):
            if k >= limit:
                break
            texts.append(doc["text"])
    parts = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        parts.append(np.asarray(enc.ids, dtype=np.uint32))
        parts.append(np.asarray([100257], dtype=np.uint32))
    return np.concatenate(parts)


# --- repeated n-gram spans ------------------------------------------------------------------

def test_real_text_parity_and_oracle(real_tokens):
    assert len(real_tokens) > 100_000
    default = both(real_tokens)
    loose = both(real_tokens, max_n=13, min_repeats=4)
    assert len(loose) > 50, "real code holds short repeated runs (==== rules, indentation) at min_repeats=4"
    assert len(loose) >= len(default)
    window = real_tokens[:30_000]
    assert both(window, 13, 4).tolist() == [list(x) for x in oracle_spans(window, 13, 4)]


def test_real_text_every_doc_separately(real_tokens):
    """Per-document calls, as the filter makes them: short arrays, many of them, uint32 and int64."""
    docs = np.split(real_tokens, np.flatnonzero(real_tokens == 100257) + 1)
    found = 0
    for doc in docs[:300]:
        found += len(both(doc, 13, 6))
        both(doc.astype(np.int64), 13, 6)
    assert found > 0


@pytest.mark.parametrize("tokens", [
    [], [7], list(range(31)), [5] * 31,
], ids=["empty", "one", "31-distinct", "31-same"])
def test_shorter_than_min_repeats(tokens):
    assert both(np.asarray(tokens, dtype=np.uint32)).shape == (0, 2)


def test_all_same_token():
    for n_tok in (32, 33, 100, BLOCK + 5):
        assert both(np.full(n_tok, 42, dtype=np.uint32)).tolist() == [[0, n_tok]]


@pytest.mark.parametrize("n", [1, 2, 5, 13])
def test_exactly_31_and_32_copies(n):
    rng = np.random.default_rng(n)
    gram = rng.choice(np.arange(1000, 2000), size=n, replace=False).astype(np.uint32)
    pre = np.arange(10, 10 + 50, dtype=np.uint32)
    post = np.arange(500, 550, dtype=np.uint32)
    for copies, expect in ((31, []), (32, [[50, 50 + 32 * n]])):
        arr = np.concatenate([pre, np.tile(gram, copies), post])
        assert both(arr).tolist() == expect, (n, copies)
    # 31 copies plus a partial copy is still 31 full copies
    arr = np.concatenate([pre, np.tile(gram, 31), gram[: n - 1], post])
    assert both(arr).tolist() == []


def test_period_14_is_not_detected_with_max_n_13():
    gram = np.arange(100, 114, dtype=np.uint32)
    arr = np.tile(gram, 40)
    assert both(arr).tolist() == []
    assert both(arr, max_n=14).tolist() == [[0, len(arr)]]


def test_period_13_runs_and_run_at_array_end():
    gram = np.arange(7, 20, dtype=np.uint32)
    arr = np.concatenate([np.arange(200, 300, dtype=np.uint32), np.tile(gram, 40)])
    assert both(arr).tolist() == [[100, 100 + 13 * 40]]
    assert both(np.tile(gram, 32)).tolist() == [[0, 13 * 32]]


def test_runs_across_block_edges():
    """The native scan works in 16 Ki-token blocks; runs must not care where a block ends."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 50_000, size=3 * BLOCK + 100).astype(np.uint32)
    for n in (1, 4, 13):
        gram = np.arange(60_000, 60_000 + n, dtype=np.uint32)
        for start in (BLOCK - 32 * n, BLOCK - 5, BLOCK - 1, BLOCK, 2 * BLOCK - 13 * n, 3 * BLOCK + 100 - 32 * n):
            arr = base.copy()
            arr[start: start + 32 * n] = np.tile(gram, 32)
            spans = both(arr)
            assert [start, start + 32 * n] in spans.tolist(), (n, start)
    # a run longer than a whole block
    arr = base.copy()
    arr[BLOCK - 7: 2 * BLOCK + 9] = 9
    assert [BLOCK - 7, 2 * BLOCK + 9] in both(arr).tolist()


def test_overlapping_runs_of_different_periods_merge():
    a = np.tile(np.asarray([1, 2], dtype=np.uint32), 40)          # period 2, 80 tokens
    b = np.tile(np.asarray([3, 4, 5], dtype=np.uint32), 40)       # period 3, 120 tokens
    c = np.full(40, 6, dtype=np.uint32)                              # period 1
    noise = np.arange(1000, 1100, dtype=np.uint32)
    touching = np.concatenate([noise, a, b, noise])
    assert both(touching).tolist() == [[100, 300]]
    # period 6 built from 2 and 3: `1 2 1 2 ...` then `1 2 3 ...`; plus a constant run after a gap
    arr = np.concatenate([noise, a, c, noise[:5], b, noise])
    spans = both(arr)
    assert spans.tolist() == [[100, 220], [225, 345]]
    for max_n, min_repeats in ((1, 32), (2, 32), (3, 40), (13, 2), (6, 3)):
        assert both(arr, max_n, min_repeats).tolist() == [list(x) for x in oracle_spans(arr, max_n, min_repeats)]


def test_max_uint32_ids():
    hi = np.asarray([U32_MAX, U32_MAX - 1], dtype=np.uint32)
    arr = np.concatenate([np.arange(10, dtype=np.uint32), np.tile(hi, 32), np.full(3, U32_MAX, dtype=np.uint32)])
    assert arr.dtype == np.uint32
    assert both(arr).tolist() == [[10, 75]]  # the first trailing U32_MAX continues the period-2 run
    both(arr.astype(np.int64))
    assert both(np.full(40, U32_MAX, dtype=np.uint32)).tolist() == [[0, 40]]


def test_random_arrays_small_alphabet_against_oracle():
    rng = np.random.default_rng(11)
    for trial in range(30):
        n_tok = int(rng.integers(0, 400))
        arr = rng.integers(0, int(rng.integers(1, 4)), size=n_tok).astype(np.uint32)
        max_n, min_repeats = int(rng.integers(1, 6)), int(rng.integers(2, 6))
        assert both(arr, max_n, min_repeats).tolist() == [list(x) for x in oracle_spans(arr, max_n, min_repeats)], trial


def test_huge_random_array():
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 3, size=2_000_000).astype(np.uint32)  # dense in short runs
    arr[1_000_000: 1_000_000 + 13 * 33] = np.tile(np.arange(100, 113, dtype=np.uint32), 33)
    spans = both(arr, 13, 8)
    assert len(spans) > 100
    assert any(s <= 1_000_000 and e >= 1_000_000 + 13 * 33 for s, e in spans.tolist())


def test_input_kinds_give_same_spans():
    arr = np.concatenate([np.arange(40), np.full(35, 3), np.arange(40)]).astype(np.uint32)
    expect = [[40, 75]]
    assert both(arr).tolist() == expect
    assert both(arr.astype(np.int64)).tolist() == expect
    assert both(arr.tolist()).tolist() == expect
    assert both(arr.astype(np.uint16)).tolist() == expect
    strided = np.repeat(arr, 2)[::2]  # non-contiguous view
    assert not strided.flags.c_contiguous
    assert both(strided).tolist() == expect


def test_degenerate_parameters_match_numba():
    arr = np.asarray([1, 1, 1, 2, 2, 2, 3], dtype=np.uint32)
    for max_n, min_repeats in ((0, 32), (-3, 2), (13, 1), (13, 0), (100, 2)):
        both(arr, max_n, min_repeats)


def test_max_n_far_above_the_array_length_is_clamped():
    """Periods >= len(tokens) find nothing; the C++ path sized its per-period state by max_n and raised
    MemoryError (10**12) or ValueError (2**62) where numba returns the spans (found by a tester)."""
    arr = np.concatenate([np.arange(5), np.full(40, 7)]).astype(np.uint32)
    for max_n in (10**6, 10**12, 2**62, 2**63 - 1):
        assert both(arr, max_n, 32).tolist() == [[5, 45]], max_n
        assert both(arr[:1], max_n, 1).tolist() == []


def test_parameters_past_int64_act_as_their_bound():
    """A Python int past int64 raised TypeError from the C++ path where the fallback answered (a filter's
    min_repeats, `dolmino validate --vocab-size 10**20`; found by a tester): every backend gives one answer."""
    arr = np.concatenate([np.arange(5), np.full(40, 7)]).astype(np.uint32)
    assert both(arr, 13, 2**64).tolist() == []
    for max_n, min_repeats in ((2**64, 32), (-2**64, 32), (13, -2**64)):
        fb = fallback_repeated_ngram_spans(arr, max_n, min_repeats)
        assert find_repeated_ngram_spans(arr, max_n, min_repeats).tolist() == fb.tolist()
        for backend in ("fallback", "native") if csrc.native_available() else ("fallback",):
            assert csrc.repeated_ngram_spans(arr, max_n, min_repeats, backend=backend).tolist() == fb.tolist()
    assert fallback_repeated_ngram_spans(arr, 2**64, 32).tolist() == [[5, 45]]
    assert fallback_repeated_ngram_spans(arr, 13, -2**64).tolist() == both(arr, 13, 1).tolist()
    tokens = np.asarray([1, 9, 2, U32_MAX], dtype=np.uint32)
    for vocab, eos, limit in ((2**64, 9, 2**64), (-2**64, -2**64, -2**64), (10**20, 10**20, 10**20)):
        scan = _scan_both(tokens, vocab, eos)
        assert scan == csrc.scan_tokens(tokens, min(max(vocab, -1), 2**32), eos if 0 <= eos < 2**32 else -1,
                                        backend="fallback")
        expect = csrc.eos_mismatches(tokens, [2, 4], eos, limit=limit, backend="fallback").tolist()
        assert expect == ([] if limit < 0 else [1] if eos == 9 else [0, 1])
        if csrc.native_available():
            assert csrc.eos_mismatches(tokens, [2, 4], eos, limit=limit, backend="native").tolist() == expect


def test_two_dimensional_input_is_rejected():
    with pytest.raises(ValueError, match="one-dimensional"):
        fallback_repeated_ngram_spans(np.zeros((4, 40), dtype=np.uint32))
    with pytest.raises(ValueError, match="one-dimensional"):
        find_repeated_ngram_spans(np.zeros((4, 40), dtype=np.int64))


# --- token scans --------------------------------------------------------------------------

def _scan_both(arr, vocab, eos):
    fb = csrc.scan_tokens(arr, vocab, eos, backend="fallback")
    if csrc.native_available():
        assert csrc.scan_tokens(arr, vocab, eos, backend="native") == fb
    return fb


def test_scan_real_tokens(real_tokens):
    scan = _scan_both(real_tokens, 100278, 100257)
    assert scan.n_out_of_vocab == 0 and scan.first_out_of_vocab == -1
    assert scan.n_eos == 350 and scan.max_id < 100278 and scan.max_id == int(real_tokens.max())
    bad = real_tokens.copy()
    bad[[17, 90_000]] = [100278, U32_MAX]
    scan = _scan_both(bad, 100278, 100257)
    assert (scan.max_id, scan.n_out_of_vocab, scan.first_out_of_vocab) == (U32_MAX, 2, 17)


def test_scan_edges(monkeypatch):
    assert _scan_both(np.zeros(0, np.uint32), 10, 3) == (-1, 0, -1, 0)
    arr = np.asarray([0, U32_MAX, 5, U32_MAX], dtype=np.uint32)
    assert _scan_both(arr, 2**32, U32_MAX) == (U32_MAX, 0, -1, 2)
    assert _scan_both(arr, 2**32 + 7, 2**33) == (U32_MAX, 0, -1, 0)
    assert _scan_both(arr, 0, 5) == (U32_MAX, 4, 0, 1)
    assert _scan_both(arr, 5, 0) == (U32_MAX, 3, 1, 1)
    monkeypatch.setattr(csrc, "SCAN_CHUNK", 3)  # fallback chunk edges
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 100, size=1000).astype(np.uint32)
    arr[[500, 999]] = 100
    assert _scan_both(arr, 100, 7)[:3] == (100, 2, 500)
    with pytest.raises(ValueError, match="uint32"):
        csrc.scan_tokens(arr.astype(np.int64), 100, 7)


def test_eos_mismatches():
    arr = np.asarray([1, 2, 9, 3, 9, 4, 9, 5], dtype=np.uint32)
    ends = np.asarray([3, 5, 7, 8, 0, -2, 9, 3], dtype=np.int64)
    expect = [3, 4, 5, 6]
    for backend in ("fallback", "native") if csrc.native_available() else ("fallback",):
        assert csrc.eos_mismatches(arr, ends, 9, backend=backend).tolist() == expect
        assert csrc.eos_mismatches(arr, ends, 9, limit=2, backend=backend).tolist() == expect[:2]
        assert csrc.eos_mismatches(arr, ends[:0], 9, backend=backend).tolist() == []
        assert csrc.eos_mismatches(arr[:0], ends, 9, backend=backend).tolist() == list(range(8))


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="backend"):
        csrc.repeated_ngram_spans([1, 2], backend="gpu")


# --- build and kill switch ----------------------------------------------------------------

@needs_native
def test_native_is_used_by_the_filter():
    import filters.repeated_ngrams as rn

    assert csrc.native_module() is not None
    assert rn.csrc.native_module() is csrc.native_module()


def test_kill_switch_uses_the_fallback_end_to_end():
    code = ("import csrc, numpy as np\n"
            "from filters.repeated_ngrams import find_repeated_ngram_spans\n"
            "assert not csrc.native_available(), csrc.native_error()\n"
            "print(find_repeated_ngram_spans(np.full(40, 3, dtype=np.uint32)).tolist())\n"
            "try:\n    csrc.scan_tokens(np.zeros(3, np.uint32), 5, 1, backend='native')\n"
            "except RuntimeError as e:\n    print('refused', 'not available' in str(e))\n")
    env = {**os.environ, "DOLMINO_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[[0, 40]]", "refused True"]


def test_build_without_a_compiler_warns_and_succeeds(tmp_path):
    """setup.py's build_ext turns a compiler failure into a warning (the install goes on)."""
    env = {**os.environ, "CC": "false", "CXX": "false", "LDSHARED": "false"}
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                          "--build-temp", str(tmp_path / "tmp")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pure-Python fallbacks will be used" in out.stderr
    assert not list((tmp_path).rglob("*.so"))
