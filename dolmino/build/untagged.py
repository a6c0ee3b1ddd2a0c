"""Why `dolmino mix` cannot go on: which units lack current attributes, and what the attribute
root shows about the cause.

Each reason is read from what is stored, never guessed: a tester was told that an input had
changed its size or mtime when one file had been added and another removed, to give the
--split-size the tag used for a file no split size had ever cut (its source had been renamed),
and that a filter was "tagged under other settings" when it was a new filter next to an
unchanged one. The checks, in order:

1. nothing is stored for the source at all (a renamed source, or a root never tagged);
2. a unit's file is stored cut at another --split-size (whole where it is a range now, or
   other ranges), or, where the stored units' versions are not of the file as it is now, cut
   elsewhere because it changed size since the tag;
3. the stored files of the unit's bundle list other files or versions: files added, removed,
   or changed (size, ETag or mtime) since the tag;
4. a missing set has a sibling of its kind that the manifest no longer uses and that holds
   the bundle: tagged under other settings or rules (max_doc_bytes, the tokenizer, a filter's
   model or parameters, MinHash settings, a newer dolmino's rules);
5. otherwise: not tagged with this manifest yet.
"""

from __future__ import annotations

import bisect
import functools
import re
from typing import NamedTuple

from dolmino.build.attributes import DOCUMENTS_DIR, EARLIER_DOCUMENTS_DIR, AttributeStore, read_table, unit_version
from dolmino.build.inputs import InputFile, Unit, splittable
from dolmino.errors import BuildError
from dolmino.storage import list_dirs
from filters.stackexchange import CONVERSION_REVISION

# A stored attribute file: "<bundle key>.<version>.parquet"; a bundle key is its first unit's key,
# plus "+<n>" for the n units after it.
_STORED = re.compile(r"(?P<key>.+)\.(?P<version>[0-9a-f]{10})\.parquet")
_MORE_UNITS = re.compile(r"\+\d+$")
_RANGE = re.compile(r"@(\d{13})-(\d{13})$")  # a byte range's key: "<input name>@<start>-<end>" (inputs.Unit.key)
_METADATA_READS = 8  # stored files whose unit lists are read to say what changed, at most
_NAMED = 3


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMED])
    return shown + (f" and {len(names) - _NAMED} more" if len(names) > _NAMED else "")


class _Source(NamedTuple):
    """One source's stored docs files and this run's units, read once per source: every due
    bundle of a source asked again, and the split check compared each unit with every stored
    key (20,000 plain files all due: 4e8 comparisons before the refusal was printed)."""

    stored: list[tuple[str, str]]  # (first unit key, path) of the stored docs files, in unit order
    firsts: list[tuple[str, str]]  # their first keys in unit order (`_unit_order`), for bisect
    by_file: dict[str, set[str]]  # input name -> the stored first keys of that file (whole, or its ranges)
    current: set[str]  # the unit keys this run lists
    ranged: dict[str, InputFile]  # input name -> file, for the files this run cuts into ranges
    alone: dict[str, set[str]]  # unit key -> versions of the stored files that hold that unit alone
    bundles: dict[str, set[int]]  # first unit key -> units, of the stored docs files (`retag_reasons`)
    paths: dict[str, list[str]]  # bundle key -> the stored docs files of that name (its versions), sorted


def _unit_order(key: str) -> tuple[str, str]:
    """A unit key's place in unit order: by input name, then by key (a file's byte ranges)."""
    return _RANGE.sub("", key), key


