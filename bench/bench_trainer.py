"""Benchmark the trainer's step: its own loop, and side by side with transformers and OLMo-core.

    python bench/bench_trainer.py                       # CPU: loop + peers at the olmo2-30M and olmo2-190M shapes
    python bench/bench_trainer.py --quick               # smaller batches, fewer rounds (what bench.run --quick runs)
    python bench/bench_trainer.py --model olmo2-1b --seq-len 4096 --batch-size 4 --micro-batch-size 2 --no-peers  # GPU
    python bench/bench_trainer_gpu.py                   # the OLMo2-1B bf16 comparison on one GPU (see there)

Prints one JSON object. Two measurements:

1. The trainer's own loop. The real training step (data loader on a memmap of random token
   ids, forward, fused output layer + cross-entropy + z-loss, backward, clipping, AdamW)
   through trainer.train.Trainer, `--steps` timed after `--warmup` untimed, against "raw":
   the same OLMo2 module stepped by the smallest loop PyTorch allows (one in-memory batch,
   the same fused loss call with z-loss, clipping, AdamW), a ceiling, not a competitor. dolmino / raw shows what
   the trainer's own machinery costs. Figures: tokens/s per CPU core on CPU; tokens/s per GPU
   and MFU on a GPU (reference: OLMo-core's published ~55k tokens/s/GPU for a ~1B OLMo 2 in
   bf16 at 4096 context on H100s).

2. Peers (CPU, `--peers`, on by default there): dolmino's step against transformers'
   Olmo2ForCausalLM and OLMo-core's Transformer at the olmo2-30M and olmo2-190M presets'
   shapes (issue 17's "20M" and "150M" were the legacy presets of those names, 512 x 6 and
   1024 x 12; `--peer-models 20M,150M` still measures exactly those). Each
   implementation runs in its own process (bench/anchor_scripts/trainer_step.py; OLMo-core
   from bench/.venvs/olmo-core, a venv holding ai2-olmo-core and the modules its imports
   need, installed --no-deps, that reaches torch through a .pth to this interpreter's
   site-packages, so all three run the same torch build). Every process loads the same
   initial weights (dolmino's init, renamed) and the same batch; processes run one at a
   time, interleaved: round r runs every implementation once, in an order rotated per round,
   and each reports `--peer-steps` timed steps after `--peer-warmup` untimed ones (default
   2: with one, the run of 2026-12-04 02:05 showed every process of every implementation
   taking ~1.5x as long for its first timed step as for its second, e.g. at olmo2-190M
   dolmino 7.8-8.3 s then 5.1-5.5, transformers 8.6-9.9 then 5.5-6.4; a warm-up each process
   pays once, not a training step's cost, and a median over both kinds of step fell between
   them). Figures are medians over all timed steps of all rounds. The step is each project's own per-batch
   work (see trainer_step.py): dolmino and OLMo-core compute cross-entropy + z-loss,
   transformers' model has no z-loss and computes cross-entropy only; all clip at 1.0 and
   use torch's fused AdamW. Peak memory is each process's resident high-water mark (weights,
   gradients, AdamW state, activations, interpreter and libraries) over one full step at
   `--memory-seq-len` (4096) with batch 1, one process per implementation. Goals (issue 17):
   step time >= 1.2x both peers while computing z-loss; peak memory <= 0.5x transformers'.
   The first step's cross-entropy of each implementation is reported: same weights and batch
   must give the same value, which checks the weight mapping.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from trainer.distributed import DistEnv, pick_device  # noqa: E402
from trainer.model import OLMo2  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.throughput import mfu, peak_flops  # noqa: E402
from trainer.train import Trainer  # noqa: E402

OLMO_CORE_1B_H100_TOKENS_PER_S = 55_000
BENCH_DIR = Path(__file__).resolve().parent
WORKER = BENCH_DIR / "anchor_scripts" / "trainer_step.py"
OLMO_CORE_VENV = BENCH_DIR / ".venvs" / "olmo-core"
# ai2-olmo-core without its dependencies (torch, numpy, transformers' stack come from this
# interpreter through a .pth), plus exactly what `olmo_core.nn.transformer` and
# `olmo_core.optim` import and this interpreter lacks: cached_path (imported by
# olmo_core.config) pulls in the Google Cloud Storage client at import time.
OLMO_CORE_PINS = ("ai2-olmo-core==3.0.0", "cached-path==1.8.10", "dataclass-extensions==0.5.0", "bettermap==1.3.1",
                  "dill==0.4.1", "google-cloud-storage==3.17.1", "google-api-core==2.44.0", "google-auth==2.63.0",
                  "google-cloud-core==2.8.0", "googleapis-common-protos==1.76.0", "protobuf==7.36.2")
PEERS = ("dolmino", "transformers", "olmo-core")
GOAL_STEP_VS_PEERS = 1.2      # issue 17: step time >= 1.2x both peers, with z-loss
GOAL_MEMORY_VS_TRANSFORMERS = 2.0  # issue 17: peak memory <= 0.5x transformers' at seq 4096


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_tokens_per_second(cfg: ModelConfig, seq_len: int, batch_size: int, micro_batch_size: int, steps: int,
                          warmup: int, dev: torch.device, compile_: bool) -> float:
    """The ceiling: the same model call as the trainer's step (forward with the fused output layer
    + cross-entropy + z-loss, compiled where the trainer compiles), backward, clipping and AdamW,
    in a bare loop over one in-memory batch. (It once ran lm_head + F.cross_entropy: slower than
    the trainer's own fused step, so no ceiling; found by a reviewer of the bench claims.)"""
    torch.manual_seed(0)
    model = OLMo2(cfg).to(dev)
    if compile_:
        for block in model.blocks:
            block.compile()
    opt = build_optimizer(model, TrainConfig(seq_len=seq_len, global_batch_size=batch_size,
                                             micro_batch_size=micro_batch_size))
    ids = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), device=dev)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    accum = batch_size // micro_batch_size

    def step():
        for i in range(accum):
            sl = slice(i * micro_batch_size, (i + 1) * micro_batch_size)
            with autocast:
                out = model(inputs[sl], labels[sl], z_loss_weight=1e-5, denominator=float(batch_size * seq_len),
                            fused_loss=True, compile_loss=compile_)
            out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return steps * batch_size * seq_len / (time.perf_counter() - t0)


