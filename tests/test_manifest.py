"""Manifest validation: shipped manifests load; every kind of mistake names its field."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from dolmino.errors import ManifestError
from dolmino.manifest import load_manifest, manifest_from_dict, parse_count, plan_warnings

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"

# Per-source tokens of the mixes OLMo released, summed from the "#SOURCE: <dir> (<tokens>)"
# lines of olmo-cookbook src/cookbook/data/mixes/dolmino{50,100,300}.txt (identical to OLMo's
# configs/official-1124 stage-2 YAMLs); a directory listed k times counts k times.
TULU = 0.19158 + 0.02180 + 0.01974
SYNTH = 0.00903 + 0.00221 + 0.00108 + 0.01706
MC2 = 0.78258 + 3.09
RELEASED_B = {
    "50B": {"dclm": 24.31, "flan": 8.54, "stackexchange": 1.26, "pes2o": 3.01, "wiki": 3.66, "tulu_math": TULU,
            "dolmino_synthmath": SYNTH, "tinygsm_mind": 3.06 + 3.41, "mathcoder2_synthmath": MC2,
            "metamath_owm": 0.08422, "gsm8k_train": 0.00123 + 0.00151},
    "100B": {"dclm": 51.47, "flan": 17.08, "stackexchange": 2 * 1.26, "pes2o": 9.76, "wiki": 2 * 3.66,
             "tulu_math": 2 * TULU, "dolmino_synthmath": 2 * SYNTH, "tinygsm_mind": 2 * 3.06 + 3 * 3.41,
             "mathcoder2_synthmath": 2 * MC2, "metamath_owm": 2 * 0.08422, "gsm8k_train": 2 * (0.00123 + 0.00151)},
    "300B": {"dclm": 156.26, "flan": 2 * 17.08, "stackexchange": 4 * 1.26, "pes2o": 58.55, "wiki": 4 * 3.66,
             "tulu_math": 4 * TULU, "dolmino_synthmath": 4 * SYNTH, "tinygsm_mind": 4 * (3.06 + 3.41),
             "mathcoder2_synthmath": 4 * MC2, "metamath_owm": 4 * 0.08422, "gsm8k_train": 4 * (0.00123 + 0.00151)},
}
RELEASED_TOTAL_B = {"50B": 51.47204, "100B": 112.94408, "300B": 311.41816}
MATH_SUBSETS = ["tulu_math", "dolmino_synthmath", "tinygsm_mind", "mathcoder2_synthmath", "metamath_owm",
                "codesearchnet_owm", "gsm8k_train"]


@pytest.mark.parametrize("budget", sorted(RELEASED_B))
def test_shipped_mixes_reproduce_the_released_token_counts(budget):
    m = load_manifest(str(MANIFESTS / f"{budget}.json"))
    assert (m.version, m.kind, m.passes_authority, m.budget_stated) == (2, "mix", True, False)
    rows = {r.name: r for r in m.plan()}
    assert list(rows) == ["dclm", "flan", "stackexchange", "pes2o", "wiki"] + MATH_SUBSETS
    for name, released in RELEASED_B[budget].items():
        assert rows[name].target_tokens == pytest.approx(released * 1e9, rel=0.005), name
    # CodeSearchNet-OWM is in Table 1 but not in OLMo's lists: 1.78M tokens per pass, noise.
    assert rows["codesearchnet_owm"].target_tokens < 1e-4 * m.budget
    assert m.budget == pytest.approx(RELEASED_TOTAL_B[budget] * 1e9, rel=0.005)
    assert sum(r.target_tokens for r in rows.values()) == m.budget
    assert sum(r.mix_percent for r in rows.values()) == pytest.approx(100.0)
    for s in m.sources:  # the released pools are already filtered: sampling only
        assert s.filters == () and not s.dedup.exact and not s.dedup.minhash
        assert s.paths[0].startswith("data/math/" if s.name in MATH_SUBSETS else f"data/{s.name}/")
    assert "Source %" in m.description and "Table 13" in m.description and m.warnings == ()


def test_shipped_mixes_follow_table_13_source_percent():
    table = {"50B": {"dclm": 3.23, "flan": 50, "stackexchange": 100, "pes2o": 5.15, "wiki": 100, "math": 100},
             "100B": {"dclm": 6.85, "flan": 100, "stackexchange": 200, "pes2o": 16.7, "wiki": 100, "math": 200},
             "300B": {"dclm": 20.78, "flan": 200, "stackexchange": 400, "pes2o": 100, "wiki": 400, "math": 400}}
    # Where OLMo's released 100B list departs from Table 13 (wiki listed twice, TinyGSM-MIND's
    # Two Students half a third time), the manifest follows the release and says so.
    departures = {("100B", "wiki"): 200, ("100B", "tinygsm_mind"): 252.7}
    for budget, column in table.items():
        m = load_manifest(str(MANIFESTS / f"{budget}.json"))
        for s in m.sources:
            expected = departures.get((budget, s.name), column["math" if s.name in MATH_SUBSETS else s.name])
            assert s.source_percent == expected, (budget, s.name)
            if (budget, s.name) in departures:
                assert s.name.split("_")[0] in m.description.lower().replace("-", "_")
        # At 50B the two columns agree: the derived Mix % is within 0.05 pp of Table 13's.
    rows = {r.name: r.mix_percent for r in load_manifest(str(MANIFESTS / "50B.json")).plan()}
    derived = {**{k: rows[k] for k in ("dclm", "flan", "stackexchange", "pes2o", "wiki")},
               "math": sum(rows[k] for k in MATH_SUBSETS)}
    for name, mix in {"dclm": 47.2, "flan": 16.6, "stackexchange": 2.45, "pes2o": 5.85, "wiki": 7.11,
                      "math": 20.8}.items():
        assert derived[name] == pytest.approx(mix, abs=0.05), name


def test_every_shipped_manifest_validates():
    paths = sorted(MANIFESTS.glob("*.json")) + sorted(MANIFESTS.glob("pools/*.json"))
    assert {p.name for p in paths} >= {"50B.json", "100B.json", "300B.json", "demo.json", "dclm.json", "flan.json",
                                       "stackexchange.json", "math.json"}
    for p in paths:
        m = load_manifest(str(p))
        assert m.warnings == (), (p, m.warnings)
        assert m.kind == ("pool" if p.parent.name == "pools" else "mix")


def test_a_lockfile_a_glob_names_is_skipped_by_check(tmp_path, capsys):
    """`python -m dolmino.manifest manifests/*.json` (the README's check) failed on the
    demo.lock.json the README's `dolmino lock` writes beside demo.json (found by a tester)."""
    from dolmino.manifest import main

    (tmp_path / "demo.json").write_text((MANIFESTS / "demo.json").read_text())
    (tmp_path / "demo.lock.json").write_text(json.dumps({"manifest": {"dolmino_version": "x"}}))
    assert main([str(tmp_path / "demo.json"), str(tmp_path / "demo.lock.json")]) == 0
    out = capsys.readouterr().out
    assert f"skip {tmp_path / 'demo.lock.json'}: a lockfile (`dolmino lock`), not a manifest" in out
    assert f"ok  {tmp_path / 'demo.json'}" in out and "BAD" not in out
    assert main(["fmt", "--diff", str(tmp_path / "demo.json"), str(tmp_path / "demo.lock.json")]) == 0
    assert "skip" not in capsys.readouterr().out  # fmt's stdout is the diff


def test_check_refuses_two_sources_that_take_the_same_files(tmp_path, capsys):
    """Found in review: `dolmino manifest check` (CI) passed a manifest whose sources' paths take the same
    files (the build's listing refuses it, when the data is there): the same pattern twice, a file one
    source names that another's glob matches, one source's directory (or `/**` tree) inside another's.
    Said from the patterns alone, naming both sources and a file; patterns that only may meet pass."""
    from dolmino.manifest import main

    def check(web: str, also: str) -> str:
        data = {**_base(), "data_root": "/data", "sources": [
            {"name": "web", "paths": [web], "mix_percent": 50}, {"name": "also", "paths": [also], "mix_percent": 50}]}
        (tmp_path / "m.json").write_text(json.dumps(data))
        status = main(["check", str(tmp_path / "m.json")])
        out = capsys.readouterr().out
        assert status == (1 if out.startswith("BAD") else 0), out
        return out

    assert check("web/*.jsonl.zst", "web/b.jsonl.zst") == (
        f"BAD {tmp_path / 'm.json'}: sources 'web' and 'also' both take /data/web/b.jsonl.zst (web: "
        "/data/web/*.jsonl.zst, also: /data/web/b.jsonl.zst): each would read and mix it once per source; narrow the "
        "paths so that a file is one source's (to take a source more than once, raise its source_percent or "
        "mix_percent)\n")
    assert "both take every file /data/web/a/*.jsonl matches (web: /data/web, also:" in check("web", "web/a/*.jsonl")
    assert "both take every file /data/web/*.jsonl matches" in check("web/*.jsonl", "./web/*.jsonl")
    assert "both take /data/web/a/b.json " in check("web/**", "web/a/b.json")
    assert "both take every file /data/web/** matches (web: /data/web/**, also:" in check("web/**", "web/**")
    assert "both take every file s3://b/web/p/*.gz matches" in check("s3://b/web/", "s3://b/web/p/*.gz")
    for apart in (("web/a*", "web/*b"), ("web", "webx/*.jsonl"), ("web/*", "web/sub"), ("web", "web/.cache/*.jsonl")):
        assert check(*apart).startswith("ok "), apart


def test_check_of_overlapping_sources_imports_no_build_stage(tmp_path):
    """Found in review: `dolmino manifest check` said sources that take the same files by importing
    `dolmino.build.inputs`, the manifest module (the bottom layer) reaching up into the build. The
    patterns' rules live below it (`dolmino.source_paths`); the build's listing imports them from there."""
    import subprocess
    import sys

    data = {**_base(), "data_root": "/data", "sources": [
        {"name": "web", "paths": ["web"], "mix_percent": 50},
        {"name": "also", "paths": ["web/a.jsonl"], "mix_percent": 50}]}
    (tmp_path / "m.json").write_text(json.dumps(data))
    code = ("import sys; from dolmino.manifest import main; status = main(['check', sys.argv[1]]); "
            "print(status, sorted(m for m in sys.modules if m.startswith('dolmino.build')))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.json")], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith(f"BAD {tmp_path / 'm.json'}: sources 'web' and 'also' both take /data/web/a.jsonl ")
    assert out[1:] == ["1 []"]


