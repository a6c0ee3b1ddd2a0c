"""bench/run.py's bookkeeping: parsing, medians, ratio direction, goals, failures, rendering.

No real benchmark runs here: benchmark scripts are tiny stand-ins written to tmp_path
(one prints figures, one crashes, one prints no figures, one is missing), so the tests
prove how the harness turns outputs into a report, fast.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from bench import run as harness
from bench.bench_build import fit_exponent


def fig(name, impl, value, unit="tokens/s/core", better="higher"):
    return {"name": name, "impl": impl, "value": value, "unit": unit, "better": better}


# ------------------------------------------------------------------ parse / validate

def test_parse_output_finds_json_after_log_lines():
    out = "Setting default log level to WARN\nsome { noise\n" + json.dumps({"figures": [], "a": 1}, indent=2)
    assert harness.parse_output(out) == {"figures": [], "a": 1}


@pytest.mark.parametrize("stdout", ["", "no json here", "[1, 2]", '{"unterminated": '])
def test_parse_output_rejects_what_is_not_one_object(stdout):
    with pytest.raises(ValueError):
        harness.parse_output(stdout)


def test_validate_keeps_good_figures_and_names_each_bad_one():
    good, problems = harness.validate_figures({"figures": [
        fig("a", "dolmino", 3),
        {"name": "b", "impl": "dolmino", "value": 1, "unit": "s"},  # no "better"
        fig("c", "dolmino", "fast"),
        fig("d", "dolmino", float("nan")),
        fig("e", "dolmino", 1, better="bigger"),
        "not a dict",
    ]})
    assert [g["name"] for g in good] == ["a"]
    assert len(problems) == 5
    assert harness.validate_figures({"x": 1}) == ([], ["no 'figures' key in the output"])


# ------------------------------------------------------------------------ aggregation

def test_median_per_name_and_impl_over_runs():
    runs = [[fig("t", "dolmino", 10), fig("t", "dolma", 4)],
            [fig("t", "dolmino", 30), fig("t", "dolma", 5)],
            [fig("t", "dolmino", 20)]]  # the anchor failed in run 3: its median uses 2 values
    rows = {(r["name"], r["impl"]): r for r in harness.median_figures(runs)}
    assert rows[("t", "dolmino")]["median"] == 20 and rows[("t", "dolmino")]["n"] == 3
    assert rows[("t", "dolma")]["median"] == 4.5 and rows[("t", "dolma")]["values"] == [4, 5]


def test_median_refuses_units_that_change_between_runs():
    with pytest.raises(ValueError, match="unit/better changed"):
        harness.median_figures([[fig("t", "dolmino", 1, unit="s")], [fig("t", "dolmino", 1, unit="ms")]])


def test_ratio_above_one_means_dolmino_better_in_both_directions():
    assert harness.ratio(200, 100, "higher") == 2.0   # twice the throughput
    assert harness.ratio(50, 100, "lower") == 2.0     # half the memory
    assert harness.ratio(100, 200, "higher") == 0.5
    assert harness.ratio(200, 100, "lower") == 0.5
    assert harness.ratio(1, 0, "higher") is None
    assert harness.ratio(0, 5, "lower") is None
    with pytest.raises(ValueError):
        harness.ratio(1, 1, "sideways")


def test_compare_picks_best_anchor_by_direction_and_keeps_raw_apart():
    rows = harness.median_figures([[
        fig("tok", "dolmino", 90), fig("tok", "dolma", 40), fig("tok", "datatrove", 60), fig("tok", "raw", 100),
        fig("rss", "dolmino", 300, "MiB", "lower"), fig("rss", "dolma", 200, "MiB", "lower"),
        fig("rss", "datatrove", 600, "MiB", "lower"),
        fig("speed", "dolmino", 300), fig("speed", "datatrove", 100), fig("speed", "dolmino_token_ids", 9000),
        fig("alone", "dolmino", 1, "exponent", "lower"),
        fig("anchor-only", "dolma", 5),
    ]])
    by = {c["name"]: c for c in harness.compare(rows)}
    tok = by["tok"]
    assert tok["best_anchor"] == "datatrove" and tok["ratio"] == pytest.approx(1.5)  # raw is not an anchor
    assert tok["ratio_vs_raw"] == pytest.approx(0.9) and tok["meets_goal"] is True   # within 1.2x of raw
    rss = by["rss"]
    assert rss["best_anchor"] == "dolma" and rss["ratio"] == pytest.approx(200 / 300)
    assert rss["goal"] is None and rss["meets_goal"] is None  # memory has no speed goal
    assert by["speed"]["ratio"] == pytest.approx(3.0) and by["speed"]["meets_goal"] is True  # variant is no anchor
    assert by["speed"]["variants"] == {"dolmino_token_ids": 9000}
    assert by["alone"]["best_anchor"] is None and by["alone"]["ratio"] is None
    assert "anchor-only" not in by  # nothing of dolmino's to compare


def test_goal_vs_raw_fails_when_slower_than_raw_over_1_2():
    rows = harness.median_figures([[fig("tok", "dolmino", 80), fig("tok", "raw", 100)]])
    (c,) = harness.compare(rows)
    assert c["ratio_vs_raw"] == pytest.approx(0.8) and c["meets_goal"] is False


def test_goal_vs_anchor_needs_twice_the_best():
    rows = harness.median_figures([[fig("f", "dolmino", 150), fig("f", "datatrove", 100)]])
    (c,) = harness.compare(rows)
    assert c["meets_goal"] is False and c["goal"].startswith(">= 2")


def test_a_figures_own_goal_replaces_the_automatic_one():
    rows = harness.median_figures([[{**fig("ratio", "dolmino", 1.2, "ratio", "lower"), "goal": ["<=", 1.15]}],
                                   [{**fig("ratio", "dolmino", 1.1, "ratio", "lower"), "goal": ["<=", 1.15]}],
                                   [{**fig("ratio", "dolmino", 1.3, "ratio", "lower"), "goal": ["<=", 1.15]}]])
    (c,) = harness.compare(rows)
    assert c["dolmino"] == pytest.approx(1.2) and c["goal"] == "<= 1.15" and c["meets_goal"] is False
    fast = harness.median_figures([[{**fig("tok", "dolmino", 70), "goal": [">=", 0.5]}, fig("tok", "raw", 100)]])
    (c,) = harness.compare(fast)
    assert c["ratio_vs_raw"] == pytest.approx(0.7) and c["goal"] == ">= 0.5" and c["meets_goal"] is True
    good, problems = harness.validate_figures({"figures": [{**fig("a", "dolmino", 1), "goal": ["<", 1]},
                                                           {**fig("b", "dolmino", 1), "goal": ["<=", "1"]}]})
    assert good == [] and len(problems) == 2


def test_not_comparable_anchors_are_listed_but_never_give_a_ratio(tmp_path):
    why = "dolma's tagger computes RedPajama's code rules, not this filter"
    rows = harness.median_figures([[fig("code", "dolmino", 1000), {**fig("code", "dolma", 400), "not_comparable": why},
                                    fig("ft", "dolmino", 90), fig("ft", "datatrove", 30),
                                    {**fig("ft", "dolma", 80), "not_comparable": "other model"}]])
    by = {c["name"]: c for c in harness.compare(rows)}
    assert by["code"]["best_anchor"] is None and by["code"]["ratio"] is None and by["code"]["meets_goal"] is None
    assert by["code"]["not_comparable"] == {"dolma": {"value": 400, "why": why}}
    assert by["ft"]["best_anchor"] == "datatrove" and by["ft"]["ratio"] == pytest.approx(3.0)  # dolma's 80 skipped
    report = {"generated": "now", "note": "", "options": {"repeats": 1}, "machine": harness.machine_info({}),
              "benchmarks": [], "figures": [], "comparisons": [{"benchmark": "filters", **c} for c in by.values()]}
    md = harness.render_markdown(report)
    assert "| – (dolma 400: not comparable) | – | – |" in md  # no anchor value, no ratio
    assert f"- filters / code: dolma 400 tokens/s/core: {why}" in md


# ---------------------------------------------------------------- running stand-ins

def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def stand_ins(tmp_path):
    _script(tmp_path, "good.py", """
        import argparse, json, sys
        ap = argparse.ArgumentParser(); ap.add_argument("--quick", action="store_true")
        ap.add_argument("--limit-per-file", type=int)
        a = ap.parse_args()
        print("a log line before the JSON")
        print(json.dumps({"cores": 1, "quick": a.quick, "limit": a.limit_per_file, "notes": ["equivalent"],
                          "figures": [{"name": "tok", "impl": "dolmino", "value": 120, "unit": "tokens/s/core",
                                       "better": "higher"},
                                      {"name": "tok", "impl": "dolma", "value": 60, "unit": "tokens/s/core",
                                       "better": "higher"}]}))
    """)
    _script(tmp_path, "sized.py", """
        import argparse, json
        ap = argparse.ArgumentParser(); ap.add_argument("--limit-per-file", type=int)
        a = ap.parse_args()
        print(json.dumps({"figures": [{"name": "n", "impl": "dolmino", "value": a.limit_per_file or 0,
                                       "unit": "docs", "better": "higher"}]}))
    """)
    _script(tmp_path, "crash.py", "import sys\nif '--help' not in sys.argv: raise SystemExit('anchor venv unavailable')\n")
    _script(tmp_path, "nofig.py", "import json\nprint(json.dumps({'result': 42}))\n")
    return tmp_path


def _run(stand_ins, name, script, quick=False, quick_args=(("--quick",), ("--limit-per-file", "7")), repeats=2):
    bench = harness.Benchmark(name, script, quick_args=quick_args)
    return harness.run_benchmark(bench, repeats=repeats, quick=quick, timeout_s=60, python=sys.executable,
                                 bench_dir=stand_ins, log=lambda *_: None)


def test_run_benchmark_collects_each_run_and_prefers_the_scripts_quick(stand_ins):
    res = _run(stand_ins, "good", "good.py", quick=True)
    assert res.status == "ok" and len(res.runs) == 2 and res.args == ["--quick"]
    assert res.details["quick"] is True and res.details["limit"] is None


def test_quick_passes_only_flags_the_script_knows(stand_ins):
    res = _run(stand_ins, "sized", "sized.py", quick=True, repeats=1)
    assert res.args == ["--limit-per-file", "7"] and res.runs[0][0]["value"] == 7


def test_missing_failed_and_figureless_scripts_are_reported_not_raised(stand_ins):
    missing = _run(stand_ins, "ghost", "ghost.py")
    crashed = _run(stand_ins, "crash", "crash.py")
    nofig = _run(stand_ins, "nofig", "nofig.py")
    assert missing.status == "missing" and "does not exist" in missing.errors[0]
    assert crashed.status == "failed" and len(crashed.errors) == 2 and "anchor venv unavailable" in crashed.errors[0]
    assert nofig.status == "no-figures" and nofig.details == {"result": 42}


def test_report_and_markdown_from_mixed_results(stand_ins, tmp_path):
    results = [_run(stand_ins, "good", "good.py"), _run(stand_ins, "ghost", "ghost.py"),
               _run(stand_ins, "crash", "crash.py", repeats=1)]
    machine = harness.machine_info({"dolma": "1.2.1", "datatrove": "unavailable: no network"})
    report = harness.build_report(results, machine, {"quick": False, "repeats": 2}, note="noisy shared machine")
    assert [b["status"] for b in report["benchmarks"]] == ["ok", "missing", "failed"]
    (c,) = report["comparisons"]
    assert c["ratio"] == pytest.approx(2.0) and c["best_anchor"] == "dolma" and c["meets_goal"] is True
    json_path, md_path = harness.write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["comparisons"][0]["ratio"] == pytest.approx(2.0)
    md = md_path.read_text()
    assert "> noisy shared machine" in md
    assert "| good | tok | tokens/s/core (higher) | 120.0 | dolma | 60.0 | 2 |" in md
    assert "| ghost | missing | 0 |" in md and "| crash | failed | 0 |" in md
    assert "unavailable: no network" in md and "- **good**: equivalent" in md
    assert machine["cores"] >= 1 and machine["python"].count(".") == 2


def test_merge_keeps_the_benchmarks_not_rerun_and_says_where_they_come_from(stand_ins):
    machine = harness.machine_info({})
    first = harness.build_report([_run(stand_ins, "good", "good.py", repeats=1), _run(stand_ins, "other", "good.py",
                                                                                      repeats=1)],
                                 {**machine, "git": {"commit": "a" * 40}}, {"quick": True, "repeats": 1})
    second = harness.build_report([_run(stand_ins, "good", "good.py", repeats=1)], machine,
                                  {"quick": True, "repeats": 1, "only": ["good"]})
    merged = harness.merge_reports(first, second)
    assert [b["name"] for b in merged["benchmarks"]] == ["good", "other"]
    good, other = merged["benchmarks"]
    assert "measured" not in good and other["measured"]["commit"] == "a" * 40
    assert sorted({f["benchmark"] for f in merged["figures"]}) == ["good", "other"]
    assert [c["benchmark"] for c in merged["comparisons"]] == ["good", "other"]  # in the benchmarks' order
    assert len([f for f in merged["figures"] if f["benchmark"] == "good"]) == len(second["figures"])
    md = harness.render_markdown(merged)
    assert f"earlier: {first['generated']} @ aaaaaaaaaa" in md and "--only good --merge" in md
    again = harness.merge_reports(merged, second)  # a kept benchmark keeps its first origin
    assert again["benchmarks"][1]["measured"]["commit"] == "a" * 40


def test_a_kept_benchmark_names_the_cpu_it_ran_on(stand_ins):
    """Shared hosts change model between runs: REPORT.md put AMD and Intel figures side by side
    under the newest run's CPU alone."""
    machine = harness.machine_info({})
    first = harness.build_report([_run(stand_ins, "good", "good.py", repeats=1), _run(stand_ins, "other", "good.py",
                                                                                      repeats=1)],
                                 {**machine, "cpu": "Intel(R) Xeon(R) Processor"}, {"quick": True, "repeats": 1})
    second = harness.build_report([_run(stand_ins, "good", "good.py", repeats=1)], {**machine, "cpu": "AMD EPYC"},
                                  {"quick": True, "repeats": 1, "only": ["good"]})
    merged = harness.merge_reports(first, second)
    assert merged["benchmarks"][1]["measured"]["cpu"] == "Intel(R) Xeon(R) Processor"
    md = harness.render_markdown(merged)
    assert "| CPU | AMD EPYC (" in md and "CPU Intel(R) Xeon(R) Processor |" in md


