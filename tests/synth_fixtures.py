"""Test doubles for embed_lm.synth: a fake LLM that answers our prompts, and a loopback chat-completions server.

The server (http.server on 127.0.0.1, port 0, one thread per request) speaks just enough of POST
/v1/chat/completions for the real `openai` client: it answers with `fake_llm` (or `respond`), can fail the first
calls with given statuses, can hold answers back (hold / unhold), and records every call (path, auth header, body).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from embed_lm.data.synthetic import FIELDS
from embed_lm.synth.generators import Completion


def fake_llm(prompt: str, n: int) -> str:
    """A valid answer to any of our prompts, distinct per call number n (so nothing is an exact duplicate)."""
    if prompt.startswith("Brainstorm"):
        k = int(re.search(r"Brainstorm (\d+)", prompt).group(1))
        return json.dumps([f"Task {n}.{j}: given a question on topic {j}, retrieve a helpful text." for j in range(k)])
    keys = re.findall(r'^- "(\w+)":', prompt, re.M)
    assert any([f for f in fields if f] == keys for fields in FIELDS.values()), keys
    obj = {key: f"{key} text number {n}, with a few words" for key in keys}
    return "Sure! Here it is:\n```json\n" + json.dumps(obj) + "\n```\nHope this helps."


class FakeGenerator:
    """In-process generator: fake_llm answers (or `answers[i]` for call i when given); counts calls."""

    def __init__(self, answers: dict[int, str] | None = None, stop_after: int | None = None) -> None:
        self.answers, self.stop_after, self.calls = answers or {}, stop_after, 0
        self.lock = threading.Lock()

    def __call__(self, messages: list[dict]) -> Completion:
        with self.lock:
            n, self.calls = self.calls, self.calls + 1
        if self.stop_after is not None and n >= self.stop_after:
            raise KeyboardInterrupt  # stands in for Ctrl-C / a kill while requests are in flight
        text = self.answers.get(n, fake_llm(messages[-1]["content"], n))
        return Completion(text, prompt_tokens=100, completion_tokens=20)

    def describe(self) -> dict:
        return {"generator": "fake"}


class ChatServer:
    def __init__(self, fail_first: list[int] = (), retry_after_ms: int | None = 1, respond=None) -> None:
        self.fail_first, self.retry_after_ms = list(fail_first), retry_after_ms
        self.respond = respond or (lambda prompt, n: fake_llm(prompt, n))
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.hold_after: int | None = None  # set by hold(): answers after this many successes wait for unhold()
        self.served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    n = len(server.calls)
                    server.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    status = server.fail_first[n] if n < len(server.fail_first) else 200
                    hold = status == 200 and server.hold_after is not None and server.served >= server.hold_after
                    server.served += status == 200
                if hold:
                    server.release.wait(30)
                if status != 200:
                    return self.reply(status, {"error": {"message": f"fake {status}", "type": "fake"}})
                prompt = body["messages"][-1]["content"]
                self.reply(200, {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                     "role": "assistant", "content": server.respond(prompt, n)}}],
                                 "usage": {"prompt_tokens": 50, "completion_tokens": 30, "total_tokens": 80}})

            def reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status != 200 and server.retry_after_ms is not None:
                        self.send_header("retry-after-ms", str(server.retry_after_ms))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed while we held the answer
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def hold(self, after: int) -> None:
        self.release.clear()
        self.hold_after = after

    def unhold(self) -> None:
        self.hold_after = None
        self.release.set()

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.unhold()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    """A factory: chat_server(fail_first=[429, 500], ...) -> a started ChatServer, shut down after the test."""
    servers = []

    def start(**kwargs) -> ChatServer:
        servers.append(ChatServer(**kwargs).__enter__())
        return servers[-1]

    yield start
    for s in servers:
        s.__exit__()
