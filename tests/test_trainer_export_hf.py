"""Hugging Face export: names/shapes, config, and fp32 logit parity with Olmo2ForCausalLM."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.checkpoint import Checkpointer
from trainer.config import ModelConfig
from trainer.export_hf import hf_name, main as export_main
from trainer.model import OLMo2


def saved_random_model(tmp_path, cfg: ModelConfig) -> OLMo2:
    torch.manual_seed(0)
    model = OLMo2(cfg)
    with torch.no_grad():  # make every norm gain matter: trained models are not all-ones
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.mul_(1 + 0.3 * torch.randn_like(p))
    Checkpointer(tmp_path / "ckpt").save(1, model, torch.optim.AdamW(model.parameters()), {},
                                         {"model": cfg.to_dict()}, background=False)
    return model


def test_names_and_config(tmp_path):
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=1000, max_seq_len=128)
    saved_random_model(tmp_path, cfg)
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert tensors["model.layers.1.self_attn.q_norm.weight"].shape == (64,)
    assert tensors["model.embed_tokens.weight"].shape == (1024, 64)
    assert tensors["lm_head.weight"].shape == (1024, 64)
    assert "model.layers.0.post_feedforward_layernorm.weight" in tensors and len(tensors) == 3 + 2 * 11
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Olmo2ForCausalLM"] and config["rope_theta"] == 500000.0
    assert config["vocab_size"] == 1024 and config["intermediate_size"] == 256 and config["rms_norm_eps"] == 1e-6
    assert config["tie_word_embeddings"] is False and config["eos_token_id"] is None  # 100257 is outside 1024
    with pytest.raises(KeyError):
        hf_name("blocks.0.attn.q_proj.bias")
    assert export_main([str(tmp_path / "missing"), str(tmp_path / "hf2")]) == 2


def test_logits_match_transformers_olmo2(tmp_path):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install transformers==5.24.0 for the parity test)")
    cfg = ModelConfig(d_model=64, n_layers=3, n_heads=4, vocab_size=1000, max_seq_len=128)
    model = saved_random_model(tmp_path, cfg).eval()
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    assert type(hf).__name__ == "Olmo2ForCausalLM"
    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (2, 100))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(input_ids=ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_dtype_cast_on_export(tmp_path):
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=200, max_seq_len=16)
    saved_random_model(tmp_path, cfg)
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_a_failed_write_leaves_no_partial_file_and_is_one_line(tmp_path, capsys):
    """write_safetensors left its `.model.safetensors.tmp<pid>` (up to a model's size) when reading a
    tensor failed, e.g. a damaged source; an OUT_DIR that cannot be made was a traceback (found by a tester)."""
    from trainer.export_hf import write_safetensors

    def damaged(name):
        if name == "b":
            raise RuntimeError("the source cannot be read")
        return torch.zeros(4)

    specs = [("a", (4,), torch.float32), ("b", (4,), torch.float32)]
    with pytest.raises(RuntimeError, match="the source cannot be read"):
        write_safetensors(tmp_path / "model.safetensors", specs, damaged)
    assert list(tmp_path.iterdir()) == []
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=256, max_seq_len=64)
    saved_random_model(tmp_path, cfg)
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "file" / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export_hf: ") and "Not a directory" in err[0], err


def test_export_refuses_a_soups_own_hf_directory(tmp_path, capsys):
    """An export into a soup's hf/ left the soup's model.pt and hf/ holding different models (found by a
    tester). Over any other Hugging Face directory the export replaces the model, as save_pretrained does."""
    from trainer.soup import soup

    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=256, max_seq_len=64)
    saved_random_model(tmp_path, cfg)
    torch.manual_seed(1)
    other = OLMo2(cfg)
    Checkpointer(tmp_path / "ckpt2").save(1, other, torch.optim.AdamW(other.parameters()), {},
                                          {"model": cfg.to_dict()}, background=False)
    out = soup(tmp_path / "soup", [tmp_path / "ckpt", tmp_path / "ckpt2"])
    before = (out / "hf" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert export_main([str(tmp_path / "ckpt"), str(out / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the Hugging Face directory of the soup" in err[0], err
    assert (out / "hf" / "model.safetensors").read_bytes() == before
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert export_main([str(tmp_path / "ckpt2"), str(tmp_path / "hf")]) == 0


def test_nan_weights_are_not_exported(tmp_path, capsys):
    """A diverged run's NaN weights were exported without a word (exit 0), as a model giving NaN
    logits; eval and soup refuse them (found by a tester). An existing model in OUT_DIR is kept,
    and an OUT_DIR the export made is not left behind empty."""
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=256, max_seq_len=64)
    model = OLMo2(cfg)
    with torch.no_grad():
        model.blocks[1].mlp.up_proj.weight[3, 4] = float("nan")
    Checkpointer(tmp_path / "nan").save(1, model, torch.optim.AdamW(model.parameters()), {},
                                        {"model": cfg.to_dict()}, background=False)
    saved_random_model(tmp_path, cfg)
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    before = (tmp_path / "hf" / "model.safetensors").read_bytes()
    for out in (tmp_path / "new", tmp_path / "hf"):
        capsys.readouterr()
        assert export_main([str(tmp_path / "nan"), str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "weight blocks.1.mlp.up_proj.weight holds NaN or inf" in err[0], err
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == before


def test_a_weight_beyond_float16s_range_is_refused_not_written_as_inf(tmp_path, capsys):
    """The finite check ran on the checkpoint's tensor, before the cast: a 1e5 weight exported with
    --dtype float16 (largest 65504) was written as inf, exit 0 (found by a tester). bfloat16 holds it."""
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=200, max_seq_len=16)
    model = OLMo2(cfg)
    with torch.no_grad():
        model.blocks[0].mlp.up_proj.weight[1, 2] = 1e5
    Checkpointer(tmp_path / "ckpt").save(1, model, torch.optim.AdamW(model.parameters()), {},
                                         {"model": cfg.to_dict()}, background=False)
    capsys.readouterr()
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--dtype", "float16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weight blocks.0.mlp.up_proj.weight holds values up to 100000, beyond float16's " \
        "range (65504)" in err[0] and "--dtype bfloat16 or float32" in err[0], err
    assert not (tmp_path / "hf").exists()
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    from safetensors.torch import load_file

    written = load_file(str(tmp_path / "hf" / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    assert torch.isfinite(written).all()


def _weight_files(path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if "safetensors" in p.name)


def test_a_large_export_is_sharded_with_an_index_as_save_pretrained_does(tmp_path):
    """export_hf always wrote one model.safetensors: a 13B fp32 export was one ~55 GB file, over the Hugging
    Face Hub's 50 GB per-file limit. Past --max-shard-size it now writes save_pretrained's shards and index,
    which transformers and this trainer's importer load as the same model as the single file; a re-export
    into the same OUT leaves only the new export's files."""
    transformers = pytest.importorskip("transformers", reason="transformers loads the sharded export")
    from safetensors import safe_open

    from trainer.weights import WeightReader, inspect_checkpoint

    cfg = ModelConfig(d_model=64, n_layers=3, n_heads=4, vocab_size=1000, max_seq_len=128)
    model = saved_random_model(tmp_path, cfg).eval()
    ckpt, single, sharded = str(tmp_path / "ckpt"), tmp_path / "single", tmp_path / "sharded"
    assert export_main([ckpt, str(single)]) == 0
    assert _weight_files(single) == ["model.safetensors"]  # it fits the 5GB default: unchanged output
    assert export_main([ckpt, str(sharded), "--max-shard-size", "100KB"]) == 0
    files = _weight_files(sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n > 2 and files == sorted(shards + ["model.safetensors.index.json"])
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    total = 0
    for shard in shards:
        with safe_open(str(sharded / shard), "pt") as fh:
            assert sorted(fh.keys()) == sorted(k for k, v in index["weight_map"].items() if v == shard)
            sizes = [fh.get_tensor(k).numel() * 4 for k in fh.keys()]
        assert sum(sizes) <= 100_000 or len(sizes) == 1  # only a tensor larger than the limit stands alone
        total += sum(sizes)
    assert index["metadata"]["total_size"] == total and len(index["weight_map"]) == 3 + 3 * 11

    ids = torch.randint(0, 1000, (2, 50), generator=torch.Generator().manual_seed(1))
    logits = []
    for out in (single, sharded):
        hf = transformers.Olmo2ForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(hf(input_ids=ids).logits)
    assert torch.equal(logits[0], logits[1])
    with WeightReader(inspect_checkpoint(sharded)) as reader:  # --init-from reads it back
        state = model.state_dict()
        assert sorted(reader.names()) == sorted(state)
        for name in reader.names():
            assert torch.equal(reader.get(name), state[name]), name

    assert export_main([ckpt, str(sharded)]) == 0  # a larger max shard size: no stale shards or index
    assert _weight_files(sharded) == ["model.safetensors"]
    assert export_main([ckpt, str(single), "--max-shard-size", "200KB"]) == 0  # and no stale single file
    assert "model.safetensors" not in _weight_files(single)
    assert "model.safetensors.index.json" in _weight_files(single)


def test_a_failed_sharded_export_leaves_the_old_model_whole(tmp_path, capsys):
    """A sharded export that fails partway (a damaged source tensor, a full disk) must not leave
    some new shards beside the old model, nor a mix of old and new files that loads: the old model
    stays as it was and no staged or partial file is left."""
    from trainer.export_hf import write_hf_model
    from trainer.weights import expected_shapes

    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=256, max_seq_len=64)
    model = saved_random_model(tmp_path, cfg)
    out = tmp_path / "hf"
    assert export_main([str(tmp_path / "ckpt"), str(out), "--max-shard-size", "20KB"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    state = model.state_dict()
    names = list(expected_shapes(cfg))

    def damaged(name):
        if name == names[-1]:
            raise RuntimeError("the source cannot be read")
        return state[name] + 1

    for size in (10_000, 10**9):  # into shards, and into one file
        with pytest.raises(RuntimeError, match="the source cannot be read"):
            write_hf_model(out, cfg, names, damaged, torch.float32, max_shard_size=size)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(tmp_path / "ckpt"), str(out), "--max-shard-size", "5 parsecs"])
    assert exit_info.value.code == 2
    assert "'5 parsecs' is not a size; give a positive number of bytes" in capsys.readouterr().err


# Every spelling of a size that `dolmino build --task-size` (count syntax, decimals, B alone) or
# --max-shard-size (transformers' units, any whole number) took before they shared one parser (t242),
# with the bytes it meant there.
SIZE_SPELLINGS = {
    "5GB": 5 * 10**9, "5 gb": 5 * 10**9, " 5GB\n": 5 * 10**9, "5Gb": 5 * 10**9, "500MB": 500 * 10**6,
    "100KB": 10**5, "2TB": 2 * 10**12, "5GiB": 5 * 2**30, "5kib": 5 * 2**10, "3 TiB": 3 * 2**40, "1000000": 10**6,
    "05": 5, "\uff11\uff12": 12, "99999999999999999999999": 99999999999999999999999,
    "64M": 64 * 10**6, "1.5M": 1_500_000, ".5K": 500, "1G": 10**9, "2T": 2 * 10**12, "1e9": 10**9, "1E3": 1000,
    "7000": 7000, "512B": 512, "512 b": 512, "100B": 100, "1.5KiB": 1536, "0.5KB": 500, "5.MB": 5 * 10**6,
    "128 mb": 128 * 10**6, "123456789012345678TiB": 123456789012345678 * 2**40,  # was rounded to 28 digits
}


def test_a_size_means_the_same_to_the_build_and_the_export():
    """`dolmino build --task-size 500M` and `--task-size 1.5GB` were taken, `trainer.export_hf
    --max-shard-size 500M` or `1.5GB` refused: two parsers of one kind of value (t242), and the
    build's rounded a size beyond 28 digits. One parser now; what either took means what it did."""
    from dolmino.build.cli import _size
    from dolmino.errors import ManifestError
    from trainer.export_hf import parse_size

    for text, size in SIZE_SPELLINGS.items():
        assert (_size(text, "--task-size"), parse_size(text)) == (size, size), text
    for bad in ("0", "0MB", "-5", "5 parsecs", "MB", "5iB", "5 bytes", "1.5", "5.", "0.0005KB", "12QB", "5PB",
                "1e9B", "1,000", ""):
        with pytest.raises(ManifestError, match="expected a size in bytes"):
            _size(bad, "--task-size")
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)


