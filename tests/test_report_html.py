"""report.html and the charts: self-contained, deterministic, drawn from the report and sidecars.

The report dict here has the structure `dolmino.report.build_report` writes; the parts are
real memmaps and sidecars written with MemmapPartWriter, so the tokens-per-document figures
are checked against lengths the test chose. The last test builds a real mix with Spark
(`--locked`) and checks what the build leaves in its output: manifest.lock.json, report.html,
the PNGs, and that a release carries them.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from dolmino import doc_lengths, report_html
from dolmino.doc_lengths import BIN_EDGES, histogram, quantile, sidecar_histograms, spread
from dolmino.memmap import MemmapPartWriter

EOS = 100257
LENGTHS = {"web": [3, 50, 51, 700, 1200, 5000], "code": [10, 10, 40, 8000], "math": [100, 101]}


def _source(name: str, planned: float, achieved: float, out_tokens: int, *, removed=None, quarantined=None,
            tok_removed=None, per_task=None) -> dict:
    removed = removed or {}
    tok_removed = tok_removed or {}
    docs_in = 1000
    kept = docs_in - sum(v["docs"] for v in removed.values()) - sum((quarantined or {}).values())
    reports = {"filters[0].decontaminate": {"docs_checked": docs_in, "docs_removed": 0, "tokens_removed": 0,
                                            "per_task": per_task}} if per_task else {}
    return {
        "name": name, "files": 2, "docs_in": docs_in, "bytes_in": 10**6, "quarantined": quarantined or {},
        "removed": removed, "duplicate_ids": 0, "unreadable_bytes": 0, "kept_docs": kept, "kept_bytes": 9 * 10**5,
        "pool_tokens": 4 * out_tokens, "pool_tokens_exact": True, "pool_tokens_manifest": None,
        "tokenized": {"docs": 400, "bytes": 10**5, "tokens": out_tokens, "kept_docs": 400 - sum(
            v["docs"] for v in tok_removed.values()), "kept_tokens": out_tokens, "removed": tok_removed,
                      "control_token_docs": 0},
        "target_tokens": out_tokens, "output_docs": 10, "output_tokens": out_tokens, "passes": 0.25,
        "source_percent_manifest": None, "mix_percent": achieved, "mix_percent_manifest": planned,
        "filter_chain": [], "filter_reports": reports,
    }


def make_report(out: Path, with_decon: bool = True) -> dict:
    """A report of three sources whose parts (written here) hold documents of LENGTHS tokens."""
    parts = []
    rng = np.random.default_rng(0)
    layout = ({"web": slice(0, 3), "code": slice(0, 2)}, {"web": slice(3, 6), "math": slice(0, 2)},
              {"code": slice(2, 4)})
    for index, chosen in enumerate(layout):
        writer = MemmapPartWriter(str(out), index, EOS)
        for src, docs in chosen.items():
            for i, n in enumerate(LENGTHS[src][docs]):
                writer.add(rng.integers(0, 1000, n - 1), f"{src}-{index}-{i}", src, f"{src}/f.jsonl:{index}.{i}")
        stats = writer.close()
        parts.append({"name": f"part-{index:05d}.npy", "size": 4 * stats.tokens, "sha256": "0" * 64,
                      "tokens": stats.tokens, "docs": stats.docs})
    decon = {"gsm8k": {"docs_hit": 4, "tokens_hit": 0, "primary_docs": 4},
             "mmlu": {"docs_hit": 2, "tokens_hit": 0, "primary_docs": 1}} if with_decon else None
    sources = [
        _source("web", 60.0, 59.6, 9000, removed={"decontaminate:overlap>=10%": {"docs": 6, "bytes": 10},
                                                   "exact_duplicate": {"docs": 30, "bytes": 10}},
                quarantined={"malformed_json": 2}, tok_removed={"min_length:tokens<40": {"docs": 7, "tokens": 90}},
                per_task=decon),
        _source("code", 30.0, 30.3, 4500, removed={"code_stars:stars<2": {"docs": 120, "bytes": 10}},
                per_task={"mmlu": {"docs_hit": 1, "tokens_hit": 0, "primary_docs": 1}} if with_decon else None),
        _source("math", 10.0, 10.1, 1500),
    ]
    total = sum(p["tokens"] for p in parts)
    return {
        "manifest": "charts", "manifest_path": "/x/charts.json", "seed": 3, "budget": 15000,
        "tokenizer": "allenai/dolma2-tokenizer", "eos_token_id": EOS, "sources": sources,
        "output": {"tokens": total, "docs": sum(p["docs"] for p in parts), "files": len(parts), "location": str(out),
                   "parts": parts, "files_sha256": {}},
        "totals": {"tokens_tokenized": total, "docs_tokenized": 1200, "tokens_written": total,
                   "tokenized_per_written": 1.0},
        "warnings": ["source 'math': an example warning"], "attributes": str(out / "attributes"),
        "run": {"elapsed_s": 12.5, "spark_master": "local[2]", "stages": {}},
    }


def test_histogram_bins_and_quantiles():
    counts = histogram([1, 2, 3, 1000, 1000, 2**30])
    assert sum(counts) == 6 and len(counts) == len(BIN_EDGES) - 1
    assert counts[-1] == 1  # beyond 2^24 tokens: the last bin
    assert counts[np.searchsorted(BIN_EDGES, 1000, side="right") - 1] == 2
    h = histogram([100] * 50 + [10000] * 50)
    assert 90 < quantile(h, 0.25) <= 120 and 9000 < quantile(h, 0.9) <= 12000
    assert spread(10, 3) == [0, 4, 9] or spread(10, 3) == [0, 5, 9]
    assert spread(5, None) == [0, 1, 2, 3, 4] and spread(5, 8) == [0, 1, 2, 3, 4]


def test_sidecar_histograms_count_every_document(tmp_path):
    report = make_report(tmp_path)
    names = [p["name"] for p in report["output"]["parts"]]
    sample = sidecar_histograms(str(tmp_path), names, None)
    assert sample.complete and sample.parts_read == 3
    for src, lengths in LENGTHS.items():
        assert sample.counts[src] == histogram(lengths), src
    assert sample.docs == sum(len(v) for v in LENGTHS.values())
    part = sidecar_histograms(str(tmp_path), names, 1)
    assert part.parts_read == 1 and not part.complete and sum(part.counts["web"]) == 3


def test_report_html_is_self_contained_with_every_chart(tmp_path):
    report = make_report(tmp_path)
    written = report_html.write_views(str(tmp_path), report, max_parts=None)
    assert written == ["report-mix.png", "report-removals.png", "report-doc-tokens.png", "report-decontamination.png",
                       "report.md", "report.html"]
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    # nothing fetched from anywhere: no external URL, script, stylesheet link or font
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.I)
    assert not re.search(r"@import|url\(", page)
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") or r.startswith("#") for r in refs)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4
    files = {name: (tmp_path / name).read_bytes() for name in written if name.endswith(".png")}
    assert sorted(base64.b64decode(i) for i in images) == sorted(files.values())  # the same PNGs as report.md's
    for png in files.values():
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        assert b"tEXt" not in png and b"tIME" not in png  # no software name, no date: reproducible bytes
    for title in ("Mix composition", "Removals by reason", "Tokens per document", "Decontamination hits"):
        assert title in page
    assert "source &#x27;math&#x27;: an example warning" in page  # warnings shown, escaped
    assert "Every part&#x27;s sidecar read (12 document instances)" in page
    md = (tmp_path / "report.md").read_text()
    for name in files:
        assert f"]({name})" in md
    assert md.index("## Charts") < md.index("## Warnings")  # charts right after the summary table
    assert "| web | decontaminate:overlap>=10% | 6 |" in md  # the build's tables are all still there


def test_charts_are_reproducible(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ra, rb = make_report(a), make_report(b)
    rb["output"]["location"] = ra["output"]["location"]
    report_html.write_views(str(a), ra)
    report_html.write_views(str(b), rb)
    for name in ("report-mix.png", "report-removals.png", "report-doc-tokens.png", "report-decontamination.png",
                 "report.html"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _many_sources_report(tmp_path: Path) -> dict:
    """Fourteen sources with long names, many removal reasons, decontamination hits from most of
    them and lengths from tens to millions of tokens: the layout's hard cases."""
    report = make_report(tmp_path)
    rng = np.random.default_rng(1)
    names = ["dclm-baseline-1.0-fasttext-top10pct", "starcoder", "pes2o", "arxiv", "open-web-math", "algebraic-stack",
             "wiki", "flan", "stackexchange-qa", "tulu-math", "gsm8k-synth", "metamath-owmfilter",
             "codesearchnet-owmfilter", "mathcoder2-synthmath"]
    reasons = ["exact_duplicate", "minhash_duplicate", "code_stars:stars<2", "quality:fasttext<0.1", "language:not_en",
               "repetition:lines>30%", "decontaminate:overlap>=10%", "pii:emails>5", "url_blocklist:adult",
               "length:chars<100", "toxicity:score>0.4"]
    tasks = ["gsm8k", "mmlu", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "triviaqa", "naturalqs",
             "minerva_math"]
    report["sources"] = [
        _source(n, 100 / len(names), 100 / len(names) * (1 + rng.normal(0, 0.05)), int(rng.integers(10**5, 10**9)),
                removed={r: {"docs": int(rng.integers(1, 200)), "bytes": 1}
                         for r in rng.choice(reasons, 4, replace=False)},
                quarantined={"malformed_json": 3} if i % 3 == 0 else None,
                tok_removed={"min_length:tokens<40": {"docs": int(rng.integers(1, 30)), "tokens": 9}},
                per_task={t: {"docs_hit": int(rng.integers(1, 50)), "tokens_hit": 0, "primary_docs": 1}
                          for t in rng.choice(tasks, 5, replace=False)})
        for i, n in enumerate(names)]
    report["doc_tokens_hist"] = {n: histogram(np.exp(rng.normal(rng.uniform(3, 9), rng.uniform(0.1, 2.5), 200))
                                              .astype(int) + 1) for n in names}
    return report


