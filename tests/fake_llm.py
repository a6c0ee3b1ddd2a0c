"""A fake OpenAI-compatible chat endpoint for tests: a local HTTP server that answers each
prompt with `reply(prompt)`, or with a queued HTTP status first (to exercise retries).

    with FakeLLM(lambda prompt: "MATH") as llm:
        generator = SomeGenerator(llm.url, "test-model", ...)
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class FakeLLM:
    def __init__(self, reply: Callable[[str], str]):
        self.reply = reply
        self.statuses: deque = deque()  # HTTP statuses to answer before the next real replies
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def __enter__(self) -> "FakeLLM":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                with fake.lock:
                    fake.prompts.append(prompt)
                    status = fake.statuses.popleft() if fake.statuses else 200
                if status == 200:
                    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": fake.reply(prompt)},
                                            "finish_reason": "stop"}]}
                else:
                    payload = {"error": "scripted failure"}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
