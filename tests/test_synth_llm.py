"""OpenAI-compatible client and the TuluMath / MIND generators against a local server.

The server (ThreadingHTTPServer on 127.0.0.1, port 0) plays a script of behaviours:
200 with content, 429 with Retry-After, 500/503, 400, malformed JSON, a body without
`choices`, empty content, and a response slower than the client's timeout. The client
must count each, retry what is retryable, and never raise.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from pathlib import Path
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import zstandard

from dolmino.synth.base import is_rejection, is_request_stats
from dolmino.synth.llm import MindGenerator, TuluMathGenerator, load_personas
from dolmino.synth.openai_client import ChatClient, RateLimiter, chat_url, parse_retry_after

PERSONAS = [
    "A marine biologist who counts plankton samples under a microscope every morning.",
    "A retired railway engineer who restores steam locomotives and tracks coal consumption.",
    "A beekeeper in the Alps who sells honey at the weekly market BADPROBLEM",
    "A chess coach who analyses opening statistics for her students BADSOLUTION",
    "A baker who scales bread recipes for a village festival.",
]


def _ok(content, finish_reason="stop"):
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": content}, "finish_reason": finish_reason}]}


def default_reply(prompt: str) -> str:
    """A plausible model: problem, solution or conversation depending on the prompt."""
    if prompt.startswith("Create a math problem"):
        if "BADPROBLEM" in prompt:
            return "Sure! Here is a problem about honey jars."
        return "Math problem: " + prompt.split("\n\n")[1] + " Compute the total after 3 days."
    if prompt.startswith("Provide solution"):
        if "BADSOLUTION" in prompt:
            return "Step 1: think.\nThe answer is 12."
        return "Step 1: 4 * 3 = 12.\nFinal Answer: The final answer is $12$. I hope it is correct."
    if "Convert the context above" in prompt:
        if "Josh" in prompt:
            return "Josh bought a house. That is all."   # no speaker turns: bad_format
        return "Student 1: What does the question ask?\nStudent 2: The total eggs sold.\nStudent 1: Then 9 * 2 = 18."
    return "?"


class Script:
    def __init__(self):
        self.queue: deque = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            return self.queue.popleft() if self.queue else ("ok",)


@pytest.fixture()
def server():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body: bytes, headers=()):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                                        "t": time.monotonic()})
            action = script.next()
            kind = action[0]
            if kind == "ok":
                self._send(200, json.dumps(_ok(default_reply(body["messages"][0]["content"]))).encode())
            elif kind == "status":
                self._send(action[1], b'{"error": "nope"}', [("Retry-After", action[2])] if len(action) > 2 else [])
            elif kind == "echo_key":  # a gateway that quotes the credential back in its error
                self._send(action[1], json.dumps({"error": {"message": "Incorrect API key provided: "
                                                             + str(self.headers.get("Authorization"))}}).encode())
            elif kind == "malformed":
                self._send(200, b'{"choices": [{"message": {"content": "trunc')
            elif kind == "not_utf8":
                self._send(200, b"\xff\xfe\xfa")
            elif kind == "missing_choices":
                self._send(200, json.dumps({"id": "x", "object": "chat.completion"}).encode())
            elif kind == "empty":
                self._send(200, json.dumps(_ok("   ")).encode())
            elif kind == "surrogate":  # the plausible answer with a lone surrogate escape in it: "\\ud83d"
                self._send(200, json.dumps(_ok(default_reply(body["messages"][0]["content"]) + " \ud83d")).encode())
            elif kind == "length":  # the plausible answer, cut off where max_tokens ran out
                cut = default_reply(body["messages"][0]["content"])[:-12]
                self._send(200, json.dumps(_ok(cut, finish_reason="length")).encode())
            elif kind == "filtered":  # a content filter stopped the answer: what came of it, or nothing
                self._send(200, json.dumps(_ok(action[1], finish_reason="content_filter")).encode())
            elif kind == "thought_out":  # a reasoning model spent max_tokens thinking: no content, "length"
                self._send(200, json.dumps(_ok(None, finish_reason="length")).encode())
            elif kind == "slow":
                time.sleep(action[1])
                try:
                    self._send(200, json.dumps(_ok("late")).encode())
                except OSError:
                    pass
            elif kind == "hangup":
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(2)
            elif kind == "redirect":
                self._send(action[1], b"", [("Location", action[2])])
            elif kind == "drip":  # every byte of the answer in time for a socket timeout, the whole not
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                body = json.dumps(_ok("late")).encode()
                data = head % len(body) + body
                start = 0 if action[1] == "headers" else len(head % len(body))
                try:
                    self.wfile.write(data[:start])
                    for k in range(start, len(data)):
                        self.wfile.write(data[k:k + 1])
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    pass

        def do_GET(self):  # where a followed redirect went: the POST turned into a GET, "answered"
            with script.lock:
                script.requests.append({"path": self.path, "method": "GET", "auth": self.headers.get("Authorization"),
                                        "t": time.monotonic()})
            self._send(200, json.dumps(_ok("Math problem: fetched by GET")).encode())

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    script.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield script
    httpd.shutdown()
    httpd.server_close()


def _client(url, sleeps, **kw):
    kw.setdefault("timeout", 2.0)
    return ChatClient(url, "test-model", kw.pop("api_key", None), sleep=sleeps.append, seed=7, **kw)


def test_success_and_request_body(server):
    sleeps = []
    client = _client(server.url, sleeps, api_key="sk-test")
    result = client.complete([{"role": "user", "content": "Provide solution to the given math problem. x"}],
                             temperature=0.5)
    assert result.error is None and result.content.endswith("I hope it is correct.") and result.attempts == 1
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "test-model" and req["body"]["temperature"] == 0.5
    assert client.counts == {"requests": 1, "ok": 1, "responses": 1} and sleeps == []


def test_retries_count_every_failure_kind(server):
    server.queue.extend([("status", 429, "3"), ("status", 500), ("malformed",), ("missing_choices",), ("empty",),
                         ("not_utf8",), ("status", 503, "0.25")])
    sleeps = []
    client = _client(server.url, sleeps, max_retries=7, backoff_base=0.01)
    result = client.complete([{"role": "user", "content": "Convert the context above"}])
    assert result.error is None and result.attempts == 8
    c = client.counts
    assert c["requests"] == 8 and c["retries"] == 7 and c["ok"] == 1
    assert c["http_429"] == 1 and c["http_5xx"] == 2 and c["bad_json"] == 2
    assert c["missing_choices"] == 1 and c["empty_content"] == 1 and c["retry_after_honoured"] == 2
    assert sleeps[0] >= 3.0                               # Retry-After: 3 beats the tiny backoff
    assert 0.25 <= sleeps[6] < 1                          # Retry-After: 0.25 honoured too
    assert all(s <= 0.01 * 2 ** k for k, s in enumerate(sleeps[1:6], start=1))   # backoff with jitter, capped


def test_gives_up_without_raising(server):
    server.queue.extend([("status", 500)] * 3)
    sleeps = []
    client = _client(server.url, sleeps, max_retries=2, backoff_base=0.01)
    result = client.complete([{"role": "user", "content": "x"}])
    assert result.content is None and result.error == "http_5xx" and result.attempts == 3
    assert client.counts["failed"] == 1 and client.counts["http_5xx"] == 3 and len(sleeps) == 2
    server.queue.append(("status", 400))                  # not retryable: one request, then give up
    result = client.complete([{"role": "user", "content": "x"}])
    assert result.content is None and result.error.startswith("http_4xx") and "nope" in result.error
    assert client.counts["failed"] == 2 and client.counts["requests"] == 4


def test_a_refusing_endpoint_is_no_answer(server):
    """Found by a tester: a wrong key (401 on every request) counted as answered, so the run was
    cached as finished with nothing kept and the rerun with the right key asked nothing. 401 /
    403 / 404 / 405 refuse every request alike: not retried, no answer, and the breaker stops."""
    from dolmino.synth.openai_client import DOWN_AFTER

    server.queue.extend([("status", 401)] * DOWN_AFTER)
    client = _client(server.url, [], max_retries=2, backoff_base=0.01)
    results = [client.complete([{"role": "user", "content": "x"}]) for _ in range(DOWN_AFTER + 2)]
    assert client.counts["requests"] == DOWN_AFTER and client.counts["responses"] == 0
    assert client.counts["http_401"] == DOWN_AFTER and client.counts["failed"] == DOWN_AFTER + 2
    assert results[0].error.startswith(f"refused: HTTP 401 from {server.url}/chat/completions (check the key "
                                       "--api-key-env names)")
    assert all(r.error.startswith("endpoint_down") for r in results[DOWN_AFTER:])


def test_an_endpoint_that_never_responded_is_not_tried_past_the_first_items(server):
    """Nothing listening: every item was retried in full (~6 s each), a 125-item partition took
    ~12 minutes to say the endpoint was down (found by a tester). After DOWN_AFTER items without
    any response the client sends nothing more; once an endpoint has responded it keeps retrying."""
    from dolmino.synth.openai_client import DOWN_AFTER

    sleeps = []
    down = _client("http://127.0.0.1:9/v1", sleeps, max_retries=2, backoff_base=0.001)
    results = [down.complete([{"role": "user", "content": str(i)}]) for i in range(10)]
    assert down.counts["requests"] == DOWN_AFTER * 3 and down.counts["failed"] == 10
    assert all(r.error == "connection_error" for r in results[:DOWN_AFTER])
    assert all(r.error.startswith("endpoint_down") and r.attempts == 0 for r in results[DOWN_AFTER:])
    # a gateway answering 502 for a backend that is down is no answer either (found by a reviewer)
    gateway = _client(server.url, [], max_retries=1, backoff_base=0.001)
    server.queue.extend([("status", 502)] * 2 * DOWN_AFTER)
    results = [gateway.complete([{"role": "user", "content": str(i)}]) for i in range(DOWN_AFTER + 2)]
    assert [r.error.split(":")[0] for r in results] == ["http_5xx"] * DOWN_AFTER + ["endpoint_down"] * 2
    assert gateway.counts["responses"] == 0 and not server.queue
    flaky = _client(server.url, [], max_retries=1, backoff_base=0.001)
    assert flaky.complete([{"role": "user", "content": "x"}]).content is not None
    server.queue.extend([("hangup",)] * 2 * (DOWN_AFTER + 1))
    for _ in range(DOWN_AFTER + 1):
        assert flaky.complete([{"role": "user", "content": "x"}]).error == "connection_error"
    assert flaky.counts["requests"] == 1 + 2 * (DOWN_AFTER + 1)  # every item still tried in full


def test_timeouts_and_hangups_are_counted(server):
    server.queue.extend([("slow", 1.0), ("hangup",)])
    client = _client(server.url, [], max_retries=2, timeout=0.3, backoff_base=0.01)
    started = time.monotonic()
    result = client.complete([{"role": "user", "content": "Convert the context above"}])
    assert result.content is not None and time.monotonic() - started < 1.0
    assert client.counts["timeout"] == 1 and client.counts["connection_error"] == 1
    dead = _client("http://127.0.0.1:9/v1", [], max_retries=1, timeout=0.5, backoff_base=0.01)  # nothing listens
    assert dead.complete([{"role": "user", "content": "x"}]).error == "connection_error"


def test_backoff_is_seeded_and_rate_limit_spaces_requests(server):
    a, b = _client(server.url, []), _client(server.url, [])
    assert [a.backoff(k) for k in range(6)] == [b.backoff(k) for k in range(6)]
    assert all(0.25 * 2 ** k <= d <= 0.5 * 2 ** k for k, d in enumerate(_client(server.url, []).backoff(k)
                                                                           for k in range(5)))
    client = ChatClient(server.url, "m", requests_per_second=20, seed=1)
    for _ in range(6):
        assert client.complete([{"role": "user", "content": "x"}]).content
    times = [r["t"] for r in server.requests]
    assert times[-1] - times[0] >= 5 * 0.05 * 0.9
    now = [0.0]
    slept = []
    limiter = RateLimiter(4, clock=lambda: now[0], sleep=lambda s: (slept.append(s), now.__setitem__(0, now[0] + s)))
    for _ in range(3):
        limiter.wait()
    assert slept == [0.25, 0.25]


def test_url_and_retry_after_parsing():
    assert chat_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("https://api.x.com/v1/chat/completions") == "https://api.x.com/v1/chat/completions"
    assert parse_retry_after("7") == 7 and parse_retry_after("-3") == 0 and parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30)
    assert parse_retry_after(None) is None


def _tulu(server, tmp_path, n, **kw):
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    return TuluMathGenerator(str(personas), server.url, "test-model", num_docs=n, backoff_base=0.001, timeout=2.0,
                             **kw)


def test_tulu_math_generator_accounts_for_every_item(server, tmp_path):
    gen = _tulu(server, tmp_path, 10, max_retries=1)
    # item 0's problem request fails twice (500, 500) -> request_failed; everything else answers
    server.queue.extend([("status", 500), ("status", 500)])
    records = list(gen.generate(0, 1, seed=1))
    stats = [r for r in records if is_request_stats(r)]
    items = [r for r in records if not is_request_stats(r)]
    assert len(items) == 10 and len(stats) == 1
    reasons = [r["rejected"] for r in items if is_rejection(r)]
    assert sorted(reasons) == ["bad_format"] * 4 + ["request_failed"]    # personas 2 and 3, twice each
    docs = [r for r in items if not is_rejection(r)]
    assert len(docs) == 5
    for d in docs:
        assert d["source"] == "tulu_math" and d["metadata"]["final_answer"] == "$12$"
        assert d["text"].endswith("I hope it is correct.") and "Compute the total" in d["text"]
        assert d["metadata"]["persona"] in PERSONAS
    assert stats[0]["request_stats"]["failed"] == 1 and stats[0]["request_stats"]["http_5xx"] == 2
    assert "sk" not in json.dumps(gen.config()) and "personas_sha256" in gen.config()


def test_an_answer_cut_off_at_max_tokens_is_rejected_not_kept(server, tmp_path):
    """finish_reason "length": a MIND conversation or a TuluMath problem stopped mid-sentence
    was kept as a document (its turns and "Math problem:" prefix all there; found by a tester)."""
    from dolmino.synth.owm_math import OwmLabelGenerator

    mind = MindGenerator(server.url, "test-model", num_docs=2, backoff_base=0.001, demo_gsm8k_test=True)
    server.queue.append(("length",))
    with pytest.warns(UserWarning, match="test"):
        records = list(mind.generate(0, 1, seed=2))
    assert [r.get("rejected") for r in records[:2]] == ["truncated", None]
    assert "max_tokens 2048" in records[0]["detail"] and records[2]["request_stats"]["truncated"] == 1
    tulu = _tulu(server, tmp_path, 2)
    server.queue.extend([("ok",), ("ok",), ("length",)])    # item 1's problem is cut off
    records = [r for r in tulu.generate(0, 1, seed=1) if not is_request_stats(r)]
    assert [r.get("rejected") for r in records] == [None, "truncated"] and records[1]["detail"].startswith("problem")
    assert len(server.requests) == 2 + 3                    # mind's 2, then 2 + 1: not asked again, nor solved
    # a label is read from the answer, not kept: one cut off after its word is still that label
    docs = tmp_path / "owm.jsonl"
    docs.write_text('{"id": "d", "text": "Let x = 2."}\n')
    label = OwmLabelGenerator(server.url, "test-model", str(docs))
    server.queue.append(("length",))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(globals(), "default_reply", lambda prompt: "MATH" + " " * 12)
        records = [r for r in label.generate(0, 1, seed=1) if not is_request_stats(r)]
    assert records[0]["metadata"]["math_label"] == "math"


def test_an_answer_stopped_by_the_content_filter_is_rejected_not_kept_nor_asked_again(server, tmp_path):
    """finish_reason "content_filter": the part of a problem that came before the filter was kept
    as a document, and one with no content was asked again and billed for every retry (a tester)."""
    from dolmino.synth.owm_math import OwmLabelGenerator

    tulu = _tulu(server, tmp_path, 2, max_retries=3)
    server.queue.extend([("filtered", "Math problem: A baker mixes 3 kg of"), ("ok",), ("filtered", None)])
    records = list(tulu.generate(0, 1, seed=1))
    items = [r for r in records if not is_request_stats(r)]
    assert [r.get("rejected") for r in items] == ["content_filter", "content_filter"]
    assert items[0]["detail"].startswith("problem") and items[1]["detail"].startswith("solution")
    assert len(server.requests) == 1 + 2                     # neither filtered answer asked again
    counts = records[-1]["request_stats"]
    assert counts["content_filter"] == 2 and counts["ok"] == 1 and "failed" not in counts
    mind = MindGenerator(server.url, "test-model", num_docs=1, backoff_base=0.001, demo_gsm8k_test=True)
    server.queue.append(("filtered", "Student 1: Why?\nStudent 2: Because"))
    with pytest.warns(UserWarning, match="test"):
        assert next(mind.generate(0, 1, seed=2))["rejected"] == "content_filter"
    docs = tmp_path / "owm.jsonl"
    docs.write_text('{"id": "d", "text": "Let x = 2."}\n')
    server.queue.append(("filtered", "MATH"))
    assert next(OwmLabelGenerator(server.url, "test-model", str(docs)).generate(0, 1, seed=1))["rejected"] \
        == "content_filter"


def test_an_answer_with_a_lone_surrogate_is_one_rejection_not_a_failed_partition(server, tmp_path):
    """`"content": "... \\ud83d"` (no UTF-8 text) was kept, and writing the part file raised
    UnicodeEncodeError: the partition failed, every answer of it paid for and lost, and the rerun
    asked again (found by a tester). It is that item's rejection, not asked again."""
    from dolmino.synth.runner import run_partition

    tulu = _tulu(server, tmp_path, 2, max_retries=3)
    server.queue.extend([("ok",), ("ok",), ("surrogate",)])  # item 1's problem
    stats = run_partition(tulu, 0, 1, 1, str(tmp_path / "out"), "hash")
    assert (stats["attempted"], stats["kept"], stats["rejected"]) == (2, 1, {"request_failed": 1})
    assert stats["requests"]["lone_surrogate"] == 1 and stats["requests"]["requests"] == 3 == len(server.requests)
    rejected = zstandard.ZstdDecompressor().decompressobj().decompress(
        (tmp_path / "out" / "rejected" / "part-00000.jsonl.zst").read_bytes())
    assert json.loads(rejected)["detail"].startswith("problem: lone_surrogate: the answer holds a lone surrogate")


