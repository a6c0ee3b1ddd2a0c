"""The FineWeb-Edu classifier: educational value 0-5 from a BERT-style regression model.

OLMo 2's Dolmino web subset keeps DCLM-Baseline documents that HuggingFaceFW/fineweb-edu-
classifier rates int_score >= 2. That model is a BERT encoder (Snowflake arctic-embed-m)
with a one-output regression head, and its card and annotation scripts score like this:

    inputs = tokenizer(texts, return_tensors="pt", padding="longest", truncation=True)
    score = model(**inputs).logits.squeeze(-1).float()          # one float per text
    int_score = int(round(max(0, min(score, 5))))               # Python round: half to even

Truncation is the tokenizer's `model_max_length` (512 tokens for the real model: the first
512 tokens of a page decide). `FineWebEduFilter` does exactly that, batched: a tag() call
tokenizes its documents once, sorts them by token count and pads each batch to its longest
member, so a batch of short pages does not pay for one long one. Padding is masked out of
attention, so a document's score does not depend on its batch (equal within float
rounding, which tests check against a plain transformers loop).

The model comes from a local directory (what `save_pretrained` writes) or an s3:// prefix,
which is downloaded once per machine into the dolmino cache (`local_model_dir`). Hub names
are not fetched: download the model first. It loads lazily on the first document, once per
process, so the filter pickles as its parameters; GPU when present (`device="auto"`: in a
Spark task given a GPU by the cluster's GPU scheduling, that one), else CPU with
`torch_threads` threads (by default inside a Spark task the cores Spark reserved for it,
`spark.task.cpus`, 1 unless set: every other core already runs a Python worker).

    python -m filters.fineweb_edu score --model DIR_OR_S3 --input docs.jsonl.zst   # int_score histogram
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from dolmino import s3
from dolmino.errors import ResourceError

PAPER_MIN_INT_SCORE = 2        # OLMo 2 / Dolmino: keep int_score >= 2
MAX_SCORE = 5
DTYPES = ("float32", "bfloat16", "float16")
# Tokenizers without a real length limit report this sentinel (transformers' VERY_LARGE_INTEGER).
_NO_LIMIT = 1_000_000


def int_score(score: float) -> int:
    """The model card's integer score: clip to [0, 5], then Python's round (half to even)."""
    return int(round(max(0.0, min(float(score), float(MAX_SCORE)))))


# ---------------------------------------------------------------------------- model location

_S3_MODEL_DIRS: dict[str, str] = {}


def local_model_dir(model_path: str) -> str:
    """The local directory that holds the model named by `model_path`.

    A local path must be a directory. An s3:// prefix is downloaded under
    `$DOLMINO_CACHE/models/s3/<bucket>/<key>` (a file lock keeps the worker processes of one
    machine from fetching it twice; a later process finds it complete and only re-lists it)
    and remembered for the rest of the process.
    """
    model_path = str(model_path)
    if not s3.is_s3(model_path):
        if os.path.exists(model_path) and not os.path.isdir(model_path):
            raise ResourceError(f"model directory {model_path!r} is a file; the FineWeb-Edu filter needs the "
                                "directory save_pretrained writes (config.json, weights, tokenizer)")
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"model directory {model_path!r} does not exist (a local directory written "
                                    "by save_pretrained, or an s3:// prefix; hub names are not downloaded)")
        return model_path
    found = _S3_MODEL_DIRS.get(model_path)
    if found is not None:
        return found
    from dolmino.assets import cache_dir

    bucket, key = s3.split_uri(model_path)
    dest = cache_dir() / "models" / "s3" / bucket
    for part in key.strip("/").split("/"):
        if part in (".", ".."):
            raise ValueError(f"model_path {model_path!r}: '.' and '..' are not allowed in the key")
        if part:
            dest = dest / part
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        s3.download_prefix(model_path, dest)
    _S3_MODEL_DIRS[model_path] = str(dest)
    return str(dest)


# ---------------------------------------------------------------------------- scorer

# Loaded (tokenizer, model, device, max_length) per (directory, dtype, device, max_length):
# the build makes its filters anew for every file task, and a Spark worker runs many.
_LOADED: dict[tuple, tuple] = {}
_AUTO: dict[tuple, tuple] = {}  # (directory, dtype, max_length) -> the _LOADED key "auto" resolved to first


def _task_cpus() -> int | None:
    """The cores Spark reserved for the running task (`spark.task.cpus`), None outside a task. Always 1 before:
    an operator who gave each task 4 cores to score faster got 4 times fewer tasks at once, each on one
    thread, 3 of its cores idle, while the dolma2 tokenizer of the same task took all 4 (found by a tester)."""
    if "pyspark" not in sys.modules:
        return None
    from pyspark import TaskContext

    task = TaskContext.get()
    return max(1, int(task.cpus())) if task is not None else None


def _task_gpu() -> str | None:
    """The GPU Spark gave the running task ("cuda:N" from its `gpu` resource: a cluster started with
    GPU scheduling, spark.task.resource.gpu.amount), None outside a task or without one. Without it
    every task of a multi-GPU node ran on the first GPU, the others idle."""
    if "pyspark" not in sys.modules:
        return None
    from pyspark import TaskContext

    task = TaskContext.get()
    gpu = task.resources().get("gpu") if task is not None else None
    if gpu is None or not gpu.addresses:
        return None
    address = gpu.addresses[0]
    # A discovery script gives the node's GPU ids; where CUDA_VISIBLE_DEVICES narrows them, CUDA counts
    # from 0 over the visible ones.
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return f"cuda:{visible.index(address) if address in visible else address}"


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return (_task_gpu() or "cuda") if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ResourceError(f"device {device!r} asked for, but CUDA is not available")
    return device


def _load(model_path: str, dtype: str, device: str, max_length: int | None) -> tuple:
    local = os.path.abspath(local_model_dir(model_path))
    chosen = _AUTO.get((local, dtype, max_length)) if device == "auto" else None
    if chosen in _LOADED:
        # One copy per process: a Python worker that Spark gives another task's GPU keeps its first (a
        # model and a CUDA context on every GPU it was ever given would add up); the count of tasks per
        # GPU is what the scheduling bounds.
        return _LOADED[chosen]
    resolved = _resolve_device(device)
    if resolved.startswith("cuda:"):
        import torch

        if int(resolved.split(":")[1]) >= torch.cuda.device_count():
            raise ResourceError(f"device {resolved!r}: this process sees {torch.cuda.device_count()} GPU(s) (Spark's "
                                "GPU ids and CUDA_VISIBLE_DEVICES disagree?); give the filter a device")
    key = (local, dtype, resolved, max_length)
    if key not in _LOADED:
        _LOADED[key] = _read_model(local, model_path, dtype, resolved, max_length)
    if device == "auto":
        _AUTO[(local, dtype, max_length)] = key
    return _LOADED[key]


def _read_model(local: str, model_path: str, dtype: str, device: str, max_length: int | None) -> tuple:
    """(tokenizer, model on `device`, device, max_length) of a model directory, checked."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per worker process is noise in Spark logs
    # What is wrong with the directory, with its path, as a ResourceError: transformers' own
    # errors name neither the filter nor (inside an executor) fit in the one line a build prints.
    if not os.path.isfile(os.path.join(local, "config.json")):
        raise ResourceError(f"model directory {model_path!r} has no config.json: not a directory written by "
                            "save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(local, local_files_only=True,
                                                                   dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # weights cut short: the last (a tester)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ResourceError(f"model directory {model_path!r} cannot be loaded: {first}") from None
    if model.config.num_labels != 1:
        raise ResourceError(f"model {model_path!r} has {model.config.num_labels} outputs; the FineWeb-Edu filter "
                            "needs a one-output regression head (num_labels=1)")
    positions = getattr(model.config, "max_position_embeddings", None)
    if max_length is None:
        max_length = tokenizer.model_max_length
        if not max_length or max_length >= _NO_LIMIT:
            if positions is None:
                raise ResourceError(f"model {model_path!r}: the tokenizer has no model_max_length and the config "
                                    "no max_position_embeddings; give max_length")
            max_length = positions
    if positions is not None and max_length > positions:
        raise ResourceError(f"max_length {max_length} exceeds the {positions} positions of model {model_path!r}")
    model.to(device).eval()
    return tokenizer, model, device, int(max_length)


class EduScorer:
    """Scores texts with a sequence-regression model: the raw output (float) per text.

    Pickles as its parameters; the model loads on the first `score` call (see `_load`).
    """

    def __init__(self, model_path: str, *, max_length: int | None = None, dtype: str = "float32",
                 device: str = "auto", batch_size: int = 32, torch_threads: int | None = None):
        self.model_path = str(model_path)
        self.max_length = max_length
        self.dtype = dtype
        self.device = device
        self.batch_size = batch_size
        self.torch_threads = torch_threads

    def loaded(self) -> tuple:
        """(tokenizer, model, device, max_length) of this process."""
        return _load(self.model_path, self.dtype, self.device, self.max_length)

    def _set_threads(self) -> None:
        import torch

        threads = self.torch_threads or _task_cpus()
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def score(self, texts: list[str]) -> np.ndarray:
        """float32 scores, one per text (the model card's `logits.squeeze(-1).float()`)."""
        out = np.empty(len(texts), dtype=np.float32)
        if not texts:
            return out
        import torch

        tokenizer, model, device, max_length = self.loaded()
        self._set_threads()
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
        columns = list(encoded.keys())
        lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(texts))
        order = np.argsort(lengths, kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start:start + self.batch_size]
                features = [{c: encoded[c][i] for c in columns} for i in rows]
                batch = tokenizer.pad(features, padding="longest", return_tensors="pt")
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
                out[rows] = logits.squeeze(-1).float().cpu().numpy()
        return out


