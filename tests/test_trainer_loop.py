"""The loop's throughput practices: gc off and run at fixed steps, metrics copied to the host
once per interval, MFU arithmetic, and the warning when a resume changes the recipe."""

from __future__ import annotations

import gc
import json

import pytest
import torch

from trainer import train as train_module
from trainer.config import ModelConfig, RunConfig, TrainConfig
from trainer.distributed import DistEnv
from trainer.throughput import mfu, peak_flops, peak_for_name
from trainer.train import Trainer, recipe_changes
from trainer_memmaps import write_real_text_mix

CPU = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_real_text_mix(tmp_path_factory.mktemp("mix"), n_parts=1, tokens_per_part=24 * 32)


def make_run(data, **train) -> RunConfig:
    defaults = dict(seq_len=32, global_batch_size=4, micro_batch_size=2, max_steps=7, warmup_steps=1,
                    metrics_interval=3, gc_interval=2, lr=1e-3)
    model = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    return RunConfig(model=model, train=TrainConfig(**{**defaults, **train}), data_paths=[str(data)])


def test_gc_is_off_during_steps_and_collected_at_fixed_steps(data, tmp_path, monkeypatch):
    trainer = Trainer(make_run(data), CPU, tmp_path / "run", log=lambda _m: None)
    collected, enabled_in_step, flushed = [], [], []
    monkeypatch.setattr(train_module.gc, "collect", lambda generation=2: collected.append(trainer.step))
    real_step, real_flush = trainer.train_step, trainer._flush

    def step(sums):
        enabled_in_step.append(gc.isenabled())
        real_step(sums)

    def flush(buffer, pending, *args):
        flushed.append([s for s, _ in pending])
        real_flush(buffer, pending, *args)

    monkeypatch.setattr(trainer, "train_step", step)
    monkeypatch.setattr(trainer, "_flush", flush)
    assert gc.isenabled()
    result = trainer.fit()
    assert enabled_in_step == [False] * 7 and gc.isenabled()  # restored afterwards
    assert collected == [2, 4, 6]
    # one device-to-host copy per metrics interval (plus the last, partial one), not one per step
    assert flushed == [[1, 2, 3], [4, 5, 6], [7]]
    assert [r["step"] for r in result.history] == list(range(1, 8))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and all(r["tokens_per_second"] > 0 and r["mfu"] is None for r in rows)


def test_mfu_arithmetic_and_unknown_devices():
    # 1B-class: 8.6e9 FLOPs/token at 50k tokens/s on a 989.4 TFLOP/s H100 = 43.5%
    assert mfu(50_000, 8.6e9, 989.4e12) == pytest.approx(50_000 * 8.6e9 / 989.4e12)
    assert mfu(50_000, 8.6e9, None) is None
    assert peak_flops(torch.device("cpu")) is None
    # As torch.cuda.get_device_name names them; a substring match read the L40 as an L4 and the GB200 as a B200.
    for name, peak in (("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA L40", 181e12),
                       ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                       ("NVIDIA GH200 480GB", 989.4e12), ("NVIDIA B200", 2250e12), ("NVIDIA GB200", None),
                       ("NVIDIA H200", 989.4e12), ("NVIDIA A10", None), ("Tesla T4", None)):
        assert peak_for_name(name) == peak, name
    cfg = ModelConfig.preset("olmo2-1b")
    assert cfg.flops_per_token(4096) == 6 * cfg.num_params(include_embedding=False) + 12 * 16 * 2048 * 4096


def test_resume_with_another_recipe_is_logged(data, tmp_path):
    Trainer(make_run(data, max_steps=2), CPU, tmp_path / "run", log=lambda _m: None).fit()
    messages = []
    same = Trainer(make_run(data, max_steps=2), CPU, tmp_path / "x", resume=tmp_path / "run", log=messages.append)
    same.loader.close()
    assert not [m for m in messages if "warning" in m]
    Trainer(make_run(data, max_steps=4, lr=2e-3), CPU, tmp_path / "y", resume=tmp_path / "run",
            log=messages.append).loader.close()
    warnings = [m for m in messages if m.startswith("warning")]
    assert any("lr 0.001 -> 0.002" in m for m in warnings)
    assert any("schedule horizon 2 -> 4 steps" in m for m in warnings)
    assert recipe_changes(None, TrainConfig()) == []
    assert recipe_changes({"bogus": 1}, TrainConfig()) == ["the checkpoint's train config could not be read"]


