"""Which tokenizer a checkpoint was trained with, as the files a Hugging Face directory holds.

An exported model without its tokenizer cannot be used as a released OLMo 2 directory is
(`AutoTokenizer.from_pretrained(OUT)` fails). Nothing is guessed from the model's vocabulary
size or EOS id: a checkpoint says which tokenizer through what `trainer.run` recorded in its
config.json (`data_tokenizer`), its data's builds (report.json tokenizer_sha256, manifest.json),
an HF directory's own files, a soup's `hf/` or ingredients, or OLMo-core's experiment config
naming the dolma2 tokenizer. `trainer.export_hf` and `trainer.soup` write what
`checkpoint_tokenizer` finds (`write_tokenizer`), or say in one line why there is none;
`trainer.soup` refuses ingredients whose `tokenizer_identity` (the tokenizer.json's SHA-256) differ
where their definitions do not encode alike (`tokenizer_encoding`).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.config import ModelConfig

if TYPE_CHECKING:
    from trainer.data import DataLayout

# What AutoTokenizer.from_pretrained reads from a Hugging Face directory (a fast tokenizer's
# tokenizer.json, a slow GPT-2 one's vocab.json + merges.txt), and generation_config.json, in which
# an HF source's own generate() settings (its stop ids) ride.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
GENERATION_CONFIG = "generation_config.json"
# what `data_tokenizer` says of data whose builds encoded control-token strings in text differently:
# trainer.run warns of it, as training on it goes on with no tokenizer recorded
MIXED_CONTROL_TOKENS = "builds of different control-token policies"
DOLMA2_NAME = "allenai/dolma2-tokenizer"
_SOUP_DEPTH = 4  # a soup of soups of ...: followed this far through its ingredients


class _NotSaid(Exception):
    """Why a checkpoint does not say which tokenizer it was trained with (one sentence)."""


def checkpoint_tokenizer(infos: list, depth: int = 0) -> dict[str, bytes] | str:
    """The files (name -> bytes) of the tokenizer the first of `infos` that says was trained with,
    else why none says (one sentence: the first asked). An export without them could not be used as a
    released OLMo 2 directory is: AutoTokenizer.from_pretrained(OUT) failed (found by a tester).
    Nothing is guessed from the model's vocabulary size or EOS id: only an HF directory's own
    files, what a trainer checkpoint's config.json records, else its data (its builds' report.json
    tokenizer_sha256 and manifest.json), a soup's hf/ or ingredients, or OLMo-core's experiment
    config naming the dolma2 tokenizer say which. HF sources go first, as a soup's config.json is its
    first HF ingredient's."""
    reasons = []
    for info in sorted(infos, key=lambda i: i.format != "hf"):
        try:
            if info.format == "hf":
                return _hf_dir_tokenizer(Path(info.path))
            if info.format == "trainer":
                return _trainer_tokenizer(info, depth)
            return _olmo_core_tokenizer(info)
        except _NotSaid as exc:
            reasons.append(str(exc))
    return reasons[0] if reasons else "no checkpoint says"


def _hf_dir_tokenizer(path: Path) -> dict[str, bytes]:
    files = {name: (path / name).read_bytes() for name in (*TOKENIZER_FILES, GENERATION_CONFIG)
             if (path / name).is_file()}
    if "tokenizer.json" not in files and "vocab.json" not in files:
        raise _NotSaid(f"the Hugging Face directory {path} holds no tokenizer files")
    return files


