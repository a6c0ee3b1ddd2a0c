"""Command line: train an OLMo 2 model on a built mix.

    python -m trainer.run --mix manifests/demo.json --model 20M --steps 30 --seq-len 256 --batch-size 8
    python -m trainer.run --data build/mixes/demo --model tiny --steps 3 --save-dir /tmp/run
    python -m trainer.run --data DIR --resume                # continue from --save-dir's latest checkpoint
    torchrun --nproc_per_node 8 -m trainer.run --data DIR --model 1B --seq-len 4096 --batch-size 512

`--mix` reads the manifest's "output" directory (relative paths resolve against the
manifest's own directory); the mix must have been built first with
`spark-submit dolmino/build_mix.py --manifest <path>`. Mid-training (annealing) is
`--schedule linear_to_zero --init-from <pretrained ckpt> --lr <the LR pretraining ended on>`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from trainer.config import MODEL_PRESETS, RECIPES, SCHEDULES, ModelConfig, RunConfig, TrainConfig
from trainer.data import DataError, discover_token_files
from trainer.distributed import init_distributed, shutdown

_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(text: str) -> int:
    """'4T', '50B', '2.5M', '1000' -> int."""
    text = text.strip().upper()
    scale = _SUFFIXES.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _SUFFIXES else text
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (use e.g. 4T, 50B, 100M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"count must be positive, got {text!r}")
    return int(value)


def mix_output_dir(manifest_path: str | Path) -> Path:
    """The built mix directory a manifest names; exits with a clear message if it is not built."""
    manifest_path = Path(manifest_path)
    try:
        data = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"trainer.run: manifest {manifest_path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"trainer.run: manifest {manifest_path} is not valid JSON: {exc}") from None
    output = data.get("output") if isinstance(data, dict) else None
    if not isinstance(output, str) or not output:
        raise SystemExit(f"trainer.run: manifest {manifest_path} has no \"output\" directory; pass --data instead")
    if "://" in output:
        raise SystemExit(f"trainer.run: the mix output {output} is remote; copy it locally and pass --data")
    out = Path(output)
    if not out.is_absolute():
        out = (manifest_path.resolve().parent / out).resolve()
    if not out.is_dir() or not discover_token_files(out):
        raise SystemExit(f"trainer.run: no token files (*.npy) in {out}; build the mix first:\n"
                         f"  spark-submit dolmino/build_mix.py --manifest {manifest_path}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="the paper's model + batch + LR schedule as defaults (explicit flags still win)")
    src.add_argument("--mix", help="manifest JSON whose \"output\" directory holds the built mix")
    src.add_argument("--data", nargs="+", help="built mix directory (or token files)")
    p.add_argument("--model", default="20M", choices=sorted(MODEL_PRESETS), help="model preset (default 20M)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps to run (total, counting resumed ones)")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=8, help="global batch size in instances of --seq-len tokens")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="instances per forward pass per rank (default: the whole per-rank batch)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="default: min(2000, steps // 10) for cosine, 0 for linear_to_zero")
    p.add_argument("--horizon-tokens", type=parse_count, default=None,
                   help="schedule length in tokens (e.g. 5T); training may stop earlier (default: --steps)")
    p.add_argument("--final-lr-fraction", type=float, default=0.1, help="cosine floor as a fraction of the peak")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--z-loss-weight", type=float, default=1e-5)
    p.add_argument("--fused-loss", action=argparse.BooleanOptionalAction, default=True,
                   help="output layer + cross-entropy + z-loss as one chunked function that never holds the "
                        "tokens x vocab logits (default: on); --no-fused-loss: lm_head, then the loss on full logits")
    p.add_argument("--loss-chunk-size", type=int, default=None,
                   help="tokens per chunk of the fused loss (default: as many as fit 256 MiB of logits + softmax)")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1124)
    p.add_argument("--data-seed", type=int, default=None, help="data order seed (default: --seed)")
    p.add_argument("--save-dir", default="build/checkpoints/run")
    p.add_argument("--save-interval", type=int, default=None, help="also save every N steps")
    p.add_argument("--keep-last", type=int, default=None, help="keep only the newest N checkpoints")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from a checkpoint dir (no value: the latest in --save-dir)")
    p.add_argument("--init-from", default=None,
                   help="start from these weights (fresh optimizer, step 0), e.g. an anneal from pretraining")
    p.add_argument("--metrics-interval", type=int, default=10, help="copy metrics to the host and print every N")
    p.add_argument("--gc-interval", type=int, default=100, help="run Python's gc every N steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile each block (default: on with CUDA, off on CPU)")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    p.add_argument("--no-repetition-mask", action="store_true",
                   help="do not mask repeated n-gram spans out of the loss")
    p.add_argument("--sync-debug", action="store_true", help="warn on every host-device sync (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def run_config_from_args(args: argparse.Namespace, data_paths: list[str], world_size: int,
                         device: torch.device) -> RunConfig:
    model = ModelConfig.preset(args.model)
    if args.seq_len > model.max_seq_len:
        model = ModelConfig.preset(args.model, max_seq_len=args.seq_len)
    warmup = args.warmup_steps
    if warmup is None:
        warmup = 0 if args.schedule == "linear_to_zero" else min(2000, args.steps // 10)
    per_rank = args.batch_size // max(world_size, 1)
    train = TrainConfig(
        seq_len=args.seq_len, global_batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size or max(per_rank, 1), max_steps=args.steps, lr=args.lr,
        warmup_steps=warmup, schedule=args.schedule, final_lr_fraction=args.final_lr_fraction,
        horizon_tokens=args.horizon_tokens, weight_decay=args.weight_decay, z_loss_weight=args.z_loss_weight,
        fused_loss=args.fused_loss, loss_chunk_size=args.loss_chunk_size,
        max_grad_norm=args.max_grad_norm, seed=args.seed, data_seed=args.data_seed,
        save_interval=args.save_interval, metrics_interval=args.metrics_interval, gc_interval=args.gc_interval,
        compile=(device.type == "cuda") if args.compile is None else args.compile, fsdp=args.fsdp,
        mask_repetitions=not args.no_repetition_mask)
    return RunConfig(model=model, train=train, data_paths=data_paths)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; a --recipe supplies defaults that explicit flags override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.recipe:
        parser.set_defaults(**RECIPES[args.recipe])
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mix:
        data_paths = [str(mix_output_dir(args.mix))]
    else:
        data_paths = [str(Path(d).resolve()) for d in args.data]
    env = init_distributed(args.device)
    log = print if env.is_main else (lambda _msg: None)
    finished = False
    try:
        from trainer.checkpoint import load_model_weights
        from trainer.train import Trainer

        run = run_config_from_args(args, data_paths, env.world_size, env.device)
        if args.sync_debug and env.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        resume = None
        if args.resume is not None:
            resume = Path(args.save_dir) if args.resume == "latest" else Path(args.resume)
        init_state = None
        if args.init_from and resume is None:
            init_state, init_cfg = load_model_weights(args.init_from)  # checked before building anything big
            if init_cfg.get("model") != run.model.to_dict():
                raise ValueError(f"--init-from {args.init_from} has a different model config than --model "
                                 f"{args.model}")
        trainer = Trainer(run, env, args.save_dir, resume=resume, log=log, keep_last=args.keep_last)
        if init_state is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(trainer.model, init_state, options=StateDictOptions(full_state_dict=True))
            log(f"initialised weights from {args.init_from}")
        tc = run.train
        log(f"model {args.model}: {run.model.num_params():,} params ({run.model.num_params(False):,} without the "
            f"input embedding) on {env.device} x{env.world_size} | data {len(trainer.dataset):,} instances of "
            f"{tc.seq_len} tokens from {len(trainer.dataset.files)} file(s) | batch {tc.global_batch_size} x "
            f"{tc.seq_len} = {tc.tokens_per_step:,} tokens/step, accumulation {trainer.accum} | {tc.schedule} "
            f"lr {tc.lr:g}, warmup {tc.warmup_steps}, horizon {tc.horizon_steps} steps")
        result = trainer.fit()
        stats = result.data_stats
        if stats.get("labels"):
            log(f"data: {stats['instances']:,} instances, {stats['targets']:,} of {stats['labels']:,} labels trained, "
                f"{stats['masked_by_label_mask']:,} masked by label mask, {stats['masked_by_repetition']:,} masked "
                f"as repeated n-grams")
        if result.end_step > result.start_step or result.checkpoint:
            log(f"checkpoint: {result.checkpoint}")
        finished = True
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"trainer.run: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown(env, finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