def _layout_boxes(fig) -> list[tuple[str, object]]:
    """(what, window extent) of everything a reader reads: titles, axis and tick labels, texts, legends."""
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    boxes = []

    def add(artist, what):
        if artist.get_visible() and (not isinstance(artist, Text) or artist.get_text()):
            boxes.append((what, artist.get_window_extent(renderer)))

    for a in fig.get_children():
        if isinstance(a, Text):
            add(a, f"figure text {a.get_text()!r}")
    for ax in fig.axes:
        for a in ax.get_children():
            if isinstance(a, Text):
                add(a, f"text {a.get_text()!r}")
            elif isinstance(a, Legend):
                add(a, f"legend of {ax.get_title(loc='left')!r}")
        for axis in (ax.xaxis, ax.yaxis):
            add(axis.label, f"axis label {axis.label.get_text()!r}")
            axis.get_majorticklabels()  # ticks and labels as drawn
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():  # those in the view are drawn
                if lo - 1e-9 * (hi - lo) <= tick.get_loc() <= hi + 1e-9 * (hi - lo):
                    add(tick.label1, f"tick label {tick.label1.get_text()!r} of {ax.get_title(loc='left')!r}")
    return boxes


@pytest.mark.parametrize("many", [False, True], ids=["three-sources", "fourteen-sources"])
def test_chart_texts_are_inside_and_apart(tmp_path, monkeypatch, many):
    """Margins are computed, not searched: every title, label, tick label, text and legend lies
    inside its figure and overlaps no other (a margin too small clips, one placed wrong overlaps)."""
    report = _many_sources_report(tmp_path) if many else make_report(tmp_path)
    checked = []
    png = report_html._png

    def check(fig):
        out = png(fig)  # drawn: the positions are final
        boxes = _layout_boxes(fig)
        page = fig.bbox
        for what, b in boxes:
            assert b.x0 >= page.x0 - 1 and b.y0 >= page.y0 - 1 and b.x1 <= page.x1 + 1 and b.y1 <= page.y1 + 1, \
                f"{what} is clipped: {b} outside {page}"
        for i, (what, b) in enumerate(boxes):
            for other, c in boxes[i + 1:]:
                overlap_w = min(b.x1, c.x1) - max(b.x0, c.x0)
                overlap_h = min(b.y1, c.y1) - max(b.y0, c.y0)
                assert overlap_w <= 1 or overlap_h <= 1, f"{what} overlaps {other}"
        checked.append(len(boxes))
        return out

    monkeypatch.setattr(report_html, "_png", check)
    charts = report_html.make_charts(report, str(tmp_path), None)
    assert [c.key for c in charts] == ["mix", "removals", "doc_tokens", "decontamination"]
    assert len(checked) == 4 and min(checked) > 10


