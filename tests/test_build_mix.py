"""End-to-end build on real text: manifest -> Spark -> memmaps, checked by an independent reader.

The independent reader uses only numpy and gzip/csv, as OLMo-core or a reviewer would, and
re-tokenizes the source documents itself to prove the memmaps hold exactly those tokens.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from conftest import shared_corpus_file
from dolmino.build.cli import main as build_main
from dolmino.build.mix import build
from dolmino.documents import Quarantine, read_documents, write_documents
from dolmino.manifest import format_count, manifest_from_dict

EOS = 100257

SOURCES = {  # name -> (shared corpus file, docs to take, mix %)
    "web": ("web.jsonl.zst", 300, 45.0),
    "code": ("code.jsonl.zst", 300, 25.0),
    "wiki": ("encyclopedic.jsonl.zst", 200, 20.0),
    "papers": ("academic.jsonl.zst", 60, 10.0),
}
BUDGET = 1_200_000


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Small real-text inputs, plus one damaged file in `web` that must be quarantined."""
    root = tmp_path_factory.mktemp("inputs")
    for name, (fname, n, _) in SOURCES.items():
        docs = []
        for _, doc in read_documents(str(shared_corpus_file(fname)), Quarantine()):
            docs.append(doc)
            if len(docs) == n:
                break
        half = len(docs) // 2
        write_documents(str(root / name / "a.jsonl.zst"), docs[:half])
        write_documents(str(root / name / "b.jsonl.gz"), docs[half:])
    bad = [json.dumps({"id": "ok-1", "text": "A short but fine document about Spark.", "source": "web"}).encode(),
           b'{"id": "broken", "text": "unterminated', b"\xff\xfe\xfa", json.dumps({"id": "nt"}).encode(),
           json.dumps({"id": "ok-2", "text": "Another fine document.", "source": "web"}).encode()]
    (root / "web" / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(bad) + b"\n"))
    return root


