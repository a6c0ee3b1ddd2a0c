"""The tag phase: read every pool unit once and store what the mix phase decides from.

Per unit (one executor task handles several), in input order:

- the `docs` set: line, loc line, id, UTF-8 bytes of the text, whether it is blank after
  strip, a 128-bit content hash (exact dedup), plus the unit's counts in the file metadata
  (lines, documents, quarantined by reason, Stack Exchange removals, and a tokens-per-byte
  sample: the dolma2 token count of the ~1/1024 of documents whose content hash starts
  with ten zero bits, so the mix phase can estimate a pool's tokens without tokenizing it);
- one set per tagging filter of the source (`filters/base.py`: scores, or verdicts);
- for Stack Exchange sources, the Q&A documents made from Posts.xml (the mix reads those):
  a whole file inside its tag task, a large uncompressed one by Spark stages over its byte
  ranges before the tag stage (`dolmino.build.stackexchange`), with the same documents.

Then, per source with MinHash dedup, a source-wide stage: signatures of every document,
LSH banding and connected components (`filters.dedup`), and a `minhash-<key>` set that
names each clustered document's cluster. Clusters cover the whole pool, before any filter
decides, as dolma's dedup does: a changed threshold needs no new dedup, and the mix phase
keeps, in each cluster, the member with the smallest keep key among those that pass.

Everything an executor writes is reported to the driver with its size, and the driver
checks it can see every file before it goes on.
"""

from __future__ import annotations

import time
from typing import Iterator, NamedTuple

from dolmino.build import untagged, worker_heap
from dolmino.build.attributes import (
    ATTRIBUTE_FORMAT, DOCUMENTS_DIR, REMEDY, STAT_COUNTS, STAT_MAPS, AttributeStore, Bundle, add_counts, read_table,
    spec_key, unit_listing, text_hash, unit_rows, unit_stats, unit_version, write_table,
)
from dolmino.build.inputs import Unit
from dolmino.build.read import fetch_ahead, read_unit
from dolmino.build.resources import Resource, keyed_spec, localized_spec
from dolmino.build.spark import parallelize_pickled
from dolmino.build.stackexchange import apply_conversion, convert_ranges, convert_whole
from dolmino.documents import Quarantine, QuarantineRecord
from dolmino.errors import BuildError
from dolmino.manifest import MINHASH_DEFAULTS, Manifest
from dolmino.prefetch import DEFAULT_READ_AHEAD, ReadAhead
from dolmino.storage import read_if_exists, write_bytes

BATCH = 512
SAMPLE_BITS = 10  # documents whose content hash starts with this many zero bits form the token sample


# ---------------------------------------------------------------------------- records


class FilterTag(NamedTuple):
    set_name: str  # "<type>-<key>"
    index: int  # position in the source's filter chain
    spec: dict  # the manifest spec (file parameters as the manifest names them)
    # what the set name hashes (file parameters as content digests, a custom scorer's source digest): stored
    # with the set, so that `dolmino mix` can say a model changed in place (`untagged._spelled_otherwise`)
    keyed: dict | None = None
    # a cascade filter ("cascade": true): the positions in the plan's `filters` of the earlier tagged
    # filters whose survivors alone it scores, and whether blank documents (which the pool stage
    # removes before any filter) go unscored too; () for a filter that scores every document
    gate: tuple[int, ...] = ()
    gate_blank: bool = False


class SourceTagPlan(NamedTuple):
    name: str
    format: str
    max_doc_bytes: int | None
    docs_set: str
    filters: tuple[FilterTag, ...]  # the chain's tagging filters (not those that need tokens)
    minhash_set: str | None
    minhash: dict | None  # MinHash parameters (seed filled in)
    minhash_pool: str | None  # units_digest of the source's units: what its clusters were computed over
    # caveats of the sets' keys (a scorer whose source cannot be found): warnings of the build that tags or
    # mixes them, in its summary and report like its other warnings (`run_build`), not a bare line on stderr
    warnings: tuple[str, ...] = ()


class BundleWork(NamedTuple):
    bundle: Bundle
    sets: tuple[str, ...]  # attribute sets to write for this bundle
    signatures: bool  # emit MinHash signatures (the source's cluster set is being computed)
    # unit index -> stackexchange.RangeConverted: Stack Exchange byte ranges converted before the tag stage
    converted: dict


class BundleTagged(NamedTuple):
    bundle_index: int
    # unit index -> lines, for the byte ranges of split files whose docs set was written now: what
    # the driver needs (`first_lines`). Not every unit's counts: 20,000 small files' dicts were
    # shipped, unpickled and filled in on the driver for nothing (0.05-0.1 core-s of its run_tag, measured).
    lines: dict
    # documents read, whichever sets were due: counted only where the docs set was written, a tag of a new
    # filter or MinHash setting showed "0 docs/s" while it read the whole pool again (a tester)
    docs: int
    bytes: int  # UTF-8 text bytes of the documents read, when the docs set was written now
    files: dict  # path -> size of every file written
    sample_tokens: int  # tokens of the documents tokenized for the tokens-per-byte sample
    # unit index -> unreadable bytes, for the units whose compressed stream broke part-way (docs set
    # written now): `dolmino tag` warns of them (report.tag_warnings). Empty for sound units, so the
    # slimmed records stay slim.
    broken: dict


class Signature(NamedTuple):
    source_index: int
    unit_index: int
    line: int  # loc line within the unit
    doc_id: str
    signature: bytes | None


class TagContext(NamedTuple):
    """What tag tasks need, broadcast once."""

    store: AttributeStore
    plans: tuple[SourceTagPlan, ...]
    resources: dict
    tokenizer: object
    seed: int
    read_ahead: int  # S3 objects a task fetches ahead (dolmino.prefetch)


