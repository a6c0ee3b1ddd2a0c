"""Tokenize the documents a mix may take, and write the memmaps from the executors.

Tokenize: per unit, only the chosen lines are parsed (the rest of the input is split into
lines and skipped), tokenized with dolma2 (`Dolma2Tokenizer.encode_documents`: the ids as
the memmap stores them, EOS included), and the source's token filters (`needs_tokens`)
decide on the ids.

Write: each output part is one Spark task. It writes its token file, sidecar and label
mask to a local temporary directory (or straight into a local --out), hashes them, puts
them at the output location (one atomic PUT per object on S3; a rename locally) and then
writes `_parts/part-XXXXX.json`, the part's commit record: plan hash, sizes, SHA-256. A
rerun of the same plan skips parts whose record is there and whose files match it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Iterator, NamedTuple

import numpy as np

from dolmino.build import worker_heap
from dolmino.build.attributes import AttributeStore, content_digest
from dolmino.build.inputs import Unit
from dolmino.build.read import fetch_ahead, read_lines
from dolmino.build.pool import PoolDoc, loc_of
from dolmino.checksums import sha256_file
from dolmino.doc_lengths import histogram
from dolmino.errors import InputChangedError
from dolmino.memmap import MemmapPartWriter, part_name
from dolmino.prefetch import ReadAhead
from dolmino.storage import naming, write_bytes
from mixers.sampling import seeded_hash

TOKENIZE_BATCH = 256
TOKENIZE_BATCH_BYTES = 16 << 20  # a batch of long documents is flushed early: bounded tokenizer memory
PARTS_DIR = "_parts"


class TokDoc(NamedTuple):
    source_index: int
    hash: int
    doc_id: str
    loc: str
    tokens: bytes  # little-endian uint32 ids as the memmap stores them (EOS included)


class TokStats(NamedTuple):
    source_index: int
    docs: int  # documents read and tokenized
    bytes: int  # their UTF-8 text bytes
    tokens: int
    kept_docs: int
    kept_tokens: int
    removed: dict  # reason -> [docs, tokens]
    control_token_docs: int  # text holding control-token strings (EOS, pad, ...): see docs "Tokenization"
    eos_in_span_docs: int  # of those, documents whose ids hold EOS before their last token
    cpu_s: float


class TokContext(NamedTuple):
    store: AttributeStore
    plans: tuple  # tag.SourceTagPlan per source
    token_filters: tuple  # per source: ((chain index, spec), ...) of filters that need tokens
    max_doc_tokens: tuple  # per source: refuse longer documents (None: no limit)
    resources: dict
    units: dict  # unit index -> Unit
    offsets: dict  # unit index -> lines before the unit in its file
    tokenizer: object
    read_ahead: int  # S3 objects a task fetches ahead (dolmino.prefetch)
    seed: int  # the manifest's: a document's sampling hash checks that it is the one tagged at its line


class PartFile(NamedTuple):
    name: str
    size: int
    sha256: str


class PartResult(NamedTuple):
    index: int
    tokens: int
    docs: int
    tokens_by_source: dict
    docs_by_source: dict
    files: tuple  # PartFile, ...
    doc_hist: dict  # source -> tokens-per-document histogram (dolmino.doc_lengths bins)
    skipped: bool = False  # committed by an earlier run of the same plan
    masked_by_source: dict | None = None  # label masks: tokens masked per source (None: no record says)


def unit_source_uri(unit: Unit, plan, store: AttributeStore) -> str:
    """Where the mix reads a unit's documents: the input, or its Stack Exchange documents."""
    return store.documents_path(plan.name, unit) if plan.format == "stackexchange" else unit.file.uri


def tokenize_units(groups, ctx_b, counters) -> Iterator[TokDoc | TokStats]:
    """mapPartitions: (unit index, [PoolDoc]) groups -> tokenized documents, then per-source stats."""
    ctx = ctx_b.value
    worker_heap.freeze()
    started = time.process_time()
    stats: dict[int, dict] = {}
    groups = list(groups)  # (unit index, its few chosen documents' records): the units to fetch ahead
    with fetch_ahead([ctx.units[unit_index] for unit_index, _ in groups], ctx.read_ahead) as ahead:
        yield from _tokenize_groups(groups, ctx, stats, ahead, counters)
        counters.add("fetched_ahead", ahead.fetched)
    cpu = time.process_time() - started
    counters.add("cpu_s", cpu)
    for si, st in stats.items():
        yield TokStats(si, st["docs"], st["bytes"], st["tokens"], st["kept_docs"], st["kept_tokens"], st["removed"],
                       st["control"], st["eos_in_span"], cpu)