DOLMA2 = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_seq_len=64)  # dolma2's vocabulary, EOS and pad ids


def dolma2_build(path, tokenizer: dict | None = None):
    """A finished build as trainer.run reads it: a token file and the report.json / manifest.json
    saying which tokenizer.json (by its SHA-256) made it; the packaged dolma2 one unless `tokenizer`
    (the manifest's tokenizer entry) names another file."""
    import hashlib

    import numpy as np

    from dolmino.assets import DOLMA2_TOKENIZER_SHA256
    from dolmino.memmap import MemmapPartWriter

    path.mkdir(parents=True)
    writer = MemmapPartWriter(str(path), 0, eos_token_id=100257)
    writer.add(np.arange(1, 300, dtype=np.uint32), "d0", "web", "web:1")
    writer.close()
    tokenizer = tokenizer or {"name": "allenai/dolma2-tokenizer"}
    digest = DOLMA2_TOKENIZER_SHA256 if "path" not in tokenizer else \
        hashlib.sha256(open(tokenizer["path"], encoding="utf-8").read().encode("utf-8")).hexdigest()
    (path / "manifest.json").write_text(json.dumps({"name": "m", "tokenizer": tokenizer}))
    (path / "report.json").write_text(json.dumps({
        "manifest": "m", "tokenizer": tokenizer["name"], "eos_token_id": 100257, "pad_token_id": 100277,
        "vocab_size": 100278, "tokenizer_sha256": digest, "output": {"tokens": 300}}))
    return path


