"""Benchmark the Stack Exchange Posts.xml reader (filters/stackexchange.py): throughput and memory.

    python bench/bench_stackexchange.py              # 1x, 8x and 32x the embedded dump
    python bench/bench_stackexchange.py --quick      # 1x and 8x

Input: the embedded default corpus's Posts.xml (real TriviaQA / NQ questions and answers in
the dump schema, answers before and after their questions), repeated N times with every
Id / ParentId / AcceptedAnswerId shifted per copy, so an Nx file holds N times the posts with
the same structure. Each size runs `iter_stackexchange` (both passes: candidate pairs, then
parse, pair, filter and HTML-to-text) in a fresh interpreter, so its peak RSS (ru_maxrss)
is the reader's own: a streaming reader keeps it flat as the file grows, which is what a
100 GB stackoverflow Posts.xml needs. Figures are per core (one process). No anchor: neither
dolma nor datatrove reads Posts.xml.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TMP = REPO / "bench" / "results" / "tmp" / "stackexchange"
_IDS = re.compile(rb'(\s(?:Id|ParentId|AcceptedAnswerId)=")(\d+)(")')


def scaled_posts(base: bytes, copies: int, out: Path) -> Path:
    """`base` (one Posts.xml) repeated `copies` times with its ids shifted per copy."""
    lines = base.split(b"\n")
    rows = [line for line in lines if line.lstrip().startswith(b"<row")]
    shift = 1 + max(int(m.group(2)) for line in rows for m in _IDS.finditer(line))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        fh.write(b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
        for copy in range(copies):
            offset = copy * shift
            for line in rows:
                fh.write(_IDS.sub(lambda m: m.group(1) + str(int(m.group(2)) + offset).encode() + m.group(3), line))
                fh.write(b"\n")
        fh.write(b"</posts>\n")
    return out


def _child(path: str) -> None:
    """Runs in a fresh interpreter: read one Posts.xml, print timings, counts and peak RSS as JSON."""
    import resource

    from filters.stackexchange import StackExchangeStats, iter_stackexchange

    stats = StackExchangeStats()
    start = time.perf_counter()
    kept = sum(1 for _ in iter_stackexchange(path, stats=stats))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "kept": kept, "rows": stats.rows, "questions": stats.questions_seen,
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}))


def measure(path: Path) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            f"from bench.bench_stackexchange import _child; _child({str(path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"reading {path} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["mb"] = round(path.stat().st_size / 1e6, 2)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="sizes 1x and 8x only")
    ap.add_argument("--scales", default=None, help="comma-separated copies of the embedded dump (default 1,8,32)")
    args = ap.parse_args(argv)
    scales = [int(s) for s in (args.scales or ("1,8" if args.quick else "1,8,32")).split(",")]

    from dolmino.default_corpus import _posts_xml

    base = _posts_xml()
    points = []
    for scale in scales:
        path = scaled_posts(base, scale, TMP / f"{scale}x" / "Posts.xml")
        points.append({"scale": scale, **measure(path)})
        path.unlink()
    largest = points[-1]
    figures = [
        {"name": "stackexchange: MB/s per core", "impl": "dolmino", "unit": "MB/s", "better": "higher",
         "value": round(largest["mb"] / largest["seconds"], 2)},
        {"name": "stackexchange: rows/s per core", "impl": "dolmino", "unit": "rows/s", "better": "higher",
         "value": round(largest["rows"] / largest["seconds"], 1)},
    ]
    for p in points:
        figures.append({"name": f"stackexchange: peak RSS at {p['scale']}x ({p['mb']} MB)", "impl": "dolmino",
                        "unit": "MB", "better": "lower", "value": p["peak_rss_mb"]})
    growth = round(largest["peak_rss_mb"] / points[0]["peak_rss_mb"], 3)
    out = {"benchmark": "stackexchange", "cores": 1, "points": points, "figures": figures,
           "notes": [f"peak RSS grows {growth}x while the file grows {largest['mb'] / points[0]['mb']:.0f}x "
                     "(streaming: pending questions/answers only); no anchor reads Posts.xml"]}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