class UnitStats:
    """A unit's counts, gathered while it is tagged; `to_dict` is what its metadata stores."""

    __slots__ = (*STAT_COUNTS, *STAT_MAPS)

    def __init__(self):
        self.lines = 0  # lines in the unit (blank and bad ones included): offsets the next range
        self.docs = 0
        self.bytes = 0
        self.unreadable_bytes = 0  # compressed bytes of a broken stream that yielded nothing
        self.duplicate_ids = 0  # documents whose id already appeared earlier in the unit
        self.sample_docs = 0
        self.sample_bytes = 0
        self.sample_tokens = 0
        self.quarantined: dict[str, int] = {}
        self.removed: dict[str, int] = {}  # removed while reading (Stack Exchange rules)

    def to_dict(self) -> dict:
        """The non-zero counts (attributes.unit_stats restores the rest), maps sorted by reason."""
        out = {name: n for name in STAT_COUNTS if (n := getattr(self, name))}
        for name in STAT_MAPS:
            if counts := getattr(self, name):
                out[name] = dict(sorted(counts.items()))
        return out


# ---------------------------------------------------------------------------- driver: what to tag


def tag_plans(manifest: Manifest, resources: dict[str, Resource], tokenizer_digest: str,
              units: list[Unit], check_indexes: bool = True) -> tuple[SourceTagPlan, ...]:
    """Each source's attribute sets. A MinHash set is named by its parameters and by the units
    its clusters were computed over (its pool): clusters are global to a pool, so two
    manifests whose source lists other files (or a tag of one killed half-way) never share,
    or overwrite, each other's cluster files. `check_indexes=False` leaves a decontaminate
    filter's ngram_size unchecked against its index, which names no set: `dolmino diff` reads
    no index (an s3:// one was downloaded to compare two manifests)."""
    from filters.base import cascades, needs_tokens, tag_params
    from filters.dedup import CLUSTER_REVISION
    from filters.registry import build_filter
    from filters.stackexchange import CONVERSION_REVISION

    blank = skips_blank(manifest)
    plans = []
    for si, source in enumerate(manifest.sources):
        # What decides which documents a unit holds, row by row: a filter's set is read beside the
        # docs set by position, so both are keyed by it (a lower max_doc_bytes, or Stack Exchange
        # rules that drop a pair, had a new docs set read against the old scores: a pool-stage error).
        rows = {"format": ATTRIBUTE_FORMAT, "reader": source.format, "max_doc_bytes": source.max_doc_bytes}
        if source.format == "stackexchange":  # its documents come from rules that changed: convert again
            rows["conversion"] = CONVERSION_REVISION
        docs_key = spec_key({**rows, "tokenizer": tokenizer_digest, "sample_bits": SAMPLE_BITS})
        rows_key = spec_key(rows)
        tags = []
        built = []  # the filters of `tags`
        warnings = []
        for i, spec in enumerate(source.filters):
            filt = build_filter(spec, f"{source.name}.filters[{i}]")
            if needs_tokens(filt):
                continue
            if check_indexes and spec["type"] == "decontaminate" and spec.get("ngram_size") is not None:
                _check_ngram_size(spec, resources, f"source {source.name!r} filters[{i}]")
            keyed = keyed_spec({"type": spec["type"], **tag_params(filt, spec)}, resources)
            keyed["rows"] = rows_key
            if getattr(filt, "tag_revision", None) is not None:  # its scoring changed: earlier sets are not reused
                keyed["revision"] = filt.tag_revision
            source_digest, warning = filt.tag_source() if hasattr(filt, "tag_source") else (None, None)
            if source_digest is not None:  # a custom scorer's code: an edit of it re-tags this column
                keyed["scorer_source"] = source_digest
            if warning is not None:
                warnings.append(f"source {source.name!r} filters[{i}]: {warning}")
            gate = ()
            if cascades(spec):
                # Which rows hold scores follows from the earlier filters' sets and their thresholds: a
                # change of either is another set. Blank documents count where the build removes them.
                # The gate keeps what every earlier filter keeps: their order and repeats change nothing.
                gate = tuple(range(len(tags)))
                entries = ({"set": t.set_name, "decides": _decision_params(f, t.spec)} for t, f in zip(tags, built))
                after = {spec_key(entry): entry for entry in entries}
                keyed["cascade"] = {"after": [after[k] for k in sorted(after)], "blank": blank}
            tags.append(FilterTag(f"{spec['type']}-{spec_key(keyed)}", i, spec, keyed, gate, blank and bool(gate)))
            built.append(filt)
        minhash = pool = None
        if source.dedup.minhash is not None:  # {} asks for MinHash with every default
            # By value, defaults filled in: `{}` and `{"threshold": 0.8}` are one dedup, as `dolmino diff` reads
            # them, and were two sets, the second read the whole pool again for the same clusters (a tester)
            minhash = {**MINHASH_DEFAULTS, "seed": manifest.seed, **source.dedup.minhash}
            minhash["threshold"] = float(minhash["threshold"])
            pool = units_digest([u for u in units if u.source_index == si])
        plans.append(SourceTagPlan(
            source.name, source.format, source.max_doc_bytes, f"docs-{docs_key}", tuple(tags),
            f"minhash-{spec_key({**minhash, 'pool': pool, 'clusters': CLUSTER_REVISION})}" if minhash else None,
            minhash, pool, tuple(warnings)))
    return tuple(plans)


def skips_blank(manifest: Manifest) -> bool:
    """dolma's tokenization skips documents that are empty after strip (docs/DESIGN.md "Tokenization"):
    the pool stage removes them before any filter decides."""
    return manifest.tokenizer.semantics == "dolma"


