"""Quality classifiers (SPEC.md §1, Dolmino web/math): fastText scoring, own training, 0-5 scorers.

A tiny fastText classifier is trained in a tmp dir on real text, the way the paper trained
its math classifier from positive / negative documents: PARI/GP LaTeX manual sections
(academic) against dictionary entries (encyclopedic). It must separate held-out documents
of both. The model is small (word n-grams 1, dim 64) so training takes about a second; a
quantized `.ftz` copy checks fastText's other model format.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, shared_corpus_file
from dolmino.documents import Quarantine, read_documents, write_documents
from dolmino.errors import ManifestError, ResourceError
from filters.base import number_text
from filters.quality import (
    FastTextExpectedLabel, FastTextLabelProbability, FastTextModel, FastTextQualityFilter, ScoreThresholdFilter,
    make_scorer, percentile_report, train_fasttext_classifier,
)

TRAIN = 150


def _texts(name: str, n: int) -> list[str]:
    path = str(shared_corpus_file(name))
    return [doc["text"] for _, doc in itertools.islice(read_documents(path, Quarantine()), n)]


@pytest.fixture(scope="module")
def corpus():
    return {"pos": _texts("academic.jsonl.zst", 225), "neg": _texts("encyclopedic.jsonl.zst", 225)}


_TRAIN_SCRIPT = """
import sys
from filters.quality import _read_texts, train_fasttext_classifier, FastTextModel
pos, neg, out, pos_label, neg_label, quantized = sys.argv[1:7]
train_fasttext_classifier(_read_texts([pos]), _read_texts([neg]), out, pos_label=pos_label, neg_label=neg_label,
                          epoch=10, word_ngrams=1, dim=64)
if quantized:
    model = FastTextModel(out).model
    model.quantize(cutoff=500, dsub=4)
    model.save_model(quantized)
"""


def train_in_fresh_process(pos_file: str, neg_file: str, out: str, pos_label: str = "__label__pos",
                           neg_label: str = "__label__neg", quantized: str = "") -> None:
    """train_fasttext_classifier in its own interpreter.

    The fasttext-numpy2 wheel fails with "Encountered NaN" on the second or third
    `train_supervised` call in one process (same data and seed; the first always works),
    so each training gets a fresh interpreter, as a CLI run would.
    """
    proc = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, pos_file, neg_file, out, pos_label, neg_label,
                           quantized], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def train_files(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    pos_file, neg_file = str(d / "pos.jsonl.zst"), str(d / "neg.jsonl.gz")
    write_documents(pos_file, ({"id": f"p{i}", "text": t} for i, t in enumerate(corpus["pos"][:TRAIN])))
    write_documents(neg_file, ({"id": f"n{i}", "text": t} for i, t in enumerate(corpus["neg"][:TRAIN])))
    return pos_file, neg_file


@pytest.fixture(scope="module")
def model_paths(train_files, tmp_path_factory):
    d = tmp_path_factory.mktemp("fasttext")
    paths = {"bin": str(d / "math.bin"), "ftz": str(d / "math.ftz"), "edu": str(d / "edu.bin")}
    train_in_fresh_process(*train_files, paths["bin"], quantized=paths["ftz"])
    # A 0-5 style model: the same data with FineWeb-Edu-like numeric labels.
    train_in_fresh_process(*train_files, paths["edu"], pos_label="__label__5", neg_label="__label__0")
    return paths


@pytest.mark.parametrize("fmt", ["bin", "ftz"])
def test_trained_classifier_separates_held_out_documents(corpus, model_paths, fmt):
    scorer = FastTextLabelProbability(model_paths[fmt], label="__label__pos")
    pos = scorer.score(corpus["pos"][TRAIN:])
    neg = scorer.score(corpus["neg"][TRAIN:])
    assert len(pos) == 225 - TRAIN and len(neg) == 225 - TRAIN
    # fastText reports p + 1e-5 (it scores log(p + 1e-5)), so "1" can read 1.00001.
    assert np.all((pos >= 0) & (pos <= 1 + 1e-4)) and np.all((neg >= 0) & (neg <= 1 + 1e-4))
    # Held-out accuracy at 0.5 and ranking: almost every positive above almost every negative.
    accuracy = (np.sum(pos >= 0.5) + np.sum(neg < 0.5)) / (len(pos) + len(neg))
    assert accuracy >= 0.95
    auc = np.mean(pos[:, None] > neg[None, :])
    assert auc >= 0.98
    # Both labels' probabilities sum to one.
    probs = FastTextModel(model_paths[fmt]).label_probabilities(corpus["pos"][TRAIN:TRAIN + 3])
    for p in probs:
        assert set(p) == {"__label__pos", "__label__neg"} and abs(sum(p.values()) - 1) < 1e-3


def test_quantized_ftz_is_smaller_and_agrees(corpus, model_paths):
    assert os.path.getsize(model_paths["ftz"]) < os.path.getsize(model_paths["bin"]) / 4
    texts = corpus["pos"][TRAIN:] + corpus["neg"][TRAIN:]
    a = FastTextLabelProbability(model_paths["bin"], "__label__pos").score(texts) >= 0.5
    b = FastTextLabelProbability(model_paths["ftz"], "__label__pos").score(texts) >= 0.5
    assert np.mean(a == b) >= 0.95


def test_threshold_boundary_is_inclusive(corpus, model_paths):
    doc = {"text": corpus["pos"][TRAIN]}
    score = float(FastTextLabelProbability(model_paths["bin"], "__label__pos").score([doc["text"]])[0])
    assert FastTextQualityFilter(model_paths["bin"], "__label__pos", threshold=score).reject_reason(doc) is None
    above = float(np.nextafter(score, 1.0))
    rejected = FastTextQualityFilter(model_paths["bin"], "__label__pos", threshold=above).reject_reason(doc)
    assert rejected == f"p<{number_text(above)}"


def test_default_threshold_is_dclm_and_newlines_do_not_matter(corpus, model_paths):
    f = FastTextQualityFilter(model_paths["bin"], label="__label__pos")
    assert f.threshold == 0.03311014 and f.scorer.label == "__label__pos"
    assert FastTextQualityFilter(model_paths["bin"]).scorer.label == "__label__hq"
    text = corpus["pos"][TRAIN + 1]
    scorer = f.scorer
    # fastText scores one line: newlines become spaces (as DCLM does), so both forms agree.
    assert "\n" in text
    assert scorer.score([text])[0] == pytest.approx(scorer.score([text.replace("\n", " ")])[0], abs=1e-6)
    kept = sum(f.reject_reason({"text": t}) is None for t in corpus["pos"][TRAIN:])
    assert kept == 225 - TRAIN  # academic text is far above 0.033
    removed = [f.reject_reason({"text": t}) for t in corpus["neg"][TRAIN:]]
    assert removed.count("p<0.03311014") >= 0.8 * len(removed)


def test_adversarial_inputs(model_paths):
    f = FastTextQualityFilter(model_paths["bin"], "__label__pos", threshold=0.5)
    scorer = f.scorer
    for text in ["", "   \n\n\t", "\x00\x01\x02", "∑∫∂ ≤ ≥ ∞ 数学", "x" * 2_000_000]:
        s = scorer.score([text])
        assert s.shape == (1,) and 0.0 <= s[0] <= 1.0 + 1e-4
        assert f.reject_reason({"text": text}) in (None, "p<0.5")
    assert f.reject_reason({}) in (None, "p<0.5")  # missing text scores as empty


def test_missing_model_and_bad_parameters(tmp_path):
    f = FastTextQualityFilter(str(tmp_path / "absent.bin"))  # lazy: constructing is cheap
    with pytest.raises(FileNotFoundError, match="absent.bin"):
        f.reject_reason({"text": "hello"})
    for bad in (-0.1, 1.5, "0.03", True):
        with pytest.raises(ValueError, match="threshold"):
            FastTextQualityFilter("m.bin", threshold=bad)
    with pytest.raises(ValueError, match="model_path"):
        FastTextModel("")


@pytest.mark.parametrize("engine", FastTextModel.ENGINES)
def test_a_file_that_is_not_a_model_is_a_resource_error(model_paths, tmp_path, engine):
    """One line with the path and the reason, which a build prints as such when an executor
    raises it, instead of the binding's "wrong file format" or IsADirectoryError."""
    not_a_model = tmp_path / "m.bin"
    not_a_model.write_text("this is not a model\n")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    cases = [(not_a_model, "is not a fastText model: it starts with b'this'"),
             (empty, "is not a fastText model: it starts with b''"), (tmp_path, "is a directory")]
    # The binding itself never returns on a truncated .bin (fasttext 0.9): with engine
    # "fasttext" the file is walked before the binding sees it. Cut in the dictionary and in
    # the matrices.
    model = open(model_paths["bin"], "rb").read()
    for cut in (3000, len(model) - 100):
        truncated = tmp_path / f"truncated-{cut}.bin"
        truncated.write_bytes(model[:cut])
        cases.append((truncated, "truncated"))
    for path, why in cases:
        with pytest.raises(ResourceError, match=why) as info:
            FastTextQualityFilter(str(path), "__label__pos", engine=engine).reject_reason({"text": "x"})
        assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("where", ["output", "input"])
