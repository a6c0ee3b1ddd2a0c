"""LR schedules at key steps, AdamW groups (OLMo 2: decay all but the embedding), clipping, configs."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import ModelConfig, TrainConfig
from trainer.model import OLMo2
from trainer.optim import build_optimizer, clip_grad_norm, param_groups
from trainer.schedule import LRSchedule


def test_cosine_warmup_then_decay_to_ten_percent():
    """lr_at(k) is OLMo-core's CosWithWarmup at its step k + 1 (it counts from 1): the peak once,
    at the end of warm-up, and the floor on the horizon's last step (the cosine ran one step
    behind: the peak twice, the floor one step after a run as long as its horizon; a tester)."""
    s = LRSchedule(peak_lr=3e-4, warmup_steps=2000, horizon_steps=10_000, kind="cosine")
    assert s.lr_at(0) == pytest.approx(3e-4 / 2000)
    assert s.lr_at(999) == pytest.approx(3e-4 * 1000 / 2000)
    assert s.lr_at(1999) == pytest.approx(3e-4)
    assert s.lr_at(2000) == pytest.approx(3e-5 + 2.7e-4 * 0.5 * (1 + math.cos(math.pi / 8000)))
    assert s.lr_at(2000) < 3e-4
    assert s.lr_at(5999) == pytest.approx(3e-5 + (3e-4 - 3e-5) * 0.5)  # halfway: cos = 0
    assert s.lr_at(9999) == pytest.approx(3e-5) and s.lr_at(9998) > 3e-5
    assert s.lr_at(50_000) == pytest.approx(3e-5)  # flat after the horizon
    lrs = [s.lr_at(i) for i in range(1999, 10_001, 50)]
    assert all(a > b for a, b in zip(lrs, lrs[1:-1]))


def olmo_core_cos_with_warmup(initial_lr, step, max_steps, warmup_steps, alpha_f=0.1):
    """OLMo-core's CosWithWarmup.get_lr (src/olmo_core/optim/scheduler.py), written out for the test."""
    eta_min = initial_lr * alpha_f
    if step < warmup_steps:
        return initial_lr * min(step, warmup_steps) / warmup_steps
    if step >= max_steps:
        return eta_min
    return eta_min + (initial_lr - eta_min) * (1 + math.cos(math.pi * (step - warmup_steps) /
                                                            (max_steps - warmup_steps))) / 2


def test_the_schedules_are_olmo_cores_counted_from_zero():
    cosine = LRSchedule(peak_lr=3e-4, warmup_steps=20, horizon_steps=100, kind="cosine")
    for k in range(0, 120):
        assert cosine.lr_at(k) == pytest.approx(olmo_core_cos_with_warmup(3e-4, k + 1, 100, 20), rel=1e-12), k
    # every warm-up up to the horizon: a warm-up as long as the run ended at the peak (found by a reviewer)
    for horizon in range(1, 9):
        for warmup in range(0, horizon + 1):
            s = LRSchedule(peak_lr=1.0, warmup_steps=warmup, horizon_steps=horizon, kind="cosine")
            for k in range(horizon + 2):
                assert s.lr_at(k) == pytest.approx(olmo_core_cos_with_warmup(1.0, k + 1, horizon, warmup)), \
                    (horizon, warmup, k)
            assert LRSchedule(1.0, warmup, horizon, "linear_to_zero").lr_at(horizon - 1) == 0.0
    linear = LRSchedule(peak_lr=1e-4, warmup_steps=0, horizon_steps=50, kind="linear_to_zero")
    for k in range(0, 60):  # OLMo-core's LinearWithWarmup with alpha_f 0 and no warm-up
        expected = 0.0 if k + 1 >= 50 else 1e-4 - 1e-4 * (k + 1) / 50
        assert linear.lr_at(k) == pytest.approx(expected, rel=1e-12, abs=1e-20), k


def test_truncated_cosine_follows_the_long_horizon():
    """OLMo 2 7B: a 5T-token cosine stopped at 4T; the LR at the stop is the 80% point of the long curve."""
    tokens_per_step = 1024 * 4096
    cfg = TrainConfig(seq_len=4096, global_batch_size=1024, max_steps=4 * 10**12 // tokens_per_step,
                      horizon_tokens=5 * 10**12, warmup_steps=2000, lr=3e-4)
    s = LRSchedule.from_config(cfg)
    assert cfg.horizon_steps == math.ceil(5e12 / tokens_per_step)
    progress = (cfg.max_steps - 2000) / (cfg.horizon_steps - 2000)
    expected = 3e-5 + 2.7e-4 * 0.5 * (1 + math.cos(math.pi * progress))
    assert s.lr_at(cfg.max_steps - 1) == pytest.approx(expected)  # the run's last step
    assert s.lr_at(cfg.max_steps - 1) > 3e-5 * 1.5  # truncated: well above the floor