def test_the_report_names_the_benchmarks_it_does_not_hold():
    """REPORT.md, merged from runs that never included encode_documents, listed what ran now and
    what was kept, and nothing said that one benchmark of `make bench` had no figures at all."""
    def entry(name):
        return {"name": name, "script": f"bench_{name}.py", "status": "ok", "args": [], "runs_ok": 1,
                "wall_s": [1.0], "errors": [], "cores": 1, "details": {}}

    report = {"generated": "now", "note": "", "options": {"only": ["cascade"]}, "machine": harness.machine_info({}),
              "benchmarks": [entry(b.name) for b in harness.BENCHMARKS if b.name != "encode_documents"],
              "figures": [], "comparisons": [],
              "merged": {"ran_now": ["cascade"], "kept_from_earlier": ["tokenize"]}}
    md = harness.render_markdown(report)
    assert "Not in this report (neither run now nor kept from an earlier run): encode_documents." in md
    report["benchmarks"].append(entry("encode_documents"))
    assert "Not in this report" not in harness.render_markdown(report)


def test_comparisons_apply_todays_rules_to_stored_figures():
    """REPORT.md kept ratios that a rule added later forbids (dolma's code taggers: different
    work) because --merge copied stored comparisons; and the trainer's "raw" bare loop, slower
    than dolmino, was judged as a ceiling (found by a reviewer of the bench claims)."""
    def row(name, impl, median, unit="docs/s"):
        return {"name": name, "impl": impl, "median": median, "values": [median], "unit": unit, "better": "higher"}

    kept = [row("filters/code_stars docs/s per core", "dolmino", 100.0),
            row("filters/code_stars docs/s per core", "dolma", 10.0)]
    (entry,) = harness.compare(kept, "filters")
    assert entry["ratio"] is None and "different work" in entry["not_comparable"]["dolma"]["why"]
    (same,) = harness.compare(kept)  # without the benchmark's name no rule applies
    assert same["ratio"] == 10.0
    trainer = [row("trainer_step", "dolmino", 383.0, "tokens/s/core"),
               row("trainer_step", "raw", 336.4, "tokens/s/core")]
    (step,) = harness.compare(trainer, "trainer")
    assert step["meets_goal"] is None and step["goal"].startswith("none: raw is slower than dolmino")
    figures = [{"benchmark": "filters", **r} for r in kept]
    assert harness.recompare(figures, ["filters"])[0]["ratio"] is None
    # a raw that proved no ceiling leaves the anchors to judge (a reviewer: a 0.4x figure showed no goal)
    slow = [row("tokenize", "dolmino", 400.0), row("tokenize", "raw", 300.0), row("tokenize", "dolma", 1000.0)]
    (tok,) = harness.compare(slow, "tokenize")
    assert tok["goal"] == ">= 2 x best anchor" and tok["meets_goal"] is False