def _source(si: int, units: list[Unit], plans, store: AttributeStore, listed) -> _Source:
    plan = plans[si]
    # A key holds the input's directories: web/a.jsonl.zst is <set dir>/web/a.jsonl.zst.<version>.parquet.
    prefix = store.set_dir(plan.name, plan.docs_set).rstrip("/") + "/"
    # in unit order, file name first: a byte range's key ("a.jsonl@...") sorts after "a.jsonl.gz" as
    # text, and the file holding "b.jsonl" was looked for among a.jsonl's ranges (found by a reviewer)
    matches = [(match, path) for path in listed.get((si, plan.docs_set), ())
               if (match := _STORED.fullmatch(path.removeprefix(prefix)))]
    stored = sorted(((_MORE_UNITS.sub("", match["key"]), path) for match, path in matches),
                    key=lambda kp: _unit_order(kp[0]))
    alone: dict[str, set[str]] = {}
    bundles: dict[str, set[int]] = {}
    paths: dict[str, list[str]] = {}
    for match, path in sorted(matches, key=lambda mp: mp[1]):
        first, n = _first_and_units(match["key"])
        bundles.setdefault(first, set()).add(n)
        if n == 1:  # a bundle of one unit is versioned as that unit (attributes.Bundle.version)
            alone.setdefault(first, set()).add(match["version"])
        paths.setdefault(match["key"], []).append(path)
    by_file: dict[str, set[str]] = {}
    for key, _ in stored:
        by_file.setdefault(_RANGE.sub("", key), set()).add(key)
    mine = [u for u in units if u.source_index == si]
    return _Source(stored, [_unit_order(key) for key, _ in stored], by_file, {u.key for u in mine},
                   {u.file.name: u.file for u in mine if u.is_range}, alone, bundles, paths)


def _first_and_units(key: str) -> tuple[str, int]:
    """A stored bundle key's first unit key and how many units the bundle holds ("a.jsonl+3": 4)."""
    more = _MORE_UNITS.search(key)
    return (key[:more.start()], 1 + int(more[0][1:])) if more else (key, 1)


def _source_not_stored(plan, store: AttributeStore) -> str | None:
    if store.set_names(plan.name):
        return None
    others = store.sources()
    if not others:
        return "nothing is tagged under this root yet: run `dolmino tag` with the same manifest first"
    return (f"nothing is stored for source {plan.name!r} (the root holds {_named(others)}): attributes are stored by "
            "source name, so a source renamed since the tag is tagged again under its new name: run `dolmino tag` "
            "with this manifest")


def _split_message(uri: str, was: str, now_range: bool) -> str:
    return (f"{uri} was tagged {was} at another --split-size (this run "
            f"{'cuts it into byte ranges' if now_range else 'reads it whole'}): give the --split-size it used, or run "
            "`dolmino tag` again with this one")


def _same_input(file: InputFile, key: str, versions) -> bool:
    """Whether a stored unit `key` at one of `versions` is of `file` as it is now, cut otherwise (by
    another --split-size), not of an earlier version of it: byte ranges are equal parts of a file's
    size, so a file that grew or shrank since the tag is cut elsewhere at the same split size, and
    was refused as tagged "at another --split-size" (found by a tester)."""
    bounds = _RANGE.search(key)
    unit = Unit(0, 0, file, int(bounds[1]), int(bounds[2])) if bounds else Unit(0, 0, file)
    return unit_version(unit) in versions


def _changed_message(uris: list[str]) -> str:
    """"X changed since it was tagged", or of several files "X, Y and 583 more changed since they were"."""
    it, was = ("they", "were") if len(uris) > 1 else ("it", "was")
    return (f"{_named(uris)} changed since {it} {was} tagged (another size, ETag or mtime): run `dolmino tag` "
            f"again for {'them' if len(uris) > 1 else 'it'}")


def _split_otherwise(works, source) -> str | None:
    """A plain file whose stored units are cut at other byte offsets than this run's (`works`:
    bundles whose documents are not stored; a file whole inside a stored bundle of several is
    found by `_inputs_changed`, from the bundle's unit list)."""
    for work in works:
        known = source(work.bundle.source_index)
        for unit in work.bundle.units:
            if not splittable(unit.file.name, unit.file.format):
                continue
            name = unit.file.name
            other = [k for k in known.by_file.get(name, ()) if k not in known.current]
            if other:
                alone = [k for k in other if k in known.alone]
                if alone and not any(_same_input(unit.file, k, known.alone[k]) for k in alone):
                    return _changed_message([unit.file.uri])
                return _split_message(unit.file.uri, "whole" if name in other else "in byte ranges", unit.is_range)
    return None


