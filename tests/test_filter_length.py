"""Minimum length filter on real text: chars are code points, tokens are the build's dolma2 ids."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import shared_corpus_file
from dolmino.documents import Quarantine, read_documents
from dolmino.errors import ManifestError
from filters.length import MinLengthFilter


@pytest.fixture(scope="module")
def docs():
    path = str(shared_corpus_file("encyclopedic.jsonl.zst"))
    return [doc for _, doc in itertools.islice(read_documents(path, Quarantine()), 20)]


def test_char_boundary_on_real_text(docs):
    text = docs[0]["text"]
    n = len(text)
    assert MinLengthFilter(min_chars=n).reject_reason({"text": text}) is None
    assert MinLengthFilter(min_chars=n + 1).reject_reason({"text": text}) == f"chars<{n + 1}"
    assert MinLengthFilter().reject_reason({"text": ""}) is None  # defaults keep everything
    assert MinLengthFilter(min_chars=1).reject_reason({"text": ""}) == "chars<1"
    assert MinLengthFilter(min_chars=1).reject_reason({}) == "chars<1"


def test_chars_are_code_points_not_bytes():
    text = "naïve 数学 🙂"  # 10 code points, 18 UTF-8 bytes
    assert len(text) == 10 and len(text.encode("utf-8")) == 18
    assert MinLengthFilter(min_chars=10).reject_reason({"text": text}) is None
    assert MinLengthFilter(min_chars=11).reject_reason({"text": text}) == "chars<11"


def test_tokens_prefer_build_token_ids(docs):
    text = docs[1]["text"]
    words = len(text.split())
    ids = np.arange(words + 50, dtype=np.uint32)  # the build's token count differs from the word count
    f = MinLengthFilter(min_tokens=words + 50)
    assert f.reject_reason({"text": text, "token_ids": ids}) is None
    assert f.reject_reason({"text": text}) == f"tokens<{words + 50}"  # standalone: words stand in
    assert MinLengthFilter(min_tokens=words).reject_reason({"text": text}) is None
    assert MinLengthFilter(min_tokens=1).reject_reason({"text": "x", "token_ids": np.zeros(0, np.uint32)}) == "tokens<1"


def test_real_corpus_kept(docs):
    chars, tokens = MinLengthFilter(min_chars=200), MinLengthFilter(min_tokens=50)
    assert chars.reject_reason({"text": "short"}) == "chars<200"
    assert all(chars.reject_reason(d) is None and tokens.reject_reason(d) is None for d in docs)  # ~4 KB pages
    huge = {"text": "\n".join(d["text"] for d in docs) * 20}
    assert MinLengthFilter(min_chars=1_000_000).reject_reason(huge) is None
    assert MinLengthFilter(min_tokens=100_000).reject_reason(huge) is None


def test_chars_and_tokens_in_one_filter_are_refused():
    """They are decided at different stages: with min_tokens the character minimum waited for the
    tokens, after the filters below it, which were credited its removals (found by a tester)."""
    from filters.registry import build_filter

    with pytest.raises(ManifestError, match=r"sources\[0\]\.filters\[1\]\.min_tokens: min_tokens cannot be "
                                             r"given with min_chars: .* give them as two min_length filters"):
        build_filter({"type": "min_length", "min_chars": 20, "min_tokens": 16}, "sources[0].filters[1]")
    assert build_filter({"type": "min_length", "min_chars": 20, "min_tokens": 0}, "f").min_chars == 20


@pytest.mark.parametrize("kwargs, field", [({"min_chars": -1}, "min_chars"), ({"min_chars": 1.5}, "min_chars"),
                                           ({"min_tokens": True}, "min_tokens"), ({"min_tokens": "5"}, "min_tokens")])
def test_bad_parameters(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MinLengthFilter(**kwargs)
