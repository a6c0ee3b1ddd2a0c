"""A Posts.xml split into byte ranges converts exactly as the whole file does.

The fixture is written like the official dump (see tests/test_stackexchange.py) with every case
that couples rows far apart: answers before and after their questions and ranges away from
them, malformed rows (one of them claiming another question's accepted answer), repeated
question and answer rows, a non-canonical answer row that pass 1 reads through the XML
parser, a CRLF line, and rows much longer than the smallest split. First the reader's range
functions on their own, against the whole-file reader, for many cut points; then the build
(`dolmino.build.mix.build`, Spark local[2]): tagged whole and with small split sizes, the
memmaps are byte-identical, the reports equal, and the ranges' documents and quarantine
files are the whole file's, cut.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from dolmino.build.attributes import DOCUMENTS_DIR
from dolmino.documents import Quarantine, read_documents
from filters import stackexchange as se
from test_stackexchange import answer, posts_xml, question, row

WORDS = ("dough flour yeast oven crust proof knead rest bake salt water butter sugar heat pan steam "
         "rise bread loaf crumb sour starter rye wheat bowl timer fold shape score cool slice").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def generated_posts(seed: int = 1, pairs: int = 90) -> bytes:
    """Posts.xml bytes with every case that couples rows far apart."""
    rng = random.Random(seed)
    rows: list[str] = []
    late: list[str] = []  # answers held back to land far after their questions
    for k in range(pairs):
        qid, aid = 100 + 3 * k, 101 + 3 * k
        body = "<p>" + _text(rng, rng.randint(8, 60)) + "</p>" + ("<pre><code>x = 1\n\n\ny = 2</code></pre>" if k % 5 == 0 else "")
        title, a_body = f"Question {k} " + _text(rng, 3), "<p>" + _text(rng, rng.randint(5, 80)) + "</p>"
        if k % 9 == 4:  # the same Q&A under other ids: exact duplicates
            title, body, a_body = "Asked again", "<p>the same question, asked again</p>", "<p>the same answer</p>"
        q = question(qid, rng.choice([1, 3, 4, 12]), title, body, accepted=None if k % 11 == 7 else aid)
        a = answer(aid, qid, rng.choice([2, 5, 9, 40]), a_body)
        other = answer(102 + 3 * k, qid, 1, "<p>not the accepted one</p>")
        where = k % 6
        if where == 0:  # answer first
            rows += [a, q, other]
        elif where == 1:  # answer far after its question
            rows += [q, other]
            late.append(a)
        elif where == 2:  # answer far before its question
            rows.insert(rng.randrange(len(rows) + 1) // 4, a)
            rows += [q]
        elif where == 3:  # answer never shows up
            rows += [q, other]
        else:
            rows += [q, a, other]
        if k % 13 == 0:
            rows.insert(rng.randrange(len(rows) + 1), late.pop(0) if late else row(Id=9000 + k, PostTypeId=5,
                                                                                     Body="<p>tag wiki</p>"))
    rows += late
    # a question asked twice (the second row replaces the waiting first), and an answer given twice
    rows.insert(10, question(5000, 9, "Twice asked", "<p>first copy</p>", accepted=5001))
    rows.append(question(5000, 9, "Twice asked", "<p>second copy</p>", accepted=5001))
    rows.append(answer(5001, 5000, 8, "<p>answer to the twice asked</p>"))
    rows.insert(30, answer(5011, 5010, 6, "<p>first answer row</p>"))
    rows.insert(31, answer(5011, 5010, 7, "<p>repeated answer row</p>"))
    rows.append(question(5010, 5, "Answered twice before", "<p>q</p>", accepted=5011))
    # a broken question claims an answer that belongs to a good question in another part of the file
    rows.insert(5, '  <row Id="6000" PostTypeId="1" Score="9" AcceptedAnswerId="6002" Title="Broken" '
                   'Body="<p>unescaped</p>" />')
    rows.append(question(6001, 9, "Owner of 6002", "<p>mine</p>", accepted=6002))
    rows.insert(20, answer(6002, 6001, 9, "<p>the real answer</p>"))
    # a non-canonical answer row (single quotes): pass 1 must read it through the XML parser
    rows.insert(40, "  <row PostTypeId='2' Id='7001' ParentId='7000' Score='9' Body='&lt;p&gt;single&lt;/p&gt;' />")
    rows.append(question(7000, 9, "Single-quoted answer", "<p>q</p>", accepted=7001))
    # malformed rows of several kinds, and one very long row
    rows.insert(15, '  <row Id="8000" PostTypeId="2" ParentId="1" Score="high" Body="x" />')
    rows.insert(60, "garbage that is not a row")
    rows.insert(90, '  <row Id="8001" PostTypeId="1" Score="4" Body="no title" AcceptedAnswerId="8002" />')
    rows.insert(100, question(8003, 9, "Long one", "<p>" + "long " * 3000 + "</p>", accepted=8004))
    rows.insert(101, answer(8004, 8003, 9, "<p>" + "answer " * 2000 + "</p>"))
    # ids beyond int64 (pass 1's arrays and the join hold int64) and numbers that only int() reads
    big = str(1 << 63)
    rows.insert(25, question(big, 9, "Huge id", "<p>q</p>", accepted=8101))
    rows.insert(26, answer(8101, big, 9, "<p>answer to the huge id</p>"))
    rows.insert(50, question(8102, 9, "Huge accepted id", "<p>q</p>", accepted=big))
    rows.insert(70, answer(big, 8103, 9, "<p>huge answer id</p>"))
    rows.append(question(8103, 9, "Accepts the huge answer id", "<p>q</p>", accepted=big))
    # an accepted answer that is a picture alone: no answer text, removed as answer_empty
    rows.insert(45, question(8200, 9, "Answered with a picture", "<p>q</p>", accepted=8201))
    rows.append(answer(8201, 8200, 9, '<p><img src="https://i.sstatic.net/x.png" alt="a plot"></p>'))
    rows.insert(80, question(8104, "1_0", "Underscored score", "<p>q</p>", accepted=8105))
    rows.insert(81, answer(8105, 8104, "+9", "<p>plus-signed answer score</p>"))
    data = posts_xml(rows).encode("utf-8")
    # a byte-order mark before the declaration, as Windows tools write it
    return b"\xef\xbb\xbf" + data.replace(b"not a row\n", b"not a row\r\n", 1)


def _whole(path: Path):
    stats, quarantine = se.StackExchangeStats(), Quarantine()
    docs = list(se.read_stackexchange(str(path), stats=stats, quarantine=quarantine))
    return docs, stats, quarantine


def _split(path: Path, bounds: list[int]):
    """The split conversion's steps in plain Python: keys per range, the join, halves, pairing."""
    config = se.StackExchangeConfig()
    ranges = list(zip(bounds[:-1], bounds[1:]))
    scans = [se.scan_keys(str(path), config, r, answer_keys=True) for r in ranges]
    candidates = {(a, q) for s in scans for a, q in zip(s.candidate_answers.tolist(), s.candidate_questions.tolist())}
    stats, quarantine = se.StackExchangeStats(), Quarantine()
    halves, first = [], 0
    # as the driver does: no range holds the `</posts>` line -> the last range records truncated_file
    end_line = None if any(scan.ended for scan in scans) else sum(scan.lines for scan in scans) + 1
    for i, (r, scan) in enumerate(zip(ranges, scans)):
        accepted = [(a, p) for a, p in zip(scan.answer_ids.tolist(), scan.answer_parents.tolist()) if (a, p) in candidates]
        lookup = se.accepted_lookup(np.array([a for a, _ in accepted], dtype=np.int64),
                                    np.array([p for _, p in accepted], dtype=np.int64))
        halves += list(se.range_halves(str(path), r, first, lookup, config, stats, quarantine,
                                       end_line=end_line if i == len(ranges) - 1 else None))
        first += scan.lines
    by_question: dict[int, list] = {}
    for half in sorted(halves, key=lambda h: h.line):
        by_question.setdefault(half.question_id, []).append(half)
    outcomes = [o for hs in by_question.values() for o in se.pair_halves(hs, config, stats, str(path))]
    assert len({o.line for o in outcomes}) == len(outcomes)  # one decision per row
    docs = [o.doc for o in sorted(outcomes, key=lambda o: o.line) if o.doc is not None]
    return docs, stats, quarantine, first


