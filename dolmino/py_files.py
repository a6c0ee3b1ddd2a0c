"""`--py-files`: code a manifest names (a `score_threshold` "module:callable" scorer) that the
command's own process must import, as spark-submit's --py-files gives it to its driver.

The build commands also ship the files to executors (`dolmino.build.cli.ship_py_files`);
`dolmino lock` only imports them, to hash the scorer's code as the build will, and `dolmino plan` and
`dolmino diff` to check the manifests as the build will."""

from __future__ import annotations

import os
import re
import sys
import zipfile

from dolmino.errors import BuildError
from dolmino.manifest import expand_home

PY_FILES_HELP = ("comma-separated local .py, .zip or .egg files, as spark-submit's --py-files takes them: code the "
                 "manifest names (a score_threshold 'module:callable' scorer)")


PY_FILE_SUFFIXES = (".py", ".zip", ".egg")


def py_files(value: str | None) -> list[str]:
    """The absolute paths `--py-files` names, checked before anything imports from them: a file
    missing or of another kind would otherwise surface as a scorer that "cannot be imported", or in
    Spark's addFile after the session started. Two files of one name are refused: Spark ships files
    by name (the second replaced the first, or failed on a cluster's file server)."""
    if value is None:
        return []
    files: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if "://" in item:
            raise BuildError(f"--py-files {item}: is a URL; give local .py, .zip or .egg files (the driver imports "
                             "them before Spark starts)")
        path = os.path.abspath(expand_home(item))
        if os.path.isdir(path):
            raise BuildError(f"--py-files {item}: is a directory; zip it (cd DIR && zip -r ../code.zip .) and give "
                             "the zip")
        if not path.lower().endswith(PY_FILE_SUFFIXES):
            raise BuildError(f"--py-files {item}: not a .py, .zip or .egg file; zip a package's directory (cd DIR && "
                             "zip -r ../code.zip .) and give the zip")
        if not os.path.isfile(path):
            raise BuildError(f"--py-files {item}: no such file")
        if not path.lower().endswith(".py") and not zipfile.is_zipfile(path):  # sys.path skips it: "cannot be imported"
            raise BuildError(f"--py-files {item}: not a zip archive; zip a package's directory (cd DIR && zip -r "
                             "../code.zip .) and give the zip")
        _refuse_shadowing(item, path)
        same = next((f for f in files if os.path.basename(f) == os.path.basename(path)), None)
        if same is not None and same != path:
            raise BuildError(f"--py-files: {same} and {path} have the same file name, and Spark ships files by name; "
                             "rename one")
        if same is None:
            files.append(path)
    if not files:
        raise BuildError("--py-files: names no file; give comma-separated .py, .zip or .egg files")
    return files


# The project's own top-level packages (pyproject.toml's), which a module of the user's must not be named as.
PROJECT_PACKAGES = ("dolmino", "filters", "mixers", "trainer", "csrc")


