"""From a recipe, a built mix and a starting checkpoint to a run's model, length and learning rate.

`python -m trainer.run` trains with these answers and `python -m trainer.schedule` prints
them, from the same code, so what a reviewer checks is what runs:

- Model: --model; else the recipe's; else the shape of the --init-from checkpoint (named
  after the preset it matches); else "olmo2-30M". A checkpoint must fit the model exactly.
- Length: --steps; else one pass over the data, ceil(tokens / (batch x seq)) steps, with the
  tokens from the build's report.json ("output.tokens", checked against the token files) or
  the token files' size. This is OLMo-core's `Duration.tokens` rule (train until the tokens
  seen reach the budget): 50B tokens at 1024 x 4096 are 11,921 steps (the released 50B list,
  51.46B tokens, 12,269). OLMo 2's 7B stage 1 was one pass too (3.9T tokens, 928,646 steps). OLMo's official-1124 stage-2 configs stopped 10
  steps later than round(budget / batch) (11,931 for 13B on 100B); pass --steps to copy that.
- Learning rate: --lr always wins. Anneal recipes (trainer.config.ANNEAL_RECIPES) start from
  the LR pretraining had reached at the checkpoint's step: the checkpoint's own cosine when
  it is a trainer checkpoint (it records its schedule and step); the LR of its last step that an
  OLMo-core checkpoint's optimizer state records; otherwise the OLMo 2 pretraining recipe's
  cosine at the step the checkpoint is known to be at (an HF revision name such as
  stage1-step928646-tokens3896B, an OLMo-core stepN directory, or --init-step),
  or at OLMo 2's documented stage-1 end. At that step itself (the released checkpoint) the
  start is the LR the released mid-training used, SPEC.md's 6.1499e-5 for 7B (OLMo's
  official-1124 config; the cosine gives 6.1351e-5 there, as OLMo-core's OLMo2-7B anneal
  script computes it) and 9e-5 for 13B.
  13B: step 596,057 is past the 5T horizon, so the floor 9e-5). Other recipes: their LR,
  else 3e-4.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dolmino.manifest import expand_home
from dolmino.release import listed_files
from dolmino.s3 import local_path, redact
from trainer.cli import GivenOnce, HelpFormatter, in_flag_names, parse_count, positive_int
from trainer.config import (
    ANNEAL_RECIPES, LEGACY_PRESETS, MODEL_PRESETS, RECIPE_HELP, RECIPES, SCHEDULES, STAGE1_END_LR, STAGE1_END_STEP,
    ModelConfig, TrainConfig, describe_params, describe_preset,
)
from trainer.data import (
    LABEL_MASK_SUFFIX, TOKEN_DTYPE, DataError, DataLayout, check_batch_fits, discover_token_files, label_mask_path,
    read_report, scan_data,
)
from trainer.schedule import LRSchedule

DEFAULT_MODEL = "olmo2-30M"
DEFAULT_LR = 3e-4
REPORT_FILE = "report.json"
BUILD_MANIFEST = "manifest.json"  # the manifest a build was made from, which it keeps beside its report
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# ----------------------------------------------------------------------------- arguments
def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The options that decide model, length and LR (shared by trainer.run and trainer.schedule)."""
    recipes = "; ".join(f"{name}: {text}" for name, text in RECIPE_HELP.items())
    p.add_argument("--recipe", choices=list(RECIPES), default=None,
                   help=f"the paper's settings as defaults, explicit flags still win (default: none). {recipes}")
    presets = "; ".join(describe_preset(name) for name in MODEL_PRESETS)
    p.add_argument("--model", default=None, choices=list(MODEL_PRESETS) + list(LEGACY_PRESETS), metavar="PRESET",
                   help=f"model shape (default: the recipe's, else the --init-from checkpoint's, else "
                        f"{DEFAULT_MODEL}). Non-embedding counts as in OLMo-core (all but the input "
                        f"embedding): {presets}")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps, counting resumed ones (default: one pass over the data, "
                        "ceil(tokens / (batch x seq)))")
    p.add_argument("--seq-len", type=positive_int, default=1024, help="tokens per instance")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="global batch size in instances of --seq-len tokens")
    p.add_argument("--lr", type=float, default=None,
                   help="peak (anneals: start) learning rate (default: the recipe's; anneal recipes: the "
                        "pretraining LR at the checkpoint's step; else 3e-4)")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="LR schedule")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="default: the recipe's; else min(2000, steps // 10) for cosine, 0 for linear_to_zero")
    p.add_argument("--horizon-tokens", type=parse_count, default=None,
                   help="schedule length in tokens (e.g. 5T); training may stop earlier (default: the recipe's, "
                        "else the run's length)")
    p.add_argument("--final-lr-fraction", type=float, default=0.1, help="cosine floor as a fraction of the peak")
    p.add_argument("--init-from", default=None, type=local_path,
                   help="start from these weights with a fresh optimizer at step 0 (default: random init): a "
                        "trainer checkpoint or save dir, a Hugging Face Olmo2 directory (safetensors, sharded or "
                        "not), or an OLMo-core DCP checkpoint (stepN or stepN/model_and_optim)")
    p.add_argument("--init-step", default=None,
                   help="the pretraining step --init-from is at, as a number or an OLMo revision name like "
                        "stage1-step928646-tokens3896B (default: what the checkpoint records)")


