"""Benchmark the trainer's step throughput; prints one JSON object.

    python bench/bench_trainer.py                       # CPU: the 20M model, fp32
    python bench/bench_trainer.py --model 1B --seq-len 4096 --batch-size 4 --micro-batch-size 2   # GPU

Runs the real training step (data loader on a memmap of random token ids, forward,
cross-entropy + z-loss, backward, clipping, AdamW) through trainer.train.Trainer, times
`--steps` steps after `--warmup` untimed ones (compilation, allocator warm-up) with a
device synchronisation on both ends, and reports tokens/s, model FLOP/s and, on a GPU whose
peak is known, MFU. The reference point on a GPU is OLMo-core's published figure for a
~1B OLMo 2 model in bf16 at 4096 context on H100s: about 55k tokens/s per GPU.

The "raw" figure is a ceiling, not a competitor: the same OLMo2 module stepped by the
smallest loop PyTorch allows (one in-memory batch, F.cross_entropy, clipping, AdamW), with
no data loader, z-loss, masking or metrics. dolmino / raw shows what the trainer's own
machinery costs. "figures" (for bench/run.py) holds tokens/s per CPU core on CPU, tokens/s
per GPU and MFU on a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainer.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from trainer.distributed import DistEnv, pick_device  # noqa: E402
from trainer.model import OLMo2  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.throughput import mfu, peak_flops  # noqa: E402
from trainer.train import Trainer  # noqa: E402

OLMO_CORE_1B_H100_TOKENS_PER_S = 55_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_tokens_per_second(cfg: ModelConfig, seq_len: int, batch_size: int, micro_batch_size: int, steps: int,
                          warmup: int, dev: torch.device, compile_: bool) -> float:
    """The ceiling: the same model and optimizer in a bare loop over one in-memory batch."""
    torch.manual_seed(0)
    model = OLMo2(cfg).to(dev)
    if compile_:
        for block in model.blocks:
            block.compile()
    opt = build_optimizer(model, TrainConfig(seq_len=seq_len, global_batch_size=batch_size,
                                             micro_batch_size=micro_batch_size))
    ids = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), device=dev)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    accum = batch_size // micro_batch_size

    def step():
        for i in range(accum):
            sl = slice(i * micro_batch_size, (i + 1) * micro_batch_size)
            with autocast:
                logits = model(inputs[sl])
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels[sl].flatten()) / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return steps * batch_size * seq_len / (time.perf_counter() - t0)


def figures(result: dict, raw_tok_s: float | None, dev: torch.device) -> list[dict]:
    """bench/run.py's figures: per-core tokens/s on CPU, per-GPU tokens/s and MFU on a GPU."""
    model, seq = result["model"], result["seq_len"]
    if dev.type == "cuda":
        name, unit, per = f"trainer_step_{model}_seq{seq}_gpu", "tokens/s/GPU", 1
    else:
        name, unit, per = f"trainer_step_{model}_seq{seq}_cpu", "tokens/s/core", result["threads"]
    out = [{"name": name, "impl": "dolmino", "value": result["tokens_per_second"] / per, "unit": unit,
            "better": "higher"}]
    if raw_tok_s is not None:
        out.append({"name": name, "impl": "raw", "value": raw_tok_s / per, "unit": unit, "better": "higher"})
    if dev.type == "cuda":
        if model == "1B" and seq == 4096 and "H100" in result["device"]:
            out.append({"name": name, "impl": "olmo-core-published", "value": float(OLMO_CORE_1B_H100_TOKENS_PER_S),
                        "unit": unit, "better": "higher"})
        if result["mfu"] is not None:
            out.append({"name": f"trainer_mfu_{model}_seq{seq}_gpu", "impl": "dolmino", "value": result["mfu"],
                        "unit": "fraction of peak bf16", "better": "higher"})
    return out


