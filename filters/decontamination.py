"""Decontamination: remove documents that overlap the evaluation suite (SPEC.md §1-2).

Dolmino's FLAN (and math) sources drop every document with >= 10% of its n-grams present
in any train, validation or test instance of the evaluation suite. Two steps:

1. `build_index(instances, out_path)` turns eval instances (`dolmino.evalsets`) into an
   index file: every distinct n-gram hash of every instance, with the eval set (task and
   split) it came from. The default build ("paper") indexes every packaged set the OLMo 2
   report uses: the OLMES suite of SPEC §2 (../shared/SPEC.md) plus MATH, with BBH from BIG-bench's task files.
2. `DecontaminationFilter(index_path, threshold=0.10)` computes the same n-gram hashes
   for a document and removes it when `hits / ngrams >= threshold`, with reason
   "overlap>=10%". `ngrams` counts the document's informative n-gram *positions*, `hits`
   those whose hash is in the index. A document without any (fewer than n words) is kept:
   too short to judge (`min_length` handles those).

Exclusion per source. `exclude_tasks` / `exclude_splits` leave eval sets out of one
filter's check ("gsm8k:train": the math source keeps its own GSM8K-train subset and is
still checked against every test and validation split). Each (task, split) is its own set
in the index, so this needs no second index: lookups skip the excluded entries.

Coverage. Which of the paper's eval sets an index holds, with instance counts per split,
the released splits it lacks, subsamples, and why a set is missing (AGIEval and MMLU-Pro
ship in no package we can fetch) is recorded in the index when it is built;
`index_coverage(index_path, exclude_tasks, exclude_splits)` returns it for build reports,
`python -m filters.decontamination coverage --index PATH` prints it.

Informative n-grams: at least ceil(n/2) distinct words and at least one word containing a
letter. MMLU holds matrices ("0 0 0 0 0 0 0 0") and GSM8K calculations ("16 3 4 9 9 2 18
18"); indexed, such n-grams removed numeric tables in code and data files of the shared
corpus. They are neither indexed nor counted in a document's denominator.

Normalisation (applied identically to instances and documents, `fold` and `char_classes`), in order:
  1. HTML character references are decoded, twice ("&amp;quot;" too): a page's text often keeps
     them ("Janet&#39;s", "&nbsp;" between words), and each left in was a word of its own that broke
     the n eval n-grams across it ("&nbsp;" for every space: nothing of the item matched);
  2. Unicode NFKC (full-width letters, ligatures and compatibility digits fold to plain);
  3. case folding (`str.casefold`: "STRASSE" and "straße" match, as "EGGS" and "eggs" do);
  4. LaTeX commands that only set spacing, delimiter size or style are dropped (`\\quad`,
     `\\qquad`, `\\hspace{..}`, `\\left`, `\\right`, `\\big`.., `\\displaystyle`) and `\\dfrac` /
     `\\tfrac` read `\\frac`: a MATH item retypeset on a page (`\\left(` as `(`, `\\quad` as `\\,`)
     lost the n-grams across each such word; `\\,` `\\;` `\\!` are punctuation anyway;
  5. every character of category P* (punctuation), S* (symbols), Z* (separators) or Cc
     (controls, which include \\t \\n \\r) separates words; Cf characters (soft hyphen,
     zero-width space and joiners, BOM) and the other default-ignorable code points (combining
     grapheme joiner, variation selectors, Hangul fillers: invisible, yet category Mn or Lo, they
     split an item's words in two) are deleted without splitting a word; everything else
     (letters, marks, digits) is part of a word; whitespace runs thus collapse;
  6. words are the maximal non-empty runs; an n-gram is n consecutive words.
So "Janet’s ducks lay 16 eggs!" and "JANET&#39;S DUCKS lay 16 eggs" both give the words
`janet s ducks lay 16 eggs`. A change of any step changes the hashes: it bumps `HASH_VERSION`,
so that indexes (and the attributes keyed by their digest) are built again, not mixed with
hashes of the other normalisation. A zero-width space standing alone between two words (no
space beside it) joins them: inside words, where pages put it as a break opportunity, it must
not split. Scripts without spaces (CJK, Thai) make long "words" and are matched only as whole
runs: a known limitation shared with word-level n-gram decon.

Why n = 8 (configurable). GPT-3 used 13-grams, but OLMES questions are short. A whole
instance (question with its choices and answer) is long enough either way (0.02% of the
packaged OLMES instances give no 8-gram, 1.6% no 13-gram), but a page that copies an item
often copies only its question, and the question alone is shorter than 13 words in about
27% of instances (94% of Natural Questions, 51% of TriviaQA, 44% of CommonsenseQA) against
12% for 8 words. Eight consecutive normalised words rarely recur by chance outside a shared
source (on the 24k documents of the shared corpus, no clean document reaches 3% overlap
with the OLMES index), and the 10% threshold means an incidental shared phrase in a long
document does not remove it. `python -m filters.decontamination build` prints the share of
instances without n-grams for the n you choose.

Hashing. Words hash with 64-bit FNV-1a over their code points followed by the splitmix64
finaliser; an n-gram hash combines its n word hashes polynomially (mod 2^64) and applies the
finaliser again (numba kernel; `HASH_VERSION` names this scheme and is stored in the index,
which refuses to load under another version).

The index is a hashed set: a sorted uint64 array of the distinct (n-gram hash, task) pairs
with a parallel uint16 array of task ids, plus a bucket directory over the top bits of the
hash (4-8 hashes per bucket) so that a lookup is one or two cache misses instead of a
binary search over the whole array. Memory is ~10.7 bytes per pair: the packaged OLMES
suite gave 12.6M (n-gram, task) pairs in index format 1, a 136 MB file; the default
"paper" index (with MATH and BBH) holds 14.7M (n-gram, task, split) entries, a 164 MB file (bench/bench_decontamination.py
measures build time and memory). False positives: an n-gram that is in no instance hits
only by colliding with one of the N distinct indexed hashes, probability N / 2^64 per
lookup (7.9e-13 for the paper index); removing a clean document needs that to happen for 10% of its n-grams,
which is negligible. The index is saved as an uncompressed .npz whose arrays are aligned
in the file, and memory-mapped when loaded, so the Spark Python workers of one machine
share one copy in the page cache; the filter pickles as its path and loads lazily on
first use.

Attribution. For the report "per eval set: docs hit and tokens removed", a removed
document is attributed to every task whose n-grams it contains (`NgramIndex.task_hits`),
and to one primary task (the one with most overlapping n-grams).
`DecontaminationReport` accumulates this per process and `merge`s across Spark
partitions; every filter instance keeps one in `.report`.

    python -m filters.decontamination build --out index.npz [--tasks paper|olmes|all|a,b] [--ngram-size 8]
        [--jsonl PATH:FIELDS:TASK[/SPLIT] ...]
    python -m filters.decontamination check --index index.npz --input docs.jsonl.zst [--threshold 0.1]
        [--exclude-tasks T ...] [--exclude-splits S|T:S ...]
    python -m filters.decontamination coverage --index index.npz [--json] [--exclude-splits gsm8k:train]
"""

from __future__ import annotations

import argparse
import html
import io
import json
import os
import posixpath
import re
import struct
import sys
import time
import unicodedata
import warnings
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from numba import njit

from dolmino.s3 import local_path

# 2: HTML references decoded, presentational LaTeX dropped, casefold, every default-ignorable
# code point ignored (1: NFKC and lower only). Any change of `fold` or `char_classes` bumps it.
HASH_VERSION = 2
# Index file layout. 2: one entry per (n-gram, task, split) with `set_ids` and meta `sets`;
# 1: one entry per (n-gram, task) with `task_ids` (still readable, without split exclusion).
INDEX_FORMAT = 2
DEFAULT_NGRAM_SIZE = 8
DEFAULT_THRESHOLD = 0.10
# Per-task hash buffers are compacted (np.unique) when they exceed this many entries, so
# that building from repetitive instances does not grow without bound.
_COMPACT_EVERY = 4_000_000

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX_A = np.uint64(0xBF58476D1CE4E5B9)
_MIX_B = np.uint64(0x94D049BB133111EB)
_POLY = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)

