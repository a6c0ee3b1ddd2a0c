"""Tokens per document of a built mix, as a histogram on fixed log-spaced bins.

report.json holds token totals, not per-document lengths; the lengths are in the parts'
sidecars (`start,end,id,src,loc`, `end - start` tokens with the EOS). The build writes
document instances to parts by a seeded hash of (source, loc, copy) modulo the number of
parts, so every part is a uniform random sample of the mix: reading a few evenly spaced
parts' sidecars gives an unbiased sample of the distribution without reading a 100B-token
mix's every sidecar through one process (each 512M-token part has ~0.5M rows, about a
second to parse). `sidecar_histograms(max_parts=None)` reads them all.

Bins are quarter-octaves (edges 2^(k/4)) from 1 to 2^24 tokens: the same bins for every
mix, so histograms of parts (or of executors) add up.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from typing import NamedTuple

import numpy as np

from dolmino.errors import BuildError

BINS_PER_OCTAVE = 4
MAX_OCTAVE = 24  # 16.7M tokens: longer documents land in the last bin
BIN_EDGES = np.power(2.0, np.arange(0, BINS_PER_OCTAVE * MAX_OCTAVE + 1) / BINS_PER_OCTAVE)
DEFAULT_SAMPLE_PARTS = 8


def histogram(lengths) -> list[int]:
    """Counts of `lengths` (tokens per document, EOS included) in BIN_EDGES' bins."""
    values = np.clip(np.asarray(lengths, dtype=np.float64), BIN_EDGES[0], BIN_EDGES[-1])
    counts, _ = np.histogram(values, bins=BIN_EDGES)
    return [int(c) for c in counts]


def quantile(counts: list[int], q: float) -> float:
    """The q-quantile of a histogram (geometric interpolation inside the bin)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, q * total, side="left"))
    i = min(i, len(counts) - 1)
    before = cum[i] - counts[i]
    frac = 0.0 if counts[i] == 0 else (q * total - before) / counts[i]
    lo, hi = BIN_EDGES[i], BIN_EDGES[i + 1]
    return float(lo * (hi / lo) ** frac)


def sidecar_name(npy_name: str) -> str:
    return npy_name[:-4] + ".csv.gz" if npy_name.endswith(".npy") else npy_name


def read_sidecar_lengths(uri: str) -> dict[str, np.ndarray]:
    """Tokens per document instance of one sidecar (local path or s3:// URI), per source."""
    by_source: dict[str, list[int]] = {}
    try:
        if uri.startswith("s3://"):
            from dolmino.s3 import open_uri

            raw = open_uri(uri, "rb")
        else:
            raw = open(uri, "rb")
        with raw, gzip.GzipFile(fileobj=raw) as gz, io.TextIOWrapper(gz, encoding="utf-8", newline="") as text:
            for row in csv.reader(text):
                by_source.setdefault(row[3], []).append(int(row[1]) - int(row[0]))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error, IndexError, ValueError) as exc:
        # A damaged sidecar was a traceback (IndexError, BadGzipFile; found by a tester): `dolmino validate` names
        # what is wrong with it.
        raise BuildError(f"{uri}: not a readable sidecar ({type(exc).__name__}: {exc}); `dolmino validate` checks "
                         "the build") from None
    return {src: np.asarray(v, dtype=np.int64) for src, v in by_source.items()}


class LengthSample(NamedTuple):
    counts: dict[str, list[int]]  # source -> histogram over BIN_EDGES
    parts_read: int
    parts_total: int
    docs: int  # document instances read

    @property
    def complete(self) -> bool:
        return self.parts_read == self.parts_total


def spread(n: int, k: int | None) -> list[int]:
    """k indices spread evenly over range(n), first and last included (all when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    if k <= 1:
        return [0] if n else []
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def sidecar_histograms(out: str, part_names: list[str], max_parts: int | None = DEFAULT_SAMPLE_PARTS) -> LengthSample:
    """Histograms per source from the sidecars of `part_names` (the report's `.npy` names), at
    most `max_parts` of them, evenly spaced."""
    chosen = [part_names[i] for i in spread(len(part_names), max_parts)]
    counts: dict[str, np.ndarray] = {}
    docs = 0
    for name in chosen:
        for src, lengths in read_sidecar_lengths(f"{out.rstrip('/')}/{sidecar_name(name)}").items():
            h = np.asarray(histogram(lengths), dtype=np.int64)
            counts[src] = counts.get(src, 0) + h
            docs += len(lengths)
    return LengthSample({k: [int(x) for x in v] for k, v in counts.items()}, len(chosen), len(part_names), docs)
