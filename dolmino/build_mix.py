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

from dolmino.build.cli import main  # noqa: E402

if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
