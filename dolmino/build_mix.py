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
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
