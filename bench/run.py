"""Run every benchmark and write one report: `python -m bench.run` (what `make bench` calls).

A figure means little alone: 40k tokens/s is fast or slow only next to what the tools
people would otherwise use do on the same machine at the same moment. So each benchmark
script measures dolmino *and* its anchors (dolma 1.2.1, datatrove 0.10.1, the raw Rust
tokenizer, ...) in one process tree, and this harness:

1. runs each script as a `nice`d subprocess N times (default 3, `--quick` 1; `--nice 0` on a
   machine other people load, where a niced benchmark would barely run),
2. parses the one JSON object it prints and its `figures` list
   (`{"name", "impl", "value", "unit", "better": "higher"|"lower"}`, optionally with a
   figure's own goal: `"goal": 1.2` = dolmino at least 1.2x better than the best anchor,
   `"goal_anchor": "transformers"` = ... than that anchor),
3. takes the median per (name, impl), and per name the ratio dolmino / best anchor,
   oriented so that a ratio > 1 always means dolmino is better (value/anchor when higher
   is better, anchor/value when lower is better),
4. records the machine and versions, and writes OUT/report.json and OUT/REPORT.md.

A script that is missing, crashes, times out or prints no figures is reported as
"not run" with the reason; the other benchmarks still run. An impl named "raw" is a
ceiling (e.g. the tokenizer's own encode_batch), not an anchor: it gets its own ratio
column and is never the "best anchor"; impls named "dolmino<suffix>" are variants of
dolmino, listed but never anchors. Figures with no impl "dolmino" (e.g. native vs
fallback kernels) appear only in the all-figures table. A figure may carry
`"not_comparable": "<why>"` (an anchor that does different work: shown, never used for a
ratio) or its own `"goal": ["<=", 1.15]` (checked instead of the automatic goals).

    python -m bench.run                       # everything, 3 repeats, bench/results/
    python -m bench.run --quick               # smaller inputs, 1 repeat
    python -m bench.run --only tokenize --only build --repeats 5 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results"

# "raw" is the ceiling a wrapper can at best reach, not a competing tool.
CEILING_IMPLS = ("raw",)
DOLMINO = "dolmino"
# Other impls whose name starts with "dolmino" (e.g. "dolmino_token_ids": the same stage fed
# pre-tokenized input) are variants of dolmino, shown beside it but never its anchor.


def is_variant(impl: str) -> bool:
    return impl != DOLMINO and impl.startswith(DOLMINO)
# Goals from issue 6: data stages at least 2x the best anchor per core; tokenization
# within 1.2x of the raw tokenizer's encode_batch (ratio vs raw >= 1/1.2). A figure that
# carries its own "goal" (e.g. issue 17's trainer step: >= 1.2x both peers) is judged by it.
GOAL_VS_ANCHOR = 2.0
GOAL_VS_RAW = 1 / 1.2
# A figure may state its own goal, e.g. "goal": ["<=", 1.15] (issue 10's scale figures);
# it replaces the automatic ones above.
GOAL_OPS = {"<=": lambda value, target: value <= target, ">=": lambda value, target: value >= target}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script and the options it gets in full and in quick mode.

    Quick options are offered, not imposed: only flags that the script's `--help` lists
    are passed, so a script written elsewhere (with other option names) still runs.
    """

    name: str
    script: str
    args: tuple[str, ...] = ()
    quick_args: tuple[tuple[str, ...], ...] = ()
    needs_anchors: bool = False


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("tokenize", "bench_tokenize.py", quick_args=(("--quick",),), needs_anchors=True),
    Benchmark("encode_documents", "bench_encode_documents.py", quick_args=(("--quick",),)),
    Benchmark("filters", "bench_filters.py", quick_args=(("--quick",), ("--limit-per-file", "1000")),
              needs_anchors=True),
    Benchmark("dedup", "bench_dedup.py", quick_args=(("--quick",), ("--limit-per-file", "1000")),
              needs_anchors=True),
    Benchmark("decontamination", "bench_decontamination.py",
              quick_args=(("--quick",), ("--limit-per-file", "1000"))),
    Benchmark("stackexchange", "bench_stackexchange.py", quick_args=(("--quick",),)),
    Benchmark("build", "bench_build.py", quick_args=(("--quick",),)),
    Benchmark("scale", "bench_scale.py", quick_args=(("--quick",),)),
    Benchmark("native", "bench_native.py", quick_args=(("--quick",),)),
    Benchmark("trainer", "bench_trainer.py", quick_args=(("--quick",),)),
    Benchmark("cascade", "bench_cascade.py", quick_args=(("--quick",),)),
)


