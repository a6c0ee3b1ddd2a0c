"""The OpenWebMath math classifier: LLM labels through a fake endpoint, fastText training
through the CLI, then the trained model as a `fasttext_quality` filter on held-out text.

Real text from the shared corpus stands in for OpenWebMath: PARI/GP manual sections (LaTeX,
mathematics) against dictionary entries. The fake endpoint knows which is which and answers
in the loose formats real models use ("**MATH**", "non-math."); a few answers are garbage or
fail, so the accounting is exercised too.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from conftest import REPO, shared_corpus_file
from dolmino.documents import Quarantine, read_documents, write_documents
from dolmino.synth import prompts
from dolmino.synth.base import is_quarantine, is_rejection, is_request_stats
from dolmino.synth.owm_math import MATH_LABEL, OwmLabelGenerator, read_labelled
from fake_llm import FakeLLM


@pytest.mark.parametrize("answer,label", [
    ("MATH", "math"), ("math", "math"), ("**MATH**", "math"), ("Math.", "math"), ("  MATH\n", "math"),
    ("NON-MATH", "non_math"), ("non-math.", "non_math"), ("NON_MATH", "non_math"), ("Non math", "non_math"),
    ("NONMATH", "non_math"), ("Maybe", None), ("MATH, mostly", None), ("", None), ("The answer is MATH", None),
])
def test_parse_math_label(answer, label):
    assert prompts.parse_math_label(answer) == label


def test_label_prompt_is_cut_to_max_chars():
    prompt = prompts.math_label_prompt("x" * 10_000, max_chars=100)
    assert prompt.endswith("Document:\n" + "x" * 100) and "MATH or NON-MATH" in prompt


def _texts(name: str, start: int, n: int) -> list[str]:
    path = str(shared_corpus_file(name))
    return [d["text"] for _, d in itertools.islice(read_documents(path, Quarantine()), start, start + n)]


@pytest.fixture(scope="module")
def corpus():
    return {"math": _texts("academic.jsonl.zst", 0, 225), "other": _texts("encyclopedic.jsonl.zst", 0, 200)}


def test_label_train_and_filter(corpus, tmp_path):
    train_math, train_other = corpus["math"][:100], corpus["other"][:100]
    math_keys = {t.strip()[:80] for t in train_math}
    garbage = train_other[7].strip()[:80]

    def reply(prompt: str) -> str:
        doc = prompt.split("Document:\n", 1)[1][:80]
        if doc == garbage:
            return "It depends on the reader."
        return "**MATH**" if doc in math_keys else "non-math."

    docs = [{"id": f"m{i}", "text": t} for i, t in enumerate(train_math)]
    docs += [{"id": f"o{i}", "text": t} for i, t in enumerate(train_other)]
    owm = tmp_path / "owm.jsonl"
    owm.write_text("".join(json.dumps(d) + "\n" for d in docs[:150]) + "[1, 2]\n" + '{"id": "empty", "text": ""}\n'
                   + "".join(json.dumps(d) + "\n" for d in docs[150:]))
    with FakeLLM(reply) as llm:
        llm.statuses.extend([500, 500])   # item 0: two failures, max_retries=1 -> request_failed
        gen = OwmLabelGenerator(llm.url, "labeller", str(owm), max_retries=1, backoff_base=0.001, max_chars=2000)
        assert gen.num_docs == 202 and gen.config()["input"]["rows"] == 202
        records = [r for p in range(2) for r in gen.generate(p, 2, seed=5)]
        assert all(len(p) <= 2000 + len(prompts.MATH_LABEL_TEMPLATE) for p in llm.prompts)
    items = [r for r in records if not is_request_stats(r)]
    stats = [r["request_stats"] for r in records if is_request_stats(r)]
    assert len(items) == 202 and len(stats) == 2 and sum(s.get("http_5xx", 0) for s in stats) == 2
    assert sorted(r["rejected"] for r in items if is_rejection(r)) == ["bad_format", "request_failed"]
    assert sorted(r["quarantined"] for r in items if is_quarantine(r)) == ["missing_text", "not_an_object"]
    labelled = [r for r in items if not is_rejection(r) and not is_quarantine(r)]
    assert len(labelled) == 198
    truth = {d["text"]: d["id"][0] for d in docs}
    assert all((r["metadata"]["math_label"] == "math") == (truth[r["text"]] == "m") for r in labelled)
    assert labelled[0]["metadata"]["input_id"] == "m1" and labelled[0]["source"] == "owm_math_label"
    out = tmp_path / "labels" / "part-00000.jsonl.zst"
    out.parent.mkdir()
    write_documents(str(out), labelled)
    math_texts, other_texts, counts = read_labelled(str(tmp_path / "labels" / "*.jsonl.zst"))
    assert counts == {"math": 99, "non_math": 99, "unlabelled": 0, "unreadable": 0}

    model = tmp_path / "owm_math.bin"
    proc = subprocess.run([sys.executable, "-m", "dolmino.synth.owm_math", "train", "--labelled",
                           str(tmp_path / "labels" / "*.jsonl.zst"), "--out", str(model), "--epoch", "10",
                           "--dim", "16", "--bucket", "50000", "--word-ngrams", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "owm_math.bin.json").read_text())
    assert summary["documents"]["math"] == 99 and summary["filter"] == {"type": "fasttext_quality",
                                                                        "label": MATH_LABEL, "threshold": 0.5}

    # The trained model is an ordinary manifest filter; held-out math is kept, the rest removed.
    from filters.registry import build_filter

    filt = build_filter({"type": "fasttext_quality", "model_path": str(model), "label": MATH_LABEL,
                         "threshold": 0.5})
    held_math, held_other = corpus["math"][100:], corpus["other"][100:]
    kept_math = sum(filt.reject_reason({"text": t}) is None for t in held_math)
    kept_other = sum(filt.reject_reason({"text": t}) is None for t in held_other)
    assert kept_math >= 0.9 * len(held_math) and kept_other <= 0.1 * len(held_other), (kept_math, kept_other)
    assert {filt.reject_reason({"text": t}) for t in held_other} - {None} == {"p<0.5"}


def test_training_refuses_one_sided_labels(tmp_path):
    out = tmp_path / "labels.jsonl"
    out.write_text(json.dumps({"id": "a", "text": "x = 1", "metadata": {"math_label": "math"}}) + "\n")
    from dolmino.synth.owm_math import main

    assert main(["train", "--labelled", str(out), "--out", str(tmp_path / "m.bin")]) == 2


def test_training_refuses_labels_of_an_unfinished_run(tmp_path, capsys):
    """A labelling run that was interrupted (parts and done-files, no synth-report.json) trained
    the classifier on what it had, exit 0, where a build of the same files refuses them; so did
    `mind --input` over an unfinished tinygsm run (found by a tester)."""
    import zstandard

    from dolmino.synth.inputs import InputFiles
    from dolmino.synth.owm_math import main

    labels = tmp_path / "owm_labels"
    labels.mkdir()
    labelled = [("x = 1", "math"), ("a walk", "non_math"), ("y = 2", "math"), ("a meal", "non_math")]
    rows = [{"id": str(i), "text": text, "metadata": {"math_label": label}} for i, (text, label) in enumerate(labelled)]
    payload = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (labels / "part-00000.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    (labels / "part-00000.done.json").write_text("{}")
    out = tmp_path / "m.bin"
    assert main(["train", "--labelled", str(labels / "part-*.jsonl.zst"), "--out", str(out), "--bucket", "1000"]) == 2
    assert capsys.readouterr().err == (
        f"python -m dolmino.synth.owm_math: error: {labels} holds `dolmino synth` parts without its "
        "synth-report.json (a run interrupted, or with partitions unanswered); rerun the synth command that writes "
        "it to finish it first\n")
    assert not out.exists()
    with pytest.raises(ValueError, match="without its synth-report.json"):
        InputFiles(str(labels / "part-*.jsonl.zst")).files
    (labels / "synth-report.json").write_text("{}")  # the run finished
    assert InputFiles(str(labels / "part-*.jsonl.zst")).files[0].rows == 4
    assert main(["train", "--labelled", str(labels / "part-*.jsonl.zst"), "--out", str(out), "--bucket", "1000"]) == 0
