"""`"cascade": true` on a tagged filter: the tag phase scores only the documents every earlier
tagged filter keeps, and the mix is the one the same manifest without it builds, byte for byte, for
a scorer whose score of a document does not depend on its batch (filters/base.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from dolmino.build.attributes import read_table
from dolmino.build.mix import build
from dolmino.documents import write_documents
from dolmino.errors import ManifestError
from dolmino.manifest import manifest_from_dict
from filters.base import tag_params
from filters.registry import build_filter

# A scorer that puts each text's length / 1000 in the attributes: its set shows which rows it scored.
_SCORER = """import numpy as np

class LengthScore:
    def score(self, texts):
        return np.asarray([len(t) / 1000.0 for t in texts], dtype=np.float64)
"""


def _docs(n: int, first: int = 0) -> list[dict]:
    """Documents of 40-1,200 characters with 0-6 stars; every 13th is blank (the pool stage drops it first)."""
    words = "the of and to in a is that for it as with was on be by this are from at or an".split()
    docs = []
    for i in range(first, first + n):
        length = 40 + (i * 397) % 1160
        text = " ".join(words[(i * 7 + k) % len(words)] + str(k % 10) for k in range(length // 4))[:length]
        docs.append({"id": f"d{i}", "text": "  \n " if i % 13 == 0 else text,
                     "metadata": {"max_stars_count": (i * 5) % 7}})
    return docs


def _pool(root: Path) -> None:
    """Three small files of one bundle (a .zst, a .jsonl with a bad line, a .gz) and a larger one."""
    (root / "web").mkdir(parents=True)
    write_documents(str(root / "web" / "a.jsonl.zst"), _docs(40, 0))
    lines = [json.dumps(d) for d in _docs(30, 40)]
    lines.insert(11, '{"id": "cut", "text": "no end')
    (root / "web" / "b.jsonl").write_text("\n".join(lines) + "\n")
    write_documents(str(root / "web" / "c.jsonl.gz"), _docs(25, 70))
    write_documents(str(root / "web" / "d.jsonl.zst"), _docs(700, 95))


def _manifest(root: Path, scorer: str, *, cascade: bool = True, min_stars: int = 4, min_score: float = 0.4) -> dict:
    second = {"type": "score_threshold", "scorer": f"{scorer}:LengthScore", "min_score": min_score}
    if cascade:
        second["cascade"] = True
    return {"name": "cascade", "version": 1, "seed": 5, "budget": 40_000, "data_root": str(root),
            "sources": [{"name": "web", "paths": ["web/*"], "mix_percent": 100.0,
                         "filters": [{"type": "code_stars", "min_stars": min_stars},
                                     {"type": "repeated_ngrams"},  # decided on tokens: not in the gate
                                     second],
                         "dedup": {"exact": True}}]}


@pytest.fixture
def scorer(spark, tmp_path, monkeypatch, request):
    """A scorer module of a name of its own (Spark's Python workers keep the modules they imported),
    importable by the driver and the session's workers."""
    name = f"cascade_scorer_{request.node.name.split('[')[0][-40:].replace('-', '_')}"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{name}.py").write_text(_SCORER)
    monkeypatch.syspath_prepend(str(code))
    env = spark.sparkContext.environment
    monkeypatch.setitem(env, "PYTHONPATH", os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH")) if p))
    yield name
    sys.modules.pop(name, None)


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


def _accounts(out: Path) -> list[dict]:
    report = json.loads((out / "report.json").read_text())
    keys = ("docs_in", "quarantined", "removed", "kept_docs", "kept_bytes", "output_docs", "output_tokens",
            "filter_chain")
    return [{k: s[k] for k in keys} for s in report["sources"]]


def _cascade_rows(attrs: Path) -> list[dict]:
    """The rows of the source's score_threshold sets, whichever there are."""
    rows = []
    for path in sorted((attrs / "web").glob("score_threshold-*/**/*.parquet")):
        rows += read_table(str(path))[0].to_pylist()
    return rows


def _expected_scored() -> list[bool]:
    """What the gate passes, in bundle order: not blank, at least 4 stars (the bad line is no row)."""
    docs = _docs(40, 0) + _docs(30, 40) + _docs(25, 70) + _docs(700, 95)
    return [bool(d["text"].strip()) and d["metadata"]["max_stars_count"] >= 4 for d in docs]


def test_a_cascade_filter_scores_the_survivors_only_and_the_mix_is_byte_identical(spark, tmp_path, scorer):
    _pool(tmp_path / "data")
    outs = {}
    for cascade in (False, True):
        out = tmp_path / f"out-{cascade}"
        attrs = tmp_path / f"attrs-{cascade}"
        build(manifest_from_dict(_manifest(tmp_path / "data", scorer, cascade=cascade)), 40_000, str(out), spark,
              attributes=str(attrs))
        outs[cascade] = out
        rows = _cascade_rows(attrs)
        if cascade:
            expected = _expected_scored()
            assert [r["scored"] for r in rows] == expected
            assert all((r["score"] is None) != ok for r, ok in zip(rows, expected))
            assert sum(expected) < len(expected) / 2  # the scorer saw under half the documents
        else:
            assert "scored" not in rows[0] and all(r["score"] is not None for r in rows)
    assert _parts(outs[True]) == _parts(outs[False]) and len(_parts(outs[True])) >= 2
    assert _accounts(outs[True]) == _accounts(outs[False])


def test_a_cascade_set_follows_its_earlier_filters_and_not_its_own_threshold(spark, tmp_path, scorer):
    """Its earlier filter's set stored by an earlier tag is read, not scored again; another threshold
    of its own reuses it; another threshold of an earlier filter scores it again."""
    _pool(tmp_path / "data")
    attrs = tmp_path / "attrs"

    def tag(**kw) -> list[str]:
        spec = _manifest(tmp_path / "data", scorer, **kw)
        build(manifest_from_dict(spec), 40_000, str(tmp_path / "out"), spark, attributes=str(attrs), phase="tag")
        return sorted(p.name for p in (attrs / "web").iterdir() if p.name.startswith(("code_stars", "score_")))

    first = _manifest(tmp_path / "data", scorer)
    first["sources"][0]["filters"] = first["sources"][0]["filters"][:1]
    build(manifest_from_dict(first), 40_000, str(tmp_path / "out"), spark, attributes=str(attrs), phase="tag")
    stars = sorted(p.name for p in (attrs / "web").iterdir() if p.name.startswith("code_stars"))
    assert len(stars) == 1

    sets = tag()
    assert [s for s in sets if s.startswith("code_stars")] == stars  # read for the gate, not tagged again
    assert [r["scored"] for r in _cascade_rows(attrs)] == _expected_scored()
    assert tag(min_score=0.9) == sets  # a threshold of its own: its scores are reused
    moved = tag(min_stars=3)
    assert len(moved) == len(sets) + 2  # the earlier filter's verdicts and this filter's scores, again
    build(manifest_from_dict(_manifest(tmp_path / "data", scorer, min_stars=3)), 40_000, str(tmp_path / "mix"),
          spark, attributes=str(attrs), phase="mix")
    build(manifest_from_dict(_manifest(tmp_path / "data", scorer, min_stars=3, cascade=False)), 40_000,
          str(tmp_path / "plain"), spark, attributes=str(tmp_path / "attrs-plain"))
    assert _parts(tmp_path / "mix") == _parts(tmp_path / "plain")


def test_mix_says_when_a_set_was_scored_as_a_cascade_and_the_manifest_asks_for_every_document(spark, tmp_path,
                                                                                              scorer):
    from dolmino.errors import BuildError

    _pool(tmp_path / "data")
    attrs = str(tmp_path / "attrs")
    build(manifest_from_dict(_manifest(tmp_path / "data", scorer)), 40_000, str(tmp_path / "out"), spark,
          attributes=attrs, phase="tag")
    with pytest.raises(BuildError, match=r"it was scored as a cascade filter, only where the filters before it "
                                         r"kept a document, and this manifest asks for every document scored"):
        build(manifest_from_dict(_manifest(tmp_path / "data", scorer, cascade=False)), 40_000,
              str(tmp_path / "mix"), spark, attributes=attrs, phase="mix")


def _filters(*specs: dict) -> dict:
    return {"name": "m", "version": 1, "seed": 1, "budget": 1000, "data_root": "/tmp",
            "sources": [{"name": "web", "paths": ["*.jsonl"], "mix_percent": 100.0, "filters": list(specs)}]}


@pytest.mark.parametrize("filters, where, message", [
    ([{"type": "code_stars"}, {"type": "min_length", "min_chars": 5, "cascade": "yes"}],
     r"filters\[1\]\.cascade", "expected true or false, got 'yes'"),
    ([{"type": "code_stars", "cascade": True}], r"filters\[0\]\.cascade", "no earlier filter of this source is scored"),
    ([{"type": "repeated_ngrams"}, {"type": "code_stars", "cascade": True}], r"filters\[1\]\.cascade",
     "no earlier filter of this source is scored"),
    ([{"type": "code_stars"}, {"type": "repeated_ngrams", "cascade": True}], r"filters\[1\]\.cascade",
     "'repeated_ngrams' decides on token ids in the mix phase"),
    ([{"type": "code_stars"}, {"type": "min_length", "min_tokens": 5, "cascade": True}], r"filters\[1\]\.cascade",
     "'min_length' decides on token ids in the mix phase"),
])
def test_a_cascade_the_tag_phase_cannot_apply_is_refused_naming_the_field(filters, where, message):
    with pytest.raises(ManifestError, match=rf"sources\[0\]\.{where}: .*{message}"):
        manifest_from_dict(_filters(*filters))


def test_cascade_is_no_parameter_of_the_filter_and_false_changes_nothing():
    spec = {"type": "min_length", "min_chars": 5, "cascade": True}
    assert build_filter(spec).min_chars == 5
    assert tag_params(build_filter(spec), spec) == {"min_chars": 5}
    manifest = manifest_from_dict(_filters({"type": "code_stars"}, {"type": "min_length", "cascade": False}))
    assert manifest.sources[0].filters[1]["cascade"] is False