def test_check_imports_a_custom_scorer_given_with_py_files(tmp_path, monkeypatch, capsys):
    """`dolmino manifest check` (CI's `make check-manifests`) had no --py-files: a manifest with a
    scorer that `dolmino build --py-files` builds was BAD ("cannot be imported") unless PYTHONPATH
    was set, and the line did not say what to do (found by testers)."""
    import sys

    from dolmino.manifest import main

    (tmp_path / "scorers").mkdir()
    scorer = tmp_path / "scorers" / "manifest_check_scorer.py"
    scorer.write_text("class Scorer:\n    def score(self, texts):\n        return [len(t) for t in texts]\n")
    spec = {"name": "m", "seed": 1, "budget": "1M", "data_root": str(tmp_path),
            "sources": [{"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100, "filters": [
                {"type": "score_threshold", "scorer": "manifest_check_scorer:Scorer", "min_score": 10}]}]}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(spec))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command puts the files on its path
    try:
        assert main(["check", str(manifest)]) == 1
        assert capsys.readouterr().out.splitlines() == [
            f"BAD {manifest}: sources[0].filters[0].scorer: scorer 'manifest_check_scorer:Scorer': module "
            "'manifest_check_scorer' cannot be imported: ModuleNotFoundError: No module named 'manifest_check_scorer' "
            "(filter 'score_threshold'); give its .py or .zip to --py-files (or put its directory on PYTHONPATH)"]
        assert main(["check", "--py-files", str(scorer), str(manifest)]) == 0
        assert capsys.readouterr().out.startswith(f"ok  {manifest}: mix m, 1 sources")
    finally:
        sys.modules.pop("manifest_check_scorer", None)
    assert main([str(manifest), "--py-files", str(tmp_path / "none.py")]) == 2  # `dolmino manifest FILE` is check
    told = capsys.readouterr().err
    assert told == f"dolmino manifest check: error: --py-files {tmp_path / 'none.py'}: no such file\n"
    # the .py is copied into a temporary directory: a full one is one line naming it, not a traceback
    import errno
    import tempfile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/dolmino-py-files-x")

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    assert main(["check", "--py-files", str(scorer), str(manifest)]) == 2
    assert capsys.readouterr().err == ("dolmino manifest check: error: /tmp/dolmino-py-files-x: No space left on "
                                       "device; free space there\n")


