"""`dolmino mix`'s refusal names the cause the attribute root shows (dolmino/build/untagged.py),
on stores written here directly: the cases a reviewer found it wrong in, each without Spark.
(tests/test_build_mix.py runs the common causes end to end.)"""

from __future__ import annotations

import pyarrow as pa
import pytest

from dolmino.build import untagged
from dolmino.build.attributes import AttributeStore, Bundle, unit_listing, write_table
from dolmino.build.inputs import InputFile, Unit
from dolmino.build.tag import BundleWork, FilterTag, SourceTagPlan

SCHEMA = pa.schema([("x", pa.int64())])
DOCS = "docs-111"


def _file(name: str, size: int = 100, version: str = "m1") -> InputFile:
    return InputFile("web", f"/data/web/{name}", f"web/{name}", size, version)


def _store(tmp_path, bundles, set_name: str = DOCS) -> AttributeStore:
    store = AttributeStore(str(tmp_path / "attrs"))
    for bundle in bundles:
        write_table(store.path("web", set_name, bundle), {"x": []}, SCHEMA,
                    {"units": unit_listing(bundle, [0] * len(bundle.units))})
    return store


def _describe(store, works, units, plan) -> str:
    listed = {(0, plan.docs_set): store.existing("web", plan.docs_set)}
    return untagged.describe({w.bundle.index: w for w in works}, units, [plan], store, listed)


def _plan(filters=(), minhash_set=None) -> SourceTagPlan:
    return SourceTagPlan("web", "dolma", None, DOCS, tuple(filters), minhash_set, {} if minhash_set else None,
                         "pool" if minhash_set else None)


@pytest.mark.parametrize("trial", range(6))
def test_a_new_filter_is_not_blamed_on_a_stale_version_of_the_bundle(tmp_path, trial):
    """b.jsonl rewritten and tagged again: both docs files stay (stale files are never read, nor
    deleted). A filter added then was reported as "b.jsonl changed", in about half the roots,
    by which version's hex sorted last."""
    def units(version):
        return [Unit(i, 0, _file(f"{n}.jsonl", version=version if n == "b" else "m1")) for i, n in enumerate("abc")]

    tagged = [Bundle(0, tuple(units(f"old-{trial}"))), Bundle(0, tuple(units(f"new-{trial}")))]
    store = _store(tmp_path, tagged)
    plan = _plan([FilterTag("code_stars-new", 0, {})])
    message = _describe(store, [BundleWork(tagged[1], ("code_stars-new",), False, {})], list(tagged[1].units), plan)
    assert message.endswith("missing code_stars-new); run `dolmino tag` with the same manifest first"), message


def test_a_new_filter_is_not_blamed_on_ranges_of_an_earlier_split_size(tmp_path):
    f = _file("big.jsonl", 300)

    def ranges(cuts):
        return [Unit(i, 0, f, a, b) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]

    store = _store(tmp_path, [Bundle(u.index, (u,)) for cuts in ([0, 100, 200, 300], [0, 150, 300])
                              for u in ranges(cuts)])
    units = ranges([0, 150, 300])
    works = [BundleWork(Bundle(u.index, (u,)), ("code_stars-new",), False, {}) for u in units]
    message = _describe(store, works, units, _plan([FilterTag("code_stars-new", 0, {})]))
    assert message.endswith("run `dolmino tag` with the same manifest first"), message


def test_an_added_file_is_named_however_many_bundles_wait_for_new_clusters(tmp_path):
    """One file added to a MinHash source makes every bundle due (clusters span the source):
    the metadata reads went to the unchanged bundles first, and the added file was not named."""
    names = [f"{i:02d}.jsonl" for i in range(12)]
    old = [Bundle(i, (Unit(i, 0, _file(n, 10 << 20)),)) for i, n in enumerate(names)]
    store = _store(tmp_path, old)
    units = [Unit(i, 0, _file(n, 10 << 20)) for i, n in enumerate(names + ["zz-added.jsonl"])]
    works = [BundleWork(Bundle(u.index, (u,)), () if u.index < 12 else (DOCS,), True, {}) for u in units]
    message = _describe(store, works, units, _plan(minhash_set="minhash-newpool"))
    # past every stored file's units: new, or in a bundle a tag has not written yet (below)
    assert "/data/web/zz-added.jsonl is in no attribute file: new since the tag, or a tag still running" in message, \
        message