def test_max_tokens_spent_before_any_content_is_truncated_not_retried(server, tmp_path):
    """A reasoning model that thinks through all of max_tokens answers no content and finish_reason
    "length": retried as an empty answer, each retry spent max_tokens again, and the item was
    `request_failed` "empty_content", not `truncated` (raise --max-tokens; found by a tester)."""
    from dolmino.synth.owm_math import OwmLabelGenerator

    tulu = _tulu(server, tmp_path, 1, max_retries=3)
    server.queue.append(("thought_out",))
    records = list(tulu.generate(0, 1, seed=1))
    assert records[0]["rejected"] == "truncated" and "raise --max-tokens" in records[0]["detail"]
    assert len(server.requests) == 1 and records[1]["request_stats"]["truncated"] == 1
    docs = tmp_path / "owm.jsonl"
    docs.write_text('{"id": "d", "text": "Let x = 2."}\n')
    server.queue.append(("thought_out",))
    assert next(OwmLabelGenerator(server.url, "test-model", str(docs)).generate(0, 1, seed=1))["rejected"] \
        == "truncated"
    assert len(server.requests) == 2


def test_mind_generator_and_inputs(server, tmp_path):
    gen = MindGenerator(server.url, "test-model", num_docs=4, backoff_base=0.001, demo_gsm8k_test=True)
    with pytest.warns(UserWarning, match="test"):
        records = [r for r in gen.generate(0, 1, seed=2) if not is_request_stats(r)]
    assert [r.get("rejected") for r in records] == [None, None, "bad_format", None]   # item 2 is Josh's house
    assert [r["metadata"]["style"] for r in records if not is_rejection(r)] == ["two_students", "problem_solving",
                                                                                 "problem_solving"]
    sent = [r["body"]["messages"][0]["content"] for r in server.requests]
    assert sent[0].startswith("Question: Janet’s ducks lay 16 eggs per day.") and "two students" in sent[0]
    assert "<<" not in sent[0]
    with pytest.raises(ValueError, match="style"):
        MindGenerator(server.url, "m", styles=["debate"], demo_gsm8k_test=True)
    with pytest.raises(ValueError, match="endpoint"):
        MindGenerator("", "m", demo_gsm8k_test=True)
    with pytest.raises(ValueError, match="exactly one input"):   # GSM8K test is never a default
        MindGenerator(server.url, "m")
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"persona": "ok"}\n{"name": "no persona"}\n')
    with pytest.raises(ValueError, match="p.jsonl:2"):
        load_personas(str(bad))
    txt = tmp_path / "p.txt"
    txt.write_text("one persona\n\nanother persona\n")
    assert load_personas(str(txt)) == ["one persona", "another persona"]


