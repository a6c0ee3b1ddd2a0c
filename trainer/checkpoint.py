"""Checkpoints: save and resume everything a run needs to continue bit-for-bit.

Layout of `<save_dir>/step000123/`:
- `model.pt`      full (unsharded) model state dict, CPU tensors
- `optim.pt`      optimizer state dict keyed by parameter names (FQNs), so it survives
                  wrapping the model in DDP / FSDP / torch.compile differently on resume
- `train_state.pt` step, data position, spike-tracker state, RNG states (python, numpy,
                  torch CPU and CUDA)
- `config.json`   the RunConfig and step, readable without torch (soup / export use it)
`<save_dir>/latest` names the newest complete checkpoint.

Why it is written this way (SPEC.md "checkpoints copied to CPU and written by a background
thread"): the training loop only pays for the device-to-host copy; serialization and disk
I/O happen in a thread while the next steps run. Each checkpoint is written under a
temporary name and renamed into place, so a crash mid-write never leaves a directory that
looks complete. All files load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pickle
import random
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
    set_optimizer_state_dict,
)

MODEL_FILE = "model.pt"
OPTIM_FILE = "optim.pt"
STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.json"
LATEST = "latest"

DAMAGED_FILE_ADVICE = "is it truncated or corrupt, e.g. an interrupted download or copy?"
# How the advice above (and resume_advice's) asks about a file that is not there at all.
_DAMAGED_QUESTION, _MISSING_QUESTION = "is it truncated or corrupt, e.g. ", "was it left out, e.g. by "


class CheckpointFormatError(ValueError):
    """A checkpoint that cannot be read, or not mapped onto the trainer's OLMo 2 model; the message
    says why. It lives here rather than in trainer.weights (which imports this module) so that
    --resume reports a damaged file the way --init-from does."""


def damaged_file_error(file: Path, exc: Exception, advice: str = DAMAGED_FILE_ADVICE) -> CheckpointFormatError:
    """A file that does not parse, named: the readers' own errors do not say which file, and
    torch's goes on for a paragraph, so only its first sentence is kept. A missing file is one
    too: a checkpoint is renamed into place whole, so a file gone from it was lost in a copy, and
    a bare "[Errno 2] No such file or directory" said neither that nor what to do (a tester)."""
    if isinstance(exc, FileNotFoundError):
        reason, advice = "no such file", advice.replace(_DAMAGED_QUESTION, _MISSING_QUESTION, 1)
    else:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
    return CheckpointFormatError(f"{file} cannot be read ({reason}); {advice}")


def load_json_file(file: Path, advice: str = DAMAGED_FILE_ADVICE):
    """A checkpoint's JSON file (config.json), with a damaged or missing one reported by name:
    json's own error says where in the text, not which file."""
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, FileNotFoundError) as exc:  # JSONDecodeError is a ValueError
        raise damaged_file_error(file, exc, advice) from None


def load_torch_file(file: Path, advice: str = DAMAGED_FILE_ADVICE, mmap: bool = False):
    """torch.load onto the CPU (`mmap`: tensors read from disk when touched), with a damaged file
    reported by name. What torch raises for a file cut short depends on where it was cut: EOFError
    (empty), RuntimeError (the zip reader), UnpicklingError (the weights-only unpickler), or an
    OSError without a file name (the zip reader seeking before the start of the file). A missing
    file is reported so too (`damaged_file_error`); another OSError naming the file comes from
    opening it (e.g. unreadable) and says so itself."""
    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # written in the legacy (non-zip) format, which cannot be memory-mapped
            return torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, FileNotFoundError):
            raise
        raise damaged_file_error(file, exc, advice) from None


def step_dir_name(step: int) -> str:
    return f"step{step:06d}"


_STEP_DIR = re.compile(r"step(\d+)")
_STEP_TMP = re.compile(r"\.step\d+\.tmp\d+")  # Checkpointer._write's temporary directory
_STEP_OLD = re.compile(r"\.(step\d+)\.old(\d+)")  # a re-saved step's previous copy, while it is swapped


