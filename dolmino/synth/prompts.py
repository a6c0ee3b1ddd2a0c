"""Prompt builders for the LLM-written math sources, and the checks on what comes back.

TuluMath (SPEC.md "Synthetic math prompts"): a persona-driven problem prompt whose answer
must start with "Math problem:", then a solution prompt whose answer must end, on its own
line, with "Final Answer: The final answer is ... I hope it is correct." The wording below
is the Tulu 3 persona prompt that SPEC.md summarises (same notes, same required strings).

MIND (Akter et al. 2024, used for TinyGSM-MIND and the GSM8K rewrites of Dolmino
SynthMath): the source text followed by a conversation-style instruction; SPEC.md names the
two styles OLMo 2 used, "Two Students" and "Problem Solving".

OpenWebMath labelling (the training data of the math classifier that filters MathCoder2,
Metamath and CodeSearchNet, SPEC.md): the paper says only that an LLM labelled OpenWebMath
documents math / non-math. Our prompt asks for one word, MATH or NON-MATH, about a
document's first `max_chars` characters; an answer that is neither is a bad format.
"""

from __future__ import annotations

import re

TULU_PROBLEM_TEMPLATE = (
    "Create a math problem related to the following persona:\n\n"
    "{persona}\n\n"
    "Note:\n\n"
    "1. The math problem should be challenging and involve advanced mathematical skills and knowledge. "
    "Only top talents can solve it correctly.\n"
    "2. You should make full use of the persona description to create the math problem to ensure that "
    "the math problem is unique and specific to the persona.\n"
    "3. Your response should always start with \"Math problem:\". Your response should not include a "
    "solution to the created math problem.\n"
    "4. Your created math problem should include no more than 2 sub-problems."
)

TULU_SOLUTION_TEMPLATE = (
    "Provide solution to the given math problem.\n"
    "Problem: {generated_math_problem}\n"
    "Note: Provide your solution step-by-step, and end your solution in a new line in the following format:\n"
    "Final Answer: The final answer is $final_answer$. I hope it is correct."
)

MIND_STYLES = {
    "two_students": (
        "Convert the context above as a multi-turn discussions between two students who are working on their "
        "assignment related to the given context. Make sure that their discussions strictly adhere to the "
        "context above and remains faithful to information in the context. Please DONOT add any new "
        "information/reference other than the context."
    ),
    "problem_solving": (
        "Convert the context above as a multi-turn problem-solving conversation where participants analyze "
        "challenges or scenarios presented in the content and brainstorm solutions within the context of the "
        "provided material, avoiding speculation or unrelated discussions. Make sure that their conversation "
        "strictly adhere to the context above and remains faithful to information in the context. Please "
        "DONOT add any new information/reference other than the context."
    ),
}

MATH_LABEL_TEMPLATE = (
    "Is the following document about mathematics? Count it as mathematics when its main content is "
    "mathematical: explanations of mathematical concepts, problems or exercises, proofs, derivations, "
    "formulas, or worked calculations. Web pages that only mention numbers in passing (prices, dates, "
    "statistics, scores) are not mathematics.\n"
    "Answer with exactly one word: MATH or NON-MATH.\n\n"
    "Document:\n{text}"
)
MATH, NON_MATH = "math", "non_math"

PROBLEM_PREFIX = "Math problem:"
_FINAL_ANSWER = re.compile(r"\n[ \t]*Final Answer: The final answer is (.+?)\. I hope it is correct\.[ \t]*\Z", re.S)
# A speaker label at the start of a line: one to three words ("Student 1:", "**Prof. Lee:**").
_TURN = re.compile(r"^[ \t]*[*_]{0,2}[A-Z][\w.'-]*(?: [\w.'-]+){0,2}[*_]{0,2}[ \t]*:", re.M)


def tulu_problem_prompt(persona: str) -> str:
    return TULU_PROBLEM_TEMPLATE.format(persona=persona.strip())


def tulu_solution_prompt(problem: str) -> str:
    return TULU_SOLUTION_TEMPLATE.format(generated_math_problem=problem.strip())


def mind_prompt(context: str, style: str) -> str:
    if style not in MIND_STYLES:
        raise ValueError(f"unknown MIND style {style!r} (known: {', '.join(MIND_STYLES)})")
    return f"{context.strip()}\n\n{MIND_STYLES[style]}"


def parse_problem(response: str) -> str | None:
    """The problem text of a "Math problem: ..." response; None if the format is wrong."""
    text = response.strip()
    if not text.startswith(PROBLEM_PREFIX):
        return None
    problem = text[len(PROBLEM_PREFIX):].strip()
    return problem or None


def parse_solution(response: str) -> tuple[str, str] | None:
    """(solution, final answer) if the response ends on the required Final Answer line."""
    text = response.strip()
    match = _FINAL_ANSWER.search(text)  # needs a newline before it: steps first, then the answer
    if match is None or not match.group(1).strip():
        return None
    return text, match.group(1).strip()


def count_turns(conversation: str) -> int:
    """Speaker turns ("Student 1: ...", "**Alex:** ...") in a MIND conversation."""
    return len(_TURN.findall(conversation))


def math_label_prompt(text: str, max_chars: int = 6000) -> str:
    """The labelling prompt for one document, cut to its first `max_chars` characters."""
    return MATH_LABEL_TEMPLATE.format(text=text.strip()[:max_chars])


def parse_math_label(response: str) -> str | None:
    """MATH / NON-MATH (any case, optional markdown or a trailing full stop) -> "math" /
    "non_math"; anything else None."""
    word = response.strip().strip("*_`'\"").strip()
    word = re.sub(r"[\s.!]+$", "", word).upper().replace("_", "-").replace(" ", "-")
    if word in ("NON-MATH", "NONMATH", "NOT-MATH"):
        return NON_MATH
    if word == "MATH":
        return MATH
    return None
