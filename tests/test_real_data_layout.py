"""The shipped pool and mix manifests find their inputs in the layouts the real downloads give (README,
"Real data"), listed the way a build lists them, on empty stand-in files.

Found by a tester on a replica of those layouts: `pools/flan.json` looked for `dolma-v1_7/flan/`
(Dolma 1.7's FLAN files are `tulu_flan-NNNN.json.gz`), `pools/wiki.json` for a `wikibooks/`
directory Dolma 1.7 does not have (its Wikibooks are in the `wiki-NNNN` files), so both builds
stopped before Spark; peS2o matched only per-source directories, not the flat files Dolma's own
download recipe (`wget -P DIR`) writes; and `pools/dclm.json` read mlfoundations' DCLM-Baseline
shards, which have no `id` field, so the build quarantined every document (`bad_id`) and wrote an
empty pool: it now reads OLMo's Dolma-format copy in allenai/olmo-mix-1124.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO
from dolmino.build.inputs import list_inputs
from dolmino.manifest import load_manifest

POOLS = REPO / "manifests" / "pools"

# Dolma 1.7 as its URL list (allenai/dolma urls/v1_7.txt) names the files, beside sources the
# pools must not take (megawika is not wiki, cc_en_head is not FLAN).
DOLMA_17 = ["tulu_flan-0000.json.gz", "tulu_flan-0065.json.gz", "pes2o-0000.json.gz", "pes2o-0025.json.gz",
            "wiki-0000.json.gz", "wiki-0001.json.gz", "megawika-0000.json.gz", "cc_en_head-0000.json.gz"]
EXPECTED = {"flan": ["tulu_flan-0000.json.gz", "tulu_flan-0065.json.gz"],
            "pes2o": ["pes2o-0000.json.gz", "pes2o-0025.json.gz"],
            "wiki": ["wiki-0000.json.gz", "wiki-0001.json.gz"]}


def _touch(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"")


def _listed(manifest: str, data_root: Path) -> list[str]:
    listing = list_inputs(load_manifest(str(POOLS / manifest), str(data_root)))
    return sorted(Path(f.name).name for files in listing.files for f in files)


@pytest.mark.parametrize("layout", ["flat", "per_source"])
@pytest.mark.parametrize("pool", sorted(EXPECTED))
def test_dolma_17_pools_find_the_files_dolmas_url_list_names(tmp_path, pool, layout):
    """`wget -P data/upstream/dolma-v1_7` (Dolma's recipe) writes the files flat; `wget -x -nH`
    writes them under `dolma-v1_7/<source dir>/`: the pool takes its own files in either."""
    upstream = tmp_path / "upstream"
    for name in DOLMA_17:
        source_dir = name.rsplit("-", 1)[0]
        _touch(upstream, f"dolma-v1_7/{name}" if layout == "flat" else f"dolma-v1_7/{source_dir}/{name}")
    assert _listed(f"{pool}.json", upstream) == EXPECTED[pool]


def test_the_dclm_pool_reads_olmos_dolma_format_copy_of_dclm_baseline(tmp_path):
    """The manifest's data_root is the olmo-mix-1124 download README describes (the one
    olmo2-mix-1124.json reads), its source that download's data/dclm at any depth."""
    olmo_mix = tmp_path / "olmo-mix-1124"
    shards = ["data/dclm/global-shard_01_of_10/local-shard_0_of_10/shard_00000000_processed.jsonl.zst",
              "data/dclm/dclm-0000.json.zst"]
    for rel in shards + ["data/starcoder/starcoder-0000.json.gz"]:
        _touch(olmo_mix, rel)
    assert _listed("dclm.json", olmo_mix) == sorted(Path(s).name for s in shards)
    manifest = load_manifest(str(POOLS / "dclm.json"))
    assert Path(manifest.data_root) == REPO / "data" / "olmo-mix-1124"
    mix = load_manifest(str(REPO / "manifests" / "olmo2-mix-1124.json"))
    assert manifest.data_root == mix.data_root


def _synth_examples(text: str) -> list[list[str]]:
    """The `python -m dolmino.synth --generator ...` commands of `text` as argv, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [shlex.split(line[line.index("python -m dolmino.synth"):]) for line in joined.splitlines()
            if "python -m dolmino.synth --generator" in line]


def _option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == name]


def _pool_reads() -> list[str]:
    """Every source pattern of the manifests that read `dolmino.synth` output, relative to the checkout, and
    the `--input` of each step their descriptions give (TinyGSM-MIND reads the tinygsm generator's output)."""
    patterns = []
    for manifest in (POOLS / "math.json", REPO / "manifests" / "synth-math-demo.json"):
        spec = json.loads(manifest.read_text())
        root = os.path.relpath(manifest.parent / spec["data_root"], REPO)
        for source in spec["sources"]:
            patterns += [os.path.normpath(os.path.join(root, p)) for p in source["paths"]]
            patterns += re.findall(r"--input '([^']+)'", source.get("description", ""))
    return patterns


def _readme_bash() -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S))


