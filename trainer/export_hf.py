"""Export a checkpoint to a Hugging Face `Olmo2ForCausalLM` directory.

    python -m trainer.export_hf CKPT OUT_DIR [--dtype bfloat16] [--max-shard-size 5GB]

Writes `config.json` and `model.safetensors` with transformers' Olmo2 parameter names, so
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` loads it (transformers >= 4.47) and gives
the same logits as trainer.model.OLMo2. The layouts already agree (q/k norms over the whole
projection, rotate-half RoPE, post-attention / post-feedforward norms), so export is a
rename; the vocabulary stays padded (100352), as in the released OLMo 2 checkpoints. Weights
larger than --max-shard-size are written as save_pretrained shards them, to
`model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`: a 13B fp32 model in one
file (~55 GB) is over the Hugging Face Hub's 50 GB per-file limit.

CKPT is any format trainer.weights reads (a trainer checkpoint or soup, or an OLMo-core DCP
checkpoint: this converts OLMo-core OLMo 2 checkpoints to Hugging Face). Tensors are read and
written one at a time (`write_safetensors` streams the file), so exporting a 7B model needs
about one tensor of memory beyond the memory-mapped input.

The tokenizer the checkpoint was trained with goes beside the model (tokenizer.json,
tokenizer_config.json, special_tokens_map.json), so that `AutoTokenizer.from_pretrained(OUT_DIR)`
loads it as it loads a released OLMo 2 directory: for a trainer checkpoint the tokenizer.json its
data's builds record (report.json tokenizer_sha256: the packaged dolma2 file, with the releases'
GPT2Tokenizer config, no BOS), an HF source's own files, a soup's, or the dolma2 tokenizer that
an OLMo-core experiment config names. Where the checkpoint does not say (its data is not here, a
build from before tokenizer_sha256), one line says so and none are written.

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
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from dolmino.s3 import local_path
from trainer.cli import HelpFormatter
from trainer.config import ModelConfig

if TYPE_CHECKING:
    from trainer.data import DataLayout

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
_SIZE = re.compile(r"(\d+)\s*([KMGT]i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """Bytes from a size as transformers' max_shard_size takes it: 5GB (10^9), 5GiB (2^30), 500MB, or bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size; give a positive number of bytes or one with a unit, e.g. 5GB, "
                         f"500MB or 2GiB")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").upper()]


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


def _write_weights(out_dir: Path, specs: list, get: Callable[[str], torch.Tensor], max_shard_size: int) -> None:
    """model.safetensors, or shards and their index when the weights exceed `max_shard_size`.
    Every file is written under a hidden staging name first; only when all are complete is the old
    model removed (its index first) and the new files renamed into place, the index last: a failed
    write leaves the old model whole, and no moment leaves a mix of old and new weights that loads
    (shards without an index do not)."""
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


# ----------------------------------------------------------------------------- tokenizer files
# What AutoTokenizer.from_pretrained reads from a Hugging Face directory (a fast tokenizer's
# tokenizer.json, a slow GPT-2 one's vocab.json + merges.txt), and generation_config.json, in which
# an HF source's own generate() settings (its stop ids) ride.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
GENERATION_CONFIG = "generation_config.json"
DOLMA2_NAME = "allenai/dolma2-tokenizer"
_SOUP_DEPTH = 4  # a soup of soups of ...: followed this far through its ingredients


class _NotSaid(Exception):
    """Why a checkpoint does not say which tokenizer it was trained with (one sentence)."""


def checkpoint_tokenizer(infos: list, depth: int = 0) -> dict[str, bytes] | str:
    """The files (name -> bytes) of the tokenizer the first of `infos` that says was trained with,
    else why none says (one sentence: the first asked). An export without them could not be used as a
    released OLMo 2 directory is: AutoTokenizer.from_pretrained(OUT) failed (found by a tester).
    Nothing is guessed from the model's vocabulary size or EOS id: only an HF directory's own
    files, a trainer checkpoint's data (its builds' report.json tokenizer_sha256 and
    manifest.json), a soup's hf/ or ingredients, or OLMo-core's experiment config naming the
    dolma2 tokenizer say which. HF sources go first, as a soup's config.json is its first HF
    ingredient's."""
    reasons = []
    for info in sorted(infos, key=lambda i: i.format != "hf"):
        try:
            if info.format == "hf":
                return _hf_dir_tokenizer(Path(info.path))
            if info.format == "trainer":
                return _trainer_tokenizer(info, depth)
            return _olmo_core_tokenizer(info)
        except _NotSaid as exc:
            reasons.append(str(exc))
    return reasons[0] if reasons else "no checkpoint says"


