"""OLMo-core's own dataset (OLMo-core 3.0.0, in its own venv) reads a dolmino build as the build meant it.

bench/interop_olmo_core.py does the work: README's OLMo-core example ("Output format"), run as
written in bench/.venvs/olmo-core, against the build's sidecars and label masks and against the
trainer's MemmapDataset, instance by instance. The venv is made by bench/bench_trainer.py on first
use (about a minute with a package registry, measured on the 2-core dev machine) and reused
afterwards; without a registry the tests are skipped, saying so. Reading a build nobody had
pointed OLMo-core at showed that the natural `part-*.npy` glob takes the label masks as token
files (README now says how to leave them out).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import corpus_documents
from dolmino.documents import write_documents

SEQ_LEN = 128
# one document whose ids hold a run of 32+ copies of a short n-gram: masked in the label mask, and
# an instance holding it is dropped by OLMo 2's instance filter (both readers must agree)
REPEATED = {"id": "repeated", "text": "A table follows. " + "| 0 " * 200 + "| and then prose again, a few words."}


@pytest.fixture(scope="module")
def olmo_core(shared_corpus):
    from bench.bench_trainer import PeerUnavailable, olmo_core_python

    try:
        return olmo_core_python()
    except PeerUnavailable as exc:
        pytest.skip(f"the OLMo-core 3.0.0 venv cannot be built here (no package registry?): {str(exc)[:300]}")


def _build(spark, tmp_path_factory, label_mask: bool):
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict

    root = tmp_path_factory.mktemp("inputs")
    for name, fname in (("web", "web.jsonl.zst"), ("code", "code.jsonl.zst")):
        write_documents(str(root / name / "a.jsonl.zst"), corpus_documents(fname, 25))
    write_documents(str(root / "table" / "a.jsonl.zst"), [REPEATED])  # a pool of one, repeated: surely in the mix
    manifest = manifest_from_dict({
        "name": "olmo-core-interop", "version": 1, "seed": 3, "budget": 40_000, "data_root": str(root),
        "output_format": {"tokens_per_file": "10K", "label_mask": label_mask},
        "sources": [{"name": "web", "paths": ["web/*.jsonl.zst"], "mix_percent": 58.0},
                    {"name": "code", "paths": ["code/*.jsonl.zst"], "mix_percent": 40.0},
                    {"name": "table", "paths": ["table/*.jsonl.zst"], "mix_percent": 2.0}]})
    out = tmp_path_factory.mktemp("mix")
    build(manifest, 40_000, str(out), spark, attributes=str(tmp_path_factory.mktemp("attributes")))
    return out


@pytest.fixture(scope="module")
def masked_build(spark, tmp_path_factory, olmo_core):
    return _build(spark, tmp_path_factory, label_mask=True)


@pytest.mark.slow
def test_olmo_core_reads_a_build_with_label_masks_as_the_build_and_the_trainer_mean_it(masked_build, olmo_core):
    from bench.interop_olmo_core import run_check

    result = run_check(masked_build, SEQ_LEN, python=olmo_core)
    assert result["problems"] == {} and result["ok"]
    assert len(list(masked_build.glob("part-*.label_mask.npy"))) >= 2  # several parts, each cut on its own
    assert result["label_mask"] and result["masked_labels"] >= 32  # the repeated run is masked, both read it
    assert result["filtered_instances"] >= 1  # and both readers drop an instance holding it
    assert result["instances"] >= 40_000 // SEQ_LEN * 0.9


@pytest.mark.slow
def test_olmo_core_reads_a_build_without_label_masks(spark, tmp_path_factory, olmo_core):
    from bench.interop_olmo_core import run_check

    result = run_check(_build(spark, tmp_path_factory, label_mask=False), SEQ_LEN, python=olmo_core)
    assert result["problems"] == {} and result["ok"] and not result["label_mask"]


@pytest.mark.slow
def test_olmo_core_reads_the_build_from_s3_as_readme_shows(masked_build, olmo_core, s3_server):
    """README's example names s3:// parts too: OLMo-core lists and reads them through AWS_ENDPOINT_URL_S3."""
    import boto3

    from bench.interop_olmo_core import run_check

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="olmo-core-interop")
    for f in masked_build.iterdir():
        if f.is_file():
            s3.upload_file(str(f), "olmo-core-interop", f"mixes/m/{f.name}")
    result = run_check(masked_build, SEQ_LEN, python=olmo_core, location="s3://olmo-core-interop/mixes/m")
    assert result["problems"] == {} and result["ok"] and result["masked_labels"] >= 32


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["eos", "mask"])
def test_the_check_fails_on_parts_written_wrong(masked_build, olmo_core, tmp_path, damage):
    """A part whose EOS is not where its sidecar ends a document, or whose mask trains a masked
    token, must fail the check: it compares with what the build meant, not with the bytes alone."""
    import gzip

    from bench.interop_olmo_core import run_check

    copy = tmp_path / "mix"
    shutil.copytree(masked_build, copy)
    with gzip.open(copy / "part-00000.csv.gz", "rt") as fh:
        first_end = int(fh.readline().split(",")[1])
    if damage == "eos":
        tokens = np.fromfile(copy / "part-00000.npy", dtype="<u4")
        tokens[first_end - 1] = 13  # "." where the first document's EOS was
        tokens.tofile(copy / "part-00000.npy")
        wrong = ("input_ids_vs_build", (first_end - 1) // SEQ_LEN)
    else:
        path = next(m for m in sorted(copy.glob("part-*.label_mask.npy")) if not np.fromfile(m, np.bool_).all())
        np.ones(path.stat().st_size, dtype=np.bool_).tofile(path)  # the repeated run trained on after all
        wrong = ("label_mask_vs_build", None)
    result = run_check(copy, SEQ_LEN, python=olmo_core)
    assert not result["ok"] and list(result["problems"]) == [wrong[0]]
    assert wrong[1] is None or result["problems"][wrong[0]]["first"][0] == wrong[1]


def test_the_readme_example_is_the_one_the_check_runs():
    """The check runs README's own OLMo-core example: it must be there, naming what it reads."""
    from bench.interop_olmo_core import readme_snippet

    code = readme_snippet()
    assert code.startswith("from olmo_core.data import ") and "\nbuild = " in code
    assert 'endswith(".label_mask.npy")' in code and "label_mask_paths=" in code
    compile(code, "README.md", "exec")
