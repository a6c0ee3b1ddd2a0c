"""Command line: train an OLMo 2 model on a built mix.

    python -m trainer.run --data build/mixes/demo --model tiny --steps 20 --seq-len 128 --batch-size 4
    python -m trainer.run --mix manifests/demo.json --model olmo2-30M --steps 30 --seq-len 256 --save-dir /tmp/run
    python -m trainer.run --data DIR --resume                # continue from --save-dir's latest checkpoint
    torchrun --nproc_per_node 8 -m trainer.run --data DIR --model olmo2-1b --seq-len 4096 --batch-size 512
    torchrun --nproc_per_node 8 -m trainer.run --mix manifests/50B.json --recipe olmo2-7b-anneal \\
        --init-from OLMo-2-1124-7B --init-step stage1-step928646-tokens3896B

`--mix` reads the manifest's "output" directory (relative paths resolve against the
manifest's own directory); the mix must have been built first with
`spark-submit dolmino/build_mix.py --manifest <path>`. Mid-training (annealing) is
`--recipe olmo2-7b-anneal` (or olmo2-13b-anneal, microanneal) with `--init-from` a
pretrained checkpoint in this trainer's, Hugging Face's or OLMo-core's format: the LR starts
where pretraining was and decays linearly to 0 over one pass of the mix (trainer.plan).
Without a recipe the defaults are a small local run: olmo2-30M, 8 x 1024 tokens a step in
micro-batches of 2 instances, which fits a 2-core / 24 GB machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
from pathlib import Path

import torch

from dolmino.cli import invoked_as
from dolmino.s3 import local_path, redact
from dolmino.storage import why_unwritable
from trainer.checkpoint import (
    CONFIG_FILE, STATE_FILE, CheckpointFormatError, CheckpointWriteError, SaveDirBusy, clear_run,
    cleared_by_overwrite, existing_run, files_fingerprint, hold_save_dir, latest_checkpoint, load_json_file,
    load_train_state, own_checkpoint, release_save_dir, resumable_checkpoint, resume_advice,
)
from trainer.cli import (  # noqa: F401 (parse_count: our API)
    GivenOnce, HelpFormatter, in_flag_names, parse_count, positive_int,
)
from trainer.config import ANNEAL_RECIPES, REPETITION_MODES, RunConfig, TrainConfig, describe_params
from trainer.data import (
    DataError, check_batch_fits, check_data_position, layout_fingerprint, scan_data, uncertified_builds_note,
    undigested_position_note, unreported_build_note,
)
from trainer.distributed import (
    BACKENDS, DeviceUnavailable, RanksDisagree, barrier, exit_process, init_distributed, launched_world_size,
    failure_values, peer_stopped, ranks_agree, shutdown,
)
from trainer.eval import add_training_arguments as add_eval_arguments, evaluate_after_training
from trainer.plan import (
    ONE_MIX_HINT, Plan, add_plan_arguments, built_mix_paths, check_data_special_ids, check_data_vocab, data_tokens,
    inspect_init, make_plan, mix_output_dir, parse_with_recipe, remote_build_hint,
)

__all__ = ["build_parser", "main", "mix_output_dir", "parse_args", "parse_count", "run_config_from_args"]


# How main() stopped, for the process's exit (`exit_process`): "failed" where this rank's start-up
# check failed and the ranks agreed to stop, "peer" where another rank's did; None otherwise.
AGREED_STOP: str | None = None


def say(line: str) -> None:
    """One line on stderr in one write: print's two writes (the text, then its newline) let the
    lines of two ranks stopping at the same moment glue together (found by a tester)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# How long a rank that leaves an error found before the process group to its node's first rank
# waits for torchrun to stop it (which it does once that rank exits) before it says the error itself.
UNSAID_WAIT_S = 30.0


def speaks_before_group(said_by: int = 0) -> bool:
    """Whether this process says an error found before the process group exists (the command line,
    a --mix or --resume that cannot be read, a device this machine lacks). Every rank of a torchrun
    node finds it alike (one command line, one filesystem), and N ranks printed N copies (found by a
    tester); they cannot yet agree who says it, so the node's local rank `said_by` does."""
    return launched_world_size() == 1 or int(os.environ.get("LOCAL_RANK", "0")) == said_by


def wait_to_be_stopped() -> None:
    """A rank that leaves an error to the rank that says it must not exit first: torchrun names the
    first rank to exit as the root cause and stops the others at once, so the one that was to say
    why could be stopped before it did (a 1 s head start was not enough where one rank got there
    seconds after another). It waits for torchrun to stop it instead; if nothing has after
    UNSAID_WAIT_S, the speaker did not fail alike, and this rank says its error after all."""
    time.sleep(UNSAID_WAIT_S)


