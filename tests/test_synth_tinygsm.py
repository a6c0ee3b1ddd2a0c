"""TinyGSM -> TinyGSM-MIND: the static check, the sandbox, the annotation, and the whole
pipeline (tinygsm, then MIND rewrites through a fake LLM endpoint, then a manifest source
built with passes as the authority), with every item accounted for."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dolmino.synth.base import is_quarantine, is_rejection, is_request_stats
from dolmino.synth.sandbox import Sandbox
from dolmino.synth.tinygsm import TinyGsmGenerator, annotate, check_program
from fake_llm import FakeLLM

JANET = '''def simple_math_problem() -> int:
    """
    Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes
    muffins for her friends every day with four. She sells the remainder at $2 per egg.
    How much does she make every day?
    """
    eggs_per_day = 16
    eggs_eaten = 3 + 4  # breakfast and muffins
    price = 2.5 - 0.5
    eggs_left, days = eggs_per_day - eggs_eaten, 1
    eggs_left *= days
    money: float = eggs_left * price
    result = round(money / 1, 2)
    return result
'''

JANET_ANNOTATED = '''Question: Janet's ducks lay 16 eggs per day. How much does she make every day?

Solution:
def simple_math_problem() -> int:
    eggs_per_day = 16  # = 16
    eggs_eaten = 3 + 4  # = 7
    price = 2.5 - 0.5  # = 2
    eggs_left, days = (eggs_per_day - eggs_eaten, 1)  # = (9, 1)
    eggs_left *= days  # = 9
    money: float = eggs_left * price  # = 18
    result = round(money / 1, 2)  # = 18
    return result  # = 18'''


def _fn(*body: str) -> str:
    return "def f():\n" + "".join(f"    {line}\n" for line in body)


@pytest.mark.parametrize("code,reason,detail", [
    ("def f(:\n", "syntax_error", ""),
    ("x = 1\n", "no_function", "0 function"),
    (_fn("x = 1", "return x") + _fn("y = 2", "return y"), "no_function", "2 function"),
    ("import os\n" + _fn("x = 1", "return x"), "not_assignment_only", "module-level Import"),
    (_fn("x = 1", "return x") + "print(f())\n", "not_assignment_only", "module-level Expr"),
    ("def f(n):\n    x = n\n    return x\n", "not_assignment_only", "parameters"),
    (_fn("x = 0", "for i in range(3):", "    x += i", "return x"), "not_assignment_only", "For statement"),
    (_fn("x = 3", "if x > 2:", "    x = 2", "return x"), "not_assignment_only", "If statement"),
    (_fn("x = 3", "while x:", "    x -= 1", "return x"), "not_assignment_only", "While statement"),
    (_fn("x = len([1, 2])", "return x"), "not_assignment_only", "call to len"),
    (_fn("x = __import__('os')", "return 1"), "not_assignment_only", "call to __import__"),
    (_fn("x = (1).real", "return x"), "not_assignment_only", "Attribute"),
    (_fn("x = [1, 2][0]", "return x"), "not_assignment_only", "Subscript"),
    (_fn("x = [i for i in (1, 2)]", "return x"), "not_assignment_only", "ListComp"),
    (_fn("x = 'two'", "return x"), "not_assignment_only", "not a number"),
    (_fn("x = 1 if True else 2", "return x"), "not_assignment_only", "IfExp"),
    (_fn("x = 1", "y = x > 0", "return y"), "not_assignment_only", "Compare"),
    (_fn("x = 1"), "not_assignment_only", "return"),
    (_fn("return 5"), "not_assignment_only", "no assignments"),
    (_fn("x = 1", "x.y = 2", "return x"), "not_assignment_only", "assignment to Attribute"),
    (_fn("x = 1", "return x", "y = 2"), "not_assignment_only", "does not end"),
    (_fn("x = round(2.5, ndigits=0)", "return x"), "not_assignment_only", "keyword"),
])
def test_static_check_refuses_what_is_not_assignment_only(code, reason, detail):
    program, got_reason, got_detail = check_program(code)
    assert program is None and got_reason == reason and detail in got_detail


def test_static_check_accepts_tinygsm_style_programs():
    program, reason, _ = check_program(JANET)
    assert reason == "" and len(program.statements) == 8 and "Janet's ducks" in program.docstring
    program, reason, _ = check_program(_fn("a = b = 2", "c = divmod(7, a)", "return max(a, -b, sum([a, 1]))"))
    assert reason == "" and len(program.statements) == 3


def test_annotation_runs_the_program_and_labels_every_line():
    with Sandbox() as sandbox:
        out = annotate("Janet's ducks lay 16 eggs per day. How much does she make every day?", JANET, sandbox)
        assert out.reason == "" and out.result == "18" and out.statements == 8
        assert out.text == JANET_ANNOTATED
        thirds = annotate("q", _fn("x = 2 / 3", "y = 10 ** 20", "return x * 3"), sandbox)
        assert thirds.text.splitlines()[-3:] == ["    x = 2 / 3  # = 0.6666666667", "    y = 10 ** 20  # = "
                                                 "100000000000000000000", "    return x * 3  # = 2"]
        # Executed, not just parsed: errors and non-numbers are rejected by reason.
        assert annotate("q", _fn("x = 1 / 0", "return x"), sandbox).reason == "runtime_error"
        assert annotate("q", _fn("x = 1", "return y"), sandbox).detail.startswith("NameError")
        assert annotate("q", _fn("x = (1, 2)", "return x"), sandbox).reason == "non_numeric_result"
        assert annotate("q", _fn("x = 1e308 * 10", "return x"), sandbox).reason == "non_numeric_result"  # inf
        # a builtin's name is a name to the static check: assigned, it is no value of arithmetic (found by a tester)
        shadowed = annotate("q", _fn("total = max", "x = 2", "return x"), sandbox)
        assert (shadowed.reason, shadowed.detail) == ("runtime_error", "TypeError: line 2 assigns a "
                                                                       "builtin_function_or_method, not a number")
        pair = annotate("q", _fn("q, r = divmod(7, 2)", "return q"), sandbox)   # tuples of numbers stay values
        assert pair.text.endswith("q, r = divmod(7, 2)  # = (3, 1)\n    return q  # = 3")
        assert sandbox.counts["child_starts"] == 1   # one long-lived child served all of them


def test_sandbox_limits_memory_time_and_builtins():
    # CPU time decides (a wall clock would depend on the machine's load); the generous wall
    # limit here only keeps the backstop out of the way.
    with Sandbox(cpu_seconds=1, wall_seconds=120, memory_mb=128) as sandbox:
        # The child's builtins hold numbers only, whatever the static check lets through.
        escaped = sandbox.run(_fn("x = open('/tmp/dolmino-sandbox-escape', 'w')", "return 1"))
        assert escaped.kind == "runtime_error" and "NameError" in escaped.error
        assert not Path("/tmp/dolmino-sandbox-escape").exists()
        assert sandbox.run(_fn("x = __import__('os')", "return 1")).kind == "runtime_error"
        big = sandbox.run(_fn("x = [0] * 10 ** 9", "return 1"))   # 8 GB list under a 128 MB cap
        assert big.kind == "resource_limit" and "MemoryError" in big.error
        slow = sandbox.run(_fn("x = 3 ** 300000000", "return x % 7"))   # pure CPU (minutes), ~60 MB
        assert slow.kind == "timeout" and "CPU time limit" in slow.error
        # The killed child is replaced: the next program runs normally.
        ok = sandbox.run(_fn("x = 6 * 7", "return x"))
        assert (ok.kind, ok.values, ok.result) == ("ok", ("42", "42"), "42")
        assert sandbox.counts["child_starts"] == 2 and sandbox.counts["programs"] == 5
    with Sandbox(cpu_seconds=5, wall_seconds=0.5) as sandbox:   # the wall-clock backstop
        started = time.monotonic()
        assert sandbox.run(_fn("x = 3 ** 300000000", "return 1")).kind == "timeout"
        assert time.monotonic() - started < 30 and sandbox.counts["child_kills"] == 1
    with pytest.raises(ValueError, match="cpu_seconds"):
        Sandbox(cpu_seconds=0)


def _tinygsm_rows() -> list[str]:
    good = [{"question": f"Sam has {n} apples and buys {n + 1} more. How many?", "code":
             _fn(f"apples = {n}", f"bought = {n + 1}", "total = apples + bought", "return total"), "id": f"t{n}"}
            for n in range(6)]
    rows = [json.dumps(r) for r in good]
    rows.insert(2, json.dumps({"question": "Loop?", "code": _fn("x = 0", "for i in range(3):", "    x += i",
                                                                  "return x")}))
    rows.insert(4, "{not json")
    rows.insert(5, json.dumps({"question": "Zero?", "code": _fn("x = 1 / 0", "return x")}))
    rows.insert(7, json.dumps({"question": "No code here"}))
    rows.insert(8, "")   # blank lines are not items
    return rows


def test_tinygsm_generator_accounts_for_every_row(tmp_path):
    path = tmp_path / "tinygsm.jsonl"
    path.write_text("\n".join(_tinygsm_rows()) + "\n")
    gen = TinyGsmGenerator(str(path))
    assert gen.num_docs == 10 and gen.config()["input"]["rows"] == 10
    records = [r for p in range(3) for r in gen.generate(p, 3, seed=1)]
    assert len(records) == 10
    docs = [r for r in records if not is_rejection(r) and not is_quarantine(r)]
    assert [r["rejected"] for r in records if is_rejection(r)] == ["not_assignment_only", "runtime_error"]
    assert sorted(r["quarantined"] for r in records if is_quarantine(r)) == ["malformed_json", "missing_fields"]
    assert len(docs) == 6 and docs[0]["metadata"] == {"tinygsm_row": 0, "result": "1", "statements": 4,
                                                      "tinygsm_id": "t0"}
    assert docs[0]["text"].endswith("    total = apples + bought  # = 1\n    return total  # = 1")
    bad = [r for r in records if is_quarantine(r) and r["quarantined"] == "malformed_json"][0]
    assert bad["line"] == 5 and bad["path"] == str(path) and bad["raw"] == "{not json"
    assert TinyGsmGenerator(str(path), num_docs=3).num_docs == 3
    with pytest.raises(ValueError, match="no input files"):
        TinyGsmGenerator(str(tmp_path / "missing-*.jsonl")).config()


def test_tinygsm_input_on_s3_gives_what_the_local_file_gives(tmp_path, s3_server):
    """On a cluster whose nodes share no disk, --input s3://...: each executor reads its slice there."""
    import uuid

    from dolmino import s3

    path = tmp_path / "tinygsm.jsonl"
    path.write_text("\n".join(_tinygsm_rows()) + "\n")
    bucket = f"tinygsm-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="in/tinygsm.jsonl", Body=path.read_bytes())
    local, remote = TinyGsmGenerator(str(path)), TinyGsmGenerator(f"s3://{bucket}/in/*.jsonl")
    assert remote.config() == local.config()  # the same input fingerprint: names, rows, sha256
    uri = f"s3://{bucket}/in/tinygsm.jsonl"

    def records(gen):
        return [r for p in range(3) for r in gen.generate(p, 3, seed=1)]

    assert records(remote) == [{**r, "path": uri} if "path" in r else r for r in records(local)]
    with pytest.raises(ValueError, match="no input objects match"):
        TinyGsmGenerator(f"s3://{bucket}/in/missing-*.jsonl").config()