def complete_checkpoints(save_dir: str | Path) -> list[Path]:
    """The complete checkpoints under save_dir, oldest first. Ordered by the step number, not the
    name: the zero padding is 6 digits, so "step1000000" sorts before "step999999" as text."""
    found = []
    for path in Path(save_dir).glob("step*"):
        match = _STEP_DIR.fullmatch(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def capture_rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This rank's device only: touching every visible GPU would open a context on each.
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], torch.cuda.current_device())


def _to_cpu_copy(obj, clone: bool):
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if hasattr(t, "full_tensor"):  # a DTensor left sharded: gather it
            t = t.full_tensor()
        t = t.to("cpu")
        return t.clone() if clone else t
    if isinstance(obj, dict):
        return {k: _to_cpu_copy(v, clone) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu_copy(v, clone) for v in obj)
    return obj


def _fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to the disk: a rename is durable only after what
    it names is, and a node losing power after an unsynced rename kept a checkpoint that looked
    complete with empty files (found by a tester)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot sync a directory: its files were synced
        if not (os.path.isdir(path) and exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


class CheckpointWriteError(RuntimeError):
    """A checkpoint, or the run's metrics.jsonl, could not be written (a full disk, a file-size limit,
    a lost mount): one line naming the file and the reason, for the run to end with."""


def write_failure(path: Path, exc: BaseException) -> str:
    """Why writing `path` failed, in words: torch.save reports a full disk as "unexpected pos"
    from its zip writer, with no errno and no path."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if free is not None and free < 64 << 20:
        return f"the disk is full ({free / 2**20:.0f} MiB free); {first}"
    return f"{first} (a full disk or a file-size limit, e.g. `ulimit -f`?)"


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under save_dir, or None: the one `latest` names, else (no
    readable `latest`, or what it names is gone) the complete one of the highest step.

    A step dir that `latest` names without train_state.pt is refused: the writer renames only
    complete checkpoints into place and writes `latest` after, so a file missing from it was lost
    (a copy, the disk), never a save cut short. Taking the one before it resumed from there with
    only an info line, and the newer steps' metrics rows were dropped (found by a tester)."""
    save_dir = Path(save_dir)
    pointer = save_dir / LATEST
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):  # a damaged pointer is no pointer (a traceback; found by a tester)
            name = ""
        candidate = save_dir / name
        if name and (candidate / STATE_FILE).is_file():
            return candidate
        if name and _STEP_DIR.fullmatch(name) and candidate.is_dir():
            raise CheckpointFormatError(f"{candidate}, the newest checkpoint ({pointer} names it), has no "
                                        f"{STATE_FILE}; {resume_advice(candidate, missing=True)}")
    steps = complete_checkpoints(save_dir)
    return steps[-1] if steps else None


# What a run writes into its --save-dir; `existing_run` and `clear_run` look at these only.
METRICS_FILE = "metrics.jsonl"
EVAL_DIR = "eval"


def existing_run(save_dir: str | Path) -> str | None:
    """What an earlier run left in `save_dir` (checkpoints, metrics.jsonl), described; None if nothing.

    A fresh run there would add its rows to the old metrics.jsonl (steps 1, 2, 1, 2) and
    replace the old checkpoints as it saves its own, mixing two runs in one directory."""
    save_dir = Path(save_dir)
    steps = [p for p in save_dir.glob("step*") if p.is_dir() and _STEP_DIR.fullmatch(p.name)]
    found = []
    if steps:
        newest = max(steps, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))
        found.append(f"{len(steps)} checkpoint(s), the newest {newest.name}")
    if (save_dir / METRICS_FILE).is_file():
        found.append(METRICS_FILE)
    if (save_dir / LATEST).is_file() and not steps:
        found.append(LATEST)
    if (save_dir / EVAL_DIR).is_dir():  # its scores would read as the new run's (found by a tester)
        found.append(f"{EVAL_DIR}/")
    return ", ".join(found) or None


LOCK_FILE = ".trainer.lock"


class SaveDirBusy(ValueError):
    """Another live run holds the --save-dir (`hold_save_dir`); the message names it."""


