"""datatrove 0.10.1's four MinHash stages on the dedup benchmark's input, in the datatrove venv.

    bench/.venvs/datatrove/bin/python bench/anchor_scripts/minhash_datatrove.py \
        --input docs.jsonl --work /tmp/dt --bands 9 --rows 13 --ngram 5 --seed 1

The input is the plain JSONL bench/bench_dedup.py wrote (id = the document's unique loc,
text). Each stage runs with LocalPipelineExecutor(workers=1), so every rank runs in this
one process (one core): signatures (1 task), buckets (one task per band, as datatrove
shards them), clustering (1 task) and the filter (1 task, which re-reads the input, as
datatrove must). English word tokenization is datatrove's default (spaCy blank "en").
The banding (bands x rows) is the one dolmino picks for the same num_perm/threshold,
so both tools run the same LSH.

`--input` is one JSONL file or a directory of them (read in sorted order, as datatrove's
reader lists them). Prints one JSON object: seconds per stage and in all, CPU seconds of the
four stages (user + system time of this process and of any child it waited for, from
getrusage, so reading the input, writing every intermediate file and the output are all
counted; interpreter start-up and imports are not), peak RSS (VmHWM of this process,
which ran every stage; _common.self_peak_rss_kib says why not ru_maxrss) and the removals
{removed id: kept id of its cluster}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time

from _common import self_peak_rss_kib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--bands", type=int, required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.logging import logger

    logger.remove()
    logging.disable(logging.WARNING)
    # datatrove's defaults (64-bit xxhash shingles, 32-bit signatures), our banding.
    config = MinhashConfig(n_grams=args.ngram, num_buckets=args.bands, hashes_per_bucket=args.rows, seed=args.seed,
                           hash_config=HashConfig(precision=64))
    work = args.work
    if os.path.isdir(args.input):
        in_dir, name = os.path.abspath(args.input), "*.jsonl"
        inputs = sorted(os.path.join(in_dir, f) for f in os.listdir(in_dir) if f.endswith(".jsonl"))
    else:
        in_dir, name = os.path.dirname(os.path.abspath(args.input)), os.path.basename(args.input)
        inputs = [args.input]

    def reader():
        return JsonlReader(in_dir, glob_pattern=name, compression=None)

    stages = {
        "signatures": ([reader(), MinhashDedupSignature(f"{work}/sigs", config=config)], 1),
        "buckets": ([MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)], args.bands),
        "cluster": ([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=config, save_cluster_id=True)], 1),
        "filter": ([reader(), MinhashDedupFilter(f"{work}/remove", load_cluster_ids=True),
                    JsonlWriter(f"{work}/kept", output_filename="kept.jsonl", compression=None)], 1),
    }
    def cpu_now() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    seconds = {}
    cpu0 = cpu_now()
    for stage, (pipeline, tasks) in stages.items():
        start = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{work}/logs/{stage}",
                              skip_completed=False).run()
        seconds[stage] = time.perf_counter() - start
    cpu_seconds = cpu_now() - cpu0

    # Which documents survived, and each removed document's cluster survivor.
    kept_ids, cluster_of_kept = set(), {}
    with open(f"{work}/kept/kept.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            kept_ids.add(doc["id"])
            cid = doc.get("metadata", {}).get("minhash_cluster_id", -1)
            if cid != -1:
                cluster_of_kept[cid] = doc["id"]
    # The cluster file gives (doc index, cluster id) for every clustered document.
    import struct

    ids = []
    for path in inputs:
        with open(path, encoding="utf-8") as f:
            ids += [json.loads(line)["id"] for line in f]
    removed = {}
    with open(f"{work}/remove/000000.clusters", "rb") as f:
        data = f.read()
    for idx, cid in struct.iter_unpack("<2I", data):
        doc_id = ids[idx]
        if doc_id not in kept_ids:
            removed[doc_id] = cluster_of_kept.get(cid, doc_id)
    print(json.dumps({"seconds": seconds, "total_seconds": sum(seconds.values()), "cpu_seconds": cpu_seconds,
                      "docs": len(ids),
                      "kept": len(kept_ids), "peak_rss_mb": self_peak_rss_kib() / 1024.0,
                      "removed": removed}))


if __name__ == "__main__":
    main()
