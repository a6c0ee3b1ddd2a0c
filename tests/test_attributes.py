"""Attribute bundles, and tag once / mix many on them.

Bundles (`dolmino.build.attributes.plan_bundles`): small whole files of one source share one
Parquet file per attribute set; large files and byte ranges keep a file of their own;
boundaries depend only on names and sizes, so one added or changed file re-tags only its
neighbourhood. The build tests run `dolmino.build.mix.build` on Spark local[2]: a changed
threshold is mixed from the stored scores with no tagging and gives the bytes a fresh build
gives, and a changed input file re-tags its bundle only.
"""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import pytest

from conftest import shared_corpus_file
from dolmino.build import attributes
from dolmino.build.attributes import Bundle, plan_bundles
from dolmino.build.inputs import InputFile, Listing, Unit, Units, plan_units
from dolmino.build.spark import _unpickled
from dolmino.build.mix import build
from dolmino.documents import Quarantine, read_documents, write_documents
from dolmino.errors import BuildError
from dolmino.manifest import manifest_from_dict


def _units(sizes: list[int], source_index: int = 0, prefix: str = "f", start_index: int = 0) -> list[Unit]:
    return [Unit(start_index + i, source_index, InputFile("s", f"/in/{prefix}{i:04d}.jsonl.zst",
                                                          f"{prefix}{i:04d}.jsonl.zst", size, "v1"))
            for i, size in enumerate(sizes)]


def _renumber(units: list[Unit]) -> list[Unit]:
    return [Unit(i, u.source_index, u.file, u.start, u.end) for i, u in enumerate(units)]


def _signature(bundles: list[Bundle]) -> list[tuple[str, str]]:
    return [(b.key, b.version) for b in bundles]


def test_small_files_share_bundles_and_large_units_keep_their_own():
    small = _units([1000] * 5)
    big_file = InputFile("s", "/in/big.jsonl", "big.jsonl", 600 << 20, "v1")
    ranges = [Unit(5, 0, big_file, 0, 300 << 20), Unit(6, 0, big_file, 300 << 20, 600 << 20)]
    large = Unit(7, 0, InputFile("s", "/in/large.jsonl.zst", "large.jsonl.zst", 9 << 20, "v1"))
    other = _units([1000] * 3, source_index=1, prefix="g", start_index=8)
    bundles = plan_bundles([*small, *ranges, large, *other])
    assert [len(b.units) for b in bundles] == [5, 1, 1, 1, 3]
    assert [b.index for b in bundles] == list(range(5))
    assert {u.source_index for u in bundles[4].units} == {1}  # never across sources
    # A bundle of one keeps the unit's own key: large files are laid out as before bundling.
    assert bundles[1].key == ranges[0].key and bundles[1].version == attributes.unit_version(ranges[0])
    assert bundles[0].key == "f0000.jsonl.zst+4"
    assert bundles[0].size == 5000


def test_byte_ranges_read_by_an_older_range_reader_are_tagged_again(monkeypatch):
    """Ranges tagged before the range reader kept a line crossing both a range's end and a
    1 MiB read lost that line: their version names the reader, whole files' does not."""
    big_file = InputFile("s", "/in/big.jsonl", "big.jsonl", 600 << 20, "v1")
    whole, rng = _units([1000])[0], Unit(1, 0, big_file, 0, 300 << 20)
    now = (attributes.unit_version(whole), attributes.unit_version(rng))
    monkeypatch.setattr(attributes, "RANGE_READER", attributes.RANGE_READER - 1)
    assert attributes.unit_version(whole) == now[0]
    assert attributes.unit_version(rng) != now[1]


def test_unit_stats_store_non_zero_counts_and_read_back_whole():
    """The docs set stores a unit's non-zero counts only (a bundle of 4,096 one-document files
    spent its footer on zeros); reading restores every count, and a file that stored them all
    (written before) reads the same."""
    from dolmino.build.tag import UnitStats

    stats = UnitStats()
    stats.lines, stats.docs, stats.bytes = 3, 2, 40
    stats.quarantined = {"malformed_json": 1, "bad_id": 2}
    stored = stats.to_dict()
    assert stored == {"lines": 3, "docs": 2, "bytes": 40, "quarantined": {"bad_id": 2, "malformed_json": 1}}
    full = attributes.unit_stats(stored)
    assert full == {"lines": 3, "docs": 2, "bytes": 40, "unreadable_bytes": 0, "duplicate_ids": 0, "sample_docs": 0,
                    "sample_bytes": 0, "sample_tokens": 0, "quarantined": {"bad_id": 2, "malformed_json": 1},
                    "removed": {}}
    assert attributes.unit_stats(full) == full
    assert attributes.unit_stats(UnitStats().to_dict())["removed"] == {}
    assert set(full) == set(attributes.STAT_COUNTS) | set(attributes.STAT_MAPS)


def test_caps_bound_a_bundle(monkeypatch):
    monkeypatch.setattr(attributes, "BUNDLE_TARGET_BYTES", 1 << 60)  # no hashed boundary
    monkeypatch.setattr(attributes, "BUNDLE_MAX_UNITS", 4)
    assert [len(b.units) for b in plan_bundles(_units([10] * 10))] == [4, 4, 2]
    monkeypatch.setattr(attributes, "BUNDLE_MAX_UNITS", 4096)
    monkeypatch.setattr(attributes, "BUNDLE_MAX_BYTES", 25)
    assert [len(b.units) for b in plan_bundles(_units([10] * 5))] == [2, 2, 1]


