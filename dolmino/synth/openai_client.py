"""A small client for OpenAI-compatible `/v1/chat/completions` endpoints (vLLM, SGLang, TGI, OpenAI).

Standard library only (urllib): the executors of a Spark job should not need an SDK, and the
behaviour we need is narrow and must be exact:

* per-request timeout, for the whole request (a server sending one byte a second is cut
  off); retries with exponential backoff and jitter drawn from a seeded RNG (reproducible
  schedules in tests);
* redirects are not followed (the API key would go along to wherever they point): a 3xx
  refuses the request, as a wrong key does;
* 429 / 503 with `Retry-After` (seconds or an HTTP date) wait at least that long;
* a client-side rate limit (requests per second) so that many partitions do not stampede;
* malformed JSON, a missing `choices` list and empty content count as bad responses (and
  are retried, since a server hiccup is the usual cause); an answer cut off at `max_tokens`
  (`finish_reason` "length") is returned marked `truncated` and counted, for the caller to judge,
  and so is one whose every token went before any content (a reasoning model's thinking): asking
  again spends them again;
* an answer stopped by the endpoint's content filter (`finish_reason` "content_filter") is no
  answer, however much of it came, and is not asked again (the same prompt is filtered alike,
  and billed again): it is returned marked `filtered`;
* an answer holding a lone surrogate escape (`"\\ud83d"`: no UTF-8 text) is no answer and is
  not asked again (the same prompt and seed answer alike): as a document it failed the whole
  partition when its part file was written;
* nothing is raised for a failed item: `complete()` returns a `ChatResult` whose `error`
  names the last failure, and every event is counted in `counts`.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass

from dolmino.documents import lone_surrogate

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# Statuses that refuse every request alike (a wrong key, --model or --endpoint path): no answer,
# not retried, and the breaker counts them like an endpoint that is down. As answers they cached
# a run of 401s as finished, so the rerun with the right key asked nothing (found by a tester).
# A redirect too: followed, urllib re-sent the Authorization header to the other host and
# turned the POST into a GET (found by a tester).
REDIRECT_STATUS = {301, 302, 303, 307, 308}
REFUSED_STATUS = {401, 403, 404, 405, 407} | REDIRECT_STATUS
REFUSED_HINT = {401: "check the key --api-key-env names", 403: "check the key --api-key-env names and its access",
                404: "check --endpoint and --model", 405: "check --endpoint (the chat-completions URL)",
                407: "a proxy wants credentials",
                **{code: "a redirect, not followed: the API key would go along; give --endpoint the URL it points to"
                   for code in sorted(REDIRECT_STATUS)}}
MAX_ERROR_BODY = 500


@dataclass
class ChatResult:
    content: str | None
    error: str | None = None
    attempts: int = 0
    truncated: bool = False  # the answer stopped at max_tokens (finish_reason "length"), not where the model ended it
    filtered: bool = False  # the endpoint's content filter stopped the answer (finish_reason "content_filter")


def chat_url(endpoint: str) -> str:
    """Accept a base URL (`http://host:8000`, `.../v1`) or the full chat-completions URL."""
    url = endpoint.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if not url.endswith("/v1"):
        url += "/v1"
    return url + "/chat/completions"


def base_url(endpoint: str) -> str:
    """The endpoint as `.../v1`, however it is spelled (`...`, `.../v1/`, `.../v1/chat/completions`)."""
    return chat_url(endpoint).removesuffix("/chat/completions")


def endpoint_problem(endpoint: str) -> str | None:
    """What makes `endpoint` unusable as a base URL, or None; never quotes the URL (a query may hold a key)."""
    from urllib.parse import urlsplit

    from dolmino.s3 import split_userinfo

    if split_userinfo(endpoint if "://" in endpoint else f"http://{endpoint}")[0]:
        # Refused by the command line only: a generator made in Python hashed `user:password@` into
        # the done-files and synth-report.json, and its errors into rejected/ (found by a tester).
        return ("holds a user name or password (user:password@host), which the client does not send and the "
                "report would show; give the key with --api-key-env")
    try:
        parts = urlsplit(endpoint)
    except ValueError:  # "Invalid IPv6 URL": said by whoever checks the scheme
        return None
    if parts.query or parts.fragment or "?" in endpoint or "#" in endpoint:
        # `?key=...` went into the report and stdout, and the path was appended after it (a tester)
        return ("holds a query string or fragment (?... / #...), which the report would show and the request "
                "path would follow; give the base URL (e.g. http://127.0.0.1:8000/v1) and the key with --api-key-env")
    return None


def api_key_problem(key: str) -> str | None:
    """What makes a key (surrounding whitespace stripped) unsendable in a header, or None; never quotes it."""
    if any(not " " <= ch <= "~" for ch in key):
        return "holds a control or non-ASCII character, which no Authorization header can carry (key not shown)"
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RateLimiter:
    """At most `rate` request starts per second (evenly spaced); None or 0 = unlimited."""

    def __init__(self, rate: float | None, clock=time.monotonic, sleep=time.sleep):
        self.interval = 1.0 / rate if rate else 0.0
        self.clock, self.sleep = clock, sleep
        self.next_at = None

    def wait(self) -> float:
        if not self.interval:
            return 0.0
        now = self.clock()
        waited = 0.0
        if self.next_at is not None and now < self.next_at:
            waited = self.next_at - now
            self.sleep(waited)
            now = self.next_at
        self.next_at = now + self.interval
        return waited


def invalid_setting(*, timeout: float, max_retries: int, requests_per_second: float | None = None,
                    backoff_base: float = 0.5, backoff_max: float = 30.0,
                    max_retry_after: float = 120.0) -> tuple[str, str] | None:
    """(setting, what is wrong with it) for the first setting no client can work with, or None.

    Checked where the settings are given (the command line, a generator's constructor on the
    driver), not only here in the executors, where a bad value fails every task of a job.
    """
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        return "max_retries", f"must be an integer >= 0, got {max_retries!r}"
    if not number(timeout) or timeout <= 0:
        return "timeout", f"must be a number of seconds > 0, got {timeout!r}"
    if requests_per_second is not None and (not number(requests_per_second) or requests_per_second < 0):
        return "requests_per_second", f"must be a number >= 0 (0: no limit), got {requests_per_second!r}"
    for name, value in (("backoff_base", backoff_base), ("backoff_max", backoff_max),
                        ("max_retry_after", max_retry_after)):
        if not number(value) or value < 0:
            return name, f"must be a number of seconds >= 0, got {value!r}"
    return None


def _shut_down(sock: socket.socket) -> None:
    try:  # the plain socket's: an SSL socket's shutdown() also drops its TLS state under a reading thread
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Deadline:
    """The whole request's time limit: when it is up, the request's socket is shut down, which
    ends a read in progress. The socket timeout limits each read only: a server sending one
    byte a second held a request 19 s under --timeout 3 (found by a tester)."""

    def __init__(self, seconds: float):
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.expired = False
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True

    def _expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                _shut_down(sock)

    def watch(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)
            if self.expired:  # connected after the time was up
                _shut_down(sock)

    def __enter__(self) -> "_Deadline":
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()


class _WatchedConnections:
    """A urllib HTTP(S) handler whose connections hand their socket to `deadline` once connected."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        deadline = self.deadline

        class Watched(http_class):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        return super().do_open(Watched, req, **kwargs)


