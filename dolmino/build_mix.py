"""Build a data mix from a manifest: `spark-submit dolmino/build_mix.py --budget 100B`.

The same script runs in local mode and on any Spark master (standalone, YARN, Kubernetes)
with inputs, attributes and outputs local or on s3://. It tags the pools once (attribute
files reused by every later mix), selects from the attributes, tokenizes only what the mix
takes and writes the memmaps from the executors; see `dolmino.build` for the stages and
docs/DESIGN.md "Build at scale" for the data flow.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file (spark-submit dolmino/build_mix.py): import the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hold_spark_submit_py_files() -> tuple[int, list[str]]:
    """(where they were, the entries) of spark-submit's own --py-files, taken off sys.path: its PythonRunner
    puts them first on PYTHONPATH, before pyspark.zip (a .py as a directory of copies), so before the standard
    library, and a `json.py` there replaced json in every import of dolmino's (a traceback; a reviewer). They
    go back once `dolmino.py_files.refuse_submitted_shadowing` passed them. Only os and sys, which Python
    imported at its start, are used before: no module of these entries can stand in for them."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not spark-submit's driver
        return 0, []
    given: list[str] = []
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if os.path.basename(entry) == "pyspark.zip":
            held = [path for path in sys.path if path in given]
            at = sys.path.index(held[0]) if held else 0
            sys.path[:] = [path for path in sys.path if path not in held]
            return at, held
        if entry:
            given.append(entry)
    return 0, []  # no pyspark.zip: a PYTHONPATH spark-submit did not make


_AT, _HELD = hold_spark_submit_py_files() if __name__ == "__main__" else (0, [])

try:
    from dolmino.build.cli import main  # noqa: E402
except ModuleNotFoundError as exc:
    # spark-submit starts the Python that spark.pyspark.driver.python, spark.pyspark.python (a cluster's
    # spark-defaults.conf often names one), PYSPARK_DRIVER_PYTHON or PYSPARK_PYTHON name: one without the
    # project's libraries ended the build in a 10-line ImportError traceback (found by a tester)
    if __name__ != "__main__" or (exc.name or "dolmino").partition(".")[0] in ("dolmino", "filters", "mixers", "csrc"):
        raise
    print(f"build_mix: error: {sys.executable} has no module {exc.name!r}, which dolmino needs: run the build "
          "with the project's Python environment (.venv/bin/python, or one with `pip install .`; spark-submit "
          "starts the first of spark.pyspark.driver.python, spark.pyspark.python, PYSPARK_DRIVER_PYTHON and "
          "PYSPARK_PYTHON that is set)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    from dolmino.errors import BuildError
    from dolmino.py_files import refuse_submitted_shadowing
    from dolmino.stdout_pipe import run_main

    try:
        refuse_submitted_shadowing(_HELD)
    except BuildError as exc:
        print(f"build_mix: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.path[_AT:_AT] = _HELD
    sys.exit(run_main(main))