def test_a_bundle_a_running_tag_has_not_written_is_not_called_new(tmp_path):
    """Found by a tester: `dolmino mix` while a tag of the same manifest was still writing said of
    an unchanged file "since the tag, page-296 is new". A file is new where a stored file's units
    span it (its bundle was made without it); past them it may be a bundle not written yet."""
    def units(names):
        return [Unit(i, 0, _file(f"{n}.jsonl")) for i, n in enumerate(names)]

    store = _store(tmp_path, [Bundle(0, tuple(units("ab")))])  # the tag wrote the first bundle only
    current = units("abcd")
    due = BundleWork(Bundle(2, tuple(current[2:])), (DOCS,), False, {})
    message = _describe(store, [due], current, _plan())
    assert message.endswith("/data/web/c.jsonl, /data/web/d.jsonl are in no attribute file: new since the tag, "
                            "or a tag still running or stopped before it got there: run `dolmino tag` (again, once a "
                            "running one has finished; it reuses what is done)"), message
    assert "is new" not in message and "are new" not in message
    store = _store(tmp_path / "spanned", [Bundle(0, tuple(units("ac")))])
    current = units("abc")
    message = _describe(store, [BundleWork(Bundle(0, tuple(current)), (DOCS,), False, {})], current, _plan())
    assert message.endswith("since the tag, /data/web/b.jsonl is new: run `dolmino tag` again (it reads again the "
                            "files grouped with these and reuses the rest)"), message
    # found by a reviewer: added before a stored bundle's units, which are due with it (regrouped)
    store = _store(tmp_path / "start", [Bundle(0, tuple(units("abc")))])
    current = units("0abc")
    message = _describe(store, [BundleWork(Bundle(0, tuple(current)), (DOCS,), False, {})], current, _plan())
    assert message.endswith("since the tag, /data/web/0.jsonl is new: run `dolmino tag` again (it reads again the "
                            "files grouped with these and reuses the rest)"), message
    # in unit order (names, then ranges), not key order: "web/a.jsonl@<range>" sorts after "web/a.jsonl.gz"
    # as text, so a.jsonl's ranges not written yet were "new", and a new b.jsonl between stored files was
    # looked for among a.jsonl's range files and "maybe not tagged" (found by reviewers)
    big = _file("a.jsonl", 300)
    ranges = [Unit(0, 0, big, 0, 150), Unit(1, 0, big, 150, 300)]
    current = [*ranges, Unit(2, 0, _file("a.jsonl.gz", 10)), Unit(3, 0, _file("c.jsonl", 10))]
    store = _store(tmp_path / "ranges", [Bundle(2, tuple(current[2:]))])  # the ranges' bundles not written yet
    message = _describe(store, [BundleWork(Bundle(0, (current[0],)), (DOCS,), False, {})], current, _plan())
    assert message.endswith("run `dolmino tag` with the same manifest first") and "new" not in message, message
    store = _store(tmp_path / "spanned-by-name", [*(Bundle(i, (u,)) for i, u in enumerate(ranges)),
                                                  Bundle(2, tuple(current[2:]))])
    current = [*ranges, Unit(2, 0, _file("a.jsonl.gz", 10)), Unit(3, 0, _file("b.jsonl", 9 << 20)),
               Unit(4, 0, _file("c.jsonl", 10))]
    message = _describe(store, [BundleWork(Bundle(3, (current[3],)), (DOCS,), False, {})], current, _plan())
    assert message.endswith("since the tag, /data/web/b.jsonl is new: run `dolmino tag` again (it reads again the "
                            "files grouped with these and reuses the rest)"), message