def test_an_added_or_changed_file_moves_only_its_own_bundle(monkeypatch):
    """Boundaries are content-defined (a hash of each name), so the bundles before and after
    an inserted file keep their keys and versions: their attributes are reused."""
    monkeypatch.setattr(attributes, "BUNDLE_TARGET_BYTES", 8_000)  # ~8 files of 1 KB per bundle
    units = _units([1000] * 200)
    before = plan_bundles(units)
    assert 10 < len(before) < 60

    inserted = _renumber(units[:100] + [_units([1000], prefix="f0099x")[0]] + units[100:])
    after = plan_bundles(inserted)
    changed = set(_signature(after)) ^ set(_signature(before))
    assert 1 <= len(changed) <= 4, changed  # the bundle that gained the file (+ a merge at most)
    assert any("f0099x" in u.file.name for b in after if (b.key, b.version) in changed for u in b.units)

    edited = list(units)
    edited[57] = Unit(57, 0, InputFile("s", units[57].file.uri, units[57].file.name, 1000, "v2"))
    moved = set(_signature(plan_bundles(edited))) ^ set(_signature(before))
    assert len(moved) == 2  # one bundle, old and new version
    owner = next(b for b in before if any(u.index == 57 for u in b.units))
    assert (owner.key, owner.version) in moved


# ---------------------------------------------------------------------------- builds

THRESHOLD = 0.5
FILES = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from filters.quality import train_fasttext_classifier

    root = tmp_path_factory.mktemp("tag-once")
    docs = list(itertools.islice((d for _, d in read_documents(str(shared_corpus_file("web.jsonl.zst")), Quarantine())),
                                 FILES * 4))
    for i in range(FILES):
        write_documents(str(root / "inputs" / "web" / f"page-{i:03d}.jsonl.zst"), docs[i * 4:(i + 1) * 4])
    model = str(root / "quality.bin")
    academic = [d["text"] for _, d in itertools.islice(read_documents(str(shared_corpus_file("academic.jsonl.zst")),
                                                                      Quarantine()), 60)]
    train_fasttext_classifier(academic, [d["text"] for d in docs[:60]], model, pos_label="__label__hq",
                              neg_label="__label__lq", epoch=5, word_ngrams=1, dim=16, bucket=1000)
    return root, model


def _spec(root: Path, model: str, threshold: float) -> dict:
    return {"name": "tag-once", "version": 1, "seed": 3, "budget": 4_000, "data_root": str(root / "inputs"),
            "output_format": {"tokens_per_file": "2K"},
            "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 100.0,
                         "filters": [{"type": "fasttext_quality", "model_path": model, "label": "__label__hq",
                                      "threshold": threshold}]}]}


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


