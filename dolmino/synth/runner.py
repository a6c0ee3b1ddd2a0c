"""Run a generator as a Spark job: one task per partition, resumable, cached on disk.

Layout of the output directory:

    part-00000.jsonl.zst          Dolma documents (a normal source for build_mix)
    part-00000.done.json          the partition's stats + config hash + sha256 of the part
    rejected/part-00000.jsonl.zst every refused item with its reason (never silently lost)
    quarantine/part-00000.jsonl.zst input lines a transforming generator could not read
    synth-report.json             totals: attempted = kept + rejected + quarantined (by reason)

A partition is written to temporary names and renamed; its done-file is written last and
is the commit marker. A rerun skips every partition whose done-file carries the same
config hash and whose part file still has the recorded sha256, so a killed job resumes
where it stopped and an LLM is never asked twice for the same item. Changing anything in
the generator's config, the seed or the partition count changes the hash and regenerates.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter

import zstandard

from dolmino.synth.base import config_hash, is_quarantine, is_rejection, is_request_stats, partition_range

PART_RE = re.compile(r"^part-(\d{5})\.(jsonl\.zst|done\.json)$")
REPORT_NAME = "synth-report.json"


class SynthRunError(RuntimeError):
    pass


def part_name(partition: int) -> str:
    return f"part-{partition:05d}.jsonl.zst"


def done_name(partition: int) -> str:
    return f"part-{partition:05d}.done.json"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cached_stats(out_dir: str, partition: int, chash: str) -> dict | None:
    """The done-file's stats if this partition is complete for this config, else None."""
    done = os.path.join(out_dir, done_name(partition))
    part = os.path.join(out_dir, part_name(partition))
    try:
        with open(done) as fh:
            stats = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(stats, dict) or stats.get("config_hash") != chash or not os.path.exists(part):
        return None
    if os.path.getsize(part) != stats.get("bytes") or _sha256(part) != stats.get("sha256"):
        return None
    return stats


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _zstd_lines(records) -> bytes:
    """Deterministic single-frame zstd of JSON lines (same records -> same bytes)."""
    payload = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
    return zstandard.ZstdCompressor(level=10, write_checksum=True).compress(payload)


def run_partition(generator, partition: int, num_partitions: int, seed: int, out_dir: str, chash: str) -> dict:
    """Generate (or reuse) one partition; returns its stats."""
    stats = cached_stats(out_dir, partition, chash)
    if stats is not None:
        return {**stats, "cached": True}
    started = time.time()
    docs, rejected, quarantined, requests = [], [], [], Counter()
    reasons: Counter = Counter()
    quarantine_reasons: Counter = Counter()
    for record in generator.generate(partition, num_partitions, seed):
        if is_request_stats(record):
            requests.update(record["request_stats"])
        elif is_rejection(record):
            reasons[record["rejected"]] += 1
            rejected.append(record)
        elif is_quarantine(record):
            quarantine_reasons[record["quarantined"]] += 1
            quarantined.append(record)
        else:
            docs.append(record)
    attempted = len(docs) + len(rejected) + len(quarantined)
    expected = len(partition_range(partition, num_partitions, generator.num_docs))
    if attempted != expected:
        raise SynthRunError(f"partition {partition}: generator yielded {attempted} items for {expected} attempts")
    data = _zstd_lines(docs)
    part = os.path.join(out_dir, part_name(partition))
    os.makedirs(os.path.join(out_dir, "rejected"), exist_ok=True)
    _write_atomic(os.path.join(out_dir, "rejected", part_name(partition)), _zstd_lines(rejected))
    os.makedirs(os.path.join(out_dir, "quarantine"), exist_ok=True)
    _write_atomic(os.path.join(out_dir, "quarantine", part_name(partition)), _zstd_lines(quarantined))
    _write_atomic(part, data)
    stats = {"partition": partition, "num_partitions": num_partitions, "generator": generator.name, "seed": seed,
             "config_hash": chash, "file": part_name(partition), "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "attempted": attempted, "kept": len(docs),
             "rejected": dict(sorted(reasons.items())), "quarantined": dict(sorted(quarantine_reasons.items())),
             "requests": dict(sorted(requests.items())), "elapsed_s": round(time.time() - started, 3)}
    _write_atomic(os.path.join(out_dir, done_name(partition)), json.dumps(stats, indent=1).encode())
    return {**stats, "cached": False}


def _remove_stale_parts(out_dir: str, num_partitions: int) -> list[str]:
    """Parts numbered beyond this run's partition count are from an older layout: remove them."""
    removed = []
    for name in sorted(os.listdir(out_dir)):
        m = PART_RE.match(name)
        if m and int(m.group(1)) >= num_partitions:
            os.remove(os.path.join(out_dir, name))
            removed.append(name)
            if m.group(2) == "jsonl.zst":
                for side in ("rejected", "quarantine"):
                    stale = os.path.join(out_dir, side, name)
                    if os.path.exists(stale):
                        os.remove(stale)
    return removed


def summarize(generator, stats: list[dict], seed: int, num_partitions: int, chash: str) -> dict:
    rejected: Counter = Counter()
    quarantined: Counter = Counter()
    requests: Counter = Counter()
    for s in stats:
        rejected.update(s["rejected"])
        quarantined.update(s.get("quarantined", {}))  # done-files written before quarantine existed
        requests.update(s["requests"])
    attempted = sum(s["attempted"] for s in stats)
    kept = sum(s["kept"] for s in stats)
    if attempted != kept + sum(rejected.values()) + sum(quarantined.values()):
        raise SynthRunError(f"accounting does not balance: attempted {attempted} != kept {kept} + rejected "
                            f"{sum(rejected.values())} + quarantined {sum(quarantined.values())}")
    bad = sum(requests.get(k, 0) for k in ("bad_json", "missing_choices", "empty_content"))
    return {"generator": generator.name, "config": generator.config(), "config_hash": chash, "seed": seed,
            "num_partitions": num_partitions, "attempted": attempted, "kept": kept,
            "rejected": dict(sorted(rejected.items())), "quarantined": dict(sorted(quarantined.items())),
            "requests": dict(sorted(requests.items())), "bad_responses": bad,
            "failed_requests": requests.get("failed", 0),
            "partitions_generated": sorted(s["partition"] for s in stats if not s["cached"]),
            "partitions_cached": sorted(s["partition"] for s in stats if s["cached"]),
            "files": [part_name(p) for p in range(num_partitions)]}


def run(generator, out_dir: str, num_partitions: int, seed: int, spark) -> dict:
    """Generate `generator`'s documents into `out_dir` with Spark; returns (and writes) the report.

    `out_dir` must be visible to every executor (local disk in local mode, a shared
    filesystem on a cluster).
    """
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    os.makedirs(out_dir, exist_ok=True)
    out_dir = os.path.abspath(out_dir)
    _remove_stale_parts(out_dir, num_partitions)
    chash = config_hash(generator, num_partitions, seed)
    sc = spark.sparkContext

    def task(index, _items):
        yield run_partition(generator, index, num_partitions, seed, out_dir, chash)

    stats = (sc.parallelize(range(num_partitions), num_partitions)
             .mapPartitionsWithIndex(task).collect())
    stats.sort(key=lambda s: s["partition"])
    report = summarize(generator, stats, seed, num_partitions, chash)
    _write_atomic(os.path.join(out_dir, REPORT_NAME), json.dumps(report, indent=1, sort_keys=True).encode())
    return report