def _hf_dir_tokenizer(path: Path) -> dict[str, bytes]:
    files = {name: (path / name).read_bytes() for name in (*TOKENIZER_FILES, GENERATION_CONFIG)
             if (path / name).is_file()}
    if "tokenizer.json" not in files and "vocab.json" not in files:
        raise _NotSaid(f"the Hugging Face directory {path} holds no tokenizer files")
    return files


def _trainer_tokenizer(info, depth: int) -> dict[str, bytes]:
    from trainer.checkpoint import CONFIG_FILE, load_json_file

    path = Path(info.path)
    config = load_json_file(path / CONFIG_FILE)
    if isinstance(config, dict) and "soup" in config:
        if (path / "hf" / "tokenizer.json").is_file():  # written with the soup
            return _hf_dir_tokenizer(path / "hf")
        return _soup_tokenizer(path, config["soup"], depth)
    recorded = config.get("tokenizer") if isinstance(config, dict) else None
    if isinstance(recorded, dict):  # what trainer.run read from the data's builds when it trained
        return _recorded_tokenizer(recorded, info.model, f"the training data of the checkpoint {path}")
    paths = config.get("data_paths") if isinstance(config, dict) else None  # checkpoints from before it was recorded
    if not paths:
        raise _NotSaid(f"the checkpoint {path} records no training data (config.json data_paths)")
    return _data_tokenizer([str(p) for p in paths], info.model)


def _soup_tokenizer(path: Path, ingredients: list, depth: int) -> dict[str, bytes]:
    from trainer.weights import inspect_checkpoint

    if depth >= _SOUP_DEPTH:
        raise _NotSaid(f"the soup {path} nests soups deeper than {_SOUP_DEPTH}")
    infos = []
    for ingredient in ingredients:
        where = ingredient.get("path") if isinstance(ingredient, dict) else None
        try:
            infos.append(inspect_checkpoint(where))
        except (OSError, ValueError, TypeError):
            raise _NotSaid(f"the soup {path}'s ingredient {where} cannot be read here") from None
    found = checkpoint_tokenizer(infos, depth + 1)
    if isinstance(found, str):
        raise _NotSaid(found)
    return found


def _data_tokenizer(paths: list[str], model: ModelConfig | None) -> dict[str, bytes]:
    """The tokenizer.json the builds of `paths` were tokenized with: the one whose SHA-256 their
    report.json records (the packaged dolma2 one, or the file their manifest.json names)."""
    record, folder = _data_tokenizer_record(paths)
    return _recorded_tokenizer(record, model, f"the build {folder}")


def data_tokenizer(paths: list[str] | DataLayout) -> dict | str:
    """What the builds of `paths` (trainer.run's --data) record about their tokenizer, for
    trainer.run to keep in each checkpoint's config.json: name, tokenizer_sha256, EOS / pad / BOS
    ids, vocab_size, and the absolute path of a tokenizer.json that is not the packaged dolma2
    one (its manifest's tokenizer.path). An export found it only through the checkpoint's
    data_paths, so a checkpoint copied without its mix exported no tokenizer (found by a
    tester). Else why the data does not say (one sentence): no report, a build from before
    tokenizer_sha256."""
    try:
        return _data_tokenizer_record(paths)[0]
    except _NotSaid as exc:
        return str(exc)


def _data_tokenizer_record(paths: list[str] | DataLayout) -> tuple[dict, Path]:
    """(`data_tokenizer`'s record, the build it was read from)."""
    from dolmino.manifest import resolve_relative
    from trainer.data import DataError, DataLayout, scan_data
    from trainer.plan import reported_builds

    given = list(paths.paths if isinstance(paths, DataLayout) else paths)
    shown = ", ".join(given[:2]) + (f" and {len(given) - 2} more" if len(given) > 2 else "")
    try:
        layout = scan_data(paths)
        builds = reported_builds(layout)
    except (OSError, DataError) as exc:
        raise _NotSaid(f"the checkpoint's training data ({shown}) cannot be read here ({exc})") from None
    reported = {f for _, held, _ in builds for f in held}
    if unreported := [f for f in layout.files if f not in reported]:
        raise _NotSaid(f"the checkpoint's training data {unreported[0]} lies in no build with a report.json saying "
                       "which tokenizer made it")
    if not builds:
        raise _NotSaid(f"the checkpoint's training data ({shown}) holds no token files")
    reports = []
    for folder, _, _ in builds:
        try:
            report = json.loads((folder / "report.json").read_text())
        except (OSError, ValueError) as exc:
            raise _NotSaid(f"{folder / 'report.json'} cannot be read ({exc})") from None
        if not isinstance(report, dict) or not report.get("tokenizer_sha256"):
            raise _NotSaid(f"{folder / 'report.json'} records no tokenizer_sha256 (a build from before it was "
                           "recorded)")
        reports.append((folder, report))
    folder, report = reports[0]
    if other := next((f for f, r in reports if r["tokenizer_sha256"] != report["tokenizer_sha256"]), None):
        raise _NotSaid(f"the checkpoint's training data holds builds of different tokenizers ({folder} and {other})")
    try:
        spec = json.loads((folder / "manifest.json").read_text()).get("tokenizer") or {}
    except (OSError, ValueError, AttributeError):
        spec = {}
    record = {"name": report.get("tokenizer"), "tokenizer_sha256": report["tokenizer_sha256"],
              "eos_token_id": report.get("eos_token_id"), "pad_token_id": report.get("pad_token_id"),
              "bos_token_id": spec.get("bos_token_id") if isinstance(spec, dict) else None,
              "vocab_size": report.get("vocab_size")}
    path = spec.get("path") if isinstance(spec, dict) else None
    if record["tokenizer_sha256"] != _dolma2_sha256() and isinstance(path, str):
        manifest_path = report.get("manifest_path")
        path = resolve_relative(os.path.dirname(manifest_path) if isinstance(manifest_path, str) else None, path)
        record["path"] = path if "://" in path else os.path.abspath(path)
    return record, folder