def _inputs_changed(works, source) -> str | None:
    """Files added, removed or changed since the tag, from the unit lists of the stored files
    that hold (or would hold) the due bundles' units."""
    reads = 0
    for work in works:
        bundle = work.bundle
        known = source(bundle.source_index)
        if not known.stored:
            continue
        versions = dict(zip((u.key for u in bundle.units), bundle.unit_versions))
        # The stored files holding a key are those whose first key is the last <= it: several where a
        # file changed and was tagged again (its bundle's older file stays beside the current one), and
        # the listing's order picked either, so a file tagged again since was called changed (a tester).
        generations: dict[int, list[str]] = {}
        for unit in bundle.units:
            at = bisect.bisect_right(known.firsts, _unit_order(unit.key)) - 1
            if at >= 0:
                first = bisect.bisect_left(known.firsts, known.firsts[at])
                generations.setdefault(first, sorted(path for _key, path in known.stored[first:at + 1]))
        stored: dict[str, str | None] = {}
        spans: list[tuple[str, str]] = []  # (first, last) input name of each stored file used
        for first in sorted(generations):
            closest, agreement = None, None
            for path in generations[first]:  # of one first key, the file that agrees most with this run's units
                if reads >= _METADATA_READS:
                    break
                reads += 1
                try:
                    _table, meta = read_table(path, columns=[])
                except BuildError:
                    continue
                listed = [(entry.get("unit"), entry.get("version")) for entry in meta.get("units") or ()]
                score = (sum(k in versions and v in (None, versions[k]) for k, v in listed),
                         -sum(k not in known.current for k, _ in listed))
                if agreement is None or score > agreement:
                    closest, agreement = listed, score
            if closest is None:
                continue
            stored.update(closest)
            names = [_RANGE.sub("", k) for k, _ in closest if isinstance(k, str)]  # units go in file-name order
            if names:
                spans.append((min(names), max(names)))
        if not stored:
            continue
        uri = {u.key: u.file.uri for u in bundle.units}
        # by file (the byte ranges of one file are units of their own)
        changed = list(dict.fromkeys(uri[k] for k, v in versions.items() if k in stored and stored[k] not in (None, v)))
        unlisted = list(dict.fromkeys(uri[k] for k in versions if k not in stored))
        removed = sorted(k for k in stored if k not in known.current)
        # A file in no stored file's listing is new where the listing shows other changes, where
        # other units of its bundle are stored (in a bundle made without it), or where a stored
        # file's names span it. Else it may be in a bundle a tag has not written yet, running or
        # stopped: "is new" of an unchanged file sent a colleague looking for a change (a tester).
        regrouped = any(k in stored for k in versions)
        spanned = any(lo < _RANGE.sub("", k) < hi for k in versions if k not in stored for lo, hi in spans)
        added, unreached = (unlisted, []) if changed or removed or regrouped or spanned else ([], unlisted)
        if cut := next((k for k in removed if k in known.ranged), None):  # stored whole, a range now
            if stored[cut] is not None and not _same_input(known.ranged[cut], cut, {stored[cut]}):
                return _changed_message([known.ranged[cut].uri])  # grown past the split size
            return _split_message(known.ranged[cut].uri, "whole", True)
        if changed and not added and not removed:
            return _changed_message(changed)
        parts = []
        if changed:
            parts.append(f"{_named(changed)} changed (another size, ETag or mtime)")
        if added:
            parts.append(f"{_named(added)} {'is' if len(added) == 1 else 'are'} new")
        if removed:
            # "no longer listed" misled where another manifest lists part of the files tagged together (a tester)
            parts.append(f"{_named(removed)}, tagged in the same attribute files, "
                         f"{'is' if len(removed) == 1 else 'are'} not among this manifest's inputs (removed since, or "
                         "tagged for a manifest listing more files: attribute files serve the files they were tagged "
                         "together with)")
        if unreached:
            return (f"{_named(unreached)} {'is' if len(unreached) == 1 else 'are'} in no attribute file: new since "
                    "the tag, or a tag still running or stopped before it got there: run `dolmino tag` (again, "
                    "once a running one has finished; it reuses what is done)")
        if parts:
            return (f"since the tag, {'; '.join(parts)}: run `dolmino tag` again (it reads again the files grouped "
                    "with these and reuses the rest)")
    return None