def _mind_reply(prompt: str) -> str:
    """A conversation that quotes the annotated result, or a malformed one for item 'Sam has 3'."""
    if "Sam has 3 apples" in prompt:
        return "I cannot help with that."
    total = prompt.split("return total  # = ")[1].split("\n")[0]
    return f"Student 1: How many apples in total?\nStudent 2: We add them and get {total}.\nStudent 1: Right, {total}."


@pytest.mark.slow
def test_tinygsm_mind_pipeline_builds_as_a_source(spark, tmp_path):
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict
    from dolmino.synth.llm import MindGenerator
    from dolmino.synth.runner import REPORT_NAME, run

    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "part-0.jsonl").write_text("\n".join(_tinygsm_rows()[:6]) + "\n")
    (upstream / "part-1.jsonl").write_text("\n".join(_tinygsm_rows()[6:]) + "\n")
    synth = tmp_path / "synth"
    tiny = run(TinyGsmGenerator(str(upstream / "*.jsonl")), str(synth / "tinygsm"), 2, 7, spark)
    assert (tiny["attempted"], tiny["kept"]) == (10, 6)
    assert tiny["rejected"] == {"not_assignment_only": 1, "runtime_error": 1}
    assert tiny["quarantined"] == {"malformed_json": 1, "missing_fields": 1}
    assert json.loads((synth / "tinygsm" / REPORT_NAME).read_text())["quarantined"] == tiny["quarantined"]

    with FakeLLM(_mind_reply) as llm:
        mind = MindGenerator(llm.url, "test-model", num_docs=12, input_path=str(synth / "tinygsm" / "part-*.jsonl.zst"),
                             backoff_base=0.001, max_retries=1)
        report = run(mind, str(synth / "tinygsm_mind"), 2, 7, spark)
        assert len(llm.prompts) == 12
    # 6 annotated items x 2 styles; Sam-has-3 gets a reply without speaker turns, twice.
    assert (report["attempted"], report["kept"], report["rejected"]) == (12, 10, {"bad_format": 2})
    docs = [json.loads(line) for p in sorted((synth / "tinygsm_mind").glob("part-*.jsonl.zst"))
            for line in __import__("zstandard").ZstdDecompressor().decompress(p.read_bytes(),
                                                                             max_output_size=1 << 24).splitlines()]
    styles = {}
    for d in docs:
        styles.setdefault(d["metadata"]["context_id"], set()).add(d["metadata"]["style"])
    assert all(s == {"two_students", "problem_solving"} for s in styles.values()) and len(styles) == 5
    assert any("get 9." in d["text"] for d in docs)   # Sam has 4 + 5: the annotated value reached the LLM

    manifest = manifest_from_dict({
        "name": "tinygsm-mind-test", "version": 2, "kind": "mix", "seed": 3, "data_root": str(synth),
        "output_format": {"tokens_per_file": "1M"},
        "sources": [{"name": "tinygsm_mind", "paths": ["tinygsm_mind/part-*.jsonl.zst"], "source_percent": 200,
                     "pool_tokens": "1000", "filters": [{"type": "repeated_ngrams"}], "dedup": {"exact": True}}]})
    assert manifest.budget == 2000
    built = build(manifest, manifest.budget, str(tmp_path / "mix"), spark)
    src = built["sources"][0]
    assert src["docs_in"] == 10 == src["kept_docs"] + sum(r["docs"] for r in src["removed"].values())
    # The target (200% of the declared 1,000 pool tokens) is more than the pool holds: repeated passes.
    assert src["output_tokens"] == built["output"]["tokens"] > src["tokenized"]["kept_tokens"]


