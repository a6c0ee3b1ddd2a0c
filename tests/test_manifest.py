"""Manifest validation: shipped manifests load; every kind of mistake names its field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from dolmino.errors import ManifestError
from dolmino.manifest import load_manifest, manifest_from_dict, parse_count

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"

# Table 13 of the OLMo 2 report: (source %, mix %) per budget.
TABLE_13 = {
    "50B": {"dclm": (3.23, 47.2), "flan": (50.0, 16.6), "stackexchange": (100, 2.45), "pes2o": (5.15, 5.85),
            "wiki": (100, 7.11), "math": (100, 20.8)},
    "100B": {"dclm": (6.85, 50.2), "flan": (100, 16.7), "stackexchange": (200, 2.47), "pes2o": (16.7, 9.52),
             "wiki": (100, 3.57), "math": (200, 17.5)},
    "300B": {"dclm": (20.78, 51.9), "flan": (200, 11.3), "stackexchange": (400, 1.68), "pes2o": (100, 19.4),
             "wiki": (400, 4.86), "math": (400, 10.8)},
}


@pytest.mark.parametrize("budget", sorted(TABLE_13))
def test_shipped_dolmino_manifests_match_table_13(budget):
    m = load_manifest(str(MANIFESTS / f"{budget}.json"))
    assert m.budget == parse_count(budget, "budget")
    got = {s.name: (s.source_percent, s.mix_percent) for s in m.sources}
    assert got == TABLE_13[budget]
    assert m.tokenizer.eos_token_id == 100257 and m.tokenizer.vocab_size == 100278


def test_every_shipped_manifest_validates():
    paths = sorted(MANIFESTS.glob("*.json"))
    assert {p.name for p in paths} >= {"50B.json", "100B.json", "300B.json", "demo.json"}
    for p in paths:
        load_manifest(str(p))


@pytest.mark.parametrize("text,expected", [
    ("100B", 100 * 10**9), ("1.5M", 1_500_000), ("832.6B", 832_600_000_000), ("7000", 7000),
    (7000, 7000), ("3.9T", 3_900_000_000_000), ("2k", 2000),
])
def test_parse_count(text, expected):
    assert parse_count(text, "budget") == expected


@pytest.mark.parametrize("bad", ["", "B", "-5B", "10X", "1e9", True, None, "0"])
def test_parse_count_rejects(bad):
    with pytest.raises(ManifestError, match="^budget:"):
        parse_count(bad, "budget")


def _base() -> dict:
    return json.loads((MANIFESTS / "demo.json").read_text())


@pytest.mark.parametrize("mutate,field", [
    (lambda m: m.pop("seed"), "manifest.seed: required"),
    (lambda m: m.update(seed=-1), "seed:"),
    (lambda m: m.update(seed="1"), "seed:"),
    (lambda m: m.update(colour="red"), "manifest.colour: unknown field"),
    (lambda m: m.update(version=2), "version:"),
    (lambda m: m.update(budget="lots"), "budget:"),
    (lambda m: m.update(sources=[]), "sources:"),
    (lambda m: m["sources"][1].update(mix_percent="16"), "sources[1].mix_percent:"),
    (lambda m: m["sources"][1].update(mix_percent=0), "sources[1].mix_percent:"),
    (lambda m: m["sources"][0].update(mix_percent=90), "sources[*].mix_percent: must sum to 100"),
    (lambda m: m["sources"][2].update(paths=[]), "sources[2].paths:"),
    (lambda m: m["sources"][2].update(paths=[3]), "sources[2].paths[0]:"),
    (lambda m: m["sources"][2].update(format="parquet"), "sources[2].format:"),
    (lambda m: m["sources"][3].update(name="pe s2o"), "sources[3].name:"),
    (lambda m: m["sources"][3].update(name="dclm"), "sources[3].name: duplicate"),
    (lambda m: m["sources"][4].pop("paths"), "sources[4].paths: required"),
    (lambda m: m["sources"][4].update(pool_tokens="many"), "sources[4].pool_tokens:"),
    (lambda m: m["sources"][0].update(dedup={"fuzzy": True}), "sources[0].dedup.fuzzy: unknown field"),
    (lambda m: m["sources"][0].update(dedup={"minhash": {"threshold": 2}}), "sources[0].dedup.minhash.threshold:"),
    (lambda m: m["sources"][0].update(filters=[{"type": "nope"}]), "sources[0].filters[0]"),
    (lambda m: m["sources"][0].update(filters={"type": "min_length"}), "sources[0].filters:"),
    (lambda m: m.update(tokenizer={"eos_token_id": 200000}), "tokenizer.eos_token_id:"),
    (lambda m: m.update(tokenizer={"name": "gpt2"}), "tokenizer.path: required"),
    (lambda m: m.update(tokenizer={"semantics": "strip"}), "tokenizer.semantics: expected one of 'dolma', 'raw'"),
    (lambda m: m.update(tokenizer={"semantics": None}), "tokenizer.semantics:"),
    (lambda m: m.update(tokenizer={"control_tokens": "text"}), "tokenizer.control_tokens: expected one of"),
    (lambda m: m.update(tokenizer={"control_tokens": ["literal"]}), "tokenizer.control_tokens:"),
    (lambda m: m.update(tokenizer={"bos_token_id": "1"}), "tokenizer.bos_token_id: expected a non-negative integer"),
    (lambda m: m.update(tokenizer={"bos_token_id": 100278}), "tokenizer.bos_token_id: must be below vocab_size"),
    (lambda m: m.update(tokenizer={"pad_token_id": 100278}), "tokenizer.pad_token_id: must be below vocab_size"),
    (lambda m: m.update(tokenizer={"threads": 4}), "tokenizer.threads: unknown field"),
    (lambda m: m.update(output_format={"label_mask": "yes"}), "output_format.label_mask:"),
])
def test_errors_name_the_bad_field(mutate, field):
    m = copy.deepcopy(_base())
    mutate(m)
    with pytest.raises(ManifestError) as info:
        manifest_from_dict(m, str(MANIFESTS / "demo.json"))
    assert str(info.value).startswith(field), str(info.value)


def test_bad_json_names_position(tmp_path):
    p = tmp_path / "m.json"
    p.write_text('{"name": "x",\n "seed": }')
    with pytest.raises(ManifestError, match=r"line 2"):
        load_manifest(str(p))


def test_relative_paths_resolve_against_manifest_dir():
    m = load_manifest(str(MANIFESTS / "demo.json"))
    assert m.output == str((MANIFESTS.parent / "build" / "mixes" / "demo").resolve())
    assert m.resolve("web/a.jsonl.zst") == str(MANIFESTS.parent / "build" / "default-corpus" / "web" / "a.jsonl.zst")
    assert m.resolve("s3://bucket/x") == "s3://bucket/x"


def test_validate_cli(capsys):
    from dolmino.manifest import main

    assert main([str(MANIFESTS / "50B.json")]) == 0
    assert "ok" in capsys.readouterr().out


def test_tokenizer_semantics_default_to_dolma_and_parse():
    m = load_manifest(str(MANIFESTS / "demo.json"))
    tok = m.tokenizer
    assert (tok.semantics, tok.control_tokens, tok.bos_token_id) == ("dolma", "dolma", None)
    data = _base()
    data["tokenizer"] = {"semantics": "raw", "control_tokens": "literal", "bos_token_id": 100256}
    tok = manifest_from_dict(data, str(MANIFESTS / "demo.json")).tokenizer
    assert (tok.semantics, tok.control_tokens, tok.bos_token_id) == ("raw", "literal", 100256)
    data["tokenizer"] = {"bos_token_id": None}
    assert manifest_from_dict(data, str(MANIFESTS / "demo.json")).tokenizer.bos_token_id is None
