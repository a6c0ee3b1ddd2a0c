"""fastText inference in numba (filters/fasttext_numba.py) against the fastText binding.

Bigram classifiers (wordNgrams 2, as DCLM's) with softmax and one-vs-all losses are trained
on real text in a fresh interpreter; both engines then score held-out documents of every
shared-corpus source plus inputs that exercise fastText's tokenizer corners: label words,
`</s>`, every whitespace byte it splits on, non-ASCII bytes (its signed-char hash), empty
lines. fastText's own float32 order of operations must agree to float rounding; the
projected path (output layer folded into the rows, float64 sums) to 1e-5.
"""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, shared_corpus_file
from dolmino.documents import Quarantine, read_documents
from filters.fasttext_numba import fasttext_hash, load_fasttext_numba
from filters.quality import FastTextModel, FastTextQualityFilter, _numba_text, dclm_line

_TRAIN = """
import sys, fasttext
train, out, loss, quantized = sys.argv[1:5]
m = fasttext.train_supervised(train, epoch=4, wordNgrams=2, dim=16, bucket=50000, loss=loss, thread=1, verbose=0,
                              seed=0)
m.save_model(out)
if quantized:
    m.quantize(cutoff=500, dsub=4)
    m.save_model(quantized)
"""

CORNERS = [
    "", "   ", "\n\n", "__label__pos", "__label__pos the result", "__label__unknown the result",
    "the __label__neg result", "</s>", "a </s> b", "a\tb\x0bc\x0cd\re\x00f\ng",
    "héllo wörld ünïcode 日本語 ∑∫∂",
    "\x80\xff", "x " * 30_000, "the " * 5000, "word" * 5000, "THE The the tHe", "a" * 300 + " " + "b" * 9,
    # Unicode whitespace at the edges and Unicode line ends inside: DCLM's strip() and splitlines()
    # remove / break at them, fastText's own word split does not (the engines disagreed; a tester).
    "\xa0 the result ", "\u3000 the result\u3000", "the\u2028result", "the\x85result", "the\x1cresult",
    "the\u2029result\x1d\x1e", "\x1f the result \x1f",
]