def _manifest(inputs: Path, seed: int = 7, **extra) -> dict:
    return {
        "name": "e2e", "version": 1, "seed": seed, "budget": BUDGET, "data_root": str(inputs),
        "output_format": {"tokens_per_file": "400K", "label_mask": True},
        "sources": [
            {"name": name, "paths": [f"{name}/*.jsonl*"], "mix_percent": pct,
             "filters": [{"type": "repeated_ngrams"}] + ([{"type": "code_stars", "min_stars": 2}] if name == "code" else []),
             **({"dedup": {"exact": True}} if name == "wiki" else {})}
            for name, (_, _, pct) in SOURCES.items()
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def built(inputs, spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("mix")
    manifest = manifest_from_dict(_manifest(inputs))
    report = build(manifest, BUDGET, str(out), spark, attributes=str(tmp_path_factory.mktemp("attributes")))
    return out, report


def read_mix(out: Path):
    """Independent reader: numpy + gzip csv only."""
    parts = sorted(p for p in out.glob("part-*.npy") if not p.name.endswith(".label_mask.npy"))
    rows = []
    for p in parts:
        tokens = np.fromfile(p, dtype="<u4")
        with gzip.open(str(p)[:-4] + ".csv.gz", "rt", newline="") as fh:
            prev_end = 0
            for start, end, doc_id, src, loc in csv.reader(fh):
                start, end = int(start), int(end)
                assert start == prev_end, "sidecar rows must tile the file"
                prev_end = end
                assert tokens[end - 1] == EOS
                rows.append((doc_id, src, loc, tokens[start:end - 1].copy()))
            assert prev_end == len(tokens)
    return parts, rows


def test_memmaps_hold_exactly_the_tokenized_documents(built, inputs):
    from tokenizers import Tokenizer

    from dolmino.assets import dolma2_tokenizer_path

    out, report = built
    parts, rows = read_mix(out)
    assert len(parts) == report["output"]["files"] >= 2
    tok = Tokenizer.from_file(str(dolma2_tokenizer_path()))
    originals = {}
    for name in SOURCES:
        for path in sorted((inputs / name).glob("*.jsonl*")):
            for line, doc in read_documents(str(path), Quarantine()):
                originals[f"{path.relative_to(inputs)}:{line}"] = doc
    seen = set()
    for doc_id, src, loc, tokens in rows:
        doc = originals[loc]
        assert doc["id"] == doc_id
        if loc not in seen:  # copies repeat the same tokens; check each document once
            # dolma's semantics (docs/DESIGN.md "Tokenization"): strip, EOS unless already last
            expected = tok.encode(doc["text"].strip(), add_special_tokens=False).ids
            if expected and expected[-1] == EOS:
                expected = expected[:-1]
            assert tokens.tolist() == expected
            seen.add(loc)
        assert EOS not in tokens[:-1] or doc["text"].count("<|endoftext|>")
    assert {src for _, src, _, _ in rows} == set(SOURCES)


def test_label_masks_align_with_tokens(built):
    out, _ = built
    for p in sorted(out.glob("part-*.label_mask.npy")):
        mask = np.fromfile(p, dtype=np.bool_)
        tokens = np.fromfile(str(p).replace(".label_mask.npy", ".npy"), dtype="<u4")
        assert len(mask) == len(tokens) and mask.any()


def test_the_report_counts_the_tokens_the_label_masks_mask(spark, tmp_path):
    """With label masks the trainer skips the repeated n-gram spans they mask, and the report said nothing of
    them: neither how many tokens nor whose (found by a tester). A rerun that reuses the committed parts
    reports the same counts from their commit records."""
    texts = [d["text"] for _, d in read_documents(str(shared_corpus_file("encyclopedic.jsonl.zst")), Quarantine())
             if len(d["text"].strip()) >= 500][:12]
    docs = [{"id": f"d{i}", "text": text[:500] + (" lorem ipsum dolor" * 40 if i % 3 == 0 else "")}
            for i, text in enumerate(texts)]
    write_documents(str(tmp_path / "data" / "enc" / "a.jsonl.zst"), docs)
    spec = {"name": "masks", "version": 2, "kind": "pool", "seed": 1, "data_root": str(tmp_path / "data"),
            "output_format": {"tokens_per_file": "1K", "label_mask": True},
            "sources": [{"name": "enc", "paths": ["enc/*.jsonl*"]}]}
    out = tmp_path / "out"
    masked = None
    for run in range(2):
        report = build(manifest_from_dict(spec), 0, str(out), spark, attributes=str(tmp_path / "attrs"))
        files = report["output"]["files"]
        assert files > 1 and report["run"]["parts_reused"] == (files if run else 0)
        masked = masked or sum(int((~np.fromfile(p, dtype=np.bool_)).sum()) for p in out.glob("*.label_mask.npy"))
        assert masked > 0 and report["output"]["masked_tokens"] == report["sources"][0]["output_masked_tokens"] \
            == masked
        assert f"Label masks: {masked:,} of the tokens written masked (repeated n-gram spans, not trained on): " \
               f"enc {masked:,}." in (out / "report.md").read_text()
    from dolmino.validate import validate_build

    assert not validate_build(out).all_errors()  # validate counts the masks as the build did


def test_source_shares_match_manifest(built):
    out, report = built
    _, rows = read_mix(out)
    total = sum(len(t) + 1 for *_, t in rows)
    assert abs(total - BUDGET) / BUDGET < 0.01
    for name, (_, _, pct) in SOURCES.items():
        got = 100 * sum(len(t) + 1 for _, src, _, t in rows if src == name) / total
        assert abs(got - pct) < 0.5, (name, got, pct)
        entry = next(s for s in report["sources"] if s["name"] == name)
        assert abs(entry["mix_percent"] - got) < 1e-9
    # the tokenizer's ids the trainer checks against its model's (pad was never recorded: a reviewer)
    assert (report["eos_token_id"], report["pad_token_id"], report["vocab_size"]) == (EOS, 100277, 100278)


def test_accounting_and_quarantine_add_up(built):
    out, report = built
    for s in report["sources"]:
        removed = sum(r["docs"] for r in s["removed"].values())
        assert s["docs_in"] == s["kept_docs"] + removed + sum(s["quarantined"].values())
        assert s["bytes_in"] == s["kept_bytes"] + sum(r["bytes"] for r in s["removed"].values())
        tok = s["tokenized"]
        assert tok["docs"] == tok["kept_docs"] + sum(r["docs"] for r in tok["removed"].values())
        assert tok["tokens"] == tok["kept_tokens"] + sum(r["tokens"] for r in tok["removed"].values())
        if s["name"] == "code":  # a pool 4x its target: only a hash-order prefix is tokenized
            assert s["selection"]["mode"] == "prefix" and not s["pool_tokens_exact"]
            assert 0 < tok["docs"] < s["kept_docs"] and tok["kept_tokens"] < 0.5 * s["pool_tokens"]
        else:  # pools near or below their targets are tokenized whole: nothing estimated
            assert s["pool_tokens_exact"] and s["selection"]["mode"] == "all"
            assert tok["docs"] == s["kept_docs"]
    assert report["totals"]["tokenized_per_written"] < 1.15
    # Per stage, tokens read back, tokenized and written apart (one `tokens` figure meant
    # tokenized in one row and written in the next): tokenize rounds tokenize what the sources'
    # accounts say, write reads every kept tokenized document once and writes the output.
    stages = report["run"]["stages"]
    tokenize = [st for name, st in stages.items() if name.startswith("tokenize")]
    assert sum(st["tokens_tokenized"] for st in tokenize) == sum(s["tokenized"]["tokens"] for s in report["sources"])
    kept = sum(s["tokenized"]["kept_tokens"] for s in report["sources"])
    assert stages["write"]["tokens_read"] == kept and stages["write"]["tokens_tokenized"] == 0
    assert stages["write"]["tokens_written"] == report["output"]["tokens"]
    assert stages.get("cut", {"tokens_read": kept})["tokens_read"] == kept
    # tag tokenizes only its tokens-per-byte sample (1 in 1,024 documents: maybe none of this pool's)
    assert stages["tag"]["tokens_tokenized"] < 0.01 * report["output"]["tokens"] and stages["tag"]["tokens_read"] == 0
    assert all(st["tokens_read"] == st["tokens_written"] == 0 for st in tokenize)
    assert stages["pool"]["tokens_tokenized"] == 0
    web = next(s for s in report["sources"] if s["name"] == "web")
    assert web["quarantined"] == {"invalid_utf8": 1, "malformed_json": 1, "missing_text": 1}
    qfiles = list((out / "quarantine" / "web").rglob("*.jsonl.gz"))  # each under its input path
    rows = [json.loads(line) for f in qfiles for line in gzip.open(f, "rt")]
    assert sorted(r["reason"] for r in rows) == ["invalid_utf8", "malformed_json", "missing_text"]
    code = next(s for s in report["sources"] if s["name"] == "code")
    assert code["removed"]["code_stars:stars<2"]["docs"] > 0  # synthetic star counts give it work
    md = (out / "report.md").read_text()
    assert "| tokens read | tokenized | written |" in md
    assert f"| {format_count(kept)} | 0 | {format_count(report['output']['tokens'])} |" in md  # the write stage's row
    assert "| web | 305 | 3 |" in md and "## Quarantined" in md and "| web | invalid_utf8 | 1 |" in md
    assert f"Spark: master {report['run']['spark_master']}, 1 executor(s)" in md and "Persisted (Spark storage" in md


def test_mix_on_stored_attributes_copies_the_quarantine(built, inputs, spark, tmp_path):
    """`dolmino mix` after the tag phase: nothing is tagged or read back for the counts, every
    Spark task is in some stage's record, and the quarantined lines still reach the output
    (from the pool stage's per-unit counts)."""
    out, report = built
    again = tmp_path / "again"
    store = spark.sparkContext._jsc.sc().statusStore()

    def jobs() -> dict[int, int]:
        listed = store.jobsList(None)
        return {job.jobId(): job.numCompletedTasks() for job in (listed.apply(i) for i in range(listed.size()))}

    before = jobs()
    mixed = build(manifest_from_dict(_manifest(inputs)), BUDGET, str(again), spark,
                  attributes=report["attributes"], phase="mix")
    ran = sum(n for job_id, n in jobs().items() if job_id not in before)
    stages = mixed["run"]["stages"]
    assert stages["tag"]["spark"]["tasks"] == 0
    assert sum(st["spark"]["tasks"] for st in stages.values()) == ran, stages
    assert _digest(again) == _digest(out)
    copied = sorted(p.relative_to(again) for p in (again / "quarantine").rglob("*.jsonl.gz"))
    assert copied == sorted(p.relative_to(out) for p in (out / "quarantine").rglob("*.jsonl.gz")) and copied
    web = next(s for s in mixed["sources"] if s["name"] == "web")
    assert web["quarantined"] == {"invalid_utf8": 1, "malformed_json": 1, "missing_text": 1}


def test_the_pool_stage_of_a_mix_runs_two_spark_jobs(built, inputs, spark, tmp_path):
    """The units' accounts, the duplicate ids and exact dedup's losers come from one shuffle, the
    pool's bucket totals from a second job: as four jobs (18 tasks on bench_scale's pool) the
    stage paid Spark's per-job and per-task costs twice over, ~0.15 core-s of every mix."""
    out, report = built
    store = spark.sparkContext._jsc.sc().statusStore()

    def groups() -> dict[int, str]:
        listed = store.jobsList(None)
        jobs = (listed.apply(i) for i in range(listed.size()))
        return {job.jobId(): job.jobGroup().get() if job.jobGroup().isDefined() else "" for job in jobs}

    before = groups()
    mixed = build(manifest_from_dict(_manifest(inputs)), BUDGET, str(tmp_path / "again"), spark,
                  attributes=report["attributes"], phase="mix")
    ran = [group.split("#")[0] for job_id, group in groups().items() if job_id not in before]
    assert ran.count("pool") == 2, ran
    assert _digest(tmp_path / "again") == _digest(out)
    assert [s["duplicate_ids"] for s in mixed["sources"]] == [s["duplicate_ids"] for s in report["sources"]]
    assert [s["removed"] for s in mixed["sources"]] == [s["removed"] for s in report["sources"]]


def test_greedy_fills_take_their_members_from_the_tokenize_rounds(built, inputs, spark, tmp_path):
    """A greedy fill (a pool of at most 250,000 documents) chooses among every tokenized document of
    its source: the rounds' summaries carry their (hash, tokens), where a "cut" job read every
    tokenized document back from Spark's storage for them (~0.15-0.2 core-s a mix on bench_scale's
    pool); the documents chosen are the same."""
    out, report = built
    assert all(s["selection"]["greedy"] for s in report["sources"])
    mixed = build(manifest_from_dict(_manifest(inputs)), BUDGET, str(tmp_path / "again"), spark,
                  attributes=report["attributes"], phase="mix")
    assert "cut" not in mixed["run"]["stages"], list(mixed["run"]["stages"])
    assert _digest(tmp_path / "again") == _digest(out)
    assert [s["output_tokens"] for s in mixed["sources"]] == [s["output_tokens"] for s in report["sources"]]


def test_cuts_within_a_bucket_and_greedy_fills_in_one_mix(built, inputs, spark, tmp_path, monkeypatch):
    """Sources over the small-pool limit are cut within one hash bucket, from a "cut" job that scans
    the tokenized documents again; the greedy ones beside them take their members from the rounds."""
    import dolmino.build.select as select

    out, report = built
    monkeypatch.setattr(select, "SMALL_SOURCE_DOCS", 150)
    mixed = build(manifest_from_dict(_manifest(inputs)), BUDGET, str(tmp_path / "a"), spark,
                  attributes=report["attributes"], phase="mix")
    greedy = {s["name"]: s["selection"]["greedy"] for s in mixed["sources"]}
    assert "cut" in mixed["run"]["stages"] and set(greedy.values()) == {True, False}, greedy
    _, rows = read_mix(tmp_path / "a")
    for s in mixed["sources"]:
        docs = [len(t) + 1 for _, src, _, t in rows if src == s["name"]]
        assert s["output_tokens"] == sum(docs) and abs(sum(docs) - s["target_tokens"]) <= max(docs), s["name"]
    build(manifest_from_dict(_manifest(inputs)), BUDGET, str(tmp_path / "b"), spark,
          attributes=report["attributes"], phase="mix")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(out)


def test_a_mix_that_tags_nothing_broadcasts_no_tag_context(built, inputs, spark, tmp_path, monkeypatch):
    """The tag stage's context holds the tokenizer (2.6 MB pickled): broadcast by every mix that
    tagged nothing, the JVM compressed and stored it for no task."""
    from pyspark import SparkContext

    from dolmino.build.tag import TagContext

    out, report = built
    broadcast = SparkContext.broadcast
    sent: list[str] = []

    def spy(self, value):
        sent.append(type(value).__name__)
        return broadcast(self, value)

    monkeypatch.setattr(SparkContext, "broadcast", spy)
    build(manifest_from_dict(_manifest(inputs)), BUDGET, str(tmp_path / "again"), spark,
          attributes=report["attributes"], phase="mix")
    assert sent and TagContext.__name__ not in sent, sent
    assert _digest(tmp_path / "again") == _digest(out)


def _digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.iterdir()) if p.is_file() and p.name.startswith("part-")}


def test_same_manifest_and_seed_is_byte_identical(built, inputs, spark, tmp_path):
    out, report = built
    again = tmp_path / "again"
    # other task sizes (every file its own task), fresh attributes: not a byte changes
    build(manifest_from_dict(_manifest(inputs)), BUDGET, str(again), spark, attributes=str(tmp_path / "attrs"),
          task_bytes=1)
    assert _digest(out) == _digest(again)
    other = tmp_path / "other-seed"
    build(manifest_from_dict(_manifest(inputs, seed=8)), BUDGET, str(other), spark)
    assert _digest(out) != _digest(other)


def test_cli_reports_missing_inputs_without_starting_spark(tmp_path, capsys):
    m = _manifest(tmp_path / "nowhere")
    path = tmp_path / "m.json"
    path.write_text(json.dumps(m))
    assert build_main(["--manifest", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "no input files match" in capsys.readouterr().err


def test_a_missing_data_root_is_said_once(tmp_path, capsys):
    """Each source's "no input files match" under a data root that does not exist left the reader
    to find the cause (a tester); the hint says the root is not there."""
    m = _manifest(tmp_path / "nowhere")
    path = tmp_path / "m.json"
    path.write_text(json.dumps(m))
    assert build_main(["--manifest", str(path), "--out", str(tmp_path / "o")]) == 2
    assert f"data root '{tmp_path / 'nowhere'}', which does not exist, " in capsys.readouterr().err
    (tmp_path / "nowhere").mkdir()
    assert build_main(["--manifest", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "which does not exist" not in capsys.readouterr().err


def test_cli_names_the_manifest_in_a_field_error(tmp_path, capsys):
    """`dolmino build` / tag / mix and build_mix said "sources[0].mix_percent: expected a number"
    without the file, where plan, diff and lock name it (a reviewer)."""
    m = _manifest(tmp_path)
    m["sources"][0]["mix_percent"] = "abc"
    path = tmp_path / "m.json"
    path.write_text(json.dumps(m))
    assert build_main(["--manifest", str(path), "--out", str(tmp_path / "o")]) == 2
    assert f"error: {path}: sources[0].mix_percent: expected a number, got 'abc'" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--split-size", "--task-size"])
def test_cli_names_sizes_as_bytes(tmp_path, capsys, flag):
    """They said "expected a count like '100B'" (a token count: B, billions; found by a tester)."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(tmp_path)))
    assert build_main(["--manifest", str(path), "--out", str(tmp_path / "o"), flag, "abc"]) == 2
    assert f"{flag}: expected a size in bytes like 256MB, 256M, 64KiB or 1000000" in capsys.readouterr().err


def test_cli_sizes_take_byte_units():
    """README and the help write sizes as "128 MB"; `--task-size 64MB` was refused, its error
    offering "64M" (a reviewer). Byte units: KB / MB / GB powers of ten, KiB / MiB / GiB of two."""
    from dolmino.build.cli import _size
    from dolmino.errors import ManifestError

    assert _size("64MB", "--task-size") == _size("64M", "--task-size") == 64_000_000
    assert _size("128 mb", "--task-size") == 128_000_000 and _size("1GB", "--split-size") == 10**9
    assert _size("256MiB", "--split-size") == 256 * 2**20 and _size("1.5KiB", "--task-size") == 1536
    assert _size("1000000", "--task-size") == 1_000_000
    assert _size("512B", "--task-size") == 512  # bytes, as in MB (the count syntax read 512 billion; a tester)
    for bad in ("0.0005KB", "0MB", "1.0001KiB", "12QB", "MB"):
        with pytest.raises(ManifestError, match="expected a size in bytes"):
            _size(bad, "--task-size")


def test_cli_rejects_bad_budget(tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(tmp_path)))
    assert build_main(["--manifest", str(path), "--budget", "12Q"]) == 2
    assert "--budget" in capsys.readouterr().err
    # a --budget written as more parts than a build makes: refused before Spark, not at its partitioning
    assert json.loads(path.read_text())["output_format"]["tokens_per_file"] == "400K"
    assert build_main(["--manifest", str(path), "--budget", str(400_000 * 100_001)]) == 2
    assert "output_format.tokens_per_file: " in capsys.readouterr().err


def test_mix_reads_an_attributes_root_it_cannot_write(tmp_path, monkeypatch):
    """`dolmino mix` writes nothing under --attributes (it stops where any set is missing), yet a team's tagged
    root mounted read-only, or another user's, was refused as "cannot be written" (found by a tester)."""
    import dolmino.storage
    from dolmino.build.cli import _check_locations
    from dolmino.errors import BuildError

    readonly = tmp_path / "attrs"
    readonly.mkdir()
    real_access = dolmino.storage.os.access
    monkeypatch.setattr(dolmino.storage.os, "access", lambda p, mode: str(p) != str(readonly) and real_access(p, mode))
    _check_locations(str(tmp_path / "out"), str(readonly), "mix")
    with pytest.raises(BuildError, match=r"cannot be written .* \(`dolmino mix` reads a tagged root without writing"):
        _check_locations(str(tmp_path / "out"), str(readonly), "all")  # a build tags what is missing
    with pytest.raises(BuildError, match="--out .*: cannot be written"):
        _check_locations(str(readonly / "out"), str(tmp_path / "a"), "mix")


def test_cli_out_at_a_bucket_root_needs_explicit_attributes(tmp_path, capsys):
    """The default attributes root is beside --out; s3://bucket has no such place (its naive
    parent, s3://attributes, is another bucket)."""
    from dolmino.build.mix import default_attributes_root

    assert default_attributes_root("s3://bucket/mixes/50B") == "s3://bucket/mixes/attributes"
    assert default_attributes_root("s3://bucket/50B/") == "s3://bucket/attributes"
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(tmp_path)))
    for out in ("s3://my-mix-bucket", "s3://my-mix-bucket/"):
        assert build_main(["--manifest", str(path), "--out", out]) == 2
        assert "is a bucket's root" in capsys.readouterr().err


def test_cli_checks_out_and_attributes_before_any_work(tmp_path, capsys, s3_server):
    """Each of these failed only after the tag phase (a traceback for the first two): an --out
    that is a file, a bucket name S3 does not allow, a bucket that does not exist."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(tmp_path)))
    (tmp_path / "afile").write_text("hi")
    afile, attrs, bad = str(tmp_path / "afile"), str(tmp_path / "a"), "'Bad_Bucket' is not a valid S3 bucket"
    cases = [(["--out", afile], f"--out {afile}: exists and is not a directory"),
             (["--out", "s3://Bad_Bucket/x", "--attributes", attrs], bad),
             (["--out", str(tmp_path / "o"), "--attributes", "s3://Bad_Bucket/a"], bad),
             (["--out", "s3://no-such-bucket-here/x", "--attributes", str(tmp_path / "a")],
              "s3://no-such-bucket-here: bucket does not exist")]
    for args, message in cases:
        assert build_main(["--manifest", str(path), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "o").exists()


def test_cli_refuses_an_out_or_attributes_it_cannot_write_before_spark(tmp_path, capsys, monkeypatch):
    """A read-only mount (or a read-only checkout, where the default --out lies) failed in the
    executors after Spark started, the last line a whole worker traceback (found by a tester)."""
    import dolmino.storage

    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(tmp_path)))
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_access = dolmino.storage.os.access
    monkeypatch.setattr(dolmino.storage.os, "access", lambda p, mode: str(p) != str(readonly) and real_access(p, mode))
    for flag in ("--out", "--attributes"):
        other = "--attributes" if flag == "--out" else "--out"
        args = [flag, str(readonly / "mixes" / "x"), other, str(tmp_path / "fine")]
        assert build_main(["--manifest", str(path), *args]) == 2
        err = capsys.readouterr().err
        also = " (`dolmino mix` reads a tagged root without writing to it)" if flag == "--attributes" else ""
        assert err == (f"build_mix: error: {flag} {readonly / 'mixes' / 'x'}: cannot be written ({readonly} is "
                       f"read-only or not writable here){also}\n"), err
    assert not (tmp_path / "fine").exists()
    (tmp_path / "afile").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for location, reason in ((tmp_path / "afile" / "sub", f"{tmp_path / 'afile'} is a file, not a directory"),
                             (tmp_path / "dangling", f"{tmp_path / 'dangling'} is a symlink to a missing target")):
        assert build_main(["--manifest", str(path), "--out", str(location)]) == 2
        assert capsys.readouterr().err == f"build_mix: error: --out {location}: cannot be written ({reason})\n"


def test_workers_get_a_checkouts_root_on_their_path_never_site_packages(tmp_path, monkeypatch):
    """A non-editable install's "root" is site-packages: on the workers' PYTHONPATH it went
    before the standard library (found by a reviewer)."""
    import types

    import dolmino
    from dolmino.build.spark import isolate_worker_imports

    (tmp_path / "checkout" / "dolmino").mkdir(parents=True)
    (tmp_path / "checkout" / "pyproject.toml").write_text("")
    (tmp_path / "site-packages" / "dolmino").mkdir(parents=True)
    for root, expected in ((tmp_path / "site-packages", "/elsewhere"),
                           (tmp_path / "checkout", f"{tmp_path / 'checkout'}{os.pathsep}/elsewhere")):
        monkeypatch.setattr(dolmino, "__file__", str(root / "dolmino" / "__init__.py"))
        sc = types.SimpleNamespace(environment={"PYTHONPATH": "/elsewhere"})
        isolate_worker_imports(sc)
        isolate_worker_imports(sc)  # a second session of the same context adds nothing twice
        assert sc.environment == {"PYTHONPATH": expected, "PYTHONSAFEPATH": "1"}


def test_workers_import_the_project_never_a_namesake_in_the_working_directory(tmp_path):
    """PySpark's workers run `python -m pyspark.daemon`, which puts the cwd first on sys.path: a
    user's `filters.py` there replaced the project's package in every task (found by a tester)."""
    import os
    import subprocess
    import sys

    (tmp_path / "filters.py").write_text('raise SystemExit("a namesake in the cwd was imported")\n')
    probe = tmp_path / "probe.py"
    probe.write_text("from dolmino.build.spark import make_spark\n"
                     "spark = make_spark('probe', master='local[1]')\n"
                     "print(spark.sparkContext.parallelize([0], 1).map(lambda _: __import__('filters.base').__file__)"
                     ".collect()[0])\n"
                     "spark.stop()\n")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run([sys.executable, str(probe)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(Path(__file__).resolve().parents[1] / "filters" / "__init__.py")


def test_cli_rejects_negative_read_ahead(tmp_path, capsys):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(tmp_path)))
    assert build_main(["--manifest", str(path), "--out", str(tmp_path / "o"), "--read-ahead", "-1"]) == 2
    assert "--read-ahead must be 0 or more" in capsys.readouterr().err


def test_cli_rejects_a_progress_interval_that_is_not_seconds_before_spark(tmp_path, capsys, monkeypatch):
    """It failed the build with a ValueError traceback after Spark had started (found by a tester)."""
    monkeypatch.setenv("DOLMINO_PROGRESS_S", "30s")
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(tmp_path)))
    assert build_main(["--manifest", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "DOLMINO_PROGRESS_S='30s': expected the seconds between" in err and "Traceback" not in err


def test_report_filter_chain_accounts_for_every_document(built):
    _, report = built
    for s in report["sources"]:
        chain = s["filter_chain"]
        assert [r["filter"] for r in chain] == ["repeated_ngrams"] + (["code_stars"] if s["name"] == "code" else [])
        assert chain[0]["stage"] == "tokenized"  # repeated n-grams decide on token ids
        assert chain[0]["docs_reached"] == s["tokenized"]["docs"]
        if s["name"] == "code":
            stars = chain[1]
            assert stars["stage"] == "pool" and stars["docs_removed"] == s["removed"]["code_stars:stars<2"]["docs"] > 0
            assert stars["docs_reached"] == s["docs_in"] - sum(s["quarantined"].values())


def test_filters_of_one_type_in_a_chain_are_counted_apart(spark, tmp_path):
    """Two code_stars filters (on two fields) gave one reason, "code_stars:stars<2": report.json
    merged their removals and the chain table credited each filter with both's (a tester).
    Each is numbered where its stage holds its type more than once, a lone one keeps its name."""
    texts = [d["text"] for _, d in read_documents(str(shared_corpus_file("encyclopedic.jsonl.zst")), Quarantine())
             if len(d["text"].strip()) >= 2000][:48]
    assert len(texts) == 48
    docs = []
    for i, text in enumerate(texts):
        a, b = (0, 0) if i % 4 == 0 else (5, 0) if i % 4 == 1 else (5, 5)  # #1 removes 12, #2 then 12
        cut = (20, 400, None)[(i // 4) % 3]  # ~5, ~90, 400+ tokens: of the 24 kept, 8 below 50, 8 more below 200
        docs.append({"id": f"d{i}", "text": text[:cut], "metadata": {"a": a, "b": b}})
    write_documents(str(tmp_path / "data" / "enc" / "a.jsonl.zst"), docs)
    spec = {"name": "twice", "version": 2, "kind": "pool", "seed": 1, "data_root": str(tmp_path / "data"),
            "sources": [{"name": "enc", "paths": ["enc/*.jsonl*"], "filters": [
                {"type": "code_stars", "field": "a"}, {"type": "code_stars", "field": "b"},
                {"type": "min_length", "min_chars": 10},
                {"type": "min_length", "min_tokens": 50}, {"type": "min_length", "min_tokens": 200}]}]}
    report = build(manifest_from_dict(spec), 0, str(tmp_path / "out"), spark, attributes=str(tmp_path / "attrs"))
    s = report["sources"][0]
    assert {r: v["docs"] for r, v in s["removed"].items()} == {"code_stars#1:stars<2": 12, "code_stars#2:stars<2": 12}
    assert {r: v["docs"] for r, v in s["tokenized"]["removed"].items()} == {
        "min_length#1:tokens<50": 8, "min_length#2:tokens<200": 8}
    chain = [(r["filter"], r["stage"], r["docs_reached"], r["docs_removed"]) for r in s["filter_chain"]]
    assert chain == [("code_stars#1", "pool", 48, 12), ("code_stars#2", "pool", 36, 12), ("min_length", "pool", 24, 0),
                     ("min_length#1", "tokenized", 24, 8), ("min_length#2", "tokenized", 16, 8)]


def test_rerun_keeps_committed_parts_and_rebuilds_missing_ones(built, inputs, spark, tmp_path):
    """What a killed build leaves (some parts committed, no report.json) is finished by the same
    command: committed parts are kept, the missing and damaged ones rebuilt, the result
    byte-identical."""
    import shutil

    out, report = built
    again = tmp_path / "resumed"
    shutil.copytree(out, again)
    attributes = out.parent / "attributes-resume"
    build(manifest_from_dict(_manifest(inputs)), BUDGET, str(again), spark, attributes=str(attributes))
    want = _digest(again)
    (again / "report.json").unlink()
    lost = sorted(again.glob("part-00001*"))
    for p in lost + [again / "_parts" / "part-00001.json"]:
        p.unlink()
    # A committed part damaged since (same size, one byte changed) is written again, not
    # certified by the new report: the rerun checks the SHA-256 of every part it keeps.
    assert report["output"]["files"] >= 3
    damaged = bytearray((again / "part-00002.npy").read_bytes())
    damaged[400] ^= 0xFF
    (again / "part-00002.npy").write_bytes(bytes(damaged))
    kept_mtime = (again / "part-00000.npy").stat().st_mtime_ns
    resumed = build(manifest_from_dict(_manifest(inputs)), BUDGET, str(again), spark, attributes=str(attributes))
    assert _digest(again) == want
    assert resumed["run"]["resumed"] and (again / "part-00000.npy").stat().st_mtime_ns == kept_mtime
    # Only the lost and the damaged parts were rewritten; the accounting is the clean build's
    # (saved in _plan.json).
    assert resumed["run"]["parts_reused"] == report["output"]["files"] - 2
    assert resumed["totals"] == report["totals"] and resumed["sources"] == report["sources"]
    assert resumed["run"]["persisted_bytes"]["tokenize"] > 0  # what this run persisted (left out; a tester)
    # ... and report.md says so: it read as if this run had written and tokenized it all (found by a tester)
    from dolmino.report import render_markdown

    assert (f"{report['output']['files'] - 2} of {report['output']['files']} part(s) were already committed by an "
            "earlier run of this plan and reused") in render_markdown(resumed)
    assert "reused" not in render_markdown(report).split("Output:")[1].split("\n")[0]


def test_a_complete_build_of_another_plan_is_refused_unless_overwrite(built, inputs, spark, tmp_path, capsys):
    """Two manifests sharing an `output` (or another --budget): the second build replaced the
    first's complete mix unsaid, exit 0 (found by a tester). It is refused before any Spark job
    and before report.json is removed, as the trainer refuses a fresh run over an old one;
    --overwrite replaces it; the same plan again is a rerun that keeps every part."""
    import shutil

    out, report = built
    again = tmp_path / "again"
    shutil.copytree(out, again)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(inputs)))
    before = {p.name: p.read_bytes() for p in again.iterdir() if p.is_file()}
    fresh = tmp_path / "fresh-attributes"
    assert build_main(["--manifest", str(path), "--out", str(again), "--budget", "600K", "--attributes", str(fresh),
                       "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"build_mix: error: --out {again} holds a complete build of another budget (manifest 'e2e'; this build's "
        f"manifest 'e2e' ({path}) differs in budget 1,200,000 -> 600,000): pass --overwrite to replace it, or pick "
        "another --out\n")
    assert {p.name: p.read_bytes() for p in again.iterdir() if p.is_file()} == before
    assert not list(fresh.rglob("*.parquet"))  # refused before the tag phase
    common = ["--manifest", str(path), "--out", str(again), "--budget", "600K", "--attributes", report["attributes"],
              "--quiet"]
    assert build_main([*common, "--overwrite"]) == 0
    replaced = json.loads((again / "report.json").read_text())
    assert replaced["budget"] == 600_000 and not replaced["run"]["resumed"]
    assert set(_digest(again)) == set(replaced["output"]["files_sha256"]) and _digest(again) != _digest(out)
    want = _digest(again)
    capsys.readouterr()
    assert build_main(common) == 0  # the same plan into its complete --out: a rerun, every part kept
    rerun = json.loads((again / "report.json").read_text())
    assert rerun["run"]["resumed"] and rerun["run"]["parts_reused"] == rerun["output"]["files"]
    assert _digest(again) == want


def test_a_complete_build_on_s3_is_refused_only_for_another_manifest_or_budget(s3_server):
    """The check reads report.json, _plan.json and manifest.json through the storage helpers: s3://
    too. The same manifest and budget over a touched input (another plan hash: the file's version)
    is the same command again, which rebuilds what changed: refused, it named nothing the user could
    see (a reviewer)."""
    import uuid

    from dolmino import s3
    from dolmino.build import output
    from dolmino.errors import BuildError

    first = _manifest("/data")
    second = {**first, "name": "second", "seed": first["seed"] + 1}
    m_first, m_second = manifest_from_dict(first), manifest_from_dict(second)
    bucket = f"replace-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    out = f"s3://{bucket}/mix"
    output.refuse_replacing(out, "plan-a", m_first, 1_000_000)  # nothing there
    output.write_json(out, output.PLAN_FILE, {"plan": "plan-a", "parts": 1})
    output.refuse_replacing(out, "plan-b", m_second, 50_000)  # interrupted (no report.json): replaced
    output.write_json(out, "manifest.json", first)
    output.write_json(out, output.COMPLETION_MARKER, {"manifest": "e2e", "manifest_path": "m/first.json",
                                                      "budget": 1_000_000})
    output.refuse_replacing(out, "plan-a", m_first, 1_000_000)  # the same plan: a rerun
    output.refuse_replacing(out, "plan-touched", m_first, 1_000_000)  # the same manifest and budget, a touched input
    with pytest.raises(BuildError) as info:
        output.refuse_replacing(out, "plan-b", m_second, 50_000)
    assert str(info.value) == (
        f"--out {out} holds a complete build of another manifest (manifest 'e2e' (m/first.json); this build's "
        "manifest 'second' differs in name, seed, budget 1,000,000 -> 50,000): pass --overwrite to replace it, or "
        "pick another --out")
    # the manifest's own budget edited: one entry, from the report, and "another budget" (a reviewer)
    edited = manifest_from_dict({**first, "budget": "2M"})
    with pytest.raises(BuildError, match=r"another budget \(.*differs in budget 1,000,000 -> 2,000,000\): pass"):
        output.refuse_replacing(out, "plan-d", edited, 2_000_000)
    # a pool's report holds its measured size: a rerun over touched inputs is no other budget (a reviewer)
    output.write_json(out, output.COMPLETION_MARKER, {"manifest": "e2e", "budget": 123_456})
    output.refuse_replacing(out, "plan-pool", m_first, None)
    output.delete(out, ["manifest.json"])  # a complete build whose manifest is unknown is no rerun either
    with pytest.raises(BuildError, match=r"differs in manifest.json \(missing or not JSON\)"):
        output.refuse_replacing(out, "plan-c", m_first, 1_000_000)


def test_a_broken_stream_builds_with_every_document_before_the_break(spark, tmp_path, monkeypatch):
    """A .zst whose stream breaks right after a document that lacks its newline: the tag phase
    keeps that cut line (it parses), so the write phase must read it back too, from the same
    damaged file, through both decoders (zstandard's stream decoder raises on the garbage,
    the block reader then says where the stream breaks). A pool build takes every document."""
    from dolmino import documents

    monkeypatch.setattr(documents, "READ_SIZE", 4096)  # the file streams (no one-read fast path)
    docs = []
    for _, doc in read_documents(str(shared_corpus_file("web.jsonl.zst")), Quarantine()):
        docs.append({"id": f"w{len(docs)}", "text": doc["text"]})
        if len(docs) == 40:
            break
    frame = zstandard.ZstdCompressor().compress("\n".join(json.dumps(d) for d in docs).encode())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "broken.jsonl.zst").write_bytes(frame + b"garbage, not a zstd frame")
    manifest = manifest_from_dict({"name": "broken", "version": 1, "seed": 3, "data_root": str(tmp_path / "data"),
                                   "sources": [{"name": "web", "paths": ["*.jsonl.zst"], "mix_percent": 100.0}]})
    report = build(manifest, 10_000_000, str(tmp_path / "out"), spark, attributes=str(tmp_path / "attributes"))
    source = report["sources"][0]
    assert source["quarantined"] == {"corrupt_stream": 1}
    _, rows = read_mix(tmp_path / "out")
    assert {doc_id for doc_id, *_ in rows} == {d["id"] for d in docs}


def test_a_pool_build_warns_of_an_empty_pool_and_of_a_size_off_the_manifest(inputs, spark, tmp_path):
    """A pool manifest's stated pool_tokens is its plan: a pool built far from it, or built
    empty, is said so in the report's warnings (not only in its tables)."""
    spec = {"name": "pools", "version": 2, "kind": "pool", "seed": 1, "data_root": str(inputs),
            "sources": [{"name": "wiki", "paths": ["wiki/*.jsonl*"], "pool_tokens": "3.66B"},
                        {"name": "web", "paths": ["web/*.jsonl*"],
                         "filters": [{"type": "min_length", "min_tokens": 10**9}]},
                        {"name": "papers", "paths": ["papers/*.jsonl*"], "pool_tokens": "1M",
                         "filters": [{"type": "min_length", "min_chars": 10**9}]}]}
    report = build(manifest_from_dict(spec), 0, str(tmp_path / "out"), spark, attributes=str(tmp_path / "attrs"))
    wiki, web = report["sources"][0]["output_tokens"], report["sources"][1]
    papers = report["sources"][2]["docs_in"]
    assert 0 < wiki < 3.66e9 and web["output_tokens"] == 0
    short = web["tokenized"]["removed"]["min_length:tokens<1000000000"]["docs"]
    quarantined = sum(web["quarantined"].values())
    assert short > 0 and quarantined == 3 and web["docs_in"] == short + quarantined
    assert report["warnings"] == [
        f"source 'wiki': the pool holds {format_count(wiki)} tokens, the manifest expects 3.66B "
        f"({wiki / 3.66e9:.3g}x; a mix manifest's pool_tokens for it should say what the pool holds)",
        f"source 'web': no documents left after filtering and dedup; its pool is empty (of {web['docs_in']:,} "
        f"documents: min_length:tokens<1000000000 {short:,}, quarantined 3 (invalid_utf8 1, malformed_json 1, "
        "missing_text 1))",
        # emptied before tokenizing: "it contributes 0 of its 0 target tokens" (found by a tester)
        f"source 'papers': no documents left after filtering and dedup; its pool is empty (of {papers:,} "
        f"documents: min_length:chars<1000000000 {papers:,})"]
    # a pool manifest states no budget: its views said "budget 221K", the sum of its targets (a tester)
    assert report["kind"] == "pool"
    heading = (tmp_path / "out" / "report.md").read_text().splitlines()[0]
    assert heading == f"# Mix pools (pool manifest, targets {format_count(report['budget'])}, seed 1)", heading


def test_a_mix_source_a_filter_empties_is_warned_with_what_removed_it(inputs, spark, tmp_path):
    """A mix's source with nothing left contributes 0 of its target; the one warning says so
    and names what removed its documents (a threshold on the wrong scale, usually)."""
    spec = {"name": "emptied", "version": 1, "seed": 1, "data_root": str(inputs),
            "sources": [{"name": "wiki", "paths": ["wiki/*.jsonl*"], "mix_percent": 50},
                        {"name": "web", "paths": ["web/*.jsonl*"], "mix_percent": 50,
                         "filters": [{"type": "min_length", "min_tokens": 10**9}]}]}
    report = build(manifest_from_dict(spec), 20_000, str(tmp_path / "out"), spark, attributes=str(tmp_path / "a"))
    web = report["sources"][1]
    short = web["tokenized"]["removed"]["min_length:tokens<1000000000"]["docs"]
    empty = [w for w in report["warnings"] if "no documents left" in w]
    assert web["output_tokens"] == 0 and short > 0
    assert empty == [f"source 'web': no documents left after filtering and dedup; it contributes 0 of its "
                     f"{web['target_tokens']:,} target tokens (of {web['docs_in']:,} documents: "
                     f"min_length:tokens<1000000000 {short:,}, quarantined 3 (invalid_utf8 1, "
                     "malformed_json 1, missing_text 1))"]
    # once: the shortfall warning said it again in other words (found by a tester)
    assert [w for w in report["warnings"] if w.startswith("source 'web'")] == empty


def test_a_build_overtaken_by_another_into_the_same_out_stops_without_certifying(inputs, spark, tmp_path, monkeypatch):
    """Two builds into one --out: the one started last owns it. The earlier one used to remove
    the other's parts as stale and print success; it now stops with one line saying why, and
    leaves the other's files alone. The owner, finishing, gives a complete build."""
    from dolmino.build import output
    from dolmino.errors import BuildError

    spec = {"name": "twice", "version": 1, "seed": 1, "data_root": str(inputs),
            "sources": [{"name": "wiki", "paths": ["wiki/*.jsonl*"], "mix_percent": 100}]}
    out = tmp_path / "out"
    real_start = output.start
    other = {}

    def another_build_starts(where):
        mine = real_start(where)
        other.update(real_start(str(out)))  # what the other build's driver does when it starts, just after
        (out / "part-00007.npy").write_bytes(b"\0" * 8)  # and a part of its own
        return mine

    monkeypatch.setattr(output, "start", another_build_starts)
    with pytest.raises(BuildError) as info:
        build(manifest_from_dict(spec), 20_000, str(out), spark, attributes=str(tmp_path / "a"))
    assert f"started {other['started']} on {other['host']}, pid {other['pid']}" in str(info.value)
    # its part tasks stop for it (they went on writing over the other's parts; found by a tester)
    assert "this build stops without writing its parts" in str(info.value)
    assert not (out / "report.json").exists() and (out / "part-00007.npy").exists()
    monkeypatch.setattr(output, "start", real_start)
    report = build(manifest_from_dict(spec), 20_000, str(out), spark, attributes=str(tmp_path / "a"))
    assert (out / "report.json").exists() and report["output"]["tokens"] > 0
    assert not (out / "part-00007.npy").exists()  # the owner's build removes what it did not write


def test_a_part_task_of_an_overtaken_build_writes_nothing(tmp_path):
    """Ownership was checked on the driver only: an earlier build's executors went on writing
    parts over those of the build that owned the output, after it had verified them and written
    report.json (found by a tester, two builds into one s3:// --out). A part's task checks
    before it writes into the output (and, on S3, again before its uploads)."""
    from dolmino.build import output, write
    from dolmino.errors import BuildError

    out = tmp_path / "out"
    mine = output.start(str(out))
    other = output.start(str(out))  # another build started here after this one
    ctx = write.WriteContext(str(out), 1, 4, 100257, False, ("wiki",), "plan", frozenset(), mine)
    with pytest.raises(BuildError, match=f"started {other['started']} on .*this build stops without writing part 3"):
        next(write.write_part(3, iter(()), type("Broadcast", (), {"value": ctx})(), None))
    assert sorted(p.name for p in out.iterdir()) == ["_owner.json"]
    # an earlier build's file (a node's own disk, a local --out not shared): no later build's claim (a reviewer)
    output.write_json(str(out), output.OWNER_FILE, {**other, "token": "earlier", "started": "2000-01-01T00:00:00Z"})
    output.check_owner(str(out), mine, absent_ok=True)
    with pytest.raises(BuildError):
        output.check_owner(str(out), mine)  # the driver's own check is strict


def test_a_part_task_on_a_full_disk_names_out_and_removes_its_temporaries(tmp_path, monkeypatch):
    """A full local --out: the task ended in "in an executor: OSError: [Errno 28] No space left on device",
    naming no place, and left its part's temporaries (2.4 MB of .npy.tmp in a 3 MB tmpfs), which the rerun
    after freeing space needed room for again (found by a tester)."""
    import errno

    from dolmino import memmap
    from dolmino.build import write

    real_open = memmap.open_temporary

    def full_disk(path):
        tmp, fh = real_open(path)
        if not path.endswith("part-00003.npy"):
            return tmp, fh

        class Full:  # the tokens file finds the disk full after a byte, as a tmpfs at its size does
            def write(self, data):
                fh.write(data[:1])
                raise OSError(errno.ENOSPC, "No space left on device")

            def close(self):
                fh.close()

        return tmp, Full()

    monkeypatch.setattr(memmap, "open_temporary", full_disk)
    out = tmp_path / "out"
    ctx = write.WriteContext(str(out), 1, 4, 100257, True, ("wiki",), "plan", frozenset(), None)
    doc = write.TokDoc(0, 1, "d1", "a.jsonl:1", np.asarray([5, 6, 100257], dtype="<u4").tobytes())
    with pytest.raises(OSError) as info:
        next(write.write_part(3, iter([(0, doc)]), type("Broadcast", (), {"value": ctx})(), None))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(out)
    assert list(out.iterdir()) == []


def test_a_build_overtaken_while_it_verifies_does_not_remove_the_others_parts(inputs, spark, tmp_path, monkeypatch):
    """Verifying re-hashes every part (minutes on a real build): a build started meanwhile owns
    the output, and the earlier one must not then remove its parts as stale."""
    from dolmino.build import output
    from dolmino.errors import BuildError

    spec = {"name": "twice", "version": 1, "seed": 1, "data_root": str(inputs),
            "sources": [{"name": "wiki", "paths": ["wiki/*.jsonl*"], "mix_percent": 100}]}
    out = tmp_path / "out"
    real_verify = output.verify_parts

    def another_build_starts_meanwhile(where, parts):
        real_verify(where, parts)
        output.start(str(out))
        (out / "part-00007.npy").write_bytes(b"\0" * 8)

    monkeypatch.setattr(output, "verify_parts", another_build_starts_meanwhile)
    with pytest.raises(BuildError, match="this build stops without removing or certifying anything"):
        build(manifest_from_dict(spec), 10_000, str(out), spark, attributes=str(tmp_path / "a"))
    assert (out / "part-00007.npy").exists() and not (out / "report.json").exists()


def _mix_after_rewriting_a_tagged_input(inputs, spark, tmp_path, rewrite) -> None:
    """Tag a plain copy of wiki/a.jsonl, rewrite it with `rewrite(text) -> text` of the same size,
    keep its mtime (as a copy that preserves mtimes would), then mix: the mix must fail."""
    import os

    victim = tmp_path / "data" / "wiki" / "a.jsonl"
    victim.parent.mkdir(parents=True)
    lines = [json.dumps(d) for _, d in read_documents(str(inputs / "wiki" / "a.jsonl.zst"), Quarantine())]
    victim.write_text("\n".join(lines) + "\n")
    spec = {"name": "rewritten", "version": 1, "seed": 5, "budget": 20_000, "data_root": str(victim.parent.parent),
            "sources": [{"name": "wiki", "paths": ["wiki/*.jsonl*"], "mix_percent": 100.0}]}
    attrs = str(tmp_path / "attrs")
    build(manifest_from_dict(spec), 20_000, str(tmp_path / "o"), spark, attributes=attrs, phase="tag")
    stat = victim.stat()
    rewritten = rewrite(victim.read_text())
    assert rewritten != victim.read_text() and len(rewritten.encode()) == stat.st_size
    victim.write_text(rewritten)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(Exception, match="is not the document tagged there"):
        build(manifest_from_dict(spec), 20_000, str(tmp_path / "o"), spark, attributes=attrs, phase="mix")


def test_an_input_rewritten_after_tagging_fails_instead_of_mixing_other_documents(inputs, spark, tmp_path):
    """Selection, dedup and verdicts are made on what the tag phase read. A file rewritten
    since with the same lines in another order (its listed version kept, as a copy that
    preserves mtimes would keep it) must fail the mix, not put other documents under those
    decisions: the tokenize stage checks each document against its line's attributes."""
    _mix_after_rewriting_a_tagged_input(inputs, spark, tmp_path,
                                        lambda text: "\n".join(text.splitlines()[::-1]) + "\n")


def test_an_edit_that_keeps_every_length_fails_the_mix_too(inputs, spark, tmp_path):
    """The tokenize stage compared each document's id and length only: an input rewritten after
    tagging with an edit that kept every length (and so the file's size: on S3, mid-build, only
    the ETag changes, and reads do not check it) was mixed with exit 0, its text never tagged
    (found by a tester). The text's content hash is checked too."""
    _mix_after_rewriting_a_tagged_input(inputs, spark, tmp_path, lambda text: text.replace(" the ", " THE "))


def test_the_tokenizers_eos_must_be_one_of_its_added_tokens(inputs, spark, tmp_path):
    """`"eos_token_id": 0` is "!" in dolma2: every document would end in a character text also
    encodes to. The build refuses it before any work, naming the field."""
    from dolmino.errors import ManifestError

    spec = _manifest(inputs, tokenizer={"eos_token_id": 0})
    with pytest.raises(ManifestError, match=r"^tokenizer\.eos_token_id: 0 is not one of the tokenizer's added tokens "
                                            r"\(special ones: <\|endoftext\|> = 100257"):
        build(manifest_from_dict(spec), BUDGET, str(tmp_path / "o"), spark, attributes=str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_a_tiny_budget_tokenizes_nothing_for_sources_it_gives_nothing(inputs, spark, tmp_path):
    """Budget 1: three of the four sources get 0 tokens. They used to be tokenized whole
    ("all" mode) to take nothing. `"minhash": {}` asks for MinHash dedup with every default
    (it was read as no MinHash, an empty object being falsy)."""
    spec = _manifest(inputs, budget=1)
    spec["sources"][2]["dedup"] = {"minhash": {}}
    report = build(manifest_from_dict(spec), 1, str(tmp_path / "o"), spark, attributes=str(tmp_path / "a"))
    zero = [s for s in report["sources"] if s["target_tokens"] == 0]
    assert len(zero) == 3 and all(s["tokenized"]["docs"] == 0 and s["output_tokens"] == 0 for s in zero)
    wiki = report["sources"][2]
    assert wiki["name"] == "wiki" and wiki["minhash"]["docs_in"] == wiki["docs_in"] > 0
    assert report["run"]["units_tagged"] == report["run"]["units"] > 0


def test_passes_missed_because_the_pool_is_not_its_stated_size_are_a_warning(inputs, spark, tmp_path):
    """A passes manifest plans against its stated pool_tokens; a pool that holds far more
    takes a smaller share of it than the manifest says, which the report must say, naming
    both sizes. report.md's summary row balances (docs in = quarantined + removed + pool
    docs) with token filters removing documents too, which get their own column."""
    spec = {"name": "passes", "version": 2, "seed": 9, "data_root": str(inputs),
            "sources": [{"name": "wiki", "paths": ["wiki/*.jsonl*"], "source_percent": 50, "pool_tokens": "10K",
                         "mix_percent": 30},
                        {"name": "web", "paths": ["web/*.jsonl*"], "source_percent": 100, "pool_tokens": "20K",
                         "filters": [{"type": "min_length", "min_tokens": 600}]}]}
    manifest = manifest_from_dict(spec)
    out = tmp_path / "o"
    report = build(manifest, manifest.budget, str(out), spark, attributes=str(tmp_path / "a"))
    wiki = report["sources"][0]
    assert wiki["pool_tokens"] > 10_500
    pool = ("" if wiki["pool_tokens_exact"] else "~") + format_count(wiki["pool_tokens"])
    assert (f"source 'wiki': took {100 * wiki['passes']:.4g}% of its pool, the manifest says 50% (the pool holds "
            f"{pool} tokens after filtering, the manifest's pool_tokens 10K; a pool build's report measures it)"
            in report["warnings"])
    md = (out / "report.md").read_text()
    web = report["sources"][1]
    row = next(line for line in md.splitlines() if line.startswith("| web |")).split("|")[2:7]
    docs_in, quarantined, removed, pool_docs, removed_tokenized = (int(c.strip().replace(",", "")) for c in row)
    assert docs_in == web["docs_in"] == quarantined + removed + pool_docs
    assert removed_tokenized == web["tokenized"]["removed"]["min_length:tokens<600"]["docs"] > 0
    # Mix %: the plan (Source % decides: 5K of 25K = 20%), and apart from it what the manifest
    # states (30, informational here), which report.md used to show under "Mix % (manifest)".
    assert wiki["mix_percent_manifest"] == pytest.approx(20.0) and wiki["mix_percent_stated"] == 30
    assert web["mix_percent_stated"] is None and "| Mix % (planned) | Mix % |" in md
    # passes against an estimated pool are marked as estimates, as the pool is
    cells = next(line for line in md.splitlines() if line.startswith("| wiki |")).split("|")
    assert cells[7].strip().startswith("~") == cells[11].strip().startswith("~") == (not wiki["pool_tokens_exact"])


def test_a_pool_far_smaller_than_its_target_is_refused_before_writing(inputs, spark, tmp_path):
    """A 50B build over a partly downloaded pool set out to write its target as 621,074 copies
    of it, warned about only in the report (found by a tester): MAX_COPIES or more whole copies
    stop the build before any part is written, naming the pool, the target and the stated size."""
    import re

    from dolmino.build.select import MAX_COPIES
    from dolmino.errors import BuildError

    spec = {"name": "tiny-pool", "version": 1, "seed": 3, "data_root": str(inputs),
            "sources": [{"name": "wiki", "paths": ["wiki/*.jsonl*"], "mix_percent": 100, "pool_tokens": "752B"}]}
    manifest = manifest_from_dict(spec)
    out = tmp_path / "o"
    with pytest.raises(BuildError) as caught:
        build(manifest, 500_000_000, str(out), spark, attributes=str(tmp_path / "a"))
    message = str(caught.value)
    assert re.fullmatch(r"source 'wiki': its pool holds [0-9.]+K tokens after filtering, and its 500M-token target "
                        r"would repeat it [0-9,]+ times \(at most 999 whole copies are written; the manifest's "
                        r"pool_tokens is 752B\): is the data root the whole pool\? A lower --budget or Mix % asks "
                        r"for less", message), message
    assert int(re.search(r"repeat it ([0-9,]+) times", message)[1].replace(",", "")) >= MAX_COPIES
    assert not list(out.glob("part-*")) and not (out / "report.json").exists()


def _one_plain_file(tmp_path: Path) -> tuple[dict, int]:
    """(manifest, file size) of one plain .jsonl of 60 lines, lines 7, 33 and 58 bad."""
    docs = []
    for _, doc in read_documents(str(shared_corpus_file("web.jsonl.zst")), Quarantine()):
        docs.append(json.dumps({"id": f"d{len(docs)}", "text": doc["text"][:600]}).encode())
        if len(docs) == 60:
            break
    bad = {7: b'{"id": "cut", "text": "no end', 33: b"\xff\xfe not utf-8", 58: b'{"id": "x"}'}
    lines = [bad.get(n, docs[n - 1]) for n in range(1, 61)]
    (tmp_path / "web").mkdir()
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "web" / "one.jsonl").write_bytes(data)
    spec = {"name": "ranges", "version": 1, "seed": 3, "budget": 5_000, "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100.0}]}
    return spec, len(data)


def test_quarantine_names_the_file_line_however_a_file_is_cut_into_ranges(spark, tmp_path):
    """A plain .jsonl larger than the split size is tagged as byte ranges, each numbering its
    lines from its own start; the quarantine copied into --out named a bad line by its line
    in the range (42 for the file's 286th; found by a tester). It names the file's line, as
    the sidecars' `loc` does, whatever the split size."""
    spec, size = _one_plain_file(tmp_path)
    records = {}
    for label, split in (("whole", None), ("ranges", size // 7)):
        out = tmp_path / f"out-{label}"
        report = build(manifest_from_dict(spec), 5_000, str(out), spark, attributes=str(tmp_path / f"a-{label}"),
                       **({"split_bytes": split} if split else {}))
        assert (report["run"]["stages"]["tag"]["units"] > 1) == (split is not None)
        records[label] = sorted((r["path"], r["line"], r["reason"]) for f in (out / "quarantine").rglob("*.gz")
                                for r in map(json.loads, gzip.decompress(f.read_bytes()).splitlines()))
    assert records["ranges"] == records["whole"]
    assert [line for _, line, _ in records["whole"]] == [7, 33, 58]


def test_the_report_records_the_control_token_policy(spark, tmp_path):
    """report.json said which tokenizer.json made the ids, not that control-token strings in text were
    encoded as characters ("control_tokens": "literal"): an export of a model trained on it gave
    transformers a tokenizer that encodes "<|endoftext|>" in a prompt as EOS (found by a tester). The
    report says the policy, and trainer.run records it from there (trainer.tokenizer_files.data_tokenizer)."""
    from trainer.tokenizer_files import data_tokenizer

    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.jsonl").write_text("".join(
        json.dumps({"id": f"d{i}", "text": f"Document {i} says <|endoftext|> in its text. " * 4}) + "\n"
        for i in range(20)))
    spec = {"name": "lit", "version": 1, "seed": 1, "budget": 2_000, "data_root": str(tmp_path),
            "tokenizer": {"control_tokens": "literal"},
            "sources": [{"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100.0}]}
    report = build(manifest_from_dict(spec), 2_000, str(tmp_path / "out"), spark, attributes=str(tmp_path / "attrs"))
    assert report["control_tokens"] == "literal"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["control_tokens"] == "literal"
    (tmp_path / "out" / "manifest.json").unlink()  # the report alone says
    assert data_tokenizer([str(tmp_path / "out")])["control_tokens"] == "literal"
    _, rows = read_mix(tmp_path / "out")
    assert rows and all(EOS not in t for *_, t in rows)  # the strings stayed text: no EOS inside a document


def test_mix_with_another_task_size_reuses_the_byte_ranges_tag_wrote(spark, tmp_path, capsys):
    """Byte ranges were cut at twice --task-size: `dolmino mix` with another --task-size than
    `dolmino tag` found no attributes and said to run `dolmino tag`, which had run (found by
    a tester), and build_mix.py re-tagged the file. Ranges follow --split-size alone, part
    of the attribute layout like file names and sizes; a mix given another one is told so."""
    from dolmino.build.cli import main

    spec, size = _one_plain_file(tmp_path)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    common = [str(path), "--attributes", str(tmp_path / "attrs"), "--split-size", str(size // 4), "--quiet"]
    assert main([*common, "--out", str(tmp_path / "tagged"), "--task-size", "1M"], phase="tag") == 0
    out = capsys.readouterr().out
    # the attribute sets' files apart from the units' quarantine files ("8 attribute files", then 5 reused; a tester)
    assert ("tagged 5 unit(s), writing 5 attribute file(s) and 3 quarantine / documents file(s); reused 0 unit(s) "
            "whole; attributes under") in out, out
    assert main([*common, "--out", str(tmp_path / "mixed"), "--task-size", "1K"], phase="mix") == 0
    report = json.loads((tmp_path / "mixed" / "report.json").read_text())
    assert report["run"]["units"] > 1 and report["run"]["units_reused"] == report["run"]["units"]
    from dolmino.assets import dolma2_tokenizer_path  # what the trainer tells two tokenizers apart by

    assert report["tokenizer_sha256"] == hashlib.sha256(dolma2_tokenizer_path().read_bytes()).hexdigest()
    capsys.readouterr()
    other = [a if a != str(size // 4) else str(size // 3) for a in common]
    assert main([*other, "--out", str(tmp_path / "other")], phase="mix") == 2
    err = capsys.readouterr().err
    plain = tmp_path / "web" / "one.jsonl"
    assert f"{plain} was tagged in byte ranges at another --split-size (this run cuts it into byte ranges): give the " \
           "--split-size it used, or run `dolmino tag` again with this one" in err, err
    # an input rewritten since the tag: named as changed, not as "run dolmino tag" (found by a tester)
    import os

    tagged_ns = plain.stat().st_mtime_ns
    os.utime(plain, ns=(plain.stat().st_atime_ns, tagged_ns + 10**9))
    assert main([*common, "--out", str(tmp_path / "changed")], phase="mix") == 2
    assert f"{plain} changed since it was tagged (another size, ETag or mtime): run `dolmino tag` again for it" \
        in capsys.readouterr().err
    # changed and read at another split size: the change is named (the tagged split size would not do)
    assert main([str(path), "--attributes", str(tmp_path / "attrs"), "--quiet", "--out", str(tmp_path / "o1")],
                phase="mix") == 2
    assert f"{plain} changed since it was tagged" in capsys.readouterr().err
    os.utime(plain, ns=(plain.stat().st_atime_ns, tagged_ns))  # as tagged again
    # the default split size reads the file whole: its ranges' attributes are not found either, and it says so
    assert main([str(path), "--attributes", str(tmp_path / "attrs"), "--quiet", "--out", str(tmp_path / "o2")],
                phase="mix") == 2
    assert "was tagged in byte ranges at another --split-size (this run reads it whole): give the --split-size it " \
           "used" in capsys.readouterr().err


def test_mix_on_attributes_tagged_under_other_settings_says_so(spark, tmp_path, capsys):
    """`dolmino mix` where the pool was tagged under other settings (here max_doc_bytes; also a
    filter's model or parameters, the tokenizer, or a newer dolmino's rules for them) said to run
    `dolmino tag` first, as if it had never run. It names the attribute set that holds them."""
    from dolmino.build.cli import main

    spec, _ = _one_plain_file(tmp_path)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    common = ["--attributes", str(tmp_path / "attrs"), "--quiet"]
    assert main([str(path), *common, "--out", str(tmp_path / "tagged")], phase="tag") == 0
    capsys.readouterr()
    spec["sources"][0]["max_doc_bytes"] = 400
    path.write_text(json.dumps(spec))
    assert main([str(path), *common, "--out", str(tmp_path / "mixed")], phase="mix") == 2
    err = capsys.readouterr().err
    held = sorted(p.name for p in (tmp_path / "attrs" / "web").iterdir() if p.name.startswith("docs-"))
    assert len(held) == 1, held
    assert f"web/one.jsonl's documents were tagged under other settings or rules ({held[0]} holds them: another " \
           "max_doc_bytes" in err, err
    assert "run `dolmino tag` with this manifest: it tags what changed and reuses the rest" in err, err



_EDITED_SCORER = """import numpy as np

class LengthScore:
    def __init__(self, model_path):
        with open(model_path) as fh:
            self.offset = float(fh.read())

    def score(self, texts):
        return np.asarray([len(t) / {scale} + self.offset for t in texts], dtype=np.float64)
"""


def test_a_scorer_edited_or_a_model_replaced_since_the_tag_is_not_mixed_from_stale_scores(spark, tmp_path,
                                                                                          monkeypatch):
    """A "module:callable" scorer's set was keyed by its name alone: `dolmino mix` after an edit of
    its code mixed the old code's scores without a word. And a model replaced under the same path
    was refused as "another filter model or parameter" (both found by a reviewer). Each is named."""
    from dolmino.build.attributes import read_table
    from dolmino.errors import BuildError

    spec, module, model = _length_scorer(spark, tmp_path, monkeypatch, "edited_length_scorer")
    attrs = str(tmp_path / "attrs")
    manifest = manifest_from_dict(spec)
    try:
        build(manifest, 5_000, str(tmp_path / "tag"), spark, attributes=attrs, phase="tag")
        stored = next((tmp_path / "attrs" / "web").glob("score_threshold-*/**/*.parquet"))
        assert read_table(str(stored), columns=[])[1]["keyed"]["model_path"].startswith("sha256:")
        module.write_text(_EDITED_SCORER.format(scale=3000.0))
        with pytest.raises(BuildError, match=r"holds them: the code of scorer 'edited_length_scorer:LengthScore' "
                                             rf"changed since it was tagged \({re.escape(str(module))}\)\): run "):
            build(manifest, 5_000, str(tmp_path / "mix"), spark, attributes=attrs, phase="mix")
        module.write_text(_EDITED_SCORER.format(scale=300.0))  # the code as tagged
        model.write_text("0.9")
        with pytest.raises(BuildError, match=rf"holds them: the model at {re.escape(str(model))} changed since it "
                                             r"was tagged\): run `dolmino tag`"):
            build(manifest, 5_000, str(tmp_path / "mix"), spark, attributes=attrs, phase="mix")
    finally:
        sys.modules.pop("edited_length_scorer", None)


def _scores_tagged(attrs: Path) -> list[float]:
    from dolmino.build.attributes import read_table

    stored = next((attrs / "web").glob("score_threshold-*/**/*.parquet"))
    return read_table(str(stored))[0].column("score").to_pylist()


def _scorer_on_both_paths(spark, monkeypatch, driver_dir: Path, executor_dir: Path) -> None:
    """The driver imports scorers from `driver_dir`, the session's Python workers from `executor_dir`."""
    monkeypatch.syspath_prepend(str(driver_dir))
    env = spark.sparkContext.environment
    monkeypatch.setitem(env, "PYTHONPATH", os.pathsep.join(p for p in (str(executor_dir), env.get("PYTHONPATH")) if p))


def _length_scorer(spark, tmp_path: Path, monkeypatch, name: str) -> tuple[dict, Path, Path]:
    """(manifest, module file, model file): one plain file scored by `name`:LengthScore (length / 300 +
    the model's offset, 0.5), a module the driver and the session's Python workers import."""
    spec, _ = _one_plain_file(tmp_path)
    (tmp_path / "code").mkdir()
    module = tmp_path / "code" / f"{name}.py"
    module.write_text(_EDITED_SCORER.format(scale=300.0))
    model = tmp_path / "offset.txt"
    model.write_text("0.5")
    spec["sources"][0]["filters"] = [{"type": "score_threshold", "scorer": f"{name}:LengthScore",
                                      "model_path": str(model), "min_score": 1.0}]
    _scorer_on_both_paths(spark, monkeypatch, tmp_path / "code", tmp_path / "code")
    return spec, module, model


def test_a_scorer_edited_between_two_builds_of_one_session_scores_with_the_new_code(spark, tmp_path, monkeypatch):
    """Spark reuses its Python workers for a session's next job, with the modules they imported:
    a notebook that edits its scorer and tags again (a new --attributes root, as the key of the
    new code asks) stored the old code's scores under the new code's key (found by reading).
    The worker imports the scorer again when its files changed since it imported them."""
    spec, module, _ = _length_scorer(spark, tmp_path, monkeypatch, "reloaded_length_scorer")
    manifest = manifest_from_dict(spec)
    try:
        build(manifest, 5_000, str(tmp_path / "tag1"), spark, attributes=str(tmp_path / "a1"), phase="tag")
        first = _scores_tagged(tmp_path / "a1")
        module.write_text(_EDITED_SCORER.format(scale=3000.0))  # another size: no stale .pyc either
        sys.modules.pop("reloaded_length_scorer", None)  # the driver's own copy is not what is tested
        build(manifest, 5_000, str(tmp_path / "tag2"), spark, attributes=str(tmp_path / "a2"), phase="tag")
        second = _scores_tagged(tmp_path / "a2")
    finally:
        sys.modules.pop("reloaded_length_scorer", None)
    assert len(first) == len(second) == 57
    lengths = [round((score - 0.5) * 300.0) for score in first]
    assert second == pytest.approx([n / 3000.0 + 0.5 for n in lengths])


def test_an_executor_that_imports_other_scorer_code_than_the_driver_is_refused(spark, tmp_path, monkeypatch, capsys):
    """The scorer's set is keyed by the driver's copy of its code; a node whose PYTHONPATH holds
    another version scored with it under that key, unsaid (found by reading). Each tag task checks
    its copy against the driver's digest first: one line naming the scorer, exit 2, no set stored."""
    spec, _ = _one_plain_file(tmp_path)
    for where, scale in (("driver", 300.0), ("executor", 3000.0)):
        (tmp_path / where).mkdir()
        (tmp_path / where / "skewed_length_scorer.py").write_text(_EDITED_SCORER.format(scale=scale))
    model = tmp_path / "offset.txt"
    model.write_text("0.5")
    spec["sources"][0]["filters"] = [{"type": "score_threshold", "scorer": "skewed_length_scorer:LengthScore",
                                      "model_path": str(model), "min_score": 1.0}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    _scorer_on_both_paths(spark, monkeypatch, tmp_path / "driver", tmp_path / "executor")
    try:
        assert build_main([str(path), "--out", str(tmp_path / "out"), "--attributes", str(tmp_path / "a"),
                           "--quiet"], phase="tag") == 2
    finally:
        sys.modules.pop("skewed_length_scorer", None)
    digest = {where: hashlib.sha256((tmp_path / where / "skewed_length_scorer.py").read_bytes()).hexdigest()[:16]
              for where in ("driver", "executor")}
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and re.fullmatch(
        r"dolmino tag: error: in an executor: BuildError: scorer 'skewed_length_scorer:LengthScore': its code on this "
        rf"executor \(.+\) has SHA-256 {digest['executor']}\.\.\., the driver's has {digest['driver']}\.\.\.: every "
        r"node must import the same code \(ship it with --py-files, or install the same version on every "
        r"node\), and it must not change during the build", errors[0]), errors
    assert not list((tmp_path / "a").glob("web/score_threshold-*/**/*.parquet"))


# A scorer module with no source file to hash: it puts a module made in memory in its place.
_SOURCELESS_SCORER = """import sys, types
import numpy as np

class LengthScore:
    def score(self, texts):
        return np.asarray([len(t) / 100.0 for t in texts], dtype=np.float64)

sys.modules[__name__] = types.ModuleType(__name__)
sys.modules[__name__].LengthScore = LengthScore
"""


def test_a_scorer_keyed_by_its_name_alone_is_a_warning_of_the_build(spark, tmp_path, monkeypatch, capsys):
    """The warning that a scorer's source cannot be found (its edits go unnoticed) was a bare
    "warning: ..." line on stderr, in neither report.json nor report.md, unlike every other
    caveat of a build (a tester). It is one of the build's warnings: once on the console in the
    command's form, and in both reports; the summary line of a build with tokens is as it was."""
    spec, _ = _one_plain_file(tmp_path)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "sourceless_scorer.py").write_text(_SOURCELESS_SCORER)
    spec["sources"][0]["filters"] = [{"type": "score_threshold", "scorer": "sourceless_scorer:LengthScore",
                                      "min_score": 2.0}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    _scorer_on_both_paths(spark, monkeypatch, tmp_path / "code", tmp_path / "code")  # the driver, the executors
    out = tmp_path / "out"
    try:
        assert build_main([str(path), "--out", str(out), "--attributes", str(tmp_path / "a"), "--quiet"]) == 0
    finally:
        sys.modules.pop("sourceless_scorer", None)
    warning = ("source 'web' filters[0]: scorer 'sourceless_scorer:LengthScore': the source of module "
               "'sourceless_scorer' cannot be found or read, so its scores are keyed by the scorer's name alone and an "
               "edit of its code will not be noticed (the scores tagged before it are reused): tag into a new "
               "--attributes root after changing it")
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if "warning" in line] == [f"build_mix: warning: {warning}"]
    report = json.loads((out / "report.json").read_text())
    assert report["warnings"] == [warning]
    assert f"- {warning}" in (out / "report.md").read_text()
    tokens = report["output"]["tokens"]
    assert tokens and captured.out.splitlines()[-1] == (
        f"wrote 1 part(s), {format_count(tokens)} tokens in all, to {out} (master "
        f"{report['run']['spark_master']}, {report['run']['executors']} executor(s)); 1 warning(s) above")


def test_a_build_that_holds_no_tokens_says_so(spark, tmp_path, capsys):
    """A build whose filters removed every document printed "wrote 1 part(s), 0 tokens in all" and
    exited 0, its report warning only of a shortfall (a pool build: of nothing); its part is an
    empty file the trainer refuses (a tester). The summary line and a warning of the report say
    that the build holds no tokens, and what took its documents."""
    spec, _ = _one_plain_file(tmp_path)
    spec["sources"][0]["filters"] = [{"type": "min_length", "min_chars": 100_000}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    out, attributes = tmp_path / "out", str(tmp_path / "a")
    assert build_main([str(path), "--out", str(out), "--attributes", attributes, "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["output"]["tokens"] == 0 and [p["size"] for p in report["output"]["parts"]] == [0]
    said = ("the build holds no tokens{} (none of its 60 documents is left: min_length:chars<100000 57, quarantined "
            "3 (invalid_utf8 1, malformed_json 1, missing_text 1)): its 1 part(s) are empty, nothing to train on; "
            "check the manifest's filters and inputs")
    assert report["warnings"][-1] == said.format(" of its budget 5,000")
    assert not [w for w in report["warnings"] if "short of the budget" in w]  # the same said twice
    assert f"- {said.format(' of its budget 5,000')}" in (out / "report.md").read_text()
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote 1 part(s), all empty, to {out} (master {report['run']['spark_master']}, {report['run']['executors']} "
        "executor(s)): the build holds no tokens, nothing to train on; its warnings say why; 2 warning(s) above")
    pool = {**spec, "version": 2, "kind": "pool", "sources": [{k: v for k, v in spec["sources"][0].items()
                                                              if k != "mix_percent"}]}
    del pool["budget"]
    report = build(manifest_from_dict(pool), 0, str(tmp_path / "pool"), spark, attributes=attributes)
    assert report["warnings"][-1] == said.format("")


def test_mix_names_the_cause_the_attribute_root_shows(spark, tmp_path, capsys):
    """`dolmino mix` named causes it had guessed (found by a tester): an input "changed (another
    size, ETag or mtime)" where one file was added and one removed, a --split-size hint for a
    source renamed, "tagged under other settings" for a new filter beside an unchanged one, and
    "run dolmino tag first" for MinHash clusters computed under another seed."""
    from dolmino.build.cli import main

    docs = []
    for _, doc in read_documents(str(shared_corpus_file("web.jsonl.zst")), Quarantine()):
        docs.append({"id": f"d{len(docs)}", "text": doc["text"][:400]})
        if len(docs) == 25:
            break
    web = tmp_path / "web"
    web.mkdir()
    for i, name in enumerate("abcde"):
        (web / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[5 * i:5 * i + 5]))
    spec = {"name": "causes", "version": 1, "seed": 3, "budget": 2_000, "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web/[abcd].jsonl"], "mix_percent": 100.0,
                         "filters": [{"type": "code_stars", "min_stars": 0}], "dedup": {"minhash": {}}}]}
    path = tmp_path / "m.json"
    common = ["--attributes", str(tmp_path / "attrs"), "--out", str(tmp_path / "out"), "--quiet"]

    def mix(**change) -> str:
        source = {**spec["sources"][0], **change.pop("source", {})}
        path.write_text(json.dumps({**spec, **change, "sources": [source]}))
        assert main([str(path), *common], phase="mix") == 2
        return capsys.readouterr().err

    path.write_text(json.dumps(spec))
    assert main([str(path), *common], phase="tag") == 0
    capsys.readouterr()
    assert "nothing is stored for source 'enc' (the root holds web): attributes are stored by source name" \
        in mix(source={"name": "enc"})
    err = mix(source={"filters": [{"type": "code_stars", "min_stars": 0}, {"type": "code_stars", "min_stars": 3}]})
    assert "run `dolmino tag` with the same manifest first" in err and "other settings" not in err, err
    err = mix(source={"filters": [{"type": "code_stars", "min_stars": 3}]})
    assert "'s code_stars attributes were tagged under other settings or rules (code_stars-" in err, err
    err = mix(seed=4)
    assert "missing MinHash clusters" in err and "'s MinHash clusters were computed under other settings (minhash-" \
        in err, err
    assert "holds them: seed: 3 there, 4 here (a MinHash seed left out is the manifest's" in err, err
    err = mix(source={"paths": ["web/[abce].jsonl"]})
    assert f"since the tag, {web / 'e.jsonl'} is new; web/d.jsonl, tagged in the same attribute files, is not among " \
           "this manifest's inputs (removed since, or tagged for a manifest listing more files" in err, err
    (web / "b.jsonl").write_text((web / "b.jsonl").read_text() + json.dumps(docs[-1]) + "\n")
    err = mix()
    assert f"{web / 'b.jsonl'} changed since it was tagged (another size, ETag or mtime)" in err, err


def test_only_the_builds_own_files_are_removed_as_stale(tmp_path):
    """remove_stale took any path under --out starting "part-", at any depth: inputs kept there
    (part-backup/, a source directory named part-00001.npy) were deleted unsaid (found by a tester)."""
    from dolmino.build.output import remove_stale

    names = ["part-00000.npy", "part-00007.npy", "part-00007.csv.gz", "part-00007.label_mask.npy",
             "_parts/part-00007.json", "part-00000.npy.tmp123", "part-backup/x.jsonl", "part-00001.npy/x.jsonl",
             "data/part-00002.npy", "notes.txt", "part-00003.npy.bak"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale(str(tmp_path), {"part-00000.npy"})
    assert sorted(removed) == ["_parts/part-00007.json", "part-00000.npy.tmp123", "part-00007.csv.gz",
                               "part-00007.label_mask.npy", "part-00007.npy"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        set(names) - set(removed))


def test_a_lower_max_doc_bytes_scores_the_documents_it_keeps_again(spark, tmp_path):
    """A filter's scores are read beside the docs set row by row. With a lower max_doc_bytes (or
    new Stack Exchange rules) the docs set was tagged again but the old scores reused: the pool
    stage stopped with "rows per unit ... differ" (found by a reviewer). The scores' sets are
    keyed by what decides the rows, so they are tagged again with it."""
    docs = []
    for _, doc in read_documents(str(shared_corpus_file("web.jsonl.zst")), Quarantine()):
        docs.append(doc)
        if len(docs) == 40:
            break
    (tmp_path / "web").mkdir()
    write_documents(str(tmp_path / "web" / "part.jsonl"), docs)
    lengths = sorted(len(line) for line in (tmp_path / "web" / "part.jsonl").read_bytes().splitlines())
    assert lengths[-3] < lengths[-2]
    spec = {"name": "limit", "version": 1, "seed": 3, "budget": 2_000, "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web"], "mix_percent": 100.0,
                         "filters": [{"type": "min_length", "min_chars": 200}]}]}
    attributes = str(tmp_path / "attrs")
    first = build(manifest_from_dict(spec), 2_000, str(tmp_path / "out1"), spark, attributes=attributes)
    assert not first["sources"][0]["quarantined"]
    spec["sources"][0]["max_doc_bytes"] = lengths[-3]  # the two longest lines go over it
    second = build(manifest_from_dict(spec), 2_000, str(tmp_path / "out2"), spark, attributes=attributes)
    assert second["sources"][0]["quarantined"] == {"doc_too_large": 2}


def test_colliding_and_looping_input_names_are_each_read_once(spark, tmp_path):
    """Found by a tester: web/d/e.jsonl and web/d__e.jsonl wrote one quarantine file in --out (one
    record lost), and a `loop -> .` symlink in a source directory made every file an input forty
    times over. Each file is read once, each unit's quarantine kept, a too-long name refused up front."""
    import os

    from dolmino.build.inputs import list_inputs
    from dolmino.errors import BuildError

    docs = []
    for _, doc in read_documents(str(shared_corpus_file("web.jsonl.zst")), Quarantine()):
        docs.append(doc)
        if len(docs) == 6:
            break
    web = tmp_path / "web"
    (web / "d").mkdir(parents=True)
    for name, part in (("d/e.jsonl", docs[:3]), ("d__e.jsonl", docs[3:])):
        lines = [json.dumps({**d, "id": f"{name}#{i}"}) for i, d in enumerate(part)] + ['{"id": "cut", "text": "no']
        (web / name).write_text("\n".join(lines) + "\n")
    os.symlink(".", web / "loop")
    spec = {"name": "names", "version": 1, "seed": 3, "budget": 3_000, "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web"], "mix_percent": 100.0}]}
    assert sorted(f.name for f in list_inputs(manifest_from_dict(spec)).files[0]) == ["web/d/e.jsonl",
                                                                                      "web/d__e.jsonl"]
    out = tmp_path / "out"
    (out / "quarantine" / "web").mkdir(parents=True)
    (out / "quarantine" / "web" / "web__d__e.jsonl.jsonl.gz").write_bytes(b"an earlier build's")
    (out / "quarantine" / "notes.txt").write_text("mine")
    report = build(manifest_from_dict(spec), 3_000, str(out), spark, attributes=str(tmp_path / "attrs"))
    source = report["sources"][0]
    assert source["docs_in"] == 8 and source["quarantined"] == {"malformed_json": 2}
    # an earlier build's quarantine file is not this build's (a release would hold uncounted lines)
    assert sorted(p.relative_to(out).as_posix() for p in (out / "quarantine").rglob("*") if p.is_file()) == [
        "quarantine/notes.txt", "quarantine/web/web/d/e.jsonl.jsonl.gz", "quarantine/web/web/d__e.jsonl.jsonl.gz"]
    records = [json.loads(line) for f in sorted((out / "quarantine").rglob("*.gz"))
               for line in gzip.decompress(f.read_bytes()).splitlines()]
    assert sorted(r["path"].rsplit("/web/", 1)[1] for r in records) == ["d/e.jsonl", "d__e.jsonl"]
    # a linked file under a name of its own is listed (a shorter link's name once hid its target; found by a reviewer)
    os.symlink("d__e.jsonl", web / "latest")
    os.symlink("d/e.jsonl", web / "z.jsonl")
    assert sorted(f.name for f in list_inputs(manifest_from_dict(spec)).files[0]) == [
        "web/d/e.jsonl", "web/d__e.jsonl", "web/z.jsonl"]
    (web / ("L" * 200 + ".jsonl")).write_text(json.dumps(docs[0]) + "\n")
    with pytest.raises(BuildError, match=r"source 'web': 1 input file name\(s\) longer than 190 bytes"):
        list_inputs(manifest_from_dict(spec))
    # a data root is a place, not a pattern: /d[1] matched /d1 and read another directory
    with pytest.raises(BuildError, match=r"data root '.*/d\[1\]' holds glob characters"):
        list_inputs(manifest_from_dict({**spec, "data_root": str(tmp_path / "d[1]")}))


def test_an_unreadable_link_beside_a_directory_loop_is_counted_once_under_its_own_name(tmp_path):
    """Beside a `loop -> .` link, `web/**` reaches a dangling link under web/loop/loop/... forty
    times: 1 broken file read "41 input file(s) cannot be read" (found by a tester)."""
    from dolmino.build.inputs import list_inputs
    from dolmino.errors import BuildError

    web = tmp_path / "web"
    web.mkdir()
    (web / "good.jsonl").write_text(json.dumps({"id": "1", "text": "one document"}) + "\n")
    (web / "annexed.jsonl").symlink_to(tmp_path / "never-fetched")
    (web / "loop").symlink_to(".")
    spec = {"name": "links", "version": 1, "seed": 1, "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web/**"], "mix_percent": 100}]}
    with pytest.raises(BuildError, match=r"source 'web': 1 input file\(s\) cannot be read \(first: "
                                         r"\S*/web/annexed.jsonl: No such file or directory;"):
        list_inputs(manifest_from_dict(spec))


def test_a_directory_of_files_that_are_not_documents_says_what_it_holds(tmp_path):
    """A source directory of Parquet and .jsonl.bz2 files read "no input files match" it, then "point
    it at your copy of the data": the directory is there, its files are of a format not read
    (found by a tester). An empty directory still matches nothing."""
    from dolmino.build.inputs import list_inputs
    from dolmino.errors import BuildError

    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "part-0.parquet").write_bytes(b"PAR1")
    (tmp_path / "web" / "part-1.jsonl.bz2").write_bytes(b"BZh9")
    (tmp_path / "empty").mkdir()
    spec = {"name": "formats", "version": 1, "seed": 1, "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web"], "mix_percent": 50},
                        {"name": "wiki", "paths": ["empty"], "mix_percent": 50}]}
    with pytest.raises(BuildError) as caught:
        list_inputs(manifest_from_dict(spec))
    message = str(caught.value)
    assert re.search(r"source 'web': '\S*/web' holds no dolma documents by name, only 2 other file\(s\) "
                     r"\(\S*/web/part-0.parquet, \S*/web/part-1.jsonl.bz2\); documents end in .jsonl, ", message)
    assert re.search(r"source 'wiki': no input files match '\S*/empty'", message)
    assert "source 'web': no input files match" not in message


