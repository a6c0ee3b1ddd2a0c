"""`--py-files` of `dolmino build` / `tag` / `mix` (and of build_mix.py): a custom scorer's code
for the driver, which imports it in the manifest check before Spark starts, and for every
executor. Without it a command that starts Spark itself could only use PYTHONPATH, which no
remote executor sees (found by a tester)."""

from __future__ import annotations

import json
import sys
import zipfile

import pytest

from dolmino.build.cli import executor_failure, main

# A scorer whose scores are its texts' lengths over `scale`: module names of their own (Spark's
# Python workers outlive a test, and keep what they imported).
_SCORER = "import numpy as np\n\nclass Scorer:\n    def score(self, texts):\n" \
          "        return np.asarray([len(t) / {scale} for t in texts], dtype=np.float64)\n"
TEXTS = [" ".join(["word"] * n) for n in (3, 10, 40, 80, 120)]


def _manifest(tmp_path) -> str:
    (tmp_path / "data" / "web").mkdir(parents=True)
    (tmp_path / "data" / "web" / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": text}) + "\n" for i, text in enumerate(TEXTS)))
    spec = {"name": "py-files", "version": 1, "seed": 1, "budget": 200, "data_root": str(tmp_path / "data"),
            "sources": [{"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100,
                         "filters": [
                             {"type": "score_threshold", "scorer": "pyfiles_zip_scorer:Scorer", "min_score": 0.5},
                             {"type": "score_threshold", "scorer": "pyfiles_py_scorer:Scorer", "min_score": 0}]}]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    return str(path)


def _scores(attributes, scorer: str) -> list[float]:
    """The scores the set of `scorer` holds, in the documents' order."""
    from dolmino.build.attributes import read_table

    for path in attributes.glob("web/score_threshold-*/**/*.parquet"):
        table, meta = read_table(str(path))
        if meta["spec"]["scorer"] == scorer:
            return table.column("score").to_pylist()
    raise AssertionError(f"no attribute set of {scorer}")


def test_a_scorer_shipped_with_py_files_is_imported_by_the_driver_and_every_executor(spark, tmp_path, monkeypatch,
                                                                                     capsys):
    """A scorer module that exists only in a zip (and a .py) in tmp, on no PYTHONPATH: without
    --py-files the manifest check says it cannot be imported; with it the build tags and mixes,
    and the stored scores are the scorer's."""
    manifest = _manifest(tmp_path)
    (tmp_path / "code").mkdir()
    with zipfile.ZipFile(tmp_path / "code" / "pyfiles_scorers.zip", "w") as zf:
        zf.writestr("pyfiles_zip_scorer.py", _SCORER.format(scale=100))
    (tmp_path / "code" / "pyfiles_py_scorer.py").write_text(_SCORER.format(scale=1000))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command puts the files on the driver's path
    args = [manifest, "--out", str(tmp_path / "out"), "--attributes", str(tmp_path / "attrs"), "--quiet"]
    try:
        assert main(args) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"build_mix: error: {manifest}: sources[0].filters[0].scorer: scorer 'pyfiles_zip_scorer:Scorer': module "
            "'pyfiles_zip_scorer' cannot be imported: ModuleNotFoundError: No module named 'pyfiles_zip_scorer' "
            "(filter 'score_threshold'); give its .py or .zip to --py-files (or put its directory on PYTHONPATH)"]
        shipped = f"{tmp_path / 'code' / 'pyfiles_scorers.zip'},{tmp_path / 'code' / 'pyfiles_py_scorer.py'}"
        assert main([*args, "--py-files", shipped]) == 0
    finally:
        for name in ("pyfiles_zip_scorer", "pyfiles_py_scorer"):
            sys.modules.pop(name, None)
    assert _scores(tmp_path / "attrs", "pyfiles_zip_scorer:Scorer") == [len(t) / 100 for t in TEXTS]
    assert _scores(tmp_path / "attrs", "pyfiles_py_scorer:Scorer") == [len(t) / 1000 for t in TEXTS]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["output"]["tokens"] > 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("wrote 1 part(s), ")


@pytest.mark.parametrize("given, said", [
    ("{tmp}/none.zip", "--py-files {tmp}/none.zip: no such file"),
    ("{tmp}/code", "--py-files {tmp}/code: is a directory; zip it (cd DIR && zip -r ../code.zip .) and give the zip"),
    ("{tmp}/m.json", "--py-files {tmp}/m.json: not a .py, .zip or .egg file; zip a package's directory (cd DIR && "
                     "zip -r ../code.zip .) and give the zip"),
    ("s3://bucket/code.zip", "--py-files s3://bucket/code.zip: is a URL; give local .py, .zip or .egg files (the "
                             "driver imports them before Spark starts)"),
    (",", "--py-files: names no file; give comma-separated .py, .zip or .egg files"),
    ("{tmp}/scorer.py,{tmp}/bad.egg", "--py-files {tmp}/bad.egg: not a zip archive; zip a package's directory (cd DIR "
                                      "&& zip -r ../code.zip .) and give the zip"),
    ("{tmp}/code.zip,{tmp}/code/code.zip", "--py-files: {tmp}/code.zip and {tmp}/code/code.zip have the same file "
                                           "name, and Spark ships files by name; rename one"),
], ids=["missing", "directory", "not-code", "url", "empty", "not-a-zip", "same-name"])
def test_py_files_that_cannot_be_shipped_are_one_line(tmp_path, capsys, given, said):
    """Each is named before Spark starts, in one line naming the flag. A .zip or .egg that is no zip
    archive (an LFS pointer, a tarball renamed) was put on sys.path, which skips it: the scorer
    "cannot be imported", the file unnamed (found by a tester)."""
    manifest = _manifest(tmp_path)
    (tmp_path / "code").mkdir()
    (tmp_path / "scorer.py").write_text("")
    (tmp_path / "bad.egg").write_text("version https://git-lfs.github.com/spec/v1\n")
    for path in (tmp_path / "code.zip", tmp_path / "code" / "code.zip"):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("x.py", "")
    path_before = list(sys.path)
    assert main([manifest, "--out", str(tmp_path / "out"), "--py-files", given.format(tmp=tmp_path)], "tag") == 2
    assert capsys.readouterr().err.splitlines() == [f"dolmino tag: error: {said.format(tmp=tmp_path)}"]
    assert sys.path == path_before


class _Conf:
    def __init__(self, values: dict):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


class _Context:
    """What ship_py_files asks of a SparkContext: its configuration, and addPyFile."""

    def __init__(self, values: dict):
        self.conf, self.added = _Conf(values), []

    def getConf(self):  # noqa: N802 - SparkContext's name
        return self.conf

    def addPyFile(self, path):  # noqa: N802 - SparkContext's name
        self.added.append(path)


def test_py_files_that_spark_submit_shipped_already_are_not_added_again(tmp_path):
    """`spark-submit --py-files code.zip dolmino/build_mix.py --py-files code.zip`: spark-submit
    added the file already (its --files only as data: added as code); one of the same name from
    another path would fail (local mode: "exists and does not match contents") once Spark
    started: one line instead."""
    from dolmino.build.cli import ship_py_files
    from dolmino.errors import BuildError

    code, other = str(tmp_path / "code.zip"), str(tmp_path / "b.py")
    submitted = _Context({"spark.submit.pyFiles": code, "spark.files": f"file://{code}"})
    ship_py_files(submitted, [code, other])
    assert submitted.added == [other]
    elsewhere = _Context({"spark.submit.pyFiles": "/elsewhere/code.zip", "spark.files": "file:///elsewhere/code.zip"})
    with pytest.raises(BuildError, match=rf"^--py-files {code}: spark-submit ships /elsewhere/code.zip under the same "
                                         r"file name code.zip; give one of them$"):
        ship_py_files(elsewhere, [code])
    plain = _Context({})
    ship_py_files(plain, [code, other])
    assert plain.added == [code, other]
    as_data = _Context({"spark.files": f"file://{code}"})  # spark-submit --files code.zip: not on sys.path
    ship_py_files(as_data, [code])
    assert as_data.added == [code]


def test_a_scorer_an_executor_cannot_import_names_py_files():
    """With the scorer on the driver's PYTHONPATH only, a cluster's executors failed with "cannot be
    imported" after the driver had imported it, which said nothing of how to ship it (a tester)."""

    class PythonException(Exception):  # what a failed task raises on the driver, by name
        pass

    line = ("web.filters[0].scorer: scorer 'len_scorer:LengthScorer': module 'len_scorer' cannot be imported: "
            "ModuleNotFoundError: No module named 'len_scorer' (filter 'score_threshold')")
    said = executor_failure(PythonException(f"Traceback ...\ndolmino.errors.ManifestError: {line}\n"))
    assert said == (f"in an executor: ManifestError: {line}; the driver imported it but the executors cannot: give "
                    "its .py or .zip to --py-files, which ships it to every executor")
    # a library the scorer imports is missing on the executors: their environment's, not --py-files'
    other = line.replace("No module named 'len_scorer'", "No module named 'torch'")
    said = executor_failure(PythonException(f"Traceback ...\ndolmino.errors.ManifestError: {other}\n"))
    assert said == f"in an executor: ManifestError: {other}"


@pytest.mark.parametrize("member, suffix", [("filters.py", ".py"), ("json.py", ".py"), ("filters.py", ".zip"),
                                            ("mixers/__init__.py", ".zip"), ("tokenize.py", ".zip")])
def test_a_py_file_named_as_a_dolmino_package_or_a_standard_module_is_refused(tmp_path, capsys, member, suffix):
    """A scorer saved as `filters.py` went on sys.path before dolmino's package `filters`, which the
    build then failed to import ("unexpected ModuleNotFoundError: No module named 'filters.base';
    'filters' is not a package"); one saved as `json.py` lost to the standard library's json on
    the driver ("module 'json' has no callable 'Scorer'") and may not on an executor (a tester)."""
    name = member.split("/")[0].removesuffix(".py")
    if suffix == ".py":
        given = tmp_path / member
        given.write_text(_SCORER.format(scale=100))
    else:
        given = tmp_path / "code.zip"
        with zipfile.ZipFile(given, "w") as zf:
            zf.writestr("helper.py", "")
            zf.writestr(member, _SCORER.format(scale=100))
    whose = "a package of dolmino's" if name in ("filters", "mixers") else "a module of Python's standard library"
    path_before = list(sys.path)
    assert main([_manifest(tmp_path), "--out", str(tmp_path / "out"), "--py-files", str(given)], "tag") == 2
    assert capsys.readouterr().err.splitlines() == [
        f"dolmino tag: error: --py-files {given}: its module {name!r} has the name of {whose}, which it would "
        "replace or lose to; rename it, and the module where the manifest's scorer or your code names it"]
    assert sys.path == path_before


def test_a_helper_beside_a_scorer_that_was_not_given_is_named(tmp_path, monkeypatch, capsys):
    """`--py-files scorers/regex_scorer.py` ships that file alone, and the scorer's `import
    pyfiles_helper` of the module beside it failed with "No module named 'pyfiles_helper'", which
    named no file to add (a tester)."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "pyfiles_helper.py").write_text("SCALE = 100\n")
    (tmp_path / "code" / "pyfiles_helped_scorer.py").write_text(
        "from pyfiles_helper import SCALE\n\n" + _SCORER.format(scale="SCALE"))
    spec = json.loads(open(_manifest(tmp_path)).read())
    spec["sources"][0]["filters"] = [{"type": "score_threshold", "scorer": "pyfiles_helped_scorer:Scorer"}]
    (tmp_path / "m.json").write_text(json.dumps(spec))
    monkeypatch.setattr(sys, "path", list(sys.path))
    scorer, helper = tmp_path / "code" / "pyfiles_helped_scorer.py", tmp_path / "code" / "pyfiles_helper.py"
    try:
        assert main([str(tmp_path / "m.json"), "--out", str(tmp_path / "out"), "--py-files", str(scorer)],
                    "tag") == 2
    finally:
        for name in ("pyfiles_helped_scorer", "pyfiles_helper"):
            sys.modules.pop(name, None)
    assert capsys.readouterr().err.splitlines() == [
        f"dolmino tag: error: {tmp_path / 'm.json'}: sources[0].filters[0].scorer: scorer "
        "'pyfiles_helped_scorer:Scorer': module 'pyfiles_helped_scorer' cannot be imported: ModuleNotFoundError: No "
        f"module named 'pyfiles_helper' (filter 'score_threshold'); {helper} is beside {scorer} but not given to "
        "--py-files, which ships each file alone: give it too (comma-separated), or zip the modules together"]


def test_the_refused_module_names_are_the_projects_packages():
    """`py_files.PROJECT_PACKAGES` (names a --py-files module may not take) and the executors' own
    `worker_env.PACKAGES` (less the trainer, which no task runs) are pyproject's packages: one added
    there and not here would be shadowed unsaid."""
    import re
    from pathlib import Path

    from dolmino.build.worker_env import PACKAGES
    from dolmino.py_files import PROJECT_PACKAGES

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    include = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include = \[([^\]]*)\]", text).group(1)
    declared = {name.strip().strip('"').rstrip("*") for name in include.split(",")}
    assert set(PROJECT_PACKAGES) == declared
    assert set(PACKAGES) == declared - {"trainer"}


@pytest.mark.parametrize("shipped", ["json.py", "code.zip"])
def test_spark_submits_own_py_files_named_as_a_standard_module_or_a_dolmino_package_are_refused(tmp_path, shipped):
    """`spark-submit --py-files json.py dolmino/build_mix.py ...`: spark-submit's PythonRunner puts its
    --py-files first on the driver's PYTHONPATH (a .py as a directory of copies), before pyspark.zip and the
    standard library, and json.py replaced json in dolmino's imports: a traceback ("module 'json' has no
    attribute 'JSONDecoder'"; a reviewer). A subprocess: the shadowing happens as Python starts, from
    PYTHONPATH; the refusal comes before any Spark call (the gateway port is never dialled)."""
    import os
    import subprocess
    from pathlib import Path

    copies = tmp_path / "localPyFiles-1"  # as PythonRunner copies a .py
    copies.mkdir()
    if shipped == "json.py":
        (copies / "json.py").write_text(_SCORER.format(scale=100))
        entry, said = copies, "json.py: its module 'json' has the name of a module of Python's standard library"
    else:
        entry = tmp_path / "code.zip"
        with zipfile.ZipFile(entry, "w") as zf:
            zf.writestr("filters.py", _SCORER.format(scale=100))
        said = f"{entry}: its module 'filters' has the name of a package of dolmino's"
    spark_python = tmp_path / "spark" / "pyspark.zip"  # only its name marks where spark-submit's entries end
    script = Path(__file__).resolve().parents[1] / "dolmino" / "build_mix.py"
    env = {**os.environ, "PYSPARK_GATEWAY_PORT": "1", "PYTHONPATH": f"{entry}{os.pathsep}{spark_python}"}
    result = subprocess.run([sys.executable, str(script), "--manifest", _manifest(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.splitlines()) == (2, [
        f"build_mix: error: spark-submit --py-files {said}, which it would replace or lose to; rename it, and the "
        "module where the manifest's scorer or your code names it"])


def test_spark_submits_own_py_files_wait_off_sys_path_until_checked(tmp_path, monkeypatch):
    """build_mix.py takes spark-submit's entries (those of PYTHONPATH before pyspark.zip) off sys.path before
    it imports dolmino, and puts them back where they were once checked; the user's own PYTHONPATH, after
    pyspark.zip, stays; a driver not started by spark-submit keeps its path."""
    from dolmino.build_mix import hold_spark_submit_py_files

    copies, code, own = str(tmp_path / "localPyFiles-1"), str(tmp_path / "code.zip"), str(tmp_path / "own")
    path = ["/script/dir", copies, code, "/spark/pyspark.zip", own, "/stdlib"]
    monkeypatch.setattr(sys, "path", list(path))
    monkeypatch.setenv("PYTHONPATH", f"{copies}:{code}:/spark/pyspark.zip:{own}")
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert hold_spark_submit_py_files() == (0, []) and sys.path == path
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")
    assert hold_spark_submit_py_files() == (1, [copies, code])
    assert sys.path == ["/script/dir", "/spark/pyspark.zip", own, "/stdlib"]


def test_spark_defaults_py_files_named_as_a_standard_module_are_refused(tmp_path):
    """spark.submit.pyFiles of spark-defaults.conf under `dolmino build` (whose session adds them), as
    spark-submit's own --py-files are refused."""
    from dolmino.build.cli import ship_py_files
    from dolmino.errors import BuildError

    (tmp_path / "json.py").write_text("")
    with pytest.raises(BuildError, match=rf"^spark-submit --py-files {tmp_path / 'json.py'}: its module 'json' has "
                                         "the name of a module of Python's standard library, which it would replace"):
        ship_py_files(_Context({"spark.submit.pyFiles": f"file://{tmp_path / 'json.py'}"}), [])


_DATA_FILE_HINT = ("vocab.txt, which the scorer's code opens beside itself, does not travel with it (--py-files ships "
                   "code alone, as copies): name it as the filter's model_path (a directory for several files), which "
                   "the build ships to every executor and passes to the scorer's callable as model_path=, and open "
                   "that")


@pytest.mark.parametrize("where", ["py", "zip", "elsewhere"])
def test_a_data_file_beside_a_shipped_scorer_says_to_give_it_as_model_path(where):
    """A scorer that opens `Path(__file__).with_name("vocab.txt")` ran in local mode with PYTHONPATH and
    failed on a cluster, whose executors import a copy of its code without the file, with "[Errno 2] No
    such file or directory: '.../userFiles-<uuid>/vocab.txt'" and nothing to do (a reviewer). A file
    missing elsewhere is the scorer's own business."""
    class PythonException(Exception):  # what a failed task raises on the driver, by name
        pass

    files = "/tmp/spark-1/userFiles-2"
    code, missing, error = {
        "py": (f"{files}/vocab_scorer.py", f"{files}/vocab.txt", "FileNotFoundError: [Errno 2] No such file or "
                                                                 "directory"),
        "zip": (f"{files}/scorers.zip/mypkg/scorer.py", f"{files}/scorers.zip/mypkg/vocab.txt",
                "NotADirectoryError: [Errno 20] Not a directory"),
        "elsewhere": (f"{files}/vocab_scorer.py", "/data/vocab.txt", "FileNotFoundError: [Errno 2] No such file or "
                                                                     "directory"),
    }[where]
    line = (f"scorer 'vocab_scorer:VocabScorer': constructing it raised {error}: '{missing}' (input web/a.jsonl, "
            "lines 1-5)")
    frames = (f'  File "{code}", line 8, in __init__\n    self.vocab = read(Path(__file__).with_name("vocab.txt"))\n'
              '  File "/usr/lib/python3.11/pathlib.py", line 1044, in open\n    return io.open(self, mode)\n')
    said = executor_failure(PythonException(f"Traceback ...\nfilters.quality.ScorerError: {line}\n{frames}"))
    hint = _DATA_FILE_HINT.replace("vocab.txt", "mypkg/vocab.txt") if where == "zip" else _DATA_FILE_HINT
    assert said == f"in an executor: ScorerError: {line}" + ("" if where == "elsewhere" else f"; {hint}")


def test_a_data_file_a_scorer_module_opens_as_it_is_imported_says_to_give_it_as_model_path(tmp_path, monkeypatch,
                                                                                          capsys):
    """The same read at the module's top: the driver imports a copy of a --py-files .py, and the manifest
    check said "cannot be imported: FileNotFoundError" naming the copy's directory, gone when the command
    ended."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "vocab.txt").write_text("word\n")
    (tmp_path / "code" / "pyfiles_vocab_scorer.py").write_text(
        "from pathlib import Path\n\nVOCAB = Path(__file__).with_name('vocab.txt').read_text()\n\n"
        + _SCORER.format(scale=100))
    spec = json.loads(open(_manifest(tmp_path)).read())
    spec["sources"][0]["filters"] = [{"type": "score_threshold", "scorer": "pyfiles_vocab_scorer:Scorer"}]
    (tmp_path / "m.json").write_text(json.dumps(spec))
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        assert main([str(tmp_path / "m.json"), "--out", str(tmp_path / "out"), "--py-files",
                     str(tmp_path / "code" / "pyfiles_vocab_scorer.py")], "tag") == 2
    finally:
        sys.modules.pop("pyfiles_vocab_scorer", None)
    [said] = capsys.readouterr().err.splitlines()
    assert "module 'pyfiles_vocab_scorer' cannot be imported: FileNotFoundError: [Errno 2] No such file or " in said
    assert said.endswith(f"(filter 'score_threshold'); {_DATA_FILE_HINT}")
