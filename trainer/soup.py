"""Model soup: average the weights of several checkpoints (OLMo 2's final models).

OLMo 2 7B is the uniform average of three mid-training runs on the same 50B-token Dolmino
mix with different data orders; 13B of three 100B runs and one 300B run. The runs share one
starting point, so their weights lie in one basin and the average is a better model than
each ingredient.

    python -m trainer.soup OUT_DIR CKPT1 CKPT2 [CKPT3 ...] [--dtype bfloat16] [--max-shard-size 5GB]

Ingredients are any format trainer.weights reads: this trainer's checkpoints (or save dirs,
meaning their latest), Hugging Face Olmo2 directories, OLMo-core DCP checkpoints; they may
be mixed. OUT_DIR gets both formats: `model.pt` + `config.json` (loads and resumes nothing,
but exports, evaluates and seeds `--init-from` like any checkpoint) and `hf/`, an
Olmo2ForCausalLM directory written as `trainer.export_hf` writes one (sharded past
--max-shard-size, with the tokenizer files of the first HF ingredient that has them, else of
the tokenizer the first ingredient that says was trained with, taken only from ingredients whose
tokenizer was compared with the others'; one line says so where none does).

Why it scales: every ingredient is opened lazily (safetensors / memory-mapped model.pt /
DCP key by key) and the average is built one tensor at a time, summed in float64 and cast
back to the first ingredient's dtype (or --dtype). Memory is the averaged model plus one
tensor, whatever the number of ingredients; the float64 sum does not depend on the order
the ingredients are listed in (up to that final cast). Names, shapes, model configs and
tokenizers (EOS / pad ids; the tokenizer.json an HF ingredient holds or a trainer checkpoint, its
data's builds or a soup record, by SHA-256, and where those differ by what the files encode:
vocab, merges, added tokens, normalizer, pre-tokenizer, post-processor, decoder, whatever their
formatting) are checked for every ingredient, and OUT_DIR for being writable, before anything is
averaged (an ingredient that does not say which tokenizer.json it was trained with, or whose file
of other bytes cannot be read to compare, is not refused: one line names it); an ingredient with
NaN / inf weights is refused as its tensors are averaged. OUT_DIR must not hold a model already,
be an ingredient or lie inside one (or hold one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch

from dolmino.s3 import local_path
from trainer.checkpoint import CONFIG_FILE, MODEL_FILE, write_failure
from trainer.cli import HelpFormatter
from trainer.distributed import one_process_refusal
from trainer.export_hf import DEFAULT_MAX_SHARD_SIZE, size_arg

HF_SUBDIR = "hf"


def average_state_dicts(state_dicts: list[dict]) -> dict:
    """Uniform average of in-memory state dicts (float64 sum, cast back); for small models and tests."""
    if not state_dicts:
        raise ValueError("need at least one checkpoint to average")
    keys = set(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd) != keys:
            missing, extra = sorted(keys - set(sd)), sorted(set(sd) - keys)
            raise ValueError(f"checkpoint {i} has different tensors (missing {missing[:5]}, extra {extra[:5]})")
    return {key: _average([sd[key] for sd in state_dicts], key, state_dicts[0][key].dtype) for key in state_dicts[0]}


def _average(tensors: list[torch.Tensor], key: str, dtype: torch.dtype) -> torch.Tensor:
    ref = tensors[0]
    for i, t in enumerate(tensors[1:], start=1):
        if t.shape != ref.shape:
            raise ValueError(f"{key}: shape {tuple(t.shape)} in checkpoint {i} != {tuple(ref.shape)}")
    if not ref.is_floating_point():
        return ref.clone()
    total = torch.zeros(ref.shape, dtype=torch.float64)
    for t in tensors:
        total += t.to(torch.float64)
    return (total / len(tensors)).to(dtype)


def _streamed_average(readers: list, name: str, dtype: torch.dtype | None) -> torch.Tensor:
    """One tensor averaged over the ingredients, reading one ingredient's copy at a time. A NaN /
    inf (a diverged run, a damaged file) is refused here, as it is read: it was averaged in unsaid
    (found by a tester)."""
    total, shape, first_dtype = None, None, None
    for i, reader in enumerate(readers):
        t = reader.get(name)
        if total is None:
            if not t.is_floating_point():
                return t.clone()
            shape, first_dtype = t.shape, t.dtype
            total = torch.zeros(shape, dtype=torch.float64)
        elif t.shape != shape:
            raise ValueError(f"{name}: shape {tuple(t.shape)} in checkpoint {i} != {tuple(shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{reader.info.path}: tensor {name} holds non-finite values (NaN or inf: a diverged "
                             f"run or a damaged file); leave this checkpoint out of the soup")
        total += t.to(torch.float64)
        del t
    return (total / len(readers)).to(dtype or first_dtype)


def _check_soup_output(out: Path, checkpoints: list, infos: list) -> None:
    """Refuse an output that is an ingredient, lies inside one or holds one, or holds a model (an
    earlier soup, a Hugging Face model): the soup replaced it without a word, or its config.json
    replaced the model's, which transformers could then not load (found by testers)."""
    resolved = out.resolve()
    for given, info in zip(checkpoints, infos):
        for path in {Path(given).resolve(), Path(info.path).resolve()}:
            if resolved == path:
                raise ValueError(f"{out} is one of the soup's checkpoints; write the soup into a directory of its own")
            # The soup writes model.pt, config.json and hf/ into OUT: an ingredient there (OUT/hf) would be
            # replaced; one in another subdirectory of OUT (exp/ingredients/a into exp) is not touched.
            if path in resolved.parents or (resolved / HF_SUBDIR) == path or (resolved / HF_SUBDIR) in path.parents:
                where = (f"the soup's output {out} is inside the checkpoint {given}" if path in resolved.parents
                         else f"the checkpoint {given} is in {out / HF_SUBDIR}, which the soup writes")
                raise ValueError(f"{where}; write the soup into a directory of its own")
    if not out.exists():
        return
    if (out / MODEL_FILE).exists():
        raise ValueError(f"{out} already holds a model ({MODEL_FILE}, e.g. an earlier soup); remove it or write the "
                         f"soup into another directory")
    if (out / HF_SUBDIR).is_dir() and any((out / HF_SUBDIR).iterdir()):
        raise ValueError(f"{out / HF_SUBDIR} holds files (another model's Hugging Face directory?), which the soup's "
                         f"would replace; remove it or write the soup into another directory")
    try:
        held = json.loads((out / CONFIG_FILE).read_text()) if (out / CONFIG_FILE).is_file() else {}
    except (OSError, ValueError):
        held = {}
    if (isinstance(held, dict) and "model_type" in held) or (out / "model.safetensors").exists():
        raise ValueError(f"{out} holds a Hugging Face model (config.json, model.safetensors); write the soup into a "
                         "directory of its own")