def refuse_before_group(line: str, said_by: int = 0) -> int:
    """Say `line`, from the rank that `speaks_before_group` (the others `wait_to_be_stopped`
    first), and return exit status 2."""
    if not speaks_before_group(said_by):
        wait_to_be_stopped()
    say(line)
    return 2


def parse_args_once(argv: list[str] | None) -> argparse.Namespace:
    """`parse_args`, whose usage errors and --help only the node's first rank prints under torchrun
    (`speaks_before_group`): the other ranks exit 0 after --help without a line, and after a usage
    error `wait_to_be_stopped`."""
    if speaks_before_group():
        return parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            return parse_args(argv)
        except SystemExit as exc:
            failed = exc.code
    if failed:
        wait_to_be_stopped()
        sys.stderr.write(err.getvalue())
    raise SystemExit(failed)


def resumed_position(state: dict | None) -> tuple[int, int] | None:
    """(step, tokens seen) of a resumed checkpoint's train state, for `make_plan`; None without one, or
    for a state from before tokens_seen was kept (its tokens are then unknown)."""
    if not isinstance(state, dict) or "tokens_seen" not in state:
        return None
    return int(state["step"]), int(state["tokens_seen"])


def epochs_note(instances: int, batch: int, steps: int, dataset, step: int = 0, epoch: int = 0,
                cursor: int = 0) -> str | None:
    """Say when the run's steps reach past one epoch. "One pass" is ceil(tokens / tokens per
    step) steps (OLMo-core's Duration.tokens), but an epoch holds only the whole batches of
    whole instances: each file's tail shorter than an instance and the last partial batch
    are left out, so such a run's last step(s) draw from a second epoch, in a new order.
    A resumed run goes on from its checkpoint's step and data position (`epoch`, `cursor`):
    counted from step 0 at this batch size, a resume with another --batch-size was told of an
    epoch boundary where there was none (found by a tester)."""
    per_epoch = instances // batch
    if per_epoch == 0:
        return None
    boundary = step + (instances - cursor) // batch  # the last step that draws from the loader's epoch
    if steps <= boundary:
        return None
    left = instances - per_epoch * batch
    # counted from 1, as the resume line counts them; an epoch the checkpoint ended is left for the next one
    where = (f"epoch {epoch + 2}" if cursor + batch > instances else f"epoch {epoch + 1}'s instance {cursor:,} on")
    taken = (f"{steps:,} steps take {steps * batch:,} instances" if not step else
             f"steps {step + 1:,}-{steps:,} take {(steps - step) * batch:,} instances from {where}")
    return (f"note: {taken}; an epoch is {per_epoch:,} steps "
            f"({per_epoch * batch:,} of the data's {instances:,} whole instances: {left:,} left after the last full "
            f"batch, and {dataset.dropped_tail_tokens:,} tokens of file tails shorter than an instance), so the "
            f"{steps - boundary:,} step(s) after step {boundary:,} draw from a further epoch in a new order "
            f"({epoch + 1 + math.ceil((steps - boundary) / per_epoch)} epochs in all)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=invoked_as("python -m trainer.run"), description=__doc__,
                                formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mix", action=GivenOnce, hint=ONE_MIX_HINT,
                     help="manifest JSON whose \"output\" directory holds the built mix")
    src.add_argument("--data", nargs="+", action="extend",
                     help="built mix directory (or token files); several, or --data given again, are read together")
    add_plan_arguments(p)
    p.add_argument("--micro-batch-size", type=int, default=2,
                   help="instances per forward pass per rank, at most the per-rank batch (OLMo-core's OLMo 2 "
                        "scripts use 2)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decoupled weight decay")
    p.add_argument("--decay-norms", action=argparse.BooleanOptionalAction, default=True,
                   help="decay the RMSNorm gains too, as OLMo 2 did (only the input embedding is exempt); "
                        "--no-decay-norms exempts them")
    p.add_argument("--repetition", choices=REPETITION_MODES, default="instance_filter",
                   help="repeated n-gram runs (period 1-13, 32+ copies): instance_filter ignores the whole "
                        "instance (OLMo 2 / OLMo-core), mask_spans only the run's tokens, off")
    p.add_argument("--no-repetition-mask", dest="repetition", action="store_const", const="off",
                   help="same as --repetition off")
    p.add_argument("--z-loss-weight", type=float, default=1e-5,
                   help="weight of log^2 Z in the loss (>= 0; 0: no z-loss)")
    p.add_argument("--fused-loss", action=argparse.BooleanOptionalAction, default=True,
                   help="output layer + cross-entropy + z-loss as one function that holds the tokens x vocab "
                        "logits a chunk at a time; --no-fused-loss: lm_head, then the loss on full logits")
    p.add_argument("--loss-chunk-size", type=int, default=None,
                   help="tokens per chunk of the fused loss (default: as many as fit 256 MiB of logits + "
                        "softmax, 4 GiB on CUDA)")
    p.add_argument("--max-grad-norm", type=float, default=1.0,
                   help="clip the global gradient L2 norm to this (> 0; inf never clips)")
    p.add_argument("--seed", type=int, default=1124, help="model init and data order seed")
    p.add_argument("--data-seed", type=int, default=None, help="data order seed (default: --seed)")
    p.add_argument("--save-dir", default="build/checkpoints/run", type=local_path,
                   help="where checkpoints and metrics.jsonl go")
    p.add_argument("--save-interval", type=int, default=None, help="also save every N steps (default: at the end)")
    p.add_argument("--keep-last", type=positive_int, default=None,
                   help="keep only the newest N checkpoints (default: all)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, type=local_path,
                   help="resume from a checkpoint dir (no value: the latest in --save-dir; default: start afresh, "
                        "refused where --save-dir holds a run)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a --save-dir that holds a run: its checkpoints, metrics.jsonl and eval/ "
                        "are removed first")
    p.add_argument("--metrics-interval", type=int, default=10, help="copy metrics to the host and print every N")
    p.add_argument("--gc-interval", type=int, default=100, help="run Python's gc every N steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dist-backend", choices=BACKENDS, default="auto",
                   help="process group backend under torchrun: auto is NCCL with CUDA, gloo on CPU; gloo with "
                        "CUDA (DDP only, not --fsdp) copies every collective through host memory: a machine "
                        "without NCCL, or several ranks sharing one GPU with --device cuda:0")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile each block and, on CUDA, the fused loss's per-chunk softmax and "
                        "gradient (default: on with CUDA, off on CPU)")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    p.add_argument("--sync-debug", action="store_true", help="warn on every host-device sync (CUDA)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    add_eval_arguments(p)  # --eval-tasks, --eval-limit (trainer/eval.py)
    return p


def run_config_from_args(args: argparse.Namespace, data_paths: list[str], world_size: int,
                         device: torch.device, plan: Plan | None = None) -> RunConfig:
    """The RunConfig a command line trains with; `plan` (model, length, LR) is made here when
    not given, from the data and without a starting checkpoint."""
    if not args.fused_loss and args.loss_chunk_size is not None:  # it was accepted and did nothing (a reviewer)
        raise ValueError("--loss-chunk-size sets the chunks of the fused loss, which --no-fused-loss turns off: "
                         "give one or the other")
    if plan is None:
        tokens, source = (None, None) if args.steps is not None else data_tokens(data_paths)
        plan = make_plan(args, tokens, source)
    per_rank = max(args.batch_size // max(world_size, 1), 1)
    try:
        train = _train_config(args, device, plan, per_rank)
    except ValueError as exc:
        raise ValueError(in_flag_names(str(exc))) from None
    check_batch_split(train, world_size)
    return RunConfig(model=plan.model, train=train, data_paths=data_paths, recipe=args.recipe)


def check_batch_split(train: TrainConfig, world_size: int) -> None:
    """Every rank takes an equal share of a step's instances, in whole micro-batches. The Trainer
    found it otherwise after the start-up checks: every rank printed the error, in TrainConfig's
    field names, and left through a teardown that aborted a rank (SIGABRT; found by a tester)."""
    per_rank, uneven = divmod(train.global_batch_size, world_size)
    if uneven:
        raise ValueError(f"--batch-size {train.global_batch_size} is not divisible by the {world_size} ranks: every "
                         f"rank takes an equal share of a step's instances; use a multiple of {world_size}")
    if per_rank % train.micro_batch_size:
        share = f"--batch-size {per_rank}" if world_size == 1 else (
            f"a rank's share of --batch-size {train.global_batch_size} ({per_rank} instances on each of {world_size} "
            "ranks)")
        raise ValueError(f"--micro-batch-size {train.micro_batch_size} does not divide {share} into whole "
                         f"micro-batches; use a --micro-batch-size that divides {per_rank}")


def _train_config(args: argparse.Namespace, device: torch.device, plan: Plan, per_rank: int) -> TrainConfig:
    return TrainConfig(
        seq_len=args.seq_len, global_batch_size=args.batch_size,
        micro_batch_size=min(args.micro_batch_size, per_rank), max_steps=plan.steps, lr=plan.lr,
        warmup_steps=plan.warmup_steps, schedule=args.schedule, final_lr_fraction=args.final_lr_fraction,
        horizon_tokens=plan.horizon_tokens, weight_decay=args.weight_decay, z_loss_weight=args.z_loss_weight,
        fused_loss=args.fused_loss, loss_chunk_size=args.loss_chunk_size,
        max_grad_norm=args.max_grad_norm, seed=args.seed, data_seed=args.data_seed,
        save_interval=args.save_interval, metrics_interval=args.metrics_interval, gc_interval=args.gc_interval,
        compile=(device.type == "cuda") if args.compile is None else args.compile, fsdp=args.fsdp,
        repetition=args.repetition, decay_norms=args.decay_norms)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; a --recipe supplies defaults that explicit flags override."""
    return parse_with_recipe(build_parser(), argv)


def init_from_resumed(args: argparse.Namespace, path: Path) -> str | None:
    """Without --init-from, a resumed run takes the one its checkpoint (`path`, resolved)
    records, and the step given with it: the model's shape and an anneal's starting LR come
    from there. Resuming an anneal without it failed with "pass --lr", then "resume with the
    same --model" (found by a tester). Returns the line to print when it did."""
    if args.init_from:
        return None
    recorded = (load_json_file(path / CONFIG_FILE, resume_advice(path)).get("init") or {})
    if not recorded.get("path"):
        return None
    explicit = getattr(args, "explicit", set())
    if args.model and (args.recipe not in ANNEAL_RECIPES or "lr" in explicit):
        return None  # neither the shape nor the starting LR is read from it (resume never loads its weights)
    where = Path(recorded["path"])
    if not where.is_absolute():  # recorded as typed, by runs before paths were made absolute
        raise ValueError(f"{path} records --init-from {where} relative to the directory its run started in; "
                         "pass --init-from again (its shape and schedule are read, not its weights)")
    if not where.exists():
        raise ValueError(f"{path} was started from --init-from {where}, which is not there any more; pass "
                         "--init-from with a copy of it (its shape and schedule are read, not its weights)")
    args.init_from = str(where)
    source = recorded.get("step_source") or ""
    if args.init_step is None and source.startswith("--init-step"):
        args.init_step = source.removeprefix("--init-step").strip() or str(recorded.get("step"))
    return f"resume: --init-from {args.init_from} as {path.name} records it"


def resumed_init(saved: dict, init, lr_source: str, path: Path) -> tuple[dict | None, str | None]:
    """What a resumed run records as its --init-from (RunConfig.init), and the warning to print where the
    --init-from given is not the checkpoint's. A resume goes on from the checkpoint's weights and never reads
    --init-from's, so its checkpoints keep saying where those weights came from: the --init-from given took
    the record's place unsaid, and a soup's ingredients then claimed a starting point they did not have
    (found by a tester). `saved`: the checkpoint's config.json, which has no "init" after a random start."""
    given = {**init.provenance(), "lr_source": lr_source} if init is not None else None
    recorded = saved.get("init")
    if isinstance(recorded, dict) and not Path(str(recorded.get("path") or "")).is_absolute():
        return given, None  # recorded as typed by older runs: which checkpoint it was cannot be told
    was = Path(recorded["path"]).resolve() if isinstance(recorded, dict) else None
    if init is None or was == Path(init.path).resolve():
        return given if init is not None else recorded, None
    source = f"--init-from {recorded['path']}" if was is not None else "a random initialisation"
    kept = {**recorded, "lr_source": lr_source} if was is not None else None
    return kept, (f"--init-from {init.path} is not where {path.name} started ({source}): resuming goes on from "
                  f"{path.name}'s weights, reads only the model's shape (and an anneal's start LR) from --init-from, "
                  f"and its checkpoints keep recording {source}")


def where_to_resume(save_dir: str, none: str = "") -> str:
    """What a run stopped part way (Ctrl-C, a write that failed) goes on from, in words; `none` where
    --save-dir holds no checkpoint."""
    try:
        last = latest_checkpoint(save_dir) if Path(save_dir).is_dir() else None
    except CheckpointFormatError as exc:
        return str(exc)
    return f"the last checkpoint is {last}: rerun with --resume to continue from it" if last is not None else none


def start_afresh(save_dir: str, overwrite: bool, env, log, keep: list[Path], resuming: bool) -> None:
    """A fresh run into a --save-dir that holds one appended to its metrics.jsonl (steps 1, 2,
    1, 2) and replaced its checkpoints as it saved, unsaid: refused, or with `overwrite` the
    old run is removed first. Rank 0 writes checkpoints and metrics, so its directory decides.
    `keep`: what this run reads (--init-from, a --resume checkpoint elsewhere), never removed."""
    held = existing_run(save_dir) if env.is_main else None
    try:
        resumable = latest_checkpoint(save_dir) is not None if env.is_main else False
    except CheckpointFormatError:  # its newest checkpoint is damaged: --resume says so, --overwrite removes it
        resumable = True
    if not ranks_agree([int(held is not None)], env)[1][0]:
        return
    if not overwrite:
        what = f" ({held})" if held else " (see rank 0)"
        if resuming:
            fix = "resume it in its own --save-dir, or into an empty one; --overwrite starts afresh there (removing it)"
        elif resumable or not env.is_main:
            fix = "pass --resume to continue it, --overwrite to start afresh there (removing it), or another --save-dir"
        else:  # metrics.jsonl or eval/ without a checkpoint: a run that stopped before its first save
            fix = ("it has no complete checkpoint to resume; --overwrite starts afresh there (removing it), or use "
                   "another --save-dir")
        raise ValueError(f"--save-dir {save_dir} holds a run{what}; {fix}")
    for path in keep:
        if cleared_by_overwrite(path, save_dir):
            raise ValueError(f"{path} lies where --overwrite would remove it in --save-dir {save_dir}; copy it "
                             "elsewhere first, or use another --save-dir")
    if env.is_main:
        clear_run(save_dir)
        log(f"--overwrite: removed the run in {save_dir} ({held})")
    barrier(env)


def main(argv: list[str] | None = None) -> int:
    global AGREED_STOP
    AGREED_STOP = None  # also where an earlier main() in this process set it and this one returns early
    args = parse_args_once(argv)
    prog = invoked_as("trainer.run")  # `dolmino train` when the launcher runs it
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # What this node's copies lack (the mix, the --init-from a resume records), raised in the start-up checks
    # under torchrun: refused before the process group, it left the other nodes' ranks waiting for this one in
    # init_process_group, gloo's 30 minutes (found by a tester). Every rank agrees on those, as on --resume's.
    node_copy_error = None
    if args.mix and launched_world_size() > 1:
        said: list[str] = []
        data_paths = built_mix_paths(args.mix, prog, say=said.append) or []
        if said:
            node_copy_error = DataError(said[0].removeprefix(f"{prog}: error: "))
    elif args.mix:
        data_paths = built_mix_paths(args.mix, prog, say=refuse_before_group)
        if data_paths is None:
            return 2
    else:
        remote = next((d for d in args.data if "://" in d), None)
        if remote is not None:
            return refuse_before_group(redact(f"{prog}: error: --data {remote}: {remote_build_hint(remote)}"))
        data_paths = [str(Path(d).resolve()) for d in args.data]
    resume = resume_from = resume_missing = None
    if args.resume is not None:
        resume = Path(args.save_dir) if args.resume == "latest" else Path(args.resume)
        try:
            resume_from = resumable_checkpoint(resume)  # in the start-up checks: before a model is built
            found = True
        except (FileNotFoundError, CheckpointFormatError) as exc:  # none there, or the newest one is damaged:
            # raised in the start-up checks, which the ranks agree on
            resume_from, found, resume_missing = resume, False, exc
            multi_node = launched_world_size() > int(os.environ.get("LOCAL_WORLD_SIZE", launched_world_size()))
            if (args.resume == "latest" and multi_node and isinstance(exc, FileNotFoundError)
                    and not any(resume.glob("step*"))):
                # a node that does not share --save-dir with rank 0's, which alone saves: said "no checkpoint at"
                # and nothing of why, the first resume of a run on nodes without shared storage (a tester)
                resume_missing = FileNotFoundError(f"{exc}; rank 0 alone writes checkpoints, so a node that does not "
                                                   "share --save-dir with it needs a copy of the checkpoint to resume "
                                                   "there (README \"Training\")")
        try:
            taken = init_from_resumed(args, resume_from) if found else None
        except ValueError as exc:
            if launched_world_size() == 1:
                return refuse_before_group(f"{prog}: error: {exc}")
            taken, node_copy_error = None, node_copy_error or exc
        if taken and os.environ.get("RANK", "0") == "0":  # before the process group: every rank got here
            print(taken)
        if args.overwrite and own_checkpoint(resume_from, args.save_dir):
            return refuse_before_group(f"{prog}: error: --overwrite removes the run that --resume would continue; "
                                       "pass one of them")
    if args.eval_limit is not None and not args.eval_tasks:  # it was accepted, and no eval ran (a tester)
        return refuse_before_group(f"{prog}: error: --eval-limit limits the evaluation --eval-tasks asks for; give "
                                   "both, or neither")
    if args.eval_tasks and (Path(args.save_dir) / "eval").exists() and not (Path(args.save_dir) / "eval").is_dir():
        # found only after training and scoring, with a traceback, the results lost (a tester)
        return refuse_before_group(f"{prog}: error: --eval-tasks writes SAVE_DIR/eval/, and "
                                   f"{Path(args.save_dir) / 'eval'} is a file; move it")
    if args.recipe in ANNEAL_RECIPES and not args.init_from and resume is None:
        return refuse_before_group(f"{prog}: error: --recipe {args.recipe} anneals a pretrained model; pass "
                                   "--init-from CKPT (a trainer checkpoint, a Hugging Face Olmo2 directory or an "
                                   "OLMo-core checkpoint)")
    try:
        env = init_distributed(args.device, args.dist_backend, fsdp=args.fsdp)
    except (ValueError, DeviceUnavailable) as exc:  # a device or backend this machine does not have
        return refuse_before_group(f"{prog}: error: {exc}", getattr(exc, "said_by", 0))
    log = print if env.is_main else (lambda _msg: None)
    finished = quiet = False
    held_lock = None  # hold_save_dir's, by rank 0
    # The ranks agreed to stop (a start-up check failed somewhere; AGREED_STOP is set): they leave
    # through the same barrier as a finished run, so that none tears the group down while a peer
    # may still be finishing the agreeing collective (`shutdown`).
    try:
        from trainer.tokenizer_files import MIXED_CONTROL_TOKENS, data_tokenizer
        from trainer.train import ResumeFailed, Trainer, check_resume_model, recipe_note
        from trainer.weights import load_weights_into, non_finite_weight

        # Everything is checked from metadata before anything big is built, and the ranks decide
        # together: a node whose copy of the data or of --init-from fails a check stops with its
        # reason and every other rank with a line saying so, where each had learnt it from the
        # next collective breaking (under NCCL, a wait for its timeout).
        try:
            if node_copy_error is not None:  # this node's --mix or recorded --init-from, under torchrun
                raise node_copy_error
            if resume_missing is not None:  # one node's --save-dir without the checkpoint the others resume
                raise resume_missing
            init = inspect_init(args)
            # Also with --steps: data_tokens checks a build's report.json against its token files (file
            # sizes only), and a partial copy must not train silently just because the length is given.
            layout = scan_data(data_paths)  # one walk of --data for the checks below
            tokens, source = data_tokens(layout)
            if (note := unreported_build_note(layout)) and env.is_main:
                say(f"{prog}: warning: {note}")
            # The checkpoint's train state: its position (checked below) and how far its pass went.
            saved = None if resume is None else load_train_state(resume_from)
            plan = make_plan(args, tokens, source, init, resumed=resumed_position(saved))
            for note in plan.notes if env.is_main else ():
                say(f"{prog}: warning: {note}")
            check_data_vocab(args, plan, init, layout)
            check_data_special_ids(args, plan, init, layout)
            run = run_config_from_args(args, data_paths, env.world_size, env.device, plan)
            check_batch_fits(layout, run.train.seq_len, run.train.global_batch_size)
            tokenizer = data_tokenizer(layout)  # kept in each checkpoint's config.json, for trainer.export_hf
            mixed = tokenizer if isinstance(tokenizer, str) and MIXED_CONTROL_TOKENS in tokenizer else None
            tokenizer = tokenizer if isinstance(tokenizer, dict) else None
            if resume is not None:  # what Trainer._resume refuses, said by the agreed checks (and before a load)
                resumed = check_resume_model(resume_from, run)
                trained = resumed.get("train")
                if tokenizer is None and isinstance(resumed.get("tokenizer"), dict):
                    tokenizer = resumed["tokenizer"]  # its data (the position is checked below), reports gone
                was = trained.get("seq_len") if isinstance(trained, dict) else None
                if was is not None and was != run.train.seq_len:
                    recipe = recipe_note(resume_from.name, resumed, args.recipe)  # a recipe's --seq-len left out
                    raise DataError(f"{resume_from} was trained on instances of {was} tokens, and this run asks for "
                                    f"--seq-len {run.train.seq_len}: resuming would not replay the same batches; "
                                    "resume with the --seq-len it was trained with"
                                    + (f" ({recipe})" if recipe else ""))
                position = saved.get("data") or {}
                current = layout_fingerprint(layout, run.train.seq_len)
                check_data_position(position.get("fingerprint"), current, resume_from / STATE_FILE)
                for note in (uncertified_builds_note(layout),
                             undigested_position_note(position.get("fingerprint"), current, resume_from / STATE_FILE)):
                    if note and env.is_main:
                        say(f"{prog}: warning: {note}")
            if mixed is not None and env.is_main:
                # "<|endoftext|>" in text is EOS in some builds, characters in others: it trained unsaid (a tester);
                # a resume keeps its checkpoint's record, which "record no tokenizer" denied (a reviewer)
                kept = (f"its checkpoints keep the tokenizer {resume_from / CONFIG_FILE} records (control_tokens "
                        f"{tokenizer.get('control_tokens', 'not recorded')})" if tokenizer is not None else
                        "its checkpoints record no tokenizer")
                say(f"{prog}: warning: {mixed}; {kept}")
            failed = None
        except Exception as exc:  # noqa: BLE001 - any failure, so that every rank reaches the agreement; re-raised
            failed = exc
        low, high = ranks_agree(failure_values(failed), env)
        if high[0]:
            AGREED_STOP = "failed" if failed is not None else "peer"
            if low == high and not env.is_main:
                # Every rank failed with the same error (a setting, not one node's copy): rank 0's line says
                # it, once; N ranks printed it N times (found by a tester). It leaves first, torchrun's root cause.
                AGREED_STOP, quiet = "peer", True
            raise failed or ValueError(f"rank {env.rank}: another rank's start-up checks failed; its error says why")
        if init is not None:
            run.init = {**init.provenance(), "lr_source": plan.lr_source}
        if resume is not None:
            run.init, note = resumed_init(resumed, init, plan.lr_source, resume_from)
            if note and env.is_main:
                say(f"{prog}: warning: {note}")
        # Rank 0 writes metrics and checkpoints: a read-only --save-dir failed at the first flush,
        # steps into the run, in a traceback (found by a tester).
        reason = why_unwritable(args.save_dir) if env.is_main else None
        if ranks_agree([int(reason is not None)], env)[1][0]:
            AGREED_STOP = "failed" if reason is not None else "peer"
            raise ValueError(f"--save-dir {args.save_dir} cannot be written ({reason})" if reason is not None else
                             f"rank {env.rank}: rank 0 cannot write --save-dir {args.save_dir}; its error says why")
        busy = None  # before start_afresh: --overwrite removed a live run's files, --resume read its newest
        try:
            held_lock = hold_save_dir(args.save_dir) if env.is_main else None
        except SaveDirBusy as exc:
            busy = exc
        if ranks_agree([int(busy is not None)], env)[1][0]:
            AGREED_STOP = "failed" if busy is not None else "peer"
            raise busy or ValueError(f"rank {env.rank}: rank 0's --save-dir {args.save_dir} is in use by another "
                                     "run; its error says why")
        if resume is None or not own_checkpoint(resume_from, args.save_dir):
            # also a --resume of a checkpoint elsewhere: its run goes on in --save-dir
            try:
                start_afresh(args.save_dir, args.overwrite, env, log,
                             [p for p in (init.path if init is not None else None, resume_from) if p is not None],
                             resuming=resume is not None)
            except ValueError:
                # Every rank refuses, after start_afresh's collective. Rank 0's directory decides and its line says
                # why; the others printed a copy "(see rank 0)" and left through a full teardown (found by a tester).
                AGREED_STOP, quiet = ("failed", False) if env.is_main else ("peer", True)
                raise
        if args.sync_debug and env.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer = Trainer(run, env, args.save_dir, resume=resume, log=log, keep_last=args.keep_last,
                              tokenizer=tokenizer, data=layout)
            if init is not None and resume is None:
                # Each rank reads the weights itself (after DDP's broadcast; FSDP never broadcasts):
                # a node holding another copy of --init-from would train with other weights, silently.
                low, high = ranks_agree([files_fingerprint(init.path) if env.distributed else 0], env)
                if low != high:
                    raise RanksDisagree(f"--init-from {init.path} differs between nodes (its files do not match on "
                                        "every rank); give every node the same copy, or a shared filesystem")
        except ResumeFailed as exc:
            # Every rank knows it, after a collective, as after the start-up checks: an error every rank met
            # alike (a damaged model.pt on a shared filesystem) is said by rank 0 alone, which leaves first.
            AGREED_STOP = "failed" if exc.error is not None else "peer"
            if exc.same_everywhere and not env.is_main:
                AGREED_STOP, quiet = "peer", True
            if exc.error is not None:
                raise exc.error from None  # its own type: a damaged file is one line, a fault its traceback
            raise
        except RanksDisagree:
            # every rank knows it, after a collective: leave as agreed stops do (a full teardown, a tester
            # saw, aborted a rank now and then: SIGABRT from a gloo thread freeing that allreduce, 2 runs in 16)
            AGREED_STOP = "failed" if env.is_main else "peer"
            raise
        if init is not None and resume is None:
            n = load_weights_into(trainer.raw_model, init)
            # NaN / inf starting weights trained "loss nan" on every step, exit 0, into a NaN checkpoint
            # (found by a tester); each rank checks its shard, and the ranks agree before anyone stops.
            bad = non_finite_weight(trainer.raw_model)
            if ranks_agree([int(bad is not None)], env)[1][0]:
                AGREED_STOP, quiet = ("failed", False) if env.is_main else ("peer", True)
                raise ValueError(f"--init-from {init.describe()}: weight {bad or '(on another rank)'} holds NaN or "
                                 "inf (a diverged run, or a damaged file); start from a checkpoint from before it")
            log(f"initialised {n} tensors from {init.describe()}")
        tc = run.train
        log(f"model {plan.model_label}: {describe_params(run.model)} on {env.device} x{env.world_size} | data "
            f"{len(trainer.dataset):,} instances of {tc.seq_len} tokens from {len(trainer.dataset.files)} file(s) | "
            f"batch {tc.global_batch_size} x {tc.seq_len} = {tc.tokens_per_step:,} tokens/step, micro-batch "
            f"{tc.micro_batch_size}, accumulation {trainer.accum} | repetition {tc.repetition}, weight decay "
            f"{tc.weight_decay:g} ({'norms decayed' if tc.decay_norms else 'norms exempt'})")
        log(f"schedule: {tc.max_steps:,} steps ({plan.steps_source}) | {tc.schedule} lr {tc.lr:.6g} "
            f"({plan.lr_source}), "
            f"warmup {tc.warmup_steps}, horizon {tc.horizon_steps:,} steps")
        if note := epochs_note(len(trainer.dataset), tc.global_batch_size, tc.max_steps, trainer.dataset,
                               trainer.step, trainer.loader.epoch, trainer.loader.cursor):
            log(note)
        steps_left = range(trainer.step, tc.max_steps)
        if env.is_main and (note := trainer.schedule.zero_lr_note(trainer.step, tc.max_steps)):
            # e.g. a one-step anneal: its linear decay reaches 0 on its last step, its only one (a tester)
            say(f"{prog}: warning: {note}")
        # Every label masked (an all-zero or inverted label mask) trained "loss 0.0000 | gnorm 0.000" each step,
        # exit 0 (found by a tester). A run that trains no label has a first step without one, said before it
        # runs; its batch is loaded now instead of in the first step, and the ranks' counts gathered once.
        if steps_left and not ranks_agree([trainer.loader.peek().n_targets], env)[1][0] and env.is_main:
            say(f"{prog}: warning: step {trainer.step + 1} has no label to train (every one masked by the label mask "
                "or the repetition filter): its loss and gradients are 0; check the data's label masks")
        result = trainer.fit()
        stats = result.data_stats
        if stats.get("labels"):
            log(f"data: {stats['instances']:,} instances, {stats['targets']:,} of {stats['labels']:,} labels trained, "
                f"{stats['masked_by_label_mask']:,} masked by label mask, {stats['masked_by_repetition']:,} masked "
                f"as repeated n-grams ({stats.get('instances_filtered', 0):,} instances filtered)")
        if result.end_step > result.start_step or result.checkpoint:
            log(f"checkpoint: {result.checkpoint}")
        finished = True
    except (DataError, ValueError, OSError, CheckpointWriteError) as exc:  # OSError: e.g. --save-dir made read-only
        if not quiet:
            # a full disk part way through: which checkpoint the rerun goes on from (only "[Errno 28] No space left
            # on device" was said of metrics.jsonl; found by a tester)
            hint = where_to_resume(args.save_dir) if isinstance(exc, CheckpointWriteError) and env.is_main else ""
            say(f"{prog}: error: {exc}" + (f"; {hint}" if hint else ""))
        return 2
    except RuntimeError as exc:
        if not (env.distributed and peer_stopped(exc)):
            raise
        # Another rank stopped (its own error line says why; a node's start-up check, a full disk):
        # this one printed a 50-line gloo/NCCL traceback and exited 1, like a crash (found by a tester).
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        # a rank killed by a signal (kill -9, the OOM killer) says nothing itself: torchrun's summary names it
        say(f"{prog}: error: rank {env.rank}: another rank stopped; its error, or torchrun's summary for a rank "
            f"killed by a signal, says why ({first[:200]})")
        return 2
    except KeyboardInterrupt:
        # Ctrl-C printed a 30-line traceback from inside the step on every rank (found by a tester);
        # the build's commands say one line and exit 130, and what to rerun is the useful part here.
        if env.is_main:
            say(f"{prog}: interrupted; " + where_to_resume(args.save_dir, f"no checkpoint was saved in this run's "
                                                           f"--save-dir {args.save_dir} yet (--save-interval N saves "
                                                           "every N steps)"))
        return 130
    finally:
        shutdown(env, finished or AGREED_STOP is not None)
        if held_lock is not None:
            release_save_dir(held_lock, args.save_dir)
    if args.eval_tasks and env.is_main:  # after leaving the process group: only this rank scores
        del trainer  # free the training state before the checkpoint is loaded to be scored
        return evaluate_after_training(args, result.checkpoint, env.device, log)
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    exit_process(run_main(main), agreed_stop=AGREED_STOP)
