"""Filter registry and chain: manifest specs -> filter objects, errors that name the field."""

from __future__ import annotations

import json
import importlib
import itertools
import pickle

import pytest

from conftest import shared_corpus_file
from dolmino.documents import Quarantine, read_documents
from dolmino.errors import ManifestError
from dolmino.manifest import load_manifest, manifest_from_dict
from filters.base import DocumentFilter, apply_chain, chain_labels
from filters.registry import REGISTRY, build_filter, filter_class, registered_types


def test_every_registered_type_names_its_class():
    assert registered_types() == sorted(REGISTRY)
    for type_name in REGISTRY:
        cls = filter_class(type_name)
        assert cls.name == type_name, f"{cls.__name__}.name must equal its manifest type"
        assert callable(getattr(cls, "reject_reason"))


@pytest.mark.parametrize("spec, where", [
    ({"type": "nope"}, "src.filters[0].type"),
    ({"type": 3}, "src.filters[0].type"),
    ({"min_stars": 2}, "src.filters[0].type"),
    ("code_stars", "src.filters[0]"),
    ({"type": "code_stars", "min_star": 2}, "src.filters[0].min_star"),
    ({"type": "fasttext_quality", "threshold": 0.5}, "src.filters[0].model_path"),
    ({"type": "score_threshold"}, "src.filters[0].scorer"),
    ({"type": "score_threshold", "scorer": "fasttext_expected_label"}, "src.filters[0].model_path"),
    ({"type": "score_threshold", "scorer": "fasttext_label_probability", "model_path": ""},
     "src.filters[0].model_path"),
    ({"type": "score_threshold", "scorer": "nosuchmod:fn"}, "src.filters[0].scorer"),
    ({"type": "score_threshold", "scorer": "filters.quality:no_such_scorer"}, "src.filters[0].scorer"),
    ({"type": "score_threshold", "scorer": "filters.quality:"}, "src.filters[0].scorer"),
    ({"type": "score_threshold", "scorer": "test_filter_quality:KnownScores", "min_score": float("nan")},
     "src.filters[0].min_score"),
    ({"type": "score_threshold", "scorer": "test_filter_quality:KnownScores", "min_score": float("inf")},
     "src.filters[0].min_score"),
    ({"type": "code_stars", "min_stars": -1}, "src.filters[0].min_stars"),
    ({"type": "repeated_ngrams", "max_n": 0}, "src.filters[0].max_n"),
    ({"type": "code_word_frequency", "max_top2": 2}, "src.filters[0].max_top2"),
    ({"type": "min_length", "min_chars": "10"}, "src.filters[0].min_chars"),
    # Each passed the manifest check to fail later (a tester): every document stars_missing, a
    # tag task's AttributeError, a device torch cannot parse.
    ({"type": "code_stars", "field": 5}, "src.filters[0].field"),
    ({"type": "code_stars", "field": ""}, "src.filters[0].field"),
    ({"type": "score_threshold", "scorer": "os:getcwd"}, "src.filters[0].scorer"),
    ({"type": "score_threshold", "scorer": "os:getcwd", "model_path": "m.bin"}, "src.filters[0].scorer"),
    ({"type": "fineweb_edu", "model_path": "m", "device": "cuda:x"}, "src.filters[0].device"),
])
def test_errors_name_the_field(spec, where):
    with pytest.raises(ManifestError) as info:
        build_filter(spec, "src.filters[0]")
    assert str(info.value).startswith(where + ":"), str(info.value)


def test_a_scorer_is_registered_or_has_the_scorer_interface():
    assert build_filter({"type": "score_threshold", "scorer": "test_filter_quality:KnownScores"}).min_score == 2.0
    assert build_filter({"type": "score_threshold", "scorer": "fasttext_expected_label", "model_path": "m.bin"})
    with pytest.raises(ManifestError, match=r"^src\.scorer: 'os:getcwd' has no score\(texts\) method; name one of "):
        build_filter({"type": "score_threshold", "scorer": "os:getcwd"}, "src")
    # a factory function returning a scorer, as make_scorer documents it, is not refused
    assert build_filter({"type": "score_threshold", "scorer": "filters.quality:make_scorer"})


def test_unknown_type_lists_known_ones():
    with pytest.raises(ManifestError, match="unknown filter type 'nope'.*code_stars.*repeated_ngrams"):
        build_filter({"type": "nope"})


def test_unknown_param_lists_accepted_ones():
    with pytest.raises(ManifestError,
                       match=r"unknown parameter for 'min_length' \(accepted: cascade, min_chars, min_tokens\)"):
        build_filter({"type": "min_length", "words": 5})