def test_linear_to_zero_anneal_ends_at_exactly_zero_on_the_last_step():
    s = LRSchedule(peak_lr=1e-4, warmup_steps=0, horizon_steps=1001, kind="linear_to_zero")
    assert s.lr_at(0) == pytest.approx(1e-4 * 1000 / 1001)  # as OLMo-core's first step: one step down
    assert s.lr_at(500) == pytest.approx(1e-4 * 500 / 1001)
    assert s.lr_at(1000) == 0.0 and s.lr_at(1200) == 0.0  # the last step (1000) at exactly 0
    assert s.lr_at(999) == pytest.approx(1e-4 / 1001)
    lrs = [s.lr_at(i) for i in range(1001)]
    steps = [a - b for a, b in zip(lrs, lrs[1:])]
    assert max(steps) == pytest.approx(min(steps)) == pytest.approx(1e-4 / 1001)  # a straight line
    w = LRSchedule(peak_lr=1e-4, warmup_steps=10, horizon_steps=111, kind="linear_to_zero")
    assert w.lr_at(9) == pytest.approx(1e-4) and w.lr_at(10) == pytest.approx(1e-4 * 100 / 101)
    assert w.lr_at(59) == pytest.approx(1e-4 * 51 / 101) and w.lr_at(110) == 0.0
    assert LRSchedule(1e-4, 0, 2, "linear_to_zero").lr_at(0) == 5e-5
    assert LRSchedule(1e-4, 0, 2, "linear_to_zero").lr_at(1) == 0.0
    assert s.key_steps(1001) == {"first": 0, "25%": 250, "50%": 500, "75%": 750, "last": 1000}
    assert w.key_steps(111)["warmup_end"] == 9


def test_a_run_that_stops_inside_its_warm_up_shows_no_warm_up_end():
    """`python -m trainer.schedule --recipe olmo2-7b --steps 5` listed "warmup_end" at step 5 with
    LR 7.5e-7: the last step, labelled as if the warm-up peaked there."""
    s = LRSchedule(peak_lr=3e-4, warmup_steps=2000, horizon_steps=1_192_093)
    assert s.key_steps(5) == {"first": 0, "25%": 1, "50%": 2, "75%": 3, "last": 4}
    assert s.key_steps(2000)["warmup_end"] == 1999 and s.lr_at(1999) == 3e-4


def test_cosine_reaches_its_floor_on_the_horizons_last_step():
    """The pretraining cosine's floor is on step horizon_steps - 1 (anneals start from the LR of a
    checkpoint's last step)."""
    s = LRSchedule(peak_lr=3e-4, warmup_steps=2000, horizon_steps=1_192_093, kind="cosine")
    assert s.lr_at(1_192_092) == pytest.approx(3e-5) and s.lr_at(1_192_091) > 3e-5


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule(1e-3, 0, 10, kind="step")
    with pytest.raises(ValueError, match=r"^warmup_steps 20 is longer than the whole schedule \(10 steps\); "
                                         r"use fewer warm-up steps \(--warmup-steps\) or a longer schedule"):
        LRSchedule(1e-3, 20, 10)
    with pytest.raises(ValueError):
        LRSchedule(1e-3, 0, 10).lr_at(-1)


def test_train_config_defaults_are_the_paper_recipe():
    cfg = TrainConfig()
    assert cfg.warmup_steps == 2000 and cfg.adam_eps == 1e-8 and cfg.weight_decay == 0.1
    assert cfg.max_grad_norm == 1.0 and cfg.z_loss_weight == 1e-5 and cfg.final_lr_fraction == 0.1
    assert cfg.schedule == "cosine" and cfg.betas == (0.9, 0.95)
    assert cfg.decay_norms is True and cfg.repetition == "instance_filter"  # OLMo 2's choices
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="constant")
    with pytest.raises(ValueError, match="repetition"):
        TrainConfig(repetition="drop")
    with pytest.raises(ValueError, match="divisible"):
        TrainConfig(global_batch_size=6, micro_batch_size=2).grad_accum_steps(4)
    assert TrainConfig(global_batch_size=16, micro_batch_size=2).grad_accum_steps(4) == 2
    assert TrainConfig(lr=0.0).lr == 0.0  # a step that changes nothing: checks a pipeline end to end
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1e-4)


