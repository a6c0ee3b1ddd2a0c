"""OLMo2-1B on one GPU: dolmino, transformers and OLMo-core in bf16 with torch.compile and fused AdamW.

    python bench/bench_trainer_gpu.py                 # needs CUDA; a few minutes on one H100 / H200
    python bench/bench_trainer_gpu.py --dry-run       # CPU: a tiny model, no compile: checks the plumbing

Same protocol as bench/bench_trainer.py's CPU peers (one process per implementation,
bench/anchor_scripts/trainer_step.py, same initial weights, same batch, OLMo-core from
bench/.venvs/olmo-core sharing this torch, or from this interpreter where it imports OLMo-core
itself, as on a GPU machine with no package index and OLMo-core's wheels installed
`--no-deps --target`), on the GPU: bf16 autocast with fp32 weights and optimizer state, each
model compiled as its project compiles it (dolmino: each block and the fused loss's per-chunk
kernel, as the trainer does with --compile; transformers: torch.compile of the whole model, as the HF
Trainer's torch_compile=True; OLMo-core: Transformer.apply_compile(), per block), torch's
fused AdamW for all three, clipping at 1.0. Reported per implementation: tokens/s/GPU,
step time, peak allocated memory and MFU (6 x matmul parameters + attention FLOPs per
token, trainer.config.ModelConfig.flops_per_token, over the GPU's dense bf16 peak), next to
OLMo-core's published ~55k tokens/s/GPU for an OLMo 2 1B at 4096 context on H100s (their
multi-GPU FSDP run with fused kernels; one GPU here, so the comparison is indicative).

    python bench/bench_trainer_gpu.py --loss-layer    # the output layer + loss alone, see loss_layer()

bench/gpu_checks.sh runs both and the CUDA tests in one go (a few minutes). The latest
figures (one H200, 2026-12-04) are in bench/results/gpu/ and bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.bench_trainer import (OLMO_CORE_1B_H100_TOKENS_PER_S, PEERS, _base_spec, is_olmo2_1b,  # noqa: E402
                                 run_interleaved)
from trainer.config import ModelConfig, TrainConfig  # noqa: E402
from trainer.loss import chunk_rows, fused_lm_loss, lm_loss  # noqa: E402
from trainer.throughput import mfu, peak_flops  # noqa: E402


def run(model: str, seq_len: int, batch_size: int, micro_batch_size: int, steps: int, warmup: int, rounds: int,
        impls: tuple[str, ...], device: str, compile_: bool, timeout_s: float, log=print,
        loss_chunk_size: int | None = None, loss_path: str | None = None) -> dict:
    dev = torch.device(device)
    cfg = ModelConfig.preset(model, max_seq_len=max(seq_len, ModelConfig.preset(model).max_seq_len))

    def spec_for(impl: str, weights: Path, batch: Path) -> dict:
        spec = _base_spec(impl, cfg, weights, batch, micro_batch_size, steps, warmup, torch.get_num_threads())
        if impl == "dolmino" and loss_chunk_size is not None:
            spec["loss_chunk_size"] = loss_chunk_size
        if impl == "dolmino" and loss_path is not None:
            spec["compile_loss"] = loss_path == "compiled"
        return {**spec, "device": str(dev), "autocast_bf16": True, "compile": compile_}

    results, errors = run_interleaved(cfg, impls, batch_size, seq_len, rounds, spec_for, timeout_s, log,
                                      label=f"[bench_trainer_gpu] {model}")
    tokens = batch_size * seq_len
    fpt = cfg.flops_per_token(seq_len)
    peak = peak_flops(dev)
    per_impl = {}
    for impl, outs in results.items():
        if not outs:
            continue
        times = sorted(t for o in outs for t in o["step_seconds"])
        med = times[len(times) // 2]
        tok_s = tokens / med
        per_impl[impl] = {"step_seconds_median": round(med, 4), "tokens_per_second_per_gpu": round(tok_s, 1),
                          "mfu": None if peak is None else round(mfu(tok_s, fpt, peak), 4),
                          "peak_memory_gib": outs[0].get("peak_cuda_memory_gib"),
                          "first_step_ce": outs[0]["first_step_ce"],
                          **{k: outs[0].get(k) for k in ("loss", "optimizer", "clipping", "version", "compile")}}
    name = f"trainer_step_{model}_seq{seq_len}_{dev.type}"
    figures = []
    unit = "tokens/s/GPU" if dev.type == "cuda" else "tokens/s"
    for impl, r in per_impl.items():
        figures.append({"name": name, "impl": impl, "value": r["tokens_per_second_per_gpu"], "unit": unit,
                        "better": "higher"})
        if r["mfu"] is not None:
            figures.append({"name": f"trainer_mfu_{model}_seq{seq_len}_{dev.type}", "impl": impl, "value": r["mfu"],
                            "unit": "fraction of peak bf16", "better": "higher"})
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    # OLMo-core published its figure for H100s: beside another GPU (an H200 ran this) it would be
    # an anchor measured on other hardware, so it is named only on an H100, as bench_trainer does
    if "H100" in device_name and is_olmo2_1b(model) and seq_len == 4096:
        figures.append({"name": name, "impl": "olmo-core-published", "value": float(OLMO_CORE_1B_H100_TOKENS_PER_S),
                        "unit": unit, "better": "higher"})
    return {"benchmark": "trainer_step_gpu", "device": device_name,
            "model": model, "params": cfg.num_params(), "seq_len": seq_len, "batch_size": batch_size,
            "micro_batch_size": micro_batch_size, "steps": steps, "warmup": warmup, "rounds": rounds,
            "compile": compile_, "precision": "bf16 autocast, fp32 weights and AdamW state",
            "dolmino_loss_chunk_size": loss_chunk_size or "default",
            "dolmino_loss_path": loss_path or ("compiled" if compile_ else "eager"), "torch": torch.__version__,
            "flops_per_token": fpt, "peak_bf16_flops": peak, "impls": per_impl, "errors": errors,
            "reference": {"olmo_core_1b_bf16_4k_h100_tokens_per_second_per_gpu": OLMO_CORE_1B_H100_TOKENS_PER_S},
            "figures": figures}


def _time_ms(fn, reps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(median milliseconds of `fn`, peak memory it allocated above what was live, MiB)."""
    for _ in range(warmup):
        fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(reps):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else None
    return statistics.median(times), peak


