"""The FineWeb-Edu classifier filter against a plain transformers loop, on a tiny random BERT.

The real model (HuggingFaceFW/fineweb-edu-classifier) cannot be downloaded here, so the
fixture builds one of the same kind: a WordPiece tokenizer trained on shared-corpus text and
a randomly initialised BertForSequenceClassification with one regression output, both saved
with save_pretrained. Its classifier head is rescaled so that the scores of real documents
spread over 0-5 and the threshold has documents on both sides. The reference is the model
card's loop, written out here: tokenizer(batch, padding="longest", truncation=True), logits
squeezed, int_score = int(round(max(0, min(score, 5)))).
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re

import numpy as np
import pytest
import torch

from conftest import shared_corpus_file
from dolmino.documents import Quarantine, read_documents, write_documents
from dolmino.errors import ManifestError, ResourceError
from filters import fineweb_edu
from filters.base import decide, tag_columns, tag_params
from filters.fineweb_edu import FineWebEduFilter, int_score, local_model_dir
from filters.registry import build_filter

MAX_LENGTH = 64        # the tokenizer's model_max_length (the real model: 512)
POSITIONS = 128        # the model's max_position_embeddings


def _texts(name: str, n: int) -> list[str]:
    path = str(shared_corpus_file(name))
    return [doc["text"] for _, doc in itertools.islice(read_documents(path, Quarantine()), n)]


def _tokenizer(texts: list[str], model_max_length: int | None):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=1000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    return BertTokenizerFast(tokenizer_object=tok, **kwargs)


def _model(vocab_size: int, num_labels: int = 1):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=POSITIONS, num_labels=num_labels,
                        problem_type="regression" if num_labels == 1 else None, initializer_range=0.2)
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


def _reference(model_dir: str, texts: list[str], batch_size: int, max_length: int | None = None):
    """The model card's loop: (scores, int_scores)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    extra = {"max_length": max_length} if max_length else {}
    scores = []
    for i in range(0, len(texts), batch_size):
        inputs = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding="longest", truncation=True, **extra)
        with torch.no_grad():
            scores += model(**inputs).logits.squeeze(-1).float().numpy().tolist()
    return np.asarray(scores), [int(round(max(0, min(s, 5)))) for s in scores]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    """Real documents of very different lengths (a few words to tens of thousands), plus edge cases."""
    texts = _texts("encyclopedic.jsonl.zst", 30) + _texts("code.jsonl.zst", 30) + _texts("academic.jsonl.zst", 20)
    cuts = itertools.cycle([40, 400, 4000, None])
    out = [{"id": f"d{i}", "text": t[:next(cuts)]} for i, t in enumerate(texts)]
    return out + [{"id": "empty", "text": ""}, {"id": "no-text"}, {"id": "one-word", "text": "dictionary"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, docs) -> str:
    texts = [d["text"] for d in docs if d.get("text")]
    tokenizer = _tokenizer(texts, MAX_LENGTH)
    model = _model(tokenizer.vocab_size)
    # Rescale the head so that these documents' scores spread over [-0.5, 5.5].
    inputs = tokenizer(texts, return_tensors="pt", padding="longest", truncation=True)
    with torch.no_grad():
        raw = model(**inputs).logits.squeeze(-1)
        lo, hi = raw.min().item(), raw.max().item()
        a = 6.0 / (hi - lo)
        model.classifier.weight.mul_(a)
        model.classifier.bias.copy_(a * (model.classifier.bias - lo) - 0.5)
        # Keep every score well away from a rounding edge (x.5): the tests compare int scores,
        # and a score 1e-4 from an edge rounds differently on another CPU's matmul kernels.
        scores = model(**inputs).logits.squeeze(-1).numpy().astype(np.float64)
        model.classifier.bias.add_(_shift_off_edges(scores, margin=0.005))
    path = tmp_path_factory.mktemp("edu") / "model"
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


def _shift_off_edges(scores: np.ndarray, margin: float) -> float:
    """The smallest shift (in steps of margin / 4) that leaves every score margin away from a x.5 edge."""
    for step in range(200):
        for shift in (step * margin / 4, -step * margin / 4):
            if (np.abs((scores + shift) % 1 - 0.5) > margin).all():
                return shift
    raise AssertionError("no shift keeps the fixture's scores away from rounding edges")


def _texts_of(docs):
    return [d.get("text") or "" for d in docs]


# ---------------------------------------------------------------------------- scores


def test_scores_equal_the_model_card_loop(model_dir, docs):
    ref_scores, ref_int = _reference(model_dir, _texts_of(docs), batch_size=8)
    # The comparison below is meaningful only if no score sits on a rounding edge.
    frac = np.abs(np.clip(ref_scores, 0, 5) % 1 - 0.5)
    assert frac.min() > 1e-4
    assert len(set(ref_int)) >= 4 and min(ref_int) < 2 <= max(ref_int)   # both sides of the threshold
    columns = FineWebEduFilter(model_dir, batch_size=8).tag(docs)
    assert set(columns) == {"score", "int_score"}
    assert columns["score"].dtype == np.float64 and columns["int_score"].dtype == np.int64
    np.testing.assert_allclose(columns["score"], ref_scores, rtol=0, atol=1e-5)
    assert columns["int_score"].tolist() == ref_int
    # One document at a time (no padding at all) agrees too.
    one_by_one, _ = _reference(model_dir, _texts_of(docs), batch_size=1)
    np.testing.assert_allclose(columns["score"], one_by_one, rtol=0, atol=1e-5)


def test_batch_size_does_not_change_scores(model_dir, docs):
    baseline = FineWebEduFilter(model_dir, batch_size=1).tag(docs)
    for batch_size in (3, 16, 1000):
        columns = FineWebEduFilter(model_dir, batch_size=batch_size).tag(docs)
        np.testing.assert_allclose(columns["score"], baseline["score"], rtol=0, atol=1e-5)
        assert columns["int_score"].tolist() == baseline["int_score"].tolist()
    # Order of documents in a call does not matter either (batches are formed by length).
    reordered = FineWebEduFilter(model_dir, batch_size=5).tag(docs[::-1])
    np.testing.assert_allclose(reordered["score"][::-1], baseline["score"], rtol=0, atol=1e-5)
    assert all(len(v) == 0 for v in FineWebEduFilter(model_dir).tag([]).values())


def test_truncation_follows_the_tokenizer_like_the_model_card(model_dir, docs, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    long_text = next(d["text"] for d in docs if len(d.get("text") or "") > 20_000)
    assert len(tokenizer(long_text)["input_ids"]) > 10 * MAX_LENGTH
    filt = FineWebEduFilter(model_dir)
    assert filt.scorer.loaded()[3] == MAX_LENGTH
    # Only the first MAX_LENGTH tokens count: another ending changes nothing.
    same_head = [long_text, long_text + " completely different ending " * 500, long_text[:len(long_text) // 2]]
    scores = filt.tag([{"text": t} for t in same_head])["score"]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) == pytest.approx(scores[2], abs=1e-6)
    ref, _ = _reference(model_dir, same_head, batch_size=3)
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-5)
    # An explicit max_length truncates there, as `truncation=True, max_length=32` does.
    texts = _texts_of(docs)[:24]
    ref32, _ = _reference(model_dir, texts, batch_size=4, max_length=32)
    np.testing.assert_allclose(FineWebEduFilter(model_dir, max_length=32).tag([{"text": t} for t in texts])["score"],
                               ref32, rtol=0, atol=1e-5)
    assert not np.allclose(ref32, _reference(model_dir, texts, batch_size=4)[0], atol=1e-3)
    with pytest.raises(ValueError, match=f"max_length 200 exceeds the {POSITIONS} positions"):
        FineWebEduFilter(model_dir, max_length=200).tag(docs[:1])


def test_tokenizer_without_a_length_limit_truncates_at_the_model_positions(model_dir, docs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    texts = _texts_of(docs)
    unlimited = tmp_path / "unlimited"
    tokenizer = _tokenizer([t for t in texts if t], None)
    assert tokenizer.model_max_length > 10**6
    tokenizer.save_pretrained(unlimited)
    AutoModelForSequenceClassification.from_pretrained(model_dir).save_pretrained(unlimited)
    filt = FineWebEduFilter(str(unlimited))
    assert filt.scorer.loaded()[3] == POSITIONS
    ref, _ = _reference(str(unlimited), texts, batch_size=8, max_length=POSITIONS)
    np.testing.assert_allclose(filt.tag(docs)["score"], ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- decisions


def test_int_score_rounds_like_the_model_card():
    for s in (-3.0, -0.5, 0.0, 0.49, 0.5, 0.51, 1.5, 1.9999, 2.5, 2.5001, 3.5, 4.5, 4.51, 5.0, 9.0,
              float(np.float32(2.4999999))):
        assert int_score(s) == int(round(max(0, min(s, 5))))
    assert [int_score(s) for s in (0.5, 1.5, 2.5, 3.5, 4.5)] == [0, 2, 2, 4, 4]   # half to even
    assert int_score(-7) == 0 and int_score(12) == 5


def test_threshold_decisions_and_tag_decide_split(model_dir, docs):
    filt = FineWebEduFilter(model_dir)
    assert filt.min_int_score == 2 and filt.reason == "int_score<2"
    columns = tag_columns(filt, docs)
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    verdicts = [decide(filt, row) for row in rows]
    assert verdicts == [None if r["int_score"] >= 2 else "int_score<2" for r in rows]
    assert verdicts == [filt.reject_reason(d) for d in docs]
    assert 0 < verdicts.count(None) < len(docs)
    # The threshold is a decision on the stored attribute: no re-scoring.
    for k in range(6):
        f = FineWebEduFilter(model_dir, min_int_score=k)
        assert [f.decide(r) for r in rows] == [None if r["int_score"] >= k else f"int_score<{k}" for r in rows]
    assert FineWebEduFilter(model_dir, min_int_score=0).decide({"int_score": 0, "score": -3.0}) is None
    assert filt.decide({"int_score": 2, "score": 1.5}) is None          # 1.5 rounds to 2: kept
    assert filt.decide({"int_score": 1, "score": 1.49}) == "int_score<2"


def test_registry_tag_params_and_pickle(model_dir, docs):
    spec = {"type": "fineweb_edu", "model_path": model_dir, "min_int_score": 3, "batch_size": 64,
            "device": "cpu", "torch_threads": 1}
    filt = build_filter(spec)
    assert isinstance(filt, FineWebEduFilter) and filt.min_int_score == 3
    # Thresholds, batch size, device and threads do not change the scores: not tag parameters.
    assert tag_params(filt, spec) == {"model_path": model_dir}
    assert tag_params(filt, {**spec, "max_length": 32, "dtype": "bfloat16"}) == {
        "model_path": model_dir, "max_length": 32, "dtype": "bfloat16"}
    before = pickle.dumps(filt)
    filt.tag(docs[:4])
    after = pickle.dumps(filt)
    assert len(before) < 4000 and len(after) < 4000                    # the model never travels
    clone = pickle.loads(after)
    np.testing.assert_allclose(clone.tag(docs[:4])["score"], filt.tag(docs[:4])["score"], atol=1e-6)
    for bad, field in (({"min_int_score": 6}, "min_int_score"), ({"min_int_score": 2.0}, "min_int_score"),
                       ({"batch_size": 0}, "batch_size"), ({"dtype": "int8"}, "dtype"),
                       ({"max_length": -1}, "max_length"), ({"device": "tpu"}, "device"),
                       ({"device": "cuda:x"}, "device"), ({"device": "cudax"}, "device"),
                       ({"torch_threads": 0}, "torch_threads"), ({"threshold": 2}, "threshold")):
        with pytest.raises(ManifestError, match=rf"src\.filters\[0\]\.{field}"):
            build_filter({"type": "fineweb_edu", "model_path": model_dir, **bad}, where="src.filters[0]")
    with pytest.raises(ManifestError, match=r"src\.filters\[0\]\.model_path: required"):
        build_filter({"type": "fineweb_edu"}, where="src.filters[0]")


def test_missing_model_and_wrong_head(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*hub names are not downloaded"):
        FineWebEduFilter(str(tmp_path / "nope")).reject_reason({"text": "x"})
    from transformers import AutoTokenizer

    three = tmp_path / "three"
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(three)
    _model(1000, num_labels=3).save_pretrained(three)
    with pytest.raises(ResourceError, match="3 outputs.*num_labels=1"):
        FineWebEduFilter(str(three)).reject_reason({"text": "some text"})


def test_a_directory_that_is_not_a_model_is_a_resource_error(model_dir, tmp_path):
    """One line naming the directory and what is wrong (a build prints a ResourceError raised in
    an executor as one line), not transformers' error from deep inside its loaders."""
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "model.bin"
    a_file.write_text("this is not a model\n")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(model_dir, no_weights)
    for weights in no_weights.glob("*.safetensors"):
        weights.unlink()
    bad_config = tmp_path / "bad-config"
    shutil.copytree(model_dir, bad_config)
    (bad_config / "config.json").write_text("{not json")
    cut = tmp_path / "cut-weights"  # a download or copy cut short: safetensors' own error, an "unexpected" one
    shutil.copytree(model_dir, cut)
    for weights in cut.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    for path, why in ((empty, "has no config.json"), (a_file, "is a file"), (no_weights, "cannot be loaded: "),
                      (bad_config, "cannot be loaded: "), (cut, "cannot be loaded: ")):
        with pytest.raises(ResourceError, match=f"^model directory '{path}' {why}") as info:
            FineWebEduFilter(str(path)).reject_reason({"text": "x"})
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_score_that_is_no_number_is_a_resource_error_not_a_verdict(model_dir, docs, tmp_path, bad):
    """A model whose output is NaN (a damaged checkpoint, a float16 overflow) rounded to int_score 0, and
    +inf to 5: every document of the source was removed, or kept, as if scored (found by a tester)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    broken = tmp_path / "broken"
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(broken)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        model.classifier.bias.fill_(bad)
    model.save_pretrained(broken)
    filt = FineWebEduFilter(str(broken))
    with pytest.raises(ResourceError, match=rf"^model {re.escape(repr(str(broken)))} scored {bad} for 3 of 3 "
                                             r"documents, the first 'd0' \(dtype float32\)"):
        filt.tag(docs[:3])
    with pytest.raises(ResourceError, match="no number"):
        filt.reject_reason(docs[0])

def test_bfloat16_scores_close_to_float32(model_dir, docs):
    f32 = FineWebEduFilter(model_dir).tag(docs)["score"]
    bf16 = FineWebEduFilter(model_dir, dtype="bfloat16").tag(docs)["score"]
    assert np.abs(bf16 - f32).max() < 0.25 and not np.array_equal(bf16, f32)


# ---------------------------------------------------------------------------- s3, Spark, CLI


def test_model_from_s3_downloads_once(s3_server, model_dir, docs, tmp_path, monkeypatch):
    from dolmino import s3

    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fineweb_edu, "_S3_MODEL_DIRS", {})
    monkeypatch.setattr(fineweb_edu, "_LOADED", {})
    bucket = "dolmino-edu-model"
    s3.client().create_bucket(Bucket=bucket)
    files = sorted(os.listdir(model_dir))
    for name in files:
        s3.client().upload_file(os.path.join(model_dir, name), bucket, f"classifiers/edu/{name}")
    s3.client().put_object(Bucket=bucket, Key="classifiers/edu/", Body=b"")         # a directory marker
    uri = f"s3://{bucket}/classifiers/edu/"
    expected = FineWebEduFilter(model_dir).tag(docs)
    got = FineWebEduFilter(uri).tag(docs)
    np.testing.assert_allclose(got["score"], expected["score"], rtol=0, atol=1e-6)
    local = local_model_dir(uri)
    assert local == str(tmp_path / "cache" / "models" / "s3" / bucket / "classifiers" / "edu")
    assert sorted(n for n in os.listdir(local) if not n.startswith(".")) == files
    # Once per process: no S3 request at all the second time.
    calls = []
    monkeypatch.setattr(s3, "download_prefix", lambda *a: calls.append(a))
    assert local_model_dir(uri) == local and calls == []
    monkeypatch.undo()
    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "cache"))
    # A new process (empty memo) re-lists but fetches nothing unchanged; a changed object is fetched.
    monkeypatch.setattr(fineweb_edu, "_S3_MODEL_DIRS", {})
    stamps = {n: os.stat(os.path.join(local, n)).st_mtime_ns for n in files}
    assert local_model_dir(uri) == local
    assert {n: os.stat(os.path.join(local, n)).st_mtime_ns for n in files} == stamps
    config = json.loads(open(os.path.join(local, "config.json")).read())
    config["dolmino_test_marker"] = 1
    s3.client().put_object(Bucket=bucket, Key="classifiers/edu/config.json", Body=json.dumps(config).encode())
    monkeypatch.setattr(fineweb_edu, "_S3_MODEL_DIRS", {})
    local_model_dir(uri)
    assert json.loads(open(os.path.join(local, "config.json")).read())["dolmino_test_marker"] == 1
    with pytest.raises(FileNotFoundError, match="no objects under this prefix"):
        local_model_dir(f"s3://{bucket}/classifiers/missing/")


@pytest.mark.slow
def test_spark_workers_score_with_one_thread(spark, model_dir, docs):
    filt = FineWebEduFilter(model_dir, batch_size=4)
    expected = filt.tag(docs)["score"]

    def score_partition(part):
        import torch as t
        part = list(part)
        columns = filt.tag(part)
        yield t.get_num_threads(), columns["score"].tolist()

    results = spark.sparkContext.parallelize(docs, 2).mapPartitions(score_partition).collect()
    assert [threads for threads, _ in results] == [1, 1]
    np.testing.assert_allclose([s for _, scores in results for s in scores], expected, rtol=0, atol=1e-5)


def test_cli_score_histogram(model_dir, docs, tmp_path, capsys):
    path = tmp_path / "docs.jsonl.zst"
    write_documents(str(path), [d for d in docs if d.get("text")])
    out = tmp_path / "scores.jsonl"
    assert fineweb_edu.main(["score", "--model", model_dir, "--input", str(path), "--out", str(out),
                             "--batch-size", "8"]) == 0
    summary = json.loads(capsys.readouterr().out)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    ints = [r["int_score"] for r in written]
    assert summary["docs"] == len(written) == sum(1 for d in docs if d.get("text"))
    assert summary["int_score_histogram"] == {str(k): ints.count(k) for k in range(6)}
    assert summary["share_kept_at"][">=2"] == pytest.approx(sum(i >= 2 for i in ints) / len(ints))
    assert summary["share_kept_at"][">=0"] == 1.0


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--max-length", "0"], "--max-length must be a positive integer, got 0"),
    (["--max-length", str(POSITIONS + 1)], f"--max-length {POSITIONS + 1} exceeds the {POSITIONS} positions"),
    (["--device", "tpu"], "--device must be 'auto', 'cpu' or 'cuda[:N]', got 'tpu'"),
    (["--device", "cuda:x"], "--device must be 'auto', 'cpu' or 'cuda[:N]', got 'cuda:x'"),
    (["--device", "cuda"], "--device 'cuda' asked for, but CUDA is not available"),
    (["--model", "{tmp}/nope"], "model directory '{tmp}/nope' does not exist"),
    (["--model", "{model}/config.json"], "model directory '{model}/config.json' is a file"),
    (["--out", "{tmp}"], "--out {tmp} is a directory: name a file in it"),
    (["--out", "{tmp}/scores.txt"], "--out {tmp}/scores.txt: unknown document file suffix"),
    (["--out", "{tmp}/./docs.jsonl"], "--out {tmp}/./docs.jsonl is the same file as --input {tmp}/docs.jsonl"),
])
def test_cli_argument_errors_are_one_line_before_scoring(model_dir, docs, tmp_path, capsys, monkeypatch, args,
                                                         message):
    """Each was a traceback with exit 1, some after the whole input was scored; an --out naming
    the input replaced it with scores, exit 0 (found by a tester)."""
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    path = tmp_path / "docs.jsonl"
    write_documents(str(path), docs[:4])
    before = path.read_bytes()
    monkeypatch.setattr(FineWebEduFilter, "tag", lambda *a: pytest.fail("scored before its arguments were checked"))
    args = [a.format(tmp=tmp_path, model=model_dir) for a in args]
    argv = ["score", "--model", model_dir, "--input", str(path), *args]
    assert fineweb_edu.main(argv) == 2
    err = capsys.readouterr().err
    message = message.format(tmp=tmp_path, model=model_dir)
    assert err.startswith(f"python -m filters.fineweb_edu score: error: {message}"), err
    assert err.count("\n") == 1
    assert path.read_bytes() == before


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_cli_out_is_compressed_by_its_suffix(model_dir, docs, tmp_path, suffix):
    """A .zst --out held plain JSON lines (found by a tester)."""
    import gzip

    import zstandard

    path = tmp_path / "docs.jsonl"
    write_documents(str(path), docs[:5])
    out = tmp_path / f"scores{suffix}"
    assert fineweb_edu.main(["score", "--model", model_dir, "--input", str(path), "--out", str(out)]) == 0
    raw = out.read_bytes()
    text = zstandard.ZstdDecompressor().stream_reader(raw).read() if suffix.endswith(".zst") else gzip.decompress(raw)
    assert [json.loads(line)["id"] for line in text.decode().splitlines()] == [d["id"] for d in docs[:5]]


def test_auto_device_is_the_gpu_spark_gave_the_task(monkeypatch):
    """Under a cluster's GPU scheduling each task is given GPU addresses; "auto" ran every task of a
    multi-GPU node on the first GPU (cuda), the others idle. An explicit device is kept."""
    from pyspark import TaskContext
    from pyspark.resource import ResourceInformation

    class Task:
        def __init__(self, resources):
            self._resources = resources

        def resources(self):
            return self._resources

    def running(task):
        monkeypatch.setattr(TaskContext, "get", classmethod(lambda cls: task))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    running(Task({"gpu": ResourceInformation("gpu", ["3", "5"])}))
    assert fineweb_edu._resolve_device("auto") == "cuda:3"
    assert fineweb_edu._resolve_device("cuda:1") == "cuda:1"
    running(Task({}))  # a task of a cluster without GPU scheduling
    assert fineweb_edu._resolve_device("auto") == "cuda"
    running(None)  # the driver, or a plain process
    assert fineweb_edu._resolve_device("auto") == "cuda"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the node's GPU 3 is this process's cuda:1
    running(Task({"gpu": ResourceInformation("gpu", ["3"])}))
    assert fineweb_edu._resolve_device("auto") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fineweb_edu._resolve_device("auto") == "cpu"


def test_cpu_scoring_in_a_task_takes_the_cores_spark_reserved_for_it(monkeypatch):
    """`spark.task.cpus=4` (an operator giving each scoring task 4 cores) scored on one torch thread, 3 of the
    task's cores idle, while the task's dolma2 tokenizer took all 4. An explicit `torch_threads` is kept, and
    outside a task torch keeps its own default."""
    from pyspark import TaskContext

    class Task:
        def __init__(self, cpus):
            self._cpus = cpus

        def cpus(self):
            return self._cpus

    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    calls: list[int] = []
    for task, torch_threads in ((Task(4), None), (Task(1), None), (Task(4), 2), (None, None)):
        monkeypatch.setattr(TaskContext, "get", classmethod(lambda cls, task=task: task))
        fineweb_edu.EduScorer("unused", torch_threads=torch_threads)._set_threads()
    assert calls == [4, 1, 2]


def test_a_worker_given_another_gpu_keeps_its_one_copy_of_the_model(model_dir, monkeypatch):
    """Spark reuses a Python worker for tasks given other GPUs: "auto" loads once per process (a copy
    and a CUDA context on every GPU a worker was ever given would add up), an explicit device its own."""
    devices = iter(["cpu", "cuda:1"])  # what "auto" would resolve to in the first task, then in the next
    monkeypatch.setattr(fineweb_edu, "_resolve_device", lambda device: next(devices) if device == "auto" else device)
    monkeypatch.setattr(fineweb_edu, "_LOADED", {})
    monkeypatch.setattr(fineweb_edu, "_AUTO", {})
    first = fineweb_edu._load(model_dir, "float32", "auto", None)
    assert fineweb_edu._load(model_dir, "float32", "auto", None) is first and first[2] == "cpu"
    assert fineweb_edu._load(model_dir, "float32", "cpu", None) is first  # the same key: no second copy


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")  # before the model fixture is built
def test_gpu_scores_match_cpu(model_dir, docs):
    cpu = FineWebEduFilter(model_dir, device="cpu").tag(docs)
    gpu = FineWebEduFilter(model_dir, device="cuda", batch_size=64).tag(docs)
    np.testing.assert_allclose(gpu["score"], cpu["score"], rtol=0, atol=1e-4)
    assert FineWebEduFilter(model_dir).scorer.loaded()[2] == "cuda"


@pytest.mark.slow
def test_build_with_the_filter_equals_the_model_card_and_reads_the_model_from_s3(
        spark_with_s3, model_dir, docs, tmp_path, monkeypatch):
    """The filter inside a whole build: tagged by the executors (the model directory shipped
    from the driver, or fetched by each node from s3://), decided from the stored int_score.
    The documents removed are exactly those the model card's loop scores below the threshold,
    and the model's location does not change a byte of the output."""
    import uuid

    from dolmino import s3
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "cache"))
    texts = [d for d in docs if d.get("text")]
    write_documents(str(tmp_path / "data" / "web" / "a.jsonl.zst"), texts[: len(texts) // 2])
    write_documents(str(tmp_path / "data" / "web" / "b.jsonl.gz"), texts[len(texts) // 2:])
    _, expected = _reference(model_dir, _texts_of(texts), batch_size=8)
    low = sum(1 for s in expected if s < 2)
    assert 0 < low < len(texts)
    bucket = f"edu-build-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    for name in sorted(os.listdir(model_dir)):
        s3.client().upload_file(os.path.join(model_dir, name), bucket, f"models/edu/{name}")

    def run(model: str, out: str, attributes: str) -> dict:
        spec = {"name": "edu", "version": 1, "seed": 3, "budget": 20_000, "data_root": str(tmp_path / "data"),
                "sources": [{"name": "web", "paths": ["web/*"], "mix_percent": 100.0,
                             "filters": [{"type": "fineweb_edu", "model_path": model, "min_int_score": 2,
                                          "batch_size": 8}]}]}
        return build(manifest_from_dict(spec), 20_000, out, spark_with_s3, attributes=attributes)

    local = run(model_dir, str(tmp_path / "out-local"), str(tmp_path / "attributes"))
    remote = run(f"s3://{bucket}/models/edu/", f"s3://{bucket}/out", f"s3://{bucket}/attributes")
    src = local["sources"][0]
    assert src["docs_in"] == len(texts)
    assert src["removed"] == {"fineweb_edu:int_score<2": {"docs": low, "bytes": _bytes_below(texts, expected, 2)}}
    assert remote["sources"][0]["removed"] == src["removed"]
    parts = {p.name: p.read_bytes() for p in sorted((tmp_path / "out-local").glob("part-*"))}
    assert parts and {name: s3.get_bytes(f"s3://{bucket}/out/{name}") for name in parts} == parts


def _bytes_below(texts: list[dict], int_scores: list[int], threshold: int) -> int:
    return sum(len(d["text"].encode("utf-8")) for d, s in zip(texts, int_scores) if s < threshold)
