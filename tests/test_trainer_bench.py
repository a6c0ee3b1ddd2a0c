"""bench/bench_trainer.py's output contract: one JSON object whose figures bench/run.py accepts."""

from __future__ import annotations

import json

import pytest
import torch

from bench import bench_trainer
from bench.run import validate_figures


def test_bench_prints_valid_figures_for_trainer_and_raw(capsys):
    assert bench_trainer.main(["--no-peers", "--model", "tiny", "--seq-len", "32", "--batch-size", "2", "--steps", "1",
                               "--warmup", "1", "--device", "cpu", "--no-compile"]) == 0
    out = json.loads(capsys.readouterr().out)  # the whole stdout is one JSON object
    good, problems = validate_figures(out)
    assert problems == []
    by_impl = {f["impl"]: f for f in good}
    assert set(by_impl) == {"dolmino", "raw"}
    assert by_impl["dolmino"]["name"] == by_impl["raw"]["name"] == "trainer_step_tiny_seq32_cpu"
    assert by_impl["dolmino"]["unit"] == "tokens/s/core" and by_impl["dolmino"]["better"] == "higher"
    # per core = the trainer's tokens/s divided by torch's thread count
    assert by_impl["dolmino"]["value"] == pytest.approx(out["tokens_per_second"] / torch.get_num_threads())
    assert by_impl["raw"]["value"] > 0 and out["mfu"] is None  # no known peak on a CPU: no MFU figure
    assert out["tokens_per_second"] == pytest.approx(2 * 32 / out["seconds_per_step"], rel=0.05)
    assert 9 < out["mean_loss"] < 13  # ~ln(100352) = 11.5 for a fresh model on random ids


def test_gpu_figures_carry_mfu_and_the_published_anchor():
    result = {"model": "1B", "seq_len": 4096, "tokens_per_second": 50_000.0, "threads": 16, "mfu": 0.41,
              "device": "NVIDIA H100 80GB HBM3"}
    figs = bench_trainer.figures(result, 52_000.0, torch.device("cuda"))
    assert validate_figures({"figures": figs})[1] == []
    named = {(f["name"], f["impl"]): f["value"] for f in figs}
    assert named[("trainer_step_1B_seq4096_gpu", "dolmino")] == 50_000.0  # per GPU, not per core
    assert named[("trainer_step_1B_seq4096_gpu", "olmo-core-published")] == 55_000.0
    assert named[("trainer_mfu_1B_seq4096_gpu", "dolmino")] == 0.41
    other = bench_trainer.figures({**result, "device": "NVIDIA A100", "mfu": None}, None, torch.device("cuda"))
    assert [(f["impl"]) for f in other] == ["dolmino"]  # no H100 anchor elsewhere, no MFU without a peak
