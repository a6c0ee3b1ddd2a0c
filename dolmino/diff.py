"""`dolmino diff A.json B.json`: what a manifest change does, as a pull-request comment.

A JSON diff tells a reviewer which lines moved; this tells them what the change means:
sources added and removed, per source the share fields (Source %, pool tokens, Mix %),
paths, format, document limits, dedup (MinHash threshold and seed included) and every
filter parameter (thresholds, model files) that changed, the top-level fields (seed,
budget, tokenizer, output format), and the plan of both manifests side by side (target
tokens, Source %, Mix % before and after, from `Manifest.plan`, the numbers a build
targets). Numbers are compared as the manifest means them ("752B" equals 752000000000), a
parameter left out as its default (the filter's, MinHash's), and shown in full where their
short forms would read the same.
Descriptions are reported as changed, not shown: the JSON diff holds the prose.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from dolmino.errors import BuildError, ManifestError
from dolmino.manifest import (
    MINHASH_DEFAULTS, Manifest, SourceSpec, errors_named, format_count, load_named_manifest, manifest_from_dict,
    parse_count, read_manifest_json, resolve_relative,
)
from dolmino.plan import Plan, make_plan, markdown_text, render_table, share_text
from dolmino.py_files import PY_FILES_HELP, explained, import_py_files, py_files
from filters.base import number_text

FORMATS = ("text", "markdown")


@dataclass
class Change:
    where: str  # "seed", "dclm.source_percent", "dclm.filters[0] fasttext_quality.threshold"
    before: object
    after: object


@dataclass
class ManifestDiff:
    a: Manifest
    b: Manifest
    fields: list[Change] = field(default_factory=list)  # top-level fields
    added: list[str] = field(default_factory=list)  # source names only in B
    removed: list[str] = field(default_factory=list)  # source names only in A
    sources: dict[str, list[Change]] = field(default_factory=dict)  # per common source, in B's order
    plan_a: Plan | None = None
    plan_b: Plan | None = None
    plan_errors: dict[str, str] = field(default_factory=dict)  # "before"/"after" -> why no plan
    tagging: list[str] | None = None  # what `dolmino tag` must do again for B (`_tagging`); None: not assessed
    tagging_error: str | None = None  # why it was not assessed
    unhashed: list[str] = field(default_factory=list)  # models and indexes `_tagging` keyed by name, not bytes
    labels: tuple[str | None, str | None] = (None, None)  # A and B as named on the command line where REV:PATH

    @property
    def empty(self) -> bool:
        return not (self.fields or self.added or self.removed or any(self.sources.values()))


_MISSING = object()


def _show(value: object) -> str:
    if value is _MISSING or value is None:
        return "-"
    if isinstance(value, bool):  # as the manifest writes it: "False -> True" read as Python (a tester)
        return "true" if value else "false"
    if isinstance(value, float):
        return number_text(value)  # `:g` keeps 6 digits: 0.03311014 -> 0.03311012 read the same twice (a tester)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"  # 752,000,000,000 -> 760,000,000,000, not 12-digit runs to count (a tester)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _compare(where: str, a: object, b: object, out: list[Change]) -> None:
    if a != b:
        out.append(Change(where, a, b))


def _compare_dicts(where: str, a: dict, b: dict, out: list[Change]) -> None:
    """One change per key that differs (absent keys shown as '-')."""
    for key in sorted(set(a) | set(b)):
        _compare(f"{where}.{key}" if where else key, a.get(key, _MISSING), b.get(key, _MISSING), out)


def _minhash(source: SourceSpec, manifest: Manifest) -> dict:
    """The MinHash settings the build uses: a default written out is no change (it showed as one)."""
    return {**MINHASH_DEFAULTS, "seed": manifest.seed, **source.dedup.minhash}


def _filter_params(spec: dict) -> dict:
    """A filter's parameters as it takes them: its defaults, then what the manifest writes
    (`cascade` false is its absence)."""
    from filters.base import CASCADE
    from filters.registry import filter_defaults

    return {**filter_defaults(spec.get("type")), CASCADE: False, **{k: v for k, v in spec.items() if k != "type"}}


def _filter_changes(name: str, a: list[dict], b: list[dict], out: list[Change]) -> None:
    """Filters matched in chain order: parameter changes, insertions, removals, moves.
    Identical filters (type and parameters) are matched first, then the rest by type: aligned on
    type alone, a min_length inserted after a min_length read as the first one's parameters
    changed and a min_length added before it (a tester). A parameter is compared as the filter
    takes it: a default written out, or removed in favour of the default, is no change, and a
    side that leaves it out shows the default (a tester)."""
    def keys(filters: list[dict]) -> list[tuple]:
        return [(f.get("type"), json.dumps(_filter_params(f), sort_keys=True, default=str)) for f in filters]

    same = difflib.SequenceMatcher(a=keys(a), b=keys(b), autojunk=False)
    for op, a1, a2, b1, b2 in same.get_opcodes():
        if op == "equal":
            continue
        types_a = [f.get("type") for f in a[a1:a2]]
        types_b = [f.get("type") for f in b[b1:b2]]
        by_type = difflib.SequenceMatcher(a=types_a, b=types_b, autojunk=False)
        for op, i1, i2, j1, j2 in by_type.get_opcodes():
            if op == "equal":
                for i, j in zip(range(a1 + i1, a1 + i2), range(b1 + j1, b1 + j2)):
                    _compare_dicts(f"{name}.filters[{j}] {b[j].get('type')}", _filter_params(a[i]),
                                   _filter_params(b[j]), out)
                continue
            for i in range(a1 + i1, a1 + i2):
                out.append(Change(f"{name}.filters[{i}] {a[i].get('type')}", a[i], _MISSING))
            for j in range(b1 + j1, b1 + j2):
                out.append(Change(f"{name}.filters[{j}] {b[j].get('type')}", _MISSING, b[j]))


def _source_changes(a: SourceSpec, b: SourceSpec, ma: Manifest, mb: Manifest) -> list[Change]:
    out: list[Change] = []
    n = b.name
    for attr in ("source_percent", "pool_tokens", "pool_docs", "mix_percent", "format", "max_doc_bytes",
                 "max_doc_tokens"):
        _compare(f"{n}.{attr}", getattr(a, attr), getattr(b, attr), out)
    if list(a.paths) != list(b.paths):
        out.append(Change(f"{n}.paths", list(a.paths), list(b.paths)))
    _compare(f"{n}.dedup.exact", a.dedup.exact, b.dedup.exact, out)
    if (a.dedup.minhash is None) != (b.dedup.minhash is None):
        out.append(Change(f"{n}.dedup.minhash", a.dedup.minhash, b.dedup.minhash))
    elif a.dedup.minhash is not None:
        _compare_dicts(f"{n}.dedup.minhash", _minhash(a, ma), _minhash(b, mb), out)
    # As parsed: model and index paths resolved against each manifest's directory, as the build reads them.
    _filter_changes(n, list(a.filters), list(b.filters), out)
    if a.description != b.description:
        out.append(Change(f"{n}.description", "(changed)", "(changed)"))
    return out


def _counts_text(a: int | None, b: int | None) -> tuple[str, str]:
    """Two token counts as `format_count` shows them, in full where those read the same but the
    counts differ: a budget of 50B -> 50.04B read "50B -> 50B" (found by a tester)."""
    if a is not None and b is not None and a != b and format_count(a) == format_count(b):
        return f"{a:,}", f"{b:,}"
    return tuple("-" if n is None else format_count(n) for n in (a, b))


def _percents_text(a: float | None, b: float | None, digits: int = 4) -> tuple[str, str]:
    """Two percentages at `digits` significant digits, more where those read the same but the
    values differ (Source % 3.23 -> 3.2301), not for float noise."""
    if a is None or b is None:
        return tuple("-" if v is None else f"{v:.{digits}g}" for v in (a, b))
    if not math.isclose(a, b, rel_tol=1e-9):
        while digits < 17 and f"{a:.{digits}g}" == f"{b:.{digits}g}":
            digits += 1
    return f"{a:.{digits}g}", f"{b:.{digits}g}"


def _shares_text(a: float | None, b: float | None) -> tuple[str, str]:
    """Two Mix % as `share_text` shows them, with more digits where those read the same but the
    values differ (20 -> 20.0001 read "20.00 -> 20.00"; a tester), not for float noise."""
    texts = tuple("-" if v is None else share_text(v) for v in (a, b))
    if a is None or b is None or texts[0] != texts[1] or math.isclose(a, b, rel_tol=1e-9):
        return texts
    style = "f" if a >= 0.1 else "g"  # as share_text: decimals from 0.1 up, significant digits below
    for digits in range(3, 18):
        if f"{a:.{digits}{style}}" != f"{b:.{digits}{style}}":
            return f"{a:.{digits}{style}}", f"{b:.{digits}{style}}"
    return repr(a), repr(b)


def _budget_change(a: Manifest, b: Manifest) -> Change | None:
    """The budgets compared as counts: their 3-digit text hid 50B -> 50.04B ("No changes", exit 0,
    while every source's target moved; found by a tester)."""
    how = ["" if m.budget is None or m.budget_stated or m.kind == "pool" else " (passes x pools)" for m in (a, b)]
    if (a.budget, how[0]) == (b.budget, how[1]):
        return None
    before, after = _counts_text(a.budget, b.budget)
    return Change("budget", before + how[0], after + how[1])


def _tagging(a: Manifest, b: Manifest, locked: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Per source of B, the attribute sets its mix reads that a tag of A did not write: what `dolmino tag`
    must do again (a reviewer of a threshold change asks whether the PR re-reads a 4 TB pool; the diff
    did not say), and the models and indexes keyed by where they are named (`_resources`). The sets are
    named as a build names them (`build.tag.tag_plans`): a score filter's new threshold reuses its set, a
    verdict filter's does not, a cascade filter follows the filters before it, a renamed source is a new
    one. Models and indexes are keyed as the build keys them, by their bytes (`_resources`; A's as its
    lockfile records them, `locked`), the tokenizer too (`_tokenizer_keys`), MinHash by its parameters and
    the source's paths. Files that only B's paths (or data root) name are new to every set: the sets keep
    their names, and the diff said "Nothing to tag again" where `dolmino mix` then refused (a tester)."""
    from dolmino.build.tag import tag_plans

    tokenizer_keys = _tokenizer_keys(a, b)
    resources = _resources(a, b)
    # A model replaced at the path both name is the same file now: what a tag of A read is what A's lock says.
    resources_a = {uri: r._replace(sha256=locked[uri]) if uri in (locked or {}) and not r.sha256.startswith(NAMED)
                   else r for uri, r in resources.items()}

    def plans(m: Manifest, tokenizer_key: str, keyed: dict) -> dict:
        return {p.name: p for p in tag_plans(m, keyed, tokenizer_key, [], check_indexes=False)}

    plans_a, plans_b = plans(a, tokenizer_keys[0], resources_a), plans(b, tokenizer_keys[1], resources)
    paths_a = {s.name: s.paths for s in a.sources}
    lines = []
    for source in b.sources:
        was, now = plans_a.get(source.name), plans_b[source.name]
        if was is None:
            lines.append(f"{source.name}: a new source (not tagged before): every set")
            continue
        added = [p for p in source.paths if p not in paths_a[source.name]]
        moved = a.data_root != b.data_root
        sets = [("docs", was.docs_set, now.docs_set)]
        old_filters = {t.set_name for t in was.filters}
        sets += [(f"filters[{t.index}] {t.spec['type']}", t.set_name if t.set_name in old_filters else None,
                  t.set_name) for t in now.filters]
        if now.minhash_set:
            same_pool = paths_a[source.name] == source.paths and not moved
            sets.append(("minhash", was.minhash_set if same_pool else None, now.minhash_set))
        again = [label for label, before, after in sets if before != after]
        # The sets named in `again` are written for every file anyway. A new data root's line stood alone, and a
        # set due for every file (a new index, a new tokenizer) went unnamed where paths are absolute (a reviewer).
        if moved:
            again.append(f"every {'other ' if again else ''}set for each file that is not the same file at the new "
                         "data root")
        elif added:
            again.append(f"every {'other ' if again else ''}set for the files its new paths add ({', '.join(added)})")
        if again:
            lines.append(f"{source.name}: {', '.join(again)}")
    return lines, sorted(uri for uri, r in resources.items() if r.sha256.startswith(NAMED))


def _resources(*manifests: Manifest) -> dict:
    """Every model and index the manifests' filters name, keyed as the build's attribute sets key them
    (`build.resources.keyed_spec`): a local file or directory by its SHA-256 (`local_digest`), each hashed
    once however many filters or manifests name it. Keyed by path, a model replaced at the same path read
    "unchanged" and a byte-identical copy at a new path as a new set, the opposite of what `dolmino mix`
    then did (a reviewer). An s3:// one, not fetched to compare two manifests, and one that is not there,
    whose bytes are not known, are keyed by where they are named (`NAMED`)."""
    from dolmino.build.resources import Resource, file_params, local_digest

    out: dict = {}
    digests: dict[str, tuple[str, bool]] = {}  # by real path: one file under two spellings is hashed once
    for m in manifests:
        for uri in (spec[k] for s in m.sources for spec in s.filters for k in file_params(spec)):
            if uri in out:
                continue
            if uri.startswith("s3://") or not os.path.exists(uri):
                out[uri] = Resource(uri, f"{NAMED}{uri}", False)
                continue
            real = os.path.realpath(uri)
            if real not in digests:
                digests[real] = local_digest(real)
            out[uri] = Resource(uri, *digests[real])
    return out


NAMED = "named:"  # a resource keyed by where it is named (`_resources`), its bytes not read


def _tokenizer_keys(a: Manifest, b: Manifest) -> tuple[str, str]:
    """The tokenizer part of each manifest's docs-set key, as the build computes it
    (`build.mix.tokenizer_digest`): its bytes and settings, not where it lies. Named by its settings,
    path included, where a local file cannot be read here (an s3:// one is not fetched to compare two
    manifests). Settings alone called every source's docs set, the whole pool read, due again for a
    tokenizer.path naming a copy of the same file, which `dolmino mix` reads with the tag's sets (a tester)."""
    from dolmino.assets import AssetError
    from dolmino.build.mix import tokenizer_digest
    from dolmino.tokenizer import Dolma2Tokenizer

    specs = (a.tokenizer, b.tokenizer)
    if all(s.path is None for s in specs) or any(s.path and s.path.startswith("s3://") for s in specs):
        return tuple(repr(sorted(vars(s).items())) for s in specs)
    try:
        return tuple(tokenizer_digest(Dolma2Tokenizer.from_spec(s), s) for s in specs)
    except (AssetError, ManifestError, OSError, ValueError):
        return tuple(repr(sorted(vars(s).items())) for s in specs)


def diff_manifests(a: Manifest, b: Manifest, budget: int | None = None, with_plan: bool = True,
                   locked: Mapping[str, str] | None = None) -> ManifestDiff:
    """Everything that differs between two manifests, and both plans (at `budget` if given). `locked`: the
    SHA-256 of A's models and indexes by resolved path, as A's lockfile records them (`Version.locked`)."""
    d = ManifestDiff(a, b)
    for attr in ("name", "version", "kind", "seed"):
        _compare(attr, getattr(a, attr), getattr(b, attr), d.fields)
    if budget_change := _budget_change(a, b):
        d.fields.append(budget_change)
    _compare("max_passes", a.max_passes, b.max_passes, d.fields)  # as read: 4 written out is the default
    for key in ("data_root", "output"):
        # Resolved against each manifest's directory: the same text in a moved manifest reads other
        # data (shown as "No changes"; found by a tester), other text may name the same directory.
        if getattr(a, key) != getattr(b, key):
            ra, rb = a.raw.get(key, _MISSING), b.raw.get(key, _MISSING)
            d.fields.append(Change(key, ra, rb) if ra != rb else Change(f"{key} (resolved)", getattr(a, key),
                                                                        getattr(b, key)))
    _compare_dicts("tokenizer", vars(a.tokenizer), vars(b.tokenizer), d.fields)
    _compare_dicts("output_format", vars(a.output_spec), vars(b.output_spec), d.fields)
    if a.description != b.description:
        d.fields.append(Change("description", "(changed)", "(changed)"))
    names_a = [s.name for s in a.sources]
    names_b = [s.name for s in b.sources]
    d.removed = [n for n in names_a if n not in names_b]
    d.added = [n for n in names_b if n not in names_a]
    by_name_a = {s.name: s for s in a.sources}
    for s in b.sources:
        if s.name in by_name_a:
            d.sources[s.name] = _source_changes(by_name_a[s.name], s, a, b)
    common = [n for n in names_b if n in by_name_a]
    if [n for n in names_a if n in names_b] != common:
        d.fields.append(Change("sources (order)", [n for n in names_a if n in names_b], common))
    if with_plan:
        try:
            d.tagging, d.unhashed = _tagging(a, b, locked)
        except (BuildError, ManifestError, ImportError, OSError, ValueError) as exc:  # a scorer that cannot load
            d.tagging, d.tagging_error = None, str(exc)
        for label, m in (("before", a), ("after", b)):
            try:
                plan = make_plan(m, budget if m.kind != "pool" else None, list_files=False)
            except ManifestError as exc:
                d.plan_errors[label] = str(exc)
                continue
            if label == "before":
                d.plan_a = plan
            else:
                d.plan_b = plan
    return d


def _delta_pct(a: float | None, b: float | None) -> str:
    """A change of Mix %: two decimals, significant digits where those would read 0.00 (0.0035 ->
    0.0032 read "0.00"; a tester); 0.00 only for no change or float noise. Never in exponent form:
    "-8e-05" in a table of decimals read as a typo (a tester): two significant digits as decimals."""
    if a is None or b is None:
        return "-"
    change = b - a
    if math.isclose(a, b, rel_tol=1e-9):
        return "0.00"
    if abs(change) >= 0.005:
        return f"{change:+.2f}"
    decimals = 1 - math.floor(math.log10(abs(float(f"{abs(change):.2g}"))))
    return f"{change:+.{decimals}f}".rstrip("0")  # as :g wrote them: +0.0001, not +0.00010


def _plan_side_by_side(d: ManifestDiff, fmt: str) -> list[str]:
    rows_a = {r.name: r for r in (d.plan_a.rows if d.plan_a else [])}
    rows_b = {r.name: r for r in (d.plan_b.rows if d.plan_b else [])}
    names = [r.name for r in (d.plan_b.rows if d.plan_b else [])] + [n for n in rows_a if n not in rows_b]
    headers = ["source", "target before", "target after", "Source % before", "Source % after", "Mix % before",
               "Mix % after", "Mix % change"]
    # A source missing from a plan has 0% there (added or removed); a side with no plan has no Mix % at all:
    # its change read as minus every source's whole share, as if all had been dropped (a tester).
    absent_a, absent_b = (0.0 if plan else None for plan in (d.plan_a, d.plan_b))
    rows = []
    for n in names:
        ra, rb = rows_a.get(n), rows_b.get(n)
        rows.append([n, *_counts_text(ra.target_tokens if ra else None, rb.target_tokens if rb else None),
                     *_percents_text(ra.source_percent if ra else None, rb.source_percent if rb else None),
                     *_shares_text(ra.mix_percent if ra else None, rb.mix_percent if rb else None),
                     _delta_pct(ra.mix_percent if ra else absent_a, rb.mix_percent if rb else absent_b)])
    rows.append(["total", *_counts_text(d.plan_a.budget if d.plan_a else None, d.plan_b.budget if d.plan_b else None),
                 "", "", "", "", ""])
    return render_table(headers, rows, fmt)


def render_diff(d: ManifestDiff, fmt: str = "text") -> str:
    md = fmt == "markdown"

    def heading(text: str) -> str:
        return f"#### {text}" if md else f"{text}:"

    def code(text: str) -> str:
        return f"`{text}`" if md else text

    def prose(text: str) -> str:  # paths and globs in warnings read as written, not as emphasis
        return markdown_text(text) if md else text

    a_name = d.labels[0] or d.a.path or d.a.name
    b_name = d.labels[1] or d.b.path or d.b.name
    lines = [f"### Manifest diff: {code(d.a.name)} -> {code(d.b.name)}" if md else
             f"manifest diff: {a_name} -> {b_name}", ""]
    if d.empty:
        lines += ["No changes in sources, shares, filters, dedup, seeds or output settings.", ""]
    if d.fields:
        lines += [heading("Manifest"), ""]
        lines += render_table(["field", "before", "after"],
                              [[c.where, _show(c.before), _show(c.after)] for c in d.fields], fmt, "lll")
        lines.append("")
    if d.added or d.removed:
        lines += [heading("Sources added and removed"), ""]
        lines += [f"- added: {code(n)}" for n in d.added] + [f"- removed: {code(n)}" for n in d.removed]
        lines.append("")
    changed = {n: cs for n, cs in d.sources.items() if cs}
    if changed:
        lines += [heading("Sources changed"), ""]
        rows = [[c.where, _show(c.before), _show(c.after)] for cs in changed.values() for c in cs]
        lines += render_table(["what", "before", "after"], rows, fmt, "lll")
        lines.append("")
    unchanged = [n for n, cs in d.sources.items() if not cs]
    if unchanged and (changed or d.added or d.removed):
        lines += [prose(f"Unchanged sources: {', '.join(unchanged)}."), ""]
    if d.tagging is None and d.tagging_error:  # the section was left out unsaid (a tester)
        lines += [heading("Tagging"), "", prose(f"Not assessed: {d.tagging_error}"), ""]
    if d.tagging is not None:
        lines += [heading("Tagging"), ""]
        if d.tagging:
            lines += ["Attribute sets that dolmino tag must write again (a tag of the manifest before "
                      "has not written them):", ""]
            lines += [f"- {prose(line)}" for line in d.tagging]
        else:
            lines.append("Nothing to tag again: every attribute set the mix reads is one a tag of the manifest "
                         "before wrote (models and indexes by their bytes: the manifest before's as its lockfile "
                         "records them, else as they are now).")
        if d.unhashed:
            lines.append(prose(f"Compared by where they are named, their bytes not read here: {', '.join(d.unhashed)}"
                               " (s3://, not fetched to compare manifests, or not there)."))
        lines.append("")
    lines += [heading("Plan before and after"), ""]
    if d.plan_a or d.plan_b:
        if d.plan_a and d.plan_b:
            lines.append("Budget {} -> {} tokens.".format(*_counts_text(d.plan_a.budget, d.plan_b.budget)))
            lines.append("")
        lines += _plan_side_by_side(d, fmt)
        lines.append("")
    for label, why in d.plan_errors.items():
        lines.append(prose(f"No plan {label}: {why}"))
    if d.plan_errors:
        lines.append("")
    warnings = [w for w in (d.plan_b.warnings if d.plan_b else [])
                if not d.plan_a or w not in d.plan_a.warnings]
    if warnings:
        lines += [heading("New warnings"), ""] + [f"- {prose(w)}" for w in warnings] + [""]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from dolmino.plan import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="dolmino diff", formatter_class=HelpFormatter,
        description="Compare two manifests: sources added/removed, share fields, filters and thresholds, dedup, "
                    "seeds, output settings, the attribute sets dolmino tag must write again, and both plans side "
                    "by side (text fit for a pull-request comment).")
    parser.add_argument("before", help="the manifest as it was (A.json), or git's REV:PATH (main:manifests/50B.json: "
                                       "that version, its relative paths resolved as if it lay at PATH; :PATH is "
                                       "the staged one)")
    parser.add_argument("after", help="the manifest as proposed (B.json, or REV:PATH)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format")
    parser.add_argument("--budget", default=None, help="plan both mix manifests at this budget (default: each "
                                                       "manifest's own)")
    parser.add_argument("--exit-code", action="store_true", help="exit 1 when the manifests differ (like git diff "
                                                                 "--exit-code)")
    parser.add_argument("--py-files", default=None, metavar="FILES",
                        help=PY_FILES_HELP + ", imported here to check it as the build will")
    return parser.parse_args(argv)


# git's spelling of a file at a revision: `main:manifests/50B.json`, `HEAD~1:./m.json`, or in the index (what
# `git add` staged): `:manifests/50B.json`, `:0:manifests/50B.json` (`gitrevisions(7)`; not a URL's scheme)
_REVISION_PATH = re.compile(r"^(?P<rev>[^:/\s][^:\s]*|:[0-3])?:(?P<path>.+)$")


def _revision_path(spec: str) -> re.Match | None:
    """`spec` read as git's REV:PATH, or None: a file of that name, a URL, or no such spelling."""
    found = _REVISION_PATH.match(spec)
    return None if found is None or os.path.exists(spec) or "://" in spec else found


def _git_show(spec: str, rev: str, path: str) -> tuple[bytes, str]:
    """The bytes of `rev`:`path` as git shows them, and the repository's top; one ManifestError where git
    gives none. A PATH git does not take is refused here in one line, not read as a file of that name: git
    reads PATH from the repository's top (or ./-relative), never from /, and `:/text` is the youngest
    commit whose message matches (`main:/abs/m.json` was "manifest file not found", a tester)."""
    import subprocess

    if path.startswith("/"):
        if not rev:
            raise ManifestError(f"{spec}: git reads ':/TEXT' as the newest commit whose message matches TEXT, not as a "
                                "file; name a staged manifest from the repository's top (:manifests/50B.json) or from "
                                "here (:./50B.json)")
        raise ManifestError(f"{spec}: git reads REV:PATH with PATH from the repository's top "
                            f"({rev}:manifests/50B.json) or from here ({rev}:./50B.json), not an absolute path")
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, check=True)
    except FileNotFoundError:
        raise ManifestError(f"{spec}: no such manifest file, and git, which reads REV:PATH, is not installed") from None
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else exc.stderr or "").strip()
        # the error, not a warning before it ("refname 'main' is ambiguous" where a tag shares a branch's name)
        why = next((line for line in said.splitlines() if line.startswith(("fatal:", "error:"))), said.split("\n")[0])
        # and git's hint where it gives one: "Did you mean 'main:manifests/m.json' aka 'main:./m.json'?"
        hints = [line.removeprefix("hint:").strip() for line in said.splitlines() if line.startswith("hint:")]
        why += "".join(f"; {hint}" for hint in hints)
        raise ManifestError(f"{spec}: no such manifest file, nor a file at a git revision "
                            f"({why or 'git failed'})") from None
    if shown.stdout.startswith(b"tree "):  # git show's listing of a directory: "not valid JSON" said no more
        raise ManifestError(f"{spec}: is a directory at that revision, not a manifest file")
    return shown.stdout, top.stdout.strip()