@pytest.mark.parametrize("bound", [-1.0, 0.0, math.nan])
def test_a_clipping_bound_that_would_reverse_or_erase_the_gradient_is_refused(bound):
    """clip_grad_norm_ scales by bound / norm: -1 is gradient ascent, 0 a step without gradient."""
    with pytest.raises(ValueError, match=r"max_grad_norm must be > 0, got .* \(to never clip, pass inf\)"):
        TrainConfig(max_grad_norm=bound)


def test_an_infinite_clipping_bound_leaves_the_gradient_as_it_is():
    model = tiny_model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    clip_grad_norm(model, TrainConfig(max_grad_norm=math.inf).max_grad_norm)
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())


@pytest.mark.parametrize("weight", [-1e-5, math.inf, math.nan])
def test_a_z_loss_weight_that_is_negative_or_not_finite_is_refused(weight):
    with pytest.raises(ValueError, match="z_loss_weight must be a finite number >= 0"):
        TrainConfig(z_loss_weight=weight)
    assert TrainConfig(z_loss_weight=0.0).z_loss_weight == 0.0  # no z-loss at all is a legitimate ablation


def test_configs_saved_before_the_olmo2_defaults_read_back_as_they_ran():
    legacy = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("repetition", "decay_norms")}
    old = TrainConfig.from_dict({**legacy, "mask_repetitions": True})
    assert old.repetition == "mask_spans" and old.decay_norms is False
    assert TrainConfig.from_dict({**legacy, "mask_repetitions": False}).repetition == "off"


def tiny_model() -> OLMo2:
    torch.manual_seed(0)
    return OLMo2(ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=200, max_seq_len=16))


def names_of(model: OLMo2, group: dict) -> list[str]:
    held = {id(p) for p in group["params"]}
    return [name for name, p in model.named_parameters() if id(p) in held]


def test_param_groups_exempt_only_the_embedding_by_default():
    """OLMo 2 (OLMo-core's OLMo2 scripts: weight_decay 0 for embeddings.weight only)."""
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert names_of(model, no_decay) == ["embed.weight"]
    assert "norm.weight" in names_of(model, decay) and "blocks.0.attn.q_norm.weight" in names_of(model, decay)
    assert "lm_head.weight" in names_of(model, decay)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert "names" not in decay and "names" not in no_decay  # saved in optim.pt, it broke resuming (checkpoint tests)


def test_param_groups_can_exempt_norms_too():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1, decay_norms=False)
    assert "embed.weight" in names_of(model, no_decay) and "norm.weight" in names_of(model, no_decay)
    assert all(n.endswith("norm.weight") or n == "embed.weight" for n in names_of(model, no_decay))
    assert "lm_head.weight" in names_of(model, decay) and all(p.ndim == 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("decay_norms", [True, False])
def test_weight_decay_applies_only_to_decayed_group(decay_norms):
    """With zero gradients AdamW's update is pure decay: w <- w * (1 - lr * wd)."""
    model = tiny_model()
    opt = build_optimizer(model, TrainConfig(lr=0.5, weight_decay=0.1, max_steps=10, warmup_steps=0,
                                             decay_norms=decay_norms))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["embed.weight"], before["embed.weight"], rtol=0, atol=0)
    norm = "blocks.1.mlp_norm.weight"
    expected_norm = before[norm] * (1 - 0.5 * 0.1) if decay_norms else before[norm]
    torch.testing.assert_close(after[norm], expected_norm, rtol=0, atol=0 if not decay_norms else 1e-7)
    torch.testing.assert_close(after["lm_head.weight"], before["lm_head.weight"] * (1 - 0.5 * 0.1))
    assert opt.defaults["eps"] == 1e-8 and opt.defaults["betas"] == (0.9, 0.95)


def test_zero_lr_changes_no_weight():
    """--lr 0: AdamW's moments advance, the weights do not move (not even by weight decay)."""
    model = tiny_model()
    opt = build_optimizer(model, TrainConfig(lr=0.0, max_steps=1, warmup_steps=0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randint(0, 200, (2, 16))).float().pow(2).mean().backward()
    opt.step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


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
