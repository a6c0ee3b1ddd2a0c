"""`dolmino manifest fmt`: canonical, idempotent, content-preserving; `--check` for CI;
and `dolmino manifest check` / `python -m dolmino.manifest FILE...` still validate."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dolmino.errors import ManifestError
from dolmino.manifest import (MANIFEST_FIELDS, MINHASH_FIELDS, SOURCE_FIELDS, TOKENIZER_FIELDS, load_manifest,
                              main)
from dolmino.manifest_format import canonical, dumps, format_files

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"

SCRAMBLED = """{"sources": [{"mix_percent": 60, "filters": [{"min_repeats": 32, "max_n": 13, "type": "repeated_ngrams"},
  {"model_path": "m.bin", "min_score": 2.0, "type": "score_threshold", "scorer": "fasttext_expected_label"}],
  "paths": ["a/*.jsonl.zst", "b/*.jsonl.zst"], "name": "web", "dedup": {"minhash": {"threshold": 0.8, "num_perm": 64},
  "exact": true}, "description": "caf\\u00e9 pages"},
 {"name": "code", "paths": ["code/*.jsonl.zst"], "mix_percent": 40.0}],
   "seed": 7, "name": "scrambled", "budget": "1M",
 "tokenizer": {"vocab_size": 100278, "name": "allenai/dolma2-tokenizer"}, "version": 1}