def test_a_changed_threshold_mixes_from_stored_scores(world, spark, tmp_path, monkeypatch):
    monkeypatch.setattr(attributes, "BUNDLE_TARGET_BYTES", 4_000)  # several bundles of a few files
    root, model = world
    attrs = tmp_path / "attributes"
    tag = build(manifest_from_dict(_spec(root, model, THRESHOLD)), 4_000, str(tmp_path / "o0"), spark,
                attributes=str(attrs), phase="tag")
    assert tag["units"] == FILES and tag["tagged_units"] == FILES and 1 < tag["bundles"] < FILES
    # one docs file and one fastText score file per bundle, nothing per input file
    assert len(list(attrs.rglob("*.parquet"))) == 2 * tag["bundles"] == tag["files_written"]

    import pyarrow.parquet as pq

    score_files = attrs.glob("web/fasttext_quality-*/**/*.parquet")
    scores = sorted(v for f in score_files for v in pq.read_table(f).column(0).to_pylist())
    assert len(scores) == FILES * 4
    thresholds = (scores[len(scores) // 3], scores[2 * len(scores) // 3])  # from the stored scores themselves
    kept = []
    for threshold in thresholds:
        out = tmp_path / f"mix-{threshold}"
        report = build(manifest_from_dict(_spec(root, model, threshold)), 4_000, str(out), spark,
                       attributes=str(attrs), phase="mix")  # refuses to tag: the scores are reused
        fresh = tmp_path / f"fresh-{threshold}"
        build(manifest_from_dict(_spec(root, model, threshold)), 4_000, str(fresh), spark,
              attributes=str(tmp_path / f"attributes-{threshold}"))
        assert _parts(out) == _parts(fresh) and _parts(out)
        kept.append(report["sources"][0]["kept_docs"])
    assert FILES * 4 > kept[0] > kept[1] > 0  # the stricter threshold removed more, from the same stored scores


def test_another_specs_attribute_file_copied_over_this_ones_fails_the_mix(world, spark, tmp_path):
    """Scores of another fastText label copied over this spec's file (same bundle, same input
    versions) were mixed as this label's, exit 0 (found by a tester): each file names its set,
    and the pool stage refuses one of another set."""
    import shutil

    root, model = world
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    other = _spec(root, model, THRESHOLD)
    other["sources"][0]["filters"][0]["label"] = "__label__lq"
    for spec, attrs in ((_spec(root, model, THRESHOLD), ours), (other, theirs)):
        build(manifest_from_dict(spec), 4_000, str(tmp_path / f"tag-{attrs.name}"), spark, attributes=str(attrs),
              phase="tag")
    [our_set] = (ours / "web").glob("fasttext_quality-*")
    [their_set] = (theirs / "web").glob("fasttext_quality-*")
    assert our_set.name != their_set.name
    victim = sorted(our_set.rglob("*.parquet"))[0]
    shutil.copyfile(their_set / victim.relative_to(our_set), victim)
    with pytest.raises(Exception, match=f"belongs to attribute set {their_set.name}, not {our_set.name}.*"
                                        "delete it and run `dolmino tag`"):  # raised in an executor
        build(manifest_from_dict(_spec(root, model, THRESHOLD)), 4_000, str(tmp_path / "mix"), spark,
              attributes=str(ours), phase="mix")


def test_a_changed_file_retags_its_bundle_only(world, spark, tmp_path, monkeypatch):
    monkeypatch.setattr(attributes, "BUNDLE_TARGET_BYTES", 4_000)
    root, model = world
    inputs = tmp_path / "inputs"
    for path in sorted((root / "inputs" / "web").glob("*.jsonl.zst")):
        (inputs / "web").mkdir(parents=True, exist_ok=True)
        (inputs / "web" / path.name).write_bytes(path.read_bytes())
    spec = _spec(tmp_path, model, THRESHOLD)
    attrs = str(tmp_path / "attributes")
    first = build(manifest_from_dict(spec), 4_000, str(tmp_path / "o"), spark, attributes=attrs, phase="tag")
    again = build(manifest_from_dict(spec), 4_000, str(tmp_path / "o"), spark, attributes=attrs, phase="tag")
    assert again["tagged_units"] == 0 and again["files_written"] == 0

    victim = inputs / "web" / "page-013.jsonl.zst"
    docs = [d for _, d in read_documents(str(victim), Quarantine())]
    write_documents(str(victim), docs + [{"id": "added", "text": "A page that was added later to this file."}])
    with pytest.raises(BuildError, match="run `dolmino tag`"):
        build(manifest_from_dict(spec), 4_000, str(tmp_path / "o"), spark, attributes=attrs, phase="mix")

    units = [Unit(i, 0, InputFile("web", str(p), f"web/{p.name}", p.stat().st_size, str(p.stat().st_mtime_ns)))
             for i, p in enumerate(sorted((inputs / "web").glob("*.jsonl.zst")))]
    owner = next(b for b in plan_bundles(units) if any(u.file.name == f"web/{victim.name}" for u in b.units))
    retag = build(manifest_from_dict(spec), 4_000, str(tmp_path / "o"), spark, attributes=attrs, phase="tag")
    assert retag["tagged_units"] == len(owner.units) < first["tagged_units"]
    assert retag["files_written"] == 2


def _near_copy(text: str, tag: str) -> str:
    words = text.split(" ")
    words[len(words) // 2] = tag  # one word changed: Jaccard of 5-gram shingles stays ~0.99
    return " ".join(words)


def test_minhash_clusters_span_bundles(world, spark, tmp_path, monkeypatch):
    """Near duplicates planted in three files: bundled finely (the copies span bundles) or all
    in one bundle, a cluster file is written per bundle, the mix removes all but one of the
    cluster, and the two mixes are byte-identical."""
    root, _model = world
    inputs = tmp_path / "inputs" / "web"
    docs = [d for p in sorted((root / "inputs" / "web").glob("*.jsonl.zst"))
            for _, d in read_documents(str(p), Quarantine())]
    planted = max(docs[4:8], key=lambda d: len(d["text"]))  # a long page of page-001: one word is a small change
    assert len(planted["text"]) > 2_000
    for i in range(FILES):
        part = docs[i * 4:(i + 1) * 4]
        if i in (2, 17):  # a near copy in the next file and one far away
            part = part + [{"id": f"near-{i}", "text": _near_copy(planted["text"], f"changed{i}")}]
        write_documents(str(inputs / f"page-{i:03d}.jsonl.zst"), part)
    spec = {"name": "near", "version": 1, "seed": 3, "budget": 4_000, "data_root": str(tmp_path / "inputs"),
            "output_format": {"tokens_per_file": "2K"},
            "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 100.0,
                         "dedup": {"minhash": {"threshold": 0.8, "num_perm": 64}}}]}
    units = [Unit(i, 0, InputFile("web", str(p), f"web/{p.name}", p.stat().st_size, "x"))
             for i, p in enumerate(sorted(inputs.glob("*.jsonl.zst")))]
    parts = []
    for target in (4_000, attributes.BUNDLE_TARGET_BYTES):
        monkeypatch.setattr(attributes, "BUNDLE_TARGET_BYTES", target)
        bundles = plan_bundles(units)
        owners = {b.index for b in bundles for u in b.units
                  if u.file.name in ("web/page-001.jsonl.zst", "web/page-002.jsonl.zst", "web/page-017.jsonl.zst")}
        assert (len(owners) == 1) == (len(bundles) == 1)  # fine bundles: the copies span bundles
        out, attrs = tmp_path / f"out-{target}", tmp_path / f"attributes-{target}"
        report = build(manifest_from_dict(spec), 4_000, str(out), spark, attributes=str(attrs))
        src = report["sources"][0]
        assert src["removed"]["near_duplicate"]["docs"] == 2  # one cluster of three keeps one
        assert src["minhash"]["duplicate_clusters"] == 1 and src["docs_in"] == FILES * 4 + 2
        assert len(sorted((attrs / "web").glob("minhash-*/**/*.parquet"))) == len(bundles)
        parts.append({p.name: p.read_bytes() for p in sorted(out.glob("part-*"))})
    assert parts[0] == parts[1] and parts[0]  # bundled finely or as one bundle: the same mix


def test_a_shared_attributes_root_repairs_or_refuses_what_is_not_valid(world, spark, tmp_path):
    """A team shares one attributes root. MinHash clusters are global to a pool, so two
    manifests whose source lists other files get their own cluster sets (a killed tag of one
    overwrote the other's, which then mixed silently). A cluster file that is missing is
    computed again by the next tag; a file that does not parse, or that was tagged from another
    version of its input, or clusters of another pool copied in, fail the mix in one line that
    says to delete it and tag again, which then gives the clean build's bytes."""
    import json
    import shutil

    import pyarrow.parquet as pq

    from dolmino.build.attributes import METADATA_KEY

    root, _model = world

    def spec(paths: list[str]) -> dict:
        return {"name": "shared", "version": 1, "seed": 3, "budget": 4_000, "data_root": str(root / "inputs"),
                "output_format": {"tokens_per_file": "2K"},
                "sources": [{"name": "web", "paths": paths, "mix_percent": 100.0,
                             "dedup": {"minhash": {"threshold": 0.8, "num_perm": 64}}}]}

    every, fewer = manifest_from_dict(spec(["web/*.jsonl.zst"])), manifest_from_dict(spec(["web/page-00*.jsonl.zst"]))
    attrs = tmp_path / "attributes"
    clean = build(every, 4_000, str(tmp_path / "clean"), spark, attributes=str(attrs))
    want = _parts(tmp_path / "clean")
    build(fewer, 4_000, str(tmp_path / "fewer"), spark, attributes=str(attrs))
    assert len(list((attrs / "web").glob("minhash-*"))) == 2  # one cluster set per pool

    def mix(name: str) -> dict:
        return build(every, 4_000, str(tmp_path / name), spark, attributes=str(attrs), phase="mix")

    # a mix that reuses the clusters reports their figures (from _SOURCE.json; it wrote null)
    assert mix("again")["sources"][0]["minhash"] == clean["sources"][0]["minhash"]
    from dolmino.build.inputs import list_inputs, plan_units
    from dolmino.build.tag import tag_plans

    cluster_dir = attrs / "web" / tag_plans(every, {}, "", plan_units(list_inputs(every)))[0].minhash_set
    victim = sorted(cluster_dir.rglob("*.parquet"))[0]
    victim.unlink()  # a missing cluster file: the next tag computes the clusters again
    assert build(every, 4_000, str(tmp_path / "retagged"), spark, attributes=str(attrs))["sources"][0]["minhash"]
    assert _parts(tmp_path / "retagged") == want

    good_clusters = victim.read_bytes()
    table = pq.read_table(victim)
    meta = dict(table.schema.metadata)
    foreign = meta[METADATA_KEY].replace(b'"pool":"', b'"pool":"0')
    pq.write_table(table.replace_schema_metadata({**meta, METADATA_KEY: foreign}), victim)
    with pytest.raises(Exception, match="MinHash clusters computed over other input files.*delete it and run "
                                        "`dolmino tag`"):  # raised in an executor
        mix("foreign")
    victim.write_bytes(good_clusters)
    docs = sorted((attrs / "web").glob("docs-*/**/*.parquet"))[0]
    saved = docs.read_bytes()
    docs.write_bytes(saved[:300])
    with pytest.raises(Exception, match="not a readable attribute file.*delete it and run `dolmino tag`"):
        mix("truncated")
    docs.unlink()
    docs.symlink_to(tmp_path / "unmounted.parquet")  # a link that leads nowhere: a FileNotFoundError traceback
    with pytest.raises(Exception, match="not a readable attribute file \\(no such file.*delete it and run"):
        mix("dangling")
    docs.unlink()
    docs.write_bytes(saved)
    # A file left from another version of its input, under the current version's name.
    stale_meta = dict(pq.read_table(docs).schema.metadata)
    listing = json.loads(stale_meta[METADATA_KEY])
    listing["units"][0]["version"] = "an-earlier-mtime"
    stale_meta[METADATA_KEY] = json.dumps(listing).encode()
    pq.write_table(pq.read_table(docs).replace_schema_metadata(stale_meta), docs)
    with pytest.raises(Exception, match="was tagged from another version of web/"):
        mix("stale")
    docs.unlink()
    shutil.rmtree(tmp_path / "repaired", ignore_errors=True)
    build(every, 4_000, str(tmp_path / "repaired"), spark, attributes=str(attrs))
    assert _parts(tmp_path / "repaired") == want


def test_units_read_again_for_minhash_count_as_tagged(world, spark, tmp_path):
    """A new MinHash seed re-reads the pool for signatures (a new cluster set) while every
    documents and filter set is reused: the tag said "tagged 0 unit(s)" and the report "0 of N
    tagged by this build", and the MinHash stage's line "0/N units"."""
    root, _model = world

    def spec(seed: int) -> dict:
        return {"name": "reseeded", "version": 1, "seed": 3, "budget": 4_000, "data_root": str(root / "inputs"),
                "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 100.0,
                             "dedup": {"minhash": {"threshold": 0.8, "num_perm": 64, "seed": seed}}}]}

    attrs = str(tmp_path / "attributes")
    first = build(manifest_from_dict(spec(1)), 4_000, str(tmp_path / "o1"), spark, attributes=attrs, phase="tag")
    again = build(manifest_from_dict(spec(2)), 4_000, str(tmp_path / "o2"), spark, attributes=attrs, phase="tag")
    assert first["tagged_units"] == first["units"] == FILES
    assert again["tagged_units"] == FILES and again["files_written"] > 0
    assert again["signature_units"] == FILES and first["signature_units"] == 0  # said apart (found by a tester)
    stats = again["minhash"]["web"]  # documents in no cluster are clusters of one; the params used, banding too
    assert sum(stats["cluster_sizes"].values()) == stats["docs_in"] - stats["docs_in_clusters"] + \
        stats["duplicate_clusters"] and stats["cluster_sizes"]["1"] > 0
    from filters.minhash import MinHashConfig

    bands, rows = MinHashConfig(num_perm=64, threshold=0.8, seed=2).banding()
    assert (stats["params"]["num_perm"], stats["params"]["ngram"], stats["params"]["bands"],
            stats["params"]["rows"]) == (64, 5, bands, rows)
    stage = again["stages"]["minhash:web"]
    assert stage["units"] == FILES and stage["docs"] > 0
    # the tag stage's line counts the documents it read again: "0 docs/s" while it read them all (a tester)
    assert again["stages"]["tag"]["docs"] == first["stages"]["tag"]["docs"] > 0
    same = build(manifest_from_dict(spec(2)), 4_000, str(tmp_path / "o3"), spark, attributes=attrs, phase="tag")
    assert same["tagged_units"] == 0 and same["files_written"] == 0