def test_unreadable_links_and_names_that_are_not_utf8_are_refused_at_listing(tmp_path):
    """A .jsonl link leading nowhere (a git-annex file never fetched) or in a loop was left out
    unsaid, its documents lost; named explicitly it read "no input files match". A file name
    that is not UTF-8 failed the build after Spark started, with a traceback (found by a tester)."""
    from dolmino.build.inputs import list_inputs, list_sources
    from dolmino.errors import BuildError

    web = tmp_path / "web"
    web.mkdir()
    (web / "good.jsonl").write_text(json.dumps({"id": "1", "text": "one document"}) + "\n")
    (web / "README.txt").symlink_to(tmp_path / "nowhere.txt")  # not a document by name: skipped, as before
    spec = {"name": "links", "version": 1, "seed": 1, "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web/*"], "mix_percent": 100}]}
    assert [f.name for f in list_inputs(manifest_from_dict(spec)).files[0]] == ["web/good.jsonl"]
    (web / "annexed.jsonl.zst").symlink_to(tmp_path / ".git/annex/objects/never-fetched")
    (web / "loop1.jsonl").symlink_to(web / "loop2.jsonl")
    (web / "loop2.jsonl").symlink_to(web / "loop1.jsonl")
    with pytest.raises(BuildError, match=r"source 'web': 3 input file\(s\) cannot be read \(first: .*/web/"
                                         r"annexed.jsonl.zst: No such file or directory; a link leading nowhere"):
        list_inputs(manifest_from_dict(spec))
    named = {**spec, "sources": [{**spec["sources"][0], "paths": ["web/loop1.jsonl"]}]}
    with pytest.raises(BuildError, match=r"1 input file\(s\) cannot be read \(first: .*/loop1.jsonl: Too many "
                                         r"levels of symbolic links"):
        list_inputs(manifest_from_dict(named))
    for link in ("annexed.jsonl.zst", "loop1.jsonl", "loop2.jsonl"):
        (web / link).unlink()
    latin = os.fsdecode(b"caf\xe9.jsonl")
    (web / latin).write_text(json.dumps({"id": "2", "text": "another"}) + "\n")
    with pytest.raises(BuildError, match=r"source 'web': 1 input file name\(s\) are not UTF-8 \(first: "
                                         r".*/web/caf\\xe9.jsonl\); rename them"):
        list_inputs(manifest_from_dict(spec))
    assert list_sources(manifest_from_dict(spec)).sources[0].problems  # dolmino plan and lock say so too
    (web / os.fsdecode(b"\xe9" * 200 + b".jsonl")).write_text("{}\n")  # named in two problems: printable in each
    with pytest.raises(BuildError) as caught:
        list_inputs(manifest_from_dict(spec))
    assert "longer than 190 bytes" in str(caught.value) and str(caught.value).encode("utf-8")
    s3_root = {**spec, "data_root": os.fsdecode(b"s3://bucket/r\xe9")}  # botocore raised on it (a reviewer)
    assert list_sources(manifest_from_dict(s3_root)).sources[0].problems == [
        "source 'web': 's3://bucket/r\\xe9/web/*' is not UTF-8, which S3 keys are"]


