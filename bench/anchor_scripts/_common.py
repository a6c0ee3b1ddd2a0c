"""Helpers shared by the anchor scripts (they run in the anchors' venvs, not dolmino's, so
they cannot import the dolmino package; the script directory is on their sys.path)."""

from __future__ import annotations

import json
import resource
import time


def load_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def time_flags(fn, docs) -> tuple[float, list[int]]:
    """Seconds for `fn` over all docs (after one untimed warm-up call) and the indices it flags."""
    fn(docs[0])
    start = time.perf_counter()
    flagged = [i for i, d in enumerate(docs) if fn(d)]
    return time.perf_counter() - start, flagged


def self_peak_rss_kib() -> int:
    """This process's resident high-water mark since it started (VmHWM), in KiB.

    Not getrusage(RUSAGE_SELF).ru_maxrss: Linux carries the parent's high-water mark across
    fork + exec into the child's, so a script started by a large bench process would report
    the bench's size. Falls back to ru_maxrss where /proc is missing.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_fields() -> dict:
    """Peak resident set of this process and of its children (KiB), as the bench reports them.

    A child's ru_maxrss also starts from this process's high-water mark at the time it was
    started (see self_peak_rss_kib), which is never above this process's own peak: the
    maximum of the two is still the largest peak of any one process."""
    own = self_peak_rss_kib()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_kib": max(own, children), "peak_rss_self_kib": own, "peak_rss_children_kib": children}


def cpu_seconds() -> float:
    """User + system CPU time of this process and of the children it waited for (pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
