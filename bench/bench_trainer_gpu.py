"""OLMo2-1B on one GPU: dolmino, transformers and OLMo-core in bf16 with torch.compile and fused AdamW.

    python bench/bench_trainer_gpu.py                 # needs CUDA; a few minutes on one H100 / H200
    python bench/bench_trainer_gpu.py --dry-run       # CPU: a tiny model, no compile: checks the plumbing

Same protocol as bench/bench_trainer.py's CPU peers (one process per implementation,
bench/anchor_scripts/trainer_step.py, same initial weights, same batch, OLMo-core from
bench/.venvs/olmo-core sharing this torch), on the GPU: bf16 autocast with fp32 weights and
optimizer state, each model compiled as its project compiles it (dolmino: each block, as the
trainer does with --compile; transformers: torch.compile of the whole model, as the HF
Trainer's torch_compile=True; OLMo-core: Transformer.apply_compile(), per block), torch's
fused AdamW for all three, clipping at 1.0. Reported per implementation: tokens/s/GPU,
step time, peak allocated memory and MFU (6 x matmul parameters + attention FLOPs per
token, trainer.config.ModelConfig.flops_per_token, over the GPU's dense bf16 peak), next to
OLMo-core's published ~55k tokens/s/GPU for an OLMo 2 1B at 4096 context on H100s (their
multi-GPU FSDP run with fused kernels; one GPU here, so the comparison is indicative).

The GPU figure has not been measured yet: the machines this project has run on have no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.bench_trainer import (OLMO_CORE_1B_H100_TOKENS_PER_S, PEERS, _base_spec, is_olmo2_1b,  # noqa: E402
                                 run_interleaved)
from trainer.config import ModelConfig  # noqa: E402
from trainer.throughput import mfu, peak_flops  # noqa: E402


def run(model: str, seq_len: int, batch_size: int, micro_batch_size: int, steps: int, warmup: int, rounds: int,
        impls: tuple[str, ...], device: str, compile_: bool, timeout_s: float, log=print) -> dict:
    dev = torch.device(device)
    cfg = ModelConfig.preset(model, max_seq_len=max(seq_len, ModelConfig.preset(model).max_seq_len))

    def spec_for(impl: str, weights: Path, batch: Path) -> dict:
        spec = _base_spec(impl, cfg, weights, batch, micro_batch_size, steps, warmup, torch.get_num_threads())
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
    if dev.type == "cuda" and is_olmo2_1b(model) and seq_len == 4096:
        figures.append({"name": name, "impl": "olmo-core-published", "value": float(OLMO_CORE_1B_H100_TOKENS_PER_S),
                        "unit": unit, "better": "higher"})
    return {"benchmark": "trainer_step_gpu", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "model": model, "params": cfg.num_params(), "seq_len": seq_len, "batch_size": batch_size,
            "micro_batch_size": micro_batch_size, "steps": steps, "warmup": warmup, "rounds": rounds,
            "compile": compile_, "precision": "bf16 autocast, fp32 weights and AdamW state",
            "flops_per_token": fpt, "peak_bf16_flops": peak, "impls": per_impl, "errors": errors,
            "reference": {"olmo_core_1b_bf16_4k_h100_tokens_per_second_per_gpu": OLMO_CORE_1B_H100_TOKENS_PER_S},
            "figures": figures}


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
    p.add_argument("--dry-run", action="store_true",
                   help="on CPU with a tiny model, seq 32, batch 2, one step, no compile: checks the plumbing only")
    args = p.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    impls = tuple(i.strip() for i in args.impls.split(",") if i.strip())
    unknown = [i for i in impls if i not in PEERS]
    if unknown:
        p.error(f"unknown implementation(s) {unknown}; choose from {PEERS}")
    if args.dry_run:
        result = run("tiny", 32, 2, 1, 1, 0, 1, impls, "cpu", False, args.timeout, log=log)
    elif not torch.cuda.is_available():
        print(json.dumps({"benchmark": "trainer_step_gpu", "figures": [],
                          "notes": ["no CUDA device: the OLMo2-1B GPU figures are missing (use --dry-run to check "
                                    "the plumbing on CPU)"]}, indent=2))
        return 2
    else:
        result = run(args.model, args.seq_len, args.batch_size, args.micro_batch_size, args.steps, args.warmup,
                     args.rounds, impls, "cuda", args.compile, args.timeout, log=log)
    print(json.dumps(result, indent=2))
    return 0 if result["impls"] else 1


if __name__ == "__main__":
    sys.exit(main())