def loss_layer(n_tokens: int, d_model: int, vocab: int, chunk_sizes: tuple[int, ...], reps: int, warmup: int,
               device: str, compile_: bool, log=print) -> dict:
    """The output layer + cross-entropy + z-loss alone, forward and backward, on one micro-batch.

    What the issue's kernel rule needs: how far trainer.loss's fused, chunked torch version is
    from the fastest the layer can go, before anyone writes a Triton or CUDA kernel for it.
    Under bf16 autocast, fp32 hidden states and weight (as the model gives them), each variant
    runs the layer and its backward to the gradients of both:
    - fused eager / fused compiled: trainer.loss.fused_lm_loss with compiled=False / True (the
      per-chunk softmax and gradient as plain ops / as one torch.compile'd kernel pair), at
      the default chunk for the device and at the chunk sizes asked for;
    - unfused eager: F.linear + trainer.loss.lm_loss, what fused_loss=False runs;
    - unfused compiled: the same under torch.compile (inductor fuses the softmax, z-loss and
      gradient into Triton kernels; the full logits are still materialised);
    - matmul floor: the layer's three bf16 matmuls alone (logits, grad of hidden, grad of
      weight) on preallocated operands: no softmax, no casts, no reductions, so no variant can
      reach it; a kernel could gain at most the gap to it.
    Medians of CUDA-event timings; peak memory above what was live before the call.
    """
    dev = torch.device(device)
    z_weight = TrainConfig().z_loss_weight
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n_tokens, d_model, generator=gen).to(dev).requires_grad_()
    weight = (torch.randn(vocab, d_model, generator=gen) * 0.02).to(dev).requires_grad_()
    labels = torch.randint(0, vocab, (n_tokens,), generator=gen).to(dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16)

    def run_variant(loss_fn):
        def fn():
            hidden.grad = weight.grad = None
            with autocast:
                loss = loss_fn(hidden, weight, labels)
            loss.backward()
            return loss
        return fn

    def unfused(h, w, y):
        return lm_loss(F.linear(h, w), y, z_weight, denominator=float(n_tokens)).loss

    # label -> (function, what it is: fused variants carry their loop and chunk size, which
    # bench/gpu_checks.sh passes on to the step benchmark)
    variants: dict[str, tuple[object, dict]] = {}
    for path in ("eager", "compiled") if compile_ and dev.type == "cuda" else ("eager",):
        compiled = path == "compiled"
        default_rows = min(n_tokens, chunk_rows(vocab, None, torch.bfloat16, device_type=dev.type, compiled=compiled))
        for rows in (None, *(c for c in chunk_sizes if c != default_rows)):
            label = f"fused {path} chunk {default_rows if rows is None else rows}{' (default)' if rows is None else ''}"
            variants[label] = (run_variant(lambda h, w, y, rows=rows, compiled=compiled: fused_lm_loss(
                h, w, y, z_weight, denominator=float(n_tokens), chunk_size=rows, compiled=compiled).loss),
                {"loss_path": path, "chunk": default_rows if rows is None else rows})
    variants["unfused eager"] = (run_variant(unfused), {})
    if compile_:
        variants["unfused compiled"] = (run_variant(torch.compile(unfused)), {})
    results: dict[str, dict] = {}
    reference = None
    for label, (fn, what) in variants.items():
        log(f"[bench_trainer_gpu] loss layer {n_tokens} x {d_model} -> {vocab}: {label}")
        try:
            loss = float(fn().detach())
            ms, peak = _time_ms(fn, reps, warmup, dev)
        except Exception as exc:  # noqa: BLE001 - one variant's failure (memory, compile) must not hide the others
            results[label] = {**what, "error": f"{type(exc).__name__}: "
                                               f"{str(exc).splitlines()[0][:300] if str(exc) else ''}"}
            log(f"[bench_trainer_gpu] loss layer {label} failed: {results[label]['error']}")
            continue
        reference = loss if reference is None else reference
        results[label] = {**what, "ms": round(ms, 3), "peak_mib": None if peak is None else round(peak, 1),
                          "loss": loss}
    hidden.grad = weight.grad = None
    hb, wb = hidden.detach().to(torch.bfloat16), weight.detach().to(torch.bfloat16)
    g = torch.randn(n_tokens, vocab, generator=gen).to(dev, torch.bfloat16)

    def floor():
        torch.mm(hb, wb.t())
        torch.mm(g, wb)
        torch.mm(g.t(), hb)
    floor_ms, _ = _time_ms(floor, reps, warmup, dev)
    flops = 6 * n_tokens * d_model * vocab
    for r in results.values():
        if "ms" in r:
            r["x_floor"] = round(r["ms"] / floor_ms, 3)
            r["tflops"] = round(flops / (r["ms"] * 1e-3) / 1e12, 1)
    return {"benchmark": "loss_layer", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "tokens": n_tokens, "d_model": d_model, "vocab": vocab, "z_loss_weight": z_weight,
            "precision": "bf16 autocast, fp32 hidden and weight", "reps": reps, "warmup": warmup,
            "matmul_floor_ms": round(floor_ms, 3), "matmul_floor_tflops": round(flops / (floor_ms * 1e-3) / 1e12, 1),
            "variants": results,
            "max_loss_difference": max((abs(r["loss"] - reference) for r in results.values() if "loss" in r),
                                       default=None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="olmo2-1b", help="model preset")
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per instance")
    p.add_argument("--batch-size", type=int, default=8, help="instances per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=2, help="instances per forward pass")
    p.add_argument("--steps", type=int, default=10, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per process (compilation happens here)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds of one process per implementation")
    p.add_argument("--impls", default=",".join(PEERS), help="comma-separated: dolmino, transformers, olmo-core")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a worker is killed")
    p.add_argument("--loss-layer", action="store_true",
                   help="time the output layer + loss alone (fused chunk sizes, unfused eager and compiled, "
                        "matmul floor) on one micro-batch of the model, instead of whole steps")
    p.add_argument("--chunk-sizes", default="1024,2048,4096,8192",
                   help="--loss-layer: fused chunk sizes (tokens) to time beside the default")
    p.add_argument("--loss-chunk-size", type=int, default=None,
                   help="dolmino's fused-loss chunk (tokens; default: the trainer's default)")
    p.add_argument("--loss-path", choices=("compiled", "eager"), default=None,
                   help="dolmino's fused-loss chunk loop (default: compiled with --compile, as the trainer)")
    p.add_argument("--dry-run", action="store_true",
                   help="on CPU with a tiny model, seq 32, batch 2, one step, no compile: checks the plumbing only")
    args = p.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    impls = tuple(i.strip() for i in args.impls.split(",") if i.strip())
    unknown = [i for i in impls if i not in PEERS]
    if unknown:
        p.error(f"unknown implementation(s) {unknown}; choose from {PEERS}")
    if args.loss_layer:
        cfg = ModelConfig.preset("tiny" if args.dry_run else args.model)
        cuda = torch.cuda.is_available() and not args.dry_run
        if not cuda and not args.dry_run:
            print(json.dumps({"benchmark": "loss_layer", "notes": ["no CUDA device: use --dry-run on CPU"]}))
            return 2
        chunks = tuple(int(c) for c in args.chunk_sizes.split(",") if c.strip())
        tokens = 64 if args.dry_run else args.micro_batch_size * args.seq_len
        result = loss_layer(tokens, cfg.d_model, cfg.padded_vocab_size, (16,) if args.dry_run else chunks,
                            3 if args.dry_run else 20, 1 if args.dry_run else 5, "cuda" if cuda else "cpu",
                            cuda and args.compile, log=log)
        print(json.dumps(result, indent=2))
        return 0
    if args.dry_run:
        result = run("tiny", 32, 2, 1, 1, 0, 1, impls, "cpu", False, args.timeout, log=log,
                     loss_chunk_size=args.loss_chunk_size, loss_path=args.loss_path)
    elif not torch.cuda.is_available():
        print(json.dumps({"benchmark": "trainer_step_gpu", "figures": [],
                          "notes": ["no CUDA device: the OLMo2-1B GPU figures are missing (use --dry-run to check "
                                    "the plumbing on CPU)"]}, indent=2))
        return 2
    else:
        result = run(args.model, args.seq_len, args.batch_size, args.micro_batch_size, args.steps, args.warmup,
                     args.rounds, impls, "cuda", args.compile, args.timeout, log=log,
                     loss_chunk_size=args.loss_chunk_size, loss_path=args.loss_path)
    print(json.dumps(result, indent=2))
    return 0 if result["impls"] else 1


if __name__ == "__main__":
    sys.exit(main())