def bench(model: str, seq_len: int, batch_size: int, micro_batch_size: int | None, steps: int, warmup: int,
          device: str, compile_: bool | None, raw: bool = True) -> dict:
    dev = pick_device(device)
    cfg = ModelConfig.preset(model, max_seq_len=max(seq_len, ModelConfig.preset(model).max_seq_len))
    n_instances = batch_size * (steps + warmup + 2)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        rng.integers(0, cfg.vocab_size, n_instances * seq_len).astype("<u4").tofile(data / "part-00000.npy")
        train = TrainConfig(seq_len=seq_len, global_batch_size=batch_size,
                            micro_batch_size=micro_batch_size or batch_size, max_steps=steps + warmup,
                            warmup_steps=1, compile=(dev.type == "cuda") if compile_ is None else compile_,
                            metrics_interval=steps + warmup)
        env = DistEnv(0, 0, 1, dev)
        trainer = Trainer(RunConfig(model=cfg, train=train, data_paths=[str(data)]), env, Path(tmp) / "ckpt",
                          log=lambda _m: None)
        sums = torch.zeros(4, device=dev)
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step(sums)
        _sync(dev)
        warm_s = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(sums)
        _sync(dev)
        elapsed = time.perf_counter() - t0
        loss = sums[0].item() / (steps + warmup)
        trainer.loader.close()
        del trainer, sums  # free the trainer's model and optimizer before the raw loop builds its own
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    tokens = steps * batch_size * seq_len
    tok_s = tokens / elapsed
    fpt = cfg.flops_per_token(seq_len)
    peak = peak_flops(dev)
    result = {
        "benchmark": "trainer_step",
        "device": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        "model": model,
        "params": cfg.num_params(),
        "params_non_embedding": cfg.num_params(include_embedding=False),
        "precision": "bf16 autocast" if dev.type == "cuda" else "fp32",
        "compile": train.compile,
        "seq_len": seq_len,
        "global_batch_size": batch_size,
        "micro_batch_size": train.micro_batch_size,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "warmup_seconds": round(warm_s, 3),
        "seconds_per_step": round(elapsed / steps, 4),
        "tokens_per_second": round(tok_s, 1),
        "flops_per_token": fpt,
        "model_tflops_per_second": round(tok_s * fpt / 1e12, 4),
        "mfu": None if peak is None else round(mfu(tok_s, fpt, peak), 4),
        "peak_bf16_flops": peak,
        "mean_loss": round(loss, 4),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        result["reference"] = {"olmo_core_1b_bf16_4k_h100_tokens_per_second_per_gpu": OLMO_CORE_1B_H100_TOKENS_PER_S,
                               "ratio": round(tok_s / OLMO_CORE_1B_H100_TOKENS_PER_S, 3)}
    raw_tok_s = None
    if raw:
        raw_tok_s = raw_tokens_per_second(cfg, seq_len, batch_size, train.micro_batch_size, steps, warmup, dev,
                                          train.compile)
        result["raw_tokens_per_second"] = round(raw_tok_s, 1)
        result["trainer_vs_raw"] = round(tok_s / raw_tok_s, 3)
    result["figures"] = figures(result, raw_tok_s, dev)
    return result


def main(argv: list[str] | None = None) -> int:
    on_gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="1B" if on_gpu else "20M")
    p.add_argument("--seq-len", type=int, default=4096 if on_gpu else 256)
    p.add_argument("--batch-size", type=int, default=8 if on_gpu else 4)
    p.add_argument("--micro-batch-size", type=int, default=2 if on_gpu else None)
    p.add_argument("--steps", type=int, default=10 if on_gpu else 2)
    p.add_argument("--warmup", type=int, default=3 if on_gpu else 1)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--no-raw", action="store_true", help="skip the bare-loop ceiling")
    p.add_argument("--quick", action="store_true", help="shorter run (CPU: seq 128, batch 2, 1 timed step)")
    args = p.parse_args(argv)
    if args.quick and not on_gpu:
        args.seq_len, args.batch_size, args.steps, args.warmup = min(args.seq_len, 128), 2, 1, 1
    elif args.quick:
        args.steps, args.warmup = min(args.steps, 5), min(args.warmup, 2)
    print(json.dumps(bench(args.model, args.seq_len, args.batch_size, args.micro_batch_size, args.steps, args.warmup,
                           args.device, args.compile, raw=not args.no_raw), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