def _recorded_tokenizer(record: dict, model: ModelConfig | None, source: str) -> dict[str, bytes]:
    """The files of the tokenizer `record` (`data_tokenizer`'s) describes, as the data of
    `source` (a build, or a checkpoint's training data) was tokenized: the packaged dolma2 file
    where its SHA-256 is dolma2's, else the recorded path while it still has that SHA-256."""
    digest = record.get("tokenizer_sha256")
    if not isinstance(digest, str) or not digest:
        raise _NotSaid(f"{source} records no tokenizer_sha256")
    if (bos := record.get("bos_token_id")) is not None:
        raise _NotSaid(f"{source} has BOS id {bos} before every document, which a Hugging Face tokenizer.json "
                       "alone does not add")
    text = _tokenizer_text(digest, record.get("path") if isinstance(record.get("path"), str) else None, source)
    eos, pad, vocab = record.get("eos_token_id"), record.get("pad_token_id"), record.get("vocab_size")
    if model is not None and (eos, pad) != (model.eos_token_id, model.pad_token_id):
        raise _NotSaid(f"the EOS / pad ids {eos} / {pad} of {source} are not the model's "
                       f"{model.eos_token_id} / {model.pad_token_id}")
    if model is not None and isinstance(vocab, int) and vocab > model.padded_vocab_size:
        raise _NotSaid(f"the tokenizer of {source} has {vocab:,} ids, more than the model's "
                       f"{model.padded_vocab_size:,} embedding rows")
    return _tokenizer_files(text, eos, pad, model.max_seq_len if model else None, dolma2=digest == _dolma2_sha256())


def _dolma2_sha256() -> str:
    from dolmino.assets import DOLMA2_TOKENIZER_SHA256

    return DOLMA2_TOKENIZER_SHA256


def _tokenizer_text(digest: str, path: str | None, source: str) -> str:
    """The tokenizer.json text whose SHA-256 (of its UTF-8 text, as the build hashed it) is `digest`:
    the packaged dolma2 file, or the one at `path` (that `source` was tokenized with)."""
    import hashlib

    from dolmino.errors import ManifestError
    from dolmino.manifest import TokenizerSpec
    from dolmino.tokenizer import tokenizer_json

    if digest == _dolma2_sha256():
        from dolmino.assets import AssetError, dolma2_tokenizer_path

        try:
            return dolma2_tokenizer_path().read_text(encoding="utf-8")
        except (AssetError, OSError) as exc:
            raise _NotSaid(f"the dolma2 tokenizer the data was built with cannot be fetched ({exc})") from None
    if path is None:
        raise _NotSaid(f"{source} was tokenized with a tokenizer.json (sha256 {digest[:12]}...) that is not the "
                       "packaged dolma2 one, and where it lies is not recorded (the build's manifest.json names "
                       "no tokenizer.path)")
    try:
        text = tokenizer_json(TokenizerSpec(path=path))
    except ManifestError as exc:
        raise _NotSaid(f"the tokenizer {source} was tokenized with cannot be read "
                       f"({str(exc).removeprefix('tokenizer.path: ')})") from None
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != digest:
        raise _NotSaid(f"{path} has changed since {source} was tokenized with it (its sha256 is not the one recorded "
                       "for it)")
    return text


