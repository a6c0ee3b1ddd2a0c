"""Errors shared across dolmino, mixers and filters."""


class ManifestError(ValueError):
    """A manifest (or a filter spec inside one) is invalid; the message names the bad field."""


class BuildError(RuntimeError):
    """A build cannot run or did not produce what it promised; the message says what to fix."""


class InputChangedError(OSError):
    """An input file no longer holds what the build tagged in it (rewritten during the build)."""
