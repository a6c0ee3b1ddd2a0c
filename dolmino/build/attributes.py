"""Attribute files: what the tag phase learned about every pool document, stored once.

Layout under the attributes root (a local directory or an s3:// prefix), one Parquet file
per unit (docs/DESIGN.md "Build at scale"):

    <root>/<source>/docs/<unit key>.<version>.parquet             line, id, bytes, content hash, ...
    <root>/<source>/<filter type>-<key>/<unit key>.<version>.parquet  the filter's columns
    <root>/<source>/minhash-<key>/<unit key>.<version>.parquet     near-duplicate cluster per document
    <root>/<source>/documents/<unit key>.<version>.jsonl.zst       Stack Exchange: the Q&A documents
    <root>/<source>/quarantine/<unit key>.<version>.jsonl.gz       refused input lines

`<key>` hashes what the columns depend on (the filter's tag parameters and the digests of
its model or index), so a changed threshold reuses the stored scores and a changed scorer
writes a new column set beside the old one. `<version>` hashes the unit's input (name,
byte range, size, ETag or mtime) and the attribute format, so a changed input file is
tagged again and its stale attributes are simply never read. One listing of a set's
prefix tells the driver which units are done: that is how a killed tag job resumes.

Rows are in input order, one per document (quarantined lines have no row). Every file
carries its unit's counts in the Parquet key-value metadata under `dolmino`, so the mix
phase accounts for a unit without reading its input again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass

from dolmino.build.inputs import Unit

# Bump when the meaning of the stored columns changes: every unit is then tagged again.
ATTRIBUTE_FORMAT = 1
METADATA_KEY = b"dolmino"
DOCS_SET = "docs"
DOCUMENTS_DIR = "documents"
QUARANTINE_DIR = "quarantine"


def spec_key(spec: dict) -> str:
    """A short, stable hash of a JSON-able spec (sorted keys)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def unit_version(unit: Unit) -> str:
    """Changes when the unit's input (or the attribute format) changes."""
    f = unit.file
    return spec_key({"format": ATTRIBUTE_FORMAT, "name": f.name, "size": f.size, "version": f.version,
                     "start": unit.start, "end": unit.end})[:10]


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


@dataclass(frozen=True)
class AttributeStore:
    root: str

    def set_dir(self, source: str, set_name: str) -> str:
        return _join(self.root, source, set_name)

    def path(self, source: str, set_name: str, unit: Unit, suffix: str = ".parquet") -> str:
        return _join(self.root, source, set_name, f"{unit.key}.{unit_version(unit)}{suffix}")

    def documents_path(self, source: str, unit: Unit) -> str:
        return self.path(source, DOCUMENTS_DIR, unit, ".jsonl.zst")

    def quarantine_path(self, source: str, unit: Unit) -> str:
        return self.path(source, QUARANTINE_DIR, unit, ".jsonl.gz")

    def existing(self, source: str, set_name: str) -> set[str]:
        """Paths of the files under one set (one listing, on the driver)."""
        base = self.set_dir(source, set_name)
        if base.startswith("s3://"):
            from dolmino.s3 import iter_keys, join_uri, split_uri

            bucket, key = split_uri(base + "/")
            return {join_uri(bucket, k) for k, _ in iter_keys(bucket, key)}
        found = set()
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if ".tmp" not in name:
                    found.add(os.path.join(dirpath, name))
        return found


# ---------------------------------------------------------------------------- file I/O


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically: a local temporary file renamed, or one S3 PUT."""
    if path.startswith("s3://"):
        from dolmino.s3 import client, split_uri

        bucket, key = split_uri(path)
        client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def read_bytes(path: str) -> bytes:
    if path.startswith("s3://"):
        from dolmino.s3 import client, split_uri

        bucket, key = split_uri(path)
        return client().get_object(Bucket=bucket, Key=key)["Body"].read()
    with open(path, "rb") as fh:
        return fh.read()


def write_table(path: str, columns: dict, schema, meta: dict) -> int:
    """Write one attribute file (columns -> Parquet with `meta` in its metadata); returns its size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns, schema=schema.with_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)}))
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    write_bytes(path, data)
    return len(data)


def read_table(path: str, columns: list[str] | None = None):
    """(pyarrow Table, metadata dict) of one attribute file."""
    import pyarrow.parquet as pq

    # ParquetFile.read, not pq.read_table: the same table and metadata without the datasets
    # layer, which costs ~0.5 ms per small file (the mix reads every unit's attribute files).
    table = pq.ParquetFile(io.BytesIO(read_bytes(path))).read(columns=columns)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return table, (json.loads(raw) if raw else {})
