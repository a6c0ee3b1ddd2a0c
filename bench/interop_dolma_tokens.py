"""Interop check: the real `dolma tokens` (dolma 1.2.1) against dolmino's `encode_documents`.

    python -m bench.interop_dolma_tokens                        # 200 documents per corpus file + edge cases
    python -m bench.interop_dolma_tokens --limit-per-file 0     # the whole shared corpus + edge cases
    python -m bench.interop_dolma_tokens --control-tokens literal   # vs --tokenizer.encode_special_tokens

Inputs: the first `--limit-per-file` lines of every shared corpus file, copied byte for byte,
plus `edge.jsonl.zst`, the documents where tokenization semantics show (EDGE_CASES: leading
and trailing whitespace, empty and whitespace-only texts, special-token strings, non-BMP
characters, very long lines, raw U+2028 / U+0085 inside JSON strings, lines either reader
refuses). dolma runs through its CLI entry point in its own venv (bench/anchors.py:
dolma==1.2.1 with its botocore pins) with the dolma2 tokenizer, EOS 100257, pad 100277,
uint32, no BOS; dolmino reads the same files with its reader and encodes the texts with
`Dolma2Tokenizer.encode_documents` (semantics "dolma").

dolma shuffles documents, so outputs are matched by (file, line) through its sidecar. Every
document must have identical ids, or be skipped by both, or differ for a reason listed in
`explain_difference` and verified there (not merely asserted). Exit status 0 when that
holds, 1 otherwise; the JSON on stdout lists every difference with its reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "corpus"
CORPUS_FILES = ("academic.jsonl.zst", "code.jsonl.zst", "encyclopedic.jsonl.zst", "web.jsonl.zst")
EDGE_FILE = "edge.jsonl.zst"
EOS, PAD = 100257, 100277
DOLMA_SCRIPT = REPO / "bench" / "anchor_scripts" / "tokenize_dolma.py"


def _long_line() -> str:
    """About 1.5 MB of real corpus text on one line (newlines turned into spaces)."""
    from dolmino.documents import Quarantine, read_documents

    parts, size = [], 0
    for _, doc in read_documents(str(CORPUS / "encyclopedic.jsonl.zst"), Quarantine()):
        parts.append(doc["text"].replace("\n", " "))
        size += len(parts[-1])
        if size > 1_500_000:
            break
    return " ".join(parts)


def edge_cases() -> list[tuple[str, object]]:
    """(name, text) pairs; the name becomes the document id. Non-string texts test the readers."""
    return [
        ("plain", "Hello world."),
        ("leading_trailing_ws", "\n\n  Hello world.  \n\n"),
        ("trailing_blank_lines", "def f():\n    return 1\n\n\n"),
        ("crlf_inside", "line one\r\nline two\r\n"),
        ("empty", ""),
        ("spaces_only", "   "),
        ("whitespace_only", " \n\t\r\n \x0b\x0c "),
        ("unicode_whitespace_only", "\u3000\xa0\u2028\u2029\u2003\x85\x1c\x1d\x1e\x1f"),
        ("unicode_ws_around", "\u3000\xa0 text between ideographic spaces \u2003\x1f"),
        ("zero_width_space_only", "\u200b"),
        ("bom_then_text", "\ufeffText after a byte order mark"),
        ("raw_u2028_u0085_inside", "before\u2028after\x85end"),
        ("nul_char", "a\x00b"),
        ("eos_middle", "hello <|endoftext|> world"),
        ("eos_end", "The end.<|endoftext|>"),
        ("eos_end_then_ws", "The end.<|endoftext|>\n\n"),
        ("eos_only", "<|endoftext|>"),
        ("eos_twice_end", "x<|endoftext|><|endoftext|>"),
        ("eos_start", "<|endoftext|>starts with EOS"),
        ("pad_middle", "padded <|pad|> text"),
        ("pad_only", "<|pad|>"),
        ("fim_chat_tokens", "<|fim_prefix|>a<|fim_middle|>b<|fim_suffix|> <|im_start|>user<|im_end|><|endofprompt|>"),
        ("extra_ids", "reserved <|extra_id_0|> and <|extra_id_10|> and <|extra_id_1|>"),
        ("near_misses", "<|endoftext| <endoftext|> <|ENDOFTEXT|> < |pad|> ||EMAIL_ADDRESS|||"),
        ("pii_placeholders", "mail |||EMAIL_ADDRESS||| call |||PHONE_NUMBER||| host |||IP_ADDRESS|||"),
        ("pii_glued", "x|||EMAIL_ADDRESS|||y|||IP_ADDRESS|||<|endoftext|>"),
        ("emoji", "Smile 😀, thumbs 👍🏽, family 👨‍👩‍👧‍👦, flag 🇺🇦."),
        ("math_alnum_cjk_ext_b", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 𠀀𠀁 𐍈 combining é ñ"),
        ("long_word", "x" * 50_000),
        ("long_whitespace_inside", "a" + " " * 10_000 + "b" + "\n" * 5_000 + "c"),
        ("very_long_line", _long_line()),
    ]


class Prepared(NamedTuple):
    input_dir: Path
    files: list[Path]
    edge_names: dict[int, str]  # line number in edge.jsonl.zst -> case name


def prepare_inputs(input_dir: Path, limit_per_file: int) -> Prepared:
    """Corpus lines copied byte for byte (no re-serialisation) and the edge-case file."""
    import io

    import zstandard

    input_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name in CORPUS_FILES:
        src = CORPUS / name
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing: the interop check needs the shared corpus")
        lines = []
        with open(src, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
            for line in io.BufferedReader(reader):
                lines.append(line)
                if limit_per_file and len(lines) >= limit_per_file:
                    break
        dst = input_dir / name
        dst.write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines)))
        files.append(dst)
    raw_lines, names = [], {}
    for name, text in edge_cases():
        raw_lines.append(json.dumps({"id": f"edge-{name}", "text": text, "source": "edge"},
                                    ensure_ascii=False).encode("utf-8"))
        names[len(raw_lines)] = name
    # Lines the readers must refuse or accept alike (JSON-level edge cases):
    raw_lines.append(b"")  # a blank line: no document for either
    raw_lines.append(b'{"id": "edge-lone_surrogate", "text": "bad \\ud800 escape"}')
    names[len(raw_lines)] = "lone_surrogate"
    raw_lines.append(b'{"id": 12345, "text": "an integer id"}')
    names[len(raw_lines)] = "integer_id"
    raw_lines.append(b'{"id": "edge-crlf_line_end", "text": "the line ends in CRLF"}\r')
    names[len(raw_lines)] = "crlf_line_end"
    raw_lines.append(b'{"id": "edge-null_text", "text": null}')
    names[len(raw_lines)] = "null_text"
    edge = input_dir / EDGE_FILE
    edge.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(raw_lines) + b"\n"))
    files.append(edge)
    return Prepared(input_dir, files, names)


def run_dolma(prepared: Prepared, out_dir: Path, tokenizer_path: Path, *, encode_special_tokens: bool,
              python: Path) -> dict:
    """`dolma tokens` over the prepared files, in the dolma venv; its JSON summary."""
    cmd = [str(python), str(DOLMA_SCRIPT), "--input", str(prepared.input_dir), "--out", str(out_dir),
           "--tokenizer", str(tokenizer_path), "--eos", str(EOS), "--pad", str(PAD)]
    if encode_special_tokens:
        cmd.append("--encode-special-tokens")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAYON_NUM_THREADS")}
    env.setdefault("LANG", "C.UTF-8")  # dolma opens inputs in text mode with the locale's encoding
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"dolma tokens exited {proc.returncode}: {proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["warnings"] = [line[line.index("Error processing"):] for line in proc.stderr.splitlines()
                           if "Error processing" in line]
    return summary


def dolmino_outputs(prepared: Prepared, tokenizer) -> tuple[dict, dict, dict]:
    """((file, line) -> ids or None, (file, line) -> text, quarantine counts by reason)."""
    from dolmino.documents import Quarantine, read_documents

    ids, texts, quarantine = {}, {}, Quarantine()
    for path in prepared.files:
        docs = list(read_documents(str(path), quarantine))
        encoded = tokenizer.encode_documents([d["text"] for _, d in docs])
        for (line, doc), seq in zip(docs, encoded.ids):
            ids[(path.name, line)] = seq
            texts[(path.name, line)] = doc
    return ids, texts, dict(quarantine.counts)


def explain_difference(key, doc: dict | None, ours, theirs, *, control_tokens: str, dolma_tok) -> str | None:
    """Why dolma's output for this document legitimately differs from dolmino's, verified; or None."""
    if doc is not None and theirs is None and ours is not None and not isinstance(doc.get("_raw_id", ""), str):
        return ("dolma drops the line: its reader decodes `id` as a JSON string (msgspec) and skips others "
                "with a warning; dolmino's reader keeps the document with str(id)")
    if control_tokens == "literal" and doc is not None and ours is not None and theirs is not None:
        # dolma's encode_special_tokens splits only tokens marked special in the tokenizer JSON;
        # the dolma2 file leaves <|extra_id_N|> unmarked, so dolma still matches those.
        dolma_tok.encode_special_tokens = True
        seq = dolma_tok.encode(doc["text"].strip(), add_special_tokens=False).ids
        if seq and seq[-1] != EOS:
            seq.append(EOS)
        if np.array_equal(np.asarray(seq, dtype=np.uint32), theirs) and "<|extra_id_" in doc["text"]:
            return ("dolma's --tokenizer.encode_special_tokens leaves <|extra_id_N|> matched (not marked special "
                    "in the dolma2 JSON); dolmino's control_tokens=literal encodes every control token as text")
    return None


def compare(ours: dict, theirs: dict, docs: dict, *, control_tokens: str, tokenizer_path: Path) -> dict:
    from tokenizers import Tokenizer

    dolma_tok = Tokenizer.from_file(str(tokenizer_path))
    identical, both_skipped, explained, unexplained = 0, 0, [], []
    for key in sorted(set(ours) | set(theirs)):
        mine, other, doc = ours.get(key), theirs.get(key), docs.get(key)
        if mine is None and other is None:
            both_skipped += 1
            continue
        if mine is not None and other is not None and np.array_equal(mine, other):
            identical += 1
            continue
        entry = {"file": key[0], "line": key[1], "id": None if doc is None else doc.get("id"),
                 "dolmino_tokens": None if mine is None else len(mine),
                 "dolma_tokens": None if other is None else len(other)}
        if mine is not None and other is not None:
            k = int(np.argmax(mine[: len(other)] != other[: len(mine)])) if min(len(mine), len(other)) else 0
            entry["first_difference"] = {"at": k, "dolmino": mine[k: k + 5].tolist(), "dolma": other[k: k + 5].tolist()}
        reason = explain_difference(key, doc, mine, other, control_tokens=control_tokens, dolma_tok=dolma_tok)
        (explained if reason else unexplained).append({**entry, "reason": reason})
    return {"documents": len(set(ours) | set(theirs)), "identical": identical, "skipped_by_both": both_skipped,
            "explained": explained, "unexplained": unexplained}


def run_check(work: Path, *, limit_per_file: int = 200, control_tokens: str = "dolma",
              python: Path | None = None) -> dict:
    """Prepare inputs under `work`, run both tools, compare; the result as a dict (`ok` says it all)."""
    from bench.anchors import anchor_python, anchor_version
    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.manifest import TokenizerSpec
    from dolmino.tokenizer import Dolma2Tokenizer

    python = python or anchor_python("dolma")
    tokenizer_path = dolma2_tokenizer_path()
    prepared = prepare_inputs(work / "input", limit_per_file)
    started = time.perf_counter()
    summary = run_dolma(prepared, work / "dolma", tokenizer_path,
                        encode_special_tokens=control_tokens == "literal", python=python)
    dolma_seconds = time.perf_counter() - started
    from bench.bench_tokenize import read_dolma

    theirs = read_dolma(work / "dolma")
    spec = TokenizerSpec(semantics="dolma", control_tokens=control_tokens)
    ours, docs, quarantined = dolmino_outputs(prepared, Dolma2Tokenizer.from_spec(spec, threads=1))
    raw_ids = _raw_ids(prepared)
    for key, doc in docs.items():
        doc["_raw_id"] = raw_ids.get(key)
    result = compare(ours, theirs, docs, control_tokens=control_tokens, tokenizer_path=tokenizer_path)
    edge = {}
    for line, case in prepared.edge_names.items():
        key = (EDGE_FILE, line)
        mine = ("quarantined" if key not in ours else "skipped" if ours[key] is None else len(ours[key]))
        edge[case] = {"dolmino": mine, "dolma": "skipped" if key not in theirs else len(theirs[key])}
    return {
        "ok": not result["unexplained"], "dolma_version": anchor_version("dolma"),
        "control_tokens": control_tokens, "limit_per_file": limit_per_file,
        "dolma_seconds": round(dolma_seconds, 1), "dolma_warnings": summary["warnings"],
        "dolmino_quarantined": quarantined, **result, "edge_cases_tokens": edge,
    }


def _raw_ids(prepared: Prepared) -> dict:
    """The `id` value of every line as JSON has it (dolmino's reader turns it into a string)."""
    from dolmino.documents import iter_lines

    out = {}
    for path in prepared.files:
        for line_no, raw in enumerate(iter_lines(str(path)), start=1):
            try:
                out[(path.name, line_no)] = json.loads(raw).get("id")
            except (ValueError, AttributeError):
                pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.interop_dolma_tokens", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--limit-per-file", type=int, default=200, help="corpus lines per file (0 = whole files)")
    ap.add_argument("--control-tokens", choices=("dolma", "literal"), default="dolma",
                    help="dolmino's policy; 'literal' runs dolma with --tokenizer.encode_special_tokens")
    ap.add_argument("--work", type=Path, default=None, help="keep inputs and outputs here (default: a temp dir)")
    args = ap.parse_args(argv)
    missing = [name for name in CORPUS_FILES if not (CORPUS / name).exists()]
    if missing:  # said before dolma's venv is built (~30 s to 2 min), as one line, not a traceback (a tester)
        print(f"python -m bench.interop_dolma_tokens: error: the check reads the shared corpus, {CORPUS} "
              f"(the 'shared' directory beside this checkout), which lacks {', '.join(missing)}",
              file=sys.stderr)
        return 2
    if args.work:
        result = run_check(args.work, limit_per_file=args.limit_per_file, control_tokens=args.control_tokens)
    else:
        with tempfile.TemporaryDirectory(prefix="dolmino-interop-") as tmp:
            result = run_check(Path(tmp), limit_per_file=args.limit_per_file, control_tokens=args.control_tokens)
    print(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"{'OK' if result['ok'] else 'DIFFERENT'}: {result['identical']} identical, {result['skipped_by_both']} "
          f"skipped by both, {len(result['explained'])} explained, {len(result['unexplained'])} unexplained "
          f"of {result['documents']} documents", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
