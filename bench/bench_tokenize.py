"""Tokenization to memmaps: dolmino vs `dolma tokens` vs datatrove vs the raw tokenizer.

    python bench/bench_tokenize.py                  # the whole shared corpus, 1 core each
    python bench/bench_tokenize.py --limit 500      # first 500 documents of each file
    python bench/bench_tokenize.py --quick          # = --limit 1000

Every implementation reads the same Dolma JSONL.zst files, uses the same dolma2 tokenizer
JSON (dolmino.assets.dolma2_tokenizer_path()) and writes uint32 memmaps with EOS 100257
after each document and no BOS. Each runs in its own process pinned to the same CPU set
(`--cores`, default 1; RAYON_NUM_THREADS set to match), so tokens/s per core compares
like with like:

- raw:       `tokenizers.Tokenizer.encode_batch_fast` (no character offsets: what the build
             calls, through `Dolma2Tokenizer.encode_batch`) over texts already in memory, in
             batches of 256 as the build encodes: the ceiling any wrapper can reach (reading,
             JSON and writing are not counted).
- dolmino:   the mix phase's per-document path, every document of every file selected:
             `dolmino.build.write.tokenize_units` (read the unit, parse the selected lines,
             encode with encode_batch_fast, ids + EOS as stored) -> `MemmapPartWriter`, one
             part per file, in one process without Spark. The list of document lines, which
             the build takes from the tag phase's attribute files, is computed before the
             clock starts; the tag phase itself (one more read of every pool document) is
             measured by bench_scale.py, not here.
- dolma:     the `dolma tokens` CLI of dolma 1.2.1 in bench/.venvs/dolma.
- datatrove: JsonlReader -> DocumentTokenizer of datatrove 0.10.1 in bench/.venvs/datatrove.

Timing starts when the tool starts loading its tokenizer and ends when its output is on
disk (interpreter start-up is excluded). Two figures come from that span: wall-clock
tokens/s per core, and tokens per CPU-second (user + system time of the process and of the
children it waited for, e.g. dolma's pool worker), which a loaded machine distorts far less. Peak memory is the largest resident set of the
process (VmHWM) or of any process it waited for (ru_maxrss). Afterwards every output is decoded
back into per-document token lists and compared with dolmino's, document by document.
The anchors' tokenizers versions (their venvs pin them) are in the JSON (`anchor_versions`).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "corpus"
FILES = ("academic.jsonl.zst", "code.jsonl.zst", "encyclopedic.jsonl.zst", "web.jsonl.zst")
EOS = 100257
QUICK_LIMIT = 1000
RAW_BATCH = 256  # = dolmino.tokenizer.ENCODE_BATCH, the batch the build encodes


# ---------------------------------------------------------------------------- inputs


def prepare_inputs(corpus: Path, out_dir: Path, limit: int | None) -> list[Path]:
    """The benchmark's input files: links to the corpus, or its first `limit` lines per file.

    Truncation copies raw lines byte for byte (no re-serialisation), so every tool parses
    exactly the bytes the corpus holds.
    """
    import zstandard

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in FILES:
        src = corpus / name
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing: the benchmark needs the shared corpus")
        dst = out_dir / name
        if limit is None:
            os.symlink(src, dst)
        else:
            lines = []
            with open(src, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
                for line in io.BufferedReader(reader):
                    lines.append(line)
                    if len(lines) >= limit:
                        break
            dst.write_bytes(zstandard.ZstdCompressor(level=3).compress(b"".join(lines)))
        paths.append(dst)
    return paths


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_rss_kib() -> int:
    """The largest peak of this process (VmHWM: bench.proctree.self_peak_rss_mb says why not
    ru_maxrss) and of the children it waited for."""
    from bench.proctree import self_peak_rss_mb

    return max(int(self_peak_rss_mb() * 1024), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


# ------------------------------------------------------------- children (this venv)


def child_raw(input_dir: Path, tokenizer_path: Path) -> dict:
    """encode_batch_fast over texts already in memory; counts ids + one EOS per document."""
    from tokenizers import Tokenizer

    from dolmino.documents import Quarantine, read_documents

    texts = [doc["text"] for path in sorted(input_dir.glob("*.jsonl.zst"))
             for _, doc in read_documents(str(path), Quarantine())]
    started, cpu0 = time.perf_counter(), _cpu_seconds()
    tok = Tokenizer.from_file(str(tokenizer_path))
    tokens = 0
    for i in range(0, len(texts), RAW_BATCH):
        for enc in tok.encode_batch_fast(texts[i:i + RAW_BATCH], add_special_tokens=False):
            tokens += len(enc.ids) + 1
    return {"seconds": time.perf_counter() - started, "cpu_seconds": _cpu_seconds() - cpu0, "tokens": tokens,
            "docs": len(texts), "peak_rss_kib": _peak_rss_kib()}


class _Counters:
    """Stands in for the build's Spark accumulators (tokenize_units reports progress to them)."""

    def add(self, name: str, value) -> None:
        pass


