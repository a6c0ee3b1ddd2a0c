"""The child side of `dolmino.synth.sandbox`: runs checked arithmetic programs, one per request.

Started as `python -I -S sandbox_child.py MEMORY_BYTES CPU_SECONDS` (isolated: no site, no
environment, no current directory on the path) and imports only the standard library. Run
as root, it becomes `nobody` (uid / gid 65534, no groups) where it may. It caps its own
address space (a lower hard cap it inherited holds), file writes and process creation
before reading the first request, and before each program raises its CPU-time limit to
"used so far + CPU_SECONDS", so a runaway program is killed by SIGXCPU (whatever the
parent did with that signal) while a long-lived child can serve millions of short ones; a
program that ends (finished or failed) after more than CPU_SECONDS of its own CPU time is a
timeout too (the rlimit counts whole seconds). Programs run with a handful of numeric
builtins and nothing else, and their annotations are not evaluated.

Protocol: once its limits hold, the child writes READY (`{"ready": true}`) on stdout, and from
then on nothing to stderr (/dev/null): a child that cannot start (an interpreter that does not
run with an empty environment, a limit it cannot take) never says it, and its stderr says why.
Then one JSON object per line on stdin, {"code": "..."}; one JSON object per line on
stdout: {"ok": true, "values": [...], "result": "...", "numeric": bool} or {"ok": false,
"kind": "runtime_error" | "resource_limit", "error": "..."}. `values[i]` renders the value
that statement i of the function body (docstring excluded) assigned or returned.
"""

import ast
import json
import math
import os
import resource
import signal
import sys

BUILTINS = {"abs": abs, "round": round, "min": min, "max": max, "int": int, "float": float, "sum": sum,
            "pow": pow, "divmod": divmod}


NOBODY = 65534
READY = '{"ready": true}'


def drop_privileges() -> None:
    """As root, become nobody: root ignores RLIMIT_NPROC (a program that got past the static
    check forked; found by a tester) and may read or remove any file."""
    if os.geteuid() != 0:
        return
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    except OSError:  # no CAP_SETUID here (some containers): the static check and rlimits still hold
        pass


def limit_resources(memory_bytes: int) -> None:
    # An ignored signal stays ignored across exec: a child of a process ignoring SIGXCPU ran a
    # runaway program on to the parent's wall-clock backstop, 25 s instead of 2 (found by a tester).
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    # Under a lower hard cap (`ulimit -v` on the executor) raising to memory_bytes failed, the child
    # exited at start, and every program was a resource_limit rejection (found by a tester): the lower one holds.
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        memory_bytes = min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (ValueError, OSError):  # not settable on every platform
        pass


def arm_cpu_limit(cpu_seconds: int) -> float:
    """Raise the CPU rlimit to the whole seconds spent so far + cpu_seconds; the CPU time spent
    so far (what the next program's own time is measured from)."""
    spent = cpu_spent()
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(math.ceil(spent)) + cpu_seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    return spent


def render(value) -> str:
    """A value as an annotation shows it: integers exactly, integral floats without '.0',
    other floats to 10 significant digits, tuples element by element."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".10g")
    if isinstance(value, (tuple, list)):
        inner = ", ".join(render(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value)


def is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (not isinstance(value, float) or math.isfinite(value)))


def is_numeric_value(value) -> bool:
    """A number, or a tuple / list of numbers (divmod's pair, `a, b = 1, 2`)."""
    if isinstance(value, (tuple, list)):
        return all(is_numeric_value(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def target_value(target, namespace):
    if isinstance(target, ast.Name):
        return namespace[target.id]
    return tuple(target_value(t, namespace) for t in target.elts)


def run_program(code: str) -> dict:
    func = ast.parse(code).body[0]
    body = func.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    namespace = {"__builtins__": BUILTINS}
    values = []
    result = None
    for stmt in body:
        if isinstance(stmt, ast.Return):
            result = eval(compile(ast.Expression(stmt.value), "<program>", "eval"), namespace)
            values.append(render(result))
            break
        if isinstance(stmt, ast.AnnAssign):
            # Executed at module level, `x: A = v` evaluates A (it ran code; found by a tester): not done.
            stmt = ast.fix_missing_locations(ast.copy_location(ast.Assign([stmt.target], stmt.value), stmt))
        exec(compile(ast.Module([stmt], type_ignores=[]), "<program>", "exec"), namespace)
        target = stmt.targets[-1] if isinstance(stmt, ast.Assign) else stmt.target
        value = target_value(target, namespace)
        if not is_numeric_value(value):
            # `total = max` passes the static check (a name), and the document showed
            # `total = max  # = <built-in function max>` (found by a tester)
            raise TypeError(f"line {stmt.lineno} assigns a {type(value).__name__}, not a number")
        values.append(render(value))
    return {"ok": True, "values": values, "result": render(result), "numeric": is_number(result)}


def cpu_spent() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def main() -> None:
    memory_bytes, cpu_seconds = int(sys.argv[1]), int(sys.argv[2])
    drop_privileges()
    limit_resources(memory_bytes)
    # Said before the first program, so that a failed start is not read as that program's verdict
    # (every program of a run was a resource_limit rejection and the run exited 0; found by a tester).
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    sys.stdout.write(READY + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        started = None
        try:
            request = json.loads(line)
            started = arm_cpu_limit(cpu_seconds)
            reply = run_program(request["code"])
        except MemoryError:
            reply = {"ok": False, "kind": "resource_limit", "error": "MemoryError: memory limit reached"}
        except RecursionError as exc:
            reply = {"ok": False, "kind": "resource_limit", "error": f"RecursionError: {exc}"}
        except Exception as exc:  # noqa: BLE001 - every failure of the program is its verdict
            reply = {"ok": False, "kind": "runtime_error", "error": f"{type(exc).__name__}: {exc}"[:500]}
        # The rlimit counts whole seconds from what the child spent before (a program got up to
        # one second more after others had run; found by a tester): the program's own CPU time
        # decides, whatever it ended in (a MemoryError after 2.3 s was "resource_limit" in a fresh
        # child and "timeout" after another program; found by a tester), the rlimit only stops
        # one that would run on.
        if started is not None and cpu_spent() - started > cpu_seconds:
            reply = {"ok": False, "kind": "timeout", "error": f"CPU time limit ({cpu_seconds} s per program) exceeded"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
