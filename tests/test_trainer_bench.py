"""bench/bench_trainer.py's output contract: one JSON object whose figures bench/run.py accepts."""

from __future__ import annotations

import json
import os

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
    result = {"model": "olmo2-1b", "seq_len": 4096, "tokens_per_second": 50_000.0, "threads": 16, "mfu": 0.41,
              "device": "NVIDIA H100 80GB HBM3"}
    figs = bench_trainer.figures(result, 52_000.0, torch.device("cuda"))
    assert validate_figures({"figures": figs})[1] == []
    named = {(f["name"], f["impl"]): f["value"] for f in figs}
    assert named[("trainer_step_olmo2-1b_seq4096_gpu", "dolmino")] == 50_000.0  # per GPU, not per core
    assert named[("trainer_step_olmo2-1b_seq4096_gpu", "olmo-core-published")] == 55_000.0
    assert named[("trainer_mfu_olmo2-1b_seq4096_gpu", "dolmino")] == 0.41
    other = bench_trainer.figures({**result, "device": "NVIDIA A100", "mfu": None}, None, torch.device("cuda"))
    assert [(f["impl"]) for f in other] == ["dolmino"]  # no H100 anchor elsewhere, no MFU without a peak
    assert bench_trainer.is_olmo2_1b("1B") and not bench_trainer.is_olmo2_1b("olmo2-190M")  # legacy name, same shape


# ----------------------------------------------------------------------------- peers

def _load_worker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("trainer_step", bench_trainer.WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worker_maps_every_parameter_like_the_hf_exporter():
    from trainer.config import ModelConfig
    from trainer.export_hf import hf_name
    from trainer.model import OLMo2

    worker = _load_worker()
    state = OLMo2(ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=128, max_seq_len=16)).state_dict()
    hf = worker.rename(state, "transformers")
    assert sorted(hf) == sorted(hf_name(n) for n in state)  # the exporter is tested against transformers itself
    core = worker.rename(state, "olmo-core")
    assert len(core) == len(state) and len(set(core)) == len(core)
    assert {"embeddings.weight", "lm_head.w_out.weight", "lm_head.norm.weight", "blocks.1.feed_forward.w2.weight",
            "blocks.0.attention.q_norm.weight", "blocks.0.attention_norm.weight"} <= set(core)
    assert core["blocks.0.feed_forward.w1.weight"] is state["blocks.0.mlp.gate_proj.weight"]
    assert worker.no_decay(list(core), "olmo-core") == {"embeddings.weight"}  # OLMo 2: norms are decayed
    assert worker.no_decay(list(hf), "transformers") == {"model.embed_tokens.weight"}
    with pytest.raises(KeyError):
        worker.rename({"blocks.0.bogus.weight": torch.zeros(1)}, "transformers")


def _comparison(model, times, ces):
    return {"model": model, "batch_size": 1, "seq_len": 256, "threads": 2, "errors": [],
            "impls": {impl: {"step_seconds_median": t, "tokens_per_second": 256 / t, "first_step_ce": ces[impl],
                             "loss": "x", "optimizer": "y", "clipping": "z", "version": "v"}
                      for impl, t in times.items()}}


