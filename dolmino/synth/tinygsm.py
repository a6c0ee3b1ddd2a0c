"""TinyGSM -> executable, assignment-only, annotated solutions: the input of TinyGSM-MIND.

OLMo 2 (SPEC.md, Dolmino math subset): "TinyGSM (code answers) filtered to executable,
assignment-only code, each line annotated with its value, rewritten in 'Two Students' /
'Problem Solving' conversation styles". This module is the first half; the rewrite is the
`mind` generator run over its output:

    python -m dolmino.synth --generator tinygsm --input 'data/upstream/tinygsm/*.jsonl*' \\
        --out build/synth/tinygsm --partitions 64
    python -m dolmino.synth --generator mind --input 'build/synth/tinygsm/part-*.jsonl.zst' \\
        --num-docs 2N --style two_students --style problem_solving --out build/synth/tinygsm_mind \\
        --endpoint URL --model M

Input rows are TinyGSM's: `question` (the problem) and `code`, one function such as

    def simple_math_problem() -> int:
        \"\"\"<the question>\"\"\"
        eggs_per_day = 16
        eggs_eaten = 3 + 4
        result = (eggs_per_day - eggs_eaten) * 2
        return result

A program is kept when (1) it parses (`syntax_error`; `too_deep` when it nests past the
recursion limit); (2) it is one function without parameters whose body is
an optional docstring, then assignments only (`x = ...`, `x += ...`, `x: int = ...`, names
or tuples of names as targets), then one `return` (reason `not_assignment_only` otherwise:
no loops, branches, imports, nested functions, comprehensions, attribute access or
subscripts, no names starting with `__`, and calls only to abs / round / min / max / int /
float / sum / pow / divmod; annotations, `-> int` too, follow the rules of values);
(3) it runs in the sandbox (`dolmino.synth.sandbox`) without error (`runtime_error`; so is
a statement whose value is not a number or numbers, `total = max`),
within its CPU and wall-clock limits (`timeout`), memory cap and 1 MiB of rendered values
(`resource_limit`); and
(4) it returns a finite number (`non_numeric_result`). The kept document is the question and
the program re-printed statement by statement, each line ending in `# = <its value>`:

    Question: Janet's ducks lay 16 eggs per day. ...

    Solution:
    def simple_math_problem() -> int:
        eggs_per_day = 16  # = 16
        eggs_eaten = 3 + 4  # = 7
        result = (eggs_per_day - eggs_eaten) * 2  # = 18
        return result  # = 18

Rows without a string `question` and `code` are quarantined (`missing_fields`), like lines
that are not JSON objects.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Iterator

from dolmino.synth.base import DEFAULT_ADDED, make_doc, partition_range, quarantine, rejection
from dolmino.synth.inputs import InputFiles
from dolmino.synth.sandbox import REPLY_LIMIT_BYTES, Sandbox

ALLOWED_CALLS = ("abs", "round", "min", "max", "int", "float", "sum", "pow", "divmod")
_ARITH_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
# Bump when the document layout changes: it is part of the generator's config hash.
TINYGSM_FORMAT = 1


class NotAssignmentOnly(ValueError):
    pass


def _where(node: ast.AST) -> str:
    return f"line {getattr(node, 'lineno', '?')}"


def _check_expr(node: ast.AST) -> None:
    """Numbers, names, arithmetic, tuples/lists of those, and calls to ALLOWED_CALLS."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise NotAssignmentOnly(f"{_where(node)}: constant {node.value!r} is not a number")
    elif isinstance(node, ast.Name):
        if not isinstance(node.ctx, ast.Load):
            raise NotAssignmentOnly(f"{_where(node)}: {node.id} is not read")
        _check_name(node)
    elif isinstance(node, ast.BinOp):
        if not isinstance(node.op, _ARITH_OPS):
            raise NotAssignmentOnly(f"{_where(node)}: operator {type(node.op).__name__}")
        _check_expr(node.left)
        _check_expr(node.right)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise NotAssignmentOnly(f"{_where(node)}: operator {type(node.op).__name__}")
        _check_expr(node.operand)
    elif isinstance(node, (ast.Tuple, ast.List)):
        for elt in node.elts:
            _check_expr(elt)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in ALLOWED_CALLS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise NotAssignmentOnly(f"{_where(node)}: call to {name}")
        if node.keywords:
            raise NotAssignmentOnly(f"{_where(node)}: keyword arguments in a call to {node.func.id}")
        for arg in node.args:
            _check_expr(arg)
    else:
        raise NotAssignmentOnly(f"{_where(node)}: {type(node).__name__} expression")


