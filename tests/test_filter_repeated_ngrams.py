"""Repeated n-grams (SPEC.md §1): >= 32 consecutive copies of any 1..13-token n-gram.

Boundaries are exact: 31 copies pass, 32 are caught, for every period 1..13; a period-14
unit is not caught with max_n 13 (and is with max_n 14). Real documents from the shared
corpus go through the real dolma2 tokenizer: BPE merges character runs such as "=====" rulers
into a few tokens, so real prose and code are kept, while `255, 255, 255, ...` spliced into
a real document is caught exactly where it was spliced.
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest

from conftest import REPO, shared_corpus_file
from dolmino.documents import Quarantine, read_documents
from filters.repeated_ngrams import (
    RepeatedNgramFilter, find_repeated_ngram_spans, may_hold_repeated_ngram, min_run_periods, repeated_ngram_mask,
)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    from dolmino.assets import dolma2_tokenizer_path

    return Tokenizer.from_file(str(dolma2_tokenizer_path()))


def encode(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.uint32)


def _docs(name: str, n: int) -> list[dict]:
    path = str(shared_corpus_file(name))
    return [doc for _, doc in itertools.islice(read_documents(path, Quarantine()), n)]


def aperiodic_unit(n: int, base: int = 1000) -> list[int]:
    """n distinct token ids: the unit's smallest period is n itself."""
    return list(range(base, base + n))


@pytest.mark.parametrize("n", range(1, 14))
def test_every_period_up_to_13_at_31_and_32_copies(n):
    prefix, suffix = [7, 8, 9], [3, 2, 1]
    unit = aperiodic_unit(n)
    assert len(find_repeated_ngram_spans(prefix + unit * 31 + suffix)) == 0
    spans = find_repeated_ngram_spans(prefix + unit * 32 + suffix)
    assert spans.tolist() == [[3, 3 + 32 * n]]
    # 31 copies and a partial 32nd (all but its last token) are still only 31 full copies.
    if n > 1:
        assert len(find_repeated_ngram_spans(prefix + unit * 31 + unit[:-1] + suffix)) == 0


def test_period_14_needs_max_n_14():
    tokens = [1, 2] + aperiodic_unit(14) * 40 + [3]
    assert len(find_repeated_ngram_spans(tokens, max_n=13)) == 0
    assert find_repeated_ngram_spans(tokens, max_n=14).tolist() == [[2, 2 + 14 * 40]]
    assert RepeatedNgramFilter().reject_reason({"token_ids": tokens}) is None
    assert RepeatedNgramFilter(max_n=14).reject_reason({"token_ids": tokens}) == "repeats>=32"


def test_configurable_min_repeats():
    tokens = [5] * 10
    assert find_repeated_ngram_spans(tokens, min_repeats=10).tolist() == [[0, 10]]
    assert len(find_repeated_ngram_spans(tokens, min_repeats=11)) == 0
    assert RepeatedNgramFilter(min_repeats=10).reject_reason({"token_ids": tokens}) == "repeats>=10"


def test_overlapping_and_separate_spans_merge():
    a = [11] * 40                     # period 1
    b = [21, 22] * 35                 # period 2, adjacent to a: one merged span
    gap = aperiodic_unit(20, 500)
    c = aperiodic_unit(3, 900) * 32   # period 3, separate
    tokens = a + b + gap + c
    spans = find_repeated_ngram_spans(tokens)
    assert spans.tolist() == [[0, 110], [130, 226]]
    assert spans.dtype == np.int64 and spans.shape == (2, 2)


def test_mask_equals_spans():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 100_000, size=5000)
    tokens[100:164] = 42                                    # 64 x one token
    tokens[1000:1000 + 5 * 33] = np.tile([1, 2, 3, 4, 5], 33)
    tokens[3000:3000 + 13 * 32] = np.tile(np.arange(13) + 7, 32)
    spans = find_repeated_ngram_spans(tokens)
    mask = repeated_ngram_mask(tokens)
    expected = np.ones(len(tokens), dtype=bool)
    for s, e in spans:
        expected[s:e] = False
    assert spans.tolist() == [[100, 164], [1000, 1165], [3000, 3416]]
    assert mask.dtype == np.bool_ and np.array_equal(mask, expected)
    assert int((~mask).sum()) == 64 + 165 + 416


def test_empty_short_and_bad_shapes():
    for empty in ([], np.zeros(0, dtype=np.uint32)):
        assert find_repeated_ngram_spans(empty).shape == (0, 2)
        assert repeated_ngram_mask(empty).shape == (0,)
    assert find_repeated_ngram_spans([9] * 31).shape == (0, 2)  # shorter than min_repeats
    assert find_repeated_ngram_spans([9] * 32).tolist() == [[0, 32]]
    with pytest.raises(ValueError, match="one-dimensional"):
        find_repeated_ngram_spans(np.zeros((4, 40), dtype=np.int64))