def _check_distinct(checkpoints: list, infos: list) -> None:
    """Refuse one checkpoint given twice (`run run`, a save dir and its step dir, a link): it
    doubled its weight in the average, unsaid (found by a tester)."""
    seen: dict[Path, str] = {}
    for given, info in zip(checkpoints, infos):
        path = Path(info.path).resolve()
        if path in seen:
            raise ValueError(f"{seen[path]} and {given} are the same checkpoint ({path}); give each ingredient once "
                             f"(twice doubles its weight in the average)")
        seen[path] = str(given)


# Model config fields ingredients may differ in: init_std only draws fresh weights (a soup has
# none), vocab_multiple acts only through padded_vocab_size (compared), and the EOS / pad ids are
# compared with the tokenizer (_check_same_tokenizer).
# vocab_size: HF configs state the padded size, trainer configs the tokenizer's, for the same
# tensors (padded_vocab_size, compared, is what the weights hold).
_UNCOMPARED_FIELDS = ("init_std", "vocab_multiple", "vocab_size", "eos_token_id", "pad_token_id")


def _config_differences(cfg, first) -> list[str]:
    """Every other field, not only the shape: the soup's config is the first ingredient's, so
    ingredients of other context lengths or vocabulary sizes gave a soup that depended on their
    order (found by a tester)."""
    mine, theirs = cfg.to_dict(), first.to_dict()
    mine["padded_vocab_size"], theirs["padded_vocab_size"] = cfg.padded_vocab_size, first.padded_vocab_size
    return [f"{key} {mine.get(key)} != {value}" for key, value in theirs.items()
            if key not in _UNCOMPARED_FIELDS and mine.get(key) != value]