def _check_tagged(doc: dict, pd: PoolDoc, seed: int, source: str, loc: str, uri: str) -> None:
    """The document read at a line is the one tagged there: its id (through the sampling hash,
    which also names the source and loc) and its text (length, then content hash).

    Selection, dedup and every filter's verdict were made on what the tag phase read; an input
    rewritten since (same lines in another order, an edited document) would otherwise put
    other documents under those decisions, silently. An edit that kept every length (and the
    object's size: an S3 rewrite mid-build changes only its ETag, which reads do not check)
    passed the length check (found by a tester). Costs two hashes per document taken."""
    text = doc["text"].encode("utf-8")
    if seeded_hash(seed, source, doc["id"], loc) != pd.hash or len(text) != pd.bytes \
            or content_digest(text) != pd.digest:
        raise InputChangedError(f"{uri}: line {pd.line} is not the document tagged there (id {doc['id']!r}: its id "
                                "or text changed); the input changed after it was tagged. A rerun tags it again "
                                "only if its size or modification time changed (they key its attribute files): "
                                "if neither did, touch it first")


def _tokenize_groups(groups, ctx: TokContext, stats: dict, ahead: ReadAhead, counters) -> Iterator[TokDoc]:
    """Each unit's chosen lines, tokenized and filtered; per-source counts go into `stats`."""
    from filters.base import apply_chain
    from filters.registry import build_filter

    from dolmino.build.resources import localized_spec

    filters: dict[int, list] = {}
    for unit_index, docs in groups:
        unit = ctx.units[unit_index]
        si = unit.source_index
        plan = ctx.plans[si]
        if si not in filters:
            filters[si] = [build_filter(localized_spec(spec, ctx.resources), f"{plan.name}.filters[{i}]")
                           for i, spec in ctx.token_filters[si]]
        st = stats.setdefault(si, {"docs": 0, "bytes": 0, "tokens": 0, "kept_docs": 0, "kept_tokens": 0, "removed": {},
                                   "control": 0, "eos_in_span": 0})
        by_line = {d.line: d for d in docs}
        wanted = sorted(by_line)
        uri = unit_source_uri(unit, plan, ctx.store)
        max_tokens = ctx.max_doc_tokens[si]
        batch: list[tuple[PoolDoc, dict, str]] = []  # (pool document, document read, its loc)
        batch_bytes = 0

        def flush(batch):
            encoded = ctx.tokenizer.encode_documents([doc["text"] for _, doc, _ in batch])
            ids_list = encoded.ids
            st["control"] += encoded.control_token_docs
            st["eos_in_span"] += encoded.eos_in_span_docs
            for (pd, doc, loc), ids in zip(batch, ids_list):
                n = 0 if ids is None else len(ids)
                st["docs"] += 1
                st["bytes"] += pd.bytes
                st["tokens"] += n
                reason = "tokenizer:empty" if ids is None else None
                if reason is None and max_tokens is not None and n - 1 > max_tokens:
                    reason = f"doc_too_long:tokens>{max_tokens}"
                if reason is None and filters[si]:
                    doc["token_ids"] = ids[:-1]
                    doc["loc"] = loc
                    reason = apply_chain(filters[si], doc)
                if reason is not None:
                    entry = st["removed"].setdefault(reason, [0, 0])
                    entry[0] += 1
                    entry[1] += n
                    continue
                st["kept_docs"] += 1
                st["kept_tokens"] += n
                yield TokDoc(si, pd.hash, doc["id"], loc, np.asarray(ids, dtype="<u4").tobytes())
            counters.add("docs", len(batch))
            counters.add("tokens_tokenized", sum(0 if ids is None else len(ids) for ids in ids_list))

        for line, doc in read_lines(uri, unit, wanted, None, ahead.take(uri)):
            pd = by_line[line]
            loc = loc_of(unit.file.name, ctx.offsets[unit_index], pd.loc_line)
            _check_tagged(doc, pd, ctx.seed, plan.name, loc, uri)
            batch.append((pd, doc, loc))
            batch_bytes += pd.bytes
            if len(batch) >= TOKENIZE_BATCH or batch_bytes >= TOKENIZE_BATCH_BYTES:
                yield from flush(batch)
                batch, batch_bytes = [], 0
        if batch:
            yield from flush(batch)
        counters.add("units", 1)
        counters.add("bytes", sum(d.bytes for d in docs))


# ---------------------------------------------------------------------------- order and parts