def test_datatroves_gopher_filter_is_no_anchor_for_repeated_ngrams():
    """GopherRepetitionFilter measures duplicate-line and n-gram fractions, not >= 32 consecutive
    repeats: faster or slower, it must not be the anchor (a reviewer found it registered as one)."""
    def row(name, impl, median):
        return {"name": name, "impl": impl, "median": median, "values": [median], "unit": "docs/s", "better": "higher"}

    for name in ("filters/repeated_ngrams docs/s per core", "filters/repeated_ngrams_with_repeats docs/s per core"):
        (entry,) = harness.compare([row(name, "dolmino", 300.0), row(name, "dolma", 100.0),
                                    row(name, "datatrove", 1000.0)], "filters")
        assert entry["best_anchor"] == "dolma" and entry["ratio"] == pytest.approx(3.0)
        assert "different check" in entry["not_comparable"]["datatrove"]["why"]


def test_dedup_signature_sample_times_datasketchs_fastest_call_on_the_same_work():
    """datasketch was timed with a new MinHash per document and dolmino's reference shingler in its
    clock (a reviewer); now both sides shingle or neither does, at datasketch's faster call."""
    from bench import bench_dedup
    from filters.minhash import MinHasher, shingle_spans

    words = [f"w{i % 97}x{i}" for i in range(20000)]  # > CHUNK shingles: text_signature's np.unique path
    docs = [{"text": " ".join(words[i * 40:(i + 1) * 40 + i])} for i in range(30)] + [{"text": " ".join(words)},
                                                                                      {"text": "..."}]
    hasher = MinHasher(128, 1)
    for d in docs[-2:-1] + docs[:3]:
        alone = bench_dedup._hash_spans(hasher, shingle_spans(d["text"], 5))
        assert (alone == hasher.text_signature(d["text"], 5)).all()
    sig = bench_dedup.signature_throughput(docs, datasketch_sample=len(docs), repeats=1)
    assert sig["sample_docs"] == len(docs) and sig["datasketch_call"] in ("bulk", "update_batch")
    calls = sig["datasketch_calls_hashing_only_docs_per_s"]
    assert sig["datasketch_hashing_only_docs_per_s"] == max(calls.values())
    assert sig["datasketch_docs_per_s"] < sig["datasketch_hashing_only_docs_per_s"]  # shingling in its clock
    figures = {(f["name"], f["impl"]) for f in bench_dedup.figures({"signatures": sig})}
    for how in ("text to signature", "hashing only"):
        name = f"dedup/minhash signatures docs/s per core (sample, {how})"
        assert {(name, "dolmino"), (name, "datasketch")} <= figures
    (note,) = bench_dedup.notes({"signatures": sig})
    assert "hashing only (shingles made before the clock on both sides)" in note