def _decision_params(filt, spec: dict) -> dict:
    """The parameters that only a filter's decision reads (thresholds), as the filter takes them: its
    set's name holds the others (a verdict filter's, all of them). Its defaults filled in and numbers
    by value: a threshold left out in the tagging manifest and written out as its default (2 or 2.0)
    in the mixing one decides alike, and was another key, so `dolmino mix` refused, saying the filters
    before the cascade filter had decided otherwise, and the tag scored it again (found by a tester)."""
    from filters.base import CASCADE
    from filters.registry import filter_defaults

    scored = getattr(filt, "tag_params", None)
    if scored is None or not hasattr(filt, "tag"):
        return {}
    skip = {*scored, *getattr(filt, "run_params", ()), "type", CASCADE}  # a batch size, a device: no decision
    return {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in sorted({**filter_defaults(spec["type"]), **spec}.items()) if k not in skip}


def _check_ngram_size(spec: dict, resources: dict[str, Resource], where: str) -> None:
    """decontaminate's ngram_size must equal the index's: refused here, on the driver, in one line
    (else in the first tag task, after the Spark jobs began)."""
    from filters.decontamination import read_index_meta

    from dolmino.build.resources import localize

    resource = resources[spec["index_path"]]
    held = read_index_meta(localize(resource._replace(shipped_as=None))).get("ngram_size")
    if held != spec["ngram_size"]:
        raise BuildError(f"{where}.ngram_size: {spec['ngram_size']}, but the index {resource.uri} holds {held}-grams; "
                         "leave ngram_size out (it defaults to the index's)")


def minhash_manifest_path(store: AttributeStore, plan: SourceTagPlan) -> str:
    return f"{store.set_dir(plan.name, plan.minhash_set)}/_SOURCE.json"


def units_digest(units: list[Unit]) -> str:
    return spec_key({"units": [[u.key, unit_version(u)] for u in units]})


# ---------------------------------------------------------------------------- executor: one unit


def _documents(unit: Unit, plan: SourceTagPlan, ctx: TagContext, quarantine: Quarantine,
               ahead: ReadAhead) -> Iterator[tuple[int, dict]]:
    """(read line, document): from the input, or from this unit's Stack Exchange documents
    (whose loc line is in their metadata)."""
    if plan.format != "stackexchange":
        return read_unit(unit.file.uri, unit, quarantine, plan.max_doc_bytes, ahead.take(unit.file.uri))
    return read_unit(ctx.store.documents_path(plan.name, unit), unit, Quarantine(), None)


def _write_quarantine(path: str, records: list[QuarantineRecord]) -> int:
    import gzip

    data = gzip.compress(b"".join(r.to_json().encode("utf-8") + b"\n" for r in records), mtime=0)
    write_bytes(path, data)
    return len(data)


class BundleColumns:
    """What a tag task gathers for one bundle before it writes one file per attribute set."""

    def __init__(self, n_filters: int):
        self.base: dict[str, list] = {"line": [], "loc_line": [], "id": [], "bytes": [], "blank": [], "text_hash": []}
        self.tagged: list[dict[str, list]] = [dict() for _ in range(n_filters)]
        self.rows: list[int] = []  # documents per unit, in unit order
        self.stats: dict[int, dict] = {}  # unit index -> UnitStats dict
        self.files: dict[str, int] = {}  # quarantine and Stack Exchange documents, per unit
        self.flushed = 0  # rows of the bundle its filters have scored so far (batches flushed)


class Gate:
    """Which documents a cascade filter scores: those that every earlier tagged filter keeps, decided
    in chain order from their rows as the pool stage decides them (the first rejection ends it), and
    not blank where the build removes blank documents first. A document it leaves out never reaches
    the filter in the pool stage, so its unscored row is never read.

    `earlier`: (the earlier filter built from its own spec, its set's columns, the stored file's path
    or None): the columns as this task computes them (filled batch by batch before the cascade
    filter scores the batch) or as read from the bundle's stored file."""

    def __init__(self, earlier: list[tuple[object, dict[str, list], str | None]], blank: bool):
        self.earlier = earlier
        self.blank = blank

    def passes(self, row: int, doc: dict) -> bool:
        from filters.base import decide

        if self.blank and not doc["text"].strip():
            return False
        for filt, columns, path in self.earlier:
            try:
                attrs = {name: values[row] for name, values in columns.items()}
            except IndexError:  # a stored file of fewer rows than the input now reads as
                raise BuildError(f"{path} holds fewer rows than its input now reads as documents: {REMEDY}") from None
            if decide(filt, attrs) is not None:
                return False
        return True


def _gated_columns(filt, gate: Gate, docs: list[dict], first_row: int) -> dict[str, list]:
    """A cascade filter's columns for a batch: scores of the documents its gate passes, None in
    the other rows, and the `scored` column that tells them apart."""
    from filters.base import SCORED_COLUMN, tag_columns

    scored = [gate.passes(first_row + j, doc) for j, doc in enumerate(docs)]
    picked = [doc for doc, ok in zip(docs, scored) if ok]
    columns: dict[str, list] = {}
    if picked:  # no call with no documents: a model's batch of none is not every scorer's case
        for name, values in tag_columns(filt, picked).items():
            it = iter(values)
            columns[name] = [next(it) if ok else None for ok in scored]
    columns[SCORED_COLUMN] = scored
    return columns