def trained_on(path, data: list, cfg: ModelConfig = DOLMA2, seed: int = 0) -> None:
    """A trainer checkpoint whose config.json records its training data, as trainer.run writes it."""
    torch.manual_seed(seed)
    model = OLMo2(cfg)
    Checkpointer(path).save(1, model, torch.optim.AdamW(model.parameters()), {},
                            {"model": cfg.to_dict(), "data_paths": [str(d) for d in data]}, background=False)


def test_the_export_carries_the_tokenizer_the_checkpoint_was_trained_with(tmp_path, capsys):
    """`trainer.export_hf CKPT OUT` wrote config.json and the weights only: AutoTokenizer.from_pretrained(OUT)
    failed, so the export could not be used as a released OLMo 2 directory is (found by a tester). The
    tokenizer.json is the one the data's builds record (report.json tokenizer_sha256), with the releases'
    tokenizer_config.json: the same ids as dolmino's tokenizer, no BOS, EOS 100257, pad 100277."""
    transformers = pytest.importorskip("transformers", reason="transformers loads the exported tokenizer")
    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.tokenizer import Dolma2Tokenizer

    trained_on(tmp_path / "ckpt", [dolma2_build(tmp_path / "mix")])
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    out = capsys.readouterr()
    assert out.err == "" and "and its tokenizer" in out.out
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == dolma2_tokenizer_path().read_bytes()
    ours = Dolma2Tokenizer(dolma2_tokenizer_path().read_text(encoding="utf-8"))
    for text in ("Hello world", "  x<|endoftext|>y |||EMAIL_ADDRESS||| naïve 東京\n"):
        assert tok(text).input_ids == ours.encode_batch([text])[0].tolist()
    assert tok("Hello world").input_ids == [9906, 1917]  # no BOS
    assert (tok.eos_token_id, tok.pad_token_id, tok.eos_token, tok.pad_token) == (100257, 100277, "<|endoftext|>",
                                                                                 "<|pad|>")
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "GPT2Tokenizer" and config["model_max_length"] == 64
    eos = "<|endoftext|>"  # the releases' special_tokens_map.json
    assert json.loads((tmp_path / "hf" / "special_tokens_map.json").read_text()) == {
        "bos_token": eos, "eos_token": eos, "pad_token": "<|pad|>", "unk_token": eos}

    # A checkpoint that does not say (no data recorded, or its data not here): one line, no tokenizer written.
    saved_random_model(tmp_path, DOLMA2)  # tmp_path/ckpt again, its config without data_paths
    trained_on(tmp_path / "moved", [tmp_path / "gone"])
    for ckpt, why in (("ckpt", "records no training data"), ("moved", "cannot be read here")):
        assert export_main([str(tmp_path / ckpt), str(tmp_path / f"{ckpt}-hf")]) == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("export_hf: note: no tokenizer files written") and why in err[0], err
        assert sorted(p.name for p in (tmp_path / f"{ckpt}-hf").iterdir()) == ["config.json", "model.safetensors"]