"""


def _write(tmp_path: Path, text: str, name: str = "m.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_fmt_rewrites_canonically_and_is_idempotent(tmp_path, capsys):
    path = _write(tmp_path, SCRAMBLED)
    before = json.loads(SCRAMBLED)
    assert main(["fmt", str(path)]) == 0
    assert f"reformatted {path}" in capsys.readouterr().out
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == before  # layout only
    data = json.loads(text)
    assert list(data) == ["name", "version", "seed", "budget", "tokenizer", "sources"]
    assert list(data["tokenizer"]) == ["name", "vocab_size"]
    web = data["sources"][0]
    assert list(web) == ["name", "description", "paths", "mix_percent", "filters", "dedup"]
    assert list(web["filters"][0]) == ["type", "max_n", "min_repeats"]
    assert list(web["filters"][1]) == ["type", "scorer", "min_score", "model_path"]  # constructor order
    assert list(web["dedup"]) == ["exact", "minhash"] and list(web["dedup"]["minhash"]) == ["num_perm", "threshold"]
    assert web["paths"] == ["a/*.jsonl.zst", "b/*.jsonl.zst"]  # list order kept
    assert data["sources"][1]["mix_percent"] == 40.0 and web["mix_percent"] == 60  # values untouched
    # the text itself: 2-space indent, UTF-8 kept, no trailing spaces, one final newline
    assert '\n  "name": "scrambled",\n' in text and '"café pages"' in text
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert not any(line != line.rstrip() for line in text.splitlines())
    assert "\r" not in text
    # idempotent: a second run changes nothing and writes nothing
    mtime = path.stat().st_mtime_ns
    assert main(["fmt", str(path)]) == 0
    assert capsys.readouterr().out == ""
    assert path.read_text(encoding="utf-8") == text and path.stat().st_mtime_ns == mtime
    assert dumps(json.loads(text)) == text


def test_fmt_check_names_unformatted_files_and_writes_nothing(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(dumps(json.loads(SCRAMBLED)), encoding="utf-8")
    bad = _write(tmp_path, SCRAMBLED, "bad.json")
    assert main(["fmt", "--check", str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == f"would reformat {bad}\n"
    assert "1 of 2 manifest(s) not canonical" in err and str(bad) in err
    assert bad.read_text(encoding="utf-8") == SCRAMBLED
    assert main(["fmt", "--check", str(good)]) == 0


def test_fmt_diff_shows_the_change(tmp_path, capsys):
    path = _write(tmp_path, dumps(json.loads(SCRAMBLED)).replace('  "seed": 7,\n', '  "seed":   7 ,\n'))
    assert main(["fmt", "--diff", str(path)]) == 1
    out = capsys.readouterr().out
    assert '-  "seed":   7 ,\n+  "seed": 7,\n' in out


@pytest.mark.parametrize("variant", [
    lambda t: t.replace("\n", "\r\n"),            # CRLF
    lambda t: t.rstrip("\n"),                     # no final newline
    lambda t: t + "\n",                            # two final newlines
    lambda t: t.replace('"seed": 7,', '"seed": 7,   '),  # trailing spaces
    lambda t: "\ufeff" + t,                        # BOM
    lambda t: json.dumps(json.loads(t)),           # one line
    lambda t: json.dumps(json.loads(t), indent=4),  # 4-space indent
])
def test_every_layout_variant_is_not_canonical_and_formats_back(tmp_path, variant):
    canonical_text = dumps(json.loads(SCRAMBLED))
    path = tmp_path / "v.json"
    path.write_bytes(variant(canonical_text).encode("utf-8"))
    assert format_files([str(path)], check=True) == 1
    assert format_files([str(path)]) == 0
    assert path.read_bytes() == canonical_text.encode("utf-8")


def test_unknown_keys_keep_their_order_after_the_known_ones():
    data = {"zeta": 1, "sources": [], "alpha": 2, "name": "x"}
    assert list(canonical(data)) == ["name", "sources", "zeta", "alpha"]


def test_duplicate_keys_are_an_error_not_a_silent_drop(tmp_path, capsys):
    path = _write(tmp_path, '{"name": "x", "seed": 1, "seed": 2, "sources": []}')
    assert main(["fmt", str(path)]) == 2
    assert "duplicate key 'seed'" in capsys.readouterr().err
    assert "seed\": 1" in path.read_text()  # untouched
    with pytest.raises(ManifestError, match="duplicate key 'seed'"):
        load_manifest(str(path))


def test_a_duplicate_key_names_its_line(tmp_path):
    """The error named no place: in a manifest of a dozen sources, which "mix_percent"? (a tester).
    json refuses an inner object before the outer one it sits in, and so is its line found."""
    text = ('{\n  "name": "x",\n  "seed": 1,\n  "seed": 2,\n  "sources": [\n    {"name": "a", "paths": ["{\\"}"],\n'
            '     "mix_percent": 30,\n     "mix_percent": 50}\n  ]\n}\n')
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError, match=re.escape(f"{path}: sources[0].mix_percent: duplicate key 'mix_percent' in "
                                                      "one object, line 8 (JSON would silently keep only the last)")):
        load_manifest(str(path))
    path.write_text(text.replace('"mix_percent": 50', '"share": 50'))
    with pytest.raises(ManifestError, match=re.escape(f"{path}: seed: duplicate key 'seed' in one object, line 4 (")):
        load_manifest(str(path))


def test_a_duplicate_key_names_its_field_path(tmp_path, capsys):
    """The line alone, without the field, as every other manifest error names it (`sources[2].filters`): in a
    one-line manifest, or a line holding a whole source, which object (a tester)? Array places are counted
    past strings that hold commas and brackets, and scalars, objects and arrays alike."""
    text = ('{"name": "x", "sources": [{"name": "a,]", "paths": ["a"]}, {"name": "b", "paths": [1, [], {}]},'
            ' {"name": "c", "paths": ["c"], "filters": [], "dedup": {"minhash": {"seed": 1, "seed": 2}}}]}')
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError, match=re.escape(f"{path}: sources[2].dedup.minhash.seed: duplicate key 'seed' "
                                                      "in one object, line 1 (")):
        load_manifest(str(path))
    path.write_text(text.replace('"dedup": {"minhash": {"seed": 1, "seed": 2}}', '"filters": [{"type": "x"}]'))
    assert main(["fmt", str(path)]) == 2
    assert f"{path}: sources[2].filters: duplicate key 'filters' in one object, line 1 (" in capsys.readouterr().err


@pytest.mark.parametrize("value, error", [
    ("NaN", "NaN is not a JSON value"), ("-Infinity", "-Infinity is not a JSON value"),
    ("1e400", "the number 1e400 is too large for a float"),
    ("1" + "0" * 400, "the integer 100000000000...0000 (401 digits) is beyond 64 bits"),  # a reviewer
    ("1" + "0" * 5000, "the integer 100000000000...0000 (5001 digits) is beyond 64 bits"),  # int(): 4,300 at most
])
def test_values_json_has_not_are_refused_not_written_back(tmp_path, capsys, value, error):
    """Python's json reads NaN, Infinity and 1e400 (as inf): fmt wrote `Infinity` back, called it
    canonical, and `fmt --check` passed a file strict parsers refuse (found by a tester)."""
    text = '{"name": "x", "sources": [{"name": "a", "paths": ["a/*"], "mix_percent": %s}]}' % value
    path = _write(tmp_path, text)
    assert main(["fmt", str(path)]) == 2
    assert error in capsys.readouterr().err
    assert path.read_text() == text  # untouched
    assert main(["fmt", "--check", str(path)]) == 2
    with pytest.raises(ManifestError, match=re.escape(error)):
        load_manifest(str(path))


def test_invalid_json_is_reported_with_its_position(tmp_path, capsys):
    path = _write(tmp_path, '{"name": "x",\n  "seed": }')
    assert main(["fmt", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "line 2" in err


def test_every_repository_manifest_is_canonical_and_valid(capsys):
    assert main(["fmt", "--check", str(MANIFESTS)]) == 0
    assert main(["check", str(MANIFESTS)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok  ") == len(list(MANIFESTS.glob("*.json")))


def test_directories_expand_to_manifests_without_lockfiles(tmp_path, capsys):
    shutil.copy(MANIFESTS / "demo.json", tmp_path / "demo.json")
    (tmp_path / "demo.lock.json").write_text('{"not": "a manifest"}')
    (tmp_path / "notes.txt").write_text("x")
    assert main(["check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "demo.json" in out and "lock" not in out


def test_schema_field_tuples_are_exactly_what_the_validator_accepts(tmp_path):
    """The formatter's order and the validator's allowed keys come from the same tuples: an
    unknown key's error lists exactly them."""
    base = json.loads((MANIFESTS / "demo.json").read_text())

    def allowed_in_error(mutate) -> set[str]:
        data = json.loads(json.dumps(base))
        mutate(data)
        path = _write(tmp_path, json.dumps(data))
        with pytest.raises(ManifestError) as exc:
            load_manifest(str(path))
        return set(re.search(r"allowed: ([^)]*)\)", str(exc.value)).group(1).split(", "))

    assert allowed_in_error(lambda d: d.update(bogus=1)) == set(MANIFEST_FIELDS)
    assert allowed_in_error(lambda d: d["sources"][0].update(bogus=1)) == set(SOURCE_FIELDS)
    assert allowed_in_error(lambda d: d["tokenizer"].update(bogus=1)) == set(TOKENIZER_FIELDS)
    assert allowed_in_error(lambda d: d["sources"][0]["dedup"]["minhash"].update(bogus=1)) == set(MINHASH_FIELDS)