def test_huge_arrays():
    # 4M tokens of a single id: one span, linear time, the span buffer grows as needed.
    assert find_repeated_ngram_spans(np.full(4_000_000, 100257, dtype=np.uint32)).tolist() == [[0, 4_000_000]]
    # Many separate spans (more than the initial buffer) all come back.
    block = [1] * 32 + aperiodic_unit(40)
    tokens = np.asarray(block * 20_000, dtype=np.uint32)
    spans = find_repeated_ngram_spans(tokens)
    assert len(spans) == 20_000
    assert np.array_equal(spans[:, 1] - spans[:, 0], np.full(20_000, 32))
    # Large token ids (uint32 beyond int32) compare correctly.
    big = np.asarray([2**32 - 1] * 32 + [2**32 - 2] * 31, dtype=np.uint32)
    assert find_repeated_ngram_spans(big).tolist() == [[0, 32]]


def test_real_text_255_list_through_dolma2(tokenizer):
    # "255, 255, 255" is a 3-token unit in dolma2 ("255", ",", " "), as in the paper's example.
    unit = encode(tokenizer, "255, 255, ")[:3].tolist()
    assert encode(tokenizer, "255, 255, 255, 255").tolist() == unit * 3 + unit[:1]
    f = RepeatedNgramFilter()
    assert f.reject_reason({"text": "pixels = [" + "255, " * 31 + "255]"}) is None
    assert f.reject_reason({"text": "pixels = [" + "255, " * 32 + "255]"}) == "repeats>=32"
    assert f.reject_reason({"text": "g40D" * 40}) == "repeats>=32"


