"""OpenAIGenerator through the real `openai` client against a loopback chat-completions server: retries with
backoff on 429/500, bounded attempts, errors a user can act on, and the key kept out of everything written."""

import json
import os
import signal
import subprocess
import sys
import time

import openai
import pytest
from conftest import ROOT
from synth_fixtures import chat_server  # noqa: F401  (fixture)

from embed_lm.synth.generators import GeneratorError, OpenAIGenerator
from embed_lm.synth.pipeline import Plan, SynthError, run

KEY = "sk-test-DO-NOT-LEAK-7f3a9c"
MESSAGES = [{"role": "user", "content": "Brainstorm 2 distinct and useful text retrieval tasks."}]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def test_retries_429_and_500_with_backoff_then_succeeds(chat_server):  # noqa: F811
    server = chat_server(fail_first=[429, 500], retry_after_ms=None)  # no Retry-After: the client's own backoff
    gen = OpenAIGenerator("fake-model", base_url=server.url, max_retries=3)
    t0 = time.monotonic()
    c = gen(MESSAGES)
    elapsed = time.monotonic() - t0
    assert c.retries == 2 and len(server.calls) == 3
    assert c.text.startswith("[") and (c.prompt_tokens, c.completion_tokens, c.finish_reason) == (50, 30, "stop")
    assert elapsed >= 1.0  # 0.5 s then 1 s, each less up to 25% jitter
    assert all(call["auth"] == f"Bearer {KEY}" and call["path"] == "/v1/chat/completions" for call in server.calls)
    body = server.calls[-1]["body"]
    assert body["model"] == "fake-model" and body["temperature"] == 1.0 and body["top_p"] == 1.0
    assert body["messages"] == MESSAGES


def test_attempts_are_bounded_and_a_failed_request_is_left_for_the_next_run(chat_server, tmp_path):  # noqa: F811
    server = chat_server(fail_first=[500] * 6)  # 2 requests x (1 + 2 retries), Retry-After 1 ms
    gen = OpenAIGenerator("fake-model", base_url=server.url, max_retries=2)
    plan = Plan(kinds=("sts",), n_examples=2)
    with pytest.raises(SynthError, match=f"no request succeeded: 2 of 2 failed against {server.url} .*http_500"):
        run(gen, str(tmp_path), plan, concurrency=1, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(server.calls) == 6 and not summary["complete"] and summary["requests"]["left"] == 2
    last = summary["runs"][-1]
    assert last["errors"] == {"http_500": 2} and last["failed"] == 2 and last["retries"] == 4  # 2 x max_retries
    assert last["status"] == "failed" and "http_500" in last["last_error"]
    summary = run(gen, str(tmp_path), plan, concurrency=1, progress=False)  # the server is fine again
    assert len(server.calls) == 8 and summary["complete"] and summary["kinds"]["sts"]["examples"] == 2
    assert summary["tokens"] == {"prompt": 100, "completion": 60, "total": 160}


def test_consecutive_failures_stop_the_run(chat_server, tmp_path):  # noqa: F811
    server = chat_server(fail_first=[503] * 100)
    gen = OpenAIGenerator("fake-model", base_url=server.url, max_retries=1)
    with pytest.raises(RuntimeError, match="3 requests in a row failed .*rerun the same command"):
        run(gen, str(tmp_path), Plan(kinds=("sts",), n_examples=50), concurrency=1, progress=False,
            max_consecutive_errors=3)
    assert 6 <= len(server.calls) <= 8  # 3 x 2 attempts, plus the next request if it was already in flight


def test_rejected_key_stops_at_once_without_echoing_the_key(chat_server):  # noqa: F811
    server = chat_server(fail_first=[401])
    with pytest.raises(GeneratorError, match="HTTP 401.*OPENAI_API_KEY") as e:
        OpenAIGenerator("fake-model", base_url=server.url)(MESSAGES)
    assert KEY not in str(e.value) and len(server.calls) == 1


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("MY_LLM_KEY", raising=False)
    with pytest.raises(GeneratorError, match="MY_LLM_KEY is not set"):
        OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1", api_key_env="MY_LLM_KEY")
    assert openai.OpenAI  # the official client is what we drive


def cli(*args):
    return subprocess.Popen([sys.executable, "-m", "embed_lm.synth", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OPENAI_API_KEY": KEY})


def count_records(out):
    return sum(len(p.read_text().splitlines()) for p in out.rglob("*.jsonl")) if out.exists() else 0


def test_cli_killed_mid_run_resumes_and_never_writes_the_key(chat_server, tmp_path):  # noqa: F811
    server = chat_server()
    server.hold(after=10)  # answer 10 requests, then hang: the run is killed with requests in flight
    out = tmp_path / "synth"
    args = ["generator=openai", "model=fake-model", f"generator.base_url={server.url}", f"out={out}",
            "n_tasks=2", "tasks_per_request=2", "n_examples=3", "concurrency=2", "progress=false",
            f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = cli(*args)
    deadline = time.monotonic() + 60
    while count_records(out) < 10 or len(server.calls) < 12:  # 10 written, 2 more in flight
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    first_out = proc.communicate(timeout=30)
    assert count_records(out) == 10 and not (out / "summary.json").exists()  # a SIGKILL leaves no summary

    server.unhold()
    proc = cli(*args)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert count_records(out) == 4 + 6 * 3 and "requests: 22/22 done" in stdout
    assert len(server.calls) == 12 + 12  # the 2 killed in flight are sent again, nothing else twice
    # the key reached the server, and nothing else
    assert {c["auth"] for c in server.calls} == {f"Bearer {KEY}"}
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in written) and any(p.name == "summary.json" for p in written)
    for path in written:
        assert KEY not in path.read_text(errors="replace"), path
    assert KEY not in stdout + stderr + "".join(first_out)
