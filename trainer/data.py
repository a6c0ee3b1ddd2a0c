"""Training data: fixed-length instances from dolmino / OLMo-core token memmaps.

Input format (docs/DESIGN.md "Memmaps"): `*.npy` files of raw little-endian uint32 token
ids with no header, optionally each with a `<stem>.label_mask.npy` of numpy bools (one byte
per token, True = train on the token).

Instances follow OLMo-core's fixed-sequence-length dataset: each file is cut on its own
into consecutive `seq_len`-token instances (the tail shorter than seq_len is dropped and
counted), so an instance never straddles two files and is one memmap slice. Labels are the
inputs shifted left by one with the last position ignored (-100). A label is ignored when
its token is masked by the label-mask file, or because of a repeated n-gram run
(trainer.repetition: a 1..13-token n-gram repeated 32 or more times in a row), detected
when the instance is loaded. What a run does depends on `repetition`:
- "instance_filter" (OLMo 2's default, OLMo-core's `InstanceFilterConfig(repetition_max_period
  =13, repetition_min_period=1, repetition_max_count=32)`): every label of an instance that
  holds such a run is ignored. OLMo-core looks at the instance's own tokens only and marks
  it with `instance_mask=False`, which its `get_labels` turns into all -100; the instance
  keeps its slot in the batch, so the data order is unchanged. Counted as `instances_filtered`.
- "mask_spans": only the labels inside the run are ignored, on a window widened by
  max_n * min_repeats tokens so that a run straddling the instance edge is caught exactly as
  a whole-file scan would catch it.
- "off".

Order: one global permutation of instance indices per epoch from numpy PCG64 seeded with
(seed, epoch); each optimizer step consumes the next `global_batch_size` positions, and
rank r of W takes positions r, r + W, r + 2W, ... of that window (DistributedSampler-style
striding). The position (epoch, cursor) is the whole loader state, so resuming mid-epoch
replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import torch

from trainer.config import DOLMA2_VOCAB_SIZE, REPETITION_MODES
from trainer.loss import IGNORE_INDEX
from trainer.repetition import repeated_ngram_span_array

TOKEN_DTYPE = np.dtype("<u4")
LABEL_MASK_SUFFIX = ".label_mask.npy"
NPY_MAGIC = b"\x93NUMPY"
# Token files (with their label masks) a dataset keeps mapped at once, each map a file descriptor or two:
# a mix's parts are read in shuffled order, so more would rarely be hit again, and they stay well under
# the usual limit of 1,024 descriptors a process (`ulimit -n`) beside torch's and the checkpoints'.
MAX_OPEN_FILES = 64
# Hex digits of a token file's SHA-256 kept in a data position's fingerprint (`data_fingerprint`): 64 bits tell
# builds apart, and each checkpoint of a mix of 10,000 parts keeps 0.5 MB less than with whole digests.
DIGEST_CHARS = 16


class DataError(ValueError):
    """The token files cannot be used as training data; the message names the file."""


class Instance(NamedTuple):
    input_ids: np.ndarray        # (seq_len,) int64
    labels: np.ndarray           # (seq_len,) int64, -100 = ignored
    masked_by_label_mask: int    # labels ignored because the label-mask file says so
    masked_by_repetition: int    # further labels ignored because of a repeated n-gram run
    filtered: bool = False       # the instance filter ignored all of its labels


@dataclass(frozen=True)
class TokenFile:
    path: Path
    n_tokens: int
    mask_path: Path | None
    mask_bytes: int | None = None  # the label mask's file size (fingerprinted: a mask added or removed)
    sha256: str | None = None  # what its build's report.json certifies, if it lies in one (fingerprinted: its contents)


def _is_token_file(path: Path) -> bool:
    return path.name.endswith(".npy") and not path.name.endswith(LABEL_MASK_SUFFIX)


# A dolmino build writes these while it runs and report.json last (its completion marker); _owner.json
# first, so a build stopped in its pool or tokenize stage is incomplete, not "no token files" (as validate's).
BUILD_MARKERS = ("_owner.json", "_plan.json", "_parts")
COMPLETION_MARKER = "report.json"
# What `dolmino release pull` keeps in its temporary directory `.NAME.pull-XXXX` until every file is verified:
# dolmino.release.PULL_OWNER, repeated so that reading data does not import the S3 client (a test keeps them equal).
PULL_OWNER = ".pull-owner"
RELEASE_FILE = "RELEASE.json"  # dolmino.memmap.RELEASE_FILE, which a pulled release holds (a test keeps them equal)


def check_complete_build(directory: Path) -> None:
    """Refuse a dolmino build directory that has no report.json: the build was killed or is
    still running, so its parts may be missing, stale or from another plan. A pull's temporary
    directory is refused even with its report.json: its files are not all verified yet."""
    if (directory / PULL_OWNER).is_file():
        # It was called an incomplete build, to be finished by rerunning the build (found by a tester).
        dest = directory.parent / directory.name[1:].rsplit(".pull-", 1)[0]
        raise DataError(f"{directory} is the temporary directory of an unfinished `dolmino release pull` into {dest} "
                        f"(it holds {PULL_OWNER}; the pull was killed or is still running): rerun that pull to "
                        "finish it, or remove the directory")
    if (directory / COMPLETION_MARKER).is_file():
        return
    if (directory / RELEASE_FILE).is_file():  # "rerun the same build command" on a machine that only pulled it
        raise DataError(f"{directory} is a pulled release ({RELEASE_FILE}) without its {COMPLETION_MARKER}, which "
                        "the release holds: removed since the pull; remove the directory and pull the release again")
    if any((directory / name).exists() for name in BUILD_MARKERS):
        raise DataError(f"{directory} is an incomplete dolmino build (no {COMPLETION_MARKER}, which a build writes "
                        "last): it was interrupted or is still running; rerun the same build command to finish it")


@dataclass(frozen=True)
class DataLayout:
    """What the --data paths hold, found in one walk: the token files (in `discover_token_files`'
    order), their sizes, and the builds holding them (`token_builds`). The start-up checks
    (report.json token counts, tokenizers, vocabulary, the note for parts without a report)
    each walked every tree again: five walks of a network mount before the first step. `masks`:
    the bytes of each token file's label mask, for those that have one (each mask was stat'ed
    eight times before the first step, ten on a resume, and every file opened three times; t259)."""

    paths: tuple[str, ...]
    files: tuple[Path, ...]
    sizes: dict[Path, int]  # bytes, from the stat the duplicate check makes
    builds: dict[Path, list[Path]]
    masks: dict[Path, int] = field(default_factory=dict)  # token file -> its label mask's bytes
    certified: dict[Path, str] = field(default_factory=dict)  # token file -> its SHA-256 in its build's report.json
    # build directory -> its report.json, parsed (or why it cannot be): read once by the walk, where the start-up
    # checks each read and parsed it again (five times a build; a mix of 10,000 parts certifies 20,000 digests)
    reports: dict[Path, dict | DataError] = field(default_factory=dict)

    def report(self, folder: Path) -> dict:
        """The report.json of the build in `folder` as a JSON object; a DataError where it cannot be read, or is
        not one."""
        if folder not in self.reports:  # a report the walk did not see (written since): read as the walk would
            self.reports[folder] = read_report(folder)
        found = self.reports[folder]
        if isinstance(found, DataError):
            raise found
        return found


def scan_data(paths: Iterable[str | Path] | DataLayout) -> DataLayout:
    """The layout of `paths` (a layout is returned as it is); refuses what
    `discover_token_files` and `token_builds` refuse, and token files or label masks that
    `MemmapDataset` would refuse."""
    if isinstance(paths, DataLayout):
        return paths
    paths = tuple(str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths))
    found = _discover(paths)
    # What the dataset would refuse when it opens them, refused here (metadata and headers only):
    # trainer.run's start-up checks, which the ranks agree on, call this. A node's truncated copy
    # failed later, in the Trainer, and its peers learnt it from a broken collective (a tester).
    # Sizes from `_discover`'s stat, nothing mapped: the dataset maps them again, and each memmap
    # here cost an open, a path resolved component by component and an mmap per part (13 stats a
    # part before the first step, 10,000 parts of a 300B mix; t235).
    masks = _checked_files(found)
    builds: dict[Path, list[Path]] = {}
    has_report = functools.cache(lambda d: (d / COMPLETION_MARKER).is_file())  # once per directory, not per part
    for top, f, _ in found:
        if top is not None:
            home = next((d for d in _up_to(f.parent, top) if has_report(d)), f.parent)
            builds.setdefault(home, []).append(f)
    reported = {d for d in builds if has_report(d)}
    for inner in sorted(reported):  # each build's parents looked up: linear in the builds (a reviewer)
        outer = next((p for p in inner.parents if p in reported), None)
        if outer is not None:
            raise DataError(f"{outer} is a build with another build inside it ({inner}), whose token files its "
                            f"{COMPLETION_MARKER} does not count; pass the build(s) you mean as --data, or move the "
                            "inner one out")
    homes = {f: d for d, held in builds.items() if has_report(d) for f in held}
    homes.update({f: f.parent for top, f, _ in found if top is None and has_report(f.parent)})
    reports = {home: _report_or_error(home) for home in sorted(set(homes.values()))}
    return DataLayout(paths, tuple(f for _, f, _ in found), {f: size for _, f, size in found}, builds, masks,
                      _certified_digests(homes, reports), reports)


def read_report(folder: Path) -> dict:
    """The report.json of the build in `folder`, which must be a JSON object."""
    report = folder / COMPLETION_MARKER
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{report}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{report}: not a JSON object")
    return data


def _report_or_error(folder: Path) -> dict | DataError:
    try:
        return read_report(folder)
    except DataError as exc:  # kept: `DataLayout.report` raises it where a check needs the report
        return exc


def certified_files(report: dict) -> dict | None:
    """A report's "output.files_sha256" (path in the build -> SHA-256); None for a build made before
    reports recorded it."""
    files = report.get("output", {}).get("files_sha256") if isinstance(report.get("output"), dict) else None
    return files if isinstance(files, dict) else None


def _certified_digests(homes: dict[Path, Path], reports: dict[Path, dict | DataError]) -> dict[Path, str]:
    """Each token file's SHA-256 as the report.json of its build (`homes`: file -> build directory)
    certifies it ("output.files_sha256", by path in the build): what tells a build from another of
    the same part names and sizes, wherever a copy of it lies (a move, a pull from S3). Left out where
    the report does not say or cannot be read (`trainer.plan.data_tokens` refuses the latter)."""
    listed = {home: (certified_files(r) if isinstance(r, dict) else None) or {} for home, r in reports.items()}
    digests = {f: listed[home].get(f.relative_to(home).as_posix()) for f, home in homes.items()}
    return {f: digest for f, digest in digests.items() if isinstance(digest, str)}


def uncertified_builds_note(layout: DataLayout) -> str | None:
    """The warning for a resume onto builds whose report.json predates "output.files_sha256": their
    token files are then checked against the checkpoint's data position by names and sizes only (the
    digests are left out of the comparison, `_comparable`), which another build of the same part
    names and sizes passes; the resume went on without a word of it (a reviewer)."""
    old = [home for home, report in layout.reports.items()
           if isinstance(report, dict) and certified_files(report) is None]
    if not old:
        return None
    more = f" (and {len(old) - 1} more build(s))" if len(old) > 1 else ""
    return (f"{old[0] / COMPLETION_MARKER}{more} records no output.files_sha256 (a build made before reports "
            "recorded them): the resume checks its token files against the checkpoint's data position by names and "
            "sizes only, which another build of the same part names and sizes would pass; rebuild it to have its "
            "files certified (checkpoints then record their digests), or go on if it is the build this run was "
            "trained on")


def undigested_position_note(saved: dict | None, current: dict, where: str | Path) -> str | None:
    """The warning for a resume from a checkpoint whose data position (`saved`: its fingerprint, read from
    `where`) was written before fingerprints held the files' digests: `_comparable` then leaves the current
    digests out, so a rebuilt or different build of the same part names and sizes resumed on other batches
    without a word (a reviewer). None where nothing was left out: the position has its digests, or no
    current token file has one (`uncertified_builds_note` speaks for builds without them)."""
    if not isinstance(saved, dict) or "sha256" in saved or not any(current.get("sha256") or ()):
        return None
    return (f"the data position in {where} was saved without the token files' SHA-256 (by a trainer older than "
            "its digests): the resume checked --data against it by names and sizes only, which a rebuilt or "
            "another build of the same part names and sizes would pass, replaying other batches; go on if --data "
            "is the build it was trained on (checkpoints from here on record its digests), otherwise pass that "
            "build as --data or start afresh without --resume")


def _checked_files(found: list[tuple[Path | None, Path, int]]) -> dict[Path, int]:
    """Refuse the token files of `_discover` and their label masks that `MemmapDataset` cannot read
    (headers and sizes: nothing mapped); the bytes of each mask, by its token file."""
    masks = {}
    for _, f, size in found:
        n_tokens = _token_count(f, size)
        mask_path = label_mask_path(f)
        try:
            mask_bytes = mask_path.stat().st_size
        except FileNotFoundError:
            continue
        _open_mask(mask_path, n_tokens, mapped=False, size=mask_bytes)
        masks[f] = mask_bytes
    return masks


def token_builds(paths: Iterable[str | Path] | DataLayout) -> dict[Path, list[Path]]:
    """The token files below the given directories, by the build holding them: the nearest
    directory above a file (up to the given one) that has a report.json, else the file's own
    directory. Each build is checked against its report whether given or found below a given
    directory (found by a tester: a parent of several builds was not checked). A build with
    another build inside it is refused: its report counts only its own parts. Token files
    named one by one are the user's pick, not a build, and are left out."""
    return scan_data(paths).builds


