"""The executors must run the driver's code and libraries: checked in every Python worker.

The code is not shipped: an executor imports dolmino from the environment `PYSPARK_PYTHON` names on
its node. A node whose venv held an older copy, or a checkout with one filter's threshold edited,
built a different mix with exit status 0 and a report that described the driver's manifest; a
node with another `tokenizers` wrote other ids (found by a tester). The driver puts what it runs
(a digest of each source file of the packages executors import, and the versions of the libraries
that decide what a build writes) in the workers' environment (`expect`); `dolmino.build`, which
every task imports before it runs, compares them with the worker's own (`check`) and raises one
BuildError naming what differs and what to install, before a document is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys

from dolmino.errors import BuildError

ENV = "DOLMINO_DRIVER_ENVIRONMENT"
# What the executors import (pyproject's packages, less the trainer, which no task runs).
PACKAGES = ("dolmino", "filters", "mixers", "csrc")
# Their source files: Python, and the C++ each node compiles its native kernels from (csrc/native.cpp).
SOURCES = (".py", ".cpp")
# The distributions whose version decides a build's bytes: ids, scores, hashes, attribute files.
LIBRARIES = ("tokenizers", "numpy", "pyarrow", "zstandard", "smart-open", "fasttext-numpy2", "datasketch", "numba",
             "torch", "transformers")
_SHOWN = 5


def project_root() -> str:
    """The checkout (or site-packages) this process imports dolmino from."""
    import dolmino

    return os.path.dirname(os.path.dirname(os.path.abspath(dolmino.__file__)))


def environment() -> dict:
    """What this process runs, read afresh (a checkout edited between two builds of one session): its code
    (package-relative path: SHA-256 prefix of each source file), where it is, and the libraries' versions
    (without a local label: a CPU build of torch on a node is the same torch)."""
    from importlib.metadata import PackageNotFoundError, version

    root = project_root()
    code = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(root, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(SOURCES)):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    code[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()[:16]
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = version(name).split("+")[0]
        except PackageNotFoundError:
            libraries[name] = None
    return {"root": root, "host": socket.gethostname(), "code": code, "libraries": libraries}


def expect(sc) -> None:
    """On the driver: every Python worker of the jobs `sc` starts from now on checks itself against it."""
    sc.environment[ENV] = json.dumps(environment(), separators=(",", ":"))


def _changed_code(driver: dict, here: dict) -> str:
    """The source files that differ, named (at most _SHOWN), or ""."""
    theirs, ours = driver["code"], here["code"]
    # C++ only where both sides hold it: a wheel (`pip install .`, as README sets up a node) installs the
    # compiled extension without csrc/native.cpp, and every build from a checkout's driver was refused
    changed = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k)
                     and (k.endswith(".py") or (k in theirs and k in ours)))
    named = ", ".join(p + (" (only on the driver)" if p not in ours else
                           " (only on the executors)" if p not in theirs else "") for p in changed[:_SHOWN])
    return named + (f" and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else "")


def differences(driver: dict, here: dict) -> list[str]:
    """What this worker runs that the driver does not, one phrase each."""
    found = []
    if changed := _changed_code(driver, here):
        found.append(f"dolmino's code differs ({changed}; the executors import it from {here['root']}, "
                     f"the driver from {driver['root']})")
    for name, wanted in driver["libraries"].items():
        have = here["libraries"].get(name)
        if have != wanted:
            found.append(f"{name} {have or 'is not installed'}"
                         + (f" where the driver has {wanted}" if wanted else " where the driver has none"))
    return found


def check() -> None:
    """In a Python worker of a build (once: at the import of `dolmino.build`): raise BuildError where it runs
    other code or libraries than the driver."""
    expected = os.environ.get(ENV)
    if not expected:  # the driver itself, or a worker of a session that is not a build's
        return
    driver, here = json.loads(expected), environment()
    found = differences(driver, here)
    if found and (here["host"], here["root"], here["libraries"]) == (driver.get("host"), driver["root"],
                                                                     driver["libraries"]):
        # One machine, one checkout: its files were edited after the driver read them (an editor, a `git pull`
        # while a local build ran), where "`pip install .` on every node" sent the user looking for another
        # environment that does not exist (found by a tester)
        raise BuildError(f"dolmino's code in {here['root']} changed while this build ran (edited since the driver "
                         f"read it at its start: {_changed_code(driver, here)}): rerun the build once the checkout "
                         "stops changing")
    if found:
        raise BuildError(f"the executors' Python environment is not the driver's: {'; '.join(found)} "
                         f"(node {socket.gethostname()}, {sys.executable}); every node needs the driver's "
                         "environment at the path PYSPARK_PYTHON names: `pip install .` of the driver's checkout "
                         "there, or one image for all")