@pytest.mark.parametrize("name, data, expected", [
    ("p.txt", "\ufeffa teacher\r\nan engineer\n".encode(), ["a teacher", "an engineer"]),
    ("p.jsonl", '\ufeff{"persona": "a teacher"}\n\ufeff\n{"text": "a nurse"}\n'.encode(), ["a teacher", "a nurse"]),
    ("p.jsonl", b'{"persona": "ok"}\n{"persona": "\\ud800 half"}\n', "p.jsonl:2: .*surrogates not allowed"),
    ("p.jsonl", b'{"persona": "ok"}\n["a list"]\n', "p.jsonl:2: not a JSON object"),
    ("p.txt", b"ok\n\xff\xfe bad bytes\n", "p.txt:2: not UTF-8"),
    ("p.JSONL", b'{"persona": "a teacher"}\n', ["a teacher"]),  # read as plain text, the JSON its persona (a reviewer)
])
def test_personas_are_read_by_the_input_rules(tmp_path, name, data, expected):
    """A byte-order mark (Windows tools write one) is not part of the first persona, nor a
    reason to refuse a JSONL file; a lone surrogate, which no request could send, and bytes
    that are not UTF-8 are an error naming the line, not a traceback later."""
    path = tmp_path / name
    path.write_bytes(data)
    if isinstance(expected, list):
        assert load_personas(str(path)) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            load_personas(str(path))



