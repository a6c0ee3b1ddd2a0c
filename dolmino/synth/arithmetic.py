"""DolminoSynthMath (a): basic arithmetic Q&A like "77 * 14 = 1078" under varied prompts.

The point of this data is to teach exact arithmetic, so a single wrong answer is worse than
no document: every answer is computed with integers, then checked a second way (the inverse
operation) and read back out of the rendered text before the document is kept. Division
appears only when it is exact (the dividend is built as divisor * quotient).
"""

from __future__ import annotations

import re
from typing import Iterator

from dolmino.synth.base import DEFAULT_ADDED, item_rng, make_doc, partition_range, rejection

OPS = ("+", "-", "*", "/")
OP_WORDS = {  # op -> (verb phrase, noun phrase, symbol variants shown in equations)
    "+": ("add {a} and {b}", "the sum of {a} and {b}", ("+",)),
    "-": ("subtract {b} from {a}", "the difference of {a} and {b}", ("-", "−")),
    "*": ("multiply {a} by {b}", "the product of {a} and {b}", ("*", "×", "x")),
    "/": ("divide {a} by {b}", "the quotient of {a} and {b}", ("/", "÷")),
}

# {eq} is "a <sym> b", {c} the answer, {verb}/{noun} the spelled-out operation.
TEMPLATES = (
    "{eq} = {c}",
    "{eq} = ?\n{c}",
    "What is {eq}?\n{eq} = {c}",
    "Q: What is {eq}?\nA: {c}",
    "Question: Calculate {eq}.\nAnswer: {c}",
    "Compute {eq}.\n\n{eq} = {c}",
    "Solve: {eq}\nSolution: {eq} = {c}. The answer is {c}.",
    "What is {noun}?\n{Noun} is {c}.",
    "Find {noun}.\nAnswer: {c}",
    "{Verb}.\nResult: {c}",
    "Problem: {Verb}.\nWe compute {eq} = {c}.\nFinal answer: {c}",
    "Evaluate the expression {eq}.\nThe value is {c}.",
    "Calculate: {eq}\nAnswer: {c}",
    "What do you get if you {verb}?\nYou get {c}.",
    "Work out {eq}.\n{eq} equals {c}.",
    "Input: {eq}\nOutput: {c}",
    "Let's do some arithmetic. {eq} = {c}",
    "Please {verb}.\nThe answer is {c}.",
    "{eq}\n= {c}",
    "Quick math: {eq}? It is {c}.",
)

_INT = re.compile(r"-?\d+")


def _operands(rng, op: str) -> tuple[int, int, int]:
    """Operands with a mix of sizes (1-4 digits), and the exact integer result."""
    def num(max_digits: int) -> int:
        digits = rng.randint(1, max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)

    if op == "+":
        a, b = num(4), num(4)
        return a, b, a + b
    if op == "-":
        a, b = num(4), num(4)
        if rng.random() < 0.8 and b > a:  # mostly non-negative results, some negative ones
            a, b = b, a
        return a, b, a - b
    if op == "*":
        a, b = num(3), num(3)
        return a, b, a * b
    b = max(1, num(2))
    q = num(3)
    return b * q, b, q


def _verify(a: int, op: str, b: int, c: int) -> bool:
    """Check the answer with the inverse operation (not the code that produced it)."""
    if op == "+":
        return c - b == a
    if op == "-":
        return c + b == a
    if op == "*":
        return (a == 0 or b == 0) and c == 0 or (b != 0 and c % b == 0 and c // b == a)
    return b != 0 and c * b == a


class ArithmeticGenerator:
    """Basic + - * / question-answer pairs with exact integer answers."""

    name = "arithmetic"

    def __init__(self, num_docs: int = 1000, ops: tuple[str, ...] | list[str] = OPS, added: str = DEFAULT_ADDED):
        if not isinstance(num_docs, int) or num_docs < 0:
            raise ValueError(f"num_docs must be a non-negative integer, got {num_docs!r}")
        bad = [op for op in ops if op not in OPS]
        if bad or not ops:
            raise ValueError(f"ops must be a non-empty subset of {OPS}, got {list(ops)!r}")
        self.num_docs = num_docs
        self.ops = tuple(ops)
        self.added = added

    def config(self) -> dict:
        return {"num_docs": self.num_docs, "ops": list(self.ops), "templates": len(TEMPLATES), "added": self.added}

    def render(self, index: int, seed: int) -> tuple[str, dict]:
        rng = item_rng(seed, self.name, index)
        op = rng.choice(self.ops)
        a, b, c = _operands(rng, op)
        verb, noun, symbols = OP_WORDS[op]
        template_id = rng.randrange(len(TEMPLATES))
        sym = rng.choice(symbols)
        fields = {"a": a, "b": b}
        eq = f"{a} {sym} {b}"
        verb_s, noun_s = verb.format(**fields), noun.format(**fields)
        text = TEMPLATES[template_id].format(eq=eq, c=c, verb=verb_s, Verb=verb_s[0].upper() + verb_s[1:],
                                             noun=noun_s, Noun=noun_s[0].upper() + noun_s[1:])
        return text, {"a": a, "op": op, "b": b, "answer": c, "template": template_id}

    def generate(self, partition: int, num_partitions: int, seed: int) -> Iterator[dict]:
        for index in partition_range(partition, num_partitions, self.num_docs):
            text, meta = self.render(index, seed)
            shown = _INT.findall(text)
            if not _verify(meta["a"], meta["op"], meta["b"], meta["answer"]):
                yield rejection(self.name, seed, index, "wrong_answer", text)
            elif not shown or int(shown[-1]) != meta["answer"]:
                yield rejection(self.name, seed, index, "answer_not_shown", text)
            else:
                yield make_doc(self.name, seed, index, text, "dolmino_synthmath_arithmetic", meta, self.added)
