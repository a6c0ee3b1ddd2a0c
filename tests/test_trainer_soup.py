"""Soups that scale: N ingredients of any format averaged one tensor at a time into both formats."""

from __future__ import annotations

import errno
import json
import os
import weakref
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import Checkpointer, load_model_weights, resolve_checkpoint
from trainer.config import ModelConfig
from trainer.model import OLMo2
from trainer.soup import main as soup_main, soup
from trainer.weights import WeightReader

CFG = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=512, max_seq_len=64)


def trainer_checkpoint(path: Path, seed: int, cfg: ModelConfig = CFG) -> dict:
    torch.manual_seed(seed)
    model = OLMo2(cfg)
    Checkpointer(path).save(5, model, torch.optim.AdamW(model.parameters()), {}, {"model": cfg.to_dict()},
                            background=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


def expected_average(states: list[dict]) -> dict:
    return {k: (sum(s[k].double() for s in states) / len(states)).float() for k in states[0]}


def test_soup_writes_both_formats_from_trainer_checkpoints(tmp_path, capsys):
    states = [trainer_checkpoint(tmp_path / f"run{s}", s) for s in (1, 2, 3)]
    assert soup_main([str(tmp_path / "soup"), *(str(tmp_path / f"run{s}") for s in (1, 2, 3))]) == 0
    assert "and" in capsys.readouterr().out
    averaged, config = load_model_weights(tmp_path / "soup")
    want = expected_average(states)
    assert all(torch.equal(averaged[k], want[k]) for k in want)
    assert [c["format"] for c in config["soup"]] == ["trainer"] * 3 and config["model"] == CFG.to_dict()
    from safetensors.torch import load_file

    from trainer.export_hf import hf_name

    hf = load_file(str(tmp_path / "soup" / "hf" / "model.safetensors"))
    assert sorted(hf) == sorted(hf_name(k) for k in want)
    assert all(torch.equal(hf[hf_name(k)], want[k]) for k in want)
    hf_config = json.loads((tmp_path / "soup" / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["Olmo2ForCausalLM"] and hf_config["torch_dtype"] == "float32"


def test_soup_streams_one_ingredient_tensor_at_a_time(tmp_path, monkeypatch):
    for s in (1, 2, 3, 4):
        trainer_checkpoint(tmp_path / f"run{s}", s)
    alive = []
    previous = []
    real_get = WeightReader.get

    def tracking_get(self, name):
        alive.append(sum(ref() is not None for ref in previous))
        previous.clear()
        tensor = real_get(self, name)
        previous.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(WeightReader, "get", tracking_get)
    # memory-mapped trainer checkpoints keep their tensors alive in the map; read them as copies
    monkeypatch.setattr("trainer.weights._load_trainer_state", lambda path: _CopyOnGet(path))
    soup(tmp_path / "soup", [tmp_path / f"run{s}" for s in (1, 2, 3, 4)], write_hf=False)
    assert len(alive) == 4 * 25 and max(alive) == 0


class _CopyOnGet(dict):
    def __init__(self, path):
        super().__init__(torch.load(path / "model.pt", weights_only=True))

    def __getitem__(self, key):
        return super().__getitem__(key).clone()


def test_soup_of_hf_directories_and_a_trainer_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    states, dirs = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        hf_cfg = transformers.Olmo2Config(vocab_size=512, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=2, max_position_embeddings=64, rope_theta=500_000.0,
                                          rms_norm_eps=1e-6, pad_token_id=1, eos_token_id=2)
        model = transformers.Olmo2ForCausalLM(hf_cfg)
        model.save_pretrained(tmp_path / f"hf{seed}", max_shard_size="50KB")
        (tmp_path / f"hf{seed}" / "tokenizer.json").write_text(json.dumps({"tokenizer": "one"}))
        dirs.append(tmp_path / f"hf{seed}")
    from trainer.weights import inspect_checkpoint, iter_tensors

    for d in dirs:
        states.append(dict(iter_tensors(inspect_checkpoint(d))))
    cfg = inspect_checkpoint(dirs[0]).model
    states.append(trainer_checkpoint(tmp_path / "run", 3, cfg))
    out = soup(tmp_path / "soup", [*dirs, tmp_path / "run"])
    averaged, config = load_model_weights(out)
    want = expected_average(states)
    assert all(torch.equal(averaged[k], want[k]) for k in want)
    assert [c["format"] for c in config["soup"]] == ["hf", "hf", "trainer"]
    assert json.loads((out / "hf" / "tokenizer.json").read_text()) == {"tokenizer": "one"}  # the ingredients' own
    hf_config = json.loads((out / "hf" / "config.json").read_text())
    assert hf_config["eos_token_id"] == 2 and hf_config["pad_token_id"] == 1
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out / "hf"), dtype=torch.float32).eval()
    ours = OLMo2(cfg).eval()
    ours.load_state_dict(averaged)
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - ours(ids)).abs().max().item() <= 1e-5

    # Refused (found by a tester): other tokenizers (ids that mean other text), and an output that is
    # an ingredient or holds a Hugging Face model (its config.json was replaced by the soup's).
    (dirs[1] / "tokenizer.json").write_text(json.dumps({"tokenizer": "another"}))
    with pytest.raises(ValueError, match="different tokenizers cannot be averaged .*tokenizer.json sha256"):
        soup(tmp_path / "soup2", dirs)
    (dirs[1] / "tokenizer.json").write_text(json.dumps({"tokenizer": "one"}))
    config = json.loads((dirs[1] / "config.json").read_text())
    (dirs[1] / "config.json").write_text(json.dumps({**config, "eos_token_id": 7}))
    with pytest.raises(ValueError, match="different tokenizers cannot be averaged .*EOS id 7 != 2"):
        soup(tmp_path / "soup2", dirs)
    (dirs[1] / "config.json").write_text(json.dumps(config))
    for target in (dirs[0], dirs[1]):
        before = (target / "config.json").read_bytes()
        with pytest.raises(ValueError, match="is one of the soup's checkpoints|holds a Hugging Face model"):
            soup(target, [dirs[0], tmp_path / "run"])
        assert (target / "config.json").read_bytes() == before and not (target / "model.pt").exists()


