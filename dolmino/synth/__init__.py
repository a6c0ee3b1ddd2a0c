"""Synthetic math sources (Dolmino SynthMath, TuluMath, MIND rewrites) generated with Spark.

See `dolmino.synth.base` for the generator interface and `dolmino.synth.runner` for the
resumable Spark job; `python -m dolmino.synth --help` for the command line.
"""

from dolmino.synth.base import REGISTRY, config_hash, make_generator

__all__ = ["REGISTRY", "config_hash", "make_generator"]