def _up_to(folder: Path, top: Path) -> list[Path]:
    """`folder` and its parents up to `top` (which holds it), nearest first."""
    chain = [folder]
    while chain[-1] != top and chain[-1].parent != chain[-1]:
        chain.append(chain[-1].parent)
    return chain


def unreported_build_note(paths: Iterable[str | Path] | DataLayout) -> str | None:
    """A note for a directory of dolmino parts (memmaps with their `.csv.gz` sidecars) that
    has no report.json: a copy that left it behind, or parts copied by hand. Nothing then
    says whether every part is there (report.json's token count is what is checked), yet
    the directory is not refused: memmaps of this layout come from other tools as well."""
    for p in token_builds(paths):
        if not (p / COMPLETION_MARKER).is_file() and any(p.glob("part-*.csv.gz")):
            return (f"{p} holds dolmino part files but no {COMPLETION_MARKER}: nothing checks that every part of "
                    "the build is here; copy the whole build directory (or `dolmino release pull` it)")
    return None


def discover_token_files(paths: str | Path | Iterable[str | Path] | DataLayout) -> list[Path]:
    """Token files under a directory (recursively, sorted), a single file, or a list of either;
    a `scan_data` layout's files, found in its walk.

    A directory that is an unfinished dolmino build is refused (`check_complete_build`), given,
    found below a given one, or holding a file given."""
    if isinstance(paths, DataLayout):
        return list(paths.files)
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [f for _, f, _ in _discover(paths)]