def test_mind_reads_input_files_a_slice_at_a_time(tmp_path):
    from dolmino.synth.llm import MindGenerator

    rows = [json.dumps({"id": f"c{i}", "text": f"Question: item {i}"}) for i in range(4)]
    rows.insert(2, json.dumps({"id": "no-text"}))
    (tmp_path / "a.jsonl").write_text("\n".join(rows[:3]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(rows[3:]) + "\n")
    reply = "Student 1: What is asked?\nStudent 2: The item."
    with FakeLLM(lambda prompt: reply) as llm:
        gen = MindGenerator(llm.url, "m", num_docs=11, input_path=str(tmp_path / "*.jsonl"), backoff_base=0.001)
        records = [r for p in range(3) for r in gen.generate(p, 3, seed=1) if not is_request_stats(r)]
        assert len(llm.prompts) == 9 and llm.prompts[0].startswith("Question: item 0\n\n")
    assert len(records) == 11
    assert [r["quarantined"] for r in records if is_quarantine(r)] == ["missing_text"] * 2   # items 2 and 7
    seen = {}
    for r in records:
        if not is_quarantine(r):
            seen.setdefault(r["metadata"]["context_id"], []).append(r["metadata"]["style"])
    # Two passes over the 5 inputs: every input in both styles; item 10 starts a third pass.
    assert seen == {"c0": ["two_students", "problem_solving", "two_students"],
                    "c1": ["problem_solving", "two_students"], "c2": ["problem_solving", "two_students"],
                    "c3": ["two_students", "problem_solving"]}


def test_a_program_nested_past_the_recursion_limit_is_one_rejection(tmp_path):
    """`x = 1+1+...+1` of 2,000 terms raised RecursionError in the static check and killed the whole
    run (its good rows lost too; found by a tester); deeper nesting raised MemoryError in ast.parse."""
    good = "def f():\n    a = 16\n    b = a - 7\n    return b\n"
    deep = "def f():\n    x = " + "+".join(["1"] * 2000) + "\n    return x\n"
    deeper = "def f():\n    x = " + "-" * 100_000 + "1\n    return x\n"
    assert check_program(deep)[1] == check_program(deeper)[1] == "too_deep"
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"question": q, "code": c}) + "\n"
                            for q, c in (("ok?", good), ("deep?", deep), ("ok2?", good))))
    records = list(TinyGsmGenerator(str(path)).generate(0, 1, seed=1))
    assert [r.get("rejected") for r in records if is_rejection(r)] == ["too_deep"]
    assert len([r for r in records if not is_rejection(r) and not is_quarantine(r)]) == 2


