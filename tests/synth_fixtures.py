"""Test doubles for embed_lm.synth: a fake LLM that answers our prompts, and a loopback OpenAI-compatible server.

The server (http.server on 127.0.0.1, port 0, one thread per request) speaks just enough of the OpenAI API for the
real `openai` client: POST /v1/chat/completions (answers with `fake_llm` or `respond`, after `latency_s`; can fail
the first calls with given statuses, hold answers back (hold / unhold), reject response_format when
schema_support=False), and the files and batches endpoints of the Batch API (POST /v1/files multipart, GET
/v1/files/<id>/content, POST /v1/batches, GET /v1/batches/<id>, GET /v1/batches); a batch completes on its
`batch_polls`-th retrieve, answering each line with `respond` (lines for which `batch_fail(custom_id)` is true go to
the error file). It records every call (path, auth header, body).
"""

from __future__ import annotations

import email.parser
import inspect
import email.policy
import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from embed_lm.data.synthetic import FIELDS
from embed_lm.synth.generators import Completion


# vocabulary of realistic task definitions (independent of the package's topic seeds)
DOMAINS = """cardiology|tax law|marine biology|video game modding|urban planning|medieval history|organic chemistry|
personal finance|beekeeping|aviation safety|quantum computing|wine making|container orchestration|early childhood
education|sports nutrition|patent law|radio astronomy|commercial real estate|malware analysis|climate modelling|
fashion design|veterinary surgery|supply chain logistics|music theory|crop irrigation|pediatric oncology|historical
linguistics|railway signalling|online retail|adolescent mental health|restaurant hygiene|insurance claims|rooftop
solar|underwater archaeology|wildlife photography|orthodontics|android development|philosophy of mind|eco tourism|
drug interactions|volcanology|tennis coaching|knitting patterns|bridge engineering|medieval poetry|cloud billing|
dog training|space debris|coral reefs|electoral law|bakery management|carbon accounting|chess openings|deep sea
mining|fermentation|glacier retreat|hip hop production|immigration appeals|jazz improvisation|kidney transplants|
lighthouse restoration|maritime salvage|nanotechnology|opera staging|pension funds|rare earth metals|sleep apnea|
textile dyeing|vintage cars|wind turbines|yoga therapy|zoning disputes|antique clocks|bird migration|cheese aging|
drone regulation|epidemic forecasting|forest fires|genome editing|hearing aids|ice hockey tactics|jewelry appraisal|
kite surfing|labor arbitration|meteorite hunting|noise pollution|olive farming|podcast editing|quilting|robot
welding|sourdough baking|tidal energy|ultramarathon training|vaccine logistics|water rights|xeriscaping|youth
soccer|zero waste living""".replace("\n", " ").split("|")
INPUTS = ["a patient's question", "an error message", "a product name", "a symptom description", "a keyword query",
          "a customer complaint", "a debate claim", "a how-to request", "a short review", "a legal question",
          "a student's essay prompt", "a job posting", "a news headline", "a tweet", "a code snippet",
          "a survey answer", "an invoice line", "a recipe title", "a chart caption", "a forum title",
          "a math word problem", "a hotel request", "a policy proposal", "a sensor alert", "a travel plan",
          "a bug report", "a citation", "a lyric fragment", "a museum label", "a repair ticket"]
TARGETS = ["passages that answer it", "forum threads that resolve it", "reviews that discuss it",
           "abstracts that support or refute it", "documentation pages that explain it", "news reports on it",
           "tutorials that walk through it", "regulations that govern it", "case studies about it",
           "textbook sections covering it", "product manuals relevant to it", "expert blog posts on it",
           "court rulings that decide it", "clinical guidelines addressing it", "datasets describing it",
           "podcast transcripts mentioning it", "patents that anticipate it", "lesson plans built around it",
           "safety bulletins concerning it", "market analyses about it", "encyclopedia entries defining it",
           "troubleshooting checklists for it", "historical letters referring to it", "field notes recording it",
           "standards documents specifying it", "grant proposals targeting it", "museum catalogues listing it",
           "press releases announcing it", "interview excerpts discussing it", "maintenance logs tracking it"]