def test_plain_file_list_still_validates_as_the_readme_shows(capsys):
    assert main([str(MANIFESTS / "50B.json"), str(MANIFESTS / "demo.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(line.startswith("ok  ") for line in out)


def test_check_names_the_bad_field_once(tmp_path, capsys):
    data = json.loads((MANIFESTS / "demo.json").read_text())
    data["sources"][2]["mix_percent"] = "16"
    path = _write(tmp_path, json.dumps(data))
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert out == f"BAD {path}: sources[2].mix_percent: expected a number, got '16'\n"
    assert main(["check", str(tmp_path / "missing.json")]) == 1
    assert capsys.readouterr().out == f"BAD {tmp_path / 'missing.json'}: manifest file not found\n"


def test_no_files_is_a_usage_error(tmp_path, capsys):
    assert main([]) == 2
    assert main(["check", str(tmp_path)]) == 2
    assert "no manifests" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    path = _write(tmp_path, SCRAMBLED)
    run = [sys.executable, "-m", "dolmino.manifest"]
    result = subprocess.run([*run, "fmt", "--check", str(path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1 and f"would reformat {path}" in result.stdout
    result = subprocess.run([*run, str(MANIFESTS / "demo.json")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("ok  ")


def test_fmt_writes_through_a_symlink_and_refuses_a_lone_surrogate(tmp_path, capsys):
    """Found by a tester: fmt on a link replaced the link with a file and left its target
    unformatted; a \\ud800 escape without its pair was a traceback leaving a temporary file."""
    import json
    import os

    from dolmino.manifest_format import format_files

    target = tmp_path / "50B.json"
    target.write_text(json.dumps({"name": "x", "version": 2, "kind": "mix", "budget": "1M", "sources": []}))
    link = tmp_path / "current.json"
    link.symlink_to(target.name)
    assert format_files([str(link)]) == 0
    assert link.is_symlink() and format_files([str(target)], check=True) == 0
    lone = tmp_path / "lone.json"
    lone.write_text('{"name": "x", "description": "a\\ud800b", "version": 2, "sources": []}')
    before = lone.read_bytes()
    capsys.readouterr()
    assert format_files([str(lone)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dolmino manifest fmt: error: {lone}: a string holds a lone surrogate escape")
    assert err.count("\n") == 1
    assert lone.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["50B.json", "current.json", "lone.json"]


def test_fmt_writes_numbers_as_written_and_keeps_their_meaning(tmp_path):
    """fmt wrote each float as Python's repr: `"pool_docs": 9007199254740993.0`, a count read exactly from
    its text, became 9007199254740992.0 (another count), and `"budget": 1e6` became 1000000.0, though the
    canonical form leaves values untouched (found by a tester)."""
    text = ('{"name": "x", "version": 2, "seed": 1, "budget": 1e6, "sources": [{"name": "a", "paths": ["a/*"],'
            ' "pool_docs": 9007199254740993.0, "mix_percent": 100.00, "dedup": {"minhash": {"threshold": 8E-1}}}]}')
    path = _write(tmp_path, text)
    before = load_manifest(str(path))
    assert format_files([str(path)]) == 0
    formatted = path.read_text(encoding="utf-8")
    for number in ('"budget": 1e6,', '"pool_docs": 9007199254740993.0,', '"mix_percent": 100.00,',
                   '"threshold": 8E-1'):
        assert number in formatted
    after = load_manifest(str(path))
    assert after.sources[0].pool_docs == before.sources[0].pool_docs == 9007199254740993
    assert (after.budget, after.sources[0].mix_percent) == (before.budget, before.sources[0].mix_percent)
    assert format_files([str(path)], check=True) == 0  # idempotent


@pytest.mark.parametrize("value, where", [
    ("NaN", "sources[1].mix_percent"), ("-Infinity", "sources[1].mix_percent"),
    ("1e400", "sources[1].mix_percent"), ("1" + "0" * 5000, "sources[1].mix_percent"),
])
def test_a_value_json_has_not_names_its_field(tmp_path, capsys, value, where):
    """Found by a tester: `NaN is not a JSON value` named no field; in a manifest of a dozen sources, whose?"""
    text = ('{"name": "x", "seed": 1, "budget": "1M", "sources": [{"name": "a", "paths": ["a/*"], "mix_percent": 50},'
            ' {"name": "b", "paths": ["NaN"], "mix_percent": %s}]}' % value)
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError, match=re.escape(f"{path}: {where}: ")):
        load_manifest(str(path))
    assert main(["check", str(path)]) == 1
    assert f"BAD {path}: {where}: " in capsys.readouterr().out


def test_fmt_error_line_names_the_command(tmp_path, capsys):
    """`dolmino manifest fmt bad.json` said a bare "error: bad.json: ..." where every other command
    says "dolmino <command>: error: ..."."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": ')
    assert format_files([str(bad)]) == 2
    assert capsys.readouterr().err == (f"dolmino manifest fmt: error: {bad}: not valid JSON (line 1, column 10: "
                                       "Expecting value)\n")