def test_pool_manifests_carry_each_pools_processing():
    pools = {p.stem: load_manifest(str(p)) for p in sorted(MANIFESTS.glob("pools/*.json"))}
    for m in pools.values():
        assert m.budget_stated is False and all(s.source_percent == 100.0 for s in m.sources)
    dclm = [f["type"] for f in pools["dclm"].sources[0].filters]
    assert dclm[0] == "fasttext_quality" and pools["dclm"].sources[0].filters[0]["threshold"] == 0.03311014
    from filters.registry import REGISTRY

    if "fineweb_edu" in REGISTRY:  # the real classifier has landed: the placeholder must be gone
        assert "fineweb_edu" in dclm and "PLACEHOLDER" not in pools["dclm"].description
    else:
        assert dclm[1] == "score_threshold" and "PLACEHOLDER" in pools["dclm"].description
    assert [f["type"] for f in pools["flan"].sources[0].filters][0] == "decontaminate"
    assert pools["stackexchange"].sources[0].format == "stackexchange"
    math = {s.name: s for s in pools["math"].sources}
    assert list(math) == MATH_SUBSETS
    for name in ("mathcoder2_synthmath", "metamath_owm", "codesearchnet_owm"):
        spec = math[name].filters[0]
        assert (spec["type"], spec["label"]) == ("fasttext_quality", "__label__math")
    assert "--generator tinygsm" in math["tinygsm_mind"].description
    assert "--gsm8k-jsonl" in math["gsm8k_train"].description
    assert sum(s.pool_tokens for s in math.values()) == pytest.approx(10.7e9, rel=0.01)


def _passes_manifest(**over) -> dict:
    m = {"name": "p", "version": 2, "seed": 1, "sources": [
        {"name": "web", "paths": ["w/*"], "source_percent": 10, "pool_tokens": "1000"},
        {"name": "math", "paths": ["m/*"], "source_percent": 400, "pool_tokens": "50"}]}
    m.update(over)
    return m


def test_passes_decide_shares_and_budget():
    m = manifest_from_dict(_passes_manifest())
    assert m.passes_authority and m.budget == 300 and not m.budget_stated   # 10% x 1000 + 4 x 50
    assert m.mix_fractions() == pytest.approx({"web": 1 / 3, "math": 2 / 3})
    rows = m.plan()
    assert [(r.name, r.target_tokens, r.copies, r.source_percent) for r in rows] == [
        ("web", 100, 0, pytest.approx(10.0)), ("math", 200, 4, pytest.approx(400.0))]
    assert rows[0].fraction == pytest.approx(0.1) and rows[1].fraction == 0.0
    assert [r.mix_percent for r in rows] == pytest.approx([100 / 3, 200 / 3])
    assert plan_warnings(rows) == []
    # Measured pools (after filtering) replace the expected sizes: the passes still hold.
    measured = m.plan(pool_tokens={"math": 40})
    assert [r.target_tokens for r in measured] == [100, 160] and m.budget_for({"math": 40}) == 260
    assert plan_warnings(measured) == []
    # A smaller budget scales every source and says why.
    small = m.plan(150)
    assert [r.target_tokens for r in small] == [50, 100]
    warned = plan_warnings(small)  # once, not once per source (the build printed one line per source)
    assert warned == ["budget: 150 is 50% of the 300 tokens the sources' passes add up to: every source takes 0.5 x "
                      "its stated passes"]
    # A stated budget keeps its value; a pool size the manifest did not expect is named.
    stated = manifest_from_dict(_passes_manifest(budget="150"))
    assert stated.budget == 150 and stated.budget_for({"math": 40}) == 150
    assert stated.warnings and stated.warnings[0].startswith("budget: 150 is 50% of the 300 tokens")
    assert "manifest expects 50" in plan_warnings(stated.plan(pool_tokens={"math": 40}))[1]
    with pytest.raises(ManifestError, match="no source named 'code'"):
        m.plan(pool_tokens={"code": 5})