def test_a_split_file_that_grew_is_named_changed_not_cut_at_another_split_size(tmp_path):
    """A file's byte ranges are equal parts of its size: one that grew (or shrank) since the tag is
    cut elsewhere at the same --split-size, and was refused as "tagged in byte ranges at another
    --split-size" (found by a tester). The stored ranges' versions tell the two apart."""
    def ranges(f, cuts):
        return [Unit(i, 0, f, a, b) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]

    store = _store(tmp_path, [Bundle(u.index, (u,)) for u in ranges(_file("big.jsonl", 300), [0, 150, 300])])
    for now, cuts in ((_file("big.jsonl", 400, version="m2"), [0, 200, 400]),
                      (_file("big.jsonl", 300), [0, 100, 200, 300])):
        units = ranges(now, cuts)
        works = [BundleWork(Bundle(u.index, (u,)), (DOCS,), False, {}) for u in units]
        message = _describe(store, works, units, _plan())
        if now.size == 400:
            assert message.endswith("/data/web/big.jsonl changed since it was tagged (another size, ETag or mtime): "
                                    "run `dolmino tag` again for it"), message
        else:  # the same file, cut at another split size
            assert message.endswith("/data/web/big.jsonl was tagged in byte ranges at another --split-size (this run "
                                    "cuts it into byte ranges): give the --split-size it used, or run `dolmino tag` "
                                    "again with this one"), message
    # stored whole, alone or with other small files, and grown past the split size since
    small = _file("a.jsonl", 10)
    for name, tagged in (("alone", [Bundle(0, (Unit(0, 0, _file("big.jsonl", 300)),))]),
                         ("bundled", [Bundle(0, (Unit(0, 0, small), Unit(1, 0, _file("big.jsonl", 300))))])):
        grown = ranges(_file("big.jsonl", 400, version="m2"), [0, 200, 400])
        units = [Unit(0, 0, small), *(Unit(i + 1, 0, u.file, u.start, u.end) for i, u in enumerate(grown))]
        works = [BundleWork(Bundle(u.index, (u,)), (DOCS,), False, {}) for u in units]
        message = _describe(_store(tmp_path / name, tagged), works, units, _plan())
        assert message.endswith("/data/web/big.jsonl changed since it was tagged (another size, ETag or mtime): "
                                "run `dolmino tag` again for it"), message


def test_files_changed_since_the_tag_are_named_in_the_plural():
    """"X, Y, Z and 583 more changed since it was tagged ...: run `dolmino tag` again for it" (a tester)."""
    from dolmino.build.untagged import _changed_message

    assert _changed_message(["s3://b/a.jsonl"]).endswith("changed since it was tagged (another size, ETag or mtime): "
                                                         "run `dolmino tag` again for it")
    assert _changed_message(["s3://b/a.jsonl", "s3://b/c.jsonl"]).endswith(
        "changed since they were tagged (another size, ETag or mtime): run `dolmino tag` again for them")


def test_a_file_stored_whole_inside_a_bundle_and_cut_now_names_the_split_size(tmp_path):
    a, b = _file("a.jsonl", 1000), _file("b.jsonl", 5000)
    store = _store(tmp_path, [Bundle(0, (Unit(0, 0, a), Unit(1, 0, b)))])
    units = [Unit(0, 0, a), Unit(1, 0, b, 0, 2500), Unit(2, 0, b, 2500, 5000)]
    works = [BundleWork(Bundle(i, (u,)), (DOCS,), False, {}) for i, u in enumerate(units)]
    message = _describe(store, works, units, _plan())
    assert message.endswith("/data/web/b.jsonl was tagged whole at another --split-size (this run cuts it into "
                            "byte ranges): give the --split-size it used, or run `dolmino tag` again with this one")


def test_files_added_removed_and_changed_are_named_from_the_stored_unit_list(tmp_path):
    tagged = Bundle(0, tuple(Unit(i, 0, _file(f"{n}.jsonl")) for i, n in enumerate("abcd")))
    store = _store(tmp_path, [tagged])
    units = [Unit(0, 0, _file("a.jsonl")), Unit(1, 0, _file("b.jsonl", version="m2")), Unit(2, 0, _file("c.jsonl")),
             Unit(3, 0, _file("e.jsonl"))]
    message = _describe(store, [BundleWork(Bundle(0, tuple(units)), (DOCS,), False, {})], units, _plan())
    assert message.endswith("since the tag, /data/web/b.jsonl changed (another size, ETag or mtime); /data/web/e.jsonl "
                            "is new; web/d.jsonl, tagged in the same attribute files, is not among this manifest's "
                            "inputs (removed since, or tagged for a manifest listing more files: attribute files serve "
                            "the files they were tagged together with): run `dolmino tag` again (it reads again the "
                            "files grouped with these and reuses the rest)")


@pytest.mark.parametrize("trial", range(6))
def test_a_file_tagged_again_is_not_named_changed_beside_its_stale_bundle_file(tmp_path, trial):
    """b.jsonl touched and tagged again leaves the bundle's older docs file beside the current one;
    a file added then was refused as "b.jsonl changed" in about half the roots, by which file the
    listing put last among those of one first key (found by a tester)."""
    def units(names, version):
        return [Unit(i, 0, _file(f"{n}.jsonl", version=version if n == "b" else "m1")) for i, n in enumerate(names)]

    store = _store(tmp_path, [Bundle(0, tuple(units("abc", f"old-{trial}"))),
                              Bundle(0, tuple(units("abc", f"new-{trial}")))])
    current = units("abcd", f"new-{trial}")
    message = _describe(store, [BundleWork(Bundle(0, tuple(current)), (DOCS,), False, {})], current, _plan())
    assert message.endswith("since the tag, /data/web/d.jsonl is new: run `dolmino tag` again (it reads again the "
                            "files grouped with these and reuses the rest)"), message