def test_a_program_over_its_cpu_seconds_is_a_timeout_whatever_ran_before():
    """The CPU rlimit counts whole seconds from what the child had spent: a 1.7 s program passed
    `cpu_seconds=1` in a fresh child (limit 2 s) and the verdict moved with the programs before it
    (found by a tester). The program's own CPU time decides."""
    slow = "def f():\n    x = 7 ** (5 * 10 ** 6) % 10\n    return x\n"  # ~1.7 s of CPU here
    quick = "def f():\n    x = 7 ** 1000 % 10\n    return x\n"
    with Sandbox(cpu_seconds=1) as box:
        assert [box.run(code).kind for code in (quick, slow, quick)] == ["ok", "timeout", "ok"]
    # ... also when it fails after that: a program erring after ~1.7 s was a runtime error in a
    # fresh child and a timeout after others had run (its report moved with --partitions; a tester)
    slow_then_fails = "def f():\n    x = 7 ** (5 * 10 ** 6) % 10\n    y = x // 0\n    return y\n"
    with Sandbox(cpu_seconds=1) as box:
        assert box.run(slow_then_fails).kind == "timeout"


# Python's own functions, reached from a tuple: what a program that got past the checker could call.
ESCAPE = "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0].__init__.__globals__"


@pytest.mark.parametrize("code, detail", [
    # the tester's: a shell command ran as the child evaluated the annotation, and the item was kept
    (_fn(f"x: {ESCAPE}['system']('touch /tmp/dolmino-pwned') = 5", "return x"), "call to"),
    (_fn("x: (1).real = 5", "return x"), "Attribute"),
    (_fn("x: [i for i in (1,)] = 5", "return x"), "ListComp"),
    (_fn("x: f'{1}' = 5", "return x"), "JoinedStr"),
    (f"def f() -> {ESCAPE}['system']('id'):\n    x = 1\n    return x\n", "call to"),
    ("def f() -> (lambda: 1):\n    x = 1\n    return x\n", "Lambda"),
    (_fn("x = __builtins__", "return 1"), "name __builtins__"),
    (_fn("__builtins__ = 1", "x = 2", "return x"), "name __builtins__"),
    (_fn("x = 1", "x += __loader__", "return x"), "name __loader__"),
    ("@abs\n" + _fn("x = 1", "return x"), "decorated"),
])
def test_every_expression_of_a_program_is_checked(code, detail):
    """Annotations were not checked and were evaluated in the child: a tester ran shell commands,
    forked, and read the API key from the environment through one (found by a tester)."""
    program, reason, got = check_program(code)
    assert (program, reason) == (None, "not_assignment_only") and detail in got