def _claim_output(out: Path) -> tuple[list[Path], list[Path]]:
    """Create OUT and a file in it before anything is averaged: an OUT that cannot be written
    (read-only, /proc) failed only after every ingredient was read (found by a tester). Returns
    what the soup will write there that is not there yet, and the directories it made (deepest
    first), to remove if it fails."""
    from dolmino.storage import make_writable_dir

    made = [p for p in (out, *out.parents) if not p.exists()]
    if reason := make_writable_dir(out):
        _remove([], made)
        raise ValueError(f"{out} cannot be written ({reason}); give the soup a directory you can write")
    return [out / name for name in (MODEL_FILE, CONFIG_FILE, HF_SUBDIR) if not (out / name).exists()], made


def _remove(written: list[Path], made: list[Path]) -> None:
    """Remove what a failed soup wrote, then the directories it made if nothing else is in them
    now: removing the highest one whole took a sibling soup written there meanwhile (a reviewer)."""
    for path in written:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for directory in made:  # deepest first
        try:
            directory.rmdir()
        except OSError:  # not empty (another writer's files), or gone
            break


def _check_same_tokenizer(checkpoints: list, infos: list) -> tuple[list, set, str | None]:
    """Refuse models of different tokenizers: their ids mean different text, and the average was
    written with the first one's EOS and tokenizer.json, unsaid (found by testers). Compared: the
    EOS and pad ids every config states, and which tokenizer.json each ingredient was trained with
    where it says (tokenizer_files.tokenizer_identity: an HF directory's own file, what a trainer
    checkpoint or its data's builds record, with the control-token policy of its data); tokenizers of
    one vocabulary size and EOS with other ids were averaged unsaid. Files of other bytes are compared
    by what they encode (tokenizer_files.tokenizer_encoding): a released OLMo 2 directory's tokenizer.json, rewritten by
    save_pretrained, was refused with runs on dolma2 builds though its ids mean the same text (found by
    a tester). Returns each ingredient's identity (or why it does not say), the indices of those whose
    other bytes could not be read to compare, and the one line naming them."""
    from trainer.tokenizer_files import encoding_difference, tokenizer_encoding, tokenizer_identity

    def ids(info) -> tuple:
        return (None, None) if info.model is None else (info.model.eos_token_id, info.model.pad_token_id)

    first = ids(infos[0])
    for i, info in enumerate(infos[1:], start=1):
        named = zip(("EOS id", "pad id"), ids(info), first)
        differ = [f"{what} {a} != {b}" for what, a, b in named if a != b and a is not None and b is not None]
        if differ:
            raise ValueError(f"checkpoints of different tokenizers cannot be averaged (their ids mean different text): "
                             f"{checkpoints[i]} vs {checkpoints[0]}: {'; '.join(differ)}")
    identities = [tokenizer_identity(info) for info in infos]
    said = [(i, found["control_tokens"]) for i, found in enumerate(identities) if isinstance(found, dict)]
    if other := next(((i, p) for i, p in said if p != said[0][1]), None):
        # one file, other ids for "<|endoftext|>" in text: hf/ got the first's tokenizer config (a tester)
        raise ValueError(f"checkpoints trained on data of different control-token policies cannot be averaged: "
                         f"{checkpoints[other[0]]} ({other[1]}) vs {checkpoints[said[0][0]]} ({said[0][1]}): "
                         "tokenizer.control_tokens")
    groups: dict[str, list] = {}  # one file's ingredients (by its SHA-256), in the order given
    for i, found in enumerate(identities):
        if isinstance(found, dict):
            groups.setdefault(found["tokenizer_sha256"], []).append(i)
    if len(groups) < 2:
        return identities, set(), None
    encodings = {digest: tokenizer_encoding(identities[members[0]]) for digest, members in groups.items()}
    reference = next((d for d, parts in encodings.items() if isinstance(parts, dict)), next(iter(groups)))
    r = groups[reference][0]
    unread = []
    for digest, members in groups.items():
        if digest == reference:
            continue
        i = members[0]
        if isinstance(encodings[digest], str) or isinstance(encodings[reference], str):
            unread.append((members, encodings[digest] if isinstance(encodings[digest], str) else encodings[reference]))
        elif part := encoding_difference(encodings[digest], encodings[reference]):
            raise ValueError(f"checkpoints of different tokenizers cannot be averaged (their ids mean different text): "
                             f"{checkpoints[i]} vs {checkpoints[r]}: tokenizer.json sha256 "
                             f"{_describe_identity(identities[i])} != {_describe_identity(identities[r])}, and their "
                             f"{part} differ")
    if not unread:
        return identities, set(), None
    (members, why), more = unread[0], sum(len(m) for m, _ in unread) - 1
    others = f" (and {more} more ingredient{'s' if more > 1 else ''})" if more else ""
    note = (f"note: {checkpoints[members[0]]}{others} was trained with tokenizer.json "
            f"{_describe_identity(identities[members[0]])}, other bytes than {checkpoints[r]}'s "
            f"{_describe_identity(identities[r])}, and the two could not be compared by what they encode ({why}), "
            f"so it was not checked to be the same tokenizer")
    return identities, {i for m, _ in unread for i in m}, note