def is_olmo2_1b(model: str) -> bool:
    """Whether the preset `model` has OLMo 2 1B's shape (OLMo-core's published figure is for it)."""
    return not ModelConfig.preset(model).same_shape(ModelConfig.preset("olmo2-1b"))


def figures(result: dict, raw_tok_s: float | None, dev: torch.device) -> list[dict]:
    """bench/run.py's figures: per-core tokens/s on CPU, per-GPU tokens/s and MFU on a GPU."""
    model, seq = result["model"], result["seq_len"]
    if dev.type == "cuda":
        name, unit, per = f"trainer_step_{model}_seq{seq}_gpu", "tokens/s/GPU", 1
    else:
        name, unit, per = f"trainer_step_{model}_seq{seq}_cpu", "tokens/s/core", result["threads"]
    out = [{"name": name, "impl": "dolmino", "value": result["tokens_per_second"] / per, "unit": unit,
            "better": "higher"}]
    if raw_tok_s is not None:
        out.append({"name": name, "impl": "raw", "value": raw_tok_s / per, "unit": unit, "better": "higher"})
    if dev.type == "cuda":
        if is_olmo2_1b(model) and seq == 4096 and "H100" in result["device"]:
            out.append({"name": name, "impl": "olmo-core-published", "value": float(OLMO_CORE_1B_H100_TOKENS_PER_S),
                        "unit": unit, "better": "higher"})
        if result["mfu"] is not None:
            out.append({"name": f"trainer_mfu_{model}_seq{seq}_gpu", "impl": "dolmino", "value": result["mfu"],
                        "unit": "fraction of peak bf16", "better": "higher"})
    return out