def test_source_and_mix_percent_that_disagree_warn(capsys, tmp_path):
    data = _passes_manifest()
    data["sources"][0]["mix_percent"] = 33.5   # derived 33.33: within 0.5 pp
    data["sources"][1]["mix_percent"] = 60.0   # derived 66.67: 6.67 pp apart
    m = manifest_from_dict(data)
    assert len(m.warnings) == 1 and m.warnings[0].startswith("sources[1] math: source_percent 400")
    assert "6.67 pp apart; Source % decides" in m.warnings[0]
    assert m.mix_fractions() == pytest.approx({"web": 1 / 3, "math": 2 / 3})  # the passes win
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    from dolmino.manifest import main

    assert main([str(path)]) == 0   # a warning, not an error
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("ok ") and "warn " in out and "6.67 pp" in out


def test_version_1_keeps_mix_percent_as_the_authority():
    data = _passes_manifest(version=1, budget="300")
    data["sources"][0]["mix_percent"] = 50
    data["sources"][1]["mix_percent"] = 50
    m = manifest_from_dict(data)
    assert not m.passes_authority and m.mix_fractions() == {"web": 0.5, "math": 0.5}
    assert any("mix_percent decides" in w for w in m.warnings)
    rows = m.plan()
    assert [r.target_tokens for r in rows] == [150, 150] and rows[1].source_percent == pytest.approx(300.0)


def test_mix_percent_manifests_need_a_budget_to_plan():
    m = load_manifest(str(MANIFESTS / "demo.json"))
    assert not m.passes_authority and m.budget == 4_000_000
    rows = m.plan()
    assert rows[0].source_percent is None and rows[0].mix_percent == pytest.approx(47.2, abs=0.01)
    data = _base()
    data.pop("budget")
    with pytest.raises(ManifestError, match="^budget:"):
        manifest_from_dict(data, str(MANIFESTS / "demo.json")).plan()


@pytest.mark.parametrize("mutate,field", [
    (lambda m: m["sources"][1].pop("source_percent"), "sources[1].source_percent: required: sources[0]"),
    (lambda m: m["sources"][0].pop("pool_tokens"), "sources[0].pool_tokens: required"),
    (lambda m: m["sources"][0].update(source_percent=0), "sources[0].source_percent: must be > 0"),
    (lambda m: m.update(kind="blend"), "kind:"),
    (lambda m: m.update(kind="pool"), "sources[0].source_percent: a pool takes each source once"),
    (lambda m: m.update(kind="pool", budget="1M"), "budget: a pool manifest"),
    (lambda m: m.update(version=1, kind="mix"), "kind: needs"),
    (lambda m: [s.pop("source_percent") for s in m["sources"]], "sources[0].mix_percent: required"),
])
def test_share_rules_name_the_field(mutate, field):
    m = _passes_manifest()
    mutate(m)
    with pytest.raises(ManifestError) as info:
        manifest_from_dict(m)
    assert str(info.value).startswith(field), str(info.value)


def test_pool_kind_takes_every_source_once():
    data = _passes_manifest(kind="pool")
    for s in data["sources"]:
        s.pop("source_percent")
    m = manifest_from_dict(data)
    assert [s.source_percent for s in m.sources] == [100.0, 100.0] and m.budget == 1050
    # Planned against what the filters kept, a pool is everything once.
    rows = m.plan(pool_tokens={"web": 700, "math": 30})
    assert [(r.target_tokens, r.copies, r.fraction) for r in rows] == [(700, 1, 0.0), (30, 1, 0.0)]
    data["sources"][0]["mix_percent"] = 50
    with pytest.raises(ManifestError, match=r"^sources\[0\].mix_percent: a pool manifest"):
        manifest_from_dict(data)


@pytest.mark.parametrize("text,expected", [
    ("100B", 100 * 10**9), ("1.5M", 1_500_000), ("832.6B", 832_600_000_000), ("7000", 7000),
    (7000, 7000), ("3.9T", 3_900_000_000_000), ("2k", 2000),
])
def test_parse_count(text, expected):
    assert parse_count(text, "budget") == expected


@pytest.mark.parametrize("bad", ["", "B", "-5B", "10X", "1e3K", True, None, "0", 0.4, "0.4", 10**400, "1" + "0" * 400])
def test_parse_count_rejects(bad):
    with pytest.raises(ManifestError, match="^budget:"):
        parse_count(bad, "budget")


@pytest.mark.parametrize("text, expected", [
    ("123456789012345678", 123456789012345678), ("9223372036854775807", 2**63 - 1),  # were ...680 and 2**63
    ("1e9", 10**9), (1e9, 10**9), ("2.5E3", 2500), ("1.5B", 1_500_000_000), ("1.0000005M", None), ("1.5", None),
    (1.5, None), ("100000000000T", "beyond"), ("9223372036854775808", "beyond"), ("1e999999999", "beyond"),
])
def test_counts_parse_exactly_whole_and_within_64_bits(text, expected):
    """Counts went through float: "123456789012345678" planned as ...680, 1.5 as a budget of 2,
    "100000000000T" was accepted where a JSON integer of 31 digits was beyond 64 bits, and "1e9"
    was refused where JSON's 1e9 was read (found by a tester)."""
    if isinstance(expected, int):
        assert parse_count(text, "--budget") == expected
        return
    message = ("is beyond 64 bits (a count is at most 9,223,372,036,854,775,807)" if expected
               else "is not a whole number")
    with pytest.raises(ManifestError, match=rf"^--budget: .*{re.escape(message)}"):
        parse_count(text, "--budget")