def test_a_quantized_model_cut_short_is_a_resource_error(model_paths, tmp_path, where):
    """fastText's binding loaded a .ftz cut short and scored every document with what was left
    (each label's probability 0 where the input matrix was cut, slightly off where the output
    matrix was): a filter removed a whole source for a bad copy, unsaid. The headers are walked
    first: on a build's driver with the manifest's label (`check_model`), and before the binding."""
    from filters.fasttext_numba import read_fasttext_labels

    model = open(model_paths["ftz"], "rb").read()
    with open(model_paths["ftz"], "rb") as fh:
        assert sorted(read_fasttext_labels(fh, model_paths["ftz"], size=len(model))) == ["__label__neg",
                                                                                        "__label__pos"]
    cut = tmp_path / "cut.ftz"
    cut.write_bytes(model[:len(model) - 40] if where == "output" else model[:len(model) // 2])
    said = f"is truncated: it ends inside its {where} matrix ({cut.stat().st_size:,} bytes where its headers announce"
    with pytest.raises(ResourceError, match=re.escape(said)):
        FastTextQualityFilter(str(cut), "__label__pos").check_model()
    with pytest.raises(ResourceError, match=re.escape(said)):
        FastTextQualityFilter(str(cut), "__label__pos", engine="fasttext").reject_reason({"text": "x"})


def test_unknown_label_is_an_error(corpus, model_paths):
    scorer = FastTextLabelProbability(model_paths["bin"], label="__label__hq")  # model has pos/neg only
    with pytest.raises(ValueError, match="__label__hq"):
        scorer.score([corpus["pos"][0]])


def test_filters_pickle_without_the_model(corpus, model_paths):
    f = FastTextQualityFilter(model_paths["bin"], "__label__pos", threshold=0.5)
    doc = {"text": corpus["neg"][TRAIN]}
    first = f.reject_reason(doc)  # loads the model
    assert f.scorer.model.fast  # the numba engine, its matrices memory-mapped
    blob = pickle.dumps(f)
    assert len(blob) < 2000 and os.path.getsize(model_paths["bin"]) > 100 * len(blob)
    g = pickle.loads(blob)
    assert g.scorer.model._model is None and g.scorer.model._fast is None
    assert g.reject_reason(doc) == first
    edu = ScoreThresholdFilter("fasttext_expected_label", min_score=2, model_path=model_paths["edu"])
    edu.reject_reason(doc)
    assert edu._scorer is not None
    blob = pickle.dumps(edu)
    assert len(blob) < 2000 and pickle.loads(blob)._scorer is None


def test_expected_label_scorer_0_to_5(corpus, model_paths):
    scorer = FastTextExpectedLabel(model_paths["edu"])
    pos = scorer.score(corpus["pos"][TRAIN:])
    neg = scorer.score(corpus["neg"][TRAIN:])
    assert np.all((pos >= 0) & (pos <= 5 + 1e-3)) and np.all((neg >= 0) & (neg <= 5 + 1e-3))
    # E[label] = 5 * P(__label__5) for this two-label model.
    p5 = FastTextLabelProbability(model_paths["edu"], "__label__5").score(corpus["pos"][TRAIN:TRAIN + 5])
    assert np.allclose(pos[:5], 5 * p5, atol=1e-3)
    f = ScoreThresholdFilter("fasttext_expected_label", min_score=2, model_path=model_paths["edu"])
    assert sum(f.reject_reason({"text": t}) is None for t in corpus["pos"][TRAIN:]) >= 0.95 * len(pos)
    assert sum(f.reject_reason({"text": t}) == "score<2" for t in corpus["neg"][TRAIN:]) >= 0.95 * len(neg)


# ---------------------------------------------------------------------------- pluggable scorer

KNOWN_SCORES: dict[str, float] = {}
SCORER_CALLS: list[dict] = []


class KnownScores:
    """A 'module:callable' scorer for tests: returns the score the test assigned to each text."""

    def __init__(self, **params):
        SCORER_CALLS.append(params)

    def score(self, texts):
        return np.asarray([KNOWN_SCORES[t] for t in texts], dtype=np.float64)


def test_custom_scorer_fineweb_edu_min_score_2(corpus):
    texts = corpus["neg"][:12]
    scores = [0.0, 1.0, 1.999, 2.0, 2.5, 3.0, 4.0, 5.0, 0.5, 1.5, 2.0001, 4.9]
    KNOWN_SCORES.clear()
    KNOWN_SCORES.update(zip(texts, scores))
    SCORER_CALLS.clear()
    f = ScoreThresholdFilter("test_filter_quality:KnownScores", min_score=2)
    reasons = [f.reject_reason({"text": t}) for t in texts]
    assert reasons == [None if s >= 2 else "score<2" for s in scores]
    assert reasons[3] is None and reasons[2] == "score<2"  # exactly 2 is kept
    assert SCORER_CALLS == [{}]  # built once, lazily, with no model_path
    # >= 3 keeps fewer (the paper: 20.3% at >= 2, 5.8% at >= 3 of DCLM).
    f3 = ScoreThresholdFilter("test_filter_quality:KnownScores", min_score=3)
    assert sum(f3.reject_reason({"text": t}) is None for t in texts) == sum(s >= 3 for s in scores)
    # model_path is passed through to the scorer's constructor.
    make_scorer("test_filter_quality:KnownScores", model_path="/models/edu.bin")
    assert SCORER_CALLS[-1] == {"model_path": "/models/edu.bin"}


@pytest.mark.parametrize("scorer", ["no_such_scorer", "", 3])
def test_bad_scorer_names(scorer):
    with pytest.raises(ValueError, match="scorer"):
        ScoreThresholdFilter(scorer)


def test_bad_parameters_fail_when_the_filter_is_built_not_when_it_tags():
    """`dolmino manifest check` builds the filters: what would fail in an executor fails there."""
    for bad in ("2", float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="^min_score must be a finite number"):
            ScoreThresholdFilter("fasttext_expected_label", min_score=bad, model_path="m.bin")
    with pytest.raises(ValueError, match="^scorer 'no_such_module_xyz:Scorer': module 'no_such_module_xyz' cannot"):
        ScoreThresholdFilter("no_such_module_xyz:Scorer")
    with pytest.raises(ValueError, match="^scorer 'test_filter_quality:KNOWN_SCORES': .* no callable"):
        ScoreThresholdFilter("test_filter_quality:KNOWN_SCORES")
    # the module's file: a scorer saved as json.py (spark-submit --py-files json.py) resolved to Python's own json
    import json

    with pytest.raises(ValueError) as raised:
        ScoreThresholdFilter("json:Scorer")
    assert str(raised.value) == f"scorer 'json:Scorer': module 'json' ({json.__file__}) has no callable 'Scorer'"
    for scorer in ("fasttext_expected_label", "fasttext_label_probability"):
        with pytest.raises(ValueError, match=f"^model_path is required by scorer '{scorer}'"):
            ScoreThresholdFilter(scorer)
    with pytest.raises(ValueError, match="^model_path must be a non-empty string"):
        ScoreThresholdFilter("fasttext_expected_label", model_path=3)
    assert ScoreThresholdFilter("fasttext_expected_label", min_score=0, model_path="m.bin").min_score == 0.0


# ---------------------------------------------------------------------------- percentile reports


def test_percentile_report_math_on_known_scores():
    scores = np.asarray([0.1, 0.2, 0.3, 0.4])
    weights = np.asarray([1.0, 1.0, 1.0, 7.0])
    rows = percentile_report(scores, weights, [0.0, 0.25, 0.4, 0.5])
    assert [r["threshold"] for r in rows] == [0.0, 0.25, 0.4, 0.5]
    assert [r["docs_kept"] for r in rows] == [4, 2, 1, 0]
    assert [r["share_docs"] for r in rows] == [1.0, 0.5, 0.25, 0.0]
    assert [r["share_weight"] for r in rows] == pytest.approx([1.0, 0.8, 0.7, 0.0])
    # Threshold equal to a score keeps it (>=), as the filters do.
    assert percentile_report(scores, weights, [0.3])[0]["docs_kept"] == 2
    # Degenerate inputs: nothing scored, or zero weights.
    empty = percentile_report(np.zeros(0), np.zeros(0), [0.5])[0]
    assert empty == {"threshold": 0.5, "docs_kept": 0, "share_docs": 0.0, "share_weight": 0.0}
    zero_w = percentile_report(scores, np.zeros(4), [0.0])[0]
    assert zero_w["share_docs"] == 1.0 and zero_w["share_weight"] == 0.0


def test_cli_percentiles(corpus, model_paths, tmp_path):
    held = str(tmp_path / "held.jsonl")
    held_texts = corpus["pos"][TRAIN:TRAIN + 20] + corpus["neg"][TRAIN:TRAIN + 30]
    write_documents(held, ({"id": f"h{i}", "text": t} for i, t in enumerate(held_texts)))
    proc = subprocess.run([sys.executable, "-m", "filters.quality", "percentiles", "--model", model_paths["bin"],
                           "--input", held, "--label", "__label__pos", "--thresholds", "0,0.5,1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["docs"] == 50 and report["label"] == "__label__pos"
    assert report["blank_docs"] == 0 and report["quarantined"] == {}
    rows = {r["threshold"]: r for r in report["rows"]}
    assert rows[0.0]["docs_kept"] == 50 and rows[0.0]["share_weight"] == pytest.approx(1.0)
    assert rows[1.0]["docs_kept"] <= rows[0.5]["docs_kept"]  # fastText's p + 1e-5 can read 1.00001
    assert 18 <= rows[0.5]["docs_kept"] <= 22  # about the 20 academic documents
    # The chars kept at 0.5 are about those of the academic sections.
    pos_chars = sum(len(t) for t in corpus["pos"][TRAIN:TRAIN + 20])
    assert rows[0.5]["share_weight"] == pytest.approx(pos_chars / sum(map(len, held_texts)), abs=0.1)
    assert rows[0.5]["share_docs"] == rows[0.5]["docs_kept"] / 50


@pytest.mark.slow
def test_cli_train(train_files, corpus, tmp_path):
    # The CLI trains with the DCLM-style defaults (word bigrams, 2M hash buckets): a ~0.5 GB model.
    out = str(tmp_path / "models" / "cli.bin")
    proc = subprocess.run([sys.executable, "-m", "filters.quality", "train", "--pos", train_files[0],
                           "--neg", train_files[1], "--out", out, "--epoch", "5"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    scorer = FastTextLabelProbability(out, "__label__hq")  # positives are __label__hq, as DCLM's
    pos, neg = scorer.score(corpus["pos"][TRAIN:]), scorer.score(corpus["neg"][TRAIN:])
    assert np.mean(pos[:, None] > neg[None, :]) >= 0.95
    os.unlink(out)


def test_training_needs_both_classes(tmp_path, corpus):
    with pytest.raises(ValueError, match="positive and one negative"):
        train_fasttext_classifier(corpus["pos"][:3], [], str(tmp_path / "m.bin"))


def test_tag_then_decide_equals_reject_reason(corpus, model_paths):
    """Tag once, mix many: the stored score plus `decide` gives the verdict `reject_reason` gives,
    and a threshold is not a tag parameter (a changed threshold reuses the stored scores)."""
    from filters.base import decide, tag_columns, tag_params

    docs = [{"text": t} for t in corpus["pos"][TRAIN:TRAIN + 20] + corpus["neg"][TRAIN:TRAIN + 20]]
    for threshold in (0.03311014, 0.5, 0.9):
        f = FastTextQualityFilter(model_paths["bin"], "__label__pos", threshold=threshold)
        columns = tag_columns(f, docs)
        assert list(columns) == ["score"]
        verdicts = [decide(f, {"score": s}) for s in columns["score"]]
        assert verdicts == [f.reject_reason(d) for d in docs]
        assert tag_params(f, {"type": "fasttext_quality", "model_path": "m", "label": "l", "threshold": threshold,
                              "engine": "numba"}) == {"model_path": "m", "label": "l"}
    texts = corpus["neg"][:6]
    KNOWN_SCORES.clear()
    KNOWN_SCORES.update(zip(texts, [0.0, 1.99, 2.0, 3.0, 4.5, 5.0]))
    edu = ScoreThresholdFilter("test_filter_quality:KnownScores", min_score=3)
    scores = tag_columns(edu, [{"text": t} for t in texts])["score"]
    assert [decide(edu, {"score": s}) for s in scores] == [edu.reject_reason({"text": t}) for t in texts]


# ---------------------------------------------------------------------------- labels a model lacks


def test_a_label_the_model_lacks_is_one_line_naming_its_labels(model_paths):
    """`check_model` is what a build's driver calls before any task; scoring raises the same
    ResourceError, which a build reports in one line when an executor raises it (it was a
    ValueError: an 87-line Spark traceback; found by a tester)."""
    labels = "['__label__neg', '__label__pos']"
    for f in (FastTextQualityFilter(model_paths["bin"]),  # the default __label__hq
              FastTextQualityFilter(model_paths["bin"], label="__label__nope"),
              ScoreThresholdFilter("fasttext_label_probability", model_path=model_paths["bin"])):
        for call in (f.check_model, lambda f=f: f.tag([{"text": "some text"}])):
            with pytest.raises(ResourceError, match="has no label") as info:
                call()
            assert labels in str(info.value) and "\n" not in str(info.value)
    # The expected-label scorer needs numeric labels: it failed on float('pos') in an executor.
    f = ScoreThresholdFilter("fasttext_expected_label", model_path=model_paths["bin"])
    for call in (f.check_model, lambda: f.tag([{"text": "some text"}])):
        with pytest.raises(ResourceError, match=r"labels that are not '__label__' and a number: \[") as info:
            call()
        assert "__label__pos" in str(info.value) and "\n" not in str(info.value)
    FastTextQualityFilter(model_paths["bin"], label="__label__pos").check_model()
    ScoreThresholdFilter("fasttext_expected_label", model_path=model_paths["edu"]).check_model()
    ScoreThresholdFilter("test_filter_quality:KnownScores").check_model()  # a custom scorer's model is its own


@pytest.mark.parametrize("fmt", ["bin", "ftz"])
def test_the_labels_are_read_from_the_dictionary_alone(model_paths, fmt, tmp_path):
    """What a build's driver checks a manifest's label with: the binding's labels, from the bytes
    before the matrices; a file cut inside its dictionary is named as truncated."""
    import io

    import struct

    from filters.fasttext_numba import _parse_dictionary, read_fasttext_labels

    path = model_paths[fmt]
    data = open(path, "rb").read()

    class Counting(io.BytesIO):
        taken = 0

        def read(self, n=-1):
            out = super().read(n)
            Counting.taken += len(out)
            return out

    labels = read_fasttext_labels(Counting(data), path, chunk=64)
    assert sorted(labels) == sorted(FastTextModel(path, engine="fasttext").model.get_labels())
    n_entries = struct.unpack("<i", data[64:68])[0]
    dictionary_end = _parse_dictionary(np.frombuffer(data, dtype=np.uint8), 92, n_entries)[3]
    assert 0 < dictionary_end < len(data) and Counting.taken <= 2 * dictionary_end  # read doubling, from 64 bytes
    f = FastTextQualityFilter(path, label="__label__nope")
    with pytest.raises(ResourceError, match="has no label '__label__nope'"):
        f.check_model()
    assert f.scorer.model._model is None and f.scorer.model._fast is None  # nothing loaded for the check
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[:200])
    with pytest.raises(ResourceError, match="is truncated: it ends inside its dictionary"):
        read_fasttext_labels(open(cut, "rb"), str(cut))
    cut.write_bytes(data[:50])
    with pytest.raises(ResourceError, match="is truncated: it ends inside its header"):
        read_fasttext_labels(open(cut, "rb"), str(cut))


@pytest.mark.parametrize("label", [5, "", None, ["__label__hq"]])
def test_a_label_that_is_not_a_string_is_refused_when_the_filter_is_built(label):
    """`dolmino manifest check` builds the filters: `label: 5` failed only in an executor."""
    from filters.registry import build_filter

    with pytest.raises(ValueError, match="^label must be a non-empty string"):
        FastTextQualityFilter("m.bin", label=label)
    with pytest.raises(ManifestError, match=r"^src\.filters\[0\]\.label: label must be"):
        build_filter({"type": "fasttext_quality", "model_path": "m.bin", "label": label}, "src.filters[0]")


# ---------------------------------------------------------------------------- training text


def test_training_text_drops_the_words_fasttext_reads_as_labels():
    from filters.quality import training_text

    assert training_text("a __label__neg b") == "a  b"
    assert training_text("__label__x first\nand\t__label__ last __label__y") == " first and\t last "
    # Not at a word's start: an ordinary word for fastText, kept.
    assert training_text("x__label__neg and (__label__neg)") == "x__label__neg and (__label__neg)"
    assert training_text(" plain\ntext ") == "plain text"  # otherwise dclm_line


def test_a_document_quoting_a_label_adds_no_label_to_the_model(train_files, tmp_path):
    """A document holding `__label__neg` was trained with that label too, and one holding another
    `__label__` word gave the model a third label (found by a tester)."""
    docs = [{"id": f"p{i}", "text": doc["text"]} for i, (_, doc) in enumerate(read_documents(train_files[0],
                                                                                                Quarantine()))]
    docs[0]["text"] += " __label__neg"
    docs[1]["text"] = "__label__extra " + docs[1]["text"]
    pos = str(tmp_path / "pos.jsonl")
    write_documents(pos, docs)
    out = str(tmp_path / "m.bin")
    train_in_fresh_process(pos, train_files[1], out)
    assert FastTextModel(out).labels() == ["__label__neg", "__label__pos"]


# ---------------------------------------------------------------------------- CLI arguments


def _cli(argv, capsys, monkeypatch) -> tuple[int, str]:
    """`python -m filters.quality` in this process, failing if any document is read."""
    from filters import quality

    def no_reading(*_args, **_kwargs):
        raise AssertionError("documents were read before the arguments were checked")

    monkeypatch.setattr(quality, "_read_texts", no_reading)
    code = quality.main(argv)
    return code, capsys.readouterr().err


def test_cli_train_refuses_an_output_that_is_an_input(train_files, tmp_path, capsys, monkeypatch):
    """`--out` naming a training file replaced it with the model, exit 0 (found by a tester)."""
    pos, neg = str(tmp_path / "pos.jsonl.zst"), str(tmp_path / "neg.jsonl.gz")
    for src, dst in zip(train_files, (pos, neg)):
        with open(src, "rb") as fh, open(dst, "wb") as out:
            out.write(fh.read())
    before = {p: open(p, "rb").read() for p in (pos, neg)}
    os.symlink(neg, tmp_path / "link.bin")
    os.link(pos, tmp_path / "hard.bin")
    (tmp_path / "sub").mkdir()
    for out, named in ((pos, "--pos"), (str(tmp_path / "link.bin"), "--neg"), (str(tmp_path / "hard.bin"), "--pos"),
                       (str(tmp_path / "sub" / ".." / "neg.jsonl.gz"), "--neg")):
        code, err = _cli(["train", "--pos", pos, "--neg", neg, "--out", out], capsys, monkeypatch)
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("python -m filters.quality train: error: --out ") and f"same file as {named}" in err
    assert {p: open(p, "rb").read() for p in (pos, neg)} == before


@pytest.mark.parametrize("extra, message", [
    (["--epoch", "0"], "--epoch must be >= 1, got 0"), (["--epoch", "-3"], "--epoch must be >= 1"),
    (["--dim", "0"], "--dim must be >= 1"), (["--dim", "-5"], "--dim must be >= 1"),
    (["--bucket", "0"], "--bucket must be >= 1"), (["--bucket", "-1"], "--bucket must be >= 1"),
    (["--word-ngrams", "0"], "--word-ngrams must be >= 1"),
    (["--seed", "99999999999"], "--seed must be in [0, 2147483647]"), (["--seed", "-1"], "--seed must be in"),
    (["--out", "{tmp}"], "is a directory"), (["--pos", "{tmp}/absent.jsonl"], "--pos {tmp}/absent.jsonl: no such file"),
    (["--neg", "{tmp}/notes.txt"], "--neg {tmp}/notes.txt: unknown document file suffix"),
])
def test_cli_train_refuses_bad_arguments_before_reading(train_files, tmp_path, capsys, monkeypatch, extra, message):
    """They wrote meaningless models (--epoch 0, --dim 0), crashed fastText (SIGFPE at --bucket 0)
    or failed after training (--out a directory), as tracebacks (found by a tester)."""
    extra = [x.format(tmp=tmp_path) for x in extra]
    argv = ["train", "--pos", train_files[0], "--neg", train_files[1], "--out", str(tmp_path / "m.bin"), *extra]
    code, err = _cli(argv, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and message.format(tmp=tmp_path) in err, err
    assert not os.path.exists(tmp_path / "m.bin")


@pytest.mark.parametrize("extra, message", [
    (["--thresholds", "0.01,0.5,abc"], "--thresholds: 'abc' is not a probability in [0, 1]"),
    (["--thresholds", "nan"], "'nan' is not a probability"), (["--thresholds", "-1"], "'-1' is not a probability"),
    (["--thresholds", "2"], "'2' is not a probability"), (["--thresholds", "1.01"], "'1.01' is not"),
    (["--thresholds", "0.5,"], "'' is not a probability"),
    (["--label", "__label__hq"], "has no label '__label__hq'; its labels are ['__label__neg', '__label__pos']"),
    (["--model", "{tmp}/absent.bin"], "--model {tmp}/absent.bin: no such file"),
    (["--model", "{tmp}"], "is a directory"),
    (["--input", "{tmp}/absent.jsonl"], "--input {tmp}/absent.jsonl: no such file"),
])
def test_cli_percentiles_refuses_bad_arguments_before_reading(model_paths, train_files, tmp_path, capsys, monkeypatch,
                                                               extra, message):
    """A bad threshold failed after every document was scored, and the default label on a model
    `train` wrote before it named positives __label__hq was a traceback (found by a tester)."""
    argv = ["percentiles", "--model", model_paths["bin"], "--input", train_files[0], "--label", "__label__pos",
            *[x.format(tmp=tmp_path) for x in extra]]
    code, err = _cli(argv, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and message.format(tmp=tmp_path) in err, err
    assert err.startswith("python -m filters.quality percentiles: error: ")


def test_cli_percentiles_counts_blank_and_unreadable_lines_as_a_build_would(corpus, model_paths, tmp_path, capsys):
    """Blank documents were scored and in the shares (a build removes them first), and unreadable
    lines were dropped without a word (found by a tester)."""
    from filters.quality import main

    texts = corpus["pos"][TRAIN:TRAIN + 2] + corpus["neg"][TRAIN:TRAIN + 2]
    lines = [json.dumps({"id": f"d{i}", "text": t}).encode() for i, t in enumerate(texts)]
    lines[1:1] = [json.dumps({"id": "blank", "text": ""}).encode(), json.dumps({"id": "ws", "text": " \n\t"}).encode(),
                  b'{"id": "bad", "text": "caf\xe9"}', b'{"id": "cut", "te']
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["percentiles", "--model", model_paths["bin"], "--input", str(path), "--label", "__label__pos",
                 "--thresholds", "0,0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["docs"] == 4 and report["blank_docs"] == 2
    assert report["quarantined"] == {"invalid_utf8": 1, "malformed_json": 1}
    rows = {r["threshold"]: r for r in report["rows"]}
    assert rows[0.0]["share_docs"] == 1.0 and rows[0.5]["docs_kept"] == 2 and rows[0.5]["share_docs"] == 0.5


def test_cli_train_labels_positives_as_the_filter_default(train_files, tmp_path):
    """`quality train` wrote __label__pos / __label__neg, so a `fasttext_quality` filter or
    `percentiles` with its default label failed on every model it wrote (found by a tester)."""
    out = str(tmp_path / "m.bin")
    proc = subprocess.run([sys.executable, "-m", "filters.quality", "train", "--pos", train_files[0], "--neg",
                           train_files[1], "--out", out, "--epoch", "2", "--dim", "8", "--word-ngrams", "1",
                           "--bucket", "100"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert FastTextModel(out).labels() == ["__label__hq", "__label__lq"]
    FastTextQualityFilter(out).check_model()
    proc = subprocess.run([sys.executable, "-m", "filters.quality", "percentiles", "--model", out, "--input",
                           train_files[0]], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["label"] == "__label__hq"


# ---------------------------------------------------------------------------- attribute-set keys of scorers


def _score_threshold_plan(filters: list[dict]):
    """The tag plan `dolmino tag` makes for these filters of one source."""
    from dolmino.build.resources import Resource
    from dolmino.build.tag import tag_plans
    from dolmino.manifest import manifest_from_dict

    manifest = manifest_from_dict({"name": "keys", "version": 1, "seed": 1, "budget": 1000, "data_root": "/nowhere",
                                   "sources": [{"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100,
                                                "filters": filters}]})
    return tag_plans(manifest, {"edu.bin": Resource("edu.bin", "edu", False)}, "", [])[0]


def _score_threshold_sets(filters: list[dict]) -> list[str]:
    """The attribute set names `dolmino tag` gives these filters of one source."""
    return [t.set_name for t in _score_threshold_plan(filters).filters]


_SCORER_CODE = "import numpy as np\n{helper}\nclass Scorer:\n    def score(self, texts):\n" \
               "        return np.asarray([len(t) / {scale} for t in texts], dtype=np.float64)\n"


def test_a_custom_scorers_set_is_keyed_by_its_source_and_registered_ones_keep_their_keys(tmp_path, monkeypatch):
    """A "module:callable" scorer's set was keyed by its name alone: after an edit of its code,
    `dolmino mix` reused the scores of the old code without a word (found by a reviewer). The
    key now hashes the module's source; for a module in a package, every .py file of the package
    (a helper's edit changes the scores too); for one imported from a zip (--py-files), the zip.
    A module without a source file keeps the name-only key, with one warning; registered scorers
    keep their keys (shipped attribute sets their names)."""
    import types
    import zipfile

    (tmp_path / "keyed_scorer_pkg" / "sub").mkdir(parents=True)
    (tmp_path / "keyed_scorer_pkg" / "__init__.py").write_text("")
    (tmp_path / "keyed_scorer_pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "keyed_scorer_pkg" / "sub" / "helper.py").write_text("SCALE = 100\n")
    (tmp_path / "keyed_scorer_pkg" / "scorer.py").write_text(_SCORER_CODE.format(
        helper="from keyed_scorer_pkg.sub.helper import SCALE", scale="SCALE"))
    (tmp_path / "keyed_scorer_mod.py").write_text(_SCORER_CODE.format(helper="", scale=100))

    def zipped(scale):
        with zipfile.ZipFile(tmp_path / "zipped.zip", "w") as zf:
            zf.writestr("keyed_scorer_zip.py", _SCORER_CODE.format(helper="", scale=scale))

    zipped(100)
    in_memory = types.ModuleType("keyed_scorer_mem")
    exec(_SCORER_CODE.format(helper="", scale=100), in_memory.__dict__)
    monkeypatch.setitem(sys.modules, "keyed_scorer_mem", in_memory)
    monkeypatch.syspath_prepend(str(tmp_path / "zipped.zip"))
    monkeypatch.syspath_prepend(str(tmp_path))
    filters = [{"type": "score_threshold", "scorer": "fasttext_expected_label", "model_path": "edu.bin"},
               {"type": "score_threshold", "scorer": "keyed_scorer_mem:Scorer", "min_score": 1},
               {"type": "score_threshold", "scorer": "keyed_scorer_mod:Scorer"},
               {"type": "score_threshold", "scorer": "keyed_scorer_pkg.scorer:Scorer"},
               {"type": "score_threshold", "scorer": "keyed_scorer_zip:Scorer"}]
    try:
        before = _score_threshold_sets(filters)
        # the keys this version had, pinned: a registered scorer, and a scorer without a source file
        assert before[:2] == ["score_threshold-89dd17a66a6c", "score_threshold-81a62144541f"]
        assert _score_threshold_sets(filters) == before  # the same sources: the same keys
        (tmp_path / "keyed_scorer_mod.py").write_text(_SCORER_CODE.format(helper="", scale=1000))
        (tmp_path / "keyed_scorer_pkg" / "sub" / "helper.py").write_text("SCALE = 1000\n")
        zipped(1000)
        edited = _score_threshold_sets(filters)
        assert edited[:2] == before[:2] and all(a != b for a, b in zip(edited[2:], before[2:]))
        (tmp_path / "keyed_scorer_pkg" / "sub" / "notes.txt").write_text("not code")  # only Python sources count
        assert _score_threshold_sets(filters) == edited
        # the one warning, a build's (its report's and its summary's: test_build_mix), not a line on stderr
        assert _score_threshold_plan(filters).warnings == (
            "source 'web' filters[1]: scorer 'keyed_scorer_mem:Scorer': the source of module 'keyed_scorer_mem' "
            "cannot be found or read, so its scores are keyed by the scorer's name alone and an edit of its code will "
            "not be noticed (the scores tagged before it are reused): tag into a new --attributes root after "
            "changing it",)
    finally:
        for name in ("keyed_scorer_mod", "keyed_scorer_zip", "keyed_scorer_pkg", "keyed_scorer_pkg.scorer",
                     "keyed_scorer_pkg.sub", "keyed_scorer_pkg.sub.helper"):
            sys.modules.pop(name, None)


def test_a_scorers_digest_names_its_code_not_whether_it_came_from_a_directory_or_a_zip(tmp_path, monkeypatch):
    """The driver hashed a zipped scorer as the zip's bytes, a scorer in a directory as its files:
    the same code on the driver's PYTHONPATH and shipped to executors as `--py-files code.zip`
    had two digests (the executors' check refused it), and a zip made again from unchanged files
    (other timestamps) re-tagged. A zip's members are hashed as the directory's files are: a
    module alone, a package's Python sources, also under a path inside the zip."""
    import zipfile

    from filters.quality import scorer_source

    files = {"zdigest_mod.py": _SCORER_CODE.format(helper="", scale=100),
             "zdigest_pkg/__init__.py": "",
             "zdigest_pkg/scorer.py": _SCORER_CODE.format(helper="from zdigest_pkg.sub.helper import SCALE",
                                                          scale="SCALE"),
             "zdigest_pkg/sub/__init__.py": "",
             "zdigest_pkg/sub/helper.py": "SCALE = 100\n",
             "zdigest_pkg/__pycache__/junk.py": "not hashed",
             "zdigest_pkg/notes.txt": "not code"}
    for rel, text in files.items():
        (tmp_path / "tree" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / rel).write_text(text)
    scorers = ("zdigest_mod:Scorer", "zdigest_pkg.scorer:Scorer", "zdigest_pkg:Scorer")
    (tmp_path / "tree" / "zdigest_pkg" / "__init__.py").write_text("from zdigest_pkg.scorer import Scorer\n")
    files["zdigest_pkg/__init__.py"] = "from zdigest_pkg.scorer import Scorer\n"

    def forget():
        for name in [n for n in sys.modules if n.startswith("zdigest_")]:
            sys.modules.pop(name)

    def digests(entry: str) -> list[str]:
        forget()
        with monkeypatch.context() as m:
            m.syspath_prepend(entry)
            found = [scorer_source(s) for s in scorers]
            assert all(f is not None and f[0].startswith(entry) for f in found), found
            return [f[1] for f in found]

    try:
        from_tree = digests(str(tmp_path / "tree"))
        assert from_tree[1] == from_tree[2] != from_tree[0]  # a package is hashed whole, whichever module is named
        for name, inside in (("flat.zip", ""), ("nested.zip", "lib/py/")):
            with zipfile.ZipFile(tmp_path / name, "w") as zf:
                zf.writestr(f"{inside}README", "not code")
                for rel, text in files.items():
                    zf.writestr(inside + rel, text)
            entry = str(tmp_path / name) + (f"/{inside.rstrip('/')}" if inside else "")
            assert digests(entry) == from_tree, name
        with zipfile.ZipFile(tmp_path / "edited.zip", "w") as zf:
            for rel, text in files.items():
                zf.writestr(rel, text.replace("SCALE = 100", "SCALE = 1000"))
        edited = digests(str(tmp_path / "edited.zip"))
        assert edited[0] == from_tree[0] and edited[1] != from_tree[1]  # the helper's edit: the package's digest
    finally:
        forget()


@pytest.mark.parametrize("imported_by", ["filter", "package"])
def test_a_worker_that_imported_a_scorer_to_mix_and_tags_after_an_edit_scores_with_the_new_code(tmp_path,
                                                                                                monkeypatch,
                                                                                                imported_by):
    """A Spark Python worker imports a scorer wherever it builds the filter: a mix task that only
    decides from stored scores (`dolmino.build.pool.pool_bundle`) too. The tag check took its
    first sight of the files as the code the worker ran: a notebook that mixed, edited a helper
    of its scorer and tagged again stored the old code's scores under the new code's key (found
    by a tester). The code is recorded when it is imported, so the tag imports it again; a module
    imported otherwise (by its package's other modules) is imported again, its code unknown."""
    import importlib

    from filters import quality
    from filters.registry import build_filter

    pkg = tmp_path / "mixed_then_tagged_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("SCALE = 100\n")
    (pkg / "scorer.py").write_text(_SCORER_CODE.format(helper="from mixed_then_tagged_pkg.helper import SCALE",
                                                       scale="SCALE"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(quality, "_LOADED_SOURCE", {})
    spec = {"type": "score_threshold", "scorer": "mixed_then_tagged_pkg.scorer:Scorer", "min_score": 0.0}
    docs = [{"text": "x" * 50}]
    try:
        if imported_by == "filter":
            assert build_filter(spec).tag(docs)["score"].tolist() == [0.5]  # the mix task's import
        else:
            importlib.import_module("mixed_then_tagged_pkg.scorer")
        (pkg / "helper.py").write_text("SCALE = 1000\n")  # another size: no stale .pyc
        keyed = f"sha256:{quality.scorer_source(spec['scorer'])[1]}"  # the driver's key for the edited code
        tagging = build_filter(spec)  # as `dolmino.build.tag.tag_bundle`: build, check, score
        tagging.check_source(keyed)
        assert tagging.tag(docs)["score"].tolist() == [0.05]
    finally:
        for name in [n for n in sys.modules if n.startswith("mixed_then_tagged_pkg")]:
            sys.modules.pop(name)


def test_a_scorer_package_with_a_symlinked_subpackage_is_hashed_with_its_files(tmp_path, monkeypatch):
    """Python imports a package's symlinked subdirectory, and `zip -r` stores its files, but the
    directory's digest left them out: the same code on the driver's PYTHONPATH and in a
    --py-files zip had two digests (the executors' check refused it), and an edit of a helper in
    it was not noticed (found by a tester). A link to a directory holding its own is not followed."""
    import zipfile

    from filters.quality import scorer_source

    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "__init__.py").write_text("")
    (tmp_path / "shared" / "helper.py").write_text("SCALE = 100\n")
    pkg = tmp_path / "tree" / "symlinked_sub_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "scorer.py").write_text(_SCORER_CODE.format(helper="from symlinked_sub_pkg.shared.helper import SCALE",
                                                       scale="SCALE"))
    (pkg / "shared").symlink_to(tmp_path / "shared", target_is_directory=True)
    (pkg / "loop").symlink_to(tmp_path / "tree", target_is_directory=True)  # a cycle: not followed
    with zipfile.ZipFile(tmp_path / "code.zip", "w") as zf:  # as `zip -r code.zip symlinked_sub_pkg/`
        for rel in ("__init__.py", "scorer.py", "shared/__init__.py", "shared/helper.py"):
            zf.write(pkg / rel, f"symlinked_sub_pkg/{rel}")

    def digest(entry) -> str:
        for name in [n for n in sys.modules if n.startswith("symlinked_sub_pkg")]:
            sys.modules.pop(name)
        with monkeypatch.context() as m:
            m.syspath_prepend(str(entry))
            return scorer_source("symlinked_sub_pkg.scorer:Scorer")[1]

    try:
        from_tree = digest(tmp_path / "tree")
        assert digest(tmp_path / "code.zip") == from_tree
        (tmp_path / "shared" / "helper.py").write_text("SCALE = 1000\n")
        assert digest(tmp_path / "tree") != from_tree
    finally:
        for name in [n for n in sys.modules if n.startswith("symlinked_sub_pkg")]:
            sys.modules.pop(name)