def test_a_skipped_file_whose_name_is_not_utf8_is_warned_about_printably(spark, tmp_path):
    """A non-document whose name is not UTF-8 is skipped; its name in the warning stopped the
    build at its very end, writing report.md (found by a reviewer)."""
    web = tmp_path / "web"
    web.mkdir()
    docs = [doc for _, doc in read_documents(str(shared_corpus_file("web.jsonl.zst")), Quarantine())][:5]
    write_documents(str(web / "a.jsonl"), docs)
    (web / os.fsdecode(b"notes-caf\xe9.txt")).write_text("not a document")
    spec = {"name": "skipped", "version": 1, "seed": 1, "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web"], "mix_percent": 100}]}
    out = tmp_path / "out"
    report = build(manifest_from_dict(spec), 2_000, str(out), spark, attributes=str(tmp_path / "a"))
    assert any(w.startswith("skipped 1 file(s)") and w.endswith("/web/notes-caf\\xe9.txt") for w in report["warnings"])
    assert (out / "report.json").exists() and (out / "report.md").exists()


def test_spellings_of_one_file_share_a_key(tmp_path, monkeypatch):
    """The listing's key of a path (its directory resolved, then its name) is the same however the
    path is spelled: relative, absolute, `//`, `./`, `..`, through a directory link; two files differ."""
    import os

    from dolmino.build.inputs import _Spellings

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("{}\n")
    os.symlink("d", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    keys = _Spellings()
    same = {keys.key(p) for p in ("d/a.jsonl", "./d/a.jsonl", "d//a.jsonl", f"{tmp_path}/d/a.jsonl",
                                   f"{tmp_path}//d/../d/a.jsonl", "link/a.jsonl")}
    assert same == {os.path.join(os.path.realpath(tmp_path / "d"), "a.jsonl")}
    assert keys.key("d/b.jsonl") != keys.key("d/a.jsonl")
    assert keys.key("/etc") == "/etc" and keys.key("s3://b/k//x") == "s3://b/k//x"
    monkeypatch.chdir(tmp_path / "d")
    assert _Spellings().key("a.jsonl") in same


def test_quarantine_names_are_clean_relative_paths_one_per_key():
    """S3 keys with "//", a leading "/", or an s3:// source outside the data root gave names that
    collided on a local --out or that a release refuses (found by a reviewer)."""
    from dolmino.build.output import quarantine_name

    keys = ["web/a.jsonl", "web//a.jsonl", "/web/a.jsonl", "web/./a.jsonl", "s3://bkt/web/a.jsonl", "web/../a.jsonl"]
    names = [quarantine_name("src", k).removeprefix("src/") for k in keys]
    assert names[0] == "web/a.jsonl.jsonl.gz" and len(set(names)) == len(keys)
    assert all("//" not in n and not n.startswith("/") and "/./" not in n and "/../" not in n and ":" not in n
               for n in names)


def test_an_unfinished_synth_output_is_refused_at_listing(tmp_path, s3_server):
    """An interrupted `dolmino synth` (parts and done-files, no synth-report.json) was built as
    the whole source, one seed's parts beside another's (found by a tester); local and S3."""
    import boto3

    from dolmino.build.inputs import SYNTH_REPORT, list_inputs
    from dolmino.documents import write_documents
    from dolmino.errors import BuildError
    from dolmino.synth import runner

    assert (SYNTH_REPORT, "part-00001.done.json") == (runner.REPORT_NAME, runner.done_name(1))  # synth's names
    out = tmp_path / "synth"
    for i in range(2):
        write_documents(str(out / f"part-{i:05d}.jsonl.zst"), [{"id": f"d{i}", "text": "two plus two is four"}])
        (out / runner.done_name(i)).write_text("{}")
    spec = {"name": "s", "version": 1, "seed": 3, "budget": 1_000, "data_root": str(tmp_path),
            "sources": [{"name": "math", "paths": ["synth/part-*.jsonl.zst"], "mix_percent": 100.0}]}
    with pytest.raises(BuildError, match=r"source 'math': .*/synth holds `dolmino synth` parts without its "
                                         r"synth-report.json \(a run interrupted"):
        list_inputs(manifest_from_dict(spec))
    (out / SYNTH_REPORT).write_text("{}")
    assert [len(files) for files in list_inputs(manifest_from_dict(spec)).files] == [2]
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="unfinished-synth")
    for name in ("part-00000.jsonl.zst", runner.done_name(0)):
        s3.put_object(Bucket="unfinished-synth", Key=f"synth/{name}", Body=(out / name).read_bytes())
    spec["data_root"] = "s3://unfinished-synth"
    with pytest.raises(BuildError, match="s3://unfinished-synth/synth holds `dolmino synth` parts without"):
        list_inputs(manifest_from_dict(spec))
    s3.put_object(Bucket="unfinished-synth", Key=f"synth/{SYNTH_REPORT}", Body=b"{}")
    assert [len(files) for files in list_inputs(manifest_from_dict(spec)).files] == [1]