def _trainer_says(info) -> tuple[str, object]:
    """Where a trainer checkpoint (or soup) says which tokenizer it was trained with, as (kind,
    what): ("hf", a soup's hf/ directory), ("soup", its ingredients), ("record", what trainer.run
    kept in config.json from the data's builds), ("data", its data_paths: checkpoints from before
    the record). One walk for both the files (`checkpoint_tokenizer`) and the identity
    (`tokenizer_identity`), which had each their own copy of it (a reviewer)."""
    from trainer.checkpoint import CONFIG_FILE, load_json_file

    path = Path(info.path)
    config = load_json_file(path / CONFIG_FILE)
    config = config if isinstance(config, dict) else {}
    if "soup" in config:
        if (path / "hf" / "tokenizer.json").is_file():  # written with the soup
            return "hf", path / "hf"
        return "soup", config["soup"]
    if isinstance(config.get("tokenizer"), dict):
        return "record", config["tokenizer"]
    paths = config.get("data_paths")
    if not paths:
        raise _NotSaid(f"the checkpoint {path} records no training data (config.json data_paths)")
    return "data", [str(p) for p in paths]


def _with_control_tokens(record: dict, checkpoint: Path) -> dict:
    """A trainer record from before it kept the data's control-token policy, with the policy of its data
    (config.json data_paths) where that is still here (and of the recorded tokenizer.json); else the record
    as it is ("dolma")."""
    from trainer.checkpoint import CONFIG_FILE

    if "control_tokens" in record:
        return record
    try:
        written = (checkpoint / CONFIG_FILE).stat().st_mtime_ns
    except OSError:
        written = None  # load_json_file says what is wrong with it
    data = _recorded_data_tokenizer(checkpoint.absolute(), written)
    if not isinstance(data, dict) or data.get("tokenizer_sha256") != record.get("tokenizer_sha256"):
        return record
    return {**record, "control_tokens": data["control_tokens"]}


@functools.lru_cache(maxsize=64)
def _recorded_data_tokenizer(checkpoint: Path, written: int | None) -> dict | str | None:
    """`data_tokenizer` of the data_paths in `checkpoint`'s config.json (as of its mtime `written`); None
    where it names none. Read once per checkpoint per process: a soup's identity check and its hf/ files,
    and trainer.run's evaluation (the recorded tokenizer, then the scoring), each scanned the data's builds
    again (a reviewer)."""
    from trainer.checkpoint import CONFIG_FILE, load_json_file

    config = load_json_file(checkpoint / CONFIG_FILE)
    paths = config.get("data_paths") if isinstance(config, dict) else None
    if not isinstance(paths, list) or not paths:
        return None
    return data_tokenizer([str(p) for p in paths])


def _trainer_tokenizer(info, depth: int) -> dict[str, bytes]:
    kind, said = _trainer_says(info)
    path = Path(info.path)
    if kind == "hf":
        return _hf_dir_tokenizer(said)
    if kind == "soup":
        return _soup_tokenizer(path, said, depth)
    try:
        if kind == "record":
            return _recorded_tokenizer(_with_control_tokens(said, path), info.model,
                                       f"the training data of the checkpoint {path}")
        return _data_tokenizer(said, info.model)
    except _NotSaid as exc:
        raise _NotSaid(f"{exc}{_init_tokenizer_hint(info)}") from None


def _init_tokenizer_hint(info) -> str:
    """Where the run started from a Hugging Face directory that holds tokenizer files: which, to copy
    if the data was tokenized with it. The note said only "copy those of the tokenizer the model was
    trained with", though the --init-from directory held them (found by a tester); they are not copied
    unasked, as data without a report may have been tokenized with another tokenizer."""
    init = info.init if isinstance(getattr(info, "init", None), dict) else {}
    start = Path(init["path"]) if init.get("format") == "hf" and isinstance(init.get("path"), str) else None
    held = [name for name in (*TOKENIZER_FILES, GENERATION_CONFIG) if start and (start / name).is_file()]
    if "tokenizer.json" not in held and "vocab.json" not in held:
        return ""
    return (f"; the run started from the Hugging Face directory {start}, whose {', '.join(held)} are the files to "
            f"copy if the data was tokenized with its tokenizer")


def _soup_tokenizer(path: Path, ingredients: list, depth: int) -> dict[str, bytes]:
    found = checkpoint_tokenizer(_soup_ingredients(path, ingredients, depth), depth + 1)
    if isinstance(found, str):
        raise _NotSaid(found)
    return found