def test_peer_figures_carry_issue_17_goals_into_the_harness():
    from bench.run import compare, median_figures

    comp = _comparison("olmo2-30M", {"dolmino": 10.0, "transformers": 12.5, "olmo-core": 13.0},
                       {"dolmino": 11.5, "transformers": 11.5, "olmo-core": 11.5000001})
    memory = {"model": "olmo2-30M", "batch_size": 1, "seq_len": 4096, "threads": 2, "errors": [],
              "impls": {"dolmino": {"peak_rss_mib": 3000.0, "step_peak_increase_mib": 500.0, "first_step_ce": 11.5},
                        "transformers": {"peak_rss_mib": 7000.0, "step_peak_increase_mib": 5000.0,
                                         "first_step_ce": 11.5},
                        "olmo-core": {"peak_rss_mib": 2500.0, "step_peak_increase_mib": 4000.0,
                                      "first_step_ce": 11.5}}}
    figs = bench_trainer.peer_figures([comp], memory)
    good, problems = validate_figures({"figures": figs})
    assert problems == [] and len(good) == len(figs)
    by = {c["name"]: c for c in compare(median_figures([good]))}
    step = by["trainer vs peers: step time, olmo2-30M 1x256 cpu 2 threads"]
    assert step["best_anchor"] == "transformers" and step["ratio"] == pytest.approx(1.25)
    assert step["meets_goal"] is True and step["goal"].startswith(">= 1.2 x transformers")
    tok = by["trainer vs peers: tokens/s, olmo2-30M 1x256 cpu 2 threads"]
    assert tok["meets_goal"] is True and tok["ratio"] == pytest.approx(1.25)
    mem = by["trainer vs peers: peak RSS of a step, olmo2-30M 1x4096 cpu"]
    # the memory goal is against transformers even when another anchor uses less
    assert mem["best_anchor"] == "olmo-core" and mem["meets_goal"] is True
    assert mem["goal"].startswith(">= 2 x transformers (is 2.33")
    slow = _comparison("olmo2-190M", {"dolmino": 10.0, "transformers": 11.0, "olmo-core": 15.0},
                       {"dolmino": 11.5, "transformers": 11.5, "olmo-core": 11.5})
    (c,) = [c for c in compare(median_figures([bench_trainer.peer_figures([slow], None)]))
            if c["unit"] == "s/step"]
    assert c["meets_goal"] is False  # 1.1x the faster peer is short of 1.2x
    # --peer-compile: figures of their own, judged by the same goal
    compiled = {**slow, "compile": True}
    (c,) = [c for c in compare(median_figures([bench_trainer.peer_figures([compiled], None)]))
            if c["unit"] == "s/step"]
    assert c["name"].endswith("all torch.compile'd") and c["ratio"] == pytest.approx(1.1)
    assert c["goal"].startswith(">= 1.2 x transformers") and c["meets_goal"] is False
    notes = bench_trainer.peer_notes([comp], memory)
    assert "agree" in notes[0] and "DISAGREE" not in notes[0]
    bad = _comparison("olmo2-30M", {"dolmino": 1.0, "transformers": 1.0}, {"dolmino": 11.5, "transformers": 10.0})
    assert "DISAGREE" in bench_trainer.peer_notes([bad], None)[0]


@pytest.mark.slow
def test_peers_run_side_by_side_on_the_same_weights_and_batch():
    """Two real worker processes (dolmino, transformers) on a tiny model: the same first-step loss."""
    pytest.importorskip("transformers")
    out = bench_trainer.compare_peers("tiny", 16, 2, 2, rounds=1, steps=1, warmup=0, threads=1,
                                      impls=("dolmino", "transformers"), timeout_s=600, log=lambda _m: None)
    assert out["errors"] == []
    d, t = out["impls"]["dolmino"], out["impls"]["transformers"]
    assert d["first_step_ce"] == pytest.approx(t["first_step_ce"], rel=1e-5)
    assert d["first_step_z_loss"] > 0 and t["first_step_z_loss"] == 0  # transformers computes no z-loss
    assert d["step_seconds_median"] > 0 and d["peak_rss_mib"] > 0 and len(d["step_seconds"]) == 1