BENCH_SEED = 0


def document_lines(path: Path) -> list[tuple[int, int, int, int]]:
    """(line, sampling hash, text bytes, content digest) of each document of a file: what the
    pool stage hands the tokenize stage from the tag phase's `docs` attribute set (the tokenize
    stage checks the document it reads against the last three)."""
    from dolmino.build.attributes import content_digest
    from dolmino.build.pool import loc_of
    from dolmino.documents import Quarantine, read_documents
    from mixers.sampling import seeded_hash

    return [(line, seeded_hash(BENCH_SEED, path.name, doc["id"], loc_of(path.name, 0, line)),
             len(text := doc["text"].encode("utf-8")), content_digest(text))
            for line, doc in read_documents(str(path), Quarantine())]


def child_dolmino(input_dir: Path, tokenizer_path: Path, out_dir: Path) -> dict:
    """The mix phase's tokenize path (every document selected) into one part per file."""
    from types import SimpleNamespace

    from dolmino.build.inputs import InputFile, Unit
    from dolmino.build.pool import PoolDoc
    from dolmino.build.write import TokContext, TokDoc, TokStats, tokenize_units
    from dolmino.memmap import MemmapPartWriter
    from dolmino.prefetch import DEFAULT_READ_AHEAD
    from dolmino.tokenizer import Dolma2Tokenizer

    paths = sorted(input_dir.glob("*.jsonl.zst"))
    units = {i: Unit(i, i, InputFile(p.name, str(p), p.name, p.stat().st_size, "bench")) for i, p in enumerate(paths)}
    wanted = {i: document_lines(p) for i, p in enumerate(paths)}  # from attributes in a build: not timed
    plans = tuple(SimpleNamespace(name=p.name, format="dolma") for p in paths)
    started, cpu0 = time.perf_counter(), _cpu_seconds()
    tokenizer = Dolma2Tokenizer(tokenizer_path.read_text(encoding="utf-8"))
    ctx = SimpleNamespace(value=TokContext(
        store=None, plans=plans, token_filters=tuple(() for _ in paths), max_doc_tokens=tuple(None for _ in paths),
        resources={}, units=units, offsets={i: 0 for i in units}, tokenizer=tokenizer, read_ahead=DEFAULT_READ_AHEAD,
        seed=BENCH_SEED))
    tokens = docs = 0
    for i, path in enumerate(paths):
        groups = [(i, [PoolDoc(i, i, line, line, h, n, d) for line, h, n, d in wanted[i]])]
        writer = MemmapPartWriter(str(out_dir), i, EOS)
        for record in tokenize_units(groups, ctx, _Counters()):
            if isinstance(record, TokDoc):
                writer.add_document(np.frombuffer(record.tokens, dtype="<u4"), record.doc_id, path.name, record.loc)
            elif not isinstance(record, TokStats):
                raise TypeError(f"unexpected record {type(record).__name__}")
        stats = writer.close()
        tokens += stats.tokens
        docs += stats.docs
    return {"seconds": time.perf_counter() - started, "cpu_seconds": _cpu_seconds() - cpu0, "tokens": tokens,
            "docs": docs, "peak_rss_kib": _peak_rss_kib()}


# ------------------------------------------------------------------------ running