class Version(NamedTuple):
    """A manifest as `dolmino diff` names it, and what a tag of it read."""

    manifest: Manifest
    label: str | None  # `spec` where it names a git revision, else None (the manifest's path names it)
    locked: dict[str, str]  # resolved model / index path -> SHA-256, from the lockfile beside it (`_locked`)


def _locked(manifest: Manifest, content: bytes | None) -> dict[str, str]:
    """The digests a lockfile (`dolmino lock`) records of the manifest's models and indexes, by resolved
    path; {} without one. One that does not read pins nothing here (`dolmino lock --check` names it)."""
    try:
        resources = json.loads(content)["resources"] if content is not None else []
        base = os.path.dirname(manifest.path)
        return {resolve_relative(base, e["path"]): e["sha256"] for e in resources
                if isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str)}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def load_version(spec: str) -> Version:
    """The manifest file `spec`, or, where no such file exists, `REV:PATH` as git names a file at a
    revision (`main:manifests/50B.json`; `:manifests/50B.json` for the index; a path from the
    repository's top, or `./`-relative from here): that version's text, read as if it lay at PATH in
    this checkout, so its relative data root, output and index paths resolve as the working copy's do.
    A reviewer's `git show main:m.json > /tmp/m.json` resolved them from /tmp: every source read as moved
    to another data root, every set due (a reviewer). With it its lockfile's digests, read alike
    (50B.json's 50B.lock.json, at the revision for REV:PATH)."""
    from dolmino.lock import lock_path_for

    found = _revision_path(spec)
    if found is None:
        manifest = load_named_manifest(spec)
        try:
            with open(lock_path_for(spec), "rb") as fh:
                return Version(manifest, None, _locked(manifest, fh.read()))
        except OSError:
            return Version(manifest, None, {})
    rev, path = found.group("rev") or "", found.group("path")
    content, top = _git_show(spec, rev, path)
    where = os.path.abspath(path) if path.startswith(("./", "../")) else os.path.join(top, path)
    with errors_named(spec):
        manifest = manifest_from_dict(read_manifest_json(spec, content), where)
    import subprocess

    lock = subprocess.run(["git", "show", f"{rev}:{lock_path_for(path)}"], capture_output=True)
    return Version(manifest, spec, _locked(manifest, lock.stdout if lock.returncode == 0 else None))