QUALIFIERS = ["written for beginners", "aimed at specialists", "published after 2015", "in plain language",
              "with worked examples", "from peer reviewed venues", "from official sources", "with citations",
              "covering regional differences", "that mention costs", "with safety warnings", "for rural settings",
              "with historical background", "comparing alternatives", "with step by step diagrams",
              "from community members", "in a formal register", "for mobile readers", "with statistics",
              "covering edge cases"]
SYNONYMS = {"passages": "excerpts", "threads": "discussions", "reviews": "critiques", "reports": "stories",
            "tutorials": "guides", "regulations": "rules", "documentation": "reference", "abstracts": "summaries"}


def realistic_task(rng: random.Random) -> tuple[str, tuple]:
    """One varied task definition composed from the vocabulary, and its parts (for paraphrasing)."""
    parts = (rng.choice(DOMAINS).strip(), rng.choice(INPUTS), rng.choice(TARGETS), rng.choice(QUALIFIERS))
    d, i, t, q = parts
    return f"Given {i} about {d}, retrieve {t}, {q}.", parts


def paraphrase(parts: tuple, rng: random.Random) -> str:
    """The same task reworded: another frame, one synonym swapped (what an LLM repeating itself writes)."""
    d, i, t, q = parts
    words = t.split()
    swap = next((k for k, w in enumerate(words) if w in SYNONYMS), None)
    if swap is not None:
        words[swap] = SYNONYMS[words[swap]]
    t = " ".join(words)
    frame = rng.randrange(3)
    if frame == 0:
        return f"Find {t} for {i} on {d}, {q}."
    if frame == 1:
        return f"Retrieve {t} ({q}) when the input is {i} concerning {d}."
    return f"For {i} in {d}, return {t} {q}."


def brainstorm_answer(k: int, n: int, structured: bool = False) -> str:
    rng = random.Random(n)
    tasks = [realistic_task(rng)[0] for _ in range(k)]
    return json.dumps({"tasks": tasks}) if structured else json.dumps(tasks, indent=1)


def fake_llm(prompt: str, n: int, structured: bool = False) -> str:
    """A valid answer to any of our prompts, distinct per call number n (so nothing is an exact duplicate); with
    `structured` (response_format was sent) bare JSON in the schema's shape."""
    if prompt.startswith("Brainstorm"):
        return brainstorm_answer(int(re.search(r"Brainstorm (\d+)", prompt).group(1)), n, structured)
    keys = re.findall(r'^- "(\w+)":', prompt, re.M)
    assert any([f for f in fields if f] == keys for fields in FIELDS.values()), keys
    obj = {key: f"{key} text number {n}, with a few words" for key in keys}
    if structured:
        return json.dumps(obj)
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