# Character classes. LETTER and WORD both make up words; LETTER (category L*) also marks
# the word as containing a letter, which the informative-n-gram rule needs.
WORD, SEPARATOR, IGNORED, LETTER = 0, 1, 2, 3
_CHAR_CLASSES: np.ndarray | None = None


# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties) outside category Cf: invisible,
# but Mn or Lo, so "wo\u034frd" was two words, neither of the item's.
_DEFAULT_IGNORABLE_RANGES = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
                             (0x2065, 0x2065), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0),
                             (0xFFF0, 0xFFF8), (0xE0000, 0xE0FFF))


def char_classes() -> np.ndarray:
    """uint8 class of every code point (WORD, SEPARATOR, IGNORED, LETTER); built once per process."""
    global _CHAR_CLASSES
    if _CHAR_CLASSES is None:
        classes = np.zeros(sys.maxunicode + 1, dtype=np.uint8)
        for cp in range(sys.maxunicode + 1):
            cat = unicodedata.category(chr(cp))
            if cat[0] in "PSZ" or cat == "Cc":
                classes[cp] = SEPARATOR
            elif cat == "Cf":
                classes[cp] = IGNORED
            elif cat[0] == "L":
                classes[cp] = LETTER
        for lo, hi in _DEFAULT_IGNORABLE_RANGES:
            classes[lo:hi + 1] = IGNORED
        _CHAR_CLASSES = classes
    return _CHAR_CLASSES


# LaTeX that only spaces, sizes or styles (normalisation step 4, after case folding, so that an
# upper-cased copy loses the same words); `\dfrac` / `\tfrac` read `\frac`.
_LATEX_PRESENTATIONAL = re.compile(
    r"\\(?:q?quad|(?:en|thin|med|thick|negthin|negmed|negthick)space|left|right|middle|bigg?[lrm]?"
    r"|(?:display|text|script|scriptscript)style)(?![a-z])|\\hspace\*?\{[^{}]*\}")
_LATEX_FRAC = re.compile(r"\\[dt]frac(?![a-z])")
_IGNORED_RE: re.Pattern | None = None


def _ignored_re() -> re.Pattern:
    """The IGNORED code points of the BMP as one character class, to delete them before the LaTeX
    step: "\\le\\u200bft" is `\\left` once the zero-width space is gone. (A class with astral
    ranges is scanned 4x slower, and no astral format character sits inside a LaTeX command.)"""
    global _IGNORED_RE
    if _IGNORED_RE is None:
        cps = np.flatnonzero(char_classes()[:0x10000] == IGNORED)
        starts = cps[np.r_[True, np.diff(cps) > 1]]
        ends = cps[np.r_[np.diff(cps) > 1, True]]
        _IGNORED_RE = re.compile("[" + "".join(f"\\u{a:04x}-\\u{b:04x}" for a, b in zip(starts, ends)) + "]")
    return _IGNORED_RE


def fold(text: str) -> str:
    """Normalisation steps 1-4 (module doc), the text the word classes then split: HTML references
    decoded, NFKC, case folded, presentational LaTeX dropped. Both sides, eval items and documents,
    go through this one function, so that they cannot tokenize words differently."""
    for _ in range(2):  # "&amp;nbsp;": escaped twice
        if "&" not in text:
            break
        text = html.unescape(text)
    text = unicodedata.normalize("NFKC", text).casefold()
    if "\\" in text:
        if not text.isascii():  # every IGNORED code point is non-ASCII
            text = _ignored_re().sub("", text)
        text = _LATEX_FRAC.sub(r"\\frac", _LATEX_PRESENTATIONAL.sub(" ", text))
    return text


def normalize(text: str) -> str:
    """The normalised text: words joined by single spaces (the reference for the kernel)."""
    classes = char_classes()
    folded = fold(text)
    out = []
    for ch in folded:
        cls = classes[ord(ch)]
        if cls == SEPARATOR:
            out.append(" ")
        elif cls != IGNORED:
            out.append(ch)
    return " ".join("".join(out).split())


def words(text: str) -> list[str]:
    return normalize(text).split()


def is_informative(ngram: list[str] | tuple[str, ...]) -> bool:
    """The informative-n-gram rule (reference for the kernel): see `ngram_hashes`."""
    return (len(set(ngram)) >= (len(ngram) + 1) // 2
            and any(char_classes()[ord(c)] == LETTER for w in ngram for c in w))


def _code_points(text: str) -> np.ndarray:
    folded = fold(text)
    return np.frombuffer(folded.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@njit(inline="always")
def _mix64(z):  # pragma: no cover - compiled
    z = (z ^ (z >> _S30)) * _MIX_A
    z = (z ^ (z >> _S27)) * _MIX_B
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True)
def _word_hashes(cps, classes):  # pragma: no cover - compiled
    """Per word: 64-bit hash, and whether it holds a letter."""
    out = np.empty(cps.shape[0] // 2 + 1, dtype=np.uint64)
    has_letter = np.zeros(cps.shape[0] // 2 + 1, dtype=np.bool_)
    k = 0
    h = _FNV_OFFSET
    in_word = False
    letter = False
    n_classes = classes.shape[0]
    for i in range(cps.shape[0]):
        c = cps[i]
        cls = classes[c] if c < n_classes else 0
        if cls == 1:
            if in_word:
                out[k] = _mix64(h)
                has_letter[k] = letter
                k += 1
                h = _FNV_OFFSET
                in_word = False
                letter = False
        elif cls != 2:
            h = (h ^ np.uint64(c)) * _FNV_PRIME
            in_word = True
            if cls == 3:
                letter = True
    if in_word:
        out[k] = _mix64(h)
        has_letter[k] = letter
        k += 1
    return out[:k], has_letter[:k]


@njit(cache=True, nogil=True)
def _ngram_hashes(word_hashes, has_letter, n):  # pragma: no cover - compiled
    """Hashes of the informative n-grams, in position order."""
    m = word_hashes.shape[0] - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    out = np.empty(m, dtype=np.uint64)
    min_distinct = (n + 1) // 2
    k = 0
    for i in range(m):
        letters = False
        distinct = 0
        acc = np.uint64(n)
        for j in range(n):
            w = word_hashes[i + j]
            acc = acc * _POLY + w
            if has_letter[i + j]:
                letters = True
            seen = False
            for jj in range(j):
                if word_hashes[i + jj] == w:
                    seen = True
                    break
            if not seen:
                distinct += 1
        if letters and distinct >= min_distinct:
            out[k] = _mix64(acc)
            k += 1
    return out[:k]


def ngram_hashes(text: str, ngram_size: int = DEFAULT_NGRAM_SIZE) -> np.ndarray:
    """uint64 hashes of the text's informative word n-grams, one per position, in order.

    Informative: at least ceil(n/2) distinct words and at least one word with a letter.
    "0 0 0 0 0 0 0 0" or "0 1 2 3 4 5 6 7" (an MMLU matrix, a GSM8K calculation) would
    otherwise match every numeric table in code and data files; they are neither indexed
    nor counted in a document's denominator.
    """
    if not text:
        return np.empty(0, dtype=np.uint64)
    word_hashes, has_letter = _word_hashes(_code_points(text), char_classes())
    return _ngram_hashes(word_hashes, has_letter, int(ngram_size))


# ---------------------------------------------------------------------------- index file


# The npz members' array data start on a 64-byte boundary in the file (a zip "extra"
# padding record, as zipalign does), so a memory map is aligned: numpy silently copies an
# unaligned uint64 array on every searchsorted, which made lookups 200x slower.
_ALIGN = 64
_PAD_EXTRA_ID = 0xD935


def _write_aligned_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED,
                                                 allowZip64=True) as zf:
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(arr))
            header_bytes = header.getvalue()
            size = len(header_bytes) + arr.nbytes
            zip64 = size > (1 << 31)
            member = (name + ".npy").encode("ascii")
            start = raw.tell() + 30 + len(member) + 4 + (20 if zip64 else 0) + len(header_bytes)
            pad = (-start) % _ALIGN
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.extra = struct.pack("<HH", _PAD_EXTRA_ID, pad) + b"\0" * pad
            info.file_size = size
            with zf.open(info, "w", force_zip64=zip64) as out:
                out.write(header_bytes)
                view = memoryview(arr.reshape(-1).view(np.uint8))
                for i in range(0, len(view), 1 << 24):
                    out.write(view[i:i + (1 << 24)])