def test_chart_data(tmp_path):
    report = make_report(tmp_path)
    reasons, per_source, denominators = report_html._reason_segments(report["sources"], "pool")
    assert reasons == ["code_stars:stars<2", "exact_duplicate", "decontaminate:overlap>=10%",
                       "quarantined: malformed_json"]
    assert per_source[0] == {"decontaminate:overlap>=10%": 6, "exact_duplicate": 30, "quarantined: malformed_json": 2}
    assert denominators == [1000, 1000, 1000]
    reasons, per_source, denominators = report_html._reason_segments(report["sources"], "tokenized")
    assert reasons == ["min_length:tokens<40"] and denominators == [400, 400, 400]
    assert report_html.decontamination_hits(report) == {"gsm8k": {"web": 4}, "mmlu": {"web": 2, "code": 1}}
    caption = report_html.chart_decontamination(report).caption
    assert caption.startswith("Removed documents holding n-grams") and "6 documents overlapped enough" in caption
    kept = {**report, "sources": [{**report["sources"][0], "filter_reports": {
        "filters[0].decontaminate": {**report["sources"][0]["filter_reports"]["filters[0].decontaminate"],
                                     "docs_partial_overlap": 3}}}]}
    assert "3 more overlapped less than the threshold and were kept" in report_html.chart_decontamination(kept).caption
    # two decontaminate filters in a chain count as "decontaminate#1:" / "#2:" (a reviewer: the caption said 0)
    numbered = {**report, "sources": [{**report["sources"][0], "removed": {
        "decontaminate#1:overlap>=10%": {"docs": 4, "bytes": 1}, "decontaminate#2:overlap>=20%": {"docs": 2, "bytes": 1}}}]}
    assert "6 documents overlapped enough to be removed" in report_html.chart_decontamination(numbered).caption
    many = [{**report["sources"][0], "removed": {f"r{i}": {"docs": i + 1, "bytes": 1} for i in range(12)},
             "quarantined": {}}]
    reasons, per_source, _ = report_html._reason_segments(many, "pool")
    assert len(reasons) == report_html.MAX_REASONS and reasons[-1] == "other reasons"
    assert per_source[0]["other reasons"] == sum(range(1, 5)) and sum(per_source[0].values()) == sum(range(1, 13))