def test_the_tokenizer_digest_keys_its_bytes_and_settings_not_its_path(tmp_path):
    """Found by a tester: the docs attribute set's key held tokenizer.path, so moving
    tokenizer.json (or naming a copy of the packaged one) re-tagged the whole pool. Without
    a path the key is the one earlier versions wrote: their attribute files stay current."""
    import dataclasses
    import hashlib

    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.build.mix import tokenizer_digest
    from dolmino.manifest import TokenizerSpec
    from dolmino.tokenizer import Dolma2Tokenizer

    copy = tmp_path / "moved" / "tokenizer.json"
    copy.parent.mkdir()
    copy.write_bytes(dolma2_tokenizer_path().read_bytes())
    packaged = TokenizerSpec()
    tokenizer = Dolma2Tokenizer.from_spec(packaged)
    before = hashlib.sha256(tokenizer.json_text.encode("utf-8"))
    before.update(repr(sorted(vars(packaged).items())).encode("utf-8"))
    assert tokenizer_digest(tokenizer, packaged) == before.hexdigest()
    moved = dataclasses.replace(packaged, path=str(copy))
    assert tokenizer_digest(Dolma2Tokenizer.from_spec(moved), moved) == before.hexdigest()
    other = dataclasses.replace(packaged, semantics="raw")
    assert tokenizer_digest(tokenizer, other) != before.hexdigest()