def test_an_unreadable_root_leaves_the_refusal_without_a_cause(tmp_path, monkeypatch):
    """A check that fails (an S3 listing refused half-way) must not turn the refusal into a traceback."""
    unit = Unit(0, 0, _file("a.jsonl"))
    store = _store(tmp_path, [Bundle(0, (unit,))], set_name="docs-old")

    def refused(self, source):
        raise PermissionError("AccessDenied")

    monkeypatch.setattr(AttributeStore, "set_names", refused)
    message = _describe(store, [BundleWork(Bundle(0, (unit,)), (DOCS,), False, {})], [unit], _plan())
    assert message.endswith("missing docs-111); run `dolmino tag` with the same manifest first"), message


def test_the_stack_exchange_documents_file_gone_is_the_one_named(tmp_path):
    """Small Posts.xml files of one source share a bundle: the message named the bundle's first file
    whichever one's converted documents were gone (a reviewer)."""
    from dolmino.storage import write_bytes

    files = [InputFile("web", f"/data/web/{site}/Posts.xml", f"web/{site}/Posts.xml", 100, "m1", "stackexchange")
             for site in ("a.stackexchange.com", "b.stackexchange.com")]
    bundle = Bundle(0, tuple(Unit(i, 0, f) for i, f in enumerate(files)))
    store = _store(tmp_path, [bundle])
    write_bytes(store.documents_path("web", bundle.units[0]), b"")  # a's documents kept, b's gone
    plan = SourceTagPlan("web", "stackexchange", None, DOCS, (), None, None, None)
    message = untagged._documents_gone([BundleWork(bundle, (DOCS,), False, {})], [plan], store,
                                       {(0, DOCS): store.existing("web", DOCS)})
    assert message.startswith("the Stack Exchange documents converted from web/b.stackexchange.com/Posts.xml "), \
        message


def test_stack_exchange_documents_of_a_root_from_before_their_revision_directory_are_named(tmp_path):
    """A root tagged by the dolmino before documents/r<n>/ holds the same docs set (its key has the same
    conversion revision) and the documents at documents/<unit>: `dolmino mix` said they "are missing",
    which the user could see were not. It says they are an earlier dolmino's, not read by this one."""
    from dolmino.build.attributes import DOCUMENTS_DIR
    from dolmino.storage import join, write_bytes

    file = InputFile("web", "/data/web/a.stackexchange.com/Posts.xml", "web/a.stackexchange.com/Posts.xml", 100,
                     "m1", "stackexchange")
    bundle = Bundle(0, (Unit(0, 0, file),))
    store = _store(tmp_path, [bundle])
    plan = SourceTagPlan("web", "stackexchange", None, DOCS, (), None, None, None)
    args = [BundleWork(bundle, (DOCS,), False, {})], [plan], store, {(0, DOCS): store.existing("web", DOCS)}
    assert "earlier dolmino" not in untagged._documents_gone(*args)  # truly gone: no other copy to name
    earlier = store.documents_path("web", bundle.units[0]).replace(f"/{DOCUMENTS_DIR}/", "/documents/")
    write_bytes(earlier, b"")  # where the dolmino before documents/r<n>/ wrote them
    message = untagged._documents_gone(*args)
    assert message.startswith(f"the Stack Exchange documents converted from {file.name} (under "
                              f"{join(store.root, 'web', DOCUMENTS_DIR)}) are not there: {earlier} is an earlier "
                              "dolmino's conversion"), message
    assert message.endswith("run `dolmino tag` with this manifest (it converts them again)"), message