def test_charts_follow_the_data(tmp_path):
    report = make_report(tmp_path)
    report_html.write_views(str(tmp_path), report)
    assert (tmp_path / "report-decontamination.png").exists()
    clean = make_report(tmp_path, with_decon=False)
    written = report_html.write_views(str(tmp_path), clean)
    assert "report-decontamination.png" not in written
    assert not (tmp_path / "report-decontamination.png").exists()  # a stale chart is removed
    assert "Decontamination hits" not in (tmp_path / "report.html").read_text()


def test_exact_histogram_in_the_report_wins(tmp_path):
    report = make_report(tmp_path)
    report["doc_tokens_hist"] = {"web": histogram([5] * 9)}
    counts, note, sampled = report_html.length_counts(report, str(tmp_path), 1)
    assert counts == {"web": histogram([5] * 9)} and note == "Every part counted." and sampled == ""


def test_build_hook_never_fails_the_build(tmp_path, monkeypatch):
    report = make_report(tmp_path)

    def broken(*args, **kwargs):
        raise ValueError("no sidecar today")

    monkeypatch.setattr(report_html, "make_charts", broken)
    assert report_html.write_views(str(tmp_path), report, strict=False) == ["report.md"]
    assert "report.html and the charts were not written (ValueError: no sidecar today)" in report["warnings"][-1]
    assert (tmp_path / "report.md").read_text().startswith("# Mix charts")
    with pytest.raises(ValueError):
        report_html.write_views(str(tmp_path), report)


def test_cli(tmp_path, capsys):
    report = make_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert report_html.main([str(tmp_path), "--sample-parts", "2"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert "Sidecars of 2 of 3 parts, evenly spaced" in (tmp_path / "report.html").read_text()
    assert report_html.main([str(tmp_path / "nothing")]) == 2
    assert "no readable report.json" in capsys.readouterr().err
    # the build's warnings, which the page shows, on the console too: it said only what it wrote (a tester)
    report["warnings"] = ["source 'web': it contributes 10 of its 20 target tokens"]
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert report_html.main([str(tmp_path), "--sample-parts", "2"]) == 0
    assert capsys.readouterr().err == ("dolmino report: warning: source 'web': it contributes 10 of its 20 target "
                                       "tokens\n")


def test_cli_on_a_build_it_cannot_write_says_where_it_can_draw(tmp_path, capsys, monkeypatch):
    """Another user's build, or a read-only mount: "report-mix.png.tmp7618479: Permission denied", a temporary
    file's name and no way on (found by a tester)."""
    import dolmino.storage

    report = make_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps(report))
    real_access = dolmino.storage.os.access
    monkeypatch.setattr(dolmino.storage.os, "access", lambda p, mode: str(p) != str(tmp_path) and real_access(p, mode))
    assert report_html.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"dolmino report: error: {tmp_path}: cannot be written ({tmp_path} is read-only or not writable "
                   "here), and the report is drawn beside its report.json: copy report.json to a directory you can "
                   "write and run `dolmino report` there\n"), err
    assert not (tmp_path / "report.html").exists()


