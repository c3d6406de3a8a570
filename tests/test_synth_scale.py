"""Synthesis at scale: the Batch API path (resumable by batch id), structured output with fallback, rate limiting
and Retry-After, the vLLM generator's mapping (test double), near-duplicate task removal, and a refused server."""

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import types

import pytest
from conftest import ROOT
from synth_fixtures import brainstorm_answer, chat_server, paraphrase, realistic_task  # noqa: F401  (fixture)

from embed_lm.synth import ratelimit
from embed_lm.synth.batch import OpenAIBatchGenerator
from embed_lm.synth.dedup import dedup_tasks
from embed_lm.synth.generators import Completion, GeneratorError, OpenAIGenerator
from embed_lm.synth.parsing import parse_tasks
from embed_lm.synth.pipeline import Plan, run
from embed_lm.synth.ratelimit import RateLimiter

KEY = "sk-test-scale"
PLAN = Plan(kinds=("short-long", "sts"), n_tasks=4, tasks_per_request=2, n_examples=3, seed=0)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def posts(server, path):
    return [c for c in server.calls if c["path"] == path]


def test_batch_api_runs_both_steps_and_resumes_by_batch_id(chat_server, tmp_path):  # noqa: F811
    fail = {"sts/example/1"}
    server = chat_server(batch_polls=2, batch_fail=lambda cid: cid in fail)
    gen = OpenAIBatchGenerator("fake-model", base_url=server.url, poll_interval_s=0.01)
    polls = {"n": 0}
    retrieve = gen.client.batches.retrieve

    def crash_on_first_poll(batch_id):  # the process dies while waiting, after the batch id was recorded
        polls["n"] += 1
        if polls["n"] == 1:
            raise KeyboardInterrupt
        return retrieve(batch_id)

    gen.client.batches.retrieve = crash_on_first_poll
    with pytest.raises(KeyboardInterrupt):
        run(gen, str(tmp_path), PLAN, progress=False)
    ledger = [json.loads(x) for x in (tmp_path / "batches" / "ledger.jsonl").read_text().splitlines()]
    assert [e["event"] for e in ledger] == ["uploaded", "created"] and len(posts(server, "/v1/batches")) == 1
    lines = [json.loads(x) for x in (tmp_path / "batches" / ledger[0]["input"]).read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(r.id for r in PLAN.step1())
    assert lines[0]["body"]["response_format"]["json_schema"]["name"] == "short_long_task_list"

    summary = run(OpenAIBatchGenerator("fake-model", base_url=server.url, poll_interval_s=0.01), str(tmp_path), PLAN,
                  progress=False)
    assert len(posts(server, "/v1/batches")) == 2  # step 1's batch polled again, not re-created; one for step 2
    assert summary["requests"]["left"] == 1 and summary["runs"][-1]["errors"] == {"http_500": 1}
    assert summary["kinds"]["short-long"]["examples"] == 3 and summary["kinds"]["sts"]["examples"] == 2
    assert summary["kinds"]["short-long"]["task_definitions"] == 4
    fail.clear()
    summary = run(OpenAIBatchGenerator("fake-model", base_url=server.url, poll_interval_s=0.01), str(tmp_path), PLAN,
                  progress=False)
    assert summary["complete"] and len(posts(server, "/v1/batches")) == 3
    batch_calls = [c for c in server.calls if c["path"] == "batch:/v1/chat/completions"]
    assert len(batch_calls) == 2 + 6 + 1  # every request answered once by a batch, the failed one twice
    assert summary["tokens"] == {"prompt": 50 * 8, "completion": 30 * 8, "total": 80 * 8}
    assert {c["auth"] for c in server.calls if c["auth"]} == {f"Bearer {KEY}"}


def test_structured_output_is_sent_and_dropped_when_the_server_rejects_it(chat_server, tmp_path):  # noqa: F811
    server = chat_server()
    summary = run(OpenAIGenerator("fake-model", base_url=server.url), str(tmp_path / "a"), PLAN, progress=False)
    bodies = [c["body"] for c in posts(server, "/v1/chat/completions")]
    names = {b["response_format"]["json_schema"]["name"] for b in bodies}
    assert names == {"short_long_task_list", "short_long_example", "sts_example"} and summary["complete"]
    schema = next(b for b in bodies if "S1" in json.dumps(b["response_format"]))["response_format"]["json_schema"]
    assert schema["strict"] and schema["schema"]["required"] == ["S1", "S2", "S3"]

    plain = chat_server(schema_support=False)
    summary = run(OpenAIGenerator("fake-model", base_url=plain.url), str(tmp_path / "b"), PLAN, concurrency=1,
                  progress=False)
    calls = posts(plain, "/v1/chat/completions")
    assert "response_format" in calls[0]["body"] and all("response_format" not in c["body"] for c in calls[1:])
    assert summary["complete"] and summary["totals"]["discarded"] == 0 and len(calls) == 2 + 6 + 1


def test_rate_limiter_spaces_requests_per_minute_and_tokens_and_pauses(monkeypatch):
    now = {"t": 0.0}

    async def fake_sleep(seconds):
        now["t"] += seconds

    monkeypatch.setattr(ratelimit.asyncio, "sleep", fake_sleep)

    async def times(limiter, tokens):
        out = []
        for n in tokens:
            await limiter.acquire(n)
            out.append(now["t"])
        return out

    assert asyncio.run(times(RateLimiter(2, None, lambda: now["t"]), [1] * 5)) == [0, 30, 60, 90, 120]
    now["t"] = 0.0
    assert asyncio.run(times(RateLimiter(None, 100, lambda: now["t"]), [60, 30, 20, 90])) == pytest.approx(
        [0, 36, 54, 66])  # 60 s x tokens / 100 after each start
    now["t"] = 0.0
    limiter = RateLimiter(None, None, lambda: now["t"])
    limiter.pause(7.5)
    assert asyncio.run(times(limiter, [1])) == [7.5]
    with pytest.raises(ValueError, match="requests_per_minute must be > 0"):
        RateLimiter(0)
    assert ratelimit.retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert ratelimit.retry_after_seconds({"retry-after": "3"}) == 3.0


def test_a_429_retry_after_pauses_the_whole_generator(chat_server):  # noqa: F811
    server = chat_server(fail_first=[429], retry_after_ms=400)
    gen = OpenAIGenerator("fake-model", base_url=server.url, max_retries=2)
    c = gen([{"role": "user", "content": "Brainstorm 2 distinct and useful text retrieval tasks."}])
    assert c.retries == 1 and gen.limiter.paused_until > 0  # later requests wait for the server's Retry-After


def fake_vllm_module(calls):
    """TEST DOUBLE of the `vllm` package (vllm.LLM, vllm.SamplingParams, StructuredOutputsParams): it answers each
    conversation from its own prompt, in input order, as vLLM's RequestOutput does. Not vLLM."""
    mod, sp = types.ModuleType("vllm"), types.ModuleType("vllm.sampling_params")

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class StructuredOutputsParams:
        def __init__(self, json):
            self.json = json

    class LLM:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))

        def chat(self, conversations, sampling_params, use_tqdm):
            calls.append(("chat", len(conversations), sampling_params))
            outs = []
            for messages in conversations:
                i = self.seen = getattr(self, "seen", -1) + 1  # answers numbered over the whole run
                prompt = messages[-1]["content"]
                text = brainstorm_answer(2, i, structured=True) if prompt.startswith("Brainstorm") else json.dumps(
                    {"S1": f"a {i}", "S2": f"b {i}", "S3": f"c {i}"})
                outs.append(types.SimpleNamespace(prompt_token_ids=[0] * len(prompt), outputs=[
                    types.SimpleNamespace(text=text, token_ids=[1] * 7, finish_reason="stop")]))
            return outs

    mod.LLM, mod.SamplingParams, mod.sampling_params = LLM, SamplingParams, sp
    sp.StructuredOutputsParams = StructuredOutputsParams
    return {"vllm": mod, "vllm.sampling_params": sp}


