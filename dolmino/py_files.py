"""`--py-files`: code a manifest names (a `score_threshold` "module:callable" scorer) that the
command's own process must import, as spark-submit's --py-files gives it to its driver.

The build commands also ship the files to executors (`dolmino.build.cli.ship_py_files`);
`dolmino lock` only imports them, to hash the scorer's code as the build will, and `dolmino plan` and
`dolmino diff` to check the manifests as the build will."""

from __future__ import annotations

import os
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
        same = next((f for f in files if os.path.basename(f) == os.path.basename(path)), None)
        if same is not None and same != path:
            raise BuildError(f"--py-files: {same} and {path} have the same file name, and Spark ships files by name; "
                             "rename one")
        if same is None:
            files.append(path)
    if not files:
        raise BuildError("--py-files: names no file; give comma-separated .py, .zip or .egg files")
    return files


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