def test_two_input_files_of_one_name_are_refused_at_listing(tmp_path):
    """A path outside the data root is named without its leading '/': /X/a.jsonl and <root>/X/a.jsonl
    shared one name, so their documents' `loc`, sampling hashes and attribute files (a reviewer)."""
    from dolmino.build.inputs import list_inputs
    from dolmino.errors import BuildError

    outside = tmp_path / "outside" / "a.jsonl"
    inside = tmp_path / "root" / str(outside).lstrip("/")
    for path in (outside, inside):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"id": str(path), "text": "some words here"}) + "\n")
    spec = {"name": "clash", "version": 1, "seed": 3, "budget": 1_000, "data_root": str(tmp_path / "root"),
            "sources": [{"name": "web", "paths": [str(outside).lstrip("/"), str(outside)], "mix_percent": 100.0}]}
    with pytest.raises(BuildError, match=r"source 'web': 1 name\(s\) given to more than one input file \(first: "
                                         rf"{re.escape(str(outside))} and {re.escape(str(inside))}, both named "):
        list_inputs(manifest_from_dict(spec))
    spec["sources"][0]["paths"] = [str(outside)]
    assert [[f.name for f in files] for files in list_inputs(manifest_from_dict(spec)).files] == [
        [str(outside).lstrip("/")]]


