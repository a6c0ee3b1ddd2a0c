"""LR schedules at key steps, AdamW groups (no decay on embeddings / norms), clipping, configs."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import ModelConfig, TrainConfig
from trainer.model import OLMo2
from trainer.optim import build_optimizer, clip_grad_norm, param_groups
from trainer.schedule import LRSchedule


def test_cosine_warmup_then_decay_to_ten_percent():
    s = LRSchedule(peak_lr=3e-4, warmup_steps=2000, horizon_steps=10_000, kind="cosine")
    assert s.lr_at(0) == pytest.approx(3e-4 / 2000)
    assert s.lr_at(999) == pytest.approx(3e-4 * 1000 / 2000)
    assert s.lr_at(1999) == pytest.approx(3e-4)
    assert s.lr_at(2000) == pytest.approx(3e-4)
    assert s.lr_at(6000) == pytest.approx(3e-5 + (3e-4 - 3e-5) * 0.5)  # halfway: cos = 0
    assert s.lr_at(10_000) == pytest.approx(3e-5)
    assert s.lr_at(50_000) == pytest.approx(3e-5)  # flat after the horizon
    lrs = [s.lr_at(i) for i in range(2000, 10_001, 50)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_truncated_cosine_follows_the_long_horizon():
    """OLMo 2 7B: a 5T-token cosine stopped at 4T; the LR at the stop is the 80% point of the long curve."""
    tokens_per_step = 1024 * 4096
    cfg = TrainConfig(seq_len=4096, global_batch_size=1024, max_steps=4 * 10**12 // tokens_per_step,
                      horizon_tokens=5 * 10**12, warmup_steps=2000, lr=3e-4)
    s = LRSchedule.from_config(cfg)
    assert cfg.horizon_steps == math.ceil(5e12 / tokens_per_step)
    progress = (cfg.max_steps - 2000) / (cfg.horizon_steps - 2000)
    expected = 3e-5 + 2.7e-4 * 0.5 * (1 + math.cos(math.pi * progress))
    assert s.lr_at(cfg.max_steps) == pytest.approx(expected)
    assert s.lr_at(cfg.max_steps) > 3e-5 * 1.5  # truncated: well above the floor


def test_linear_to_zero_anneal():
    s = LRSchedule(peak_lr=1e-4, warmup_steps=0, horizon_steps=1000, kind="linear_to_zero")
    assert s.lr_at(0) == pytest.approx(1e-4)
    assert s.lr_at(500) == pytest.approx(5e-5)
    assert s.lr_at(1000) == 0.0 and s.lr_at(1200) == 0.0
    w = LRSchedule(peak_lr=1e-4, warmup_steps=10, horizon_steps=110, kind="linear_to_zero")
    assert w.lr_at(9) == pytest.approx(1e-4) and w.lr_at(60) == pytest.approx(5e-5)


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule(1e-3, 0, 10, kind="step")
    with pytest.raises(ValueError, match="warmup"):
        LRSchedule(1e-3, 20, 10)
    with pytest.raises(ValueError):
        LRSchedule(1e-3, 0, 10).lr_at(-1)


def test_train_config_defaults_are_the_paper_recipe():
    cfg = TrainConfig()
    assert cfg.warmup_steps == 2000 and cfg.adam_eps == 1e-8 and cfg.weight_decay == 0.1
    assert cfg.max_grad_norm == 1.0 and cfg.z_loss_weight == 1e-5 and cfg.final_lr_fraction == 0.1
    assert cfg.schedule == "cosine" and cfg.betas == (0.9, 0.95)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="constant")
    with pytest.raises(ValueError, match="divisible"):
        TrainConfig(global_batch_size=6, micro_batch_size=2).grad_accum_steps(4)
    assert TrainConfig(global_batch_size=16, micro_batch_size=2).grad_accum_steps(4) == 2


def tiny_model() -> OLMo2:
    torch.manual_seed(0)
    return OLMo2(ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=200, max_seq_len=16))


def test_param_groups_exclude_embeddings_and_norms_from_decay():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "embed.weight" in no_decay["names"] and "norm.weight" in no_decay["names"]
    assert all(n.endswith("norm.weight") or n == "embed.weight" for n in no_decay["names"])
    assert "lm_head.weight" in decay["names"] and all(p.ndim == 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_weight_decay_applies_only_to_decayed_group():
    """With zero gradients AdamW's update is pure decay: w <- w * (1 - lr * wd)."""
    model = tiny_model()
    opt = build_optimizer(model, TrainConfig(lr=0.5, weight_decay=0.1, max_steps=10, warmup_steps=0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["embed.weight"], before["embed.weight"], rtol=0, atol=0)
    torch.testing.assert_close(after["blocks.1.mlp_norm.weight"], before["blocks.1.mlp_norm.weight"], rtol=0, atol=0)
    torch.testing.assert_close(after["lm_head.weight"], before["lm_head.weight"] * (1 - 0.5 * 0.1))
    assert opt.defaults["eps"] == 1e-8 and opt.defaults["betas"] == (0.9, 0.95)


def test_clip_grad_norm_returns_preclip_norm_and_clips():
    model = tiny_model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    n = sum(p.numel() for p in model.parameters())
    norm = clip_grad_norm(model, 1.0)
    assert isinstance(norm, torch.Tensor)
    assert norm.item() == pytest.approx(3.0 * math.sqrt(n), rel=1e-5)
    total = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))
    assert total.item() == pytest.approx(1.0, rel=1e-4)
