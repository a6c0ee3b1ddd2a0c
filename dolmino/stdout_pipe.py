"""A command's end when the reader of its stdout has gone: `... | head` stops it the way it
stops cat or git (exit 141, nothing on stderr), not with a BrokenPipeError traceback.

Every module run as a command (`dolmino <command>`, and each `python -m <module>` the README
shows) ends through `run_main`."""

from __future__ import annotations

import sys
from typing import Callable

SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for cat or git stopped by `| head`


def stdout_closed() -> bool:
    """Whether stdout's reader went away (`dolmino plan ... | head -1` printed a traceback and
    exit 1; found by a tester); if so, stdout now points at /dev/null, so that Python's own
    flush at exit does not fail again."""
    import os
    import select

    try:  # a pipe whose reader has gone reports an error condition to poll (the write end's POLLERR)
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        if not any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0)):
            return False
    except (AttributeError, OSError, ValueError):  # no poll, or no stdout descriptor
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return True


def run_main(main: Callable[..., int | None], *args) -> int | None:
    """`main(*args)`'s exit code, stdout flushed (into a pipe stdout is block-buffered: a short
    output is written here, not by print); 141 when stdout's reader has gone. A BrokenPipeError
    of another pipe or socket (an S3 upload cut off) keeps its traceback."""
    try:
        try:
            code = main(*args)
        except SystemExit:  # argparse's --help and usage errors: their output is still unflushed
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not stdout_closed():
            raise
        return SIGPIPE_EXIT
