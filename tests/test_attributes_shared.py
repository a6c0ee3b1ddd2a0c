"""One attributes root shared by several builds at once: a team's "tag once, mix many" store.

Tags of one manifest started together must leave the files one tag leaves, byte for byte, and
a mix over them must equal a mix over a root tagged once. Local writes go through a temporary
file that no other writer can share: a pid names a process on one host only, and two nodes
writing one root over NFS (two attempts of one task under Spark's speculation) shared one.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from pathlib import Path

import pytest

from conftest import shared_corpus_file
from dolmino import storage
from dolmino.build import attributes
from dolmino.build.mix import build
from dolmino.documents import Quarantine, read_documents, write_documents
from dolmino.manifest import manifest_from_dict

FILES = 8


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """Eight small web files, two of them holding a near copy of a page of the first (MinHash has a cluster)."""
    root = tmp_path_factory.mktemp("shared-root")
    docs = list(itertools.islice((d for _, d in read_documents(str(shared_corpus_file("web.jsonl.zst")),
                                                                Quarantine())), FILES * 4))
    planted = max(docs[:4], key=lambda d: len(d["text"]))
    for i in range(FILES):
        part = docs[i * 4:(i + 1) * 4]
        if i in (3, 6):
            words = planted["text"].split(" ")
            words[len(words) // 2] = f"changed{i}"
            part = part + [{"id": f"near-{i}", "text": " ".join(words)}]
        write_documents(str(root / "inputs" / "web" / f"page-{i:03d}.jsonl.zst"), part)
    return root


def _manifest(root: Path):
    return manifest_from_dict({
        "name": "shared", "version": 1, "seed": 5, "budget": 4_000, "data_root": str(root / "inputs"),
        "output_format": {"tokens_per_file": "2K"},
        "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 100.0,
                     "filters": [{"type": "min_length", "min_chars": 200}],
                     "dedup": {"exact": True, "minhash": {"threshold": 0.8, "num_perm": 64}}}]})


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_tags_at_once_into_one_root_leave_what_one_tag_leaves(pool, spark, tmp_path, monkeypatch):
    monkeypatch.setattr(attributes, "BUNDLE_TARGET_BYTES", 4_000)  # several bundles, each written by both tags
    manifest = _manifest(pool)
    once, shared = tmp_path / "once", tmp_path / "shared"
    results, errors = {}, []

    def tag(name: str, root: Path) -> None:
        try:
            results[name] = build(manifest, 4_000, str(tmp_path / name), spark, attributes=str(root), phase="tag")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    # The root tagged once is tagged beside them (Spark runs the three builds' jobs side by side).
    threads = [threading.Thread(target=tag, args=args) for args in (("t0", shared), ("t1", shared), ("once", once))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [results[n]["tagged_units"] for n in ("t0", "t1")] == [FILES, FILES]  # both found nothing stored: both wrote
    # Byte for byte the files of one tag, so that every mix over them is the mix over a root tagged once
    # (a mix reads the attributes, the inputs and the manifest, nothing else).
    stored = _files(shared)
    assert stored == _files(once)  # every set, the clusters and _SOURCE.json, and no temporary file left
    assert sum("/minhash-" in name for name in stored) == results["t0"]["bundles"] + 1  # a file per bundle, _SOURCE

def test_a_local_write_never_shares_its_temporary_file_with_another_writer(tmp_path, monkeypatch):
    """Another node's writer of the same file, with the same pid (NFS, containers), is half-way
    through its temporary file when this one writes: each must publish its own whole file."""
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    path = tmp_path / "web" / "docs-x" / "page-000.jsonl.0123456789.parquet"
    path.parent.mkdir(parents=True)
    theirs = Path(f"{path}.tmp4242")  # what a writer of pid 4242 wrote into before
    with open(theirs, "wb") as other:
        other.write(b"B" * 1000)
        other.flush()
        storage.write_bytes(str(path), b"A" * 2000)
        other.write(b"B" * 1000)
    assert path.read_bytes() == b"A" * 2000  # not ours with theirs written into its middle
    os.replace(theirs, path)  # their rename finds their file (it failed: ours had taken it)
    assert path.read_bytes() == b"B" * 2000


def test_two_writers_of_one_part_or_documents_file_keep_their_own_temporaries(tmp_path, monkeypatch):
    """Parts written into a local --out and a Stack Exchange documents file in the root were named
    `.tmp<pid>` too: two attempts of one part on two nodes (same pid) wrote one temporary, and the
    second one's rename failed on a file the first had already published. Each now keeps its own."""
    import numpy as np

    from dolmino.documents import write_lines
    from dolmino.memmap import MemmapPartWriter, read_part

    monkeypatch.setattr(os, "getpid", lambda: 4242)
    first, second = (MemmapPartWriter(str(tmp_path / "out"), 0, 100257) for _ in range(2))
    first.add(np.array([1, 2, 3]), "a", "web", "web/a.jsonl:1")
    second.add(np.array([1, 2, 3]), "a", "web", "web/a.jsonl:1")
    first.close()
    second.close()
    tokens, rows = read_part(str(tmp_path / "out" / "part-00000.npy"))
    assert tokens.tolist() == [1, 2, 3, 100257] and [r[2] for r in rows] == ["a"]
    target = tmp_path / "root" / "web" / "documents" / "Posts.xml.0123.jsonl.zst"
    lines = iter(['{"id": "1"}', '{"id": "2"}'])

    def interleaved():
        yield next(lines)
        write_lines(str(target), ['{"id": "1"}', '{"id": "2"}'])  # the other attempt, start to end
        yield next(lines)

    assert write_lines(str(target), interleaved()) == 2
    assert not [p for p in target.parent.iterdir() if ".tmp" in p.name]