def test_real_corpus_documents_are_kept_and_splice_is_found(tokenizer):
    docs = _docs("web.jsonl.zst", 40) + _docs("code.jsonl.zst", 25) + _docs("encyclopedic.jsonl.zst", 25)
    f = RepeatedNgramFilter()
    kept = [d for d in docs if f.reject_reason({**d, "token_ids": encode(tokenizer, d["text"])}) is None]
    assert len(kept) == len(docs)  # real prose and code, rulers ("=====") included, have no such runs
    assert any("=" * 40 in d["text"] for d in docs)

    host = docs[0]["text"]
    cut = host.index("\n", len(host) // 2) + 1
    junk = "255, " * 40 + "255\n"
    spliced = host[:cut] + junk + host[cut:]
    tokens = encode(tokenizer, spliced)
    spans = find_repeated_ngram_spans(tokens)
    assert len(spans) == 1
    start, end = spans[0]
    before = len(encode(tokenizer, host[:cut]))
    assert before - 1 <= start <= before + 1
    assert 3 * 40 <= end - start <= 3 * 41 + 2
    masked_text = tokenizer.decode(tokens[start:end].tolist())
    assert masked_text.strip().startswith("255, 255") and set(masked_text) <= set("255, \n")
    mask = repeated_ngram_mask(tokens)
    assert int((~mask).sum()) == end - start


def test_filter_prefers_build_token_ids_and_tokenizes_standalone(tokenizer):
    f = RepeatedNgramFilter()
    text = "abc " * 50
    # token_ids from the build win over the text (no second tokenization).
    assert f.reject_reason({"text": text, "token_ids": np.arange(200, dtype=np.uint32)}) is None
    assert f.reject_reason({"text": text}) == "repeats>=32"
    assert f.reject_reason({"text": ""}) is None
    assert f.reject_reason({}) is None


def test_standalone_non_utf8_text_is_a_clear_error():
    # Non-UTF-8 bytes decoded leniently (surrogateescape) arrive as lone surrogates. The build
    # quarantines them before filtering (dolmino.documents: invalid_utf8); standalone use must
    # either handle them or say what is wrong.
    f = RepeatedNgramFilter()
    text = b"caf\xe9 au lait ".decode("utf-8", "surrogateescape") * 3
    try:
        assert f.reject_reason({"text": text}) is None
    except ValueError as exc:
        assert "utf-8" in str(exc).lower()


def test_filter_pickles_without_tokenizer():
    f = RepeatedNgramFilter(max_n=5, min_repeats=8)
    assert f.reject_reason({"text": "ha" * 20}) == "repeats>=8"  # loads the tokenizer
    blob = pickle.dumps(f)
    assert len(blob) < 500
    g = pickle.loads(blob)
    assert (g.max_n, g.min_repeats) == (5, 8)
    assert g.reject_reason({"token_ids": [1, 2] * 8}) == "repeats>=8"


@pytest.mark.parametrize("kwargs, field", [({"max_n": 0}, "max_n"), ({"max_n": 65}, "max_n"), ({"max_n": 2.0}, "max_n"),
                                           ({"min_repeats": 1}, "min_repeats"), ({"min_repeats": True}, "min_repeats")])
def test_bad_parameters(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RepeatedNgramFilter(**kwargs)


# ------------------------------------------------------- the byte-level pre-check is exact

def _decisions_agree(filt: RepeatedNgramFilter, tokenizer, texts: list[str]) -> tuple[int, int]:
    """Assert the text path (pre-check, then tokenize) decides like the token path; (flagged, candidates)."""
    flagged = candidates = 0
    for text in texts:
        exact = filt.reject_reason({"text": text, "token_ids": encode(tokenizer, text)})
        assert filt.reject_reason({"text": text}) == exact, repr(text[:120])
        flagged += exact is not None
        candidates += may_hold_repeated_ngram(text.encode("utf-8"), filt.min_repeats, filt._max_period,
                                              filt._run_periods)
        if exact is not None:  # the pre-check must never clear a document that has the repeats
            assert may_hold_repeated_ngram(text.encode("utf-8"), filt.min_repeats, filt._max_period,
                                           filt._run_periods)
    return flagged, candidates


def test_precheck_skips_the_tokenizer_on_real_text_and_agrees(tokenizer):
    filt = RepeatedNgramFilter()
    filt._load_tokenizer()
    texts = [d["text"] for name in ("web.jsonl.zst", "code.jsonl.zst", "encyclopedic.jsonl.zst",
                                    "academic.jsonl.zst") for d in _docs(name, 120)]
    flagged, candidates = _decisions_agree(filt, tokenizer, texts)
    assert flagged == 0 and candidates < 0.1 * len(texts)  # most real documents never reach the tokenizer


def test_precheck_on_same_byte_runs_of_every_ascii_byte(tokenizer):
    """Runs are where the tokenizer knowledge (min_run_periods) is used: every byte, many lengths, contexts."""
    filt = RepeatedNgramFilter()
    filt._load_tokenizer()
    lengths = (31, 32, 33, 64, 65, 90, 96, 97, 100, 128, 129, 200, 256, 300, 512, 1000, 2048)
    contexts = [("", ""), ("x", "y"), (" ", " "), ("word ", "\n"), (". ", "."), ("1", "2"), ("<|endoftext|>", "")]
    texts = [before + chr(c) * m + after for c in list(range(1, 128)) for m in lengths for before, after in contexts
             if c != 0]
    flagged, _ = _decisions_agree(filt, tokenizer, texts)
    assert flagged > 100  # long runs of many bytes do hold >= 32 repeats of their longest token


def test_precheck_on_random_token_ngrams_around_the_threshold(tokenizer):
    """Random n-grams of real vocabulary ids, repeated 30..34 times, spliced into real text."""
    filt = RepeatedNgramFilter()
    filt._load_tokenizer()
    rng = np.random.default_rng(7)
    base = [d["text"][:600] for d in _docs("web.jsonl.zst", 40)]
    texts = []
    for case in range(400):
        n = int(rng.integers(1, 14))
        ids = rng.integers(0, 100_000, size=n).tolist()
        unit = tokenizer.decode(ids)
        if not unit or "\ufffd" in unit:
            continue
        copies = int(rng.integers(30, 35))
        host = base[case % len(base)]
        cut = int(rng.integers(0, len(host) + 1))
        texts.append(host[:cut] + unit * copies + host[cut:])
    flagged, candidates = _decisions_agree(filt, tokenizer, texts)
    assert flagged > 50 and candidates >= flagged


def test_min_run_periods_only_for_the_cl100k_pre_tokenizer():
    import json

    from dolmino.assets import dolma2_tokenizer_path

    config = json.loads(dolma2_tokenizer_path().read_text(encoding="utf-8"))
    periods = min_run_periods(config)
    assert periods.shape == (256,) and periods.min() >= 1
    assert periods[ord("-")] > 1 and periods[ord("1")] == 1 and periods[200] == 1  # digits, non-ASCII: none
    other = json.loads(json.dumps(config))
    other["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+|\S+"
    assert (min_run_periods(other) == 1).all()  # unknown pre-tokenizer: bytes-only check
    # Without tokenizer knowledge the check is weaker but still sound.
    assert may_hold_repeated_ngram(("-" * 40).encode()) and not may_hold_repeated_ngram(
        ("-" * 40).encode(), run_periods=periods)
    assert may_hold_repeated_ngram(("ab " * 40).encode(), run_periods=periods)
    assert not may_hold_repeated_ngram(b"The quick brown fox jumps over the lazy dog. " * 3, run_periods=periods)


def test_precheck_below_two_repeats_says_look_without_reading_past_the_text(tmp_path):
    """With min_repeats < 2 the K-gram width is 0: the scan read one byte past a 1-byte text (IndexError
    under NUMBA_BOUNDSCHECK), divided by 0 at min_repeats 0, and called a text clear at -1 (a tester)."""
    import os
    import subprocess
    import sys

    for min_repeats in (-1, 0, 1):
        assert may_hold_repeated_ngram(b"ab" * 5, min_repeats) and may_hold_repeated_ngram(b"a", min_repeats)
        assert not may_hold_repeated_ngram(b"", min_repeats)
    code = "from filters.repeated_ngrams import may_hold_repeated_ngram as m; print(m(b'a', 1), m(b'', 1))"
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["True", "False"], out.stderr[-500:]
