"""The whole build on one Spark session: list, tag (reusing attributes), select, tokenize, write.

`run_build` is what `spark-submit dolmino/build_mix.py`, `dolmino tag` and `dolmino mix`
run (`phase` "all", "tag" or "mix"). What happens to a rerun after a killed driver or
executor: finished attribute files are reused (tag); the selection, once made, is saved as
`_plan.json` in the output together with a hash of everything it depends on, so a rerun
skips it; parts with a commit record of that plan are kept, and only the documents of the
missing parts are read and tokenized again. The result is byte-identical to a clean build.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from dolmino.build import output, worker_env, worker_heap
from dolmino.build.attributes import (ATTRIBUTE_FORMAT, QUARANTINE_DIR, AttributeStore, plan_bundles, quarantine_dir,
                                      spec_key)
from dolmino.build.inputs import (
    DEFAULT_SPLIT_BYTES, DEFAULT_TASK_BYTES, Listing, group_tasks, list_inputs, plan_units, shown_path,
)
from dolmino.build.progress import Stage
from dolmino.build.resources import file_params, stage
from dolmino.build.pool import (
    PoolBlock, PoolContext, UnitPool, bucket_range, bucket_totals, candidates, fetch_attributes, loc_of, pool_bundle,
    summarize,
)
from dolmino.build.select import (
    ALL_MEMBERS, SourceSelection, cut, empty_reason, initial_selection, refill, settle, split_targets, tokens_per_byte,
    too_many_copies,
)
from dolmino.build.spark import cluster_info, forward_environment, is_local, parallelize_pickled, persisted_bytes
from dolmino.build.tag import run_tag, skips_blank, tag_plans
from dolmino.build.write import (
    PARTS_DIR, TokContext, TokDoc, TokStats, WriteContext, order_key, tokenize_units, write_part,
)
from dolmino.errors import BuildError, ManifestError, ResourceError
from dolmino.manifest import Manifest
from dolmino.memmap import part_name
from dolmino.prefetch import DEFAULT_READ_AHEAD
from dolmino.report import empty_compressed_warnings, input_accounts, tag_warnings
from dolmino.s3 import S3ObjectError, is_s3, open_uri
from dolmino.storage import read_if_exists
from dolmino.tokenizer import Dolma2Tokenizer, control_id_problems
from mixers.sampling import bucket_of


@dataclass
class BuildOptions:
    budget: int
    out: str
    attributes: str
    phase: str = "all"  # "all" | "tag" | "mix"
    split_bytes: int = DEFAULT_SPLIT_BYTES
    task_bytes: int = DEFAULT_TASK_BYTES
    read_ahead: int = DEFAULT_READ_AHEAD  # S3 objects each task fetches ahead (dolmino.prefetch)
    quiet: bool = False
    lock: str | None = None  # a lock file checked by --locked: copied into the output (dolmino.lock)
    overwrite: bool = False  # replace a complete build of another plan in `out` (--overwrite)
    # The inputs as the command line listed them before Spark started (a --locked build checked these files
    # against its lock); None: run_build lists them. Listed again, every source was listed twice (t242).
    listing: Listing | None = None


@dataclass
class BuildState:
    """What the driver gathers on the way, for the report."""

    stages: dict = field(default_factory=dict)
    persisted: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def default_attributes_root(out: str) -> str:
    """Beside the outputs, shared by every mix built there: `<parent of out>/attributes`.

    An --out at a bucket's root has no parent inside the bucket (the naive parent of
    s3://bucket is s3://, which would put the attributes in a bucket named "attributes"):
    such a build must name its --attributes."""
    if out.startswith("s3://") and "/" not in out[len("s3://"):].strip("/"):
        raise BuildError(f"--out {out} is a bucket's root, which has no parent for the default attributes root; "
                         "pass --attributes s3://BUCKET/PREFIX (outside --out)")
    return out.rstrip("/").rsplit("/", 1)[0] + "/attributes" if "/" in out.rstrip("/") else "attributes"


def tokenizer_digest(tokenizer: Dolma2Tokenizer, spec) -> str:
    """The tokenizer's bytes and settings, not where it lies: moving tokenizer.json (or naming a
    copy of the packaged one) re-tagged the whole pool (found by a tester). Without a path the
    digest is the one earlier versions wrote, so their attribute files stay current."""
    h = hashlib.sha256(tokenizer.json_text.encode("utf-8"))
    h.update(repr(sorted({**vars(spec), "path": None}.items())).encode("utf-8"))
    return h.hexdigest()


def _planned_manifest(raw: dict) -> dict:
    """The manifest as far as it decides the output: not where its output, inputs or tokenizer
    lie (the tokenizer's bytes are in the plan apart), nor the passes its warnings accept
    (max_passes). A moved tokenizer.json dropped a killed build's committed parts on the rerun
    (found by a reviewer); without a path the plan is the one earlier versions wrote."""
    planned = {k: v for k, v in raw.items() if k not in ("output", "description", "data_root", "max_passes")}
    if isinstance(planned.get("tokenizer"), dict) and "path" in planned["tokenizer"]:
        planned["tokenizer"] = {k: v for k, v in planned["tokenizer"].items() if k != "path"}
    return planned


def _stage_resources(manifest: Manifest, sc) -> dict:
    ship = not is_local(sc)
    resources = {}
    for source in manifest.sources:
        for i, spec in enumerate(source.filters):
            for param in file_params(spec):
                uri = spec[param]
                if uri not in resources:
                    try:
                        resources[uri] = stage(uri, sc, ship=ship)
                    except (BuildError, FileNotFoundError, S3ObjectError) as exc:
                        raise BuildError(f"source {source.name!r} filters[{i}].{param}: {exc}") from None
            _check_models(spec, resources, f"source {source.name!r} filters[{i}]")
            _check_index(spec, resources, f"source {source.name!r} filters[{i}]")
    return resources


def _check_index(spec: dict, resources: dict, where: str) -> None:
    """A decontamination index that does not load fails here, in one line naming the filter and
    the index as the manifest names it; in the executors it failed after the tag phase began,
    as a Spark traceback naming a node's cache path (found by a tester). The driver reads the
    index's metadata for the report anyway."""
    from filters.decontamination import IndexFileError, check_index_file, stale_index_error

    from dolmino.build.resources import localize

    if spec.get("type") != "decontaminate" or not spec.get("index_path"):
        return
    resource = resources[spec["index_path"]]
    path = localize(resource._replace(shipped_as=None))
    try:
        check_index_file(path)
    except IndexFileError as exc:
        said = str(exc if exc.stale is None else stale_index_error(resource.uri, *exc.stale))
        raise BuildError(f"{where}.index_path: {said.replace(path, resource.uri)}") from None


def _check_models(spec: dict, resources: dict, where: str) -> None:
    """A fastText model that is not one fails here, on the driver, in one line, before any task
    starts (else every executor task would fail on it after the tag phase began)."""
    from filters.fasttext_numba import check_fasttext_head
    from filters.registry import build_filter

    filt = build_filter(spec, where)
    params = getattr(filt, "fasttext_model_params", ())
    for param in params:
        uri = spec[param]
        head = None
        if not resources[uri].is_dir:
            with (open_uri(uri, "rb") if is_s3(uri) else open(uri, "rb")) as fh:
                head = fh.read(4)
        try:
            check_fasttext_head(uri, head)
        except ResourceError as exc:
            raise BuildError(f"{where}.{param}: {exc}") from None
    if params:
        # The manifest's label against the model's (its dictionary only): a label the model lacks
        # failed the first tag task, after the Spark jobs began.
        try:
            filt.check_model()
        except ResourceError as exc:
            raise BuildError(f"{where}: {exc}") from None


def _task_of_bundle(groups) -> dict[int, int]:
    """bundle index -> the task (group of bundles) whose partition holds its pool and tokenizes it."""
    return {bundle.index: t for t, group in enumerate(groups) for bundle in group}


def run_build(manifest: Manifest, options: BuildOptions, spark) -> dict:
    started = time.time()
    sc = spark.sparkContext
    state = BuildState()
    listing = list_inputs(manifest) if options.listing is None else options.listing
    if listing.skipped:
        # a name that is not UTF-8 stopped the build at its end, writing report.md (a reviewer)
        shown = ", ".join(map(shown_path, listing.skipped[:5])) + (", ..." if len(listing.skipped) > 5 else "")
        state.warnings.append(f"skipped {len(listing.skipped)} file(s) in source directories that are not documents "
                              f"by name: {shown}")
    state.warnings += listing.warnings
    units = plan_units(listing, options.split_bytes)
    state.warnings += empty_compressed_warnings([s.name for s in manifest.sources], units)
    bundles = plan_bundles(units)
    groups = group_tasks(bundles, options.task_bytes)
    any_s3 = any(u.file.uri.startswith("s3://") for u in units) or options.out.startswith("s3://") \
        or options.attributes.startswith("s3://")
    task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    forward_environment(sc, any_s3, task_cpus)
    worker_env.expect(sc)  # before the first job: a node with other code or libraries stops, naming them
    # Each executor task tokenizes with the cores Spark reserved for it, no more.
    tokenizer = Dolma2Tokenizer.from_spec(manifest.tokenizer, threads=task_cpus)
    if problems := control_id_problems(tokenizer.json_text, tokenizer.eos_token_id, tokenizer.bos_token_id):
        raise ManifestError("; ".join(problems))
    tok_digest = tokenizer_digest(tokenizer, manifest.tokenizer)
    resources = _stage_resources(manifest, sc)
    store = AttributeStore(options.attributes)
    # Once: building them builds every filter and hashes a custom scorer's source
    plans = tag_plans(manifest, resources, tok_digest, units)
    if options.phase != "tag":
        # A pool manifest takes every source's pool exactly once; a mix manifest splits the budget.
        targets = None if manifest.kind == "pool" else split_targets(options.budget, manifest.mix_fractions())
        plan_hash = spec_key({
            "format": ATTRIBUTE_FORMAT, "manifest": _planned_manifest(manifest.raw),
            "budget": options.budget, "targets": targets, "tokenizer": tok_digest,
            "tokens_per_file": manifest.output_spec.tokens_per_file,
            "sets": [[p.docs_set, [t.set_name for t in p.filters], p.minhash_set]
                     for p in plans],  # the sets run_tag uses
            "units": [[u.key, u.file.version, u.start, u.end] for u in units],
        })
        output.refuse_strays(options.out)  # before any Spark job: neither this build nor --overwrite removes them
        if not options.overwrite:  # before any Spark job, and before output.start removes report.json
            output.refuse_replacing(options.out, plan_hash, manifest, None if manifest.kind == "pool" else options.budget)

    tagged = run_tag(sc, manifest, store, units, bundles, groups, resources, tokenizer, plans,
                     quiet=options.quiet, allow_work=options.phase != "mix", read_ahead=options.read_ahead)
    state.stages.update(tagged.stages)
    state.warnings += [w for plan in plans for w in plan.warnings]  # a scorer keyed by its name alone
    if options.phase == "tag":  # the mix phase's report warns of broken inputs from every unit's counts
        state.warnings += tag_warnings([s.name for s in manifest.sources], units, tagged.broken or {},
                                       options.attributes)
        return _tag_summary(manifest, options, tagged, units, listing, time.time() - started, sc, state)

    owner = output.start(options.out)
    if targets is not None and manifest.passes_authority:
        from dolmino.manifest import plan_warnings

        state.warnings += plan_warnings(manifest.plan(options.budget))

    # ---- pool: decisions from attributes, then dedup
    from pyspark import StorageLevel

    names = {u.index: u.file.name for u in units}
    pool_ctx = sc.broadcast(PoolContext(store, tagged.plans, manifest.sources, resources, manifest.seed, names,
                                        tagged.first_lines, skips_blank(manifest), options.read_ahead))
    task_of_bundle = sc.broadcast(_task_of_bundle(groups))
    with Stage(sc, "pool", total_units=len(units), quiet=options.quiet) as st:
        counters = st.counters
        # One partition per tokenize task: the pool's blocks stay where their task reads them.
        records = (parallelize_pickled(sc, [list(g) for g in groups])
                   .flatMap(lambda g: _pool_group(g, pool_ctx, counters)))
        records.persist(StorageLevel.MEMORY_AND_DISK)
        pooled = summarize(sc, records, manifest.sources, task_of_bundle, len(groups))
        state.persisted["pool"] = persisted_bytes(sc, records)
        eligible = pooled.blocks.map(lambda b: b.slim(), preservesPartitioning=True)
        eligible.persist(StorageLevel.MEMORY_AND_DISK)
        buckets = bucket_totals(eligible, len(manifest.sources))
        state.persisted["eligible"] = persisted_bytes(sc, eligible)
    state.stages["pool"] = st.record
    records.unpersist()
    for rdd in pooled.held:
        rdd.unpersist()
    unit_pools: list[UnitPool] = pooled.unit_pools
    sources = _source_accounts(manifest, unit_pools, pooled.removed, buckets)
    for si, n in pooled.duplicate_ids.items():
        sources[si]["duplicate_ids"] = n
    for si, inputs in input_accounts(units, unit_pools).items():
        sources[si].update(inputs)

    # ---- selection: tokenize what the mix may take, cut exactly
    tok_ctx = sc.broadcast(TokContext(
        store, tagged.plans, _token_filters(manifest), tuple(s.max_doc_tokens for s in manifest.sources), resources,
        {u.index: u for u in units}, tagged.first_lines, tokenizer, options.read_ahead, manifest.seed))
    saved = output.read_json(options.out, output.PLAN_FILE)
    resume = bool(saved and saved.get("plan") == plan_hash)
    num_parts = saved["parts"] if resume else 0
    done = output.committed_parts(options.out, plan_hash, num_parts) if resume else {}
    tok_stats: list[TokStats] = []
    tokenized = []
    if resume:
        selections = [SourceSelection.from_dict(d) for d in saved["selections"]]
        sel_b = sc.broadcast(selections)
        done_set = frozenset(done)
        seed = manifest.seed
        source_names = tuple(s.name for s in manifest.sources)
        offsets_b = sc.broadcast(tagged.first_lines)
        names_b = sc.broadcast(names)

        def wanted(block: PoolBlock):
            """Rows with an instance in a part not committed yet."""
            import numpy as np

            copies = sel_b.value[block.source_index].instances_of(block.hash)
            mask = np.zeros(block.size, dtype=bool)
            name = source_names[block.source_index]
            for row in np.flatnonzero(copies).tolist():
                unit = int(block.unit[row])
                loc = loc_of(names_b.value[unit], offsets_b.value[unit], int(block.loc_line[row]))
                mask[row] = any(order_key(seed, name, loc, c) % num_parts not in done_set
                                for c in range(int(copies[row])))
            return mask

        with Stage(sc, "tokenize", quiet=options.quiet) as st:
            rdd = _tokenize(eligible, wanted, tok_ctx, st.counters)
            rerun_stats = rdd.filter(lambda r: isinstance(r, TokStats)).collect()
            state.persisted["tokenize"] = persisted_bytes(sc, rdd)  # a resumed build's left it out (a tester)
            tokenized.append(rdd)
        state.stages["tokenize"] = {**st.record, "tokens_tokenized": sum(ts.tokens for ts in rerun_stats)}
        # The report describes the build, not this run (whose work is in its stages): the
        # selection's tokenize accounting, saved with the plan, as a clean build reports it.
        saved_stats = saved.get("tokenized")
        tok_stats += rerun_stats if saved_stats is None else [TokStats(**d) for d in saved_stats]
    else:
        selections = _select(sc, manifest, options, state, eligible, sources, targets, tok_ctx, tok_stats,
                             tokenized)
        planned = sum(s.target_tokens for s in selections)
        num_parts = max(1, math.ceil(planned / manifest.output_spec.tokens_per_file))
        output.write_json(options.out, output.PLAN_FILE,
                          {"plan": plan_hash, "parts": num_parts, "selections": [s.to_dict() for s in selections],
                           "tokenized": [ts._asdict() for ts in tok_stats]})
    # ---- write: order instances, one part per task
    wctx = sc.broadcast(WriteContext(options.out, manifest.seed, num_parts, manifest.tokenizer.eos_token_id,
                                     manifest.output_spec.label_mask, tuple(s.name for s in manifest.sources),
                                     plan_hash, frozenset(done), owner))
    sel_b = sc.broadcast(selections)
    with Stage(sc, "write", total_units=num_parts - len(done), quiet=options.quiet) as st:
        counters = st.counters
        docs = _tok_docs(sc, tokenized)
        instances = docs.mapPartitions(lambda ds: _instances(ds, sel_b, wctx, counters))
        ordered = instances.repartitionAndSortWithinPartitions(numPartitions=num_parts, partitionFunc=lambda k: k)
        try:
            written = ordered.mapPartitionsWithIndex(lambda i, it: write_part(i, it, wctx, counters)).collect()
        except Exception:
            output.check_owner(options.out, owner, "without writing its parts")  # the tasks stopped for it
            raise
    state.stages["write"] = {**st.record, "tokens_written": sum(p.tokens for p in written)}
    for rdd in tokenized:
        rdd.unpersist()
    eligible.unpersist()
    output.check_owner(options.out, owner)  # parts another build overwrote would fail verification, naming no cause
    output.verify_parts(options.out, written)
    parts = sorted([*written, *done.values()], key=lambda p: p.index)
    missing = sorted(set(range(num_parts)) - {p.index for p in parts})
    if missing:
        raise BuildError(f"parts {missing[:10]} were neither written nor committed earlier; the build is incomplete")
    keep = {f.name for p in parts for f in p.files} | {f"{PARTS_DIR}/{part_name(p.index)}.json" for p in parts}
    output.check_owner(options.out, owner)  # just before removing what it did not write (verifying took a while)
    output.remove_stale(options.out, keep)
    _copy_quarantine(store, tagged, units, unit_pools, options.out)

    from filters.decontamination import stale_sources_note

    from dolmino.lock import place_lock
    from dolmino.report import build_report, write_report

    for si, coverage in _decontamination_coverage(manifest, resources).items():
        sources[si]["decontamination_coverage"] = coverage
        state.warnings += [f"source {manifest.sources[si].name!r} {c['filter']}: {', '.join(c['unknown_exclusions'])} "
                           "names no eval set of the index nor a released split of one; nothing is excluded for it"
                           for c in coverage if c.get("unknown_exclusions")]
        state.warnings += [f"source {manifest.sources[si].name!r} {c['filter']}: {note}"
                           for c in coverage if (note := stale_sources_note(c))]
    budget = options.budget if manifest.kind != "pool" else sum(s.target_tokens for s in selections)
    report = build_report(manifest, budget, sources, selections, tok_stats, parts, tagged,
                          state, elapsed_s=time.time() - started, cluster=cluster_info(sc),
                          out=options.out, attributes=options.attributes, resumed=resume)
    # What the ids mean, beyond the tokenizer's name: the trainer refuses to mix builds of two
    # tokenizer.json files that share a name (or tell two apart that share one file).
    report["tokenizer_sha256"] = tokenizer.json_digest
    output.check_owner(options.out, owner, "without certifying its output (no report.json)")
    place_lock(options.out, options.lock)  # manifest.lock.json, before report.json marks the build complete
    write_report(options.out, report, manifest)
    return report


# ---------------------------------------------------------------------------- helpers


def _pool_group(bundles, ctx_b, counters):
    ctx = ctx_b.value
    worker_heap.freeze()
    started = time.process_time()
    with fetch_attributes(bundles, ctx) as ahead:
        for bundle in bundles:
            for record in pool_bundle(bundle, ctx, ahead):
                if isinstance(record, UnitPool):
                    counters.add("units", 1)
                    counters.add("docs", record.stats["docs_in"])
                    counters.add("bytes", record.stats["bytes_in"])
                yield record
        counters.add("fetched_ahead", ahead.fetched)
    counters.add("cpu_s", time.process_time() - started)


def _token_filters(manifest: Manifest) -> tuple:
    from filters.base import needs_tokens
    from filters.registry import build_filter

    out = []
    for source in manifest.sources:
        chain = []
        for i, spec in enumerate(source.filters):
            if needs_tokens(build_filter(spec, f"{source.name}.filters[{i}]")):
                chain.append((i, spec))
        out.append(tuple(chain))
    return tuple(out)


def _tokenize(eligible, pick, tok_ctx, counters):
    """Tokenize the pool's rows `pick(block)` chooses, each task its own partition's blocks (no shuffle)."""
    from pyspark import StorageLevel

    rdd = eligible.mapPartitions(lambda blocks: tokenize_units(candidates(blocks, pick), tok_ctx, counters))
    rdd.persist(StorageLevel.MEMORY_AND_DISK)
    return rdd


def _tok_docs(sc, tokenized: list):
    """The tokenized documents of every round (each round's RDD also holds its stats records)."""
    if not tokenized:
        return sc.parallelize([])
    return sc.union(tokenized).filter(lambda r: isinstance(r, TokDoc))


def _instances(docs, sel_b, wctx_b, counters):
    """mapPartitions: tokenized documents -> (order key, document) per instance in a part still
    to write. Counts the tokens it reads back (the write stage's `tokens_read`)."""
    selections = sel_b.value
    ctx = wctx_b.value
    read = 0
    for doc in docs:
        read += len(doc.tokens) // 4
        name = ctx.source_names[doc.source_index]
        for c in range(selections[doc.source_index].instances(doc.hash)):
            key = order_key(ctx.seed, name, doc.loc, c)
            if key % ctx.num_parts not in ctx.done:
                yield key, doc
    counters.add("tokens_read", read)


def _source_accounts(manifest: Manifest, unit_pools: list[UnitPool], dedup_removed: dict, buckets: dict) -> list[dict]:
    """Per source: what came in, what was removed by reason, and the pool left (docs, bytes per bucket)."""
    accounts = []
    for si, source in enumerate(manifest.sources):
        acc = {"name": source.name, "docs_in": 0, "bytes_in": 0, "quarantined": {}, "removed": {}, "files": 0,
               "duplicate_ids": 0, "unreadable_bytes": 0, "sample_bytes": 0, "sample_tokens": 0, "sample_docs": 0, "kept_docs": 0,
               "kept_bytes": 0, "filter_reports": {}, "bucket_docs": {}, "bucket_bytes": {}}
        accounts.append(acc)
    for up in unit_pools:
        acc = accounts[up.source_index]
        st = up.stats
        for key in ("docs_in", "bytes_in", "files", "unreadable_bytes", "sample_bytes", "sample_tokens", "sample_docs",
                    "kept_docs", "kept_bytes"):
            acc[key] += st[key]
        for reason, n in st["quarantined"].items():
            acc["quarantined"][reason] = acc["quarantined"].get(reason, 0) + n
        for reason, (docs, nbytes) in st["removed"].items():
            entry = acc["removed"].setdefault(reason, {"docs": 0, "bytes": 0})
            entry["docs"] += docs
            # None: not measured (Stack Exchange pairs removed while converting Posts.xml form no document)
            entry["bytes"] = None if nbytes is None or entry["bytes"] is None else entry["bytes"] + nbytes
        for key, report in up.filter_reports.items():
            if key in acc["filter_reports"]:
                acc["filter_reports"][key].merge(report)
            else:
                acc["filter_reports"][key] = report
    for si, removed in dedup_removed.items():
        acc = accounts[si]
        for reason, (docs, nbytes) in removed.items():
            acc["removed"][reason] = {"docs": docs, "bytes": nbytes}
            acc["kept_docs"] -= docs
            acc["kept_bytes"] -= nbytes
    for si, totals in buckets.items():
        accounts[si]["bucket_docs"] = dict(zip(totals.bucket.tolist(), totals.docs.tolist()))
        accounts[si]["bucket_bytes"] = dict(zip(totals.bucket.tolist(), totals.bytes.tolist()))
    for acc in accounts:
        pool_docs = sum(acc["bucket_docs"].values())
        if pool_docs != acc["kept_docs"]:
            raise BuildError(f"source {acc['name']!r}: {acc['kept_docs']} documents passed filters and dedup but the "
                             f"pool holds {pool_docs}")
        removed = sum(r["docs"] for r in acc["removed"].values())
        if acc["docs_in"] != acc["kept_docs"] + removed + sum(acc["quarantined"].values()):
            raise BuildError(f"source {acc['name']!r}: accounting does not balance: {acc['docs_in']} documents in, "
                             f"{acc['kept_docs']} kept + {removed} removed + {sum(acc['quarantined'].values())} "
                             "quarantined")
    return accounts


def _select(sc, manifest, options, state, eligible, sources, targets, tok_ctx, tok_stats,
            tokenized) -> list[SourceSelection]:
    """Rounds of tokenizing hash-bucket ranges until every source can be cut exactly."""
    selections = []
    for si, acc in enumerate(sources):
        ratio = tokens_per_byte(acc["sample_tokens"], acc["sample_bytes"])
        target = None if targets is None else targets[acc["name"]]
        selections.append(initial_selection(acc["name"], target, acc["kept_docs"], acc["kept_bytes"],
                                            ratio, acc["bucket_bytes"]))
    lo = [0] * len(selections)
    bucket_tokens: list[dict[int, int]] = [{} for _ in selections]
    tokenized_docs = [0] * len(selections)
    greedy = frozenset(si for si, sel in enumerate(selections) if sel.greedy)
    greedy_members: dict[int, list[tuple]] = {si: [] for si in greedy}  # (hashes, tokens) arrays per round task
    round_no = 0
    while True:
        hi = [s.bucket_hi if s.pool_docs else 0 for s in selections]
        if not any(h > l for h, l in zip(hi, lo)):
            break
        round_no += 1
        name = "tokenize" if round_no == 1 else f"tokenize:refill{round_no - 1}"
        # the pool's documents in the round's buckets: the line's total and ETA (it had neither; a tester)
        round_docs = sum(n for si, acc in enumerate(sources) for b, n in acc["bucket_docs"].items()
                         if lo[si] <= b < hi[si])
        with Stage(sc, name, total_docs=round_docs, quiet=options.quiet) as st:
            rdd = _tokenize(eligible, bucket_range(tuple(lo), tuple(hi)), tok_ctx, st.counters)
            # one job: stats, tokens per bucket, and the greedy sources' members
            summary = rdd.mapPartitions(lambda records: _round_summary(records, greedy)).collect()
            state.persisted[name] = persisted_bytes(sc, rdd)
        # from the collected records (accumulators count a retried task twice)
        tokens = sum(r.tokens for r in summary if isinstance(r, TokStats))
        state.stages[name] = {**st.record, "tokens_tokenized": tokens}
        tokenized.append(rdd)
        for record in summary:
            if isinstance(record, TokStats):
                tok_stats.append(record)
                continue
            for (si, b), n in record.tokens.items():
                bucket_tokens[si][b] = bucket_tokens[si].get(b, 0) + n
            for si, n in record.docs.items():
                tokenized_docs[si] += n
            for si, pair in record.members.items():
                greedy_members[si].append(pair)
        for si, sel in enumerate(selections):
            sel.rounds += int(hi[si] > lo[si])
        lo = hi
        more = False
        for si, sel in enumerate(selections):
            more |= refill(sel, sources[si]["bucket_bytes"], bucket_tokens[si], tokenized_docs[si])
        if not more:
            break

    needs = {}
    for si, sel in enumerate(selections):
        if sel.pool_docs:
            need = settle(sel, bucket_tokens[si])
            if need is not None:
                needs[si] = need
        else:
            sel.empty = empty_reason(sel)
    if refused := [r for si, sel in enumerate(selections)
                   if (r := too_many_copies(sel, manifest.sources[si].pool_tokens))]:
        raise BuildError(";\n  ".join(refused))  # before writing: the parts would be nothing but repeats
    # A greedy fill looks at every tokenized document of its source: the rounds collected their
    # (hash, tokens) already. Only a cut within one bucket scans the tokenized documents again.
    members = {si: [pair for hashes, tokens in greedy_members[si] for pair in zip(hashes.tolist(), tokens.tolist())]
               for si, need in needs.items() if need == ALL_MEMBERS}
    if scan := {si: need for si, need in needs.items() if need != ALL_MEMBERS}:
        with Stage(sc, "cut", total_docs=sum(tokenized_docs), quiet=options.quiet) as st:
            members.update(_members(sc, tokenized, scan, st.counters))
        state.stages["cut"] = st.record
    for si, need in needs.items():
        cut(selections[si], bucket_tokens[si], members.get(si, []))
    return selections


class RoundTokens(NamedTuple):
    """A tokenize task's tokens per (source index, bucket), the round's bucket totals, its
    documents per source, and the (hashes, tokens) of its documents of greedy sources (numpy
    int64 arrays per source index): what their fill chooses from."""

    tokens: dict
    docs: dict
    members: dict


def _round_summary(records, greedy: frozenset):
    tokens: dict[tuple[int, int], int] = {}
    docs: dict[int, int] = {}
    members: dict[int, tuple[list, list]] = {}
    for record in records:
        if isinstance(record, TokStats):
            yield record
        else:
            si, n = record.source_index, len(record.tokens) // 4
            key = (si, bucket_of(record.hash))
            tokens[key] = tokens.get(key, 0) + n
            docs[si] = docs.get(si, 0) + 1
            if si in greedy:
                hashes, counts = members.setdefault(si, ([], []))
                hashes.append(record.hash)
                counts.append(n)
    import numpy as np

    yield RoundTokens(tokens, docs, {si: (np.asarray(h, dtype=np.int64), np.asarray(c, dtype=np.int64))
                                     for si, (h, c) in members.items()})


def _members(sc, tokenized, needs: dict[int, int], counters) -> dict[int, list[tuple[int, int]]]:
    """{source index: (hash, tokens) of its tokenized documents in the bucket it needs}, for every
    source in one Spark job (the progress line counts the documents scanned)."""
    needs_b = sc.broadcast(needs)

    def scan(docs):
        need_of = needs_b.value
        scanned = read = 0
        for d in docs:
            scanned += 1
            read += len(d.tokens) // 4
            need = need_of.get(d.source_index)
            if need is not None and bucket_of(d.hash) == need:
                yield d.source_index, (d.hash, len(d.tokens) // 4)
        counters.add("docs", scanned)
        counters.add("tokens_read", read)

    out: dict[int, list[tuple[int, int]]] = {}
    for si, member in _tok_docs(sc, tokenized).mapPartitions(scan).collect():
        out.setdefault(si, []).append(member)
    return out


def _decontamination_coverage(manifest: Manifest, resources: dict) -> dict[int, list[dict]]:
    """Per source, for each decontamination filter: which of the paper's eval sets its index
    covers, with instance counts (the index's metadata; the driver reads it locally)."""
    from filters.decontamination import index_coverage

    from dolmino.build.resources import localize

    out: dict[int, list[dict]] = {}
    for si, source in enumerate(manifest.sources):
        for i, spec in enumerate(source.filters):
            if spec["type"] != "decontaminate":
                continue
            resource = resources[spec["index_path"]]
            path = localize(resource._replace(shipped_as=None))
            coverage = index_coverage(path, spec.get("exclude_tasks", ()), spec.get("exclude_splits", ()))
            coverage["index"] = spec["index_path"]
            out.setdefault(si, []).append({"filter": f"filters[{i}]", **coverage})
    return out


def _copy_quarantine(store: AttributeStore, tagged, units, unit_pools: list[UnitPool], out: str) -> None:
    """Each unit's refused lines, as its docs set's tag stored them, into --out (one listing per source)."""
    refused = {up.unit_index: up.stats["quarantined"] for up in unit_pools if sum(up.stats["quarantined"].values())}
    stored: dict[str, set[str]] = {}
    copies = []
    for unit in units:
        if unit.index in refused:
            plan = tagged.plans[unit.source_index]
            path = store.quarantine_path(plan.name, plan.docs_set, unit)
            if plan.name not in stored:
                stored[plan.name] = store.existing(plan.name, quarantine_dir(plan.docs_set))
            if path not in stored[plan.name]:
                path = _earlier_quarantine(store, plan, unit, refused[unit.index], path)
            # Tagging numbers a byte range's lines from its start; the output names the file's line.
            copies.append((path, output.quarantine_name(plan.name, unit.key), tagged.first_lines.get(unit.index, 0)))
    output.copy_quarantine(out, copies)


def _earlier_quarantine(store: AttributeStore, plan, unit, counts: dict[str, int], missing: str) -> str:
    """A root tagged before quarantine files were kept per docs set holds a unit's refused lines at
    the unit's name alone, as the last manifest that tagged it read them (another max_doc_bytes
    refuses other lines). That file is taken where its lines count by reason as this build's docs set
    does: oversize lines follow the limit, so equal counts are the same lines. Else the mix stops."""
    import gzip
    import json
    import zlib

    earlier = store.unit_path(plan.name, QUARANTINE_DIR, unit, ".jsonl.gz")
    found: dict[str, int] = {}
    data = read_if_exists(earlier)  # a store that fails to answer raises: not the file's doing
    try:
        for line in gzip.decompress(data).splitlines() if data is not None else ():
            reason = json.loads(line)["reason"]
            found[reason] = found.get(reason, 0) + 1
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError):
        found = {"unreadable": 1}
    expected = {reason: n for reason, n in counts.items() if n}
    if data is None:
        raise BuildError(f"{missing}: missing: the {sum(expected.values()):,} refused line(s) of input {unit.key} that "
                         f"its docs set counts are not stored (deleted?); tag source {plan.name!r} into a new "
                         "--attributes root")
    if found != expected:
        raise BuildError(f"{earlier}: the refused lines of input {unit.key} as another manifest read them "
                         f"({dict(sorted(found.items()))}, where this one's docs set counts "
                         f"{dict(sorted(expected.items()))}): this attributes root was tagged before "
                         f"refused lines were kept per docs set; tag source {plan.name!r} into a new --attributes root")
    return earlier


def _tag_summary(manifest, options, tagged, units, listing, elapsed, sc, state) -> dict:
    return {
        "manifest": manifest.name, "attributes": options.attributes, "units": len(units),
        "bundles": len(tagged.bundles),
        "tagged_units": tagged.tagged_units, "reused_units": len(units) - tagged.tagged_units,
        "signature_units": tagged.signature_units, "attribute_files": tagged.attribute_files,
        "input_bytes": listing.total_bytes, "files_written": len(tagged.written),
        "bytes_written": sum(tagged.written.values()), "minhash": tagged.minhash, "stages": state.stages,
        "warnings": state.warnings, "elapsed_s": round(elapsed, 2), "cluster": cluster_info(sc),
    }



def build(manifest: Manifest, budget: int, out: str, spark, *, attributes: str | None = None, quiet: bool = True,
          **options) -> dict:
    """Run the whole build (tag, reusing attributes, then mix) from Python; returns the report."""
    attributes = attributes or default_attributes_root(out)
    return run_build(manifest, BuildOptions(budget, out, attributes, quiet=quiet, **options), spark)