def test_temporary_names_are_what_the_listings_skip_and_a_failed_write_leaves_none(tmp_path, monkeypatch):
    from dolmino import release
    from dolmino.build import output

    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    store = attributes.AttributeStore(str(tmp_path / "attributes"))
    target = tmp_path / "attributes" / "web" / "docs-x" / "a.parquet"
    storage.write_bytes(str(target), b"x")
    storage.write_bytes(str(tmp_path / "out" / "_parts" / "part-00000.json"), b"{}")
    assert attributes._TMP_SUFFIX.search(seen[0]) and release._TMP_RE.search(seen[1])
    assert output._BUILD_FILE.fullmatch("_parts/" + seen[1])  # a stale one is removed from --out
    assert len(seen[0]) - len("a.parquet") <= len(".tmp") + 7  # as long as a pid at most: inputs.MAX_NAME_BYTES

    (target.parent / (seen[0] + "9")).write_bytes(b"half")  # another writer's, in progress
    assert store.existing("web", "docs-x") == {f"{store.root}/web/docs-x/a.parquet"}

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        storage.write_bytes(str(target), b"y")
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.parquet", seen[0] + "9"]  # none of its own left
    assert target.read_bytes() == b"x"


def test_an_attribute_file_deleted_since_the_listing_is_named_as_gone_not_as_a_dead_link(tmp_path):
    """A root pruned while a mix reads it: the message said "a link that leads nowhere?" and to delete
    the file, which was gone; a dead link keeps that message."""
    from dolmino.errors import BuildError

    gone = tmp_path / "web" / "docs-x" / "a.0123456789.parquet"
    with pytest.raises(BuildError, match=r"a\.0123456789\.parquet: no such file \(deleted since it was listed\?\): "
                                         r"run `dolmino tag` with this manifest again \(it tags what is missing\)$"):
        attributes.read_table(str(gone))
    gone.parent.mkdir(parents=True)
    gone.symlink_to(tmp_path / "unmounted.parquet")
    with pytest.raises(BuildError, match="not a readable attribute file \\(no such file: a link that leads nowhere"):
        attributes.read_table(str(gone))