def parse_with_recipe(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse twice: a --recipe supplies defaults, flags given explicitly still win."""
    args = parser.parse_args(argv)
    explicit = {k for k, v in vars(args).items() if v != parser.get_default(k)}
    if args.recipe:
        parser.set_defaults(**RECIPES[args.recipe])
        args = parser.parse_args(argv)
    args.explicit = explicit
    return args


def parse_init_step(text: str | None) -> tuple[int | None, str | None]:
    if text is None:
        return None, None
    from trainer.weights import stage_from_revision, step_from_revision

    if text.strip().isdigit():
        return int(text), "--init-step"
    step = step_from_revision(text)
    if step is None:
        raise ValueError(f"--init-step {text!r} is neither a step number nor a revision name like "
                         f"stage1-step928646-tokens3896B")
    if (stage_from_revision(text) or 1) > 1:
        raise ValueError(f"--init-step {text!r} is a mid-training (stage {stage_from_revision(text)}) revision: its "
                         f"step counts the anneal's steps, not pretraining's; give the pretraining step, or --lr")
    return step, f"--init-step {text}"


# ----------------------------------------------------------------------------- data
def remote_build_hint(location: str) -> str:
    """How to get a build that lives on S3 onto this machine's disk, where training reads it."""
    from dolmino.release import fetch_hint

    return f"the trainer reads token files from a local directory. {fetch_hint(location, 'pass --data DIR')}"


def _manifest_changes(given: dict, built: Path) -> list[str]:
    """`dolmino.diff.manifest_changes` of a build's manifest.json; none where it cannot be read (a
    damaged copy: which manifest it was is unknown)."""
    from dolmino.diff import manifest_changes

    try:
        return manifest_changes(json.loads(built.read_text(encoding="utf-8")), given)
    except (OSError, ValueError):
        return []


def mix_output_dir(manifest_path: str | Path, prog: str = "trainer.run") -> Path:
    """The built mix directory a manifest names; exits with a clear message if it is not built,
    or if it was built from another manifest (its manifest.json differs)."""
    if "://" in str(manifest_path) and not str(manifest_path).rstrip("/").endswith(".json"):
        # a build's prefix: `aws s3 cp PREFIX .`, as the line below said, copies no prefix (a tester)
        how = f" (`aws s3 sync {manifest_path} DIR`)" if str(manifest_path).startswith("s3://") else ""
        raise SystemExit(redact(f"{prog}: --mix {manifest_path} is a URL, not a manifest file; to train on the build "
                                f"stored there, copy it here first{how} and pass --data DIR, or pass a local copy of "
                                "its manifest JSON as --mix"))
    if "://" in str(manifest_path):  # through Path, s3://b/m.json became "manifest s3:/b/m.json does not exist"
        # `aws s3 cp` takes s3:// URLs only: an https:// one was told to use it (a tester)
        fetch = "aws s3 cp" if str(manifest_path).startswith("s3://") else "curl -O"
        raise SystemExit(redact(f"{prog}: --mix {manifest_path} is a URL; --mix reads a local manifest file: copy it "
                                f"here first (`{fetch} {manifest_path}{' .' if fetch == 'aws s3 cp' else ''}`) and "
                                "pass the copy, or, to train on the build it lies in, fetch that build and pass "
                                "--data DIR"))
    manifest_path = Path(manifest_path)
    if manifest_path.is_dir():
        raise SystemExit(f"{prog}: --mix {manifest_path} is a directory; --mix takes the manifest JSON, pass a "
                         f"built mix directory as --data {manifest_path}")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"{prog}: manifest {manifest_path} does not exist") from None
    except UnicodeDecodeError as exc:  # e.g. a token file or a gzipped manifest passed by mistake
        raise SystemExit(f"{prog}: manifest {manifest_path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         f"--mix takes the manifest JSON") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{prog}: manifest {manifest_path} is not valid JSON: {exc}") from None
    output = data.get("output") if isinstance(data, dict) else None
    if not isinstance(output, str) or not output:
        raise SystemExit(f"{prog}: manifest {manifest_path} has no \"output\" directory; pass --data instead")
    out = None if "://" in output else Path(expand_home(output))  # as the build resolves it
    home = manifest_path.resolve().parent
    if out is not None and not out.is_absolute():
        out = (home / out).resolve()
    if (home / REPORT_FILE).is_file() and (out is None or out.resolve() != home):
        # The manifest.json a build (or a pulled release) keeps: its "output" is where the build was
        # first written, which trained instead of the directory holding it (found by a tester).
        raise SystemExit(f"{prog}: --mix {manifest_path} is the manifest kept by the build in {home} ({REPORT_FILE} "
                         f"beside it), and its \"output\" is {output}; to train on that build pass --data {home}")
    if out is None:
        raise SystemExit(f"{prog}: the mix output {output} is remote; {remote_build_hint(output)}")
    if not out.is_dir() or not (out / "report.json").is_file():
        state = "is an incomplete build (no report.json)" if out.is_dir() else "does not exist"
        raise SystemExit(f"{prog}: the mix {out} {state}; build (or finish building) it first:\n"
                         f"  spark-submit dolmino/build_mix.py --manifest {manifest_path}")
    try:
        found = discover_token_files(out)
    except DataError:  # a directory holding none: said with the command that builds it
        found = []
    if not found:
        raise SystemExit(f"{prog}: no token files (*.npy) in {out}; build the mix first:\n"
                         f"  spark-submit dolmino/build_mix.py --manifest {manifest_path}")
    if (out / BUILD_MANIFEST).is_file() and (changes := _manifest_changes(data, out / BUILD_MANIFEST)):
        # An edited manifest trained on the build of the old one, unsaid (found by a tester).
        shown = ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise SystemExit(f"{prog}: the mix {out} was built from another manifest than {manifest_path} (its "
                         f"{BUILD_MANIFEST} differs in {shown}); rebuild it (`spark-submit dolmino/build_mix.py "
                         f"--manifest {manifest_path} --overwrite`, which replaces it), or train on the build as it "
                         f"is with --data {out}")
    if (built := read_report(out).get("budget")) != (wanted := _manifest_budget(data)) and \
            isinstance(built, int) and wanted is not None:
        # Built with another --budget: the build refuses that pair, the trainer trained on it (a tester).
        raise SystemExit(f"{prog}: the mix {out} was built with a budget of {built:,} tokens ({REPORT_FILE}), "
                         f"{manifest_path} says {wanted:,}; rebuild it (`spark-submit dolmino/build_mix.py "
                         f"--manifest {manifest_path} --overwrite`, which replaces it), or train on the build as it "
                         f"is with --data {out}")
    return out