def _extend(target: dict[str, list], columns: dict[str, list], rows_before: int, n: int) -> None:
    """Append a batch's columns; a column that a batch lacks (a cascade batch with no document
    scored) is None in its rows, whichever batch first had it."""
    for name, values in columns.items():
        target.setdefault(name, [None] * rows_before).extend(values)
    for values in target.values():
        if len(values) < rows_before + n:
            values.extend([None] * (rows_before + n - len(values)))


def _flush(batch: list[tuple[int, int, dict]], filters: list, hasher, acc: BundleColumns, plan: SourceTagPlan,
           unit: Unit, gates: list[Gate | None]) -> Iterator[Signature]:
    """Score a batch of documents with the bundle's filters (in chain order: a cascade filter's
    gate reads the batch's rows of the sets computed before it); their MinHash signatures."""
    from filters.base import tag_columns
    from filters.quality import ScorerError

    docs = [d for _, _, d in batch]
    first_row = acc.flushed
    try:
        for k, filt in enumerate(filters):
            if gates[k] is None:
                for name, values in tag_columns(filt, docs).items():
                    acc.tagged[k].setdefault(name, []).extend(values)
            else:
                _extend(acc.tagged[k], _gated_columns(filt, gates[k], docs, first_row), first_row, len(docs))
    except ScorerError as exc:  # the batch's ids alone left the user to find its input file (a tester)
        line, _, frames = str(exc).partition("\n")
        # Not the first and last document's: a Stack Exchange document's line is its question row's, and
        # its documents come in the order their pairs complete (a reviewer)
        lines = [loc_line for _, loc_line, _ in batch]
        where = f" (input {unit.file.name}, lines {min(lines):,}-{max(lines):,})"
        raise ScorerError(line + where + (f"\n{frames}" if frames else "")) from None
    acc.flushed += len(docs)
    if hasher is not None:
        ngram = plan.minhash.get("ngram", MINHASH_DEFAULTS["ngram"])
        for _line, loc_line, doc in batch:
            sig = hasher.text_signature(doc["text"], ngram)
            yield Signature(unit.source_index, unit.index, loc_line, doc["id"], None if sig is None else sig.tobytes())


def tag_unit(unit: Unit, work: BundleWork, ctx: TagContext, filters: list, hasher,
             acc: BundleColumns, ahead: ReadAhead, gates: list[Gate | None]) -> Iterator[Signature]:
    """Read one unit, append its rows to the bundle's columns, yield its MinHash signatures."""
    si = unit.source_index
    plan = ctx.plans[si]
    store = ctx.store
    stats = UnitStats()
    quarantine = Quarantine()
    write_docs = plan.docs_set in work.sets
    se = plan.format == "stackexchange"
    if se and write_docs:
        if unit.index in work.converted:
            apply_conversion(work.converted[unit.index], stats, acc.files)
        else:
            convert_whole(unit, plan.name, ctx.store, quarantine, stats, acc.files)
    base = acc.base
    seen_ids: set[str] = set()
    sample_texts: list[str] = []
    docs_before = len(base["line"])
    rows = 0

    batch: list[tuple[int, int, dict]] = []
    for line, doc in _documents(unit, plan, ctx, quarantine, ahead):
        loc_line = int(doc["metadata"]["line"]) if se else line
        rows += 1
        if write_docs:
            text_bytes = doc["text"].encode("utf-8")
            digest = text_hash(text_bytes)
            base["line"].append(line)
            base["loc_line"].append(loc_line)
            base["id"].append(doc["id"])
            base["bytes"].append(len(text_bytes))
            base["blank"].append(not doc["text"].strip())
            base["text_hash"].append(digest)
            stats.docs += 1
            stats.bytes += len(text_bytes)
            if doc["id"] in seen_ids:
                stats.duplicate_ids += 1
            seen_ids.add(doc["id"])
            if digest[0] == 0 and digest[1] >> (16 - SAMPLE_BITS) == 0:
                sample_texts.append(doc["text"])
                stats.sample_docs += 1
                stats.sample_bytes += len(text_bytes)
        if filters or hasher is not None:
            batch.append((line, loc_line, doc))
            if len(batch) >= BATCH:
                yield from _flush(batch, filters, hasher, acc, plan, unit, gates)
                batch = []
    if batch:
        yield from _flush(batch, filters, hasher, acc, plan, unit, gates)
    acc.rows.append(rows)
    if write_docs:
        assert len(base["line"]) - docs_before == rows
        if sample_texts:
            stats.sample_tokens = sum(len(ids) + 1 for ids in ctx.tokenizer.encode_batch(sample_texts))
        if quarantine.counts:
            add_counts(stats.quarantined, quarantine.counts)
        stats.unreadable_bytes = quarantine.unreadable_bytes
        if not se:
            stats.lines = quarantine.lines
        if quarantine.records:
            qpath = store.quarantine_path(plan.name, plan.docs_set, unit)
            acc.files[qpath] = _write_quarantine(qpath, quarantine.records)
        acc.stats[unit.index] = stats.to_dict()