def _soup_ingredients(path: Path, ingredients: list, depth: int) -> list:
    """The checkpoint infos of the ingredients a soup's config.json lists that can still be read
    here. The soup checked that they share one tokenizer, so any of them says it: one ingredient
    deleted since made a --no-hf soup say none (a reviewer)."""
    from trainer.weights import inspect_checkpoint

    if depth >= _SOUP_DEPTH:
        raise _NotSaid(f"the soup {path} nests soups deeper than {_SOUP_DEPTH}")
    infos, unread = [], []
    for ingredient in ingredients:
        where = ingredient.get("path") if isinstance(ingredient, dict) else None
        try:
            infos.append(inspect_checkpoint(where))
        except (OSError, ValueError, TypeError):
            unread.append(where)
    if not infos:
        raise _NotSaid(f"the soup {path}'s ingredient {unread[0] if unread else None} cannot be read here")
    return infos


def tokenizer_identity(info, depth: int = 0) -> dict | str:
    """Which tokenizer.json the checkpoint `info` was trained with, as {"tokenizer_sha256": the
    SHA-256 of its UTF-8 text (as a build's report.json records it), "name": its name where said,
    "source": where that is said, "path": where its text lies where recorded (`tokenizer_encoding`
    reads it), "subject": what was tokenized with it, "control_tokens": how control-token strings in its
    text became ids, "dolma" or "literal" (trainer.eval encodes so)}; else why the checkpoint does not say (one
    sentence). Read from where `checkpoint_tokenizer` finds the files (an HF directory's tokenizer.json, the record in a
    trainer checkpoint's config.json, its data's builds, a soup's hf/ or ingredients, OLMo-core's
    config naming dolma2), without needing the file itself: trainer.soup compares them before
    averaging, as models of tokenizers with one vocabulary size and EOS but other ids were averaged
    into a meaningless model, unsaid (found by a tester)."""
    try:
        if info.format == "hf":
            return _hf_dir_identity(Path(info.path))
        if info.format == "trainer":
            return _trainer_identity(info, depth)
        config = _olmo_core_dolma2_config(info)
        return {"tokenizer_sha256": _dolma2_sha256(), "name": DOLMA2_NAME,
                "source": f"named by OLMo-core's config {config}", "path": None,
                "subject": f"OLMo-core's config {config}", "control_tokens": "dolma"}
    except _NotSaid as exc:
        return str(exc)


def _hf_dir_identity(path: Path) -> dict:
    import hashlib

    file = path / "tokenizer.json"
    if not file.is_file():
        raise _NotSaid(f"the Hugging Face directory {path} holds no tokenizer.json")
    try:  # read as a build reads tokenizer.path (dolmino.tokenizer.tokenizer_json), so that the digests compare
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _NotSaid(f"{file} cannot be read ({exc})") from None
    return {"tokenizer_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "name": None,
            "source": f"of {file}", "path": str(file), "subject": f"the Hugging Face directory {path}", "own": True,
            "control_tokens": _hf_dir_control_tokens(path)}


def _hf_dir_control_tokens(path: Path) -> str:
    """"literal" where the directory's tokenizer_config.json sets split_special_tokens (what an export of a
    model trained on "literal" data writes, `_tokenizer_files`), else "dolma"."""
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "dolma"
    return "literal" if isinstance(config, dict) and config.get("split_special_tokens") is True else "dolma"


