"""argparse types the commands share: a bad count is a usage error (exit 2, one line naming the
flag), never taken as another value unsaid (0 or -1 threads, parts or ids were; found by testers)."""

from __future__ import annotations

import argparse
import re
from decimal import Decimal
from fractions import Fraction


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


# A number with a byte unit: KB / MB / GB / TB (powers of ten), KiB / MiB / GiB / TiB (of two), B alone (bytes).
_BYTE_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i?))?b\s*", re.IGNORECASE)
_WHOLE_BYTES_RE = re.compile(r"\s*(\d+)\s*")


def byte_size(text: str) -> int:
    """Bytes from a size as `dolmino build --task-size / --split-size` and `trainer.export_hf /
    trainer.soup --max-shard-size` take it: with a byte unit (128 MB, 1.5KiB, 5GB, 512B), a whole
    number of bytes, or the count syntax (256M, 1.5M, 1e9: K, M, G, T powers of ten). The commands
    had a parser each, and `--max-shard-size 500M` or `1.5GB` was refused where `--task-size` took
    it (t242); each spelling either one took means what it meant there. Exact: the build's rounded
    "99999999999999999999999MiB" to 28 digits. Raises ValueError naming `text`."""
    match = _BYTE_SIZE_RE.fullmatch(text)
    if match:
        number, unit, binary = Decimal(match.group(1)), (match.group(2) or "").lower(), bool(match.group(3))
        size = Fraction(number) * (1024 if binary else 1000) ** ("kmgt".index(unit) + 1 if unit else 0)
        if size >= 1 and size.denominator == 1:
            return int(size)
    elif (whole := _WHOLE_BYTES_RE.fullmatch(text)) and int(whole.group(1)):
        return int(whole.group(1))  # any length, as transformers' max_shard_size takes it (a count stops at 64 bits)
    else:
        from dolmino.manifest import count_value  # here alone: every command imports this module

        try:
            return count_value(text)
        except ValueError:
            pass
    raise ValueError(f"expected a size in bytes like 256MB, 256M, 64KiB or 1000000 (K, M, G: powers of ten; KiB, "
                     f"MiB, GiB: of two), got {text!r}")