def _gate(plan: SourceTagPlan, tag: FilterTag, due: list[FilterTag], acc: BundleColumns, bundle: Bundle,
          ctx: TagContext, stored: dict[str, tuple[str, dict[str, list]]]) -> Gate:
    """A cascade filter's gate in one task: each earlier filter decides by its own spec, from the
    columns this task computes for its set or, where the set was tagged before, from the stored file
    (read once per bundle into `stored`: set name -> (path, columns)). The filters are built from the
    specs as the manifest gives them, not localized: a decision reads no model, and a model on S3 was
    fetched to every node for it."""
    from filters.registry import build_filter

    computed = {t.set_name: k for k, t in enumerate(due)}
    earlier = []
    for position in tag.gate:
        before = plan.filters[position]
        filt = build_filter(before.spec, f"{plan.name}.filters[{before.index}]")
        if before.set_name in computed:
            earlier.append((filt, acc.tagged[computed[before.set_name]], None))
            continue
        if before.set_name not in stored:
            path = ctx.store.path(plan.name, before.set_name, bundle)
            table, meta = read_table(path)
            spans = unit_rows(meta, bundle, path, before.set_name)  # these units, at these versions
            if table.num_rows != (spans[-1][1] if spans else 0):
                raise BuildError(f"{path} holds {table.num_rows:,} rows where its metadata lists "
                                 f"{spans[-1][1] if spans else 0:,}: {REMEDY}")
            stored[before.set_name] = (path, table.to_pydict())
        path, columns = stored[before.set_name]
        earlier.append((filt, columns, path))
    return Gate(earlier, tag.gate_blank)


def _docs_schema():
    import pyarrow as pa

    return pa.schema([("line", pa.int64()), ("loc_line", pa.int64()), ("id", pa.string()), ("bytes", pa.int64()),
                      ("blank", pa.bool_()), ("text_hash", pa.binary(16))])


def tag_bundle(work: BundleWork, ctx: TagContext, ahead: ReadAhead) -> Iterator[BundleTagged | Signature]:
    """Tag a bundle's units in order, then write one file per due attribute set (docs last)."""
    import pyarrow as pa

    from filters.registry import build_filter

    bundle = work.bundle
    plan = ctx.plans[bundle.source_index]
    store = ctx.store
    # One per set: filters whose tag parameters agree (one model at two thresholds) share it, and each
    # scored every document again into the same file (a tester).
    firsts = {}
    for t in plan.filters:
        if t.set_name in work.sets:
            firsts.setdefault(t.set_name, t)
    tags = list(firsts.values())
    filters = [build_filter(localized_spec(t.spec, ctx.resources), f"{plan.name}.filters[{t.index}]") for t in tags]
    for tag, filt in zip(tags, filters):
        if (digest := (tag.keyed or {}).get("scorer_source")) is not None:
            filt.check_source(digest)  # this node scores with the code the set is keyed by
    hasher = None
    if work.signatures:
        from filters.minhash import MinHasher

        hasher = MinHasher(plan.minhash.get("num_perm", MINHASH_DEFAULTS["num_perm"]), plan.minhash["seed"])
    acc = BundleColumns(len(tags))
    stored: dict[str, tuple[str, dict[str, list]]] = {}  # earlier sets read for gates, once per bundle
    gates = [_gate(plan, t, tags, acc, bundle, ctx, stored) if t.gate else None for t in tags]
    for unit in bundle.units:
        yield from tag_unit(unit, work, ctx, filters, hasher, acc, ahead, gates)
    for path, columns in stored.values():
        rows = len(next(iter(columns.values()), []))
        if rows != acc.flushed:
            raise BuildError(f"{path} holds {rows:,} rows where its input now reads as {acc.flushed:,} documents: "
                             f"{REMEDY}")

    listed = unit_listing(bundle, acc.rows)
    meta = {"bundle": bundle.key, "version": bundle.version, "source": plan.name, "units": listed}
    files = acc.files
    for k, tag in enumerate(tags):
        columns = acc.tagged[k] or {"reason": []}
        schema = pa.schema([(name, pa.array(values).type) for name, values in columns.items()])
        path = store.path(plan.name, tag.set_name, bundle)
        files[path] = write_table(path, columns, schema,
                                  {**meta, "set": tag.set_name, "spec": tag.spec, "keyed": tag.keyed})
    if plan.docs_set in work.sets:
        for entry, unit in zip(listed, bundle.units):
            entry["stats"] = acc.stats[unit.index]
        path = store.path(plan.name, plan.docs_set, bundle)
        # Written last: its presence means the units' quarantine and documents are in place.
        files[path] = write_table(path, acc.base, _docs_schema(), {**meta, "set": plan.docs_set})
    stats = acc.stats.values()
    yield BundleTagged(bundle.index, {u.index: acc.stats[u.index].get("lines", 0) for u in bundle.units
                                      if _split(u) and u.index in acc.stats},
                       sum(acc.rows), sum(st.get("bytes", 0) for st in stats), files,
                       sum(st.get("sample_tokens", 0) for st in stats),
                       {ui: st.get("unreadable_bytes", 0) for ui, st in acc.stats.items()
                        if st.get("quarantined", {}).get("corrupt_stream")})


def run_tag_task(works: list[BundleWork], ctx_b, counters) -> Iterator[BundleTagged | Signature]:
    import warnings

    from filters.decontamination import UnknownExclusionWarning

    # the driver's report says it once; printed by every worker it also broke the live stage line
    warnings.simplefilter("ignore", UnknownExclusionWarning)
    ctx = ctx_b.value
    worker_heap.freeze()
    with fetch_ahead([u for work in works for u in work.bundle.units], ctx.read_ahead) as ahead:
        for work in works:
            started = time.process_time()
            for record in tag_bundle(work, ctx, ahead):
                if isinstance(record, BundleTagged):
                    counters.add("units", len(work.bundle.units))
                    counters.add("bytes", work.bundle.size)
                    counters.add("docs", record.docs)
                yield record
            counters.add("cpu_s", time.process_time() - started)
        counters.add("fetched_ahead", ahead.fetched)


# ---------------------------------------------------------------------------- driver