def _tokenizer_files(text: str, eos: int | None, pad: int | None, max_len: int | None,
                     dolma2: bool) -> dict[str, bytes]:
    """tokenizer.json as the build used it, with the tokenizer_config.json and special_tokens_map.json
    that make AutoTokenizer encode as the build did (no BOS) and know the EOS / pad ids: for
    dolma2 those of allenai's OLMo 2 releases (GPT2Tokenizer, <|endoftext|> as BOS / EOS / unk,
    add_bos_token false), for another tokenizer PreTrainedTokenizerFast with its EOS and pad."""
    definition = json.loads(text)
    vocab = (definition.get("model") or {}).get("vocab")
    by_id = {i: t for t, i in vocab.items()} if isinstance(vocab, dict) else {}
    by_id.update({a.get("id"): a.get("content") for a in definition.get("added_tokens") or []})
    named = {}
    for key, token_id in (("eos_token", eos), ("pad_token", pad)):
        if token_id is not None:
            if by_id.get(token_id) is None:
                raise _NotSaid(f"the tokenizer has no token of id {token_id} (its {key})")
            named[key] = by_id[token_id]
    if dolma2:
        named = {"bos_token": named["eos_token"], **named, "unk_token": named["eos_token"]}
    config = {"add_bos_token": False, "add_prefix_space": False, **named, "clean_up_tokenization_spaces": False,
              "errors": "replace", "tokenizer_class": "GPT2Tokenizer" if dolma2 else "PreTrainedTokenizerFast"}
    if max_len is not None:
        config["model_max_length"] = max_len
    return {"tokenizer.json": text.encode("utf-8"),
            "tokenizer_config.json": (json.dumps(dict(sorted(config.items())), indent=2) + "\n").encode(),
            "special_tokens_map.json": (json.dumps(named, indent=2) + "\n").encode()}


def _olmo_core_tokenizer(info) -> dict[str, bytes]:
    """OLMo-core's experiment config names its data's tokenizer (dataset.tokenizer): the dolma2 one,
    with dolma2's ids, is the packaged file."""
    from trainer.config import DOLMA2_EOS_TOKEN_ID, DOLMA2_PAD_TOKEN_ID, DOLMA2_VOCAB_SIZE

    path = Path(info.path)
    for directory in (path, path.parent, path.parent.parent):
        try:
            config = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError):
            continue
        tokenizer = (config.get("dataset") or {}).get("tokenizer") if isinstance(config, dict) else None
        if not isinstance(tokenizer, dict):
            continue
        ids = (tokenizer.get("vocab_size"), tokenizer.get("eos_token_id"), tokenizer.get("pad_token_id"),
               tokenizer.get("bos_token_id"))
        if tokenizer.get("identifier") != DOLMA2_NAME or \
                ids != (DOLMA2_VOCAB_SIZE, DOLMA2_EOS_TOKEN_ID, DOLMA2_PAD_TOKEN_ID, None):
            raise _NotSaid(f"OLMo-core's config {directory / 'config.json'} names the tokenizer "
                           f"{tokenizer.get('identifier')} (vocab, EOS, pad, BOS {ids}), not the dolma2 one")
        text = _tokenizer_text(_dolma2_sha256(), None, f"OLMo-core's config {directory / 'config.json'}")
        return _tokenizer_files(text, DOLMA2_EOS_TOKEN_ID, DOLMA2_PAD_TOKEN_ID,
                                info.model.max_seq_len if info.model else None, dolma2=True)
    raise _NotSaid(f"the OLMo-core checkpoint {path} has no experiment config.json naming its tokenizer "
                   "(dataset.tokenizer)")


def write_tokenizer(out_dir: str | Path, files: dict[str, bytes]) -> None:
    """The tokenizer `files` into `out_dir`, each written whole and renamed into place. Tokenizer
    files there that it lacks (a replaced model's slow vocab.json / merges.txt) are removed: they
    are not this model's."""
    out_dir = Path(out_dir)
    for name in TOKENIZER_FILES:
        if name not in files:
            (out_dir / name).unlink(missing_ok=True)
    for name, data in files.items():
        tmp = out_dir / f".{name}.tmp{os.getpid()}"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, out_dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def no_tokenizer_note(out: Path, reason: str) -> str:
    """The one line saying that `out` got no tokenizer files, and why."""
    return (f"note: no tokenizer files written to {out}: {reason}; copy those of the tokenizer the model was "
            f"trained with (tokenizer.json, tokenizer_config.json, special_tokens_map.json) there for "
            f"AutoTokenizer.from_pretrained to load")


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
            logits; eval and soup refuse them (found by a tester)."""
            tensor = reader.get(name)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{info.describe()}: weight {name} holds NaN or inf (a diverged run, or a damaged "
                                 f"file); export a checkpoint from before it diverged")
            return tensor

        out = write_hf_model(out_dir, info.model, reader.names(), finite, torch_dtype, max_shard_size=max_shard_size)
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
    parser = argparse.ArgumentParser(prog="python -m trainer.export_hf", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", type=local_path,
                        help="checkpoint or soup directory, a save dir (its latest), or an OLMo-core DCP checkpoint")
    parser.add_argument("out_dir", type=local_path, help="the Hugging Face directory to write")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="cast the weights (default: keep the checkpoint's dtype)")
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
