"""The per-file work of a build, run inside Spark executors.

Each input file becomes one task: read documents (bad lines to the quarantine), tokenize
them with dolma2, run the source's filter chain, and emit kept documents plus one stats
record. Everything here is plain Python on plain tuples so that it pickles cheaply and can
be tested without Spark.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from dolmino.documents import Quarantine, read_documents, write_quarantine
from dolmino.tokenizer import Dolma2Tokenizer
from mixers.sampling import seeded_hash

# How many documents are tokenized together (the Rust tokenizer batches internally).
TOKENIZE_CHUNK = 512


@dataclass(frozen=True)
class FileTask:
    source: str
    source_index: int
    path: str
    file_index: int
    format: str
    filters: tuple[dict, ...]
    keep_text: bool  # dedup needs the text; otherwise it is dropped right after filtering
    # How the file is named in `loc` (sidecars, sampling hashes): relative to the manifest's
    # data_root, so the same data gives the same mix wherever it is mounted.
    name: str = ""


@dataclass
class SourceStats:
    """Accounting for one source: in = kept + removed(by reason) + quarantined."""

    docs_in: int = 0
    tokens_in: int = 0
    kept_docs: int = 0
    kept_tokens: int = 0
    removed_docs: Counter = field(default_factory=Counter)
    removed_tokens: Counter = field(default_factory=Counter)
    quarantined: Counter = field(default_factory=Counter)
    files: int = 0
    # Filters that keep their own mergeable report (`report` with merge/to_dict, e.g.
    # decontamination's per-eval-set hits), keyed "filters[i].<name>".
    filter_reports: dict = field(default_factory=dict)

    def merge(self, other: "SourceStats") -> "SourceStats":
        self.docs_in += other.docs_in
        self.tokens_in += other.tokens_in
        self.kept_docs += other.kept_docs
        self.kept_tokens += other.kept_tokens
        self.removed_docs.update(other.removed_docs)
        self.removed_tokens.update(other.removed_tokens)
        self.quarantined.update(other.quarantined)
        self.files += other.files
        for key, report in other.filter_reports.items():
            if key in self.filter_reports:
                self.filter_reports[key].merge(report)
            else:
                self.filter_reports[key] = report
        return self

    def remove(self, reason: str, docs: int, tokens: int) -> None:
        """Move documents from kept to removed (used by stages after the filters, e.g. dedup)."""
        self.kept_docs -= docs
        self.kept_tokens -= tokens
        self.removed_docs[reason] += docs
        self.removed_tokens[reason] += tokens

    def check_balance(self, source: str) -> None:
        docs = self.kept_docs + sum(self.removed_docs.values()) + sum(self.quarantined.values())
        tokens = self.kept_tokens + sum(self.removed_tokens.values())
        if docs != self.docs_in or tokens != self.tokens_in:
            raise AssertionError(
                f"source {source}: accounting does not balance: docs in {self.docs_in} != "
                f"kept {self.kept_docs} + removed {dict(self.removed_docs)} + quarantined "
                f"{dict(self.quarantined)}; tokens in {self.tokens_in} vs {tokens}")

    def to_dict(self) -> dict:
        return {
            "docs_in": self.docs_in, "tokens_in": self.tokens_in,
            "kept_docs": self.kept_docs, "kept_tokens": self.kept_tokens,
            "removed": {r: {"docs": self.removed_docs[r], "tokens": self.removed_tokens[r]}
                        for r in sorted(self.removed_docs)},
            "quarantined": dict(sorted(self.quarantined.items())), "files": self.files,
            "filter_reports": {k: r.to_dict() for k, r in sorted(self.filter_reports.items())},
        }


def quarantine_path(out_dir: str, task: FileTask) -> str:
    # Named from the data-root-relative name, so a build from s3:// and one from a local copy
    # of the same data write the same quarantine files.
    digest = hashlib.sha1((task.name or task.path).encode("utf-8")).hexdigest()[:10]
    return os.path.join(out_dir, "quarantine", task.source, f"file-{task.file_index:06d}-{digest}.jsonl.gz")


def _read_source_file(task: FileTask, quarantine: Quarantine, stats: SourceStats) -> Iterator[tuple[str, dict]]:
    """(loc, document) pairs for one input file, in file order."""
    if task.format == "stackexchange":
        from filters.stackexchange import read_stackexchange_for_build

        yield from read_stackexchange_for_build(task, quarantine, stats)
        return
    for line_no, doc in read_documents(task.path, quarantine):
        yield f"{task.name or task.path}:{line_no}", doc


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def process_file(task: FileTask, tokenizer: Dolma2Tokenizer, seed: int, out_dir: str) -> Iterator[tuple]:
    """Yield ("doc", source_index, hash, (id, loc, token_bytes, text)) records, then one ("stats", ...)."""
    from filters.base import apply_chain
    from filters.registry import build_filter

    filters = [build_filter(spec, f"{task.source}.filters[{i}]") for i, spec in enumerate(task.filters)]
    quarantine = Quarantine()
    stats = SourceStats(files=1)
    for chunk in _chunks(_read_source_file(task, quarantine, stats), TOKENIZE_CHUNK):
        token_lists = tokenizer.encode_batch([doc["text"] for _, doc in chunk])
        for (loc, doc), tokens in zip(chunk, token_lists):
            n_tokens = len(tokens) + 1  # every stored document carries one EOS
            stats.docs_in += 1
            stats.tokens_in += n_tokens
            doc["token_ids"] = tokens
            doc["loc"] = loc
            reason = apply_chain(filters, doc)
            if reason is not None:
                stats.removed_docs[reason] += 1
                stats.removed_tokens[reason] += n_tokens
                continue
            stats.kept_docs += 1
            stats.kept_tokens += n_tokens
            h = seeded_hash(seed, task.source, doc["id"], loc)
            text = doc["text"] if task.keep_text else None
            yield ("doc", task.source_index, h, (doc["id"], loc, tokens.tobytes(), text))
    for i, f in enumerate(filters):
        report = getattr(f, "report", None)
        if report is not None and hasattr(report, "merge") and hasattr(report, "to_dict"):
            stats.filter_reports[f"filters[{i}].{f.name}"] = report
    stats.quarantined.update(quarantine.counts)
    stats.docs_in += quarantine.total
    if quarantine.records:
        write_quarantine(quarantine_path(out_dir, task), quarantine.records)
    yield ("stats", task.source_index, 0, stats)


def tokens_of(record_payload: tuple) -> np.ndarray:
    return np.frombuffer(record_payload[2], dtype=np.uint32)