@pytest.mark.parametrize("where", ["missing.jsonl", "."])
def test_a_personas_file_that_cannot_be_read_is_named(tmp_path, where):
    """`--personas personas.jsonl` run from another directory printed only "[Errno 2] No such
    file or directory: 'personas.jsonl'": the error names the option and what it wants."""
    with pytest.raises(ValueError, match=r"^--personas .*: cannot be read \((No such file|Is a directory)"):
        load_personas(str(tmp_path / where))


ERR = "python -m dolmino.synth: error: "


@pytest.mark.parametrize("flags, error", [
    (["--max-retries", "-3"], ERR + "--max-retries must be an integer >= 0, got -3"),
    (["--timeout", "0"], ERR + "--timeout must be a number of seconds > 0, got 0.0"),
    (["--timeout", "nan"], ERR + "--timeout must be a number of seconds > 0, got nan"),
    (["--requests-per-second", "-1"], ERR + "--requests-per-second must be a number >= 0 (0: no limit), got -1.0"),
    (["--max-tokens", "0"], ERR + "--max-tokens must be an integer >= 1, got 0"),
    (["--temperature", "-0.5"], ERR + "--temperature must be a number >= 0, got -0.5"),
    # retried as a connection error, then said to be an endpoint that is down (found by a tester)
    (["--endpoint", "127.0.0.1:9/v1"], ERR + "--endpoint '127.0.0.1:9/v1' is not an http:// or https:// URL "
                                             "(e.g. http://127.0.0.1:8000/v1)"),
    # not sent by urllib (every request failed as "endpoint down"), and printed in the report (a tester)
    *((["--endpoint", url], ERR + "--endpoint holds a user name or password (user:password@host), which the client "
                                  "does not send and the report would show; give the key with --api-key-env")
      for url in ("http://bob:SEKRETPW@127.0.0.1:9/v1", "https://SEKRETPW@host/v1", "bob:SEKRETPW@127.0.0.1:9/v1",
                  "http://bob:SEKRETPW@[::1/v1")),
    (["--endpoint", "http://[::1/v1"], ERR + "--endpoint 'http://[::1/v1' is not an http:// or https:// URL "
                                            "(e.g. http://127.0.0.1:8000/v1)"),  # urlsplit raised (a reviewer)
    # the key went into synth-report.json and stdout, the path after the query (a tester)
    *((["--endpoint", url], ERR + "--endpoint holds a query string or fragment (?... / #...), which the report would "
                                  "show and the request path would follow; give the base URL (e.g. "
                                  "http://127.0.0.1:8000/v1) and the key with --api-key-env")
      for url in ("http://127.0.0.1:9/v1?key=SEKRET", "http://127.0.0.1:9/v1#SEKRET", "127.0.0.1:9/v1?key=SEKRET")),
])
def test_client_settings_are_refused_on_the_command_line(flags, error, tmp_path, capsys, monkeypatch):
    """Once checked only in ChatClient, in the executors: a Spark traceback per bad flag."""
    import dolmino.build.spark
    from dolmino.synth.__main__ import main

    monkeypatch.setattr(dolmino.build.spark, "make_spark", lambda *a, **k: pytest.fail("Spark was started"))
    personas = tmp_path / "personas.txt"
    personas.write_text("a sailor\n")
    assert main(["--generator", "tulu_math", "--personas", str(personas), "--out", str(tmp_path / "o"),
                 "--num-docs", "2", "--endpoint", "http://127.0.0.1:9", "--model", "m", *flags]) == 2
    assert capsys.readouterr().err == error + "\n"
    assert not (tmp_path / "o").exists()


