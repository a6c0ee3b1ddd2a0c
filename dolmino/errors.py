"""Errors shared across dolmino, mixers and filters."""

import difflib


class ManifestError(ValueError):
    """A manifest (or a filter spec inside one) is invalid; the message names the bad field."""


class BuildError(RuntimeError):
    """A build cannot run or did not produce what it promised; the message says what to fix."""


class InputChangedError(OSError):
    """An input file no longer holds what the build tagged in it (rewritten during the build)."""


class ResourceError(ValueError):
    """A filter's model or index file cannot be used (not a model, a directory where a file is
    needed, an unloadable model directory); the message names the path and the reason.

    A ValueError, so that callers that caught the loaders' ValueError still do; a class of its
    own, so that raised in an executor it reaches the build's user as one line
    (`dolmino.build.cli.executor_failure`) rather than as a Spark traceback."""


def did_you_mean(word: str, options) -> str:
    """" (did you mean 'min_length'?)" for a name close to one of `options` (difflib ratio >= 0.6), or "".

    A manifest's mistyped filter type, parameter or field listed every name it accepts and left the
    reader to find the one meant, where the command line's typo message names it (a tester)."""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6) if isinstance(word, str) else []
    return f" (did you mean {close[0]!r}?)" if close else ""