@pytest.mark.parametrize("where", ["README.md", "python -m dolmino.synth --help"])
def test_the_synth_examples_write_where_the_math_pools_read(where):
    """README's and `dolmino synth --help`'s examples wrote tulu_math to build/synth/tulu (help: arithmetic
    to build/synth/arith, gsm8k_numbers to build/synth/gsm8k), which pools/math.json does not read, so the
    pool build that followed stopped on missing inputs; and read TinyGSM from tinygsm/, not from
    data/upstream/tinygsm/ where "Real data" puts it (found by a tester following the README)."""
    import dolmino.synth.__main__ as synth_main

    examples = _synth_examples(_readme_bash() if where == "README.md" else synth_main.__doc__)
    assert examples
    reads = _pool_reads() + [glob for argv in examples for glob in _option(argv, "--input")]
    for argv in examples:
        generator, (out,) = _option(argv, "--generator")[0], _option(argv, "--out")
        part = f"{out}/part-00000.jsonl.zst"
        if generator != "owm_label":  # its labels train the OWM classifier (`owm_math train --labelled`)
            assert any(fnmatch.fnmatch(part, p) for p in reads), (generator, out)
        if generator == "tinygsm":
            assert all(fnmatch.fnmatch("data/upstream/tinygsm/tinygsm-0000.jsonl", g)
                       for g in _option(argv, "--input")), argv


# allenai/dolmino-mix-1124 as the hub lists it: one or two real file names per folder of every source
# (the math folders from a pinned revision's files, a319f19e), beside the card's own files.
DOLMINO_MIX = {
    "dclm": ["data/dclm/0000/dclm-0000.json.zst", "data/dclm/0040/dclm-0007.json.zst"],
    "flan": ["data/flan/tulu_flan-0000.json.gz", "data/flan/tulu_flan-0208.json.gz"],
    "stackexchange": ["data/stackexchange/stackexchange-0000.json.gz"],
    "pes2o": ["data/pes2o/pes2o-0000.json.gz", "data/pes2o/pes2o-0025.json.gz"],
    "wiki": ["data/wiki/wiki-0000.json.gz", "data/wiki/wiki-0001.json.gz"],
    "tulu_math": ["data/math/tulu_math/personahub_interm_alg/train_0000.jsonl",
                  "data/math/tulu_math/personahub_math_grade/train_0000.jsonl",
                  "data/math/tulu_math/personahub_math_v5/train_0000.jsonl"],
    "dolmino_synthmath": ["data/math/dolmino_math_synth/basic_math/basic_math_mj_add_3shot_TRAIN.jsonl",
                          "data/math/dolmino_math_synth/gsm8k-synth/resample_v1_6x/gsm8k_resampled_v1_6x.jsonl",
                          "data/math/dolmino_math_synth/gsm_mind/probem-solving/concat_train.00.jsonl"],
    "tinygsm_mind": ["data/math/tinyGSM-MIND/2students/tiny_gsm_inline_part000.000000.jsonl.gz",
                     "data/math/tinyGSM-MIND/problem-solving/tiny_gsm_inline_part000.000000.jsonl.gz"],
    "mathcoder2_synthmath": ["data/math/mathcoder2-synthmath/ajibawa-2023/Maths-College-0-Final.jsonl",
                             "data/math/mathcoder2-synthmath/m-a-p_Matrix/filtered-math/book_math.0000.0000.jsonl"],
    "metamath_owm": ["data/math/metamath-owmfilter/0000.jsonl.gz"],
    "codesearchnet_owm": ["data/math/codesearchnet-owmfilter/go/0000.jsonl.gz",
                          "data/math/codesearchnet-owmfilter/ruby/0000.jsonl.gz"],
    "gsm8k_train": ["data/math/gsm8k/main/train/0.jsonl.zst", "data/math/gsm8k/socratic/train/0.jsonl.zst"],
}
DOLMINO_MIX_OTHERS = ["README.md", "dolmino.png", ".gitattributes", "data/math/gsm8k/socratic/test/0.jsonl.zst"]


@pytest.mark.parametrize("budget", ["50B", "100B", "300B"])
def test_the_mix_manifests_take_each_released_file_once_and_no_gsm8k_test_item(tmp_path, budget):
    """Each source of a mix manifest lists its own folder of the dolmino-mix-1124 download, and only that.
    Its data/math/gsm8k also holds socratic/test, GSM8K's test split (OLMo's lists take v0_main_train and
    v0_socratic_train only): `data/math/gsm8k/**/*.json*` put its test items into every mix, which
    reads the release with no decontamination (found by a tester on a replica of the hub's layout)."""
    root = tmp_path / "dolmino-mix-1124"
    for rel in [r for files in DOLMINO_MIX.values() for r in files] + DOLMINO_MIX_OTHERS:
        _touch(root, rel)
    manifest = load_manifest(str(REPO / "manifests" / f"{budget}.json"), str(root))
    listing = list_inputs(manifest)
    listed = {source.name: sorted(f.name for f in files) for source, files in zip(manifest.sources, listing.files)}
    assert listed == {name: sorted(files) for name, files in DOLMINO_MIX.items()}


def test_readmes_real_data_tree_names_the_mix_manifests_sources_and_paths():
    """README's tree of the dolmino-mix-1124 download named one `source math` with `data/math/**/*.json*`,
    which no mix manifest has (each math subset is a source of its own), and so hid the gsm8k paths a
    user had to check (found by a tester)."""
    block = _readme_block_after("data/dolmino-mix-1124/")
    shown = dict(re.findall(r"^  data/.*? source (\w+)\s+(?:paths: )?(\S+)", block, re.M))
    for budget in ("50B", "100B", "300B"):
        spec = json.loads((REPO / "manifests" / f"{budget}.json").read_text())
        assert shown == {s["name"]: s["paths"][0] for s in spec["sources"]}, budget


def _readme_block_after(first_line: str) -> str:
    """The lines of README's code block from the one starting with `first_line` to the next unindented one."""
    text = (REPO / "README.md").read_text()
    start = text.index("\n" + first_line) + 1
    end = re.compile(r"^\S", re.M).search(text, text.index("\n", start) + 1).start()
    return text[start:end]
