"""The build report: what went in, what was removed and why, and what the mix became.

Columns follow Table 13 of the OLMo 2 report so a reviewer can put a built mix next to the
paper. Token counts include the EOS each document carries in the memmaps.

- **Pool tokens**: the tokens of a source's documents that pass its filters and dedup. Exact
  when the whole pool was tokenized; otherwise estimated from the pool's bytes and the
  tokens per byte measured on the part that was tokenized (marked "~").
- **Passes** (Source %, /100): output tokens / pool tokens. 4.0 = four copies of the pool;
  0.0323 = a 3.23% sample. "manifest" is what the manifest states, "achieved" what was built.
- **Mix %**: the source's share of the output tokens.

Two accountings balance separately: the pool stage counts documents and bytes
(`docs in = kept + removed by reason + quarantined`) without tokenizing; the tokenize stage
counts documents and tokens of what it read (`read = kept + removed by token filters`).
"""

from __future__ import annotations

import json
import platform
import re

from dolmino.errors import ManifestError
from dolmino.manifest import (
    PASSES_TOLERANCE, Manifest, format_bytes, format_count, repetition, repetition_warning, share_text,
    zero_target_warning,
)

SHORTFALL_TOLERANCE = 0.005
# How far an estimated pool (not every document tokenized) may be from the manifest's
# pool_tokens before the report says the manifest's passes were missed because of it.
POOL_ESTIMATE_TOLERANCE = 0.05


