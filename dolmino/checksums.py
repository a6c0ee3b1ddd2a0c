"""SHA-256 of files and streams: the one digest that builds, releases, locks and resources record.

Read in 8 MiB chunks so that hashing a multi-GB part or model needs no more memory than that.
"""

from __future__ import annotations

import hashlib
from typing import Callable

CHUNK = 8 << 20


def sha256_stream(read: Callable[[int], bytes]) -> str:
    """Hex SHA-256 of everything `read(n)` returns until it returns b""."""
    h = hashlib.sha256()
    while chunk := read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh.read)