def _manifest_budget(data: object) -> int | None:
    """The budget a mix manifest builds (stated, or its passes'); None for a pool manifest, whose
    report holds the measured size, not its estimate (a reviewer), or where it does not load."""
    from dolmino.manifest import manifest_from_dict

    try:
        manifest = manifest_from_dict(data)
    except ValueError:
        return None
    return None if manifest.kind == "pool" else manifest.budget


def _same_tokenizer(a: dict, b: dict) -> bool:
    """Whether two builds' ids mean the same text: the same tokenizer name and EOS, and the same
    tokenizer.json where both reports record its digest (older ones do not). Not the declared
    vocab_size: one tokenizer may be declared padded (100352) in one manifest and not in
    another (found by a reviewer)."""
    if (a.get("tokenizer"), a.get("eos_token_id")) != (b.get("tokenizer"), b.get("eos_token_id")):
        return False
    return not (a.get("tokenizer_sha256") and b.get("tokenizer_sha256")) or \
        a["tokenizer_sha256"] == b["tokenizer_sha256"]


def _describe_tokenizer(data: dict) -> str:
    digest = f", tokenizer.json {data['tokenizer_sha256'][:12]}..." if data.get("tokenizer_sha256") else ""
    return f"{data.get('tokenizer')}, EOS {data.get('eos_token_id')}{digest}"


def built_mix_paths(manifest_path: str | Path, prog: str, say: Callable[[str], object] | None = None
                    ) -> list[str] | None:
    """[the built mix directory of a manifest], or None after saying why not in one line,
    "PROG: error: ...", for the command to exit with status 2 (a bare SystemExit exited 1
    without "error:"; found by a tester). `say` writes the line (default: to stderr; trainer.run's
    says it once per torchrun node)."""
    try:
        return [str(mix_output_dir(manifest_path, prog=prog))]
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        line = exc.code.replace(f"{prog}: ", f"{prog}: error: ", 1)
        if say is None:
            print(line, file=sys.stderr)
        else:
            say(line)
        return None


def reported_builds(layout: DataLayout) -> list[tuple[Path, list[Path], bool]]:
    """(build directory, the token files read from it, whether they are the whole build) for every
    build with a report.json that the data reads: those below the --data directories, and those
    beside a token file named itself (`--data C1 C2/part-00000.npy`: the tokenizer and vocabulary
    checks left such a file out; found by a tester)."""
    found = [(folder, held, True) for folder, held in layout.builds.items() if (folder / REPORT_FILE).is_file()]
    below = {f for held in layout.builds.values() for f in held}
    named: dict[Path, list[Path]] = {}
    for f in layout.files:
        if f not in below and (f.parent / REPORT_FILE).is_file():
            named.setdefault(f.parent, []).append(f)
    return found + [(folder, held, False) for folder, held in named.items()]