def test_a_damaged_report_or_sidecar_is_one_line(tmp_path, capsys):
    """A report.json missing a field the views read, or holding another type, and a damaged
    sidecar (read for builds whose report has no histogram) were tracebacks, exit 1 (found by
    a tester): one line naming the field or the file, exit 2."""
    good = make_report(tmp_path)
    report_path = tmp_path / "report.json"
    prefix = f"dolmino report: error: {tmp_path}: report.json is not a build report this version draws: "
    for damage, problem in (
            (lambda r: r.pop("sources"), "sources is missing"),
            (lambda r: r.pop("output"), "output is missing"),
            (lambda r: r["output"].pop("tokens"), "output.tokens is missing"),
            (lambda r: r["output"].update(tokens="3999275"), "output.tokens is str '3999275', not an integer"),
            (lambda r: r.update(budget="4M"), "budget is str '4M', not an integer"),
            (lambda r: r["sources"][1].pop("removed"), "sources[1].removed is missing"),
            (lambda r: r.update(warnings="one"), "warnings is not a list"),
            # read by the tables, after the charts were drawn (found by a tester)
            (lambda r: r.pop("totals"), "totals is missing"),
            (lambda r: r["totals"].pop("tokens_tokenized"), "totals.tokens_tokenized is missing"),
            (lambda r: r.pop("run"), "run is missing"),
            (lambda r: r["output"].pop("files"), "output.files is missing"),
            (lambda r: r.update(sources=[]), "sources is empty"),
            (lambda r: r["sources"][0].pop("target_tokens"), "sources[0].target_tokens is missing"),
            (lambda r: r["sources"][0].pop("source_percent_manifest"), "sources[0].source_percent_manifest is missing"),
            (lambda r: r["sources"][0].update(pool_tokens_exact=1), "sources[0].pool_tokens_exact is int '1', not "
                                                                    "true or false"),
            (lambda r: r["sources"][2]["tokenized"].update(removed=None), "sources[2].tokenized.removed is missing"),
            # the tokens-per-document chart's bins: a list of another length was matplotlib's traceback (a tester)
            (lambda r: r.update(doc_tokens_hist={"web": [1] * 93}), "doc_tokens_hist['web'] holds 93 bins, not 96"),
            (lambda r: r.update(doc_tokens_hist={"web": ["1"] * 96}), "doc_tokens_hist['web'] is not a list of counts"),
            (lambda r: r.update(doc_tokens_hist=[]), "doc_tokens_hist is list, not an object")):
        report = json.loads(json.dumps(good))
        damage(report)
        report_path.write_text(json.dumps(report))
        assert report_html.main([str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err == prefix + problem + " (a damaged report?)\n", err
        assert not list(tmp_path.glob("report*.png"))  # nothing drawn of it
    report_path.write_text("[]")
    assert report_html.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.endswith("report.json is not a build report this version draws: the file is "
                                            "not an object (a damaged report?)\n")
    report_path.unlink()
    report_path.mkdir()
    assert report_html.main([str(tmp_path)]) == 2
    assert "no readable report.json" in capsys.readouterr().err
    report_path.rmdir()
    report_path.write_text(json.dumps(good))  # no doc_tokens_hist: the sidecars are read
    sidecar = tmp_path / "part-00001.csv.gz"
    for data in (gzip.compress(b"hello,world\n"), gzip.compress(b"x,y,id,web,loc\n"), b"not gzip", None):
        if data is None:
            sidecar.unlink()
        else:
            sidecar.write_bytes(data)
        assert report_html.main([str(tmp_path), "--all-parts"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"dolmino report: error: {sidecar}: not a readable sidecar (") and \
            err.endswith("`dolmino validate` checks the build\n") and err.count("\n") == 1, err


def test_cli_on_a_build_on_s3(tmp_path, capsys, s3_server):
    """`dolmino report s3://...`: report.json and the sidecars read from the bucket, the views
    written back beside them."""
    import uuid

    from dolmino import s3

    report = make_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps(report))
    bucket = f"report-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    for path in sorted(tmp_path.iterdir()):
        s3.client().upload_file(str(path), bucket, f"builds/b1/{path.name}")
    assert report_html.main([f"s3://{bucket}/builds/b1", "--sample-parts", "2"]) == 0
    html = s3.get_bytes(f"s3://{bucket}/builds/b1/report.html").decode()
    assert "Sidecars of 2 of 3 parts, evenly spaced" in html and "<img" in html
    assert s3.get_bytes(f"s3://{bucket}/builds/b1/report.md").decode().startswith("#")
    assert report_html.main([f"s3://{bucket}/builds/nothing"]) == 2
    assert "no readable report.json" in capsys.readouterr().err


@pytest.mark.slow
def test_locked_build_writes_lock_and_report_html_and_releases_carry_them(tmp_path, spark, capsys):
    """A real build (Spark, real text) with --locked, through the build's command line."""
    from conftest import corpus_documents
    from dolmino.build.cli import main as build_main
    from dolmino.documents import write_documents
    from dolmino.lock import write_lock
    from dolmino.manifest import load_manifest
    from dolmino.release import collect_build_files

    data = tmp_path / "data"
    for name, fname in (("web", "web.jsonl.zst"), ("wiki", "encyclopedic.jsonl.zst")):
        docs = corpus_documents(fname, 40)
        write_documents(str(data / name / "a.jsonl.zst"), docs + docs[:5])  # 5 exact duplicates
    manifest = {"name": "locked-e2e", "version": 1, "seed": 5, "budget": 60000, "data_root": "data",
                "output_format": {"tokens_per_file": "20K"},
                "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 70.0,
                             "filters": [{"type": "repeated_ngrams"}]},
                            {"name": "wiki", "paths": ["wiki/*.jsonl.zst"], "mix_percent": 30.0,
                             "dedup": {"exact": True}}]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    lock = write_lock(load_manifest(str(path)))
    out = tmp_path / "out"
    assert build_main(["--manifest", str(path), "--out", str(out), "--locked", "--quiet", "--master", "local[2]"]) == 0
    capsys.readouterr()
    assert (out / "manifest.lock.json").read_bytes() == Path(lock).read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert not any("report.html" in w for w in report["warnings"])
    page = (out / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3  # no decontamination in this manifest
    assert report["sources"][1]["removed"]["exact_duplicate"]["docs"] == 5
    assert not (out / "report-decontamination.png").exists() and (out / "report-removals.png").exists()
    names = [p["name"] for p in report["output"]["parts"]]
    assert len(names) >= 3
    # the histogram drawn is the one of the memmaps' own sidecars
    counts, _, _ = report_html.length_counts(report, str(out), None)
    assert sum(sum(c) for c in counts.values()) == report["output"]["docs"]
    released = {rel for rel, _ in collect_build_files(str(out))}
    assert {"manifest.lock.json", "report.html", "report-mix.png", "report.md", "report.json"} <= released
    assert doc_lengths.sidecar_name(names[0]) == "part-00000.csv.gz"


def test_sample_parts_below_one_is_refused(capsys):
    """Found by a tester: 0 and -1 were taken as 1, unsaid."""
    import pytest

    with pytest.raises(SystemExit) as exit_:
        report_html.main(["unused", "--sample-parts", "0"])
    assert exit_.value.code == 2 and "--sample-parts: must be >= 1, got 0" in capsys.readouterr().err


def test_report_md_names_the_cluster_and_the_persisted_bytes():
    """The README says report.md gives the persisted bytes and the master and executors; they
    were in report.json only (found by a tester)."""
    from dolmino.report import run_lines

    text = "\n".join(run_lines({"spark_master": "spark://10.0.0.1:7077", "executors": 2, "executor_cores": 8,
                                "executor_hosts": ["10.0.0.2", "10.0.0.3"], "application_id": "app-1",
                                "persisted_bytes": {"pool": 2_000_000, "tokenize": 2_350_000_000}}))
    # bytes in bytes' units: format_count's "B" (billions) read "2.35BB" (a reviewer)
    assert "Persisted (Spark storage, memory and disk): pool 2 MB, tokenize 2.35 GB." in text
    assert "Spark: master spark://10.0.0.1:7077, 2 executor(s), 8 core(s) in all, on 10.0.0.2, 10.0.0.3" in text
    # the cores each task ran on (spark.task.cpus: its tokenizer's and scorers' threads) were not said (a tester)
    text = "\n".join(run_lines({"spark_master": "local[4]", "executors": 1, "executor_cores": 4, "task_cpus": 2}))
    assert "Spark: master local[4], 1 executor(s), 4 core(s) in all, 2 per task;" in text


def test_a_multi_line_coverage_note_stays_one_table_row(tmp_path):
    """BBH's note held pip's whole stderr (index warnings, several ERROR lines): report.md's
    coverage table split at each newline (found by a tester). The fetch keeps pip's ERROR lines
    as one line, and the table makes any note one cell."""
    from dolmino.assets import pip_error
    from dolmino.report import render_markdown

    stderr = ("WARNING: Location 'file:///opt/pypi/simple/bigbench/' is ignored: it is neither a file nor a "
              "directory.\nERROR: Could not find a version that satisfies the requirement bigbench==1.0.0\n"
              "ERROR: No matching distribution found for bigbench==1.0.0\n")
    assert pip_error(stderr) == ("Could not find a version that satisfies the requirement bigbench==1.0.0; No "
                                 "matching distribution found for bigbench==1.0.0")
    report = make_report(tmp_path)
    report["sources"][0]["decontamination_coverage"] = [{"filter": "decontaminate", "sets": [
        {"name": "BBH", "status": "missing", "instances": {}, "note": "unavailable: pip said\n" + stderr + "a | b"}]}]
    rows = [line for line in render_markdown(report).splitlines() if line.startswith("| web | BBH |")]
    assert len(rows) == 1 and rows[0].endswith("bigbench==1.0.0 a \\| b |") and rows[0].count(" | ") == 4


def test_a_coverage_note_with_a_pipe_is_one_cell_of_the_page(tmp_path):
    """report.md escapes a note's "|" to keep it one cell; report.html split its rows at every "|": the note
    was cut in two, a stray backslash ending the first half, in a row one cell longer than its header (found by
    a tester)."""
    report = make_report(tmp_path)
    report["sources"][0]["decontamination_coverage"] = [{"filter": "decontaminate", "sets": [
        {"name": "BBH", "status": "missing", "instances": {}, "note": "pip said a | b"}]}]
    page = report_html.render_html(report, [])
    row = next(r for r in page.splitlines() if "<td>BBH</td>" in r)
    assert row.endswith('<td>missing</td><td class="num">-</td><td>pip said a | b</td></tr>'), row
    assert row.count("<td") == 5, row


def test_a_sampled_length_chart_says_so_on_the_chart(tmp_path, monkeypatch):
    """An older build's report (no doc_tokens_hist) is drawn from a few parts' sidecars: the PNG
    said "3 docs" per source, read as the mix's count by anyone seeing it without its caption (a
    tester). The chart itself names the sample; a complete count says nothing of one."""
    from matplotlib.text import Text

    report = make_report(tmp_path)
    texts: list[str] = []
    png = report_html._png

    def keep(fig):
        texts.extend(t.get_text() for t in fig.findobj(Text))
        return png(fig)

    monkeypatch.setattr(report_html, "_png", keep)
    assert report_html.length_counts(report, str(tmp_path), 1)[2] == "1 of 3 parts"
    report_html.make_charts(report, str(tmp_path), 1)
    assert "Tokens per document instance, per source (sample: sidecars of 1 of 3 parts)" in texts
    assert any(t.startswith("3 docs sampled\n") for t in texts)  # part 0 holds 3 of web's 6 documents
    texts.clear()
    report_html.make_charts(report, str(tmp_path), None)
    assert "Tokens per document instance, per source" in texts and not any("sampl" in t for t in texts)
    assert any(t.startswith("6 docs\n") for t in texts)


def test_a_chart_failure_is_in_report_md_and_leaves_no_earlier_page(tmp_path, monkeypatch):
    """The build's warning that it drew no charts reached report.json and the console, not the
    report.md written just before it; an earlier build's report.html and charts in the same --out
    stayed, describing another build. `dolmino report` then draws them, without the warning that
    they were not drawn (report.json keeps it, as certified). Found by a tester."""
    report = make_report(tmp_path)
    report_html.write_views(str(tmp_path), json.loads(json.dumps(report)))  # an earlier build's views
    assert (tmp_path / "report.html").exists() and (tmp_path / "report-mix.png").exists()

    def broken(*args, **kwargs):
        raise ValueError("no sidecar today")

    monkeypatch.setattr(report_html, "make_charts", broken)
    assert report_html.write_views(str(tmp_path), report, strict=False) == ["report.md"]
    warning = "report.html and the charts were not written (ValueError: no sidecar today)"
    assert report["warnings"][-1].startswith(warning)
    assert f"- {warning}" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "report.html").exists() and not list(tmp_path.glob("report-*.png"))
    monkeypatch.undo()
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert report_html.main([str(tmp_path)]) == 0
    for name in ("report.md", "report.html"):
        text = (tmp_path / name).read_text()
        assert "were not written" not in text and "an example warning" in text, name
    assert json.loads((tmp_path / "report.json").read_text())["warnings"][-1].startswith(warning)


def test_report_of_a_file_or_a_release_is_one_line(tmp_path, capsys):
    """`dolmino report OUT/report.json` was a NotADirectoryError traceback, and a release's prefix
    (its files under data/<publish id>/) was "not a finished build" (found by a tester)."""
    (tmp_path / "report.json").write_text(json.dumps(make_report(tmp_path)))
    assert report_html.main([str(tmp_path / "report.json")]) == 2
    assert capsys.readouterr().err == (f"dolmino report: error: {tmp_path / 'report.json'}: not a directory; give the "
                                       "build directory that holds report.json\n")
    release = tmp_path / "release"
    release.mkdir()
    (release / "RELEASE.json").write_text(json.dumps({"format": "dolmino-release/1", "files": []}))
    assert report_html.main([str(release)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dolmino report: error: {release}: a release (RELEASE.json), which is immutable") \
        and err.count("\n") == 1, err
    # a pulled release (its report.json and RELEASE.json side by side): its views are part of what RELEASE.json's
    # digests certify, and redrawing them in place changed it unsaid (found by a tester)
    (release / "report.json").write_text(json.dumps(make_report(release)))
    before = sorted(p.name for p in release.iterdir())
    assert report_html.main([str(release)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dolmino report: error: {release}: a pulled release (RELEASE.json)") \
        and "copy the directory without its RELEASE.json" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in release.iterdir()) == before
    copy = tmp_path / "copy"  # the remedy, as said (a copy with RELEASE.json was refused again)
    shutil.copytree(release, copy, ignore=shutil.ignore_patterns("RELEASE.json"))
    assert report_html.main([str(copy)]) == 0, capsys.readouterr().err


HOSTILE_NAME = "web/x\x1b[31mRED\u202eevil\n# Heading | pipe.jsonl.gz"
SHOWN_NAME = "web/x\\x1b[31mRED\\u202eevil\\n# Heading | pipe.jsonl.gz"


def test_a_file_name_with_control_characters_is_shown_escaped_in_every_view(tmp_path, capsys):
    """Input file names reach the warnings whole: a name holding ESC coloured the console red, U+202E showed
    it reversed, and a newline cut report.md's list item in two, the rest of the name a heading of report.html's
    tables (found by a tester). The warnings name it escaped, and the views escape a report.json's warnings."""
    from types import SimpleNamespace

    from dolmino.report import _broken_files, empty_compressed_warnings, render_markdown

    unit = SimpleNamespace(source_index=0, file=SimpleNamespace(name=HOSTILE_NAME, size=0))
    [empty] = empty_compressed_warnings(["web"], [unit])
    [broken] = _broken_files("web", [(HOSTILE_NAME, 370, 10)])
    assert f"header ({SHOWN_NAME}), read as" in empty and f"first: {SHOWN_NAME} at byte 370)" in broken
    report = make_report(tmp_path)
    report["warnings"] = [f"source 'web': first: {HOSTILE_NAME}"]  # a report.json from elsewhere
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert report_html.main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err == f"dolmino report: warning: source 'web': first: {SHOWN_NAME}\n"
    md = render_markdown(report)
    assert f"\n- source 'web': first: {SHOWN_NAME}\n" in md and "\x1b" not in md and "\u202e" not in md
    page = (tmp_path / "report.html").read_text()
    assert "\x1b" not in page and "\u202e" not in page and "<h2>Heading" not in page
    assert page.count(f"<li>source &#x27;web&#x27;: first: {SHOWN_NAME}</li>") == 2  # the warnings box, the tables


# A file name (in a warning, a custom filter's reason) that Markdown would act on: a tag, a code span, emphasis,
# a link, strikethrough, an entity, and a "|" that splits a table row.
MARKDOWN_NAME = "web/<img src=x onerror=alert(1)> `rm` *b* _x_ [l](http://e) ~~s~~ &lt; a|b.jsonl"


def test_names_in_report_md_are_text_not_markdown(tmp_path):
    """report.md wrote names and messages raw, and GitHub renders it in a PR review: a file named
    `<img src=x onerror=...>` was HTML there, a reason holding "|" split its row into a cell more than
    the header's, backticks, `*` and `[..](..)` became code, emphasis and a link (t242). Each is
    backslash-escaped where Markdown would act; report.html shows the name as written."""
    import html

    from dolmino.report import render_markdown

    report = make_report(tmp_path)
    report["warnings"] = [f"source 'web': first: {MARKDOWN_NAME}"]
    report["sources"][0]["removed"][f"custom:{MARKDOWN_NAME}"] = {"docs": 1, "bytes": 1}
    md = render_markdown(report)
    escaped = r"web/\<img src=x onerror=alert(1)> \`rm\` \*b\* \_x\_ [l\](http://e) \~\~s\~\~ \&lt; a"
    assert f"\n- source 'web': first: {escaped}|b.jsonl\n" in md
    [row] = [line for line in md.splitlines() if line.startswith("| web | custom:")]
    assert row == f"| web | custom:{escaped}\\|b.jsonl | 1 | 1 | |"
    assert len(re.split(r"(?<!\\)\|", row)) == len("| source | reason | docs | bytes | tokens |".split("|"))
    page = report_html.render_html(report, [])
    assert page.count(f"<li>source &#x27;web&#x27;: first: {html.escape(MARKDOWN_NAME)}</li>") == 2
    assert f"<td>custom:{html.escape(MARKDOWN_NAME)}</td>" in page


def test_report_of_a_url_a_torn_report_and_its_last_line_say_what_they_are(tmp_path, capsys, monkeypatch):
    """`dolmino report https://user:token@host/mix` read the local directory `https:/user:token@host/mix`: with
    none there, "no readable report.json (not a finished build)" of a build that may be finished; with one there,
    its last line printed the token that the errors redact. A report.json that is there but no longer JSON (edited
    by hand) was "not a finished build" too (found by a tester)."""
    monkeypatch.chdir(tmp_path)
    report = json.dumps({**make_report(tmp_path), "doc_tokens_hist": {"web": histogram([3, 50])}})  # no sidecars
    local = tmp_path / "https:" / "user:hf_SECRET@host" / "mix"
    local.mkdir(parents=True)
    (local / "report.json").write_text(report)
    assert report_html.main(["https://user:hf_SECRET@host/mix"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("dolmino report: error: https://***@host/mix: draws a build in a local directory or under "
                            "an s3:// prefix, not at a https:// URL; download the build first\n")
    assert not captured.out and not (local / "report.html").exists()
    signed = tmp_path / "mix?X-Amz-Signature=SECRETSIG"
    signed.mkdir()
    (signed / "report.json").write_text(report)
    assert report_html.main([str(signed)]) == 0
    out = capsys.readouterr().out
    assert "SECRETSIG" not in out and out.endswith(f" to {tmp_path}/mix?X-Amz-Signature=***\n")
    (signed / "report.json").write_text(report[:200])
    assert report_html.main([str(signed)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dolmino report: error: {tmp_path}/mix?X-Amz-Signature=***: report.json is not JSON (") \
        and err.endswith("); a damaged report?\n") and err.count("\n") == 1, err