@pytest.mark.parametrize("stored_keyed", [True, False])
def test_a_model_replaced_in_place_is_named_where_the_set_stored_its_keyed_spec(tmp_path, stored_keyed):
    """A model file replaced under the same path keys a new set (its SHA-256 is in the key): the
    refusal said "another filter model or parameter", as the set stored the manifest's spec, not
    the digest (a reviewer). Sets that store their keyed spec say which file changed; older ones
    keep the general wording."""
    unit = Unit(0, 0, _file("a.jsonl"))
    bundle = Bundle(0, (unit,))
    store = _store(tmp_path, [bundle])
    spec = {"type": "fasttext_quality", "model_path": "s3://models/q.bin", "threshold": 0.5}
    keyed = {"type": "fasttext_quality", "model_path": "sha256:" + "a" * 64, "rows": "r", "revision": 2}
    meta = {"units": unit_listing(bundle, [0]), "set": "fasttext_quality-old", "spec": spec,
            **({"keyed": keyed} if stored_keyed else {})}
    write_table(store.path("web", "fasttext_quality-old", bundle), {"x": []}, SCHEMA, meta)
    now = FilterTag("fasttext_quality-new", 0, spec, {**keyed, "model_path": "sha256:" + "b" * 64})
    message = _describe(store, [BundleWork(bundle, ("fasttext_quality-new",), False, {})], [unit], _plan([now]))
    cause = ("the model at s3://models/q.bin changed since it was tagged" if stored_keyed else
             "another max_doc_bytes or tokenizer, another filter model or parameter, or a dolmino whose rules for "
             "them changed since")
    assert message.endswith(f"web/a.jsonl's fasttext_quality attributes were tagged under other settings or rules "
                            f"(fasttext_quality-old holds them: {cause}): run `dolmino tag` with this manifest: it "
                            "tags what changed and reuses the rest"), message


def test_the_minhash_setting_that_differs_from_the_stored_clusters_is_named(tmp_path):
    """A mix of another `seed` than its tag, over a MinHash source, was told "another seed or MinHash
    parameter, or other input files of the source" (a tester: the MinHash seed left out is the
    manifest's, so changing the sampling seed changed it too). `_SOURCE.json` says which."""
    import json

    from dolmino.storage import write_bytes

    unit = Unit(0, 0, _file("a.jsonl"))
    bundle = Bundle(0, (unit,))
    store = _store(tmp_path, [bundle])
    write_table(store.path("web", "minhash-old", bundle), {"x": []}, SCHEMA, {"units": unit_listing(bundle, [0])})
    params = {"num_perm": 64, "ngram": 5, "threshold": 0.5, "seed": 1, "bands": 14, "rows": 4, "verify": True}
    write_bytes(f"{store.set_dir('web', 'minhash-old')}/_SOURCE.json",
                json.dumps({"units": "pool", "stats": {"params": params}}).encode())

    def refusal(minhash: dict, pool: str = "pool") -> str:
        plan = SourceTagPlan("web", "dolma", None, DOCS, (), "minhash-new", minhash, pool)
        return _describe(store, [BundleWork(bundle, (), True, {})], [unit], plan)

    message = refusal({"num_perm": 64, "ngram": 5, "threshold": 0.5, "seed": 2})
    assert message.endswith("web/a.jsonl's MinHash clusters were computed under other settings (minhash-old holds "
                            "them: seed: 1 there, 2 here (a MinHash seed left out is the manifest's: give \"dedup\": "
                            "{\"minhash\": {\"seed\": 1}} to mix with another seed from these clusters)): run "
                            "`dolmino tag` with this manifest"), message
    message = refusal({"num_perm": 64, "seed": 1}, pool="other")  # threshold left out: the default, 0.8
    assert "(minhash-old holds them: threshold: 0.5 there, 0.8 here; other input files of the source, since " \
           "clusters span all of them)" in message, message


@pytest.mark.parametrize("stored_revision", [None, 1])
def test_clusters_of_an_earlier_clustering_revision_are_named_as_such(tmp_path, stored_revision):
    """A root tagged by a dolmino before CLUSTER_REVISION 2, mixed by this one with the same manifest, was
    told its clusters were computed under "another seed or MinHash parameter, or other input files of the
    source": none had changed (a tester upgrading dolmino under a long-lived root). `_SOURCE.json` written
    since records the revision; one without it predates this dolmino's rules."""
    import json

    from dolmino.storage import write_bytes
    from filters.dedup import CLUSTER_REVISION

    unit = Unit(0, 0, _file("a.jsonl"))
    bundle = Bundle(0, (unit,))
    store = _store(tmp_path, [bundle])
    write_table(store.path("web", "minhash-old", bundle), {"x": []}, SCHEMA, {"units": unit_listing(bundle, [0])})
    params = {"num_perm": 128, "ngram": 5, "threshold": 0.8, "seed": 1, "bands": 9, "rows": 13, "verify": True}
    done = {"units": "pool", "stats": {"params": params}}
    if stored_revision is not None:
        done["clusters"] = stored_revision
    write_bytes(f"{store.set_dir('web', 'minhash-old')}/_SOURCE.json", json.dumps(done).encode())
    plan = SourceTagPlan("web", "dolma", None, DOCS, (), "minhash-new", {"seed": 1}, "pool")
    message = _describe(store, [BundleWork(bundle, (), True, {})], [unit], plan)
    cause = (f"clustering rules of revision 1 there, {CLUSTER_REVISION} here" if stored_revision else
             f"an earlier dolmino's clustering rules (this one's are revision {CLUSTER_REVISION}; the same parameters "
             "and input files)")
    assert message.endswith(f"web/a.jsonl's MinHash clusters were computed under other settings (minhash-old holds "
                            f"them: {cause}): run `dolmino tag` with this manifest"), message
    assert "another seed" not in message, message


