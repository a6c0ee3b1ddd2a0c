"""`python -m trainer.run` end to end in subprocesses: train, checkpoint, resume, --mix, torchrun DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.run import mix_output_dir, parse_count

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=240, module="trainer.run", launcher=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = (launcher or [sys.executable, "-m"]) + [module, *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mix")
    rng = np.random.default_rng(0)
    for i in range(2):
        tokens = rng.integers(0, 100_278, 40 * 32).astype("<u4")
        tokens.tofile(d / f"part-{i:05d}.npy")
    return d


def metrics(save_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


def test_cli_trains_and_writes_a_checkpoint(data_dir, tmp_path):
    save = tmp_path / "run"
    proc = run_cli("--data", data_dir, "--model", "tiny", "--steps", 3, "--seq-len", 32, "--batch-size", 2,
                   "--save-dir", save, "--metrics-interval", 1)
    assert proc.returncode == 0, proc.stderr
    assert "step 3/3" in proc.stdout and "tok/s" in proc.stdout
    ckpt = save / "step000003"
    assert (ckpt / "model.pt").is_file() and (ckpt / "optim.pt").is_file() and (ckpt / "train_state.pt").is_file()
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model"]["d_model"] == 64 and config["train"]["max_steps"] == 3
    rows = metrics(save)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    # resume the same run and carry on to 5 steps
    more = run_cli("--data", data_dir, "--model", "tiny", "--steps", 5, "--seq-len", 32, "--batch-size", 2,
                   "--save-dir", save, "--metrics-interval", 1, "--horizon-tokens", 5 * 64, "--resume")
    assert more.returncode == 0, more.stderr
    assert "resumed from" in more.stdout and (save / "step000005").is_dir()


def test_cli_mix_without_a_built_mix_says_how_to_build_it(tmp_path):
    manifest = tmp_path / "manifests" / "m.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"name": "m", "output": "../build/mixes/m"}))
    proc = run_cli("--mix", manifest, "--model", "tiny", "--steps", 1)
    assert proc.returncode != 0
    assert f"spark-submit dolmino/build_mix.py --manifest {manifest}" in proc.stderr
    assert str(tmp_path / "build" / "mixes" / "m") in proc.stderr


def test_mix_output_resolves_relative_to_the_manifest(data_dir, tmp_path):
    built = tmp_path / "build" / "mixes" / "demo"
    shutil.copytree(data_dir, built)
    manifest = tmp_path / "manifests" / "demo.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"name": "demo", "output": "../build/mixes/demo"}))
    assert mix_output_dir(manifest) == built.resolve()
    manifest.write_text(json.dumps({"name": "demo"}))
    with pytest.raises(SystemExit, match="no \"output\""):
        mix_output_dir(manifest)
    manifest.write_text("{not json")
    with pytest.raises(SystemExit, match="not valid JSON"):
        mix_output_dir(manifest)


def test_cli_reports_bad_data_clearly(tmp_path):
    (tmp_path / "p.npy").write_bytes(b"\x00" * 10)
    proc = run_cli("--data", tmp_path, "--model", "tiny", "--steps", 1, "--seq-len", 8, "--batch-size", 1)
    assert proc.returncode == 2 and "whole number of uint32 tokens" in proc.stderr


def test_parse_count():
    assert parse_count("5T") == 5 * 10**12 and parse_count("50b") == 5 * 10**10 and parse_count("1000") == 1000
    with pytest.raises(Exception):
        parse_count("lots")


@pytest.mark.slow
def test_torchrun_ddp_and_fsdp_match_single_process(data_dir, tmp_path):
    """2 gloo ranks x 1 instance == 1 process x 2 micro-batches of 1 (same global batch, same data)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this interpreter")
    common = ["--data", data_dir, "--model", "tiny", "--steps", 3, "--seq-len", 32, "--batch-size", 2,
              "--metrics-interval", 1, "--device", "cpu"]
    single = run_cli(*common, "--micro-batch-size", 1, "--save-dir", tmp_path / "single")
    assert single.returncode == 0, single.stderr
    reference = metrics(tmp_path / "single")
    launcher = [torchrun, "--standalone", "--nproc_per_node", "2", "-m"]
    for mode, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        proc = run_cli(*common, *extra, "--save-dir", tmp_path / mode, launcher=launcher)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "x2" in proc.stdout and "data: 6 instances" in proc.stdout  # stats summed over ranks
        rows = metrics(tmp_path / mode)
        assert [r["step"] for r in rows] == [1, 2, 3]
        for ra, rb in zip(reference, rows):
            assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5), mode
            assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4), mode
    # the FSDP checkpoint is a full state dict: a single process resumes it
    more = run_cli(*common, "--steps", 4, "--save-dir", tmp_path / "fsdp", "--resume")
    assert more.returncode == 0, more.stderr
    assert (tmp_path / "fsdp" / "step000004" / "model.pt").is_file()


def test_init_from_starts_an_anneal_from_pretrained_weights(data_dir, tmp_path, capsys):
    from trainer.run import main

    common = ["--data", str(data_dir), "--model", "tiny", "--seq-len", "32", "--batch-size", "2",
              "--metrics-interval", "1", "--device", "cpu"]
    assert main([*common, "--steps", "2", "--save-dir", str(tmp_path / "pre")]) == 0
    assert main([*common, "--steps", "2", "--save-dir", str(tmp_path / "fresh"), "--seed", "9"]) == 0
    assert main([*common, "--steps", "2", "--save-dir", str(tmp_path / "anneal"), "--seed", "9",
                 "--init-from", str(tmp_path / "pre"), "--schedule", "linear_to_zero", "--lr", "1e-4"]) == 0
    assert "initialised weights from" in capsys.readouterr().out
    anneal, fresh = metrics(tmp_path / "anneal"), metrics(tmp_path / "fresh")
    assert [r["lr"] for r in anneal] == [pytest.approx(1e-4), pytest.approx(5e-5)]  # no warm-up, linear to 0
    assert anneal[0]["loss"] != fresh[0]["loss"]  # same data order, different starting weights
    assert main([*common, "--model", "20M", "--steps", "1", "--save-dir", str(tmp_path / "x"),
                 "--init-from", str(tmp_path / "pre")]) == 2