def test_gpu_script_says_the_figure_is_missing_without_cuda(capsys):
    from bench import bench_trainer_gpu

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert bench_trainer_gpu.main([]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["figures"] == [] and "missing" in out["notes"][0]


def test_gpu_script_names_the_published_h100_figure_only_on_an_h100(monkeypatch):
    """OLMo-core's ~55k tokens/s/GPU is an H100 figure; the H200 run's figures listed it beside
    its own measurements as one more implementation (bench_trainer already required an H100)."""
    from bench import bench_trainer_gpu

    outs = [{"step_seconds": [0.56, 0.57], "peak_cuda_memory_gib": 39.7, "first_step_ce": 11.9}]
    monkeypatch.setattr(bench_trainer_gpu, "run_interleaved",
                        lambda *a, **k: ({"dolmino": outs, "olmo-core": outs}, []))
    impls = {}
    for gpu in ("NVIDIA H200", "NVIDIA H100 80GB HBM3"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_a, gpu=gpu: gpu)
        out = bench_trainer_gpu.run("olmo2-1b", 4096, 8, 2, steps=2, warmup=0, rounds=1,
                                    impls=("dolmino", "olmo-core"), device="cuda", compile_=True, timeout_s=1)
        assert validate_figures(out)[1] == [] and out["device"] == gpu
        impls[gpu] = {f["impl"] for f in out["figures"] if f["name"] == "trainer_step_olmo2-1b_seq4096_cuda"}
    assert impls["NVIDIA H200"] == {"dolmino", "olmo-core"}
    assert impls["NVIDIA H100 80GB HBM3"] == {"dolmino", "olmo-core", "olmo-core-published"}


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu(capsys):
    from bench import bench_trainer_gpu

    assert bench_trainer_gpu.main(["--dry-run", "--impls", "dolmino"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["impls"]["dolmino"]["tokens_per_second_per_gpu"] > 0 and out["errors"] == []
    assert validate_figures(out)[1] == []


def test_loss_layer_dry_run_compares_variants_on_the_same_inputs(capsys):
    """--loss-layer --dry-run: every variant scores the same loss, and each is timed against the
    matmul floor (on CPU: no peak memory, no compiled variants)."""
    from bench import bench_trainer_gpu

    assert bench_trainer_gpu.main(["--loss-layer", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    variants = out["variants"]
    assert set(variants) == {"fused eager chunk 64 (default)", "fused eager chunk 16", "unfused eager"}
    assert out["max_loss_difference"] < 1e-4 and out["matmul_floor_ms"] > 0
    for v in variants.values():
        assert v["ms"] > 0 and v["x_floor"] == pytest.approx(v["ms"] / out["matmul_floor_ms"], rel=1e-2)
        assert v["peak_mib"] is None
    # what bench/gpu_checks.sh reads to pick dolmino's loop and chunk for the step benchmark
    assert variants["fused eager chunk 64 (default)"]["loss_path"] == "eager"
    assert variants["fused eager chunk 16"]["chunk"] == 16 and "loss_path" not in variants["unfused eager"]


def test_olmo_core_runs_in_this_interpreter_when_it_imports_here(monkeypatch):
    """On a machine with no package index (a lent GPU), OLMo-core's wheels are installed beside
    torch: the peer then runs in this interpreter instead of a venv that cannot be made."""
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "olmo_core" else real(name, *a))
    monkeypatch.setattr(bench_trainer, "OLMO_CORE_VENV", bench_trainer.BENCH_DIR / "no-such-venv")
    assert bench_trainer.olmo_core_python(create=False) == bench_trainer.Path(sys.executable)


def test_worker_keeps_pythonpath_but_not_the_worktree(monkeypatch, tmp_path):
    """The worker's PYTHONPATH loses the worktree (OLMo-core must not import dolmino) and keeps
    the rest (wheels installed with --target)."""
    import sys

    seen = {}

    def fake_run(cmd, **kw):
        seen.update(kw["env"])
        raise bench_trainer.subprocess.TimeoutExpired(cmd, 1)

    monkeypatch.setattr(bench_trainer.subprocess, "run", fake_run)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(bench_trainer.REPO), str(tmp_path)]))
    out = bench_trainer.run_worker(bench_trainer.Path(sys.executable), {"impl": "olmo-core", "threads": 1},
                                   tmp_path, 1)
    assert "timed out" in out["error"]
    assert seen["PYTHONPATH"] == str(tmp_path)


@pytest.mark.slow
def test_gpu_checks_script_runs_end_to_end_in_dry_run(tmp_path):
    """bench/gpu_checks.sh is what a lent GPU runs, once: its shell plumbing (the loss layer's
    pick passed to the step, each step's status, the output files) runs here with DRY_RUN=1."""
    import subprocess
    import sys

    # OLMo-core is left out: without its venv the bench would make one (network, minutes)
    env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1", "IMPLS": "dolmino,transformers"}
    proc = subprocess.run(["bash", "bench/gpu_checks.sh", str(tmp_path)], cwd=bench_trainer.REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = (tmp_path / "machine.txt").read_text()
    for step in ("loss layer", "step bench", "gpu tests"):
        assert f"{step} rc=0" in status, status
    # the fastest fused variant of the dry run's loss layer is handed to the step benchmark
    picked = json.loads((tmp_path / "loss_layer.json").read_text())["variants"]
    best = min((v for v in picked.values() if "loss_path" in v), key=lambda v: v["ms"])
    assert f"--loss-path {best['loss_path']} --loss-chunk-size {best['chunk']}" in status
    step = json.loads((tmp_path / "trainer_gpu.json").read_text())
    assert step["dolmino_loss_chunk_size"] == best["chunk"] and set(step["impls"]) == {"dolmino", "transformers"}