def test_annotations_are_kept_in_the_document_but_never_evaluated():
    ok = _fn("x: int = 5", "y: float = x / 2", "return y")
    assert check_program(ok)[1] == ""
    with Sandbox() as sandbox:
        assert annotate("q", ok, sandbox).text.endswith("    x: int = 5  # = 5\n    y: float = x / 2  # = 2.5\n"
                                                        "    return y  # = 2.5")
        # the child itself, past the checker: the annotation is not run
        marker = Path("/tmp/dolmino-sandbox-annotation")
        marker.unlink(missing_ok=True)
        run = sandbox.run(_fn(f"x: {ESCAPE}['system']('touch {marker}') = 5", "return x"))
        assert run.kind == "ok" and not marker.exists()


def test_the_child_has_no_environment_no_privileges_and_no_say_over_its_replies(monkeypatch):
    """The child inherited the executor's environment (the API key went into rejected/), ran as
    root (fork() worked under RLIMIT_NPROC 0, any file could be read), and a program writing to
    its output crashed the Spark job with a JSONDecodeError (found by a tester). Each run below
    is what a program that got past the static check could do."""
    import os

    monkeypatch.setenv("DOLMINO_TEST_SECRET", "sk-t117-secret")
    with Sandbox() as sandbox:
        assert sandbox.run(_fn("x = 1", "return x")).kind == "ok"
        pid = sandbox._proc.pid
        assert Path(f"/proc/{pid}/environ").read_bytes() == b""
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        if os.geteuid() == 0:
            assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
            forked = sandbox.run(_fn(f"x = {ESCAPE}['fork']()", "return 1"))
            assert forked.kind == "runtime_error" and "Resource temporarily unavailable" in forked.error
            read = sandbox.run(_fn(f"x = {ESCAPE}['sys'].modules['io'].open('/proc/{os.getpid()}/environ').read()",
                                   "return 1"))
            assert read.kind == "runtime_error" and "PermissionError" in read.error
        wrote = sandbox.run(_fn(f"x = {ESCAPE}['sys'].stdout.write('not a reply\\n')", "return 1"))
        assert (wrote.kind, wrote.error) == ("runtime_error", "the program wrote to the sandbox's output")
        forged = '{"ok": true, "values": ["1", "1"], "result": "1", "numeric": true}'
        sandbox.run(_fn(f"x = {ESCAPE}['sys'].stdout.write('{forged}\\n')", "return 2"))
        # whatever that one got, the next program is answered by a child in step with it
        assert sandbox.run(_fn("x = 6 * 7", "return x")).values == ("42", "42")