def data_tokens(paths: list[str] | DataLayout) -> tuple[int, str]:
    """Tokens in the training data and where the number comes from.

    Every directory holding token files (given, or found below a given one) that has a
    report.json must agree with it in "output.tokens" (a disagreement means a partial copy or
    a stale report), and builds tokenized with different tokenizers are refused: their ids
    mean different text (both found by a tester with several --data directories). So are
    token files and label masks a report does not certify (`dolmino validate`'s stale parts), and
    two builds certifying the same token file (a build and a copy of it: its data read twice).
    Otherwise the token files' sizes (4 bytes a token)."""
    from dolmino.memmap import unlisted_parts

    layout = scan_data(paths)
    files, builds = layout.files, layout.builds
    on_disk = sum(layout.sizes.values()) // TOKEN_DTYPE.itemsize
    reports: list[tuple[Path, dict]] = []
    certified: dict[str, tuple[Path, Path]] = {}  # a token file's SHA-256 as its report certifies it -> (build, file)
    checked = 0
    for folder, held, whole in reported_builds(layout):
        report = folder / REPORT_FILE
        data = layout.report(folder)
        listed = listed_files(data)
        names = [f.relative_to(folder).as_posix() for f in held]
        read = names + [n[: -len(".npy")] + LABEL_MASK_SUFFIX for n, f in zip(names, held)
                        if listed and f in layout.masks]
        if listed and (stale := unlisted_parts(read, listed)[1]):
            # A mask is used where its file exists: one the build did not write trained unsaid, while
            # `dolmino validate` called the build INVALID (found by a tester).
            raise DataError(f"{folder / stale[0]} is not certified by {report} (not in its output.files_sha256"
                            f"{f', nor {len(stale) - 1} more file(s)' if len(stale) > 1 else ''}): the build did "
                            "not write it, and `dolmino validate` calls it stale; remove it, or rebuild")
        for name, f in zip(names, held):
            digest = listed.get(name)
            if digest in (None, EMPTY_SHA256):
                continue
            home, same = certified.setdefault(digest, (folder, f))
            if home != folder:  # the duplicate check compares inodes: a copy passed it (found by a tester)
                raise DataError(f"{same} and {f} are the same token file (their builds' {REPORT_FILE} certify one "
                                f"SHA-256, {digest[:12]}...): the --data paths hold one build and a copy of it; "
                                "name each build once")
        if whole:
            try:
                tokens = int(data["output"]["tokens"])
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{report}: no output.tokens ({exc})") from None
            here = sum(layout.sizes[f] for f in held) // TOKEN_DTYPE.itemsize
            if tokens != here:
                raise DataError(f"{report} says the mix holds {tokens:,} tokens but its token files hold {here:,}; "
                                f"is the copy incomplete?")
            checked += 1
        wanted = None if whole else {n[: -len(".npy")] + LABEL_MASK_SUFFIX for n in names}
        masks = [n for n in listed if n.endswith(LABEL_MASK_SUFFIX) and (wanted is None or n in wanted)]
        present = {label_mask_path(f) for f in held if f in layout.masks}
        if lost := [n for n in masks if folder / n not in present and not (folder / n).is_file()]:
            # A mask is used where its file exists: a copy without them trained (and a resume onto
            # one went on) on every label the build masked, unsaid (found by a tester).
            raise DataError(f"{report} certifies {len(masks)} label mask file(s), {len(lost)} of them not here (first: "
                            f"{folder / lost[0]}); is the copy incomplete? Training without them would train on "
                            "the labels the build masked")
        for other, seen in reports:
            if data.get("tokenizer") is not None and seen.get("tokenizer") is not None \
                    and not _same_tokenizer(seen, data):
                raise DataError(f"the data mixes builds of different tokenizers: {other} ({_describe_tokenizer(seen)}) "
                                f"and {report} ({_describe_tokenizer(data)}); train on builds of one tokenizer")
        reports.append((report, data))
    if len(reports) == 1 and len(builds) == 1 and sum(map(len, builds.values())) == len(files):
        return on_disk, str(reports[0][0])
    checked_note = f", {checked} checked against their {REPORT_FILE}" if checked else ""
    return on_disk, f"{len(files)} token file(s){checked_note}"


def data_vocab_size(paths: list[str] | DataLayout) -> tuple[int, Path] | None:
    """The vocabulary the data was tokenized with and the report.json recording it (the largest,
    if builds differ). None unless every token file lies in a build (below a --data directory,
    or beside a token file named itself) whose report has "vocab_size": other token files and
    older builds do not say, and then the first batch holding an id beyond the model's
    vocabulary is what stops the run."""
    layout = scan_data(paths)
    reported = reported_builds(layout)
    if sum(len(held) for _, held, _ in reported) != len(layout.files):
        return None
    largest = None
    for folder, _, _ in reported:
        report = folder / REPORT_FILE
        try:
            vocab = layout.report(folder).get("vocab_size")
        except DataError:  # unreadable, or JSON but not an object
            return None
        if not isinstance(vocab, int) or isinstance(vocab, bool):
            return None
        if largest is None or vocab > largest[0]:
            largest = (vocab, report)
    return largest


def steps_for_tokens(tokens: int, tokens_per_step: int) -> int:
    """Steps until `tokens` are seen (OLMo-core's Duration.tokens): ceil(tokens / tokens per step)."""
    return max(1, math.ceil(tokens / tokens_per_step))


