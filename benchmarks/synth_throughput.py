"""Synthesis throughput against a loopback OpenAI-compatible server that answers after a fixed latency, and the
near-duplicate rate of 10k brainstormed task definitions from a server with realistic varied answers.

    python benchmarks/synth_throughput.py                            # concurrency 1..64, 200 ms latency, + rpm cap
    python benchmarks/synth_throughput.py --concurrency 1 8 32 --latency 0.2 --rpm 1200
    python benchmarks/synth_throughput.py --dedup 10000              # step 1 only: 10k tasks, kept share

The server (tests/synth_fixtures.ChatServer, http.server, one thread per request) runs in a child process so that
it does not share the client's interpreter; the client is the real pipeline path: OpenAIGenerator.acomplete
(openai.AsyncOpenAI) under embed_lm.synth.execute with `concurrency` requests in flight. Ideal requests/s =
concurrency / latency, until the rpm limit (RateLimiter) or the CPU caps it. Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("OPENAI_API_KEY", "EMPTY")


def serve(latency: float, realistic: bool, queue) -> None:
    from synth_fixtures import ChatServer, fake_llm, paraphrase, realistic_task

    if realistic:  # brainstorms of varied tasks, 5% of them rewordings of a task some earlier answer gave
        rng, seen = random.Random(0), []

        def respond(prompt: str, n: int, structured: bool = False) -> str:
            k = int(prompt.split()[1])
            tasks = []
            for _ in range(k):
                if seen and rng.random() < 0.05:
                    tasks.append(paraphrase(rng.choice(seen), rng))
                else:
                    text, parts = realistic_task(rng)
                    seen.append(parts)
                    tasks.append(text)
            return json.dumps({"tasks": tasks} if structured else tasks)
    else:
        respond = fake_llm
    with ChatServer(latency_s=latency, respond=respond) as server:
        queue.put(server.url)
        time.sleep(10**6)


def start_server(latency: float, realistic: bool = False):
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=serve, args=(latency, realistic, queue), daemon=True)
    proc.start()
    return proc, queue.get(timeout=60)


def throughput(url: str, concurrency: int, n: int, rpm: int | None) -> dict:
    from embed_lm.synth.execute import RunStats, execute
    from embed_lm.synth.generators import OpenAIGenerator
    from embed_lm.synth.pipeline import Plan

    gen = OpenAIGenerator("fake-model", base_url=url, requests_per_minute=rpm, max_retries=0)
    requests = list(Plan(kinds=("sts",), n_examples=n).step2({}))
    stats = RunStats()
    t0, c0 = time.perf_counter(), time.process_time()
    execute(requests, n, gen, lambda r, c: "kept", stats, concurrency, 10**9, "bench", False, url)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"concurrency": concurrency, "rpm_limit": rpm, "requests": n, "ok": stats.succeeded(),
            "failed": stats.failed, "wall_s": round(wall, 2), "requests_per_s": round(n / wall, 1),
            "client_cpu_s": round(cpu, 2)}


def dedup_rate(url: str, n_tasks: int) -> dict:
    from embed_lm.synth.generators import OpenAIGenerator
    from embed_lm.synth.pipeline import Plan, run

    with tempfile.TemporaryDirectory() as out:
        plan = Plan(kinds=("short-long",), n_tasks=n_tasks, tasks_per_request=20, n_examples=0,
                    task_dedup_threshold=0.7)
        t0 = time.perf_counter()
        s = run(OpenAIGenerator("fake-model", base_url=url), out, plan, concurrency=32, progress=False)
        k = s["kinds"]["short-long"]
        return {"brainstormed": k["task_candidates"], "near_duplicates": k["task_near_duplicates"],
                "kept": k["task_candidates"] - k["task_near_duplicates"],
                "kept_share": round(1 - k["task_near_duplicate_rate"], 4), "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--latency", type=float, default=0.2, help="server seconds per answer")
    parser.add_argument("--requests", type=int, default=0, help="per setting (0: 8 x concurrency, at least 40)")
    parser.add_argument("--rpm", type=int, default=1200, help="also run the highest concurrency under this limit")
    parser.add_argument("--dedup", type=int, default=0, help="instead: brainstorm this many tasks, report kept share")
    args = parser.parse_args()
    proc, url = start_server(args.latency, realistic=bool(args.dedup))
    try:
        if args.dedup:
            print(json.dumps(dedup_rate(url, args.dedup)))
            return
        settings = [(c, None) for c in args.concurrency] + ([(max(args.concurrency), args.rpm)] if args.rpm else [])
        for c, rpm in settings:
            n = args.requests or max(40, 8 * c)
            result = throughput(url, c, n, rpm)
            result["ideal_requests_per_s"] = round(min(c / args.latency, rpm / 60 if rpm else float("inf")), 1)
            print(json.dumps(result), flush=True)
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
