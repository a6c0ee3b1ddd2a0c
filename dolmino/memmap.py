"""OLMo-core compatible token memmaps: raw uint32 files plus `.csv.gz` sidecars.

Layout, per output part:
- `part-00000.npy`: raw little-endian uint32 token ids, no .npy header (OLMo-core and
  `dolma tokens` read these with `np.memmap(dtype=uint32)`), EOS after every document.
- `part-00000.csv.gz`: one row `start,end,id,src,loc` per document instance; `end` is
  exclusive and includes the EOS token.
- `part-00000.label_mask.npy` (optional): numpy bool, one byte per token, True = train.

Gzip headers are written with mtime 0 and no file name, so identical input gives
byte-identical files: a build is reproducible down to its checksums.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from dataclasses import dataclass, field

import numpy as np

from dolmino.storage import open_temporary

TOKEN_DTYPE = np.dtype("<u4")
SIDECAR_FIELDS = ("start", "end", "id", "src", "loc")
# Inside the temporary directory `.DEST.pull-XXXX` of a `dolmino release pull` into DEST until every file is
# verified: "host pid pid-namespace" of the pull writing it, so a later pull can tell a download whose process
# is gone (kill -9, a reboot) from a running one. trainer/data.py repeats the name (a test keeps them equal).
PULL_OWNER = ".pull-owner"
# A release's commit record, which `dolmino release pull` also leaves in DEST: a build directory holding it is a
# pulled copy, not a build to rerun. trainer/data.py repeats the name (a test keeps them equal).
RELEASE_FILE = "RELEASE.json"


def manifest_mismatches(manifest: object, report: object) -> list[tuple[str, object, object]]:
    """(key, manifest.json's value, report.json's) where a build's manifest.json names another manifest
    or seed than its report.json records (the build's): it is not the build's manifest. Keys either
    file lacks (older builds) are not compared. `dolmino validate` and `release publish` refuse it."""
    if not isinstance(manifest, dict) or not isinstance(report, dict):
        return []
    return [(key, manifest[key], report[built]) for key, built in (("name", "manifest"), ("seed", "seed"))
            if manifest.get(key) is not None and report.get(built) is not None and manifest[key] != report[built]]


def unfinished_pull(directory) -> str | None:
    """DEST of the unfinished `dolmino release pull` whose temporary directory `directory` is, or None."""
    if not os.path.isfile(os.path.join(directory, PULL_OWNER)):
        return None
    head, name = os.path.split(os.path.normpath(directory))
    return os.path.join(head, name[1:].rsplit(".pull-", 1)[0])


def part_name(index: int) -> str:
    return f"part-{index:05d}"


# A build's part files, by name (token memmap, label mask, sidecar): what publish, validate and
# a rebuild's stale cleanup hold to report.json; any other file, part-like name or not, is not one.
PART_FILE = re.compile(r"part-\d{5,}\.(?:npy|label_mask\.npy|csv\.gz)")


def unlisted_parts(names, listed) -> tuple[list[str], list[str]]:
    """(files report.json lists that are not among `names`, part files among `names` it does
    not list), each sorted: what `dolmino validate` and publish both refuse."""
    present = set(names)
    return sorted(set(listed) - present), sorted(n for n in present if PART_FILE.fullmatch(n) and n not in listed)


def unlisted_data(names, listed) -> list[str]:
    """Token files (*.npy, label masks included) and sidecars (*.csv.gz, outside quarantine/) among
    `names` that report.json does not list, wherever they lie: `dolmino validate` and the trainer
    refuse a build holding a stray part-0000.npy or sub/extra.npy, which publish released (a tester); a
    build refuses to start beside those it would not remove (`dolmino.build.output.refuse_strays`)."""
    return sorted(n for n in names if n not in listed and (
        n.endswith(".npy") or (n.endswith(".csv.gz") and not n.startswith("quarantine/"))))


@dataclass
class PartStats:
    tokens: int = 0
    docs: int = 0
    tokens_by_source: dict = field(default_factory=dict)
    docs_by_source: dict = field(default_factory=dict)
    # tokens the label mask keeps out of the loss, per source (label masks only)
    masked_by_source: dict = field(default_factory=dict)


class MemmapPartWriter:
    """Streams documents into one part: tokens, sidecar rows and (optionally) a label mask.

    Writes go to temporary names renamed on close, so readers never see a half-written
    part, and a retried Spark task simply rewrites the same bytes.
    """

    def __init__(self, out_dir: str, index: int, eos_token_id: int, label_mask: bool = False):
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, part_name(index))
        self.paths = {"tokens": stem + ".npy", "sidecar": stem + ".csv.gz"}
        if label_mask:
            self.paths["mask"] = stem + ".label_mask.npy"
        # Temporaries of this writer alone (`storage.open_temporary`): named by the pid, two attempts of
        # one part on two nodes writing one --out over NFS (Spark's speculation) shared them.
        self._tmp, files = {}, {}
        for kind, path in self.paths.items():
            self._tmp[kind], files[kind] = open_temporary(path)
        self._tokens = files["tokens"]
        self._mask = files.get("mask")
        self._sidecar_raw = files["sidecar"]
        self._sidecar_gz = gzip.GzipFile(fileobj=self._sidecar_raw, mode="wb", mtime=0, filename="")
        self._sidecar_text = io.TextIOWrapper(self._sidecar_gz, encoding="utf-8", newline="")
        self._csv = csv.writer(self._sidecar_text, lineterminator="\n")
        self.eos = np.asarray([eos_token_id], dtype=TOKEN_DTYPE)
        self.stats = PartStats()

    def add(self, token_ids: np.ndarray, doc_id: str, src: str, loc: str, mask: np.ndarray | None = None) -> None:
        tokens = np.asarray(token_ids, dtype=TOKEN_DTYPE)
        start = self.stats.tokens
        end = start + len(tokens) + 1
        self._tokens.write(tokens.tobytes())
        self._tokens.write(self.eos.tobytes())
        if self._mask is not None:
            keep = np.ones(len(tokens) + 1, dtype=np.bool_) if mask is None else np.append(
                np.asarray(mask, dtype=np.bool_), True)
            if len(keep) != len(tokens) + 1:
                raise ValueError(f"label mask for {doc_id} has {len(keep) - 1} entries, tokens {len(tokens)}")
            self._mask.write(keep.tobytes())
            self._count_masked(src, keep)
        self._csv.writerow((start, end, doc_id, src, loc))
        self._count(src, len(tokens) + 1)

    def add_document(self, ids: np.ndarray, doc_id: str, src: str, loc: str, mask: np.ndarray | None = None) -> None:
        """Add a document whose ids already end as the memmap stores them (EOS included)."""
        ids = np.asarray(ids, dtype=TOKEN_DTYPE)
        start = self.stats.tokens
        self._tokens.write(ids.tobytes())
        if self._mask is not None:
            keep = np.ones(len(ids), dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
            if len(keep) != len(ids):
                raise ValueError(f"label mask for {doc_id} has {len(keep)} entries, tokens {len(ids)}")
            self._mask.write(keep.tobytes())
            self._count_masked(src, keep)
        self._csv.writerow((start, start + len(ids), doc_id, src, loc))
        self._count(src, len(ids))

    def _count_masked(self, src: str, keep: np.ndarray) -> None:
        self.stats.masked_by_source[src] = self.stats.masked_by_source.get(src, 0) + int(len(keep) - keep.sum())

    def _count(self, src: str, n: int) -> None:
        self.stats.tokens += n
        self.stats.docs += 1
        self.stats.tokens_by_source[src] = self.stats.tokens_by_source.get(src, 0) + n
        self.stats.docs_by_source[src] = self.stats.docs_by_source.get(src, 0) + 1

    def close(self) -> PartStats:
        self._sidecar_text.close()  # closes the gzip stream, which leaves the file it was given open
        self._sidecar_raw.close()  # flush the gzip trailer before the rename, not at garbage collection
        self._tokens.close()
        if self._mask is not None:
            self._mask.close()
        for key, final in self.paths.items():
            os.replace(self._tmp[key], final)
        return self.stats

    def discard(self) -> None:
        """Close and remove this writer's temporaries: a part task that failed (a full disk) left up to a
        whole part of them in a local --out, which the rerun after freeing space needed again and which
        only a finished build's sweep removed (found by a tester)."""
        for fh in (self._sidecar_text, self._sidecar_raw, self._tokens, self._mask):  # the gzip stream first
            if fh is not None:
                try:
                    fh.close()
                except (OSError, ValueError):  # the unflushed rest of a full disk's write
                    pass
        for tmp in self._tmp.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:  # renamed by close() already
                pass


def read_part(npy_path: str) -> tuple[np.ndarray, list[tuple[int, int, str, str, str]]]:
    """Read a part back: its tokens (memmap) and sidecar rows. Used by checks and tests."""
    tokens = np.memmap(npy_path, dtype=TOKEN_DTYPE, mode="r") if os.path.getsize(npy_path) else np.zeros(0, TOKEN_DTYPE)
    sidecar = npy_path[: -len(".npy")] + ".csv.gz"
    with gzip.open(sidecar, "rt", encoding="utf-8", newline="") as fh:
        rows = [(int(r[0]), int(r[1]), r[2], r[3], r[4]) for r in csv.reader(fh)]
    return tokens, rows