def bench(model: str, seq_len: int, batch_size: int, micro_batch_size: int | None, steps: int, warmup: int,
          device: str, compile_: bool | None, raw: bool = True) -> dict:
    dev = pick_device(device)
    cfg = ModelConfig.preset(model, max_seq_len=max(seq_len, ModelConfig.preset(model).max_seq_len))
    n_instances = batch_size * (steps + warmup + 2)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        rng.integers(0, cfg.vocab_size, n_instances * seq_len).astype("<u4").tofile(data / "part-00000.npy")
        train = TrainConfig(seq_len=seq_len, global_batch_size=batch_size,
                            micro_batch_size=micro_batch_size or batch_size, max_steps=steps + warmup,
                            warmup_steps=1, compile=(dev.type == "cuda") if compile_ is None else compile_,
                            metrics_interval=steps + warmup)
        env = DistEnv(0, 0, 1, dev)
        trainer = Trainer(RunConfig(model=cfg, train=train, data_paths=[str(data)]), env, Path(tmp) / "ckpt",
                          log=lambda _m: None)
        sums = torch.zeros(4, device=dev)
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step(sums)
        _sync(dev)
        warm_s = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(sums)
        _sync(dev)
        elapsed = time.perf_counter() - t0
        loss = sums[0].item() / (steps + warmup)
        trainer.loader.close()
        del trainer, sums  # free the trainer's model and optimizer before the raw loop builds its own
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    tokens = steps * batch_size * seq_len
    tok_s = tokens / elapsed
    fpt = cfg.flops_per_token(seq_len)
    peak = peak_flops(dev)
    result = {
        "benchmark": "trainer_step",
        "device": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        "model": model,
        "params": cfg.num_params(),
        "params_non_embedding": cfg.num_params(include_embedding=False),
        "precision": "bf16 autocast" if dev.type == "cuda" else "fp32",
        "compile": train.compile,
        "seq_len": seq_len,
        "global_batch_size": batch_size,
        "micro_batch_size": train.micro_batch_size,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "warmup_seconds": round(warm_s, 3),
        "seconds_per_step": round(elapsed / steps, 4),
        "tokens_per_second": round(tok_s, 1),
        "flops_per_token": fpt,
        "model_tflops_per_second": round(tok_s * fpt / 1e12, 4),
        "mfu": None if peak is None else round(mfu(tok_s, fpt, peak), 4),
        "peak_bf16_flops": peak,
        "mean_loss": round(loss, 4),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        result["reference"] = {"olmo_core_1b_bf16_4k_h100_tokens_per_second_per_gpu": OLMO_CORE_1B_H100_TOKENS_PER_S,
                               "ratio": round(tok_s / OLMO_CORE_1B_H100_TOKENS_PER_S, 3)}
    raw_tok_s = None
    if raw:
        raw_tok_s = raw_tokens_per_second(cfg, seq_len, batch_size, train.micro_batch_size, steps, warmup, dev,
                                          train.compile)
        result["raw_tokens_per_second"] = round(raw_tok_s, 1)
        result["trainer_vs_raw"] = round(tok_s / raw_tok_s, 3)
    result["figures"] = figures(result, raw_tok_s, dev)
    return result


# ------------------------------------------------------------------------------------ peers


class PeerUnavailable(RuntimeError):
    """A peer implementation cannot run here (its venv could not be made, its import fails)."""


def _shared_site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"]).resolve()


def olmo_core_python(create: bool = True) -> Path:
    """bench/.venvs/olmo-core's interpreter, made on first use (pins in OLMO_CORE_PINS).

    The venv is made from the base interpreter, and a `.pth` file appends this interpreter's
    site-packages to its path: OLMo-core then imports the very torch (and numpy, safetensors,
    ...) that dolmino and transformers use, and only its own packages live in the venv.
    """
    if importlib.util.find_spec("olmo_core") is not None:
        # an image that carries OLMo-core beside torch (a GPU machine with no package index):
        # the peer runs in this very interpreter, as it would in the venv
        return Path(sys.executable)
    python = OLMO_CORE_VENV / "bin" / "python"
    marker = OLMO_CORE_VENV / ".dolmino-peer.json"
    shared = str(_shared_site_packages())
    wanted = {"pins": list(OLMO_CORE_PINS), "shared": shared}
    if marker.exists() and python.exists() and json.loads(marker.read_text()) == wanted:
        return python
    if not create:
        raise PeerUnavailable(f"no OLMo-core venv at {OLMO_CORE_VENV}; run bench/bench_trainer.py once to make it")
    venv.EnvBuilder(with_pip=True, clear=True).create(OLMO_CORE_VENV)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_dolmino_shared_site_packages.pth").write_text(shared + "\n")
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                             *OLMO_CORE_PINS], capture_output=True, text=True)
    if result.returncode != 0:
        raise PeerUnavailable(f"pip install --no-deps {' '.join(OLMO_CORE_PINS)} failed:\n{result.stderr[-2000:]}")
    check = subprocess.run([str(python), "-c", "import torch, olmo_core.nn.transformer, olmo_core.optim; "
                            "print(torch.__version__)"], capture_output=True, text=True)
    if check.returncode != 0 or check.stdout.strip() != torch.__version__:
        raise PeerUnavailable(f"OLMo-core venv does not import with this torch ({torch.__version__}): "
                              f"{(check.stderr or check.stdout)[-1500:]}")
    marker.write_text(json.dumps(wanted))
    return python


