"""Export a checkpoint to a Hugging Face `Olmo2ForCausalLM` directory.

    python -m trainer.export_hf CKPT OUT_DIR [--dtype bfloat16]

Writes `config.json` and `model.safetensors` with transformers' Olmo2 parameter names, so
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` loads it (transformers >= 4.47) and gives
the same logits as trainer.model.OLMo2. The layouts already agree (q/k norms over the whole
projection, rotate-half RoPE, post-attention / post-feedforward norms), so export is a
rename; the vocabulary stays padded (100352), as in the released OLMo 2 checkpoints.

CKPT is any format trainer.weights reads (a trainer checkpoint or soup, or an OLMo-core DCP
checkpoint: this converts OLMo-core OLMo 2 checkpoints to Hugging Face). Tensors are read and
written one at a time (`write_safetensors` streams the file), so exporting a 7B model needs
about one tensor of memory beyond the memory-mapped input.

OUT_DIR may be an existing Hugging Face directory: its model is replaced, as save_pretrained
replaces it. A directory holding a trainer checkpoint or run, or a soup's own `hf/`, is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterable

import torch

from dolmino.s3 import local_path
from trainer.cli import HelpFormatter
from trainer.config import ModelConfig

_LAYER_NAMES = {
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "attn_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "mlp_norm.weight": "post_feedforward_layernorm.weight",
}
_TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def hf_name(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    match = _BLOCK.match(name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    raise KeyError(f"no Hugging Face name for parameter {name!r}")


def hf_config(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    def in_vocab(token_id: int | None) -> int | None:  # small test vocabularies lack the dolma2 specials
        return token_id if token_id is not None and 0 <= token_id < cfg.padded_vocab_size else None

    return {
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": cfg.norm_eps,
        "vocab_size": cfg.padded_vocab_size,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        "pad_token_id": in_vocab(cfg.pad_token_id),
        "eos_token_id": in_vocab(cfg.eos_token_id),
        "bos_token_id": None,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def to_hf_state_dict(state_dict: dict, cfg: ModelConfig, dtype: torch.dtype | None = None) -> dict:
    out = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu")
        if dtype is not None:
            t = t.to(dtype)
        out[hf_name(name)] = t.contiguous().clone()
    expected = 3 + cfg.n_layers * len(_LAYER_NAMES)
    if len(out) != expected:
        raise ValueError(f"checkpoint has {len(out)} tensors, an OLMo 2 model of this shape has {expected}")
    return out


_SAFETENSORS_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def write_safetensors(path: str | Path, specs: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
                      get: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write a .safetensors file tensor by tensor: `specs` lists (name, shape, dtype) so the
    header can be written first, then `get(name)` supplies each tensor in turn. Unlike
    safetensors.torch.save_file, which serialises every tensor to bytes before writing,
    memory stays at one tensor. Written under a temporary name and renamed into place; a write
    that fails (a damaged source tensor, a full disk) removes its partial file, which was left
    beside the output, up to a model's size (found by a tester)."""
    specs = list(specs)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in specs:
        if dtype not in _SAFETENSORS_DTYPE:
            raise ValueError(f"{name}: dtype {dtype} has no safetensors code")
        nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little"))
            fh.write(raw)
            for name, shape, dtype in specs:
                t = get(name).detach().to("cpu")
                if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                    raise ValueError(f"{name}: got {tuple(t.shape)} {t.dtype}, the header says {tuple(shape)} {dtype}")
                t = t.contiguous()
                fh.write(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# Weight files of another model that a directory may hold: transformers' shards and indexes.
_OTHER_WEIGHTS = re.compile(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?")


def _remove_other_weights(out_dir: Path) -> None:
    """Remove the weight files beside the new model.safetensors, as save_pretrained does: an
    export over a sharded model left its index and shards, which this trainer's importer reads
    first while transformers loads model.safetensors, so the two saw different models (found
    by a tester). And the replaced model's generation_config.json: transformers' generate()
    stopped at its EOS, not at the new config.json's (a tester); a soup copies its source's."""
    for path in out_dir.iterdir():
        other = path.name != "model.safetensors" and _OTHER_WEIGHTS.fullmatch(path.name)
        if (other or path.name == "generation_config.json") and path.is_file():
            path.unlink()


def write_hf_model(out_dir: str | Path, cfg: ModelConfig, names: list[str], get: Callable[[str], torch.Tensor],
                   dtype: torch.dtype, config: dict | None = None) -> Path:
    """An Olmo2ForCausalLM directory from this trainer's tensors, `get(name)` one at a time
    (cast to `dtype` here). `config` replaces the generated config.json (e.g. a source HF
    directory's own, to keep its token ids)."""
    from trainer.weights import expected_shapes

    shapes = expected_shapes(cfg)
    if sorted(names) != sorted(shapes):
        missing, extra = sorted(set(shapes) - set(names)), sorted(set(names) - set(shapes))
        raise ValueError(f"tensors do not match an OLMo 2 model of this shape: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    out_dir = Path(out_dir)
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    by_hf = {hf_name(n): n for n in names}
    specs = [(hf_name(n), shapes[n], dtype) for n in names]
    try:
        write_safetensors(out_dir / "model.safetensors", specs, lambda key: get(by_hf[key]).to(dtype))
    except BaseException:
        if made:  # a failed export (its partial file is removed) left an empty OUT_DIR behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    _remove_other_weights(out_dir)
    config = dict(config) if config is not None else hf_config(cfg, dtype)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    if "dtype" in config:  # transformers >= 5 writes this name
        config["dtype"] = config["torch_dtype"]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def _check_not_a_soups_hf(out: Path) -> None:
    """Refuse a soup's own hf/ (its parent holds model.pt and a config.json with a "soup" entry):
    an export there left the soup's model.pt and hf/ holding different models (found by a tester)."""
    from trainer.checkpoint import CONFIG_FILE, MODEL_FILE

    parent = out.resolve().parent
    if not (parent / MODEL_FILE).is_file():
        return
    try:
        config = json.loads((parent / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return
    if isinstance(config, dict) and "soup" in config:
        raise ValueError(f"{out} is the Hugging Face directory of the soup {parent}, written with it; export into a "
                         f"directory of its own")


def export(checkpoint: str | Path, out_dir: str | Path, dtype: str | None = None) -> Path:
    from trainer.weights import WeightReader, inspect_checkpoint

    info = inspect_checkpoint(checkpoint)
    if info.model is None:
        # Only an OLMo-core checkpoint whose shape is no preset's gets here, so `trainer.run --init-from
        # --model` cannot name one either: the heads can only come from OLMo-core's own config.
        raise ValueError(f"{info.describe()} does not say its number of attention heads and no preset has its "
                         f"shape; copy OLMo-core's experiment config.json (from the run's save folder, it gives "
                         f"model.block.attention.n_heads) into the folder that holds the stepN directory")
    from trainer.checkpoint import check_output_dir

    out = Path(out_dir)
    if (out / "model.pt").exists():  # a soup's or a checkpoint's: the HF config.json would replace its own (a reviewer)
        raise ValueError(f"{out} holds a trainer checkpoint or run (model.pt); export into a directory of its own "
                         f"(e.g. {out.parent / (out.name + '-hf')})")
    check_output_dir(out, "the export")
    _check_not_a_soups_hf(out)
    torch_dtype = getattr(torch, dtype) if dtype else info.dtype
    with WeightReader(info) as reader:
        def finite(name: str) -> torch.Tensor:
            """A diverged run's NaN weights were exported without a word, as a model that gives NaN
            logits; eval and soup refuse them (found by a tester)."""
            tensor = reader.get(name)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{info.describe()}: weight {name} holds NaN or inf (a diverged run, or a damaged "
                                 f"file); export a checkpoint from before it diverged")
            return tensor

        return write_hf_model(out_dir, info.model, reader.names(), finite, torch_dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.export_hf", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", type=local_path,
                        help="checkpoint or soup directory, a save dir (its latest), or an OLMo-core DCP checkpoint")
    parser.add_argument("out_dir", type=local_path, help="the Hugging Face directory to write")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="cast the weights (default: keep the checkpoint's dtype)")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out_dir, args.dtype)
    except (OSError, KeyError, ValueError) as exc:  # OSError: e.g. OUT_DIR cannot be written
        print(f"export_hf: {exc}", file=sys.stderr)
        return 2
    print(f"wrote Olmo2ForCausalLM to {out}")
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