class TagResult(NamedTuple):
    plans: tuple[SourceTagPlan, ...]
    bundles: tuple[Bundle, ...]
    first_lines: dict  # unit index -> lines before the unit in its file (byte ranges)
    tagged_units: int  # units this run read: an attribute set (documents, a filter's) or MinHash signatures due
    written: dict  # path -> size of every attribute file written by this run
    minhash: dict  # source name -> MinHash stage stats
    stages: dict  # stage name -> progress record
    signature_units: int = 0  # of tagged_units, those read only for MinHash signatures
    attribute_files: dict | None = None  # source -> set -> files written (and bytes) and reused (attribute_files)
    broken: dict | None = None  # unit index -> unreadable bytes, of units tagged now whose stream broke part-way


def _stored_lines(bundle: Bundle, path: str, set_name: str) -> list[tuple[int, int]]:
    """(unit index, lines) of the bundle's split units, from its stored docs set."""
    _table, meta = read_table(path, columns=[])
    unit_rows(meta, bundle, path, set_name)  # the file lists exactly the bundle's units, and is of its set
    return [(unit.index, unit_stats(entry["stats"])["lines"]) for unit, entry in zip(bundle.units, meta["units"])
            if _split(unit)]


def _split(unit: Unit) -> bool:
    """A range of a file whose `loc` lines count from the file's start (not Stack Exchange)."""
    return unit.is_range and unit.file.format != "stackexchange"


def first_lines(units: list[Unit], lines: dict[int, int]) -> dict[int, int]:
    """Lines before each unit in its file: 0 for whole files, the earlier ranges' lines otherwise
    (`lines`: each range's own lines).

    Stack Exchange units get 0: their documents name their question row's line in the whole
    Posts.xml already (`dolmino.build.stackexchange`)."""
    offsets = dict.fromkeys((u.index for u in units), 0)
    running: dict[str, int] = {}
    for unit in sorted((u for u in units if _split(u)), key=lambda u: (u.file.uri, u.start)):
        offsets[unit.index] = running.get(unit.file.uri, 0)
        running[unit.file.uri] = offsets[unit.index] + lines[unit.index]
    return offsets


def check_visible(store_paths: dict[str, int], listed: set[str], what: str) -> None:
    """Fail loudly when files executors reported are not where the driver looks for them."""
    missing = sorted(p for p in store_paths if p not in listed)
    if missing:
        raise BuildError(
            f"{len(missing)} {what} written by the executors are not visible from the driver (first: {missing[0]}). "
            "On a cluster without a shared filesystem, put the attributes root and --out on s3:// (or a filesystem "
            "mounted at the same path on every node).")


def _listing(store: AttributeStore, paths) -> set[str]:
    dirs = {p.rsplit("/", 1)[0] for p in paths}
    roots = set()
    for d in dirs:
        # the set directory: <root>/<source>/<set>
        rel = d[len(store.root.rstrip("/")) + 1:].split("/")
        roots.add(tuple(rel[:2]))
    found: set[str] = set()
    for source, set_name in roots:
        found |= store.existing(source, set_name)
    return found


