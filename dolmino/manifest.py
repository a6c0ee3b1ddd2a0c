"""Mix manifests: the reviewed, versioned description of one data mix.

A manifest is JSON so that it reads well in a pull request and diffs line by line. Loading
validates every field and names the bad one (`sources[2].mix_percent: ...`) because a typo
found after a 10-hour Spark job is a lost day. The same manifest and seed always produce
byte-identical output; everything that changes the output lives in the manifest.

Sampling rule (OLMo 2 report, Table 13): each source gets `mix_percent` of the token
budget. If that is more than the source holds after filtering, whole copies are repeated
and the remainder is a seeded sample; the achieved "Source %" (tokens emitted / tokens
available) is reported next to the manifest's expected `source_percent`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dolmino.errors import ManifestError

SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
SOURCE_FORMATS = ("dolma", "stackexchange")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Table 13's mix percentages are rounded, so their sum is 99.94-100.01; beyond this the
# manifest is probably wrong.
MIX_SUM_TOLERANCE = 0.5


def parse_count(value: Any, where: str) -> int:
    """Parse token counts like 100B, 1.5M, 832.6B, 7000 (K/M/B/T suffixes, powers of 10)."""
    if isinstance(value, bool):
        raise ManifestError(f"{where}: expected a count like '100B', got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
        scale = 1
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMBGT]?)\s*", value.upper())
        if not match:
            raise ManifestError(f"{where}: expected a count like '100B', '1.5M' or 7000, got {value!r}")
        number = float(match.group(1))
        scale = SUFFIXES[match.group(2)]
    else:
        raise ManifestError(f"{where}: expected a count like '100B', got {type(value).__name__}")
    result = number * scale
    if not math.isfinite(result) or result <= 0:
        raise ManifestError(f"{where}: must be a positive count, got {value!r}")
    return int(round(result))


def format_count(n: int | float) -> str:
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(int(n))


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = False
    minhash: dict | None = None


@dataclass(frozen=True)
class SourceSpec:
    name: str
    paths: tuple[str, ...]
    mix_percent: float
    format: str = "dolma"
    source_percent: float | None = None
    pool_tokens: int | None = None
    pool_docs: int | None = None
    filters: tuple[dict, ...] = ()
    dedup: DedupConfig = field(default_factory=DedupConfig)
    description: str = ""


@dataclass(frozen=True)
class TokenizerSpec:
    """The tokenizer and how documents become ids (docs/DESIGN.md "Tokenization").

    `semantics` "dolma" = what `dolma tokens` (dolma 1.2.1) does, so a mix holds the same ids
    per document as OLMo 2's released token files: text.strip(), documents empty after
    stripping skipped (counted), EOS appended unless the ids already end in it, BOS (when
    set) prepended unless already first. "raw" = the text as is, EOS (and BOS) always added.
    `control_tokens` "dolma" = control-token strings in text (<|endoftext|>, <|pad|>, FIM and
    chat markers, reserved extra ids) encode to their ids, as in the released data;
    "literal" = they encode as the characters they are. PII placeholders
    (|||EMAIL_ADDRESS||| ...) encode to their ids under both.
    """

    SEMANTICS = ("dolma", "raw")
    CONTROL_TOKEN_POLICIES = ("dolma", "literal")

    name: str = "allenai/dolma2-tokenizer"
    path: str | None = None
    eos_token_id: int = 100257
    pad_token_id: int = 100277
    vocab_size: int = 100278
    bos_token_id: int | None = None
    semantics: str = "dolma"
    control_tokens: str = "dolma"


@dataclass(frozen=True)
class OutputSpec:
    tokens_per_file: int = 1 << 29
    label_mask: bool = False


@dataclass(frozen=True)
class Manifest:
    name: str
    seed: int
    sources: tuple[SourceSpec, ...]
    budget: int | None
    tokenizer: TokenizerSpec
    output_spec: OutputSpec
    output: str | None
    data_root: str | None
    description: str = ""
    path: str | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def resolve(self, location: str) -> str:
        """Resolve a source path: absolute and s3:// stay, others are relative to data_root."""
        if location.startswith("s3://") or os.path.isabs(location):
            return location
        root = self.data_root or "."
        if root.startswith("s3://"):
            return root.rstrip("/") + "/" + location
        return os.path.normpath(os.path.join(root, location))

    def mix_fractions(self) -> dict[str, float]:
        total = sum(s.mix_percent for s in self.sources)
        return {s.name: s.mix_percent / total for s in self.sources}