def test_a_program_too_deep_to_reprint_is_one_rejection(tmp_path):
    """`x = ----...1` of 400 signs passed the check (one frame per level) and ast.unparse, a few
    frames per level, raised RecursionError in annotate: the partition failed, its good rows lost
    (found by a tester)."""
    good = _fn("a = 16", "b = a - 7", "return b")
    signs = _fn("x = " + "-" * 400 + "1", "return x")
    assert check_program(signs)[1] == "too_deep"
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"question": q, "code": c}) + "\n"
                            for q, c in (("ok?", good), ("signs?", signs), ("ok2?", good))))
    records = list(TinyGsmGenerator(str(path)).generate(0, 1, seed=1))
    assert [r.get("rejected") for r in records if is_rejection(r)] == ["too_deep"]
    assert len([r for r in records if not is_rejection(r) and not is_quarantine(r)]) == 2


def test_values_that_render_to_megabytes_are_one_resource_limit():
    """Three lines whose values rendered to a 34 MB reply were kept as one document, and the
    parent read the reply for seconds (found by a tester): a reply is at most 1 MiB."""
    from dolmino.synth.sandbox import REPLY_LIMIT_BYTES

    big = _fn("x = [7] * 400000", "return 1")   # ~1.2 MB of "7, 7, ..."
    with Sandbox() as sandbox:
        out = annotate("q", big, sandbox)
        assert (out.text, out.reason, out.detail) == (None, "resource_limit",
                                                      f"the result is over {REPLY_LIMIT_BYTES} bytes")
        assert sandbox.counts["child_kills"] == 1
        assert annotate("q", _fn("x = [7] * 1000", "return 1"), sandbox).text.count("7, ") == 999   # under it
        assert sandbox.run(_fn("x = 6 * 7", "return x")).values == ("42", "42")


