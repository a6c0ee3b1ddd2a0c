"""Lockfiles: `dolmino lock` pins inputs, models and the tokenizer; `--locked` refuses drift.

Every drift test changes one thing and checks that the problem names the file: a changed,
an added and a removed input, a changed model, a changed tokenizer; locally (SHA-256, with
the mtime quick check and --rehash) and on S3 (ETag, on a moto server).
"""

from __future__ import annotations

import json
import re
import shutil
import os
import uuid
from pathlib import Path

import pytest

from dolmino import lock as lock_cmd
from dolmino import s3
from dolmino.build.cli import main as build_main
from dolmino.errors import BuildError
from dolmino.lock import (
    BUILD_LOCK_NAME, check_lock, lock_path_for, make_lock, place_lock, read_lock, require_lock, sha256_file, write_lock,
)
from dolmino.manifest import load_manifest


def _doc(i: int, text: str = "A document about data curation.") -> str:
    return json.dumps({"id": f"d{i}", "text": f"{text} {i}"}) + "\n"


@pytest.fixture
def project(tmp_path) -> Path:
    """A pool manifest with two sources, a model file and an index directory."""
    data = tmp_path / "data"
    (data / "web").mkdir(parents=True)
    (data / "code").mkdir()
    (data / "web" / "a.jsonl").write_text("".join(_doc(i) for i in range(5)))
    (data / "web" / "b.jsonl").write_text("".join(_doc(i) for i in range(5, 9)))
    (data / "code" / "c.jsonl").write_text(_doc(20))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "quality.bin").write_bytes(b"model-v1" * 100)
    (tmp_path / "models" / "index").mkdir()
    (tmp_path / "models" / "index" / "part0.bin").write_bytes(b"index-part-0")
    manifest = {
        "name": "locked-pool", "version": 2, "kind": "pool", "seed": 1, "data_root": "data",
        "sources": [
            {"name": "web", "paths": ["web/*.jsonl"],
             "filters": [{"type": "fasttext_quality", "model_path": "models/quality.bin", "threshold": 0.5}]},
            {"name": "code", "paths": ["code/*.jsonl"],
             "filters": [{"type": "score_threshold", "scorer": "fasttext_expected_label",
                          "model_path": "models/index", "min_score": 1.0}]},
        ],
    }
    (tmp_path / "pool.json").write_text(json.dumps(manifest, indent=2))
    return tmp_path


def _manifest(project: Path):
    return load_manifest(str(project / "pool.json"))


def test_lock_records_inputs_models_tokenizer_and_version(project):
    path = write_lock(_manifest(project))
    assert path == str(project / "pool.lock.json") == lock_path_for(str(project / "pool.json"))
    lock = read_lock(path)
    assert lock["format"] == "dolmino-lock/1" and lock["dolmino_version"] not in ("", "unknown")
    assert lock["manifest"]["name"] == "locked-pool" and lock["hash"] == "sha256" and lock["data_root"] == "data"
    web = {e["name"]: e for e in lock["inputs"]["web"]}
    assert sorted(web) == ["web/a.jsonl", "web/b.jsonl"]
    a = project / "data" / "web" / "a.jsonl"
    assert web["web/a.jsonl"]["sha256"] == sha256_file(str(a)) and web["web/a.jsonl"]["size"] == a.stat().st_size
    resources = {r["path"]: r for r in lock["resources"]}
    assert resources["models/quality.bin"]["sha256"] == sha256_file(str(project / "models" / "quality.bin"))
    assert resources["models/index"]["kind"] == "directory"
    assert len(lock["tokenizer"]["sha256"]) == 64 and lock["tokenizer"]["packaged"] is True
    # one input per line: a re-lock diffs file by file
    text = Path(path).read_text()
    assert sum('"name": "web/' in line for line in text.splitlines()) == 2
    assert check_lock(_manifest(project), path) == []


