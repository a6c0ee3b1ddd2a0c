"""OLMo 2 model: preset shapes and parameter counts, init, no biases, QK-norm, causality."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from trainer.config import MODEL_PRESETS, ModelConfig, describe_params, describe_preset, format_params, round_up
from trainer.model import OLMo2, RMSNorm, no_decay_param_names


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(cfg: ModelConfig) -> OLMo2:
    with torch.device("meta"):
        return OLMo2(cfg)


def test_7b_preset_matches_the_paper():
    cfg = ModelConfig.preset("olmo2-7b")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim) == (32, 4096, 32, 128)
    assert cfg.mlp_hidden == 11008
    assert cfg.padded_vocab_size == 100352 and cfg.vocab_size == 100278
    assert cfg.rope_theta == 500_000 and cfg.norm_eps == 1e-6
    n = cfg.num_params()
    assert 7.25e9 < n < 7.35e9, n
    assert count(meta_model(cfg)) == n


def test_13b_preset():
    cfg = ModelConfig.preset("olmo2-13b")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.mlp_hidden) == (40, 5120, 40, 13824)
    n = cfg.num_params()
    assert 13.6e9 < n < 13.8e9, n
    assert count(meta_model(cfg)) == n


def test_mlp_hidden_rounds_8_thirds_up_to_128():
    assert ModelConfig(d_model=4096, n_heads=32).mlp_hidden == 11008  # 10922.7 -> 11008
    assert ModelConfig(d_model=384, n_heads=6).mlp_hidden == 1024     # 1024 exactly stays
    assert ModelConfig(d_model=48, n_heads=4).mlp_hidden == 128
    assert round_up(100278, 128) == 100352 and round_up(128, 128) == 128


@pytest.mark.parametrize("name,named", [("olmo2-30M", 30e6), ("olmo2-190M", 190e6), ("olmo2-370M", 370e6)])
def test_research_preset_names_count_non_embedding_params_like_olmo_core(name, named):
    """OLMo-core's TransformerConfig.olmo2_30M/190M/370M: the name is every parameter but the
    input embedding (the untied LM head counts)."""
    cfg = ModelConfig.preset(name)
    model = meta_model(cfg)
    non_embedding = count(model) - model.embed.weight.numel()
    assert abs(non_embedding / named - 1) < 0.05, non_embedding
    assert non_embedding == cfg.num_params(include_embedding=False) and count(model) == cfg.num_params()


@pytest.mark.parametrize("name,total", [("olmo2-1b", 1.48e9), ("olmo2-7b", 7.30e9), ("olmo2-13b", 13.7e9)])
def test_release_presets_are_named_after_the_release(name, total):
    cfg = ModelConfig.preset(name)
    assert abs(cfg.num_params() / total - 1) < 0.01
    assert describe_preset(name).startswith(f"{name}: {cfg.n_layers} x {cfg.d_model}")


def test_help_and_names_state_both_counts():
    assert describe_params(ModelConfig.preset("olmo2-30M")) == "29.1M non-embedding / 54.8M total parameters"
    assert describe_params(ModelConfig.preset("olmo2-7b")) == "6.89B non-embedding / 7.30B total parameters"
    assert format_params(999) == "999" and format_params(371_262_464) == "371M"


def test_legacy_names_still_resolve_but_are_not_listed():
    assert "20M" not in MODEL_PRESETS and ModelConfig.preset("20M").d_model == 512
    assert not ModelConfig.preset("1B").same_shape(ModelConfig.preset("olmo2-1b"))
    assert ModelConfig.preset("olmo2-7b").preset_name() == "olmo2-7b"
    assert ModelConfig(d_model=96, n_heads=6).preset_name() is None


def test_every_preset_is_valid():
    for name in MODEL_PRESETS:
        cfg = ModelConfig.preset(name)
        assert cfg.d_model % cfg.n_heads == 0 and cfg.mlp_hidden % 128 == 0 and cfg.padded_vocab_size % 128 == 0


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("olmo2-70b")
    with pytest.raises(ValueError, match="positive integer"):
        ModelConfig(d_model=0)


def test_init_is_truncated_normal_002_and_norms_are_one():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=256, n_layers=2, n_heads=4, vocab_size=4096, max_seq_len=64)
    model = OLMo2(cfg)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        assert p.abs().max().item() <= 0.06 + 1e-7, name
        assert abs(p.mean().item()) < 1e-3, name
        # std of N(0, .02) truncated at +-3 sigma is 0.02 * 0.9865
        assert p.std().item() == pytest.approx(0.02 * 0.9865, rel=0.03), name


def test_no_biases_and_whole_projection_qk_norm():
    cfg = ModelConfig(d_model=96, n_layers=2, n_heads=6, vocab_size=500, max_seq_len=32)
    model = OLMo2(cfg)
    assert not any("bias" in n for n, _ in model.named_parameters())
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert m.bias is None
    attn = model.blocks[0].attn
    assert attn.q_norm.weight.shape == (cfg.n_heads * cfg.head_dim,) == (96,)
    assert attn.k_norm.weight.shape == (96,)
    assert model.lm_head.weight.data_ptr() != model.embed.weight.data_ptr()  # untied
    assert no_decay_param_names(model) == {"embed.weight"}  # OLMo 2 decays the norm gains
    names = no_decay_param_names(model, decay_norms=False)
    assert "embed.weight" in names and "blocks.0.attn.q_norm.weight" in names and "norm.weight" in names
    assert "lm_head.weight" not in names and "blocks.0.mlp.up_proj.weight" not in names


def test_qk_norm_is_over_the_whole_projection_not_per_head():
    """Scaling one head's query slice must change the other heads' normalised queries."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=64, n_layers=1, n_heads=4, vocab_size=300, max_seq_len=16)
    attn = OLMo2(cfg).blocks[0].attn
    x = torch.randn(1, 3, 64)
    q = attn.q_proj(x)
    q2 = q.clone()
    q2[..., :16] *= 10  # head 0 only
    a, b = attn.q_norm(q)[..., 16:], attn.q_norm(q2)[..., 16:]
    assert not torch.allclose(a, b)


