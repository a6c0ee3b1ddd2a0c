"""Where a build's executor time goes: the per-unit functions under cProfile, without Spark.

    python bench/profile_build.py                        # bench_scale's --quick pool at 1x (8 files, ~20 MB)
    python bench/profile_build.py --files a.jsonl.zst b.jsonl.zst --share 0.05 --top 25

Runs, on each input file (one unit each), the functions a build's Python workers run, in
the order a build runs them, each step under its own cProfile (timer: process CPU time, so
a loaded machine does not distort it). Every step runs three times: once to warm up
(imports, first-call set-up), once timed by process CPU time without the profiler (the
figure printed), once under the profiler (the breakdown, inflated by its own overhead):

1. tag      `dolmino.build.tag.tag_bundle`: read, hash, write the bundle's attribute files
2. pool     `dolmino.build.pool.pool_bundle`: decide from the attributes, sampling hashes
3. tokenize `dolmino.build.write.tokenize_units`: the `--share` of the unit's documents
            with the smallest sampling hashes (a prefix, as a mix of a large pool takes),
            with the manifest's token filters (min_length, repeated_ngrams)
4. write    `dolmino.build.write.write_part`: those documents into one part, label masks on

and, as the yardstick, `Dolma2Tokenizer.encode_batch` (encode_batch_fast) on the same
selected texts. Prints CPU seconds per step, per token written, and the top functions of
each step by own time. Not a benchmark (no figures for bench/run.py): a tool to find what
to fix when bench_scale.py's ratios miss their goals.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class _Counters:
    def add(self, name, value):
        pass


def _profiled(fn):
    """(result, CPU s of one plain run, cProfile of another): the profiler's own cost is not in the CPU figure."""
    fn()  # warm: imports, lazy loads, compiled kernels
    cpu0 = time.process_time()
    result = fn()
    cpu = time.process_time() - cpu0
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    fn()
    prof.disable()
    return result, cpu, prof