def _refusals_world(tmp_path):
    """One file with one malformed line and three documents over 1,000 bytes; a manifest of the
    default max_doc_bytes and one of 1,000 (which also refuses the three as doc_too_large)."""
    import json

    lines = [json.dumps({"id": f"d{i}", "text": ("word " * (40 if i % 2 else 400)).strip()}) for i in range(6)]
    lines.insert(2, '{"id": "cut", "text": "no end')
    (tmp_path / "in" / "web").mkdir(parents=True)
    (tmp_path / "in" / "web" / "a.jsonl").write_text("\n".join(lines) + "\n")

    def manifest(**limit):
        return manifest_from_dict({"name": "q", "version": 1, "seed": 5, "budget": 200, "data_root": str(tmp_path / "in"),
                                   "sources": [{"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100.0,
                                                **limit}]})

    return manifest(), manifest(max_doc_bytes=1_000)


def _reasons(path: Path) -> list[str]:
    """The reasons of a quarantine file's records, sorted."""
    import gzip
    import json

    return sorted(json.loads(line)["reason"] for line in gzip.decompress(path.read_bytes()).splitlines())


def _copied_reasons(out: Path) -> list[str]:
    [copied] = out.joinpath("quarantine").rglob("*.jsonl.gz")
    return _reasons(copied)


def test_a_mix_copies_the_refused_lines_of_its_own_max_doc_bytes(spark, tmp_path):
    """Two manifests over one file, one with a lower max_doc_bytes, tag into one root: each mix's
    quarantine/ holds the lines its own reading refused. They shared one quarantine file per unit,
    which the later tag rewrote: the default's mix copied the other's `doc_too_large` lines of
    documents it had kept (its report counted one refused line, its quarantine file held four)."""
    attrs = str(tmp_path / "attributes")
    default, strict = _refusals_world(tmp_path)
    build(default, 200, str(tmp_path / "t-default"), spark, attributes=attrs, phase="tag")
    build(strict, 200, str(tmp_path / "t-strict"), spark, attributes=attrs, phase="tag")
    for spec, reasons in ((default, ["malformed_json"]), (strict, ["malformed_json"] + ["doc_too_large"] * 3)):
        out = tmp_path / f"mix-{spec.sources[0].max_doc_bytes}"
        report = build(spec, 200, str(out), spark, attributes=attrs, phase="mix")
        assert sum(report["sources"][0]["quarantined"].values()) == len(reasons)
        assert _copied_reasons(out) == sorted(reasons)


def test_a_root_tagged_before_quarantine_was_kept_per_docs_set_is_read_where_it_agrees(spark, tmp_path):
    """Roots tagged before kept one quarantine file per unit (<source>/quarantine/<unit>.<version>):
    a mix reads it where its refusals count by reason as the mix's docs set does, and stops with one
    line naming the source to tag again where they do not (another max_doc_bytes tagged it last)."""
    from dolmino.errors import BuildError

    attrs = tmp_path / "attributes"
    default, strict = _refusals_world(tmp_path)
    build(default, 200, str(tmp_path / "t-default"), spark, attributes=str(attrs), phase="tag")
    build(strict, 200, str(tmp_path / "t-strict"), spark, attributes=str(attrs), phase="tag")
    # as the earlier layout left it: the strict tag's file alone, at the unit's name
    quarantine = attrs / "web" / "quarantine"
    [strict_file] = [p for p in quarantine.rglob("*.jsonl.gz") if len(_reasons(p)) == 4]
    docs_set = strict_file.relative_to(quarantine).parts[0]
    legacy = quarantine / strict_file.relative_to(quarantine / docs_set)  # <unit key>.<version>.jsonl.gz
    legacy.parent.mkdir(parents=True, exist_ok=True)
    strict_file.rename(legacy)
    for left in [p for p in quarantine.glob("docs-*/**/*") if p.is_file()]:
        left.unlink()
    out = tmp_path / "mix-strict"
    build(strict, 200, str(out), spark, attributes=str(attrs), phase="mix")
    assert _copied_reasons(out) == ["doc_too_large"] * 3 + ["malformed_json"]
    with pytest.raises(BuildError, match=r"a.jsonl.\w+.jsonl.gz: the refused lines of input web/a.jsonl as another "
                                         r"manifest read them \({'doc_too_large': 3, 'malformed_json': 1}, where this "
                                         r"one's docs set counts {'malformed_json': 1}\): .* tag source 'web' into a "
                                         r"new --attributes root"):
        build(default, 200, str(tmp_path / "mix-default"), spark, attributes=str(attrs), phase="mix")
