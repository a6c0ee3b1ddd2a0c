"""The Spark runner: generate, kill and resume, cache hits, then build a mix from the output.

The last test feeds the generated directories to `dolmino.build_mix.build` like any other
source, with exact dedup and decontamination against the packaged GSM8K test split: the
substituted-number rewrites of test items are mostly removed (the reason the normal
filters run after generation), arithmetic Q&A is untouched.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import zstandard
from pyspark import cloudpickle

from dolmino.documents import Quarantine, read_documents
from dolmino.synth.arithmetic import ArithmeticGenerator
from dolmino.synth.runner import REPORT_NAME, run

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors cannot import test modules


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("part-*.jsonl.zst"))}


def _docs(out: Path) -> list[dict]:
    return [d for p in sorted(out.glob("part-*.jsonl.zst")) for _, d in read_documents(str(p), Quarantine())]


class CrashingArithmetic(ArithmeticGenerator):
    """Dies in one partition while `marker` exists: a job killed half-way."""

    def __init__(self, marker: str, crash_partition: int, **kw):
        super().__init__(**kw)
        self.marker, self.crash_partition = marker, crash_partition

    def config(self) -> dict:
        return super().config()  # the crash switch is not part of the output's identity

    def generate(self, partition, num_partitions, seed):
        for k, doc in enumerate(super().generate(partition, num_partitions, seed)):
            if partition == self.crash_partition and k == 5 and Path(self.marker).exists():
                raise RuntimeError("simulated executor death")
            yield doc


def test_generate_kill_resume_and_cache(spark, tmp_path):
    out = tmp_path / "arith"
    marker = tmp_path / "crash"
    marker.touch()
    gen = CrashingArithmetic(str(marker), 2, num_docs=400)
    gen.name = "arithmetic"
    with pytest.raises(Exception, match="simulated executor death"):
        run(gen, str(out), 4, 9, spark)
    assert not (out / "part-00002.done.json").exists() and not (out / "part-00002.jsonl.zst").exists()
    assert not list(out.glob("*.tmp*"))
    # Spark aborts the job's other running tasks when one dies, so which of 0, 1, 3 finished
    # first is timing; at least one did (local[2] starts task 2 only when a slot frees up).
    finished = [i for i in range(4) if (out / f"part-{i:05d}.done.json").exists()]
    assert finished and 2 not in finished
    marker.unlink()
    report = run(gen, str(out), 4, 9, spark)
    # A task Spark was aborting may still finish its partition after run() raised (its Python
    # worker is not stopped at once; seen on a loaded machine): kept too, as a finished one.
    assert set(finished) <= set(report["partitions_cached"]) and 2 not in report["partitions_cached"]
    assert report["partitions_generated"] == [i for i in range(4) if i not in report["partitions_cached"]]
    assert report["attempted"] == report["kept"] == 400 and report["rejected"] == {}
    first = _digests(out)

    # A clean, uninterrupted run writes the very same bytes.
    clean = tmp_path / "clean"
    run(ArithmeticGenerator(num_docs=400), str(clean), 4, 9, spark)
    assert _digests(clean) == first

    # Delete one done-file: only that partition is regenerated, byte-identical.
    (clean / "part-00001.done.json").unlink()
    report = run(ArithmeticGenerator(num_docs=400), str(clean), 4, 9, spark)
    assert report["partitions_generated"] == [1] and _digests(clean) == first
    # A damaged part (sha256 mismatch) is regenerated too.
    (clean / "part-00003.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd broken")
    assert run(ArithmeticGenerator(num_docs=400), str(clean), 4, 9, spark)["partitions_generated"] == [3]
    assert _digests(clean) == first
    # Nothing to do: every partition cached.
    assert run(ArithmeticGenerator(num_docs=400), str(clean), 4, 9, spark)["partitions_generated"] == []

    # A different config or partition count invalidates the cache; stale higher parts vanish.
    report = run(ArithmeticGenerator(num_docs=400), str(clean), 3, 9, spark)
    assert report["partitions_generated"] == [0, 1, 2] and not (clean / "part-00003.jsonl.zst").exists()
    assert [(d["id"], d["text"]) for d in _docs(clean)] == [(d["id"], d["text"]) for d in _docs(out)]
    saved = json.loads((clean / REPORT_NAME).read_text())
    assert saved["attempted"] == 400 and saved["num_partitions"] == 3
    done = json.loads((clean / "part-00000.done.json").read_text())
    assert done["kept"] == len(_docs(clean)[:done["kept"]]) and done["sha256"] == _digests(clean)["part-00000.jsonl.zst"]
    frame = zstandard.ZstdDecompressor().decompressobj().decompress((clean / "part-00000.jsonl.zst").read_bytes())
    assert json.loads(frame.split(b"\n")[0])["source"] == "dolmino_synthmath_arithmetic"


def _s3_files(uri: str) -> dict[str, bytes]:
    from dolmino import s3

    bucket, prefix = s3.split_uri(uri + "/")
    return {key[len(prefix):]: s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
            for key, _ in s3.iter_keys(bucket, prefix)}


def test_s3_out_holds_what_a_local_out_holds_and_resumes(spark_with_s3, tmp_path):
    """On a cluster whose nodes share no disk, --out s3://: each executor writes its partitions there."""
    import uuid

    from dolmino import s3

    local = tmp_path / "local"
    local_report = run(ArithmeticGenerator(num_docs=300), str(local), 3, 5, spark_with_s3)
    bucket = f"synth-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    out = f"s3://{bucket}/synth/arith"
    report = run(ArithmeticGenerator(num_docs=300), out, 3, 5, spark_with_s3)
    assert report == local_report
    files = _s3_files(out)

    def timeless(name: str, data: bytes):  # a done-file records how long its partition took
        return {k: v for k, v in json.loads(data).items() if k != "elapsed_s"} if name.endswith(".done.json") else data

    assert {name: timeless(name, data) for name, data in files.items()} == {
        p.relative_to(local).as_posix(): timeless(p.name, p.read_bytes()) for p in local.rglob("*") if p.is_file()}
    assert {"rejected/part-00002.jsonl.zst", "quarantine/part-00002.jsonl.zst", REPORT_NAME} <= files.keys()

    # Rerun: every partition cached; a damaged part on S3 is made again, byte-identical.
    assert run(ArithmeticGenerator(num_docs=300), out, 3, 5, spark_with_s3)["partitions_cached"] == [0, 1, 2]
    s3.client().put_object(Bucket=bucket, Key="synth/arith/part-00001.jsonl.zst", Body=b"broken")
    assert run(ArithmeticGenerator(num_docs=300), out, 3, 5, spark_with_s3)["partitions_generated"] == [1]
    again = _s3_files(out)
    parts = [name for name in files if name.endswith(".jsonl.zst")]
    assert {n: again[n] for n in parts} == {n: files[n] for n in parts}
    # Fewer partitions: the stale ones (and their rejected / quarantine files) are removed.
    run(ArithmeticGenerator(num_docs=300), out, 2, 5, spark_with_s3)
    assert not [name for name in _s3_files(out) if "part-00002" in name]