def hold_save_dir(save_dir: str | Path) -> int:
    """Lock `save_dir` for this run (rank 0) and return the lock's file descriptor, held until it is
    closed or the process ends (the kernel releases it then, a kill too). Two runs started on one
    --save-dir at once both found it empty, both trained with exit 0, and left one metrics.jsonl of
    interleaved rows (steps 1-5, 1-5, 6-10, ...) and checkpoints of either run (found by a tester);
    `existing_run` sees only what a run has written so far. A filesystem without locks is not locked."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    lock = save_dir / LOCK_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # ENOLCK, EOPNOTSUPP: no locks here
                return fd
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "a process that has not said which"
            os.close(fd)
            raise SaveDirBusy(f"--save-dir {save_dir} is in use by another run ({holder}): two runs there would "
                              "interleave metrics.jsonl and replace each other's checkpoints; wait for it to end, "
                              "or use another --save-dir") from None
        if _same_file(fd, lock):
            break
        os.close(fd)  # its holder removed it as this run locked it (`release_save_dir`): lock the file there now
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def release_save_dir(fd: int, save_dir: str | Path) -> None:
    """End `hold_save_dir`'s lock, removing its file first, so that a run leaves only what it wrote
    (a killed run leaves the file, unlocked)."""
    lock = Path(save_dir) / LOCK_FILE
    if _same_file(fd, lock):
        lock.unlink()
    os.close(fd)


def _absolute(path: str | Path) -> Path:
    """`path` made absolute with its ".." resolved as the filesystem does (through symlinks),
    and nothing else resolved: os.path.abspath drops "cur/.." as text, which names another
    directory when cur is a link (--overwrite then removed a checkpoint given as
    cur/../a/step1; found by a reviewer)."""
    parts = Path(os.path.join(os.getcwd(), os.fspath(path))).parts
    last = max((i for i, part in enumerate(parts) if part == ".."), default=None)
    if last is None:
        return Path(os.path.abspath(os.path.join(*parts)))
    return Path(os.path.realpath(os.path.join(*parts[:last + 1])), *[p for p in parts[last + 1:] if p != "."])


def _entry_in(path: str | Path, save_dir: str | Path) -> str | None:
    """The name of the entry of `save_dir` that holds `path` ("" for save_dir itself), or None.

    Symlinks are followed one directory at a time, never for the entry itself: a step*/ link
    in save_dir is the run's own checkpoint, which `clear_run` unlinks, wherever it points
    (resolving it first judged it to lie elsewhere: --overwrite removed an --init-from read
    through it, and a plain --resume of a linked newest checkpoint was refused; found by a
    reviewer). A path outside that resolves into save_dir is in it too."""
    root = os.path.realpath(save_dir)
    path = _absolute(path)
    for entry in (path, *path.parents):
        if os.path.realpath(entry) == root:
            return ""
        if entry.parent != entry and os.path.realpath(entry.parent) == root:
            return entry.name
    resolved = Path(os.path.realpath(path))
    if resolved != path:
        return _entry_in(resolved, save_dir)
    return None


def own_checkpoint(path: str | Path, save_dir: str | Path) -> bool:
    """A checkpoint of --save-dir's own run: one of its entries (a step*/ link too, as
    `existing_run` counts it), or the dir itself; a copy kept in a subdirectory of it is
    another run's (found by a tester)."""
    root = os.path.realpath(save_dir)
    path = str(_absolute(path))
    return any(os.path.realpath(p) == root or os.path.realpath(os.path.dirname(p)) == root
               for p in (path, os.path.realpath(path)))


def cleared_by_overwrite(path: str | Path, save_dir: str | Path) -> bool:
    """Whether `clear_run(save_dir)` would remove `path` (or what holds it)."""
    entry = _entry_in(path, save_dir)
    if entry is None:
        return False
    return entry == "" or bool(_STEP_DIR.fullmatch(entry) or _STEP_TMP.fullmatch(entry)
                               or _STEP_OLD.fullmatch(entry)) or entry in (
        LATEST, METRICS_FILE, EVAL_DIR)