def printable(text: str) -> str:
    """`text` with each character a terminal or a page does not show as itself (a newline, ESC, a
    right-to-left override U+202E, a zero-width space) written as its Python escape (`\\n`, `\\x1b`,
    `\\u202e`). An input file's name reaches the warnings whole: `x\\x1b[31m.gz` coloured the console,
    U+202E showed the name reversed, and a newline cut report.md's list item, the rest of it a heading
    of report.html (a tester)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


# What Markdown would act on in a name or message, where it would (GitHub renders report.md in a
# PR review): a tag or comment (`<script>`; `<!--` hides the rest of the page), emphasis, a code
# span, a link, strikethrough, an entity, a backslash escape. `stars<2`, `\x1b` and `web_text` act
# on nothing and stay as written.
_MARKDOWN_ACTIVE = re.compile(r"\\(?=[!-/:-@\[-`{-~])|[`*~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|<(?=[A-Za-z/!?])"
                              r"|\](?=[(\[])|&(?=#?[A-Za-z0-9]+;)")


def md_text(text) -> str:
    """A file name, source name or message as report.md's text: `printable`, and backslash-escaped
    where Markdown would act on it (a file named `<img src=x onerror=...>.jsonl` was HTML in the
    rendered report, `a*b*c` emphasis; t242)."""
    return _MARKDOWN_ACTIVE.sub(lambda m: "\\" + m.group(), printable(str(text)))


def md_cell(text) -> str:
    """`md_text` for a table cell: a "|" too (it split the row, a cell more than the header's)."""
    return md_text(text).replace("|", "\\|")


def _pool_filter_chain(source, acc: dict) -> list[dict]:
    """Per filter, in chain order: documents reaching it, removed by it, share kept.

    Tagging filters decide in the pool stage (in chain order, after blank documents are
    skipped); filters that need tokens decide later on what the mix tokenized. A filter's
    removals are the reasons that start with its label (`filters.base.chain_labels`, per stage):
    by type alone, two filters of one type were each credited both's removals (a tester)."""
    from filters.base import chain_labels, needs_tokens
    from filters.registry import build_filter

    removed = acc["removed"]
    built = [build_filter(spec, f"{source.name}.filters[{i}]") for i, spec in enumerate(source.filters)]
    tokenized = [needs_tokens(filt) for filt in built]
    labels = [""] * len(built)
    for stage in (True, False):
        mine = [i for i, t in enumerate(tokenized) if t == stage]
        for i, label in zip(mine, chain_labels(built[i] for i in mine)):
            labels[i] = label
    rows = []
    pool_filters = []
    tok = acc["tokenized"]["removed"]
    # The tokenizer (an empty document) and the length limit (`doc_too_long`) decide before the token
    # filters: the first filter was said to reach the documents they had removed (a tester).
    chain_prefixes = tuple(f"{labels[j]}:" for j in range(len(labels)) if tokenized[j])
    before_chain = sum(v["docs"] for r, v in tok.items() if not r.startswith(chain_prefixes))
    for i, label in enumerate(labels):
        prefix = f"{label}:"
        if tokenized[i]:
            earlier = tuple(f"{labels[j]}:" for j in range(i) if tokenized[j])
            docs = sum(v["docs"] for r, v in tok.items() if r.startswith(prefix))
            reached = acc["tokenized"]["docs"] - before_chain - sum(v["docs"] for r, v in tok.items()
                                                                    if earlier and r.startswith(earlier))
            rows.append({"filter": label, "stage": "tokenized", "docs_reached": reached, "docs_removed": docs,
                         "share_kept": (reached - docs) / reached if reached else 1.0})
        else:
            docs = sum(v["docs"] for r, v in removed.items() if r.startswith(prefix))
            pool_filters.append((label, docs, len(rows)))
            rows.append(None)
    dedup = sum(v["docs"] for r, v in removed.items() if r.endswith("_duplicate"))
    reached = acc["kept_docs"] + dedup + sum(d for _, d, _ in pool_filters)
    for name, docs, pos in pool_filters:
        rows[pos] = {"filter": name, "stage": "pool", "docs_reached": reached, "docs_removed": docs,
                     "share_kept": (reached - docs) / reached if reached else 1.0}
        reached -= docs
    return rows


def _stated_fractions(manifest: Manifest, parts) -> dict[str, float]:
    """Each source's Mix % as the manifest states it. A pool manifest need not state its pools'
    sizes (measuring them is what it is for): a size it leaves out is the one just measured."""
    if manifest.kind != "pool":
        return manifest.mix_fractions()
    measured = {s.name: sum(p.tokens_by_source.get(s.name, 0) for p in parts)
                for s in manifest.sources if s.pool_tokens is None}
    try:
        return manifest.mix_fractions(measured)
    except ManifestError:  # every pool empty: each source's warning says so
        return {s.name: 0.0 for s in manifest.sources}


def was_resumed(run: dict) -> bool:
    """Whether the build resumed an earlier run's plan (`parts_reused` alone: a report from before `resumed`)."""
    return bool(run.get("resumed") or run.get("parts_reused"))


def _resumed_note(run: dict, files: int) -> str:
    """A rerun keeps the plan and the committed parts of the run it resumes: the documents and tokens
    above are the build's, while the attribute counts, stages and time are this run's work. Said only
    where parts were reused, a resume that found none said nothing of it, and neither said whose
    stages and time the report gave (a tester)."""
    if not was_resumed(run):
        return ""
    reused = run.get("parts_reused") or 0
    kept = (f"; {reused} of {files} part(s) were already committed by an earlier run of this plan and reused "
            "(verified, not written again)") if reused else ""
    # Every part committed: the rerun of a finished build read as one that had "stopped after planning" (a tester)
    earlier = ("committed every part (it finished, or stopped before its report)" if files and reused >= files
               else "stopped after planning the mix")
    return (f" Resumed: an earlier run of this build {earlier}, and this run kept its plan{kept}. "
            "The documents and tokens above are the whole build's; the attribute counts, stages and times below "
            "are this run's.")


def _attribute_files_line(files: dict, named: int = 8) -> str:
    """The attribute files written (with the sets that got them) and reused: by unit alone, "2 of 4
    tagged" hid that one filter's scores were the only files written (a tester)."""
    sets = [(f"{source}/{name}", c) for source, by_set in files.items() for name, c in by_set.items()]
    written = [(name, c) for name, c in sets if c["written"]]
    n_bytes = sum(c["bytes_written"] for _, c in written)
    which = ", ".join(f"{name}: {c['written']:,}" for name, c in written[:named])
    if len(written) > named:
        which += f", and {len(written) - named} more set(s)"
    return (f"Attribute files: {sum(c['written'] for _, c in written):,} written"
            + (f", {format_bytes(n_bytes)} ({which})" if written else "")
            + f", {sum(c['reused'] for _, c in sets):,} reused.")


def retag_lines(files: dict, lines: int = 4, named: int = 3) -> list[str]:
    """Why the attribute files written were due, a line per reason (`tag.attribute_files`' `reasons`),
    the sets it held and their bundles: "web/minhash-17f5...: 1" said what was re-tagged, not why, and
    re-tagging part of an 800B pool is paid before anyone asks (a tester). The sets past `named` are
    counted after the counts' unit: "... 1 and 5 more set(s) bundle(s)" read as bundles of sets (the demo build),
    and "dclm/docs-… 1, flan/docs-… 1 bundle(s)" left the first counts without a unit (a tester): each set's own."""
    grouped: dict[tuple[str, str], list] = {}
    for source, by_set in files.items():
        for set_name, counts in by_set.items():
            for code, why in (counts.get("reasons") or {}).items():
                grouped.setdefault((code, why["detail"]), []).append((f"{source}/{set_name}", why))
    out = []
    for (_code, detail), sets in sorted(grouped.items(), key=lambda kv: -max(w["bundles"] for _, w in kv[1])):
        shown = ", ".join(f"{name} ({why['bundles']:,} bundle{'' if why['bundles'] == 1 else 's'})"
                          for name, why in sets[:named])
        more = f", and {len(sets) - named} more set(s)" if len(sets) > named else ""
        out.append(f"{detail}: {shown}{more} (first: {sets[0][1]['first']})")
    if len(out) > lines:
        out[lines - 1:] = [f"{len(out) - lines + 1} more reason(s) not shown"]
    return out


def input_accounts(units, unit_pools) -> dict[int, dict]:
    """Per source index: the bytes its listed input files hold (`file_bytes`; `bytes_in` is the
    text of the documents read) and its files whose compressed stream breaks part-way
    (`broken_files`: (name, compressed byte of the break, unreadable bytes), in listing order).

    A file breaks once at most (one `corrupt_stream` record), and is read whole (compressed
    files are never split), so the break is at its listed size less its unreadable bytes. Both
    were known only as report.json's `unreadable_bytes` and report.md's "corrupt_stream | 1":
    every document after the break lost, unsaid on the console (a tester)."""
    stats = {up.unit_index: up.stats for up in unit_pools}
    out: dict[int, dict] = {}
    for unit in units:
        acc = out.setdefault(unit.source_index, {"file_bytes": 0, "broken_files": [], "truncated_files": []})
        if not unit.is_range or unit.start == 0:
            acc["file_bytes"] += unit.file.size
        st = stats.get(unit.index)
        if st and st["quarantined"].get("corrupt_stream"):
            acc["broken_files"].append(_broken_file(unit, st["unreadable_bytes"]))
        if st and st["quarantined"].get("truncated_file"):  # a Posts.xml without `</posts>`: its last unit's record
            acc["truncated_files"].append(unit.file.name)
    return out


def _broken_file(unit, lost: int) -> tuple[str, int, int]:
    """(name, compressed byte of the break, unreadable bytes) of a whole file that breaks part-way."""
    return unit.file.name, unit.file.size - lost, lost


def tag_warnings(source_names: list[str], units, broken: dict[int, int], attributes: str) -> list[str]:
    """`dolmino tag`'s warning for each source whose compressed inputs read by this run break
    part-way (`broken`: unit index -> unreadable bytes, tag.TagResult.broken), as the mix's
    report says it: the tag phase said nothing of them (a tester). Units reused whole are not
    read again, so they are not named here (they were when tagged; the mix's report names all)."""
    files: dict[int, list] = {}
    for unit in units:
        if unit.index in broken:
            files.setdefault(unit.source_index, []).append(_broken_file(unit, broken[unit.index]))
    root = attributes.rstrip("/")
    return [w for si, named in sorted(files.items())
            for w in _broken_files(source_names[si], named, f"{root}/{source_names[si]}/quarantine/")]


def empty_compressed_warnings(source_names: list[str], units) -> list[str]:
    """A .gz or .zst of 0 bytes holds not even a compressed header: it reads as a file without
    documents and was counted nowhere, yet it is usually a write or copy cut short (a tester)."""
    from dolmino.documents import compression

    empty: dict[int, list[str]] = {}
    for unit in units:
        if unit.file.size == 0 and compression(unit.file.name, ()):
            empty.setdefault(unit.source_index, []).append(unit.file.name)
    return [f"source {source_names[si]!r}: {len(names):,} compressed input file(s) hold 0 bytes, not even a "
            f"compression header ({'first: ' if len(names) > 1 else ''}{printable(names[0])}), read as holding no "
            "documents; usually a write or copy cut short: restore or remove them"
            for si, names in sorted(empty.items())]


def _broken_files(name: str, broken: list[tuple[str, int, int]], quarantine: str | None = None) -> list[str]:
    """The warning for a source whose compressed inputs break part-way (`input_accounts`' list);
    `quarantine`: where their records are (the output's quarantine/<source>/ by default)."""
    if not broken:
        return []
    first, at, _lost = broken[0]
    where = quarantine or f'quarantine/{name}/'
    if not any(lost for _path, _at, lost in broken):
        # Each stream ends at its file's end: a copy or download cut short. "0 compressed bytes unreadable
        # ... at byte 370" of a 370-byte file read as a contradiction (a tester)
        return [f"source {name!r}: {len(broken):,} compressed input file(s) end inside their stream, cut short (a "
                f"write, copy or download interrupted; the documents after the cut are not in the file; first: "
                f"{printable(first)}, its end at byte {at:,}); restore them; see {where}"]
    return [f"source {name!r}: {len(broken):,} input file(s) break part-way ({sum(b[2] for b in broken):,} "
            f"compressed bytes unreadable, every document after a break lost; first: {printable(first)} at byte "
            f"{at:,}); see {where}"]


def _truncated_files(name: str, files: list[str]) -> list[str]:
    """The warning for a source whose Stack Exchange Posts.xml files end without their `</posts>` line:
    cut short at a row boundary, every row after the cut missing, which only report.md's quarantine
    table said (a tester)."""
    if not files:
        return []
    return [f"source {name!r}: {len(files):,} Posts.xml file(s) end without their closing </posts> line (first: "
            f"{printable(files[0])}): cut short by an interrupted extraction or copy, the rows after the cut are "
            f"missing; extract the site's Posts.xml again (see quarantine/{name}/, reason truncated_file)"]


def _quarantined(counts: dict[str, int], named: int = 3) -> list[str]:
    """["quarantined 240 (bad_id 240)"], or [] when none was: the count alone left a source of
    documents without an id (mlfoundations' DCLM shards) to be looked up in the quarantine files (a tester)."""
    total = sum(counts.values())
    if not total:
        return []
    top = sorted(((r, n) for r, n in counts.items() if n), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{r} {n:,}" for r, n in top[:named]) + (", ..." if len(top) > named else "")
    return [f"quarantined {total:,} ({shown})"]


def _empty_source(sel, name: str, acc: dict) -> list[str]:
    """The warning for a source with no documents left, with what removed them: a filter that
    takes a whole source usually means data without the field it reads (`stars_missing`)
    or a threshold on the wrong scale, not a bad pool."""
    if sel.empty is None:
        return []
    stages = [acc["removed"], acc.get("tokenized", {}).get("removed", {})]  # pool filters, token filters
    removed = sorted(((r, e) for stage in stages for r, e in stage.items()), key=lambda kv: -kv[1]["docs"])
    why = [f"{reason} {entry['docs']:,}" for reason, entry in removed[:3]] + _quarantined(acc["quarantined"])
    if not acc["docs_in"]:  # nothing was filtered: its inputs were empty (or a glob took the wrong files)
        # the files' own bytes: `bytes_in` counts documents' text, always 0 here ("3 file(s), 0 bytes"
        # of files that held 6 bytes of blank lines; a tester)
        held = acc.get("file_bytes", acc["bytes_in"])
        return [f"source {name!r}: its inputs hold no documents ({acc['files']:,} file(s), {held:,} bytes); "
                f"{sel.empty}"]
    return [f"source {name!r}: no documents left after filtering and dedup; {sel.empty}"
            + (f" (of {acc['docs_in']:,} documents: {', '.join(why)})" if why else "")]


# A source whose inputs are this share or more quarantined is warned about: a bad copy or a wrong
# reader setting (`max_doc_bytes`), rather than the odd broken line a crawl holds.
QUARANTINED_WARN_SHARE = 0.10


def _mostly_quarantined(name: str, acc: dict) -> list[str]:
    """The warning for a source of which a large share was quarantined: 161 of 339 documents (157 over
    `max_doc_bytes`) were only in the quarantine table of report.md (found by a tester)."""
    quarantined = sum(acc["quarantined"].values())
    if not acc["docs_in"] or quarantined < QUARANTINED_WARN_SHARE * acc["docs_in"]:
        return []
    reasons = _quarantined(acc["quarantined"])[0].split(" (", 1)[1].rstrip(")")
    return [f"source {name!r}: {quarantined:,} of its {acc['docs_in']:,} input documents "
            f"({quarantined / acc['docs_in']:.0%}) were quarantined, not used ({reasons}; see quarantine/{name}/)"]


def _no_tokens(accounts: list[dict], budget: int | None, parts: int) -> str:
    """The warning for a build that holds no tokens at all, with what took every document: its
    parts are empty files, which the trainer refuses, so the build says so itself instead of
    "wrote 1 part(s), 0 tokens"."""
    docs_in = sum(acc["docs_in"] for acc in accounts)
    by_reason: dict[str, int] = {}
    for acc in accounts:
        for reason, n in acc["quarantined"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    quarantined = sum(by_reason.values())
    removed: dict[str, int] = {}
    for acc in accounts:
        for stage in (acc["removed"], acc["tokenized"]["removed"]):  # pool filters and dedup, token filters
            for reason, entry in stage.items():
                removed[reason] = removed.get(reason, 0) + entry["docs"]
    gone = sum(removed.values()) + quarantined
    reasons = [f"{reason} {n:,}" for reason, n in sorted(removed.items(), key=lambda kv: -kv[1])[:3]] + \
        _quarantined(by_reason)
    if not docs_in:
        why = "its inputs hold no documents"
    elif gone >= docs_in:
        why = f"none of its {docs_in:,} documents is left: {', '.join(reasons)}"
    else:  # documents were left, and no source took any (the sources' warnings say why)
        why = f"{docs_in - gone:,} of its {docs_in:,} documents were left, and none was written"
    of_budget = f" of its budget {budget:,}" if budget else ""
    return (f"the build holds no tokens{of_budget} ({why}): its {parts} part(s) are empty, nothing to train on; "
            "check the manifest's filters and inputs")


def _pool_size_missed(source, pool_tokens: int, exact: bool, out_tokens: int, target_tokens: int) -> list[str]:
    """A source whose achieved passes miss the planned ones because its pool is not the size the
    manifest states. The build plans against the stated pool_tokens at its budget: another budget
    scales every source's passes (warned about once, from the plan), so the achieved passes are
    compared with the planned ones (they were with the manifest's: 179.9% against 200% where
    the build had planned 500%), the manifest's named beside them."""
    stated = source.pool_tokens
    if not (source.source_percent and stated and pool_tokens):
        return []
    achieved = 100.0 * out_tokens / pool_tokens
    planned = 100.0 * target_tokens / stated
    off_pool = abs(pool_tokens / stated - 1) > (PASSES_TOLERANCE if exact else POOL_ESTIMATE_TOLERANCE)
    if not off_pool or not planned or abs(achieved / planned - 1) <= PASSES_TOLERANCE:
        return []
    said = (f"the manifest says {source.source_percent:.4g}% ("
            if abs(planned / source.source_percent - 1) <= PASSES_TOLERANCE else
            f"this build planned {planned:.4g}% (the manifest says {source.source_percent:.4g}% at its budget; ")
    return [f"source {source.name!r}: took {achieved:.4g}% of its pool, {said}the pool holds "
            f"{'' if exact else '~'}{format_count(pool_tokens)} tokens after filtering, the manifest's "
            f"pool_tokens {format_count(stated)}; a pool build's report measures it)"]


def _short_of_target(name: str, out_tokens: int, sel) -> list[str]:
    """A source that wrote less than its target by more than SHORTFALL_TOLERANCE, and why where the
    selection knows: a mix takes whole documents, and the next one would have overshot. A pool of
    one 5,001-token document under a 1,000-token target read "wrote 0 tokens, 1,000 short of its
    target 1,000", its cause left to guess (a tester)."""
    short = sel.target_tokens - out_tokens
    if out_tokens >= sel.target_tokens * (1 - SHORTFALL_TOLERANCE):
        return []
    why = ""
    if sel.next_doc_tokens is not None and sel.next_doc_tokens > short:
        why = (f": a mix takes whole documents, and the next one it could take holds {sel.next_doc_tokens:,} "
               "tokens, more than the gap")
    return [f"source {name!r}: wrote {out_tokens:,} tokens, {short:,} short of its target {sel.target_tokens:,}{why}"]


def build_report(manifest: Manifest, budget: int, sources: list[dict], selections, tok_stats, parts, tagged, state,
                 *, elapsed_s: float, cluster: dict, out: str, attributes: str, resumed: bool) -> dict:
    total_tokens = sum(p.tokens for p in parts)
    total_docs = sum(p.docs for p in parts)
    units = sum(len(b.units) for b in tagged.bundles)
    fractions = _stated_fractions(manifest, parts)
    tokenized_total = {"docs": 0, "tokens": 0}
    report_sources = []
    warnings = list(state.warnings)
    accounts = []  # each source's, with its tokenize stage: what removed everything when nothing is written
    repetitions = []  # said in one line after the sources
    for si, (source, acc, sel) in enumerate(zip(manifest.sources, sources, selections)):
        tok = {"docs": 0, "bytes": 0, "tokens": 0, "kept_docs": 0, "kept_tokens": 0, "removed": {},
               "control_token_docs": 0, "eos_in_span_docs": 0}
        for ts in tok_stats:
            if ts.source_index != si:
                continue
            for key in ("docs", "bytes", "tokens", "kept_docs", "kept_tokens"):
                tok[key] += getattr(ts, key)
            tok["control_token_docs"] += ts.control_token_docs
            tok["eos_in_span_docs"] += ts.eos_in_span_docs
            for reason, (docs, tokens) in ts.removed.items():
                entry = tok["removed"].setdefault(reason, {"docs": 0, "tokens": 0})
                entry["docs"] += docs
                entry["tokens"] += tokens
        removed_docs = sum(v["docs"] for v in tok["removed"].values())
        if tok["docs"] != tok["kept_docs"] + removed_docs:
            raise AssertionError(f"source {source.name}: tokenize stage does not balance: read {tok['docs']} != kept "
                                 f"{tok['kept_docs']} + removed {removed_docs}")
        tokenized_total["docs"] += tok["docs"]
        tokenized_total["tokens"] += tok["tokens"]
        acc = {**acc, "tokenized": tok}
        accounts.append(acc)
        empty = _empty_source(sel, source.name, acc)
        warnings += empty or _mostly_quarantined(source.name, acc)
        out_tokens = sum(p.tokens_by_source.get(source.name, 0) for p in parts)
        out_docs = sum(p.docs_by_source.get(source.name, 0) for p in parts)
        masked = _masked(parts, source.name)
        if sel.pool_tokens is not None:
            pool_tokens, exact = sel.pool_tokens, True
        else:
            ratio = tok["kept_tokens"] / tok["bytes"] if tok["bytes"] else sel.tokens_per_byte
            pool_tokens, exact = int(round(acc["kept_bytes"] * ratio)), False
        if manifest.kind == "pool" and source.pool_tokens and out_tokens \
                and abs(out_tokens / source.pool_tokens - 1) > PASSES_TOLERANCE:
            warnings.append(f"source {source.name!r}: the pool holds {format_count(out_tokens)} tokens, the manifest "
                            f"expects {format_count(source.pool_tokens)} ({out_tokens / source.pool_tokens:.3g}x; "
                            "a mix manifest's pool_tokens for it should say what the pool holds)")
        if manifest.kind != "pool" and manifest.passes_authority:
            warnings += _pool_size_missed(source, pool_tokens, exact, out_tokens, sel.target_tokens)
        if manifest.kind != "pool" and pool_tokens and (repeated := repetition(
                source.name, out_tokens / pool_tokens, pool_tokens, source.passes, manifest.max_passes, not exact)):
            repetitions.append(repeated)  # as `dolmino plan` says it, of the pool as measured
        if manifest.kind != "pool" and not sel.target_tokens and fractions[source.name] > 0:
            # said by the plan's warnings where the build asked for them (passes manifests), else here
            zero = zero_target_warning(source.name, 100.0 * fractions[source.name], budget)
            warnings += [] if zero in warnings else [zero]
        if acc["duplicate_ids"]:  # counted, and unsaid: a site's Posts.xml beside its .xml.zst was read twice
            warnings.append(f"source {source.name!r}: {acc['duplicate_ids']:,} document(s) repeat an id seen earlier in "
                            "the source (the same data under two file names, such as Posts.xml beside Posts.xml.zst, "
                            "or inputs that reuse ids); each is read and may be mixed, told apart by its loc")
        warnings += _broken_files(source.name, acc.get("broken_files") or [])
        warnings += _truncated_files(source.name, acc.get("truncated_files") or [])
        if not empty:  # said once: empty names it
            warnings += _short_of_target(source.name, out_tokens, sel)
        entry = {
            "name": source.name, "files": acc["files"], "docs_in": acc["docs_in"], "bytes_in": acc["bytes_in"],
            "quarantined": dict(sorted(acc["quarantined"].items())),
            "removed": dict(sorted(acc["removed"].items())),
            "duplicate_ids": acc["duplicate_ids"], "unreadable_bytes": acc["unreadable_bytes"],
            "broken_files": len(acc.get("broken_files") or ()),
            "kept_docs": acc["kept_docs"], "kept_bytes": acc["kept_bytes"],
            "pool_tokens": pool_tokens, "pool_tokens_exact": exact,
            "pool_tokens_manifest": source.pool_tokens,
            "tokenized": tok,
            "selection": {k: v for k, v in sel.to_dict().items() if k not in ("selected", "empty")},
            "target_tokens": sel.target_tokens, "output_docs": out_docs, "output_tokens": out_tokens,
            "output_masked_tokens": masked,
            "passes": out_tokens / pool_tokens if pool_tokens else 0.0,
            "source_percent_manifest": source.source_percent,
            "mix_percent": 100.0 * out_tokens / total_tokens if total_tokens else 0.0,
            # The manifest's plan: its Mix % as its authority resolves it (from Source % x pool
            # when the passes decide). `dolmino plan`'s "Mix % (manifest)" is the stated value,
            # here mix_percent_stated (None when the manifest states none).
            "mix_percent_manifest": 100.0 * fractions[source.name],
            "mix_percent_stated": source.mix_percent,
            "minhash": tagged.minhash.get(source.name),
            "filter_chain": _pool_filter_chain(source, acc),
            "filter_reports": {k: r.to_dict() for k, r in sorted(acc["filter_reports"].items())},
            "decontamination_coverage": acc.get("decontamination_coverage", []),
        }
        report_sources.append(entry)
    warnings += repetition_warning(repetitions, manifest.max_passes)
    if not total_tokens:  # "wrote 1 part(s), 0 tokens" and "0 tokens, N short of the budget" were all it said
        warnings.append(_no_tokens(accounts, budget if manifest.kind != "pool" else None, len(parts)))
    elif total_tokens < budget * (1 - SHORTFALL_TOLERANCE):
        warnings.append(f"the mix holds {total_tokens:,} tokens, {budget - total_tokens:,} short of the budget {budget:,}")
    return {
        "manifest": manifest.name,
        "manifest_path": manifest.path,
        "seed": manifest.seed,
        "kind": manifest.kind,  # a pool manifest has no budget: "budget" is then the sum of its sources' targets
        "budget": budget,
        "tokenizer": manifest.tokenizer.name,
        "eos_token_id": manifest.tokenizer.eos_token_id,
        "pad_token_id": manifest.tokenizer.pad_token_id,  # the trainer checks both against the model's (a reviewer)
        "vocab_size": manifest.tokenizer.vocab_size,
        # how control-token strings in text became ids: an export's tokenizer must encode prompts as the data was
        "control_tokens": manifest.tokenizer.control_tokens,
        "sources": report_sources,
        "output": {"tokens": total_tokens, "docs": total_docs, "files": len(parts), "location": out,
                   "masked_tokens": _masked(parts),
                   "parts": [{"name": f.name, "size": f.size, "sha256": f.sha256, "tokens": p.tokens, "docs": p.docs}
                             for p in parts for f in p.files if f.name.endswith(".npy")
                             and not f.name.endswith(".label_mask.npy")],
                   "files_sha256": {f.name: f.sha256 for p in parts for f in p.files}},
        "doc_tokens_hist": _doc_hist(parts),
        "totals": {"tokens_tokenized": tokenized_total["tokens"], "docs_tokenized": tokenized_total["docs"],
                   "tokens_written": total_tokens,
                   "tokenized_per_written": tokenized_total["tokens"] / total_tokens if total_tokens else 0.0},
        "warnings": warnings,
        "attributes": attributes,
        "run": {"elapsed_s": round(elapsed_s, 2), **cluster, "resumed": resumed,
                "units": units, "units_tagged": tagged.tagged_units, "units_reused": units - tagged.tagged_units,
                "units_read_for_minhash_only": getattr(tagged, "signature_units", 0),
                "attribute_files": getattr(tagged, "attribute_files", None) or {},
                "parts_reused": sum(1 for p in parts if p.skipped), "stages": state.stages,
                "persisted_bytes": state.persisted, "python": platform.python_version(),
                "machine": platform.machine()},
    }


def _masked(parts, source: str | None = None) -> int | None:
    """Tokens the label masks keep out of the loss (of one source, or all), or None without label masks (or
    with a part committed by a build that did not count them): the report said nothing of them, while the
    trainer skips them (a tester)."""
    if not parts or any(p.masked_by_source is None for p in parts):
        return None
    return sum(n for p in parts for s, n in p.masked_by_source.items() if source in (None, s))


def _masked_text(report: dict) -> str:
    """report.md's sentence on the label masks, where the build wrote them."""
    out = report["output"]
    if out.get("masked_tokens") is None:
        return ""
    by_source = ", ".join(f"{s['name']} {s['output_masked_tokens']:,}" for s in report["sources"]
                          if s.get("output_masked_tokens"))
    return (f" Label masks: {out['masked_tokens']:,} of the tokens written masked (repeated n-gram spans, not "
            f"trained on){f': {by_source}' if by_source else ''}.")


def _doc_hist(parts) -> dict[str, list[int]]:
    """Tokens-per-document histograms per source, summed over parts (dolmino.doc_lengths bins)."""
    total: dict[str, list[int]] = {}
    for part in parts:
        for source, counts in part.doc_hist.items():
            acc = total.setdefault(source, [0] * len(counts))
            for i, n in enumerate(counts):
                acc[i] += n
    return dict(sorted(total.items()))


def _pct(value) -> str:
    return "-" if value is None else share_text(value)


def budget_text(report: dict) -> str:
    """The budget as the views name it: a pool manifest states none, and its "budget" (the sum of its
    sources' targets) read as one ("budget 221K"; a tester)."""
    if report.get("kind") == "pool":
        return f"pool manifest, targets {format_count(report['budget'])}"
    return f"budget {format_count(report['budget'])}"


def render_markdown(report: dict) -> str:
    lines = [
        f"# Mix {md_text(report['manifest'])} ({budget_text(report)}, seed {report['seed']})",
        "",
        "| source | docs in | quarantined | removed | pool docs | removed when tokenized | pool tokens | target "
        "| output tokens | passes (manifest) | passes (achieved) | Mix % (planned) | Mix % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["sources"]:
        removed = sum(r["docs"] for r in s["removed"].values())
        removed_tokenized = sum(r["docs"] for r in s["tokenized"]["removed"].values())
        manifest_passes = None if s["source_percent_manifest"] is None else s["source_percent_manifest"] / 100
        approx = "" if s["pool_tokens_exact"] or not s["pool_tokens"] else "~"  # an emptied pool is exactly 0
        pool = approx + format_count(s["pool_tokens"])
        lines.append(
            f"| {md_cell(s['name'])} | {s['docs_in']:,} | {sum(s['quarantined'].values()):,} | {removed:,} "
            f"| {s['kept_docs']:,} | {removed_tokenized:,} | {pool} | {format_count(s['target_tokens'])} "
            f"| {format_count(s['output_tokens'])} "
            f"| {'-' if manifest_passes is None else f'{manifest_passes:.4g}'} | {approx}{s['passes']:.4g} "
            f"| {_pct(s['mix_percent_manifest'])} | {_pct(s['mix_percent'])} |")
    out = report["output"]
    totals = report["totals"]
    lines += ["",
              "Docs in = quarantined + removed + pool docs. Removed when tokenized: documents of the pool that "
              "filters deciding on token ids removed, among those tokenized (a source cut by hash tokenizes only what "
              "it may take). "
              "Pool tokens: tokens of the documents that pass filters and dedup (~ = estimated from bytes and the "
              "tokens per byte of what was tokenized). Passes: output tokens / pool tokens (Table 13's Source % / 100). "
              "Mix %: share of the output tokens.", "",
              f"Output: {out['docs']:,} document instances, {out['tokens']:,} tokens in {out['files']} part(s). "
              f"Tokenized {totals['tokens_tokenized']:,} tokens for {totals['tokens_written']:,} written "
              f"({totals['tokenized_per_written']:.3f} per token written)."
              + _masked_text(report) + _resumed_note(report.get("run", {}), out['files']), ""]
    run = report.get("run", {})
    if "units_tagged" in run:
        # "6 of 6 tagged, 0 reused" beside "Attribute files: 2 written, 2 reused" read as a contradiction where
        # only a new filter's set was written (a tester): a unit counts as tagged when any of its sets was
        only = run.get("units_read_for_minhash_only") or 0
        also = f" ({only:,} of them read again only for MinHash signatures)" if only else ""
        lines += [f"Attributes ({md_text(report.get('attributes'))}): {run['units_tagged']:,} of {run['units']:,} "
                  f"input unit(s) tagged by this {'run' if was_resumed(run) else 'build'}{also} (one or more of "
                  f"their attribute sets written), {run['units_reused']:,} reused whole.", ""]
    if run.get("attribute_files"):
        lines += [md_text(_attribute_files_line(run["attribute_files"])), ""]
        why = retag_lines(run["attribute_files"], lines=8)
        if why:
            lines += ["Why attribute files were written:", ""] + [f"- {md_text(line)}" for line in why] + [""]
    control = [(s["name"], s["tokenized"].get("control_token_docs", 0), s["tokenized"].get("eos_in_span_docs", 0))
               for s in report["sources"]]
    if any(c or e for _, c, e in control):
        lines += ["## Control tokens in text", "",
                  "Documents whose text holds control-token strings (`<|endoftext|>`, `<|pad|>`, ...), tokenized "
                  "as the manifest's `tokenizer.control_tokens` says; with \"dolma\" an EOS string inside a text "
                  "becomes an EOS inside the document (`dolmino validate` counts those in the output, each "
                  "instance of a repeated document apart).", "",
                  "| source | distinct docs with control tokens | distinct docs with EOS inside |", "|---|---|---|"]
        lines += [f"| {md_cell(n)} | {c:,} | {e:,} |" for n, c, e in control if c or e]
        lines.append("")
    if report.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {md_text(w)}" for w in report["warnings"]] + [""]
    removal_rows = [(s["name"], reason, r["docs"], r.get("bytes")) for s in report["sources"]
                    for reason, r in s["removed"].items()]
    token_rows = [(s["name"], reason, r["docs"], r["tokens"]) for s in report["sources"]
                  for reason, r in s["tokenized"]["removed"].items()]
    if removal_rows or token_rows:
        lines += ["## Removed by reason", "", "| source | reason | docs | bytes | tokens |", "|---|---|---|---|---|"]
        lines += [f"| {md_cell(a)} | {md_cell(b)} | {c:,} | {'-' if d is None else f'{d:,}'} | |"
                  for a, b, c, d in removal_rows]
        lines += [f"| {md_cell(a)} | {md_cell(b)} | {c:,} | | {d:,} |" for a, b, c, d in token_rows]
        lines.append("")
    chain_rows = [(s["name"], row) for s in report["sources"] for row in s.get("filter_chain", [])]
    if chain_rows:
        lines += ["## Filter chain (share of the documents reaching each filter that it keeps)", "",
                  "| source | filter | decided on | docs reached | removed | kept % |", "|---|---|---|---|---|---|"]
        lines += [f"| {md_cell(name)} | {md_cell(r['filter'])} | {md_cell(r['stage'])} "
                  f"| {r['docs_reached']:,} | {r['docs_removed']:,} "
                  f"| {100 * r['share_kept']:.2f} |" for name, r in chain_rows]
        lines.append("")
    decon_rows = [(s["name"], task, v) for s in report["sources"] for key, rep in s.get("filter_reports", {}).items()
                  if key.endswith(".decontaminate") for task, v in rep.get("per_task", {}).items()]
    if decon_rows:
        lines += ["## Decontamination hits by evaluation set", "",
                  "| source | eval set | removed docs with its n-grams | removed docs (largest overlap) |",
                  "|---|---|---|---|"]
        lines += [f"| {md_cell(name)} | {md_cell(task)} "
                  f"| {v['docs_hit']:,} | {v['primary_docs']:,} |" for name, task, v in decon_rows]
        lines.append("")
    coverage_rows = [(s["name"], c) for s in report["sources"] for c in s.get("decontamination_coverage", [])]
    if coverage_rows:
        lines += ["## Decontamination coverage (the OLMo 2 report's evaluation sets)", "",
                  "| source | eval set | status | instances | note |", "|---|---|---|---|---|"]
        for name, cov in coverage_rows:
            for entry in cov["sets"]:
                counts = ", ".join(f"{split} {n:,}" for split, n in sorted(entry["instances"].items())) or "-"
                # A note is one cell: an index built before notes were one line held pip's whole error
                note = md_cell(" ".join((entry.get("note") or "").split()))
                lines.append(f"| {md_cell(name)} | {md_cell(entry['name'])} | {md_cell(entry['status'])} | {counts} "
                             f"| {note} |")
        lines.append("")
    quarantine_rows = [(s["name"], reason, n) for s in report["sources"] for reason, n in s["quarantined"].items()]
    if quarantine_rows:
        lines += ["## Quarantined (see quarantine/)", "", "| source | reason | lines |", "|---|---|---|"]
        lines += [f"| {md_cell(a)} | {md_cell(b)} | {c:,} |" for a, b, c in quarantine_rows]
        lines.append("")
    stages = report["run"].get("stages", {})
    if stages:
        lines += ["## Stages", "", ("This run's stages: the build resumed, and the earlier run's work is not "
                                    "counted here. " if was_resumed(report["run"]) else "")
                  + "Wall s: the stage's elapsed time. Task CPU s: the CPU seconds of the Python work of the stage's "
                  "tasks, summed over them, where they measure it (-: not measured, as in the MinHash stages' Spark "
                  "transformations); executor run s: Spark's run time of the stage's tasks, summed over them (more "
                  "than wall s when tasks run side by side). "
                  "Tokens read: token ids read back from the tokenized documents (tag reads text, pool attribute "
                  "files: their bytes are the documents' text); tag tokenizes only its tokens-per-byte sample.", "",
                  "| stage | wall s | task CPU s | executor run s | shuffle written | spilled | docs "
                  "| bytes | tokens read | tokenized | written |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, st in stages.items():
            spark = st.get("spark") or {}
            cpu = f"{st['task_cpu_s']:.1f}" if st["task_cpu_s"] or not spark.get("executor_run_s") else "-"
            lines.append(f"| {md_cell(name)} | {st['wall_s']:.1f} | {cpu} | "
                         f"{spark.get('executor_run_s', '-')} | {format_bytes(spark.get('shuffle_write_bytes', 0))} | "
                         f"{format_bytes(spark.get('spilled_bytes', 0))} | {st['docs']:,} | "
                         f"{format_bytes(st['bytes'])} | {_stage_tokens(st, 'tokens_read')} | "
                         f"{_stage_tokens(st, 'tokens_tokenized')} | {_stage_tokens(st, 'tokens_written')} |")
        lines.append("")
    lines += run_lines(report["run"])
    return "\n".join(lines)


def _stage_tokens(stage: dict, key: str) -> str:
    """A stage's token figure; `-` in a report.json from before the three were apart (one `tokens`)."""
    return format_count(stage[key]) if key in stage else "-"


def run_lines(run: dict) -> list[str]:
    """report.md's closing lines: the bytes each persisted dataset held, and where the build ran
    (the README promised them in report.md; they were in report.json only, found by a tester)."""
    lines = []
    persisted = run.get("persisted_bytes") or {}
    if persisted:
        lines += ["Persisted (Spark storage, memory and disk): " + ", ".join(
            f"{md_text(name)} {format_bytes(n)}" for name, n in persisted.items()) + ".", ""]
    if run.get("spark_master"):
        hosts = run.get("executor_hosts") or []
        lines += [f"Spark: master {md_text(run['spark_master'])}, {run.get('executors', '?')} executor(s), "
                  f"{run.get('executor_cores', '?')} core(s) in all"
                  + (f", {run['task_cpus']} per task" if run.get("task_cpus") else "")
                  + (f", on {', '.join(map(md_text, hosts))}" if hosts else "")
                  + f"; application {md_text(run.get('application_id', '?'))}.", ""]
    return lines


def write_report(out_dir: str, report: dict, manifest: Manifest) -> None:
    """manifest.json, report.md / report.html / report-*.png, then report.json: the completion
    marker, written last."""
    from dolmino.storage import write_bytes
    from dolmino.report_html import write_views

    base = out_dir.rstrip("/")
    write_bytes(f"{base}/manifest.json", (json.dumps(manifest.raw, indent=2) + "\n").encode("utf-8"))
    write_views(base, report, strict=False)  # report.md with charts (report-*.png), report.html (dolmino.report_html)
    write_bytes(f"{base}/report.json", (json.dumps(report, indent=2) + "\n").encode("utf-8"))

