"""What the trainer's commands share on the command line: help that shows every default."""

from __future__ import annotations

import argparse

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
    if value <= 0:
        raise argparse.ArgumentTypeError(f"count must be positive, got {text!r}")
    return int(round(value))