def test_an_edited_scorer_given_with_py_files_is_named_where_the_user_keeps_it(tmp_path, monkeypatch):
    """`dolmino mix --py-files scorer.py` after an edit of scorer.py named the driver's copy of it,
    /tmp/dolmino-py-files-*/scorer.py, a directory removed when the command ended (a tester)."""
    import sys

    from dolmino.py_files import import_py_files

    given = tmp_path / "code" / "probe_edited_scorer.py"
    given.parent.mkdir()
    given.write_text("class S:\n    def score(self, texts):\n        return [1.0] * len(texts)\n\n\n"
                     "def make():\n    return S()\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "probe_edited_scorer", raising=False)
    import_py_files([str(given)])
    unit = Unit(0, 0, _file("a.jsonl"))
    bundle = Bundle(0, (unit,))
    store = _store(tmp_path, [bundle])
    spec = {"type": "score_threshold", "scorer": "probe_edited_scorer:make", "min_score": 1}
    keyed = {"type": "score_threshold", "scorer": "probe_edited_scorer:make", "scorer_source": "a" * 64}
    write_table(store.path("web", "score_threshold-old", bundle), {"x": []}, SCHEMA,
                {"units": unit_listing(bundle, [0]), "set": "score_threshold-old", "spec": spec, "keyed": keyed})
    now = FilterTag("score_threshold-new", 0, spec, {**keyed, "scorer_source": "b" * 64})
    message = _describe(store, [BundleWork(bundle, ("score_threshold-new",), False, {})], [unit], _plan([now]))
    sys.modules.pop("probe_edited_scorer", None)
    assert f"the code of scorer 'probe_edited_scorer:make' changed since it was tagged ({given})" in message, message


def test_the_tag_counts_its_bundles_by_reason_from_the_stored_names(tmp_path):
    """`dolmino tag` says per set why it tags each bundle (untagged.retag_reasons), from the names the
    docs set's listing holds: the same files with one changed, files added before the first, a file cut
    at another --split-size, documents stored only under another docs set (another max_doc_bytes)."""
    def units(names, version="m1"):
        return [Unit(i, 0, _file(f"{n}.jsonl", version=version if n == "b" else "m1")) for i, n in enumerate(names)]

    def reasons(store, works, current, plan=None):
        plan = plan or _plan()
        listed = {(0, plan.docs_set): store.existing("web", plan.docs_set)}
        found = untagged.retag_reasons({w.bundle.index: w for w in works}, current, [plan], store, listed)
        return {code: why["bundles"] for code, why in found["web"][plan.docs_set].items()}

    store = _store(tmp_path, [Bundle(0, tuple(units("abc")))])
    changed = Bundle(0, tuple(units("abc", version="m2")))
    added = Bundle(0, tuple(units("0abc")))
    assert reasons(store, [BundleWork(changed, (DOCS,), False, {})], list(changed.units)) == {"input_changed": 1}
    assert reasons(store, [BundleWork(added, (DOCS,), False, {})], list(added.units)) == {"files_added_or_removed": 1}
    big = _file("big.jsonl", 300)
    store = _store(tmp_path / "split", [Bundle(0, (Unit(0, 0, big),))])
    ranges = [Unit(0, 0, big, 0, 150), Unit(1, 0, big, 150, 300)]
    assert reasons(store, [BundleWork(Bundle(u.index, (u,)), (DOCS,), False, {}) for u in ranges], ranges) == {
        "split_size": 2}
    plan = SourceTagPlan("web", "dolma", 1000, "docs-222", (), None, None, None)
    assert reasons(_store(tmp_path / "docs", [Bundle(0, tuple(units("abc")))]),
                   [BundleWork(Bundle(0, tuple(units("abc"))), ("docs-222",), False, {})], units("abc"), plan) == {
        "settings_changed": 1}


def test_the_tag_names_stack_exchange_documents_of_a_root_from_before_their_revision_directory(tmp_path):
    """`dolmino tag` after an upgrade converts Stack Exchange documents again that an earlier dolmino kept
    directly under documents/: its `why:` line said they "are missing", which the user could see were not
    (the refusal `dolmino mix` gives says whose they are; untagged._documents_gone). It says so too."""
    from dolmino.build.attributes import DOCUMENTS_DIR
    from dolmino.storage import join, write_bytes

    file = InputFile("web", "/data/web/a.stackexchange.com/Posts.xml", "web/a.stackexchange.com/Posts.xml", 100,
                     "m1", "stackexchange")
    bundle = Bundle(0, (Unit(0, 0, file),))
    store = _store(tmp_path, [bundle])
    plan = SourceTagPlan("web", "stackexchange", None, DOCS, (), None, None, None)

    def reasons() -> dict:
        listed = {(0, DOCS): store.existing("web", DOCS)}
        found = untagged.retag_reasons({0: BundleWork(bundle, (DOCS,), False, {})}, list(bundle.units), [plan],
                                       store, listed)
        return found["web"][DOCS]

    assert reasons() == {"documents_missing": {"bundles": 1, "detail": untagged.RETAG_REASONS["documents_missing"],
                                               "first": bundle.key}}  # truly gone
    write_bytes(store.documents_path("web", bundle.units[0]).replace(f"/{DOCUMENTS_DIR}/", "/documents/"), b"")
    assert reasons() == {"documents_missing": {
        "bundles": 1, "first": bundle.key,
        "detail": f"its converted Stack Exchange documents are not under {join(store.root, 'web', DOCUMENTS_DIR)}: "
                  f"those under {join(store.root, 'web', 'documents')} are an earlier dolmino's conversion, which "
                  "this one does not read (it keeps each conversion revision's apart)"}}


def test_reasons_that_cannot_be_read_are_said_and_the_tag_goes_on(monkeypatch, capsys):
    """An OS or S3 error while explaining a re-tag dropped every `why:` line without a word (a reviewer)."""
    from dolmino.build import tag

    def unreadable(*args):
        raise OSError("s3://bucket/attributes/web/minhash-1/_SOURCE.json: throttled")

    monkeypatch.setattr(tag.untagged, "retag_reasons", unreadable)
    assert tag._retag_reasons({0: object()}, [], (), None, {}) == {}
    assert capsys.readouterr().err == (
        "warning: why attribute files are due was not read (OSError: s3://bucket/attributes/web/minhash-1/"
        "_SOURCE.json: throttled); the tag goes on\n")
    assert tag._retag_reasons({}, [], (), None, {}) == {} and capsys.readouterr().err == ""


def _se_bundle() -> Bundle:
    file = InputFile("web", "/data/web/a.stackexchange.com/Posts.xml", "web/a.stackexchange.com/Posts.xml", 100,
                     "m1", "stackexchange")
    return Bundle(0, (Unit(0, 0, file),))


@pytest.mark.parametrize("held", ["earlier revision", "flat layout", "this revision too"])
def test_stack_exchange_documents_of_another_conversion_revision_are_named_by_the_mix_and_the_tag(tmp_path, held):
    """A root converted at an earlier CONVERSION_REVISION holds its docs set under another key: `dolmino
    mix` said "another max_doc_bytes or tokenizer, another filter model or parameter, or a dolmino whose
    rules for them changed since" where `dolmino tag` named a Stack Exchange conversion revision (a
    tester). Both say which revision the root holds (documents/r<n>/) and this dolmino's; where this
    revision's documents are there too, the docs sets differ in something else: the general wording."""
    from filters.stackexchange import CONVERSION_REVISION

    from dolmino.storage import join, write_bytes

    bundle = _se_bundle()
    store = _store(tmp_path, [bundle], set_name="docs-old")
    plan = SourceTagPlan("web", "stackexchange", None, DOCS, (), None, None, None)
    directory = {"earlier revision": f"documents/r{CONVERSION_REVISION - 1}", "flat layout": "documents",
                 "this revision too": f"documents/r{CONVERSION_REVISION - 1}"}[held]
    write_bytes(store.unit_path("web", directory, bundle.units[0], ".jsonl.zst"), b"")
    if held == "this revision too":
        write_bytes(store.documents_path("web", bundle.units[0]), b"")
    works = [BundleWork(bundle, (DOCS,), False, {})]
    message = _describe(store, works, list(bundle.units), plan)
    listed = {(0, DOCS): store.existing("web", DOCS)}
    detail = untagged.retag_reasons({0: works[0]}, list(bundle.units), [plan], store, listed)["web"][DOCS]
    where = join(store.root, "web", directory)
    cause = {"earlier revision": f"Stack Exchange conversion revision {CONVERSION_REVISION - 1} there ({where}), "
                                 f"revision {CONVERSION_REVISION} here",
             "flat layout": f"an earlier dolmino's Stack Exchange conversion there ({where}, from before each "
                            f"revision had a directory), revision {CONVERSION_REVISION} here",
             "this revision too": "another max_doc_bytes or tokenizer, another filter model or parameter, or a "
                                  "dolmino whose rules for them changed since"}[held]
    assert message.endswith(f"{bundle.units[0].key}'s documents were tagged under other settings or rules (docs-old "
                            f"holds them: {cause}): run `dolmino tag` with this manifest: it tags what changed and "
                            "reuses the rest"), message
    said = detail["settings_changed"]["detail"]
    assert said == ("documents tagged under other settings or rules (docs-old holds earlier ones: " + (
        cause if held != "this revision too" else "another max_doc_bytes or tokenizer, a Stack Exchange conversion "
                                                  "revision, or a newer dolmino's rules") + ")"), said


@pytest.mark.parametrize("stored_revision", [2, None])
def test_a_filter_whose_tag_revision_changed_is_named_with_its_revisions(tmp_path, stored_revision):
    """A filter's `tag_revision` bumped (its scoring rules changed) keys a new set: the refusal and the
    tag's `why:` said "another filter model or parameter, or a dolmino whose rules for them changed
    since", not which filter (a tester). The keyed spec stored with the set records its revision."""
    unit = Unit(0, 0, _file("a.jsonl"))
    bundle = Bundle(0, (unit,))
    store = _store(tmp_path, [bundle])
    spec = {"type": "fasttext_quality", "model_path": "s3://models/q.bin", "threshold": 0.5}
    keyed = {"type": "fasttext_quality", "model_path": "sha256:" + "a" * 64, "rows": "r"}
    stored = {**keyed, **({"revision": stored_revision} if stored_revision is not None else {})}
    write_table(store.path("web", "fasttext_quality-old", bundle), {"x": []}, SCHEMA,
                {"units": unit_listing(bundle, [0]), "set": "fasttext_quality-old", "spec": spec, "keyed": stored})
    now = FilterTag("fasttext_quality-new", 0, spec, {**keyed, "revision": 3})
    plan = _plan([now])
    works = [BundleWork(bundle, ("fasttext_quality-new",), False, {})]
    message = _describe(store, works, [unit], plan)
    was = "revision 2" if stored_revision is not None else "rules without a revision number"
    cause = f"the rules of filter 'fasttext_quality' changed since it was tagged ({was} there, revision 3 here)"
    assert f"(fasttext_quality-old holds them: {cause}): run `dolmino tag`" in message, message
    listed = {(0, DOCS): store.existing("web", DOCS)}
    found = untagged.retag_reasons({0: works[0]}, [unit], [plan], store, listed)["web"]["fasttext_quality-new"]
    assert found["settings_changed"]["detail"] == f"fasttext_quality-old holds them: {cause}", found


def test_the_tag_says_files_added_or_removed_where_the_bundle_kept_its_first_file_and_count(tmp_path):
    """b.jsonl removed and d.jsonl added inside one bundle: its name ("a.jsonl+2") is the one stored, and
    `dolmino tag` said "an input file changed" of files none of which had (a tester). The stored file's
    unit list tells; where it lists the same files, one of them changed."""
    def units(names, version="m1"):
        return [Unit(i, 0, _file(f"{n}.jsonl", version=version if n == "c" else "m1")) for i, n in enumerate(names)]

    store = _store(tmp_path, [Bundle(0, tuple(units("abc")))])

    def reasons(current):
        bundle = Bundle(0, tuple(current))
        listed = {(0, DOCS): store.existing("web", DOCS)}
        found = untagged.retag_reasons({0: BundleWork(bundle, (DOCS,), False, {})}, current, [_plan()], store, listed)
        return {code: why["detail"] for code, why in found["web"][DOCS].items()}

    assert reasons(units("adc")) == {"files_added_or_removed": untagged.RETAG_REASONS["files_added_or_removed"]}
    assert reasons(units("abc", version="m2")) == {"input_changed": untagged.RETAG_REASONS["input_changed"]}
