"""What the trainer's commands share on the command line: help that shows every default."""

from __future__ import annotations

import argparse
import math

_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to every option that has one; an option whose default is None
    or computed says in its own help text what it defaults to (and contains "default")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is argparse.SUPPRESS
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def parse_count(text: str) -> int:
    """'4T', '50B', '2.5M', '1000' -> int."""
    text = str(text).strip().upper()
    scale = _SUFFIXES.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _SUFFIXES else text
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (use e.g. 4T, 50B, 100M)") from None
    if not math.isfinite(value):  # "inf", "nan", and "1e400", which float() overflows to inf
        raise argparse.ArgumentTypeError(f"not a finite count: {text!r} (use e.g. 4T, 50B, 100M)")
    count = int(round(value))
    if count < 1:  # checked after rounding: "0.5" passes "> 0" but is a count of 0
        raise argparse.ArgumentTypeError(f"count must be at least 1, got {text!r}")
    return count


def positive_int(text: str) -> int:
    """An argparse type for counts of things (checkpoints, threads, instances): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