def _trainer_identity(info, depth: int) -> dict:
    from trainer.checkpoint import CONFIG_FILE

    kind, said = _trainer_says(info)
    path = Path(info.path)
    if kind == "hf":
        return _hf_dir_identity(said)
    if kind == "soup":
        for ingredient in _soup_ingredients(path, said, depth):
            found = tokenizer_identity(ingredient, depth + 1)
            if isinstance(found, dict):
                return found
        raise _NotSaid(f"no ingredient of the soup {path} says which tokenizer it was trained with")
    if kind == "record":
        digest = said.get("tokenizer_sha256")
        if not isinstance(digest, str) or not digest:
            raise _NotSaid(f"the training data of the checkpoint {path} records no tokenizer_sha256")
        where = said.get("path")
        return {"tokenizer_sha256": digest, "name": said.get("name"), "source": f"recorded in {path / CONFIG_FILE}",
                "path": where if isinstance(where, str) else None,
                "subject": f"the training data of the checkpoint {path}",
                "control_tokens": _with_control_tokens(said, path).get("control_tokens", "dolma")}
    record, folder = _data_tokenizer_record(said)
    return {"tokenizer_sha256": record["tokenizer_sha256"], "name": record.get("name"),
            "source": f"recorded in {folder / 'report.json'}", "path": record.get("path"),
            "subject": f"the build {folder}", "control_tokens": record["control_tokens"]}