def test_dedup_peak_rss_counts_every_process_as_datatroves_does():
    """dolmino's figure was the JVM and the largest worker only, against datatrove's whole process
    (a reviewer): the driver's Python and PySpark's daemon are counted too."""
    from bench import bench_dedup

    memory = {"driver_python_mb": 150.0, "jvm_mb": 470.0, "python_daemon_mb": 50.0,
              "python_forked_worker_max_mb": 120.0, "python_worker_max_mb": 120.0}
    spark = {"memory": memory, "cores": 2, "docs_per_cpu_s": 10.0, "quality": {"recall": 1.0, "precision": 1.0}}
    (rss,) = [f for f in bench_dedup.figures({"spark_minhash": spark}) if f["name"] == bench_dedup.PEAK_RSS]
    assert rss["value"] == 150.0 + 470.0 + 50.0 + 2 * 120.0
    assert any("driver Python 150 MB" in n for n in bench_dedup.notes({"spark_minhash": spark}))


def test_the_dedup_peak_rss_that_left_processes_out_gives_no_ratio():
    """REPORT.md's "dedup/minhash peak RSS" (ee4d3ee) put the JVM and one worker against datatrove's
    whole process and showed dolmino 1.05x better; its driver's Python and daemon (~200 MB in a
    scratch run) would turn that round. The figure counting every process keeps its ratio."""
    from bench import bench_dedup

    def row(name, impl, median):
        return {"name": name, "impl": impl, "median": median, "values": [median], "unit": "MB", "better": "lower"}

    (old,) = harness.compare([row("dedup/minhash peak RSS", "dolmino", 648.1),
                              row("dedup/minhash peak RSS", "datatrove", 680.0)], "dedup")
    assert old["ratio"] is None and "not the same count" in old["not_comparable"]["datatrove"]["why"]
    (new,) = harness.compare([row(bench_dedup.PEAK_RSS, "dolmino", 850.0),
                              row(bench_dedup.PEAK_RSS, "datatrove", 680.0)], "dedup")
    assert new["best_anchor"] == "datatrove" and new["ratio"] == pytest.approx(0.8)