def main(argv: list[str] | None = None) -> int:
    from dolmino.s3 import cli_errors

    args = parse_args(argv)
    errors = cli_errors("dolmino diff", expected=(ManifestError, BuildError))
    shipped: list[str] = []
    try:
        # as `dolmino build --py-files`: the manifests' check imports a custom scorer (a tester)
        shipped = py_files(args.py_files)
        import_py_files(shipped)
        budget = parse_count(args.budget, "--budget") if args.budget else None
        before, after = load_version(args.before), load_version(args.after)
        d = diff_manifests(before.manifest, after.manifest, budget, locked=before.locked)
        d.labels = (before.label, after.label)
    except Exception as exc:  # noqa: BLE001 - one redacted line
        return errors.report(explained(exc, shipped))
    sys.stdout.write(render_diff(d, args.format))
    return 1 if args.exit_code and not d.empty else 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))


def manifest_changes(built: object, given: object) -> list[str]:
    """The fields in which the raw manifest `given` differs from `built` (a build's manifest.json),
    as the manifest loader reads them: key order, spacing, "4M" for 4000000 or a default written out
    are no change. Not "output", which only says where the build goes, nor the descriptions or
    max_passes (which passes the warnings accept), which change no token. As plain JSON where either
    does not load (another dolmino version's). What the build (a complete build of another manifest
    in --out) and the trainer (--mix of an edited manifest) tell their user changed."""
    from dolmino.manifest import manifest_from_dict

    ignored = ("output", "output (resolved)", "description", "max_passes")
    try:
        diff = diff_manifests(manifest_from_dict(built), manifest_from_dict(given), with_plan=False)
    except ValueError:
        there, here = (r if isinstance(r, dict) else {} for r in (built, given))
        return [k for k in sorted({*there, *here} - set(ignored)) if there.get(k) != here.get(k)]
    changes = [c.where for c in diff.fields] + [f"sources.{n} (removed)" for n in diff.removed]
    changes += [f"sources.{n} (added)" for n in diff.added]
    changes += [f"sources.{c.where}" for per_source in diff.sources.values() for c in per_source]
    return [c for c in changes if c not in ignored and not c.endswith(".description")]