def _tagged_otherwise(work, plan, store: AttributeStore) -> str | None:
    """A missing set whose bundle file is held by a sibling set the manifest no longer uses."""
    in_use = {plan.docs_set, *(t.set_name for t in plan.filters), plan.minhash_set}
    missing = list(work.sets) + ([plan.minhash_set] if work.signatures and plan.minhash_set else [])
    names = store.set_names(plan.name)
    for set_name in missing:
        kind = set_name.rsplit("-", 1)[0]
        for other in names:
            if other in in_use or other.rsplit("-", 1)[0] != kind:
                continue
            if store.path(plan.name, other, work.bundle) not in store.existing(plan.name, other):
                continue
            where = (work.bundle.units[0].key if len(work.bundle.units) == 1
                     else f"the inputs of {work.bundle.key}")
            if kind == "minhash":
                return (f"{where}'s MinHash clusters were computed under other settings ({other} holds them: "
                        + (_minhash_otherwise(store, plan, other) or "another seed or MinHash parameter, or other "
                           "input files of the source, since clusters span all of them")
                        + "): run `dolmino tag` with this manifest")
            what = "documents" if kind == "docs" else f"{kind} attributes"
            tag = next((t for t in plan.filters if t.set_name == set_name), None)
            spelled = (_converted_otherwise(plan, store, work.bundle, _other_conversions(plan, store))
                       if kind == "docs" else _spelled_otherwise(store.path(plan.name, other, work.bundle), tag))
            return (f"{where}'s {what} were tagged under other settings or rules ({other} holds them: "
                    + (spelled or "another max_doc_bytes or tokenizer, another filter model or parameter, or a "
                       "dolmino whose rules for them changed since")
                    + "): run `dolmino tag` with this manifest: it tags what changed and reuses the rest")
    return None


# What `_minhash_otherwise` says where only the source's input files differ; `_minhash_reason` tells it apart.
_OTHER_INPUTS = "other input files of the source, since clusters span all of them"


def _minhash_otherwise(store: AttributeStore, plan, other: str) -> str | None:
    """What the MinHash set `other` was computed under and this manifest differs in, from its
    `_SOURCE.json` (parameters and pool). A mix of another `seed` than its tag was told "another seed
    or MinHash parameter, or other input files" (a tester): the MinHash seed left out is the
    manifest's seed, so a mix sampled with another seed needs clusters of its own unless it pins it."""
    import json

    from dolmino.manifest import MINHASH_DEFAULTS, MINHASH_FIELDS
    from dolmino.storage import read_if_exists

    try:
        done = json.loads(read_if_exists(f"{store.set_dir(plan.name, other)}/_SOURCE.json") or b"null")
        stored = done["stats"]["params"]
    except (ValueError, TypeError, KeyError):
        return None
    ours = {**MINHASH_DEFAULTS, **plan.minhash}
    shown = []
    for k in (k for k in MINHASH_FIELDS if k in stored and k in ours and stored[k] != ours[k]):
        shown.append(f"{k}: {stored[k]!r} there, {ours[k]!r} here" + (
            "" if k != "seed" else f" (a MinHash seed left out is the manifest's: give \"dedup\": {{\"minhash\": "
                                   f"{{\"seed\": {stored[k]!r}}}}} to mix with another seed from these clusters)"))
    if done.get("units") != plan.minhash_pool:
        shown.append(_OTHER_INPUTS)
    if not shown:
        # The same parameters and pool: the key differs in the clustering rules' revision alone. A root
        # tagged before CLUSTER_REVISION 2 was told "another seed or MinHash parameter, or other input
        # files", none of which had changed (a tester upgrading dolmino under a long-lived root).
        from filters.dedup import CLUSTER_REVISION

        revision = done.get("clusters")
        shown.append(f"clustering rules of revision {revision} there, {CLUSTER_REVISION} here"
                     if revision is not None and revision != CLUSTER_REVISION else
                     f"an earlier dolmino's clustering rules (this one's are revision {CLUSTER_REVISION}; the same "
                     "parameters and input files)")
    return "; ".join(shown)