def _top(prof, n: int) -> str:
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(n)
    text = out.getvalue()
    return text[text.index("   ncalls"):] if "   ncalls" in text else text


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--files", type=Path, nargs="+", default=None,
                    help=".jsonl.zst inputs, one unit each, all in one directory "
                         "(default: bench_scale's --quick pool at 1x, made if missing)")
    ap.add_argument("--share", type=float, default=0.05, help="share of the unit's documents the mix takes")
    ap.add_argument("--top", type=int, default=20, help="functions shown per step")
    ap.add_argument("--label-mask", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from bench.bench_scale import CORPUS, make_pool, manifest_dict
    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.build.attributes import AttributeStore, plan_bundles
    from dolmino.build.inputs import list_inputs, plan_units
    from dolmino.build.mix import _token_filters, skips_blank, tokenizer_digest
    from dolmino.build.pool import PoolBlock, PoolContext, UnitPool, pool_bundle
    from dolmino.build.tag import BundleTagged, BundleWork, TagContext, tag_bundle, tag_plans
    from dolmino.build.write import TokContext, TokDoc, WriteContext, order_key, tokenize_units, write_part
    from dolmino.manifest import manifest_from_dict
    from dolmino.prefetch import DEFAULT_READ_AHEAD, ReadAhead
    from dolmino.tokenizer import Dolma2Tokenizer

    if args.files is None:
        pool = make_pool(CORPUS, 20.0)
        args.files = sorted(pool.glob("*/part-000[01].jsonl.zst"))
    root = Path(os.path.commonpath([str(f.resolve()) for f in args.files]))
    root = root if root.is_dir() else root.parent
    names = [str(f.resolve().relative_to(root)) for f in args.files]
    spec = manifest_dict(root, 1, 1_000_000, {name: 25.0 for name in ("web", "code", "wiki", "papers")})
    spec["sources"] = [{**spec["sources"][0], "name": "src", "paths": names, "mix_percent": 100.0}]
    spec["output_format"]["label_mask"] = args.label_mask
    manifest = manifest_from_dict(spec)
    tokenizer = Dolma2Tokenizer(dolma2_tokenizer_path().read_text(encoding="utf-8"))
    tokenizer.encode_batch(["warm up the tokenizer"])
    units = plan_units(list_inputs(manifest))
    bundles = plan_bundles(units)
    steps: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="profile-build-") as tmp:
        store = AttributeStore(os.path.join(tmp, "attributes"))
        plans = tag_plans(manifest, {}, tokenizer_digest(tokenizer, manifest.tokenizer), units)
        plan = plans[0]
        tag_ctx = TagContext(store, plans, {}, tokenizer, manifest.seed, DEFAULT_READ_AHEAD)
        sets = (plan.docs_set, *(t.set_name for t in plan.filters))
        records, cpu, prof = _profiled(lambda: [r for b in bundles for r in tag_bundle(BundleWork(b, sets, False, {}),
                                                                                        tag_ctx, ReadAhead(()))])
        tagged = [r for r in records if isinstance(r, BundleTagged)]
        steps["tag"] = {"cpu_s": cpu, "units": len(units), "docs": sum(r.docs for r in tagged),
                        "bytes": sum(r.bytes for r in tagged), "profile": prof}

        pool_ctx = PoolContext(store, plans, manifest.sources, {}, manifest.seed, {u.index: u.file.name for u in units},
                               {u.index: 0 for u in units}, skips_blank(manifest))
        records, cpu, prof = _profiled(lambda: [r for b in bundles for r in pool_bundle(b, pool_ctx)])
        docs = [d for r in records if isinstance(r, PoolBlock) for _u, ds in r.docs(slice(None)) for d in ds]
        steps["pool"] = {"cpu_s": cpu, "docs": len(docs), "profile": prof}
        assert sum(isinstance(r, UnitPool) for r in records) == len(units)

        # The mix takes the documents with the smallest sampling hashes (a prefix), in every unit.
        cut = sorted(d.hash for d in docs)[max(0, int(len(docs) * args.share) - 1)]
        chosen = {u.index: sorted((d for d in docs if d.unit_index == u.index and d.hash <= cut),
                                  key=lambda d: d.line) for u in units}
        groups = [(i, ds) for i, ds in chosen.items() if ds]
        tok_ctx = SimpleNamespace(value=TokContext(store, plans, _token_filters(manifest),
                                                   tuple(s.max_doc_tokens for s in manifest.sources), {},
                                                   {u.index: u for u in units}, {u.index: 0 for u in units},
                                                   tokenizer, DEFAULT_READ_AHEAD, manifest.seed))
        records, cpu, prof = _profiled(lambda: list(tokenize_units(groups, tok_ctx, _Counters())))
        tok_docs = [r for r in records if isinstance(r, TokDoc)]
        tokens = sum(len(d.tokens) // 4 for d in tok_docs)
        steps["tokenize"] = {"cpu_s": cpu, "docs": sum(len(ds) for _, ds in groups), "tokens": tokens,
                             "profile": prof}

        out = os.path.join(tmp, "out")
        os.makedirs(out)
        wctx = SimpleNamespace(value=WriteContext(out, manifest.seed, 1, manifest.tokenizer.eos_token_id,
                                                  args.label_mask, ("src",), "profile", frozenset()))
        items = sorted(((order_key(manifest.seed, "src", d.loc, 0), d) for d in tok_docs), key=lambda kv: kv[0])
        records, cpu, prof = _profiled(lambda: list(write_part(0, iter(items), wctx, _Counters())))
        steps["write"] = {"cpu_s": cpu, "tokens": records[0].tokens, "profile": prof}

        from dolmino.build.read import read_lines

        by_unit = {u.index: u for u in units}
        texts = [doc["text"] for i, ds in groups
                 for _, doc in read_lines(by_unit[i].file.uri, by_unit[i], [d.line for d in ds])]
        ids, cpu, prof = _profiled(lambda: tokenizer.encode_batch(texts))
        steps["encode_batch (yardstick)"] = {"cpu_s": cpu, "tokens": sum(len(i) + 1 for i in ids), "profile": prof}

    written = steps["write"]["tokens"]
    summary = {}
    for name, st in steps.items():
        prof = st.pop("profile")
        st["cpu_s_per_1k_tokens_written"] = round(st["cpu_s"] / written * 1000, 5) if written else None
        summary[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in st.items()}
        print(f"\n==== {name}: {st['cpu_s']:.3f} CPU s " + json.dumps(summary[name]), file=sys.stderr)
        print(_top(prof, args.top), file=sys.stderr)
    result = {"files": [str(f) for f in args.files], "share": args.share, "docs_in_units": steps["tag"]["docs"],
              "tokens_written": written, "steps": summary}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