def test_a_file_two_sources_match_is_refused_at_listing(tmp_path):
    """A file matched by two sources' paths was read, counted and mixed once per source, unsaid (the
    same document in the output under both; found by a tester). Within one source overlapping
    patterns list a file once; across sources it is a listing error."""
    from dolmino.build.inputs import list_inputs
    from dolmino.errors import BuildError

    (tmp_path / "web").mkdir()
    (tmp_path / "other").mkdir()
    for name in ("web/a.jsonl", "other/o.jsonl"):
        (tmp_path / name).write_text(json.dumps({"id": name, "text": "some words here"}) + "\n")
    spec = {"name": "two", "version": 1, "seed": 3, "budget": 1_000, "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web/*.jsonl", "other/o.jsonl"], "mix_percent": 50.0},
                        {"name": "other", "paths": ["other/*.jsonl"], "mix_percent": 50.0}]}
    with pytest.raises(BuildError, match=r"1 input file\(s\) matched by more than one source \(first: "
                                         r".*other/o.jsonl, by 'web', 'other'\)"):
        list_inputs(manifest_from_dict(spec))
    spec["sources"][0]["paths"] = ["web/*.jsonl", "web/a.jsonl"]  # overlap within a source: listed once
    assert [len(files) for files in list_inputs(manifest_from_dict(spec)).files] == [1, 1]
    # however the path is spelled: a symlinked directory, `//` (a reviewer)
    import os

    os.symlink("web", tmp_path / "alias")
    spec["sources"][0]["paths"] = ["web/*.jsonl", "alias/a.jsonl"]
    assert [[f.name for f in files] for files in list_inputs(manifest_from_dict(spec)).files] == [
        ["web/a.jsonl"], ["other/o.jsonl"]]
    for spelled in ("alias/a.jsonl", str(tmp_path) + "//web/a.jsonl"):
        spec["sources"][1]["paths"] = ["other/*.jsonl", spelled]
        with pytest.raises(BuildError, match=r"matched by more than one source"):
            list_inputs(manifest_from_dict(spec))
    # an absolute path through '..' named its input "../...": attribute files outside their set (a reviewer)
    (tmp_path.parent / f"{tmp_path.name}-outside").mkdir()
    (tmp_path.parent / f"{tmp_path.name}-outside" / "x.jsonl").write_text(json.dumps({"id": "x", "text": "t"}) + "\n")
    spec["sources"][1]["paths"] = ["other/*.jsonl", f"{tmp_path}/../{tmp_path.name}-outside/x.jsonl"]
    with pytest.raises(BuildError, match=r"source 'other': 1 input path\(s\) go through '\.\.'"):
        list_inputs(manifest_from_dict(spec))