def peer_python(impl: str, create: bool = True) -> Path:
    if impl == "olmo-core":
        return olmo_core_python(create)
    if impl == "transformers":
        try:
            import transformers  # noqa: F401
        except ImportError as exc:
            raise PeerUnavailable(f"transformers is not installed: {exc}") from None
    return Path(sys.executable)


def model_spec(cfg: ModelConfig) -> dict:
    return {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "mlp_hidden": cfg.mlp_hidden,
            "vocab_size": cfg.padded_vocab_size, "rope_theta": cfg.rope_theta, "norm_eps": cfg.norm_eps,
            "max_seq_len": cfg.max_seq_len}


def write_inputs(directory: Path, cfg: ModelConfig, batch_size: int, seq_len: int, seed: int = 0) -> tuple[Path, Path]:
    """dolmino's initial weights (OLMo 2 init) and one batch of token ids (batch, seq + 1), as files."""
    torch.manual_seed(seed)
    model = OLMo2(cfg)
    weights = directory / f"weights-{cfg.d_model}x{cfg.n_layers}.pt"
    torch.save({k: v for k, v in model.state_dict().items()}, weights)
    del model
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), generator=gen)
    batch = directory / f"batch-{batch_size}x{seq_len}.pt"
    torch.save(ids, batch)
    return weights, batch


