"""The pool's columnar dedup against a per-document reference, and the layout it leaves."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np

from dolmino.build.pool import PoolBlock, bucket_range, bucket_totals, candidates, summarize
from dolmino.build.spark import parallelize_pickled
from mixers.sampling import bucket_of


def _key(rng: random.Random, pool: list[int]) -> int:
    """A 128-bit key, often one already drawn (a duplicate)."""
    if pool and rng.random() < 0.4:
        return rng.choice(pool)
    k = rng.getrandbits(128)
    pool.append(k)
    return k


def _pair(v: int) -> tuple[int, int]:
    return v >> 64, v & ((1 << 64) - 1)


def _world(seed: int = 0):
    """Blocks of three sources (exact only, exact + near, near only), spread over tasks."""
    rng = random.Random(seed)
    sources = [SimpleNamespace(dedup=SimpleNamespace(exact=True, minhash=False)),
               SimpleNamespace(dedup=SimpleNamespace(exact=True, minhash=True)),
               SimpleNamespace(dedup=SimpleNamespace(exact=False, minhash=True))]
    docs, blocks = [], []
    texts: dict[int, list[int]] = {0: [], 1: [], 2: []}
    clusters: dict[int, list[int]] = {0: [], 1: [], 2: []}
    unit = 0
    for bundle in range(24):
        si = bundle % 3
        rows = []
        for u in range(rng.randint(1, 3)):
            for line in range(rng.randint(0, 12)):
                clustered = si > 0 and rng.random() < 0.5
                rows.append({"si": si, "bundle": bundle, "unit": unit, "line": line, "loc_line": 100 + line,
                             "hash": rng.getrandbits(63), "bytes": rng.randint(1, 5_000),
                             "keep": rng.getrandbits(128), "text": _key(rng, texts[si]),
                             "cluster": _key(rng, clusters[si]) if clustered else None})
            unit += 1
        docs += rows
        col = lambda k, dtype=np.int64: np.asarray([r[k] for r in rows], dtype=dtype)  # noqa: E731
        pairs = lambda vals: np.asarray([_pair(v) for v in vals], dtype=np.uint64).reshape(-1, 2)  # noqa: E731
        blocks.append(PoolBlock(
            si, bundle, col("unit"), col("line"), col("loc_line"), col("hash"), col("bytes"), col("hash"),
            keep=pairs([r["keep"] for r in rows]),
            text_hash=pairs([r["text"] for r in rows]) if sources[si].dedup.exact else None,
            cluster=pairs([r["cluster"] or 0 for r in rows]) if si > 0 else None,
            clustered=np.asarray([r["cluster"] is not None for r in rows], dtype=bool) if si > 0 else None))
    return sources, docs, blocks


def _reference(docs, sources):
    """Per document: exact groups keep their smallest keep key, then near groups among the survivors."""
    removed: dict[int, dict[str, list[int]]] = {}
    alive = list(docs)
    for field, flag, reason in (("text", "exact", "exact_duplicate"), ("cluster", "minhash", "near_duplicate")):
        best: dict[tuple, dict] = {}
        for d in alive:
            if getattr(sources[d["si"]].dedup, flag) and d[field] is not None:
                k = (d["si"], d[field])
                if k not in best or d["keep"] < best[k]["keep"]:
                    best[k] = d
        survivors = []
        for d in alive:
            k = (d["si"], d[field])
            if getattr(sources[d["si"]].dedup, flag) and d[field] is not None and best[k] is not d:
                entry = removed.setdefault(d["si"], {}).setdefault(reason, [0, 0])
                entry[0] += 1
                entry[1] += d["bytes"]
            else:
                survivors.append(d)
        alive = survivors
    return {(d["unit"], d["line"]) for d in alive}, removed


def test_columnar_dedup_matches_the_per_document_rule_and_keeps_the_task_layout(spark):
    sc = spark.sparkContext
    sources, docs, blocks = _world()
    tasks = 5
    task_of = {b.bundle_index: b.bundle_index % tasks for b in blocks}
    per_task = [[b for b in blocks if task_of[b.bundle_index] == t] for t in range(tasks)]
    rdd = parallelize_pickled(sc, per_task).flatMap(lambda bs: bs)
    summary = summarize(sc, rdd, sources, sc.broadcast(task_of), tasks)
    eligible, removed, held = summary.blocks, summary.removed, summary.held
    layout = eligible.mapPartitionsWithIndex(lambda i, it: [(i, b) for b in it]).collect()
    for rdd_ in held:
        rdd_.unpersist()

    expected, expected_removed = _reference(docs, sources)
    assert {k: {r: tuple(v) for r, v in reasons.items()} for k, reasons in expected_removed.items()} == removed
    assert all(reasons.get("exact_duplicate", [0])[0] for si, reasons in expected_removed.items() if si < 2)
    assert expected_removed[2]["near_duplicate"][0] and expected_removed[1]["near_duplicate"][0]
    kept = [(int(u), int(ln)) for _, b in layout for u, ln in zip(b.unit, b.line)]
    assert len(kept) == len(set(kept)) and set(kept) == expected
    assert all(task_of[b.bundle_index] == i for i, b in layout)  # each block in its tokenize task's partition
    for _, b in layout:  # rows stay in unit, line order; the columns stay aligned
        assert list(zip(b.unit.tolist(), b.line.tolist())) == sorted(zip(b.unit.tolist(), b.line.tolist()))
        assert len({len(b.unit), len(b.hash), len(b.bytes), len(b.keep)}) == 1

    # the same input partitioned otherwise (tasks reversed): the same survivors
    flipped = {bi: tasks - 1 - t for bi, t in task_of.items()}
    rdd2 = parallelize_pickled(sc, per_task[::-1]).flatMap(lambda bs: bs)
    summary2 = summarize(sc, rdd2, sources, sc.broadcast(flipped), tasks)
    again, removed2, held2 = summary2.blocks, summary2.removed, summary2.held
    assert removed2 == removed
    assert sorted((int(u), int(ln)) for b in again.collect() for u, ln in zip(b.unit, b.line)) == sorted(kept)
    for rdd_ in held2:
        rdd_.unpersist()


def test_bucket_totals_and_round_candidates(spark):
    sc = spark.sparkContext
    _sources, docs, blocks = _world(seed=1)
    rdd = parallelize_pickled(sc, [blocks[:10], blocks[10:]]).flatMap(lambda bs: bs)
    totals = bucket_totals(rdd, 3)
    expected: dict[int, dict[int, list[int]]] = {}
    for d in docs:
        entry = expected.setdefault(d["si"], {}).setdefault(bucket_of(d["hash"]), [0, 0])
        entry[0] += 1
        entry[1] += d["bytes"]
    for si, t in totals.items():
        assert {b: [n, s] for b, n, s in zip(t.bucket.tolist(), t.docs.tolist(), t.bytes.tolist())} == expected[si]
    assert set(totals) == set(expected)

    lo, hi = (0, 1 << 14, 0), (1 << 15, 1 << 16, 1 << 13)
    picked = [(u, d) for u, ds in candidates(blocks, bucket_range(lo, hi)) for d in ds]
    want = {(d["unit"], d["line"]) for d in docs if lo[d["si"]] <= bucket_of(d["hash"]) < hi[d["si"]]}
    assert {(d.unit_index, d.line) for _, d in picked} == want and len(picked) == len(want)
    assert all(u == d.unit_index for u, d in picked)
    units = [u for u, _ in candidates(blocks, bucket_range(lo, hi))]
    assert len(units) == len(set(units))  # each unit's documents come as one group


def test_duplicate_ids_counts_repeats_per_source_across_units(spark):
    from collections import Counter

    from dolmino.build.pool import UnitIds

    rng = random.Random(2)
    ids = [UnitIds(u % 3, np.asarray([rng.randrange(50 if u % 3 else 10**9) for _ in range(rng.randint(0, 40))],
                                     dtype="<u8").tobytes()) for u in range(30)]
    expected: dict[int, int] = {}
    for si in range(3):
        counts = Counter(h for r in ids if r.source_index == si for h in np.frombuffer(r.hashes, dtype="<u8").tolist())
        if sum(c - 1 for c in counts.values()):
            expected[si] = sum(c - 1 for c in counts.values())
    assert expected.get(1) and expected.get(2)  # the planted repeats exist
    sc = spark.sparkContext
    no_dedup = [SimpleNamespace(dedup=SimpleNamespace(exact=False, minhash=None))] * 3
    summary = summarize(sc, sc.parallelize(ids, 4), no_dedup, sc.broadcast({}), 1)
    assert summary.duplicate_ids == expected
    for rdd in summary.held:
        rdd.unpersist()


def test_one_spark_job_sums_the_units_accounts_duplicate_ids_and_exact_dedup(spark):
    """The pool tasks' records of every kind go through one shuffle: the units' accounts (in unit
    order, as the report merges them), the duplicate ids and exact dedup's removals come from one
    Spark job, where they took three (each paying Spark's per-job and per-task costs again)."""
    from collections import Counter

    from dolmino.build.pool import UnitIds, UnitPool
    from dolmino.build.spark import job_count

    sc = spark.sparkContext
    sources, docs, blocks = _world(seed=3)
    sources = [SimpleNamespace(dedup=SimpleNamespace(exact=s.dedup.exact, minhash=None)) for s in sources]
    rng = random.Random(3)
    tasks = 3
    task_of = {b.bundle_index: b.bundle_index % tasks for b in blocks}
    per_task: list[list] = [[] for _ in range(tasks)]
    ids_of: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for block in blocks:
        ids = [rng.randrange(40) for _ in range(block.size)]
        ids_of[block.source_index] += ids
        per_task[task_of[block.bundle_index]] += [
            *(UnitPool(int(u), block.source_index, {"docs_in": int((block.unit == u).sum())}, {})
              for u in np.unique(block.unit).tolist()),
            block, UnitIds(block.source_index, np.asarray(ids, dtype="<u8").tobytes())]
    records = parallelize_pickled(sc, per_task).flatMap(lambda rs: rs)
    records.persist()

    jobs = job_count(sc)
    summary = summarize(sc, records, sources, sc.broadcast(task_of), tasks)
    assert job_count(sc) - jobs == 1
    kept = [(int(u), int(ln)) for b in summary.blocks.collect() for u, ln in zip(b.unit, b.line)]
    for rdd in [records, *summary.held]:
        rdd.unpersist()

    units = [up.unit_index for up in summary.unit_pools]
    assert units == sorted({d["unit"] for d in docs})
    assert [up.stats["docs_in"] for up in summary.unit_pools] == [sum(d["unit"] == u for d in docs) for u in units]
    repeats = {si: sum(c - 1 for c in Counter(ids).values()) for si, ids in ids_of.items()}
    assert summary.duplicate_ids == {si: n for si, n in repeats.items() if n}
    expected, expected_removed = _reference(docs, sources)
    assert summary.removed == {si: {r: tuple(v) for r, v in reasons.items()}
                               for si, reasons in expected_removed.items()}
    assert sorted(kept) == sorted(expected) and expected_removed


def test_bucket_totals_reduce_on_no_more_tasks_than_sources(spark):
    """The totals' keys are the source indices: left to PySpark, the reduce side ran a task per
    pool partition (one per tokenize task, thousands on a cluster, unless
    spark.default.parallelism is set), nearly all of them empty."""
    from dolmino.build.spark import settled_jobs

    sc = spark.sparkContext
    _sources, docs, blocks = _world(seed=4)
    mine = [b for b in blocks if b.source_index == 1]
    rdd = parallelize_pickled(sc, [mine[i::6] for i in range(6)]).flatMap(lambda bs: bs)
    sc.setJobGroup("bucket-totals-test", "bucket totals of one source")
    try:
        totals = bucket_totals(rdd, 1)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    tracker = sc.statusTracker()
    stages = [tracker.getStageInfo(sid) for job in settled_jobs(tracker, "bucket-totals-test") for sid in job.stageIds]
    assert sorted(st.numTasks for st in stages) == [1, 6]  # the pool's 6 partitions, then one reduce task
    assert int(totals[1].docs.sum()) == sum(d["si"] == 1 for d in docs)