def test_a_budget_that_scales_the_passes_is_said_once_and_misses_compare_with_the_plan(inputs, spark, tmp_path):
    """Another budget on a passes manifest gave one warning per source, and each pool-size miss
    quoted the manifest's unscaled Source % ("took 179.9%, the manifest says 200%" where the
    build had planned 500%; found by a tester). One line for the scale; misses against the plan."""
    spec = {"name": "scaled", "version": 2, "seed": 9, "data_root": str(inputs),
            "sources": [{"name": "wiki", "paths": ["wiki/*.jsonl*"], "source_percent": 50, "pool_tokens": "10K"},
                        {"name": "papers", "paths": ["papers/*.jsonl*"], "source_percent": 100, "pool_tokens": "20K"}]}
    manifest = manifest_from_dict(spec)
    report = build(manifest, 2 * manifest.budget, str(tmp_path / "o"), spark, attributes=str(tmp_path / "a"))
    assert report["warnings"][0] == ("budget: 50K is 200% of the 25K tokens the sources' passes add up to: every "
                                     "source takes 2 x its stated passes")
    assert not [w for w in report["warnings"] if w.startswith(("wiki: takes", "papers: takes"))]  # not per source
    wiki = report["sources"][0]
    assert wiki["target_tokens"] == 10_000 and wiki["pool_tokens"] > 10_500
    pool = ("" if wiki["pool_tokens_exact"] else "~") + format_count(wiki["pool_tokens"])
    assert (f"source 'wiki': took {100 * wiki['passes']:.4g}% of its pool, this build planned 100% (the manifest says "
            f"50% at its budget; the pool holds {pool} tokens after filtering, the manifest's pool_tokens 10K; a pool "
            "build's report measures it)") in report["warnings"]


def test_a_source_given_no_tokens_or_whose_inputs_are_empty_is_named(inputs, spark, tmp_path):
    """A positive share that rounds to 0 tokens was dropped unsaid; a source whose inputs hold no
    documents at all was warned as "no documents left after filtering and dedup" (a tester)."""
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "empty.jsonl").write_text("")
    spec = {"name": "zero", "version": 1, "seed": 3, "budget": 20_000, "data_root": str(inputs),
            "sources": [{"name": "wiki", "paths": ["wiki/*.jsonl*"], "mix_percent": 60},
                        {"name": "papers", "paths": ["papers/*.jsonl*"], "mix_percent": 0.0004},
                        {"name": "none", "paths": [str(tmp_path / "none" / "*.jsonl")], "mix_percent": 39.9996}]}
    report = build(manifest_from_dict(spec), 20_000, str(tmp_path / "o"), spark, attributes=str(tmp_path / "a"))
    papers, none = report["sources"][1:]
    assert papers["target_tokens"] == 0 and none["target_tokens"] > 0 and none["docs_in"] == 0
    assert ("papers: its share 0.0004% of the budget 20K is under one token: it gets 0 tokens at this budget (a larger "
            "budget or share takes it in)") in report["warnings"]
    assert [w for w in report["warnings"] if w.startswith("source 'none'")] == [
        f"source 'none': its inputs hold no documents (1 file(s), 0 bytes); it contributes 0 of its "
        f"{none['target_tokens']:,} target tokens"]


def test_token_files_the_build_would_not_remove_are_refused_before_any_work(inputs, spark, tmp_path, capsys,
                                                                           s3_server):
    """Found by a tester: a build certified an --out holding backup/part-00009.npy (a user's), exit 0,
    and `dolmino release publish` then refused it and said to rebuild, which never removes it. The
    build refuses to start beside token files and sidecars it neither writes nor removes, local or S3."""
    import uuid

    from dolmino import s3
    from dolmino.build import output
    from dolmino.errors import BuildError

    out, attributes = tmp_path / "o", tmp_path / "a"
    for stray in ("part-backup/part-00000.npy", "backup/part-00009.npy"):
        (out / stray).parent.mkdir(parents=True, exist_ok=True)
        (out / stray).write_bytes(b"\0" * 8)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(inputs)))
    args = ["--manifest", str(path), "--out", str(out), "--attributes", str(attributes), "--quiet"]
    assert build_main(args) == 2
    assert capsys.readouterr().err == (
        f"build_mix: error: {out}/backup/part-00009.npy: a token file or sidecar inside --out that this build neither "
        "writes nor removes (2 such file(s)), which `dolmino validate`, the trainer and `dolmino release publish` "
        "refuse beside the build; move them out of --out (`mv`, or `aws s3 mv` on S3), then rerun\n")
    assert build_main([*args, "--overwrite"]) == 2  # --overwrite removes none of them either
    assert not attributes.exists() and sorted(p.name for p in out.iterdir()) == ["backup", "part-backup"]
    bucket = f"strays-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    mix = f"s3://{bucket}/mix"
    for own in ("part-00000.npy", "part-00000.label_mask.npy", "part-00001.csv.gz.tmp42", "_parts/part-00000.json",
                "quarantine/web/a.jsonl.gz", "report.json", "notes.txt"):
        s3.client().put_object(Bucket=bucket, Key=f"mix/{own}", Body=b"x")
    output.refuse_strays(mix)  # what the build writes, or removes as stale; a note is no token file
    s3.client().put_object(Bucket=bucket, Key="mix/quarantine/part-00009.label_mask.npy", Body=b"x")
    with pytest.raises(BuildError, match=rf"^{mix}/quarantine/part-00009\.label_mask\.npy: a token file or sidecar "):
        output.refuse_strays(mix)


def test_parts_missing_from_an_s3_out_are_not_sent_to_s3(s3_server, tmp_path):
    """Parts gone from an s3:// --out (its bucket deleted mid-build) were met with "On a cluster without a
    shared filesystem, write --out to s3://" (found by a tester): that hint is a local --out's; on S3 the
    objects are said missing, and a bucket that is gone is said to be."""
    import uuid

    from dolmino import s3
    from dolmino.build import output
    from dolmino.build.write import PartFile, PartResult
    from dolmino.errors import BuildError

    part = PartResult(0, 2, 1, {}, {}, (PartFile("part-00000.npy", 8, "0" * 64),), {})
    with pytest.raises(BuildError, match="On a cluster without a shared filesystem, write --out to s3://"):
        output.verify_parts(str(tmp_path / "o"), [part])
    bucket = f"gone-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    with pytest.raises(BuildError) as info:
        output.verify_parts(f"s3://{bucket}/mix", [part])
    assert "part-00000.npy: missing\nThe executors' objects are missing or changed at S3" in str(info.value)
    assert "shared filesystem" not in str(info.value)
    s3.client().delete_bucket(Bucket=bucket)
    with pytest.raises(BuildError) as info:
        output.verify_parts(f"s3://{bucket}/mix", [part])
    assert (f"The bucket s3://{bucket} does not exist any more (deleted while the build ran?): create it again and "
            "rerun the same command. The build is not complete (no report.json).") in str(info.value)


def test_a_part_whose_check_the_store_refuses_is_not_said_missing(s3_server):
    """A part HEAD whose retries were spent (503 SlowDown, through a fault-injecting proxy) was reported as
    "part-00000.npy: missing ... deleted or overwritten while the build ran" of a part that was there (found
    by a tester): the store's failure is the error, naming the object; a part really gone is still missing."""
    import hashlib
    import uuid

    from botocore.exceptions import ClientError

    from dolmino import s3
    from dolmino.build import output
    from dolmino.build.write import PartFile, PartResult
    from dolmino.errors import BuildError

    bucket = f"slow-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    data = b"\0" * 8
    digest = hashlib.sha256(data).hexdigest()
    s3.client().put_object(Bucket=bucket, Key="mix/part-00000.npy", Body=data, Metadata={"sha256": digest})
    part = PartResult(0, 2, 1, {}, {}, (PartFile("part-00000.npy", 8, digest),), {})

    def throttle(model, **_):
        if model.name == "HeadObject":
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, model.name)

    events = s3.client().meta.events
    events.register("before-parameter-build.s3", throttle)
    try:
        with pytest.raises(s3.S3ObjectError, match=rf"^s3://{bucket}/mix/part-00000\.npy: S3 HeadObject failed: "
                                                   r"SlowDown \(503\)"):
            output.verify_parts(f"s3://{bucket}/mix", [part])
    finally:
        events.unregister("before-parameter-build.s3", throttle)
    output.verify_parts(f"s3://{bucket}/mix", [part])  # there, as reported
    s3.client().delete_object(Bucket=bucket, Key="mix/part-00000.npy")
    with pytest.raises(BuildError, match="part-00000.npy: missing"):
        output.verify_parts(f"s3://{bucket}/mix", [part])


def test_cli_refuses_attributes_in_the_data_tree_before_any_work(tmp_path, capsys, s3_server):
    """An --attributes that was the data root, or inside a source's directory, was accepted: the build
    wrote its sets there and a rerun read them as inputs (found by a tester)."""
    import uuid

    from dolmino import s3
    from dolmino.build.cli import _check_attributes_root

    data = tmp_path / "data"
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest(data)))
    cases = [(data, "is the data root"),
             (data / "wiki" / "attrs", f"inside {data / 'wiki'}, which source 'wiki' reads")]
    for attrs, message in cases:
        args = ["--manifest", str(path), "--out", str(tmp_path / "o"), "--attributes", str(attrs)]
        assert build_main(args) == 2, attrs
        err = capsys.readouterr().err
        assert message in err and "pick another attributes root" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists() and not (data / "wiki").exists()
    manifest = manifest_from_dict(_manifest(data))
    _check_attributes_root(manifest, str(data / "attributes"))  # beside the sources' directories: read by none
    _check_attributes_root(manifest, str(tmp_path / "attributes"))
    bucket = f"attrs-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    path.write_text(json.dumps(_manifest(f"s3://{bucket}/data")))
    for attrs in (f"s3://{bucket}/data/", f"s3://{bucket}/data/code/a"):
        assert build_main(["--manifest", str(path), "--out", str(tmp_path / "o"), "--attributes", attrs]) == 2
        assert "pick another attributes root" in capsys.readouterr().err
    _check_attributes_root(manifest_from_dict(_manifest(f"s3://{bucket}/data")), f"s3://{bucket}/database")


