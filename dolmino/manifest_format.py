"""`dolmino manifest fmt`: one canonical text per manifest, so reviews diff content, not style.

Two people editing the same manifest in an editor produce different key orders, indents
and line wraps, and a pull request then shows noise next to the one threshold that
changed. `fmt` rewrites a manifest into the form below; `fmt --check` (CI) only reports.
The rewrite changes layout, never content: the parsed JSON before and after is equal
(same keys, values and list order), which `format_text` asserts.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import sys
import textwrap
from decimal import Decimal
from typing import Any

from dolmino.errors import ManifestError
from dolmino.manifest import (DEDUP_FIELDS, MANIFEST_FIELDS, MINHASH_FIELDS, OUTPUT_FORMAT_FIELDS, SOURCE_FIELDS,
                              TOKENIZER_FIELDS, read_manifest_json)

def _field_list(fields: tuple[str, ...], indent: str = "      ") -> str:
    return textwrap.fill(", ".join(fields), width=88, initial_indent=indent, subsequent_indent=indent)


CANONICAL_FORM = f"""\
Rewrite manifests in canonical form (in place; only files that change are written).

Canonical form:
  - JSON, UTF-8 (non-ASCII characters kept as themselves, not \\u escapes), no BOM;
  - 2-space indent, one key or list item per line, "key": value, no trailing spaces,
    LF line endings, exactly one newline at the end of the file;
  - keys in schema order (the *_FIELDS tuples of dolmino/manifest.py):
    top level:
{_field_list(MANIFEST_FIELDS)}
    each source:
{_field_list(SOURCE_FIELDS)}
    tokenizer:      {", ".join(TOKENIZER_FIELDS)}
    output_format:  {", ".join(OUTPUT_FORMAT_FIELDS)}
    dedup:          {", ".join(DEDUP_FIELDS)}
    dedup.minhash:  {", ".join(MINHASH_FIELDS)}
  - each filter: "type" first, then its parameters in the order of the filter's
    constructor (filters/registry.py);
  - keys the schema does not know (which `check` refuses) keep their relative order,
    after the known ones;
  - values are not touched: "100B" stays a string, 50.0 stays 50.0, list order is kept.
