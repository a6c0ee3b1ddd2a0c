"""Run a generator as a Spark job: one task per partition, resumable, cached on disk.

Layout of the output directory:

    part-00000.jsonl.zst          Dolma documents (a normal source for build_mix)
    part-00000.done.json          the partition's stats + config hash + sha256 of the part
    rejected/part-00000.jsonl.zst every refused item with its reason (never silently lost)
    quarantine/part-00000.jsonl.zst input lines a transforming generator could not read
    synth-report.json             totals: attempted = kept + rejected + quarantined (by reason)
    .progress/00000.json          while a run shows progress: items done and requests made
                                  so far per partition (removed when the run ends)

`out_dir` is a local directory or an s3:// prefix. On a cluster whose nodes share no
filesystem it must be s3://: each executor writes its own partitions there (one PUT per
file: atomic), and the driver then checks that it sees every partition at the size its
executor reported, and fails naming the first missing one when it does not (a local path
on such a cluster, where each partition landed on the disk of the node that made it).
Progress (below) is shown for a local `out_dir` only.

A partition is written to temporary names and renamed; its done-file is written last and
is the commit marker. A rerun skips every partition whose done-file carries the same
config hash and whose part file still has the recorded sha256, so a killed job resumes
where it stopped and an LLM is never asked twice for the same item. Changing anything in
the generator's config, the seed or the partition count changes the hash and regenerates
(`run`; the command line refuses such an out_dir instead: `check_out_dir` with a seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections import Counter

import zstandard

from dolmino.checksums import sha256_file
from dolmino.s3 import is_s3
from dolmino.storage import delete, join, list_files, read_if_exists, write_bytes
from dolmino.synth.base import (accepted_hashes, config_hash, is_quarantine, is_rejection, is_request_stats,
                                partition_range)

PART_RE = re.compile(r"^part-(\d{5})\.(jsonl\.zst|done\.json)$")
REPORT_NAME = "synth-report.json"
PROGRESS_DIR = ".progress"


class SynthRunError(RuntimeError):
    pass


def part_name(partition: int) -> str:
    return f"part-{partition:05d}.jsonl.zst"


def done_name(partition: int) -> str:
    return f"part-{partition:05d}.done.json"


def cached_stats(out_dir: str, partition: int, chash: str | frozenset) -> dict | None:
    """The done-file's stats if this partition is complete for this config (`chash`, or any of
    a set of hashes it goes by), else None."""
    try:
        stats = json.loads(read_if_exists(join(out_dir, done_name(partition))) or b"null")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    accepted = {chash} if isinstance(chash, str) else chash
    if not isinstance(stats, dict) or stats.get("config_hash") not in accepted:
        return None
    part = join(out_dir, part_name(partition))
    if is_s3(part):
        data = read_if_exists(part)
        if data is None or len(data) != stats.get("bytes") or hashlib.sha256(data).hexdigest() != stats.get("sha256"):
            return None
        return stats
    if not os.path.exists(part) or os.path.getsize(part) != stats.get("bytes") \
            or sha256_file(part) != stats.get("sha256"):
        return None
    return stats


def _listing(out_dir: str) -> dict[str, int]:
    """name -> size of the files directly in out_dir (partition files, not rejected/ or quarantine/)."""
    return {name: size for name, size in list_files(out_dir).items() if "/" not in name}


def check_visible(out_dir: str, stats: list[dict]) -> None:
    """Every partition the executors reported is where the driver looks, at the reported size."""
    found = _listing(out_dir)
    missing = [s["file"] for s in stats if s.get("committed", True)
               and (found.get(s["file"]) != s["bytes"] or done_name(s["partition"]) not in found)]
    if missing:
        raise SynthRunError(
            f"{len(missing)} of {len(stats)} partitions the executors wrote are not visible at {out_dir} (first: "
            f"{missing[0]}); on a cluster without a shared filesystem, write --out to s3:// (or a filesystem "
            f"mounted at the same path on every node). No {REPORT_NAME} was written.")


def _zstd_lines(records) -> bytes:
    """Deterministic single-frame zstd of JSON lines (same records -> same bytes)."""
    payload = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
    return zstandard.ZstdCompressor(level=10, write_checksum=True).compress(payload)


class PartitionProgress:
    """Executor side of the progress display: items attempted (and LLM requests made) so far
    in one partition, in `<progress_dir>/<partition>.json`, rewritten at most every
    `interval` seconds. Spark reports nothing about a task until it ends, and one LLM
    partition can take hours, so the driver reads these files instead."""

    def __init__(self, progress_dir: str, partition: int, expected: int, generator=None,
                 interval: float = 0.5, clock=time.monotonic):
        self.path = os.path.join(progress_dir, f"{partition:05d}.json")
        self.expected, self.generator, self.interval, self.clock = expected, generator, interval, clock
        self.attempted = 0
        self._last = float("-inf")

    def requests(self) -> int:
        live = getattr(self.generator, "live_request_counts", None)
        return int(live().get("requests", 0)) if live is not None else 0

    def item(self) -> None:
        self.attempted += 1
        if self.clock() - self._last >= self.interval:
            self.write()

    def write(self, done: bool = False, cached: bool = False) -> None:
        self._last = self.clock()
        record = {"attempted": self.attempted, "expected": self.expected, "requests": self.requests(),
                  "done": done, "cached": cached}
        write_bytes(self.path, json.dumps(record).encode())


def read_progress(progress_dir: str) -> dict:
    """The driver's view: items attempted, partitions finished and requests, summed over the
    partition files present (a partition not started yet has none)."""
    total = {"attempted": 0, "done": 0, "requests": 0}
    try:
        names = os.listdir(progress_dir)
    except FileNotFoundError:
        return total
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(progress_dir, name)) as fh:
                record = json.load(fh)
        except (OSError, json.JSONDecodeError):
            continue  # being replaced right now: counted at the next poll
        total["attempted"] += int(record.get("attempted", 0))
        total["done"] += bool(record.get("done"))
        total["requests"] += int(record.get("requests", 0))
    return total


class _ProgressPoller:
    """Driver side: a thread that moves a tqdm bar to what the partition files say."""

    def __init__(self, progress_dir: str, bar, num_partitions: int, interval: float = 0.5):
        self.progress_dir, self.bar, self.num_partitions, self.interval = progress_dir, bar, num_partitions, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="synth-progress", daemon=True)

    def poll(self) -> None:
        seen = read_progress(self.progress_dir)
        self.bar.n = seen["attempted"]
        postfix = f"partitions {seen['done']}/{self.num_partitions}"
        if seen["requests"]:
            postfix += f", requests {seen['requests']:,}"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> "_ProgressPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


def run_partition(generator, partition: int, num_partitions: int, seed: int, out_dir: str, chash: str,
                  progress_dir: str | None = None, accepted: frozenset | None = None) -> dict:
    """Generate (or reuse) one partition; returns its stats. With `progress_dir`, also
    reports items done so far there (see PartitionProgress). `accepted`: the hashes a done-file
    may hold to be reused (default: `chash` alone); a new one gets `chash`."""
    expected = len(partition_range(partition, num_partitions, generator.num_docs))
    tracker = PartitionProgress(progress_dir, partition, expected, generator) if progress_dir else None
    stats = cached_stats(out_dir, partition, accepted or chash)
    if stats is not None:
        if tracker is not None:
            tracker.attempted = expected
            tracker.write(done=True, cached=True)
        return {**stats, "cached": True}
    started = time.time()
    docs, rejected, quarantined, requests = [], [], [], Counter()
    reasons: Counter = Counter()
    quarantine_reasons: Counter = Counter()
    for record in generator.generate(partition, num_partitions, seed):
        if is_request_stats(record):
            requests.update(record["request_stats"])
            continue
        if is_rejection(record):
            reasons[record["rejected"]] += 1
            rejected.append(record)
        elif is_quarantine(record):
            quarantine_reasons[record["quarantined"]] += 1
            quarantined.append(record)
        else:
            docs.append(record)
        if tracker is not None:
            tracker.item()
    attempted = len(docs) + len(rejected) + len(quarantined)
    if attempted != expected:
        raise SynthRunError(f"partition {partition}: generator yielded {attempted} items for {expected} attempts")
    data = _zstd_lines(docs)
    part = join(out_dir, part_name(partition))
    # Requests made, none answered (an endpoint down the whole time): nothing was billed, so
    # nothing is cached, not even an empty part a build's glob would take; the rerun asks again.
    # Such a partition used to be kept as done and never asked again (found by a tester). An
    # answer that was unusable (a 200 without content) may have been billed: that one is kept.
    answered = not (requests.get("requests", 0) and not requests.get("responses", 0))
    write_bytes(join(out_dir, "rejected", part_name(partition)), _zstd_lines(rejected), sync=True)
    write_bytes(join(out_dir, "quarantine", part_name(partition)), _zstd_lines(quarantined), sync=True)
    if answered:
        write_bytes(part, data, sync=True)
    else:
        delete(out_dir, [done_name(partition), part_name(partition)])  # another config's, left by an older run
    stats = {"partition": partition, "num_partitions": num_partitions, "generator": generator.name, "seed": seed,
             "config_hash": chash, "file": part_name(partition), "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "attempted": attempted, "kept": len(docs),
             "rejected": dict(sorted(reasons.items())), "quarantined": dict(sorted(quarantine_reasons.items())),
             "requests": dict(sorted(requests.items())), "elapsed_s": round(time.time() - started, 3)}
    if answered:
        write_bytes(join(out_dir, done_name(partition)), json.dumps(stats, indent=1).encode(), sync=True)
    if tracker is not None:
        tracker.write(done=True)
    return {**stats, "cached": False, "committed": answered}


def input_paths(generator) -> list[str]:
    """The files a generator reads (its optional `input_paths()`; none for the pure ones)."""
    return list(getattr(generator, "input_paths", list)())


def _location(path: str) -> str:
    """A path as a place to compare: symlinks resolved (local), no trailing slash (s3://)."""
    return path.rstrip("/") if is_s3(path) else os.path.realpath(path)


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if is_s3(path) else os.path.dirname(os.path.abspath(path))


def _done_stats(out_dir: str, partition: int) -> dict | None:
    try:
        stats = json.loads(read_if_exists(join(out_dir, done_name(partition))) or b"null")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return stats if isinstance(stats, dict) else None


def check_out_dir(generator, out_dir: str, num_partitions: int, seed: int | None = None) -> list[int]:
    """Refuse an `out_dir` this run would damage, before anything is written or removed, and
    return the partitions numbered >= num_partitions that an earlier run of this generator
    left there (an older layout, for `run` to remove).

    With `seed` (the command line), it also refuses an `out_dir` holding a done-file of another
    configuration (config hash): its partitions would be replaced one by one, and a run stopped
    half-way left both configurations mixed there without a report (found by a tester).

    A run overwrites part-NNNNN files below num_partitions and removes those above it, so it
    refuses (SynthRunError) an `out_dir` holding any of its input files under such a name
    (`--input 'D/part-*.jsonl.zst' --out D` would delete its own input), and a part file
    above num_partitions that no done-file of this generator vouches for (same name, size
    and generator): a file synth did not write, or another generator's, is never deleted.
    """
    out = _location(out_dir)
    written = {out} | {_location(join(out_dir, side)) for side in ("rejected", "quarantine")}
    for path in input_paths(generator):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if (PART_RE.match(name) or name == REPORT_NAME) and _location(_parent(path)) in written:
            raise SynthRunError(f"input {path} is in --out {out_dir}, where this run overwrites and removes "
                                f"part-NNNNN files: give another --out")
    if not is_s3(out_dir) and not os.path.isdir(out_dir):
        return []
    files = _listing(out_dir)
    if seed is not None:
        _check_one_config(generator, out_dir, files, num_partitions, seed)
    stale: dict[int, dict | None] = {}
    for name in sorted(files):
        m = PART_RE.match(name)
        if not m or int(m.group(1)) < num_partitions:
            continue
        partition = int(m.group(1))
        if partition not in stale:
            stale[partition] = _done_stats(out_dir, partition)
        stats = stale[partition]
        if stats is not None and stats.get("generator") != generator.name:
            raise SynthRunError(f"{join(out_dir, name)} was written by generator {stats.get('generator')!r}, not "
                                f"{generator.name!r}, and a run with --partitions {num_partitions} would remove it: "
                                f"give another --out (or remove it yourself)")
        vouched = stats is not None and (m.group(2) == "done.json"
                                         or (stats.get("file") == name and stats.get("bytes") == files[name]))
        if not vouched:
            raise SynthRunError(f"{join(out_dir, name)} was not written by a synth run (no {done_name(partition)} "
                                f"of {generator.name} with its name and size), and a run with --partitions "
                                f"{num_partitions} would remove it: give another --out (or remove it yourself)")
    return sorted(stale)


def _check_one_config(generator, out_dir: str, files: dict[str, int], num_partitions: int, seed: int) -> None:
    chash = config_hash(generator, num_partitions, seed)
    accepted = accepted_hashes(generator, num_partitions, seed)
    for name in sorted(files):
        m = PART_RE.match(name)
        if not m or m.group(2) != "done.json":
            continue
        stats = _done_stats(out_dir, int(m.group(1)))
        if stats is not None and stats.get("config_hash") in accepted:
            continue
        theirs = (f"{stats.get('generator')}, seed {stats.get('seed')}, {stats.get('num_partitions')} partitions, "
                  f"config hash {str(stats.get('config_hash'))[:12]}" if stats is not None else "unreadable")
        raise SynthRunError(f"--out {out_dir} holds {name} of another configuration ({theirs}; this run: "
                            f"{generator.name}, seed {seed}, {num_partitions} partitions, config hash {chash[:12]}): "
                            "a run would replace its partitions one by one, mixing both if stopped; give another "
                            "--out, or remove that one first")


def _remove_stale_parts(out_dir: str, partitions: list[int]) -> None:
    """Remove what an earlier run with more partitions wrote above this run's count (the
    done-file last: while any of it is left, the done-file still vouches for it)."""
    for partition in partitions:
        name = part_name(partition)
        delete(out_dir, [name, f"rejected/{name}", f"quarantine/{name}"])
        delete(out_dir, [done_name(partition)])


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
    bad = sum(requests.get(k, 0) for k in ("bad_json", "missing_choices", "empty_content", "lone_surrogate"))
    return {"generator": generator.name, "config": generator.config(), "config_hash": chash, "seed": seed,
            "num_partitions": num_partitions, "attempted": attempted, "kept": kept,
            "rejected": dict(sorted(rejected.items())), "quarantined": dict(sorted(quarantined.items())),
            "requests": dict(sorted(requests.items())), "bad_responses": bad,
            "failed_requests": requests.get("failed", 0),
            "partitions_generated": sorted(s["partition"] for s in stats
                                           if not s["cached"] and s.get("committed", True)),
            "partitions_cached": sorted(s["partition"] for s in stats if s["cached"]),
            "partitions_unanswered": sorted(s["partition"] for s in stats if not s.get("committed", True)),
            # what the unanswered partitions' own requests got: a refusal there names its cause
            "unanswered_requests": dict(sorted(sum((Counter(s["requests"]) for s in stats
                                                    if not s.get("committed", True)), Counter()).items())),
            "files": [part_name(s["partition"]) for s in stats if s.get("committed", True)],
            "partitions_with_failed_requests": sorted(s["partition"] for s in stats if s.get("committed", True)
                                                      and s["rejected"].get("request_failed"))}


def run(generator, out_dir: str, num_partitions: int, seed: int, spark, progress: bool | None = None,
        progress_file=None) -> dict:
    """Generate `generator`'s documents into `out_dir` with Spark; returns (and writes) the report.

    `out_dir`: a local directory (local mode, or a filesystem every node mounts at the same
    path) or an s3:// prefix; the driver checks it sees every partition before it writes the
    report. `progress`: a bar of items done, partitions finished and LLM requests made (None:
    only when stderr is a terminal; `progress_file` replaces stderr; never for an s3:// out).
    """
    from dolmino.progress import enabled as progress_enabled
    from dolmino.progress import progress as progress_bar

    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    if is_s3(out_dir):
        from dolmino.s3 import check_bucket, split_uri

        out_dir = out_dir.rstrip("/")
        check_bucket(split_uri(out_dir)[0])
    else:
        os.makedirs(out_dir, exist_ok=True)
        out_dir = os.path.abspath(out_dir)
    stale = check_out_dir(generator, out_dir, num_partitions)
    delete(out_dir, [REPORT_NAME])  # its presence says the directory holds a finished run
    _remove_stale_parts(out_dir, stale)
    chash = config_hash(generator, num_partitions, seed)
    accepted = accepted_hashes(generator, num_partitions, seed)
    sc = spark.sparkContext
    show = (progress_enabled(progress_file) if progress is None else progress) and not is_s3(out_dir)
    progress_dir = os.path.join(out_dir, PROGRESS_DIR) if show else None
    if progress_dir:
        shutil.rmtree(progress_dir, ignore_errors=True)  # a killed run's counts are not this run's
        os.makedirs(progress_dir)

    def task(index, _items):
        yield run_partition(generator, index, num_partitions, seed, out_dir, chash, progress_dir, accepted)

    job = sc.parallelize(range(num_partitions), num_partitions).mapPartitionsWithIndex(task)
    if progress_dir is None:
        stats = job.collect()
    else:
        bar = progress_bar(total=generator.num_docs, desc=f"synth {generator.name}", unit=" items",
                           file=progress_file, enable=True)
        try:
            with _ProgressPoller(progress_dir, bar, num_partitions):
                stats = job.collect()
        finally:
            bar.close()
            shutil.rmtree(progress_dir, ignore_errors=True)
    stats.sort(key=lambda s: s["partition"])
    check_visible(out_dir, stats)
    report = summarize(generator, stats, seed, num_partitions, chash)
    if not report["partitions_unanswered"]:  # the report marks a finished run
        write_bytes(join(out_dir, REPORT_NAME), json.dumps(report, indent=1, sort_keys=True).encode(), sync=True)
    return report