def test_attributes_beside_a_literal_bracket_pattern_or_under_a_bracketed_data_root(tmp_path, capsys):
    """`web[[]1]/*.jsonl` (glob's escape of a literal `[`) and a data root holding `[`: the attributes check cut
    the resolved path at its first `[`, so the default --attributes beside the sources was refused as inside the
    data root, and a bracketed data root got "pick another attributes root" (for any --attributes), not the
    listing's line saying to rename it (found by a tester)."""
    from dolmino.build.cli import _check_attributes_root
    from dolmino.errors import BuildError

    data = tmp_path / "data"
    (data / "web[1]").mkdir(parents=True)
    manifest = manifest_from_dict({"name": "b", "version": 1, "seed": 1, "budget": "10K", "data_root": str(data),
                                   "sources": [{"name": "web", "paths": ["web[[]1]/*.jsonl"], "mix_percent": 100}]})
    _check_attributes_root(manifest, str(data / "attributes"))  # beside web[1]/: no source reads it
    with pytest.raises(BuildError, match=re.escape(f"inside {data}, which source 'web' reads (web[[]1]/*.jsonl)")):
        _check_attributes_root(manifest, str(data / "web[1]" / "attrs"))
    root = tmp_path / "d[ab]"
    root.mkdir()
    path = root / "m.json"
    path.write_text(json.dumps({"name": "b", "version": 1, "seed": 1, "budget": "10K",
                                "sources": [{"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100}]}))
    for more in ([], ["--attributes", str(tmp_path / "attributes")]):
        assert build_main(["--manifest", str(path), "--out", str(root / "out"), *more]) == 2
        err = capsys.readouterr().err
        assert "holds glob characters" in err and "rename the directory" in err, err
        assert "attributes root" not in err, err


def test_a_pattern_reading_a_bracketed_name_as_a_character_class_says_how_to_escape_it(tmp_path):
    """`web[1]/*.jsonl` with the data in web[1]/: glob reads `[1]` as a character class (web1/), and the build
    said only "no input files match" of a directory the user could see (found by a tester)."""
    from dolmino.build.inputs import list_inputs
    from dolmino.errors import BuildError

    data = tmp_path / "data"
    (data / "web[1]").mkdir(parents=True)
    (data / "web[1]" / "a.jsonl").write_text(json.dumps({"id": "1", "text": "hello"}) + "\n")

    def manifest(pattern):
        return manifest_from_dict({"name": "b", "version": 1, "seed": 1, "budget": "10K", "data_root": str(data),
                                   "sources": [{"name": "web", "paths": [pattern], "mix_percent": 100}]})

    with pytest.raises(BuildError, match=re.escape(f"'{data}/web[1]' exists, but '[' opens a character class in a "
                                                   "pattern: write 'web[[]1]', as in 'web[[]1]/*.jsonl')")):
        list_inputs(manifest("web[1]/*.jsonl"))
    assert [f.name for f in list_inputs(manifest("web[[]1]/*.jsonl")).files[0]] == ["web[1]/a.jsonl"]
    with pytest.raises(BuildError) as info:  # nothing of the kind where no such name exists
        list_inputs(manifest("web[2]/*.jsonl"))
    assert "character class" not in str(info.value)


def test_spark_submit_arguments_whose_non_ascii_characters_the_jvm_made_question_marks(tmp_path, capsys, monkeypatch):
    """Under LC_ALL=C (or POSIX, no locale, one not installed) spark-submit's JVM hands the driver each byte of a
    non-ASCII character as '?': --out /data/é/mix was built into /data/??/mix, unsaid, and a manifest at such
    a path was "not found" under a name the user never typed (found by a tester)."""
    from dolmino.build.cli import jvm_mangled_argument

    path = tmp_path / "m.json"
    path.write_text(json.dumps({"name": "b", "version": 1, "seed": 1, "budget": "10K", "data_root": str(tmp_path),
                                "sources": [{"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100}]}))
    for var in ("LC_ALL", "LC_CTYPE", "LANG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")  # the driver spark-submit starts
    monkeypatch.setenv("LC_ALL", "C")
    assert build_main(["--manifest", str(path), "--out", str(tmp_path / "??" / "out")]) == 2
    err = capsys.readouterr().err
    assert f"'{tmp_path}/??/out' holds '?'" in err and "LC_ALL=C.UTF-8" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "??").exists()
    for env in ({"LC_ALL": "POSIX"}, {"LANG": "C"}, {}, {"LC_CTYPE": "C.UTF-8"},  # the last: Python's coercion of C
                {"LANG": "xx_YY.UTF-8"}):  # a locale not installed: C to the JVM
        monkeypatch.delenv("LC_ALL", raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        assert "holds '?'" in jvm_mangled_argument(["--out", "/data/??/mix"]), env
        for var in env:
            monkeypatch.delenv(var)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")  # a '?' the user typed
    assert jvm_mangled_argument(["--out", "/data/??/mix"]) is None
    monkeypatch.setenv("LC_ALL", "C")
    assert jvm_mangled_argument(["--out", "/data/mix"]) is None
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT")  # `dolmino build`: Python reads the arguments as typed
    assert jvm_mangled_argument(["--out", "/data/??/mix"]) is None


def test_spark_submit_locale_is_the_jvms_own_every_category_of_it(tmp_path, monkeypatch):
    """Checked against real spark-submit runs: LC_MESSAGES (or LC_CTYPE) naming a locale not installed beside
    LANG=C.UTF-8 leaves the JVM's every category C (glibc's setlocale(LC_ALL, "") fails whole), and it made
    --out /data/é/mix /data/??/mix, unsaid; an explicit LC_CTYPE=C.UTF-8 without LANG reads arguments intact,
    yet an S3 key holding a '?' was refused, taken for Python's coercion of C (a reviewer). The JVM's own
    environment (the driver's parent's) tells the two apart."""
    import shutil
    import subprocess

    from dolmino.build.cli import jvm_mangled_argument

    for var in ("LC_ALL", "LC_CTYPE", "LANG", "LC_MESSAGES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")  # the driver spark-submit starts
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_MESSAGES", "xx_YY.UTF-8")  # this driver's parent is no JVM: its own environment
    assert "holds '?'" in jvm_mangled_argument(["--out", "/data/??/mix"])
    monkeypatch.delenv("LC_MESSAGES")
    assert jvm_mangled_argument(["--out", "/data/??/mix"]) is None

    java = tmp_path / "java"  # a parent named as spark-submit's is, started with the environment given
    shutil.copy(shutil.which("sleep"), java)
    for jvm_env, driver_env, refused in (({"LC_CTYPE": "C.UTF-8"}, {"LC_CTYPE": "C.UTF-8"}, False),
                                         ({"LC_CTYPE": "xx_YY.UTF-8", "LANG": "C.UTF-8"},
                                          {"LC_CTYPE": "C.UTF-8", "LANG": "C.UTF-8"}, True),  # Python coerced it
                                         ({}, {"LC_CTYPE": "C.UTF-8"}, True)):
        parent = subprocess.Popen([str(java), "60"], env=jvm_env)
        try:
            monkeypatch.setattr(os, "getppid", lambda: parent.pid)
            for var in ("LC_CTYPE", "LANG"):
                monkeypatch.delenv(var, raising=False)
            for var, value in driver_env.items():
                monkeypatch.setenv(var, value)
            problem = jvm_mangled_argument(["--out", "s3://bucket/mixes/a?b"])
            assert (problem is not None) == refused, (jvm_env, problem)
        finally:
            parent.kill()
            parent.wait()


def test_damaged_compressed_inputs_and_inputs_without_documents_are_warned_about_by_file(spark, tmp_path):
    """Found by a tester: a .zst cut in half lost every document after the cut, and the console
    said nothing (report.md had "corrupt_stream | 1"; the file was named only in quarantine/); a
    .gz of 0 bytes (a write cut short) read as an empty file, counted nowhere; and a source whose
    files held 6 bytes of blank lines was said to hold "3 file(s), 0 bytes" (its documents' text)."""
    docs = [{"id": f"w{i}", "text": f"document {i} about baking bread in a wood-fired oven, " * 40} for i in range(60)]
    frame = zstandard.ZstdCompressor().compress(b"".join(json.dumps(d).encode() + b"\n" for d in docs[30:]))
    web = tmp_path / "data" / "web"
    write_documents(str(web / "a.jsonl.zst"), docs[:30])
    (web / "b.jsonl.zst").write_bytes(frame[:len(frame) // 2])
    (web / "c.jsonl.gz").write_bytes(b"")
    (web / "d.jsonl.zst").write_bytes(b"")
    (tmp_path / "data" / "blank").mkdir()
    for name in "xyz":
        (tmp_path / "data" / "blank" / f"{name}.jsonl").write_bytes(b"\n\n")
    spec = {"name": "damaged", "version": 1, "seed": 3, "data_root": str(tmp_path / "data"),
            "sources": [{"name": "web", "paths": ["web/*"], "mix_percent": 90},
                        {"name": "blank", "paths": ["blank/*.jsonl"], "mix_percent": 10}]}
    report = build(manifest_from_dict(spec), 4_000, str(tmp_path / "out"), spark, attributes=str(tmp_path / "a"))
    web_report, blank = report["sources"]
    [record] = [json.loads(line) for line in gzip.decompress(
        (tmp_path / "out" / "quarantine" / "web" / "web" / "b.jsonl.zst.jsonl.gz").read_bytes()).splitlines()]
    lost = record["unreadable_bytes"]
    assert web_report["quarantined"] == {"corrupt_stream": 1} and web_report["broken_files"] == 1 and lost > 0
    expected = [
        "source 'web': 2 compressed input file(s) hold 0 bytes, not even a compression header (first: web/c.jsonl.gz), "
        "read as holding no documents; usually a write or copy cut short: restore or remove them",
        f"source 'web': 1 input file(s) break part-way ({lost:,} compressed bytes unreadable, every document after a "
        f"break lost; first: web/b.jsonl.zst at byte {len(frame) // 2 - lost:,}); see quarantine/web/",
        f"source 'blank': its inputs hold no documents (3 file(s), 6 bytes); it contributes 0 of its "
        f"{blank['target_tokens']:,} target tokens"]
    assert [w for w in report["warnings"] if w.startswith(("source 'web'", "source 'blank'"))
            and " short of its target " not in w] == expected
    assert f"at compressed byte {len(frame) // 2 - lost:,}" in record["detail"]  # where the reader found the break
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert all(f"- {w}" in markdown for w in expected)


def test_the_tag_phase_warns_of_compressed_inputs_that_break_part_way(spark, tmp_path):
    """Found by a tester: `dolmino tag` said nothing of a .zst (or a Posts.xml.gz) cut in half,
    every document after the cut lost; only the mix phase's report did. The tag phase warns of
    the files it read, naming its quarantine under the attributes root."""
    from test_stackexchange import answer, posts_xml, question

    docs = [{"id": f"w{i}", "text": f"document {i} about baking bread in a wood-fired oven, " * 40} for i in range(40)]
    frame = zstandard.ZstdCompressor().compress(b"".join(json.dumps(d).encode() + b"\n" for d in docs[20:]))
    web = tmp_path / "data" / "web"
    write_documents(str(web / "a.jsonl.zst"), docs[:20])
    (web / "b.jsonl.zst").write_bytes(frame[:len(frame) // 2])
    rows = [r for k in range(40) for r in (question(10 + 2 * k, 9, f"Question {k}", f"<p>rye loaf {k} " * 30 + "</p>",
                                                    accepted=11 + 2 * k),
                                           answer(11 + 2 * k, 10 + 2 * k, 9, f"<p>bake it {k} " * 30 + "</p>"))]
    packed = gzip.compress(posts_xml(rows).encode(), mtime=0)
    site = tmp_path / "data" / "se" / "cooking.stackexchange.com"
    site.mkdir(parents=True)
    (site / "Posts.xml.gz").write_bytes(packed[:len(packed) // 2])
    spec = {"name": "damaged-tag", "version": 1, "seed": 3, "data_root": str(tmp_path / "data"),
            "sources": [{"name": "web", "paths": ["web/*"], "mix_percent": 50},
                        {"name": "se", "paths": ["se/**/Posts.xml.gz"], "format": "stackexchange", "mix_percent": 50}]}
    attrs = tmp_path / "a"
    summary = build(manifest_from_dict(spec), 4_000, str(tmp_path / "o"), spark, attributes=str(attrs), phase="tag")

    def lost(source: str) -> int:
        [path] = (attrs / source / "quarantine").rglob("*.jsonl.gz")
        [record] = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()
                    if json.loads(line)["reason"] == "corrupt_stream"]
        return record["unreadable_bytes"]

    web_lost, se_lost = lost("web"), lost("se")  # a gzip cut short is read to its end: 0 bytes unreadable
    assert web_lost > 0
    assert se_lost == 0
    assert [w for w in summary["warnings"] if " break part-way " in w or " cut short " in w] == [
        f"source 'web': 1 input file(s) break part-way ({web_lost:,} compressed bytes unreadable, every document "
        f"after a break lost; first: web/b.jsonl.zst at byte {len(frame) // 2 - web_lost:,}); "
        f"see {attrs}/web/quarantine/",
        # its stream ends where the file does: "0 compressed bytes unreadable ... at byte <its size>" read as a
        # contradiction (a tester)
        f"source 'se': 1 compressed input file(s) end inside their stream, cut short (a write, copy or download "
        f"interrupted; the documents after the cut are not in the file; first: "
        f"se/cooking.stackexchange.com/Posts.xml.gz, its end at byte {len(packed) // 2:,}); restore them; "
        f"see {attrs}/se/quarantine/"]


def test_build_mix_py_under_a_python_without_the_libraries_is_one_line(tmp_path):
    """spark-submit runs the Python spark.pyspark.python names (a cluster's spark-defaults.conf often sets one):
    one without the project's libraries ended `spark-submit dolmino/build_mix.py` in an ImportError traceback
    (found by a tester)."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "dolmino" / "build_mix.py"
    # -S: this interpreter without its site-packages, as another Python has none of the venv's libraries
    proc = subprocess.run([sys.executable, "-S", str(script), "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert re.fullmatch(rf"build_mix: error: {re.escape(sys.executable)} has no module '[\w.]+', which dolmino "
                        r"needs: run the build with the project's Python environment .*spark\.pyspark\.python.*\n",
                        proc.stderr), proc.stderr


def test_an_s3_index_of_another_hash_version_is_refused_with_a_command_that_runs(tmp_path, monkeypatch):
    """The refusal of an index from before HASH_VERSION 2 gives the command that rebuilds it. For an
    s3:// index it said `build --out s3://bucket/...`, which `build` refuses ("is a URL; this needs a local
    path"): it builds a local file and copies it up."""
    import shlex

    import dolmino.build.resources
    import filters.decontamination as decon
    from dolmino.build.mix import _check_index
    from dolmino.build.resources import Resource
    from dolmino.errors import BuildError

    cached = str(tmp_path / "cache" / "a1b2" / "idx.npz")  # where the driver downloads it
    os.makedirs(os.path.dirname(cached))
    meta = {"hash_version": decon.HASH_VERSION - 1, "format_version": 2, "task_spec": "boolq", "ngram_size": 8}
    decon._write_aligned_npz(cached, {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    uri = "s3://bucket/evals/idx.npz"
    monkeypatch.setattr(dolmino.build.resources, "localize", lambda resource: cached)
    with pytest.raises(BuildError) as refused:
        _check_index({"type": "decontaminate", "index_path": uri}, {uri: Resource(uri, "0" * 64, False)},
                     "source 'web' filters[0]")
    said = str(refused.value)
    assert said.startswith(f"source 'web' filters[0].index_path: decontamination index {uri} uses hash version "), said
    command = shlex.split(said.split("rebuild it with `")[1].rstrip("`"))
    assert command == ["python", "-m", "filters.decontamination", "build", "--out", "idx.npz", "--tasks", "boolq",
                       "&&", "aws", "s3", "cp", "idx.npz", uri], said
    with pytest.raises(SystemExit):  # what it said before: `build` refuses a URL
        decon.main(["build", "--out", uri, "--tasks", "boolq"])


def test_the_tag_says_per_set_why_it_tags_bundles_again(spark, tmp_path, monkeypatch, capsys):
    """`dolmino tag` and the build counted the files they wrote per set ("web/minhash-17f5...: 1"),
    not why: a team re-tagging part of a large pool learnt the cause from `dolmino mix`'s refusal
    alone, which the tag never gives. Each set's bundles due are counted by reason, from the listings
    the tag makes anyway: no set directory is listed twice for it."""
    import dolmino.build.attributes as attributes
    from dolmino.build import untagged

    docs = [json.dumps({"id": f"d{i}", "text": doc["text"][:400]})
            for i, (_, doc) in zip(range(60), read_documents(str(shared_corpus_file("web.jsonl.zst")), Quarantine()))]
    (tmp_path / "web").mkdir()
    for k, name in enumerate("ace"):
        (tmp_path / "web" / f"{name}.jsonl").write_text("\n".join(docs[20 * k:20 * k + 20]) + "\n")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "retag_length_scorer.py").write_text(_EDITED_SCORER.format(scale=300.0))
    model = tmp_path / "offset.txt"
    model.write_text("0.5")
    _scorer_on_both_paths(spark, monkeypatch, tmp_path / "code", tmp_path / "code")
    spec = {"name": "retag", "version": 1, "seed": 3, "budget": 5_000, "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100.0, "dedup": {"minhash": {}},
                         "filters": [{"type": "score_threshold", "scorer": "retag_length_scorer:LengthScore",
                                      "model_path": str(model), "min_score": 1.0}]}]}
    path = tmp_path / "m.json"
    common = ["--attributes", str(tmp_path / "attrs"), "--quiet"]
    listings: list[tuple[str, str]] = []  # (where, listed directory)
    where = ["tag"]
    for name in ("list_files", "list_dirs"):
        real = getattr(attributes, name)
        monkeypatch.setattr(attributes, name, lambda root, *a, _real=real: listings.append((where[0], root))
                            or _real(root, *a))
    explain = untagged.retag_reasons

    def explaining(*args):
        where[0] = "reasons"
        try:
            return explain(*args)
        finally:
            where[0] = "tag"

    monkeypatch.setattr(untagged, "retag_reasons", explaining)

    def tag(**change) -> tuple[list[str], dict]:
        spec["sources"][0]["filters"][0].update(change)
        path.write_text(json.dumps(spec))
        listings.clear()
        assert build_main([str(path), "--out", str(tmp_path / "o"), *common], phase="tag") == 0
        said = [line.removeprefix("why: ") for line in capsys.readouterr().out.splitlines() if line.startswith("why: ")]
        # listed for the reasons: never a directory the tag listed before them
        ours = [d for w, d in listings if w == "reasons"]
        assert len(ours) == len(set(ours)) and not set(ours) & {d for w, d in listings[:len(listings) - len(ours)]
                                                                if w == "tag"}, listings
        return said, ours

    try:
        said, _ = tag()  # a root never tagged
        assert len(said) == 1 and said[0].startswith(untagged.RETAG_REASONS["not_tagged"] + ": web/docs-"), said
        said, ours = tag(min_score=2.0)  # a scorer's threshold: decided in the mix, from the stored scores
        assert said == [] and ours == []
        model.write_text("0.9")  # the same path, another model
        said, ours = tag()
        sets = sorted(p.name for p in (tmp_path / "attrs" / "web").iterdir() if p.name.startswith("score_threshold"))
        assert len(said) == 1 and said[0].startswith("score_threshold-"), said
        old = [s for s in sets if said[0].startswith(s)]
        new = [s for s in sets if s not in old]
        assert said == [f"{old[0]} holds them: the model at {model} changed since it was tagged: web/{new[0]} (1 "
                        "bundle) (first: web/a.jsonl+2)"], said
        assert ours == [str(tmp_path / "attrs" / "web"), str(tmp_path / "attrs" / "web" / old[0])]
        (tmp_path / "web" / "c.jsonl").write_text("\n".join(docs[40:59]) + "\n")  # one file changed
        said, ours = tag()
        assert len(said) == 2, said
        assert re.fullmatch(r"an input file changed \(another size, ETag or mtime\): web/docs-\w+ \(1 bundle\), "
                            r"web/score_threshold-\w+ \(1 bundle\) \(first: web/a.jsonl\+2\)", said[0]), said
        assert re.fullmatch(r"other input files of the source \(MinHash clusters span all of them\); minhash-\w+ "
                            r"holds the earlier ones: web/minhash-\w+ \(1 bundle\) \(first: web/a.jsonl\+2\)",
                            said[1]), said
        assert ours == [str(tmp_path / "attrs" / "web")]  # the set names, for MinHash's earlier clusters
        (tmp_path / "web" / "b.jsonl").write_text(docs[59] + "\n")  # one file added
        where[0] = "tag"
        report = build(manifest_from_dict(json.loads(path.read_text())), 5_000, str(tmp_path / "mix"), spark,
                       attributes=str(tmp_path / "attrs"))
    finally:
        sys.modules.pop("retag_length_scorer", None)
    files = report["run"]["attribute_files"]["web"]
    docs_set = next(s for s in files if s.startswith("docs-"))
    assert files[docs_set]["reasons"] == {"files_added_or_removed": {
        "bundles": 1, "detail": untagged.RETAG_REASONS["files_added_or_removed"], "first": "web/a.jsonl+3"}}
    assert all(set(c.get("reasons", {})) <= {"files_added_or_removed", "source_inputs_changed"}
               for c in files.values()), files
    from dolmino.report import render_markdown

    said = f"- {untagged.RETAG_REASONS['files_added_or_removed']}: web/{docs_set} (1 bundle), "
    assert said in render_markdown(report)