def clear_run(save_dir: str | Path) -> None:
    """Remove what a run writes into `save_dir` (its step*/ checkpoints, `latest`, metrics.jsonl
    and eval/); anything else there is left alone.

    `latest` goes first and each checkpoint's train_state.pt before the rest of it: an
    --overwrite cut short left `latest` naming a half-removed step, which a later --resume
    refused as a file lost in a copy (found by a reviewer). Now what is left is no checkpoint."""
    import shutil

    save_dir = Path(save_dir)
    # checkpoints, and the temporary directories of writes a kill cut short; nothing else
    ours = [path for path in save_dir.iterdir()
            if _STEP_DIR.fullmatch(path.name) or _STEP_TMP.fullmatch(path.name) or _STEP_OLD.fullmatch(path.name)]
    (save_dir / LATEST).unlink(missing_ok=True)
    for path in ours:
        if path.is_dir() and not path.is_symlink():
            (path / STATE_FILE).unlink(missing_ok=True)
    for path in ours:
        if path.is_symlink():
            path.unlink()  # the link, never what it points to
        elif path.is_dir():
            shutil.rmtree(path)
    (save_dir / METRICS_FILE).unlink(missing_ok=True)
    shutil.rmtree(save_dir / EVAL_DIR, ignore_errors=True)


def check_output_dir(out: str | Path, what: str) -> None:
    """Refuse an output directory that is a file, or holds a trainer checkpoint or run: a soup
    or an HF export written there replaced its config.json, or made the save dir resolve to the
    soup instead of its latest checkpoint (found by testers)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; give {what} a directory")
    if not out.is_dir():
        return
    held = [name for name in (STATE_FILE, LATEST) if (out / name).exists()]
    held += sorted(p.name for p in out.glob("step*") if p.is_dir() and _STEP_DIR.fullmatch(p.name))[:1]
    if held:
        raise ValueError(f"{out} holds a trainer checkpoint or run ({', '.join(held)}); write {what} into a directory "
                         f"of its own (e.g. {out.parent / (out.name + '-soup')})")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory (or a soup: model.pt + config.json), or a save_dir meaning its latest.

    A checkpoint without one of the two is named with the file it lacks: "no checkpoint at ...
    (expected model.pt + config.json ...)" sent the user looking for what was there (a tester)."""
    path = Path(path)
    if (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file():
        return path
    if (path / MODEL_FILE).is_file() or (path / STATE_FILE).is_file():  # only a checkpoint holds these
        gone = CONFIG_FILE if (path / MODEL_FILE).is_file() else MODEL_FILE
        advice = resume_advice(path) if _STEP_DIR.fullmatch(path.name) else DAMAGED_FILE_ADVICE
        raise damaged_file_error(path / gone, FileNotFoundError(gone), advice)
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        steps = [p for p in path.glob("step*") if _STEP_DIR.fullmatch(p.name) and p.is_dir()] if path.is_dir() else []
        if steps:  # "expected model.pt + config.json" where both were there (found by a tester): say what is not
            newest = max(steps, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))
            held = ", ".join(sorted(p.name for p in newest.iterdir())) or "nothing"
            raise FileNotFoundError(f"no checkpoint at {path}: no step*/ directory in it has a {STATE_FILE} (the "
                                    f"newest, {newest.name}, holds {held})")
        raise FileNotFoundError(f"no checkpoint at {path} (expected {MODEL_FILE} + {CONFIG_FILE}, or a save dir "
                                f"with step*/ checkpoints)")
    return resolve_checkpoint(found)  # its model.pt and config.json are there too


# Bytes read from each large file to fingerprint a checkpoint: every rank does it, at start. Samples in all,
# at most: a mix's thousands of token files and masks took 16 each (OLMo 2's ~7,600 parts: ~243,000 random
# 4 KB reads per rank before the first step, t259); past the budget each file gives fewer, one at least (so
# more than the budget past 4,096 files: 15,200 for those parts with masks).
_FINGERPRINT_SAMPLES = 16
_FINGERPRINT_SAMPLE_BYTES = 4096
_FINGERPRINT_BUDGET = 4096


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".distcp")


