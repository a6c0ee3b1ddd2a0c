"""Counts and sizes as people write them (100B, 1.5M, 256MB), and the argparse types the commands
share: a bad count is a usage error (exit 2, one line naming the flag), never taken as another value
unsaid (0 or -1 threads, parts or ids were; found by testers). At the bottom of the layers: the
manifest reads its counts here, and every command imports this module."""

from __future__ import annotations

import argparse
import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any


COUNT_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
# A count: decimal digits and a suffix, or an exponent as JSON writes one (1e9), not both.
_COUNT_RE = re.compile(r"\s*(?:([0-9]*\.?[0-9]+)\s*([KMBGT]?)|([0-9]*\.?[0-9]+E[+-]?[0-9]+))\s*")
COUNT_MAX = 2**63 - 1  # what every count's reader holds: JSON integers, numpy int64 token counts


def shown_number(text: str) -> str:
    """A number as an error shows it: 400 digits cut to their ends and their count."""
    if len(text) <= 24:
        return text
    digits = text.lstrip("-")
    return f"{text[:12]}...{text[-4:]} ({len(digits)} {'digits' if digits.isdigit() else 'characters'})"


def count_value(value: Any) -> int:
    """Parse token counts like 100B, 1.5M, 832.6B, 7000, 1e9 (K/M/B/T suffixes, powers of 10).

    Exact: digits are read as decimals, never through a float (a float holds 53 bits: the count
    "123456789012345678" was planned as ...680), and a count that is not a whole number (1.5,
    1.0000005M) is refused, not rounded. One upper bound for every spelling: 64 bits.
    Raises ValueError with a message naming the value; the manifest and the trainer's command
    line each say where it came from."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        got = value if isinstance(value, bool) else type(value).__name__
        raise ValueError(f"expected a count like '100B', got {got}")
    if isinstance(value, str):
        match = _COUNT_RE.fullmatch(value.upper())
        if not match:
            raise ValueError(f"expected a count like '100B', '1.5M' or 7000, got {value!r}")
        number, scale = Decimal(match.group(1) or match.group(3)), COUNT_SUFFIXES[match.group(2) or ""]
        written = repr(shown_number(value))
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a count like '100B', got {value!r}")
    else:  # a JSON float's own text where the manifest reader kept it; else the shortest decimal
        # that reads back as this float (what was written, up to a float's 15 digits)
        text = getattr(value, "text", None) or repr(value)
        number, scale, written = Decimal(text), 1, shown_number(text)
    # The magnitude first, from the exponent alone: "1e999999999" must not become an integer
    # of a billion digits before it is refused (10**19 is beyond 64 bits).
    magnitude = number.adjusted() + len(str(scale)) - 1
    tokens = Fraction(number) * scale if 0 <= magnitude < 19 else Fraction(0 if magnitude < 0 else COUNT_MAX + 1)
    if tokens < 1:
        raise ValueError(f"must be a count of at least 1, got {written}")
    if tokens > COUNT_MAX:
        raise ValueError(f"{written} is beyond 64 bits (a count is at most {COUNT_MAX:,})")
    if tokens.denominator != 1:
        raise ValueError(f"{written} is not a whole number (K/M/B/T are powers of 10: 1.5M is 1500000)")
    return int(tokens)


def is_count(value) -> bool:
    """A count as JSON holds it: a non-negative integer (JSON's true and false are not). What report.json's
    readers (validate, release, report) accept as one."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
        try:
            return count_value(text)
        except ValueError:
            pass
    raise ValueError(f"expected a size in bytes like 256MB, 256M, 64KiB or 1000000 (K, M, G: powers of ten; KiB, "
                     f"MiB, GiB: of two), got {text!r}")