def run_worker(python: Path, spec: dict, directory: Path, timeout_s: float) -> dict:
    """One implementation's process: its JSON result, or {"error": ...}."""
    path = directory / f"spec-{spec['impl']}-{os.getpid()}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
               TOKENIZERS_PARALLELISM="false")
    # the OLMo-core process must not see the worktree (dolmino's adds it itself); other entries
    # stay, such as a folder of wheels installed with --target on a machine with no index
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and Path(p).resolve() != REPO.resolve()]
    env.pop("PYTHONPATH", None)
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    started = time.perf_counter()
    try:
        proc = subprocess.run([str(python), str(WORKER), str(path)], capture_output=True, text=True,
                              timeout=timeout_s, env=env, cwd=directory)
    except subprocess.TimeoutExpired:
        return {"impl": spec["impl"], "error": f"timed out after {timeout_s:.0f} s"}
    finally:
        path.unlink(missing_ok=True)
    if proc.returncode != 0:
        return {"impl": spec["impl"], "error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"impl": spec["impl"], "error": f"no JSON from the worker: {proc.stdout[-500:]} {proc.stderr[-500:]}"}
    out["wall_seconds"] = round(time.perf_counter() - started, 2)
    return out


def _base_spec(impl: str, cfg: ModelConfig, weights: Path, batch: Path, micro_batch_size: int, steps: int,
               warmup: int, threads: int, fused_loss: bool = True) -> dict:
    tc = TrainConfig()
    return {"impl": impl, "model": model_spec(cfg), "weights": str(weights), "batch": str(batch),
            "micro_batch_size": micro_batch_size, "steps": steps, "warmup": warmup, "threads": threads,
            "z_loss_weight": tc.z_loss_weight, "lr": tc.lr, "weight_decay": tc.weight_decay,
            "betas": list(tc.betas), "max_grad_norm": tc.max_grad_norm, "repo": str(REPO), "fused_loss": fused_loss}


def available_peers(impls: tuple[str, ...], log) -> tuple[dict[str, Path], dict[str, str]]:
    pythons, missing = {}, {}
    for impl in impls:
        name = impl.removesuffix("_lm_loss")
        try:
            pythons[impl] = peer_python(name)
        except (PeerUnavailable, OSError, subprocess.CalledProcessError) as exc:
            missing[impl] = str(exc).splitlines()[0][:300]
            log(f"[bench_trainer] {impl} unavailable: {missing[impl]}")
    return pythons, missing


def run_interleaved(cfg: ModelConfig, impls: tuple[str, ...], batch_size: int, seq_len: int, rounds: int,
                    spec_for, timeout_s: float, log, label: str) -> tuple[dict[str, list[dict]], list[str]]:
    """Rounds of one worker process per implementation, the order rotated every round, all on the
    same weights and batch: ({impl: [worker outputs]}, [errors]). `spec_for(impl, weights, batch)`
    gives each worker's spec."""
    pythons, missing = available_peers(impls, log)
    runs: dict[str, list[dict]] = {impl: [] for impl in pythons}
    errors: list[str] = [f"{impl}: {why}" for impl, why in missing.items()]
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        weights, batch = write_inputs(Path(tmp), cfg, batch_size, seq_len)
        order = list(pythons)
        for r in range(rounds):
            shift = r % max(len(order), 1)
            for impl in order[shift:] + order[:shift]:
                log(f"{label} {batch_size}x{seq_len} round {r + 1}/{rounds}: {impl}")
                out = run_worker(pythons[impl], spec_for(impl, weights, batch), Path(tmp), timeout_s)
                if "error" in out:
                    errors.append(f"{impl} round {r + 1}: {out['error']}")
                    log(f"{label} {impl} round {r + 1} failed: {out['error'][-300:]}")
                else:
                    runs[impl].append(out)
                    # each worker's result as it lands: a run cut short still leaves its figures
                    log(f"{label} {impl} round {r + 1} result: {json.dumps(out)}")
    return runs, errors


def compare_peers(model: str, seq_len: int, batch_size: int, micro_batch_size: int, rounds: int, steps: int,
                  warmup: int, threads: int, impls: tuple[str, ...], timeout_s: float = 3600, log=print,
                  compile_: bool = False) -> dict:
    """Interleaved rounds of one process per implementation; medians of the timed steps.
    `compile_`: every implementation torch.compile'd as its own trainer does it (trainer_step.py)."""
    cfg = ModelConfig.preset(model, max_seq_len=max(seq_len, ModelConfig.preset(model).max_seq_len))

    def spec_for(impl: str, weights: Path, batch: Path) -> dict:
        spec = _base_spec(impl.removesuffix("_lm_loss"), cfg, weights, batch, micro_batch_size, steps, warmup,
                          threads, fused_loss=not impl.endswith("_lm_loss"))
        return {**spec, "compile": compile_}

    runs, errors = run_interleaved(cfg, impls, batch_size, seq_len, rounds, spec_for, timeout_s, log,
                                   label=f"[bench_trainer] {model}")
    tokens = batch_size * seq_len
    per_impl = {}
    for impl, outs in runs.items():
        if not outs:
            continue
        times = [t for o in outs for t in o["step_seconds"]]
        med = statistics.median(times)
        first = outs[0]
        per_impl[impl] = {
            "step_seconds_median": round(med, 4), "step_seconds": [round(t, 4) for t in times],
            "tokens_per_second": round(tokens / med, 2), "peak_rss_mib": round(max(o["peak_rss_mib"] for o in outs), 1),
            "step_peak_increase_mib": round(max(o["step_peak_increase_mib"] or 0 for o in outs), 1),
            "first_step_ce": first["first_step_ce"], "first_step_z_loss": first["first_step_z_loss"],
            **{k: first.get(k) for k in ("loss", "z_loss", "optimizer", "clipping", "version", "torch", "threads",
                                          "attn_implementation") if first.get(k) is not None},
        }
    return {"model": model, "params": cfg.num_params(), "params_non_embedding": cfg.num_params(False),
            "seq_len": seq_len, "batch_size": batch_size, "micro_batch_size": micro_batch_size, "rounds": rounds,
            "timed_steps_per_round": steps, "warmup_steps_per_process": warmup, "threads": threads,
            "compile": compile_, "impls": per_impl, "errors": errors}


def peak_memory(model: str, seq_len: int, batch_size: int, threads: int, impls: tuple[str, ...],
                timeout_s: float = 3600, log=print) -> dict:
    """Each implementation's resident high-water mark over one full step, one fresh process each."""
    cfg = ModelConfig.preset(model, max_seq_len=max(seq_len, ModelConfig.preset(model).max_seq_len))
    pythons, missing = available_peers(impls, log)
    per_impl, errors = {}, [f"{impl}: {why}" for impl, why in missing.items()]
    with tempfile.TemporaryDirectory(prefix="bench-trainer-mem-") as tmp:
        weights, batch = write_inputs(Path(tmp), cfg, batch_size, seq_len)
        for impl, python in pythons.items():
            spec = _base_spec(impl.removesuffix("_lm_loss"), cfg, weights, batch, batch_size, 1, 0, threads,
                              fused_loss=not impl.endswith("_lm_loss"))
            log(f"[bench_trainer] peak memory {model} {batch_size}x{seq_len}: {impl}")
            out = run_worker(python, spec, Path(tmp), timeout_s)
            if "error" in out:
                errors.append(f"{impl}: {out['error']}")
                continue
            per_impl[impl] = {"peak_rss_mib": round(out["peak_rss_mib"], 1),
                              "rss_after_build_mib": round(out["rss_after_build_mib"] or 0, 1),
                              "step_peak_increase_mib": round(out["step_peak_increase_mib"] or 0, 1),
                              "step_seconds": round(out["step_seconds"][0], 3), "first_step_ce": out["first_step_ce"]}
    return {"model": model, "seq_len": seq_len, "batch_size": batch_size, "threads": threads, "impls": per_impl,
            "errors": errors}


def peer_figures(comparisons: list[dict], memory: dict | None) -> list[dict]:
    """bench/run.py figures: step time and tokens/s per shape (goal 1.2x the best peer), peak RSS."""
    out = []
    for c in comparisons:
        shape = f"{c['model']} {c['batch_size']}x{c['seq_len']} cpu {c['threads']} threads"
        if c.get("compile"):
            shape += ", all torch.compile'd"
        for impl, r in c["impls"].items():
            goal = {"goal": GOAL_STEP_VS_PEERS} if impl == "dolmino" else {}
            out.append({"name": f"trainer vs peers: step time, {shape}", "impl": impl,
                        "value": r["step_seconds_median"], "unit": "s/step", "better": "lower", **goal})
            out.append({"name": f"trainer vs peers: tokens/s, {shape}", "impl": impl,
                        "value": r["tokens_per_second"], "unit": "tokens/s", "better": "higher", **goal})
    if memory:
        shape = f"{memory['model']} {memory['batch_size']}x{memory['seq_len']} cpu"
        for impl, r in memory["impls"].items():
            goal = ({"goal": GOAL_MEMORY_VS_TRANSFORMERS, "goal_anchor": "transformers"} if impl == "dolmino" else {})
            out.append({"name": f"trainer vs peers: peak RSS of a step, {shape}", "impl": impl,
                        "value": r["peak_rss_mib"], "unit": "MiB", "better": "lower", **goal})
            out.append({"name": f"trainer vs peers: step's rise over resident, {shape}", "impl": impl,
                        "value": r["step_peak_increase_mib"], "unit": "MiB", "better": "lower"})
    return out


def peer_notes(comparisons: list[dict], memory: dict | None) -> list[str]:
    notes = []
    for c in comparisons + ([memory] if memory else []):
        ces = {impl: r["first_step_ce"] for impl, r in c["impls"].items() if r.get("first_step_ce") is not None}
        if ces:
            ref = ces.get("dolmino", next(iter(ces.values())))
            spread = max(abs(v - ref) / abs(ref) for v in ces.values()) if ref else 0.0
            verdict = "agree" if spread < 1e-4 else "DISAGREE (weight mapping or model mismatch)"
            notes.append(f"{c['model']} {c['batch_size']}x{c['seq_len']}: first-step cross-entropy on the same weights "
                         f"and batch {verdict} to {spread:.1e} relative: "
                         + ", ".join(f"{k} {v:.6f}" for k, v in ces.items()))
        for err in c.get("errors", []):
            notes.append(f"{c['model']} {c['batch_size']}x{c['seq_len']}: not measured: {err}")
    if comparisons:
        work = {}
        for c in comparisons:
            for impl, r in c["impls"].items():
                work.setdefault(impl, f"{impl}: {r.get('loss')}; {r.get('optimizer')}; clipping {r.get('clipping')}"
                                      f"; version {r.get('version')}"
                                      + (f"; attention {r['attn_implementation']}" if r.get("attn_implementation")
                                         else ""))
        notes.append("work per step: " + " | ".join(work.values()))
    return notes


def main(argv: list[str] | None = None) -> int:
    on_gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    loop = p.add_argument_group("the trainer's own loop (vs the bare-loop ceiling)")
    loop.add_argument("--model", default="olmo2-1b" if on_gpu else "olmo2-30M", help="model preset")
    loop.add_argument("--seq-len", type=int, default=4096 if on_gpu else 256, help="tokens per instance")
    loop.add_argument("--batch-size", type=int, default=8 if on_gpu else 4, help="instances per step")
    loop.add_argument("--micro-batch-size", type=int, default=2 if on_gpu else None,
                      help="instances per forward pass (None: the whole batch)")
    loop.add_argument("--steps", type=int, default=10 if on_gpu else 2, help="timed steps")
    loop.add_argument("--warmup", type=int, default=3 if on_gpu else 1, help="untimed steps first")
    loop.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    loop.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                      help="torch.compile each block (None: on with CUDA, off on CPU)")
    loop.add_argument("--no-raw", action="store_true", help="skip the bare-loop ceiling")
    loop.add_argument("--no-loop", action="store_true", help="skip the trainer-loop measurement (peers only)")
    peers = p.add_argument_group("peers: transformers Olmo2ForCausalLM and OLMo-core Transformer (CPU)")
    peers.add_argument("--peers", action=argparse.BooleanOptionalAction, default=not on_gpu,
                       help="run the side-by-side comparison (on GPU use bench/bench_trainer_gpu.py)")
    peers.add_argument("--peer-models", default="olmo2-30M,olmo2-190M",
                       help="comma-separated model presets (issue 17's shapes: the legacy 20M,150M)")
    peers.add_argument("--peer-seq-len", type=int, default=512, help="tokens per instance")
    peers.add_argument("--peer-batch-size", type=int, default=2, help="instances per step (one micro-batch)")
    peers.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one process per impl each)")
    peers.add_argument("--peer-steps", type=int, default=2, help="timed steps per process")
    peers.add_argument("--peer-warmup", type=int, default=2,
                       help="untimed steps per process before the timed ones (with 1, every process's first timed "
                            "step took ~1.5x its second: a warm-up paid once per process)")
    peers.add_argument("--memory-model", default="olmo2-30M", help="model of the peak-memory comparison")
    peers.add_argument("--memory-seq-len", type=int, default=4096,
                       help="sequence length of the peak-memory comparison (batch 1); 0 skips it")
    peers.add_argument("--variants", action=argparse.BooleanOptionalAction, default=True,
                       help="also time dolmino with --no-fused-loss (impl dolmino_lm_loss)")
    peers.add_argument("--peer-compile", action="store_true",
                       help="torch.compile every implementation as its trainer does (dolmino: each block, as "
                            "--compile on CPU; transformers: the whole model, as the HF Trainer's torch_compile; "
                            "OLMo-core: apply_compile()); none of the three compiles on CPU by default")
    peers.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per process")
    peers.add_argument("--worker-timeout", type=float, default=3600, help="seconds before a worker is killed")
    p.add_argument("--quick", action="store_true",
                   help="shorter run (CPU loop: seq 128, batch 2, 1 timed step; peers: batch 1, seq 256 up to d_model "
                        "512 (olmo2-30M) and 128 above (olmo2-190M), 2 rounds of 1 timed step, no variants; the "
                        "peak-memory run is kept)")
    args = p.parse_args(argv)
    if args.quick and not on_gpu:
        args.seq_len, args.batch_size, args.steps, args.warmup = min(args.seq_len, 128), 2, 1, 1
        args.peer_seq_len, args.peer_batch_size = min(args.peer_seq_len, 256), 1
        args.quick_seq_len_large = min(args.peer_seq_len, 128)
        args.rounds, args.peer_steps, args.variants = min(args.rounds, 2), 1, False
    elif args.quick:
        args.steps, args.warmup = min(args.steps, 5), min(args.warmup, 2)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - stdout carries the JSON only
    if args.no_loop:
        result: dict = {"benchmark": "trainer_step", "figures": []}
    else:
        result = bench(args.model, args.seq_len, args.batch_size, args.micro_batch_size, args.steps, args.warmup,
                       args.device, args.compile, raw=not args.no_raw)
    if args.peers:
        impls = PEERS + (("dolmino_lm_loss",) if args.variants else ())
        def seq_for(model: str) -> int:  # --quick: olmo2-190M at 128 tokens keeps the run under an hour here
            if getattr(args, "quick_seq_len_large", None) and ModelConfig.preset(model).d_model > 512:
                return args.quick_seq_len_large
            return args.peer_seq_len

        comparisons = [compare_peers(m.strip(), seq_for(m.strip()), args.peer_batch_size, args.peer_batch_size,
                                     args.rounds, args.peer_steps, args.peer_warmup, args.threads, impls,
                                     args.worker_timeout, log=log, compile_=args.peer_compile)
                       for m in args.peer_models.split(",") if m.strip()]
        memory = None
        if args.memory_seq_len > 0:
            memory = peak_memory(args.memory_model, args.memory_seq_len, 1, args.threads,
                                 PEERS + (("dolmino_lm_loss",) if args.variants else ()), args.worker_timeout, log=log)
        result["peers"] = {"comparisons": comparisons, "memory": memory}
        result["figures"] = result["figures"] + peer_figures(comparisons, memory)
        result["notes"] = peer_notes(comparisons, memory)
        result["cores"] = args.threads
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