def weight_files(path: str | Path) -> list[Path]:
    """The files that hold a checkpoint's weights (this trainer's, Hugging Face, OLMo-core DCP's
    `.metadata` and shards), without what a download tool keeps beside them: a hub download's
    `.cache/` records timestamps, and differs between two nodes that fetched the same revision."""
    root = Path(path)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and (p.suffix in WEIGHT_SUFFIXES or p.name == ".metadata")
                  and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1]))


def files_fingerprint(path: str | Path, files: list[Path] | None = None) -> int:
    """A 48-bit digest of a checkpoint as files: every file's name and size, small files whole
    and 16 spread 4 KB samples of each large one (fewer each past 256 files, one at least). Two revisions
    of one model have the same sizes but different weights everywhere, so their samples differ; 16 MiB are read
    at most, 4 KB a file past 4,096 files.
    Ranks compare it (`trainer.distributed.ranks_agree`) to find a node holding another copy.
    `files`: those to digest (under `path`, in this order; default: its `weight_files`), e.g.
    the token files a dataset reads."""
    import hashlib

    root = Path(path)
    if files is None:
        files = weight_files(root)
    samples = max(1, min(_FINGERPRINT_SAMPLES, _FINGERPRINT_BUDGET // max(1, len(files))))
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(root) if f != root else f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= samples * _FINGERPRINT_SAMPLE_BYTES:
                digest.update(fh.read())
                continue
            for k in range(samples):  # spread from the first 4 KB to the last; one alone: the middle
                fh.seek((size - _FINGERPRINT_SAMPLE_BYTES) * k // (samples - 1) if samples > 1
                        else (size - _FINGERPRINT_SAMPLE_BYTES) // 2)
                digest.update(fh.read(_FINGERPRINT_SAMPLE_BYTES))
    return int.from_bytes(digest.digest()[:6], "big")


def _writer_alive(pid: int, left: Path) -> bool:
    """Whether process `pid`, which named `left`, may still be writing it on this host.

    Not this process (sweep runs before its first save), and not a process started after
    `left` was last changed: a restarted container gives the trainer the same small PID (often
    1), which `os.kill(pid, 0)` finds alive (found by a reviewer)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # another user's process: alive, unless it started after `left` changed
    try:
        with open(f"/proc/{pid}/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
        return started <= left.stat().st_mtime + 1
    except (OSError, ValueError, IndexError, StopIteration):
        return True  # no /proc: trust the PID


class Checkpointer:
    """Writes checkpoints from rank 0 in a background thread; all ranks must call `save`
    (FSDP gathers full tensors collectively)."""

    def __init__(self, save_dir: str | Path, rank: int = 0, keep_last: int | None = None):
        if keep_last is not None and keep_last < 1:  # 0 would keep everything, -1 delete all but the oldest
            raise ValueError(f"keep_last must be >= 1 or None (keep every checkpoint), got {keep_last}")
        self.save_dir = Path(save_dir)
        self.rank = rank
        self.keep_last = keep_last
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, train_state: dict,
             config: dict, background: bool = True) -> Path:
        """Copy state to CPU now; write it (in a thread when `background`). Returns the final path."""
        self.wait()
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        on_cpu = next(model.parameters()).device.type == "cpu"
        # On CPU the "offloaded" tensors alias live parameters: clone them, training goes on.
        model_sd = _to_cpu_copy(get_model_state_dict(model, options=options), clone=on_cpu)
        optim_sd = _to_cpu_copy(get_optimizer_state_dict(model, optimizer, options=options), clone=on_cpu)
        train_state = _to_cpu_copy({**train_state, "step": step, "rng": capture_rng_state()}, clone=True)
        final = self.save_dir / step_dir_name(step)
        if self.rank != 0:
            return final
        args = (final, model_sd, optim_sd, train_state, {**config, "step": step})
        if background:
            self._thread = threading.Thread(target=self._write_guarded, args=args, name="checkpoint", daemon=False)
            self._thread.start()
        else:
            self._write(*args)
        return final

    def wait(self) -> None:
        """Block until the pending write is on disk; re-raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, CheckpointWriteError):
                raise error
            raise CheckpointWriteError(f"writing a checkpoint failed: {error}") from error

    def raise_if_failed(self) -> None:
        """Re-raise a background write's error once it has finished, without waiting for one
        still running: the loop asks every step, so a full disk stops the run at the next step,
        not a whole save interval later when the next save waits for this one."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def _write_guarded(self, *args) -> None:
        try:
            self._write(*args)
        except BaseException as exc:  # surfaced by wait()
            self._error = exc

    def _write(self, final: Path, model_sd: dict, optim_sd: dict, train_state: dict, config: dict) -> None:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.save_dir / f".{final.name}.tmp{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        current = tmp
        try:  # a failed write removes its partial copy: a checkpoint's size, kept the disk full (a tester)
            for name, obj in ((MODEL_FILE, model_sd), (OPTIM_FILE, optim_sd), (STATE_FILE, train_state)):
                current = tmp / name
                torch.save(obj, current)
                _fsync(current)
            current = tmp / CONFIG_FILE
            current.write_text(json.dumps(config, indent=2, sort_keys=True))
            _fsync(current)
            _fsync(tmp)
        except BaseException as exc:
            reason = write_failure(current, exc) if isinstance(exc, Exception) else None  # before the space is freed
            shutil.rmtree(tmp, ignore_errors=True)
            if reason is not None:
                raise CheckpointWriteError(f"writing {final / current.name} failed: {reason}") from exc
            raise
        if final.exists():  # re-saving a step (e.g. after a resume): swap, then delete the old one
            old = self.save_dir / f".{final.name}.old{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
        _fsync(self.save_dir)
        _write_atomic_text(self.save_dir / LATEST, final.name + "\n")
        self._prune(keep=final)

    def sweep(self) -> list[str]:
        """Remove what writes of this host's dead processes left (rank 0, before the first save):
        a kill or a failed save left `.stepN.tmpPID/`, a checkpoint's size, that only --overwrite
        removed (found by a tester). A `.stepN.oldPID/` (killed while re-saving a step) whose step
        is missing is the complete copy: renamed back. Returns what was done, for the log."""
        done = []
        if self.rank != 0 or not self.save_dir.is_dir():
            return done
        for path in sorted(self.save_dir.iterdir()):
            tmp, old = _STEP_TMP.fullmatch(path.name), _STEP_OLD.fullmatch(path.name)
            pid = int(path.name.rsplit("tmp" if tmp else "old", 1)[1]) if (tmp or old) else None
            if pid is None or path.is_symlink() or not path.is_dir() or _writer_alive(pid, path):
                continue
            if old and not (self.save_dir / old.group(1)).exists():
                os.rename(path, self.save_dir / old.group(1))
                done.append(f"restored {old.group(1)} from {path.name}")
            else:
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path.name}")
        return done

    def _prune(self, keep: Path) -> None:
        """Remove all but the newest `keep_last` checkpoints. Each is first renamed to a name `sweep`
        removes: deleted in place, a kill part way left a step dir that still had its train_state.pt,
        listed as complete with files gone (found by a reviewer)."""
        if self.keep_last is None:
            return
        steps = complete_checkpoints(self.save_dir)
        for old in steps[:-self.keep_last]:
            if old == keep:
                continue
            doomed = self.save_dir / f".{old.name}.tmp{os.getpid()}"
            try:
                if doomed.exists():  # an earlier removal of this step that failed part way
                    shutil.rmtree(doomed)
                os.rename(old, doomed)
                _fsync(self.save_dir)
            except OSError:
                continue  # left whole, for a later save to prune
            shutil.rmtree(doomed, ignore_errors=True)


def load_model_weights(path: str | Path) -> tuple[dict, dict]:
    """(model state dict, config dict) of a checkpoint directory, on CPU."""
    path = resolve_checkpoint(path)
    state = load_torch_file(path / MODEL_FILE)
    config = load_json_file(path / CONFIG_FILE)
    return state, config


def resumable_checkpoint(path: str | Path) -> Path:
    """`resolve_checkpoint(path)`, refused where it cannot be resumed: a soup holds weights only;
    a trainer checkpoint (optim.pt beside its weights) without train_state.pt lost it, and said
    "e.g. a soup", after the model was built (found by a tester)."""
    path = resolve_checkpoint(path)
    if (path / STATE_FILE).is_file():
        return path
    if (path / OPTIM_FILE).is_file():
        raise damaged_file_error(path / STATE_FILE, FileNotFoundError(STATE_FILE), resume_advice(path, missing=True))
    raise FileNotFoundError(f"{path} holds weights only (no {STATE_FILE}, e.g. a soup); it cannot be resumed")


# What a resume reads from a train_state.pt, by key (and the keys inside it): a file written by other
# code, or edited, without one failed in a KeyError traceback from the middle of the resume (a tester).
# `load_checkpoint` itself reads the first two; Trainer._resume all four.
RESUME_KEYS = {"step": None, "rng": ("python", "numpy", "torch"), "data": ("epoch", "cursor", "seed"),
               "spikes": ("loss", "grad_norm")}
_LOAD_KEYS = ("step", "rng")
_TRAIN_STATE_WHAT = {"step": "the step", "data": "the data loader's position", "rng": "the random generators' states",
                     "spikes": "the spike trackers' states"}


def load_train_state(path: Path, keys: tuple[str, ...] = tuple(RESUME_KEYS)) -> dict:
    """The train_state.pt of checkpoint `path`, refused in one line where it lacks one of `keys`
    (of `RESUME_KEYS`) or what that holds."""
    file = path / STATE_FILE
    state = load_torch_file(file, resume_advice(path))
    for key in keys:
        inner, value = RESUME_KEYS[key], state.get(key) if isinstance(state, dict) else None
        lacking = key if value is None or (inner and not isinstance(value, dict)) else next(
            (f"{key}.{k}" for k in inner or () if k not in value), None)
        if lacking is not None:
            raise CheckpointFormatError(f"{file} lacks {_TRAIN_STATE_WHAT[key]} ({lacking!r}), which a resume "
                                        f"goes on from; {resume_advice(path)}")
    return state


def check_loadable(path: Path, read: dict, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Refuse a checkpoint whose model.pt or optim.pt lacks a tensor of `model`, or holds one of another
    shape, before anything is loaded: torch's full-state-dict loader leaves a parameter missing from
    model.pt at its random initialisation and one missing from optim.pt's state with fresh AdamW
    moments (all of them, for an empty state), and a resume trained on from there with exit 0 (found
    by a tester). check_resume_model compared config.json alone."""
    inner = getattr(model, "module", model)  # DDP's wrapper; FSDP2 and per-block compile keep the names
    shapes = {name.replace("_orig_mod.", ""): tuple(t.shape) for name, t in inner.state_dict().items()}
    saved = read["model"]
    problems = [f"no {name}" for name in shapes if name not in saved]
    problems += [f"{name} of shape {list(saved[name].shape)}, the model's {list(shape)}"
                 for name, shape in shapes.items() if name in saved and tuple(saved[name].shape) != shape]
    problems += [f"{name}, which the model has not" for name in saved if name not in shapes]
    if problems:
        raise CheckpointFormatError(f"{path / MODEL_FILE} holds {len(problems)} tensor(s) unlike the model's "
                                    f"({'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}); "
                                    f"{resume_advice(path)}")
    if optimizer is None or not int(read["train_state"]["step"]):  # no optimizer step taken: no moments yet
        return
    optim_sd = read["optim"]
    state = optim_sd.get("state") if isinstance(optim_sd, dict) else None
    if not isinstance(state, dict) or not isinstance(optim_sd.get("param_groups"), list):
        raise CheckpointFormatError(f"{path / OPTIM_FILE} is not an optimizer state (no 'state' and "
                                    f"'param_groups'); {resume_advice(path)}")
    keys = set().union(*(s.keys() for s in state.values() if isinstance(s, dict)))
    trained = [name.replace("_orig_mod.", "") for name, p in inner.named_parameters() if p.requires_grad]
    lacking = [name for name in trained if not isinstance(state.get(name), dict) or not keys <= state[name].keys()
               or any(torch.is_tensor(v) and v.dim() and tuple(v.shape) != shapes[name]
                      for v in state[name].values())]
    if lacking:
        raise CheckpointFormatError(f"{path / OPTIM_FILE} has no whole optimizer state for {len(lacking)} of the "
                                    f"model's {len(trained)} parameters ({', '.join(lacking[:3])}"
                                    f"{', ...' if len(lacking) > 3 else ''}), which would start again from zero "
                                    f"moments; {resume_advice(path)}")


def read_checkpoint(path: str | Path, optimizer: bool = True, keys: tuple[str, ...] = _LOAD_KEYS) -> dict:
    """The files of checkpoint `path` read onto the CPU, touching no model: {"path", "model", "optim"
    (None without `optimizer`), "train_state"}. Reading is this process's own; loading into an FSDP
    model is collective (each tensor scattered from rank 0), so ranks read first and agree that every
    copy was readable before any of them loads: a model.pt damaged on one node left the others inside
    that scatter and the damaged node in the agreement, a hang (found by a tester).

    The weights and the optimizer's moments are memory-mapped (read from disk when the load
    touches them): both are held until the load, and read whole on every rank they were ~3x the
    model's fp32 size of host memory per rank at once (a 7B model: ~84 GB each of 8 ranks), where
    mapped they are the node's page cache, shared. A file cut short fails here all the same (its
    zip directory, at the end, is gone). `keys`: what train_state.pt must hold (`load_train_state`)."""
    path = resumable_checkpoint(path)
    advice = resume_advice(path)
    return {"path": path, "model": load_torch_file(path / MODEL_FILE, advice, mmap=True),
            "optim": load_torch_file(path / OPTIM_FILE, advice, mmap=True) if optimizer else None,
            "train_state": load_train_state(path, keys)}


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True, read: dict | None = None) -> dict:
    """Load weights (and optimizer state) into live objects; returns the train state dict.
    `read`: what `read_checkpoint(path)` returned, where the caller read the files already.

    The optimizer keeps its param groups' settings (weight decay, betas, eps), which the current
    config set; only the moments and step counts come from the checkpoint, as in OLMo-core. torch
    restores the saved settings over them: a resume with another --weight-decay logged and
    recorded the new value and went on with the old one (found by a reviewer)."""
    read = read or read_checkpoint(path, optimizer is not None)
    path = read["path"]
    check_loadable(path, read, model, optimizer)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, read["model"], options=options)
    if optimizer is not None:
        optim_sd = read["optim"]
        settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        known = {k for group in settings for k in group}
        # Keys the optimizer lacks are dropped: the "names" lists of checkpoints written before
        # trainer.optim stopped storing them cannot be mapped when --decay-norms moved a parameter.
        optim_sd["param_groups"] = [{k: v for k, v in group.items() if k == "params" or k in known}
                                    for group in optim_sd["param_groups"]]
        set_optimizer_state_dict(model, optimizer, optim_sd, options=options)
        for group, setting in zip(optimizer.param_groups, settings):
            group.update(setting)
    train_state = read["train_state"]
    if restore_rng:
        restore_rng_state(train_state["rng"])
    train_state["path"] = str(path)
    return train_state


def resume_advice(path: Path, missing: bool = False) -> str:
    """What to do when a file of checkpoint `path` is damaged (`missing`: not there). The writer
    renames only complete checkpoints into place, so the damage came from a copy or the disk: the
    one before it may be whole. Before it by step, as `path` itself may not be complete."""
    names = [p.name for p in complete_checkpoints(path.parent)]
    mine = _STEP_DIR.fullmatch(path.name)
    if mine:
        earlier = [n for n in names if int(_STEP_DIR.fullmatch(n).group(1)) < int(mine.group(1))]
    else:
        earlier = names[:names.index(path.name)] if path.name in names else []
    instead = f"resume the one before it (--resume {path.parent / earlier[-1]})" if earlier else "start afresh"
    question = _MISSING_QUESTION if missing else _DAMAGED_QUESTION
    return f"{question}an interrupted copy? Copy it again, or {instead}"
