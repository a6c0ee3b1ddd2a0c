"""Export a checkpoint to a Hugging Face `Olmo2ForCausalLM` directory.

    python -m trainer.export_hf CKPT OUT_DIR [--dtype bfloat16] [--max-shard-size 5GB]

Writes `config.json` and `model.safetensors` with transformers' Olmo2 parameter names, so
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` loads it (transformers >= 4.47) and gives
the same logits as trainer.model.OLMo2. The layouts already agree (q/k norms over the whole
projection, rotate-half RoPE, post-attention / post-feedforward norms), so export is a
rename; the vocabulary stays padded (100352), as in the released OLMo 2 checkpoints. Weights
larger than --max-shard-size are sharded as save_pretrained shards them, into
`model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`: a 13B fp32 model in one
file (~55 GB) is over the Hugging Face Hub's 50 GB per-file limit.

CKPT is any format trainer.weights reads (a trainer checkpoint or soup, a Hugging Face directory,
whose own config.json is kept with its token ids, or an OLMo-core DCP checkpoint: this converts
OLMo-core OLMo 2 checkpoints to Hugging Face). Tensors are read and
written one at a time (`write_safetensors` streams the file), so exporting a 7B model needs
about one tensor of memory beyond the memory-mapped input.

The tokenizer the checkpoint was trained with goes beside the model (tokenizer.json,
tokenizer_config.json, special_tokens_map.json), so that `AutoTokenizer.from_pretrained(OUT_DIR)`
loads it as it loads a released OLMo 2 directory: for a trainer checkpoint the tokenizer.json its
config.json records (what trainer.run read from its data's builds, so that a checkpoint copied
without its mix still says), else its data's builds (report.json tokenizer_sha256: the packaged
dolma2 file, with the releases' GPT2Tokenizer config, no BOS), an HF source's own files, a soup's,
or the dolma2 tokenizer that an OLMo-core experiment config names; data built with "control_tokens":
"literal" gets split_special_tokens, so that control-token strings in a prompt encode as text, as the
build encoded them. Where the checkpoint does not
say (an older one whose data is not here, a build from before tokenizer_sha256, another
tokenizer.json moved or changed since), one line says so and none are written.

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

from dolmino.argtypes import byte_size
from dolmino.s3 import local_path
from trainer.cli import HelpFormatter
from trainer.config import ModelConfig
from trainer.distributed import one_process_refusal
from trainer.tokenizer_files import checkpoint_tokenizer, no_tokenizer_note, write_tokenizer

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
        nbytes = _nbytes(shape, dtype)
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
HF_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # transformers' save_pretrained default, "5GB"


def parse_size(text: str) -> int:
    """Bytes from a size as transformers' max_shard_size takes it (5GB: 10^9, 5GiB: 2^30, 500MB, or
    bytes), and as `dolmino build --task-size` does (500M, 1.5GB; `dolmino.argtypes.byte_size`)."""
    try:
        return byte_size(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; give a positive number of bytes or one with a unit, e.g. 5GB, "
                         f"500MB or 2GiB") from None


def _shard(specs: list[tuple[str, tuple[int, ...], torch.dtype]], max_size: int) -> list[list]:
    """Group tensors, in order, into shards as huggingface_hub's split_torch_state_dict_into_shards
    (save_pretrained) does: a new shard starts where the next tensor would take this one past
    `max_size`, and a tensor larger than `max_size` gets a shard of its own."""
    shards, current, current_size = [], [], 0
    for spec in specs:
        size = _nbytes(spec[1], spec[2])
        if size > max_size:
            shards.append([spec])
            continue
        if current and current_size + size > max_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(spec)
        current_size += size
    return shards + ([current] if current else [])


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()


def _remove_other_weights(out_dir: Path, keep: set[str]) -> None:
    """Remove the weight files beside the new model (the names in `keep`), as save_pretrained does:
    an export over a sharded model left its index and shards, which this trainer's importer reads
    first while transformers loads model.safetensors, so the two saw different models (found
    by a tester); a sharded export over another left shards of the old one that no index names.
    The index goes first, so that no index names a mix of old and new shards. And the replaced
    model's generation_config.json: transformers' generate() stopped at its EOS, not at the new
    config.json's (a tester); a soup copies its source's."""
    others = sorted((p for p in out_dir.iterdir() if p.name not in keep and p.is_file() and (
        _OTHER_WEIGHTS.fullmatch(p.name) or p.name == "generation_config.json")), key=lambda p: p.name != HF_INDEX)
    for path in others:
        path.unlink()


# A weight file staged by `_write_weights` (.NAME.stagedPID), or write_safetensors' temporary file of one
_STAGED = re.compile(r"\.\.?(?:model|pytorch_model)[^/]*\.(?:safetensors|json)\.staged(\d+)(?:\.tmp\d+)?")


def _sweep_staged(out_dir: Path) -> None:
    """Remove what an export into `out_dir` killed part way (SIGTERM, kill -9, a lost node) staged:
    hidden shards up to a model's size, which no rerun removed (each stages under its own PID;
    found by a tester). Files of an export still running (its PID alive) are left alone."""
    from trainer.checkpoint import _writer_alive

    for path in sorted(out_dir.iterdir()):
        match = _STAGED.fullmatch(path.name)
        if match and path.is_file() and not path.is_symlink() and not _writer_alive(int(match.group(1)), path):
            path.unlink(missing_ok=True)


def _write_weights(out_dir: Path, specs: list, get: Callable[[str], torch.Tensor], max_shard_size: int) -> None:
    """model.safetensors, or shards and their index when the weights exceed `max_shard_size`.
    Every file is written under a hidden staging name first; only when all are complete is the old
    model removed (its index first) and the new files renamed into place, the index last: a failed
    write leaves the old model whole, and no moment leaves a mix of old and new weights that loads
    (shards without an index do not)."""
    _sweep_staged(out_dir)
    shards = _shard(specs, max_shard_size)
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    staged = [out_dir / f".{name}.staged{os.getpid()}" for name in names]
    try:
        for shard, path in zip(shards, staged):
            write_safetensors(path, shard, get)
        index = None
        if len(shards) > 1:
            weight_map = {spec[0]: name for shard, name in zip(shards, names) for spec in shard}
            total = sum(_nbytes(shape, dtype) for _, shape, dtype in specs)
            index = out_dir / f".{HF_INDEX}.staged{os.getpid()}"
            staged.append(index)
            index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    except BaseException:
        for path in staged:
            path.unlink(missing_ok=True)
        raise
    _remove_other_weights(out_dir, set(names) | ({HF_INDEX} if index else set()))
    for path, name in zip(staged, names + [HF_INDEX]):
        os.replace(path, out_dir / name)


def write_hf_model(out_dir: str | Path, cfg: ModelConfig, names: list[str], get: Callable[[str], torch.Tensor],
                   dtype: torch.dtype, config: dict | None = None,
                   max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """An Olmo2ForCausalLM directory from this trainer's tensors, `get(name)` one at a time
    (cast to `dtype` here), sharded as save_pretrained shards when larger than `max_shard_size`
    bytes. `config` replaces the generated config.json (e.g. a source HF directory's own, to keep
    its token ids)."""
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
        _write_weights(out_dir, specs, lambda key: get(by_hf[key]).to(dtype), max_shard_size)
    except BaseException:
        if made:  # a failed export (its partial files are removed) left an empty OUT_DIR behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
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


def export(checkpoint: str | Path, out_dir: str | Path, dtype: str | None = None,
           max_shard_size: int = DEFAULT_MAX_SHARD_SIZE, log: Callable[[str], None] | None = None) -> Path:
    """The checkpoint as an Olmo2ForCausalLM directory, with the files of the tokenizer it was
    trained with where it says which (`checkpoint_tokenizer`); where it does not, `log` gets one
    line saying why and OUT_DIR's tokenizer files are left as they are."""
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
    tokenizer = checkpoint_tokenizer([info])
    with WeightReader(info) as reader:
        def finite(name: str) -> torch.Tensor:
            """A diverged run's NaN weights were exported without a word, as a model that gives NaN
            logits; eval and soup refuse them (found by a tester). Checked again after the cast: a
            weight beyond float16's range (65504) became inf in a --dtype float16 export, unsaid (a tester)."""
            tensor = reader.get(name)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{info.describe()}: weight {name} holds NaN or inf (a diverged run, or a damaged "
                                 f"file); export a checkpoint from before it diverged")
            cast = tensor.to(torch_dtype)
            if cast.is_floating_point() and not bool(torch.isfinite(cast).all()):
                largest, kind = tensor.abs().max().item(), str(torch_dtype).removeprefix("torch.")
                raise ValueError(f"{info.describe()}: weight {name} holds values up to {largest:.6g}, beyond {kind}'s "
                                 f"range ({torch.finfo(torch_dtype).max:.6g}), which would be written as inf; export "
                                 f"with --dtype bfloat16 or float32")
            return cast

        # an HF source's own config.json, as a soup's hf/ keeps it: its token ids (a list of EOS ids, a BOS id)
        # were replaced by the generated config's single EOS id and no BOS (found by a tester)
        out = write_hf_model(out_dir, info.model, reader.names(), finite, torch_dtype, max_shard_size=max_shard_size,
                             config=info.hf_config if info.format == "hf" else None)
    if isinstance(tokenizer, dict):
        write_tokenizer(out, tokenizer)
    elif log is not None:
        log(no_tokenizer_note(out, tokenizer))
    return out