def _discover(paths: Iterable[str | Path]) -> list[tuple[Path | None, Path, int]]:
    """(the directory given that holds it, or None for a file given itself; token file; bytes)."""
    found: list[tuple[Path | None, Path]] = []
    for entry in paths:
        p = Path(entry)
        if p.is_dir():
            check_complete_build(p)
            below = sorted(_npy_files(p), key=lambda f: f.relative_to(p).as_posix())
            if not below:  # one of several --data paths trained on the others, unsaid (found by a tester)
                raise DataError(f"no token files (*.npy) found in {p}")
            for d in {f.parent for f in below}:
                check_complete_build(d)
            found.extend((p, f) for f in below)
        elif p.is_file():
            if not _is_token_file(p):
                raise DataError(f"{p} is not a token file (expected *.npy, not *{LABEL_MASK_SUFFIX})")
            # Named one by one, a killed build's parts were trained on unsaid, though they may be another plan's
            # that a rerun has not replaced yet (found by a tester): refused as their directory is.
            check_complete_build(p.parent)
            found.append((None, p))
        else:
            raise DataError(f"data path {p} does not exist")
    seen: dict[tuple[int, int], Path] = {}
    sized = []
    for top, f in found:  # overlapping --data paths: the same file trained twice, or a report blamed (a reviewer)
        st = f.stat()
        same = seen.get((st.st_dev, st.st_ino))  # the file itself: through links, hard links too
        if same is not None:
            raise DataError(f"{f} is given twice{'' if same == f else f' (also as {same})'}: the --data paths "
                            "overlap; name each build or file once")
        seen[(st.st_dev, st.st_ino)] = f
        sized.append((top, f, st.st_size))
    return sized