def _expect(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ManifestError(f"{where}: {message}")


def _check_keys(obj: dict, allowed: set[str], required: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ManifestError(f"{where}.{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(obj))
    if missing:
        raise ManifestError(f"{where}.{missing[0]}: required field is missing")


def _number(value: Any, where: str, lo: float, hi: float) -> float:
    _expect(isinstance(value, (int, float)) and not isinstance(value, bool),
            where, f"expected a number, got {value!r}")
    _expect(lo <= value <= hi, where, f"must be between {lo} and {hi}, got {value}")
    return float(value)


def _string(value: Any, where: str) -> str:
    _expect(isinstance(value, str) and value != "", where, f"expected a non-empty string, got {value!r}")
    return value


def _resolve_relative(base_dir: str | None, value: str | None) -> str | None:
    if value is None or value.startswith("s3://") or os.path.isabs(value) or base_dir is None:
        return value
    return os.path.normpath(os.path.join(base_dir, value))


def _parse_dedup(obj: Any, where: str) -> DedupConfig:
    if obj is None:
        return DedupConfig()
    _expect(isinstance(obj, dict), where, "expected an object like {\"exact\": true}")
    _check_keys(obj, {"exact", "minhash"}, set(), where)
    exact = obj.get("exact", False)
    _expect(isinstance(exact, bool), f"{where}.exact", f"expected true/false, got {exact!r}")
    minhash = obj.get("minhash")
    if minhash is not None:
        _expect(isinstance(minhash, dict), f"{where}.minhash", "expected an object of MinHash parameters")
        allowed = {"num_perm", "ngram", "threshold", "seed"}
        _check_keys(minhash, allowed, set(), f"{where}.minhash")
        if "threshold" in minhash:
            _number(minhash["threshold"], f"{where}.minhash.threshold", 0.0, 1.0)
        for key in ("num_perm", "ngram", "seed"):
            if key in minhash:
                _expect(isinstance(minhash[key], int) and not isinstance(minhash[key], bool)
                        and minhash[key] >= (0 if key == "seed" else 1),
                        f"{where}.minhash.{key}", f"expected a positive integer, got {minhash[key]!r}")
    return DedupConfig(exact=exact, minhash=minhash)


def _resolve_filter_files(spec: dict, base_dir: str | None) -> dict:
    """Filter parameters naming files (`*_path`: models, indices) resolve like every other
    relative path in a manifest: against the manifest's directory, not the caller's CWD, so a
    build reads the same files wherever it is started from (and executors get absolute paths)."""
    return {k: _resolve_relative(base_dir, v) if k.endswith("_path") and isinstance(v, str) else v
            for k, v in spec.items()}


def _parse_filters(value: Any, where: str, base_dir: str | None = None) -> tuple[dict, ...]:
    from filters.registry import build_filter  # validates type and parameters

    _expect(isinstance(value, list), where, "expected a list of filter objects")
    specs = []
    for i, spec in enumerate(value):
        item = f"{where}[{i}]"
        _expect(isinstance(spec, dict), item, "expected an object with a 'type'")
        spec = _resolve_filter_files(spec, base_dir)
        build_filter(spec, item)
        specs.append(spec)
    return tuple(specs)


def _parse_source(obj: Any, where: str, base_dir: str | None = None) -> SourceSpec:
    _expect(isinstance(obj, dict), where, "expected an object")
    allowed = {"name", "paths", "mix_percent", "format", "source_percent", "pool_tokens",
               "pool_docs", "filters", "dedup", "description"}
    _check_keys(obj, allowed, {"name", "paths", "mix_percent"}, where)
    name = _string(obj["name"], f"{where}.name")
    _expect(bool(_NAME_RE.match(name)), f"{where}.name", f"use letters, digits, '_', '-', '.': {name!r}")
    paths = obj["paths"]
    _expect(isinstance(paths, list) and len(paths) > 0, f"{where}.paths", "expected a non-empty list of paths/globs")
    for i, p in enumerate(paths):
        _string(p, f"{where}.paths[{i}]")
    fmt = obj.get("format", "dolma")
    _expect(fmt in SOURCE_FORMATS, f"{where}.format", f"expected one of {SOURCE_FORMATS}, got {fmt!r}")
    mix = _number(obj["mix_percent"], f"{where}.mix_percent", 0.0, 100.0)
    _expect(mix > 0, f"{where}.mix_percent", "must be > 0 (drop the source instead)")
    src_pct = obj.get("source_percent")
    if src_pct is not None:
        src_pct = _number(src_pct, f"{where}.source_percent", 0.0, 1e6)
    pool_tokens = parse_count(obj["pool_tokens"], f"{where}.pool_tokens") if "pool_tokens" in obj else None
    pool_docs = parse_count(obj["pool_docs"], f"{where}.pool_docs") if "pool_docs" in obj else None
    description = obj.get("description", "")
    _expect(isinstance(description, str), f"{where}.description", "expected a string")
    return SourceSpec(
        name=name, paths=tuple(paths), mix_percent=mix, format=fmt, source_percent=src_pct,
        pool_tokens=pool_tokens, pool_docs=pool_docs,
        filters=_parse_filters(obj.get("filters", []), f"{where}.filters", base_dir),
        dedup=_parse_dedup(obj.get("dedup"), f"{where}.dedup"), description=description,
    )


def _parse_tokenizer(obj: Any, base_dir: str | None) -> TokenizerSpec:
    where = "tokenizer"
    if obj is None:
        return TokenizerSpec()
    _expect(isinstance(obj, dict), where, "expected an object")
    _check_keys(obj, {"name", "path", "eos_token_id", "pad_token_id", "vocab_size", "bos_token_id",
                      "semantics", "control_tokens"}, set(), where)
    spec = TokenizerSpec()
    name = obj.get("name", spec.name)
    _string(name, f"{where}.name")
    path = obj.get("path")
    if path is not None:
        _string(path, f"{where}.path")
    elif name != TokenizerSpec.name:
        raise ManifestError(f"{where}.path: required for tokenizer {name!r} (only {TokenizerSpec.name} is packaged)")
    ints = {}
    for key in ("eos_token_id", "pad_token_id", "vocab_size", "bos_token_id"):
        value = obj.get(key, getattr(spec, key))
        if value is None and key == "bos_token_id":
            ints[key] = None
            continue
        _expect(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"{where}.{key}", f"expected a non-negative integer{' or null' if key == 'bos_token_id' else ''}, "
                f"got {value!r}")
        ints[key] = value
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if ints[key] is not None:
            _expect(ints[key] < ints["vocab_size"], f"{where}.{key}", "must be below vocab_size")
    _expect(ints["vocab_size"] <= 2**32, f"{where}.vocab_size", "must fit in uint32")
    choices = {}
    for key, allowed in (("semantics", TokenizerSpec.SEMANTICS),
                         ("control_tokens", TokenizerSpec.CONTROL_TOKEN_POLICIES)):
        value = obj.get(key, getattr(spec, key))
        _expect(value in allowed, f"{where}.{key}", f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        choices[key] = value
    return TokenizerSpec(name=name, path=_resolve_relative(base_dir, path), **ints, **choices)


def _parse_output_spec(obj: Any) -> OutputSpec:
    where = "output_format"
    if obj is None:
        return OutputSpec()
    _expect(isinstance(obj, dict), where, "expected an object")
    _check_keys(obj, {"tokens_per_file", "label_mask"}, set(), where)
    tpf = parse_count(obj.get("tokens_per_file", OutputSpec.tokens_per_file), f"{where}.tokens_per_file")
    label_mask = obj.get("label_mask", False)
    _expect(isinstance(label_mask, bool), f"{where}.label_mask", f"expected true/false, got {label_mask!r}")
    return OutputSpec(tokens_per_file=tpf, label_mask=label_mask)


def manifest_from_dict(data: Any, path: str | None = None) -> Manifest:
    """Validate a parsed manifest; relative paths resolve against the manifest's directory."""
    _expect(isinstance(data, dict), "manifest", "expected a JSON object at the top level")
    allowed = {"name", "description", "version", "seed", "budget", "data_root", "output", "tokenizer",
               "output_format", "sources"}
    _check_keys(data, allowed, {"name", "seed", "sources"}, "manifest")
    name = _string(data["name"], "name")
    _expect(bool(_NAME_RE.match(name)), "name", f"use letters, digits, '_', '-', '.': {name!r}")
    version = data.get("version", 1)
    _expect(version == 1, "version", f"this dolmino reads manifest version 1, got {version!r}")
    seed = data["seed"]
    _expect(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63,
            "seed", f"expected a non-negative integer, got {seed!r}")
    budget = parse_count(data["budget"], "budget") if data.get("budget") is not None else None
    sources_obj = data["sources"]
    _expect(isinstance(sources_obj, list) and sources_obj, "sources", "expected a non-empty list")
    base_dir = os.path.dirname(os.path.abspath(path)) if path else None
    sources = tuple(_parse_source(s, f"sources[{i}]", base_dir) for i, s in enumerate(sources_obj))
    seen: set[str] = set()
    for i, s in enumerate(sources):
        _expect(s.name not in seen, f"sources[{i}].name", f"duplicate source name {s.name!r}")
        seen.add(s.name)
    total = sum(s.mix_percent for s in sources)
    _expect(abs(total - 100.0) <= MIX_SUM_TOLERANCE, "sources[*].mix_percent",
            f"must sum to 100 (±{MIX_SUM_TOLERANCE}), got {total:.3f}")
    data_root = data.get("data_root")
    if data_root is not None:
        _string(data_root, "data_root")
    output = data.get("output")
    if output is not None:
        _string(output, "output")
    description = data.get("description", "")
    _expect(isinstance(description, str), "description", "expected a string")
    return Manifest(
        name=name, seed=seed, sources=sources, budget=budget,
        tokenizer=_parse_tokenizer(data.get("tokenizer"), base_dir),
        output_spec=_parse_output_spec(data.get("output_format")),
        output=_resolve_relative(base_dir, output), data_root=_resolve_relative(base_dir, data_root),
        description=description, path=os.path.abspath(path) if path else None, raw=data,
    )


def load_manifest(path: str) -> Manifest:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest file not found") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return manifest_from_dict(data, path)


def main(argv: list[str] | None = None) -> int:
    """`python -m dolmino.manifest FILE...`: validate manifests (for CI and pre-commit)."""
    import sys

    paths = argv if argv is not None else sys.argv[1:]
    status = 0
    for p in paths:
        try:
            m = load_manifest(p)
            budget = format_count(m.budget) if m.budget else "no budget"
            print(f"ok  {p}: {m.name}, {len(m.sources)} sources, {budget}, seed {m.seed}")
        except ManifestError as exc:
            print(f"BAD {p}: {exc}")
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