def test_counts_and_sizes_parse_at_the_bottom_layer():
    """Every command imports `dolmino.argtypes`; its byte sizes took the count syntax (256M) by
    importing the manifest module lazily, a bottom module reaching up (a second reader). The count
    parser lives there now, and parsing either kind imports nothing above it."""
    import subprocess
    import sys

    code = ("import sys, dolmino.argtypes as a; print(a.byte_size('256M'), a.byte_size('1.5KiB'), "
            "a.count_value('1.5M')); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dolmino', 'filters', 'mixers', 'trainer')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["256000000 1536 1500000", "['dolmino', 'dolmino.argtypes']"]


@pytest.mark.parametrize("written, expected", [
    ('"123456789012345678"', 123456789012345678), ("123456789012345678", 123456789012345678),
    ("123456789012345678.0", 123456789012345678), ("1e9", 10**9), ('"1e9"', 10**9),
    ("1.2345678901234567891e17", "budget: 1.2345678901234567891e17 is not a whole number"),
    ('"100000000000T"', "budget: '100000000000T' is beyond 64 bits"),
    ("1" + "0" * 30, "the integer 100000000000...0000 (31 digits) is beyond 64 bits"),
])
def test_a_manifest_count_is_read_from_its_text(tmp_path, written, expected):
    """A JSON float keeps its text for a count: 123456789012345678.0 as a float is ...680."""
    data = {**_base(), "output_format": {"tokens_per_file": 2**62}}  # parts, at most 100,000
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data).replace('"budget": "4M"', f'"budget": {written}'))
    if isinstance(expected, int):
        assert load_manifest(str(path)).budget == expected
        return
    with pytest.raises(ManifestError, match=re.escape(expected)):
        load_manifest(str(path))


def test_the_plan_says_a_budget_scale_once_and_names_a_source_it_gives_nothing():
    """A source whose positive share rounds to 0 tokens at the budget was dropped unsaid (a tester)."""
    m = manifest_from_dict({**_base(), "budget": "100K", "sources": [
        {"name": "tiny", "paths": ["a/*"], "mix_percent": 0.0004}, {"name": "rest", "paths": ["b/*"],
                                                                    "mix_percent": 99.9996}]})
    rows = m.plan()
    assert [r.target_tokens for r in rows] == [0, 100_000]
    assert plan_warnings(rows) == ["tiny: its share 0.0004% of the budget 100K is under one token: it gets 0 tokens "
                                   "at this budget (a larger budget or share takes it in)"]
    assert plan_warnings(m.plan(1_000_000)) == []
    passes = manifest_from_dict(_passes_manifest())
    assert [w.split(":")[0] for w in plan_warnings(passes.plan(1))] == ["web", "budget"]


def test_a_pool_repeated_past_the_recipe_or_its_own_source_percent_is_one_line():
    """What `dolmino plan` says of planned passes and a build's report of measured ones (`~`: a pool
    size estimated from bytes); Table 13's 400%, a Source % that asks for more and a manifest's max_passes pass."""
    from dolmino.manifest import repetition, repetition_warning

    assert repetition("web", 4.01, 1000, None) is None and repetition("web", 9.5, 10, 9.5) is None
    assert repetition("web", 9.5, 10, None, max_passes=12) is None
    web, math = repetition("web", 5.05, 198_070, None, estimated=True), repetition("math", 16.5, 50, 9.5)
    assert repetition_warning([]) == []
    [line] = repetition_warning([web, math])
    assert line.startswith("2 sources repeat their pools more than 4 times: web 5.05x (~198K-token pool), math 16.5x "
                           "(50-token pool; its Source % asks 9.5); 4 is OLMo 2's recipe's most (Table 13;"), line
    assert repetition_warning([repetition("web", 7, 100, None, max_passes=6.5)], 6.5)[0].startswith(
        "1 source repeats its pool more than 6.5 times: web 7x (100-token pool); 6.5 is the manifest's max_passes: ")


def test_max_passes_is_a_mix_field_written_after_the_budget():
    """`max_passes` (the passes over one pool a mix accepts without a warning) reads as a number, belongs to
    a mix (a pool takes every source once), and `dolmino manifest fmt` places it beside the budget."""
    from dolmino.manifest import MAX_PASSES
    from dolmino.manifest_format import dumps

    assert manifest_from_dict({k: v for k, v in _base().items() if k != "max_passes"}).max_passes == MAX_PASSES == 4
    assert manifest_from_dict(_base()).max_passes == 12.0
    pool = {"name": "p", "version": 2, "kind": "pool", "seed": 1, "max_passes": 4,
            "sources": [{"name": "web", "paths": ["w/*"]}]}
    with pytest.raises(ManifestError, match=r"^max_passes: a pool manifest takes every source once"):
        manifest_from_dict(pool)
    moved = {**{k: v for k, v in _base().items() if k != "max_passes"}, "max_passes": 12}
    assert list(json.loads(dumps(moved))) == list(_base())
    assert list(_base())[:7] == ["name", "description", "version", "kind", "seed", "budget", "max_passes"]


def test_mix_percent_that_do_not_sum_to_100_are_said_to_be_rescaled(tmp_path, capsys):
    """30 + 30 + 40.4 passed the check without a word, and every plan made the 30s 29.88 (a tester)."""
    from dolmino.manifest import main

    data = _base()
    data["sources"] = [{"name": n, "paths": [f"{n}/*"], "mix_percent": p} for n, p in
                       (("pes2o", 30), ("wiki", 30), ("flan", 40.4))]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    assert main(["check", str(path)]) == 0
    assert (f"warn {path}: sources[*].mix_percent: they sum to 100.4, not 100; each share is rescaled to sum to 100 "
            "(pes2o 30 -> 29.88, wiki 30 -> 29.88, flan 40.4 -> 40.24)") in capsys.readouterr().out
    data["sources"][2]["mix_percent"] = 40.01  # the rounding of two-decimal shares (demo.json sums to 100.01)
    assert manifest_from_dict(data).warnings == ()


