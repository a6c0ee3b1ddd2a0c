"""bench/bench_cascade.py, smallest: both variants tagged in the test session's Spark (not a fresh one
per variant, which only the real run pays for), a tiny BERT, 24 documents; its figures as bench/run.py
takes them, and the check that the cascade scored exactly the fastText survivors."""

from __future__ import annotations

import json
import re

import pytest

from bench import bench_cascade
from bench import run as harness


def test_bench_tags_both_variants_and_prints_figures_the_harness_takes(spark, shared_corpus, tmp_path, capsys):
    def in_session(work, spec, warm, split_bytes, warmup_split_bytes):
        return bench_cascade.tag_variant(spark, work, spec, warm, split_bytes, warmup_split_bytes)

    bench_cascade.main(["--docs", "24", "--train-per-file", "30", "--shape", "tiny", "--cores", "2",
                        "--corpus", str(shared_corpus), "--tmp", str(tmp_path)], run_variant=in_session)
    out = json.loads(capsys.readouterr().out)  # the whole stdout is one JSON object
    good, problems = harness.validate_figures(out)
    assert problems == [] and len(good) == 5
    by_name = {f["name"]: f for f in good}
    plain, cascade = out["runs"]["plain"], out["runs"]["cascade"]
    assert plain["rows"] == cascade["rows"] == plain["bert_scored"] == 24
    assert plain["tasks"] == cascade["tasks"] == 2  # one byte range per core
    # the cascade's BERT saw the fastText survivors, the ~20% its threshold keeps, and only them
    assert out["check_scored_equals_survivors"] is True
    assert cascade["bert_scored"] == cascade["fasttext_survivors"] == plain["fasttext_survivors"] == 5
    share = next(f for name, f in by_name.items() if name.startswith("cascade: share of documents"))
    assert share["value"] == pytest.approx(5 / 24)
    ratio = by_name["cascade: tag core-s with cascade / without"]["value"]
    assert ratio == pytest.approx(cascade["cpu_s"]["total"] / plain["cpu_s"]["total"])
    rate = next(f for name, f in by_name.items() if "docs/s per core" in name)
    assert rate["unit"] == "docs/s/core" and rate["value"] == pytest.approx(24 / plain["cpu_s"]["total"])
    assert all("tiny BERT (not FineWeb-Edu's shape)" in name for name in by_name if "core-s, fasttext" in name)
    # the planning note is computed from the measured rate and SPEC.md's document count and keep share
    plan = next(n for n in out["notes"] if n.startswith("planning estimate"))
    hours = [float(h.replace(",", "")) for h in re.findall(r"~([\d,.]+) core-hours", plan)]
    assert hours[0] == pytest.approx(2.95e9 / rate["value"] / 3600, rel=0.01)
    # the BERT's part of the cost on SPEC's 65.6%, reading and fastText on every document
    assert 0.656 * hours[0] * 0.99 <= hours[1] <= hours[0] * 1.01
    assert "2.95B" in plan and "65.6%" in plan and "GPUs" in plan


def test_threshold_keeps_the_share_asked_for_without_deciding_on_float_equality():
    scores = [0.9, 0.1, 0.5, 0.7, 0.3, 0.6, 0.2, 0.8, 0.4, 0.55]
    threshold = bench_cascade.keep_threshold(scores, 0.2)
    assert threshold == pytest.approx(0.75) and sum(s >= threshold for s in scores) == 2
    tied = [1.0000100136] * 3 + [0.2] * 7  # fastText's saturated probability: ties keep more, within [0, 1]
    assert bench_cascade.keep_threshold(tied, 0.2) == 1.0


def test_harness_runs_it_by_name_in_quick_mode():
    bench = next(b for b in harness.BENCHMARKS if b.name == "cascade")
    script = harness.BENCH_DIR / bench.script
    assert harness.script_options(script, bench, quick=True, python=harness.sys.executable) == ["--quick"]