# ---------------------------------------------------------------------------- filter


def _positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_finite(model_path: str, dtype: str, scores: np.ndarray, docs: list[dict]) -> None:
    """ResourceError when a score is NaN or infinite: the clip in `int_score` made NaN 0 and +inf 5,
    so a damaged model (or a float16 overflow) removed or kept every document as if it had scored
    them (found by a tester)."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        first = int(bad[0])
        raise ResourceError(f"model {model_path!r} scored {float(scores[first])} for {bad.size} of {len(docs)} "
                            f"documents, the first {docs[first].get('id')!r} (dtype {dtype}): a score that is no "
                            "number says nothing about a document; check the model's weights, or score in float32")


class FineWebEduFilter:
    """Keep documents whose FineWeb-Edu int_score >= `min_int_score` (the paper: 2).

    `model_path`: directory or s3:// prefix of a transformers sequence-classification model
    with one regression output (HuggingFaceFW/fineweb-edu-classifier, downloaded). Tag
    columns: `score` (float, the raw model output) and `int_score` (round(clip(score, 0, 5)));
    the decision is a threshold on `int_score`, reason "int_score<2". `max_length` (default:
    the tokenizer's model_max_length, as the model card truncates) and `dtype` change the
    scores; `batch_size`, `device` and `torch_threads` do not.
    """

    name = "fineweb_edu"
    tag_params = ("model_path", "max_length", "dtype")
    run_params = ("batch_size", "device", "torch_threads")  # how it runs: neither the scores nor the decision

    def __init__(self, model_path: str, min_int_score: int = PAPER_MIN_INT_SCORE, batch_size: int = 32,
                 max_length: int | None = None, dtype: str = "float32", device: str = "auto",
                 torch_threads: int | None = None):
        if not isinstance(model_path, (str, os.PathLike)) or not str(model_path):
            raise ValueError(f"model_path must be a directory or s3:// URI, got {model_path!r}")
        if (isinstance(min_int_score, bool) or not isinstance(min_int_score, int)
                or not 0 <= min_int_score <= MAX_SCORE):
            raise ValueError(f"min_int_score must be an integer 0..{MAX_SCORE}, got {min_int_score!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        # "cuda:x" passed a prefix check, and the manifest check, to fail in the first tag task (a tester).
        if not isinstance(device, str) or not (device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", device)):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
        self.model_path = str(model_path)
        self.min_int_score = min_int_score
        self.scorer = EduScorer(self.model_path, max_length=_positive_int("max_length", max_length, True),
                                dtype=dtype, device=device, batch_size=_positive_int("batch_size", batch_size),
                                torch_threads=_positive_int("torch_threads", torch_threads, True))

    @property
    def reason(self) -> str:
        return f"int_score<{self.min_int_score}"

    def tag(self, docs: list[dict]) -> dict[str, np.ndarray]:
        texts = [t if isinstance(t, str) else str(t) for t in (doc.get("text") or "" for doc in docs)]
        scores = self.scorer.score(texts)
        _check_finite(self.model_path, self.scorer.dtype, scores, docs)
        return {"score": scores.astype(np.float64),
                "int_score": np.fromiter((int_score(s) for s in scores.tolist()), dtype=np.int64, count=len(texts))}

    def decide(self, attrs) -> str | None:
        return self.reason if int(attrs["int_score"]) < self.min_int_score else None

    def reject_reason(self, doc: dict) -> str | None:
        columns = self.tag([doc])
        return self.decide({name: values[0] for name, values in columns.items()})


# ---------------------------------------------------------------------------- CLI


def _as_option(exc: Exception) -> str:
    """A filter's error as the command's: "batch_size must be ..." names the option --batch-size."""
    first, _, rest = str(exc).partition(" ")
    if first in ("batch_size", "max_length", "dtype", "device"):
        return f"--{first.replace('_', '-')} {rest}"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m filters.fineweb_edu",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Score documents with a FineWeb-Edu style classifier.")
    sub = parser.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        help="int_score histogram of Dolma files, and the share each threshold keeps")
    sc.add_argument("--model", required=True, help="model directory or s3:// prefix")
    sc.add_argument("--input", nargs="+", required=True, help="Dolma JSONL (.jsonl, .gz, .zst; local or s3://)")
    sc.add_argument("--batch-size", type=int, default=32, help="documents per forward pass")
    sc.add_argument("--max-length", type=int, default=None, help="default: the tokenizer's model_max_length")
    sc.add_argument("--dtype", choices=DTYPES, default="float32", help="model weights and activations")
    sc.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'")
    sc.add_argument("--out", type=s3.local_path,
                    help="write id, score, int_score per document here (JSONL, compressed by suffix: .gz, .zst)")
    args = parser.parse_args(argv)
    from dolmino.documents import Quarantine, read_documents, write_lines
    from filters.outputs import check_output

    # Every argument is checked, and the model loaded, before any document is read or scored:
    # each of these was a traceback (exit 1), some after the whole input was scored (a tester).
    try:
        if args.out:
            check_output("--out", args.out, [("--input", path) for path in args.input], documents=True)
        filt = FineWebEduFilter(args.model, batch_size=args.batch_size, max_length=args.max_length,
                                dtype=args.dtype, device=args.device)
        filt.scorer.loaded()
    except (ValueError, OSError) as exc:
        print(f"{sc.prog}: error: {_as_option(exc)}", file=sys.stderr)
        return 2
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"{sc.prog}: error: --out {args.out} cannot be written ({exc.strerror}: {exc.filename})",
                  file=sys.stderr)
            return 2
    quarantine = Quarantine(keep_records=False)
    try:
        docs = [doc for path in args.input for _, doc in read_documents(path, quarantine)]
        columns = filt.tag(docs) if docs else {"score": np.empty(0), "int_score": np.empty(0, np.int64)}
        if args.out:
            write_lines(args.out, (json.dumps({"id": doc.get("id"), "score": score, "int_score": iscore})
                                    for doc, score, iscore in zip(docs, columns["score"].tolist(),
                                                                  columns["int_score"].tolist())))
    except (ValueError, OSError) as exc:  # an unreadable --input, a write that failed
        print(f"{sc.prog}: error: {exc}", file=sys.stderr)
        return 2
    counts = np.bincount(columns["int_score"], minlength=MAX_SCORE + 1)
    n = len(docs)
    print(json.dumps({
        "docs": n, "quarantined": dict(quarantine.counts),
        "int_score_histogram": {str(k): int(v) for k, v in enumerate(counts)},
        "share_kept_at": {f">={k}": (float(counts[k:].sum()) / n if n else 0.0) for k in range(MAX_SCORE + 1)},
    }, indent=2))
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
