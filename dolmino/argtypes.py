"""argparse types the commands share: a bad count is a usage error (exit 2, one line naming the
flag), never taken as another value unsaid (0 or -1 threads, parts or ids were; found by testers)."""

from __future__ import annotations

import argparse


def at_least(low: int):
    """An argparse type: an integer >= `low`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"  # what argparse names in its own errors
    return parse


positive_int = at_least(1)  # counts of things: threads, parts, checkpoints, instances