def test_the_plan_of_a_build_does_not_hold_where_its_tokenizer_lies():
    """Found by a reviewer: with tokenizer.path in the plan, a moved tokenizer.json dropped a killed
    build's committed parts on the rerun. Without a path the plan is what earlier versions wrote."""
    from dolmino.build.mix import _planned_manifest

    raw = {"name": "m", "output": "o", "data_root": "d", "tokenizer": {"name": "t", "path": "/a/tokenizer.json"}}
    assert _planned_manifest(raw) == {"name": "m", "tokenizer": {"name": "t"}}
    assert _planned_manifest({**raw, "tokenizer": {"name": "t", "path": "s3://b/tokenizer.json"}}) == \
        _planned_manifest(raw)
    assert _planned_manifest({"name": "m", "tokenizer": {"name": "t"}}) == {"name": "m", "tokenizer": {"name": "t"}}


def test_an_attribute_object_gone_from_s3_is_one_line_and_a_missing_bucket_stays_itself(s3_server):
    """A reviewer: reading an attribute file that a listing named turned every FileNotFoundError
    into "a link that leads nowhere; delete it", a missing bucket (an executor on another
    endpoint or region) included: the bucket's own error says what is wrong there."""
    import uuid

    from dolmino import s3
    from dolmino.build.attributes import read_table

    bucket = f"attrs-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    with pytest.raises(BuildError, match=r"a\.parquet: no such object \(deleted since it was listed\?\): run "):
        read_table(f"s3://{bucket}/web/docs-x/a.parquet")
    with pytest.raises(s3.NoSuchBucket):
        read_table("s3://no-such-bucket-here/web/docs-x/a.parquet")


