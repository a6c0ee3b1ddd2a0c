"""Export a checkpoint to a Hugging Face `Olmo2ForCausalLM` directory.

    python -m trainer.export_hf CKPT OUT_DIR [--dtype bfloat16]

Writes `config.json` and `model.safetensors` with transformers' Olmo2 parameter names, so
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` loads it (transformers >= 4.47) and gives
the same logits as trainer.model.OLMo2. The layouts already agree (q/k norms over the whole
projection, rotate-half RoPE, post-attention / post-feedforward norms), so export is a
rename; the vocabulary stays padded (100352), as in the released OLMo 2 checkpoints.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from trainer.checkpoint import load_model_weights
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


def export(checkpoint: str | Path, out_dir: str | Path, dtype: str | None = None) -> Path:
    from safetensors.torch import save_file

    state_dict, config = load_model_weights(checkpoint)
    cfg = ModelConfig.from_dict(config["model"])
    torch_dtype = getattr(torch, dtype) if dtype else next(iter(state_dict.values())).dtype
    tensors = to_hf_state_dict(state_dict, cfg, torch_dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config(cfg, torch_dtype), indent=2))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.export_hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint directory, soup directory, or a save dir (its latest)")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="cast the weights (default: keep the checkpoint's dtype)")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out_dir, args.dtype)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"export_hf: {exc}", file=sys.stderr)
        return 2
    print(f"wrote Olmo2ForCausalLM to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