def run_tag(sc, manifest: Manifest, store: AttributeStore, units: list[Unit], bundles: list[Bundle],
            task_groups: list[tuple[Bundle, ...]], resources: dict[str, Resource], tokenizer,
            plans: tuple[SourceTagPlan, ...], *, quiet: bool = False, allow_work: bool = True,
            read_ahead: int = DEFAULT_READ_AHEAD) -> TagResult:
    """Tag every bundle that lacks an attribute set of `plans` (`tag_plans`); with allow_work=False,
    refuse instead (`dolmino mix`)."""
    import json

    from pyspark import StorageLevel

    from dolmino.build.progress import Stage

    listed: dict[tuple[int, str], set[str]] = {}
    for si, plan in enumerate(plans):
        for set_name in [plan.docs_set, *(t.set_name for t in plan.filters)]:
            listed[(si, set_name)] = store.existing(plan.name, set_name)
    by_source: dict[int, list[Unit]] = {}
    for u in units:
        by_source.setdefault(u.source_index, []).append(u)
    minhash_due: dict[int, str] = {}
    minhash_stats = {}
    for si, plan in enumerate(plans):
        if plan.minhash_set:
            digest = plan.minhash_pool
            stored = read_if_exists(minhash_manifest_path(store, plan))
            try:
                done = json.loads(stored) if stored is not None else None
            except ValueError:
                done = None
            # Done: _SOURCE.json (written last) says so, and every bundle's cluster file is there.
            clusters = store.existing(plan.name, plan.minhash_set)
            complete = all(store.path(plan.name, plan.minhash_set, b) in clusters
                           for b in bundles if b.source_index == si)
            if not isinstance(done, dict) or done.get("units") != digest or not complete:
                minhash_due[si] = digest
            else:
                minhash_stats[plan.name] = done.get("stats")  # the report's figures when clusters are reused

    # Stack Exchange documents (converted Posts.xml) are read beside the docs set: one gone (deleted,
    # a lost upload) was reported reused, then failed the build as a raw FileNotFoundError (a tester).
    converted = {si: store.existing(plan.name, DOCUMENTS_DIR) for si, plan in enumerate(plans)
                 if plan.format == "stackexchange"}
    works: dict[int, BundleWork] = {}
    for bundle in bundles:
        si = bundle.source_index
        plan = plans[si]
        sets = tuple(s for s in dict.fromkeys([plan.docs_set, *(t.set_name for t in plan.filters)])  # filters may share
                     if store.path(plan.name, s, bundle) not in listed[(si, s)])
        if si in converted and plan.docs_set not in sets and any(
                store.documents_path(plan.name, u) not in converted[si] for u in bundle.units):
            sets = (plan.docs_set, *sets)  # converted again with the docs set, as when it is missing
        signatures = si in minhash_due
        if sets or signatures:
            works[bundle.index] = BundleWork(bundle, sets, signatures, {})
    if works and not allow_work:
        raise BuildError(untagged.describe(works, units, plans, store, listed))
    reasons = _retag_reasons(works, units, plans, store, listed)
    stages = {}
    se_due = {u.index: w.bundle.index for w in works.values() for u in w.bundle.units
              if u.is_range and plans[u.source_index].format == "stackexchange"
              and plans[u.source_index].docs_set in w.sets}
    if se_due:
        converted, stages = convert_ranges(sc, units, set(se_due), {si: p.name for si, p in enumerate(plans)}, store,
                                           {si: p.docs_set for si, p in enumerate(plans)}, quiet=quiet)
        for unit_index, bundle_index in se_due.items():
            works[bundle_index].converted[unit_index] = converted[unit_index]
    groups = [[works[b.index] for b in group if b.index in works] for group in task_groups]
    groups = [g for g in groups if g]

    records = None
    results: list[BundleTagged] = []
    todo_bytes = sum(w.bundle.size for w in works.values())
    todo_units = sum(len(w.bundle.units) for w in works.values())
    with Stage(sc, "tag", total_bytes=todo_bytes, total_units=todo_units, reused_units=len(units) - todo_units,
               quiet=quiet) as stage:
        if groups:
            # Only when there is work: the context holds the tokenizer (2.6 MB pickled), which the
            # JVM compressed and stored for every mix that tagged nothing (~0.04 core-s).
            ctx_b = sc.broadcast(TagContext(store, plans, resources, tokenizer, manifest.seed, read_ahead))
            counters = stage.counters
            records = parallelize_pickled(sc, groups).flatMap(lambda g: run_tag_task(g, ctx_b, counters))
            if minhash_due:
                records.persist(StorageLevel.MEMORY_AND_DISK)
            results = records.filter(lambda r: isinstance(r, BundleTagged)).collect()
    stages["tag"] = stage.record
    stages["tag"]["tokens_tokenized"] = sum(r.sample_tokens for r in results)  # from records: no retried task twice
    written = {p: n for r in results for p, n in r.files.items()}
    if written:
        check_visible(written, _listing(store, written), "attribute files")

    lines = {ui: n for r in results for ui, n in r.lines.items()}
    # Lines before each range of a split file come from the earlier ranges' counts: only bundles
    # with such ranges not tagged now have their stored counts read (one Spark job). The mix
    # phase gets every unit's counts from the pool stage, which reads the same files whole.
    missing = [b for b in bundles if any(_split(u) and u.index not in lines for u in b.units)]
    if missing:
        pairs = [(b, store.path(plans[b.source_index].name, plans[b.source_index].docs_set, b),
                  plans[b.source_index].docs_set) for b in missing]
        n = max(1, min(len(pairs), sc.defaultParallelism * 4))
        lines.update(parallelize_pickled(sc, pairs, n).flatMap(lambda p: _stored_lines(*p)).collect())
    offsets = first_lines(units, lines)

    for si, digest in minhash_due.items():
        with Stage(sc, f"minhash:{plans[si].name}", total_units=len(by_source.get(si, [])), quiet=quiet) as stage:
            minhash_stats[plans[si].name] = _cluster_source(
                sc, records, si, plans[si], [b for b in bundles if b.source_index == si], offsets, store, digest,
                written, stage.counters)
        stages[f"minhash:{plans[si].name}"] = stage.record
    if records is not None:
        records.unpersist()
    tagged_units = sum(len(works[r.bundle_index].bundle.units) for r in results)  # each read again by this run
    # Of them, those read only for MinHash signatures (another unit of their source changed, or the
    # MinHash settings): "15 of 15 tagged, 0 reused" read as every attribute set redone (a tester).
    signature_units = sum(len(works[r.bundle_index].bundle.units) for r in results if not works[r.bundle_index].sets)
    return TagResult(plans, tuple(bundles), offsets, tagged_units, written, minhash_stats, stages,
                     signature_units, attribute_files(plans, bundles, store, written, reasons),
                     {ui: n for r in results for ui, n in r.broken.items()})


def _retag_reasons(works: dict, units: list[Unit], plans, store: AttributeStore, listed: dict) -> dict:
    """`untagged.retag_reasons`, or {} where the root cannot be read further: the tag goes on unexplained
    rather than stop over its explanation, and says so (it printed no `why:` line and no word of why;
    found by a reviewer)."""
    if not works:
        return {}
    try:
        return untagged.retag_reasons(works, units, plans, store, listed)
    except Exception as exc:  # noqa: BLE001 - only what the tag says of its work depends on it
        import sys

        from dolmino.s3 import redact

        print(f"warning: why attribute files are due was not read ({type(exc).__name__}: {redact(str(exc))}); "
              "the tag goes on", file=sys.stderr)
        return {}


def attribute_files(plans: tuple[SourceTagPlan, ...], bundles: list[Bundle], store: AttributeStore,
                    written: dict, reasons: dict | None = None) -> dict:
    """Per source and attribute set (docs, each filter's, MinHash): its bundle files this run wrote,
    their bytes, and those reused. Counted by unit, one filter's new scores read as every set of
    those units redone ("2 of 4 tagged" when one fastText set was written; a tester). A set with
    bundles due adds `reasons` (`untagged.retag_reasons`): why each was tagged (again)."""
    out: dict[str, dict] = {plan.name: {} for plan in plans}
    for bundle in bundles:
        plan = plans[bundle.source_index]
        names = [plan.docs_set, *(t.set_name for t in plan.filters), *([plan.minhash_set] if plan.minhash_set else [])]
        for set_name in dict.fromkeys(names):  # two filters spelled alike share a set
            counts = out[plan.name].setdefault(set_name, {"written": 0, "reused": 0, "bytes_written": 0})
            size = written.get(store.path(plan.name, set_name, bundle))
            if size is None:
                counts["reused"] += 1
            else:
                counts["written"] += 1
                counts["bytes_written"] += size
    for source, by_set in (reasons or {}).items():
        for set_name, why in by_set.items():
            out[source][set_name]["reasons"] = why
    return out


