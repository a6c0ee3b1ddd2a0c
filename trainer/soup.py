"""Model soup: average the weights of several checkpoints (OLMo 2's final models).

OLMo 2 7B is the average of three mid-training runs on the same 50B-token Dolmino mix with
different data orders (13B: three 100B runs plus one 300B run). The runs share one
starting point, so their weights lie in one basin and the uniform average is a better model
than each ingredient. Averaging is done in float64 and cast back to each tensor's dtype, so
the result does not depend on the order the checkpoints are listed in (up to that cast).

    python -m trainer.soup OUT_DIR CKPT1 CKPT2 [CKPT3 ...]

OUT_DIR gets `model.pt` and `config.json` (the first ingredient's config plus the list of
ingredients); it loads with trainer.checkpoint.load_model_weights and exports with
trainer.export_hf like any checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from trainer.checkpoint import CONFIG_FILE, MODEL_FILE, load_model_weights, resolve_checkpoint


def average_state_dicts(state_dicts: list[dict]) -> dict:
    if not state_dicts:
        raise ValueError("need at least one checkpoint to average")
    keys = set(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd) != keys:
            missing, extra = sorted(keys - set(sd)), sorted(set(sd) - keys)
            raise ValueError(f"checkpoint {i} has different tensors (missing {missing[:5]}, extra {extra[:5]})")
    out = {}
    for key in state_dicts[0]:
        ref = state_dicts[0][key]
        for i, sd in enumerate(state_dicts[1:], start=1):
            if sd[key].shape != ref.shape:
                raise ValueError(f"{key}: shape {tuple(sd[key].shape)} in checkpoint {i} != {tuple(ref.shape)}")
        if not ref.is_floating_point():
            out[key] = ref.clone()
            continue
        total = torch.zeros(ref.shape, dtype=torch.float64)
        for sd in state_dicts:
            total += sd[key].to(torch.float64)
        out[key] = (total / len(state_dicts)).to(ref.dtype)
    return out


def soup(out_dir: str | Path, checkpoints: list[str | Path]) -> Path:
    """Average the model weights of `checkpoints` into `out_dir` (written atomically)."""
    if len(checkpoints) < 2:
        raise ValueError("a soup needs at least two checkpoints")
    paths = [resolve_checkpoint(c) for c in checkpoints]
    loaded = [load_model_weights(p) for p in paths]
    model_cfgs = [cfg.get("model") for _, cfg in loaded]
    if any(m != model_cfgs[0] for m in model_cfgs[1:]):
        raise ValueError("checkpoints have different model configs; only runs of one architecture can be averaged")
    averaged = average_state_dicts([sd for sd, _ in loaded])
    config = dict(loaded[0][1])
    config["soup"] = [str(p) for p in paths]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{MODEL_FILE}.tmp{os.getpid()}"
    torch.save(averaged, tmp)
    os.replace(tmp, out_dir / MODEL_FILE)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.soup", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output directory for the averaged model")
    parser.add_argument("checkpoints", nargs="+", help="checkpoint directories (or save dirs: their latest)")
    args = parser.parse_args(argv)
    try:
        out = soup(args.out, args.checkpoints)
    except (ValueError, FileNotFoundError) as exc:
        print(f"soup: {exc}", file=sys.stderr)
        return 2
    print(f"averaged {len(args.checkpoints)} checkpoints into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