def test_a_reply_with_the_wrong_number_of_values_fails_its_item(tmp_path):
    """A child reply of one value for a two-statement program (what a program out of the checker
    could write) raised ValueError in annotate and failed the partition (found by a tester)."""
    import stat
    import sys

    from dolmino.synth.sandbox_child import READY

    fake = tmp_path / "fake-python"
    reply = json.dumps({"ok": True, "values": ["1"], "result": "1", "numeric": True})
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint({READY!r}, flush=True)\n"
                    f"for line in sys.stdin:\n    print({reply!r}, flush=True)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with Sandbox(python=str(fake)) as sandbox:
        out = annotate("q", _fn("x = 1", "return x"), sandbox)
    assert (out.text, out.reason, out.detail) == (None, "runtime_error", "the sandbox gave 1 values for 2 statements")


def test_the_cpu_limit_holds_in_a_child_of_a_process_that_ignores_sigxcpu():
    """SIG_IGN survives exec: under a parent ignoring SIGXCPU the child ran a runaway program until
    the wall-clock backstop (found by a tester)."""
    import signal

    previous = signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    try:
        with Sandbox(cpu_seconds=1, wall_seconds=8) as sandbox:
            slow = sandbox.run(_fn("x = 3 ** 300000000", "return 1"))
    finally:
        signal.signal(signal.SIGXCPU, previous)
    assert (slow.kind, slow.error) == ("timeout", "CPU time limit (1 s per program) exceeded")


def test_memory_caps_the_child_cannot_set_are_refused_or_lowered(tmp_path):
    """The child exited at start when its setrlimit failed, and every program of the run became a
    resource_limit rejection while the run exited 0: a --memory-mb past what setrlimit takes, or
    over the executor's own hard cap (`ulimit -v`; found by a tester)."""
    import stat
    import sys

    with pytest.raises(ValueError, match="memory_mb must be an integer from 64 to"):
        Sandbox(memory_mb=10 ** 13)
    capped = tmp_path / "capped-python"   # a hard cap of 1 GiB; the sandbox asks for 2 GiB
    capped.write_text(f'#!/bin/sh\nulimit -v 1048576 && exec {sys.executable} "$@"\n')
    capped.chmod(capped.stat().st_mode | stat.S_IXUSR)
    with Sandbox(memory_mb=2048, python=str(capped)) as sandbox:
        assert sandbox.run(_fn("x = 6 * 7", "return x")).values == ("42", "42")
        big = sandbox.run(_fn("x = [0] * 2 * 10 ** 8", "return 1"))   # 1.6 GB: over the 1 GiB that holds
        assert big.kind == "resource_limit" and "MemoryError" in big.error