def _npy_files(top: Path) -> list[Path]:
    """Token files below `top`, through symlinked directories too (Path.rglob does not enter
    them: a build linked into a --data directory was left out unsaid; found by a reviewer),
    each real directory once (a link loop ends)."""
    found, masks, visited = [], [], set()
    for folder, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        if PULL_OWNER in files:  # named before its files are judged: a pull that has fetched a mask, not yet its
            check_complete_build(Path(folder))  # token file, read as "a label mask with no token file" (a tester)
        found += [Path(folder) / name for name in files if _is_token_file(Path(name))]
        if COMPLETION_MARKER not in files:  # a build's report.json names what its copy lacks (`data_tokens`)
            masks += [Path(folder) / name for name in files if name.endswith(LABEL_MASK_SUFFIX)]
    found = [f for f in found if f.is_file()]
    named = {label_mask_path(f) for f in found}
    if orphans := sorted(m for m in masks if m not in named):
        # Its labels were all trained, unsaid: a token file renamed without its mask (found by a tester).
        stem = orphans[0].name[:-len(LABEL_MASK_SUFFIX)]
        raise DataError(f"{orphans[0]}: a label mask with no token file {stem}.npy "
                        f"beside it{f' ({len(orphans)} such masks)' if len(orphans) > 1 else ''}; rename it with its "
                        "token file, or remove it: no mask would apply")
    return found


def label_mask_path(token_file: Path) -> Path:
    """Where a token file's optional label mask lives: part-00000.npy -> part-00000<suffix>."""
    return token_file.with_name(token_file.name[: -len(".npy")] + LABEL_MASK_SUFFIX)


def _token_count(path: Path, size: int) -> int:
    """The tokens of a token file of `size` bytes; a DataError for what `_open_tokens` refuses."""
    if size % TOKEN_DTYPE.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of uint32 tokens")
    if size:
        with open(path, "rb") as fh:
            if fh.read(len(NPY_MAGIC)) == NPY_MAGIC:
                raise DataError(f"{path} has a .npy header; token files must be raw uint32 (write them with "
                                f"ndarray.tofile, as dolmino and OLMo-core do)")
    return size // TOKEN_DTYPE.itemsize


def _open_tokens(path: Path) -> np.ndarray:
    if not _token_count(path, path.stat().st_size):
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def _open_mask(path: Path, n_tokens: int, mapped: bool = True, size: int | None = None) -> np.ndarray | None:
    """A token file's label mask, checked against its `n_tokens`; `mapped=False` only checks it
    (returns None for a raw mask: its size is its length; `size`: its bytes, if known)."""
    with open(path, "rb") as fh:
        has_header = fh.read(len(NPY_MAGIC)) == NPY_MAGIC
    if has_header:
        mask = np.load(path, mmap_mode="r")
        if mask.dtype != np.bool_ or mask.ndim != 1:
            raise DataError(f"{path}: label mask must be a 1-D bool array, got {mask.dtype} {mask.shape}")
        entries = len(mask)
    else:
        entries = path.stat().st_size if size is None else size
        mask = None if not mapped else (np.memmap(path, dtype=np.bool_, mode="r") if entries
                                        else np.zeros(0, dtype=np.bool_))
    if entries != n_tokens:
        raise DataError(f"{path}: label mask has {entries} entries but its token file has {n_tokens} tokens")
    return mask