def test_a_horizon_changed_by_the_steps_says_to_resume_with_them():
    """A microanneal killed at step 4 of `--steps 12`, resumed with the same command less `--steps`, decays over one
    pass (52 steps) instead: the warning said to pass --horizon-tokens, which keeps the curve but leaves the 40 steps
    after it at LR 0; the same --steps is what continues the run (found by a tester)."""
    saved = TrainConfig(seq_len=256, global_batch_size=8, max_steps=12, schedule="linear_to_zero", warmup_steps=0,
                        lr=3e-5)
    assert recipe_changes(saved.to_dict(), TrainConfig(**{**saved.to_dict(), "max_steps": 52})) == [
        "schedule horizon 12 -> 52 steps (resume with --steps 12, the length of the checkpoint's run, to keep its LR "
        "curve)"]
    wider = TrainConfig(**{**saved.to_dict(), "horizon_tokens": 12 * 8 * 256, "global_batch_size": 16})
    assert recipe_changes({**saved.to_dict(), "horizon_tokens": 12 * 8 * 256}, wider) == [
        "global_batch_size 8 -> 16",
        "schedule horizon 12 -> 6 steps (pass --horizon-tokens to keep one LR curve across resumes)"]
    # a computed LR is shown as a number, not its float noise
    assert recipe_changes({**saved.to_dict(), "lr": 3e-4 / 10}, TrainConfig(**{**saved.to_dict(), "lr": 3e-4})) == [
        "lr 3e-05 -> 0.0003"]


def test_a_resume_without_the_checkpoints_recipe_says_which_to_add(data, tmp_path):
    """A microanneal resumed without --recipe took the defaults' lr and schedule: the warnings listed those
    fields but never the recipe, which config.json did not record. It does now, and a resume with another
    recipe (or none) says so in one line with the fix; a checkpoint from before the field resumes unsaid."""
    from trainer.train import check_resume_model, recipe_note

    anneal = make_run(data, max_steps=2, schedule="linear_to_zero", warmup_steps=0)
    anneal.recipe = "microanneal"
    Trainer(anneal, CPU, tmp_path / "run", log=lambda _m: None).fit()
    config = json.loads((tmp_path / "run" / "step000002" / "config.json").read_text())
    assert config["recipe"] == "microanneal" and RunConfig.from_dict(config).recipe == "microanneal"
    messages = []
    Trainer(make_run(data, max_steps=3), CPU, tmp_path / "x", resume=tmp_path / "run",
            log=messages.append).loader.close()
    warnings = [m for m in messages if m.startswith("warning")]
    assert warnings[0] == ("warning: step000002 ran --recipe microanneal, and this resume has no --recipe, whose "
                           "defaults replace the recipe's; resume with --recipe microanneal")
    assert any("schedule 'linear_to_zero' -> 'cosine'" in m for m in warnings[1:])
    messages.clear()
    Trainer(anneal, CPU, tmp_path / "y", resume=tmp_path / "run", log=messages.append).loader.close()
    assert not [m for m in messages if "recipe" in m]  # the same recipe
    # the errors a recipe's own --seq-len or --model left out meets first name it too
    other = make_run(data, seq_len=16)
    other.model = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=64)
    with pytest.raises(ValueError, match=r"max_seq_len 32 there, 64 here.*\(step000002 ran --recipe microanneal, "
                                         r"and this resume has no --recipe.*resume with --recipe microanneal\)$"):
        check_resume_model(tmp_path / "run" / "step000002", other)
    assert recipe_note("step9", {"recipe": None}, "olmo2-7b-anneal") == (
        "step9 ran without --recipe, and this resume has --recipe olmo2-7b-anneal, whose defaults replace its "
        "settings; resume without --recipe")
    # a checkpoint from before config.json recorded it: no line, and it resumes
    del config["recipe"]
    (tmp_path / "run" / "step000002" / "config.json").write_text(json.dumps(config))
    messages.clear()
    resumed = Trainer(make_run(data, max_steps=3), CPU, tmp_path / "z", resume=tmp_path / "run", log=messages.append)
    resumed.loader.close()
    assert resumed.step == 2 and not [m for m in messages if "--recipe" in m]
    assert recipe_note("s", {}, "microanneal") is None