def test_partitions_the_driver_cannot_see_fail_the_run(tmp_path):
    """A local --out on a cluster without a shared disk: each partition lands on the node that
    made it. The driver finds them missing and says so, and writes no report."""
    from dolmino.synth.base import config_hash
    from dolmino.synth.runner import SynthRunError, check_visible, run_partition

    gen = ArithmeticGenerator(num_docs=40)
    executor_disk, driver_disk = tmp_path / "executor", tmp_path / "driver"
    executor_disk.mkdir(), driver_disk.mkdir()
    stats = [run_partition(gen, i, 2, 5, str(executor_disk), config_hash(gen, 2, 5)) for i in range(2)]
    check_visible(str(executor_disk), stats)
    with pytest.raises(SynthRunError, match=r"2 of 2 partitions .* not visible at .*driver \(first: "
                                            r"part-00000.jsonl.zst\); .* write --out to s3://"):
        check_visible(str(driver_disk), stats)


def _tinygsm_parts(folder: Path, n: int) -> dict[str, str]:
    row = {"question": "Sam has 2 apples. How many?", "code": "def simple_math_problem() -> int:\n"
           "    apples = 2\n    return apples\n"}
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"part-{i:05d}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
            json.dumps(row).encode() + b"\n"))
    return _digests(folder)


