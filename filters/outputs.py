"""Output paths of the filter commands, checked before any work.

Every filter command writes a result somewhere (`decontamination check --removed`, `build
--out`, `quality train --out`, `stackexchange --out/--quarantine`): a bad path failed only when
written, after the whole input was scanned, an index built or a model trained, and one naming
an input replaced it (found by testers).
"""

from __future__ import annotations

import os
import tempfile


def check_output(option: str, path: str, inputs: list[tuple[str, str]], documents: bool = False) -> None:
    """Refuse an output path before any work: a bad one failed only when written, after the whole input
    was scanned or the whole index built, and one naming an input replaced it (all found by a tester)."""
    from dolmino.documents import DOCUMENT_STEMS, compression
    from dolmino.storage import same_file, why_unwritable

    for flag, source in inputs:
        if same_file(path, source):
            raise ValueError(f"{option} {path} is the same file as {flag} {source}: name another file")
    if not path.startswith("s3://") and os.path.isdir(path):
        raise ValueError(f"{option} {path} is a directory: name a file in it")
    if documents and compression(path, DOCUMENT_STEMS) is None:
        raise ValueError(f"{option} {path}: unknown document file suffix (expected .jsonl, .jsonl.gz or .jsonl.zst)")
    if path.startswith("s3://"):
        return
    place = os.path.dirname(os.path.abspath(path))
    if reason := why_unwritable(place):
        raise ValueError(f"{option} {path} cannot be written ({reason})")
    while not os.path.exists(place):
        place = os.path.dirname(place)
    try:  # as root, access() calls /proc writable, where no directory or file can be made
        fd, probe = tempfile.mkstemp(dir=place, prefix=".dolmino-probe")
    except OSError as exc:
        reason = f"no file can be made in {place}: {exc.strerror}"
        raise ValueError(f"{option} {path} cannot be written ({reason})") from None
    os.close(fd)
    os.unlink(probe)
