"""--init-from released checkpoints: Hugging Face Olmo2 directories (single file and sharded)
and OLMo-core DCP checkpoints map onto the trainer's model exactly, tensor by tensor, with
clear errors for anything that does not fit."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import types
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import ModelConfig
from trainer.model import OLMo2
from trainer.weights import (
    CheckpointFormatError, WeightReader, check_compatible, inspect_checkpoint, load_weights_into, ours_to_olmo_core,
    stage_from_revision, step_from_revision,
)

transformers = pytest.importorskip("transformers", reason="transformers builds the reference Olmo2ForCausalLM")
REPO = Path(__file__).resolve().parents[1]
VOCAB = 1024


def hf_olmo2(tmp_path: Path, name: str = "hf", dtype=torch.float32, **save_kwargs) -> tuple[Path, object]:
    """A random tiny Olmo2ForCausalLM saved as a hub download would hold it."""
    config = transformers.Olmo2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                                      rope_theta=500_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                      pad_token_id=1, eos_token_id=2, bos_token_id=None)
    torch.manual_seed(0)
    model = transformers.Olmo2ForCausalLM(config).eval()
    with torch.no_grad():  # norms that are not all ones, so a misplaced gain shows
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.mul_(1 + 0.3 * torch.randn_like(p))
    model = model.to(dtype)
    out = tmp_path / name
    model.save_pretrained(out, **save_kwargs)
    return out, model


def hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


@pytest.mark.parametrize("sharded", [False, True])
def test_hf_import_gives_the_same_logits(tmp_path, sharded):
    path, hf = hf_olmo2(tmp_path, max_shard_size="200KB" if sharded else "5GB")
    assert (path / "model.safetensors.index.json").is_file() == sharded
    if sharded:
        assert len(list(path.glob("model-*-of-*.safetensors"))) > 3
    info = inspect_checkpoint(path)
    assert info.format == "hf" and info.dtype == torch.float32 and info.step is None
    cfg = info.model
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.mlp_hidden, cfg.padded_vocab_size) == (64, 3, 4, 256, VOCAB)
    assert cfg.rope_theta == 500_000.0 and cfg.eos_token_id == 2
    model = OLMo2(cfg).eval()
    check_compatible(info, cfg)
    assert load_weights_into(model, info) == 3 + 3 * 11
    ids = torch.randint(0, VOCAB, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_hf_import_reads_what_transformers_loads_and_export_keeps_every_dtype(tmp_path):
    """model.safetensors beside an index and shards of other weights: transformers loads the
    single file, the importer read the shards (two models, one directory); an export of a
    checkpoint with a bf16 lm_head and fp32 rest wrote every tensor in bf16 (both found by a
    tester)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from trainer.export_hf import export

    path, model = hf_olmo2(tmp_path)
    other, _ = hf_olmo2(tmp_path, "other", max_shard_size="100KB")
    torch.manual_seed(1)
    for f in other.iterdir():  # shards and index of other weights beside model.safetensors
        if f.name.endswith(".index.json"):
            shutil.copy(f, path / f.name)
        elif f.name.startswith("model-"):
            save_file({k: torch.randn_like(v) for k, v in load_file(str(f)).items()}, str(path / f.name),
                      metadata={"format": "pt"})
    ours = OLMo2(inspect_checkpoint(path).model)
    load_weights_into(ours, inspect_checkpoint(path))
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(ids), model(ids).logits)
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "hf", mixed, ignore=shutil.ignore_patterns("model-*", "*.index.json"))
    tensors = load_file(str(mixed / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["lm_head.weight"].bfloat16()
    save_file(tensors, str(mixed / "model.safetensors"), metadata={"format": "pt"})
    exported = load_file(str(export(mixed, tmp_path / "mixed-hf") / "model.safetensors"))
    assert {t.dtype for t in exported.values()} == {torch.float32}
    assert torch.equal(exported["lm_head.weight"], tensors["lm_head.weight"].float())
    assert torch.equal(exported["model.norm.weight"], tensors["model.norm.weight"])


def test_a_list_of_eos_ids_is_read_and_exported_as_the_source_said(tmp_path):
    """transformers takes `eos_token_id: [2, 5]`: the importer ignored the list (the model took the default
    EOS 100257), and an export of the directory wrote that id (null here: outside the vocabulary) and no
    BOS instead of the source's own ids (found by a tester)."""
    from trainer.export_hf import export

    path, _ = hf_olmo2(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config.update(eos_token_id=[2, 5], bos_token_id=3)
    (path / "config.json").write_text(json.dumps(config))
    assert inspect_checkpoint(path).model.eos_token_id == 2
    out = export(path, tmp_path / "out", dtype="bfloat16")
    exported = json.loads((out / "config.json").read_text())
    assert (exported["eos_token_id"], exported["bos_token_id"], exported["pad_token_id"]) == ([2, 5], 3, 1)
    assert exported[next(k for k in ("dtype", "torch_dtype") if k in exported)] == "bfloat16"
    loaded = transformers.AutoConfig.from_pretrained(str(out))
    assert (loaded.eos_token_id, loaded.bos_token_id) == ([2, 5], 3)


def test_pytorch_model_bin_is_refused_with_a_conversion_command_that_runs(tmp_path):
    """An older hub revision's pytorch_model.bin was refused saying "re-save it with
    model.save_pretrained(dir, safe_serialization=True)", which does not say how to get `model` (found
    by a tester): the one line gives a command, and the directory it converts exports the same weights."""
    path, model = hf_olmo2(tmp_path, dtype=torch.bfloat16)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    proc = run_module("trainer.export_hf", path, tmp_path / "out")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    command = re.search(r'python -c "(.+)"$', proc.stderr.strip())
    assert command, proc.stderr
    subprocess.run([sys.executable, "-c", command.group(1)], check=True, capture_output=True)
    proc = run_module("trainer.export_hf", path, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    exported = hf_tensors(tmp_path / "out")
    for name, tensor in model.state_dict().items():
        assert exported[name].dtype == torch.bfloat16 and torch.equal(exported[name], tensor), name


def test_hf_import_reads_one_tensor_at_a_time(tmp_path, monkeypatch):
    """No whole-file load, and each tensor read is released before the next one is read."""
    import safetensors.torch

    path, _ = hf_olmo2(tmp_path, max_shard_size="200KB")
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("whole-file load"))
    info = inspect_checkpoint(path)
    previous, alive_when_next_read = [], []
    real_get = WeightReader.get

    def tracking_get(self, name):
        alive_when_next_read.extend(ref() is not None for ref in previous)
        previous.clear()
        tensor = real_get(self, name)
        previous.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(WeightReader, "get", tracking_get)
    load_weights_into(OLMo2(info.model), info)
    assert len(alive_when_next_read) == 3 + 3 * 11 - 1 and not any(alive_when_next_read)


def test_hf_errors_name_the_problem(tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = hf_olmo2(tmp_path)
    config = json.loads((path / "config.json").read_text())
    tensors = load_file(str(path / "model.safetensors"))

    def variant(name: str, config_change: dict | None = None, drop: str | None = None, add: str | None = None):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**config, **(config_change or {})}))
        t = {k: v for k, v in tensors.items() if k != drop}
        if add:
            t[add] = torch.zeros(64)
        save_file(t, str(d / "model.safetensors"))
        return d

    with pytest.raises(CheckpointFormatError, match="LlamaForCausalLM.*not Olmo2ForCausalLM"):
        inspect_checkpoint(variant("llama", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(CheckpointFormatError, match="grouped-query"):
        inspect_checkpoint(variant("gqa", {"num_key_value_heads": 2}))
    # no num_attention_heads is the missing field, not "num_key_value_heads 4 != num_attention_heads None
    # (grouped-query attention is not supported)" (found by a tester)
    from trainer.weights import model_config_from_hf

    headless = {k: v for k, v in config.items() if k != "num_attention_heads"}
    with pytest.raises(CheckpointFormatError, match=r"^h/config.json: missing or bad field in the Olmo2 config: "
                                                    r"'num_attention_heads'$"):
        model_config_from_hf(headless, "h/config.json")
    for name, scaled in (("rope4", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),  # transformers 4
                         ("rope5", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}})):
        with pytest.raises(CheckpointFormatError, match="RoPE scaling .*linear"):
            inspect_checkpoint(variant(name, scaled))
    # a config with both thetas, disagreeing: transformers 5 and 4 read different ones (a tester)
    with pytest.raises(CheckpointFormatError, match="rope_theta 12345.0 and rope_parameters.rope_theta 500000.0 "
                                                    "differ"):
        inspect_checkpoint(variant("thetas", {"rope_theta": 12345.0,
                                              "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}))
    # what is the same math is not refused: "swish" is SiLU, rope_type "default" is no scaling (a tester)
    same = inspect_checkpoint(variant("same-math", {"hidden_act": "swish", "rope_scaling": {"rope_type": "default"}}))
    assert same.model.rope_theta == 500_000.0
    with pytest.raises(CheckpointFormatError, match="missing model.layers.1.mlp.up_proj.weight, unexpected none"):
        inspect_checkpoint(variant("missing", drop="model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointFormatError, match="unexpected model.layers.0.self_attn.q_proj.bias"):
        inspect_checkpoint(variant("bias", add="model.layers.0.self_attn.q_proj.bias"))
    info = inspect_checkpoint(path)
    with pytest.raises(CheckpointFormatError, match="vocabulary of 1,024 embedding rows, the model has 100,352"):
        check_compatible(info, ModelConfig.preset("tiny"))
    with pytest.raises(CheckpointFormatError, match="n_layers 3 != 2"):
        check_compatible(info, ModelConfig(d_model=64, n_layers=2, n_heads=4, mlp_hidden=256, vocab_size=VOCAB))
    with pytest.raises(CheckpointFormatError, match="n_heads 4 != 8"):
        check_compatible(info, ModelConfig(d_model=64, n_layers=3, n_heads=8, mlp_hidden=256, vocab_size=VOCAB))
    (tmp_path / "config-only").mkdir()  # a config without weights: its architecture is checked first
    (tmp_path / "config-only" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match="config.json but no weights: expected model.safetensors"):
        inspect_checkpoint(tmp_path / "config-only")
    (tmp_path / "config-only" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(CheckpointFormatError, match="'llama' is not Olmo2ForCausalLM"):
        inspect_checkpoint(tmp_path / "config-only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFormatError, match="not a checkpoint this trainer reads"):
        inspect_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        inspect_checkpoint(tmp_path / "nowhere")


def test_revision_names_and_hub_cache_give_the_step(tmp_path):
    assert step_from_revision("stage1-step928646-tokens3896B") == 928646
    assert step_from_revision("stage2-ingredient1-step11931-tokens100B") == 11931
    assert step_from_revision("main") is None and step_from_revision("step000123") is None
    path, _ = hf_olmo2(tmp_path, name="hub")
    # huggingface_hub's cache: models--org--name/snapshots/<sha>/ and refs/<revision> holding <sha>
    repo = tmp_path / "models--allenai--OLMo-2-1124-7B"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots").mkdir(parents=True)
    path.rename(repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("f" * 40)
    (repo / "refs" / "stage1-step928646-tokens3896B").write_text(sha)
    info = inspect_checkpoint(repo / "snapshots" / sha)
    assert info.step == 928646 and info.step_source == "revision stage1-step928646-tokens3896B"
    assert inspect_checkpoint(repo / "snapshots" / sha, step=5, step_source="--init-step").step == 5


def test_a_mid_training_revision_says_its_step_is_the_anneals(tmp_path):
    """A stage-2 revision's step counts its anneal's steps: the importer took it as pretraining's, and an
    anneal from OLMo-2-1124-7B stage2-ingredient1-step11931-tokens50B started at the cosine's LR at step
    11,931, near the peak (found by a tester). The checkpoint says its stage; --init-step overrides both. A link
    named for its revision gives its step: resolved first, the name was lost (a tester)."""
    assert stage_from_revision("stage2-ingredient1-step11931-tokens50B") == 2
    assert stage_from_revision("stage1-step928646-tokens3896B") == 1
    assert stage_from_revision("step1000-tokens4B") is None and stage_from_revision("main") is None

    path, _ = hf_olmo2(tmp_path, name="OLMo-2-1124-7B-stage2-ingredient1-step11931-tokens50B")
    info = inspect_checkpoint(path)
    assert (info.step, info.stage) == (11931, 2)
    given = inspect_checkpoint(path, step=928646, step_source="--init-step")
    assert (given.step, given.stage) == (928646, None)
    repo = tmp_path / "models--allenai--OLMo-2-1124-7B"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots").mkdir(parents=True)
    path.rename(repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "stage1-step928646-tokens3896B").write_text(sha)
    info = inspect_checkpoint(repo / "snapshots" / sha)
    assert (info.step, info.stage) == (928646, 1)
    link = tmp_path / "OLMo-2-1124-7B-stage1-step500000-tokens2098B"  # a link named for the revision
    link.symlink_to(repo / "snapshots" / sha)
    (repo / "refs" / "stage1-step928646-tokens3896B").unlink()
    assert inspect_checkpoint(link).step == 500000


def test_a_hub_id_is_refused_with_how_to_download_it(tmp_path, monkeypatch):
    """`--init-from allenai/OLMo-2-1124-7B`, as from_pretrained takes it, said only "no checkpoint at
    allenai/OLMo-2-1124-7B" (found by a tester); a mistyped local path is not sent to the Hub. The command is
    `hf download`: huggingface_hub 1.0 removed `huggingface-cli`, which the hint named first."""
    monkeypatch.chdir(tmp_path)
    data = random_tokens(tmp_path / "data", 4 * 64)
    hint = ("no checkpoint at allenai/OLMo-2-1124-7B (checkpoints are read from a local directory, not downloaded "
            "from the Hugging Face Hub: hf download allenai/OLMo-2-1124-7B --local-dir DIR, then give DIR)")
    for proc in (run_module("trainer.export_hf", "allenai/OLMo-2-1124-7B", tmp_path / "out"),
                 run_module("trainer.run", "--data", data, "--init-from", "allenai/OLMo-2-1124-7B", "--steps", 1,
                            "--lr", "1e-4", "--seq-len", 64, "--batch-size", 2, "--device", "cpu")):
        assert proc.returncode == 2 and proc.stderr.strip().endswith(hint), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    (tmp_path / "ckpt").mkdir()
    proc = run_module("trainer.export_hf", "ckpt/7b-anneal-1", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.strip().endswith("no checkpoint at ckpt/7b-anneal-1"), proc.stderr


def random_tokens(directory: Path, n_tokens: int, vocab: int = VOCAB) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.random.default_rng(0).integers(0, vocab, n_tokens).astype("<u4").tofile(directory / "part-00000.npy")
    return directory


def run_module(module: str, *args) -> subprocess.CompletedProcess:
    """Run a trainer command's main() in this process (as `python -m module args` would)."""
    import contextlib
    import importlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = importlib.import_module(module).main([str(a) for a in args])
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("dtype,sharded", [(torch.float32, True), (torch.bfloat16, False)])
def test_zero_lr_step_then_export_gives_back_the_same_tensors(tmp_path, dtype, sharded):
    """--init-from HF, one optimizer step at LR 0, export: bitwise the weights we started from."""
    path, _ = hf_olmo2(tmp_path, dtype=dtype, max_shard_size="200KB" if sharded else "5GB")
    data = random_tokens(tmp_path / "data", 4 * 64)
    proc = run_module("trainer.run", "--data", data, "--init-from", path, "--steps", 1, "--lr", 0, "--seq-len", 64,
                      "--batch-size", 2, "--device", "cpu", "--save-dir", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    assert "initialised 36 tensors from hf checkpoint" in proc.stdout
    assert "3 x 64 from hf checkpoint" in proc.stdout and "non-embedding" in proc.stdout
    ckpt_config = json.loads((tmp_path / "run" / "step000001" / "config.json").read_text())
    assert ckpt_config["init"]["format"] == "hf" and ckpt_config["init"]["path"] == str(path)
    name = "bfloat16" if dtype == torch.bfloat16 else "float32"
    proc = run_module("trainer.export_hf", tmp_path / "run", tmp_path / "out", "--dtype", name)
    assert proc.returncode == 0, proc.stderr
    before, after = hf_tensors(path), hf_tensors(tmp_path / "out")
    assert sorted(before) == sorted(after)
    for key in before:
        assert after[key].dtype == dtype and torch.equal(before[key], after[key]), key
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["vocab_size"] == VOCAB and exported["num_hidden_layers"] == 3


def test_an_export_of_a_run_from_hf_on_unreported_data_names_the_starting_tokenizer(tmp_path):
    """A run from an HF directory holding tokenizer files, on token files without a report.json: the
    export's note said only "copy those of the tokenizer the model was trained with", though the
    starting directory held them (found by a tester). It names them; they are not copied unasked, as
    such data may have been tokenized with another tokenizer."""
    path, _ = hf_olmo2(tmp_path)
    (path / "tokenizer.json").write_text("{}")
    (path / "tokenizer_config.json").write_text("{}")
    data = random_tokens(tmp_path / "data", 4 * 64)
    proc = run_module("trainer.run", "--data", data, "--init-from", path, "--steps", 1, "--seq-len", 64,
                      "--batch-size", 2, "--device", "cpu", "--save-dir", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    proc = run_module("trainer.export_hf", tmp_path / "run", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"export_hf: note: no tokenizer files written to {tmp_path / 'out'}")
    assert f"the run started from the Hugging Face directory {path}, whose tokenizer.json, tokenizer_config.json, " \
        "generation_config.json are the files to copy if the data was tokenized with its tokenizer" in err[0], err
    assert not (tmp_path / "out" / "tokenizer.json").exists()


def test_init_from_hf_with_a_preset_of_another_shape_fails_before_training(tmp_path):
    path, _ = hf_olmo2(tmp_path)
    data = random_tokens(tmp_path / "data", 4 * 64)
    proc = run_module("trainer.run", "--data", data, "--init-from", path, "--model", "tiny", "--steps", 1,
                      "--seq-len", 64, "--batch-size", 2, "--device", "cpu", "--save-dir", tmp_path / "run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "vocabulary of 1,024 embedding rows, the model has 100,352" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_that_does_not_fit_the_named_model_says_what_to_do(tmp_path):
    """--model tiny with a checkpoint of dolma2's 100,278 rows unpadded said "a checkpoint for another
    tokenizer cannot be used", and neither that error nor a shape's said the fix: the model takes the
    checkpoint's shape without --model; a 7B / 13B anneal recipe names its model (found by a tester)."""
    config = transformers.Olmo2Config(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    transformers.Olmo2ForCausalLM(config).save_pretrained(tmp_path / "unpadded")
    info = inspect_checkpoint(tmp_path / "unpadded")
    assert info.model.padded_vocab_size == 1000
    with pytest.raises(CheckpointFormatError, match="vocabulary of 1,000 embedding rows, the model has 1,024; they "
                                                    "differ only in how the vocabulary is padded") as exc:
        check_compatible(info, ModelConfig(d_model=64, n_layers=2, n_heads=4, mlp_hidden=256, vocab_size=1000))
    assert "another tokenizer" not in str(exc.value)
    path, _ = hf_olmo2(tmp_path)
    data = random_tokens(tmp_path / "data", 4 * 64)
    common = ["--data", data, "--init-from", path, "--steps", 1, "--seq-len", 64, "--batch-size", 2, "--lr", "1e-4"]
    proc = run_module("trainer.schedule", *common, "--model", "olmo2-30M")
    assert proc.returncode == 2 and proc.stderr.rstrip().endswith(
        "; leave out --model: the model then takes the checkpoint's shape"), proc.stderr
    proc = run_module("trainer.schedule", *common, "--recipe", "olmo2-7b-anneal")
    assert proc.returncode == 2 and proc.stderr.rstrip().endswith(
        "; the olmo2-7b-anneal recipe anneals OLMo 2's olmo2-7b; --recipe microanneal anneals a checkpoint of any "
        "shape"), proc.stderr
    assert run_module("trainer.schedule", *common).returncode == 0


def test_data_beyond_the_init_checkpoints_vocabulary_names_the_checkpoint(tmp_path):
    """Without --model the model takes the checkpoint's vocabulary; data tokenized with a larger one
    fails at the first batch, and the message used to blame only the token."""
    path, _ = hf_olmo2(tmp_path)
    data = random_tokens(tmp_path / "data", 4 * 64, vocab=2 * VOCAB)
    proc = run_module("trainer.run", "--data", data, "--init-from", path, "--steps", 1, "--seq-len", 64,
                      "--batch-size", 2, "--device", "cpu", "--save-dir", tmp_path / "run")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert re.search(rf"token \d+ at offset \d+ is >= vocab_size {VOCAB} of the model, which took its vocabulary "
                     rf"from the --init-from checkpoint {re.escape(str(path))}: the data was tokenized with a larger "
                     rf"vocabulary than that checkpoint's \(dolma2: 100,278 ids\)", proc.stderr), proc.stderr


def built_mix(directory: Path, n_tokens: int, vocab: int, report_vocab: int | None) -> Path:
    """Token files and the report.json a finished build writes: the fields the trainer reads, with
    "vocab_size" (the build's tokenizer's) unless None, as in reports from before it was recorded; the EOS id
    of `hf_olmo2`'s model (the trainer refuses data of another)."""
    random_tokens(directory, n_tokens, vocab)
    report = {"manifest": "test-mix", "tokenizer": "test", "eos_token_id": 2, "output": {"tokens": n_tokens}}
    if report_vocab is not None:
        report["vocab_size"] = report_vocab
    (directory / "report.json").write_text(json.dumps(report))
    return directory


def test_a_build_report_records_its_tokenizers_vocabulary():
    """What the trainer's up-front vocabulary check reads (next test)."""
    from dolmino.manifest import load_manifest
    from dolmino.report import build_report

    manifest = load_manifest(str(REPO / "manifests" / "demo.json"))
    report = build_report(manifest, 0, [], [], [], [], types.SimpleNamespace(bundles=[], tagged_units=0),
                          types.SimpleNamespace(warnings=[], stages={}, persisted=0), elapsed_s=0.0, cluster={},
                          out="out", attributes="attributes", resumed=False)
    assert report["vocab_size"] == manifest.tokenizer.vocab_size == 100_278


def test_a_model_vocabulary_below_the_builds_tokenizers_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    """--init-from a checkpoint of another tokenizer (OLMo 1's 50,304 ids, say) without --model: the
    model takes the checkpoint's vocabulary, and the run used to stop only at the first batch holding
    a larger id, after building the model and loading the weights (minutes, for a 7B)."""
    import trainer.train

    hf, _ = hf_olmo2(tmp_path)
    common = ["--steps", 1, "--seq-len", 64, "--batch-size", 2, "--device", "cpu", "--save-dir", tmp_path / "run"]
    larger = built_mix(tmp_path / "larger", 4 * 64, vocab=2 * VOCAB, report_vocab=2 * VOCAB)
    report = larger / "report.json"
    def built_anyway(*_args, **_kwargs):
        raise AssertionError("a Trainer was built before the vocabulary was checked")

    with monkeypatch.context() as patch:
        patch.setattr(trainer.train, "Trainer", built_anyway)
        proc = run_module("trainer.run", "--data", larger, "--init-from", hf, *common)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(f"trainer.run: error: the --init-from checkpoint {hf} has a vocabulary of "
                                      f"1,024 ids, smaller than the 2,048 of the tokenizer the data was built with "
                                      f"({report}); start from a checkpoint trained with the data's tokenizer"), \
            proc.stderr
        # a preset's vocabulary is checked the same way
        built_mix(tmp_path / "huge", 4 * 64, vocab=VOCAB, report_vocab=200_000)
        proc = run_module("trainer.run", "--data", tmp_path / "huge", "--model", "tiny", *common)
        assert proc.returncode == 2 and proc.stderr.startswith(
            "trainer.run: error: --model tiny has a vocabulary of 100,278 ids, smaller than the 200,000 "), proc.stderr
    # trainer.schedule, which prints what trainer.run would do, refuses it alike
    proc = run_module("trainer.schedule", "--data", larger, "--init-from", hf, "--seq-len", 64, "--batch-size", 2)
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"trainer.schedule: error: the --init-from checkpoint {hf} has a vocabulary of 1,024 ids"), proc.stderr
    # a build whose report predates "vocab_size" is stopped by the first batch, as before
    older = built_mix(tmp_path / "older", 4 * 64, vocab=2 * VOCAB, report_vocab=None)
    proc = run_module("trainer.run", "--data", older, "--init-from", hf, *common)
    assert proc.returncode == 2 and f"is >= vocab_size {VOCAB} of the model" in proc.stderr, proc.stderr
    # and a tokenizer the checkpoint's vocabulary covers trains
    fits = built_mix(tmp_path / "fits", 4 * 64, vocab=VOCAB, report_vocab=VOCAB)
    proc = run_module("trainer.run", "--data", fits, "--init-from", hf, *common)
    assert proc.returncode == 0, proc.stderr


def truncate(file: Path) -> Path:
    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])
    return file


def refused_in_one_line(commands, file, advice: str, case) -> None:
    """Each command (module, *args) exits 2 with one line that names `file` and gives `advice`."""
    for module, *args in commands:
        proc = run_module(module, *args)
        assert proc.returncode == 2, (case, module, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{file} cannot be read (" in lines[0], (case, module, proc.stderr)
        assert advice in lines[0], (case, module, lines[0])


def test_truncated_weight_files_are_named_by_every_command_that_reads_them(tmp_path):
    """An interrupted download or copy: safetensors' and torch's own errors name no file and ended
    each command in a traceback."""
    from trainer.checkpoint import Checkpointer

    hf, _ = hf_olmo2(tmp_path)
    sharded, _ = hf_olmo2(tmp_path, "sharded", max_shard_size="200KB")
    shard = truncate(sorted(sharded.glob("model-*.safetensors"))[-1])
    cfg = ModelConfig(d_model=64, n_layers=3, n_heads=4, mlp_hidden=256, vocab_size=VOCAB, max_seq_len=128)
    model = OLMo2(cfg)
    ours = Checkpointer(tmp_path / "ours").save(1, model, torch.optim.AdamW(model.parameters()), {},
                                                {"model": cfg.to_dict()}, background=False)
    good = tmp_path / "good"
    Checkpointer(good).save(1, model, torch.optim.AdamW(model.parameters()), {}, {"model": cfg.to_dict()},
                            background=False)
    damaged = {hf: truncate(hf / "model.safetensors"), sharded: shard, ours: truncate(ours / "model.pt")}
    data = random_tokens(tmp_path / "data", 4 * 64)
    for ckpt, file in damaged.items():
        commands = [("trainer.run", "--data", data, "--init-from", ckpt, "--steps", 1, "--seq-len", 64, "--batch-size",
                     2, "--device", "cpu", "--save-dir", tmp_path / "run"),
                    ("trainer.schedule", "--init-from", ckpt, "--steps", 1),
                    ("trainer.soup", tmp_path / "soup", good, ckpt),
                    ("trainer.export_hf", ckpt, tmp_path / "out"),
                    ("trainer.eval", "--checkpoint", ckpt, "--tasks", "arc_easy", "--limit", 1, "--device", "cpu")]
        refused_in_one_line(commands, file, "is it truncated or corrupt", ckpt)


def _refusals_of_train_and_export(tmp_path, path):
    """Each of trainer.run --init-from PATH and trainer.export_hf PATH: exit 2 and one stderr line (yielded)."""
    data = random_tokens(tmp_path / "data", 4 * 64)
    commands = [("trainer.run", "--data", data, "--init-from", path, "--steps", 1, "--seq-len", 64, "--batch-size", 2,
                 "--device", "cpu", "--save-dir", tmp_path / "run"),
                ("trainer.export_hf", path, tmp_path / "out")]
    for module, *args in commands:
        proc = run_module(module, *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (module, proc.stderr)
        yield lines


@pytest.mark.parametrize("case", ["unlisted", "misplaced"])
def test_an_index_that_does_not_match_its_shards_is_refused_before_training(tmp_path, case):
    """An index that leaves a tensor out, or names another shard for it (shards and index from
    different downloads): the load ended in a KeyError or SafetensorError traceback, after the
    model was built and --save-dir made (found by a tester)."""
    path, _ = hf_olmo2(tmp_path, max_shard_size="200KB")
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    name = "model.layers.1.mlp.up_proj.weight"
    holder = index["weight_map"][name]
    if case == "unlisted":
        del index["weight_map"][name]
    else:
        index["weight_map"][name] = next(f for f in sorted(set(index["weight_map"].values())) if f != holder)
    index_file.write_text(json.dumps(index))
    for lines in _refusals_of_train_and_export(tmp_path, path):
        assert f"{index_file} does not match its shards: " in lines[0], lines[0]
        assert f"that it does not name there: {name} in {holder}" in lines[0], lines[0]
        assert lines[0].endswith("download the checkpoint again"), lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("field,value,tensor", [("vocab_size", VOCAB - 24, "lm_head.weight"),
                                                ("intermediate_size", 128, "model.layers.0.mlp.up_proj.weight")])
def test_a_config_that_does_not_describe_its_weights_is_refused_by_every_command(tmp_path, field, value, tensor):
    """config.json of one model beside the weights of another (transformers refuses it too):
    trainer.run said the vocabulary was "a checkpoint for another tokenizer", export_hf failed
    while writing, on "the header says" (found by a tester)."""
    path, _ = hf_olmo2(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, field: value}))
    for lines in _refusals_of_train_and_export(tmp_path, path):
        assert f"{path}: tensor shapes differ from the model its config.json describes" in lines[0], lines[0]
        assert tensor in lines[0] and lines[0].endswith("config.json and the weights belong to different models")
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_reading_a_checkpoints_metadata_does_not_map_its_weights(tmp_path, monkeypatch):
    """safetensors' "pt" framework maps the whole file copy-on-write, which Linux refuses for a file
    larger than the machine's memory (a 7B model in the one file export_hf writes): trainer.schedule and
    every start-up check, which read names and shapes only, ended in an "unable to mmap" traceback
    (found by a tester). Reading the tensors still needs the map: that failure is one line."""
    import safetensors

    path, _ = hf_olmo2(tmp_path)
    real_safe_open = safetensors.safe_open

    def small_machine(file, framework, **kwargs):
        if framework == "pt":
            raise RuntimeError(f"unable to mmap 29194514000 bytes from file <{file}>: Cannot allocate memory (12)")
        return real_safe_open(file, framework=framework, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", small_machine)
    info = inspect_checkpoint(path)
    assert info.dtype == torch.float32 and info.model.n_layers == 3
    proc = run_module("trainer.schedule", "--init-from", path, "--steps", 1)
    assert proc.returncode == 0 and json.loads(proc.stdout)["init_from"]["format"] == "hf", proc.stderr
    proc = run_module("trainer.export_hf", path, tmp_path / "out")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"{path / 'model.safetensors'} (" in lines[0] and "cannot be memory-mapped on this machine (Cannot " \
        "allocate memory (12)): reading its tensors needs more memory" in lines[0], lines[0]

# ----------------------------------------------------------------------------- OLMo-core
def olmo_core_state(model: OLMo2) -> dict:
    """The model's weights under OLMo-core's OLMo 2 names, as its checkpoints hold them."""
    return {ours_to_olmo_core(n): p.detach().clone() for n, p in model.named_parameters()}


def write_olmo_core_checkpoint(save_folder: Path, step: int, model: OLMo2, with_config: bool = True) -> Path:
    """An OLMo-core checkpoint: save_folder/stepN/model_and_optim/ (DCP, model.* and optim.* keys),
    save_folder/stepN/train/rank0.pt, and OLMo-core's experiment config.json in the save folder."""
    import torch.distributed.checkpoint as dcp

    step_dir = save_folder / f"step{step}"
    state = {"model": olmo_core_state(model),
             "optim": {"state": {"embeddings.weight": {"step": torch.tensor(float(step)),
                                                       "exp_avg": torch.zeros_like(model.embed.weight)}},
                       "param_groups": [{"lr": 6e-5, "params": ["embeddings.weight"]}]}}
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(step_dir / "model_and_optim"), no_dist=True)
    (step_dir / "train").mkdir()
    torch.save({"global_step": step}, step_dir / "train" / "rank0.pt")
    if with_config:
        cfg = model.cfg
        (save_folder / "config.json").write_text(json.dumps({"run_name": "x", "model": {
            "_CLASS_": "olmo_core.nn.transformer.config.TransformerConfig", "d_model": cfg.d_model,
            "vocab_size": cfg.padded_vocab_size, "n_layers": cfg.n_layers,
            "block": {"name": "reordered_norm", "attention": {"n_heads": cfg.n_heads,
                                                              "qk_norm": {"name": "rms", "eps": cfg.norm_eps},
                                                              "rope": {"theta": cfg.rope_theta}},
                      "feed_forward": {"hidden_size": cfg.mlp_hidden}, "layer_norm": {"eps": cfg.norm_eps}}}}))
    return step_dir


def as_if_written_by_olmo_core(dcp_dir: Path) -> None:
    """Rewrite the DCP metadata the way OLMo-core's RemoteFileSystemWriter pickles it: with its
    own `olmo_core.distributed.checkpoint.filesystem._StorageInfo` class (same fields)."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    with open(dcp_dir / ".metadata", "rb") as fh:
        metadata = pickle.load(fh)
    names = ["olmo_core", "olmo_core.distributed", "olmo_core.distributed.checkpoint",
             "olmo_core.distributed.checkpoint.filesystem"]
    modules = {name: types.ModuleType(name) for name in names}
    fs = modules[names[-1]]

    class StorageInfoOLMoCore:  # olmo_core's dataclass: relative_path, offset, length
        def __init__(self, relative_path, offset, length):
            self.relative_path, self.offset, self.length = relative_path, offset, length

    StorageInfoOLMoCore.__module__, StorageInfoOLMoCore.__qualname__ = fs.__name__, "_StorageInfo"
    StorageInfoOLMoCore.__name__ = "_StorageInfo"
    fs._StorageInfo = StorageInfoOLMoCore
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(modules)
    try:
        metadata.storage_data = {k: StorageInfoOLMoCore(v.relative_path, v.offset, v.length)
                                 for k, v in metadata.storage_data.items()}
        assert all(isinstance(v, _StorageInfo) is False for v in metadata.storage_data.values())
        with open(dcp_dir / ".metadata", "wb") as fh:
            pickle.dump(metadata, fh)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    raw = (dcp_dir / ".metadata").read_bytes()
    assert b"olmo_core.distributed.checkpoint.filesystem" in raw


@pytest.mark.parametrize("olmo_core_metadata", [False, True])
def test_olmo_core_checkpoint_loads_exactly(tmp_path, olmo_core_metadata):
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    torch.manual_seed(3)
    source = OLMo2(cfg)
    step_dir = write_olmo_core_checkpoint(tmp_path / "run", 42, source)
    if olmo_core_metadata:
        as_if_written_by_olmo_core(step_dir / "model_and_optim")
        assert "olmo_core" not in sys.modules
    for path in (step_dir, step_dir / "model_and_optim"):
        info = inspect_checkpoint(path)
        assert info.format == "olmo-core" and info.step == 42 and info.step_source == "directory step42"
        assert not info.model.same_shape(cfg) and info.dtype == torch.float32
        target = OLMo2(cfg)
        load_weights_into(target, info)
        for name, p in target.named_parameters():
            assert torch.equal(p, dict(source.named_parameters())[name]), name
        with WeightReader(info) as reader:  # key by key, as soups and export read it
            assert torch.equal(reader.get("blocks.1.mlp.down_proj.weight"), source.blocks[1].mlp.down_proj.weight)
    assert "olmo_core" not in sys.modules


def test_a_damaged_olmo_core_metadata_file_is_named(tmp_path):
    """An empty or cut `.metadata` (an interrupted copy of an OLMo-core checkpoint) ended every
    command in EOFError / UnpicklingError tracebacks naming no file (found by a reviewer); under
    torchrun that rank also skipped the start-up agreement the others waited in."""
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    step_dir = write_olmo_core_checkpoint(tmp_path / "run", 7, OLMo2(cfg))
    metadata = step_dir / "model_and_optim" / ".metadata"
    whole = metadata.read_bytes()
    for damaged in (b"", whole[:len(whole) // 2]):
        metadata.write_bytes(damaged)
        proc = run_module("trainer.schedule", "--init-from", step_dir, "--steps", 1)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{metadata} cannot be read (" in lines[0], proc.stderr


def test_a_damaged_or_missing_olmo_core_data_file_is_named(tmp_path):
    """A `.distcp` data file cut short, gone, or garbled inside (an interrupted copy) ended every
    command in a traceback (torch's zip reader, or FileNotFoundError, wrapped in DCP's
    CheckpointException); trainer.run got there only after building the model and its data. A
    missing or short file is refused from the metadata, before anything is built; a garbled one
    while loading, and a failed export leaves no partial model.safetensors (found by a tester)."""
    import shutil

    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    whole = write_olmo_core_checkpoint(tmp_path / "run", 7, OLMo2(cfg))
    data = random_tokens(tmp_path / "data", 4 * 64)
    for damage in ("missing", "truncated", "garbled"):
        step_dir = tmp_path / damage / "step7"
        shutil.copytree(whole, step_dir)
        shutil.copy(whole.parent / "config.json", step_dir.parent / "config.json")
        file = step_dir / "model_and_optim" / "__0_0.distcp"
        raw = file.read_bytes()
        if damage == "missing":
            file.unlink()
        elif damage == "truncated":
            file.write_bytes(raw[:len(raw) // 2])
        else:  # the same size, its bytes overwritten: only reading it tells
            file.write_bytes(raw[:100] + bytes(len(raw) - 200) + raw[-100:])
        save_dir = tmp_path / f"train-{damage}"
        commands = [("trainer.run", "--data", data, "--init-from", step_dir, "--steps", 1, "--seq-len", 64,
                     "--batch-size", 2, "--device", "cpu", "--save-dir", save_dir),
                    ("trainer.soup", tmp_path / f"soup-{damage}", whole, step_dir),
                    ("trainer.export_hf", step_dir, tmp_path / f"hf-{damage}"),
                    ("trainer.eval", "--checkpoint", step_dir, "--tasks", "arc_easy", "--limit", 1, "--device", "cpu")]
        refused_in_one_line(commands, file, "was it left out" if damage == "missing" else "is it truncated or corrupt",
                            damage)
        if damage != "garbled":  # found from the metadata, in trainer.run's start-up checks: nothing was built
            with pytest.raises(CheckpointFormatError, match=f"^{re.escape(str(file))} cannot be read"):
                inspect_checkpoint(step_dir)
            assert not save_dir.exists()
        out = tmp_path / f"hf-{damage}"
        assert not out.exists() or list(out.iterdir()) == []  # no partial .model.safetensors.tmp<pid> left


def test_olmo_core_checkpoint_exports_to_hf_with_the_same_logits(tmp_path):
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    torch.manual_seed(4)
    source = OLMo2(cfg).eval()
    step_dir = write_olmo_core_checkpoint(tmp_path / "run", 7, source)
    as_if_written_by_olmo_core(step_dir / "model_and_optim")
    proc = run_module("trainer.export_hf", step_dir, tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (1, 50), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - source(ids)).abs().max().item() <= 1e-5


def test_olmo_core_checkpoint_without_config_needs_a_matching_preset_or_model(tmp_path):
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    step_dir = write_olmo_core_checkpoint(tmp_path / "bare", 3, OLMo2(cfg), with_config=False)
    info = inspect_checkpoint(step_dir)
    assert info.model is None  # 1024-row vocabulary: no preset has this shape, heads unknown
    check_compatible(info, cfg)  # shapes alone still check against a given model
    tiny = ModelConfig.preset("tiny")
    step_dir = write_olmo_core_checkpoint(tmp_path / "tiny", 3, OLMo2(tiny), with_config=False)
    assert inspect_checkpoint(step_dir).model.preset_name() == "tiny"


def test_export_without_the_number_of_heads_says_the_fix_that_works(tmp_path):
    """The message suggested `trainer.run ... --steps 0`, which trainer.run refuses."""
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    with_config = write_olmo_core_checkpoint(tmp_path / "full", 3, OLMo2(cfg))
    step_dir = write_olmo_core_checkpoint(tmp_path / "bare", 3, OLMo2(cfg), with_config=False)
    proc = run_module("trainer.export_hf", step_dir, tmp_path / "hf")
    assert proc.returncode == 2 and "--steps 0" not in proc.stderr
    assert "copy OLMo-core's experiment config.json" in proc.stderr and "holds the stepN directory" in proc.stderr
    (tmp_path / "bare" / "config.json").write_bytes((with_config.parent / "config.json").read_bytes())
    proc = run_module("trainer.export_hf", step_dir, tmp_path / "hf")  # the fix the message gives
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_attention_heads"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hf", "olmo-core"])
def test_init_from_under_fsdp_loads_every_shard(tmp_path, fmt):
    """2 gloo ranks with FSDP2: parameters are DTensor shards, filled from the full tensors
    (HF: sliced locally; OLMo-core: DCP reads each rank's shard). --lr 0 for one step and
    the gathered checkpoint is bitwise the source."""
    import shutil

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this interpreter")
    if fmt == "hf":
        source, _ = hf_olmo2(tmp_path, max_shard_size="200KB")
        want = {k: v for k, v in hf_tensors(source).items()}
    else:
        cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
        torch.manual_seed(5)
        model = OLMo2(cfg)
        source = write_olmo_core_checkpoint(tmp_path / "run", 9, model)
        from trainer.export_hf import hf_name

        want = {hf_name(n): p.detach() for n, p in model.named_parameters()}
    data = random_tokens(tmp_path / "data", 8 * 64)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "trainer.run", "--data", str(data),
           "--init-from", str(source), "--steps", "1", "--lr", "0", "--seq-len", "64", "--batch-size", "2",
           "--device", "cpu", "--fsdp", "--save-dir", str(tmp_path / "fsdp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2" in proc.stdout and f"from {fmt} checkpoint" in proc.stdout
    assert run_module("trainer.export_hf", tmp_path / "fsdp", tmp_path / "out").returncode == 0
    got = hf_tensors(tmp_path / "out")
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_a_checkpoint_shaped_like_a_preset_keeps_its_own_config(tmp_path):
    """An HF checkpoint with `tiny`'s shape but a 4,096-token context (and the padded vocabulary
    as its vocab_size) took the preset's config whole: trained and exported as a 512-token
    model (found by a tester). The checkpoint's config is kept; the preset only names it."""
    import argparse

    from trainer.plan import inspect_init, resolve_model

    config = transformers.Olmo2Config(vocab_size=100352, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                                      rope_theta=500_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                      pad_token_id=100277, eos_token_id=100257, bos_token_id=None)
    transformers.Olmo2ForCausalLM(config).save_pretrained(tmp_path / "hf")
    args = argparse.Namespace(init_from=str(tmp_path / "hf"), init_step=None, model=None, seq_len=128)
    cfg, label = resolve_model(args, inspect_init(args))
    assert label == "tiny"
    assert (cfg.max_seq_len, cfg.vocab_size, cfg.padded_vocab_size) == (4096, 100352, 100352)
    # with --model naming that preset, the checkpoint's context length is kept too (found by a tester)
    cfg, label = resolve_model(argparse.Namespace(**{**vars(args), "model": "tiny"}), inspect_init(args))
    assert (label, cfg.max_seq_len) == ("tiny", 4096)


def test_what_a_config_leaves_out_is_what_transformers_takes(tmp_path):
    """Found by a tester: a config.json without rms_norm_eps (or max_position_embeddings) was
    imported with 1e-6 (4,096) where transformers' Olmo2Config takes 1e-5 (2,048): other logits,
    and an export changed the model; "num_key_value_heads": null was refused as grouped-query."""
    path, model = hf_olmo2(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config.update(rms_norm_eps=1e-5, num_key_value_heads=None)
    del config["max_position_embeddings"]
    (path / "config.json").write_text(json.dumps(config))
    info = inspect_checkpoint(path)
    assert (info.model.norm_eps, info.model.max_seq_len) == (1e-5, 2048)
    del config["rms_norm_eps"]
    (path / "config.json").write_text(json.dumps(config))
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    info = inspect_checkpoint(path)
    assert (info.model.norm_eps, info.model.max_seq_len) == (reference.config.rms_norm_eps, 2048)
    ours = OLMo2(info.model).eval()
    load_weights_into(ours, info)
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(ids), reference(input_ids=ids).logits)


def test_an_export_over_a_sharded_model_leaves_one_model(tmp_path):
    """Found by a tester: exporting into a directory holding a sharded HF model left its index and
    shards beside the new model.safetensors; this trainer's importer read the old shards,
    transformers the new file."""
    old, _ = hf_olmo2(tmp_path, "dest", max_shard_size="100KB")
    assert (old / "model.safetensors.index.json").is_file()
    # the replaced model's generation settings: generate() stopped at its EOS, not the new config's (a tester)
    (old / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    src, model = hf_olmo2(tmp_path, "src")
    with torch.no_grad():  # another model than the one in dest
        for p in model.parameters():
            p.add_(1.0)
    model.save_pretrained(src)
    proc = run_module("trainer.export_hf", src, old)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "ckpt").mkdir()  # a trainer checkpoint's own directory: its config.json would be replaced (a reviewer)
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"")
    proc = run_module("trainer.export_hf", src, tmp_path / "ckpt")
    assert proc.returncode == 2
    assert "holds a trainer checkpoint or run (model.pt); export into a directory of its own" in proc.stderr
    assert sorted(p.name for p in old.iterdir() if "safetensors" in p.name) == ["model.safetensors"]
    assert not (old / "generation_config.json").exists()
    with WeightReader(inspect_checkpoint(old)) as exported, WeightReader(inspect_checkpoint(src)) as wanted:
        assert exported.names() == wanted.names()
        for name in wanted.names():
            assert torch.equal(exported.get(name), wanted.get(name)), name


def test_an_olmo_core_config_the_model_cannot_express_is_refused(tmp_path):
    """Found by a tester: only the heads, RoPE theta and norm eps were read from OLMo-core's config,
    so a pre-norm block or interleaved / scaled RoPE loaded (and exported) as another model."""
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    step_dir = write_olmo_core_checkpoint(tmp_path / "run", 5, OLMo2(cfg))
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    for change, words in (({"name": "default"}, "block 'default' is not OLMo 2's reordered_norm"),
                          ({"attention": {"n_heads": 4, "rope": {"name": "complex"}}}, "RoPE 'complex' is not"),
                          ({"attention": {"n_heads": 4, "rope": {"scaling": {"name": "yarn"}}}}, "RoPE scaling"),
                          ({"attention": {"n_heads": 4, "n_kv_heads": 2}}, "grouped-query"),
                          # OLMo 3's shapes are OLMo 2's: its windows and clipping loaded unsaid (a tester)
                          ({"attention": {"n_heads": 4, "sliding_window": {"pattern": [4096, 4096, 4096, -1]}}},
                           r"sliding-window attention \[4096, 4096, 4096, -1\] is not supported"),
                          ({"attention": {"n_heads": 4, "clip_qkv": 8.0}}, "clip_qkv 8.0 is not supported")):
        block = {**written["model"]["block"], **change}
        (tmp_path / "run" / "config.json").write_text(json.dumps({**written, "model": {**written["model"],
                                                                                      "block": block}}))
        with pytest.raises(CheckpointFormatError, match=words):
            inspect_checkpoint(step_dir)
    # OLMo-core >= 2.5 writes "sequence_mixer" where older ones wrote "attention" (found by a reviewer)
    mixer = {k: v for k, v in written["model"]["block"].items() if k != "attention"}
    mixer["sequence_mixer"] = {"n_heads": 4, "rope": {"name": "complex", "theta": 500000}}
    (tmp_path / "run" / "config.json").write_text(json.dumps({**written, "model": {**written["model"],
                                                                                  "block": mixer}}))
    with pytest.raises(CheckpointFormatError, match="RoPE 'complex' is not"):
        inspect_checkpoint(step_dir)
    for change, words in (({"embed_scale": 8.0}, "embed_scale 8.0 is not supported"),
                          ({"block_overrides": {"1": {"name": "default"}}}, r"block_overrides for blocks \['1'\]")):
        (tmp_path / "run" / "config.json").write_text(json.dumps({**written, "model": {**written["model"], **change}}))
        with pytest.raises(CheckpointFormatError, match=words):
            inspect_checkpoint(step_dir)
    fused = {**written["model"]["block"], "attention": {"n_heads": 4, "rope": {"name": "fused", "theta": 500000},
                                                        "sliding_window": {"pattern": [-1]}, "clip_qkv": None}}
    model = {**written["model"], "block": fused, "embed_scale": None, "block_overrides": None}
    (tmp_path / "run" / "config.json").write_text(json.dumps({**written, "model": model}))
    assert inspect_checkpoint(step_dir).model.n_heads == 4


def test_an_olmo_core_config_of_other_math_in_olmo_2_shapes_is_refused(tmp_path):
    """Found by a tester: GeGLU, partial or no RoPE, scaled residuals and per-norm eps change no
    tensor's shape, and each loaded as OLMo 2 without a word. A norm config without eps is
    OLMo-core's RMSNorm default, 1e-5 (it was read as OLMo 2's 1e-6)."""
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    step_dir = write_olmo_core_checkpoint(tmp_path / "run", 5, OLMo2(cfg))
    written = json.loads((tmp_path / "run" / "config.json").read_text())

    def config(change) -> None:
        model = json.loads(json.dumps(written["model"]))
        change(model)
        (tmp_path / "run" / "config.json").write_text(json.dumps({**written, "model": model}))

    attention = lambda m: m["block"]["attention"]  # noqa: E731
    for change, words in (
            (lambda m: m["block"]["feed_forward"].update(activation="gelu_tanh"),
             r"feed_forward.activation 'gelu_tanh' is not silu"),
            (lambda m: attention(m).pop("rope"), "the attention has no RoPE"),
            (lambda m: attention(m).update(rope=None), "the attention has no RoPE"),
            (lambda m: attention(m)["rope"].update(partial_rotary_factor=0.25), "partial_rotary_factor 0.25"),
            (lambda m: attention(m)["rope"].update(no_global_rope=True), "no_global_rope is true"),
            (lambda m: m["block"].update(feed_forward_residual_alpha=0.5), "feed_forward_residual_alpha 0.5"),
            (lambda m: attention(m)["qk_norm"].pop("eps"),
             r"block.layer_norm.eps 1e-06, block.attention.qk_norm.eps 1e-05"),
            (lambda m: m.update(lm_head={"layer_norm": {"name": "rms", "eps": 1e-3}}), "lm_head.layer_norm.eps 0.001")):
        config(change)
        with pytest.raises(CheckpointFormatError, match=words):
            inspect_checkpoint(step_dir)
    # OLMo-core's defaults written out, and one eps left out everywhere: the model OLMo-core builds
    config(lambda m: (m["block"]["feed_forward"].update(activation="silu"), m["block"].update(
        attention_residual_alpha=1.0), attention(m)["rope"].update(partial_rotary_factor=1.0, no_global_rope=False)))
    assert inspect_checkpoint(step_dir).model.norm_eps == 1e-6
    config(lambda m: (m["block"]["layer_norm"].pop("eps"), attention(m)["qk_norm"].pop("eps"),
                      m.update(lm_head={"layer_norm": {"name": "rms"}})))
    assert inspect_checkpoint(step_dir).model.norm_eps == 1e-5


def test_a_hostile_olmo_core_metadata_runs_no_code(tmp_path):
    """`.metadata` was unpickled with every global allowed: a downloaded checkpoint whose
    `.metadata` reduces to os.system ran it in export / eval / soup / --init-from (found by a
    reviewer). Only what DCP metadata holds is unpickled; anything else is one line naming the file."""
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    step_dir = write_olmo_core_checkpoint(tmp_path / "run", 7, OLMo2(cfg))
    metadata = step_dir / "model_and_optim" / ".metadata"
    marker = tmp_path / "code-ran"

    class Payload:
        def __init__(self, call, arg):
            self.call, self.arg = call, arg

        def __reduce__(self):
            return self.call, (self.arg,)

    for payload in (Payload(os.system, f"echo ran > {marker}"),
                    Payload(exec, f"open({str(marker)!r}, 'w').write('ran')")):  # a builtin, not on the list
        metadata.write_bytes(pickle.dumps(payload))
        for module, *args in (("trainer.export_hf", step_dir, tmp_path / "hf"),
                              ("trainer.schedule", "--init-from", step_dir, "--steps", 1)):
            proc = run_module(module, *args)
            assert not marker.exists(), (payload.call, module)
            assert proc.returncode == 2, proc.stderr
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and f"{metadata} cannot be read (it names " in lines[0], proc.stderr
            assert "which DCP metadata does not hold" in lines[0], proc.stderr
    # a pickle of something else than DCP Metadata: "'int' object has no attribute 'storage_meta'" (a reviewer)
    from torch.distributed.checkpoint.metadata import Metadata

    for other, words in ((5, "it holds 'int', not torch.distributed.checkpoint Metadata"),
                         ({"state_dict_metadata": {}}, "it holds 'dict', not torch.distributed.checkpoint Metadata"),
                         (Metadata.__new__(Metadata), "its Metadata has no state_dict_metadata / storage_data")):
        metadata.write_bytes(pickle.dumps(other))
        proc = run_module("trainer.export_hf", step_dir, tmp_path / "hf")
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{metadata} cannot be read ({words}" in lines[0], proc.stderr


def test_dcp_metadata_as_torch_writes_it_passes_the_allow_list(tmp_path):
    """What torch.distributed.checkpoint pickles into `.metadata` (dtypes, layouts, memory formats,
    sizes, storage and tensor metadata, the checkpoint's path) is all allowed: the allow-list is
    read back against a save of a model and its optimizer of several dtypes."""
    import torch.distributed.checkpoint as dcp

    from trainer.weights import _dcp_reader

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(2, 8)).sum().backward()
    optim.step()
    state = {"model": {**model.state_dict(), "half": torch.ones(3, dtype=torch.bfloat16),
                       "ids": torch.arange(4), "mask": torch.ones(2, dtype=torch.bool),
                       "image": torch.ones(1, 2, 3, 4).to(memory_format=torch.channels_last)},
             "optim": optim.state_dict(), "extra": {"name": "x", "none": None, "list": [1, 2.0]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    with open(tmp_path / "dcp" / ".metadata", "rb") as fh:
        want = pickle.load(fh)
    got = _dcp_reader(tmp_path / "dcp").read_metadata()
    assert got.state_dict_metadata == want.state_dict_metadata and got.storage_data == want.storage_data
    assert got.planner_data == want.planner_data and got.storage_meta.checkpoint_id == want.storage_meta.checkpoint_id
    # torch before 2.2 pickled TensorProperties from torch.distributed._shard (a reviewer)
    import io

    from torch.distributed._shard.sharded_tensor import metadata as before_2_2

    from trainer.weights import _MetadataUnpickler

    old = pickle.dumps(before_2_2.TensorProperties(dtype=torch.bfloat16))
    assert b"torch.distributed._shard.sharded_tensor.metadata" in old
    assert _MetadataUnpickler(io.BytesIO(old), tmp_path / ".metadata").load().dtype == torch.bfloat16


def test_an_olmo_core_norm_that_is_not_rms_is_refused(tmp_path):
    """A LayerNorm without bias has RMSNorm's tensor shapes: an OLMo-core model with "layer_norm":
    {"name": "default"} imported as RMSNorm without a word (found by a reviewer). The RMSNorm
    implementations ("rms", "fused_rms", "cute_rms") are the same math and are read."""
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=64)
    step_dir = write_olmo_core_checkpoint(tmp_path / "run", 5, OLMo2(cfg))
    written = json.loads((tmp_path / "run" / "config.json").read_text())

    def with_norms(name: str, field: str) -> None:
        model = json.loads(json.dumps(written["model"]))
        if field == "block.layer_norm":
            model["block"]["layer_norm"]["name"] = name
        elif field == "block.attention.qk_norm":
            model["block"]["attention"]["qk_norm"]["name"] = name
        else:
            model["lm_head"] = {"layer_norm": {"name": name, "eps": cfg.norm_eps}}
        (tmp_path / "run" / "config.json").write_text(json.dumps({**written, "model": model}))

    for field in ("block.layer_norm", "block.attention.qk_norm", "lm_head.layer_norm"):
        for name in ("default", "l2_norm"):
            with_norms(name, field)
            with pytest.raises(CheckpointFormatError, match=rf"{field}.name {name!r} is not RMSNorm"):
                inspect_checkpoint(step_dir)
        for name in ("rms", "fused_rms", "cute_rms"):
            with_norms(name, field)
            assert inspect_checkpoint(step_dir).model.n_heads == 4
    # OLMo-core >= 2.5: the attention config is "sequence_mixer", and the field is named so
    block = {k: v for k, v in written["model"]["block"].items() if k != "attention"}
    block["sequence_mixer"] = {"n_heads": 4, "qk_norm": {"name": "default"}}
    model = {**written["model"], "block": block}
    (tmp_path / "run" / "config.json").write_text(json.dumps({**written, "model": model}))
    with pytest.raises(CheckpointFormatError, match=r"block.sequence_mixer.qk_norm.name 'default' is not RMSNorm"):
        inspect_checkpoint(step_dir)


def test_the_revision_nearest_the_checkpoint_names_its_step():
    """A directory of checkpoints named for one revision, holding another: the first match in the
    absolute path was the ancestor's, so the anneal started at step 500,000's LR (found by a tester)."""
    path = "/x/stage1-step500000-tokens2098B/OLMo-2-1124-7B-stage2-ingredient1-step11931-tokens50B"
    assert (step_from_revision(path), stage_from_revision(path)) == (11931, 2)
    assert step_from_revision("/ckpts/stage1-step928646-tokens3896B/hf") == 928646  # a plain child: the ancestor's