class _HttpHandler(_WatchedConnections, urllib.request.HTTPHandler):
    pass


class _HttpsHandler(_WatchedConnections, urllib.request.HTTPSHandler):
    pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises HTTPError with the 3xx status


# After this many items in a row whose every try got no answer (connection refused, timeouts, a
# gateway's 502/503/504 or a 429 for a backend that is down), none ever answered, the client
# sends nothing more: a partition of 125 items spent ~12 minutes retrying an endpoint that was
# down before it said so (found by a tester).
DOWN_AFTER = 3


class ChatClient:
    """Retrying, rate-limited chat-completions client that never raises for a failed request.

    An endpoint that never answered (no final answer, a 200 or a status not worth retrying, to
    the first DOWN_AFTER items, each retried) is taken as down: later items fail at once with
    `endpoint_down`, nothing sent. Once it has answered, failures are retried as usual (an
    outage mid-run may pass). `counts["responses"]` counts the answers (200s, usable or not,
    and final errors): what an endpoint may bill for."""

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, *, timeout: float = 60.0,
                 max_retries: int = 4, backoff_base: float = 0.5, backoff_max: float = 30.0,
                 max_retry_after: float = 120.0, requests_per_second: float | None = None, seed: int = 0,
                 sleep=time.sleep, clock=time.monotonic):
        bad = invalid_setting(timeout=timeout, max_retries=max_retries, requests_per_second=requests_per_second,
                              backoff_base=backoff_base, backoff_max=backoff_max, max_retry_after=max_retry_after)
        if bad is not None:
            raise ValueError(" ".join(bad))
        if (problem := endpoint_problem(endpoint)) is not None:
            raise ValueError(f"the endpoint {problem}")
        # A key read from a secret file ends in a newline: http.client refused it before sending,
        # and every request was a "connection_error" (found by a tester).
        api_key = api_key.strip() if api_key else api_key
        if api_key and (problem := api_key_problem(api_key)) is not None:
            raise ValueError(f"the API key {problem}")
        self.url = chat_url(endpoint)
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.max_retries, self.backoff_base, self.backoff_max = max_retries, backoff_base, backoff_max
        self.max_retry_after = max_retry_after
        self.rng = random.Random(seed)
        self.sleep = sleep
        self.limiter = RateLimiter(requests_per_second, clock=clock, sleep=sleep)
        self.counts: Counter = Counter()
        self.unreached = 0  # items in a row whose every try got no response, while none ever had one
        self.reached = False

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff: uniform in [d/2, d], d = base * 2^attempt (capped)."""
        delay = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return delay * (0.5 + 0.5 * self.rng.random())

    def _post(self, body: bytes) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one request, whole within `timeout` seconds (else TimeoutError)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with _Deadline(self.timeout) as deadline:
            opener = urllib.request.build_opener(_NoRedirects, _HttpHandler(deadline), _HttpsHandler(deadline))
            try:
                answer = self._open(opener, request)
            except Exception:
                if deadline.expired:  # whatever the cut-off read raised
                    raise TimeoutError(f"no whole answer within {self.timeout:g} s") from None
                raise
            if deadline.expired:  # a body without a length, cut off, reads as a whole one
                raise TimeoutError(f"no whole answer within {self.timeout:g} s")
        return answer

    def _open(self, opener, request) -> tuple[int, dict, bytes]:
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            try:
                data = exc.read()
            except Exception:  # noqa: BLE001 - the body of an error is best effort
                data = b""
            return exc.code, dict(exc.headers or {}), data

    def _error_body(self, data: bytes) -> str:
        """An error answer's body as rejected/ keeps it (its first MAX_ERROR_BODY characters), the
        API key masked: an endpoint or proxy echoing it ("Incorrect API key provided: Bearer
        sk-...") wrote the key into the output (found by a tester)."""
        key = self.api_key or ""
        # Enough bytes for MAX_ERROR_BODY characters and a key after them whatever their width (UTF-8:
        # up to 4 bytes each): cut by bytes first, a body of accented text cut the key in two (a reviewer).
        text = data[:4 * (MAX_ERROR_BODY + len(key))].decode("utf-8", "replace")
        return (text.replace(key, "***") if key else text)[:MAX_ERROR_BODY]

    @staticmethod
    def parse(data: bytes) -> tuple[str | None, str | None, str | None]:
        """(content, None, finish_reason) or (None, bad-response reason, finish_reason) for a 200
        body; finish_reason "length": cut off at max_tokens, "content_filter": stopped by a filter."""
        try:
            payload = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None, "bad_json", None
        if not isinstance(payload, dict):
            return None, "bad_json", None
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None, "missing_choices", None
        finish = choices[0].get("finish_reason")
        finish = finish if isinstance(finish, str) else None
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or not content.strip():
            return None, "empty_content", finish
        return content, None, finish

    def complete(self, messages: list[dict], **params) -> ChatResult:
        if not self.reached and self.unreached >= DOWN_AFTER:
            self.counts["not_sent_endpoint_down"] += 1
            self.counts["failed"] += 1
            return ChatResult(None, f"endpoint_down: no answer from {self.url} to any try of the first "
                                    f"{DOWN_AFTER} items; not sent", 0)
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode("utf-8")
        error = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.counts["retries"] += 1
            self.limiter.wait()
            self.counts["requests"] += 1
            wait = None
            try:
                status, headers, data = self._post(body)
            except (TimeoutError, socket.timeout):
                error = "timeout"
            except urllib.error.URLError as exc:
                error = "timeout" if isinstance(exc.reason, (TimeoutError, socket.timeout)) else "connection_error"
            except Exception:  # noqa: BLE001 - RemoteDisconnected, reset, bad status line...
                error = "connection_error"
            else:
                if status in REFUSED_STATUS:
                    self.counts[f"http_{status}"] += 1
                    self.counts["failed"] += 1
                    self.unreached = 0 if self.reached else self.unreached + 1
                    if status in REDIRECT_STATUS:
                        location = {k.lower(): v for k, v in headers.items()}.get("location", "")
                        data = f"Location: {location}".encode()
                    return ChatResult(None, f"refused: HTTP {status} from {self.url} ({REFUSED_HINT[status]}): "
                                            f"{self._error_body(data)}", attempt + 1)
                if status == 200 or status not in RETRYABLE_STATUS:
                    self.reached = True
                    self.counts["responses"] += 1
                if status == 200:
                    content, bad, finish = self.parse(data)
                    if finish == "content_filter":
                        # what came (a part of an answer, or nothing) was kept as the model's answer, or
                        # asked again and billed for each retry (found by a tester)
                        self.counts["content_filter"] += 1
                        return ChatResult(None, "content_filter: the endpoint's content filter stopped the answer",
                                          attempt + 1, filtered=True)
                    if bad == "empty_content" and finish == "length":
                        content = ""  # max_tokens spent before any content: retried, it was spent again (a tester)
                    if content is not None and lone_surrogate(content) is not None:
                        # written as a document, it raised UnicodeEncodeError in the runner and failed the
                        # partition, every answer of it paid for and lost (found by a tester)
                        self.counts["lone_surrogate"] += 1
                        self.counts["failed"] += 1
                        return ChatResult(None, "lone_surrogate: the answer holds a lone surrogate escape (\\ud800-"
                                                "\\udfff), which is no UTF-8 text; not asked again", attempt + 1)
                    if content is not None:
                        self.counts["ok"] += 1
                        if finish == "length":
                            self.counts["truncated"] += 1
                        return ChatResult(content, None, attempt + 1, finish == "length")
                    error = bad
                else:
                    error = "http_429" if status == 429 else f"http_{status // 100}xx"
                    if status not in RETRYABLE_STATUS:
                        self.counts[error] += 1
                        self.counts["failed"] += 1
                        return ChatResult(None, f"{error}: {self._error_body(data)}", attempt + 1)
                    retry_after = {k.lower(): v for k, v in headers.items()}.get("retry-after")
                    wait = parse_retry_after(retry_after)
                    if wait is not None:
                        self.counts["retry_after_honoured"] += 1
                        wait = min(wait, self.max_retry_after)
            self.counts[error] += 1
            if attempt < self.max_retries:
                delay = self.backoff(attempt)
                self.sleep(max(delay, wait) if wait is not None else delay)
        self.counts["failed"] += 1
        self.unreached = 0 if self.reached else self.unreached + 1
        return ChatResult(None, error, self.max_retries + 1)