Formatting is idempotent: fmt on a formatted file changes nothing. A duplicate key is an
error (JSON would silently keep the last value), and so is a file that is not JSON."""


def _ordered(obj: dict, order: tuple[str, ...]) -> dict:
    known = [k for k in order if k in obj]
    return {**{k: obj[k] for k in known}, **{k: v for k, v in obj.items() if k not in order}}


def _filter_parameter_order(type_name: Any) -> tuple[str, ...]:
    """The filter class's constructor parameters, in order; () for an unknown type."""
    from filters.registry import REGISTRY, filter_class

    if not isinstance(type_name, str) or type_name not in REGISTRY:
        return ()
    try:
        cls = filter_class(type_name)
    except ManifestError:  # the filter's module cannot be imported here: keep the author's order
        return ()
    params = inspect.signature(cls.__init__).parameters
    return tuple(n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _canonical_filter(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    return _ordered(spec, ("type", *_filter_parameter_order(spec.get("type"))))


def _canonical_source(source: Any) -> Any:
    if not isinstance(source, dict):
        return source
    out = _ordered(source, SOURCE_FIELDS)
    if isinstance(out.get("filters"), list):
        out["filters"] = [_canonical_filter(f) for f in out["filters"]]
    if isinstance(out.get("dedup"), dict):
        dedup = _ordered(out["dedup"], DEDUP_FIELDS)
        if isinstance(dedup.get("minhash"), dict):
            dedup["minhash"] = _ordered(dedup["minhash"], MINHASH_FIELDS)
        out["dedup"] = dedup
    return out


def canonical(data: Any) -> Any:
    """The manifest with every object's keys in canonical order (values untouched)."""
    if not isinstance(data, dict):
        return data
    out = _ordered(data, MANIFEST_FIELDS)
    if isinstance(out.get("tokenizer"), dict):
        out["tokenizer"] = _ordered(out["tokenizer"], TOKENIZER_FIELDS)
    if isinstance(out.get("output_format"), dict):
        out["output_format"] = _ordered(out["output_format"], OUTPUT_FORMAT_FIELDS)
    if isinstance(out.get("sources"), list):
        out["sources"] = [_canonical_source(s) for s in out["sources"]]
    return out


def _encode(value: Any, indent: str) -> str:
    """`json.dumps(value, indent=2, ensure_ascii=False)`, except that a number read from a manifest
    is written as its own text: Python writes a float's repr, which turned `"budget": 1e6` into
    1000000.0 and the count `9007199254740993.0` (read exactly from its text) into 9007199254740992.0."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(k, ensure_ascii=False)}: {_encode(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(inner + _encode(v, inner) for v in value) + f"\n{indent}]"
    if isinstance(value, float) and getattr(value, "text", None):
        return value.text
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def dumps(data: Any) -> str:
    """Canonical text of already-parsed manifest data."""
    return _encode(canonical(data), "") + "\n"


def _exact_numbers(value: Any) -> Any:
    """`value` with each float as the Decimal of its text: as floats, 9007199254740993.0 and ...992.0 are equal."""
    if isinstance(value, dict):
        return {k: _exact_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact_numbers(v) for v in value]
    if isinstance(value, float):
        return Decimal(getattr(value, "text", None) or repr(value))
    return value


def format_text(data: Any) -> str:
    text = dumps(data)
    # Layout only: the content must read back identically (key order aside, hence sorted JSON), numbers
    # to their last digit.
    if json.dumps(json.loads(text, parse_float=Decimal), sort_keys=True, default=str) != json.dumps(
            _exact_numbers(data), sort_keys=True, default=str):
        raise RuntimeError("canonical formatting would change a manifest's content (a dolmino bug)")
    return text


def _write_atomic(path: str, text: str) -> None:
    """Replace the file's text, through a symlink (the link stays: it was replaced by a file and
    its target left unformatted; found by a tester), and no temporary file left on a failure."""
    path = os.path.realpath(path)
    tmp = f"{path}.fmt-tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except OSError:
            pass
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# How errors begin, as every other `dolmino <command>`'s do (`dolmino plan: error: ...`); a bare
# "error: x.json: not valid JSON" was the odd one out (found by a tester).
PROG = "dolmino manifest fmt"


def format_files(paths: list[str], check: bool = False, diff: bool = False) -> int:
    """Format (or with check/diff, only inspect) each file.

    Exit status: 0 all canonical (or rewritten), 1 with --check/--diff when any file would
    change, 2 when a file could not be read as JSON (named on stderr).
    """
    changed, errors = [], 0
    for path in paths:
        try:
            data = read_manifest_json(path)
            with open(path, "rb") as fh:
                current = fh.read().decode("utf-8", "replace")
        except ManifestError as exc:
            from dolmino.s3 import redact

            print(f"{PROG}: error: {redact(exc)}", file=sys.stderr)  # a URL's user:password@ (a tester)
            errors += 1
            continue
        wanted = format_text(data)
        try:
            wanted.encode("utf-8")
        except UnicodeEncodeError as exc:  # a \ud800 escape without its pair: a traceback, a temporary file left
            print(f"{PROG}: error: {path}: a string holds a lone surrogate escape ({exc.object[exc.start]!a}), "
                  "which UTF-8 cannot hold; write the character, or its escaped pair", file=sys.stderr)
            errors += 1
            continue
        if current == wanted:
            continue
        changed.append(path)
        if diff:
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), wanted.splitlines(keepends=True),
                fromfile=f"{path} (current)", tofile=f"{path} (canonical)"))
        if check or diff:
            print(f"would reformat {path}")
        else:
            _write_atomic(path, wanted)
            print(f"reformatted {path}")
    if check or diff:
        if changed:
            print(f"{len(changed)} of {len(paths)} manifest(s) not canonical; run: dolmino manifest fmt "
                  + " ".join(changed), file=sys.stderr)
    if errors:
        return 2
    return 1 if changed and (check or diff) else 0