@pytest.fixture(scope="module")
def posts(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("se") / "cooking.stackexchange.com"
    d.mkdir()
    path = d / "Posts.xml"
    path.write_bytes(generated_posts())
    return path


def _records(quarantine: Quarantine) -> list[tuple]:
    return [(r.path, r.line, r.reason, r.detail, r.raw) for r in quarantine.records]


def test_ranges_convert_like_the_whole_file(posts):
    docs, stats, quarantine = _whole(posts)
    size = posts.stat().st_size
    # the fixture covers what it claims
    assert stats.removed["answer_missing"] and stats.removed["answer_score<5"] and stats.removed["no_accepted_answer"]
    assert stats.removed["question_score<3"] and len(quarantine.records) >= 4 and len(docs) > 20
    assert stats.removed["duplicate_question"] == 1  # every question row is kept or removed by reason
    assert stats.removed["answer_empty"] == 1 and not any("Answered with a picture" in d["text"] for d in docs)
    assert quarantine.counts["bad_id"] == 2 and quarantine.counts["bad_parent_id"] == 1
    assert quarantine.counts["bad_accepted_answer_id"] == 2 and quarantine.counts["bad_score"] == 3
    assert quarantine.records[0].line > 2  # the byte-order mark is not a bad first line
    stats.check_balance()
    assert any("the real answer" in d["text"] for d in docs) and any("single" in d["text"] for d in docs)
    assert any("second copy" in d["text"] and "answer to the twice" in d["text"] for d in docs)
    assert any("repeated answer row" in d["text"] for d in docs)
    lines = len(posts.read_bytes().split(b"\n")) - 1
    rng = random.Random(0)
    cuts = [[], [size // 2], [1], [size - 1], list(range(0, size, 997))[1:], list(range(0, size, 61))[1:]]
    cuts += [sorted(rng.sample(range(1, size), rng.randint(2, 40))) for _ in range(12)]
    for inner in cuts:
        got, got_stats, got_quarantine, got_lines = _split(posts, [0, *inner, size])
        assert got == docs, f"cuts {inner[:5]}..."
        assert got_stats.to_dict() == stats.to_dict()
        assert _records(got_quarantine) == _records(quarantine)
        assert got_lines == lines


def test_ranges_of_a_posts_xml_on_s3_convert_like_the_local_file(posts, s3_server):
    """A cluster reads Posts.xml from S3: each range is a ranged GET, with the same documents."""
    import uuid

    from dolmino import s3

    bucket = f"se-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="cooking.stackexchange.com/Posts.xml", Body=posts.read_bytes())
    uri = f"s3://{bucket}/cooking.stackexchange.com/Posts.xml"
    docs, stats, quarantine = _whole(posts)
    size = posts.stat().st_size
    got, got_stats, got_quarantine, _lines = _split(uri, [0, size // 3, 2 * size // 3, size])
    assert {d["metadata"]["path"] for d in got} == {uri}  # the one difference: where it was read
    for doc in got:
        doc["metadata"]["path"] = str(posts)
    assert got == docs and got_stats.to_dict() == stats.to_dict()
    assert [r[1:] for r in _records(got_quarantine)] == [r[1:] for r in _records(quarantine)]
    assert {r.path for r in got_quarantine.records} == {uri}


def test_compressed_posts_cannot_be_read_by_range(tmp_path):
    path = tmp_path / "Posts.xml.gz"
    path.write_bytes(gzip.compress(posts_xml([]).encode()))
    with pytest.raises(ValueError, match="compressed Posts.xml can only be read whole"):
        se.scan_keys(str(path), se.StackExchangeConfig(), (0, 10))


def test_pass_one_answer_keys_agree_with_the_xml_parser(posts, monkeypatch):
    config = se.StackExchangeConfig()
    fast = se.scan_keys(str(posts), config, answer_keys=True)
    monkeypatch.setattr(se, "_candidate_fields", lambda line, answer_keys=False: None)
    slow = se.scan_keys(str(posts), config, answer_keys=True)
    def pairs(scan, first, second):
        return list(zip(getattr(scan, first).tolist(), getattr(scan, second).tolist()))

    assert len(fast.answer_ids) > 100 and fast.lines == slow.lines
    # the regex path reads what the parser reads; beyond it only rows that pass 2 quarantines
    # (a question with unescaped markup or no title, an answer with a bad score)
    for first, second, broken in (("candidate_answers", "candidate_questions", [(6002, 6000), (8002, 8001)]),
                                  ("answer_ids", "answer_parents", [(8000, 1), (8105, 8104)])):
        got = pairs(fast, first, second)
        assert [p for p in got if p not in broken] == pairs(slow, first, second)
        assert set(broken) <= set(got)
    assert (7001, 7000) in pairs(slow, "answer_ids", "answer_parents")


# ---------------------------------------------------------------------------- the build


def _manifest(root: Path) -> dict:
    return {
        "name": "se-split", "version": 2, "kind": "pool", "seed": 11, "data_root": str(root),
        "output_format": {"tokens_per_file": "1K", "label_mask": False},
        "sources": [{"name": "stackexchange", "paths": ["**/Posts.xml"], "format": "stackexchange", "pool_tokens": "30K",
                     "filters": [{"type": "repeated_ngrams", "max_n": 13, "min_repeats": 32}],
                     "dedup": {"exact": True}}],
    }


def _parts(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("part-*"))}


def _comparable(report: dict) -> dict:
    """A report without what describes the run (timings, stages, cluster) or where it wrote."""
    out = {k: v for k, v in report.items() if k not in ("run", "attributes")}
    out["output"] = {k: v for k, v in report["output"].items() if k != "location"}
    return out


def _unit_files(attributes: Path, kind: str) -> list[Path]:
    return sorted((p for p in (attributes / "stackexchange" / kind).rglob("*") if p.is_file()), key=lambda p: p.name)


def _documents(attributes: Path) -> list[dict]:
    return [doc for p in _unit_files(attributes, "documents") for _, doc in read_documents(str(p), Quarantine())]


def _quarantine_rows(attributes: Path) -> list[dict]:
    return [json.loads(line) for p in _unit_files(attributes, "quarantine") for line in gzip.open(p, "rt")]


@pytest.fixture(scope="module")
def builds(posts, spark, tmp_path_factory):
    """The same manifest built with the file whole, and split into 7 ranges (each its own task)."""
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    base = tmp_path_factory.mktemp("builds")
    manifest = _manifest(posts.parent.parent)
    whole = build(manifest_from_dict(manifest), 0, str(base / "whole"), spark, attributes=str(base / "attributes-whole"))
    split = -(-posts.stat().st_size // 7)
    ranged = build(manifest_from_dict(manifest), 0, str(base / "split"), spark, attributes=str(base / "attributes-split"),
                   split_bytes=split, task_bytes=1)
    return base, whole, ranged, split


@pytest.mark.slow
def test_split_build_is_byte_identical_to_the_whole_file_build(posts, builds):
    base, whole, ranged, _split_bytes = builds
    whole_docs = _documents(base / "attributes-whole")
    assert len(_unit_files(base / "attributes-whole", "documents")) == 1
    assert whole_docs == _whole(posts)[0]
    source = whole["sources"][0]
    assert source["removed"]["stackexchange:answer_missing"]["docs"] > 0 and sum(source["quarantined"].values()) >= 4
    assert source["removed"]["exact_duplicate"]["docs"] > 0
    # pairs removed while converting form no document: their bytes are not measured (null, "-"
    # in report.md), where they read 0 and the source's bytes balance said nothing of them
    assert source["removed"]["stackexchange:answer_missing"]["bytes"] is None
    assert source["removed"]["exact_duplicate"]["bytes"] > 0
    md = (base / "whole" / "report.md").read_text()
    assert any(line.startswith("| stackexchange | stackexchange:answer_missing | ") and line.endswith(" | - | |")
               for line in md.splitlines())
    assert len(_unit_files(base / "attributes-split", "documents")) == 7
    assert _parts(base / "split") == _parts(base / "whole") and whole["output"]["files"] >= 2
    assert _comparable(ranged) == _comparable(whole)
    # the ranges' documents and quarantine files are the whole file's, cut
    assert _documents(base / "attributes-split") == whole_docs
    assert _quarantine_rows(base / "attributes-split") == _quarantine_rows(base / "attributes-whole")
    assert {"stackexchange:keys", "stackexchange:pair"} <= set(ranged["run"]["stages"])
    assert "stackexchange:pair" not in whole["run"]["stages"]


@pytest.mark.slow
def test_another_revisions_documents_in_the_root_are_not_read(posts, builds, spark, tmp_path):
    """A root shared by two dolmino versions whose Stack Exchange conversions differ: both wrote
    `documents/<unit>`, the one that tagged last overwrote the other's, and the other's next mix failed
    ("line 1 is not the document tagged there"; found by a tester). The documents now sit under their
    revision: another revision's files beside them, where an older dolmino writes them, change nothing."""
    import shutil

    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    base, whole, _ranged, _split = builds
    attributes = tmp_path / "attributes"
    shutil.copytree(base / "attributes-whole", attributes)
    [documents] = _unit_files(attributes, "documents")
    assert DOCUMENTS_DIR == f"documents/r{se.CONVERSION_REVISION}" and f"/{DOCUMENTS_DIR}/" in str(documents)
    older = attributes / "stackexchange" / "documents" / documents.relative_to(attributes / "stackexchange" /
                                                                                 DOCUMENTS_DIR)
    older.parent.mkdir(parents=True, exist_ok=True)
    older.write_bytes(b"not this revision's documents")  # where an older dolmino wrote its conversion
    got = build(manifest_from_dict(_manifest(posts.parent.parent)), 0, str(tmp_path / "out"), spark,
                attributes=str(attributes))
    assert _parts(tmp_path / "out") == _parts(base / "whole")
    assert got["run"]["units_tagged"] == 0


@pytest.mark.slow
def test_an_interrupted_split_tag_resumes(posts, builds, spark, tmp_path):
    """A range whose docs set is missing (the job died before writing it) is converted again and
    only its files are written; the build still equals the whole-file build."""
    import shutil

    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    base, whole, _ranged, split = builds
    attributes = tmp_path / "attributes"
    shutil.copytree(base / "attributes-split", attributes)
    docs_sets = sorted((attributes / "stackexchange").glob("docs-*/**/*.parquet"))
    assert len(docs_sets) == 7
    lost = docs_sets[3]
    stem = lost.name[: -len(".parquet")]
    lost.unlink()
    (attributes / "stackexchange" / DOCUMENTS_DIR / lost.parent.name / f"{stem}.jsonl.zst").unlink()
    kept = {p: p.stat().st_mtime_ns for p in _unit_files(attributes, "documents")}
    out = tmp_path / "resumed"
    got = build(manifest_from_dict(_manifest(posts.parent.parent)), 0, str(out), spark, attributes=str(attributes),
                split_bytes=split, task_bytes=1)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert len(_unit_files(attributes, "documents")) == 7
    assert _parts(out) == _parts(base / "whole")
    assert _comparable(got) == _comparable(whole)


@pytest.mark.slow
def test_split_build_from_s3_with_attributes_and_output_there(posts, builds, spark_with_s3):
    """The cluster's layout: Posts.xml, the attribute root (converted documents, quarantine,
    the pairing's key sets) and the output all on S3. Same parts and report as the local
    whole-file build."""
    import uuid

    from dolmino import s3
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    base, whole, _ranged, split = builds
    bucket = f"se-build-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="data/cooking.stackexchange.com/Posts.xml", Body=posts.read_bytes())
    manifest = manifest_from_dict({**_manifest(posts.parent.parent), "data_root": f"s3://{bucket}/data"})
    got = build(manifest, 0, f"s3://{bucket}/out", spark_with_s3, attributes=f"s3://{bucket}/attributes",
                split_bytes=split, task_bytes=1)
    parts = {key[len("out/"):]: hashlib.sha256(s3.get_bytes(f"s3://{bucket}/{key}")).hexdigest()
             for key, _ in s3.iter_keys(bucket, "out/part-")}
    assert parts == _parts(base / "whole")
    assert _comparable(got) == _comparable(whole)
    assert {"stackexchange:keys", "stackexchange:pair"} <= set(got["run"]["stages"])
    documents = [k for k, _ in s3.iter_keys(bucket, "attributes/stackexchange/documents/")]
    assert len(documents) == 7


def test_the_pool_manifest_lists_both_namings_of_a_site(tmp_path):
    """The README lets a site's file be `<site>/Posts.xml` or `<site>-Posts.xml`; the pool
    manifest's glob matched only the first, so a site saved the other way was never read,
    with no warning."""
    from dolmino.build.inputs import list_inputs
    from dolmino.manifest import load_manifest

    dump = tmp_path / "stackexchange-2024-09-30"
    (dump / "math.stackexchange.com").mkdir(parents=True)
    (dump / "math.stackexchange.com" / "Posts.xml").write_text("<posts>\n</posts>\n")
    (dump / "chemistry.stackexchange.com-Posts.xml.zst").write_bytes(b"")
    (dump / "math.stackexchange.com" / "PostHistory.xml").write_text("<posthistory>\n</posthistory>\n")
    manifest = load_manifest(str(Path(__file__).resolve().parents[1] / "manifests" / "pools" / "stackexchange.json"),
                             str(tmp_path))
    names = sorted(f.name for f in list_inputs(manifest).files[0])
    assert names == ["stackexchange-2024-09-30/chemistry.stackexchange.com-Posts.xml.zst",
                     "stackexchange-2024-09-30/math.stackexchange.com/Posts.xml"]


def test_a_site_left_in_its_7z_archive_is_named(tmp_path, s3_server):
    """The dump ships one .7z per site; a site not yet extracted matched no pattern and was
    simply not in the build, unsaid (the pool's tokens fell short of pool_tokens by its share).
    The build's warnings and `dolmino plan` name it; stackoverflow.com's tables other than
    Posts, and the archives of extracted sites, are not named."""
    from dolmino.build.inputs import list_inputs
    from dolmino.manifest import load_manifest
    from dolmino.plan import make_plan

    dump = tmp_path / "stackexchange-2024-09-30"
    (dump / "math.stackexchange.com").mkdir(parents=True)
    (dump / "math.stackexchange.com" / "Posts.xml").write_text("<posts>\n</posts>\n")
    (dump / "chemistry.stackexchange.com-Posts.xml.zst").write_bytes(b"")
    archives = ["math.stackexchange.com.7z", "chemistry.stackexchange.com.7z", "cooking.stackexchange.com.7z",
                "stackoverflow.com-Posts.7z", "stackoverflow.com-Users.7z"]
    for name in archives:
        (dump / name).write_bytes(b"7z")
    pool = str(Path(__file__).resolve().parents[1] / "manifests" / "pools" / "stackexchange.json")
    listing = list_inputs(load_manifest(pool, str(tmp_path)))
    assert len(listing.files[0]) == 2
    [warning] = listing.warnings
    assert "2 Stack Exchange .7z archive(s) below" in warning
    assert f"({dump}/cooking.stackexchange.com.7z and 1 more): their sites are not in this build" in warning
    assert any("cooking.stackexchange.com.7z" in w for w in make_plan(load_manifest(pool, str(tmp_path))).warnings)

    (dump / "cooking.stackexchange.com").mkdir()
    (dump / "cooking.stackexchange.com" / "Posts.xml").write_text("<posts>\n</posts>\n")
    (dump / "stackoverflow.com-Posts.xml").write_text("<posts>\n</posts>\n")
    assert list_inputs(load_manifest(pool, str(tmp_path))).warnings == []

    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="se-unextracted-7z")
    s3.put_object(Bucket="se-unextracted-7z", Key="data/stackexchange-2024-09-30/math.stackexchange.com/Posts.xml",
                  Body=b"<posts>\n</posts>\n")
    for name in archives:
        s3.put_object(Bucket="se-unextracted-7z", Key=f"data/stackexchange-2024-09-30/{name}", Body=b"7z")
    [warning] = list_inputs(load_manifest(pool, "s3://se-unextracted-7z/data")).warnings
    assert "3 Stack Exchange .7z archive(s) below 's3://se-unextracted-7z/data/stackexchange-2024-09-30'" in warning


def test_a_file_the_glob_matches_but_no_reader_takes_is_named_with_the_real_suffixes(tmp_path):
    """The message listed '.jsonl, .jsonl.gz, .jsonl.zst[.gz|.zst]': neither the hub's own
    .json.gz nor the other accepted names, and a '.jsonl.zst.gz' that is not one."""
    from dolmino.build.inputs import list_inputs
    from dolmino.errors import BuildError
    from dolmino.manifest import manifest_from_dict

    (tmp_path / "wiki").mkdir()
    (tmp_path / "wiki" / "wiki-0002.json.bz2").write_bytes(b"")
    manifest = manifest_from_dict({"name": "m", "version": 1, "seed": 1, "budget": 100, "data_root": str(tmp_path),
                                   "sources": [{"name": "wiki", "paths": ["wiki/*.json*"], "mix_percent": 100}]})
    with pytest.raises(BuildError) as info:
        list_inputs(manifest)
    assert "wiki-0002.json.bz2); documents end in .jsonl, .json or .ndjson, plain or with .gz, .zst or .zstd" \
        in str(info.value)


def test_missing_inputs_are_one_readable_line_naming_the_root_in_use(tmp_path, capsys):
    """With --data-root the hint blamed "the manifest's data_root" and said to pass
    --data-root; several missing sources ran together on the one line the CLI prints."""
    from dolmino.build.cli import main as build_main

    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"name": "m", "version": 1, "seed": 1, "budget": 100, "data_root": "/nowhere",
                                    "sources": [{"name": "a", "paths": ["a/*.jsonl"], "mix_percent": 50},
                                                {"name": "b", "paths": ["b/*.jsonl"], "mix_percent": 50}]}))
    assert build_main(["--manifest", str(manifest), "--data-root", str(tmp_path / "copy"),
                       "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"no input files match '{tmp_path / 'copy' / 'a/*.jsonl'}'; source 'b': no input files match" in err
    assert f"relative paths resolve against the data root '{tmp_path / 'copy'}', which does not exist, the " \
           "manifest's data_root unless --data-root replaces it" in err


def test_changed_conversion_rules_key_a_new_documents_set(posts, monkeypatch):
    """A build tagged under earlier conversion rules (revision 1 kept an answer without text as a
    question alone) is not reused: a Stack Exchange source's documents set, and the sets of scores
    read beside it row by row, are keyed by the rules' revision (the scores' sets were not, and a
    mix read the new rows against the old scores; a reviewer); a Dolma source's keys do not move."""
    from dolmino.build.inputs import list_inputs, plan_units
    from dolmino.build.tag import tag_plans
    from dolmino.manifest import manifest_from_dict

    spec = _manifest(posts.parent.parent)
    (posts.parent.parent / "web.jsonl").write_text(json.dumps({"id": "w", "text": "a web page"}) + "\n")
    scored = {"type": "min_length", "min_chars": 10}  # a set of scores read beside the documents, row by row
    spec["sources"][0]["filters"].append(scored)
    spec["sources"].append({"name": "web", "paths": ["web.jsonl"], "pool_tokens": "1K", "filters": [scored]})
    manifest = manifest_from_dict(spec)
    units = plan_units(list_inputs(manifest))

    def sets() -> list[list[str]]:
        return [[plan.docs_set, *(t.set_name for t in plan.filters)] for plan in tag_plans(manifest, {}, "tok", units)]

    now = sets()
    monkeypatch.setattr(se, "CONVERSION_REVISION", se.CONVERSION_REVISION + 1)
    later = sets()
    assert len(now[0]) == 2 and all(a != b for a, b in zip(later[0], now[0])) and later[1] == now[1]


def test_a_question_is_never_paired_with_an_answer_it_does_not_accept(tmp_path):
    """Rows repeating a question Id with another AcceptedAnswerId: the pending state held one half
    per question id, so the answer that the replaced row named completed the pair of the row that
    named another (a document of question 60's second row with answer 61; found by a tester).
    The whole file, with and without spilling, and every cut of it pair each question row only
    with the answer row its AcceptedAnswerId names."""
    rows = [
        question(50, 9, "A first", "<p>q</p>", accepted=51), answer(51, 50, 9, "<p>a51</p>"),
        question(50, 9, "A second", "<p>q</p>", accepted=52), answer(52, 50, 9, "<p>a52</p>"),
        question(60, 9, "B first", "<p>q</p>", accepted=61), question(60, 9, "B second", "<p>q</p>", accepted=62),
        answer(61, 60, 9, "<p>a61</p>"), answer(62, 60, 9, "<p>a62</p>"),
        answer(71, 70, 9, "<p>a71</p>"), answer(72, 70, 9, "<p>a72</p>"),
        question(70, 9, "C first", "<p>q</p>", accepted=71), question(70, 9, "C second", "<p>q</p>", accepted=72),
    ]
    d = tmp_path / "cooking.stackexchange.com"
    d.mkdir()
    path = d / "Posts.xml"
    path.write_text(posts_xml(rows), encoding="utf-8")
    docs, stats, _quarantine = _whole(path)
    got = [(doc["metadata"]["title"], doc["metadata"]["answer_id"]) for doc in docs]
    assert got == [("A first", 51), ("A second", 52), ("B second", 62), ("C first", 71), ("C second", 72)]
    assert stats.removed == {"duplicate_question": 1}
    stats.check_balance()
    spilled = se.StackExchangeStats()
    assert list(se.read_stackexchange(str(path), stats=spilled, max_pending_bytes=0)) == docs
    assert spilled.spilled_posts > 0
    assert spilled.to_dict() == {**stats.to_dict(), "spilled_posts": spilled.spilled_posts}
    size = path.stat().st_size
    for inner in ([], [size // 2], list(range(0, size, 211))[1:]):
        split_docs, split_stats, _q, _lines = _split(path, [0, *inner, size])
        assert split_docs == docs and split_stats.to_dict() == stats.to_dict()


@pytest.mark.parametrize("tail", [b"", b"\n" * 400])
def test_a_truncated_posts_xml_is_recorded_alike_whole_and_split(tmp_path, tail):
    """Without its `</posts>` line a Posts.xml gets one `truncated_file` record after its last line;
    split, no range alone can tell, so the keys pass says which range holds the line and the file's
    last range records it: the same record at the same line however the file is cut (trailing blank
    lines put the last line in a range of its own)."""
    data = generated_posts(5, 40)
    cut = data[:data.index(b"\n", len(data) * 2 // 3) + 1] + tail
    path = tmp_path / "cooking.stackexchange.com" / "Posts.xml"
    path.parent.mkdir()
    path.write_bytes(cut)
    docs, stats, quarantine = _whole(path)
    lines = cut.count(b"\n")
    assert quarantine.records[-1].reason == "truncated_file" and quarantine.records[-1].line == lines + 1
    assert quarantine.counts["truncated_file"] == 1
    size = len(cut)
    for inner in ([], [size // 2], [size - 3], list(range(0, size, 499))[1:]):
        got, got_stats, got_quarantine, _lines = _split(path, [0, *inner, size])
        assert got == docs and got_stats.to_dict() == stats.to_dict()
        assert _records(got_quarantine) == _records(quarantine)


@pytest.mark.slow
def test_a_truncated_posts_xml_builds_alike_whole_and_split(spark, tmp_path):
    """The build's split conversion (`dolmino.build.stackexchange.convert_ranges`) records the
    `truncated_file` of a Posts.xml cut short as the whole-file conversion does."""
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    data = generated_posts(5, 40)
    site = tmp_path / "data" / "cooking.stackexchange.com"
    site.mkdir(parents=True)
    cut = data[:data.index(b"\n", len(data) * 2 // 3) + 1] + b"\n" * 50
    (site / "Posts.xml").write_bytes(cut)
    manifest = manifest_from_dict(_manifest(tmp_path / "data"))
    whole = build(manifest, 0, str(tmp_path / "whole"), spark, attributes=str(tmp_path / "attributes-whole"))
    ranged = build(manifest, 0, str(tmp_path / "split"), spark, attributes=str(tmp_path / "attributes-split"),
                   split_bytes=-(-len(cut) // 5), task_bytes=1)
    assert len(_unit_files(tmp_path / "attributes-split", "documents")) == 5
    rows = _quarantine_rows(tmp_path / "attributes-whole")
    assert rows[-1]["reason"] == "truncated_file" and rows[-1]["line"] == cut.count(b"\n") + 1
    assert _quarantine_rows(tmp_path / "attributes-split") == rows
    assert whole["sources"][0]["quarantined"]["truncated_file"] == 1
    assert _comparable(ranged) == _comparable(whole) and _parts(tmp_path / "split") == _parts(tmp_path / "whole")
    for report in (whole, ranged):  # on the console too: it was said only in report.md's quarantine table
        assert [w for w in report["warnings"] if "end without their closing </posts> line" in w] == [
            "source 'stackexchange': 1 Posts.xml file(s) end without their closing </posts> line (first: "
            "cooking.stackexchange.com/Posts.xml): cut short by an interrupted extraction or copy, the rows after the "
            "cut are missing; extract the site's Posts.xml again (see quarantine/stackexchange/, reason truncated_file)"]