# ----------------------------------------------------------------------------- parsing


def parse_output(stdout: str) -> dict:
    """The JSON object a benchmark printed: the whole stdout, else the last `{...}` block.

    Scripts may log a line or two before their JSON (Spark, pip); the object is found by
    trying every line that starts with "{" from the end.
    """
    text = stdout.strip()
    if not text:
        raise ValueError("the script printed nothing on stdout")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
        lines = text.splitlines()
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].lstrip().startswith("{"):
                try:
                    obj = json.loads("\n".join(lines[i:]))
                    break
                except json.JSONDecodeError:
                    continue
        if obj is None:
            raise ValueError(f"no JSON object in stdout (ends with {text[-200:]!r})")
    if not isinstance(obj, dict):
        raise ValueError(f"stdout JSON is a {type(obj).__name__}, expected an object")
    return obj


def validate_figures(obj: dict) -> tuple[list[dict], list[str]]:
    """Well-formed figures from a script's output, and one message per malformed one."""
    raw = obj.get("figures")
    if raw is None:
        return [], ["no 'figures' key in the output"]
    if not isinstance(raw, list):
        return [], [f"'figures' is a {type(raw).__name__}, expected a list"]
    good, problems = [], []
    for i, fig in enumerate(raw):
        if not isinstance(fig, dict):
            problems.append(f"figures[{i}] is not an object")
            continue
        missing = [k for k in ("name", "impl", "value", "unit", "better") if k not in fig]
        if missing:
            problems.append(f"figures[{i}] lacks {missing}")
            continue
        if fig["better"] not in ("higher", "lower"):
            problems.append(f"figures[{i}] ({fig['name']}): better={fig['better']!r}, expected higher|lower")
            continue
        value = fig["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            problems.append(f"figures[{i}] ({fig['name']}, {fig['impl']}): value {value!r} is not a number")
            continue
        row = {"name": str(fig["name"]), "impl": str(fig["impl"]), "value": float(value),
               "unit": str(fig["unit"]), "better": fig["better"]}
        goal = fig.get("goal")
        if goal is not None:
            if isinstance(goal, (list, tuple)):
                # an absolute goal on the figure itself: [op, value]
                if not (len(goal) == 2 and goal[0] in GOAL_OPS
                        and isinstance(goal[1], (int, float)) and not isinstance(goal[1], bool)):
                    problems.append(f"figures[{i}] ({fig['name']}): goal {goal!r} is not [\"<=\"|\">=\", number]")
                    continue
                row["goal"] = [goal[0], float(goal[1])]
            else:
                # a ratio goal against an anchor (goal_anchor, else the best anchor)
                if isinstance(goal, bool) or not isinstance(goal, (int, float)) or not goal > 0:
                    problems.append(f"figures[{i}] ({fig['name']}): goal {goal!r} is neither a positive ratio "
                                    f"nor [\"<=\"|\">=\", number]")
                    continue
                row["goal"] = float(goal)
                if fig.get("goal_anchor") is not None:
                    row["goal_anchor"] = str(fig["goal_anchor"])
        if fig.get("not_comparable"):
            row["not_comparable"] = str(fig["not_comparable"])
        good.append(row)
    return good, problems


# ------------------------------------------------------------------------- aggregation


def median_figures(runs: list[list[dict]]) -> list[dict]:
    """One row per (name, impl): the median over the runs that produced it, plus all values.

    Units and directions must agree across runs; a disagreement is a bug in the script
    and is raised rather than averaged over.
    """
    rows: dict[tuple[str, str], dict] = {}
    for figures in runs:
        for fig in figures:
            key = (fig["name"], fig["impl"])
            row = rows.setdefault(key, {"name": fig["name"], "impl": fig["impl"], "unit": fig["unit"],
                                        "better": fig["better"], "values": []})
            for extra in ("goal", "goal_anchor", "not_comparable"):
                if extra in fig:
                    row.setdefault(extra, fig[extra])
            if (row["unit"], row["better"]) != (fig["unit"], fig["better"]):
                raise ValueError(f"figure {key}: unit/better changed between runs: "
                                 f"{row['unit']}/{row['better']} vs {fig['unit']}/{fig['better']}")
            row["values"].append(fig["value"])
    out = []
    for row in rows.values():
        row["median"] = statistics.median(row["values"])
        row["n"] = len(row["values"])
        out.append(row)
    return out


def ratio(dolmino: float, other: float, better: str) -> float | None:
    """How many times better dolmino is than `other` (> 1: dolmino better), or None if undefined."""
    if better == "higher":
        num, den = dolmino, other
    elif better == "lower":
        num, den = other, dolmino
    else:
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    if den == 0 or num < 0 or den < 0:
        return None
    return num / den


def _is_throughput(unit: str) -> bool:
    return "/s" in unit


def compare(rows: list[dict], benchmark: str | None = None) -> list[dict]:
    """Per figure name: dolmino's median against the best anchor and against "raw".

    `benchmark` applies bench/comparability.py's registry to the rows (also to figures
    measured before a rule was added there). A "raw" slower than dolmino is no ceiling: no
    goal is judged against it (the trainer's bare loop once ran unfused cross-entropy)."""
    from bench.comparability import not_comparable

    by_name: dict[str, list[dict]] = {}
    for row in rows:
        why = not_comparable(benchmark, row["name"], row["impl"]) if benchmark else None
        if why and not row.get("not_comparable"):
            row = {**row, "not_comparable": why}
        by_name.setdefault(row["name"], []).append(row)
    out = []
    for name, group in by_name.items():
        mine = [r for r in group if r["impl"] == DOLMINO]
        if not mine:
            continue
        d = mine[0]
        others = [r for r in group if r["impl"] not in (DOLMINO, *CEILING_IMPLS) and not is_variant(r["impl"])]
        anchors = [r for r in others if not r.get("not_comparable")]
        unlike = {r["impl"]: r["not_comparable"] for r in others if r.get("not_comparable")}
        raws = [r for r in group if r["impl"] in CEILING_IMPLS]
        entry = {"name": name, "unit": d["unit"], "better": d["better"], "dolmino": d["median"],
                 "anchors": {r["impl"]: r["median"] for r in anchors},
                 "variants": {r["impl"]: r["median"] for r in group if is_variant(r["impl"])},
                 "best_anchor": None, "best_anchor_value": None, "ratio": None,
                 "raw": raws[0]["median"] if raws else None, "ratio_vs_raw": None,
                 "not_comparable": {impl: {"value": next(r["median"] for r in others if r["impl"] == impl),
                                           "why": why} for impl, why in unlike.items()},
                 "goal": None, "meets_goal": None}
        if anchors:
            pick = max if d["better"] == "higher" else min
            best = pick(anchors, key=lambda r: r["median"])
            entry.update(best_anchor=best["impl"], best_anchor_value=best["median"],
                         ratio=ratio(d["median"], best["median"], d["better"]))
        if raws:
            entry["ratio_vs_raw"] = ratio(d["median"], raws[0]["median"], d["better"])
            if entry["ratio_vs_raw"] is not None and entry["ratio_vs_raw"] > 1.05:
                entry["raw_not_a_ceiling"] = True  # dolmino beats it: it is not the fastest call
        if isinstance(d.get("goal"), list):
            op, target = d["goal"]
            entry["goal"] = f"{op} {target:g}"
            entry["meets_goal"] = GOAL_OPS[op](d["median"], target)
        elif d.get("goal") is not None:
            # the figure's own ratio goal, against the anchor it names (else the best anchor)
            wanted = d.get("goal_anchor")
            target = (next((r for r in anchors if r["impl"] == wanted), None) if wanted
                      else (best if anchors else None))
            label = wanted or "best anchor"
            if target is None:
                entry["goal"] = f">= {d['goal']:g} x {label} (not measured)"
            else:
                goal_ratio = ratio(d["median"], target["median"], d["better"])
                shown = "n/a" if goal_ratio is None else f"{goal_ratio:.3g}"
                entry["goal"] = f">= {d['goal']:g} x {target['impl']} (is {shown})"
                entry["meets_goal"] = goal_ratio is not None and goal_ratio >= d["goal"]
        elif _is_throughput(d["unit"]):
            if entry["ratio_vs_raw"] is not None and not entry.get("raw_not_a_ceiling"):
                entry["goal"] = f">= {GOAL_VS_RAW:.3f} x raw (within 1.2x)"
                entry["meets_goal"] = entry["ratio_vs_raw"] >= GOAL_VS_RAW
            elif entry.get("raw_not_a_ceiling") and entry["ratio"] is None:
                entry["goal"] = "none: raw is slower than dolmino, so not a ceiling"
            elif entry["ratio"] is not None:  # also where raw proved no ceiling: the anchors still judge
                entry["goal"] = f">= {GOAL_VS_ANCHOR:g} x best anchor"
                entry["meets_goal"] = entry["ratio"] >= GOAL_VS_ANCHOR
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- running


@dataclass
class BenchResult:
    name: str
    script: str
    status: str  # ok | missing | failed | no-figures | skipped
    args: list[str] = field(default_factory=list)
    runs: list[list[dict]] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # the last successful output, minus figures

    def to_dict(self) -> dict:
        return {"name": self.name, "script": self.script, "status": self.status, "args": self.args,
                "runs_ok": len(self.runs), "wall_s": [round(w, 2) for w in self.wall_s],
                "errors": self.errors, "cores": self.details.get("cores"), "details": self.details}


def script_options(script: Path, bench: Benchmark, quick: bool, python: str) -> list[str]:
    """The script's full-mode args plus those quick options its --help knows about."""
    args = list(bench.args)
    if not quick or not bench.quick_args:
        return args
    try:
        helptext = subprocess.run([python, str(script), "--help"], capture_output=True, text=True,
                                  timeout=120, cwd=REPO, env=_child_env()).stdout
    except subprocess.TimeoutExpired:
        helptext = ""
    for option in bench.quick_args:
        if re.search(rf"(?<![\w-]){re.escape(option[0])}(?![\w-])", helptext):
            args.extend(option)
            if option[0] == "--quick":
                break  # the script's own quick mode wins over generic size flags
    return args


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env


def run_benchmark(bench: Benchmark, *, repeats: int, quick: bool, timeout_s: float,
                  python: str = sys.executable, bench_dir: Path = BENCH_DIR, log=print,
                  niceness: int = 10) -> BenchResult:
    script = bench_dir / bench.script
    if not script.exists():
        return BenchResult(bench.name, bench.script, "missing", errors=[f"{script} does not exist"])
    args = script_options(script, bench, quick, python)
    result = BenchResult(bench.name, bench.script, "ok", args=args)
    nice = ["nice", "-n", str(niceness)] if niceness and _has_nice() else []
    for i in range(repeats):
        log(f"[bench] {bench.name} run {i + 1}/{repeats}: {bench.script} {' '.join(args)}")
        started = time.perf_counter()
        try:
            proc = subprocess.run([*nice, python, str(script), *args], capture_output=True, text=True,
                                  timeout=timeout_s, cwd=REPO, env=_child_env())
        except subprocess.TimeoutExpired:
            result.errors.append(f"run {i + 1}: timed out after {timeout_s:.0f} s")
            continue
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            result.errors.append(f"run {i + 1}: exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
            continue
        try:
            obj = parse_output(proc.stdout)
        except ValueError as exc:
            result.errors.append(f"run {i + 1}: {exc}")
            continue
        figures, problems = validate_figures(obj)
        result.errors.extend(f"run {i + 1}: {p}" for p in problems)
        if not figures:
            result.status = "no-figures"
            result.details = {k: v for k, v in obj.items() if k != "figures"}
            continue
        result.runs.append(figures)
        result.wall_s.append(wall)
        result.details = {k: v for k, v in obj.items() if k != "figures"}
    if not result.runs:
        if result.status != "no-figures":
            result.status = "failed"
    else:
        result.status = "ok"
    return result


def _has_nice() -> bool:
    from shutil import which

    return which("nice") is not None


# ------------------------------------------------------------------------------ machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(anchor_versions: dict[str, str] | None = None) -> dict:
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": cpu.group(1).strip() if cpu else platform.processor() or "unknown",
        "cores": os.cpu_count(), "cores_usable": usable,
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "os": platform.platform(), "python": platform.python_version(),
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {p: _version(p) for p in ("torch", "numpy", "pyspark", "tokenizers", "zstandard", "pyarrow",
                                              "numba", "fasttext-numpy2", "datasketch")},
        "anchors": anchor_versions or {},
        "git": git_info(),
    }
    return info


def git_info() -> dict:
    """Commit and whether the tree had uncommitted changes (read-only git calls)."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}  # tracked files only


def anchor_versions(create: bool) -> dict[str, str]:
    """Each anchor's version, or 'unavailable: <why>' (the report says so; nothing crashes)."""
    try:
        from bench.anchors import ANCHORS, anchor_python, anchor_version
    except ImportError as exc:
        return {"anchors": f"unavailable: {exc}"}
    out = {}
    for name in ANCHORS:
        try:
            anchor_python(name, create=create)
            out[name] = anchor_version(name)
        except Exception as exc:  # noqa: BLE001 - any failure means "anchor not available"
            out[name] = f"unavailable: {str(exc).splitlines()[0][:200]}"
    return out


# ------------------------------------------------------------------------------ report


def build_report(results: list[BenchResult], machine: dict, options: dict, note: str = "") -> dict:
    benchmarks, figures = [], []
    for res in results:
        benchmarks.append(res.to_dict())
        if not res.runs:
            continue
        try:
            rows = median_figures(res.runs)
        except ValueError as exc:
            res.errors.append(str(exc))
            benchmarks[-1] = {**res.to_dict(), "status": "failed"}
            continue
        for row in rows:
            figures.append({"benchmark": res.name, **row})
    comparisons = recompare(figures, [res.name for res in results])
    return {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "note": note, "options": options, "machine": machine,
        "benchmarks": benchmarks, "figures": figures, "comparisons": comparisons,
    }


def merge_reports(earlier: dict, new: dict) -> dict:
    """`new`, plus every benchmark of `earlier` that `new` did not run (with its figures).

    A kept benchmark records where it was measured (`measured`: date, commit, CPU, load, options
    of its run), so a report assembled from several runs says which figure came from which. The
    CPU matters most: a shared host is not always the same model (AMD and Intel runs sat side by
    side in one report, under the newest run's CPU alone). The machine, versions and anchors in
    the header are the new run's."""
    ran = {b["name"] for b in new["benchmarks"]}
    origin = {"generated": earlier.get("generated"),
              "commit": ((earlier.get("machine") or {}).get("git") or {}).get("commit"),
              "cpu": (earlier.get("machine") or {}).get("cpu"),
              "load_avg_at_start": (earlier.get("machine") or {}).get("load_avg_at_start"),
              "options": earlier.get("options"), "note": earlier.get("note")}
    kept = [{**b, "measured": b.get("measured") or origin} for b in earlier.get("benchmarks", [])
            if b["name"] not in ran]
    keep = {b["name"] for b in kept}
    order = [b["name"] for b in earlier.get("benchmarks", [])]
    benchmarks = sorted([*kept, *new["benchmarks"]],
                        key=lambda b: (order.index(b["name"]) if b["name"] in order else len(order)))
    figures = [f for f in earlier.get("figures", []) if f["benchmark"] in keep] + new["figures"]
    # Anchor versions of the kept benchmarks' runs stay in the header (a merge showed none, then
    # the new run's for every anchor; found by reviewers).
    before = (earlier.get("machine") or {}).get("anchors") or {}
    anchors = dict((new.get("machine") or {}).get("anchors") or {})
    for name, version in before.items():
        if keep and anchors.get(name) not in (None, version):
            anchors[name] = f"{anchors[name]} (this run); {version} (kept benchmarks)"
        elif name not in anchors:
            anchors[name] = version
    return {**new, "machine": {**new["machine"], "anchors": anchors}, "benchmarks": benchmarks, "figures": figures,
            "comparisons": recompare(figures, [b["name"] for b in benchmarks]),
            "merged": {"kept_from_earlier": sorted(keep), "ran_now": sorted(ran)}}


def recompare(figures: list[dict], order: list[str]) -> list[dict]:
    """The comparisons of `figures`, per benchmark in `order`, with today's rules: for a fresh
    report and for a merged or re-rendered one alike (a kept run's comparisons were copied as
    they were, and a rule added since did not apply to them)."""
    out = []
    for name in order:
        rows = [{k: v for k, v in f.items() if k != "benchmark"} for f in figures if f["benchmark"] == name]
        out += [{"benchmark": name, **entry} for entry in compare(rows, name)]
    return out


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.3g}"
    return str(x)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# dolmino benchmark report", ""]
    if report.get("note"):
        lines += [f"> {report['note']}", ""]
    opts = report["options"]
    lines += [f"Generated {report['generated']} with `python -m bench.run"
              + (" --quick" if opts.get("quick") else "")
              + (f" --nice {opts['nice']}" if opts.get("nice", 10) != 10 else "")
              + "".join(f" --only {n}" for n in opts.get("only") or [])
              + (" --merge" if report.get("merged") else "") + "` (each figure is the median of its "
              "benchmark's runs: column \"runs\" below). A ratio > 1 means dolmino is better, whatever "
              "the direction of the unit: value/anchor when higher is better, anchor/value when lower is.", ""]
    git = m.get("git") or {}
    lines += ["## Machine", "", "(of the benchmarks run now; a kept one's CPU is in its \"measured\" column)", "",
              "| | |", "|---|---|",
              f"| CPU | {_cell(m.get('cpu'))} ({m.get('cores')} cores, {m.get('cores_usable')} usable) |",
              f"| memory | {m.get('memory_gib')} GiB |", f"| OS | {_cell(m.get('os'))} |",
              f"| Python | {m.get('python')} |",
              f"| load average at start | {_cell(m.get('load_avg_at_start'))} |"]
    for pkg, ver in (m.get("versions") or {}).items():
        lines.append(f"| {pkg} | {ver or 'not installed'} |")
    for pkg, ver in (m.get("anchors") or {}).items():
        lines.append(f"| anchor {pkg} | {_cell(ver)} |")
    lines += [f"| git commit | {git.get('commit') or 'unknown'}{' (uncommitted changes)' if git.get('dirty') else ''} |", ""]

    merged = report.get("merged")
    if merged:
        lines += [f"Benchmarks run now: {', '.join(merged['ran_now'])}. Kept from earlier runs (column "
                  f"\"measured\"): {', '.join(merged['kept_from_earlier']) or 'none'}.", ""]
    # A benchmark of `make bench` that no run put here was simply missing from the tables (REPORT.md had
    # no encode_documents and did not say so), which reads as if everything had run.
    present = {b["name"] for b in report["benchmarks"]}
    absent = [b.name for b in BENCHMARKS if b.name not in present]
    if absent:
        lines += [f"Not in this report (neither run now nor kept from an earlier run): {', '.join(absent)}.", ""]
    lines += ["## Benchmarks", "", "| benchmark | status | runs | wall s (each) | cores | args | measured | problems |",
              "|---|---|---|---|---|---|---|---|"]
    for b in report["benchmarks"]:
        errs = "; ".join(b["errors"])[:300]
        when = "this run"
        if b.get("measured"):
            m_ = b["measured"]
            when = (f"earlier: {m_.get('generated') or '?'} @ {(m_.get('commit') or '?')[:10]}, "
                    f"CPU {_cell(m_.get('cpu') or 'not recorded')}")
        lines.append(f"| {b['name']} | {b['status']} | {b['runs_ok']} | {', '.join(f'{w:.0f}' for w in b['wall_s']) or '–'} "
                     f"| {_fmt(b.get('cores'))} | `{' '.join(b['args'])}` | {when} | {_cell(errs) or '–'} |")
    lines.append("")

    if report["comparisons"]:
        lines += ["## dolmino against the anchors", "",
                  "| benchmark | figure | unit | dolmino | best anchor | anchor value | ratio | raw | ratio vs raw | goal | met |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in report["comparisons"]:
            anchor = c['best_anchor'] or '–'
            if not c["best_anchor"] and c.get("not_comparable"):
                anchor = "– (" + ", ".join(f"{impl} {_fmt(v['value'])}: not comparable" for impl, v in
                                           c["not_comparable"].items()) + ")"
            lines.append(f"| {c['benchmark']} | {_cell(c['name'])} | {_cell(c['unit'])} ({c['better']}) | {_fmt(c['dolmino'])} "
                         f"| {_cell(anchor)} | {_fmt(c['best_anchor_value'])} | {_fmt(c['ratio'])} "
                         f"| {_fmt(c['raw'])} | {_fmt(c['ratio_vs_raw'])} | {c['goal'] or '–'} | {_fmt(c['meets_goal'])} |")
        lines.append("")
        unlike = [(c, impl, v) for c in report["comparisons"] for impl, v in (c.get("not_comparable") or {}).items()]
        if unlike:
            lines += ["Measured but not compared (the two sides do different work, so no ratio is taken):", ""]
            for c, impl, v in unlike:
                lines.append(f"- {c['benchmark']} / {_cell(c['name'])}: {impl} {_fmt(v['value'])} {_cell(c['unit'])}: "
                             f"{_cell(v['why'])}")
            lines.append("")

    if report["figures"]:
        lines += ["## All figures (median of runs)", "", "| benchmark | figure | impl | median | unit | better | runs |",
                  "|---|---|---|---|---|---|---|"]
        for f in sorted(report["figures"], key=lambda f: (f["benchmark"], f["name"], f["impl"] != DOLMINO, f["impl"])):
            lines.append(f"| {f['benchmark']} | {_cell(f['name'])} | {f['impl']} | {_fmt(f['median'])} | {_cell(f['unit'])} "
                         f"| {f['better']} | {', '.join(_fmt(v) for v in f['values'])} |")
        lines.append("")
    notes = [(b["name"], b["details"].get("notes")) for b in report["benchmarks"] if b.get("details", {}).get("notes")]
    if notes:
        lines += ["## Notes from the benchmarks", ""]
        for name, items in notes:
            for item in (items if isinstance(items, list) else [items]):
                lines.append(f"- **{name}**: {_cell(item)}")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "REPORT.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


# -------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller inputs and 1 repeat unless --repeats is given")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help=f"run only this benchmark (repeatable): {', '.join(b.name for b in BENCHMARKS)}")
    p.add_argument("--repeats", type=int, default=None, help="runs per benchmark (default 3, --quick 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report directory (default {DEFAULT_OUT})")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark run before it is killed")
    p.add_argument("--note", default="", help="a line for the report header (e.g. 'shared machine, noisy')")
    p.add_argument("--merge", action="store_true",
                   help="keep the benchmarks of OUT/report.json that this run does not rerun (with --only)")
    p.add_argument("--nice", type=int, default=10,
                   help="niceness of the benchmark processes (0: compete evenly with a loaded machine's other work)")
    p.add_argument("--no-anchor-setup", action="store_true",
                   help="do not create missing anchor venvs (benchmarks then report those anchors as unavailable)")
    p.add_argument("--render", action="store_true",
                   help="run nothing: derive OUT/report.json's comparisons again with today's rules (bench/"
                        "comparability.py, the ceiling check) and rewrite REPORT.md (--note replaces its note)")
    args = p.parse_args(argv)
    known = {b.name for b in BENCHMARKS}
    unknown = [n for n in args.only if n not in known]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; known: {sorted(known)}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        report = json.loads((args.out / "report.json").read_text())
        report["comparisons"] = recompare(report["figures"], [b["name"] for b in report["benchmarks"]])
        if args.note:
            report["note"] = args.note
        json_path, md_path = write_report(report, args.out)
        print(f"[bench] rewrote {md_path} and {json_path} from the stored figures")
        return 0
    selected = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    anchors = anchor_versions(create=not args.no_anchor_setup) if any(b.needs_anchors for b in selected) else {}
    machine = machine_info(anchors)
    results = [run_benchmark(b, repeats=args.repeats, quick=args.quick, timeout_s=args.timeout, niceness=args.nice)
               for b in selected]
    options = {"quick": args.quick, "repeats": args.repeats, "only": args.only, "timeout_s": args.timeout,
               "nice": args.nice}
    report = build_report(results, machine, options, note=args.note)
    earlier = args.out / "report.json"
    if args.merge and earlier.exists():
        report = merge_reports(json.loads(earlier.read_text()), report)
    json_path, md_path = write_report(report, args.out)
    print(f"[bench] wrote {md_path} and {json_path}")
    for b in report["benchmarks"]:
        print(f"[bench] {b['name']}: {b['status']}" + (f" ({b['errors'][0][:200]})" if b["errors"] and b["status"] != "ok" else ""))
    return 0 if any(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