# ---------------------------------------------------------------------------- keys of equivalent specs


def _keyed_manifest(index: str, web_filters: list, flan_filter: dict) -> dict:
    return {"name": "keys", "version": 2, "seed": 1, "budget": 4_000, "data_root": "/nowhere",
            "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 50, "filters": web_filters},
                        {"name": "flan", "paths": ["flan/*.jsonl.zst"], "mix_percent": 50,
                         "filters": [{"type": "decontaminate", "index_path": index, **flan_filter}]}]}


def test_attribute_keys_stay_as_manifests_spell_them_and_a_wrong_ngram_size_is_refused(tmp_path):
    """The keys hash the tag parameters as the manifest spells them. Keying a default written out
    as if left out (a tester: `dolmino mix` refused sets tagged without it) would rename the sets of
    every shipped manifest, which spell OLMo's values (max_n 13, min_repeats 32): every attribute
    root tagged with them re-scored. Pinned here; a wrong ngram_size is refused on the driver."""
    from filters.decontamination import build_index

    from dolmino.build.resources import Resource
    from dolmino.build.tag import tag_plans
    from dolmino.evalsets import EvalInstance

    index = str(tmp_path / "evals.npz")
    build_index([EvalInstance("boolq", "validation", "is the sky blue on a clear day at noon in summer")], index,
                ngram_size=8)
    resources = {p: Resource(p, p.rsplit("/", 1)[-1], False) for p in ("q1.bin", index)}

    def set_names(web_filters, flan_filter) -> list[list[str]]:
        plans = tag_plans(manifest_from_dict(_keyed_manifest(index, web_filters, flan_filter)), resources, "", [])
        return [[t.set_name for t in p.filters] for p in plans]

    omitted = set_names([{"type": "min_length", "min_chars": 200},
                         {"type": "fasttext_quality", "model_path": "q1.bin", "threshold": 0.2}],
                        {"threshold": 0.1})
    assert omitted == [["min_length-57f75c85310f", "fasttext_quality-0d3d0f97efe7"], ["decontaminate-6bc8984a7332"]]
    spelled = set_names([{"type": "min_length", "min_chars": 200, "min_tokens": 0},
                         {"type": "fasttext_quality", "model_path": "q1.bin", "label": "__label__hq",
                          "threshold": 0.2, "engine": "auto"}],
                        {"threshold": 0.1, "ngram_size": 8})
    assert spelled == [["min_length-c4659c130633", "fasttext_quality-2c9ba873944f"], ["decontaminate-acc96bf2436f"]]
    with pytest.raises(BuildError, match=r"filters\[0\]\.ngram_size: 5, but the index .* holds 8-grams"):
        set_names([], {"ngram_size": 5})


def test_a_minhash_default_written_out_keys_the_same_clusters():
    """`"minhash": {}` and the same defaults written out (`{"threshold": 0.8}`, demo.json's three, a threshold
    of 1 or 1.0) are one dedup, as `dolmino diff` reads them, and were two cluster sets (found by a tester):
    the second recomputed signatures over the whole pool and `dolmino mix` refused the first's. The
    MinHash set is keyed by value with the defaults filled in; demo.json's spelling keeps its name."""
    from dolmino.build.tag import tag_plans

    def set_name(minhash: dict) -> str:
        spec = {"name": "keys", "version": 2, "seed": 1124, "budget": 4_000, "data_root": "/nowhere",
                "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 100,
                             "dedup": {"minhash": minhash}}]}
        return tag_plans(manifest_from_dict(spec), {}, "", [])[0].minhash_set

    demo = set_name({"num_perm": 128, "ngram": 5, "threshold": 0.8})
    # the name roots tagged with demo.json hold since clustering revision 2 (filters.dedup.CLUSTER_REVISION;
    # minhash-bb7b498e6191 before it: its clusters are not reused)
    assert demo == "minhash-b44587e8698d"
    assert {set_name(m) for m in ({}, {"threshold": 0.8}, {"ngram": 5, "seed": 1124})} == {demo}
    assert set_name({"threshold": 1}) == set_name({"threshold": 1.0}) != demo
    assert len({demo, set_name({"threshold": 0.9}), set_name({"num_perm": 64}), set_name({"seed": 7})}) == 4