def _spelled_otherwise(path: str, tag) -> str | None:
    """The filter parameters in which the spec stored with the set at `path` differs from this
    manifest's (`tag`: the FilterTag of the missing set): a default written out in one manifest
    and left out in the other keys another set, as the manifest spells it (a tester found only
    "another ... parameter"); else, from the keyed spec stored beside it (sets tagged since it is),
    a model or a custom scorer's code that changed in place (a reviewer)."""
    if tag is None:
        return None
    spec = tag.spec
    try:
        meta = read_table(path, columns=[])[1]
    except BuildError:
        return None
    stored = meta.get("spec")
    if not isinstance(stored, dict):
        return None
    from filters.base import tag_params
    from filters.registry import build_filter

    try:
        names = set(tag_params(build_filter(spec), {**stored, **spec}))
    except Exception:  # noqa: BLE001 - only the message depends on it
        return None
    differ = [k for k in sorted(names) if stored.get(k, _ABSENT) != spec.get(k, _ABSENT)]
    shown = [f"{k}: {repr(stored[k]) if k in stored else 'left out'} there, "
             f"{repr(spec[k]) if k in spec else 'left out'} here" for k in differ]
    if not shown:
        return _changed_in_place(meta.get("keyed"), tag.keyed, spec)
    from filters.registry import filter_defaults

    defaults = filter_defaults(spec["type"])
    if all((k not in stored and spec[k] == defaults.get(k, _ABSENT)) or
           (k not in spec and stored[k] == defaults.get(k, _ABSENT)) for k in differ):
        return ("tagged with the filter written otherwise: " + "; ".join(shown) + "; the same values, but sets are "
                "keyed by the parameters as the manifest spells them: write the default as the tagging manifest "
                "did, or tag again")
    # a real change (a threshold of a verdict filter, another model): no advice to undo it (a reviewer)
    return "tagged with other filter parameters: " + "; ".join(shown)


_ABSENT = object()


def _changed_in_place(stored: dict | None, keyed: dict | None, spec: dict) -> str | None:
    """What changed under parameters the manifest spells as the tag did: a file parameter's content
    (the key holds its SHA-256, not its path), the filter's rules (its `tag_revision`), or a custom
    scorer's source. None for a set tagged before its keyed spec was stored (the refusal keeps its
    general wording)."""
    from dolmino.build.resources import file_params

    if not isinstance(stored, dict) or not isinstance(keyed, dict):
        return None
    changed = [f"the {k.removesuffix('_path').replace('_', ' ')} at {spec[k]} changed since it was tagged"
               for k in file_params(spec) if k in keyed and stored.get(k) != keyed[k]]
    if stored.get("cascade") != keyed.get("cascade"):  # which documents were scored (filters.base: cascade)
        if "cascade" not in keyed:
            changed.append("it was scored as a cascade filter, only where the filters before it kept a document, "
                           "and this manifest asks for every document scored (no `cascade`)")
        elif "cascade" not in stored:
            changed.append("it was scored on every document, and this manifest's `\"cascade\": true` asks for a set "
                           "scored only where the filters before it keep a document (leave cascade out to use "
                           "those scores)")
        else:
            changed.append("it was scored as a cascade filter where other filters before it, or other settings of "
                           "theirs, decided which documents it scored")
    if stored.get("revision") != keyed.get("revision"):  # a filter's `tag_revision`: its rules changed (tag_plans)
        # "a dolmino whose rules for them changed since" did not say whose: a manifest has several filters (a tester)
        def revision(spelled: dict) -> str:
            return f"revision {spelled['revision']}" if "revision" in spelled else "rules without a revision number"

        changed.append(f"the rules of filter {keyed.get('type', spec['type'])!r} changed since it was tagged "
                       f"({revision(stored)} there, {revision(keyed)} here)")
    if "scorer_source" in keyed and "scorer_source" in stored and stored["scorer_source"] != keyed["scorer_source"]:
        from filters.quality import scorer_source

        from dolmino.py_files import given_path

        found = scorer_source(spec["scorer"])
        changed.append(f"the code of scorer {spec['scorer']!r} changed since it was tagged"
                       + (f" ({given_path(found[0])})" if found else ""))
    return "; ".join(changed) or None


def _other_conversions(plan, store: AttributeStore,
                       flat: set[str] | None = None) -> list[tuple[int | None, str, set[str]]]:
    """(revision, directory, stored paths) of a Stack Exchange source's converted documents: this
    dolmino's revision first, then the others newest first; revision None: documents an earlier
    dolmino kept directly under documents/ (`flat`: their listing, where already made). A directory
    listing, then one per revision."""
    if plan.format != "stackexchange":
        return []
    held = sorted((int(d[1:]) for d in list_dirs(store.set_dir(plan.name, EARLIER_DOCUMENTS_DIR))
                   if re.fullmatch(r"r\d+", d)), key=lambda n: (n != CONVERSION_REVISION, -n))
    dirs = [(n, f"{EARLIER_DOCUMENTS_DIR}/r{n}") for n in held] + [(None, EARLIER_DOCUMENTS_DIR)]
    return [(n, d, flat if n is None and flat is not None else store.existing(plan.name, d)) for n, d in dirs]


