"""`dolmino plan MANIFEST`: what a manifest will produce, in seconds, without Spark.

A reviewer of a mix manifest wants Table 13 of the OLMo 2 report for it: per source the
pool it samples, the passes it takes over that pool (Source %), the tokens that gives at
the budget and the source's share of the mix (Mix %). Every figure here comes from
`Manifest.plan` - the same `split_budget` the build samples with - so the plan is what a
build of the manifest targets (a build then measures the pools after filtering and plans
again on those; `dolmino diff` and the build report show the differences).

When the inputs are reachable (local paths, or s3:// with credentials), each source's files
and bytes are listed with `dolmino.build.inputs.list_inputs`, the build's own listing; when
they are not, one line says so and the plan is still printed. Every warning the validator
has (Source % vs Mix %, a budget the passes do not add up to, planned passes that miss the
manifest's) is printed after the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from dolmino.errors import BuildError, ManifestError
from dolmino.manifest import (
    Manifest, SourcePlanRow, format_bytes, format_count, load_named_manifest, parse_count, plan_warnings,
    repetition_warnings, share_text,
)
from dolmino.py_files import PY_FILES_HELP, explained, import_py_files, py_files

FORMATS = ("text", "markdown", "json")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default, once: options whose help states its default in words (or whose
    default is None / off) are not given a second "(default: None)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False):
            return text
        return super()._get_help_string(action)


# Characters with a meaning inside a markdown table cell (emphasis, code, links, HTML, entities,
# strikethrough, the cell separator, the escape itself). Digits, '.', ',', '+', '-', '%' have none.
_MARKDOWN_INLINE = set("\\`*_[]<&~|")


def markdown_text(text: str) -> str:
    """`text` escaped to read as itself in a markdown table cell: a path glob "data/**/*.json*"
    rendered in italics in a pull-request comment (found by a tester). An '_' inside a word
    (source_percent) cannot open or close emphasis and stays as is, so names read as written."""
    out = []
    for i, ch in enumerate(text):
        inside_word = ch == "_" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
        out.append("\\" + ch if ch in _MARKDOWN_INLINE and not inside_word else ch)
    return "".join(out)


def render_table(headers: list[str], rows: list[list[str]], fmt: str, align: str | None = None) -> list[str]:
    """Lines of a table: GitHub markdown (every cell escaped with `markdown_text`), or plain
    text with aligned columns.

    `align` has one letter per column, "l" or "r" (default: first column left, others right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    if fmt == "markdown":
        rule = ["---:" if a == "r" else "---" for a in align]
        cells = [[markdown_text(str(c)) for c in r] for r in [headers, *rows]]
        return ["| " + " | ".join(r) + " |" for r in [cells[0], rule, *cells[1:]]]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        return "  ".join(str(c).rjust(w) if a == "r" else str(c).ljust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


@dataclass
class SourceInputs:
    files: int
    bytes: int


@dataclass
class Plan:
    """A manifest's plan: rows of `Manifest.plan`, inputs where listed, every warning."""

    manifest: Manifest
    budget: int
    budget_note: str  # where the budget comes from
    rows: list[SourcePlanRow]
    inputs: dict[str, SourceInputs] = field(default_factory=dict)  # source -> files/bytes, where listed
    inputs_note: str | None = None  # one line when some or all inputs were not reachable
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        m = self.manifest
        return {
            "manifest": m.name, "path": m.path, "kind": m.kind, "version": m.version, "seed": m.seed,
            "budget": self.budget, "budget_note": self.budget_note, "max_passes": m.max_passes,
            "data_root": m.data_root,
            "sources": [{**r._asdict(),
                         "files": self.inputs[r.name].files if r.name in self.inputs else None,
                         "bytes": self.inputs[r.name].bytes if r.name in self.inputs else None}
                        for r in self.rows],
            "total_target_tokens": sum(r.target_tokens for r in self.rows),
            "inputs_note": self.inputs_note,
            "warnings": self.warnings,
        }


def _budget(manifest: Manifest, budget: int | None) -> tuple[int, str]:
    if manifest.kind == "pool":
        if budget is not None:
            raise ManifestError("--budget: a pool manifest takes every source once; it has no budget")
        if manifest.budget is None:
            missing = [s.name for s in manifest.sources if s.pool_tokens is None]
            raise ManifestError(f"pool_tokens: this pool manifest does not state the size of {len(missing)} of its "
                                f"{len(manifest.sources)} pools ({', '.join(missing[:5])}"
                                f"{', ...' if len(missing) > 5 else ''}), so there is nothing to plan; a build "
                                "measures them (its report.json's sources[].output_tokens)")
        return manifest.budget, "every pool once, at the sizes the manifest expects"
    if budget is not None:
        return budget, "--budget"
    if manifest.budget is None:
        raise ManifestError("budget: this manifest states no budget and its shares are Mix %; pass --budget")
    if manifest.budget_stated:
        return manifest.budget, "stated by the manifest"
    return manifest.budget, "passes x pool tokens; the manifest states no budget"


def list_source_inputs(manifest: Manifest) -> tuple[dict[str, SourceInputs], str | None, list[str]]:
    """Files and bytes of every source whose inputs can be listed; a one-line note on those
    that cannot (missing, or S3 not reachable); warnings of the listing (skipped files)."""
    from dolmino.build.inputs import list_sources
    from dolmino.s3 import s3_failure_message

    # An S3 failure is "not reachable" for its source (the others are still listed); anything else a bug.
    listing = list_sources(manifest, failure_message=s3_failure_message)
    found: dict[str, SourceInputs] = {}
    missing: list[str] = []
    refused: list[str] = []
    failure = None
    for source in listing.sources:
        if source.failure:
            missing.append(source.name)
            failure = source.failure
        elif source.unmatched:
            missing.append(source.name)
        else:  # what matched, even beside a pattern that matched nothing (its columns read '-'; a tester)
            if source.files:
                found[source.name] = SourceInputs(len(source.files), sum(f.size for f in source.files))
            # files the build would refuse: say which, as the build would
            refused += [f"inputs: {p} (the build refuses these)" for p in source.problems]
    refused += [f"inputs: {p} (the build refuses these)" for p in listing.problems]
    skipped = len(listing.skipped)
    note = None
    if missing:
        from dolmino.build.inputs import shown_path

        root = shown_path(manifest.data_root) if manifest.data_root else "the current directory"
        more = ", ..." if len(missing) > 6 else ""
        which = "any source" if len(missing) == len(manifest.sources) else \
            f"{len(missing)} of {len(manifest.sources)} sources ({', '.join(missing[:6])}{more})"
        # A source that matches nothing is refused as a pattern that does (it read as a note only; a tester).
        note = (f"inputs: {'not reachable' if failure else 'no files match'} for {which} under {root}"
                + (f" ({failure})" if failure else " (the build refuses these)") + "; files and bytes not shown "
                "there (--data-root points at your copy)")
    refused += [f"inputs: {w}" for w in listing.all_warnings()]
    warnings = refused + ([f"inputs: {skipped} file(s) in source directories are not documents by name and are "
                           "skipped"] if skipped else [])
    return found, note, warnings


def make_plan(manifest: Manifest, budget: int | None = None, list_files: bool = True) -> Plan:
    """The plan of `manifest` at `budget` (default: the manifest's); lists inputs when asked."""
    from dolmino.build.select import MAX_COPIES

    budget, note = _budget(manifest, budget)
    rows = manifest.plan(budget)
    refused = _copies_refused(rows)
    repeated = repetition_warnings([r for r in rows if r.copies is None or r.copies < MAX_COPIES],  # refused says it
                                   manifest.max_passes)
    plan = Plan(manifest, budget, note, rows, warnings=[*manifest.warnings, *_plan_warnings(manifest, budget, rows),
                                                        *repeated, *refused])
    if list_files:
        plan.inputs, plan.inputs_note, listing_warnings = list_source_inputs(manifest)
        plan.warnings += listing_warnings
    return plan


def _copies_refused(rows: list[SourcePlanRow]) -> list[str]:
    """The build's refusal of a source planned at MAX_COPIES whole copies of its pool or more:
    it comes after the pool and tokenize stages (hours), so the plan says it first (a tester)."""
    from dolmino.build.select import MAX_COPIES

    return [f"source {r.name!r}: its {format_count(r.target_tokens)}-token target would repeat its "
            f"{format_count(r.pool_tokens)}-token pool {r.copies:,} times (at most {MAX_COPIES - 1:,} whole copies "
            "are written); a lower --budget or Source % / Mix % asks for less (the build refuses this, after its "
            "pool and tokenize stages)"
            for r in rows if r.copies is not None and r.copies >= MAX_COPIES]


def _plan_warnings(manifest: Manifest, budget: int, rows: list[SourcePlanRow]) -> list[str]:
    """`plan_warnings` (a budget scaling every source's passes alike is one line there), less that
    line where the manifest's own budget warning already says it (the budget it states); the
    lines for sources given no token stay (they were dropped with the per-source ones)."""
    found = plan_warnings(rows)
    if manifest.passes_authority and manifest.budget_stated and budget == manifest.budget:
        return [w for w in found if not w.startswith("budget: ")]
    return found


def _pct(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def passes_text(row: SourcePlanRow) -> str:
    """Whole copies and the seeded sample of one more pass: '2 + 52.7%', '0 + 3.23%', '1'."""
    if row.copies is None:
        return "-"
    frac = row.fraction or 0.0
    if frac == 0 or (frac < 5e-5 and row.copies > 0):  # a whole number of copies, up to float noise
        return str(row.copies)
    return f"{row.copies} + {100 * frac:.3g}%"


def plan_table(plan: Plan, fmt: str) -> list[str]:
    with_mix_manifest = any(r.mix_percent_manifest is not None for r in plan.rows)
    with_inputs = bool(plan.inputs)
    headers = ["source", "pool tokens", "Source % (manifest)", "Source % (plan)", "copies + sample",
               "target tokens", "Mix %"]
    if with_mix_manifest:
        headers.append("Mix % (manifest)")
    if with_inputs:
        headers += ["files", "bytes"]
    rows = []
    for r in plan.rows:
        cells = [r.name, format_count(r.pool_tokens) if r.pool_tokens else "-", _pct(r.source_percent_manifest),
                 _pct(r.source_percent), passes_text(r), format_count(r.target_tokens), share_text(r.mix_percent)]
        if with_mix_manifest:
            cells.append(_pct(r.mix_percent_manifest))
        if with_inputs:
            inp = plan.inputs.get(r.name)
            cells += [f"{inp.files:,}" if inp else "-", format_bytes(inp.bytes) if inp else "-"]
        rows.append(cells)
    pools = [r.pool_tokens for r in plan.rows]
    total = ["total", format_count(sum(pools)) if all(pools) else "-", "", "", "",
             format_count(sum(r.target_tokens for r in plan.rows)), f"{sum(r.mix_percent for r in plan.rows):.2f}"]
    if with_mix_manifest:
        total.append("")
    if with_inputs:
        total += [f"{sum(i.files for i in plan.inputs.values()):,}",
                  format_bytes(sum(i.bytes for i in plan.inputs.values()))]
    rows.append(total)
    return render_table(headers, rows, fmt)


def render_plan(plan: Plan, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(plan.to_dict(), indent=2)
    m = plan.manifest
    md = fmt == "markdown"
    title = f"{m.kind} manifest {m.name} (version {m.version}, seed {m.seed})"
    lines = [f"### Plan: {title}" if md else title, "",
             f"Budget: {format_count(plan.budget)} tokens ({plan.budget:,}): {plan.budget_note}.", ""]
    lines += plan_table(plan, fmt)
    lines += ["", "Source %: passes over the pool x 100 (400 = four whole copies, 6.85 = a 6.85% seeded sample); "
                  "Mix %: share of the mix's tokens."]
    # outside the table too: a warning quoting a glob ("web/*_old_*/**") rendered in italics (a reviewer)
    prose = markdown_text if md else str
    if plan.inputs_note:
        lines += ["", prose(plan.inputs_note)]
    if plan.warnings:
        lines += ["", "**Warnings**" if md else "warnings:"]
        lines += [f"- {prose(w)}" for w in plan.warnings]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dolmino plan", formatter_class=HelpFormatter,
        description="Show what a manifest will produce (Table 13 of the OLMo 2 report: pool tokens, Source %, "
                    "target tokens, Mix %, files and bytes) without Spark, and every validation warning.")
    parser.add_argument("manifest", help="mix or pool manifest JSON")
    parser.add_argument("--budget", default=None, help="token budget with K/M/B/T suffix (default: the manifest's, "
                                                       "or passes x pool tokens)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format")
    parser.add_argument("--data-root", default=None, help="where the manifest's relative paths live, local or s3:// "
                                                          "(default: the manifest's data_root)")
    parser.add_argument("--no-inputs", action="store_true", help="do not list input files (offline review)")
    parser.add_argument("--py-files", default=None, metavar="FILES",
                        help=PY_FILES_HELP + ", imported here to check it as the build will")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from dolmino.s3 import cli_errors

    args = parse_args(argv)
    errors = cli_errors("dolmino plan", expected=(ManifestError, BuildError))
    shipped: list[str] = []
    try:
        # A custom scorer is imported by the manifest check: `dolmino build --py-files` shipped one that
        # plan could not load ("cannot be imported"), and said no more (a tester)
        shipped = py_files(args.py_files)
        import_py_files(shipped)
        manifest = load_named_manifest(args.manifest, args.data_root)
        budget = parse_count(args.budget, "--budget") if args.budget else None
        plan = make_plan(manifest, budget, list_files=not args.no_inputs)
    except Exception as exc:  # noqa: BLE001 - one redacted line
        return errors.report(explained(exc, shipped))
    print(render_plan(plan, args.format))
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