def test_a_mix_spelling_a_parameter_otherwise_names_it(world, spark, tmp_path):
    """`dolmino mix` of a manifest that only wrote out fasttext_quality's default label refused with
    "another filter model or parameter" (found by a tester): the parameter is named, from the spec
    stored with the set that holds the bundle."""
    root, model = world
    attrs = str(tmp_path / "attributes")
    omitted = _spec(root, model, THRESHOLD)
    del omitted["sources"][0]["filters"][0]["label"]
    build(manifest_from_dict(omitted), 4_000, str(tmp_path / "tag"), spark, attributes=attrs, phase="tag")
    spelled = _spec(root, model, THRESHOLD)
    with pytest.raises(BuildError, match=r"tagged with the filter written otherwise: label: left out there, "
                                         r"'__label__hq' here; the same values, but sets are keyed by the "
                                         r"parameters as the manifest spells them"):
        build(manifest_from_dict(spelled), 4_000, str(tmp_path / "mix"), spark, attributes=attrs, phase="mix")
    # a real change is named as one, with no advice to undo it (a reviewer)
    other = _spec(root, model, THRESHOLD)
    other["sources"][0]["filters"][0]["label"] = "__label__lq"
    with pytest.raises(BuildError, match=r"tagged with other filter parameters: label: left out there, '__label__lq' "
                                         r"here\): run `dolmino tag`"):
        build(manifest_from_dict(other), 4_000, str(tmp_path / "mix2"), spark, attributes=attrs, phase="mix")
    # one model at two thresholds: one set, named missing once, not once per filter (a tester)
    other["sources"][0]["filters"].append({**other["sources"][0]["filters"][0], "threshold": 0.9})
    with pytest.raises(BuildError) as refused:
        build(manifest_from_dict(other), 4_000, str(tmp_path / "mix3"), spark, attributes=attrs, phase="mix")
    assert str(refused.value).split("missing ", 1)[1].split(")", 1)[0].count("fasttext_quality-") == 1, refused.value


def test_a_missing_stack_exchange_documents_file_is_converted_again(spark, tmp_path):
    """The converted Posts.xml under the attributes root, deleted: `dolmino tag` said everything
    was reused and the build failed on a raw FileNotFoundError in an executor (found by a tester)."""
    from test_stackexchange import A_BODY, Q_BODY, answer, question, write_posts

    rows = [r for i in range(6) for r in (question(10 * i + 1, 5, f"Sorting question {i}", Q_BODY, accepted=10 * i + 2),
                                           answer(10 * i + 2, 10 * i + 1, 7, A_BODY))]
    write_posts(tmp_path / "inputs", rows)
    spec = {"name": "se", "version": 1, "seed": 3, "budget": 2_000, "data_root": str(tmp_path / "inputs"),
            "output_format": {"tokens_per_file": "2K"},
            "sources": [{"name": "se", "paths": ["**/Posts.xml"], "format": "stackexchange", "mix_percent": 100.0}]}
    attrs = tmp_path / "attributes"
    build(manifest_from_dict(spec), 2_000, str(tmp_path / "tag"), spark, attributes=str(attrs), phase="tag")
    [documents] = (attrs / "se" / "documents").rglob("*.jsonl.zst")
    documents.unlink()
    with pytest.raises(BuildError, match="Stack Exchange documents converted from .*Posts.xml .* are missing: run "
                                         "`dolmino tag`"):
        build(manifest_from_dict(spec), 2_000, str(tmp_path / "mix"), spark, attributes=str(attrs), phase="mix")
    again = build(manifest_from_dict(spec), 2_000, str(tmp_path / "tag"), spark, attributes=str(attrs), phase="tag")
    assert again["tagged_units"] == 1 and documents.exists()
    assert build(manifest_from_dict(spec), 2_000, str(tmp_path / "mix"), spark, attributes=str(attrs),
                 phase="mix")["sources"][0]["kept_docs"] == 6


def test_the_report_counts_each_attribute_sets_files_written_and_reused(world, spark, tmp_path, monkeypatch):
    """Only one filter's parameter changed: report.md said "24 of 24 input unit(s) tagged by this build"
    while that filter's scores were the only files written, the docs and MinHash sets reused (found by a
    tester). report.json's run section counts, per source and set, the files written and reused."""
    import json

    monkeypatch.setattr(attributes, "BUNDLE_TARGET_BYTES", 4_000)  # several bundles of a few files
    root, model = world

    def spec(label: str) -> dict:
        raw = _spec(root, model, THRESHOLD)
        raw["sources"][0]["filters"][0]["label"] = label
        raw["sources"][0]["dedup"] = {"minhash": {"threshold": 0.8, "num_perm": 64}}
        return raw

    attrs = tmp_path / "attributes"
    tag = build(manifest_from_dict(spec("__label__hq")), 4_000, str(tmp_path / "tag"), spark, attributes=str(attrs),
                phase="tag")
    bundles = tag["bundles"]
    tagged_sets = {p.name for p in (attrs / "web").iterdir()}
    out = tmp_path / "lq"
    build(manifest_from_dict(spec("__label__lq")), 4_000, str(out), spark, attributes=str(attrs))
    [new_set] = [p for p in (attrs / "web").iterdir() if p.name not in tagged_sets]
    assert new_set.name.startswith("fasttext_quality-")
    files = json.loads((out / "report.json").read_text())["run"]["attribute_files"]
    assert list(files) == ["web"]
    by_kind = {name.split("-")[0]: (c["written"], c["reused"]) for name, c in files["web"].items()}
    assert by_kind == {"docs": (0, bundles), "fasttext_quality": (bundles, 0), "minhash": (0, bundles)}
    assert files["web"][new_set.name]["bytes_written"] == sum(f.stat().st_size for f in new_set.rglob("*.parquet"))
    assert f"Attribute files: {bundles} written" in (out / "report.md").read_text()
    assert f"(web/{new_set.name}: {bundles}), {2 * bundles} reused" in (out / "report.md").read_text()

    fresh = tmp_path / "fresh"
    build(manifest_from_dict(spec("__label__lq")), 4_000, str(fresh), spark, attributes=str(tmp_path / "attrs-fresh"))
    files = json.loads((fresh / "report.json").read_text())["run"]["attribute_files"]["web"]
    assert sorted((c["written"], c["reused"]) for c in files.values()) == [(bundles, 0)] * 3
    assert all(c["bytes_written"] > 0 for c in files.values())