def test_lock_and_build_with_an_asset_cache_that_cannot_be_made_say_so_in_one_line(project, monkeypatch, capsys):
    """A read-only HOME (no DOLMINO_CACHE): `dolmino lock` and the build printed AssetError's traceback and
    "unexpected AssetError" (the build only after Spark started), for an error that says what to do (a tester)."""
    (project / "afile").write_text("")
    monkeypatch.setenv("DOLMINO_CACHE", str(project / "afile" / "cache"))
    said = f"the asset cache {project / 'afile' / 'cache'} cannot be made (Not a directory); set DOLMINO_CACHE"
    assert lock_cmd.main([str(project / "pool.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dolmino lock: error: {said}") and len(err.strip().splitlines()) == 1, err
    assert build_main(["--manifest", str(project / "pool.json"), "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"build_mix: error: {said}") and len(err.strip().splitlines()) == 1, err
    assert not (project / "out").exists()  # said before Spark started


def test_changed_input_is_named(project):
    path = write_lock(_manifest(project))
    (project / "data" / "web" / "b.jsonl").write_text("".join(_doc(i, "Changed text!") for i in range(5, 9)))
    problems = check_lock(_manifest(project), path)
    assert len(problems) == 1 and problems[0].startswith("web: web/b.jsonl: size ")


def test_same_size_new_content_is_found_by_its_hash(project):
    path = write_lock(_manifest(project))
    target = project / "data" / "code" / "c.jsonl"
    before = target.stat()
    target.write_text(target.read_text().replace("curation", "cur4tion"))  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    problems = check_lock(_manifest(project), path)
    assert problems == [problems[0]] and "code: code/c.jsonl: SHA-256" in problems[0] and "content changed" in problems[0]
    # size and mtime restored: the quick check trusts them (documented); --rehash does not
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert check_lock(_manifest(project), path) == []
    assert "code: code/c.jsonl: SHA-256" in check_lock(_manifest(project), path, rehash=True)[0]


def test_touched_but_unchanged_input_is_not_drift(project):
    path = write_lock(_manifest(project))
    target = project / "data" / "web" / "a.jsonl"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 5 * 10**9))
    assert check_lock(_manifest(project), path) == []


def test_added_and_removed_inputs_are_named(project):
    path = write_lock(_manifest(project))
    (project / "data" / "web" / "c.jsonl").write_text(_doc(99))
    (project / "data" / "web" / "a.jsonl").unlink()
    problems = check_lock(_manifest(project), path)
    assert problems == ["web: web/c.jsonl: not in the lock (a new input file)",
                        "web: web/a.jsonl: in the lock but no longer listed (removed or renamed)"]


def test_source_without_files_is_named(project):
    path = write_lock(_manifest(project))
    (project / "data" / "code" / "c.jsonl").unlink()
    problems = check_lock(_manifest(project), path)
    assert len(problems) == 1 and "source 'code': no input files match" in problems[0]
    assert "(the lock has 1 file(s))" in problems[0]


def test_changed_model_and_index_are_named(project):
    path = write_lock(_manifest(project))
    (project / "models" / "quality.bin").write_bytes(b"model-v2" * 100)
    (project / "models" / "index" / "part1.bin").write_bytes(b"another part")
    problems = check_lock(_manifest(project), path)
    assert len(problems) == 2
    assert problems[0].startswith("sources[0].filters[0].model_path (web, fasttext_quality): models/quality.bin: SHA-256")
    assert problems[1].startswith("sources[1].filters[0].model_path (code, score_threshold): models/index: SHA-256")


def test_manifest_naming_another_model_is_drift(project):
    path = write_lock(_manifest(project))
    m = json.loads((project / "pool.json").read_text())
    (project / "models" / "quality-v2.bin").write_bytes(b"model-v1" * 100)
    m["sources"][0]["filters"][0]["model_path"] = "models/quality-v2.bin"
    (project / "pool.json").write_text(json.dumps(m))
    problems = check_lock(_manifest(project), path)
    assert problems == ["sources[0].filters[0].model_path (web, fasttext_quality): the manifest names "
                        "models/quality-v2.bin, the lock models/quality.bin"]


def test_changed_tokenizer_is_named(project):
    path = write_lock(_manifest(project))
    lock = json.loads(Path(path).read_text())
    lock["tokenizer"]["sha256"] = "0" * 64
    Path(path).write_text(json.dumps(lock))
    problems = check_lock(_manifest(project), path)
    assert len(problems) == 1 and problems[0].startswith("tokenizer allenai/dolma2-tokenizer: SHA-256 0000")


def test_fast_lock_records_no_hash_and_flags_any_mtime_change(project):
    path = write_lock(_manifest(project), fast=True)
    lock = read_lock(path)
    assert lock["hash"] == "size+mtime" and all("sha256" not in e for e in lock["inputs"]["web"])
    target = project / "data" / "web" / "a.jsonl"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    problems = check_lock(_manifest(project), path)
    assert problems == ["web: web/a.jsonl: modified since the lock (mtime); the lock was made with --fast, so the "
                        "content cannot be compared"]


def test_lock_of_another_manifest_and_data_root_override(project, tmp_path):
    path = write_lock(_manifest(project))
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(project / "data", copy)  # same files elsewhere: names are relative to the root
    from dataclasses import replace

    assert check_lock(replace(_manifest(project), data_root=str(copy)), path) == []
    spec = json.loads((project / "pool.json").read_text())
    (project / "other.json").write_text(json.dumps({**spec, "name": "other", "seed": 2}))
    other = load_manifest(str(project / "other.json"))
    assert "the lock is for manifest 'locked-pool', not 'other'" in check_lock(other, path)[0]


def test_a_manifest_renamed_since_its_lock_is_the_locked_manifest(project, capsys):
    """Found by a tester: the lock's manifest was told by its name alone, so a manifest whose name was
    changed after it was locked, every byte it reads as locked, was drift ("the lock is for manifest
    'locked-pool'") and its --locked build refused; its content, but for the name, is the locked one."""
    path = write_lock(_manifest(project))
    spec = json.loads((project / "pool.json").read_text())
    (project / "renamed.json").write_text(json.dumps({**spec, "name": "pool-v2"}, indent=4))
    assert check_lock(load_manifest(str(project / "renamed.json")), path) == []
    assert lock_cmd.main([str(project / "renamed.json"), "--check", "--lockfile", path]) == 0
    assert "no drift" in capsys.readouterr().out
    (project / "renamed.json").write_text(json.dumps({**spec, "name": "pool-v2", "seed": 2}))
    assert check_lock(load_manifest(str(project / "renamed.json")), path) == [
        f"{path}: the lock is for manifest 'locked-pool', not 'pool-v2'"]


def test_lock_refuses_a_manifest_that_cannot_build(project):
    (project / "models" / "quality.bin").unlink()
    with pytest.raises(BuildError, match=r"models/quality.bin: no such file"):
        make_lock(_manifest(project))


def test_lock_refuses_what_the_build_refuses_of_the_sources_together(project, tmp_path, capsys):
    """A file two sources match, and a data root the listing refuses: the lock listed one source
    at a time and pinned the first (the build refuses it), and said the second once per source,
    all on one line without separators (found by a tester)."""
    spec = json.loads((project / "pool.json").read_text())
    spec["sources"][1]["paths"].append("web/a.jsonl")
    (project / "overlap.json").write_text(json.dumps(spec))
    with pytest.raises(BuildError, match=r"1 input file\(s\) matched by more than one source \(first: .*web/a.jsonl, "
                                         r"by 'web', 'code'\)"):
        make_lock(load_manifest(str(project / "overlap.json")))
    glob_root = tmp_path / "copy[1]"
    shutil.copytree(project / "data", glob_root)
    assert lock_cmd.main([str(project / "pool.json"), "--data-root", str(glob_root), "--lockfile",
                          str(tmp_path / "x.lock.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.count("holds glob characters") == 1, err
    assert lock_cmd.main([str(project / "pool.json"), "--data-root", str(tmp_path / "none"), "--lockfile",
                          str(tmp_path / "y.lock.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no input files match '" + str(tmp_path / "none" / "web" / "*.jsonl") + "'; source 'code': no input" in err
    # as the build says it: the data root is not there (the lock said only "no input files match"; a tester)
    assert f"data root '{tmp_path / 'none'}', which does not exist, " in err, err


def test_cli_lock_and_check(project, capsys):
    manifest = str(project / "pool.json")
    assert lock_cmd.main([manifest]) == 0
    assert "wrote " + str(project / "pool.lock.json") + ": 3 input file(s) in 2 source(s)" in capsys.readouterr().out
    assert lock_cmd.main([manifest, "--check"]) == 0
    (project / "data" / "web" / "new.jsonl").write_text(_doc(1))
    assert lock_cmd.main([manifest, "--check"]) == 1
    out = capsys.readouterr().out
    assert "drift: web: web/new.jsonl: not in the lock" in out and "1 difference(s)" in out
    assert lock_cmd.main([str(project / "missing.json")]) == 2


def test_check_reads_the_lock_once(project, capsys, monkeypatch):
    """`dolmino lock --check` read and checked the lock file twice, for the drift and again for the
    manifest note: the lock of a 300,000-file pool is 54 MB of JSON, 0.6 s a reading (t235). Counted."""
    manifest = str(project / "pool.json")
    assert lock_cmd.main([manifest]) == 0
    reads = []
    monkeypatch.setattr(lock_cmd, "read_lock", lambda path: reads.append(path) or read_lock(path))
    assert lock_cmd.main([manifest, "--check"]) == 0
    assert "no drift" in capsys.readouterr().out
    assert reads == [str(project / "pool.lock.json")]


def test_locked_build_refuses_drift_before_spark(project, capsys):
    manifest = str(project / "pool.json")
    assert build_main(["--manifest", manifest, "--locked", "--out", str(project / "out")]) == 2
    assert "no lock file" in capsys.readouterr().err
    write_lock(_manifest(project))
    (project / "data" / "web" / "b.jsonl").unlink()
    assert build_main(["--manifest", manifest, "--locked", "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert "--locked: 1 difference(s) from" in err and "web/b.jsonl: in the lock but no longer listed" in err
    assert not (project / "out").exists()  # refused before anything was written


def test_a_locked_builds_differences_read_apart_on_its_one_line(project, capsys):
    """Found by a tester: the build prints an error on one line, and the differences ran together there
    ("... 72 now web: web/4.jsonl: not in the lock ..."): each ends with ';', as `dolmino lock`'s own do."""
    write_lock(_manifest(project))
    (project / "data" / "web" / "b.jsonl").unlink()
    (project / "data" / "web" / "n.jsonl").write_text(_doc(99))
    assert build_main(["--manifest", str(project / "pool.json"), "--locked", "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert ("web: web/n.jsonl: not in the lock (a new input file); web: web/b.jsonl: in the lock but no longer "
            "listed (removed or renamed) (if the change is intended") in err, err


def test_require_lock_and_place_lock(project, tmp_path):
    path = write_lock(_manifest(project))
    assert require_lock(_manifest(project)) == (path, None)
    out = tmp_path / "build"
    out.mkdir()
    place_lock(str(out), path)
    assert (out / BUILD_LOCK_NAME).read_bytes() == Path(path).read_bytes()
    place_lock(str(out), None)  # an unlocked rebuild of the same output removes the stale lock
    assert not (out / BUILD_LOCK_NAME).exists()


def test_a_locked_build_reads_its_lock_once_and_lists_its_inputs_once(project, spark, monkeypatch):
    """`dolmino build --locked` read the lock twice (the drift check, then the note on an edited
    manifest) and listed every source three times: the lock's check and the build's own before Spark
    started, and the build again after, which could build a file added meanwhile that no lock names
    (t242). On S3 each listing is every LIST of every source's prefix."""
    from dolmino.build import inputs

    spec = json.loads((project / "pool.json").read_text())
    for source in spec["sources"]:
        source["filters"] = []  # the fixture's model files are not models
    manifest = project / "plain.json"
    manifest.write_text(json.dumps(spec))
    write_lock(load_manifest(str(manifest)))
    listed, read = [], []
    real_list, real_read = inputs.list_sources, lock_cmd.read_lock
    monkeypatch.setattr(inputs, "list_sources", lambda *a, **k: listed.append(a[0].name) or real_list(*a, **k))
    monkeypatch.setattr(lock_cmd, "read_lock", lambda *a, **k: read.append(a[0]) or real_read(*a, **k))
    assert build_main([str(manifest), "--locked", "--out", str(project / "out"), "--quiet"]) == 0
    assert (len(listed), len(read)) == (1, 1), (listed, read)
    assert (project / "out" / BUILD_LOCK_NAME).is_file()


def test_s3_inputs_are_locked_by_etag(s3_server, tmp_path):
    bucket = f"lock-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    for name, body in (("web/a.jsonl", _doc(1)), ("web/b.jsonl", _doc(2))):
        client.put_object(Bucket=bucket, Key=f"pool/{name}", Body=body.encode())
    manifest = {"name": "s3-pool", "version": 2, "kind": "pool", "seed": 1, "data_root": f"s3://{bucket}/pool",
                "sources": [{"name": "web", "paths": ["web/*.jsonl"]}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    m = load_manifest(str(tmp_path / "m.json"))
    path = write_lock(m)
    entries = read_lock(path)["inputs"]["web"]
    assert [e["name"] for e in entries] == ["web/a.jsonl", "web/b.jsonl"] and all(e["etag"] for e in entries)
    assert check_lock(m, path) == []
    client.put_object(Bucket=bucket, Key="pool/web/b.jsonl", Body=_doc(3).encode())  # same size, new object
    problems = check_lock(m, path)
    assert len(problems) == 1 and problems[0].startswith("web: web/b.jsonl: ETag ")
    # a lock made from S3 cannot vouch for a local copy, and says so
    local = tmp_path / "local"
    (local / "web").mkdir(parents=True)
    (local / "web" / "a.jsonl").write_text(_doc(1))
    from dataclasses import replace

    problems = check_lock(replace(m, data_root=str(local)), path)
    assert "web: web/a.jsonl: locked as an S3 object, now read as a local file" in problems[0]


def test_a_lockfile_in_a_missing_directory_fails_before_hashing(project, capsys):
    """It hashed every input (hours on a real pool) and then failed with a traceback."""
    target = project / "nodir" / "pool.lock.json"
    assert lock_cmd.main([str(project / "pool.json"), "--lockfile", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {target}: no directory {project / 'nodir'}" in err
    assert "Traceback" not in err and "sha256" not in err  # nothing was hashed first


def test_a_manifest_edited_since_its_lock_is_noted(project, capsys):
    """The lock pins what the manifest reads; its SHA-256 of the manifest is provenance. A
    manifest edited since (here a threshold) passed `--check` as "no drift" without a word, and
    a --locked build copied a lock that names another manifest. Both now say so (not drift)."""
    manifest = str(project / "pool.json")
    assert lock_cmd.main([manifest]) == 0
    capsys.readouterr()
    assert lock_cmd.main([manifest, "--check"]) == 0
    assert "note:" not in capsys.readouterr().out
    spec = json.loads((project / "pool.json").read_text())
    spec["sources"][0]["filters"][0]["threshold"] = 0.6
    (project / "pool.json").write_text(json.dumps(spec, indent=2))
    assert lock_cmd.main([manifest, "--check"]) == 0
    out = capsys.readouterr().out
    assert "no drift" in out and "was made from another version of this manifest" in out
    from dolmino.build.cli import prepare, parse_args as build_args

    prepare(build_args(["--manifest", manifest, "--locked", "--out", str(project / "out")], "all"), "all")
    assert "warning: " in capsys.readouterr().err


def test_a_hand_edited_lock_missing_a_field_is_named(project, capsys):
    """Found by a tester: a resource entry without "sha256" made `dolmino lock --check` and a
    --locked build fail with a KeyError traceback."""
    manifest = _manifest(project)
    path = write_lock(manifest)
    lock = json.loads(Path(path).read_text())
    del lock["resources"][0]["sha256"]
    Path(path).write_text(json.dumps(lock))
    with pytest.raises(BuildError, match="malformed lock: resources\\[0\\] has no 'sha256' \\(str\\); lock the "
                                         "manifest again"):
        check_lock(manifest, path)
    assert lock_cmd.main([str(project / "pool.json"), "--check"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    lock = json.loads(Path(write_lock(manifest)).read_text())
    lock["inputs"]["web"][0].pop("size")
    Path(path).write_text(json.dumps(lock))
    with pytest.raises(BuildError, match="malformed lock: inputs\\['web'\\]\\[0\\] has no 'size'"):
        read_lock(path)


@pytest.mark.parametrize("spoil, error", [
    (lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), "manifest": "locked-pool"})),
     "malformed lock: manifest is not an object; lock the manifest again (`dolmino lock MANIFEST`)"),
    (lambda path: path.write_bytes(b"\xff\xfe{}"), "not UTF-8 text"),
    (lambda path: (path.unlink(), path.mkdir()), "is a directory, not a lock file"),
])
def test_a_lock_that_is_not_a_lock_file_is_one_line(project, capsys, spoil, error):
    """Found by a tester: `dolmino lock --check` (and a --locked build) printed a traceback for a lock whose
    "manifest" was hand-edited to a string (AttributeError), one saved as UTF-16 (UnicodeDecodeError) and a
    --lockfile naming a directory (IsADirectoryError)."""
    path = Path(write_lock(_manifest(project)))
    spoil(path)
    with pytest.raises(BuildError, match=re.escape(error)):
        check_lock(_manifest(project), str(path))
    capsys.readouterr()
    assert lock_cmd.main([str(project / "pool.json"), "--check"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and error in err and len(err.strip().splitlines()) == 1, err
    assert build_main(["--manifest", str(project / "pool.json"), "--locked", "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and error in err, err


def test_a_missing_tokenizer_or_model_is_found_before_the_inputs_are_hashed(project, monkeypatch):
    """Found by a reviewer: `dolmino lock` hashed every input (hours on a real pool) before it
    said the tokenizer.path was missing."""
    spec = json.loads((project / "pool.json").read_text())
    spec["tokenizer"] = {"name": "custom", "path": str(project / "missing-tokenizer.json"), "eos_token_id": 0,
                         "pad_token_id": 1, "vocab_size": 10}
    (project / "pool.json").write_text(json.dumps(spec))

    def no_hashing(*args, **kwargs):
        raise AssertionError("inputs hashed before the tokenizer was read")

    monkeypatch.setattr(lock_cmd, "_hash_all", no_hashing)
    with pytest.raises(BuildError, match="cannot lock 'locked-pool':\n  tokenizer.path: .*missing-tokenizer.json"):
        make_lock(_manifest(project))


@pytest.mark.parametrize("jobs", ["0", "-2", "many"])
def test_jobs_below_one_is_a_usage_error(jobs, capsys):
    """`dolmino lock --jobs 0` hashed on one thread unsaid (found by the CLI sweep)."""
    from dolmino.lock import main

    with pytest.raises(SystemExit) as exc:
        main(["manifests/demo.json", "--jobs", jobs])
    assert exc.value.code == 2 and "--jobs" in capsys.readouterr().err


def test_a_model_path_written_differently_is_no_drift(project, capsys):
    """Found by a tester: "./models/quality.bin" for "models/quality.bin" (the same file) was drift
    to `lock --check` (exit 1) and a --locked build refused, while `dolmino diff` said no change:
    the check compared the path's text, not what the build opens."""
    from dolmino.diff import diff_manifests

    path = write_lock(_manifest(project))
    spec = json.loads((project / "pool.json").read_text())
    spec["sources"][0]["filters"][0]["model_path"] = "./models/quality.bin"
    spec["sources"][1]["filters"][0]["model_path"] = "models/../models/index/"
    (project / "edited.json").write_text(json.dumps(spec))
    edited = load_manifest(str(project / "edited.json"))
    assert diff_manifests(_manifest(project), edited, with_plan=False).empty
    assert check_lock(edited, path) == []
    assert require_lock(edited, path)[0] == path
    assert lock_cmd.main([str(project / "edited.json"), "--check", "--lockfile", path]) == 0
    assert "no drift" in capsys.readouterr().out
    # what the build opens is still pinned: its bytes, and which file it is
    (project / "models" / "quality.bin").write_bytes(b"model-v2" * 100)
    assert "models/quality.bin: SHA-256" in check_lock(_manifest(project), path)[0]
    assert "./models/quality.bin: SHA-256" in check_lock(edited, path)[0]


def test_a_bad_manifest_is_named_by_lock(project, capsys):
    """Found by a tester: `dolmino lock --check bad.json` said "sources[0].filters[0].thresh:
    unknown parameter ..." without the file (`dolmino diff` names it)."""
    spec = json.loads((project / "pool.json").read_text())
    spec["sources"][0]["filters"][0]["thresh"] = 1
    bad = project / "bad.json"
    bad.write_text(json.dumps(spec))
    assert lock_cmd.main([str(bad), "--check"]) == 2
    assert capsys.readouterr().err == (f"dolmino lock: error: {bad}: sources[0].filters[0].thresh: unknown parameter "
                                       "for 'fasttext_quality' (did you mean 'threshold'?) (accepted: cascade, "
                                       "engine, label, model_path, threshold)\n")
    assert lock_cmd.main([str(project / "missing.json")]) == 2
    assert capsys.readouterr().err == f"dolmino lock: error: {project / 'missing.json'}: manifest file not found\n"
    assert lock_cmd.main([str(project / "pool.json"), "--data-root", "s3://"]) == 2
    assert capsys.readouterr().err.startswith("dolmino lock: error: --data-root: 's3://' names no bucket")


def test_a_listing_problem_is_found_before_the_inputs_are_hashed(project, monkeypatch):
    """Found by a tester: a glob that matches nothing was known before the pool was hashed
    (hours on a real one) but said after it."""
    spec = json.loads((project / "pool.json").read_text())
    spec["sources"][1]["paths"] = ["cdoe/*.jsonl"]  # the typo; 'web' is the pool that would be hashed
    (project / "pool.json").write_text(json.dumps(spec))

    def no_hashing(*args, **kwargs):
        raise AssertionError("inputs hashed before a listing problem was said")

    monkeypatch.setattr(lock_cmd, "_hash_all", no_hashing)
    with pytest.raises(BuildError, match=r"cannot lock 'locked-pool':\n  source 'code': no input files match "
                                         r"'.*cdoe/\*.jsonl'\n  \(relative paths resolve against the data root "):
        make_lock(_manifest(project))


# ---------------------------------------------------------------------------- custom scorers' code

_SCORER = "import numpy as np\n\nclass LengthScore:\n    def score(self, texts):\n" \
          "        return np.asarray([len(t) / {scale} for t in texts], dtype=np.float64)\n"


@pytest.fixture
def scorer(project, monkeypatch):
    """A "module:callable" scorer in a module file on sys.path (as PYTHONPATH puts it), named
    uniquely (imported modules stay in sys.modules), and the project's "code" source scoring with
    it after its registered scorer. Yields (scorer string, module file)."""
    import sys

    name = f"lock_scorer_{uuid.uuid4().hex[:8]}"
    module = project / "scorers" / f"{name}.py"
    module.parent.mkdir()
    module.write_text(_SCORER.format(scale=100.0))
    monkeypatch.syspath_prepend(str(module.parent))
    spec = json.loads((project / "pool.json").read_text())
    spec["sources"][1]["filters"].append({"type": "score_threshold", "scorer": f"{name}:LengthScore", "min_score": 0})
    (project / "pool.json").write_text(json.dumps(spec, indent=2))
    yield f"{name}:LengthScore", module
    sys.modules.pop(name, None)


_WHERE = "sources[1].filters[1].scorer (code, score_threshold)"


def test_a_custom_scorers_code_is_locked_and_an_edit_is_drift(project, scorer, capsys):
    """Found by a reviewer: the lock recorded inputs, models and the tokenizer but not a custom
    scorer's code, so `--check` passed and a --locked build scored with the edited code. The
    lock records its digest (the one its attribute set is keyed by); an edit is drift, named."""
    from filters.quality import scorer_source

    name, module = scorer
    manifest = str(project / "pool.json")
    assert lock_cmd.main([manifest]) == 0
    assert "2 model/index file(s), 1 custom scorer(s), tokenizer" in capsys.readouterr().out
    lock = read_lock(str(project / "pool.lock.json"))
    # the registered scorer (fasttext_expected_label) is dolmino's code: not recorded
    assert lock["scorers"] == [{"where": _WHERE, "scorer": name, "sha256": scorer_source(name)[1],
                                "hashed": f"module file scorers/{module.name}"}]
    assert str(project) not in json.dumps(lock["scorers"])  # no absolute path (a home directory) in a committed lock
    assert lock_cmd.main([manifest, "--check"]) == 0
    assert "no drift" in capsys.readouterr().out

    module.write_text(_SCORER.format(scale=1000.0))
    problems = check_lock(_manifest(project), str(project / "pool.lock.json"))
    locked = lock["scorers"][0]["sha256"]
    assert len(problems) == 1 and problems[0].startswith(f"{_WHERE}: scorer {name!r}: SHA-256 {locked[:16]}... in the "
                                                         "lock, ")
    assert problems[0].endswith(f"now (the scorer's code changed: module file scorers/{module.name})")
    assert lock_cmd.main([manifest, "--check"]) == 1
    assert f"drift: {problems[0]}\n" in capsys.readouterr().out
    assert build_main(["--manifest", manifest, "--locked", "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert "--locked: 1 difference(s) from" in err and "the scorer's code changed" in err and "Traceback" not in err
    assert not (project / "out").exists()

    module.write_text(_SCORER.format(scale=100.0))  # the code as locked
    assert check_lock(_manifest(project), str(project / "pool.lock.json")) == []


def test_a_scorer_added_removed_or_replaced_is_drift(project, scorer):
    name, _ = scorer
    with_scorer = json.loads((project / "pool.json").read_text())
    without = json.loads(json.dumps(with_scorer))
    without["sources"][1]["filters"].pop()
    (project / "without.json").write_text(json.dumps(without))
    path = write_lock(_manifest(project))
    assert check_lock(load_manifest(str(project / "without.json")), path) == [
        f"{_WHERE}: scorer {name!r}: in the lock but the manifest no longer names it"]
    other = write_lock(load_manifest(str(project / "without.json")), str(project / "other.lock.json"))
    assert read_lock(other)["scorers"] == []
    assert check_lock(_manifest(project), other) == [f"{_WHERE}: scorer {name!r}: not in the lock"]
    with_scorer["sources"][1]["filters"][1]["scorer"] = "filters.quality:FastTextExpectedLabel"
    (project / "replaced.json").write_text(json.dumps(with_scorer))
    assert check_lock(load_manifest(str(project / "replaced.json")), path) == [
        f"{_WHERE}: the manifest names scorer 'filters.quality:FastTextExpectedLabel', the lock {name!r}"]


def test_a_scorer_whose_source_cannot_be_found_is_said(project, scorer, monkeypatch):
    """A scorer whose code cannot be hashed (a module made in memory) cannot be pinned: locking
    it is refused, naming it, and a locked one whose source is gone is drift, not a pass."""
    import sys
    import types

    name, _ = scorer
    path = write_lock(_manifest(project))
    in_memory = types.ModuleType(name.partition(":")[0])
    exec(_SCORER.format(scale=100.0), in_memory.__dict__)
    monkeypatch.setitem(sys.modules, in_memory.__name__, in_memory)
    module = name.partition(":")[0]
    assert check_lock(_manifest(project), path) == [
        f"{_WHERE}: scorer {name!r}: the source of module {module!r} cannot be found or read now, so its code cannot "
        "be compared with the lock"]
    with pytest.raises(BuildError, match=re.escape(
            f"cannot lock 'locked-pool':\n  {_WHERE}: scorer {name!r}: the source of module {module!r} cannot be "
            "found or read, so the lock cannot pin its code; make the scorer a module file or package on the Python "
            "path")):
        make_lock(_manifest(project))


def test_a_lock_made_before_scorers_were_recorded(project, scorer, capsys):
    """A lock without "scorers" (written before dolmino recorded them) is read and checked as
    before; it cannot vouch for a custom scorer's code, so each one is drift ("not recorded")."""
    name, _ = scorer
    path = write_lock(_manifest(project))
    lock = json.loads(Path(path).read_text())
    del lock["scorers"]
    Path(path).write_text(json.dumps(lock))
    assert "scorers" not in read_lock(path)
    assert check_lock(_manifest(project), path) == [
        f"{_WHERE}: scorer {name!r}: not recorded (the lock was made before dolmino recorded a custom scorer's code); "
        "lock the manifest again"]
    assert lock_cmd.main([str(project / "pool.json"), "--check"]) == 1
    assert "1 difference(s)" in capsys.readouterr().out
    # a manifest without a custom scorer: the old lock passes as it did
    spec = json.loads((project / "pool.json").read_text())
    spec["sources"][1]["filters"].pop()
    (project / "pool.json").write_text(json.dumps(spec))
    assert check_lock(_manifest(project), path) == []
    # a hand-edited entry is named, as the other entries are
    lock["scorers"] = [{"where": _WHERE, "scorer": name}]
    Path(path).write_text(json.dumps(lock))
    with pytest.raises(BuildError, match=r"malformed lock: scorers\[0\] has no 'sha256' \(str\)"):
        read_lock(path)


def test_lock_imports_a_scorer_from_py_files_as_the_build_does(project, capsys, monkeypatch):
    """`dolmino build --py-files scorers.zip` ships a scorer that nothing puts on PYTHONPATH, but
    `dolmino lock` of the same manifest could not import it (one "cannot be imported" line): the
    lock takes the same --py-files, and records the digest the build keys the scorer's set by
    (the zip's members: the same as the files unzipped)."""
    import sys
    import zipfile

    monkeypatch.setattr(sys, "path", list(sys.path))  # the command puts the files on its path
    name = f"lock_zip_scorer_{uuid.uuid4().hex[:8]}"
    code = _SCORER.format(scale=100.0)
    with zipfile.ZipFile(project / "scorers.zip", "w") as zf:
        zf.writestr(f"{name}.py", code)
    spec = json.loads((project / "pool.json").read_text())
    spec["sources"][1]["filters"].append({"type": "score_threshold", "scorer": f"{name}:LengthScore", "min_score": 0})
    (project / "pool.json").write_text(json.dumps(spec, indent=2))
    manifest = str(project / "pool.json")
    try:
        assert lock_cmd.main([manifest]) == 2
        err = capsys.readouterr().err
        assert f"module '{name}' cannot be imported" in err  # and what to do, as the build says
        assert err.endswith("; give its .py or .zip to --py-files (or put its directory on PYTHONPATH)\n")
        assert lock_cmd.main([manifest, "--py-files", str(project / "scorers.zip")]) == 0
        lock = read_lock(str(project / "pool.lock.json"))
        import hashlib

        assert lock["scorers"][0]["sha256"] == hashlib.sha256(code.encode()).hexdigest()
        assert lock["scorers"][0]["hashed"] == f"module file scorers.zip/{name}.py"
        assert lock_cmd.main([manifest, "--check", "--py-files", str(project / "scorers.zip")]) == 0
        assert lock_cmd.main([manifest, "--py-files", str(project / "nowhere.zip")]) == 2
        assert capsys.readouterr().err.strip().endswith("--py-files " + str(project / "nowhere.zip") + ": no such file")
    finally:
        sys.modules.pop(name, None)


def test_lock_refuses_an_index_the_build_refuses(project):
    """An index of another hash version (an older dolmino built it) was pinned, `--check` said no
    drift, and the build refused it: the lock now says so first, as the build does (found by a tester)."""
    import numpy as np
    from filters.decontamination import HASH_VERSION

    index = project / "models" / "olmes.npz"
    meta = {"format_version": 2, "hash_version": HASH_VERSION - 1, "ngram_size": 8, "tasks": ["boolq"]}
    np.savez(index, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    raw = json.loads((project / "pool.json").read_text())
    raw["sources"][1]["filters"] = [{"type": "decontaminate", "index_path": "models/olmes.npz"}]
    (project / "pool.json").write_text(json.dumps(raw))
    with pytest.raises(BuildError, match=r"sources\[1\]\.filters\[0\]\.index_path \(code, decontaminate\): "
                                         rf"decontamination index .*olmes\.npz uses hash version {HASH_VERSION - 1}, "
                                         rf"this code {HASH_VERSION}: rebuild"):
        make_lock(_manifest(project))



def test_lock_check_names_an_index_locked_before_an_upgrade(project, monkeypatch, capsys):
    """The lock was made while the index was this dolmino's; after an upgrade (another HASH_VERSION) its
    bytes are the same, so `dolmino lock --check` said "no drift", exit 0, and the build then refused the
    index. The check names it, as the lock and the build do."""
    import numpy as np
    import filters.decontamination as decon

    index = project / "models" / "olmes.npz"
    meta = {"format_version": 2, "hash_version": decon.HASH_VERSION, "ngram_size": 8, "tasks": ["boolq"]}
    np.savez(index, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    raw = json.loads((project / "pool.json").read_text())
    raw["sources"][1]["filters"] = [{"type": "decontaminate", "index_path": "models/olmes.npz"}]
    (project / "pool.json").write_text(json.dumps(raw))
    path = write_lock(_manifest(project))
    assert check_lock(_manifest(project), path) == []
    monkeypatch.setattr(decon, "HASH_VERSION", decon.HASH_VERSION + 1)  # the upgrade
    assert lock_cmd.main([str(project / "pool.json"), "--check"]) == 1
    out = capsys.readouterr().out
    assert "1 difference(s)" in out and re.search(r"sources\[1\]\.filters\[0\]\.index_path \(code, decontaminate\): "
                                                  r"decontamination index .*olmes\.npz uses hash version", out), out
    with pytest.raises(BuildError, match="--locked: 1 difference"):
        require_lock(_manifest(project), path)


def test_a_lock_into_a_full_or_read_only_directory_is_one_line_naming_it(project, capsys, monkeypatch):
    """A full disk: a traceback, "dolmino lock: error: unexpected OSError: [Errno 28] No space left on device"
    naming no file, and "pool.lock.json.tmp<pid>" left behind; read-only, the temporary file's random name
    (a tester, on a 64 KB tmpfs and one remounted read-only)."""
    import builtins
    import errno

    real_open = builtins.open
    target = project / "pool.lock.json"

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, _data):
            raise OSError(errno.ENOSPC, "No space left on device")  # as a full disk's: no file named

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    for failure, said in (("full", "No space left on device; free space there"),
                          ("read-only", "Read-only file system; make it writable")):
        def opened(file, mode="r", *args, failure=failure, **kwargs):
            if not str(file).startswith(str(target)) or "r" in mode:
                return real_open(file, mode, *args, **kwargs)
            if failure == "read-only":
                raise OSError(errno.EROFS, "Read-only file system", file)
            return Full(real_open(file, mode, *args, **kwargs))

        monkeypatch.setattr(builtins, "open", opened)
        code = lock_cmd.main([str(project / "pool.json")])
        monkeypatch.setattr(builtins, "open", real_open)
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.splitlines()[-1] == f"dolmino lock: error: {target}: {said}", err
        assert "Traceback" not in err, err
        assert sorted(p.name for p in project.iterdir() if p.name.startswith("pool.lock")) == [], failure