def _describe_identity(found: dict) -> str:
    name = f"{found['name']}, " if found.get("name") else ""
    return f"{found['tokenizer_sha256'][:12]}... ({name}{found['source']})"


def _unchecked_note(checkpoints: list, identities: list) -> str | None:
    """The one line saying which ingredients' tokenizers could not be compared with the others',
    where some say and some do not (where none says, the hf/ note says why)."""
    unsaid = [(given, why) for given, why in zip(checkpoints, identities) if isinstance(why, str)]
    if not unsaid or len(unsaid) == len(identities):
        return None
    more = f" (and {len(unsaid) - 1} more ingredients)" if len(unsaid) > 1 else ""
    return (f"note: {unsaid[0][0]}{more} does not say which tokenizer it was trained with ({unsaid[0][1]}), so it "
            f"was not checked to be the other ingredients'")


def _runs_note(checkpoints: list, infos: list) -> str | None:
    """The line saying that ingredients are not finished runs of one starting point, as this trainer's
    checkpoints record it: a soup averages anneals of one checkpoint (one basin) at their ends, and the
    save dir of a run still going (its latest, mid-schedule) or anneals of two base models were averaged
    unsaid (found by a tester). A line, not a refusal: averaging checkpoints along one run is a choice."""
    runs = [(given, info) for given, info in zip(checkpoints, infos) if info.format == "trainer" and info.step]
    said = []
    unfinished = [(given, info.step, info.train["max_steps"]) for given, info in runs
                  if isinstance(info.train, dict) and isinstance(info.train.get("max_steps"), int)
                  and info.step < info.train["max_steps"]]
    if unfinished:
        given, step, steps = unfinished[0]
        more = f" (and {len(unfinished) - 1} more)" if len(unfinished) > 1 else ""
        said.append(f"{given}{more} is at step {step:,} of its run's {steps:,}, before its learning rate reached the "
                    f"schedule's end (a run not finished, or a save dir whose latest is an intermediate checkpoint)")
    starts: dict[str, str] = {}
    for given, info in runs:
        starts.setdefault((info.init or {}).get("path") or "a random initialisation", str(given))
    if len(starts) > 1:
        shown = "; ".join(f"{given} from {start}" for start, given in list(starts.items())[:3])
        said.append(f"the ingredients started from different checkpoints ({shown}): their weights need not lie in one "
                    f"basin, as those of anneals of one checkpoint do")
    return f"note: {'; '.join(said)}" if said else None


