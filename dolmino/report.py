"""The build report: what went in, what was removed and why, and what the mix became.

Numbers are laid out like Table 13 of the OLMo 2 report so that a reviewer can put a built
mix next to the paper: "Source %" is the share of a source's (filtered) tokens that went into
the mix (400 = four copies), "Mix %" its share of the output. Token counts include the EOS
token each document carries in the memmaps.
"""

from __future__ import annotations

import json
import os
import platform

from dolmino.manifest import Manifest, format_count
from dolmino.memmap import PartStats, part_name


def build_report(manifest: Manifest, budget: int, stats: dict, plans: dict, part_stats: dict[int, PartStats],
                 dedup_reports: dict, *, elapsed_s: float, spark_master: str) -> dict:
    total_tokens = sum(p.tokens for p in part_stats.values())
    total_docs = sum(p.docs for p in part_stats.values())
    fractions = manifest.mix_fractions()
    sources = []
    for si, source in enumerate(manifest.sources):
        out_tokens = sum(p.tokens_by_source.get(source.name, 0) for p in part_stats.values())
        out_docs = sum(p.docs_by_source.get(source.name, 0) for p in part_stats.values())
        plan = plans[si]
        st = stats[si]
        sources.append({
            "name": source.name,
            **st.to_dict(),
            "pool_tokens_manifest": source.pool_tokens,
            "target_tokens": plan.target_tokens,
            "copies": plan.copies,
            "fraction": plan.fraction,
            "output_docs": out_docs,
            "output_tokens": out_tokens,
            "source_percent": 100.0 * out_tokens / st.kept_tokens if st.kept_tokens else 0.0,
            "source_percent_manifest": source.source_percent,
            "mix_percent": 100.0 * out_tokens / total_tokens if total_tokens else 0.0,
            "mix_percent_manifest": 100.0 * fractions[source.name],
            "dedup": dedup_reports.get(source.name, []),
            "filter_chain": filter_chain(source.filters, st),
        })
    parts = [{"name": part_name(i), "tokens": p.tokens, "docs": p.docs} for i, p in sorted(part_stats.items())]
    return {
        "manifest": manifest.name,
        "manifest_path": manifest.path,
        "seed": manifest.seed,
        "budget": budget,
        "tokenizer": manifest.tokenizer.name,
        "eos_token_id": manifest.tokenizer.eos_token_id,
        "sources": sources,
        "output": {"tokens": total_tokens, "docs": total_docs, "files": len(parts), "parts": parts},
        "run": {"elapsed_s": round(elapsed_s, 2), "spark_master": spark_master,
                "python": platform.python_version(), "machine": platform.machine()},
    }


def filter_chain(filter_specs, stats) -> list[dict]:
    """Per filter, in chain order: documents that reached it, how many it removed, the share kept.

    The chain stops at the first rejection, so the documents reaching filter i are the ones
    kept plus those removed by filters i, i+1, ... - what a threshold keeps of what it sees,
    the build-time counterpart of `python -m filters.quality percentiles`."""
    removed = []
    for spec in filter_specs:
        prefix = f"{spec['type']}:"
        removed.append((sum(n for r, n in stats.removed_docs.items() if r.startswith(prefix)),
                        sum(n for r, n in stats.removed_tokens.items() if r.startswith(prefix))))
    rows = []
    for i, spec in enumerate(filter_specs):
        reached = stats.kept_docs + sum(d for d, _ in removed[i:]) + _removed_after_filters(stats)
        docs, tokens = removed[i]
        rows.append({"filter": spec["type"], "docs_reached": reached, "docs_removed": docs,
                     "tokens_removed": tokens, "share_kept": (reached - docs) / reached if reached else 1.0})
    return rows


def _removed_after_filters(stats) -> int:
    """Documents removed by stages after the filter chain (dedup): they passed every filter."""
    return sum(n for r, n in stats.removed_docs.items() if r in ("exact_duplicate", "near_duplicate"))


def render_markdown(report: dict) -> str:
    lines = [
        f"# Mix {report['manifest']} (budget {format_count(report['budget'])}, seed {report['seed']})",
        "",
        "| source | docs in | tokens in | quarantined | removed | kept tokens | copies | output tokens "
        "| Source % | Mix % | Mix % (manifest) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["sources"]:
        removed_docs = sum(r["docs"] for r in s["removed"].values())
        lines.append(
            f"| {s['name']} | {s['docs_in']:,} | {format_count(s['tokens_in'])} | {sum(s['quarantined'].values()):,} "
            f"| {removed_docs:,} | {format_count(s['kept_tokens'])} | {s['copies'] + s['fraction']:.3f} "
            f"| {format_count(s['output_tokens'])} | {s['source_percent']:.2f} | {s['mix_percent']:.2f} "
            f"| {s['mix_percent_manifest']:.2f} |")
    out = report["output"]
    lines += ["", f"Output: {out['docs']:,} document instances, {out['tokens']:,} tokens in {out['files']} part(s).", ""]
    removal_rows = [(s["name"], reason, r["docs"], r["tokens"]) for s in report["sources"]
                    for reason, r in s["removed"].items()]
    quarantine_rows = [(s["name"], reason, n) for s in report["sources"] for reason, n in s["quarantined"].items()]
    if removal_rows:
        lines += ["## Removed by reason", "", "| source | reason | docs | tokens |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c:,} | {d:,} |" for a, b, c, d in removal_rows]
        lines.append("")
    chain_rows = [(s["name"], row) for s in report["sources"] for row in s.get("filter_chain", [])]
    if chain_rows:
        lines += ["## Filter chain (share of the documents reaching each filter that it keeps)", "",
                  "| source | filter | docs reached | removed | kept % |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {r['filter']} | {r['docs_reached']:,} | {r['docs_removed']:,} | {100 * r['share_kept']:.2f} |"
                  for name, r in chain_rows]
        lines.append("")
    decon_rows = [(s["name"], task, v) for s in report["sources"] for key, rep in s.get("filter_reports", {}).items()
                  if key.endswith(".decontaminate") for task, v in rep.get("per_task", {}).items()]
    if decon_rows:
        lines += ["## Decontamination hits by evaluation set", "",
                  "| source | eval set | docs hit | tokens removed | docs (largest overlap) |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {task} | {v['docs_hit']:,} | {v['tokens_hit']:,} | {v['primary_docs']:,} |"
                  for name, task, v in decon_rows]
        lines.append("")
    if quarantine_rows:
        lines += ["## Quarantined (see quarantine/)", "", "| source | reason | lines |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c:,} |" for a, b, c in quarantine_rows]
        lines.append("")
    return "\n".join(lines)


def write_report(out_dir: str, report: dict, manifest: Manifest) -> None:
    """report.json (machine), report.md (human) and the manifest as it was used."""
    stable = {k: v for k, v in report.items() if k != "run"}
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as fh:
        json.dump({**stable, "run": report["run"]}, fh, indent=2, sort_keys=False)
        fh.write("\n")
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(render_markdown(report) + "\n")
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as fh:
        json.dump(manifest.raw, fh, indent=2)
        fh.write("\n")