# ---------------------------------------------------------------------------- MinHash clusters


def _keyed_signature(sig: Signature, names, offsets) -> tuple:
    from filters.dedup import document_key

    loc = f"{names[sig.unit_index]}:{offsets[sig.unit_index] + sig.line}"
    return (document_key({"id": sig.doc_id, "loc": loc}), sig.unit_index, sig.line), sig.signature


def _write_clusters(bundle: Bundle, members, store: AttributeStore, plan: SourceTagPlan) -> tuple[str, int]:
    """One bundle's cluster file: (line, cluster) of its clustered documents, unit by unit."""
    import pyarrow as pa

    by_unit: dict[int, list] = {}
    for unit_index, line, root in members or ():
        by_unit.setdefault(unit_index, []).append((line, root))
    lines, clusters, counts = [], [], []
    for unit in bundle.units:
        rows = sorted(by_unit.get(unit.index, ()))
        lines += [line for line, _ in rows]
        clusters += [root.to_bytes(16, "big") for _, root in rows]
        counts.append(len(rows))
    schema = pa.schema([("line", pa.int64()), ("cluster", pa.binary(16))])
    path = store.path(plan.name, plan.minhash_set, bundle)
    meta = {"bundle": bundle.key, "version": bundle.version, "source": plan.name,
            "units": unit_listing(bundle, counts), "minhash": plan.minhash, "pool": plan.minhash_pool,
            "set": plan.minhash_set}
    return path, write_table(path, {"line": lines, "cluster": clusters}, schema, meta)


def _cluster_source(sc, records, si: int, plan: SourceTagPlan, bundles: list[Bundle], offsets: dict, store,
                    digest: str, written: dict, counters) -> dict:
    """Signatures -> LSH -> connected components -> one cluster file per bundle, then _SOURCE.json."""
    import json
    from operator import add

    from pyspark import StorageLevel

    from filters.dedup import CLUSTER_REVISION, _tally_sizes, connected_components, lsh_edges
    from filters.minhash import MinHashConfig

    config = MinHashConfig(**plan.minhash)
    units = [u for b in bundles for u in b.units]
    names_b = sc.broadcast({u.index: u.file.name for u in units})
    offsets_b = sc.broadcast({u.index: offsets[u.index] for u in units})
    bundle_of = sc.broadcast({u.index: b.index for b in bundles for u in b.units})
    sigs = (records.filter(lambda r: isinstance(r, Signature) and r.source_index == si)
            .map(lambda s: _keyed_signature(s, names_b.value, offsets_b.value)))
    sigs.persist(StorageLevel.MEMORY_AND_DISK)
    docs_in, no_shingles = sigs.map(lambda kv: (1, int(kv[1] is None))).fold((0, 0), lambda a, b: (a[0] + b[0], a[1] + b[1]))
    counters.add("docs", docs_in)
    edges, counts = lsh_edges(sigs, config, verify=True)
    sigs.unpersist()
    roots, rounds = connected_components(edges)
    edges.unpersist()
    members = roots.flatMap(lambda nr: ((nr[0][1], (nr[0][2], nr[1][0])), (nr[1][1], (nr[1][2], nr[1][0])))).distinct()
    members.persist(StorageLevel.MEMORY_AND_DISK)
    tally = _tally_sizes(members.map(lambda m: (m[1][1], 1)).reduceByKey(add).map(lambda kv: kv[1]))
    by_index = {b.index: b for b in bundles}
    per_bundle = members.map(lambda m: (bundle_of.value[m[0]], (m[0], m[1][0], m[1][1]))).groupByKey()
    targets = sc.parallelize([(b.index, None) for b in bundles], max(1, min(len(bundles), sc.defaultParallelism * 4)))

    def write(kv):
        bundle = by_index[kv[0]]
        written_file = _write_clusters(bundle, kv[1][1], store, plan)
        counters.add("units", len(bundle.units))  # as each bundle's file is written: the line's units move
        return written_file

    files = dict(targets.leftOuterJoin(per_bundle).map(write).collect())
    members.unpersist()
    roots.unpersist()
    check_visible(files, store.existing(plan.name, plan.minhash_set), "MinHash cluster files")
    written.update(files)
    # Documents in no cluster are clusters of one (the "1" bin was always 0), and the params are
    # the ones used, defaults and banding included, not the manifest's echo (found by a tester).
    sizes = {**tally["bins"], "1": int(docs_in) - tally["docs"]}
    bands, rows = config.banding()
    used = {"num_perm": config.num_perm, "ngram": config.ngram, "threshold": float(config.threshold),
            "seed": config.seed, "bands": bands, "rows": rows, "verify": True}
    stats = {"docs_in": int(docs_in), "docs_without_shingles": int(no_shingles), "docs_in_clusters": tally["docs"],
             "duplicate_clusters": tally["clusters"], "largest_cluster": tally["largest"],
             "cluster_sizes": sizes, "cc_iterations": rounds, "params": used, **counts}
    # "clusters": the rules' revision, so that a later dolmino's refusal can name it (`untagged._minhash_otherwise`)
    write_bytes(minhash_manifest_path(store, plan),
                json.dumps({"units": digest, "clusters": CLUSTER_REVISION, "stats": stats}, indent=2).encode())
    return stats