def _converted_otherwise(plan, store: AttributeStore, bundle, conversions) -> str | None:
    """Which Stack Exchange conversion revision the root holds a bundle's documents at, against this
    dolmino's: a docs set of another revision was "another max_doc_bytes or tokenizer, another filter
    model or parameter, or a dolmino whose rules for them changed since" in `dolmino mix`'s refusal,
    where `dolmino tag` named the conversion revision (a tester). `conversions`: `_other_conversions`.
    None where this revision's documents are there too: the docs sets differ in something else."""
    unit = bundle.units[0]
    for revision, directory, paths in conversions:
        if store.unit_path(plan.name, directory, unit, ".jsonl.zst") not in paths:
            continue
        if revision == CONVERSION_REVISION:
            return None
        where = store.set_dir(plan.name, directory)
        there = (f"Stack Exchange conversion revision {revision} there ({where})" if revision is not None else
                 f"an earlier dolmino's Stack Exchange conversion there ({where}, from before each revision had a "
                 "directory)")
        return f"{there}, revision {CONVERSION_REVISION} here"
    return None


def _documents_gone(works, plans, store: AttributeStore, listed: dict) -> str | None:
    """A bundle due although its docs set file is stored: its Stack Exchange documents are gone."""
    for work in works:
        si, bundle = work.bundle.source_index, work.bundle
        plan = plans[si]
        stored = listed[(si, plan.docs_set)]
        if plan.format == "stackexchange" and store.path(plan.name, plan.docs_set, bundle) in stored:
            present = store.existing(plan.name, DOCUMENTS_DIR)
            gone = next((u for u in bundle.units if store.documents_path(plan.name, u) not in present), bundle.units[0])
            # A root tagged before documents/r<n>/ holds them one level up: "missing" named files the user could see
            earlier = store.earlier_documents_path(plan.name, gone)
            why = ("are missing" if earlier not in store.existing(plan.name, EARLIER_DOCUMENTS_DIR) else
                   f"are not there: {earlier} is an earlier dolmino's conversion, which this one does not read (it "
                   f"keeps each conversion revision's apart, under {DOCUMENTS_DIR}/)")
            return (f"the Stack Exchange documents converted from {gone.file.name} (under "
                    f"{store.set_dir(plan.name, DOCUMENTS_DIR)}) {why}: run `dolmino tag` with this manifest "
                    "(it converts them again)")
    return None


def describe(works: dict, units: list[Unit], plans, store: AttributeStore, listed: dict) -> str:
    """The error `dolmino mix` stops with: how many units are due, the first, and the cause
    the attribute root shows (`listed`: (source index, set) -> stored paths, as run_tag listed them)."""
    due = list(works.values())
    first = due[0]
    plan = plans[first.bundle.source_index]
    # Bundles whose documents are not stored (under this docs set): the input side differs for
    # them. The others are due for a filter's set or MinHash alone (a new filter; a pool whose
    # added file changed every bundle's clusters): their inputs are as tagged.
    unread = [w for w in due if plans[w.bundle.source_index].docs_set in w.sets]
    absent = ", ".join(first.sets) or "MinHash clusters"
    head = (f"{sum(len(w.bundle.units) for w in due)} of {len(units)} units have no (current) attributes under "
            f"{store.root} (first: {first.bundle.units[0].key}, missing {absent})")
    source = functools.cache(lambda si: _source(si, units, plans, store, listed))
    try:
        reason = (_source_not_stored(plan, store) or _documents_gone(unread, plans, store, listed)
                  or _split_otherwise(unread, source)
                  or _inputs_changed(unread, source) or _tagged_otherwise(first, plan, store))
    except Exception:  # noqa: BLE001 - a root that cannot be read further: the refusal stands, without a cause
        reason = None
    return f"{head}; {reason or 'run `dolmino tag` with the same manifest first'}"


# ---------------------------------------------------------------------------- why `dolmino tag` tags a bundle

# A reason's code (report.json) -> what it says; `settings_changed` and MinHash's say more where the root shows it.
RETAG_REASONS = {
    "input_changed": "an input file changed (another size, ETag or mtime)",
    "files_added_or_removed": "files were added to or removed from the bundle",
    "split_size": "the file is cut at another --split-size than the tag's",
    "documents_missing": "its converted Stack Exchange documents are missing",
    "settings_changed": "tagged under other settings or rules",
    "source_inputs_changed": "other input files of the source (MinHash clusters span all of them)",
    "not_tagged": "in no attribute file of the set: not tagged under this root yet (a new source, filter or file, "
                  "or a tag stopped before it)",
}