# tokenizer.json fields that do not change which ids a text encodes to (nor the text ids decode to)
_NOT_ENCODING = ("version", "truncation", "padding")
# tokenizers' BPE model fields, as it reads them where a tokenizer.json written by another version leaves one out
_BPE_DEFAULTS = {"dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                 "fuse_unk": False, "byte_fallback": False, "ignore_merges": False}
# the parts a refusal names first: the ones that decide ids
_PART_ORDER = ("model", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder")


def tokenizer_encoding(found: dict) -> dict | str:
    """The parts of the tokenizer.json `found` (`tokenizer_identity`'s) names that decide how text
    encodes and ids decode, normalized so that two definitions of one tokenizer compare equal:
    transformers' save_pretrained rewrites the file (indented, merges as pairs, a post_processor that
    adds nothing, BPE fields another tokenizers version leaves out), so an OLMo 2 release's
    tokenizer.json and the packaged dolma2 one differ in SHA-256 though their ids mean the same text.
    Else why its text is not at hand (one sentence): a recorded digest whose file is not recorded or
    has changed since."""
    try:
        if found.get("own"):  # an HF directory's own file, hashed as read: compared whatever it holds
            text = Path(found["path"]).read_text(encoding="utf-8")
        else:
            text = _tokenizer_text(found["tokenizer_sha256"], found.get("path"), found["subject"])
    except (OSError, UnicodeDecodeError) as exc:
        return f"{found['path']} cannot be read ({exc})"
    except _NotSaid as exc:
        return str(exc)
    try:
        definition = json.loads(text)
    except ValueError:
        return {"text": text}
    if not isinstance(definition, dict):
        return {"text": definition}
    parts = {key: value for key, value in definition.items() if key not in _NOT_ENCODING}
    model = parts.get("model")
    if isinstance(model, dict) and model.get("type", "BPE") == "BPE":
        model = {**_BPE_DEFAULTS, **model, "type": "BPE"}
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):  # "" and none add the same nothing
            model[key] = model[key] or None
        if isinstance(model.get("merges"), list):  # "a b" (tokenizers < 0.20) and ["a", "b"] are one merge
            model["merges"] = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
        parts["model"] = model
    if isinstance(parts.get("added_tokens"), list):
        parts["added_tokens"] = sorted((_added_token(t, parts.get("normalizer")) for t in parts["added_tokens"]),
                                       key=lambda t: json.dumps(t, sort_keys=True))  # ids say, not their order
    if _adds_nothing(parts.get("post_processor")):
        parts["post_processor"] = None
    return parts


def _added_token(token, normalizer) -> dict:
    """What of an added token decides encoding: "normalized" only where a normalizer runs."""
    if not isinstance(token, dict):
        return {"token": token}
    special = token.get("special", False)
    kept = {"id": token.get("id"), "content": token.get("content"), "special": special}
    kept.update({key: token.get(key, False) for key in ("single_word", "lstrip", "rstrip")})
    if normalizer is not None:
        kept["normalized"] = token.get("normalized", not special)
    return kept


def _adds_nothing(processor) -> bool:
    """A post_processor that leaves a text's ids as the model encoded them: none, ByteLevel (offsets
    only), a template without special tokens (as save_pretrained writes one), or a sequence of those."""
    if processor is None:
        return True
    if not isinstance(processor, dict):
        return False
    kind = processor.get("type")
    if kind == "ByteLevel":
        return True
    if kind == "Sequence":
        return isinstance(processor.get("processors"), list) and all(map(_adds_nothing, processor["processors"]))
    if kind != "TemplateProcessing":
        return False

    def sequences(template) -> list | None:
        if not isinstance(template, list) or not all(isinstance(p, dict) and "Sequence" in p for p in template):
            return None
        return [(p["Sequence"] or {}).get("id") if isinstance(p["Sequence"], dict) else None for p in template]

    return sequences(processor.get("single")) == ["A"] and sequences(processor.get("pair")) == ["A", "B"]


def encoding_difference(a: dict, b: dict) -> str | None:
    """The first part (`tokenizer_encoding`'s) in which `a` and `b` differ, named as in tokenizer.json
    (model.vocab, added_tokens, ...); None where they encode alike."""
    keys = [k for k in _PART_ORDER if k in a or k in b] + sorted(k for k in {*a, *b} if k not in _PART_ORDER)
    for key in keys:
        if a.get(key) == b.get(key):
            continue
        if key == "model" and isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            first = ("type", "vocab", "merges")
            inner = [*first, *sorted(k for k in {*a[key], *b[key]} if k not in first)]
            return next(f"model.{k}" for k in inner if a[key].get(k) != b[key].get(k))
        return key
    return None


def _data_tokenizer(paths: list[str], model: ModelConfig | None) -> dict[str, bytes]:
    """The tokenizer.json the builds of `paths` were tokenized with: the one whose SHA-256 their
    report.json records (the packaged dolma2 one, or the file their manifest.json names)."""
    record, folder = _data_tokenizer_record(paths)
    return _recorded_tokenizer(record, model, f"the build {folder}")


def data_tokenizer(paths: list[str] | DataLayout) -> dict | str:
    """What the builds of `paths` (trainer.run's --data) record about their tokenizer, for
    trainer.run to keep in each checkpoint's config.json: name, tokenizer_sha256, EOS / pad / BOS
    ids, vocab_size, and the absolute path of a tokenizer.json that is not the packaged dolma2
    one (its manifest's tokenizer.path). An export found it only through the checkpoint's
    data_paths, so a checkpoint copied without its mix exported no tokenizer (found by a
    tester). Else why the data does not say (one sentence): no report, a build from before
    tokenizer_sha256."""
    try:
        return _data_tokenizer_record(paths)[0]
    except _NotSaid as exc:
        return str(exc)


def _data_tokenizer_record(paths: list[str] | DataLayout) -> tuple[dict, Path]:
    """(`data_tokenizer`'s record, the build it was read from)."""
    from dolmino.manifest import resolve_relative
    from trainer.data import DataError, DataLayout, scan_data
    from trainer.plan import reported_builds

    given = list(paths.paths if isinstance(paths, DataLayout) else paths)
    shown = ", ".join(given[:2]) + (f" and {len(given) - 2} more" if len(given) > 2 else "")
    try:
        layout = scan_data(paths)
        builds = reported_builds(layout)
    except (OSError, DataError) as exc:
        raise _NotSaid(f"the checkpoint's training data ({shown}) cannot be read here ({exc})") from None
    reported = {f for _, held, _ in builds for f in held}
    if unreported := [f for f in layout.files if f not in reported]:
        raise _NotSaid(f"the checkpoint's training data {unreported[0]} lies in no build with a report.json saying "
                       "which tokenizer made it")
    if not builds:
        raise _NotSaid(f"the checkpoint's training data ({shown}) holds no token files")
    reports = []
    for folder, _, _ in builds:
        try:
            report = layout.report(folder)  # read by the walk, once
        except DataError as exc:
            raise _NotSaid(str(exc)) from None
        if not report.get("tokenizer_sha256"):
            raise _NotSaid(f"{folder / 'report.json'} records no tokenizer_sha256 (a build from before it was "
                           "recorded)")
        reports.append((folder, report))
    folder, report = reports[0]
    if other := next((f for f, r in reports if r["tokenizer_sha256"] != report["tokenizer_sha256"]), None):
        raise _NotSaid(f"the checkpoint's training data holds builds of different tokenizers ({folder} and {other})")
    specs = [(f, _manifest_tokenizer(f)) for f, _ in reports]
    policies = [(f, _control_tokens(r, spec)) for (f, r), (_, spec) in zip(reports, specs)]
    if other := next((f for f, p in policies if p != policies[0][1]), None):
        raise _NotSaid(f"the checkpoint's training data holds {MIXED_CONTROL_TOKENS} ({folder} "
                       f"and {other}: tokenizer.control_tokens), which no one Hugging Face tokenizer encodes as both")
    spec = specs[0][1]
    record = {"name": report.get("tokenizer"), "tokenizer_sha256": report["tokenizer_sha256"],
              "eos_token_id": report.get("eos_token_id"), "pad_token_id": report.get("pad_token_id"),
              "bos_token_id": spec.get("bos_token_id"), "vocab_size": report.get("vocab_size"),
              "control_tokens": policies[0][1]}
    path = spec.get("path")
    if record["tokenizer_sha256"] != _dolma2_sha256() and isinstance(path, str):
        manifest_path = report.get("manifest_path")
        path = resolve_relative(os.path.dirname(manifest_path) if isinstance(manifest_path, str) else None, path)
        record["path"] = path if "://" in path else os.path.abspath(path)
    return record, folder


def _manifest_tokenizer(folder: Path) -> dict:
    """The tokenizer entry of the manifest.json a build wrote ({} where it has none or cannot be read)."""
    try:
        spec = json.loads((folder / "manifest.json").read_text()).get("tokenizer") or {}
    except (OSError, ValueError, AttributeError):
        spec = {}
    return spec if isinstance(spec, dict) else {}


def _control_tokens(report: dict, spec: dict) -> str:
    """A build's control-token policy (tokenizer.control_tokens): its report.json's, else its manifest.json's
    (builds from before the report recorded it), else the default "dolma"."""
    policy = report.get("control_tokens") or spec.get("control_tokens")
    return policy if isinstance(policy, str) else "dolma"


def _recorded_tokenizer(record: dict, model: ModelConfig | None, source: str) -> dict[str, bytes]:
    """The files of the tokenizer `record` (`data_tokenizer`'s) describes, as the data of
    `source` (a build, or a checkpoint's training data) was tokenized: the packaged dolma2 file
    where its SHA-256 is dolma2's, else the recorded path while it still has that SHA-256."""
    digest = record.get("tokenizer_sha256")
    if not isinstance(digest, str) or not digest:
        raise _NotSaid(f"{source} records no tokenizer_sha256")
    if (bos := record.get("bos_token_id")) is not None:
        raise _NotSaid(f"{source} has BOS id {bos} before every document, which a Hugging Face tokenizer.json "
                       "alone does not add")
    text = _tokenizer_text(digest, record.get("path") if isinstance(record.get("path"), str) else None, source)
    eos, pad, vocab = record.get("eos_token_id"), record.get("pad_token_id"), record.get("vocab_size")
    if model is not None and (eos, pad) != (model.eos_token_id, model.pad_token_id):
        raise _NotSaid(f"the EOS / pad ids {eos} / {pad} of {source} are not the model's "
                       f"{model.eos_token_id} / {model.pad_token_id}")
    if model is not None and isinstance(vocab, int) and vocab > model.padded_vocab_size:
        raise _NotSaid(f"the tokenizer of {source} has {vocab:,} ids, more than the model's "
                       f"{model.padded_vocab_size:,} embedding rows")
    policy = record.get("control_tokens", "dolma")
    if policy not in ("dolma", "literal"):
        raise _NotSaid(f"{source} was tokenized under the control-token policy {policy!r}, which this export does "
                       "not know how to write")
    return _tokenizer_files(text, eos, pad, model.max_seq_len if model else None, dolma2=digest == _dolma2_sha256(),
                            literal=policy == "literal")


def _dolma2_sha256() -> str:
    from dolmino.assets import DOLMA2_TOKENIZER_SHA256

    return DOLMA2_TOKENIZER_SHA256


def _tokenizer_text(digest: str, path: str | None, source: str) -> str:
    """The tokenizer.json text whose SHA-256 (of its UTF-8 text, as the build hashed it) is `digest`:
    the packaged dolma2 file, or the one at `path` (that `source` was tokenized with)."""
    import hashlib

    from dolmino.errors import ManifestError
    from dolmino.manifest import TokenizerSpec
    from dolmino.tokenizer import tokenizer_json

    if digest == _dolma2_sha256():
        from dolmino.assets import AssetError, dolma2_tokenizer_path

        try:
            return dolma2_tokenizer_path().read_text(encoding="utf-8")
        except (AssetError, OSError) as exc:
            raise _NotSaid(f"the dolma2 tokenizer the data was built with cannot be fetched ({exc})") from None
    if path is None:
        raise _NotSaid(f"{source} was tokenized with a tokenizer.json (sha256 {digest[:12]}...) that is not the "
                       "packaged dolma2 one, and where it lies is not recorded (the build's manifest.json names "
                       "no tokenizer.path)")
    try:
        text = tokenizer_json(TokenizerSpec(path=path))
    except ManifestError as exc:
        raise _NotSaid(f"the tokenizer {source} was tokenized with cannot be read "
                       f"({str(exc).removeprefix('tokenizer.path: ')})") from None
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != digest:
        raise _NotSaid(f"{path} has changed since {source} was tokenized with it (its sha256 is not the one recorded "
                       "for it)")
    return text


def _tokenizer_files(text: str, eos: int | None, pad: int | None, max_len: int | None,
                     dolma2: bool, literal: bool = False) -> dict[str, bytes]:
    """tokenizer.json as the build used it, with the tokenizer_config.json and special_tokens_map.json
    that make AutoTokenizer encode as the build did (no BOS) and know the EOS / pad ids: for
    dolma2 those of allenai's OLMo 2 releases (GPT2Tokenizer, <|endoftext|> as BOS / EOS / unk,
    add_bos_token false), for another tokenizer PreTrainedTokenizerFast with its EOS and pad.

    `literal` (the data's tokenizer.control_tokens "literal"): the build encoded control-token strings
    in text as their characters, but AutoTokenizer mapped "a<|endoftext|>b" to EOS, so the model was
    prompted with ids its training text never held there (found by a tester). tokenizer_config.json
    then sets split_special_tokens and marks exactly the control tokens special (added_tokens_decoder;
    dolma2's tokenizer.json leaves <|extra_id_N|> unmarked), as dolmino.tokenizer does: they encode as
    text, PII placeholders as their ids, and tokenizer.json stays the file the build hashed."""
    definition = json.loads(text)
    vocab = (definition.get("model") or {}).get("vocab")
    by_id = {i: t for t, i in vocab.items()} if isinstance(vocab, dict) else {}
    by_id.update({a.get("id"): a.get("content") for a in definition.get("added_tokens") or []})
    named = {}
    for key, token_id in (("eos_token", eos), ("pad_token", pad)):
        if token_id is not None:
            if by_id.get(token_id) is None:
                raise _NotSaid(f"the tokenizer has no token of id {token_id} (its {key})")
            named[key] = by_id[token_id]
    if dolma2:
        named = {"bos_token": named["eos_token"], **named, "unk_token": named["eos_token"]}
    config = {"add_bos_token": False, "add_prefix_space": False, **named, "clean_up_tokenization_spaces": False,
              "errors": "replace", "tokenizer_class": "GPT2Tokenizer" if dolma2 else "PreTrainedTokenizerFast"}
    if max_len is not None:
        config["model_max_length"] = max_len
    if literal:
        from dolmino.tokenizer import PII_PLACEHOLDER_RE

        config["split_special_tokens"] = True
        config["added_tokens_decoder"] = {
            str(a["id"]): {**{key: bool(a.get(key)) for key in ("lstrip", "normalized", "rstrip", "single_word")},
                           "content": a["content"], "special": not PII_PLACEHOLDER_RE.fullmatch(a["content"])}
            for a in definition.get("added_tokens") or []}
    return {"tokenizer.json": text.encode("utf-8"),
            "tokenizer_config.json": (json.dumps(dict(sorted(config.items())), indent=2) + "\n").encode(),
            "special_tokens_map.json": (json.dumps(named, indent=2) + "\n").encode()}


def _olmo_core_tokenizer(info) -> dict[str, bytes]:
    """OLMo-core's experiment config names its data's tokenizer (dataset.tokenizer): the dolma2 one,
    with dolma2's ids, is the packaged file."""
    from trainer.config import DOLMA2_EOS_TOKEN_ID, DOLMA2_PAD_TOKEN_ID

    config = _olmo_core_dolma2_config(info)
    text = _tokenizer_text(_dolma2_sha256(), None, f"OLMo-core's config {config}")
    return _tokenizer_files(text, DOLMA2_EOS_TOKEN_ID, DOLMA2_PAD_TOKEN_ID,
                            info.model.max_seq_len if info.model else None, dolma2=True)


def _olmo_core_dolma2_config(info) -> Path:
    """The OLMo-core experiment config.json that names the dolma2 tokenizer, with dolma2's ids, as
    the checkpoint's data's (dataset.tokenizer); else why none does."""
    from trainer.config import DOLMA2_EOS_TOKEN_ID, DOLMA2_PAD_TOKEN_ID, DOLMA2_VOCAB_SIZE

    path = Path(info.path)
    for directory in (path, path.parent, path.parent.parent):
        try:
            config = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError):
            continue
        tokenizer = (config.get("dataset") or {}).get("tokenizer") if isinstance(config, dict) else None
        if not isinstance(tokenizer, dict):
            continue
        ids = (tokenizer.get("vocab_size"), tokenizer.get("eos_token_id"), tokenizer.get("pad_token_id"),
               tokenizer.get("bos_token_id"))
        if tokenizer.get("identifier") != DOLMA2_NAME or \
                ids != (DOLMA2_VOCAB_SIZE, DOLMA2_EOS_TOKEN_ID, DOLMA2_PAD_TOKEN_ID, None):
            raise _NotSaid(f"OLMo-core's config {directory / 'config.json'} names the tokenizer "
                           f"{tokenizer.get('identifier')} (vocab, EOS, pad, BOS {ids}), not the dolma2 one")
        return directory / "config.json"
    raise _NotSaid(f"the OLMo-core checkpoint {path} has no experiment config.json naming its tokenizer "
                   "(dataset.tokenizer)")


def write_tokenizer(out_dir: str | Path, files: dict[str, bytes]) -> None:
    """The tokenizer `files` into `out_dir`, each written whole and renamed into place. Tokenizer
    files there that it lacks (a replaced model's slow vocab.json / merges.txt) are removed: they
    are not this model's."""
    out_dir = Path(out_dir)
    for name in TOKENIZER_FILES:
        if name not in files:
            (out_dir / name).unlink(missing_ok=True)
    for name, data in files.items():
        tmp = out_dir / f".{name}.tmp{os.getpid()}"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, out_dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def no_tokenizer_note(out: Path, reason: str) -> str:
    """The one line saying that `out` got no tokenizer files, and why."""
    return (f"note: no tokenizer files written to {out}: {reason}; copy those of the tokenizer the model was "
            f"trained with (tokenizer.json, tokenizer_config.json, special_tokens_map.json) there for "
            f"AutoTokenizer.from_pretrained to load")