def test_filters_repeats_slice_is_the_documents_dolmino_must_tokenize(tmp_path):
    """On the default slice dolmino's byte check spares it the tokenizer for all but 16 of 1,425
    documents, none holding a repeat, while dolma tokenizes all: the notes say so, and the slice of
    documents with repeats gives the same-work figure."""
    from bench import bench_filters
    from dolmino.documents import write_documents
    from filters.repeated_ngrams import RepeatedNgramFilter

    table = {"id": "t", "text": "A table:\n" + "| 0 " * 60 + "|\nend"}
    plain = {"id": "p", "text": "Plain prose that repeats nothing at all, as most documents do."}
    for name in bench_filters.FILES:
        write_documents(str(tmp_path / name), [plain, table] if name.startswith("web") else [plain])
    repeats = bench_filters.repeats_slice(tmp_path, 32, 10)
    assert [d["id"] for d in repeats] == ["t"] and repeats[0]["source"] == "web"
    assert bench_filters.repeats_slice(tmp_path, 32, 0) == []
    rep = RepeatedNgramFilter(min_repeats=32)
    assert bench_filters.tokenized_count(rep, [plain, table, plain]) == 1
    results = {"dolmino": {"repeated_ngrams": {"docs": 3, "tokenized": 1, "flagged": [1], "seconds": 1.0},
                           bench_filters.REPEATS: {"docs": 1, "tokenized": 1, "flagged": [0], "seconds": 1.0}},
               "dolma": {"repeated_ngrams": {"flagged": [1], "seconds": 2.0},
                         bench_filters.REPEATS: {"docs": 1, "flagged": [0], "seconds": 2.0}}}
    text = " ".join(bench_filters.notes(results))
    assert "dolmino tokenized 1 of 3 documents" in text and "not the same work" in text
    assert "dolmino flags 1, dolma 1" in text and "GopherRepetitionFilter is a different check" in text
    figures, agreement = bench_filters.summarise([plain, table, plain], results)
    names = {(f["name"], f["impl"]) for f in figures}
    assert ("filters/repeated_ngrams_with_repeats docs/s per core", "dolma") in names
    assert agreement[bench_filters.REPEATS]["dolma"]["jaccard_with_dolmino"] == 1.0