def retag_reasons(works: dict, units: list[Unit], plans, store: AttributeStore, listed: dict) -> dict:
    """source -> set -> reason code -> {"bundles", "detail", "first"}: why `dolmino tag` (or the build)
    tags each due bundle, read from the root as `describe` reads it, but per bundle and set: the tag
    said "web/minhash-17f5...: 1" and not why, and a team re-tagging part of an 800B pool pays first.

    From run_tag's listings (`listed`) and the stored files' names; no due bundle's file is read, but
    where a bundle's name is stored at another version (the same first file and count), the unit list
    of that stored docs file, for 8 such bundles at most (`_METADATA_READS`): it tells a changed file
    from one removed and another added.
    Listed besides, once each and only where a due set's own listing cannot tell: the source's set
    names, and its sets of a due set's kind that the manifest no longer uses (one holds the bundle
    where a model, parameter or rule changed), and a Stack Exchange source's documents/ directories
    where another docs set holds its bundles (one per conversion revision); read: one file of such a
    set, and MinHash's `_SOURCE.json` files."""
    source = functools.cache(lambda si: _source(si, units, plans, store, listed))
    names = functools.cache(lambda si: store.set_names(plans[si].name))
    held = functools.cache(lambda si, other: store.existing(plans[si].name, other))
    said: dict[tuple, str | None] = {}  # (source index, stored set, due set) -> what differs: once per pair
    minhash = functools.cache(lambda si: _minhash_reason(plans[si], names(si), store))
    earlier = functools.cache(lambda si: store.existing(plans[si].name, EARLIER_DOCUMENTS_DIR))
    conversions = functools.cache(lambda si: _other_conversions(plans[si], store, earlier(si)))
    reads = [_METADATA_READS]

    @functools.cache
    def unit_keys(path: str) -> list | None:  # a stored docs file's units, while reads are left
        if reads[0] <= 0:
            return None
        reads[0] -= 1
        try:
            return [entry.get("unit") for entry in read_table(path, columns=[])[1].get("units") or ()]
        except BuildError:
            return None

    out: dict[str, dict] = {}
    for work in works.values():
        si, bundle = work.bundle.source_index, work.bundle
        plan = plans[si]
        docs = (_docs_reason(work, plan, source(si), names, listed, store, earlier, conversions, unit_keys)
                if plan.docs_set in work.sets else None)
        for set_name in work.sets:  # a bundle read again for its documents is tagged again in every due set
            code, detail = docs or _set_reason(work, plan, set_name, names, held, store, said)
            _count(out, plan.name, set_name, code, detail, bundle.key)
        if work.signatures and plan.minhash_set:
            _count(out, plan.name, plan.minhash_set, *minhash(si), bundle.key)
    return out


def _count(out: dict, source: str, set_name: str, code: str, detail: str, first: str) -> None:
    entry = out.setdefault(source, {}).setdefault(set_name, {}).setdefault(
        code, {"bundles": 0, "detail": detail, "first": first})
    entry["bundles"] += 1