def test_an_eos_that_is_not_an_added_token_is_refused_at_load():
    """`"eos_token_id": 0` ("!" in dolma2) passed check, plan and lock; only the build refused it,
    after Spark started (a tester). The packaged tokenizer's added tokens are known without it."""
    with pytest.raises(ManifestError, match=r"^tokenizer\.eos_token_id: 0 is not one of the tokenizer's added tokens "
                                            r"\(special ones: <\|endoftext\|> = 100257"):
        manifest_from_dict({**_base(), "tokenizer": {"eos_token_id": 0}})
    with pytest.raises(ManifestError, match=r"^tokenizer\.bos_token_id: 5 is not one"):
        manifest_from_dict({**_base(), "tokenizer": {"bos_token_id": 5}})
    tok = manifest_from_dict({**_base(), "tokenizer": {"eos_token_id": 100265, "bos_token_id": 100256}}).tokenizer
    assert (tok.eos_token_id, tok.bos_token_id) == (100265, 100256)
    # another tokenizer's file is read by the build, not here
    other = {"name": "x", "path": "x.json", "eos_token_id": 0, "pad_token_id": 1, "vocab_size": 10}
    assert manifest_from_dict({**_base(), "tokenizer": other}).tokenizer.eos_token_id == 0


def test_the_packaged_tokenizers_added_tokens_are_the_ones_the_manifest_knows():
    from dolmino.assets import AssetError, dolma2_tokenizer_path
    from dolmino.manifest import DOLMA2_ADDED_TOKEN_IDS, DOLMA2_SPECIAL_TOKENS
    from dolmino.tokenizer import control_id_problems

    try:
        text = dolma2_tokenizer_path().read_text(encoding="utf-8")
    except AssetError as exc:
        pytest.skip(f"the packaged tokenizer is not here: {exc}")
    assert sorted(a["id"] for a in json.loads(text)["added_tokens"]) == list(DOLMA2_ADDED_TOKEN_IDS)
    assert control_id_problems(text, 0, None) == [f"tokenizer.eos_token_id: 0 is not one of the tokenizer's added "
                                                  f"tokens (special ones: {DOLMA2_SPECIAL_TOKENS}, ...)"]


@pytest.mark.parametrize("tokens_per_file, budget, error", [
    (1, "51.5B", "output_format.tokens_per_file: at least 1,000 (a part smaller than a typical document"),
    ("1K", "51.5B", "output_format.tokens_per_file: 1,000 tokens per file writes a budget of 51.5B as 51,500,000 "
                    "parts, more than 100,000; raise it to at least 515,000 or plan a smaller budget"),
    ("1K", "100M", None), ("512M", "50T", None),
])
def test_tokens_per_file_has_a_floor_and_a_budget_a_ceiling_of_parts(tokens_per_file, budget, error):
    """`"tokens_per_file": 1` on 50B passed check and would have asked Spark for 51 billion
    partitions, after hours of tag and pool work (a reviewer)."""
    data = {**_base(), "budget": budget, "output_format": {"tokens_per_file": tokens_per_file}}
    if error is None:
        m = manifest_from_dict(data)
        with pytest.raises(ManifestError, match="^output_format.tokens_per_file: .* plan a smaller budget"):
            m.plan(m.budget * 1000)  # `dolmino plan --budget`
        return
    with pytest.raises(ManifestError, match=f"^{re.escape(error)}"):
        manifest_from_dict(data)


@pytest.mark.parametrize("n, text", [(0, "0"), (999, "999"), (1000, "1K"), (999_499, "999K"), (999_954, "1M"),
                                     (999_500_000, "1B"), (51_458_745_000, "51.5B"), (-2_500, "-2.5K"),
                                     (3.9e12, "3.9T"), (58_550_000_000, "58.6B"), (1_500 * 10**12, "1500T")])
def test_format_count(n, text):
    from dolmino.manifest import format_count

    assert format_count(n) == text  # 999,954 printed as "1e+03K" in a build's last line


def _base() -> dict:
    return json.loads((MANIFESTS / "demo.json").read_text())


