"""CUDA-only checks: a bf16 training step with no host-device sync, compile parity, resume on GPU,
FSDP2 with the compiled loss, two DDP ranks sharing the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import ModelConfig, RunConfig, TrainConfig
from trainer.distributed import DistEnv
from trainer.train import Trainer

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

GPU = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cuda", 0))


def make_run(tmp_path, **train) -> RunConfig:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    np.random.default_rng(0).integers(0, 4096, 64 * 128).astype("<u4").tofile(d / "part-00000.npy")
    model = ModelConfig(d_model=128, n_layers=2, n_heads=4, vocab_size=4096, max_seq_len=128)
    defaults = dict(seq_len=128, global_batch_size=8, micro_batch_size=4, max_steps=6, warmup_steps=2,
                    metrics_interval=3, lr=1e-3)
    return RunConfig(model=model, train=TrainConfig(**{**defaults, **train}), data_paths=[str(d)])


def test_train_step_has_no_host_device_sync(tmp_path):
    trainer = Trainer(make_run(tmp_path), GPU, tmp_path / "run", log=lambda _m: None)
    sums = torch.zeros(4, device="cuda")
    trainer.train_step(sums)  # first step: allocations, lazy init
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step(sums)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sums).all()
    trainer.loader.close()


def test_bf16_training_learns_and_resumes_on_gpu(tmp_path):
    full = Trainer(make_run(tmp_path, save_interval=3), GPU, tmp_path / "full", log=lambda _m: None).fit()
    assert full.losses[-1] < full.losses[0]
    resumed = Trainer(make_run(tmp_path, save_interval=3), GPU, tmp_path / "resumed",
                      resume=tmp_path / "full" / "step000003", log=lambda _m: None).fit()
    np.testing.assert_allclose(resumed.losses, full.losses[3:], rtol=1e-3)


def test_compiled_blocks_match_eager(tmp_path):
    eager = Trainer(make_run(tmp_path, max_steps=2), GPU, tmp_path / "e", log=lambda _m: None).fit()
    compiled = Trainer(make_run(tmp_path, max_steps=2, compile=True), GPU, tmp_path / "c",
                       log=lambda _m: None).fit()
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=2e-2)


def random_ids_mix(tmp_path) -> Path:
    """64 token ids drawn at random: a tiny model learns them in a few steps. Written here, not
    read from ../shared, which does not travel to a lent GPU machine."""
    data = tmp_path / "mix"
    data.mkdir()
    np.random.default_rng(0).integers(0, 64, 64 * 128).astype("<u4").tofile(data / "part-00000.npy")
    return data


def run_losses(cmd: list, save_dir: Path) -> list[float]:
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([*map(str, cmd), "--save-dir", str(save_dir)], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line)["loss"] for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def test_fsdp_bf16_with_compiled_loss_matches_one_process(tmp_path):
    """FSDP2 on CUDA (one rank under torchrun) with --compile: the blocks and the fused loss's
    compiled chunk loop run on weights FSDP gathers in bf16 (its mixed-precision policy, no
    autocast), where the plain process runs under bf16 autocast. Both learn, and their losses
    agree step for step to bf16 precision: the sharded path computes the same loss, not
    another one. Several ranks on the GPU: test_two_ddp_ranks_sharing_the_gpu_match_one_process."""
    common = ["--data", random_ids_mix(tmp_path), "--model", "tiny", "--seq-len", 32, "--batch-size", 4, "--steps", 8,
              "--lr", "1e-2", "--metrics-interval", 1, "--device", "cuda", "--compile"]
    losses = {"plain": run_losses([sys.executable, "-m", "trainer.run", *common], tmp_path / "plain"),
              "fsdp": run_losses([*TORCHRUN, "--nproc_per_node", "1", "-m", "trainer.run", *common, "--fsdp"],
                                 tmp_path / "fsdp")}
    print("losses by step:", losses)
    for mode, seq in losses.items():
        assert len(seq) == 8 and seq[-1] < seq[0] - 1.0, losses  # H200: 11.51 -> 7.89
    np.testing.assert_allclose(losses["fsdp"], losses["plain"], rtol=2e-2, err_msg=str(losses))


def test_two_ddp_ranks_sharing_the_gpu_match_one_process(tmp_path):
    """Two torchrun ranks on CUDA tensors (DDP, --compile, bf16 autocast) against one process.

    A lent machine has one GPU and NCCL refuses two ranks on one device, so both ranks name
    cuda:0 and talk over gloo (`--dist-backend gloo`, which copies each collective through host
    memory). What runs is the several-rank path on the GPU: each rank's half of the batch, the
    loss over the global target count, gradients averaged across ranks, and a checkpoint that
    one process resumes. The collectives are gloo's, not NCCL's. FSDP2 is not run this way:
    under gloo on CUDA its checkpoint gather crashed (trainer.distributed.process_group_backend)."""
    common = ["--data", random_ids_mix(tmp_path), "--model", "tiny", "--seq-len", 32, "--batch-size", 4, "--steps", 8,
              "--lr", "1e-2", "--metrics-interval", 1, "--compile"]
    losses = {"one process": run_losses([sys.executable, "-m", "trainer.run", *common, "--device", "cuda"],
                                        tmp_path / "one"),
              "ddp": run_losses([*TORCHRUN, "--nproc_per_node", "2", "-m", "trainer.run", *common, "--device", "cuda:0",
                                 "--dist-backend", "gloo"], tmp_path / "ddp")}
    print("losses by step:", losses)
    for mode, seq in losses.items():
        assert len(seq) == 8 and seq[-1] < seq[0] - 1.0, losses
    np.testing.assert_allclose(losses["ddp"], losses["one process"], rtol=2e-2, err_msg=str(losses))
    more = run_losses([sys.executable, "-m", "trainer.run", *common, "--device", "cuda", "--steps", 9, "--resume"],
                      tmp_path / "ddp")  # the two-rank checkpoint, resumed by one process
    assert len(more) == 9 and more[:8] == losses["ddp"] and np.isfinite(more[8]), more
