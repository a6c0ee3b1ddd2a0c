"""Build a data mix from a manifest: Spark job from raw documents to token memmaps.

    spark-submit dolmino/build_mix.py --manifest manifests/100B.json --budget 100B --out /data/mix

Runs in local mode when no Spark master is configured, and unchanged on any master
(standalone, YARN, Kubernetes) given `--master` or spark-submit's own flags. Sources may
be local paths or s3:// (read from Python inside the executors). Stages:

1. list input files (globs, sorted) -> one task per file
2. read, quarantine bad lines, tokenize (dolma2), filter chain         [dolmino.pipeline]
3. per-source dedup (exact, MinHash-LSH) where the manifest asks       [filters.dedup]
4. plan copies + seeded fractional sample to each source's budget share [mixers.sampling]
5. deterministic order and file assignment, write memmaps + sidecars   [dolmino.memmap]
6. report.json / report.md, manifest copy                              [dolmino.report]

Same manifest + seed + inputs => byte-identical output, whatever the partitioning.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import sys
import time
from operator import add

import numpy as np

from dolmino.errors import ManifestError
from dolmino.manifest import Manifest, format_count, load_manifest, parse_count
from dolmino.memmap import MemmapPartWriter, PartStats
from dolmino.pipeline import FileTask, SourceStats, process_file
from dolmino.tokenizer import Dolma2Tokenizer
from mixers.sampling import (
    NUM_BUCKETS, SMALL_SOURCE_DOCS, SourcePlan, bucket_of, find_cut_bucket, find_cut_hash, plan_copies,
    seeded_hash, split_budget, with_cut, with_selection,
)

OUTPUT_FILES = ("report.json", "report.md", "manifest.json")


class BuildError(RuntimeError):
    pass


def expand_paths(pattern: str) -> list[str]:
    """Files matching a local or s3:// glob, sorted so that task order is deterministic."""
    if pattern.startswith("s3://"):
        from dolmino.s3 import expand_uri_glob

        return expand_uri_glob(pattern)
    if any(ch in pattern for ch in "*?["):
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if os.path.isdir(pattern):
        return sorted(p for p in glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
                      if os.path.isfile(p) and not os.path.basename(p).startswith("."))
    return [pattern] if os.path.isfile(pattern) else []


def relative_name(path: str, root: str | None) -> str:
    """`path` relative to the data root when it lies under it, else unchanged."""
    if root:
        prefix = root.rstrip("/") + "/"
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def file_tasks(manifest: Manifest) -> list[FileTask]:
    tasks: list[FileTask] = []
    for si, source in enumerate(manifest.sources):
        files: list[str] = []
        for pattern in source.paths:
            location = manifest.resolve(pattern)
            matched = expand_paths(location)
            if not matched:
                raise BuildError(f"source {source.name!r}: no input files match {location!r}")
            files.extend(matched)
        keep_text = bool(source.dedup.exact or source.dedup.minhash)
        for fi, path in enumerate(dict.fromkeys(files)):
            tasks.append(FileTask(source.name, si, path, fi, source.format, source.filters, keep_text,
                                  name=relative_name(path, manifest.data_root)))
    return tasks


def make_spark(app_name: str, master: str | None, driver_memory: str | None):
    """A SparkSession that uses this interpreter for Python workers unless told otherwise."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    from pyspark import SparkConf

    conf = SparkConf()
    if not conf.contains("spark.master") and not master:
        builder = builder.master("local[*]")
    if driver_memory:
        builder = builder.config("spark.driver.memory", driver_memory)
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    return builder.getOrCreate()


# Where S3 lives (never credentials): executors started by this driver must read sources from
# the same endpoint. Spark passes sc.environment to the Python workers it starts.
S3_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def forward_s3_environment(sc, tasks) -> None:
    """Copy the driver's S3 endpoint/region settings to executors when any input is on s3://.

    On a cluster, credentials come from the executors' own chain (instance roles, or
    spark.executorEnv.*); only where-to-connect settings are forwarded.
    """
    if not any(t.path.startswith("s3://") for t in tasks):
        return
    for key in S3_ENDPOINT_ENV:
        if os.environ.get(key):
            sc.environment[key] = os.environ[key]


def _merge_stats(records) -> dict[int, SourceStats]:
    merged: dict[int, SourceStats] = {}
    for si, stats in records:
        merged.setdefault(si, SourceStats()).merge(stats)
    return merged


def _dedup_source(docs_rdd, source_index: int, source, seed: int):
    """Apply the source's dedup stages; returns (rdd, [(reason, docs, tokens, stage stats)])."""
    from filters import dedup

    removed = []
    rdd = docs_rdd.map(lambda r: {"id": r[3][0], "loc": r[3][1], "text": r[3][3], "_record": r})
    if source.dedup.exact:
        before = rdd
        rdd, stage = dedup.exact_dedup(rdd)
        removed.append(("exact_duplicate", before, rdd, stage))
    if source.dedup.minhash:
        before = rdd
        params = dict(source.dedup.minhash)
        params.setdefault("seed", seed)
        rdd, stage = dedup.minhash_dedup(rdd, **params)
        removed.append(("near_duplicate", before, rdd, stage))
    return rdd.map(lambda d: d["_record"]), removed


