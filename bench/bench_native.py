"""Benchmark csrc's native data paths against their fallbacks on real tokens; prints one JSON object.

    python bench/bench_native.py                    # the whole shared code corpus (~tens of M tokens)
    python bench/bench_native.py --limit-docs 2000  # quicker

The corpus (shared/corpus/code.jsonl.zst, CPython's stdlib) is tokenized with dolma2 once
and cached as raw uint32 with EOS after each document under bench/results/tmp/, like a
build's part file. Figures (impl "native" = csrc._native, "fallback" = what runs without it):

- repeated_ngram_spans_stream: one call over the whole token stream (the trainer's and the
  label-mask path's shape of work); fallback = numba. Tokens/s.
- repeated_ngram_spans_per_doc: one call per document, as RepeatedNgramFilter makes them.
- scan_tokens: max id / out-of-vocab / EOS count over the memmap; fallback = chunked numpy.
- eos_mismatches: EOS at every document end; fallback = numpy gather.
- validate_build: `dolmino validate` end to end on a one-part build of the corpus.
- epoch_order / instance_index: the trainer's shuffle and instance table, numpy only. They
  were measured to decide whether to write native versions: numpy's permutation is already
  compiled, bit-identical resumption pins it to numpy's exact PCG64 + Fisher-Yates stream,
  and the figures below (a fraction of a second per epoch of tens of millions of
  instances; microseconds for the index) leave nothing worth a second implementation.

Each figure is the best of --repeats runs after a warm-up (numba's JIT, page cache).
No CUDA kernels: none exist yet (no GPU was available to profile against torch.compile).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import csrc  # noqa: E402
from filters.repeated_ngrams import fallback_repeated_ngram_spans, find_repeated_ngram_spans  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus" / "code.jsonl.zst"
CACHE = REPO / "bench" / "results" / "tmp"
EOS = 100257
VOCAB = 100278


def tokenized_corpus(limit_docs: int | None) -> tuple[Path, np.ndarray]:
    """(path of the raw uint32 token file, document end offsets), tokenizing on first use."""
    tag = "all" if limit_docs is None else str(limit_docs)
    tokens_path = CACHE / f"code-dolma2-{tag}.npy"
    ends_path = CACHE / f"code-dolma2-{tag}.ends.npy"
    if tokens_path.exists() and ends_path.exists():
        return tokens_path, np.load(ends_path)
    from tokenizers import Tokenizer

    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.documents import Quarantine, read_documents

    tok = Tokenizer.from_file(str(dolma2_tokenizer_path()))
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = tokens_path.with_suffix(".tmp")
    ends, total, batch = [], 0, []
    with open(tmp, "wb") as out:
        def flush():
            nonlocal total
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                ids = np.asarray(enc.ids + [EOS], dtype="<u4")
                out.write(ids.tobytes())
                total += len(ids)
                ends.append(total)
            batch.clear()

        for k, (_, doc) in enumerate(read_documents(str(CORPUS), Quarantine())):
            if limit_docs is not None and k >= limit_docs:
                break
            batch.append(doc["text"])
            if len(batch) == 256:
                flush()
        flush()
    np.save(ends_path, np.asarray(ends, dtype=np.int64))
    os.replace(tmp, tokens_path)
    return tokens_path, np.asarray(ends, dtype=np.int64)


def best_of(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up: JIT, page cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def fig(name: str, impl: str, value: float, unit: str, better: str = "higher") -> dict:
    return {"name": name, "impl": impl, "value": float(value), "unit": unit, "better": better}


def compare(name: str, native_fn, fallback_fn, n_items: int, unit: str, repeats: int, figures: list, results: dict):
    """Time both, check they agree, append throughput figures; returns the speed-up."""
    t_fb, r_fb = best_of(fallback_fn, repeats)
    entry = {"fallback_s": t_fb}
    if csrc.native_available():
        t_nat, r_nat = best_of(native_fn, repeats)
        same = all(np.array_equal(a, b) for a, b in zip(r_nat, r_fb)) if isinstance(r_fb, list) else (
            np.array_equal(r_nat, r_fb) if isinstance(r_fb, np.ndarray) else r_nat == r_fb)
        if not same:
            raise AssertionError(f"{name}: native and fallback results differ")
        entry.update(native_s=t_nat, speedup=t_fb / t_nat)
        figures.append(fig(name, "native", n_items / t_nat, unit))
    figures.append(fig(name, "fallback", n_items / t_fb, unit))
    results[name] = entry


def write_build(tokens_path: Path, ends: np.ndarray, out: Path) -> None:
    """A one-part build directory from the cached tokens (sidecar rows from the doc ends)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copyfile(tokens_path, out / "part-00000.npy")
    starts = np.concatenate([[0], ends[:-1]])
    with gzip.open(out / "part-00000.csv.gz", "wt", encoding="utf-8", newline="") as fh:
        fh.writelines(f"{s},{e},doc-{k},code,code.jsonl.zst:{k}\n" for k, (s, e) in enumerate(zip(starts, ends)))
    (out / "manifest.json").write_text(json.dumps({"tokenizer": {"vocab_size": VOCAB, "eos_token_id": EOS}}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-docs", type=int, default=None, help="tokenize only the first N code documents")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--instances", type=int, default=10_000_000,
                        help="instances to shuffle for epoch_order (10M = 41B tokens at seq_len 4096)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    tokens_path, ends = tokenized_corpus(args.limit_docs)
    prep_s = time.perf_counter() - t0
    tokens = np.memmap(tokens_path, dtype="<u4", mode="r")
    n_tok = len(tokens)
    docs = np.split(np.asarray(tokens), ends[:-1])
    figures: list[dict] = []
    results: dict = {}

    compare("repeated_ngram_spans_stream",
            lambda: find_repeated_ngram_spans(tokens), lambda: fallback_repeated_ngram_spans(tokens),
            n_tok, "tokens/s", args.repeats, figures, results)
    compare("repeated_ngram_spans_per_doc",
            lambda: [find_repeated_ngram_spans(d) for d in docs],
            lambda: [fallback_repeated_ngram_spans(d) for d in docs],
            n_tok, "tokens/s", args.repeats, figures, results)
    results["repeated_ngram_spans_stream"]["spans_found"] = int(len(find_repeated_ngram_spans(tokens)))
    compare("scan_tokens",
            lambda: csrc.scan_tokens(tokens, VOCAB, EOS, backend="native"),
            lambda: csrc.scan_tokens(tokens, VOCAB, EOS, backend="fallback"),
            n_tok, "tokens/s", args.repeats, figures, results)
    compare("eos_mismatches",
            lambda: csrc.eos_mismatches(tokens, ends, EOS, backend="native"),
            lambda: csrc.eos_mismatches(tokens, ends, EOS, backend="fallback"),
            len(ends), "docs/s", args.repeats, figures, results)

    from dolmino.validate import validate_build

    build = CACHE / "validate-build"
    write_build(tokens_path, ends, build)
    compare("validate_build",
            lambda: validate_build(build, backend="native").ok,
            lambda: validate_build(build, backend="fallback").ok,
            n_tok, "tokens/s", args.repeats, figures, results)
    if not validate_build(build).ok:
        raise AssertionError(f"the benchmark build does not validate: {validate_build(build).all_errors()[:3]}")

    from trainer.data import epoch_order

    t_perm, order = best_of(lambda: epoch_order(args.instances, 1234, 0), args.repeats)
    t_raw, _ = best_of(lambda: np.random.Generator(np.random.PCG64([1234, 0])).bit_generator.random_raw(
        args.instances // 2), args.repeats)
    figures.append(fig("epoch_order", "fallback", t_perm / args.instances * 1e9, "ns/instance", "lower"))
    figures.append(fig("epoch_order_rng_floor", "raw", t_raw / args.instances * 1e9, "ns/instance", "lower"))
    results["epoch_order"] = {"instances": args.instances, "numpy_permutation_s": t_perm,
                              "pcg64_draws_alone_s": t_raw, "native": "not written: see module docstring"}
    n_files = 10_000
    sizes = np.random.default_rng(0).integers(1, 2**30, size=n_files)
    t_index, _ = best_of(lambda: np.concatenate([[0], np.cumsum(sizes // 4096)]), args.repeats)
    figures.append(fig("instance_index_10k_files", "fallback", t_index * 1e6, "us", "lower"))

    print(json.dumps({
        "benchmark": "native",
        "native_available": csrc.native_available(),
        "native_error": csrc.native_error(),
        "corpus": {"file": CORPUS.name, "documents": int(len(ends)), "tokens": int(n_tok),
                   "tokenize_or_load_s": prep_s},
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "results": results,
        "figures": figures,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