def _pinned(cores: int):
    """A preexec_fn that pins the child to `cores` CPUs (the last ones this process may use)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    chosen = set(allowed[-cores:]) if allowed else set()

    def pin():
        if chosen:
            os.sched_setaffinity(0, chosen)
    return pin, sorted(chosen)


def run_child(cmd: list[str], cores: int, timeout_s: float) -> dict:
    pin, _ = _pinned(cores)
    env = dict(os.environ, RAYON_NUM_THREADS=str(cores), TOKENIZERS_PARALLELISM="true",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin, env=env, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------- reading back


def read_dolmino(out_dir: Path) -> dict[tuple[str, int], np.ndarray]:
    from dolmino.memmap import read_part

    docs = {}
    for npy in sorted(out_dir.glob("part-*.npy")):
        tokens, rows = read_part(str(npy))
        for start, end, _id, _src, loc in rows:
            name, line = loc.rsplit(":", 1)
            docs[(name, int(line))] = np.array(tokens[start:end])
    return docs


def read_dolma(out_dir: Path) -> dict[tuple[str, int], np.ndarray]:
    docs = {}
    for sidecar in sorted(out_dir.glob("*.csv.gz")):
        npy = Path(str(sidecar)[: -len(".csv.gz")] + ".npy")
        tokens = np.memmap(npy, dtype="<u4", mode="r") if npy.stat().st_size else np.zeros(0, "<u4")
        with gzip.open(sidecar, "rt", newline="") as fh:
            for start, end, _id, src, loc in csv.reader(fh):
                docs[(os.path.basename(src), int(loc))] = np.array(tokens[int(start):int(end)])
    return docs


def read_datatrove(out_dir: Path) -> list[np.ndarray]:
    docs = []
    for ds in sorted(out_dir.glob("*.ds")):
        tokens = np.fromfile(ds, dtype="<u4")
        ends = np.fromfile(str(ds) + ".index", dtype="<u8")
        start = 0
        for end in ends:
            docs.append(tokens[start:int(end)])
            start = int(end)
    return docs


def compare_outputs(reference: dict, other: dict | list, texts: dict, tokenizer_path: Path) -> dict:
    """How `other`'s per-document tokens differ from dolmino's, with the cause of each difference.

    `other` is keyed like dolmino's output ((file, line) -> tokens) or, for datatrove, a
    list in reader order. dolmino encodes `text.strip()` (dolma's semantics); a difference is
    explained when the other tool's tokens are those of the text as is (datatrove: all 15,042
    documents that differed in the 2026-12-05 run have leading or trailing whitespace) or, for
    an anchor that strips where dolmino would not, of `text.strip()`.
    """
    keys = sorted(reference)
    if isinstance(other, list):
        # datatrove keeps file order (sorted names) and line order, skipping empty texts.
        ordered = sorted(keys, key=lambda k: (k[0], k[1]))
        ordered = [k for k in ordered if texts.get(k, "x")]
        if len(ordered) != len(other):
            return {"comparable": False, "reason": f"dolmino has {len(ordered)} non-empty documents, "
                    f"the anchor {len(other)}: cannot align by order"}
        other = dict(zip(ordered, other))
    from tokenizers import Tokenizer

    tok = None

    def encoded(text: str) -> np.ndarray:
        return np.asarray(tok.encode(text, add_special_tokens=False).ids + [EOS], dtype="<u4")

    identical = 0
    differ, explained_by_strip, explained_unstripped, missing = [], 0, 0, []
    for k in keys:
        mine = reference[k]
        theirs = other.get(k)
        if theirs is None:
            missing.append(k)
            continue
        if len(mine) == len(theirs) and np.array_equal(mine, theirs):
            identical += 1
            continue
        tok = tok or Tokenizer.from_file(str(tokenizer_path))
        if np.array_equal(encoded(texts[k]), theirs):
            explained_unstripped += 1
        elif np.array_equal(encoded(texts[k].strip()), theirs):
            explained_by_strip += 1
        else:
            differ.append(k)
    extra = [k for k in other if k not in reference]
    out = {
        "comparable": True, "documents": len(keys), "identical": identical,
        "differ_explained_by_strip": explained_by_strip, "differ_explained_by_unstripped": explained_unstripped,
        "differ_unexplained": len(differ),
        "missing_in_anchor": len(missing), "extra_in_anchor": len(extra),
        "tokens_dolmino": int(sum(len(v) for v in reference.values())),
        "tokens_anchor": int(sum(len(v) for v in other.values())),
        "examples_unexplained": [f"{a}:{b}" for a, b in differ[:5]],
        "examples_missing": [f"{a}:{b}" for a, b in missing[:5]],
    }
    return out


def load_texts(input_dir: Path) -> dict[tuple[str, int], str]:
    from dolmino.documents import Quarantine, read_documents

    return {(path.name, line): doc["text"] for path in sorted(input_dir.glob("*.jsonl.zst"))
            for line, doc in read_documents(str(path), Quarantine())}


def describe(name: str, eq: dict) -> str:
    if not eq.get("comparable"):
        return f"{name}: not comparable ({eq.get('reason')})"
    parts = [f"{name}: {eq['identical']}/{eq['documents']} documents token-identical to dolmino"]
    if eq["differ_explained_by_strip"]:
        parts.append(f"{eq['differ_explained_by_strip']} differ only because {name} encodes text.strip()")
    if eq.get("differ_explained_by_unstripped"):
        parts.append(f"{eq['differ_explained_by_unstripped']} differ only because {name} encodes the text as is "
                     "(dolmino strips it, as dolma does: leading/trailing whitespace)")
    if eq["missing_in_anchor"]:
        parts.append(f"{eq['missing_in_anchor']} absent from its output (e.g. empty after strip)")
    if eq["differ_unexplained"]:
        parts.append(f"{eq['differ_unexplained']} differ for another reason, e.g. {eq['examples_unexplained']}")
    parts.append(f"tokens {eq['tokens_anchor']:,} vs dolmino {eq['tokens_dolmino']:,}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--limit", type=int, default=None, help="first N documents of each corpus file")
    ap.add_argument("--quick", action="store_true", help=f"--limit {QUICK_LIMIT}")
    ap.add_argument("--cores", type=int, default=1, help="CPUs each implementation is pinned to")
    ap.add_argument("--impls", default="raw,dolmino,dolma,datatrove")
    ap.add_argument("--timeout", type=float, default=3000)
    ap.add_argument("--keep", type=Path, default=None, help="keep outputs in this directory")
    ap.add_argument("--child", choices=("raw", "dolmino"), help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child == "raw":
        print(json.dumps(child_raw(args.input, args.tokenizer)))
        return {}
    if args.child == "dolmino":
        print(json.dumps(child_dolmino(args.input, args.tokenizer, args.out)))
        return {}

    from dolmino.assets import dolma2_tokenizer_path

    limit = QUICK_LIMIT if args.quick and args.limit is None else args.limit
    tokenizer_path = dolma2_tokenizer_path()
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    input_dir = work / "input"
    if input_dir.exists():
        shutil.rmtree(input_dir)
    prepare_inputs(args.corpus, input_dir, limit)
    _, cpus = _pinned(args.cores)
    me = [sys.executable, str(Path(__file__).resolve())]
    results, errors, outputs = {}, {}, {}
    for impl in impls:
        out = work / impl
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        try:
            if impl == "raw":
                res = run_child([*me, "--child", "raw", "--input", str(input_dir), "--tokenizer", str(tokenizer_path)],
                                args.cores, args.timeout)
            elif impl == "dolmino":
                res = run_child([*me, "--child", "dolmino", "--input", str(input_dir), "--out", str(out),
                                 "--tokenizer", str(tokenizer_path)], args.cores, args.timeout)
                outputs[impl] = read_dolmino(out)
            elif impl in ("dolma", "datatrove"):
                from bench.anchors import anchor_python

                script = REPO / "bench" / "anchor_scripts" / f"tokenize_{impl}.py"
                cmd = [str(anchor_python(impl)), str(script), "--input", str(input_dir), "--out", str(out),
                       "--tokenizer", str(tokenizer_path)]
                if impl == "dolma":
                    cmd += ["--processes", str(args.cores)]
                res = run_child(cmd, args.cores, args.timeout)
                if impl == "dolma":
                    outputs[impl] = read_dolma(out)
                    res["tokens"] = int(sum(len(v) for v in outputs[impl].values()))
                    res["docs"] = len(outputs[impl])
                else:
                    outputs[impl] = read_datatrove(out)
                    res["tokens"] = int(sum(len(v) for v in outputs[impl]))
                    res["docs"] = len(outputs[impl])
            else:
                raise ValueError(f"unknown impl {impl!r}")
            results[impl] = res
        except Exception as exc:  # noqa: BLE001 - an unavailable anchor is reported, not fatal
            errors[impl] = f"{type(exc).__name__}: {str(exc)[-1500:]}"

    figures = []
    for impl, res in results.items():
        figures.append({"name": "tokenize: tokens/s per core", "impl": impl,
                        "value": res["tokens"] / res["seconds"] / args.cores, "unit": "tokens/s/core",
                        "better": "higher"})
        if res.get("cpu_seconds"):
            figures.append({"name": "tokenize: tokens per CPU-second", "impl": impl,
                            "value": res["tokens"] / res["cpu_seconds"], "unit": "tokens/s (CPU time)",
                            "better": "higher"})
        if impl != "raw":  # raw holds all texts in memory by design; its RSS says nothing
            figures.append({"name": "tokenize: peak RSS", "impl": impl, "value": res["peak_rss_kib"] / 1024,
                            "unit": "MiB", "better": "lower"})

    equivalence, notes = {}, []
    if "dolmino" in outputs:
        texts = load_texts(input_dir)
        for impl in ("dolma", "datatrove"):
            if impl in outputs:
                equivalence[impl] = compare_outputs(outputs["dolmino"], outputs[impl], texts, tokenizer_path)
                notes.append(describe(impl, equivalence[impl]))
        if "dolma" in outputs:
            notes.append("dolma: output order is shuffled (local_shuffle ring), so it was aligned by (file, line) "
                         "from its .csv.gz sidecar; datatrove keeps reader order and was aligned by position")
    for impl, err in errors.items():
        notes.append(f"{impl}: not measured: {err.splitlines()[-1] if err.splitlines() else err}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "tokenize", "cores": args.cores, "cpus_pinned": cpus, "limit_per_file": limit,
        "tokenizer": str(tokenizer_path), "runs": results, "errors": errors,
        "equivalence": equivalence, "notes": notes, "figures": figures,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
