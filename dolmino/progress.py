"""Progress bars for the long steps, tqdm-style, and silent when nobody is watching.

Every long step of the project (corpus assembly, the decontamination index, synthetic
generation) reports progress through `progress()`: a tqdm bar on an interactive terminal,
nothing at all when stderr is a file, a pipe or a CI log, where a bar redrawn with
carriage returns turns into thousands of lines. `DOLMINO_PROGRESS=1` forces bars on,
`DOLMINO_PROGRESS=0` forces them off (both win over the terminal check).

    for doc in progress(docs, desc="web", unit="docs"):
        ...
    with progress(total=n_partitions, desc="partitions") as bar:
        bar.update(1)
"""

from __future__ import annotations

import os
import sys
from typing import IO, Iterable

from tqdm import tqdm

ENV_VAR = "DOLMINO_PROGRESS"


_WARNED: set[str] = set()


def enabled(file: IO | None = None) -> bool:
    """Whether progress should be drawn on `file` (default: stderr). A DOLMINO_PROGRESS that is
    neither on nor off is said once and left out: `DOLMINO_PROGRESS=maybe` was taken as unset,
    unsaid (found by a tester)."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if forced and forced not in _WARNED:
        _WARNED.add(forced)
        print(f"warning: {ENV_VAR}={os.environ[ENV_VAR]!r} is neither 1 nor 0 (true/false, yes/no, on/off): "
              "ignored, progress drawn only on a terminal", file=sys.stderr)
    stream = sys.stderr if file is None else file
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # closed or not a real stream
        return False
    return stream in (sys.stderr, sys.stdout) and under_spark_submit() and process_on_terminal(os.getppid())


def under_spark_submit() -> bool:
    """spark-submit starts the Python driver with these set (pyspark's PythonRunner)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def process_on_terminal(pid: int) -> bool:
    """Whether process `pid` writes its stdout to a terminal (Linux /proc; elsewhere False).

    spark-submit runs the Python driver with stdout and stderr merged into one pipe that its
    JVM copies to its own stdout: the driver's streams are never terminals, the JVM's stdout
    is when a person ran the README's command (not under `> build.log` or `| tee`), and that
    is where a redrawn line lands. Read from the link's name: this check opens nothing (the
    terminal may be another user's)."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return False
    return target.startswith(("/dev/pts/", "/dev/tty", "/dev/console"))


DEFAULT_COLUMNS = 80


def terminal_columns(file: IO | None = None) -> int:
    """The width of the terminal a redrawn line lands on: COLUMNS where set, else the stream's own
    terminal, else (under spark-submit, whose driver writes into a pipe) the terminal of the JVM
    that copies it there, else 80. A redrawn line wider than its terminal wraps, and the carriage
    return goes back only to the start of its last row: every redraw left a row behind (a reviewer).
    The JVM's terminal is opened without becoming the controlling terminal, asked its size and
    closed; nothing is read from it or written to it."""
    text = os.environ.get("COLUMNS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    stream = sys.stderr if file is None else file
    try:
        return os.get_terminal_size(stream.fileno()).columns or DEFAULT_COLUMNS
    except (AttributeError, ValueError, OSError):
        pass
    if under_spark_submit() and process_on_terminal(os.getppid()):
        try:
            fd = os.open(os.readlink(f"/proc/{os.getppid()}/fd/1"), os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:  # another user's terminal, or gone
            return DEFAULT_COLUMNS
        try:
            return os.get_terminal_size(fd).columns or DEFAULT_COLUMNS
        except OSError:
            return DEFAULT_COLUMNS
        finally:
            os.close(fd)
    return DEFAULT_COLUMNS


def progress(iterable: Iterable | None = None, *, desc: str | None = None, total: float | None = None,
             unit: str = "it", unit_scale: bool = False, file: IO | None = None, leave: bool = True,
             enable: bool | None = None, **kwargs) -> tqdm:
    """A tqdm bar (an iterator wrapper or a context manager), drawn only where someone watches.

    `enable`: None decides by `enabled(file)` (DOLMINO_PROGRESS, else "is it a terminal");
    True or False decide outright (a caller's own --progress flag, or a test's StringIO).
    A disabled bar still iterates and accepts update()/set_postfix_str() (as no-ops), so
    callers never branch on whether progress is shown; they must not read counts back from it.
    """
    stream = sys.stderr if file is None else file
    show = enabled(stream) if enable is None else enable
    return tqdm(iterable, desc=desc, total=total, unit=unit, unit_scale=unit_scale, file=stream, leave=leave,
                disable=not show, dynamic_ncols=True, **kwargs)