def test_vllm_generator_maps_prompts_to_answers_with_a_test_double(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed: a clear error naming the install
    from embed_lm.synth.vllm_engine import VLLMGenerator

    with pytest.raises(GeneratorError, match="pip install vllm"):
        VLLMGenerator("/models/x")
    calls = []
    for name, mod in fake_vllm_module(calls).items():
        monkeypatch.setitem(sys.modules, name, mod)
    gen = VLLMGenerator("/models/x", chunk_size=4, max_tokens=99)
    summary = run(gen, str(tmp_path), PLAN, progress=False)
    chats = [c for c in calls if c[0] == "chat"]
    assert [n for _, n, _ in chats] == [2, 4, 2]  # step 1: 2 prompts at once; step 2: 6 prompts in chunks of 4
    params = chats[1][2][0].kwargs  # short-long/example/0
    assert params["max_tokens"] == 99 and params["structured_outputs"].json["required"] == [
        "user_query", "positive_document", "hard_negative_document"]
    assert summary["complete"] and summary["kinds"]["sts"]["examples"] == 3
    lines = [json.loads(x) for x in (tmp_path / "sts.jsonl").read_text().splitlines()]
    assert {x["request_id"]: x["S1"] for x in lines} == {  # each answer went to the request that asked for it
        "sts/example/0": "a 3", "sts/example/1": "a 5", "sts/example/2": "a 7"}
    assert lines[0]["meta"]["completion_tokens"] == 7


def test_near_duplicate_tasks_removed_and_10k_brainstormed_keep_90_percent():
    rng = random.Random(0)
    tasks, parts, paraphrases = [], [], set()
    while len(tasks) < 10_000:  # realistic varied definitions, 5% of them rewordings of an earlier one
        if len(tasks) > 50 and rng.random() < 0.05:
            j = rng.randrange(len(tasks))
            text = paraphrase(parts[j], rng)
            if text != tasks[j]:
                paraphrases.add(text)
            tasks.append(text)
            parts.append(parts[j])
        else:
            text, p = realistic_task(rng)
            tasks.append(text)
            parts.append(p)
    assert parse_tasks(brainstorm_answer(3, 0)) and len(set(tasks)) > 9_900
    kept, near = dedup_tasks(tasks, threshold=0.7)
    dropped = {n.task for n in near}
    assert len(kept) >= 0.9 * len(tasks)
    assert len(paraphrases & dropped) >= 0.95 * len(paraphrases)  # the injected rewordings are caught
    originals = set(tasks) - paraphrases
    assert len(originals & dropped) <= 0.05 * len(originals)
    assert all(n.jaccard >= 0.7 for n in near)


def test_cli_against_a_refused_connection_exits_nonzero_naming_the_url(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    r = subprocess.run([sys.executable, "-m", "embed_lm.synth", "model=m", f"generator.base_url={url}",
                        "generator.max_retries=1", "kinds=[sts]", "n_examples=3", "progress=false",
                        f"out={tmp_path}/o", f"hydra.run.dir={tmp_path}/h"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OPENAI_API_KEY": KEY}, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"no request succeeded: 3 of 3 failed against {url}" in r.stderr and "APIConnectionError" in r.stderr
    assert "3 failed after retries" in r.stdout and "3 retries" in r.stdout


def test_async_execution_keeps_at_most_concurrency_requests_in_flight(tmp_path):
    class SlowAsync:  # an async generator that records how many of its calls overlap
        def __init__(self):
            self.active = self.peak = self.calls = 0

        async def acomplete(self, messages, response_format=None):
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
            await asyncio.sleep(0.01)
            self.active -= 1
            obj = {"S1": f"a{self.calls}", "S2": "b", "S3": "c"}
            return Completion(json.dumps(obj), 10, 5)

    gen = SlowAsync()
    summary = run(gen, str(tmp_path), Plan(kinds=("sts",), n_examples=40), concurrency=7, progress=False)
    assert summary["complete"] and gen.calls == 40 and gen.peak == 7


def test_cli_openai_batch_costs_at_batch_prices(chat_server, tmp_path):  # noqa: F811
    from conftest import compose_config

    from embed_lm.synth.__main__ import synth

    server = chat_server(batch_polls=1)
    cfg = compose_config("synth", ["generator=openai_batch", "model=fake-model", f"generator.base_url={server.url}",
                                   "generator.poll_interval_s=0.01", "kinds=[sts]", "n_examples=4", "progress=false",
                                   "prices_per_1m.input=2.0", "prices_per_1m.output=10.0", f"out={tmp_path}/o"])
    summary = synth(cfg)
    assert summary["complete"] and summary["tokens"] == {"prompt": 200, "completion": 120, "total": 320}
    assert summary["cost_usd"] == pytest.approx((200 * 2.0 + 120 * 10.0) / 1e6 * 0.5)  # half the list price
    assert summary["prices_per_1m"] == {"input": 1.0, "output": 5.0}


def test_batch_created_but_not_recorded_is_found_again_not_paid_twice(chat_server, tmp_path):  # noqa: F811
    server = chat_server(batch_polls=1)
    gen = OpenAIBatchGenerator("fake-model", base_url=server.url, poll_interval_s=0.01)
    create = gen.client.batches.create

    def crash_after_create(**kwargs):  # the batch exists on the server, the process dies before recording its id
        create(**kwargs)
        raise KeyboardInterrupt

    gen.client.batches.create = crash_after_create
    plan = Plan(kinds=("sts",), n_examples=3)
    with pytest.raises(KeyboardInterrupt):
        run(gen, str(tmp_path), plan, progress=False)
    summary = run(OpenAIBatchGenerator("fake-model", base_url=server.url, poll_interval_s=0.01), str(tmp_path), plan,
                  progress=False)
    assert summary["complete"] and len(posts(server, "/v1/batches")) == 1  # looked up by its input file id
    events = [json.loads(x)["event"] for x in (tmp_path / "batches" / "ledger.jsonl").read_text().splitlines()]
    assert events == ["uploaded", "created", "collected"]