def _top_modules(path: str) -> set[str]:
    """The top-level modules and regular packages a --py-files entry puts on sys.path: a .py file's
    own; a zip's `X.py` and `X/__init__.py` members (a directory without `__init__` is a namespace
    portion, which no regular module or package is shadowed by)."""
    if path.lower().endswith(".py"):
        return {os.path.basename(path)[:-3]}
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    found = {n[:-3] for n in names if "/" not in n and n.endswith(".py")}
    found |= {n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/__init__.py")}
    return found - {"__init__", "__main__"}


def _refuse_shadowing(item: str, path: str, flag: str = "--py-files") -> None:
    """A module of `path` named as a standard library module or as one of this project's packages (a
    scorer saved as `filters.py`) is refused: put before them on sys.path, it replaced dolmino's own
    package in the driver, which failed with "unexpected ModuleNotFoundError: No module named
    'filters.base'; 'filters' is not a package", or it lost to the module imported already ("module
    'json' has no callable 'Scorer'") on the driver and may not on an executor (found by a tester)."""
    for name in sorted(_top_modules(path)):
        if name in sys.stdlib_module_names:
            whose = "a module of Python's standard library"
        elif name in PROJECT_PACKAGES:
            whose = "a package of dolmino's"
        else:
            continue
        raise BuildError(f"{flag} {item}: its module {name!r} has the name of {whose}, which it would replace "
                         "or lose to; rename it, and the module where the manifest's scorer or your code names it")


def refuse_submitted_shadowing(entries: list[str]) -> None:
    """`_refuse_shadowing` for spark-submit's own --py-files (`spark.submit.pyFiles`): the sys.path entries
    they made in its driver (build_mix.py takes them off sys.path until this passed: a .zip or .egg as
    itself, each .py as a copy in a directory of copies, named by the file's name), or the files its
    configuration lists. Only dolmino's own --py-files was checked: `spark-submit --py-files json.py
    dolmino/build_mix.py` replaced the standard library's json in every import of the driver, which ended
    in a traceback ("module 'json' has no attribute 'JSONDecoder'"; a reviewer)."""
    flag = "spark-submit --py-files"
    for entry in entries:
        if os.path.isdir(entry):
            for name in sorted(os.listdir(entry)):
                if name.lower().endswith(".py"):
                    _refuse_shadowing(name, os.path.join(entry, name), flag)
        elif (entry.lower().endswith(".py") and os.path.isfile(entry)
              or entry.lower().endswith(PY_FILE_SUFFIXES) and zipfile.is_zipfile(entry)):
            _refuse_shadowing(entry, entry, flag)


# A custom scorer the manifest check could not import: its module, and the module Python did not find.
_NOT_IMPORTED = re.compile(r"scorer '[^']*': module '([^']*)' cannot be imported: ModuleNotFoundError: "
                           r"No module named '([^']*)'")


# A file that code opened, missing: a .py's copy has no file beside it; in a zip, a path is "not a directory".
_FILE_MISSING = re.compile(r"(?:FileNotFoundError|NotADirectoryError): \[Errno (?:2|20)\] [^:']*: '([^']+)'")


def data_file_hint(message: str, code_roots: list[str]) -> str | None:
    """What to do where `message` says a file was missing that lies in one of `code_roots` (the directory of
    a .py's copy, a zip): a scorer that opens a data file beside its module (`Path(__file__).with_name(
    "vocab.txt")`) ran with PYTHONPATH in local mode and failed on a cluster, since --py-files ships the code
    alone; the error named a copy's directory, gone with the session, and nothing to do (a reviewer). The
    filter's model_path is the way that travels: shipped to every executor, checked by SHA-256, part of the
    scores' key and of the lock, which a file packed beside the code is not."""
    missing = _FILE_MISSING.search(message)
    if missing is None:
        return None
    path = missing.group(1)
    root = next((r for r in code_roots if path.startswith(r.rstrip(os.sep) + os.sep)), None)
    if root is None:
        return None
    return (f"{path[len(root):].lstrip(os.sep)}, which the scorer's code opens beside itself, does not travel with it "
            "(--py-files ships code alone, as copies): name it as the filter's model_path (a directory for several "
            "files), which the build ships to every executor and passes to the scorer's callable as model_path=, "
            "and open that")


def import_hint(message: str, files: list[str]) -> str | None:
    """What to do, where a manifest check's `message` says a custom scorer cannot be imported: its own
    module not found asks for --py-files; a module of its own beside a .py file that --py-files gave
    (`files`, as `py_files` returns them), which was not given, asks for that file: the .py travels
    alone (copied here, shipped alone to executors), and the error named no file to add (a tester).
    A data file its module opens beside itself as it is imported: `data_file_hint`."""
    roots = [os.path.dirname(copy) for copy in _COPIED] + [f for f in files if not f.lower().endswith(".py")]
    if hint := data_file_hint(message, roots):
        return hint
    missing = _NOT_IMPORTED.search(message)
    if missing is None:
        return None
    if own_module_missing(message):
        return "give its .py or .zip to --py-files (or put its directory on PYTHONPATH)"
    top = missing.group(2).split(".")[0]
    for given in (f for f in files if f.lower().endswith(".py")):
        helper = os.path.join(os.path.dirname(given), top + ".py")
        if os.path.isfile(helper):
            return (f"{helper} is beside {given} but not given to --py-files, which ships each file alone: give it too "
                    "(comma-separated), or zip the modules together")
        if os.path.isfile(os.path.join(os.path.dirname(given), top, "__init__.py")):
            return (f"package {top} is beside {given} but not given to --py-files, which ships each file alone: zip "
                    "the modules together and give the zip")
    return None


def own_module_missing(message: str) -> bool:
    """Whether `message` says a custom scorer's own module (not a library it imports) cannot be imported."""
    missing = _NOT_IMPORTED.search(message)
    return bool(missing) and (missing.group(1) + ".").startswith(missing.group(2) + ".")


def explained(exc: BaseException, files: list[str]) -> BaseException:
    """`exc`, a manifest check's ManifestError saying a custom scorer cannot be imported, with what to do
    (`import_hint`) added; any other exception as it is. Every command that checks a manifest says the
    same (plan, diff and lock said no more than "cannot be imported"; a tester)."""
    from dolmino.errors import ManifestError

    if isinstance(exc, ManifestError) and (hint := import_hint(str(exc), files)):
        return ManifestError(f"{exc}; {hint}")
    return exc


# copy -> the file the user gave, for the .py files import_py_files copied (removed at exit)
_COPIED: dict[str, str] = {}


def given_path(path: str) -> str:
    """The file the user gave with --py-files where `path` is this process's copy of it, else `path`:
    a message naming a scorer's code named the copy, a temporary directory gone when the command ended."""
    return _COPIED.get(path, path)


def import_py_files(files: list[str]) -> None:
    """Put `files` on this driver's sys.path, as spark-submit's --py-files does for its driver: the
    manifest check builds the filters (importing a custom scorer) before Spark starts. A zip or egg
    goes on the path itself; a .py is copied into a directory of its own that goes there (a file is
    no sys.path entry, and its own directory could hold namesakes of the project's packages, a
    `filters.py`, that would shadow them). Its copy has the bytes of the original, so its scorer is
    keyed as spark-submit's copy is."""
    import atexit
    import shutil
    import tempfile

    entries: list[str] = []
    copies = None
    for path in files:
        if path.lower().endswith(".py"):
            if copies is None:
                copies = tempfile.mkdtemp(prefix="dolmino-py-files-")
                atexit.register(shutil.rmtree, copies, True)
                entries.append(copies)
            shutil.copyfile(path, os.path.join(copies, os.path.basename(path)))
            _COPIED[os.path.join(copies, os.path.basename(path))] = path
        else:
            entries.append(path)
    sys.path[1:1] = [entry for entry in entries if entry not in sys.path]  # after the script's directory, as PySpark