def test_the_export_carries_a_tokenizer_the_manifest_named(tmp_path, capsys):
    """A mix built with another tokenizer.json (the manifest's tokenizer.path) gets that file, with a generic
    PreTrainedTokenizerFast config; one changed since the build is not passed off as the one it used."""
    transformers = pytest.importorskip("transformers", reason="transformers loads the exported tokenizer")
    from dolmino.assets import dolma2_tokenizer_path

    copy = tmp_path / "my-tokenizer.json"  # the same tokens, other bytes: not the packaged file
    copy.write_text(json.dumps(json.loads(dolma2_tokenizer_path().read_text(encoding="utf-8")), indent=1))
    trained_on(tmp_path / "ckpt", [dolma2_build(tmp_path / "mix", {"name": "my-tok", "path": str(copy)})])
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == copy.read_bytes()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tok("Hello world").input_ids == [9906, 1917] and (tok.eos_token_id, tok.pad_token_id) == (100257, 100277)
    copy.write_text(copy.read_text() + " ")
    capsys.readouterr()
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf2")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has changed since the build" in err[0], err
    assert not (tmp_path / "hf2" / "tokenizer.json").exists()


def test_an_olmo_core_checkpoint_naming_dolma2_exports_its_tokenizer(tmp_path):
    """OLMo-core's experiment config names its data's tokenizer (dataset.tokenizer): the dolma2 one is written."""
    from test_trainer_import import write_olmo_core_checkpoint

    from dolmino.assets import dolma2_tokenizer_path

    torch.manual_seed(0)
    step_dir = write_olmo_core_checkpoint(tmp_path / "run", 3, OLMo2(DOLMA2))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["dataset"] = {"tokenizer": {"identifier": "allenai/dolma2-tokenizer", "vocab_size": 100278,
                                       "eos_token_id": 100257, "pad_token_id": 100277, "bos_token_id": None}}
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    assert export_main([str(step_dir), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == dolma2_tokenizer_path().read_bytes()


def test_a_checkpoint_copied_without_its_data_exports_its_tokenizer(tmp_path, capsys):
    """export_hf found the tokenizer only by following config.json's data_paths to the builds' report.json:
    a checkpoint copied to another machine without its mix exported no tokenizer files, one note line (found by
    a tester). trainer.run keeps what the builds say in each checkpoint's config.json; a resumed run keeps it,
    also where the build's report.json is gone by then (the same token files: their position is checked)."""
    transformers = pytest.importorskip("transformers", reason="transformers loads the exported tokenizer")
    from dolmino.assets import DOLMA2_TOKENIZER_SHA256, dolma2_tokenizer_path
    from trainer.run import main as train_main

    mix = dolma2_build(tmp_path / "mix")
    flags = ["--data", str(mix), "--model", "tiny", "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
             "--save-dir", str(tmp_path / "run")]
    assert train_main([*flags, "--steps", "1"]) == 0
    recorded = {"name": "allenai/dolma2-tokenizer", "tokenizer_sha256": DOLMA2_TOKENIZER_SHA256,
                "eos_token_id": 100257, "pad_token_id": 100277, "bos_token_id": None, "vocab_size": 100278,
                "control_tokens": "dolma"}
    assert json.loads((tmp_path / "run" / "step000001" / "config.json").read_text())["tokenizer"] == recorded
    (mix / "report.json").rename(tmp_path / "report.json")
    assert train_main([*flags, "--steps", "2", "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "step000002" / "config.json").read_text())["tokenizer"] == recorded
    capsys.readouterr()

    import shutil

    shutil.rmtree(mix)  # the checkpoint on another machine
    assert export_main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    out = capsys.readouterr()
    assert out.err == "" and "and its tokenizer" in out.out, out
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == dolma2_tokenizer_path().read_bytes()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tok("Hello world").input_ids == [9906, 1917] and (tok.eos_token_id, tok.pad_token_id) == (100257, 100277)


def test_a_recorded_tokenizer_other_than_dolma2_is_read_from_its_recorded_path(tmp_path, capsys):
    """Another tokenizer.json is recorded by its absolute path (resolved as the build resolved the manifest's
    tokenizer.path) and exported while it still has the recorded sha256; moved or changed, one line says so.
    Data whose builds record no tokenizer_sha256 records nothing, and the export says so as before."""
    from dolmino.assets import dolma2_tokenizer_path
    from trainer.data import scan_data
    from trainer.tokenizer_files import data_tokenizer

    copy = tmp_path / "toks" / "my-tokenizer.json"
    copy.parent.mkdir()
    copy.write_text(json.dumps(json.loads(dolma2_tokenizer_path().read_text(encoding="utf-8")), indent=1))
    mix = dolma2_build(tmp_path / "mix", {"name": "my-tok", "path": str(copy)})
    report = json.loads((mix / "report.json").read_text())
    (mix / "manifest.json").write_text(json.dumps({"name": "m", "tokenizer": {"name": "my-tok",
                                                                                "path": "toks/my-tokenizer.json"}}))
    (mix / "report.json").write_text(json.dumps({**report, "manifest_path": str(tmp_path / "m.json")}))
    record = data_tokenizer(scan_data([str(mix)]))
    assert record["path"] == str(copy) and record["name"] == "my-tok"
    model = OLMo2(DOLMA2)
    Checkpointer(tmp_path / "ckpt").save(1, model, torch.optim.AdamW(model.parameters()), {},
                                         {"model": DOLMA2.to_dict(), "tokenizer": record,
                                          "data_paths": [str(tmp_path / "gone")]}, background=False)
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == copy.read_bytes()
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "PreTrainedTokenizerFast"
    capsys.readouterr()
    copy.write_text(copy.read_text() + " ")
    assert export_main([str(tmp_path / "ckpt"), str(tmp_path / "hf2")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{copy} has changed since the training data of the checkpoint" in err[0], err

    (mix / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "tokenizer_sha256"}))
    assert "records no tokenizer_sha256" in data_tokenizer(scan_data([str(mix)]))


def test_a_literal_control_token_build_exports_a_tokenizer_that_encodes_them_as_text(tmp_path, capsys):
    """Data built with tokenizer.control_tokens "literal" holds "a<|endoftext|>b" as the characters it is, but
    the export wrote the dolma2 files as they are and AutoTokenizer.from_pretrained(OUT) encoded it to EOS
    100257: the model was prompted with ids its training text never held there (found by a tester). The
    policy is recorded (the build's report.json, else its manifest.json; trainer.run's config.json "tokenizer")
    and the export's tokenizer_config.json sets split_special_tokens with exactly the control tokens special:
    every added token encodes as the build encoded it, tokenizer.json stays the packaged file, decoding and
    EOS / pad ids are as before."""
    transformers = pytest.importorskip("transformers", reason="transformers loads the exported tokenizer")
    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.tokenizer import Dolma2Tokenizer
    from trainer.run import main as train_main

    mix = dolma2_build(tmp_path / "mix", {"name": "allenai/dolma2-tokenizer", "control_tokens": "literal"})
    report = json.loads((mix / "report.json").read_text())
    (mix / "report.json").write_text(json.dumps({**report, "control_tokens": "literal"}))
    assert train_main(["--data", str(mix), "--model", "tiny", "--seq-len", "32", "--batch-size", "2", "--device",
                       "cpu", "--steps", "1", "--save-dir", str(tmp_path / "run")]) == 0
    recorded = json.loads((tmp_path / "run" / "step000001" / "config.json").read_text())["tokenizer"]
    assert recorded["control_tokens"] == "literal"
    import shutil

    shutil.rmtree(mix)  # the record alone says
    capsys.readouterr()
    assert export_main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert capsys.readouterr().err == ""
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == dolma2_tokenizer_path().read_bytes()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = dolma2_tokenizer_path().read_text(encoding="utf-8")
    data = Dolma2Tokenizer(text, control_tokens="literal")
    added = [a["content"] for a in json.loads(text)["added_tokens"]]
    for sample in ["a<|endoftext|>b", "Hello world"] + [f"x {token}y" for token in added]:
        assert tok(sample).input_ids == data.encode_documents([sample]).ids[0][:-1].tolist(), sample
        assert tok.decode(tok(sample).input_ids) == sample
    assert tok("a<|endoftext|>b").input_ids == [64, 27, 91, 8862, 728, 428, 91, 29, 65]
    assert tok("a |||EMAIL_ADDRESS||| b").input_ids[2] == 100262  # a placeholder stays its id
    assert (tok.eos_token_id, tok.pad_token_id) == (100257, 100277)
    assert tok.decode([64, 100257, 65], skip_special_tokens=True) == "ab"

    # A record from before the policy was kept takes its data's (here its manifest.json's: a build from before
    # report.json recorded it); builds of both policies have no one tokenizer to export: one line says so.
    older = dolma2_build(tmp_path / "older", {"name": "allenai/dolma2-tokenizer", "control_tokens": "literal"})
    config = json.loads((tmp_path / "run" / "step000001" / "config.json").read_text())
    model = OLMo2(ModelConfig.from_dict(config["model"]))
    record = {k: v for k, v in recorded.items() if k != "control_tokens"}
    Checkpointer(tmp_path / "old").save(1, model, torch.optim.AdamW(model.parameters()), {},
                                        {"model": config["model"], "tokenizer": record, "data_paths": [str(older)]},
                                        background=False)
    assert export_main([str(tmp_path / "old"), str(tmp_path / "old-hf")]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "old-hf"))
    assert 100257 not in tok("a<|endoftext|>b").input_ids
    trained_on(tmp_path / "both", [older, dolma2_build(tmp_path / "dolma")])
    capsys.readouterr()
    assert export_main([str(tmp_path / "both"), str(tmp_path / "both-hf")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "builds of different control-token policies" in err[0], err
    assert not (tmp_path / "both-hf" / "tokenizer.json").exists()


def test_training_on_builds_of_both_control_token_policies_says_so_at_start(tmp_path, capsys):
    """trainer.run --data A --data B with A built with tokenizer.control_tokens "dolma" and B "literal" trained
    without a word ("<|endoftext|>" in text is EOS in one, characters in the other), its checkpoints then
    recording no tokenizer (found by a tester). One warning line says so at start; training goes on."""
    from trainer.data import scan_data
    from trainer.run import main as train_main
    from trainer.tokenizer_files import data_tokenizer

    dolma = dolma2_build(tmp_path / "dolma")
    spec = {"name": "allenai/dolma2-tokenizer", "control_tokens": "literal"}
    literal, more = dolma2_build(tmp_path / "literal", spec), dolma2_build(tmp_path / "more", spec)
    flags = ["--model", "tiny", "--seq-len", "32", "--batch-size", "2", "--device", "cpu", "--steps", "1"]
    assert train_main(["--data", str(literal), "--data", str(more), *flags, "--save-dir", str(tmp_path / "one")]) == 0
    assert "control-token" not in capsys.readouterr().err  # one policy: nothing to say
    assert train_main(["--data", str(dolma), "--data", str(literal), *flags, "--save-dir", str(tmp_path / "run")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "control-token" in line]
    assert len(warned) == 1 and warned[0].startswith("trainer.run: warning: ") and \
        f"builds of different control-token policies ({dolma} and {literal}" in warned[0] and \
        warned[0].endswith("its checkpoints record no tokenizer"), warned
    config_file = tmp_path / "run" / "step000001" / "config.json"
    config = json.loads(config_file.read_text())
    assert "tokenizer" not in config
    # A checkpoint that records one (written before the check) is resumed with its record: the line said
    # "record no tokenizer" all the same (a reviewer)
    record = {**data_tokenizer(scan_data([str(literal)])), "control_tokens": "dolma"}
    config_file.write_text(json.dumps({**config, "tokenizer": record}))
    both = ["--data", str(dolma), "--data", str(literal), *flags[:-1], "2", "--save-dir", str(tmp_path / "run")]
    assert train_main([*both, "--resume"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "control-token" in line]
    assert len(warned) == 1 and "builds of different control-token policies" in warned[0] and \
        warned[0].endswith(f"its checkpoints keep the tokenizer {config_file} records (control_tokens dolma)"), warned
    assert json.loads((tmp_path / "run" / "step000002" / "config.json").read_text())["tokenizer"] == record


def test_a_rerun_removes_what_an_export_killed_part_way_staged(tmp_path):
    """An export killed part way (kill -9, or SIGTERM, whose default action runs no clean-up) left its
    staged shards in OUT_DIR, hidden (`.model-00001-of-00004.safetensors.staged<PID>`), up to a model's
    size, and every rerun left them there (found by a tester). The rerun removes them; the staged files
    of an export still running (its PID alive: this process's parent) are left alone."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=256, max_seq_len=64)
    saved_random_model(tmp_path, cfg)
    ckpt, out, clean = tmp_path / "ckpt", tmp_path / "hf", tmp_path / "clean"
    killed_at_second_shard = (
        "import os, signal, sys\nimport trainer.export_hf as export\nwrite, written = export.write_safetensors, []\n"
        "def write_then_die(path, *args, **kwargs):\n    written.append(write(path, *args, **kwargs))\n"
        "    if len(written) == 2:\n        os.kill(os.getpid(), signal.SIGKILL)\n    return written[-1]\n"
        "export.write_safetensors = write_then_die\nsys.exit(export.main(sys.argv[1:]))")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", killed_at_second_shard, str(ckpt), str(out), "--max-shard-size",
                           "20KB"], capture_output=True, text=True, timeout=120, cwd=str(repo))
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in out.iterdir())
    assert len(left) == 2 and all(".staged" in name for name in left)
    running = out / f".model-00001-of-00009.safetensors.staged{os.getppid()}"
    running.write_bytes(b"an export still writing")

    assert export_main([str(ckpt), str(out), "--max-shard-size", "20KB"]) == 0
    assert export_main([str(ckpt), str(clean), "--max-shard-size", "20KB"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([running.name, *(p.name for p in clean.iterdir())])
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in clean.iterdir())