# ----------------------------------------------------------------------------- model
def resolve_model(args: argparse.Namespace, init=None) -> tuple[ModelConfig, str]:
    """(config, label) for --model / the recipe's model / the checkpoint's shape / the default."""
    if args.model:
        cfg, label = ModelConfig.preset(args.model), args.model
        if args.model in LEGACY_PRESETS:
            label = f"{args.model} (legacy name; {describe_params(cfg)})"
        if init is not None and init.model is not None and init.model.max_seq_len > cfg.max_seq_len:
            # The preset fits the checkpoint's shape (checked later) but not its context length: a
            # 4,096-token model given --model was exported as a 512-token one (found by a tester).
            cfg = ModelConfig.from_dict({**cfg.to_dict(), "max_seq_len": init.model.max_seq_len})
    elif init is not None:
        if init.model is None:
            raise ValueError(f"{init.describe()} does not say its number of attention heads; pass --model")
        # The checkpoint's own config, named after the preset of its shape where there is one:
        # the preset's config lost what the checkpoint says beyond the shape (its context length:
        # an imported 4,096-token model exported as a 512-token one; found by a tester).
        name = init.model.preset_name()
        cfg = init.model
        label = name or f"{cfg.n_layers} x {cfg.d_model} from {init.format} checkpoint"
    else:
        cfg, label = ModelConfig.preset(DEFAULT_MODEL), DEFAULT_MODEL
    if args.seq_len > cfg.max_seq_len:
        cfg = ModelConfig.from_dict({**cfg.to_dict(), "max_seq_len": args.seq_len})
    return cfg, label


def _pretrain_recipe_for(model: ModelConfig) -> str | None:
    for recipe, settings in RECIPES.items():
        if recipe in ANNEAL_RECIPES or "model" not in settings:
            continue
        if not model.same_shape(ModelConfig.preset(settings["model"])):
            return recipe
    return None


def pretrain_schedule(recipe: str) -> LRSchedule:
    r = RECIPES[recipe]
    tc = TrainConfig(seq_len=r["seq_len"], global_batch_size=r["batch_size"], micro_batch_size=1, lr=r["lr"],
                     warmup_steps=r["warmup_steps"], schedule=r["schedule"], final_lr_fraction=r["final_lr_fraction"],
                     horizon_tokens=r["horizon_tokens"], max_steps=1)
    return LRSchedule.from_config(tc)


def _describe_schedule(s: LRSchedule) -> str:
    return (f"{s.kind} from {s.peak_lr:g}, {s.warmup_steps:,} warm-up, floor {s.final_lr_fraction:g} x peak on "
            f"its step {s.horizon_steps:,} (counting from 1)")


def anneal_start_lr(recipe: str, model: ModelConfig, init=None, step: int | None = None,
                    step_source: str | None = None) -> tuple[float, str]:
    """The LR pretraining had reached where the anneal starts, and how that was decided.
    `step` (from --init-step) stands in for a checkpoint's step when there is no checkpoint."""
    saved = TrainConfig.from_dict(init.train) if init is not None and init.train else None
    if saved is not None and saved.schedule != "cosine":
        # also without a step: a soup of anneals (OLMo 2's final models) records none, and started at OLMo 2's
        # stage-1 LR, or said it "records no schedule" (found by a tester)
        raise ValueError(f"{init.describe()} was itself trained with a {saved.schedule} schedule (an anneal, or a "
                         f"soup of anneals?); pass --lr for the LR to start from")
    if saved is not None and init.step is not None:
        schedule = LRSchedule.from_config(saved)
        lr = schedule.lr_at(max(init.step - 1, 0))  # the LR of its last step (lr_at counts from 0)
        return lr, f"the checkpoint's own schedule ({_describe_schedule(schedule)}) at step {init.step:,}"
    if init is not None and init.lr is not None:  # an OLMo-core checkpoint: the LR its optimizer state records
        if not init.lr:
            raise ValueError(f"{init.describe()} records a learning rate of 0 for its last step (the end of an "
                             f"anneal?); pass --lr for the LR to start from")
        return init.lr, f"the LR the {init.describe()} records for its last step (its optimizer state, as " \
                        f"OLMo-core's get_lr_from_checkpoint reads it)"
    pretrain = ANNEAL_RECIPES.get(recipe) or _pretrain_recipe_for(model)
    if pretrain is None:
        # "no --init-from records no schedule" read as a double negative (a tester)
        where = f"{init.describe()} records no schedule" if init is not None else "there is no --init-from"
        raise ValueError(f"cannot tell which LR pretraining reached: {where}, and the model is not an OLMo 2 "
                         f"{'/'.join(STAGE1_END_STEP)} shape; pass --lr")
    schedule = pretrain_schedule(pretrain)
    if init is not None and init.step is not None and (init.stage or 1) > 1:
        raise ValueError(f"{init.describe()} is a mid-training (stage {init.stage}) checkpoint: its step counts the "
                         f"anneal's steps, not pretraining's, and its LR is where that anneal stopped; pass --lr for "
                         f"the LR to start from")
    if init is not None and init.step is not None:
        step, how = init.step, init.step_source
    elif step is not None:
        how = step_source or "given"
    elif init is not None:
        step, how = STAGE1_END_STEP[pretrain], "OLMo 2's stage-1 end: the checkpoint does not record its step; " \
                                               "--init-step sets it"
    else:
        step, how = STAGE1_END_STEP[pretrain], "OLMo 2's stage-1 end"
    if step == STAGE1_END_STEP[pretrain]:  # the released checkpoint: the LR its mid-training started from
        return STAGE1_END_LR[pretrain], f"OLMo 2's released mid-training start for the stage-1 checkpoint at step " \
                                        f"{step:,} (OLMo's official-1124 config, as ../shared/SPEC.md gives it; {how})"
    # the LR of the checkpoint's last step, its step-th (lr_at counts from 0), as OLMo-core's anneal scripts take it
    return schedule.lr_at(max(step - 1, 0)), f"the {pretrain} pretraining schedule ({_describe_schedule(schedule)}) " \
                                             f"at step {step:,} ({how})"


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    model: ModelConfig
    model_label: str
    steps: int
    steps_source: str
    lr: float
    lr_source: str
    warmup_steps: int
    horizon_tokens: int | None
    tokens: int | None = None
    tokens_source: str | None = None
    notes: list[str] = field(default_factory=list)  # flags that do not do what they seem to: warnings


