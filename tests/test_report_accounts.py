"""What a build's report says about the build as a whole, where one run's work differs from it.

A build killed in its write stage and run again keeps its plan (and the parts it committed): the
rerun's report gives the whole build's documents and tokens (tests/test_build_mix.py checks them
against a clean build's), while its stages, attribute counts and time are the rerun's own. The
report must say which figures are which, and that the build resumed.
"""

from __future__ import annotations

from test_report_html import make_report

from dolmino import report_html
from dolmino.report import render_markdown

STAGE = {"wall_s": 2.5, "task_cpu_s": 1.0, "units": 3, "bytes": 0, "docs": 40, "tokens_read": 0,
         "tokens_tokenized": 0, "tokens_written": 900, "spark": {"executor_run_s": 4.75}}


def _report(tmp_path, **run) -> dict:
    report = make_report(tmp_path)
    report["run"].update({"resumed": False, "units": 4, "units_tagged": 4, "units_reused": 0, "parts_reused": 0,
                          "stages": {"write": STAGE}, **run})
    return report


def test_a_resumed_build_says_so_and_whose_figures_are_whose(tmp_path):
    """A rerun that found no part committed (killed after its plan was saved) said nothing of the
    resume; one that reused parts said so, but not that its stages, "tagged by this build" and the
    page's "build time" were the rerun's alone (found by a tester)."""
    for reused in (0, 2):
        report = _report(tmp_path, resumed=True, units_tagged=0, units_reused=4, parts_reused=reused)
        md = render_markdown(report)
        assert "Resumed: an earlier run of this build stopped after planning the mix, and this run kept its plan" in md
        assert ("; 2 of 3 part(s) were already committed by an earlier run of this plan and reused (verified, not "
                "written again)" in md) == bool(reused)
        assert "the attribute counts, stages and times below are this run's" in md
        assert ("0 of 4 input unit(s) tagged by this run (one or more of their attribute sets written), 4 reused "
                "whole.") in md
        assert "This run's stages: the build resumed, and the earlier run's work is not counted here." in md
        page = report_html.render_html(report, [])
        assert "this run&#x27;s time (resumed; local[2])" in page and "build time" not in page
    # the rerun of a finished build (every part committed) did not stop after planning (found by a tester)
    md = render_markdown(_report(tmp_path, resumed=True, units_tagged=0, units_reused=4, parts_reused=3))
    assert ("Resumed: an earlier run of this build committed every part (it finished, or stopped before its "
            "report), and this run kept its plan; 3 of 3 part(s) were already committed") in md


def test_a_clean_build_reads_as_the_build(tmp_path):
    md = render_markdown(_report(tmp_path))
    assert "Resumed" not in md and "This run's stages" not in md
    assert ("4 of 4 input unit(s) tagged by this build (one or more of their attribute sets written), 0 reused "
            "whole.") in md
    assert "build time (local[2])" in report_html.render_html(_report(tmp_path), [])


def test_stage_times_are_labelled_for_what_they_are(tmp_path):
    """"executor run s: Spark's" did not say it sums the stage's tasks: 4.75 s beside a wall time of
    2.5 s read as a contradiction (found by a tester)."""
    md = render_markdown(_report(tmp_path))
    assert "Wall s: the stage's elapsed time." in md
    assert "executor run s: Spark's run time of the stage's tasks, summed over them (more than wall s when " \
           "tasks run side by side)" in md
    assert "| write | 2.5 | 1.0 | 4.75 |" in md


def test_the_token_filter_chain_starts_after_the_length_limit():
    """The length limit (`doc_too_long`) and the tokenizer (an empty document) decide before the filters that
    need token ids: the first was said to reach the 10 documents the limit had removed, and to keep 36 of 41
    where it kept 26 of 31 (found by a tester)."""
    from dolmino.manifest import manifest_from_dict
    from dolmino.report import _pool_filter_chain

    source = manifest_from_dict({"name": "m", "version": 2, "seed": 1, "budget": "1K", "sources": [
        {"name": "a", "paths": ["*.jsonl"], "mix_percent": 100, "max_doc_tokens": 5000, "filters": [
            {"type": "min_length", "min_chars": 200}, {"type": "min_length", "min_tokens": 60},
            {"type": "repeated_ngrams"}]}]}).sources[0]
    acc = {"removed": {}, "kept_docs": 41, "tokenized": {"docs": 42, "removed": {
        "tokenizer:empty": {"docs": 1, "tokens": 0}, "doc_too_long:tokens>5000": {"docs": 10, "tokens": 90_000},
        "min_length:tokens<60": {"docs": 5, "tokens": 200}, "repeated_ngrams:repeats>=32": {"docs": 2, "tokens": 900}}}}
    chain = [(r["filter"], r["stage"], r["docs_reached"], r["docs_removed"], round(r["share_kept"], 4))
             for r in _pool_filter_chain(source, acc)]
    assert chain == [("min_length", "pool", 41, 0, 1.0), ("min_length", "tokenized", 31, 5, round(26 / 31, 4)),
                     ("repeated_ngrams", "tokenized", 26, 2, round(24 / 26, 4))]