def _script(path: Path, text: str) -> str:
    import stat

    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_child_that_cannot_start_fails_the_run_not_each_program(tmp_path, monkeypatch):
    """A child interpreter that failed at start (one that needs an environment it is not given, a
    limit it cannot take) made every program a resource_limit rejection, and the run exited 0 as
    though TinyGSM's programs were bad (found by a tester): it is one error, saying why."""
    import functools

    import dolmino.synth.sandbox
    import dolmino.synth.tinygsm
    from dolmino.synth.sandbox import SandboxStartError

    monkeypatch.setattr(dolmino.synth.sandbox, "START_SECONDS", 1.0)
    no_lib = _script(tmp_path / "no-lib-python", "#!/bin/sh\necho 'error while loading shared libraries: libpython3.11"
                                                 ".so.1.0: cannot open shared object file' >&2\nexit 127\n")
    chatty = _script(tmp_path / "chatty-python", "#!/bin/sh\necho hello\ncat > /dev/null\n")
    silent = _script(tmp_path / "silent-python", "#!/bin/sh\nexec sleep 60\n")
    for python, cause in ((no_lib, "libpython3.11.so.1.0: cannot open shared object file"), ("/bin/false",
                          "it exited with status 1"), (chatty, "it answered 'hello', not its ready line"),
                          (silent, "no ready line within 1 s")):
        with Sandbox(wall_seconds=1, python=python) as sandbox:
            with pytest.raises(SandboxStartError, match=f"could not start: .*{cause}; every program would fail"):
                sandbox.run(_fn("x = 1", "return x"))
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "q", "code": _fn("x = 1", "return x")}) + "\n")
    monkeypatch.setattr(dolmino.synth.tinygsm, "Sandbox", functools.partial(Sandbox, python=no_lib))
    with pytest.raises(SandboxStartError, match="libpython3.11.so.1.0"):
        list(TinyGsmGenerator(str(path)).generate(0, 1, seed=1))
    # an interpreter that writes to stderr as it starts, and then runs, is no failure
    import sys

    noisy = _script(tmp_path / "noisy-python", f'#!/bin/sh\necho "a warning" >&2\nexec {sys.executable} "$@"\n')
    monkeypatch.setattr(dolmino.synth.tinygsm, "Sandbox", functools.partial(Sandbox, python=noisy))
    records = list(TinyGsmGenerator(str(path)).generate(0, 1, seed=1))
    assert len(records) == 1 and not is_rejection(records[0])


def test_a_short_wall_clock_limit_is_a_programs_not_the_childs_start():
    """The ready line was awaited for `wall_seconds`: with a short one, a child's start (~50 ms, more on
    a loaded executor) failed the whole run as "could not start" (a reviewer). A program still gets its own
    limit."""
    with Sandbox(wall_seconds=0.001) as sandbox:
        result = sandbox.run(_fn("x = 1", "return x"))
    assert result.kind in ("ok", "timeout")


def test_a_child_that_cannot_start_in_an_executor_is_one_line(tmp_path, capsys, monkeypatch):
    """The run failed with the worker's whole traceback and "unexpected PythonException" (a tester)."""
    import dolmino.build.spark
    import dolmino.synth.runner
    from dolmino.synth.__main__ import main

    class PythonException(Exception):  # what a failed task raises on the driver, by name
        pass

    said = ("the sandbox's interpreter (/opt/py -I -S, an empty environment) could not start: error while loading "
            "shared libraries; every program would fail, so none was run")

    def run(*args, **kwargs):
        raise PythonException(f"An exception was thrown from the Python worker: Traceback (most recent call last):\n"
                              f'  File "sandbox.py", line 111, in _start\n'
                              f"dolmino.synth.sandbox.SandboxStartError: {said}\n")

    monkeypatch.setattr(dolmino.build.spark.SparkCommand, "start", lambda *a: object())
    monkeypatch.setattr(dolmino.build.spark.SparkCommand, "stop", lambda *a: None)
    monkeypatch.setattr(dolmino.synth.runner, "run", run)
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "q", "code": _fn("x = 1", "return x")}) + "\n")
    assert main(["--generator", "tinygsm", "--input", str(path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"python -m dolmino.synth: error: in an executor: {said}; rerun the same "
                                       "command once that is fixed (finished partitions are kept)\n")