def _check_name(node: ast.Name) -> None:
    # `__builtins__` and the like are the interpreter's, not a program's variables
    if node.id.startswith("__"):
        raise NotAssignmentOnly(f"{_where(node)}: name {node.id}")


def _check_target(node: ast.AST) -> None:
    if isinstance(node, ast.Name):
        _check_name(node)
        return
    if isinstance(node, (ast.Tuple, ast.List)) and node.elts:
        for elt in node.elts:
            _check_target(elt)
        return
    raise NotAssignmentOnly(f"{_where(node)}: assignment to {type(node).__name__}")


# Every node a checked function may hold. Walked over the whole function after the rules
# above, so that an expression in a place they do not look at (an annotation ran code in
# the sandbox as it was evaluated; found by a tester) can only be made of these.
_ALLOWED_NODES = (ast.FunctionDef, ast.arguments, ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return,
                  ast.Constant, ast.Name, ast.Load, ast.Store, ast.BinOp, ast.UnaryOp, ast.Tuple, ast.List,
                  ast.Call, ast.USub, ast.UAdd, *_ARITH_OPS)


def _check_nodes(func: ast.FunctionDef) -> None:
    for node in ast.walk(func):
        if not isinstance(node, _ALLOWED_NODES):
            raise NotAssignmentOnly(f"{_where(node)}: {type(node).__name__} expression")
        if isinstance(node, ast.Name):
            _check_name(node)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


@dataclass(frozen=True)
class Program:
    """A checked program: the function and its statements (docstring excluded), with the
    `def` line and each statement's source as the document re-prints them."""

    func: ast.FunctionDef
    statements: tuple[ast.stmt, ...]
    docstring: str | None
    header: str
    sources: tuple[str, ...]


def check_program(code: str) -> tuple[Program | None, str, str]:
    """(program, "", "") when `code` is one assignment-only function, else (None, reason, detail)."""
    try:
        return _check_program(code)
    except (RecursionError, MemoryError) as exc:
        # `1+1+...+1` of a few thousand terms nests past the recursion limit (ast.parse, or the
        # walk below): that item is rejected, not the partition (a tester's run died of one row).
        return None, "too_deep", f"{type(exc).__name__}: the program nests too deeply to check"


