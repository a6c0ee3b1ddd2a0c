"""Execute untrusted arithmetic programs in a resource-limited child process.

TinyGSM's solutions are model-written Python. Each program is first checked statically
(`dolmino.synth.tinygsm.check_program`: one function of assignments and a return, numeric
expressions, a few numeric builtins) and only then sent to a child interpreter that runs
isolated (`python -I -S`, no site packages, an empty environment: no API key, nothing
inherited; as nobody when this process is root), with a cap on its address space
(`memory_mb`), no file writes, no child processes, a CPU-time limit per program
(`cpu_seconds`, SIGXCPU: CPU time, so a loaded machine does not change which programs pass)
and, from this side, a wall-clock backstop (`wall_seconds`) after which the child is killed.
A killed or crashed child is replaced on the next program, so one runaway costs one item,
not the partition; so does a child that writes anything but one reply per program, or a reply
over `REPLY_LIMIT_BYTES` (`resource_limit`: values that render to megabytes, `x = [10 ** 4000] * 8000`,
are no annotation, and the parent would hold them).

A child that cannot start (an interpreter that does not run with an empty environment, a limit
it cannot take) never writes its ready line: that raises SandboxStartError with the last line of
its stderr, since it would fail every program of the run, not one; a program's own failure
stays that program's rejection.

The child is long-lived because starting an interpreter per program (~20 ms) would cost more
than running 12M tiny programs; the per-program CPU limit keeps it safe to reuse.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from dolmino.synth.sandbox_child import READY

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
FAILURE_KINDS = ("runtime_error", "timeout", "resource_limit")
# A reply line longer than this fails its program. Three lines of TinyGSM-style code rendered a
# 34 MB reply that was kept as one document, and the parent read it for 9 s (found by a tester).
REPLY_LIMIT_BYTES = 1 << 20
MAX_MEMORY_MB = (2 ** 63 - 1) >> 20  # the largest address-space cap setrlimit takes, in MiB
# The least wait for a child's ready line: a start (an interpreter, ~50 ms; seconds on a loaded executor)
# is not a program, and a short wall_seconds made one slow start fail the whole run (a reviewer).
START_SECONDS = 30.0


class SandboxStartError(RuntimeError):
    """The child interpreter did not start: a fault of the setup, not of any program."""


@dataclass(frozen=True)
class SandboxResult:
    """What running one program gave: `kind` is "ok", "runtime_error", "timeout" or
    "resource_limit"; `values` the rendered value of each statement (when ok)."""

    kind: str
    values: tuple[str, ...] = ()
    result: str = ""
    numeric: bool = False
    error: str = ""


@dataclass
class Sandbox:
    cpu_seconds: int = 2
    wall_seconds: float | None = None  # default: 10 x cpu_seconds + 5 (a backstop; CPU time decides)
    memory_mb: int = 256
    python: str = sys.executable
    counts: dict = field(default_factory=lambda: {"programs": 0, "child_starts": 0, "child_kills": 0})

    def __post_init__(self):
        if not isinstance(self.cpu_seconds, int) or self.cpu_seconds < 1:
            raise ValueError(f"cpu_seconds must be an integer >= 1, got {self.cpu_seconds!r}")
        # Above MAX_MEMORY_MB the child's setrlimit overflowed and it exited at start: every
        # program was a resource_limit rejection and the run exited 0 (found by a tester).
        if not isinstance(self.memory_mb, int) or not 64 <= self.memory_mb <= MAX_MEMORY_MB:
            raise ValueError(f"memory_mb must be an integer from 64 to {MAX_MEMORY_MB}, got {self.memory_mb!r}")
        if self.wall_seconds is None:
            self.wall_seconds = 10.0 * self.cpu_seconds + 5.0
        self._proc: subprocess.Popen | None = None
        self._buffer = b""

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        """Start a child and wait for its ready line (stderr is read only when it does not come)."""
        self.counts["child_starts"] += 1
        self._buffer = b""
        self._proc = subprocess.Popen(
            [self.python, "-I", "-S", CHILD, str(self.memory_mb * 1024 * 1024), str(self.cpu_seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True, env={})
        wait = max(self.wall_seconds, START_SECONDS)
        line, why = self._read_line(time.monotonic() + wait)
        if line == READY.encode():
            self._proc.stderr.close()
            return
        stderr = self._proc.stderr
        code = self._kill()
        said = [text for text in stderr.read(1 << 16).decode("utf-8", "replace").splitlines() if text.strip()]
        stderr.close()
        if said:
            cause = said[-1].strip()[:300]
        elif line is not None:
            cause = f"it answered {line[:100].decode('utf-8', 'replace')!r}, not its ready line"
        elif why == "timeout":
            cause = f"no ready line within {wait:g} s"
        else:
            cause = f"it exited with status {code}"
        raise SandboxStartError(f"the sandbox's interpreter ({self.python} -I -S, an empty environment) could not "
                                f"start: {cause}; every program would fail, so none was run")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def _kill(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            self.counts["child_kills"] += 1
            proc.kill()
        code = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        return code

    def _read_line(self, deadline: float) -> tuple[bytes | None, str]:
        """(reply line, ""), or (None, why): "timeout" (the deadline passed), "closed" (the child
        closed its output) or "too_long" (over REPLY_LIMIT_BYTES without its end)."""
        fd = self._proc.stdout.fileno()
        buffer = bytearray(self._buffer)
        end = buffer.find(b"\n")
        while end < 0:
            if len(buffer) > REPLY_LIMIT_BYTES:
                return None, "too_long"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, "timeout"
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None, "timeout"
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None, "closed"
            searched = len(buffer)
            buffer += chunk
            end = buffer.find(b"\n", searched)
        if end > REPLY_LIMIT_BYTES:
            return None, "too_long"
        self._buffer = bytes(buffer[end + 1:])
        return bytes(buffer[:end]), ""

    def _out_of_step(self) -> bool:
        """Whether the child wrote more since its last reply (which the next program would get)."""
        return bool(self._buffer) or bool(select.select([self._proc.stdout.fileno()], [], [], 0)[0])

    def run(self, code: str) -> SandboxResult:
        self.counts["programs"] += 1
        if self._proc is None or self._proc.poll() is not None or self._out_of_step():
            self._kill()
            self._start()
        try:
            self._proc.stdin.write(json.dumps({"code": code}).encode("utf-8") + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            code_ = self._kill()
            return SandboxResult("resource_limit", error=f"sandbox child exited ({code_}) before the program ran")
        line, why = self._read_line(time.monotonic() + self.wall_seconds)
        if line is None:
            if why == "closed":  # the child closed its output: give it a moment to be reaped
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            code_ = self._kill()
            if why == "timeout":
                return SandboxResult("timeout", error=f"no result within {self.wall_seconds:g} s wall clock")
            if why == "too_long":
                return SandboxResult("resource_limit", error=f"the result is over {REPLY_LIMIT_BYTES} bytes")
            if code_ == -signal.SIGXCPU:
                return SandboxResult("timeout", error=f"CPU time limit ({self.cpu_seconds} s per program) exceeded")
            return SandboxResult("resource_limit", error=f"sandbox child died (exit status {code_})")
        result = _parse_reply(line) if not self._buffer else None
        if result is None:
            # Not the child's one reply line (a program wrote to its output): the child is out of
            # step, and this item fails, not the Spark job (json.loads raised; found by a tester).
            self._kill()
            return SandboxResult("runtime_error", error="the program wrote to the sandbox's output")
        return result


def _parse_reply(line: bytes) -> SandboxResult | None:
    """The child's reply as a result, or None when the line is not one."""
    try:
        reply = json.loads(line)
        if not reply["ok"]:
            kind = reply["kind"]
            return SandboxResult(kind, error=str(reply["error"])) if kind in FAILURE_KINDS else None
        values = reply["values"]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values) \
                or not isinstance(reply["result"], str):
            return None
        return SandboxResult("ok", tuple(values), reply["result"], bool(reply["numeric"]))
    except (ValueError, TypeError, KeyError, RecursionError):  # not JSON, not an object, a field missing
        return None