def _npz_member_memmap(path: str, name: str) -> np.ndarray | None:
    """Memory-map one array of an uncompressed .npz; None if compressed or misaligned."""
    member = name + ".npy"
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: bad zip local header for {member}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if offset % dtype.alignment:
        return None
    if not shape or shape[0] == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _directory_size(n: int) -> int:
    """Buckets for n hashes: a power of two giving 4-8 hashes per bucket (2^8 .. 2^28)."""
    bits = min(28, max(8, n.bit_length() - 3))
    return 1 << bits


def bucket_directory(hashes: np.ndarray) -> np.ndarray:
    """int64 offsets: hashes with top bits b lie in hashes[directory[b]:directory[b + 1]].

    A plain binary search over a 100 MB array costs ~24 dependent cache misses per lookup
    (1.4 us); the directory narrows each lookup to one bucket of a few hashes, which is
    one or two misses. It is stored in the index file so that workers share it too.
    """
    size = _directory_size(len(hashes))
    bits = size.bit_length() - 1
    top = (np.asarray(hashes) >> np.uint64(64 - bits)).astype(np.int64)
    directory = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(np.bincount(top, minlength=size), out=directory[1:])
    return directory


@njit(cache=True, nogil=True)
def _first_at_least(hashes, directory, shift, x):  # pragma: no cover - compiled
    """(first position in x's bucket whose hash is >= x, the bucket's end): a binary search
    inside the bucket the directory names by x's top bits."""
    b = x >> shift
    lo = directory[b]
    end = directory[b + 1]
    hi = end
    while lo < hi:
        mid = (lo + hi) >> 1
        if hashes[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo, end


@njit(cache=True, nogil=True)
def _contains(hashes, directory, shift, query, out):  # pragma: no cover - compiled
    for i in range(query.shape[0]):
        x = query[i]
        lo, end = _first_at_least(hashes, directory, shift, x)
        out[i] = lo < end and hashes[lo] == x


@njit(cache=True, nogil=True)
def _contains_allowed(hashes, set_ids, directory, shift, allowed, query, out):  # pragma: no cover - compiled
    """`_contains`, counting only entries whose eval set is allowed (the run of equal hashes
    holds one entry per set; it is one or two entries long)."""
    for i in range(query.shape[0]):
        x = query[i]
        lo, end = _first_at_least(hashes, directory, shift, x)
        hit = False
        while lo < end and hashes[lo] == x:
            if allowed[set_ids[lo]]:
                hit = True
                break
            lo += 1
        out[i] = hit


class IndexFileError(ValueError):
    """The index file is missing, unreadable or built for different settings. `stale` is (the hash
    version it holds, its metadata) when rebuilding it under this code is the remedy: a caller that
    names the index by another URI than the file read (the build's s3:// index, downloaded) says the
    remedy for that URI with `stale_index_error(uri, *stale)`, not by rewriting this one's text."""

    def __init__(self, message: str, stale: tuple[int, dict] | None = None):
        super().__init__(message)
        self.stale = stale


def stale_index_error(path: str, held, meta: dict) -> IndexFileError:
    """The refusal of an index an older dolmino hashed, with the command that rebuilds `path`."""
    return IndexFileError(f"decontamination index {path} uses hash version {held}, this code {HASH_VERSION}: "
                          f"rebuild it with `{rebuild_command(path, meta)}`", stale=(held, meta))


def _as_set_key(entry) -> tuple[str, str | None]:
    if isinstance(entry, str):
        return entry, None
    task, split = entry
    return str(task), None if split is None else str(split)


@dataclass
class NgramIndex:
    """Sorted n-gram hashes, one entry per (n-gram, eval set) pair, and the set of each entry.

    An eval set is a (task, split) pair: ("gsm8k", "test"), ("arc_easy", "train"), ...
    Files of index format 1 recorded tasks only; they load with split None for every set.
    """

    hashes: np.ndarray
    set_ids: np.ndarray
    sets: list                 # (task, split) per set id; a bare string means (task, None)
    ngram_size: int
    meta: dict = field(default_factory=dict)
    directory: np.ndarray | None = None   # bucket offsets by the top bits (see `bucket_directory`)

    def __post_init__(self):
        self.sets = [_as_set_key(entry) for entry in self.sets]
        if self.directory is None:
            self.directory = bucket_directory(self.hashes)
        self._task_of_set = [task for task, _ in self.sets]

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def tasks(self) -> list[str]:
        """Distinct task names, in set order."""
        return list(dict.fromkeys(self._task_of_set))

    @property
    def has_splits(self) -> bool:
        return all(split is not None for _, split in self.sets)

    @property
    def distinct_hashes(self) -> int:
        return int(self.meta.get("distinct_hashes", len(self.hashes)))

    def allowed_sets(self, exclude_tasks: Iterable[str] = (), exclude_splits: Iterable[str] = (),
                     where: str = "index") -> tuple[np.ndarray | None, list[str]]:
        """(bool mask over set ids, or None when nothing is excluded; entries that matched no set).

        `exclude_tasks` names tasks (every split); `exclude_splits` names a split of every
        task ("train") or of one task ("gsm8k:train").
        """
        allowed = np.ones(len(self.sets), dtype=np.bool_)
        unmatched = []
        for task in exclude_tasks:
            hit = [i for i, (t, _) in enumerate(self.sets) if t == task]
            allowed[hit] = False
            if not hit:
                unmatched.append(task)
        for entry in exclude_splits:
            if not self.has_splits:
                raise IndexFileError(f"{where} was built before splits were recorded (index format 1): "
                                     f"rebuild it to exclude splits ({entry!r})")
            task, _, split = entry.rpartition(":")
            hit = [i for i, (t, sp) in enumerate(self.sets) if sp == split and (not task or t == task)]
            allowed[hit] = False
            if not hit:
                unmatched.append(entry)
        return (None if allowed.all() else allowed), unmatched

    def contains(self, query: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask: which query hashes are in the index (in an allowed set, if given)."""
        out = np.zeros(len(query), dtype=np.bool_)
        if len(self.hashes) and len(query):
            bits = int(len(self.directory) - 1).bit_length() - 1
            q = np.ascontiguousarray(query, dtype=np.uint64)
            if allowed is None:
                _contains(np.asarray(self.hashes), np.asarray(self.directory), np.uint64(64 - bits), q, out)
            else:
                _contains_allowed(np.asarray(self.hashes), np.asarray(self.set_ids), np.asarray(self.directory),
                                  np.uint64(64 - bits), allowed, q, out)
        return out

    def task_hits(self, query: np.ndarray, allowed: np.ndarray | None = None) -> dict[str, int]:
        """Per task, how many query positions hold an n-gram of that task (of its allowed sets)."""
        hits = query[self.contains(query, allowed)]
        if len(hits) == 0:
            return {}
        values, counts = np.unique(hits, return_counts=True)
        left = np.searchsorted(self.hashes, values, side="left")
        right = np.searchsorted(self.hashes, values, side="right")
        per_task: Counter = Counter()
        for lo, hi, c in zip(left.tolist(), right.tolist(), counts.tolist()):
            ids = np.asarray(self.set_ids[lo:hi]).tolist()
            for task in {self._task_of_set[i] for i in ids if allowed is None or allowed[i]}:
                per_task[task] += c
        return dict(per_task)

    def save(self, path: str) -> None:
        path = str(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not self.has_splits:
            raise ValueError("an index without splits (format 1) cannot be saved in format 2")
        meta = dict(self.meta, sets=[list(k) for k in self.sets], tasks=self.tasks, ngram_size=self.ngram_size,
                    hash_version=HASH_VERSION, format_version=INDEX_FORMAT)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            _write_aligned_npz(tmp, {
                "hashes": np.asarray(self.hashes, dtype=np.uint64),
                "set_ids": np.asarray(self.set_ids, dtype=np.uint16),
                "directory": np.asarray(self.directory, dtype=np.int64),
                "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)})
            os.replace(tmp, path)
        except BaseException:  # also Ctrl-C: a failed save left `out.npz.tmp<pid>` behind (a tester)
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str, mmap: bool = True) -> "NgramIndex":
        path = str(path)
        meta = read_index_meta(path)
        ids_name = "set_ids" if meta["format_version"] >= 2 else "task_ids"
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {}
                for name in ("hashes", ids_name, "directory"):
                    arrays[name] = _npz_member_memmap(path, name) if mmap else None
                    if arrays[name] is None:
                        arrays[name] = npz[name]
                hashes, set_ids, directory = arrays["hashes"], arrays[ids_name], arrays["directory"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise IndexFileError(f"decontamination index {path} is unreadable: {exc}") from None
        if (hashes.dtype != np.uint64 or set_ids.dtype != np.uint16 or len(hashes) != len(set_ids)
                or directory.dtype != np.int64 or len(directory) != _directory_size(len(hashes)) + 1
                or (len(hashes) and int(directory[-1]) != len(hashes))):
            raise IndexFileError(f"decontamination index {path} has malformed arrays")
        sets = meta["sets"] if meta["format_version"] >= 2 else [(t, None) for t in meta["tasks"]]
        return cls(hashes, set_ids, sets, int(meta["ngram_size"]), meta, directory)


def check_index_file(path: str) -> None:
    """Every member of the index file against its zip CRC-32 (reads it whole: once per build, on the
    driver). The arrays are memory-mapped, which checks nothing: one flipped bit in the hashes
    stopped an eval 8-gram from being found, unsaid (found by a tester)."""
    read_index_meta(path)
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        raise IndexFileError(f"decontamination index {path} is unreadable: {exc}") from None
    if bad is not None:
        raise IndexFileError(f"decontamination index {path} is damaged: {bad} fails its CRC-32 check; rebuild it "
                             "(or copy it again)")


def read_index_meta(path: str) -> dict:
    """The metadata of an index file (format, sets, instance counts, coverage), without its arrays.

    Format 1 files (tasks, no splits) get `format_version` 1; newer formats and other hash
    schemes are refused with a message saying to rebuild.
    """
    path = str(path)
    if not os.path.exists(path):
        raise IndexFileError(f"decontamination index {path} does not exist "
                             f"(build it with `python -m filters.decontamination build --out {path}`)")
    if os.path.isdir(path):
        raise IndexFileError(f"decontamination index {path} is a directory, not an index file (a .npz, as "
                             "`python -m filters.decontamination build` writes)")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":  # np.load would call any other file "pickled (object) data"
        raise IndexFileError(f"decontamination index {path} is not an index file (a .npz, as `python -m "
                             f"filters.decontamination build` writes): it starts with {head!r}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise IndexFileError(f"decontamination index {path} is unreadable: {exc}") from None
    held = meta.get("hash_version")
    if held != HASH_VERSION:
        if isinstance(held, int) and held > HASH_VERSION:  # "rebuild it" here undid a newer dolmino's index
            raise IndexFileError(f"decontamination index {path} uses hash version {held}, newer than this code's "
                                 f"{HASH_VERSION}: update dolmino (a newer one built it, and refuses an index "
                                 "rebuilt by this one)")
        raise stale_index_error(path, held, meta)
    meta.setdefault("format_version", 1)
    if meta["format_version"] > INDEX_FORMAT:
        raise IndexFileError(f"decontamination index {path} has format {meta['format_version']}, newer than this "
                             f"code reads ({INDEX_FORMAT}): update dolmino or rebuild the index")
    return meta


def rebuild_command(path: str, meta: dict) -> str:
    """The `build` command that makes `path` again, under this code's normalisation, from the eval sets
    its metadata names. "rebuild it" alone had a team rebuild its index of a few sets (or with --jsonl
    sets of its own) as `make corpus` does, with the paper's: another index than the one refused. An
    s3:// index is built as a local file and copied up (`build --out s3://...` is refused: a URL)."""
    import shlex

    local = posixpath.basename(path) if path.startswith("s3://") else path
    args = ["python", "-m", "filters.decontamination", "build", "--out", local]
    if meta.get("task_spec", "paper") != "paper":
        args += ["--tasks", str(meta["task_spec"])]
    if meta.get("ngram_size", DEFAULT_NGRAM_SIZE) != DEFAULT_NGRAM_SIZE:
        args += ["--ngram-size", str(meta["ngram_size"])]
    if meta.get("include_fewshot") is False:
        args.append("--no-fewshot")
    for spec in meta.get("jsonl") or ():
        args += ["--jsonl", str(spec)]
    return shlex.join(args) + (f" && aws s3 cp {shlex.quote(local)} {shlex.quote(path)}" if local != path else "")


def build_index(instances: Iterable, out_path: str | None = None, ngram_size: int = DEFAULT_NGRAM_SIZE,
                progress: bool = False, meta_extra: dict | None = None) -> NgramIndex:
    """Index the n-grams of `instances` (objects with .task, .split, .text); save if out_path.

    Every (task, split) is its own eval set, so a filter can leave one out (`exclude_splits`).
    The returned index's `meta` holds per task and split the instance count, how many
    instances were too short to give any n-gram, the distinct n-grams per set and per
    task, the total distinct hashes and the false-positive rate per lookup (N / 2^64), plus
    `meta_extra` (the build CLI adds the coverage of the paper's eval sets). `progress=True`
    draws a bar (instances, current task) on a terminal; it stays silent in logs.
    """
    from dolmino.progress import progress as progress_bar

    if not isinstance(ngram_size, int) or isinstance(ngram_size, bool) or ngram_size < 1:
        raise ValueError(f"ngram_size must be a positive integer, got {ngram_size!r}")
    bar = progress_bar(desc="decontamination index", unit=" instances", enable=None if progress else False)
    buffers: dict[tuple, list[np.ndarray]] = defaultdict(list)
    buffered: Counter = Counter()
    compact_at: dict[tuple, int] = defaultdict(lambda: _COMPACT_EVERY)
    instances_per: dict[str, Counter] = defaultdict(Counter)
    short_per: dict[str, Counter] = defaultdict(Counter)
    try:  # the bar closed, so that an error or Ctrl-C is said on a line of its own
        current_task = None
        for inst in instances:
            key = (str(inst.task), str(inst.split))
            if ":" in key[0] or ":" in key[1]:
                raise ValueError(f"eval set names may not contain ':' (it separates task and split): {key}")
            hashes = ngram_hashes(inst.text, ngram_size)
            bar.update(1)
            if inst.task != current_task:
                current_task = inst.task
                bar.set_postfix_str(inst.task, refresh=False)
            instances_per[key[0]][key[1]] += 1
            if len(hashes) == 0:
                short_per[key[0]][key[1]] += 1
                continue
            buffers[key].append(hashes)
            buffered[key] += len(hashes)
            if buffered[key] > compact_at[key]:
                merged = np.unique(np.concatenate(buffers[key]))
                buffers[key] = [merged]
                buffered[key] = len(merged)
                # Next compaction once the buffer has doubled again: amortised O(total log total).
                compact_at[key] = max(_COMPACT_EVERY, 2 * len(merged))
        bar.set_postfix_str("merging n-grams")
        sets = sorted((task, split) for task, splits in instances_per.items() for split in splits)
        if len(sets) > np.iinfo(np.uint16).max:
            raise ValueError(f"too many eval sets for a uint16 set id: {len(sets)}")
        all_hashes, all_ids, per_set_ngrams = [], [], {}
        per_task: dict[str, list[np.ndarray]] = defaultdict(list)
        for sid, key in enumerate(sets):
            uniq = np.unique(np.concatenate(buffers.pop(key))) if buffered[key] else np.empty(0, np.uint64)
            per_set_ngrams[f"{key[0]}:{key[1]}"] = int(len(uniq))
            per_task[key[0]].append(uniq)
            all_hashes.append(uniq)
            all_ids.append(np.full(len(uniq), sid, dtype=np.uint16))
        hashes = np.concatenate(all_hashes) if all_hashes else np.empty(0, np.uint64)
        set_ids = np.concatenate(all_ids) if all_ids else np.empty(0, np.uint16)
        order = np.argsort(hashes, kind="stable")
        hashes, set_ids = hashes[order], set_ids[order]
        distinct = int(np.count_nonzero(np.diff(hashes)) + 1) if len(hashes) else 0
        bar.set_postfix_str("done")
    finally:
        bar.close()
    meta = {
        **(meta_extra or {}),
        "instances": {t: dict(sorted(instances_per[t].items())) for t in sorted(instances_per)},
        "instances_without_ngrams": {t: dict(sorted(short_per[t].items())) for t in sorted(short_per)},
        "ngrams_per_set": per_set_ngrams,
        "ngrams_per_task": {t: int(len(np.unique(np.concatenate(v)))) for t, v in sorted(per_task.items())},
        "distinct_hashes": distinct,
        "pairs": int(len(hashes)),
        "false_positive_rate_per_lookup": distinct / 2.0 ** 64,
        # No build time here: the same eval sets must give the same file, byte for byte, or every
        # build keyed on the index's digest would re-tag its sources after a rebuild.
    }
    index = NgramIndex(hashes, set_ids, sets, ngram_size, meta)
    if out_path is not None:
        index.save(out_path)
    return index


# ---------------------------------------------------------------------------- coverage


def index_coverage(index_path: str, exclude_tasks: Iterable[str] = (), exclude_splits: Iterable[str] = ()) -> dict:
    """Which of the paper's eval sets an index covers, with instance counts (for build reports).

    One entry per set of `dolmino.evalsets.PAPER_EVAL_SETS`, in that order: `name` (as the
    report writes it), `task`, `status`, `instances` ({split: count} in the index, minus
    excluded splits), `excluded` (splits the given exclusions leave out), `released_missing`
    (released splits not in the index), `note` (subsamples, partial sets, why a set is
    missing; recorded when the index was built). Status: "complete" (every released split,
    whole), "partial", "missing" (not in the index) or "excluded" (in it, all excluded).
    Lists `complete`, `partial`, `missing`, `excluded` give the names per status;
    `other_tasks` the indexed tasks outside the paper's list. Reads only the index's
    metadata; works for indexes built by any version (older ones lack notes).
    """
    from dolmino.evalsets import PAPER_EVAL_SETS, RELEASED_SPLITS, coverage_note, source_versions

    meta = read_index_meta(index_path)
    exclude_tasks, exclude_splits = list(exclude_tasks or ()), list(exclude_splits or ())
    if meta["format_version"] >= 2:
        sets = [tuple(k) for k in meta["sets"]]
    else:
        sets = [(t, s) for t in meta["tasks"] for s in meta.get("instances", {}).get(t, {})]
        if exclude_splits:
            raise IndexFileError(f"decontamination index {index_path} was built before splits were recorded "
                                 "(index format 1): rebuild it to exclude splits")
    excluded_sets = set()
    for task, split in sets:
        if task in exclude_tasks or any(e.rpartition(":")[2] == split and e.rpartition(":")[0] in ("", task)
                                        for e in exclude_splits):
            excluded_sets.add((task, split))
    instances = meta.get("instances", {})
    notes = meta.get("coverage_notes", {})
    out = {"index": str(index_path), "ngram_size": meta.get("ngram_size"), "format_version": meta["format_version"],
           "sources": meta.get("eval_sources", {}), "exclude_tasks": exclude_tasks, "exclude_splits": exclude_splits,
           "sets": [], "complete": [], "partial": [], "missing": [], "excluded": [], "other_tasks": {}}
    current = source_versions()
    out["stale_sources"] = {p: [v, current[p]] for p, v in sorted(out["sources"].items())
                            if current.get(p) not in (None, v)}
    for task, name in PAPER_EVAL_SETS.items():
        counts = instances.get(task, {})
        kept = {sp: n for sp, n in counts.items() if (task, sp) not in excluded_sets}
        excluded = sorted(sp for sp in counts if (task, sp) in excluded_sets)
        released_missing = [sp for sp in RELEASED_SPLITS.get(task, ()) if sp not in counts]
        info = notes.get(task, {})
        subsampled = {sp: n for sp, n in info.get("subsampled", {}).items() if sp in counts}
        if not counts:
            status = "missing"
        elif not kept:
            status = "excluded"
        elif released_missing or excluded or subsampled or info.get("incomplete"):
            status = "partial"
        else:
            status = "complete"
        note = coverage_note(info.get("missing_reason", "") or ("" if counts else "not in this index"),
                             subsampled, released_missing, info.get("incomplete", ""), absent="not in the index")
        out["sets"].append({"name": name, "task": task, "status": status, "instances": dict(sorted(kept.items())),
                            "instances_total": sum(kept.values()), "excluded": excluded,
                            "released_missing": released_missing, "note": note})
        out[status].append(name)
    out["other_tasks"] = {t: dict(v) for t, v in sorted(instances.items()) if t not in PAPER_EVAL_SETS}
    out["unknown_exclusions"] = _unknown_exclusions(sets, exclude_tasks, exclude_splits)
    return out


class UnknownExclusionWarning(UserWarning):
    """An exclude_tasks / exclude_splits entry that names nothing in the index (a typo, usually).
    A build's driver reports it once, in its warnings; its executors stay quiet about it."""


def stale_sources_note(coverage: dict) -> str | None:
    """What `index_coverage`'s `stale_sources` says, in one line, or None: an index built from
    other releases of the packaged eval sets than this code reads (a bump of the pins in
    `dolmino.assets`) checks the sets of those, which may differ; it was used unsaid."""
    stale = coverage.get("stale_sources")
    if not stale:
        return None
    built = ", ".join(f"{p} {old}" for p, (old, _) in stale.items())
    now = ", ".join(f"{p} {new}" for p, (_, new) in stale.items())
    return (f"decontamination index {coverage['index']} was built from {built}, where this dolmino reads {now}: "
            "its eval sets may differ from today's; rebuild it (python -m filters.decontamination build)")


def _unknown_exclusions(sets: list[tuple[str, str]], exclude_tasks: list[str], exclude_splits: list[str]) -> list[str]:
    """Exclusions that name neither a set of the index nor a released split of a paper eval set:
    most likely typos, which would otherwise leave the set they meant in the check, silently.
    A released split the index lacks (GSM8K train, which is not packaged) is not one."""
    from dolmino.evalsets import PAPER_EVAL_SETS, RELEASED_SPLITS

    tasks = {t for t, _ in sets} | set(PAPER_EVAL_SETS)
    known = set(sets) | {(t, sp) for t, splits in RELEASED_SPLITS.items() for sp in (*splits, "fewshot")}
    unknown = [t for t in exclude_tasks if t not in tasks]
    for entry in exclude_splits:
        task, _, split = entry.rpartition(":")
        if not any(sp == split and (not task or t == task) for t, sp in known):
            unknown.append(entry)
    return unknown


# ---------------------------------------------------------------------------- report


@dataclass
class DecontaminationReport:
    """Per eval set: documents hit and tokens removed. Mergeable across Spark partitions.

    `docs_hit[task]` / `tokens_hit[task]`: removed documents containing any n-gram of the
    task (a document overlapping two tasks counts for both, so these sum to more than
    `docs_removed`); `primary_docs[task]`: removed documents whose largest overlap is with
    the task (these sum to `docs_removed`). Tokens are dolma2 tokens plus one EOS, as the
    build counts them, taken from the document's `token_ids`; removed documents without
    `token_ids` are counted in `docs_without_tokens`.
    """

    docs_checked: int = 0
    docs_removed: int = 0
    tokens_removed: int = 0
    docs_without_tokens: int = 0
    docs_partial_overlap: int = 0  # kept, with 0 < overlap < threshold
    docs_hit: Counter = field(default_factory=Counter)
    tokens_hit: Counter = field(default_factory=Counter)
    primary_docs: Counter = field(default_factory=Counter)

    def add(self, removed: bool, task_hits: dict[str, int] | None = None, tokens: int | None = None) -> None:
        self.docs_checked += 1
        if not removed:
            if task_hits:
                self.docs_partial_overlap += 1
            return
        self.docs_removed += 1
        if tokens is None:
            self.docs_without_tokens += 1
            tokens = 0
        self.tokens_removed += tokens
        for task in task_hits or {}:
            self.docs_hit[task] += 1
            self.tokens_hit[task] += tokens
        if task_hits:
            primary = max(sorted(task_hits), key=lambda t: task_hits[t])
            self.primary_docs[primary] += 1

    def merge(self, other: "DecontaminationReport") -> "DecontaminationReport":
        self.docs_checked += other.docs_checked
        self.docs_removed += other.docs_removed
        self.tokens_removed += other.tokens_removed
        self.docs_without_tokens += other.docs_without_tokens
        self.docs_partial_overlap += other.docs_partial_overlap
        self.docs_hit.update(other.docs_hit)
        self.tokens_hit.update(other.tokens_hit)
        self.primary_docs.update(other.primary_docs)
        return self

    def to_dict(self) -> dict:
        """Token counts are None where no removed document had its tokens: a build decides before
        tokenizing (the pool stage), and its report said 0 tokens removed (found by a tester)."""
        unknown = self.docs_removed > 0 and self.docs_without_tokens == self.docs_removed
        return {
            "docs_checked": self.docs_checked, "docs_removed": self.docs_removed,
            "tokens_removed": None if unknown else self.tokens_removed, "docs_without_tokens": self.docs_without_tokens,
            "docs_partial_overlap": self.docs_partial_overlap,
            "per_task": {t: {"docs_hit": self.docs_hit[t], "tokens_hit": None if unknown else self.tokens_hit[t],
                             "primary_docs": self.primary_docs[t]} for t in sorted(self.docs_hit)},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DecontaminationReport":
        per = d.get("per_task", {})
        return cls(d["docs_checked"], d["docs_removed"], d["tokens_removed"] or 0, d.get("docs_without_tokens", 0),
                   d.get("docs_partial_overlap", 0),
                   Counter({t: v["docs_hit"] for t, v in per.items()}),
                   Counter({t: v["tokens_hit"] or 0 for t, v in per.items()}),
                   Counter({t: v["primary_docs"] for t, v in per.items() if v["primary_docs"]}))


# ---------------------------------------------------------------------------- filter


def _tokens_of(doc: dict) -> int | None:
    tokens = doc.get("token_ids")
    return None if tokens is None else len(tokens) + 1


def _names(name: str, value, split_syntax: bool = False) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of names, got {value!r}")
    for v in value:
        if not isinstance(v, str) or not v.strip() or v != v.strip():
            raise ValueError(f"{name} must hold non-empty names without surrounding spaces, got {v!r}")
        if split_syntax and (v.count(":") > 1 or v.startswith(":") or v.endswith(":")):
            raise ValueError(f"{name} entries are 'split' or 'task:split', got {v!r}")
        if not split_syntax and ":" in v:
            raise ValueError(f"{name} holds task names; use exclude_splits for 'task:split', got {v!r}")
    return tuple(value)


class DecontaminationFilter:
    """Remove documents with >= `threshold` of their word n-grams in the eval index.

    `index_path` is a file from `build_index`; `ngram_size` defaults to the index's and, if
    given, must equal it (hashes of different n never match). The index loads lazily on
    the first document, so the filter pickles as its parameters (Spark ships it to
    executors); a missing or stale index fails there with a message naming the path.

    `exclude_tasks` (["gsm8k"]) and `exclude_splits` (["train"] for every task, or
    ["gsm8k:train", "gsm8k:fewshot"] for one) leave eval sets out of the check for this
    source only: the math source keeps its own GSM8K-train subset while being checked
    against every test and validation split (the GSM8K few-shot exemplars are train items
    too). The index stays shared and memory-mapped; excluded entries are skipped at lookup.
    An exclusion that matches no set of the index is allowed (GSM8K train is not packaged
    today) and listed in `unmatched_exclusions` with a warning.
    """

    name = "decontaminate"

    def __init__(self, index_path: str, ngram_size: int | None = None, threshold: float = DEFAULT_THRESHOLD,
                 exclude_tasks: list[str] | None = None, exclude_splits: list[str] | None = None):
        if not isinstance(index_path, (str, os.PathLike)) or not str(index_path):
            raise ValueError(f"index_path must be a path, got {index_path!r}")
        if ngram_size is not None and (not isinstance(ngram_size, int) or isinstance(ngram_size, bool)
                                       or ngram_size < 1):
            raise ValueError(f"ngram_size must be a positive integer, got {ngram_size!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        self.index_path = str(index_path)
        self.ngram_size = ngram_size
        self.threshold = float(threshold)
        self.exclude_tasks = _names("exclude_tasks", exclude_tasks)
        self.exclude_splits = _names("exclude_splits", exclude_splits, split_syntax=True)
        self.report = DecontaminationReport()
        self.unmatched_exclusions: list[str] = []
        self._index: NgramIndex | None = None
        self._allowed: np.ndarray | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_index"] = None
        state["_allowed"] = None
        return state

    @property
    def index(self) -> NgramIndex:
        if self._index is None:
            index = NgramIndex.load(self.index_path)
            if self.ngram_size is not None and self.ngram_size != index.ngram_size:
                raise IndexFileError(f"decontamination index {self.index_path} holds {index.ngram_size}-grams "
                                  f"but the filter asks for ngram_size={self.ngram_size}")
            allowed, unmatched = index.allowed_sets(self.exclude_tasks, self.exclude_splits,
                                                    where=f"decontamination index {self.index_path}")
            # Only names that are no set of the index nor a released split of one (typos): a
            # released split the index lacks (GSM8K train) is excluded by having nothing to check.
            unknown = _unknown_exclusions(list(index.sets), [e for e in unmatched if e in self.exclude_tasks],
                                          [e for e in unmatched if e not in self.exclude_tasks])
            if unknown:
                warnings.warn(f"decontamination index {self.index_path} has no eval set matching "
                              f"{', '.join(unknown)}: nothing excluded for those", UnknownExclusionWarning,
                              stacklevel=2)
            self._allowed, self.unmatched_exclusions = allowed, unmatched
            self._index = index
        return self._index

    @property
    def reason(self) -> str:
        """The threshold in percent, every digit the manifest gave: rounded to 6 digits, 0.10000001
        read "overlap>=10%" (a document at exactly 10% was kept under that reason) and 0.1234567
        shared its reason with 0.1234568 (a tester). Decimal, since 0.07 * 100 is 7.000000000000001."""
        percent = (Decimal(repr(self.threshold)) * 100).normalize()
        return f"overlap>={percent:f}%"

    def overlap(self, text: str) -> tuple[int, int]:
        """(n-gram positions found in the index, all n-gram positions) of `text`."""
        hashes = ngram_hashes(text, self.index.ngram_size)
        if len(hashes) == 0:
            return 0, 0
        return int(np.count_nonzero(self.index.contains(hashes, self._allowed))), len(hashes)

    def overlap_decision(self, doc: dict) -> tuple[str | None, dict[str, int] | None]:
        """(reason or None, per-task overlapping positions or None), without touching `.report`."""
        text = doc.get("text") or ""
        if not isinstance(text, str):
            text = str(text)
        index = self.index
        hashes = ngram_hashes(text, index.ngram_size)
        if len(hashes) == 0:
            return None, None
        n_hit = int(np.count_nonzero(index.contains(hashes, self._allowed)))
        if n_hit == 0:
            return None, None
        task_hits = index.task_hits(hashes, self._allowed)
        return (self.reason if n_hit / len(hashes) >= self.threshold else None), task_hits

    def reject_reason(self, doc: dict) -> str | None:
        reason, task_hits = self.overlap_decision(doc)
        self.report.add(reason is not None, task_hits, _tokens_of(doc) if reason is not None else None)
        return reason

    # Tag once, mix many (filters/base.py): the n-gram lookup is the tag, the threshold the decision.
    tag_params = ("index_path", "ngram_size", "exclude_tasks", "exclude_splits")

    def tag(self, docs: list[dict]) -> dict[str, list]:
        """Columns `hits` (n-gram positions found in the index), `ngrams` (all positions) and
        `task_hits` (JSON {eval set: positions}, None without hits)."""
        index = self.index
        hits, ngrams, task_hits = [], [], []
        for doc in docs:
            text = doc.get("text") or ""
            hashes = ngram_hashes(text if isinstance(text, str) else str(text), index.ngram_size)
            n_hit = int(np.count_nonzero(index.contains(hashes, self._allowed))) if len(hashes) else 0
            hits.append(n_hit)
            ngrams.append(len(hashes))
            task_hits.append(json.dumps(index.task_hits(hashes, self._allowed), sort_keys=True) if n_hit else None)
        return {"hits": hits, "ngrams": ngrams, "task_hits": task_hits}

    def decide(self, attrs) -> str | None:
        """The verdict from stored attributes; records it in `.report` (attrs may carry `tokens`)."""
        task_hits = json.loads(attrs["task_hits"]) if attrs.get("task_hits") else None
        removed = bool(attrs["hits"]) and attrs["hits"] / attrs["ngrams"] >= self.threshold
        self.report.add(removed, task_hits, attrs.get("tokens") if removed else None)
        return self.reason if removed else None


def report_partition(docs: Iterable[dict], filt: DecontaminationFilter) -> Iterator[DecontaminationReport]:
    """mapPartitions helper: run the filter over a partition, yield its one report.

    `rdd.mapPartitions(lambda it: report_partition(it, f)).reduce(lambda a, b: a.merge(b))`
    gives the whole-dataset report.
    """
    local = DecontaminationFilter(filt.index_path, filt.ngram_size, filt.threshold,
                                  list(filt.exclude_tasks), list(filt.exclude_splits))
    for doc in docs:
        local.reject_reason(doc)
    yield local.report


# ---------------------------------------------------------------------------- CLI


def _parse_jsonl_spec(spec: str) -> tuple[str, str, str, str]:
    """PATH:FIELDS:TASK[/SPLIT] -> (path, fields, task, split); split defaults to "jsonl"."""
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"--jsonl expects PATH:FIELDS:TASK[/SPLIT], got {spec!r}")
    path, fields, name = parts
    if ":" in path and not os.path.exists(path) and os.path.isfile(path.split(":", 1)[0]):
        # "evalset.jsonl:question:x:y" read as the file "evalset.jsonl:question", then blamed its suffix (a tester)
        raise argparse.ArgumentTypeError(f"--jsonl {spec!r}: read as PATH {path!r}, FIELDS {fields!r}, TASK {name!r}, "
                                         "and no such file; eval set names may not contain ':'")
    task, split = name.split("/", 1) if "/" in name else (name, "jsonl")
    if not task or not split or "/" in split:
        raise argparse.ArgumentTypeError(f"--jsonl: TASK[/SPLIT] expected, got {name!r}")
    return path, fields, task, split


def coverage_notes(rows: list[dict]) -> dict:
    """What `index_coverage` needs from `dolmino.evalsets.coverage` rows, per task."""
    return {r["task"]: {"subsampled": r["subsampled"], "incomplete": r["incomplete"],
                        "missing_reason": r["missing_reason"]} for r in rows}


def coverage_warnings(task_spec: str, rows: list[dict], extra_sets: Iterable[tuple[str, str]] = ()) -> list[str]:
    """What a `build --tasks paper|olmes|all` leaves out of the sets it stands for, one warning each:
    only BBH was said (and only for "paper"), so an index without AGIEval English, MMLU-Pro or
    TriviaQA's test split was built in silence but for a JSON list (a tester). `rows` are
    `dolmino.evalsets.coverage` rows; `extra_sets` the (task, split) pairs --jsonl adds."""
    from dolmino.evalsets import OLMES_SUITE

    if task_spec not in ("paper", "olmes", "all"):
        return []  # named tasks or none: the user chose exactly what to index
    given = set(extra_sets)
    out, absent, partial = [], [], []
    for r in rows:
        if task_spec == "olmes" and r["task"] not in OLMES_SUITE:
            continue
        if r["missing"] and not any(t == r["task"] for t, _ in given):
            out.append(f"{r['spec']} is not indexed: {r['missing_reason']}")
            continue
        splits = [sp for sp in r["released_missing"] if (r["task"], sp) not in given]
        if splits:
            absent.append(f"{r['spec']} {', '.join(splits)}")
        partial += [f"{r['spec']} {sp} ({n} items)" for sp, n in sorted(r["subsampled"].items())]
        if r["incomplete"]:  # BBH: the subtasks BIG-bench generates are not packaged
            out.append(f"{r['spec']} is partly indexed: {r['incomplete']}")
    if absent:
        out.append(f"released splits not indexed (not packaged; --jsonl adds a split): {'; '.join(absent)}")
    if partial:
        out.append(f"only a subsample is packaged, and indexed: {'; '.join(partial)}")
    return out


def short_instance_warnings(meta: dict, n: int) -> list[str]:
    """What a built index cannot catch: eval instances without one informative n-gram (shorter than
    n words, or numbers only). An eval set of only such instances was indexed as nothing, exit 0, and no
    document could then be removed for it, unsaid but for a JSON count (a tester). `meta`: `build_index`'s."""
    out, some = [], []
    for task, splits in sorted(meta.get("instances_without_ngrams", {}).items()):
        for split, short in sorted(splits.items()):
            total = meta["instances"][task][split]
            if short == total:
                out.append(f"{task}/{split}: none of its {total:,} instance(s) gives an informative {n}-gram "
                           f"(each is shorter than {n} words, or numbers only): nothing of it is indexed, and no "
                           "document can be removed for it; --ngram-size sets n")
            else:
                some.append(f"{task} {split} {short:,} of {total:,}")
    if some:
        out.append(f"instances without an informative {n}-gram (shorter than {n} words, or numbers only), which "
                   f"no document can match: {'; '.join(some)}")
    return out


def _cmd_build(args) -> int:
    from dolmino import evalsets
    from filters.outputs import check_output

    check_output("--out", args.out, [("--jsonl", spec[0]) for spec in args.jsonl])
    sources = evalsets.discover_sources() if args.tasks != "none" else []
    rows = []
    if args.tasks != "none":
        evalsets.select_tasks(args.tasks, sources)  # unknown names fail here, before any warning
        rows = evalsets.coverage(sources)
        for line in coverage_warnings(args.tasks, rows, [(spec[2], spec[3]) for spec in args.jsonl]):
            print(f"warning: {line}", file=sys.stderr)

    def instances():
        if args.tasks != "none":
            yield from evalsets.iter_instances(args.tasks, include_fewshot=not args.no_fewshot, sources=sources)
        for path, text_fields, task, split in args.jsonl:
            yield from evalsets.iter_jsonl_instances(path, text_fields, task, split=split)

    # absolute: the rebuild command a refusal prints (`rebuild_command`) runs from wherever the index is read
    # (a relative PATH named a file of the directory the build ran in; a tester)
    extra = {"task_spec": args.tasks, "include_fewshot": not args.no_fewshot,
             "jsonl": [f"{path if path.startswith('s3://') else os.path.abspath(path)}:{fields}:{task}/{split}"
                       for path, fields, task, split in args.jsonl]}
    if args.tasks != "none":
        extra["eval_sources"] = evalsets.source_versions()
        extra["coverage_notes"] = coverage_notes(rows)
    started = time.time()
    index = build_index(instances(), args.out, args.ngram_size, progress=True, meta_extra=extra)
    build_seconds = round(time.time() - started, 2)
    meta = index.meta
    total = sum(sum(v.values()) for v in meta["instances"].values())
    short = sum(sum(v.values()) for v in meta["instances_without_ngrams"].values())
    for line in short_instance_warnings(meta, index.ngram_size):
        print(f"warning: {line}", file=sys.stderr)
    cov = index_coverage(args.out)
    summary = {
        "out": args.out, "ngram_size": index.ngram_size, "tasks": len(index.tasks), "sets": len(index.sets),
        "instances": total, "instances_without_ngrams": short,
        "share_without_ngrams": round(short / total, 4) if total else 0.0,
        "distinct_hashes": meta["distinct_hashes"], "pairs": meta["pairs"],
        "index_bytes": int(index.hashes.nbytes + index.set_ids.nbytes),
        "false_positive_rate_per_lookup": meta["false_positive_rate_per_lookup"],
        "build_seconds": build_seconds,
        "paper_sets": {status: cov[status] for status in ("complete", "partial", "missing")},
    }
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_check(args) -> int:
    import warnings

    from filters.outputs import check_output

    if args.removed:
        check_output("--removed", args.removed, [("--input", args.input), ("--index", args.index)], documents=True)
    check_index_file(args.index)
    with warnings.catch_warnings():
        # as `coverage` says it: one "warning:" line, not Python's with the source line under it (a tester)
        warnings.showwarning = lambda message, *_rest, **_kw: print(f"warning: {message}", file=sys.stderr)
        return _check(args)


def _check(args) -> int:
    from dolmino.documents import Quarantine, read_documents, write_documents

    filt = DecontaminationFilter(args.index, args.ngram_size, args.threshold, args.exclude_tasks or None,
                                 args.exclude_splits or None)
    quarantine = Quarantine(keep_records=False)
    removed_docs = []
    kept = removed = 0
    tokenizer = None
    if not args.no_tokens:
        from tokenizers import Tokenizer

        from dolmino.assets import dolma2_tokenizer_path

        tokenizer = Tokenizer.from_file(str(dolma2_tokenizer_path()))
    for _, doc in read_documents(args.input, quarantine):
        reason, task_hits = filt.overlap_decision(doc)
        tokens = None
        if reason is not None:
            removed += 1
            # Only removed documents are tokenized: the report counts their tokens.
            if tokenizer is not None:
                tokens = len(tokenizer.encode(doc["text"], add_special_tokens=False).ids) + 1
            if args.removed:
                removed_docs.append(doc)
        else:
            kept += 1
        filt.report.add(reason is not None, task_hits, tokens)
    if args.removed:
        write_documents(args.removed, removed_docs)
    out = {"input": args.input, "docs_in": kept + removed + quarantine.total, "kept": kept,
           "removed": {filt.reason: removed} if removed else {}, "quarantined": dict(quarantine.counts),
           "report": filt.report.to_dict()}
    if filt.unmatched_exclusions:
        out["unmatched_exclusions"] = filt.unmatched_exclusions
    print(json.dumps(out, indent=2))
    return 0


def _cmd_coverage(args) -> int:
    cov = index_coverage(args.index, args.exclude_tasks, args.exclude_splits)
    if cov.get("unknown_exclusions"):  # the text output was silent about a misspelt exclusion (a tester)
        print(f"warning: {', '.join(cov['unknown_exclusions'])} names no eval set of the index nor a released "
              "split of one; nothing is excluded for it", file=sys.stderr)
    if note := stale_sources_note(cov):
        print(f"warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(cov, indent=2))
        return 0
    print(f"{'eval set':<18} {'status':<9} {'instances':>9}  splits / note")
    for row in cov["sets"]:
        splits = ", ".join(f"{sp} {n}" for sp, n in row["instances"].items())
        if row["excluded"]:
            splits += f"{'; ' if splits else ''}excluded: {', '.join(row['excluded'])}"
        note = f"  ({' '.join(row['note'].split())})" if row["note"] else ""  # one row per set, whatever the note
        print(f"{row['name']:<18} {row['status']:<9} {row['instances_total']:>9}  {splits}{note}")
    if cov["other_tasks"]:
        print(f"also indexed: {', '.join(cov['other_tasks'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from dolmino.help_format import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(prog="python -m filters.decontamination", formatter_class=DefaultsHelpFormatter,
                                     description="Build an eval n-gram index, or check documents against one.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="index the packaged eval sets (dolmino.evalsets)",
                       formatter_class=DefaultsHelpFormatter)
    b.add_argument("--out", required=True, type=local_path, help="index file to write (.npz)")
    b.add_argument("--tasks", default="paper",
                   help="'paper' (the report's eval sets that are packaged: SPEC §2, ../shared/SPEC.md, + MATH), "
                        "'olmes' (SPEC §2 only), 'all', 'none', or comma-separated names")
    b.add_argument("--ngram-size", type=int, default=DEFAULT_NGRAM_SIZE, help="words per n-gram")
    b.add_argument("--no-fewshot", action="store_true", help="leave out few-shot exemplars of prompts")
    b.add_argument("--jsonl", type=_parse_jsonl_spec, action="append", default=[],
                   help="extra eval set PATH:FIELDS:TASK[/SPLIT] (JSONL, .gz or .zst; FIELDS comma-separated, "
                        "each may be dotted; SPLIT defaults to 'jsonl'), e.g. train.jsonl:question,answer:gsm8k/train")
    c = sub.add_parser("check", help="report which documents of a file the filter removes",
                       formatter_class=DefaultsHelpFormatter)
    # local_path: an s3:// index was "does not exist (build it with ... --out s3://...)", which build refuses (a tester)
    c.add_argument("--index", required=True, type=local_path, help="index file written by `build` (.npz)")
    c.add_argument("--input", required=True, help="Dolma JSONL (.jsonl, .jsonl.gz, .jsonl.zst)")
    c.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="remove a document when this share of its n-grams is in the index")
    c.add_argument("--ngram-size", type=int, default=None, help="must match the index (default: the index's)")
    c.add_argument("--removed", help="write the removed documents here (Dolma JSONL)")
    c.add_argument("--no-tokens", action="store_true", help="do not count dolma2 tokens of removed documents")
    v = sub.add_parser("coverage", formatter_class=DefaultsHelpFormatter,
                       help="which of the paper's eval sets an index covers, with instance counts")
    v.add_argument("--index", required=True, type=local_path, help="index file from `build`")
    v.add_argument("--json", action="store_true", help="print the coverage record as JSON")
    for p in (c, v):
        p.add_argument("--exclude-tasks", nargs="*", default=[], help="tasks to leave out (all their splits)")
        p.add_argument("--exclude-splits", nargs="*", default=[], help="'split' (every task) or 'task:split'")
    args = parser.parse_args(argv)
    from dolmino.assets import AssetError

    try:
        return {"build": _cmd_build, "check": _cmd_check, "coverage": _cmd_coverage}[args.command](args)
    except BrokenPipeError:  # stdout's reader went away (`coverage ... | head`): run_main ends quietly, exit 141;
        raise  # caught as an OSError below it was "error: [Errno 32] Broken pipe", exit 2 (a tester)
    except (IndexFileError, ValueError, OSError, AssetError, zipfile.BadZipFile) as exc:  # a missing or
        print(f"error: {exc}", file=sys.stderr)  # damaged asset was a traceback (a tester)
        return 2
    except (KeyboardInterrupt, SystemError) as exc:
        # Ctrl-C was a traceback (a tester); `save` removes its temporary file. numba's dispatcher
        # wraps one that lands while it loads its compiled kernels in a SystemError.
        if not isinstance(exc, KeyboardInterrupt) and not isinstance(exc.__cause__, KeyboardInterrupt):
            raise
        print(f"{parser.prog} {args.command}: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