class MemmapDataset:
    """Random access to `seq_len`-token training instances (see module docstring)."""

    def __init__(self, paths, seq_len: int, *, vocab_size: int | None = None, repetition: str = "instance_filter",
                 repetition_max_n: int = 13, repetition_min_repeats: int = 32, vocab_source: str | None = None):
        """`vocab_source`: where vocab_size came from when not from a preset (a starting checkpoint),
        named when a token is out of range: that is then the likely cause, not the data."""
        if seq_len < 2:
            raise DataError(f"seq_len must be >= 2, got {seq_len}")
        if repetition not in REPETITION_MODES:
            raise DataError(f"repetition must be one of {REPETITION_MODES}, got {repetition!r}")
        self.seq_len = seq_len
        self.vocab_size, self.vocab_source = vocab_size, vocab_source
        self.repetition = repetition
        self.max_n = repetition_max_n
        self.min_repeats = repetition_min_repeats
        # Checked here, mapped only when read (`_arrays`): each map holds a file descriptor, and a mix of
        # 1,000 parts with label masks ended in "Too many open files" under the common limit of 1,024 (t259).
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._open_lock = threading.Lock()
        files = layout_files(scan_data(paths))  # a layout as it is: checked by `scan_data`
        if not files:
            raise DataError(f"no token files (*.npy) found in {paths}")
        self.files = files
        counts = np.asarray([f.n_tokens // seq_len for f in files], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.n_instances = int(self._starts[-1])
        self.total_tokens = sum(f.n_tokens for f in files)
        self.dropped_tail_tokens = self.total_tokens - self.n_instances * seq_len
        if self.n_instances == 0:
            raise DataError(_no_instance(len(files), self.total_tokens, seq_len))

    def __len__(self) -> int:
        return self.n_instances

    def fingerprint(self) -> dict:
        return data_fingerprint(self.files, self.seq_len)

    def _arrays(self, file_idx: int) -> tuple[np.ndarray, np.ndarray | None]:
        """File `file_idx`'s tokens and label mask, mapped; the `MAX_OPEN_FILES` last read stay mapped
        (a map dropped here is closed once no reader holds it: the prefetch thread may)."""
        with self._open_lock:
            if file_idx in self._open:
                self._open.move_to_end(file_idx)
                return self._open[file_idx]
        f = self.files[file_idx]
        arrays = (_open_tokens(f.path), _open_mask(f.mask_path, f.n_tokens) if f.mask_path is not None else None)
        if len(arrays[0]) != f.n_tokens:  # its instances were counted at start: slices past its end would be short
            raise DataError(f"{f.path}: {len(arrays[0]):,} tokens now, {f.n_tokens:,} when the run started: the "
                            "token file changed during the run")
        with self._open_lock:
            self._open[file_idx] = arrays
            while len(self._open) > MAX_OPEN_FILES:
                self._open.popitem(last=False)
        return arrays

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.n_instances:
            raise IndexError(f"instance {index} out of range [0, {self.n_instances})")
        file_idx = int(np.searchsorted(self._starts, index, side="right") - 1)
        return file_idx, (index - int(self._starts[file_idx])) * self.seq_len

    def instance(self, index: int) -> Instance:
        """Token ids and labels of one instance, with the label accounting (see `Instance`)."""
        file_idx, start = self._locate(index)
        end = start + self.seq_len
        tokens, mask = self._arrays(file_idx)
        ids = np.asarray(tokens[start:end], dtype=np.int64)
        if self.vocab_size is not None and ids.max() >= self.vocab_size:
            bad = int(np.argmax(ids >= self.vocab_size))
            cause = "" if self.vocab_source is None else (
                f" of the model, which took its vocabulary from {self.vocab_source}: the data was tokenized with a "
                f"larger vocabulary than that checkpoint's (dolma2: {DOLMA2_VOCAB_SIZE:,} ids)")
            raise DataError(f"{self.files[file_idx].path}: token {int(ids[bad])} at offset {start + bad} is "
                            f">= vocab_size {self.vocab_size}{cause}")
        keep = np.ones(self.seq_len, dtype=np.bool_)
        n_label_masked = n_rep_masked = 0
        if mask is not None:
            keep &= np.asarray(mask[start:end], dtype=np.bool_)
            n_label_masked = int(self.seq_len - 1 - keep[1:].sum())
        filtered = False
        if self.repetition == "instance_filter":
            if len(repeated_ngram_span_array(ids, self.max_n, self.min_repeats)):
                filtered = True
                n_rep_masked = int(keep[1:].sum())
                keep[:] = False
        elif self.repetition == "mask_spans":
            margin = self.max_n * self.min_repeats
            lo, hi = max(0, start - margin), min(len(tokens), end + margin)
            for s, e in repeated_ngram_span_array(tokens[lo:hi], self.max_n, self.min_repeats):
                s, e = max(s + lo, start) - start, min(e + lo, end) - start
                if s < e:
                    before = int(keep[max(s, 1):e].sum())
                    keep[s:e] = False
                    n_rep_masked += before
        labels = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        targets = keep[1:]
        labels[:-1][targets] = ids[1:][targets]
        return Instance(ids, labels, n_label_masked, n_rep_masked, filtered)


def epoch_order(n_instances: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The global order of instance indices for one epoch (numpy PCG64 from (seed, epoch)), or one
    rank's positions of it: rank, rank + world_size, ..., which hold that rank's share of every
    global batch (a batch is a whole number of world_size). Shuffled in place (`permutation`
    copies: the same order at twice the memory), and a rank keeps 1/world_size of it: OLMo 2's
    3.9T-token pretraining is ~950M instances, 3.8 GB of uint32 per order, held by every rank of
    a node (found by a tester)."""
    rng = np.random.Generator(np.random.PCG64([seed, epoch]))
    order = np.arange(n_instances, dtype=np.uint32 if n_instances < 2**32 else np.int64)
    rng.shuffle(order)
    return order if world_size == 1 else order[rank::world_size].copy()


@dataclass
class Batch:
    input_ids: torch.Tensor  # (n, seq_len) int64
    labels: torch.Tensor     # (n, seq_len) int64, -100 = ignored
    indices: np.ndarray      # dataset instance indices, for debugging and tests
    n_targets: int = 0              # labels != -100, known on the host without a device sync
    masked_by_label_mask: int = 0   # labels ignored because the label-mask file says so
    masked_by_repetition: int = 0   # further labels ignored because of repeated n-gram runs
    instances_filtered: int = 0     # instances whose labels the instance filter ignored entirely

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cuda":
            ids = self.input_ids.pin_memory().to(device, non_blocking=True)
            labels = self.labels.pin_memory().to(device, non_blocking=True)
        else:
            ids, labels = self.input_ids.to(device), self.labels.to(device)
        return Batch(ids, labels, self.indices, self.n_targets, self.masked_by_label_mask,
                     self.masked_by_repetition, self.instances_filtered)


def data_fingerprint(files: Iterable[TokenFile], seq_len: int) -> dict:
    """What must be unchanged for a saved data position to mean the same batches. "label_masks"
    (each file's mask size in bytes, None without one): a mask that appeared or went away since
    the save changed the labels, and a resume of report-less data went on unsaid (a tester).
    "sha256" (the first `DIGEST_CHARS` of each file's SHA-256 as its build's report.json certifies
    it, None outside a build): names and sizes alone let `--data A --data B` resume as `--data B
    --data A`, or on another build of the same budget, on other batches unsaid (a tester); the
    digest travels with the build, so a copy of it moved or pulled elsewhere still resumes."""
    files = list(files)
    return {"seq_len": seq_len, "n_instances": sum(f.n_tokens // seq_len for f in files),
            "files": [[f.path.name, f.n_tokens] for f in files],
            "label_masks": [f.mask_bytes for f in files],
            "sha256": [f.sha256[:DIGEST_CHARS] if f.sha256 else None for f in files]}


def layout_fingerprint(layout: DataLayout, seq_len: int) -> dict:
    """`MemmapDataset.fingerprint` of `layout`'s files, from their sizes (nothing is opened):
    trainer.run checks a --resume's data position in its start-up checks, which the ranks agree
    on. Found only in the Trainer, every rank printed it (N ranks, N copies; found by a tester)."""
    return data_fingerprint(layout_files(layout), seq_len)


def layout_files(layout: DataLayout) -> list[TokenFile]:
    """`layout`'s token files as `MemmapDataset` reads them (from the sizes its walk found)."""
    return [TokenFile(f, layout.sizes[f] // TOKEN_DTYPE.itemsize, label_mask_path(f) if f in layout.masks else None,
                      layout.masks.get(f), layout.certified.get(f)) for f in layout.files]


def check_data_position(saved: dict | None, current: dict, where: str | Path | None = None) -> None:
    """Refuse to continue a data position saved (`saved`: its fingerprint) for other data than
    `current`; `where`: the file it was read from, for the error."""
    if saved is not None:
        saved, current = _comparable(saved, current)
    if saved is not None and saved != current:
        what = f"the data position in {where}" if where is not None else "the checkpoint's data position"
        changes = "; ".join(fingerprint_changes(saved, current)) or "files, sizes or seq_len changed"
        raise DataError(f"{what} was saved for different data ({changes}); resuming would not replay the same "
                        f"batches: resume with the --data and --seq-len it was trained with")


def _comparable(saved: dict, current: dict) -> tuple[dict, dict]:
    """`saved` and `current` with what one of them does not know left out of both: a key saved before
    it was fingerprinted ("label_masks", "sha256"), and the digest of a file outside a build on either
    side (token files a user points at, or a build's copy without its report.json, resume as before)."""
    current = {k: v for k, v in current.items() if k in saved or k not in ("label_masks", "sha256")}
    there, here = saved.get("sha256"), current.get("sha256")
    if isinstance(there, list) and isinstance(here, list) and len(there) == len(here):
        known = [a is not None and b is not None for a, b in zip(there, here)]
        saved = {**saved, "sha256": [a if k else None for a, k in zip(there, known)]}
        current = {**current, "sha256": [b if k else None for b, k in zip(here, known)]}
    return saved, current


def fingerprint_changes(saved: dict, current: dict) -> list[str]:
    """What differs between a saved and the current `MemmapDataset.fingerprint`, in words ("seq_len
    64 there, 128 here"): "files, sizes or seq_len changed" left the user to find which (a tester)."""
    changes = []
    if saved.get("seq_len") != current.get("seq_len"):
        changes.append(f"seq_len {saved.get('seq_len')} there, {current.get('seq_len')} here")
    there, here = [tuple(f) for f in saved.get("files") or []], [tuple(f) for f in current.get("files") or []]
    moved = [a != b for a, b in zip(_file_entries(saved), _file_entries(current))]
    if len(there) != len(here):
        changes.append(f"{len(there)} token file(s) there, {len(here)} here")
    elif any(moved) and sorted(_file_entries(saved), key=repr) == sorted(_file_entries(current), key=repr):
        changes.append(f"the same token files in another order, {sum(moved)} of {len(here)} elsewhere, as when "
                       "the --data paths are given in another order")
    else:
        differ = [(a, b) for a, b in zip(there, here) if a != b]
        if differ:
            (name_a, tokens_a), (name_b, tokens_b) = differ[0]
            first = (f"{name_a} of {tokens_a:,} tokens there, {tokens_b:,} here" if name_a == name_b else
                     f"{name_a} there, {name_b} here")
            changes.append(first + (f" (and {len(differ) - 1} more file(s))" if len(differ) > 1 else ""))
    masks_there, masks_here = saved.get("label_masks"), current.get("label_masks")
    if not changes and masks_there is not None and masks_here is not None and masks_there != masks_here:
        differ = [(name, a, b) for (name, _), a, b in zip(here, masks_there, masks_here) if a != b]
        name, a, b = differ[0]
        mask = name[: -len(".npy")] + LABEL_MASK_SUFFIX
        first = (f"{mask} of {a:,} bytes there, {b:,} here" if a is not None and b is not None else
                 f"{mask} there, none here" if a is not None else f"no {mask} there, one here")
        changes.append(first + (f" (and {len(differ) - 1} more mask(s))" if len(differ) > 1 else ""))
    known = [(i, a, b) for i, (a, b) in enumerate(zip(saved.get("sha256") or [], current.get("sha256") or []))
             if a and b]  # None: a file outside a build, on either side
    differ = [(i, a, b) for i, a, b in known if a != b]
    if not changes and differ:  # the same files in another order are said above, whatever their sizes
        i, a, b = differ[0]
        more = f", and {len(differ) - 1} more file(s)" if len(differ) > 1 else ""
        changes.append(f"token file {i + 1} of {len(here)}, {here[i][0]}, holds other tokens: SHA-256 {a}... "
                       f"there, {b}... here, as its build's {COMPLETION_MARKER} certifies{more}; another build of "
                       "the same part names and sizes")
    if not changes and saved.get("n_instances") != current.get("n_instances"):
        changes.append(f"{saved.get('n_instances')} instances there, {current.get('n_instances')} here")
    return changes


def _file_entries(fingerprint: dict) -> list[tuple]:
    """Each token file of `fingerprint` as all it says of it (name and tokens, mask bytes, digest): two builds
    of other sizes given in the other order differ in their first file's size, which read as data changed
    ("part-00000.npy of 997,629 tokens there, 999,954 here") where the files are the same (a tester)."""
    files = [tuple(f) for f in fingerprint.get("files") or []]
    none = [None] * len(files)  # a key saved before it was fingerprinted
    return list(zip(files, fingerprint.get("label_masks") or none, fingerprint.get("sha256") or none))


def _no_instance(n_files: int, tokens: int, seq_len: int) -> str:
    if not tokens:  # "use a shorter --seq-len" cannot help an empty build (a tester)
        return (f"{n_files} token file(s) hold no tokens at all (an empty build: its report.json warnings say what "
                "removed every document); nothing to train on")
    return (f"{n_files} token file(s) with {tokens} tokens hold no instance of {seq_len} tokens; use a shorter "
            "--seq-len or more data")


def _less_than_a_batch(instances: int, seq_len: int, global_batch_size: int) -> str:
    return (f"the data holds {instances} instances of {seq_len} tokens, fewer than one global batch of "
            f"{global_batch_size}; use more data or a smaller batch")


def check_batch_fits(layout: DataLayout, seq_len: int, global_batch_size: int) -> None:
    """Refuse, from the files' sizes, the data that MemmapDataset and DataLoader would refuse as
    too short for one instance or one batch. trainer.run calls it in the start-up checks, which
    the ranks agree on: found in the Trainer, every rank said it and left through a full
    teardown, in which a gloo thread can abort a rank (found by a tester)."""
    instances = sum(size // TOKEN_DTYPE.itemsize // seq_len for size in layout.sizes.values())
    if layout.files and instances == 0:
        raise DataError(_no_instance(len(layout.files), sum(layout.sizes.values()) // TOKEN_DTYPE.itemsize, seq_len))
    if layout.files and instances < global_batch_size:
        raise DataError(_less_than_a_batch(instances, seq_len, global_batch_size))


class DataLoader:
    """Yields this rank's share of each global batch; state is (epoch, cursor).

    An epoch ends when fewer than `global_batch_size` unseen positions remain (the rest are
    dropped, as with drop_last); the next epoch uses a fresh permutation. `stats` counts
    what this loader object handed out on this rank (the trainer sums ranks and resumes). One batch is
    prepared ahead in a worker thread (memmap reads and the numba scan release the GIL).
    """

    def __init__(self, dataset: MemmapDataset, global_batch_size: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, epoch: int = 0, cursor: int = 0, prefetch: bool = True):
        if global_batch_size % world_size:
            raise DataError(f"global batch {global_batch_size} is not divisible by world size {world_size}")
        if len(dataset) < global_batch_size:
            raise DataError(_less_than_a_batch(len(dataset), dataset.seq_len, global_batch_size))
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.cursor = epoch, cursor
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self._orders_lock = threading.Lock()
        self.stats = {"instances": 0, "labels": 0, "targets": 0, "masked_by_label_mask": 0,
                      "masked_by_repetition": 0, "instances_filtered": 0}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="data") if prefetch else None
        self._ahead: tuple[tuple[int, int], Future] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.global_batch_size

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed,
                "fingerprint": self.dataset.fingerprint()}

    def load_state_dict(self, state: dict, where: str | Path | None = None) -> None:
        """Continue from a saved position; `where`: the file it was read from, for the error."""
        check_data_position(state.get("fingerprint"), self.dataset.fingerprint(), where)
        self.epoch, self.cursor, self.seed = int(state["epoch"]), int(state["cursor"]), int(state["seed"])
        with self._orders_lock:
            self._orders.clear()
        self._ahead = None

    def peek(self) -> Batch:
        """The batch `next_batch` hands out next, without moving on (it is kept for it, not loaded twice)."""
        position = self._position_after(self.epoch, self.cursor)
        if self._ahead is None or self._ahead[0] != position:
            loaded: Future = Future()
            loaded.set_result(self.batch_at(*position))
            self._ahead = (position, loaded)
        return self._ahead[1].result()

    def _position_after(self, epoch: int, cursor: int) -> tuple[int, int]:
        if cursor + self.global_batch_size > len(self.dataset):
            return epoch + 1, 0
        return epoch, cursor

    def _order_for(self, epoch: int, share: int) -> np.ndarray:
        # Shared with the prefetch thread, which may already be in the next epoch.
        key = (self.seed, epoch, share)
        with self._orders_lock:
            if key not in self._orders:
                for old in [k for k in self._orders if k[0] != self.seed or k[1] < epoch - 1]:
                    del self._orders[old]
                self._orders[key] = epoch_order(len(self.dataset), self.seed, epoch, share, self.world_size)
            return self._orders[key]

    def batch_at(self, epoch: int, cursor: int) -> Batch:
        """This rank's instances of the global batch starting at `cursor` of `epoch`'s order: its
        positions cursor + rank, + world_size, ..., which share (cursor + rank) % world_size of the
        order holds from (cursor + rank) // world_size. In a run the cursor is a whole number of
        global batches, so that share is the rank's own; a resume with another batch size and
        world size can leave it anywhere (3 instances into an epoch, resumed on 2 ranks), and
        each rank's own share from cursor // world_size trained one instance twice and skipped
        another, unsaid (found by a tester)."""
        share = (cursor + self.rank) % self.world_size
        start = (cursor + self.rank) // self.world_size
        indices = np.asarray(self._order_for(epoch, share)[start: start + self.global_batch_size // self.world_size],
                             dtype=np.int64)
        loaded = [self.dataset.instance(int(i)) for i in indices]
        ids = np.stack([x[0] for x in loaded])
        labels = np.stack([x[1] for x in loaded])
        return Batch(torch.from_numpy(ids), torch.from_numpy(labels), indices,
                     n_targets=int((labels != IGNORE_INDEX).sum()),
                     masked_by_label_mask=sum(x[2] for x in loaded),
                     masked_by_repetition=sum(x[3] for x in loaded),
                     instances_filtered=sum(x.filtered for x in loaded))

    def next_batch(self) -> Batch:
        epoch, cursor = self._position_after(self.epoch, self.cursor)
        if self._ahead is not None and self._ahead[0] == (epoch, cursor):
            batch = self._ahead[1].result()
        else:
            batch = self.batch_at(epoch, cursor)
        self.epoch, self.cursor = epoch, cursor + self.global_batch_size
        self.stats["instances"] += len(batch.indices)
        self.stats["labels"] += len(batch.indices) * (self.dataset.seq_len - 1)
        self.stats["targets"] += batch.n_targets
        self.stats["masked_by_label_mask"] += batch.masked_by_label_mask
        self.stats["masked_by_repetition"] += batch.masked_by_repetition
        self.stats["instances_filtered"] += batch.instances_filtered
        if self._pool is not None:
            nxt = self._position_after(self.epoch, self.cursor)
            self._ahead = (nxt, self._pool.submit(self.batch_at, *nxt))
        return batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