def make_plan(args: argparse.Namespace, tokens: int | None, tokens_source: str | None, init=None,
              resumed: tuple[int, int] | None = None) -> Plan:
    """`resumed`: (step, tokens seen) of the checkpoint a run resumes. One pass then ends once the
    tokens are seen, as OLMo-core's Duration.tokens counts it: a resume with another --batch-size
    ran ceil(tokens / new tokens per step) steps in all, a part of the pass or more than one, unsaid
    (found by a tester)."""
    parse_init_step(args.init_step)  # a malformed --init-step is an error even when unused
    model, label = resolve_model(args, init)
    if init is not None:
        from trainer.weights import CheckpointFormatError, check_compatible

        try:
            check_compatible(init, model)
        except CheckpointFormatError as exc:
            if not args.model or init.model is None:
                raise
            # said what did not fit, not what to do: the model takes the checkpoint's shape without --model,
            # and the 7B / 13B anneal recipes name their model (found by a tester)
            if "model" in getattr(args, "explicit", {"model"}):
                fix = "leave out --model: the model then takes the checkpoint's shape"
            else:
                fix = (f"the {args.recipe} recipe anneals OLMo 2's {args.model}; --recipe microanneal anneals a "
                       "checkpoint of any shape")
            raise CheckpointFormatError(f"{exc}; {fix}") from None
    tokens_per_step = args.batch_size * args.seq_len
    if args.steps is not None:
        steps, steps_source = args.steps, "--steps"
    elif tokens is not None and resumed is not None and resumed[0] * tokens_per_step != resumed[1]:
        step, seen = resumed
        steps = step + (steps_for_tokens(tokens - seen, tokens_per_step) if tokens > seen else 0)
        steps_source = (f"one pass over {tokens:,} tokens ({tokens_source}): {seen:,} seen in the {step:,} steps "
                        f"resumed, the rest at {args.batch_size} x {args.seq_len}")
    elif tokens is not None:
        steps = steps_for_tokens(tokens, tokens_per_step)
        steps_source = f"one pass over {tokens:,} tokens ({tokens_source}) at {args.batch_size} x {args.seq_len}"
    else:
        raise ValueError("the run's length is unknown: pass --steps, or data (--mix / --data / --tokens)")
    if args.lr is not None:
        lr, lr_source = args.lr, "--lr" if "lr" in getattr(args, "explicit", {"lr"}) else f"the {args.recipe} recipe"
    elif args.recipe in ANNEAL_RECIPES:
        lr, lr_source = anneal_start_lr(args.recipe, model, init, *parse_init_step(args.init_step))
    else:
        lr, lr_source = DEFAULT_LR, "the default"
    warmup = args.warmup_steps
    if warmup is None:
        warmup = 0 if args.schedule == "linear_to_zero" else min(2000, steps // 10)
    return Plan(model=model, model_label=label, steps=steps, steps_source=steps_source, lr=lr, lr_source=lr_source,
                warmup_steps=warmup, horizon_tokens=args.horizon_tokens, tokens=tokens, tokens_source=tokens_source,
                notes=_schedule_notes(args, steps * tokens_per_step))


def _schedule_notes(args: argparse.Namespace, run_tokens: int) -> list[str]:
    """Schedule flags that a linear_to_zero run (an anneal) does not follow as one would read them:
    --final-lr-fraction was ignored, a --horizon-tokens past the run's length left the LR above
    0 at its last step, and one short of it left the last steps at 0, all unsaid (found by testers)."""
    explicit = getattr(args, "explicit", set())
    if args.schedule != "linear_to_zero":
        return []
    notes = []
    if "final_lr_fraction" in explicit:
        notes.append(f"--final-lr-fraction {args.final_lr_fraction:g} has no effect: linear_to_zero ends at 0 (the "
                     "fraction is the cosine schedule's floor)")
    if "horizon_tokens" in explicit and args.horizon_tokens is not None and args.horizon_tokens > run_tokens:
        notes.append(f"--horizon-tokens {args.horizon_tokens:,} is past the run's {run_tokens:,} tokens: the "
                     f"learning rate stops at {1 - run_tokens / args.horizon_tokens:.0%} of its start, not at 0 "
                     "(leave it out to anneal to 0 at the last step)")
    tokens_per_step = args.batch_size * args.seq_len
    if "horizon_tokens" in explicit and args.horizon_tokens is not None and \
            1 < (zero := -(-args.horizon_tokens // tokens_per_step)) < (steps := run_tokens // tokens_per_step):
        # The steps after it trained at LR 0, changing no weight, unsaid (found by a tester). Step `zero` (from 1)
        # is at 0 itself: "its last 4 steps" were 5 of 5. Where that is the first step, every step is at 0, which
        # LRSchedule.zero_lr_note says after these notes, in trainer.run and trainer.schedule alike: not twice.
        notes.append(f"--horizon-tokens {args.horizon_tokens:,} ends the decay on step {zero:,} of the run's "
                     f"{steps:,}: its last {steps - zero + 1:,} steps ({zero:,}-{steps:,}) train at learning rate 0 "
                     "and change no weight (leave it out to anneal to 0 at the last step)")
    return notes


def inspect_init(args: argparse.Namespace):
    """The --init-from checkpoint's metadata (None without --init-from)."""
    if not args.init_from:
        return None
    from trainer.weights import inspect_checkpoint

    step, source = parse_init_step(args.init_step)
    return inspect_checkpoint(args.init_from, step=step, step_source=source)


def check_data_vocab(args: argparse.Namespace, plan: Plan, init, paths: list[str] | DataLayout) -> None:
    """Refuse a model whose vocabulary is smaller than the data's tokenizer's, from the builds'
    reports, before anything is built: otherwise only the first batch with a larger id stops the
    run, after the model, the optimizer and the --init-from weights are in memory."""
    found = data_vocab_size(paths)
    if found is None or plan.model.vocab_size >= found[0]:
        return
    data_vocab, report = found
    if args.model:
        chosen = "model" in getattr(args, "explicit", {"model"})
        source = f"--model {args.model}" if chosen else f"the {args.recipe} recipe's model {args.model}"
        fix = "pick a model with at least the data's vocabulary"
    elif init is not None:
        source = f"the --init-from checkpoint {init.path}"
        fix = "start from a checkpoint trained with the data's tokenizer, or build the mix with the checkpoint's"
    else:
        source, fix = f"the default model {DEFAULT_MODEL}", "pass --model with at least the data's vocabulary"
    raise DataError(f"{source} has a vocabulary of {plan.model.vocab_size:,} ids, smaller than the {data_vocab:,} of "
                    f"the tokenizer the data was built with ({report}); {fix}")


def check_data_special_ids(args: argparse.Namespace, plan: Plan, init, paths: list[str] | DataLayout) -> None:
    """Refuse data whose builds' reports give another EOS id (or pad id; builds before 2026-12-06 record none) than the
    model's: the data was tokenized with another tokenizer than the model's, whose ids mean other
    text to it, and the vocabulary check passes a smaller one (a gpt2 build trained into a dolma2
    checkpoint; found by a tester). The model's ids are the --init-from checkpoint's, else the
    preset's; a --resume checkpoint's config must equal that model's (the trainer refuses another)."""
    from_init = init is not None and init.model is not None
    model = init.model if from_init else plan.model
    layout = scan_data(paths)
    for folder, _, _ in reported_builds(layout):
        report = folder / REPORT_FILE
        data = layout.report(folder)
        for key, what in (("eos_token_id", "EOS"), ("pad_token_id", "pad")):
            theirs, ours = data.get(key), getattr(model, key)
            if not isinstance(theirs, int) or isinstance(theirs, bool) or theirs == ours:
                continue
            fix = "the model presets speak the dolma2 tokenizer: build the mix with it"
            if from_init:
                source = f"the --init-from checkpoint {init.path}"
                fix = "start from a checkpoint of the data's tokenizer, or build the mix with the checkpoint's"
            elif args.model and "model" in getattr(args, "explicit", {"model"}):
                source = f"--model {args.model}"
            elif args.model:
                source = f"the {args.recipe} recipe's model {args.model}"
            else:
                source = f"the default model {DEFAULT_MODEL}"
            raise DataError(f"{source} has {what} id {ours}, but the data was built with a tokenizer whose {what} id "
                            f"is {theirs} ({_describe_tokenizer(data)}; {report}): its ids mean other text to this "
                            f"model; {fix}")


# --mix given twice: what to do instead (trainer.run's and trainer.schedule's error).
ONE_MIX_HINT = " manifest: for several builds, pass their directories together as --data DIR DIR ..."


# ----------------------------------------------------------------------------- trainer.schedule
def build_schedule_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.schedule", formatter_class=HelpFormatter,
        description="Print a run's length and learning-rate schedule as JSON, without training.\n\n"
                    "  python -m trainer.schedule --recipe olmo2-7b-anneal --tokens 50B\n"
                    "  python -m trainer.schedule --recipe olmo2-7b-anneal --mix manifests/50B.json "
                    "--init-step stage1-step928646-tokens3896B")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mix", action=GivenOnce, hint=ONE_MIX_HINT,
                     help="a manifest (its built output) or a built mix directory (default: none)")
    src.add_argument("--data", nargs="+", action="extend",
                     help="built mix directory or token files, read together (default: none)")
    src.add_argument("--tokens", type=parse_count, help="a token budget instead of built data, e.g. 50B "
                                                        "(default: none)")
    add_plan_arguments(p)
    return p


def _unbuilt_budget(manifest_path: str) -> tuple[int, str] | None:
    """(budget, where it comes from) of a mix manifest whose output holds no finished build,
    else None: a schedule is planned before the mix is built (the README's --mix examples
    failed until it was). The built mix's tokens, which trainer.run counts, differ from the
    budget by the cut's few tokens per source."""
    from dolmino.errors import ManifestError
    from dolmino.manifest import load_manifest

    path = Path(manifest_path)
    if not path.is_file():
        return None
    try:
        manifest = load_manifest(str(path))
    except ManifestError:
        return None  # mix_output_dir names what is wrong with it
    if manifest.kind == "pool" or not manifest.output or "://" in manifest.output:
        return None
    if (Path(manifest.output) / "report.json").is_file():
        return None
    budget = manifest.budget_for()
    if not budget:
        return None
    return budget, f"{path.name}'s budget, not built yet"


def schedule_main(argv: list[str] | None = None) -> int:
    parser = build_schedule_parser()
    args = parse_with_recipe(parser, argv)
    try:
        tokens, source, paths = None, None, []
        if args.tokens is not None:
            tokens, source = args.tokens, "--tokens"
        elif args.mix and (planned := _unbuilt_budget(args.mix)) is not None:
            tokens, source = planned
        elif args.mix or args.data:
            if args.mix and (Path(args.mix).is_file() or "://" in args.mix):  # a URL: said by mix_output_dir
                paths = built_mix_paths(args.mix, "trainer.schedule")
                if paths is None:
                    return 2
            else:
                paths = [args.mix] if args.mix else list(args.data)
                # as trainer.run says it: through Path, s3://b/m read "data path s3:/b/m does not exist" (a reviewer)
                if remote := next((d for d in paths if "://" in d), None):
                    print(redact(f"trainer.schedule: error: --data {remote}: {remote_build_hint(remote)}"),
                          file=sys.stderr)
                    return 2
            paths = scan_data(paths)  # walked once for both checks
            tokens, source = data_tokens(paths)
        elif args.steps is None and args.horizon_tokens is not None:
            stop = getattr(args, "stop_tokens", None) if "horizon_tokens" not in args.explicit else None
            # SPEC: 7B ran the 5T cosine and stopped at 4T; the 5T length was shown (a tester)
            tokens, source = (stop, f"the {args.recipe} recipe's stop") if stop else (args.horizon_tokens,
                                                                                     "the schedule horizon")
        init = inspect_init(args)
        plan = make_plan(args, tokens, source, init)
        for note in plan.notes:
            print(f"trainer.schedule: warning: {note}", file=sys.stderr)
        check_data_vocab(args, plan, init, paths)  # what trainer.run would refuse, refused here too
        check_data_special_ids(args, plan, init, paths)
        if paths:  # data too short for one batch printed a 1-step run at LR 0 that trainer.run refuses (a tester)
            check_batch_fits(paths, args.seq_len, args.batch_size)
        try:
            tc = TrainConfig(seq_len=args.seq_len, global_batch_size=args.batch_size, micro_batch_size=1,
                             max_steps=plan.steps, lr=plan.lr, warmup_steps=plan.warmup_steps, schedule=args.schedule,
                             final_lr_fraction=args.final_lr_fraction, horizon_tokens=plan.horizon_tokens)
        except ValueError as exc:
            raise ValueError(in_flag_names(str(exc))) from None
        schedule = LRSchedule.from_config(tc)
    except (ValueError, FileNotFoundError) as exc:
        print(f"trainer.schedule: error: {exc}", file=sys.stderr)
        return 2
    if note := schedule.zero_lr_note(0, plan.steps):  # as trainer.run says it
        print(f"trainer.schedule: warning: {note}", file=sys.stderr)
    out = {
        "recipe": args.recipe, "model": plan.model_label,
        "parameters": {"non_embedding": plan.model.num_params(include_embedding=False),
                       "total": plan.model.num_params()},
        "batch_size": tc.global_batch_size, "seq_len": tc.seq_len, "tokens_per_step": tc.tokens_per_step,
        "tokens": plan.tokens, "tokens_source": plan.tokens_source,
        "steps": plan.steps, "steps_source": plan.steps_source,
        "schedule": tc.schedule, "warmup_steps": tc.warmup_steps, "horizon_steps": tc.horizon_steps,
        "lr": plan.lr, "lr_source": plan.lr_source,
        # Numbered as the trainer's log and metrics.jsonl number them, from 1 (lr_at takes the
        # 0-based index: step k + 1 is OLMo-core's step k + 1); the JSON said step 0 for step 1.
        "lr_at": {label: {"step": k + 1, "lr": schedule.lr_at(k)}
                  for label, k in schedule.key_steps(plan.steps).items()},
    }
    if init is not None:
        out["init_from"] = init.provenance()
    print(json.dumps(out, indent=2))
    return 0