def test_a_source_mostly_quarantined_is_a_warning():
    """161 of 339 documents quarantined (157 over `max_doc_bytes`) were only in report.md's
    quarantine table (found by a tester): a tenth or more is a warning; the odd broken line is not."""
    from dolmino.report import _mostly_quarantined

    acc = {"docs_in": 339, "quarantined": {"doc_too_large": 157, "malformed_json": 3, "missing_text": 1}}
    assert _mostly_quarantined("web", acc) == [
        "source 'web': 161 of its 339 input documents (47%) were quarantined, not used (doc_too_large 157, "
        "malformed_json 3, missing_text 1; see quarantine/web/)"]
    assert _mostly_quarantined("web", {"docs_in": 339, "quarantined": {"malformed_json": 3}}) == []
    assert _mostly_quarantined("web", {"docs_in": 0, "quarantined": {}}) == []


def test_the_why_line_counts_the_sets_it_leaves_out_apart_from_the_bundles():
    """The demo build's first run said "... flan/docs-1046fb145bdb 1 and 5 more set(s) bundle(s)": the unit
    of the counts came after the sets left out, as if those were counted in bundles, and then "dclm/docs-… 1,
    flan/docs-… 1 bundle(s), and 5 more set(s)" gave the first counts no unit (found by testers)."""
    from dolmino.report import retag_lines

    why = {"not_tagged": {"bundles": 1, "detail": "not tagged under this root yet", "first": "web/a.jsonl"}}
    files = {source: {"docs-1": {"reasons": why}} for source in ("dclm", "flan", "wiki", "math", "pes2o")}
    assert retag_lines(files) == ["not tagged under this root yet: dclm/docs-1 (1 bundle), flan/docs-1 (1 bundle), "
                                  "wiki/docs-1 (1 bundle), and 2 more set(s) (first: web/a.jsonl)"]
    files["dclm"]["docs-1"]["reasons"] = {"not_tagged": {**why["not_tagged"], "bundles": 2}}
    assert retag_lines({"dclm": files["dclm"]}) == ["not tagged under this root yet: dclm/docs-1 (2 bundles) "
                                                    "(first: web/a.jsonl)"]


def _built(manifest_data: dict, pools: dict[str, int], written: dict[str, int]) -> dict:
    """`build_report` of a build of `manifest_data` whose sources' pools held `pools` tokens (measured
    exactly) and wrote `written`: the report's own arithmetic, without Spark."""
    import types

    from dolmino.build.select import SourceSelection
    from dolmino.manifest import manifest_from_dict
    from dolmino.report import build_report

    manifest = manifest_from_dict(manifest_data)
    accounts = [{"files": 1, "docs_in": 10, "bytes_in": 1000, "quarantined": {}, "removed": {}, "duplicate_ids": 0,
                 "unreadable_bytes": 0, "kept_docs": 10, "kept_bytes": 1000, "filter_reports": {}}
                for _ in manifest.sources]
    selections = [SourceSelection(s.name, written[s.name], 10, 1000, 0.25, "all", pool_tokens=pools[s.name])
                  for s in manifest.sources]
    part = types.SimpleNamespace(tokens=sum(written.values()), docs=10, tokens_by_source=written,
                                 docs_by_source={n: 1 for n in written}, files=(), doc_hist={}, skipped=False,
                                 masked_by_source=None)
    return build_report(manifest, sum(written.values()), accounts, selections, [], [part],
                        types.SimpleNamespace(bundles=[], tagged_units=0, minhash={}),
                        types.SimpleNamespace(warnings=[], stages={}, persisted=0), elapsed_s=0.0, cluster={},
                        out="out", attributes="attributes", resumed=False)


def test_pools_repeated_past_max_passes_are_one_warning_and_a_stated_max_passes_accepts_them():
    """The demo build's first run warned three times (dclm 9.53x, flan 6.11x, stackexchange 4.94x) of passes
    it takes on purpose, each in a ~260-character line whose remedy did not apply (a reviewer): one line
    names them all, and the manifest's max_passes accepts them."""
    data = {"name": "m", "version": 2, "seed": 1, "budget": "2K", "sources": [
        {"name": n, "paths": [f"{n}/*"], "mix_percent": p} for n, p in (("web", 50), ("qa", 30), ("wiki", 20))]}
    pools, written = {"web": 100, "qa": 100, "wiki": 1000}, {"web": 1000, "qa": 600, "wiki": 400}
    warnings = _built(data, pools, written)["warnings"]
    assert warnings == ["2 sources repeat their pools more than 4 times: web 10x (100-token pool), qa 6x (100-token "
                        "pool); 4 is OLMo 2's recipe's most (Table 13; its microanneals found 4 copies of scarce data "
                        "no better than 2): a larger pool, or a smaller share or budget, repeats a pool less, and a "
                        "higher max_passes in the manifest accepts it"], warnings
    assert _built({**data, "max_passes": 10}, pools, written)["warnings"] == []
    assert _built({**data, "max_passes": 8}, pools, written)["warnings"] == [
        "1 source repeats its pool more than 8 times: web 10x (100-token pool); 8 is the manifest's max_passes: a "
        "larger pool, or a smaller share or budget, repeats a pool less, and a higher max_passes in the manifest "
        "accepts it"]