@pytest.mark.parametrize("mutate,field", [
    (lambda m: m.pop("seed"), "manifest.seed: required"),
    (lambda m: m.update(seed=-1), "seed:"),
    (lambda m: m.update(seed="1"), "seed:"),
    (lambda m: m.update(colour="red"), "manifest.colour: unknown field"),
    (lambda m: m.update(version=3), "version:"),
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
    # 0 passed the range check and failed in the MinHash stage, after tagging (a counted traceback)
    (lambda m: m["sources"][0].update(dedup={"minhash": {"threshold": 0}}), "sources[0].dedup.minhash.threshold:"),
    # numpy's RandomState (datasketch's permutations) takes seeds below 2**32; this failed inside Spark
    (lambda m: m["sources"][0].update(dedup={"minhash": {"seed": 2**32}}), "sources[0].dedup.minhash.seed:"),
    (lambda m: (m.update(seed=2**32), m["sources"][0].update(dedup={"minhash": {}})),
     "sources[0].dedup.minhash.seed: MinHash takes the manifest seed"),
    # a typo of 10**6 hung the driver in the LSH banding search before the first stage
    (lambda m: m["sources"][0].update(dedup={"minhash": {"num_perm": 10**6}}),
     "sources[0].dedup.minhash.num_perm: at most 1,024"),
    (lambda m: m.update(budget=0.4), "budget: must be a count of at least 1"),
    (lambda m: m.update(max_passes=0.5), "max_passes: must be at least 1"),
    (lambda m: m.update(max_passes="12"), "max_passes: expected a number of passes over one pool"),
    (lambda m: m.update(max_passes=True), "max_passes: expected a number"),
    (lambda m: m.update(max_passes=None), "max_passes: expected a number"),
    (lambda m: m.update(data_root="s3://"), "data_root: 's3://' names no bucket"),  # read as the local "s3:/"
    (lambda m: m.update(output_format={"tokens_per_file": 0.3}), "output_format.tokens_per_file:"),
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


def test_a_large_manifest_seed_is_fine_when_minhash_states_its_own():
    m = copy.deepcopy(_base())
    m["seed"] = 2**40
    m["sources"][0]["dedup"] = {"minhash": {"seed": 7}}
    assert manifest_from_dict(m, str(MANIFESTS / "demo.json")).seed == 2**40


def test_a_data_root_override_must_name_a_bucket():
    with pytest.raises(ManifestError, match="^--data-root: 's3:///x' names no bucket"):
        load_manifest(str(MANIFESTS / "demo.json"), "s3:///x")
    assert load_manifest(str(MANIFESTS / "demo.json"), "s3://b/x").data_root == "s3://b/x"


def test_bad_json_names_position(tmp_path):
    p = tmp_path / "m.json"
    p.write_text('{"name": "x",\n "seed": }')
    with pytest.raises(ManifestError, match=r"line 2"):
        load_manifest(str(p))


@pytest.mark.parametrize("before, after, place", [
    ('"paths": ["a/*.jsonl"]', '"paths": ["a/*.jsonl",\n   ]', "line 2, column 49: a trailing comma before ']'"),
    ('"mix_percent": 100', '"mix_percent": 100,\n  ', "line 2, column 70: a trailing comma before '}'"),
])
def test_a_trailing_comma_is_named_at_the_comma(tmp_path, before, after, place):
    """json stops at the bracket after the comma, a line further on, with "Expecting value" or
    "Expecting property name": a reviewer of a PR that added a trailing comma looked at the wrong line."""
    text = '{"name": "x",\n "sources": [{"name": "a", "paths": ["a/*.jsonl"], "mix_percent": 100}]}'
    assert before in text
    p = tmp_path / "m.json"
    p.write_text(text.replace(before, after))
    with pytest.raises(ManifestError, match=re.escape(f"{p}: not valid JSON ({place}, which JSON does not allow)")):
        load_manifest(str(p))


def test_relative_paths_resolve_against_manifest_dir():
    m = load_manifest(str(MANIFESTS / "demo.json"))
    assert m.output == str((MANIFESTS.parent / "build" / "mixes" / "demo").resolve())
    assert m.resolve("web/a.jsonl.zst") == str(MANIFESTS.parent / "build" / "default-corpus" / "web" / "a.jsonl.zst")
    assert m.resolve("s3://bucket/x") == "s3://bucket/x"


def test_a_manifest_without_data_root_reads_its_inputs_below_its_own_directory(tmp_path, monkeypatch):
    """Its output resolved against its directory and its inputs against the current one: the same
    command from another directory read other files, or none (found by a tester)."""
    from dolmino.build.inputs import list_inputs
    from dolmino.errors import BuildError
    from dolmino.lock import _data_root_as_written

    data = _base()
    data.pop("data_root")
    data["sources"] = [{"name": "web", "paths": ["data/web/*.jsonl"], "mix_percent": 100}]
    path = tmp_path / "manifests" / "m.json"
    (path.parent / "data" / "web").mkdir(parents=True)
    (path.parent / "data" / "web" / "a.jsonl").write_text('{"id": "a", "text": "x"}\n')
    (tmp_path / "elsewhere" / "data" / "web").mkdir(parents=True)  # a namesake beside the caller is not read
    (tmp_path / "elsewhere" / "data" / "web" / "b.jsonl").write_text('{"id": "b", "text": "y"}\n')
    path.write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path / "elsewhere")
    m = load_manifest(str(path))
    assert m.data_root == str(path.parent)
    files = list_inputs(m).files[0]
    assert [(f.uri, f.name) for f in files] == [(str(path.parent / "data" / "web" / "a.jsonl"), "data/web/a.jsonl")]
    assert _data_root_as_written(m) is None  # the lock stays portable: the manifest states no root
    monkeypatch.chdir(path.parent)
    assert [f.name for f in list_inputs(load_manifest("m.json")).files[0]] == ["data/web/a.jsonl"]
    data["sources"][0]["paths"] = ["web/*.jsonl"]
    path.write_text(json.dumps(data))
    with pytest.raises(BuildError, match=f"data root '{path.parent}', the manifest's own directory"):
        list_inputs(load_manifest(str(path)))


@pytest.mark.parametrize("pattern, key", [
    ("./web/*.jsonl", "web/*.jsonl"), ("web/../web/*.jsonl", "web/*.jsonl"), ("web//*.jsonl", "web/*.jsonl"),
    ("web/", "web/"), ("./", ""), (".", ""), ("../up/*.jsonl", "../up/*.jsonl"),
])
def test_source_paths_resolve_alike_below_a_local_and_an_s3_root(pattern, key):
    """`./web/*.jsonl` listed the files under a local root and nothing under `--data-root s3://...`,
    whose keys were matched with the `./` in them (found by a tester). A path above the root stays as
    written (the listing refuses a name through '..')."""
    m = load_manifest(str(MANIFESTS / "demo.json"), "s3://bucket/pools")
    assert m.resolve(pattern) == f"s3://bucket/pools/{key}"
    if not key.startswith(".."):
        local = load_manifest(str(MANIFESTS / "demo.json"), "/data/pools").resolve(pattern)
        assert local == "/data/pools" + ("/" + key.rstrip("/") if key else "")


def test_a_home_in_a_path_is_the_home_directory(tmp_path, monkeypatch):
    """`~/corpus` as data_root, output or --data-root became a directory named "~" beside the
    manifest (found by a tester); it is the home directory, as in a shell and in fsspec."""
    import json

    from trainer.plan import mix_output_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = _base()
    data.update(data_root="~/corpus", output="~/mixes/demo")
    path = tmp_path / "manifests" / "m.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    m = load_manifest(str(path))
    assert (m.data_root, m.output) == (str(tmp_path / "home" / "corpus"), str(tmp_path / "home" / "mixes" / "demo"))
    assert load_manifest(str(path), "~/copy").data_root == str(tmp_path / "home" / "copy")
    with pytest.raises(SystemExit, match=f"the mix {tmp_path / 'home' / 'mixes' / 'demo'} does not exist"):
        mix_output_dir(path)
    from dolmino.build.cli import _location
    from dolmino.lock import _data_root_as_written

    assert _location("~/out") == str(tmp_path / "home" / "out")  # --out, --attributes
    assert _data_root_as_written(m) == "~/corpus"  # the lock keeps it portable
    # Not expanded (a reviewer): a source path, a pattern below the data root (which may be on S3),
    # and an unknown user's, as a shell leaves it (the trainer raised for one).
    assert m.resolve("~/web/*.jsonl") == str(tmp_path / "home" / "corpus" / "~" / "web" / "*.jsonl")
    assert manifest_from_dict({**data, "data_root": "s3://b/c"}).resolve("~/web/a.jsonl") == "s3://b/c/~/web/a.jsonl"
    data["output"] = "~no-such-user-here/mix"
    path.write_text(json.dumps(data))
    assert load_manifest(str(path)).output == str(path.parent / "~no-such-user-here" / "mix")
    with pytest.raises(SystemExit, match=f"the mix {path.parent / '~no-such-user-here' / 'mix'} does not exist"):
        mix_output_dir(path)


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


@pytest.mark.parametrize("pattern", ["../outside/*.jsonl", "web/../../outside/*.jsonl", "..", "./../x.jsonl"])
def test_a_relative_source_path_above_the_data_root_is_refused(tmp_path, pattern):
    """Found by a tester: `"paths": ["../outside/*.jsonl"]` passed `manifest check` and read a sibling of a
    local data root (named in the lock and the attribute files by its absolute path), while under an
    s3:// root the listing refused it. Absolute paths and s3:// URIs stay allowed, as written."""
    spec = {"name": "m", "seed": 1, "budget": "1M", "data_root": str(tmp_path / "root"),
            "sources": [{"name": "a", "paths": ["web/*.jsonl", pattern], "mix_percent": 100}]}
    with pytest.raises(ManifestError, match=re.escape(f"sources[0].paths[1]: {pattern!r} leads above the data root")):
        manifest_from_dict(spec)
    for allowed in (str(tmp_path / "outside" / "*.jsonl"), "s3://bucket/x/*.jsonl", "web/../web/*.jsonl", "./a"):
        spec["sources"][0]["paths"][1] = allowed
        manifest_from_dict(spec)


@pytest.mark.parametrize("version", [2.0, 1.0, True, "2"])
def test_a_version_is_a_whole_number_not_a_float(version):
    """Found by a tester: `"version": 2.0` passed (2.0 == 2) and `dolmino plan` said "version 2.0", while
    every other integer field (seed, num_perm, eos_token_id) refuses a float."""
    spec = {"name": "m", "version": version, "seed": 1, "budget": "1M",
            "sources": [{"name": "a", "paths": ["a/*.jsonl"], "mix_percent": 100}]}
    with pytest.raises(ManifestError, match=re.escape(f"version: this dolmino reads manifest versions 1, 2, got "
                                                      f"{version!r}")):
        manifest_from_dict(spec)


def test_source_names_differing_only_in_case_are_refused():
    """A source's name is a directory (quarantine/, attributes): "FLAN" beside "flan" passed the
    check and would share one on a case-insensitive file system (a tester)."""
    spec = {"name": "m", "version": 1, "seed": 1, "budget": "1M",
            "sources": [{"name": "flan", "paths": ["a/*.jsonl"], "mix_percent": 50},
                        {"name": "FLAN", "paths": ["b/*.jsonl"], "mix_percent": 50}]}
    with pytest.raises(ManifestError, match=r"^sources\[1\]\.name: source names 'flan' and 'FLAN' differ only in case"):
        manifest_from_dict(spec)
    spec["sources"][1]["name"] = "flan"
    with pytest.raises(ManifestError, match=r"^sources\[1\]\.name: duplicate source name 'flan'"):
        manifest_from_dict(spec)
    spec["sources"][1]["name"] = "flan2"
    assert [s.name for s in manifest_from_dict(spec).sources] == ["flan", "flan2"]


def test_a_source_name_ending_in_a_newline_is_refused():
    """"$" let "flan\\n" through as a source name, a directory named with a newline (a tester)."""
    spec = {"name": "m", "version": 1, "seed": 1, "budget": "1M",
            "sources": [{"name": "flan\n", "paths": ["a/*.jsonl"], "mix_percent": 100}]}
    with pytest.raises(ManifestError, match=r"^sources\[0\]\.name: use letters, digits"):
        manifest_from_dict(spec)