def _docs_reason(work, plan, known: _Source, names, listed: dict, store: AttributeStore,
                 earlier, conversions, unit_keys) -> tuple[str, str]:
    """Why a bundle's documents are read again, from the names of the source's stored docs files: one
    stored under the bundle's first key and unit count holds the same files, one of them changed since,
    unless its unit list (`unit_keys`: read while reads are left) lists others; under its first key with
    another count (or with a later unit's key first), files were added or removed. Stack Exchange
    documents an earlier dolmino kept directly under documents/ (`earlier`: the source's, listed once)
    are named as `_documents_gone` names them: "missing" named files the user could see; those converted
    under another revision, with the revision (`_converted_otherwise`)."""
    si, bundle = work.bundle.source_index, work.bundle
    if store.path(plan.name, plan.docs_set, bundle) in listed.get((si, plan.docs_set), ()):
        # stored: due for the Stack Exchange documents
        if not any(store.earlier_documents_path(plan.name, u) in earlier(si) for u in bundle.units):
            return "documents_missing", RETAG_REASONS["documents_missing"]
        return "documents_missing", (f"its converted Stack Exchange documents are not under "
                                     f"{store.set_dir(plan.name, DOCUMENTS_DIR)}: those under "
                                     f"{store.set_dir(plan.name, EARLIER_DOCUMENTS_DIR)} are an earlier dolmino's "
                                     "conversion, which this one does not read (it keeps each conversion revision's "
                                     "apart)")
    for unit in bundle.units:
        other = [k for k in known.by_file.get(unit.file.name, ()) if k not in known.current]
        if other and splittable(unit.file.name, unit.file.format):
            alone = [k for k in other if k in known.alone]
            if alone and not any(_same_input(unit.file, k, known.alone[k]) for k in alone):
                return "input_changed", RETAG_REASONS["input_changed"]
            return "split_size", RETAG_REASONS["split_size"]
    if not known.stored:
        kind = [n for n in names(si) if n.startswith("docs-") and n != plan.docs_set]
        if kind:
            converted = _converted_otherwise(plan, store, bundle, conversions(si))
            return "settings_changed", (f"documents tagged under other settings or rules ({_named(kind)} "
                                        f"{'holds' if len(kind) == 1 else 'hold'} earlier ones: "
                                        + (converted or "another max_doc_bytes or tokenizer, a Stack Exchange "
                                           "conversion revision, or a newer dolmino's rules") + ")")
        return "not_tagged", RETAG_REASONS["not_tagged"]
    first = bundle.units[0].key
    if len(bundle.units) in known.bundles.get(first, ()):
        # The same name: a file of the bundle changed, or one was removed and another added between its first
        # and last (a tester was told "an input file changed"). The stored unit list tells, where it was read.
        stored = [found for path in known.paths.get(bundle.key, ()) if len(bundle.units) > 1
                  and (found := unit_keys(path)) is not None]
        if stored and [u.key for u in bundle.units] not in stored:
            return "files_added_or_removed", RETAG_REASONS["files_added_or_removed"]
        return "input_changed", RETAG_REASONS["input_changed"]
    if any(u.key in known.bundles for u in bundle.units):
        return "files_added_or_removed", RETAG_REASONS["files_added_or_removed"]
    return "not_tagged", RETAG_REASONS["not_tagged"]


def _set_reason(work, plan, set_name: str, names, held, store: AttributeStore, said: dict) -> tuple[str, str]:
    """Why a filter's set of a bundle whose documents are stored is tagged: a set of its kind that the
    manifest no longer uses holds the bundle (another model, parameter or rule, said as `describe`
    says it, read once per such set), or none does (a new filter, or a tag stopped before it)."""
    si, bundle = work.bundle.source_index, work.bundle
    kind = set_name.rsplit("-", 1)[0]
    in_use = {plan.docs_set, *(t.set_name for t in plan.filters), plan.minhash_set}
    for other in names(si):
        if other in in_use or other.rsplit("-", 1)[0] != kind:
            continue
        path = store.path(plan.name, other, bundle)
        if path in held(si, other):
            if (si, other, set_name) not in said:
                tag = next((t for t in plan.filters if t.set_name == set_name), None)
                said[(si, other, set_name)] = _spelled_otherwise(path, tag)
            return "settings_changed", (f"{other} holds them: " + (said[(si, other, set_name)] or (
                "another filter model or parameter, or a dolmino whose rules for them changed since")))
    return "not_tagged", RETAG_REASONS["not_tagged"]


def _minhash_reason(plan, names: list[str], store: AttributeStore) -> tuple[str, str]:
    """Why a source's MinHash clusters are computed: what its closest earlier set differs in
    (`_minhash_otherwise`: parameters, the source's input files, the clustering rules' revision)."""
    found = [(detail, other) for other in names
             if other.startswith("minhash-") and other != plan.minhash_set
             and (detail := _minhash_otherwise(store, plan, other)) is not None]
    if not found:
        return "not_tagged", RETAG_REASONS["not_tagged"]
    detail, other = min(found, key=lambda d: (d[0].count(";"), len(d[0])))
    if detail == _OTHER_INPUTS:
        return "source_inputs_changed", f"{RETAG_REASONS['source_inputs_changed']}; {other} holds the earlier ones"
    return "settings_changed", f"{other} holds clusters computed with {detail}"