def test_client_settings_are_refused_where_they_are_given():
    with pytest.raises(ValueError, match="tulu_math: max_retries must be an integer >= 0"):
        TuluMathGenerator("unused", "http://x", "m", max_retries=-1)  # before the personas are read
    for bad in ({"max_retries": -1}, {"timeout": 0}, {"timeout": float("inf")}, {"requests_per_second": -2},
                {"backoff_base": float("nan")}, {"max_retry_after": -1}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
            ChatClient("http://x", "m", **bad)


def test_an_endpoint_that_never_answers_is_not_cached_and_the_rerun_asks_again(server, tmp_path):
    """Every request failing (nothing listening) exited 0 and cached the partitions as done: the
    rerun, with the endpoint up, kept them at 0 documents and never asked again (found by a
    tester). Unanswered partitions are not cached, the run says so and exits 1, the rerun asks.
    In subprocesses, as a user runs it (the command stops its Spark session)."""
    import os
    import subprocess
    import sys

    from dolmino.synth.runner import REPORT_NAME

    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dolmino.synth", *_synth_args(personas, out, partitions=2), "--master", "local[1]"]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("NO_SUCH_KEY_VAR", None)
    down = subprocess.run([*args, "--endpoint", "http://127.0.0.1:9/v1"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert down.returncode == 1, down.stderr[-2000:]
    assert "--api-key-env NO_SUCH_KEY_VAR is not set here" in down.stderr
    assert "warning: 4 of 4 item(s) got no usable answer from the endpoint" in down.stderr
    assert "error: partition(s) 0, 1 got no answer to any request: nothing of them is cached" in down.stderr
    assert not (out / REPORT_NAME).exists() and not list(out.glob("*.done.json")) and not list(out.glob("part-*"))
    # the rerun asks again, with another --partitions too (no part file of the failed run is left to refuse)
    one = [a if a != "2" else "1" for a in args]
    up = subprocess.run([*one, "--endpoint", server.url], capture_output=True, text=True, env=env, timeout=300)
    assert up.returncode == 0, up.stderr[-2000:]
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["partitions_generated"] == [0] and report["partitions_unanswered"] == []
    assert report["kept"] + sum(report["rejected"].values()) == 4 and report["rejected"].get("request_failed") is None


def _synth_args(personas: Path, out: Path, partitions: int) -> list[str]:
    """`dolmino synth`'s arguments for 4 tulu_math documents from `personas` into `out`, no retries."""
    return ["--generator", "tulu_math", "--personas", str(personas), "--out", str(out), "--num-docs", "4",
            "--partitions", str(partitions), "--model", "test-model", "--max-retries", "0",
            "--api-key-env", "NO_SUCH_KEY_VAR"]


def test_a_run_with_some_or_no_requests_answered_says_what_it_kept(server, tmp_path, spark, monkeypatch, capsys):
    """Some requests answered: kept (paid for), and the run says how to ask for the rest again; a
    wrong key: no answer either, said so (a run of 401s was cached as finished; found by a tester).
    The command in this process, on the tests' Spark session (which it does not stop)."""
    from dolmino.build.spark import SparkCommand
    from dolmino.synth.__main__ import main

    monkeypatch.setattr(SparkCommand, "start", lambda self, *a: spark)
    monkeypatch.setattr(SparkCommand, "stop", lambda self, session: None)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    server.queue.extend([("status", 500)])
    assert main([*_synth_args(personas, tmp_path / "some", partitions=1), "--endpoint", server.url]) == 0
    assert "warning: partition(s) 0 are kept with those items rejected" in capsys.readouterr().err
    assert (tmp_path / "some" / "part-00000.done.json").is_file()
    server.queue.extend([("status", 401)] * 3)
    assert main([*_synth_args(personas, tmp_path / "refused", partitions=1), "--endpoint", server.url]) == 1
    assert "the endpoint refused them (HTTP 401: check the key --api-key-env names)" in capsys.readouterr().err
    assert not list((tmp_path / "refused").glob("*.done.json"))


def test_an_unanswered_runs_cause_comes_from_its_own_partitions():
    """Found by a reviewer: the refusal named as the cause was summed over every partition, so a
    stray 404 in a finished partition was named where another partition's endpoint was down."""
    import types

    from dolmino.synth.runner import summarize

    def stats(partition, committed, requests):
        return {"partition": partition, "committed": committed, "cached": False, "attempted": 1, "kept": 0,
                "rejected": {"request_failed": 1}, "requests": requests}

    generator = types.SimpleNamespace(name="tulu_math", config=lambda: {})
    report = summarize(generator, [stats(0, True, {"requests": 1, "responses": 1, "http_404": 1}),
                                   stats(1, False, {"requests": 3, "connection_error": 3})], 0, 2, "h")
    assert report["partitions_unanswered"] == [1]
    assert report["unanswered_requests"] == {"connection_error": 3, "requests": 3}
    assert report["requests"]["http_404"] == 1


@pytest.mark.parametrize("status", [401, 400])
def test_an_error_body_echoing_the_key_is_kept_without_it(server, status):
    """The first 500 bytes of an error body go to rejected/ as its detail: an endpoint echoing the
    key ("Incorrect API key provided: Bearer sk-...") wrote it into the output (found by a tester)."""
    key = "sk-SECRET-t49-abcdef123456"
    server.queue.append(("echo_key", status))
    result = _client(server.url, [], api_key=key, max_retries=0).complete([{"role": "user", "content": "x"}])
    assert result.content is None and key not in result.error and "Bearer ***" in result.error


def test_a_key_after_wide_characters_is_masked_whole():
    """The body was cut by bytes before the key was masked: 330 accented characters put the cut
    inside the key, and 32 of its 51 characters were kept (found by a reviewer)."""
    key = "sk-proj-" + "A1b2C3d4E5" * 4 + "XYZ"
    client = ChatClient("http://127.0.0.1:9/v1", "m", api_key=key)
    for width in ("e", "é", "€", "😀"):
        for before in range(0, 500, 3):
            out = client._error_body((width * before).encode() + b"Invalid key " + key.encode() + b" tail")
            assert not any(key[:n] in out for n in range(8, len(key) + 1)), (width, before, out[-60:])


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_not_followed(server, status):
    """urllib followed a redirect: the Authorization header went to the other place, and the POST
    became a GET whose answer counted as "ok" (found by a tester). A redirect refuses the request."""
    server.queue.append(("redirect", status, "/elsewhere/v1/chat/completions"))
    client = _client(server.url, [], api_key="sk-t117-redirect", max_retries=2)
    result = client.complete([{"role": "user", "content": "x"}])
    assert [r.get("method", "POST") for r in server.requests] == ["POST"]
    assert result.content is None and result.attempts == 1 and client.counts[f"http_{status}"] == 1
    assert result.error == (f"refused: HTTP {status} from {server.url}/chat/completions (a redirect, not followed: "
                            "the API key would go along; give --endpoint the URL it points to): "
                            "Location: /elsewhere/v1/chat/completions")


@pytest.mark.parametrize("part", ["headers", "body"])
def test_the_timeout_limits_the_whole_request(server, part):
    """--timeout limited each read: a server sending a byte a second held a request 19 s under
    --timeout 3 (found by a tester). Here each byte comes within 0.05 s; the whole takes seconds."""
    server.queue.append(("drip", part))
    client = _client(server.url, [], max_retries=0, timeout=0.5)
    started = time.monotonic()
    result = client.complete([{"role": "user", "content": "x"}])
    assert result.error == "timeout" and client.counts["timeout"] == 1
    assert time.monotonic() - started < 1.5


def test_a_key_is_stripped_and_one_no_header_can_carry_is_refused(server, tmp_path, capsys, monkeypatch):
    """A key read from a secret file ends in a newline: http.client refused it before sending, and
    each request was reported as a connection error, to be retried (found by a tester)."""
    import dolmino.build.spark
    from dolmino.synth.__main__ import main

    client = _client(server.url, [], api_key="  sk-t117-key\n")
    assert client.complete([{"role": "user", "content": "x"}]).content is not None
    assert server.requests[-1]["auth"] == "Bearer sk-t117-key"
    for key in ("sk-t117\n-key", "sk-t117\x7f", "sk-t117-clé"):
        with pytest.raises(ValueError, match="^the API key holds a control or non-ASCII character") as caught:
            _client(server.url, [], api_key=key)
        assert "t117" not in str(caught.value)
    monkeypatch.setattr(dolmino.build.spark, "make_spark", lambda *a, **k: pytest.fail("Spark was started"))
    monkeypatch.setenv("T117_KEY", "sk-t117\r\nX-Injected: 1\n")
    personas = tmp_path / "personas.txt"
    personas.write_text("a sailor\n")
    assert main(["--generator", "tulu_math", "--personas", str(personas), "--out", str(tmp_path / "o"),
                 "--num-docs", "2", "--endpoint", server.url, "--model", "m", "--api-key-env", "T117_KEY"]) == 2
    assert capsys.readouterr().err == (ERR + "--api-key-env T117_KEY holds a control or non-ASCII character, which "
                                       "no Authorization header can carry (key not shown); fix the secret\n")


def test_a_key_given_as_api_key_env_is_refused_and_never_echoed(tmp_path, capsys, monkeypatch):
    """`--api-key-env sk-proj-...` (the key itself, not the name of its variable) was printed back
    in the "is not set here" warning, into the terminal and the job's log (found by a tester)."""
    import dolmino.build.spark
    from dolmino.synth.__main__ import main

    monkeypatch.setattr(dolmino.build.spark, "make_spark", lambda *a, **k: pytest.fail("Spark was started"))
    personas = tmp_path / "personas.txt"
    personas.write_text("a sailor\n")
    assert main(["--generator", "tulu_math", "--personas", str(personas), "--out", str(tmp_path / "o"),
                 "--num-docs", "2", "--endpoint", "http://127.0.0.1:8000/v1", "--model", "m",
                 "--api-key-env", "sk-proj-T137secret"]) == 2
    captured = capsys.readouterr()
    assert "T137secret" not in captured.out + captured.err
    assert captured.err == (ERR + "--api-key-env takes the name of the environment variable that holds the API key "
                            "(e.g. OPENAI_API_KEY), and what was given is not such a name (not shown: it may be the "
                            "key itself)\n")
    assert not (tmp_path / "o").exists()


def test_an_endpoint_with_a_query_is_refused_and_one_spelled_otherwise_is_the_same_config(tmp_path):
    """`--endpoint http://host/v1?key=SECRET` put the key into synth-report.json and stdout, and the
    path went after the query; `.../v1`, `.../v1/` and `.../v1/chat/completions` gave three config
    hashes, so a rerun spelling it otherwise requested (and paid for) everything again (a tester)."""
    from dolmino.synth.base import config_hash

    for url in ("http://h:8000/v1?key=SEKRET", "http://h:8000/v1?", "http://h:8000/v1#SEKRET"):
        with pytest.raises(ValueError, match=r"tulu_math: the endpoint holds a query string or fragment") as caught:
            TuluMathGenerator("unused", url, "m")
        assert "SEKRET" not in str(caught.value)
        with pytest.raises(ValueError, match="query string"):
            ChatClient(url, "m")
    personas = tmp_path / "personas.txt"
    personas.write_text("a sailor\n")
    spellings = ("http://h:8000", "http://h:8000/v1", "http://h:8000/v1/", "http://h:8000/v1/chat/completions")
    gens = [TuluMathGenerator(str(personas), url, "m", num_docs=2) for url in spellings]
    assert {g.config()["endpoint"] for g in gens} == {"http://h:8000/v1"}
    assert len({config_hash(g, 1, 0) for g in gens}) == 1
    # a run interrupted before the endpoint was normalised hashed it as typed: its done-files are
    # still this configuration's, to resume, not "another configuration" (a reviewer)
    from dolmino.synth.base import accepted_hashes
    from dolmino.synth.runner import check_out_dir, done_name

    typed = gens[2]  # "http://h:8000/v1/"
    legacy = config_hash(typed, 2, 1, {**typed.config(), "endpoint": "http://h:8000/v1/"})
    assert accepted_hashes(typed, 2, 1) == {config_hash(typed, 2, 1), legacy}
    assert accepted_hashes(gens[1], 2, 1) == {config_hash(gens[1], 2, 1)}  # typed as normalised: one hash
    out = tmp_path / "out"
    out.mkdir()
    (out / done_name(0)).write_text(json.dumps({"config_hash": legacy, "generator": "tulu_math", "seed": 1,
                                                "num_partitions": 2}))
    check_out_dir(typed, str(out), 2, seed=1)  # no refusal


def test_an_endpoint_with_a_password_is_refused_by_the_generator_and_the_client(tmp_path):
    """Refused by the command line only: a generator made in Python (`run(TuluMathGenerator(...))`)
    put `user:password@` into the done-files and synth-report.json (its config) and, through the
    client's errors, into rejected/ (found by a tester)."""
    personas = tmp_path / "personas.txt"
    personas.write_text("a sailor\n")
    for url in ("http://bob:SEKRETPW@127.0.0.1:9/v1", "bob:SEKRETPW@127.0.0.1:9/v1", "https://SEKRETPW@h/v1",
                "http://bob:SEKRETPW@[::1/v1"):
        for make in (lambda: TuluMathGenerator(str(personas), url, "m", num_docs=2), lambda: ChatClient(url, "m")):
            with pytest.raises(ValueError, match=r"holds a user name or password \(user:password@host\)") as caught:
                make()
            assert "SEKRET" not in str(caught.value)
    assert ChatClient("http://127.0.0.1:9/users/a@b/v1", "m").url == "http://127.0.0.1:9/users/a@b/v1/chat/completions"


def test_a_key_that_looks_like_a_variable_name_is_not_echoed_either(tmp_path, capsys):
    """Keys such as `gsk_...`, `hf_...` or `fw_...` are also valid variable names: given to
    --api-key-env they passed its check and were printed back in the "is not set here" warning,
    into the terminal and the job's log (found by a reviewer). A name in capitals, as variables
    are named, is still shown."""
    from dolmino.synth.__main__ import main

    personas = tmp_path / "personas.txt"
    personas.write_text("a sailor\n")
    (tmp_path / "o").write_text("")  # a file: the command stops after its warnings, before any work
    for given, shown in (("gsk_T141secretKey0123", False), ("T141_UNSET_KEY", True)):
        assert main(["--generator", "tulu_math", "--personas", str(personas), "--out", str(tmp_path / "o"),
                     "--num-docs", "2", "--endpoint", "http://127.0.0.1:8000/v1", "--model", "m",
                     "--api-key-env", given]) == 2
        warning = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
        assert len(warning) == 1 and "is not set here; requests carry no API key" in warning[0], warning
        assert (given in warning[0]) == shown, warning