def test_soup_checks_every_ingredient_before_averaging(tmp_path, capsys):
    trainer_checkpoint(tmp_path / "a", 1)
    trainer_checkpoint(tmp_path / "b", 2, ModelConfig(**{**CFG.to_dict(), "n_layers": 3}))
    assert soup_main([str(tmp_path / "out"), str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "different model configs" in err and "n_layers 3 != 2" in err
    assert not (tmp_path / "out").exists()
    trainer_checkpoint(tmp_path / "c", 3, ModelConfig(**{**CFG.to_dict(), "vocab_size": 1000}))
    with pytest.raises(ValueError, match="different model configs"):
        soup(tmp_path / "out", [tmp_path / "a", tmp_path / "c"])
    with pytest.raises(ValueError, match="at least two"):
        soup(tmp_path / "out", [tmp_path / "a"])
    with pytest.raises(FileNotFoundError):
        soup(tmp_path / "out", [tmp_path / "a", tmp_path / "missing"])
    trainer_checkpoint(tmp_path / "d", 4)
    out = soup(tmp_path / "bf16", [tmp_path / "a", tmp_path / "d"], dtype="bfloat16")
    averaged, _ = load_model_weights(out)
    assert all(t.dtype == torch.bfloat16 for t in averaged.values())


def poison(run: Path, name: str, value: float) -> None:
    """Overwrite one weight of a saved checkpoint, as a diverged run or a damaged file has it."""
    model_file = resolve_checkpoint(run) / "model.pt"
    state = torch.load(model_file, weights_only=True)
    state[name].view(-1)[3] = value
    torch.save(state, model_file)


def test_soup_refuses_an_ingredient_with_non_finite_weights(tmp_path, capsys):
    """NaN / inf weights (a diverged run, bytes overwritten with 0xff) were averaged in unsaid (found by a
    tester); the check is made as each tensor is averaged, so it names the first one."""
    trainer_checkpoint(tmp_path / "a", 1)
    trainer_checkpoint(tmp_path / "b", 2)
    poison(tmp_path / "b", "lm_head.weight", float("nan"))
    poison(tmp_path / "b", "blocks.1.mlp.up_proj.weight", float("inf"))
    assert soup_main([str(tmp_path / "out"), str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite" in err[0] and "blocks.1.mlp.up_proj.weight" in err[0], err
    assert str(resolve_checkpoint(tmp_path / "b")) in err[0] and not (tmp_path / "out").exists()


def test_soup_checks_that_out_can_be_written_before_averaging(tmp_path, capsys, monkeypatch):
    """An OUT that cannot be written failed after every ingredient was read, with a traceback; a failed
    write left what it had written (found by a tester)."""
    trainer_checkpoint(tmp_path / "a", 1)
    trainer_checkpoint(tmp_path / "b", 2)
    reads = []
    real_get = WeightReader.get
    monkeypatch.setattr(WeightReader, "get", lambda self, name: reads.append(name) or real_get(self, name))
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file" / "soup", Path("/proc/dolmino-soup-test/soup")):
        assert soup_main([str(out), str(tmp_path / "a"), str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("soup: ") and str(out) in err[0], err
        assert reads == []

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out" / "model.pt"))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "hf" / "model.safetensors"))

    (tmp_path / "existing").mkdir()
    for out in (tmp_path / "out" / "soup", tmp_path / "existing"):
        for target, failure, reason in (("torch.save", read_only, "Read-only file system"),
                                        ("trainer.export_hf.write_safetensors", full_disk, "No space left")):
            with monkeypatch.context() as patch:
                patch.setattr(target, failure)
                assert soup_main([str(out), str(tmp_path / "a"), str(tmp_path / "b")]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("soup: ") and reason in err[0], err
            assert not (tmp_path / "out").exists() and list((tmp_path / "existing").iterdir()) == []
    assert soup_main([str(tmp_path / "existing"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0


def test_soup_refuses_an_output_inside_an_ingredient_or_around_one(tmp_path):
    """`trainer.soup soupB soupB/hf run` replaced the ingredient soupB/hf (found by a tester)."""
    trainer_checkpoint(tmp_path / "a", 1)
    trainer_checkpoint(tmp_path / "out" / "hf", 2)
    with pytest.raises(ValueError, match="inside"):
        soup(tmp_path / "a" / "soup", [tmp_path / "a", tmp_path / "out" / "hf"])
    with pytest.raises(ValueError, match="hf, which the soup writes"):
        soup(tmp_path / "out", [tmp_path / "a", tmp_path / "out" / "hf"])
    assert not (tmp_path / "a" / "soup").exists() and not (tmp_path / "out" / "model.pt").exists()
    # ingredients in another subdirectory of OUT are not written over (a reviewer: it was refused)
    trainer_checkpoint(tmp_path / "exp" / "ingredients" / "b", 3)
    soup(tmp_path / "exp", [tmp_path / "a", tmp_path / "exp" / "ingredients" / "b"])
    assert (tmp_path / "exp" / "model.pt").is_file()


def test_a_failed_soup_removes_only_what_it_wrote(tmp_path, monkeypatch):
    """It removed the highest directory it had made, whole: a sibling soup written there meanwhile
    went with it (found by a reviewer)."""
    import trainer.soup as soup_mod

    trainer_checkpoint(tmp_path / "a", 1)
    trainer_checkpoint(tmp_path / "b", 2)
    real = soup_mod._streamed_average

    def sibling_then_fail(readers, name, dtype):
        (tmp_path / "soups" / "B").mkdir(parents=True, exist_ok=True)  # another soup, meanwhile
        (tmp_path / "soups" / "B" / "model.pt").write_bytes(b"theirs")
        real(readers, name, dtype)
        raise ValueError("tensor x holds non-finite values")

    monkeypatch.setattr(soup_mod, "_streamed_average", sibling_then_fail)
    with pytest.raises(ValueError, match="non-finite"):
        soup(tmp_path / "soups" / "A", [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "soups" / "A").exists()
    assert (tmp_path / "soups" / "B" / "model.pt").read_bytes() == b"theirs"


def test_soup_refuses_an_output_that_holds_a_model(tmp_path):
    """A second soup into an existing one replaced it and its hf/ without a word (found by a tester)."""
    for seed in (1, 2, 3):
        trainer_checkpoint(tmp_path / f"run{seed}", seed)
    out = soup(tmp_path / "soup", [tmp_path / "run1", tmp_path / "run2"])
    before = (out / "model.pt").read_bytes(), (out / "hf" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a model .*remove it or write the soup into another"):
        soup(out, [tmp_path / "run2", tmp_path / "run3"])
    assert ((out / "model.pt").read_bytes(), (out / "hf" / "model.safetensors").read_bytes()) == before
    (tmp_path / "other" / "hf").mkdir(parents=True)  # e.g. an export into OUT/hf
    (tmp_path / "other" / "hf" / "model.safetensors").write_bytes(b"another model")
    with pytest.raises(ValueError, match="hf holds files"):
        soup(tmp_path / "other", [tmp_path / "run2", tmp_path / "run3"])


def test_soup_refuses_one_checkpoint_given_twice(tmp_path):
    """`trainer.soup s run run` (or a save dir and its own step dir) doubled its weight (found by a tester)."""
    trainer_checkpoint(tmp_path / "a", 1)
    trainer_checkpoint(tmp_path / "b", 2)
    os.symlink(tmp_path / "a", tmp_path / "link")
    for twice in (tmp_path / "a", resolve_checkpoint(tmp_path / "a"), tmp_path / "link"):
        with pytest.raises(ValueError, match="same checkpoint"):
            soup(tmp_path / "out", [tmp_path / "a", tmp_path / "b", twice])
    assert not (tmp_path / "out").exists()


def test_soup_refuses_ingredients_of_different_model_configs(tmp_path):
    """The soup's config was the first ingredient's: ingredients of other context lengths or vocabulary
    sizes gave a soup that depended on their order (found by a tester)."""
    trainer_checkpoint(tmp_path / "a", 1)
    trainer_checkpoint(tmp_path / "long", 2, ModelConfig(**{**CFG.to_dict(), "max_seq_len": 128}))
    for first, other, differ in (("a", "long", "max_seq_len 128 != 64"), ("long", "a", "max_seq_len 64 != 128")):
        with pytest.raises(ValueError, match=f"different model configs.*{differ}"):
            soup(tmp_path / "out", [tmp_path / first, tmp_path / other])
    trainer_checkpoint(tmp_path / "init", 4, ModelConfig(**{**CFG.to_dict(), "init_std": 0.01}))
    soup(tmp_path / "out", [tmp_path / "a", tmp_path / "init"])  # how fresh weights are drawn: none are
    # the same 512 rows stated as the tokenizer's 500 (a trainer checkpoint) or padded (an HF config):
    # a trainer checkpoint and an HF directory of one shape were refused (a reviewer)
    trainer_checkpoint(tmp_path / "vocab", 3, ModelConfig(**{**CFG.to_dict(), "vocab_size": 500}))
    soup(tmp_path / "out-vocab", [tmp_path / "a", tmp_path / "vocab"])


def test_an_s3_ingredient_is_said_to_be_a_url(tmp_path, capsys):
    """`no checkpoint at s3:/b/ckpt` (the URL read as a local path; found by a tester)."""
    from trainer.soup import main

    with pytest.raises(SystemExit):
        main([str(tmp_path / "soup"), str(tmp_path), "s3://bucket/ckpt"])
    assert "'s3://bucket/ckpt' is a URL; this needs a local path" in capsys.readouterr().err


def test_the_soups_hf_directory_is_sharded_and_carries_the_tokenizer(tmp_path, capsys):
    """trainer.soup had no --max-shard-size (export_hf has one, default 5GB): a 13B fp32 soup's hf/ was one
    ~55 GB file, over the Hub's 50 GB per-file limit. Its hf/ now takes the option and is written by export_hf's
    writer, shards and index as save_pretrained writes them; and it carries the tokenizer its ingredients were
    trained with (it had none unless an ingredient was an HF directory, so AutoTokenizer could not load it)."""
    transformers = pytest.importorskip("transformers", reason="transformers loads the soup's hf/")
    from safetensors.torch import load_file
    from test_trainer_export_hf import DOLMA2, dolma2_build, trained_on

    from trainer.export_hf import hf_name

    mix = dolma2_build(tmp_path / "mix")
    for seed in (1, 2):
        trained_on(tmp_path / f"run{seed}", [mix], seed=seed)
    runs = [str(tmp_path / "run1"), str(tmp_path / "run2")]
    assert soup_main([str(tmp_path / "sharded"), *runs, "--max-shard-size", "1MB"]) == 0
    assert soup_main([str(tmp_path / "single"), *runs]) == 0
    assert capsys.readouterr().err == ""
    hf = tmp_path / "sharded" / "hf"
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (hf / "model.safetensors").exists()
    assert sorted(p.name for p in hf.glob("model*")) == sorted(shards + ["model.safetensors.index.json"])
    averaged, _ = load_model_weights(tmp_path / "sharded")
    for shard in shards:
        for name, tensor in load_file(str(hf / shard)).items():
            assert torch.equal(tensor, averaged[next(k for k in averaged if hf_name(k) == name)])
    single = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "single" / "hf"), dtype=torch.float32)
    sharded = transformers.AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    ids = torch.randint(0, 100278, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(single(input_ids=ids).logits, sharded(input_ids=ids).logits)
    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    assert tok("Hello world").input_ids == [9906, 1917] and (tok.eos_token_id, tok.pad_token_id) == (100257, 100277)
    assert DOLMA2.max_seq_len == tok.model_max_length

    # Ingredients that do not say which tokenizer they were trained with: one line, and no tokenizer files.
    trainer_checkpoint(tmp_path / "a", 1)
    trainer_checkpoint(tmp_path / "b", 2)
    capsys.readouterr()  # transformers' loading progress
    assert soup_main([str(tmp_path / "unsaid"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("soup: note: no tokenizer files written to") and \
        "records no training data" in err[0], err
    assert not (tmp_path / "unsaid" / "hf" / "tokenizer.json").exists()


def swapped_tokenizer(path: Path) -> Path:
    """dolma2's tokenizer.json with two tokens' ids swapped: the same vocabulary size, EOS and pad, other text."""
    from dolmino.assets import dolma2_tokenizer_path

    definition = json.loads(dolma2_tokenizer_path().read_text(encoding="utf-8"))
    vocab = definition["model"]["vocab"]
    vocab["Hello"], vocab["Ġworld"] = vocab["Ġworld"], vocab["Hello"]
    path.write_text(json.dumps(definition))
    return path


def recorded_copy(run: Path, copy: Path) -> None:
    """`run` as trainer.run writes a checkpoint since it records its data's tokenizer, its data gone since."""
    import shutil

    from trainer.data import scan_data
    from trainer.tokenizer_files import data_tokenizer

    shutil.copytree(run, copy)
    config_file = resolve_checkpoint(copy) / "config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer"] = data_tokenizer(scan_data(config["data_paths"]))
    config["data_paths"] = [str(copy.parent / "gone")]
    config_file.write_text(json.dumps(config))


def test_soup_refuses_trainer_checkpoints_of_different_tokenizers(tmp_path, capsys):
    """Runs on builds of two tokenizers of one vocabulary size, EOS and pad (other ids) were averaged into a
    meaningless model, unsaid, its hf/ getting the first one's tokenizer.json (found by a tester): only HF
    ingredients' tokenizer.json files were compared. The tokenizer a trainer checkpoint records, or its data's
    builds (older checkpoints), or a soup (its hf/, else its ingredients), is compared now, before averaging."""
    from test_trainer_export_hf import dolma2_build, trained_on

    dolma2 = dolma2_build(tmp_path / "mix")
    swapped = {"name": "my-tok", "path": str(swapped_tokenizer(tmp_path / "t.json"))}
    other = dolma2_build(tmp_path / "other-mix", swapped)
    for name, mix, seed in (("a", dolma2, 1), ("b", dolma2, 2), ("x", other, 3)):
        trained_on(tmp_path / "old" / name, [mix], seed=seed)
        if name != "b":
            recorded_copy(tmp_path / "old" / name, tmp_path / "recorded" / name)
    assert soup_main([str(tmp_path / "ab"), str(tmp_path / "old" / "a"), str(tmp_path / "old" / "b")]) == 0
    assert soup_main([str(tmp_path / "ab-no-hf"), str(tmp_path / "recorded" / "a"), str(tmp_path / "old" / "b"),
                      "--no-hf"]) == 0
    assert capsys.readouterr().err == ""
    for kind, a, x, said in (("old", "old/a", "old/x", "recorded in " + str(other / "report.json")),
                             ("recorded", "recorded/a", "recorded/x", "recorded in " + str(tmp_path / "recorded")),
                             ("soup", "ab", "old/x", "of " + str(tmp_path / "ab" / "hf" / "tokenizer.json")),
                             ("soup --no-hf", "ab-no-hf", "recorded/x", "recorded in " + str(tmp_path / "recorded"))):
        out = tmp_path / "refused"
        assert soup_main([str(out), str(tmp_path / a), str(tmp_path / x)]) == 2, kind
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "checkpoints of different tokenizers cannot be averaged" in err[0], (kind, err)
        assert f"{tmp_path / x} vs {tmp_path / a}: tokenizer.json sha256 " in err[0] and "(my-tok, recorded in" in \
            err[0] and "3ca996cca8af..." in err[0] and said in err[0], (kind, err)
        assert not out.exists()


def test_soup_refuses_ingredients_trained_under_different_control_token_policies(tmp_path, capsys):
    """Runs on builds of one tokenizer.json but tokenizer.control_tokens "dolma" and "literal" ("<|endoftext|>" in
    text: EOS in one, its characters in the other) were averaged without a word, hf/ getting the first's
    tokenizer config (found by a tester). The policy each ingredient's data was built with (the checkpoint's
    record, else its data's builds) is compared too, before averaging."""
    from test_trainer_export_hf import dolma2_build, trained_on

    dolma = dolma2_build(tmp_path / "mix")
    literal = dolma2_build(tmp_path / "literal-mix", {"name": "allenai/dolma2-tokenizer", "control_tokens": "literal"})
    for name, mix, seed in (("a", dolma, 1), ("l", literal, 2), ("m", literal, 3)):
        trained_on(tmp_path / "old" / name, [mix], seed=seed)
    recorded_copy(tmp_path / "old" / "l", tmp_path / "recorded" / "l")
    assert soup_main([str(tmp_path / "lm"), str(tmp_path / "recorded" / "l"), str(tmp_path / "old" / "m")]) == 0
    assert json.loads((tmp_path / "lm" / "hf" / "tokenizer_config.json").read_text())["split_special_tokens"]
    assert capsys.readouterr().err == ""
    for a, x in (("old/a", "old/l"), ("old/a", "recorded/l"), ("old/a", "lm")):
        out = tmp_path / "refused"
        assert soup_main([str(out), str(tmp_path / a), str(tmp_path / x)]) == 2, x
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "different control-token policies cannot be averaged" in err[0], (x, err)
        assert f"{tmp_path / x} (literal) vs {tmp_path / a} (dolma)" in err[0], err
        assert not out.exists()


def test_an_older_ingredients_control_token_policy_is_read_from_its_data_once(tmp_path, monkeypatch):
    """A checkpoint whose tokenizer record is from before it kept the control-token policy takes its data's:
    the first ingredient's data was scanned for it twice per soup (the identity check, then hf/'s files), and
    again by each later soup or evaluation in the process (a reviewer). Once per checkpoint; a config.json
    written since is read again."""
    import trainer.tokenizer_files as tokenizer_files
    from test_trainer_export_hf import dolma2_build, trained_on

    literal = dolma2_build(tmp_path / "literal-mix", {"name": "allenai/dolma2-tokenizer", "control_tokens": "literal"})
    for name, seed in (("a", 1), ("b", 2)):
        trained_on(tmp_path / name, [literal], seed=seed)
        recorded_copy(tmp_path / name, tmp_path / "older" / name)
        config_file = resolve_checkpoint(tmp_path / "older" / name) / "config.json"
        config = json.loads(config_file.read_text())
        del config["tokenizer"]["control_tokens"]  # as trainer.run recorded it before the policy
        config_file.write_text(json.dumps({**config, "data_paths": [str(literal)]}))
    real, scanned = tokenizer_files.data_tokenizer, []
    monkeypatch.setattr(tokenizer_files, "data_tokenizer", lambda paths: scanned.append(paths) or real(paths))
    ingredients = [tmp_path / "older" / "a", tmp_path / "older" / "b"]
    soup(tmp_path / "ab", ingredients)
    assert json.loads((tmp_path / "ab" / "hf" / "tokenizer_config.json").read_text())["split_special_tokens"]
    assert len(scanned) == 2, scanned
    soup(tmp_path / "ab-again", ingredients)
    assert len(scanned) == 2, scanned
    config_file = resolve_checkpoint(ingredients[0]) / "config.json"
    os.utime(config_file, ns=(config_file.stat().st_atime_ns, config_file.stat().st_mtime_ns + 10**9))
    soup(tmp_path / "ab-rewritten", ingredients)
    assert len(scanned) == 3, scanned


def test_soup_compares_hf_and_trainer_ingredients_tokenizers(tmp_path, capsys):
    """An HF directory's tokenizer.json and the one a trainer checkpoint's data was built with were not compared
    (only HF ingredients' files were). An ingredient that does not say is not refused: one line names it. hf/'s
    tokenizer files come from an ingredient whose tokenizer was compared: an HF ingredient's slow vocab.json +
    merges.txt (no tokenizer.json to compare) were written whatever the others were trained with."""
    from test_trainer_export_hf import dolma2_build, trained_on

    from dolmino.assets import dolma2_tokenizer_path
    from trainer.export_hf import main as export_main

    dolma2 = dolma2_build(tmp_path / "mix")
    swapped = {"name": "my-tok", "path": str(swapped_tokenizer(tmp_path / "t.json"))}
    other = dolma2_build(tmp_path / "other-mix", swapped)
    trained_on(tmp_path / "a", [dolma2], seed=1)
    trained_on(tmp_path / "b", [dolma2], seed=2)
    trained_on(tmp_path / "x", [other], seed=3)
    trained_on(tmp_path / "unsaid", [tmp_path / "gone"], seed=4)
    assert export_main([str(tmp_path / "a"), str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    assert soup_main([str(tmp_path / "refused"), str(tmp_path / "hf"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'x'} vs {tmp_path / 'hf'}: tokenizer.json sha256" in err[0] and \
        f"3ca996cca8af... (of {tmp_path / 'hf' / 'tokenizer.json'})" in err[0], err
    assert not (tmp_path / "refused").exists()

    assert soup_main([str(tmp_path / "mixed"), *(str(tmp_path / name) for name in ("hf", "b", "unsaid"))]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"soup: note: {tmp_path / 'unsaid'} does not say which tokenizer") and \
        "cannot be read here" in err[0], err
    assert (tmp_path / "mixed" / "hf" / "tokenizer.json").read_bytes() == dolma2_tokenizer_path().read_bytes()

    slow = tmp_path / "slow"  # an HF directory holding a slow tokenizer's files only
    slow.mkdir()
    for name in ("config.json", "model.safetensors"):
        (slow / name).write_bytes((tmp_path / "hf" / name).read_bytes())
    (slow / "vocab.json").write_text(json.dumps({"another": 0}))
    (slow / "merges.txt").write_text("#version: 0.2\n")
    assert soup_main([str(tmp_path / "slow-soup"), str(slow), str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"note: {slow} does not say" in err[0] and "holds no tokenizer.json" in err[0], err
    hf = tmp_path / "slow-soup" / "hf"
    assert (hf / "tokenizer.json").read_bytes() == dolma2_tokenizer_path().read_bytes()
    assert not (hf / "vocab.json").exists() and not (hf / "merges.txt").exists()


def saved_by_transformers(source: Path, out: Path) -> Path:
    """`source` as transformers' save_pretrained rewrites a tokenizer.json (an OLMo 2 release's copy): indented,
    merges as pairs, a post_processor that adds nothing, BPE fields the packaged file leaves out."""
    transformers = pytest.importorskip("transformers", reason="transformers writes the Hugging Face copy")
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(source)).save_pretrained(out)
    assert (out / "tokenizer.json").read_bytes() != source.read_bytes()
    return out / "tokenizer.json"


def test_soup_compares_tokenizers_of_other_bytes_by_what_they_encode(tmp_path, capsys):
    """An HF ingredient holding dolma2's tokenizer.json as save_pretrained writes it (a released OLMo 2
    directory's) was refused with a run on dolma2 builds, their SHA-256s differing though their ids mean the same
    text (found by a tester). Files of other bytes are compared by what they encode; where one is not at hand
    (its recorded file changed since), one line says so instead of refusing. Real differences are refused."""
    from test_trainer_export_hf import dolma2_build, trained_on

    from dolmino.assets import dolma2_tokenizer_path
    from trainer.export_hf import main as export_main

    dolma2 = dolma2_build(tmp_path / "mix")
    hf_copy = saved_by_transformers(dolma2_tokenizer_path(), tmp_path / "saved")
    swapped_copy = saved_by_transformers(swapped_tokenizer(tmp_path / "t.json"), tmp_path / "saved-swapped")
    copy_mix = dolma2_build(tmp_path / "copy-mix", {"name": "hf-copy", "path": str(hf_copy)})
    trained_on(tmp_path / "a", [dolma2], seed=1)
    trained_on(tmp_path / "b", [dolma2], seed=2)
    trained_on(tmp_path / "c", [copy_mix], seed=3)
    assert export_main([str(tmp_path / "a"), str(tmp_path / "release")]) == 0
    (tmp_path / "release" / "tokenizer.json").write_bytes(hf_copy.read_bytes())
    capsys.readouterr()
    for name, ingredients in (("hf", ["release", "b"]), ("build", ["c", "b"])):
        assert soup_main([str(tmp_path / name), *(str(tmp_path / i) for i in ingredients)]) == 0, name
        assert capsys.readouterr().err == "", name

    (tmp_path / "release" / "tokenizer.json").write_bytes(swapped_copy.read_bytes())
    assert soup_main([str(tmp_path / "refused"), str(tmp_path / "b"), str(tmp_path / "release")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'release'} vs {tmp_path / 'b'}: tokenizer.json sha256" in err[0] and \
        "their model.vocab differ" in err[0], err
    assert not (tmp_path / "refused").exists()

    hf_copy.write_text(hf_copy.read_text() + "\n")  # c's recorded tokenizer.path is not the file it was built with
    assert soup_main([str(tmp_path / "unread"), str(tmp_path / "c"), str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"soup: note: {tmp_path / 'c'} was trained with tokenizer.json ") \
        and f"other bytes than {tmp_path / 'b'}'s" in err[0] and f"{hf_copy} has changed since" in err[0], err
    assert (tmp_path / "unread" / "hf" / "tokenizer.json").read_bytes() == dolma2_tokenizer_path().read_bytes()


def test_a_soup_missing_one_ingredient_still_says_its_tokenizer(tmp_path, capsys):
    """A --no-hf soup says its tokenizer through its ingredients, which it checked share one: with one of them
    deleted since, it said none (an export wrote no tokenizer files, a soup of it checked nothing; a reviewer).
    The ingredients left say it."""
    import shutil

    from test_trainer_export_hf import dolma2_build, trained_on

    from trainer.export_hf import main as export_main

    mix = dolma2_build(tmp_path / "mix")
    for name, seed in (("a", 1), ("b", 2)):
        trained_on(tmp_path / name, [mix], seed=seed)
    assert soup_main([str(tmp_path / "ab"), str(tmp_path / "a"), str(tmp_path / "b"), "--no-hf"]) == 0
    shutil.rmtree(tmp_path / "a")
    capsys.readouterr()
    assert export_main([str(tmp_path / "ab"), str(tmp_path / "hf")]) == 0
    assert capsys.readouterr().err == ""
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    shutil.rmtree(tmp_path / "b")
    assert export_main([str(tmp_path / "ab"), str(tmp_path / "hf2")]) == 0
    err = capsys.readouterr().err
    assert "no tokenizer files written" in err and "cannot be read here" in err, err


def run_checkpoint(path: Path, seed: int, step: int, steps: int, init: Path | None) -> None:
    """A checkpoint as trainer.run saves one: at `step` of a `steps`-step run started from `init`."""
    from trainer.config import TrainConfig

    torch.manual_seed(seed)
    model = OLMo2(CFG)
    config = {"model": CFG.to_dict(), "train": TrainConfig(max_steps=steps).to_dict()}
    if init is not None:
        config["init"] = {"path": str(init), "format": "hf", "step": None, "step_source": None}
    Checkpointer(path).save(step, model, torch.optim.AdamW(model.parameters()), {}, config, background=False)


def test_soup_says_which_ingredients_are_not_finished_runs_of_one_start(tmp_path, capsys):
    """The save dir of a run still going (its latest mid-schedule) and anneals of two base models were
    averaged unsaid (found by a tester): a line names them; finished anneals of one start say nothing."""
    run_checkpoint(tmp_path / "a", 1, 4, 4, tmp_path / "base")
    run_checkpoint(tmp_path / "b", 2, 4, 4, tmp_path / "base")
    run_checkpoint(tmp_path / "cut", 3, 2, 4, tmp_path / "base")
    run_checkpoint(tmp_path / "other", 4, 4, 4, tmp_path / "base2")
    run_checkpoint(tmp_path / "scratch", 5, 4, 4, None)
    out = iter(range(10))

    def notes(*runs: str) -> str:
        assert soup_main([str(tmp_path / f"soup{next(out)}"), *(str(tmp_path / r) for r in runs), "--no-hf"]) == 0
        return capsys.readouterr().err

    assert "note" not in notes("a", "b")
    assert (f"soup: note: {tmp_path / 'cut'} is at step 2 of its run's 4, before its learning rate reached the "
            "schedule's end") in notes("a", "cut")
    assert (f"soup: note: the ingredients started from different checkpoints ({tmp_path / 'a'} from "
            f"{tmp_path / 'base'}; {tmp_path / 'other'} from {tmp_path / 'base2'})") in notes("a", "b", "other")
    assert f"{tmp_path / 'scratch'} from a random initialisation" in notes("a", "scratch")