def test_a_merge_keeps_the_anchor_versions_its_kept_benchmarks_ran_with(stand_ins):
    machine = harness.machine_info({})
    first = harness.build_report([_run(stand_ins, "good", "good.py", repeats=1), _run(stand_ins, "other", "good.py",
                                                                                      repeats=1)],
                                 {**machine, "anchors": {"datatrove": "0.3.0", "dolma": "1.2.1"}}, {"repeats": 1})
    second = harness.build_report([_run(stand_ins, "good", "good.py", repeats=1)],
                                  {**machine, "anchors": {"datatrove": "0.10.1", "dolma": "1.2.1"}}, {"repeats": 1})
    assert harness.merge_reports(first, second)["machine"]["anchors"] == {
        "datatrove": "0.10.1 (this run); 0.3.0 (kept benchmarks)", "dolma": "1.2.1"}


def test_parse_args_defaults_and_errors(capsys):
    assert harness.parse_args([]).repeats == 3
    assert harness.parse_args(["--quick"]).repeats == 1
    assert harness.parse_args(["--quick", "--repeats", "4"]).repeats == 4
    with pytest.raises(SystemExit):
        harness.parse_args(["--only", "nonsense"])
    with pytest.raises(SystemExit):
        harness.parse_args(["--repeats", "0"])