def test_filters_that_share_an_attribute_set_are_scored_once(tmp_path, monkeypatch):
    """Two filters whose tag parameters agree (one fastText model at two thresholds, a verdict filter
    written twice) share one attribute set: the tag task scored every document once per filter and
    wrote the same file twice (found by a tester)."""
    import filters.base
    from dolmino.build.attributes import AttributeStore
    from dolmino.build.tag import BundleWork, FilterTag, SourceTagPlan, TagContext, tag_bundle
    from dolmino.prefetch import ReadAhead

    path = tmp_path / "web" / "a.jsonl"
    path.parent.mkdir()
    write_documents(str(path), [{"id": str(i), "text": f"document {i}", "metadata": {"max_stars_count": i}}
                                for i in range(5)])
    unit = Unit(0, 0, InputFile("web", str(path), "web/a.jsonl", path.stat().st_size, "v1"))
    spec = {"type": "code_stars", "min_stars": 2}
    plan = SourceTagPlan("web", "dolma", None, "docs-1", (FilterTag("code_stars-1", 0, spec),
                                                          FilterTag("code_stars-1", 1, spec)), None, None, None)
    ctx = TagContext(AttributeStore(str(tmp_path / "attrs")), (plan,), {}, None, 0, 0)
    calls = []
    real = filters.base.tag_columns
    monkeypatch.setattr(filters.base, "tag_columns", lambda filt, docs: calls.append(len(docs)) or real(filt, docs))
    [record] = tag_bundle(BundleWork(Bundle(0, (unit,)), ("code_stars-1", "code_stars-1"), False, {}), ctx,
                          ReadAhead(()))
    assert calls == [5] and list(record.files) == [ctx.store.path("web", "code_stars-1", Bundle(0, (unit,)))]


# ---------------------------------------------------------------------------- a bundle's units, pickled as columns


def _same_units(loaded, units):
    assert type(loaded) is tuple and loaded == tuple(units)
    for a, b in zip(loaded, units, strict=True):
        assert type(a) is Unit and type(a.file) is InputFile
        assert list(vars(a).items()) == list(vars(b).items())
        assert list(vars(a.file).items()) == list(vars(b.file).items())


def test_units_pickle_as_columns_and_load_as_equal_units():
    """S3 and local paths under a root, a path outside it, one whose name is not its path's tail, a
    file's ranges (one InputFile), each load back equal, field for field, as a plain tuple."""
    s3 = [InputFile("web", f"s3://bkt/root/web/{i}.jsonl.gz", f"web/{i}.jsonl.gz", 10 + i, f"etag{i}")
          for i in range(3)]
    big = InputFile("big", "/data/big.jsonl", "big.jsonl", 600, "1700000000000000000")
    outside = InputFile("x", "/mnt/a.jsonl", "mnt/a.jsonl", 3, "1", "stackexchange")
    renamed = InputFile("x", "/elsewhere/a.jsonl", "renamed.jsonl", 3, "1")
    cases = [[Unit(i, 0, f) for i, f in enumerate(s3)] + [Unit(3, 1, big, 0, 300), Unit(4, 1, big, 300, 600)],
             [Unit(0, 2, outside), Unit(1, 2, renamed)], []]
    for units in cases:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            _same_units(pickle.loads(pickle.dumps(Units(units), protocol=protocol)), units)
    loaded = pickle.loads(pickle.dumps(Units(cases[0])))
    assert loaded[3].file is loaded[4].file


def test_planned_bundles_reach_a_task_equal():
    """plan_bundles' bundles, their versions computed as run_tag ships them, load in a task equal."""
    files = [InputFile("web", f"/data/web/{i:05d}.jsonl.zst", f"web/{i:05d}.jsonl.zst", 100 + i, str(i))
             for i in range(50)] + [InputFile("web", "/data/web/big.jsonl", "web/big.jsonl", 1000, "9")]
    bundles = plan_bundles(plan_units(Listing([files], []), split_bytes=400))
    assert any(len(b.units) > 1 for b in bundles) and any(u.is_range for b in bundles for u in b.units)
    for b in bundles:
        b.version
    loaded = _unpickled(pickle.dumps(bundles, protocol=pickle.HIGHEST_PROTOCOL))
    assert loaded == bundles
    for a, b in zip(loaded, bundles, strict=True):
        _same_units(a.units, b.units)
        assert a.unit_versions == b.unit_versions and a.version == b.version and a.key == b.key
    assert isinstance(Bundle(0, Units(bundles[0].units)).units, tuple)