def size_arg(text: str) -> int:
    """argparse's type for a --max-shard-size (trainer.soup takes it too)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    if (refused := one_process_refusal("export_hf", "trainer.export_hf")) is not None:
        return refused
    parser = argparse.ArgumentParser(prog="python -m trainer.export_hf", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", type=local_path,
                        help="checkpoint or soup directory, a save dir (its latest), a Hugging Face directory, or an "
                             "OLMo-core DCP checkpoint")
    parser.add_argument("out_dir", type=local_path, help="the Hugging Face directory to write")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="cast the weights (default: keep the checkpoint's dtype); a weight beyond float16's "
                             "range (65504) is refused, not written as inf")
    parser.add_argument("--max-shard-size", type=size_arg, default=DEFAULT_MAX_SHARD_SIZE, metavar="SIZE",
                        help="larger weights are split into shards of at most SIZE (e.g. 5GB, 500MB, 2GiB; one "
                             "tensor larger than SIZE gets a shard of its own) with model.safetensors.index.json, "
                             "as save_pretrained does (default: 5GB)")
    args = parser.parse_args(argv)
    try:
        notes: list[str] = []
        out = export(args.checkpoint, args.out_dir, args.dtype, args.max_shard_size, log=notes.append)
    except (OSError, KeyError, ValueError) as exc:  # OSError: e.g. OUT_DIR cannot be written
        print(f"export_hf: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"export_hf: {note}", file=sys.stderr)
    print(f"wrote Olmo2ForCausalLM {'' if notes else 'and its tokenizer '}to {out}")
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