def test_every_declared_benchmark_names_a_script_in_bench():
    names = [b.name for b in harness.BENCHMARKS]
    assert len(names) == len(set(names))
    assert {"tokenize", "build", "filters", "dedup", "decontamination", "stackexchange", "native",
            "trainer"} <= set(names)
    assert all(b.script.startswith("bench_") and b.script.endswith(".py") for b in harness.BENCHMARKS)


# ------------------------------------------------------------- bench_build's fit

def test_growth_exponent_recovers_known_powers():
    sizes = [1, 2, 5, 10]
    a, b = fit_exponent(sizes, [3.0 * s ** 0.8 for s in sizes])
    assert a == pytest.approx(3.0) and b == pytest.approx(0.8)
    _, b_flat = fit_exponent([1, 2, 4], [10.0, 10.0, 10.0])
    assert b_flat == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        fit_exponent([2, 2], [1.0, 2.0])
    with pytest.raises(ValueError):
        fit_exponent([1], [1.0])


@pytest.mark.parametrize("helper", ["bench", "anchor"])
def test_a_childs_peak_rss_is_its_own_not_its_parents(helper):
    """Linux carries a parent's high-water mark across fork + exec into the child's ru_maxrss;
    the bench's peak figures must be the child's own."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    big = bytearray(400 * 2**20)
    big[::4096] = b"\1" * len(big[::4096])  # resident, not just reserved
    if helper == "bench":
        code = "from bench.proctree import self_peak_rss_mb as p; print(p())"
    else:
        code = (f"import sys; sys.path.insert(0, {str(repo / 'bench' / 'anchor_scripts')!r}); "
                "from _common import self_peak_rss_kib as p; print(p() / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert float(out.stdout) < 200, out.stdout  # ru_maxrss said > 400 here
    del big


def test_tokenize_bench_runs_dolminos_tokenize_path():
    """bench_tokenize builds the mix's tokenize context itself; it must follow the build's
    signatures (it silently lost its dolmino figure when TokContext grew a field)."""
    from bench import bench_tokenize

    result = bench_tokenize.main(["--limit", "20", "--impls", "raw,dolmino"])
    assert not result["errors"] and not result.get("notes"), (result["errors"], result.get("notes"))
    dolmino = {f["name"] for f in result["figures"] if f["impl"] == "dolmino"}
    assert {"tokenize: tokens/s per core", "tokenize: peak RSS"} <= dolmino


def test_tokenize_equivalence_explains_an_anchor_that_encodes_unstripped_text():
    """datatrove's output differed from dolmino's on 15,042 of 23,810 documents "for another
    reason": the check only tried text.strip(), which dolmino itself encodes. Those are exactly
    the documents with outer whitespace, which datatrove encodes as is."""
    import numpy as np
    from tokenizers import Tokenizer

    from bench.bench_tokenize import EOS, compare_outputs, describe
    from dolmino.assets import dolma2_tokenizer_path

    path = dolma2_tokenizer_path()
    tok = Tokenizer.from_file(str(path))
    texts = {("a", 1): "plain text.", ("a", 2): "ends with a newline.\n", ("a", 3): "  padded  "}

    def enc(text):
        return np.asarray(tok.encode(text, add_special_tokens=False).ids + [EOS], dtype="<u4")

    dolmino = {k: enc(t.strip()) for k, t in texts.items()}
    as_is = [enc(texts[k]) for k in sorted(texts)]  # datatrove: reader order, text as is
    eq = compare_outputs(dolmino, as_is, texts, path)
    assert (eq["identical"], eq["differ_explained_by_unstripped"], eq["differ_unexplained"]) == (1, 2, 0)
    assert "2 differ only because datatrove encodes the text as is" in describe("datatrove", eq)
    other = [enc(texts[("a", 1)]), enc("something else"), enc(texts[("a", 3)])]
    assert compare_outputs(dolmino, other, texts, path)["differ_unexplained"] == 1
