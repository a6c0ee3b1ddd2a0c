"""`"cascade": true`: what keys a cascade filter's set. An earlier filter's threshold left out as its default
in one manifest and written out in the other decides alike, so the cascade filter's scores are reused; how an
earlier filter runs (a batch size, a device, an engine) is no part of the key."""

from __future__ import annotations

import os
import sys

import pytest

from dolmino.build.mix import build
from dolmino.build.tag import _decision_params, tag_plans
from dolmino.documents import write_documents
from dolmino.manifest import manifest_from_dict
from filters.registry import build_filter

# score = the text's length / 1000: score_threshold's default min_score (2.0) keeps texts of 2,000 characters or more
_SCORER = """import numpy as np

class LengthScore:
    def score(self, texts):
        return np.asarray([len(t) / 1000.0 for t in texts], dtype=np.float64)
"""


@pytest.fixture
def scorer(tmp_path, monkeypatch, request):
    """A scorer module of a name of its own, importable by the driver (and by the session's Spark
    workers where the test asks for `spark`)."""
    name = f"cascade_keys_{request.node.name.split('[')[0][-40:].replace('-', '_')}"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{name}.py").write_text(_SCORER)
    monkeypatch.syspath_prepend(str(code))
    if "spark" in request.fixturenames:
        env = request.getfixturevalue("spark").sparkContext.environment
        monkeypatch.setitem(env, "PYTHONPATH", os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH")) if p))
    yield name
    sys.modules.pop(name, None)


def _manifest(root, scorer: str, **earlier) -> dict:
    """Length scores (min_score as `earlier` gives it), then a cascade verdict filter."""
    return {"name": "cascade-keys", "version": 1, "seed": 3, "budget": 20_000, "data_root": str(root),
            "sources": [{"name": "web", "paths": ["*.jsonl.zst"], "mix_percent": 100.0,
                         "filters": [{"type": "score_threshold", "scorer": f"{scorer}:LengthScore", **earlier},
                                     {"type": "code_word_frequency", "cascade": True}]}]}


def _cascade_set(spec: dict) -> str:
    plan, = tag_plans(manifest_from_dict(spec), {}, "tokenizer", [])
    return plan.filters[1].set_name


def test_an_earlier_default_written_out_keys_the_same_cascade_set(tmp_path, scorer):
    omitted = _cascade_set(_manifest(tmp_path, scorer))
    assert _cascade_set(_manifest(tmp_path, scorer, min_score=2.0)) == omitted
    assert _cascade_set(_manifest(tmp_path, scorer, min_score=2)) == omitted
    assert _cascade_set(_manifest(tmp_path, scorer, min_score=2.5)) != omitted  # another threshold: other rows


def test_mix_reuses_the_cascade_set_when_the_earlier_default_is_written_out(spark, tmp_path, scorer):
    words = "the of and to in a is that for it as with was on be by this are from at or an".split()
    write_documents(str(tmp_path / "data" / "a.jsonl.zst"),
                    [{"id": f"d{i}", "text": " ".join(words[(i + k) % len(words)] for k in range(50 + 60 * i))}
                     for i in range(30)])
    attrs = str(tmp_path / "attrs")
    build(manifest_from_dict(_manifest(tmp_path / "data", scorer)), 20_000, str(tmp_path / "tag"), spark,
          attributes=attrs, phase="tag")
    report = build(manifest_from_dict(_manifest(tmp_path / "data", scorer, min_score=2.0)), 20_000,
                   str(tmp_path / "mix"), spark, attributes=attrs, phase="mix")
    source, = report["sources"]
    assert source["removed"]["score_threshold:score<2"]["docs"] > 0 and source["kept_docs"] > 0


@pytest.mark.parametrize("earlier, same, other", [
    ({"type": "fineweb_edu", "model_path": "m"}, {"batch_size": 64, "device": "cpu", "torch_threads": 4},
     {"min_int_score": 3}),
    ({"type": "fasttext_quality", "model_path": "m.bin"}, {"engine": "numba", "threshold": 0.03311014},
     {"threshold": 0.5}),
    ({"type": "decontaminate", "index_path": "i.npz"}, {"threshold": 0.1}, {"threshold": 0.2}),
])
def test_how_an_earlier_filter_runs_is_no_part_of_a_cascade_key(earlier, same, other):
    def decides(extra: dict) -> dict:
        spec = {**earlier, **extra}
        return _decision_params(build_filter(spec), spec)

    assert decides(same) == decides({})
    assert decides(other) != decides({})


def _chain(*filters: dict) -> dict:
    return {"name": "chain", "version": 1, "seed": 3, "budget": 1000, "data_root": "/tmp",
            "sources": [{"name": "web", "paths": ["*.jsonl"], "mix_percent": 100.0, "filters": list(filters)}]}


def test_the_earlier_filters_order_and_repeats_do_not_key_a_cascade():
    """The gate keeps what every earlier filter keeps: swapping two of them, or writing one twice,
    scored the cascade filter again for the same documents (a reviewer)."""
    stars, chars = {"type": "code_stars", "min_stars": 3}, {"type": "min_length", "min_chars": 50}
    cascade = {"type": "code_word_frequency", "cascade": True}

    def name(*filters: dict) -> str:
        plan, = tag_plans(manifest_from_dict(_chain(*filters)), {}, "tokenizer", [])
        return plan.filters[-1].set_name

    assert name(stars, chars, cascade) == name(chars, stars, cascade) == name(stars, chars, stars, cascade)
    assert name(stars, chars, cascade) != name(stars, {**chars, "min_chars": 60}, cascade)


def test_diff_reads_cascade_false_as_no_cascade():
    from dolmino.diff import diff_manifests

    plain = {"type": "min_length", "min_chars": 50}
    a = manifest_from_dict(_chain({"type": "code_stars"}, plain))
    b = manifest_from_dict(_chain({"type": "code_stars"}, {**plain, "cascade": False}))
    c = manifest_from_dict(_chain({"type": "code_stars"}, {**plain, "cascade": True}))
    assert not any(diff_manifests(a, b, with_plan=False).sources.values())
    changes = diff_manifests(a, c, with_plan=False).sources["web"]
    assert [(ch.where, ch.before, ch.after) for ch in changes] == [("web.filters[1] min_length.cascade", False, True)]