def soup(out_dir: str | Path, checkpoints: list[str | Path], dtype: str | None = None,
         write_hf: bool = True, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
         log: Callable[[str], None] | None = None) -> Path:
    """Average the model weights of `checkpoints` into `out_dir` (trainer format and `hf/`, its
    weights sharded past `max_shard_size` bytes). `log` gets the line saying that `hf/` has no
    tokenizer files, where no ingredient says which tokenizer it was trained with, and the line
    naming the ingredients whose tokenizer could not be compared with the others', and the one naming
    trainer checkpoints that are not finished runs of one starting point."""
    from trainer.export_hf import write_hf_model
    from trainer.tokenizer_files import checkpoint_tokenizer, no_tokenizer_note, write_tokenizer
    from trainer.weights import WeightReader, check_compatible, inspect_checkpoint

    from trainer.checkpoint import check_output_dir

    if len(checkpoints) < 2:
        raise ValueError("a soup needs at least two checkpoints")
    check_output_dir(out_dir, "the soup")  # an ingredient's save dir was taken over (found by a tester)
    infos = [inspect_checkpoint(c) for c in checkpoints]
    _check_soup_output(Path(out_dir), checkpoints, infos)
    _check_distinct(checkpoints, infos)
    first = infos[0]
    if first.model is None:
        raise ValueError(f"{first.describe()} does not say its number of attention heads")
    for i, info in enumerate(infos[1:], start=1):
        differ = _config_differences(info.model, first.model) if info.model is not None else []
        if differ:
            raise ValueError(f"checkpoints have different model configs; only runs of one model config can be "
                             f"averaged: {checkpoints[i]} vs {checkpoints[0]}: {'; '.join(differ)}")
        try:
            check_compatible(info, first.model)
        except ValueError as exc:
            raise ValueError(f"checkpoint {i} ({checkpoints[i]}) has different tensors than {checkpoints[0]}: "
                             f"{exc}") from None
    identities, uncompared, uncompared_note = _check_same_tokenizer(checkpoints, infos)
    # hf/'s tokenizer files are those of an ingredient whose tokenizer was compared with the others', where any was
    # (an HF directory's slow vocab.json + merges.txt went first, whatever the other ingredients were trained with)
    known = [info for i, (info, found) in enumerate(zip(infos, identities))
             if isinstance(found, dict) and i not in uncompared]
    tokenizer = checkpoint_tokenizer(known or infos) if write_hf else None
    if log is not None:
        for note in (_unchecked_note(checkpoints, identities), uncompared_note, _runs_note(checkpoints, infos)):
            if note:
                log(note)
    names = list(first.shapes)
    out_dtype = getattr(torch, dtype) if dtype else None
    out_dir = Path(out_dir)
    written, made = _claim_output(out_dir)
    tmp = out_dir / f".{MODEL_FILE}.tmp{os.getpid()}"
    try:
        readers = [WeightReader(info) for info in infos]
        try:
            averaged = {name: _streamed_average(readers, name, out_dtype) for name in names}
        finally:
            for r in readers:
                r.close()
        config = {"model": first.model.to_dict(), "soup": [info.provenance() for info in infos]}
        if first.train is not None:
            config["train"] = first.train
        try:  # a failed write was a traceback (found by a tester); torch.save reports a full disk as a RuntimeError
            torch.save(averaged, tmp)
            os.replace(tmp, out_dir / MODEL_FILE)
            (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
            if write_hf:
                hf_source = next((info for info in infos if info.format == "hf"), None)
                hf_dir = write_hf_model(out_dir / HF_SUBDIR, first.model, names, averaged.__getitem__,
                                        next(iter(averaged.values())).dtype,
                                        config=hf_source.hf_config if hf_source is not None else None,
                                        max_shard_size=max_shard_size)
                if isinstance(tokenizer, dict):
                    write_tokenizer(hf_dir, tokenizer)
                elif log is not None:
                    log(no_tokenizer_note(hf_dir, tokenizer))
        except (OSError, RuntimeError) as exc:
            where = getattr(exc, "filename", None) or out_dir
            raise ValueError(f"writing the soup to {where} failed: {write_failure(out_dir / MODEL_FILE, exc)}; "
                             f"give the soup a directory you can write, with room for the model") from exc
    except BaseException:
        _remove([tmp, *written], made)
        raise
    return out_dir


def main(argv: list[str] | None = None) -> int:
    if (refused := one_process_refusal("soup", "trainer.soup")) is not None:
        return refused
    parser = argparse.ArgumentParser(prog="python -m trainer.soup", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("out", type=local_path, help="output directory for the averaged model")
    parser.add_argument("checkpoints", nargs="+", type=local_path,
                        help="checkpoint directories (save dirs: their latest), HF Olmo2 or OLMo-core checkpoints")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="dtype of the average (default: the first ingredient's)")
    parser.add_argument("--no-hf", dest="hf", action="store_false",
                        help=f"do not also write the Hugging Face directory OUT/{HF_SUBDIR} (default: write it)")
    parser.add_argument("--max-shard-size", type=size_arg, default=DEFAULT_MAX_SHARD_SIZE, metavar="SIZE",
                        help=f"OUT/{HF_SUBDIR}'s weights are split into shards of at most SIZE (e.g. 5GB, 500MB, 2GiB) "
                             "with model.safetensors.index.json, as trainer.export_hf and save_pretrained do "
                             "(default: 5GB)")
    args = parser.parse_args(argv)
    notes: list[str] = []
    try:
        out = soup(args.out, args.checkpoints, dtype=args.dtype, write_hf=args.hf, max_shard_size=args.max_shard_size,
                   log=notes.append)
    except (OSError, ValueError) as exc:  # OSError: e.g. an ingredient that cannot be read
        print(f"soup: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"soup: {note}", file=sys.stderr)
    print(f"averaged {len(args.checkpoints)} checkpoints into {out}" + (f" (and {out / HF_SUBDIR})" if args.hf else ""))
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