def test_a_mistyped_name_says_which_one_was_meant(tmp_path):
    """A manifest's typo listed every accepted name, where the command line's names the one meant."""
    with pytest.raises(ManifestError, match=r"unknown filter type 'minlength' \(did you mean 'min_length'\?\) "
                                            r"\(known: "):
        build_filter({"type": "minlength"})
    with pytest.raises(ManifestError, match=r"\.max_chars: unknown parameter for 'min_length' \(did you mean "
                                            r"'min_chars'\?\) \(accepted: "):
        build_filter({"type": "min_length", "max_chars": 5})
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"name": "m", "version": 1, "seed": 0, "data_root": str(tmp_path), "sources": [
        {"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100, "filtres": []}]}))
    with pytest.raises(ManifestError, match=r"sources\[0\]\.filtres: unknown field \(did you mean 'filters'\?\)"):
        load_manifest(str(path))
    with pytest.raises(ManifestError, match=r"unknown filter type 'zzz' \(known: "):  # nothing close: no guess
        build_filter({"type": "zzz"})


def test_build_with_params_and_defaults():
    f = build_filter({"type": "code_word_frequency", "max_top1": 0.25})
    assert (f.max_top1, f.max_top2) == (0.25, 0.5)
    assert isinstance(f, DocumentFilter)
    g = build_filter({"type": "repeated_ngrams"})
    assert (g.max_n, g.min_repeats) == (13, 32)
    q = build_filter({"type": "fasttext_quality", "model_path": "/models/dclm.bin"})  # lazy: no file needed yet
    assert q.threshold == 0.03311014
    assert pickle.loads(pickle.dumps(q)).scorer.model.model_path == "/models/dclm.bin"


def test_unloadable_module_is_a_manifest_error(monkeypatch):
    monkeypatch.setitem(REGISTRY, "broken", "filters.no_such_module_xyz:Broken")
    with pytest.raises(ManifestError, match=r"src\.type: filter 'broken' cannot be loaded"):
        build_filter({"type": "broken"}, "src")


def test_chain_first_rejection_wins_with_prefixed_reason():
    path = str(shared_corpus_file("code.jsonl.zst"))
    docs = [d for _, d in itertools.islice(read_documents(path, Quarantine()), 400)]
    chain = [build_filter({"type": "code_stars"}), build_filter({"type": "code_word_frequency"}),
             build_filter({"type": "min_length", "min_chars": 1})]
    for doc in docs:
        expected = None
        for f in chain:
            r = f.reject_reason(doc)
            if r is not None:
                expected = f"{f.name}:{r}"
                break
        assert apply_chain(chain, doc) == expected
    low_stars = next(d for d in docs if d["metadata"]["max_stars_count"] < 2)
    assert apply_chain(chain, {**low_stars, "text": "255 " * 100}) == "code_stars:stars<2"
    assert apply_chain(chain, {**low_stars, "metadata": {"max_stars_count": 9}, "text": ""}) == \
        "code_word_frequency:no_words"
    assert apply_chain([], {"text": ""}) is None


def test_a_type_that_repeats_in_a_chain_numbers_its_reasons():
    """Two filters of one type gave one reason, which the report could not tell apart (a
    tester): where a type repeats, its reasons say which of them removed the document."""
    chain = [build_filter({"type": "min_length", "min_tokens": 50}), build_filter({"type": "code_stars"}),
             build_filter({"type": "min_length", "min_tokens": 200})]
    assert chain_labels(chain) == ["min_length#1", "code_stars", "min_length#2"]
    doc = {"text": "x", "metadata": {"max_stars_count": 9}}
    assert apply_chain(chain, {**doc, "token_ids": [1] * 10}) == "min_length#1:tokens<50"
    assert apply_chain(chain, {**doc, "token_ids": [1] * 100}) == "min_length#2:tokens<200"
    assert apply_chain(chain, {**doc, "token_ids": [1] * 100, "metadata": {}}) == "code_stars:stars_missing"
    assert apply_chain(iter(chain[1:]), {**doc, "token_ids": [1] * 100}) == "min_length:tokens<200"  # alone


def test_manifest_validation_names_the_filter_field():
    data = {"name": "t", "seed": 1, "sources": [{
        "name": "code", "paths": ["x/*.jsonl"], "mix_percent": 100,
        "filters": [{"type": "code_stars"}, {"type": "repeated_ngrams", "min_repeat": 32}]}]}
    with pytest.raises(ManifestError, match=r"filters\[1\]\.min_repeat: unknown parameter"):
        manifest_from_dict(data)


def test_registry_modules_import():
    for target in REGISTRY.values():
        module, cls = target.split(":")
        assert hasattr(importlib.import_module(module), cls)