def order_key(seed: int, source: str, loc: str, copy: int) -> int:
    """Position of one document instance in the output: a seeded hash, so sources interleave."""
    return seeded_hash(seed, "order", source, loc, str(copy))


class WriteContext(NamedTuple):
    out: str
    seed: int
    num_parts: int
    eos: int
    label_mask: bool
    source_names: tuple
    plan_hash: str
    done: frozenset  # part indices committed by an earlier run of this plan
    owner: dict | None = None  # this build's claim on `out` (output.start); None: not checked


def _put(local: str, uri: str, sha256: str) -> None:
    from dolmino.s3 import about, client, split_uri

    bucket, key = split_uri(uri)
    with about(uri):
        client().upload_file(local, bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}})


def _still_owner(ctx: WriteContext, index: int) -> None:
    """Stop a part's task of a build that another build started into the same output after it.
    Checked on the driver only, an earlier build's executors went on uploading parts over the
    parts of the later one, which had verified them and written report.json: a complete build
    whose certified parts had changed (found by a tester, two builds into one s3:// output)."""
    if ctx.owner is not None:
        from dolmino.build.output import check_owner  # output builds on this module

        check_owner(ctx.out, ctx.owner, f"without writing part {index}", absent_ok=True)


def staging_dir(index: int) -> str:
    """A fresh directory for a part's files before their upload, among the executor's Spark local
    dirs (SPARK_LOCAL_DIRS, which Spark sets for its Python workers): the executor removes them when
    it stops, and a standalone worker when the application ends. In the system temp dir, a part task
    killed mid-part (Ctrl-C or a killed driver cancelling it, a lost executor: its Python worker gets
    SIGKILL, and `finally` never runs) left its part behind on the node for good, up to 2.5 GB a part
    at 512M tokens per file (found by a tester). Outside Spark: the system temp dir."""
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d and os.path.isdir(d)]
    return tempfile.mkdtemp(prefix="dolmino-part-", dir=dirs[index % len(dirs)] if dirs else None)


def write_part(index: int, items, ctx_b, counters) -> Iterator[PartResult]:
    """mapPartitionsWithIndex: the sorted instances of one part -> its files and commit record."""
    ctx = ctx_b.value
    worker_heap.freeze()
    if index in ctx.done:
        return
    started = time.process_time()
    if ctx.label_mask:
        from filters.repeated_ngrams import repeated_ngram_mask
    remote = ctx.out.startswith("s3://")
    _still_owner(ctx, index)
    workdir = staging_dir(index) if remote else ctx.out
    writer = None
    try:
        writer = MemmapPartWriter(workdir, index, ctx.eos, label_mask=ctx.label_mask)
        lengths: dict[int, list[int]] = {}
        for _key, doc in items:
            ids = np.frombuffer(doc.tokens, dtype="<u4")
            lengths.setdefault(doc.source_index, []).append(len(ids))
            mask = None
            if ctx.label_mask:
                mask = np.append(repeated_ngram_mask(ids[:-1]), True)
            writer.add_document(ids, doc.doc_id, ctx.source_names[doc.source_index], doc.loc, mask)
        stats = writer.close()
        if remote:
            _still_owner(ctx, index)  # just before the uploads: building the part took a while
        files = []
        for path in writer.paths.values():
            name = os.path.basename(path)
            digest = sha256_file(path)
            files.append(PartFile(name, os.path.getsize(path), digest))
            if remote:
                _put(path, f"{ctx.out.rstrip('/')}/{name}", digest)
        result = PartResult(index, stats.tokens, stats.docs, stats.tokens_by_source, stats.docs_by_source,
                            tuple(sorted(files)),
                            {ctx.source_names[si]: histogram(n) for si, n in sorted(lengths.items())},
                            masked_by_source=stats.masked_by_source if ctx.label_mask else None)
        record = {"plan": ctx.plan_hash, **result._asdict(), "files": [f._asdict() for f in result.files]}
        write_bytes(f"{ctx.out.rstrip('/')}/{PARTS_DIR}/{part_name(index)}.json",
                    json.dumps(record, sort_keys=True).encode("utf-8"))
    except BaseException as exc:
        if writer is not None:
            writer.discard()
        if isinstance(exc, OSError) and (named := naming(exc, workdir)) is not exc:
            raise named from exc  # the full or read-only --out (or staging dir), not a bare "[Errno 28]"
        raise
    finally:
        if remote:
            shutil.rmtree(workdir, ignore_errors=True)
    counters.add("units", 1)
    counters.add("tokens_written", stats.tokens)
    counters.add("docs", stats.docs)
    counters.add("cpu_s", time.process_time() - started)
    yield result