def _texts(name: str, start: int, n: int) -> list[str]:
    path = str(shared_corpus_file(name))
    return [doc["text"] for _, doc in itertools.islice(read_documents(path, Quarantine()), start, start + n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ftnumba")
    pos = _texts("academic.jsonl.zst", 0, 150) + _texts("encyclopedic.jsonl.zst", 0, 150)
    neg = _texts("code.jsonl.zst", 0, 150) + _texts("web.jsonl.zst", 0, 150)
    rows = [f"__label__pos {dclm_line(t)}" for t in pos] + [f"__label__neg {dclm_line(t)}" for t in neg]
    train = d / "train.txt"
    train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    paths = {}
    for loss in ("softmax", "ova"):
        paths[loss] = str(d / f"{loss}.bin")
        quantized = str(d / f"{loss}.ftz") if loss == "softmax" else ""
        proc = subprocess.run([sys.executable, "-c", _TRAIN, str(train), paths[loss], loss, quantized], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    paths["ftz"] = str(d / "softmax.ftz")
    return paths


@pytest.fixture(scope="module")
def held_out():
    docs = []
    for name in ("web.jsonl.zst", "code.jsonl.zst", "encyclopedic.jsonl.zst", "academic.jsonl.zst"):
        docs += _texts(name, 150, 60)
    return docs + CORNERS


def _binding_probs(path: str, texts: list[str], label: str) -> np.ndarray:
    model = FastTextModel(path, engine="fasttext")
    return np.array([model.label_probability(t, label) for t in texts])


@pytest.mark.parametrize("loss", ["softmax", "ova"])
def test_numba_matches_the_binding(models, held_out, loss):
    expected = _binding_probs(models[loss], held_out, "__label__pos")
    assert 0.05 < np.mean(expected >= 0.5) < 0.95  # a model that separates, not a constant
    # fastText sums rows in float32; the projected path in float64, so long lines drift apart by ~1e-6.
    for projected, tol in ((False, 1e-6), (True, 1e-5)):
        fast = load_fasttext_numba(models[loss], projected=projected)
        assert fast is not None and (fast.projected is not None) == projected
        index = fast.labels.index("__label__pos")
        got = np.array([0.0 if (p := fast.probabilities(_numba_text(t))) is None else p[index] for t in held_out])
        worst = int(np.argmax(np.abs(got - expected)))
        assert abs(got[worst] - expected[worst]) <= tol, (projected, repr(held_out[worst][:80]))


def test_default_engine_is_numba_and_agrees_with_labels(models, held_out):
    auto = FastTextModel(models["softmax"])
    assert auto.fast and auto._model is None  # the binding is never loaded
    assert auto._labels() == frozenset(FastTextModel(models["softmax"], engine="fasttext").model.get_labels())
    got = auto.label_probabilities(held_out[:20])
    ref = FastTextModel(models["softmax"], engine="fasttext").label_probabilities(held_out[:20])
    for a, b in zip(got, ref):
        assert set(a) == set(b) and all(abs(a[k] - b[k]) < 1e-6 for k in a)
    # Filters pickle as the path: the memory-mapped matrices never travel to executors.
    f = FastTextQualityFilter(models["softmax"], "__label__pos", threshold=0.5)
    decisions = [f.reject_reason({"text": t}) for t in held_out]
    g = pickle.loads(pickle.dumps(f))
    assert g.scorer.model._fast is None and g.scorer.model.engine == "auto"
    assert [g.reject_reason({"text": t}) for t in held_out] == decisions


def test_quantized_models_fall_back_to_the_binding(models, held_out):
    assert load_fasttext_numba(models["ftz"]) is None
    auto = FastTextModel(models["ftz"])
    assert auto.fast is False
    p = auto.label_probability(held_out[0], "__label__pos")
    assert 0 <= p <= 1 + 1e-4 and auto._model is not None
    with pytest.raises(ValueError, match="engine='fasttext'"):
        FastTextModel(models["ftz"], engine="numba").label_probability("x", "__label__pos")
    with pytest.raises(ValueError, match="engine"):
        FastTextModel(models["ftz"], engine="gpu")


def test_truncated_model_is_a_clear_error(models, tmp_path):
    data = open(models["softmax"], "rb").read()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="input matrix"):
        load_fasttext_numba(str(cut))
    not_fasttext = tmp_path / "x.bin"
    not_fasttext.write_bytes(b"\0" * 100)
    assert load_fasttext_numba(str(not_fasttext)) is None  # wrong magic: left to the binding, which says why


def test_a_pruned_dictionary_is_left_to_the_binding(models, tmp_path):
    """fastText calls a dictionary pruned when its pruneidx_size is >= 0 (-1: not pruned) and refuses such a
    .bin unless quantized; the numba reader took 0 for unpruned and scored the model, word n-grams and all,
    where the binding says "Invalid model file" (found by a tester)."""
    import struct

    data = bytearray(open(models["softmax"], "rb").read())
    offset = 64 + 12 + 8  # header, then nwords / size / nlabels (int32), ntokens (int64), pruneidx_size (int64)
    assert struct.unpack_from("<q", data, offset)[0] == -1
    struct.pack_into("<q", data, offset, 0)
    pruned = tmp_path / "pruned.bin"
    pruned.write_bytes(bytes(data))
    assert load_fasttext_numba(str(pruned)) is None
    assert load_fasttext_numba(models["softmax"]) is not None


def test_hash_is_fasttexts_fnv1a_with_signed_chars():
    assert fasttext_hash(b"") == 2166136261
    assert fasttext_hash(b"a") == ((2166136261 ^ 0x61) * 16777619) & 0xFFFFFFFF
    # Bytes >= 0x80 are sign-extended (fastText hashes int8_t chars): not plain FNV-1a.
    plain = ((2166136261 ^ 0xE9) * 16777619) & 0xFFFFFFFF
    assert fasttext_hash(b"\xe9") == ((2166136261 ^ 0xFFFFFFE9) * 16777619) & 0xFFFFFFFF != plain


def test_big_line_does_not_allocate_for_the_worst_case(models):
    fast = load_fasttext_numba(models["softmax"])
    text = "lorem ipsum dolor sit amet " * 100_000  # 2.7 MB, 500k words
    p = fast.probabilities(text)
    ref = FastTextModel(models["softmax"], engine="fasttext").label_probability(text, "__label__pos")
    assert abs(p[fast.labels.index("__label__pos")] - ref) < 1e-6
    assert os.path.getsize(models["softmax"]) > 0


def test_a_process_loads_each_model_once(models, tmp_path):
    """The build makes filters per file task: a worker must not reload the model for every file."""
    a = FastTextQualityFilter(models["ova"], "__label__pos", threshold=0.5)
    b = pickle.loads(pickle.dumps(a))  # what an executor gets for its next task
    a.reject_reason({"text": "some words"})
    b.reject_reason({"text": "some words"})
    assert a.scorer.model.fast is b.scorer.model.fast
    # A model rewritten in place is a different model.
    copy = tmp_path / "m.bin"
    copy.write_bytes(open(models["ova"], "rb").read())
    first = FastTextModel(str(copy)).fast
    os.utime(copy, ns=(1, 1))
    assert FastTextModel(str(copy)).fast is not first


def test_both_engines_score_the_text_as_dclm_does(models, held_out):
    """DCLM's classify_fasttext_hq_prob predicts on `" ".join(text.strip().splitlines())`: both
    engines, through the filter, give that probability (the numba engine scored the raw text,
    the binding stripped ASCII newlines only; a no-break space at an edge moved a document
    across the threshold in one engine; found by a tester)."""
    import fasttext

    raw = fasttext.load_model(models["softmax"])
    dclm = []
    for text in held_out:
        labels, probs = raw.predict(" ".join(text.strip().splitlines()), k=-1)
        dclm.append(dict(zip(labels, probs)).get("__label__pos", 0.0))
    for engine in ("numba", "fasttext"):
        filt = FastTextQualityFilter(models["softmax"], label="__label__pos", engine=engine)
        got = filt.tag([{"text": t} for t in held_out])["score"]
        worst = int(np.argmax(np.abs(got - np.asarray(dclm))))
        assert abs(got[worst] - dclm[worst]) <= 1e-5, (engine, repr(held_out[worst][:80]))