def test_rope_rotates_bf16_queries_and_keys_in_fp32(monkeypatch):
    """OLMo-core (RoPEConfig.full_precision, on in OLMo 2's configs) rotates q and k in fp32 and rounds
    once; the tables were cast to the bf16 of autocast / FSDP's weights first, a second rounding."""
    from trainer import model as model_module

    torch.manual_seed(0)
    cfg = ModelConfig(d_model=64, n_layers=1, n_heads=2, vocab_size=300, max_seq_len=256)
    olmo = OLMo2(cfg)
    attn = olmo.blocks[0].attn.to(torch.bfloat16)
    seen = {}

    def sdpa(q, k, v, **kwargs):
        seen["q"], seen["k"] = q, k
        return torch.zeros_like(v)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", sdpa)
    x = torch.randn(1, 256, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        attn(x, olmo.rope_cos, olmo.rope_sin)
        q = attn.q_norm(attn.q_proj(x)).view(1, 256, 2, 32).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x)).view(1, 256, 2, 32).transpose(1, 2)
    assert olmo.rope_cos.dtype == torch.float32 and seen["q"].dtype == torch.bfloat16
    assert torch.equal(seen["q"], model_module.apply_rope(q.float(), olmo.rope_cos, olmo.rope_sin).bfloat16())
    assert torch.equal(seen["k"], model_module.apply_rope(k.float(), olmo.rope_cos, olmo.rope_sin).bfloat16())


def test_forward_shape_and_causality():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=1000, max_seq_len=32)
    model = OLMo2(cfg).eval()
    ids = torch.randint(0, 1000, (2, 20))
    with torch.no_grad():
        logits = model(ids)
        assert logits.shape == (2, 20, 1024)
        changed = ids.clone()
        changed[:, 12] = (changed[:, 12] + 1) % 1000
        other = model(changed)
    assert torch.equal(logits[:, :12], other[:, :12])
    assert not torch.allclose(logits[:, 12:], other[:, 12:])
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_rmsnorm_matches_formula_and_keeps_dtype():
    norm = RMSNorm(8, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1, 9, dtype=torch.float32))
    x = torch.randn(3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.bfloat16()).dtype == torch.bfloat16
