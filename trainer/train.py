"""The training loop.

One optimizer step = this rank's share of a global batch, split into micro-batches with
gradient accumulation. The practices SPEC.md lists are what shape the code:
- no host-device sync inside a step: the loss denominator (target-token count) is computed
  on the host from the batch, losses / grad norms go into a device buffer, and the buffer is
  copied to the host once every `metrics_interval` steps (that is when progress prints);
- Python's garbage collector is disabled and run explicitly every `gc_interval` steps, at the
  same step on every rank, so that no rank stalls the others at a random moment;
- checkpoints are copied to CPU in the loop and written by a background thread;
- the output layer and the loss run as one chunked autograd function
  (trainer.loss.fused_lm_loss): the tokens x vocab logits are held a chunk at a time (on
  CUDA a chunk's default is ~10,700 tokens), and their gradient is written in closed form; `fused_loss=False` is lm_head + trainer.loss.lm_loss;
- bf16 autocast on CUDA (weights and optimizer state stay fp32), torch.compile per block
  when asked (on CUDA also the fused loss's per-chunk softmax and gradient), DDP under
  torchrun, FSDP2 (fully_shard per block) with `fsdp=True`.

The loss of a step is the mean over every target token of the *global* batch, whatever the
world size: ranks all-reduce their target counts (a device tensor with NCCL, so still no
host sync) and divide their sums by global count / world size, which DDP's and FSDP's
gradient averaging turns back into the exact global mean. With label masks the ranks hold
different numbers of targets, and a mean of per-rank means would weight tokens unequally.
An instance the instance filter ignores counts `seq_len` zero-loss targets in that count, as
OLMo-core's train module adds them back (`batch_num_tokens_for_loss += (~instance_mask).sum()
* seq_len`): its step loss and gradient are OLMo-core's, not 1/(1 - filtered share) larger.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from trainer.checkpoint import (
    CONFIG_FILE, RESUME_KEYS, STATE_FILE, Checkpointer, CheckpointWriteError, files_fingerprint, load_checkpoint,
    load_json_file, read_checkpoint, resolve_checkpoint, resume_advice, write_failure,
)
from trainer.config import ModelConfig, RunConfig, TrainConfig
from trainer.data import DataLayout, DataLoader, MemmapDataset
from trainer.distributed import DistEnv, RanksDisagree, all_reduce_mean, barrier, failure_values, ranks_agree
from trainer.model import OLMo2
from trainer.optim import build_optimizer, clip_grad_norm, set_lr
from trainer.schedule import LRSchedule
from trainer.spikes import SpikeTracker
from trainer.status import StepStatus
from trainer.throughput import mfu, peak_flops

METRICS = ("loss", "ce", "z_loss", "grad_norm")


@dataclass
class TrainResult:
    start_step: int
    end_step: int
    history: list[dict] = field(default_factory=list)   # one record per step run by this call
    checkpoint: Path | None = None
    tokens_per_second: float | None = None
    mfu: float | None = None
    data_stats: dict = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.history]


# What shapes the optimisation from one step to the next; a change on resume is legitimate
# (e.g. extending a run) but silently alters the LR curve, so it is logged.
_RECIPE_FIELDS = ("lr", "warmup_steps", "schedule", "final_lr_fraction", "global_batch_size", "betas", "adam_eps",
                  "weight_decay", "decay_norms", "max_grad_norm", "z_loss_weight", "repetition")


def _shown(value) -> str:
    """A recipe value as a warning shows it: a float to 10 significant digits ("lr 2.9999999999999997e-05", an
    anneal's start computed from its peak, read as noise; a tester), anything else as its repr."""
    return f"{value:.10g}" if type(value) is float else repr(value)


def recipe_changes(saved: dict | None, current: TrainConfig) -> list[str]:
    """Human-readable differences between a checkpoint's train config and the current one."""
    if not saved:
        return []
    try:
        before = TrainConfig.from_dict(saved)
    except (TypeError, ValueError):
        return ["the checkpoint's train config could not be read"]
    changes = [f"{name} {_shown(getattr(before, name))} -> {_shown(getattr(current, name))}" for name in _RECIPE_FIELDS
               if getattr(before, name) != getattr(current, name)]
    if before.horizon_steps != current.horizon_steps:
        # Another run length (--steps left out or changed) moves a horizon set by it: --horizon-tokens would keep
        # the curve but leave the steps past it at LR 0 (a tester); the checkpoint's --steps continues the run.
        by_steps = before.horizon_tokens is None and current.horizon_tokens is None
        fix = (f"resume with --steps {before.max_steps}, the length of the checkpoint's run, to keep its LR curve"
               if by_steps else "pass --horizon-tokens to keep one LR curve across resumes")
        changes.append(f"schedule horizon {before.horizon_steps} -> {current.horizon_steps} steps ({fix})")
    return changes


def recipe_note(name: str, saved: dict, recipe: str | None) -> str | None:
    """One line with its fix where a resume's --recipe (`recipe`) is not the one the checkpoint `name` ran
    (`saved`: its config.json): a microanneal resumed without --recipe took the defaults' lr, schedule and
    warm-up, and the field changes listed never named the recipe to add (a reviewer). None where they
    agree, and for a checkpoint from before config.json recorded its recipe."""
    if "recipe" not in saved or not isinstance(saved["recipe"], (str, type(None))) or saved["recipe"] == recipe:
        return None
    was, now = saved["recipe"], f"--recipe {recipe}" if recipe else "no --recipe"
    if was is None:
        return (f"{name} ran without --recipe, and this resume has {now}, whose defaults replace its settings; "
                "resume without --recipe")
    return (f"{name} ran --recipe {was}, and this resume has {now}, whose defaults replace the recipe's; "
            f"resume with --recipe {was}")


class ResumeFailed(ValueError):
    """Loading the --resume checkpoint failed on one rank or more (each reads its own copy), which
    every rank learnt through one collective (`Trainer._resume`): all stop, and leave as
    trainer.run's agreed start-up stops do, where each rank printed the same damaged model.pt
    error (found by a tester). `error`: this rank's own failure, None where only other ranks
    failed; `same_everywhere`: every rank failed with the same error, which rank 0 says, once."""

    def __init__(self, rank: int, path: Path, error: Exception | None, same_everywhere: bool):
        super().__init__(str(error) if error is not None else
                         f"rank {rank}: another rank could not load {path}; its error says why")
        self.error, self.same_everywhere = error, same_everywhere


def data_position(loader: DataLoader, step: int) -> str:
    """Where step `step` + 1 draws its batch, in the words of trainer.run's epochs note: epochs counted from 1
    (the loader and train_state.pt count them from 0, which the resume line printed: "epoch 0" beside the
    note's "epoch 1"), and a checkpoint that ends an epoch, whose next step starts the next one, said as such
    rather than as a cursor at the epoch's end (a reviewer)."""
    epoch, cursor, n = loader.epoch + 1, loader.cursor, len(loader.dataset)
    if cursor + loader.global_batch_size > n:
        return f"epoch {epoch} done: step {step + 1} starts epoch {epoch + 1}"
    return f"step {step + 1} draws from epoch {epoch}'s instance {cursor:,} on, of {n:,}"


def check_resume_model(path: Path, run: RunConfig) -> dict:
    """The config.json of checkpoint `path`, refused when saved for another model config than
    `run`'s. trainer.run calls it in its start-up checks too, which the ranks agree on: found
    only in the Trainer, every rank printed it (N ranks, N copies; found by a tester)."""
    saved = load_json_file(path / CONFIG_FILE, resume_advice(path))
    ours = run.model.to_dict()
    if saved.get("model") != ours:
        theirs = saved.get("model") if isinstance(saved.get("model"), dict) else {}
        diffs = ", ".join(f"{k} {theirs.get(k)} there, {ours.get(k)} here" for k in sorted({*theirs, *ours})
                          if theirs.get(k) != ours.get(k))
        # max_seq_len follows --seq-len where it exceeds the model's; the rest, --model / --init-from; and a
        # recipe's --seq-len or --model left out changes one of them first
        recipe = recipe_note(path.name, saved, run.recipe)
        raise ValueError(f"{path} was saved for a different model config ({diffs}); resume with the settings it "
                         "was trained with (the same --model, --init-from and --seq-len)"
                         + (f" ({recipe})" if recipe else ""))
    return saved


def build_model(cfg: ModelConfig, device: torch.device, seed: int) -> OLMo2:
    torch.manual_seed(seed)
    return OLMo2(cfg).to(device)


def _wrap(model: OLMo2, run: RunConfig, env: DistEnv) -> nn.Module:
    tc = run.train
    if tc.compile:
        for block in model.blocks:
            block.compile()  # in place: parameter names (and checkpoints) do not change
    if tc.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = None
        if env.device.type == "cuda" and tc.autocast_bf16:
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kwargs = {"mp_policy": mp} if mp is not None else {}
        for block in model.blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    return model


class Trainer:
    """Builds model, optimizer, schedule and data loader from a RunConfig and runs steps."""

    def __init__(self, run: RunConfig, env: DistEnv, save_dir: str | Path, *, resume: str | Path | None = None,
                 log: Callable[[str], None] = print, keep_last: int | None = None, tokenizer: dict | None = None,
                 data: DataLayout | None = None):
        """`tokenizer`: what the data's builds say about the tokenizer they were made with
        (trainer.tokenizer_files.data_tokenizer), kept in each checkpoint's config.json, so that an
        export of a checkpoint copied without its data still writes the tokenizer's files. `data`:
        run.data_paths as `scan_data` found them (trainer.run's start-up checks), opened without
        walking the trees again (a second walk of a network mount before the first step; t242)."""
        self.run, self.env, self.log, self.tokenizer = run, env, log, tokenizer
        tc, mc = run.train, run.model
        if tc.seq_len > mc.max_seq_len:
            raise ValueError(f"seq_len {tc.seq_len} exceeds the model's max_seq_len {mc.max_seq_len}")
        self.save_dir = Path(save_dir)
        self._save_dir_made = self.save_dir.is_dir()  # `_make_save_dir`
        self.accum = tc.grad_accum_steps(env.world_size)
        # With a starting checkpoint the vocabulary is the checkpoint's (check_compatible holds --model to
        # its rows too), so a token out of range points at the checkpoint: the error says so.
        init_path = (run.init or {}).get("path")
        self.dataset = MemmapDataset(run.data_paths if data is None else data, tc.seq_len, vocab_size=mc.vocab_size,
                                     repetition=tc.repetition, repetition_max_n=tc.repetition_max_n,
                                     repetition_min_repeats=tc.repetition_min_repeats,
                                     vocab_source=f"the --init-from checkpoint {init_path}" if init_path else None)
        self.loader = DataLoader(self.dataset, tc.global_batch_size, rank=env.rank, world_size=env.world_size,
                                 seed=tc.seed if tc.data_seed is None else tc.data_seed)
        if env.distributed:  # each rank strides over its own copy of the token files: they must be one mix
            read = [p for f in self.dataset.files for p in (f.path, f.mask_path) if p is not None]
            common = Path(os.path.commonpath([str(p.parent) for p in read]))
            low, high = ranks_agree([len(self.dataset), files_fingerprint(common, read)], env)
            if low != high:
                raise RanksDisagree(f"the ranks read different training data ({low[0]:,}..{high[0]:,} instances"
                                 f"{'' if low[0] != high[0] else ', different files'}); give every node the same "
                                 "copy of the mix, or a shared filesystem")
        self.raw_model = build_model(mc, env.device, tc.seed)
        self.model = _wrap(self.raw_model, run, env)
        self.optimizer = build_optimizer(self.model, tc)
        self.schedule = LRSchedule.from_config(tc)
        self.spikes = {"loss": SpikeTracker(tc.spike_window, tc.spike_n_std),
                       "grad_norm": SpikeTracker(tc.spike_window, tc.spike_n_std)}
        self.checkpointer = Checkpointer(self.save_dir, rank=env.rank, keep_last=keep_last)
        for done in self.checkpointer.sweep():  # what killed or failed saves left in --save-dir
            log(f"--save-dir: {done} (left by a save that did not finish)")
        self.step = 0
        self.tokens_seen = 0
        self._data_stats_base: dict[str, int] = {}
        if resume is not None:
            self._resume(resume)
        self._peak = peak_flops(env.device)
        self._flops_per_token = mc.flops_per_token(tc.seq_len)

    # ----------------------------------------------------------------- resume / save
    def _resume(self, path: str | Path) -> None:
        path = resolve_checkpoint(path)
        saved = check_resume_model(path, self.run)
        if note := recipe_note(path.name, saved, self.run.recipe):
            self.log(f"warning: {note}")
        for change in recipe_changes(saved.get("train"), self.run.train):
            self.log(f"warning: resuming with a different recipe than {path.name}: {change}")
        read = self._read_agreed(path)
        try:
            state = load_checkpoint(path, self.model, self.optimizer, read=read)
            # The data position (epoch, cursor) indexes the order drawn from the checkpoint's seed; a new
            # seed mid-epoch would repeat some instances and skip others. So the checkpoint's order goes on
            # (the loader state carries its seed), with a warning as for the recipe changes above, and the
            # config this run saves records that seed rather than the one asked for.
            kept, asked = int(state["data"]["seed"]), self.loader.seed
            if kept != asked:
                self.log(f"warning: the data order seed {asked} (--data-seed, default --seed) is not used: "
                         f"resuming continues {path.name}'s order, seed {kept}; a different order needs a fresh run")
                self.run.train.data_seed = kept
            self.loader.load_state_dict(state["data"], where=path / STATE_FILE)
            for name, tracker in self.spikes.items():
                tracker.load_state_dict(state["spikes"][name])
            self.step = int(state["step"])
            self.tokens_seen = int(state.get("tokens_seen", 0))
            self._data_stats_base = {k: int(v) for k, v in state.get("data_stats", {}).items()}
            failed = None
        except Exception as exc:  # noqa: BLE001 - every rank reaches the agreement below; re-raised after it
            if not self.env.distributed:
                raise
            failed = exc
        # The ranks loaded the same files (agreed above); whether any failed to is agreed too.
        low, high = ranks_agree(failure_values(failed), self.env)
        if high[0]:
            raise ResumeFailed(self.env.rank, path, failed, same_everywhere=low == high) from failed
        self.log(f"resumed from {path} at step {self.step} ({data_position(self.loader, self.step)})")
        if self.env.is_main:
            self._trim_metrics()

    def _read_agreed(self, path: Path) -> dict:
        """`read_checkpoint(path)` on this rank, which the ranks then agree on before any loads it.

        Every rank reads a checkpoint of its own (rank 0 alone writes them): on nodes that do not
        share --save-dir, a node may hold a damaged copy or an older one. Loading into an FSDP model
        is collective (rank 0 scatters each tensor), so a rank whose model.pt or optim.pt could not
        be read left the others waiting in that scatter while it waited in the agreement: a hang
        (found by a tester). Ranks with different weights would train on silently (DDP broadcast
        rank 0's parameters only when it wrapped the model). So one collective, before the load,
        tells every rank whether any failed to read its copy and whether the copies are one."""
        try:
            read = read_checkpoint(path, keys=tuple(RESUME_KEYS))
            state = read["train_state"]
            held = [int(state["step"]), int(state.get("tokens_seen", 0)), int(state["data"]["cursor"]),
                    files_fingerprint(path) if self.env.distributed else 0]
            failed = None
        except Exception as exc:  # noqa: BLE001 - every rank reaches the agreement below; re-raised after it
            if not self.env.distributed:
                raise
            read, held, failed = None, [0, 0, 0, 0], exc
        low, high = ranks_agree([*failure_values(failed), *held], self.env)
        if high[0]:
            raise ResumeFailed(self.env.rank, path, failed, same_everywhere=low[:2] == high[:2]) from failed
        low, high = low[2:], high[2:]
        if low != high:
            raise RanksDisagree(f"ranks resumed from different checkpoints: steps {low[0]}..{high[0]}, tokens seen "
                                f"{low[1]:,}..{high[1]:,}, {'different' if low[3] != high[3] else 'the same'} files "
                                f"(this rank: {path}); put --save-dir (or --resume's checkpoint) on a filesystem "
                                "every node sees")
        return read

    def _trim_metrics(self) -> None:
        """Drop metrics.jsonl's rows past the resumed step: a run killed after its last
        checkpoint logged steps that this run trains again, and a curve or a token count read
        from the file would otherwise hold them twice (a torn last line too)."""
        path = self.save_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                dropped += 1
                continue
            if step > self.step or not line.endswith("\n"):
                dropped += 1
                continue
            kept.append(line)
        if dropped:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, path)
            self.log(f"metrics.jsonl: dropped {dropped} row(s) past step {self.step}, which this run trains again")

    def data_stats(self) -> dict[str, int]:
        """Label accounting summed over ranks and over the resumed-from run(s). Collective."""
        keys = sorted(self.loader.stats)
        local = torch.tensor([self.loader.stats[k] for k in keys], dtype=torch.float64)
        if self.env.distributed:
            import torch.distributed as dist

            local = local.to(self.env.device)
            dist.all_reduce(local, op=dist.ReduceOp.SUM)
        return {k: int(v) + self._data_stats_base.get(k, 0) for k, v in zip(keys, local.cpu().tolist())}

    def _train_state(self) -> dict:
        return {"data": self.loader.state_dict(), "tokens_seen": self.tokens_seen, "data_stats": self.data_stats(),
                "spikes": {k: v.state_dict() for k, v in self.spikes.items()}}

    def _make_save_dir(self) -> None:
        """Make --save-dir (rank 0, before writing into it), and say so where it was there before in
        this run: removed while the run trained, it was made again unsaid, and the run ended with exit 0
        and a metrics.jsonl and checkpoints that began part way through (found by a tester). The run
        goes on: its weights are whole in memory, and the next checkpoint saves them."""
        if self._save_dir_made and not self.save_dir.is_dir():
            self.log(f"warning: --save-dir {self.save_dir} was removed while this run trained (at step {self.step}), "
                     "with the checkpoints and metrics.jsonl rows written so far; made again: what this run writes "
                     "from here on goes there")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self._save_dir_made = True

    def save(self, background: bool = True) -> Path:
        if self.env.is_main:
            self._make_save_dir()
        config = self.run.to_dict()
        if self.tokenizer is not None:
            config["tokenizer"] = dict(self.tokenizer)
        return self.checkpointer.save(self.step, self.model, self.optimizer, self._train_state(), config,
                                      background=background)

    # ----------------------------------------------------------------- one step
    def _autocast(self):
        tc = self.run.train
        if self.env.device.type == "cuda" and tc.autocast_bf16 and not tc.fsdp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss_denominator(self, n_targets: int) -> float | torch.Tensor:
        """Global target tokens of this step / world size (see the module docstring)."""
        if not self.env.distributed:
            return float(max(n_targets, 1))
        import torch.distributed as dist

        count = torch.tensor(float(n_targets), dtype=torch.float64)
        if self.env.device.type == "cuda":
            count = count.pin_memory().to(self.env.device, non_blocking=True)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        return (count.clamp_min(1.0) / self.env.world_size).to(torch.float32)

    def train_step(self, sums: torch.Tensor) -> None:
        """Run one optimizer step; add [loss, ce, z_loss, grad_norm] into the device tensor `sums`."""
        tc = self.run.train
        set_lr(self.optimizer, self.schedule.lr_at(self.step))
        batch = self.loader.next_batch().to(self.env.device)
        # Filtered instances count as zero-loss targets, as in OLMo-core (module docstring).
        denominator = self._loss_denominator(batch.n_targets + batch.instances_filtered * tc.seq_len)
        is_ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        mb = tc.micro_batch_size
        for i in range(self.accum):
            ids = batch.input_ids[i * mb:(i + 1) * mb]
            labels = batch.labels[i * mb:(i + 1) * mb]
            sync_ctx = self.model.no_sync() if is_ddp and i < self.accum - 1 else contextlib.nullcontext()
            with sync_ctx:
                with self._autocast():
                    out = self.model(ids, labels, z_loss_weight=tc.z_loss_weight, denominator=denominator,
                                     fused_loss=tc.fused_loss, loss_chunk_size=tc.loss_chunk_size,
                                     compile_loss=tc.compile)
                out.loss.backward()
            sums[0] += out.loss.detach()
            sums[1] += out.ce.detach()
            sums[2] += out.z_loss.detach()
        grad_norm = clip_grad_norm(self.model, tc.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        sums[3] += grad_norm.detach().to(sums.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += tc.tokens_per_step

    # ----------------------------------------------------------------- loop
    def fit(self) -> TrainResult:
        tc, env = self.run.train, self.env
        result = TrainResult(start_step=self.step, end_step=self.step)
        if self.step >= tc.max_steps:
            self.log(f"checkpoint is at step {self.step} >= --steps {tc.max_steps}; nothing to train")
            return result
        gc_was_enabled = gc.isenabled()
        gc.disable()
        buffer = torch.zeros(tc.metrics_interval, len(METRICS), device=env.device, dtype=torch.float32)
        pending: list[tuple[int, float]] = []  # (step index, lr) of rows in `buffer`
        last_save_step = None
        window_start, window_tokens = time.perf_counter(), 0
        status = StepStatus(tc.max_steps, self.step, enabled=None if env.is_main else False)
        try:
            while self.step < tc.max_steps:
                lr = self.schedule.lr_at(self.step)
                self.train_step(buffer[len(pending)])
                self.checkpointer.raise_if_failed()
                status.update(self.step)
                pending.append((self.step, lr))
                window_tokens += tc.tokens_per_step
                save_now = tc.save_interval is not None and self.step % tc.save_interval == 0
                if len(pending) == tc.metrics_interval or self.step == tc.max_steps or save_now:
                    status.clear()
                    self._flush(buffer, pending, result, window_tokens, window_start)
                    pending, window_tokens, window_start = [], 0, time.perf_counter()
                if self.step % tc.gc_interval == 0:
                    gc.collect(1)
                if save_now:
                    self.save()
                    last_save_step = self.step
            if last_save_step != self.step:
                self.save()
            self.checkpointer.wait()
            barrier(env)
        except Exception:
            # A step that failed (a full disk writing metrics.jsonl) lets the save in flight finish first:
            # the error then names it as the checkpoint to resume from.
            with contextlib.suppress(Exception):
                self.checkpointer.wait()
            raise
        finally:
            status.clear()
            self.loader.close()
            if gc_was_enabled:
                gc.enable()
        result.end_step = self.step
        result.checkpoint = self.save_dir / f"step{self.step:06d}"
        result.data_stats = self.data_stats()
        return result

    def _flush(self, buffer: torch.Tensor, pending: list, result: TrainResult, tokens: int,
               window_start: float) -> None:
        """The one host sync per metrics interval: copy, reduce across ranks, log, track spikes."""
        rows = buffer[: len(pending)].clone()
        buffer.zero_()
        all_reduce_mean(rows, self.env)
        values = rows.cpu().tolist()
        elapsed = time.perf_counter() - window_start  # after the copy: the device has caught up
        records = []
        for (step, lr), (loss, ce, z, gnorm) in zip(pending, values):
            records.append({"step": step, "lr": lr, "loss": loss, "ce": ce, "z_loss": z, "grad_norm": gnorm})
        self.spikes["loss"].update([r["loss"] for r in records])
        self.spikes["grad_norm"].update([r["grad_norm"] for r in records])
        result.history.extend(records)
        tok_s = tokens / elapsed if elapsed > 0 else float("nan")
        util = mfu(tok_s / self.env.world_size, self._flops_per_token, self._peak)
        result.tokens_per_second, result.mfu = tok_s, util
        if not self.env.is_main:
            return
        last = records[-1]
        parts = [f"step {last['step']}/{self.run.train.max_steps}", f"loss {last['loss']:.4f}",
                 f"z {last['z_loss']:.2e}", f"lr {last['lr']:.3e}", f"gnorm {last['grad_norm']:.3f}",
                 f"{tok_s:,.0f} tok/s"]
        if util is not None:
            parts.append(f"MFU {100 * util:.1f}%")
        if self.spikes["loss"].judged:
            parts.append(f"spike score loss {self.spikes['loss'].score:.2f}% "
                         f"gnorm {self.spikes['grad_norm'].score:.2f}%")
        else:
            parts.append(f"spike score n/a (< {self.spikes['loss'].min_history} steps)")
        self.log(" | ".join(parts))
        self._make_save_dir()
        path = self.save_dir / "metrics.jsonl"
        try:
            with open(path, "a") as fh:
                for r in records:
                    r = dict(r, tokens_per_second=tok_s, mfu=util, spike_score_loss=self.spikes["loss"].score,
                             spike_score_grad_norm=self.spikes["grad_norm"].score)
                    fh.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                         for k, v in r.items()}) + "\n")
        except OSError as exc:  # a full disk said "[Errno 28] No space left on device" alone (a tester)
            raise CheckpointWriteError(f"writing {path} failed: {write_failure(path, exc)}") from exc