def _check_program(code: str) -> tuple[Program | None, str, str]:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in the source
        return None, "syntax_error", str(exc)[:300]
    funcs = [s for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
    others = [s for s in tree.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(funcs) != 1:
        return None, "no_function", f"{len(funcs)} function definitions"
    try:
        if others:
            raise NotAssignmentOnly(f"{_where(others[0])}: module-level {type(others[0]).__name__}")
        func = funcs[0]
        if isinstance(func, ast.AsyncFunctionDef) or func.decorator_list:
            raise NotAssignmentOnly(f"{_where(func)}: async or decorated function")
        args = func.args
        if args.args or args.posonlyargs or args.kwonlyargs or args.vararg or args.kwarg:
            raise NotAssignmentOnly(f"{_where(func)}: the function takes parameters")
        if getattr(func, "type_params", None):  # Python 3.12: def f[T]()
            raise NotAssignmentOnly(f"{_where(func)}: the function takes type parameters")
        if func.returns is not None:  # re-printed in the document: the rules of values
            _check_expr(func.returns)
        body = list(func.body)
        docstring = body[0].value.value if body and _is_docstring(body[0]) else None
        if docstring is not None:
            body = body[1:]
        if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
            raise NotAssignmentOnly(f"{_where(func)}: the body does not end in `return <value>`")
        if len(body) < 2:
            raise NotAssignmentOnly(f"{_where(func)}: no assignments")
        for stmt in body[:-1]:
            if isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    _check_target(target)
            elif isinstance(stmt, ast.AugAssign):
                _check_target(stmt.target)
                if not isinstance(stmt.op, _ARITH_OPS) or not isinstance(stmt.target, ast.Name):
                    raise NotAssignmentOnly(f"{_where(stmt)}: augmented assignment")
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                _check_target(stmt.target)
                _check_expr(stmt.annotation)
            else:
                raise NotAssignmentOnly(f"{_where(stmt)}: {type(stmt).__name__} statement")
            _check_expr(stmt.value)
        _check_expr(body[-1].value)
        _check_nodes(func)
    except NotAssignmentOnly as exc:
        return None, "not_assignment_only", str(exc)
    # Re-printed here, under check_program's RecursionError guard: ast.unparse takes a few frames
    # per level, so `x = ----...1` of 400 signs passed the check and then raised in annotate,
    # failing the whole partition (found by a tester).
    sources = tuple(ast.unparse(stmt) for stmt in body)
    return Program(func, tuple(body), docstring, _header(func), sources), "", ""


def _header(func: ast.FunctionDef) -> str:
    returns = f" -> {ast.unparse(func.returns)}" if func.returns is not None else ""
    return f"def {func.name}(){returns}:"


def annotated_source(program: Program, values: tuple[str, ...]) -> str:
    """The program re-printed statement by statement, each ending in `# = <value>`."""
    if len(values) != len(program.statements):
        raise ValueError(f"{len(values)} values for {len(program.statements)} statements")
    lines = [program.header]
    for source, value in zip(program.sources, values):
        lines.append(f"    {source}  # = {value}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Outcome:
    text: str | None
    reason: str = ""
    detail: str = ""
    result: str = ""
    statements: int = 0


def annotate(question: str, code: str, sandbox: Sandbox) -> Outcome:
    """Check, run and annotate one TinyGSM item; `text` is None when it is rejected (`reason`)."""
    program, reason, detail = check_program(code)
    if program is None:
        return Outcome(None, reason, detail)
    run = sandbox.run(code)
    if run.kind != "ok":
        return Outcome(None, run.kind, run.error)
    if not run.numeric:
        return Outcome(None, "non_numeric_result", f"returned {run.result[:100]}")
    if len(run.values) != len(program.statements):
        # Not what the child computes for a checked program (a program that got out wrote its own
        # reply): this item fails, annotated_source's ValueError failed the partition (found by a tester).
        return Outcome(None, "runtime_error", f"the sandbox gave {len(run.values)} values for "
                                              f"{len(program.statements)} statements")
    solution = annotated_source(program, run.values)
    return Outcome(f"Question: {question.strip()}\n\nSolution:\n{solution}", result=run.result,
                   statements=len(program.statements))


class TinyGsmGenerator:
    """TinyGSM rows -> documents of the question and its annotated, checked program."""

    name = "tinygsm"

    def __init__(self, input_path: str | list[str], num_docs: int | None = None, cpu_seconds: int = 2,
                 wall_seconds: float | None = None, memory_mb: int = 256, added: str = DEFAULT_ADDED):
        if num_docs is not None and (not isinstance(num_docs, int) or num_docs < 0):
            raise ValueError(f"num_docs must be a non-negative integer, got {num_docs!r}")
        Sandbox(cpu_seconds, wall_seconds, memory_mb)  # validates the limits on the driver
        self.inputs = InputFiles(input_path)
        self.requested = num_docs
        self.cpu_seconds, self.wall_seconds, self.memory_mb, self.added = cpu_seconds, wall_seconds, memory_mb, added

    @property
    def num_docs(self) -> int:
        total = self.inputs.total_rows
        return total if self.requested is None else min(self.requested, total)

    def input_paths(self) -> list[str]:
        return self.inputs.paths

    def config(self) -> dict:
        return {"input": self.inputs.fingerprint(), "num_docs": self.num_docs, "cpu_seconds": self.cpu_seconds,
                "wall_seconds": self.wall_seconds, "memory_mb": self.memory_mb, "allowed_calls": list(ALLOWED_CALLS),
                "reply_limit_bytes": REPLY_LIMIT_BYTES, "format": TINYGSM_FORMAT, "added": self.added}

    def generate(self, partition: int, num_partitions: int, seed: int) -> Iterator[dict]:
        span = partition_range(partition, num_partitions, self.num_docs)
        with Sandbox(self.cpu_seconds, self.wall_seconds, self.memory_mb) as sandbox:
            for row in self.inputs.rows(span.start, span.stop):
                if row.obj is None:
                    yield quarantine(self.name, seed, row.index, row.reason, row.path, row.line, row.detail, row.raw)
                    continue
                question, code = row.obj.get("question"), row.obj.get("code")
                if not isinstance(question, str) or not question.strip() or not isinstance(code, str):
                    yield quarantine(self.name, seed, row.index, "missing_fields", row.path, row.line,
                                     "needs string 'question' and 'code'")
                    continue
                outcome = annotate(question, code, sandbox)
                if outcome.text is None:
                    yield rejection(self.name, seed, row.index, outcome.reason, outcome.detail)
                    continue
                meta = {"tinygsm_row": row.index, "result": outcome.result, "statements": outcome.statements}
                if "id" in row.obj:
                    meta["tinygsm_id"] = str(row.obj["id"])
                yield make_doc(self.name, seed, row.index, outcome.text, "tinygsm_annotated", meta, self.added)