def test_an_out_holding_the_inputs_is_refused_before_anything_is_removed(tmp_path, capsys, monkeypatch):
    """`--input 'D/part-*.jsonl.zst' --out D` once deleted the inputs above --partitions and
    then crashed reading them; now one error line, exit 2, every input intact, no Spark."""
    import dolmino.build.spark
    from dolmino.synth.__main__ import main
    from dolmino.synth.runner import SynthRunError
    from dolmino.synth.tinygsm import TinyGsmGenerator

    monkeypatch.setattr(dolmino.build.spark, "make_spark", lambda *a, **k: pytest.fail("Spark was started"))
    same = tmp_path / "same"
    before = _tinygsm_parts(same, 3)
    (tmp_path / "link").symlink_to(same)
    for out in (same, tmp_path / "link"):
        assert main(["--generator", "tinygsm", "--input", str(same / "part-*.jsonl.zst"), "--out", str(out),
                     "--partitions", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith(f"python -m dolmino.synth: error: input {same / 'part-00000.jsonl.zst'} is in --out")
    assert _digests(same) == before and sorted(p.name for p in same.iterdir()) == sorted(before)
    with pytest.raises(SynthRunError, match="give another --out"):  # the library call: before Spark is used
        run(TinyGsmGenerator(str(same / "part-00002.jsonl.zst")), str(same), 1, 0, spark=None)
    assert _digests(same) == before
    # GSM8K read from a part file of --out, too
    assert main(["--generator", "gsm8k_train", "--gsm8k-jsonl", str(same / "part-00001.jsonl.zst"),
                 "--out", str(same)]) == 2
    assert "is in --out" in capsys.readouterr().err and _digests(same) == before


def test_only_parts_an_earlier_run_of_the_generator_wrote_are_removed(tmp_path):
    from dolmino.synth.base import config_hash
    from dolmino.synth.runner import SynthRunError, check_out_dir, run_partition

    out = tmp_path / "out"
    gen = ArithmeticGenerator(num_docs=40)
    for i in range(4):
        run_partition(gen, i, 4, 5, str(out), config_hash(gen, 4, 5))
    assert check_out_dir(gen, str(out), 2) == [2, 3]  # run() removes these (test_generate_kill_resume_and_cache)
    files = sorted(p.relative_to(out) for p in out.rglob("*"))

    foreign = out / "part-00007.jsonl.zst"
    foreign.write_bytes(b"someone's data")
    with pytest.raises(SynthRunError, match=r"part-00007.jsonl.zst was not written by a synth run \(no "
                                            r"part-00007.done.json of arithmetic"):
        run(gen, str(out), 2, 5, spark=None)
    foreign.unlink()
    (out / "part-00003.jsonl.zst").write_bytes(b"replaced since")  # its done-file no longer vouches for it
    with pytest.raises(SynthRunError, match="part-00003.jsonl.zst was not written by a synth run"):
        run(gen, str(out), 2, 5, spark=None)
    done = json.loads((out / "part-00002.done.json").read_text())
    (out / "part-00002.done.json").write_text(json.dumps({**done, "generator": "tinygsm"}))
    with pytest.raises(SynthRunError, match="part-00002.done.json was written by generator 'tinygsm', not "
                                            "'arithmetic'"):
        run(gen, str(out), 2, 5, spark=None)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files


def test_an_s3_out_is_checked_alike(tmp_path, s3_server):
    import uuid

    from dolmino import s3
    from dolmino.synth.gsm8k_train import Gsm8kTrainGenerator
    from dolmino.synth.runner import SynthRunError, check_out_dir

    bucket = f"synth-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    row = b'{"question": "Ann has 4 cats. How many?", "answer": "#### 4"}\n'
    s3.client().put_object(Bucket=bucket, Key="d/part-00000.jsonl.zst", Body=zstandard.ZstdCompressor().compress(row))
    s3.client().put_object(Bucket=bucket, Key="d/part-00004.jsonl.zst", Body=b"someone's data")
    gen = Gsm8kTrainGenerator(f"s3://{bucket}/d/part-00000.jsonl.zst")
    with pytest.raises(SynthRunError, match=f"input s3://{bucket}/d/part-00000.jsonl.zst is in --out"):
        check_out_dir(gen, f"s3://{bucket}/d/", 1)
    with pytest.raises(SynthRunError, match="part-00004.jsonl.zst was not written by a synth run"):
        check_out_dir(ArithmeticGenerator(num_docs=4), f"s3://{bucket}/d", 1)
    assert sorted(key for key, _ in s3.iter_keys(bucket, "d/")) == ["d/part-00000.jsonl.zst", "d/part-00004.jsonl.zst"]


def test_cli_and_rejections_are_written(tmp_path, capsys, spark):
    from dolmino.synth.__main__ import main

    assert main(["--generator", "tulu_math", "--out", str(tmp_path / "t"), "--num-docs", "3",
                 "--endpoint", "http://127.0.0.1:9", "--model", "m"]) == 2
    assert "--personas" in capsys.readouterr().err
    assert main(["--generator", "mind", "--out", str(tmp_path / "m"), "--num-docs", "3"]) == 2
    assert "endpoint" in capsys.readouterr().err
    from dolmino.synth.gsm8k_numbers import Gsm8kNumberGenerator

    report = run(Gsm8kNumberGenerator(num_docs=300, demo_test_split=True), str(tmp_path / "g"), 3, 1, spark)
    assert report["attempted"] == 300 == report["kept"] + sum(report["rejected"].values())
    rejected = [json.loads(line) for p in sorted((tmp_path / "g" / "rejected").glob("*.jsonl.zst"))
                for line in zstandard.ZstdDecompressor().decompressobj().decompress(p.read_bytes()).splitlines()]
    assert len(rejected) == sum(report["rejected"].values()) and all(r["rejected"] and r["detail"] for r in rejected)


@pytest.fixture(scope="module")
def gsm8k_index(tmp_path_factory):
    from dolmino import evalsets
    from dolmino.assets import AssetError
    from filters.decontamination import build_index

    try:
        instances = list(evalsets.iter_instances(["gsm8k"]))
    except AssetError as exc:
        pytest.skip(f"eval wheels unavailable: {exc}")
    path = tmp_path_factory.mktemp("decon") / "gsm8k.npz"
    build_index(instances, str(path))
    return str(path)


@pytest.mark.slow  # a full build_mix run: ~30 s on a loaded 2-core machine
def test_generated_output_builds_as_a_normal_source(spark, tmp_path, gsm8k_index):
    from dolmino.build.mix import build
    from dolmino.manifest import manifest_from_dict
    from dolmino.synth.gsm8k_numbers import Gsm8kNumberGenerator

    root = tmp_path / "synth"
    # The same seed with two partition counts: identical documents, which exact dedup removes.
    run(ArithmeticGenerator(num_docs=300), str(root / "arith-a"), 2, 4, spark)
    run(ArithmeticGenerator(num_docs=300), str(root / "arith-b"), 3, 4, spark)
    gsm = run(Gsm8kNumberGenerator(num_docs=200, demo_test_split=True), str(root / "gsm8k"), 2, 4, spark)
    decon = {"type": "decontaminate", "index_path": gsm8k_index}
    manifest = manifest_from_dict({
        "name": "synth-demo", "version": 1, "seed": 3, "budget": 40_000, "data_root": str(root),
        "output_format": {"tokens_per_file": "1M"},
        "sources": [
            {"name": "synthmath_arith", "paths": ["arith-*/part-*.jsonl.zst"], "mix_percent": 50.0,
             "filters": [decon], "dedup": {"exact": True}},
            {"name": "synthmath_gsm8k", "paths": ["gsm8k/part-*.jsonl.zst"], "mix_percent": 50.0,
             "filters": [decon], "dedup": {"exact": True}},
        ]})
    report = build(manifest, 40_000, str(tmp_path / "mix"), spark)
    by_name = {s["name"]: s for s in report["sources"]}
    arith, gsm8k = by_name["synthmath_arith"], by_name["synthmath_gsm8k"]
    assert arith["docs_in"] == 600
    removed = {k: v["docs"] for k, v in arith["removed"].items()}
    assert sum(v for k, v in removed.items() if "exact" in k) == 300 and len(removed) == 1   # no decontamination
    assert gsm8k["docs_in"] == gsm["kept"]
    decon_removed = sum(v["docs"] for k, v in gsm8k["removed"].items() if "overlap" in k)
    assert decon_removed > 0.5 * gsm["kept"]              # test-split rewrites are caught
    for s in report["sources"]:
        assert s["docs_in"] == s["kept_docs"] + sum(r["docs"] for r in s["removed"].values())
    assert list((tmp_path / "mix").glob("part-*.npy"))


def test_an_out_that_is_a_file_is_refused_before_spark(tmp_path, capsys, monkeypatch):
    """A file given as --out reached os.makedirs after Spark started: a FileExistsError traceback."""
    import dolmino.build.spark
    from dolmino.synth.__main__ import main

    monkeypatch.setattr(dolmino.build.spark, "make_spark", lambda *a, **k: pytest.fail("Spark was started"))
    out = tmp_path / "file"
    out.write_text("x")
    assert main(["--generator", "arithmetic", "--out", str(out), "--num-docs", "2", "--partitions", "1"]) == 2
    assert capsys.readouterr().err == f"python -m dolmino.synth: error: --out {out} exists and is not a directory\n"


def test_an_out_of_another_configuration_is_refused_before_spark(tmp_path, capsys, monkeypatch):
    """A rerun with another --seed into the same --out replaced its parts one by one; stopped
    half-way, it left parts 0-1 of seed 2 beside parts 2-7 of seed 1 and no report (found by a
    tester). The command refuses it, naming both; the same configuration resumes as before."""
    import dolmino.build.spark
    from dolmino.synth.__main__ import main
    from dolmino.synth.base import config_hash
    from dolmino.synth.runner import check_out_dir, run_partition

    monkeypatch.setattr(dolmino.build.spark, "make_spark", lambda *a, **k: pytest.fail("Spark was started"))
    out = tmp_path / "arith"
    gen = ArithmeticGenerator(num_docs=40)
    for i in range(2):
        run_partition(gen, i, 2, 1, str(out), config_hash(gen, 2, 1))
    before = _digests(out)
    assert check_out_dir(gen, str(out), 2, seed=1) == []  # this configuration: resumed
    chash = config_hash(gen, 2, 1)[:12]
    for flags, this in ((["--seed", "2"], "seed 2, 2 partitions"), (["--seed", "1", "--partitions", "3"],
                                                                     "seed 1, 3 partitions")):
        assert main(["--generator", "arithmetic", "--num-docs", "40", "--out", str(out), "--partitions", "2",
                     *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            f"python -m dolmino.synth: error: --out {out} holds part-00000.done.json of another configuration "
            f"(arithmetic, seed 1, 2 partitions, config hash {chash}; this run: arithmetic, {this}, config hash ")
        assert err.endswith("give another --out, or remove that one first\n")
    assert _digests(out) == before


@pytest.mark.parametrize("out", ["afile/sub", "/proc/dolmino-synth-out"])
def test_an_out_that_cannot_be_made_is_refused_before_spark(out, tmp_path, capsys, monkeypatch):
    """`--out afile/sub` started Spark, then ended in a NotADirectoryError traceback (a tester)."""
    import dolmino.build.spark
    from dolmino.synth.__main__ import main

    monkeypatch.setattr(dolmino.build.spark, "make_spark", lambda *a, **k: pytest.fail("Spark was started"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(["--generator", "arithmetic", "--out", out, "--num-docs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"python -m dolmino.synth: error: --out {out} cannot be made or "
                                                   "written (") and err.endswith("give a writable directory\n")


def test_the_synth_math_demo_manifest_reads_the_index_make_corpus_builds():
    """manifests/synth-math-demo.json looked for its decontamination index at <repo>/decon/
    olmes.npz, where nothing writes one: its build failed at once, 'no such file or directory'
    (found by a tester). The index is the one `make corpus` and README's command write."""
    from dolmino.manifest import load_manifest

    repo = Path(__file__).resolve().parents[1]
    assert "--out build/decontamination/olmes.npz" in (repo / "Makefile").read_text()
    manifest = load_manifest(str(repo / "manifests" / "synth-math-demo.json"))
    paths = {f["index_path"] for s in manifest.sources for f in s.filters if f["type"] == "decontaminate"}
    assert paths == {str(repo / "build" / "decontamination" / "olmes.npz")}


def test_the_synth_math_demo_manifest_accepts_the_passes_its_readme_build_takes():
    """README's synth-math-demo build warned on every run that dolmino_synthmath_gsm8k_numbers repeats its
    pool 14.28x: decontamination keeps 335 of the 2,702 test-derived items (35K tokens) for a 500K target, the
    demo's point, so the warning's remedies did not apply (t283). The manifest states the passes it means."""
    from dolmino.manifest import load_manifest, repetition

    repo = Path(__file__).resolve().parents[1]
    manifest = load_manifest(str(repo / "manifests" / "synth-math-demo.json"))
    assert repetition("dolmino_synthmath_gsm8k_numbers", 14.28, 35_000, None, manifest.max_passes) is None
    assert f"max_passes {manifest.max_passes:g}" in manifest.description