def plan_sources(manifest: Manifest, budget: int, docs_rdd, stats: dict[int, SourceStats]) -> dict[int, SourcePlan]:
    """Copies and the seeded fractional cut for each source (small collects only)."""
    targets = split_budget(budget, manifest.mix_fractions())
    plans: dict[int, SourcePlan] = {}
    for si, source in enumerate(manifest.sources):
        plans[si] = plan_copies(source.name, stats[si].kept_tokens, targets[source.name])
    fractional = {si for si, p in plans.items() if p.fraction > 0}
    small = {si for si in fractional if stats[si].kept_docs <= SMALL_SOURCE_DOCS}
    large = fractional - small
    if small:
        pairs = (docs_rdd.filter(lambda r: r[1] in small)
                 .map(lambda r: (r[1], (r[2], len(r[3][2]) // 4 + 1))).groupByKey().mapValues(list).collect())
        for si, members in pairs:
            plans[si] = with_selection(plans[si], members)
    if not large:
        return plans
    bucket_tokens = (docs_rdd.filter(lambda r: r[1] in large)
                     .map(lambda r: ((r[1], bucket_of(r[2])), len(r[3][2]) // 4 + 1))
                     .reduceByKey(add).collect())
    per_source: dict[int, dict[int, int]] = {}
    for (si, b), n in bucket_tokens:
        per_source.setdefault(si, {})[b] = n
    cuts: dict[int, tuple[int, int]] = {}
    for si in large:
        cuts[si] = find_cut_bucket(per_source[si], plans[si].fraction_tokens)
    cut_keys = {(si, b) for si, (b, _) in cuts.items()}
    in_cut = (docs_rdd.filter(lambda r: (r[1], bucket_of(r[2])) in cut_keys)
              .map(lambda r: (r[1], (r[2], len(r[3][2]) // 4 + 1))).groupByKey().mapValues(list).collect())
    for si, members in in_cut:
        bucket, before = cuts[si]
        plans[si] = with_cut(plans[si], bucket, find_cut_hash(members, before, plans[si].fraction_tokens))
    assert all(0 <= plans[si].cut_bucket < NUM_BUCKETS for si in large)
    return plans


def _write_partition(index, items, out_dir, eos, label_mask, source_names):
    """Write one output part; with label masks, repeated n-gram spans are not trained on."""
    if label_mask:
        from filters.repeated_ngrams import repeated_ngram_mask
    writer = MemmapPartWriter(out_dir, index, eos, label_mask=label_mask)
    for _key, (si, payload) in items:
        tokens = np.frombuffer(payload[2], dtype="<u4")
        mask = repeated_ngram_mask(tokens) if label_mask else None
        writer.add(tokens, payload[0], source_names[si], payload[1], mask)
    stats = writer.close()
    yield index, stats


def build(manifest: Manifest, budget: int, out_dir: str, spark, *, partitions_per_file: int = 1) -> dict:
    """Run the whole build and return the report dict (also written to out_dir)."""
    started = time.time()
    sc = spark.sparkContext
    tasks = file_tasks(manifest)
    forward_s3_environment(sc, tasks)
    tokenizer = Dolma2Tokenizer.from_spec(manifest.tokenizer)
    tok_b = sc.broadcast(tokenizer)
    seed = manifest.seed
    _prepare_out_dir(out_dir)

    tasks_rdd = sc.parallelize(tasks, max(1, len(tasks)))
    records = tasks_rdd.flatMap(lambda t: process_file(t, tok_b.value, seed, out_dir))
    from pyspark import StorageLevel

    records.persist(StorageLevel.MEMORY_AND_DISK)
    stats = _merge_stats(records.filter(lambda r: r[0] == "stats").map(lambda r: (r[1], r[3])).collect())
    for si, source in enumerate(manifest.sources):
        stats.setdefault(si, SourceStats())
    docs = records.filter(lambda r: r[0] == "doc")

    dedup_reports: dict[str, list] = {}
    deduped_parts = []
    dedup_sources = [si for si, s in enumerate(manifest.sources) if s.dedup.exact or s.dedup.minhash]
    if dedup_sources:
        plain = docs.filter(lambda r: r[1] not in set(dedup_sources))
        deduped_parts.append(plain)
        for si in dedup_sources:
            source = manifest.sources[si]
            src_docs = docs.filter(lambda r, si=si: r[1] == si)
            kept, stages = _dedup_source(src_docs, si, source, seed)
            kept = kept.map(lambda r: ("doc", r[1], r[2], (r[3][0], r[3][1], r[3][2], None)))
            kept.persist(StorageLevel.MEMORY_AND_DISK)
            kept_docs, kept_tokens = kept.map(lambda r: (1, len(r[3][2]) // 4 + 1)).fold((0, 0), lambda a, b: (a[0] + b[0], a[1] + b[1]))
            removed_docs = stats[si].kept_docs - kept_docs
            removed_tokens = stats[si].kept_tokens - kept_tokens
            _attribute_dedup(stats[si], stages, removed_docs, removed_tokens)
            dedup_reports[source.name] = [st for _r, _b, _a, st in stages]
            deduped_parts.append(kept)
        docs = sc.union(deduped_parts)
    docs.persist(StorageLevel.MEMORY_AND_DISK)

    for si, source in enumerate(manifest.sources):
        stats[si].check_balance(source.name)
    plans = plan_sources(manifest, budget, docs, stats)
    plans_b = sc.broadcast(plans)

    num_files = max(1, math.ceil(budget / manifest.output_spec.tokens_per_file))

    def instances(r):
        plan = plans_b.value[r[1]]
        doc_id, loc, token_bytes, _text = r[3]
        for c in range(plan.instances(r[2])):
            key = seeded_hash(seed, "order", str(r[1]), doc_id, loc, str(c))
            yield key, (r[1], (doc_id, loc, token_bytes))

    source_names = [s.name for s in manifest.sources]
    eos = manifest.tokenizer.eos_token_id
    label_mask = manifest.output_spec.label_mask
    ordered = docs.flatMap(instances).repartitionAndSortWithinPartitions(
        numPartitions=num_files, partitionFunc=lambda k: k)
    part_stats = dict(ordered.mapPartitionsWithIndex(
        lambda i, it: _write_partition(i, it, out_dir, eos, label_mask, source_names)).collect())
    records.unpersist()
    docs.unpersist()

    from dolmino.report import build_report, write_report

    report = build_report(manifest, budget, stats, plans, part_stats, dedup_reports,
                          elapsed_s=time.time() - started, spark_master=sc.master)
    write_report(out_dir, report, manifest)
    return report


def _attribute_dedup(stats: SourceStats, stages, removed_docs: int, removed_tokens: int) -> None:
    """Move dedup removals from kept to removed, split by stage using each stage's own counts."""
    stage_docs = []
    for reason, _before, _after, st in stages:
        stage_docs.append((reason, int(st.get("removed_docs", st.get("removed", 0))) if isinstance(st, dict) else 0))
    total = sum(n for _, n in stage_docs)
    if total != removed_docs:
        raise AssertionError(f"dedup stages report {total} removed documents but {removed_docs} disappeared")
    tokens_left = removed_tokens
    for i, (reason, n) in enumerate(stage_docs):
        share = tokens_left if i == len(stage_docs) - 1 else round(removed_tokens * n / max(total, 1))
        stats.remove(reason, n, share)
        tokens_left -= share


def _prepare_out_dir(out_dir: str) -> None:
    """Remove what an earlier build of this directory wrote, so stale parts cannot mix in."""
    if out_dir.startswith("s3://"):
        raise BuildError("--out must be a local or shared filesystem path; publish to S3 with `python -m dolmino.release`")
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if name.startswith("part-") or name in OUTPUT_FILES:
            os.remove(path)
        elif name == "quarantine":
            shutil.rmtree(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="build_mix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default=None,
                        help="mix manifest JSON (default: manifests/<budget>.json for 50B/100B/300B, else manifests/demo.json)")
    parser.add_argument("--budget", default=None, help="token budget with K/M/B/T suffix, e.g. 100B (default: the manifest's)")
    parser.add_argument("--out", default=None, help="output directory (default: the manifest's 'output')")
    parser.add_argument("--data-root", default=None, help="override the manifest's data_root (where relative source paths live)")
    parser.add_argument("--master", default=None, help="Spark master URL (default: spark-submit's, else local[*])")
    parser.add_argument("--driver-memory", default="4g", help="driver memory when this script starts Spark itself")
    return parser.parse_args(argv)


def default_manifest(budget: str | None) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    manifests = os.path.join(os.path.dirname(here), "manifests")
    if budget and budget.upper() in ("50B", "100B", "300B"):
        return os.path.join(manifests, f"{budget.upper()}.json")
    return os.path.join(manifests, "demo.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        manifest = load_manifest(args.manifest or default_manifest(args.budget))
        if args.data_root:
            from dataclasses import replace

            manifest = replace(manifest, data_root=os.path.abspath(args.data_root) if not args.data_root.startswith("s3://") else args.data_root)
        budget = parse_count(args.budget, "--budget") if args.budget else manifest.budget
        if budget is None:
            raise ManifestError("budget: the manifest has no budget; pass --budget (e.g. --budget 100B)")
        out_dir = args.out or manifest.output
        if not out_dir:
            raise ManifestError("output: the manifest has no output directory; pass --out")
        file_tasks(manifest)  # fail fast on missing inputs, before Spark starts
    except (ManifestError, BuildError) as exc:
        print(f"build_mix: error: {exc}", file=sys.stderr)
        return 2
    spark = make_spark(f"dolmino-build-{manifest.name}", args.master, args.driver_memory)
    spark.sparkContext.setLogLevel("WARN")
    try:
        report = build(manifest, budget, os.path.abspath(out_dir), spark)
    except (BuildError, ManifestError) as exc:
        print(f"build_mix: error: {exc}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    from dolmino.report import render_markdown

    print(render_markdown(report))
    print(f"wrote {report['output']['files']} part(s), {format_count(report['output']['tokens'])} tokens to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
