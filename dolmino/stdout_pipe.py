"""A command's end when the reader of its stdout has gone: `... | head` stops it the way it
stops cat or git (exit 141, nothing on stderr), not with a BrokenPipeError traceback; and when
Ctrl-C stops it: one line and exit 130, not a KeyboardInterrupt traceback.

Every module run as a command (`dolmino <command>`, and each `python -m <module>` the README
shows) ends through `run_main`."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for cat or git stopped by `| head`
INTERRUPTED_EXIT = 130  # 128 + SIGINT: what a shell reports for a command Ctrl-C stopped


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


def interrupted(prog: str) -> int:
    """Ctrl-C's one line and exit status, for a command whose own clean-up has run (the
    KeyboardInterrupt has come up through its `finally` blocks). What the command printed comes
    first: into a pipe stdout is block-buffered, and the line came before it."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # a reader gone, a closed stream: the line is still said
        pass
    print(f"{prog}: interrupted", file=sys.stderr)
    return INTERRUPTED_EXIT


@contextlib.contextmanager
def sigterm_raises(make: Callable[[], BaseException]) -> Iterator[None]:
    """SIGTERM (`timeout`, a scheduler's time limit, a preemption) raises `make()` for the
    duration, so that a command's clean-up and its last line run as they do for Ctrl-C; without
    it the process died mid-write, exit 143 and no word (found by testers in release and eval).
    The handler before it comes back after. Python runs handlers in the main thread only, so
    elsewhere this installs nothing."""
    import signal
    import threading

    def raise_it(_signum, _frame):
        raise make()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_it) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def command_name() -> str:
    """The command as it was run: `python -m MODULE`, else its script's name."""
    import os

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "command"


def run_main(main: Callable[..., int | None], *args) -> int | None:
    """`main(*args)`'s exit code, stdout flushed (into a pipe stdout is block-buffered: a short
    output is written here, not by print); 141 when stdout's reader has gone. A BrokenPipeError
    of another pipe or socket (an S3 upload cut off) keeps its traceback. Ctrl-C in a command
    that does not say it itself (dolmino assets, validate, lock, python -m trainer.export_hf)
    was a 20-line KeyboardInterrupt traceback (found by a tester): one line, exit 130."""
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
    except KeyboardInterrupt:
        return interrupted(command_name())