def multipart_file(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(filename, bytes) of the `file` part of a multipart/form-data body."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_filename() or "upload.jsonl", part.get_payload(decode=True)
    raise ValueError("no file part")


class LoopbackServer(ThreadingHTTPServer):
    request_queue_size = 256  # the listen backlog: 64+ clients connect at once
    daemon_threads = True


class ChatServer:
    def __init__(self, fail_first: list[int] = (), retry_after_ms: int | None = 1, respond=None,
                 latency_s: float = 0.0, schema_support: bool = True, batch_polls: int = 2,
                 batch_fail=lambda custom_id: False) -> None:
        self.fail_first, self.retry_after_ms = list(fail_first), retry_after_ms
        self.respond = respond or fake_llm
        self.latency_s, self.schema_support = latency_s, schema_support
        self.batch_polls, self.batch_fail = batch_polls, batch_fail
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.hold_after: int | None = None  # set by hold(): answers after this many successes wait for unhold()
        self.served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: the client reuses its connections

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                with server.lock:
                    server.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": None})
                m = re.fullmatch(r"/v1/files/([\w-]+)/content", self.path)
                if m:
                    return self.reply(200, server.files[m.group(1)], raw=True)
                m = re.fullmatch(r"/v1/batches/([\w-]+)", self.path)
                if m:
                    return self.reply(200, server.poll_batch(m.group(1)))
                if self.path.startswith("/v1/batches"):
                    data = list(server.batches.values())
                    return self.reply(200, {"object": "list", "data": data, "has_more": False,
                                            "first_id": data[0]["id"] if data else None,
                                            "last_id": data[-1]["id"] if data else None})
                self.reply(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/files":
                    name, data = multipart_file(self.headers["Content-Type"], raw)
                    with server.lock:
                        server.calls.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                             "body": {"filename": name}})
                        fid = f"file-{len(server.files)}"
                        server.files[fid] = data
                    return self.reply(200, {"id": fid, "object": "file", "bytes": len(data), "created_at": 0,
                                            "filename": name, "purpose": "batch", "status": "processed"})
                body = json.loads(raw)
                if self.path == "/v1/batches":
                    with server.lock:
                        server.calls.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                             "body": body})
                        bid = f"batch-{len(server.batches)}"
                        server.batches[bid] = {
                            "id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                            "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                            "status": "validating", "created_at": 0, "metadata": body.get("metadata"),
                            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "_polls": 0}
                    return self.reply(200, server.public(bid))
                if server.latency_s:
                    time.sleep(server.latency_s)
                with server.lock:
                    n = len(server.calls)
                    server.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    status = server.fail_first[n] if n < len(server.fail_first) else 200
                    hold = status == 200 and server.hold_after is not None and server.served >= server.hold_after
                    server.served += status == 200
                if hold:
                    server.release.wait(30)
                if status == 200 and "response_format" in body and not server.schema_support:
                    status = 400
                if status != 200:
                    message = ("response_format json_schema is not supported by this server" if status == 400
                               else f"fake {status}")
                    return self.reply(status, {"error": {"message": message, "type": "fake"}})
                self.reply(200, server.completion(body, n))

            def reply(self, status: int, payload: dict | bytes, raw: bool = False) -> None:
                data = payload if raw else json.dumps(payload).encode()
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

        self.httpd = LoopbackServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def completion(self, body: dict, n: int) -> dict:
        prompt, structured = body["messages"][-1]["content"], "response_format" in body
        takes_flag = len(inspect.signature(self.respond).parameters) >= 3
        text = self.respond(prompt, n, structured) if takes_flag else self.respond(prompt, n)
        return {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 30, "total_tokens": 80}}

    def public(self, bid: str) -> dict:
        return {k: v for k, v in self.batches[bid].items() if not k.startswith("_")}

    def poll_batch(self, bid: str) -> dict:
        """validating -> in_progress -> ... -> completed on the batch_polls-th retrieve (output written then)."""
        with self.lock:
            b = self.batches[bid]
            b["_polls"] += 1
            if b["status"] == "validating":
                b["status"] = "in_progress"
            if b["status"] == "in_progress" and b["_polls"] >= self.batch_polls:
                out, err = [], []
                lines = [json.loads(x) for x in self.files[b["input_file_id"]].decode().splitlines() if x.strip()]
                for k, line in enumerate(lines):
                    n = len(self.calls)
                    self.calls.append({"path": f"batch:{line['url']}", "auth": None, "body": line["body"]})
                    if self.batch_fail(line["custom_id"]):
                        err.append({"id": f"r{k}", "custom_id": line["custom_id"], "response": {
                            "status_code": 500, "request_id": "", "body": {"error": {"message": "fake 500"}}},
                            "error": None})
                    else:
                        out.append({"id": f"r{k}", "custom_id": line["custom_id"], "error": None, "response": {
                            "status_code": 200, "request_id": "", "body": self.completion(line["body"], n)}})
                for key, rows in (("output_file_id", out), ("error_file_id", err)):
                    if rows:
                        fid = f"file-{len(self.files)}"
                        self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                        b[key] = fid
                b["status"] = "completed"
                b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
            return self.public(bid)

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
