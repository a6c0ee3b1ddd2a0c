"""Model weights from the checkpoint formats the trainer reads, one tensor at a time.

Three formats, told apart by their files:
- this trainer's checkpoints and soups: `model.pt` + `config.json` (a save dir means its latest);
- a Hugging Face `Olmo2ForCausalLM` directory, as a hub download leaves it: `config.json` and
  `model.safetensors`, or shards `model-0000x-of-0000y.safetensors` with
  `model.safetensors.index.json`;
- an OLMo-core checkpoint: a torch.distributed.checkpoint (DCP) directory (`.metadata` +
  `*.distcp`) with the model under `model.*` keys, i.e. `stepN/model_and_optim/` (or `stepN/`).

Why one tensor at a time: a 7B model is 29 GB in fp32 and 13B 55 GB; importing, exporting
or averaging checkpoints must not hold a second copy of that. Safetensors files are read
with `safe_open` tensor by tensor, trainer checkpoints are memory-mapped
(`torch.load(mmap=True)`), and DCP checkpoints are read key by key (or straight into the
model's parameters, sharded or not). Peak memory is the live model plus one tensor.

OLMo-core writes its DCP `.metadata` with its own `_StorageInfo` class pickled inside, so
plain `torch.distributed.checkpoint` cannot open it without olmo-core installed. The fields
are the same as torch's own `_StorageInfo` (relative path, offset, length; tensors are
`torch.save`d at that offset by both), so `_DCPReader` unpickles OLMo-core's class as
torch's and everything else is torch's DCP reader. Only OLMo 2 checkpoints (reordered
norms, whole-projection QK-norm, no biases) map onto this trainer's model.

Every mismatch is reported before any weight is copied: wrong architecture, vocabulary rows,
missing or unexpected tensors, shapes; the messages name the file and the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from trainer.checkpoint import (
    CONFIG_FILE, MODEL_FILE, CheckpointFormatError, damaged_file_error, load_json_file, load_torch_file,
    resolve_checkpoint,
)
from trainer.config import ModelConfig, round_up
from trainer.export_hf import hf_name

FORMATS = ("trainer", "hf", "olmo-core")
HF_INDEX = "model.safetensors.index.json"
HF_SINGLE = "model.safetensors"
# "stage1-step928646-tokens3896B", "stage2-ingredient1-step11931-tokens100B", "step1000-tokens4B"
REVISION_STEP = re.compile(r"(?:^|[-_/])(?:stage(\d+)-(?:[A-Za-z]+\d*-)*)?step(\d+)-tokens\d+[BT]?(?:$|[-_/])")

_OLMO_CORE_LAYER = {
    "attention.w_q.weight": "attn.q_proj.weight",
    "attention.w_k.weight": "attn.k_proj.weight",
    "attention.w_v.weight": "attn.v_proj.weight",
    "attention.w_out.weight": "attn.o_proj.weight",
    "attention.q_norm.weight": "attn.q_norm.weight",
    "attention.k_norm.weight": "attn.k_norm.weight",
    "attention_norm.weight": "attn_norm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward_norm.weight": "mlp_norm.weight",
}
_OLMO_CORE_TOP = {"embeddings.weight": "embed.weight", "lm_head.norm.weight": "norm.weight",
                  "lm_head.w_out.weight": "lm_head.weight"}
_OLMO_CORE_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def olmo_core_to_ours(name: str) -> str | None:
    """OLMo-core's OLMo 2 parameter name -> this trainer's (None: not an OLMo 2 weight)."""
    if name in _OLMO_CORE_TOP:
        return _OLMO_CORE_TOP[name]
    match = _OLMO_CORE_BLOCK.match(name)
    if match and match.group(2) in _OLMO_CORE_LAYER:
        return f"blocks.{match.group(1)}.{_OLMO_CORE_LAYER[match.group(2)]}"
    return None


def ours_to_olmo_core(name: str) -> str:
    for theirs, ours in _OLMO_CORE_TOP.items():
        if ours == name:
            return theirs
    match = re.match(r"^blocks\.(\d+)\.(.+)$", name)
    if match:
        for theirs, ours in _OLMO_CORE_LAYER.items():
            if ours == match.group(2):
                return f"blocks.{match.group(1)}.{theirs}"
    raise KeyError(f"no OLMo-core name for parameter {name!r}")


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the trainer's model for `cfg` (built on the meta device)."""
    from trainer.model import OLMo2

    with torch.device("meta"):
        model = OLMo2(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _revision_match(text: str) -> re.Match | None:
    """The revision name in `text`'s last path component that holds one: the checkpoint's own name,
    not an ancestor's (`/x/stage1-step500000-tokens2098B/OLMo-2-1124-7B-stage1-step928646-tokens3896B`
    gave 500000; found by a tester)."""
    for part in reversed(text.split("/")):
        if match := REVISION_STEP.search(f"/{part}/"):
            return match
    return None


def step_from_revision(text: str) -> int | None:
    """The training step in an OLMo revision name (stage1-step928646-tokens3896B -> 928646)."""
    match = _revision_match(text)
    return int(match.group(2)) if match else None


def stage_from_revision(text: str) -> int | None:
    """OLMo's training stage in a revision name (stage2-ingredient1-step11931-tokens50B -> 2; None
    where it names none). A stage-2 (mid-training) revision's step counts the anneal's steps, not
    pretraining's: an anneal from it took the pretraining LR at that step, near the peak (a tester)."""
    match = _revision_match(text)
    return int(match.group(1)) if match and match.group(1) else None


def _hub_revision(path: Path) -> str | None:
    """The revision a hub snapshot was downloaded at: .../snapshots/<sha> is named by a file
    under .../refs/ holding that sha (huggingface_hub's cache layout)."""
    if path.parent.name != "snapshots":
        return None
    refs = path.parent.parent / "refs"
    if not refs.is_dir():
        return None
    for ref in sorted(refs.rglob("*")):
        if ref.is_file() and ref.read_text().strip() == path.name:
            return ref.relative_to(refs).as_posix()
    return None


@dataclass
class CheckpointInfo:
    """What a checkpoint holds, read from its metadata only (no tensor is loaded)."""

    path: Path
    format: str
    shapes: dict[str, tuple[int, ...]]           # this trainer's parameter names
    model: ModelConfig | None = None             # None: the files do not say (e.g. n_heads of a DCP)
    step: int | None = None                      # the training step the weights are at, when known
    step_source: str | None = None
    stage: int | None = None                     # OLMo's stage its revision names (2: the step is an anneal's)
    lr: float | None = None                      # OLMo-core checkpoints: the LR of their last step (optimizer state)
    train: dict | None = None                    # trainer checkpoints: the TrainConfig they ran with
    dtype: torch.dtype | None = None
    hf_config: dict | None = None                # HF directories: their config.json
    init: dict | None = None                     # trainer checkpoints: the --init-from their run started from
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        step = f" at step {self.step:,} ({self.step_source})" if self.step is not None else ""
        return f"{self.format} checkpoint {self.path}{step}"

    def provenance(self) -> dict:
        """What a run started from this checkpoint records in its config (RunConfig.init)."""
        # absolute: a resume from another directory reads it again (trainer.run.init_from_resumed)
        return {"path": str(Path(self.path).absolute()), "format": self.format, "step": self.step,
                "step_source": self.step_source}


# ----------------------------------------------------------------------------- inspecting
def detect_format(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}{_hub_id_hint(path)}")
    if path.is_dir():
        if (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file():
            return "trainer"
        if (path / HF_INDEX).is_file() or (path / HF_SINGLE).is_file():
            return "hf"
        if (path / ".metadata").is_file() or (path / "model_and_optim" / ".metadata").is_file():
            return "olmo-core"
        if (path / "pytorch_model.bin").is_file() or (path / "pytorch_model.bin.index.json").is_file():
            # "re-save it with model.save_pretrained(dir, safe_serialization=True)" left the user to find how to
            # get `model`; the command runs as given with the pinned transformers (its `dtype=`; torch_dtype is
            # deprecated there; found by a tester)
            raise CheckpointFormatError(
                f"{path} holds pytorch_model*.bin weights; only safetensors are read (a pickled .bin can run code "
                f"when loaded): convert it in place with transformers, python -c \"from transformers import "
                f"AutoModelForCausalLM as M; M.from_pretrained({str(path)!r}, dtype='auto')"
                f".save_pretrained({str(path)!r})\"")
        hf_config = _hf_config_file(path)
        if hf_config is not None:  # a transformers config without weights: say what is wrong with it first
            model_config_from_hf(hf_config, str(path / "config.json"))
            raise CheckpointFormatError(f"{path} has a Hugging Face config.json but no weights: expected "
                                        f"{HF_SINGLE} or {HF_INDEX} with its shards")
        try:
            resolve_checkpoint(path)
            return "trainer"
        except FileNotFoundError:
            pass
    raise CheckpointFormatError(
        f"{path} is not a checkpoint this trainer reads: expected a trainer checkpoint (model.pt + config.json, "
        f"or a save dir), a Hugging Face directory (config.json + model.safetensors or {HF_INDEX}), or an "
        f"OLMo-core DCP directory (.metadata, e.g. stepN/model_and_optim)")


def _hub_id_hint(path: Path) -> str:
    """What to do when a missing `path` reads as a Hub repository id (allenai/OLMo-2-1124-7B), as
    transformers' from_pretrained takes one: checkpoints are read from disk, nothing is downloaded,
    and "no checkpoint at allenai/OLMo-2-1124-7B" alone did not say so (found by a tester). Not where
    its first part is a local directory (build/checkpoints): that is a local path mistyped. The command
    is huggingface_hub's `hf`, as README's: 1.0 removed `huggingface-cli`, which the hint named."""
    if path.is_absolute() or len(path.parts) != 2 or str(path).startswith(".") or Path(path.parts[0]).exists():
        return ""
    return (f" (checkpoints are read from a local directory, not downloaded from the Hugging Face Hub: "
            f"hf download {path.as_posix()} --local-dir DIR, then give DIR)")


def _hf_config_file(path: Path) -> dict | None:
    """The directory's config.json when it is a transformers config (it names a model_type)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(config, dict) and ("model_type" in config or "architectures" in config):
        return config
    return None


def inspect_checkpoint(path: str | Path, step: int | None = None, step_source: str | None = None) -> CheckpointInfo:
    """Read a checkpoint's metadata. `step` overrides what the checkpoint says about its step."""
    fmt = detect_format(path)
    info = {"trainer": _inspect_trainer, "hf": _inspect_hf, "olmo-core": _inspect_olmo_core}[fmt](Path(path))
    if step is not None:  # the LR a checkpoint recorded is its own step's, not the one given
        info.step, info.step_source, info.stage, info.lr = step, step_source or "given", None, None
    return info


def _inspect_trainer(path: Path) -> CheckpointInfo:
    path = resolve_checkpoint(path)
    config = load_json_file(path / CONFIG_FILE)
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointFormatError(f"{path / CONFIG_FILE} has no \"model\" entry")
    cfg = ModelConfig.from_dict(config["model"])
    state = _load_trainer_state(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    dtype = widest_dtype(v.dtype for v in state.values())
    step = config.get("step")
    return CheckpointInfo(path=path, format="trainer", shapes=shapes, model=cfg,
                          step=int(step) if step is not None and "soup" not in config else None,
                          step_source="config.json" if step is not None and "soup" not in config else None,
                          train=config.get("train"), dtype=dtype,
                          init=config["init"] if isinstance(config.get("init"), dict) else None)


def _load_trainer_state(path: Path) -> dict:
    """model.pt memory-mapped: tensors are read from disk when touched, not loaded up front."""
    return load_torch_file(path / MODEL_FILE, mmap=True)


def _open_safetensors(file: Path, framework: str = "pt"):
    """safe_open (usable as a context manager), with a damaged file reported by name.

    `framework="numpy"` where only names, shapes and dtypes are read: "pt" maps the whole file
    copy-on-write, which Linux refuses for a file larger than the machine's memory (a 7B model in
    one file, as export_hf wrote it before --max-shard-size), so reading a checkpoint's metadata
    (trainer.schedule, every start-up check) ended in an "unable to mmap" traceback (found by a
    tester); numpy's read-only map is not charged against memory, and the file is checked the same way."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(file), framework=framework)
    except SafetensorError as exc:
        raise damaged_file_error(file, exc) from None
    except RuntimeError as exc:
        if "unable to mmap" not in str(exc):
            raise
        reason = str(exc).rsplit(": ", 1)[-1]
        raise CheckpointFormatError(
            f"{file} ({file.stat().st_size:,} bytes) cannot be memory-mapped on this machine ({reason}): reading its "
            "tensors needs more memory than the file holds, or the model saved in smaller shards "
            "(`python -m trainer.export_hf CKPT OUT --max-shard-size 5GB`, or transformers' "
            "save_pretrained(dir, max_shard_size=\"5GB\"))") from None


# What transformers' Olmo2Config takes for a field its config.json leaves out: the same model
# as transformers builds from a hand-written or converted config (1e-6 and 4096 here gave other
# logits, and an export changed the model; found by a tester).
HF_OLMO2_DEFAULTS = {"rms_norm_eps": 1e-5, "max_position_embeddings": 2048}


def model_config_from_hf(hf: dict, where: str) -> ModelConfig:
    """Map a transformers Olmo2Config dict onto ModelConfig, refusing what the model cannot express."""
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "olmo2" or (arch and "Olmo2ForCausalLM" not in arch):
        raise CheckpointFormatError(
            f"{where}: architecture {arch or hf.get('model_type')!r} is not Olmo2ForCausalLM (model_type "
            f"'olmo2'); only OLMo 2 checkpoints map onto this trainer's model (OLMo 1 / 0424 'olmo' checkpoints "
            f"put norms before attention and have no QK-norm)")
    problems = []
    heads = hf.get("num_attention_heads")
    # null: as many as heads, as transformers reads it; no heads at all is said below as the missing field
    # (it read "num_key_value_heads 4 != num_attention_heads None"; found by a tester)
    if heads is not None and (hf.get("num_key_value_heads") or heads) != heads:
        problems.append(f"num_key_value_heads {hf.get('num_key_value_heads')} != num_attention_heads {heads} "
                        f"(grouped-query attention is not supported)")
    if hf.get("tie_word_embeddings"):
        problems.append("tie_word_embeddings is true (OLMo 2 has an untied LM head)")
    if hf.get("attention_bias"):
        problems.append("attention_bias is true (OLMo 2 has no biases)")
    # transformers < 5 writes RoPE scaling as rope_scaling, >= 5 as a rope_type other than "default"
    # inside rope_parameters (which then also holds rope_theta)
    rope_parameters = hf.get("rope_parameters") or {}
    old_scaling = hf.get("rope_scaling") or {}
    if (old_scaling.get("rope_type") or old_scaling.get("type")) == "default":
        old_scaling = {}  # "default" is no scaling
    scaling = old_scaling or (rope_parameters if rope_parameters.get("rope_type", "default") != "default" else None)
    if scaling:
        problems.append(f"RoPE scaling {scaling!r} is not supported")
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):  # transformers' "swish" is SiLU
        problems.append(f"hidden_act {hf['hidden_act']!r} is not silu")
    thetas = {t for t in (hf.get("rope_theta"), rope_parameters.get("rope_theta")) if t is not None}
    # transformers 5 reads rope_parameters, 4 the top level: which one the model had is unknown
    if len({float(t) if isinstance(t, (int, float)) else t for t in thetas}) > 1:
        problems.append(f"rope_theta {hf.get('rope_theta')} and rope_parameters.rope_theta "
                        f"{rope_parameters.get('rope_theta')} differ (transformers 5 reads the second, 4 the first)")
    if problems:
        raise CheckpointFormatError(f"{where}: " + "; ".join(problems))
    try:
        vocab = int(hf["vocab_size"])
        rope = hf.get("rope_theta")
        if rope is None:  # transformers >= 5 may keep it under rope_parameters
            rope = (hf.get("rope_parameters") or {}).get("rope_theta", 10_000.0)
        fields = dict(d_model=int(hf["hidden_size"]), n_layers=int(hf["num_hidden_layers"]),
                      n_heads=int(hf["num_attention_heads"]),
                      mlp_hidden=int(hf["intermediate_size"]), vocab_size=vocab, rope_theta=float(rope),
                      norm_eps=float(hf.get("rms_norm_eps", HF_OLMO2_DEFAULTS["rms_norm_eps"])),
                      max_seq_len=int(hf.get("max_position_embeddings",
                                             HF_OLMO2_DEFAULTS["max_position_embeddings"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointFormatError(f"{where}: missing or bad field in the Olmo2 config: {exc}") from None
    cfg = ModelConfig(**fields)
    if cfg.padded_vocab_size != vocab:  # keep the embedding rows exactly as stored
        cfg = ModelConfig(**fields, vocab_multiple=1)
    for key in ("eos_token_id", "pad_token_id"):
        value = hf.get(key)
        # transformers takes a list of EOS ids ([100257, 100265]): the first is the one a document ends with
        # (the list was ignored, and the model took the default id; found by a tester)
        if isinstance(value, list) and value and key == "eos_token_id":
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(cfg, key, value)
    return cfg


def _hf_files(path: Path) -> dict[str, str]:
    """HF tensor name -> safetensors file name. model.safetensors first, as transformers loads it:
    beside an index and shards of other weights, the index was read here and the two loaded
    different models (found by a tester)."""
    index = path / HF_INDEX
    if index.is_file() and not (path / HF_SINGLE).is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointFormatError(f"{index}: not a safetensors index ({exc})") from None
        missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing:
            raise CheckpointFormatError(f"{index} names shard(s) that are not in {path}: {missing}")
        return dict(weight_map)
    with _open_safetensors(path / HF_SINGLE, "numpy") as fh:
        return {name: HF_SINGLE for name in fh.keys()}


def _hf_shapes_and_dtype(path: Path, files: dict[str, str]) -> tuple[dict[str, tuple], torch.dtype | None]:
    """Shapes and dtype of the tensors, each read from the shard the index names for it. An index
    that names a tensor its shard does not hold, or a shard holding one the index does not list,
    passed here and failed in the load, after the model was built, in a KeyError or SafetensorError
    traceback (found by a tester): refused now, naming the tensors."""
    shapes, dtypes, absent, unlisted = {}, [], [], []
    for file in sorted(set(files.values())):
        with _open_safetensors(path / file, "numpy") as fh:
            held = set(fh.keys())
            absent += [f"{name} in {file}" for name, f in files.items() if f == file and name not in held]
            for name in fh.keys():
                if files.get(name) != file:
                    unlisted.append(f"{name} in {file}")
                    continue
                sl = fh.get_slice(name)
                shapes[name] = tuple(sl.get_shape())
                dtypes.append(_SAFETENSORS_DTYPES.get(sl.get_dtype()))
    if absent or unlisted:
        problems = [f"tensors it names that their shard lacks: {_listing(sorted(absent), 3)}"] if absent else []
        if unlisted:
            problems.append(f"tensors in shards that it does not name there: {_listing(sorted(unlisted), 3)}")
        raise CheckpointFormatError(f"{path / HF_INDEX} does not match its shards: {'; '.join(problems)}; download "
                                    f"the checkpoint again")
    return shapes, widest_dtype(dtypes)


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def widest_dtype(dtypes) -> torch.dtype | None:
    """The dtype a checkpoint's tensors all fit in exactly: its own when they share one, else the
    widest (bf16 and fp16 together: fp32). "Keep the checkpoint's dtype" took the first tensor's,
    and an export of bf16 lm_head + fp32 rest wrote every tensor in bf16 (found by a tester)."""
    found = set(dtypes) - {None}
    if len(found) <= 1:
        return next(iter(found), None)
    widest = max(found, key=lambda d: d.itemsize)
    return torch.float32 if widest.itemsize == 2 else widest


_HF_IGNORED = re.compile(r"\.rotary_emb\.inv_freq$")  # a buffer some old exports carry, derived from the config


def _inspect_hf(path: Path) -> CheckpointInfo:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointFormatError(f"{path} has safetensors weights but no config.json")
    hf = load_json_file(config_path)
    cfg = model_config_from_hf(hf, str(config_path))
    files = _hf_files(path)
    hf_shapes, dtype = _hf_shapes_and_dtype(path, files)
    ours = expected_shapes(cfg)
    by_hf = {hf_name(n): n for n in ours}
    shapes, unexpected = {}, []
    notes = []
    for name, shape in hf_shapes.items():
        if name in by_hf:
            shapes[by_hf[name]] = shape
        elif _HF_IGNORED.search(name):
            notes.append(f"ignored {name} (recomputed from the config)")
        else:
            unexpected.append(name)
    missing = sorted(hf_name(n) for n in ours if n not in shapes)
    if missing or unexpected:
        raise CheckpointFormatError(
            f"{path}: tensors do not match an Olmo2ForCausalLM with {cfg.n_layers} layers: "
            f"missing {_listing(missing)}, unexpected {_listing(sorted(unexpected))}")
    # transformers refuses such a directory too; here trainer.run blamed "another tokenizer" for the config's
    # vocab_size, and export_hf failed halfway through writing (found by a tester)
    wrong = [f"{hf_name(n)} {shapes[n]} != {ours[n]}" for n in ours if shapes[n] != ours[n]]
    if wrong:
        raise CheckpointFormatError(f"{path}: tensor shapes differ from the model its config.json describes (weights "
                                    f"vs config): {_listing(wrong, 3)}; config.json and the weights belong to "
                                    f"different models")
    revision = _hub_revision(path.resolve())
    step, source, stage = None, None, None
    # the path as given first: a link named for its revision (ckpt/OLMo-2-1124-7B-stage1-step...) to a
    # directory that is not, resolved, lost the step (found by a tester)
    for candidate in ([revision] if revision else []) + [str(path.absolute()), str(path.resolve())]:
        step = step_from_revision(candidate)
        if step is not None:
            source = f"revision {revision}" if candidate == revision else f"path {path}"
            stage = stage_from_revision(candidate)
            break
    return CheckpointInfo(path=path, format="hf", shapes=shapes, model=cfg, step=step, step_source=source,
                          stage=stage, dtype=dtype, hf_config=hf, notes=notes)


def _listing(names: list[str], limit: int = 6) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _dcp_dir(path: Path) -> Path:
    return path / "model_and_optim" if (path / "model_and_optim" / ".metadata").is_file() else path


# The globals torch.distributed.checkpoint pickles into `.metadata` (read back from dcp.save's
# files, test_dcp_metadata_as_torch_writes_it_passes_the_allow_list), plus torch's dtypes, layouts
# and memory formats (_MetadataUnpickler.find_class): any other global could run code when
# unpickled, and a downloaded checkpoint is not trusted (found by a reviewer).
_DCP_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo", "_StoragePrefix"},
    # where torch before 2.2 kept TensorProperties (checkpoints OLMo-core wrote then; a reviewer)
    "torch.distributed._shard.sharded_tensor.metadata": {"TensorProperties", "MEM_FORMAT_ENCODING"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},  # StorageMeta.checkpoint_id
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice", "complex", "bytearray"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata, reading OLMo-core's storage classes as torch's (same fields) and
    refusing every global that DCP metadata does not hold."""

    def __init__(self, fh, file: Path):
        super().__init__(fh)
        self.file = file

    def find_class(self, module: str, name: str):
        if module.startswith("olmo_core"):
            from torch.distributed.checkpoint import filesystem

            if name in ("_StorageInfo", "_StoragePrefix"):
                return getattr(filesystem, name)
            # repr: a name in a hostile file may hold a newline
            raise CheckpointFormatError(
                f"{self.file} needs {f'{module}.{name}'!r}, which only olmo-core provides; unshard it with "
                f"OLMo-core (olmo_core.distributed.checkpoint.unshard_checkpoint) or convert it to Hugging Face")
        if module == "torch" and isinstance(vars(torch).get(name), (torch.dtype, torch.layout, torch.memory_format)):
            return vars(torch)[name]
        module = "pathlib" if module == "pathlib._local" else module  # where Python >= 3.13 pickles paths from
        if name in _DCP_METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        raise CheckpointFormatError(
            f"{self.file} cannot be read (it names {f'{module}.{name}'!r}, which DCP metadata does not hold "
            f"and which could run code): it is not torch.distributed.checkpoint / OLMo-core metadata; is the "
            f"checkpoint from a source you trust?")


def _dcp_reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader

    class _DCPReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            if getattr(self, "_cached_metadata", None) is None:
                from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

                file = Path(self.path) / ".metadata"
                try:
                    with open(file, "rb") as fh:
                        metadata = _MetadataUnpickler(fh, file).load()
                except CheckpointFormatError:
                    raise
                except Exception as exc:  # empty, cut, or allowed classes called wrongly: one line naming it
                    raise damaged_file_error(file, exc) from None
                # another object ended in AttributeError tracebacks (found by a reviewer)
                if not isinstance(metadata, Metadata):
                    raise damaged_file_error(file, pickle.UnpicklingError(
                        f"it holds {type(metadata).__name__!r}, not torch.distributed.checkpoint Metadata"))
                if not isinstance(getattr(metadata, "state_dict_metadata", None), dict) or \
                        not isinstance(metadata.storage_data, (dict, type(None))):
                    raise damaged_file_error(file, pickle.UnpicklingError(
                        "its Metadata has no state_dict_metadata / storage_data mapping"))
                if getattr(metadata, "storage_meta", None) is None:
                    metadata.storage_meta = StorageMeta()
                self._cached_metadata = metadata
            self._cached_metadata.storage_meta.load_id = self.load_id
            return self._cached_metadata

        def read_data(self, plan, planner):
            """torch's reader, one data file at a time, so that a damaged one is named: torch's own
            error (the zip reader's, or FileNotFoundError) ended every command in a traceback."""
            by_file: dict[str, list] = {}
            for item in plan.items:
                by_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
            for relative_path, items in by_file.items():
                try:
                    super().read_data(dataclasses.replace(plan, items=items), planner).wait()
                except (RuntimeError, EOFError, OSError, ValueError, AssertionError, pickle.UnpicklingError) as exc:
                    # AssertionError: a tensor of another size than the metadata says
                    raise damaged_file_error(Path(self.path) / relative_path, exc) from None
            done = torch.futures.Future()
            done.set_result(None)
            return done

    return _DCPReader(str(path))


def _dcp_load(state: dict, reader, no_dist: bool, planner=None) -> None:
    """dcp.load, raising the CheckpointFormatError a rank's read raised (`_DCPReader.read_data`):
    DCP wraps every rank's error in a CheckpointException (a BaseException), a traceback per rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=reader, planner=planner, no_dist=no_dist)
    except CheckpointException as exc:
        named = [failure[0] for _, failure in sorted(exc.failures.items())
                 if isinstance(failure[0], CheckpointFormatError)]
        if named:
            raise CheckpointFormatError(str(named[0])) from None
        raise


def _olmo_core_config(path: Path) -> dict | None:
    """OLMo-core's experiment config.json (in the step dir or the save folder), if present."""
    for directory in (path, path.parent, path.parent.parent):
        candidate = directory / "config.json"
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except json.JSONDecodeError:
                continue
            model = data.get("model") if isinstance(data, dict) else None
            if isinstance(model, dict) and "d_model" in model:
                return model
    return None


def _olmo_core_step(path: Path) -> tuple[int | None, str | None]:
    for directory in (path, path.parent):
        match = re.fullmatch(r"step(\d+)", directory.name)
        if match:
            return int(match.group(1)), f"directory {directory.name}"
    return None, None


def _check_dcp_files(dcp_dir: Path, metadata) -> None:
    """The data files that hold the model's tensors are there and as long as `.metadata` says:
    a missing or cut one was found only while loading (after trainer.run had built the model and
    its data), in a traceback. Damage inside a file of the right size is found by the load
    (`_DCPReader.read_data`)."""
    extent: dict[str, int] = {}
    for index, info in (metadata.storage_data or {}).items():
        if getattr(index, "fqn", "").startswith("model.") and hasattr(info, "relative_path"):
            extent[info.relative_path] = max(extent.get(info.relative_path, 0), info.offset + info.length)
    for relative_path, needed in sorted(extent.items()):
        file = dcp_dir / relative_path
        try:
            size = file.stat().st_size
        except OSError as exc:
            raise damaged_file_error(file, exc) from None
        if size < needed:
            raise damaged_file_error(file, EOFError(f"{size:,} bytes, where its .metadata places tensors up to byte "
                                                    f"{needed:,}"))


def _inspect_olmo_core(path: Path) -> CheckpointInfo:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    dcp_dir = _dcp_dir(path)
    metadata = _dcp_reader(dcp_dir).read_metadata()
    _check_dcp_files(dcp_dir, metadata)
    shapes, unexpected, dtypes = {}, [], []
    for key, meta in metadata.state_dict_metadata.items():
        if not key.startswith("model."):
            continue
        ours = olmo_core_to_ours(key[len("model."):])
        if ours is None or not isinstance(meta, TensorStorageMetadata):
            unexpected.append(key)
            continue
        shapes[ours] = tuple(meta.size)
        dtypes.append(meta.properties.dtype)
    dtype = widest_dtype(dtypes)
    if not shapes:
        raise CheckpointFormatError(f"{dcp_dir}: no model.* tensors in the DCP metadata (is it an OLMo-core "
                                    f"checkpoint? keys: {_listing(sorted(metadata.state_dict_metadata))})")
    if unexpected:
        raise CheckpointFormatError(f"{dcp_dir}: tensors that are not OLMo 2 weights (another architecture?): "
                                    f"{_listing(sorted(unexpected))}")
    cfg = _model_config_from_olmo_core(path, shapes)
    step, source = _olmo_core_step(dcp_dir.parent if dcp_dir != path else path)
    return CheckpointInfo(path=dcp_dir, format="olmo-core", shapes=shapes, model=cfg, step=step,
                          step_source=source, dtype=dtype, lr=_olmo_core_lr(dcp_dir, metadata))


def _olmo_core_lr(dcp_dir: Path, metadata) -> float | None:
    """The LR an OLMo-core checkpoint's last step used, from its optimizer state: the embedding's param
    group (flattened state, as OLMo-core saves it) or the first group, as OLMo-core's own anneal scripts
    read it (olmo_core.script_utils.get_lr_from_checkpoint). Taken as the OLMo 2 cosine at its `stepN`,
    an anneal from a run on another schedule (OLMo-core's OLMo2-7B.py runs a 4T cosine) or from an
    anneal's own checkpoint started at another LR, unsaid (found by a tester). None where it holds none,
    or where it cannot be read: the model's files are checked on their own."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    class _WeightsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:  # DCP's own unpickles any object: a pickle could run code
            self.original_state_dict[read_item.dest_index.fqn] = torch.load(value, weights_only=True)

    keys = sorted(k for k in metadata.state_dict_metadata if k.startswith("optim.param_groups.") and k.endswith(".lr"))
    if not keys:
        return None
    embedding = "optim.param_groups.embeddings.weight.lr"
    key = embedding if embedding in keys else keys[0]
    meta = metadata.state_dict_metadata[key]
    state = {key: torch.empty(meta.size, dtype=meta.properties.dtype)
             if isinstance(meta, TensorStorageMetadata) else None}
    try:
        _dcp_load(state, _dcp_reader(dcp_dir), no_dist=True, planner=_WeightsOnlyPlanner(flatten_state_dict=False))
        lr = float(state[key])
    except (CheckpointFormatError, CheckpointException, pickle.UnpicklingError, RuntimeError, TypeError,
            ValueError):  # a damaged or unexpected optimizer entry: the LR is then unknown
        return None
    return lr if 0 <= lr < float("inf") else None


# OLMo-core's RMSNorm implementations (LayerNormType): one math, other kernels
_OLMO_CORE_RMS_NORMS = (None, "rms", "fused_rms", "cute_rms")
# The eps of every one of them where the LayerNormConfig leaves it out (its config.json omits None fields)
_OLMO_CORE_DEFAULT_NORM_EPS = 1e-5


def _olmo_core_norm_eps(norms: dict[str, dict | None]) -> tuple[float | None, list[str]]:
    """The one eps of the norms the config describes (None: it describes none), and the problem when
    they differ: this model has one eps for all. A norm config without "eps" has OLMo-core's default,
    1e-5, not OLMo 2's 1e-6 (read as 1e-6, and a qk_norm or lm_head eps other than the blocks' read as
    theirs, the import gave other logits without a word; found by a tester)."""
    eps = {where: float(norm["eps"]) if norm.get("eps") is not None else _OLMO_CORE_DEFAULT_NORM_EPS
           for where, norm in norms.items() if norm is not None}
    if len(set(eps.values())) > 1:
        said = ", ".join(f"{where}.eps {value:g}" for where, value in eps.items())
        return None, [f"the norms' eps differ ({said}; a norm config without eps has OLMo-core's "
                      f"{_OLMO_CORE_DEFAULT_NORM_EPS:g}), and this model has one for every norm"]
    return next(iter(eps.values()), None), []


def _olmo_core_problems(block: dict, attention: dict, rope: dict, norms: dict[str, dict]) -> list[str]:
    """What in an OLMo-core experiment config this trainer's model cannot express. Only the heads,
    RoPE theta and norm eps were read, so a pre-norm block, interleaved ("complex") RoPE or RoPE
    scaling loaded as another model without a word (found by a tester); the HF path refuses them.
    `norms`: field -> its LayerNormConfig; a LayerNorm without bias has RMSNorm's shapes (a reviewer)."""
    problems = []
    for where, norm in norms.items():
        if norm.get("name") not in _OLMO_CORE_RMS_NORMS:
            problems.append(f"{where}.name {norm['name']!r} is not RMSNorm ('rms', 'fused_rms' or 'cute_rms', "
                            f"as in OLMo 2)")
    if block.get("name") not in (None, "reordered_norm"):
        problems.append(f"block {block['name']!r} is not OLMo 2's reordered_norm (norms after attention and MLP)")
    if rope.get("name") not in (None, "default", "fused"):  # fused: the same rotation, as one kernel
        problems.append(f"RoPE {rope['name']!r} is not the default (half-split) RoPE")
    if rope.get("scaling"):
        problems.append(f"RoPE scaling {rope['scaling']!r} is not supported")
    kv = attention.get("n_kv_heads")
    if kv not in (None, attention.get("n_heads")):
        problems.append(f"n_kv_heads {kv} != n_heads {attention.get('n_heads')} (grouped-query attention is not "
                        "supported)")
    if attention.get("bias"):
        problems.append("attention bias is true (OLMo 2 has no biases)")
    # Neither changes a tensor's shape: OLMo 3's sliding windows loaded as OLMo 2's full attention, unsaid
    window = attention.get("sliding_window") or {}
    if any(w != -1 for w in window.get("pattern") or ()):
        problems.append(f"sliding-window attention {window['pattern']} is not supported (OLMo 2 attends to the whole "
                        "sequence)")
    if attention.get("clip_qkv") is not None:
        problems.append(f"clip_qkv {attention['clip_qkv']} is not supported (OLMo 2 does not clip q, k, v)")
    # Neither do these: each loaded as OLMo 2's SwiGLU, full RoPE and plain residuals (found by a tester)
    activation = (block.get("feed_forward") or {}).get("activation")
    if activation not in (None, "silu"):
        problems.append(f"feed_forward.activation {activation!r} is not silu (OLMo 2's SwiGLU)")
    if attention and attention.get("rope") is None:  # config.json leaves None out: no RoPE at all
        problems.append("the attention has no RoPE (OLMo 2 rotates queries and keys)")
    if rope.get("partial_rotary_factor") not in (None, 1, 1.0):
        problems.append(f"RoPE partial_rotary_factor {rope['partial_rotary_factor']} is not supported (OLMo 2 "
                        "rotates the whole head)")
    if rope.get("no_global_rope"):
        problems.append("RoPE no_global_rope is true (OLMo 2 rotates queries and keys in every layer)")
    for alpha in ("attention_residual_alpha", "feed_forward_residual_alpha"):
        if block.get(alpha) not in (None, 1, 1.0):
            problems.append(f"block.{alpha} {block[alpha]} is not supported (OLMo 2 adds its residuals unscaled)")
    return problems


def _model_config_from_olmo_core(path: Path, shapes: dict[str, tuple]) -> ModelConfig | None:
    """The shape follows from the tensors except the number of heads: take it from OLMo-core's
    config.json when present, else from a preset of the same shape; None if neither tells."""
    try:
        vocab, d_model = shapes["embed.weight"]
        mlp_hidden = shapes["blocks.0.mlp.gate_proj.weight"][0]
    except (KeyError, ValueError):
        raise CheckpointFormatError(f"{path}: no embeddings.weight / blocks.0.feed_forward.w1.weight") from None
    n_layers = 1 + max(int(n.split(".")[1]) for n in shapes if n.startswith("blocks."))
    base = dict(d_model=d_model, n_layers=n_layers, mlp_hidden=mlp_hidden, vocab_size=vocab)
    core = _olmo_core_config(path)
    if core is not None:
        block = core.get("block") or {}
        # OLMo-core >= 2.5 writes the attention config as "sequence_mixer" ("attention" is read
        # for older configs only): reading "attention" alone skipped every check (a reviewer).
        mixer = "sequence_mixer" if block.get("sequence_mixer") else "attention"
        attention = block.get(mixer) or {}
        rope = attention.get("rope") or {}
        norm = block.get("layer_norm") or {}
        norms = {"block.layer_norm": norm, f"block.{mixer}.qk_norm": attention.get("qk_norm") or {},
                 "lm_head.layer_norm": (core.get("lm_head") or {}).get("layer_norm") or {}}
        problems = _olmo_core_problems(block, attention, rope, norms)
        # A section the config leaves out says nothing of its eps (a hand-written config)
        norm_eps, eps_problems = _olmo_core_norm_eps({where: (n if n else None) for where, n in norms.items()})
        problems += eps_problems
        # Model-level settings that change no tensor's shape either (found by a tester)
        if core.get("embed_scale") not in (None, 1, 1.0):
            problems.append(f"embed_scale {core['embed_scale']} is not supported (OLMo 2 does not scale its "
                            "embeddings)")
        if core.get("block_overrides"):
            problems.append(f"block_overrides for blocks {sorted(core['block_overrides'])} are not supported (every "
                            "OLMo 2 block is alike)")
        if problems:
            raise CheckpointFormatError(f"{path}: " + "; ".join(problems))
        if attention.get("n_heads"):
            kwargs = dict(base, n_heads=int(attention["n_heads"]))
            if rope.get("theta"):
                kwargs["rope_theta"] = float(rope["theta"])
            if norm_eps is not None:
                kwargs["norm_eps"] = norm_eps
            cfg = ModelConfig(**kwargs)
            return cfg if cfg.padded_vocab_size == vocab else ModelConfig(**kwargs, vocab_multiple=1)
    for name in ("olmo2-1b", "olmo2-7b", "olmo2-13b", "olmo2-370M", "olmo2-190M", "olmo2-30M", "tiny"):
        preset = ModelConfig.preset(name)
        if (preset.d_model, preset.n_layers, preset.mlp_hidden, preset.padded_vocab_size) == \
                (d_model, n_layers, mlp_hidden, vocab):
            return preset
    return None


# ----------------------------------------------------------------------------- checking
def check_compatible(info: CheckpointInfo, cfg: ModelConfig) -> None:
    """Raise CheckpointFormatError unless every tensor of the model for `cfg` is in the checkpoint
    with the same shape, and nothing else is."""
    want = expected_shapes(cfg)
    rows = info.shapes.get("embed.weight", (None,))[0]
    if rows is not None and rows != want["embed.weight"][0]:
        wanted = want["embed.weight"][0]
        # 100,278 rows against 100,352: one vocabulary, padded differently (or not at all), not "another
        # tokenizer", as this said of an unpadded dolma2 checkpoint (found by a tester)
        padding = round_up(rows, cfg.vocab_multiple) == wanted or round_up(wanted, 128) == rows
        why = ("; they differ only in how the vocabulary is padded, which the model must share with the checkpoint"
               if padding else
               " (dolma2 tokenizer: 100,278 ids padded to 100,352); a checkpoint for another tokenizer cannot be used")
        raise CheckpointFormatError(f"{info.describe()}: vocabulary of {rows:,} embedding rows, the model has "
                                    f"{wanted:,}{why}")
    if info.model is not None:
        diffs = info.model.same_shape(cfg)
        if diffs:
            raise CheckpointFormatError(f"{info.describe()} does not fit the model: checkpoint vs model "
                                        f"{'; '.join(diffs)}")
    missing = sorted(set(want) - set(info.shapes))
    unexpected = sorted(set(info.shapes) - set(want))
    if missing or unexpected:
        raise CheckpointFormatError(f"{info.describe()} does not fit the model: missing {_listing(missing)}, "
                                    f"unexpected {_listing(unexpected)}")
    wrong = [f"{n} {info.shapes[n]} != {want[n]}" for n in want if info.shapes[n] != want[n]]
    if wrong:
        raise CheckpointFormatError(f"{info.describe()}: tensor shapes differ from the model: {_listing(wrong)}")


# ----------------------------------------------------------------------------- reading
class WeightReader:
    """Random access to one checkpoint's tensors by this trainer's parameter names."""

    def __init__(self, info: CheckpointInfo):
        self.info = info
        self._handles: dict[str, object] = {}
        self._state: dict | None = None
        self._hf_files: dict[str, str] | None = None
        if info.format == "trainer":
            self._state = _load_trainer_state(info.path)
        elif info.format == "hf":
            self._hf_files = _hf_files(info.path)

    def names(self) -> list[str]:
        return list(self.info.shapes)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, on CPU, in the checkpoint's dtype."""
        if name not in self.info.shapes:
            raise KeyError(f"{self.info.path} has no tensor {name!r}")
        if self._state is not None:
            return self._state[name]
        if self._hf_files is not None:
            key = hf_name(name)
            file = self._hf_files[key]
            if file not in self._handles:
                self._handles[file] = _open_safetensors(self.info.path / file)
            return self._handles[file].get_tensor(key)
        return self._get_dcp(name)

    def _get_dcp(self, name: str) -> torch.Tensor:
        if "dcp" not in self._handles:
            self._handles["dcp"] = _dcp_reader(self.info.path)
        reader = self._handles["dcp"]
        key = ours_to_olmo_core(name)
        meta = reader.read_metadata().state_dict_metadata[f"model.{key}"]
        out = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        _dcp_load({"model": {key: out}}, reader, no_dist=True)
        return out

    def close(self) -> None:
        self._handles.clear()
        self._state = None

    def __enter__(self) -> "WeightReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _copy_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a full tensor into a parameter, which FSDP2 may have sharded (a DTensor)."""
    if hasattr(param, "device_mesh") and hasattr(param, "placements"):
        from torch.distributed.tensor import distribute_tensor

        # Every rank read the same full tensor: slice it locally, no communication.
        local = distribute_tensor(value.to(param.device_mesh.device_type), param.device_mesh, param.placements,
                                  src_data_rank=None)
        param.to_local().copy_(local.to_local())
    else:
        param.copy_(value)


@torch.no_grad()
def load_weights_into(model: nn.Module, info: CheckpointInfo) -> int:
    """Copy every tensor of the checkpoint into `model` (an OLMo2, wrapped or not), one at a
    time; returns the number of tensors. Call check_compatible first."""
    inner = getattr(model, "module", model)
    params = {n.replace("_orig_mod.", ""): p for n, p in inner.named_parameters()}
    missing = sorted(set(params) - set(info.shapes))
    if missing:
        raise CheckpointFormatError(f"{info.describe()} lacks {_listing(missing)}")
    if info.format == "olmo-core":  # DCP reads straight into the parameters (sharded or not)
        import torch.distributed as dist

        targets = {ours_to_olmo_core(n): p for n, p in params.items()}
        distributed = dist.is_available() and dist.is_initialized()
        _dcp_load({"model": targets}, _dcp_reader(info.path), no_dist=not distributed)
        return len(targets)
    with WeightReader(info) as reader:
        for name, param in params.items():
            _copy_into(param, reader.get(name))
    return len(params)


def non_finite_weight(model: nn.Module) -> str | None:
    """The name of the first parameter holding NaN or inf (this rank's shard of it under FSDP), or None:
    trainer.run refuses such --init-from weights, eval such a checkpoint."""
    inner = getattr(model, "module", model)
    for name, param in inner.named_parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            return name.replace("_orig_mod.", "")
    return None


def iter_tensors(info: CheckpointInfo) -> Iterator[tuple[str, torch.Tensor]]:
    with WeightReader(info) as reader:
        for name in reader.names():
            yield name, reader.get(name)
