"""The two-step pipeline: plan requests, run them concurrently, keep what parses, account for tokens and cost.

    python -m embed_lm.synth generator=openai model=gpt-4o-mini n_tasks=100 n_examples=1000 out=data/synth/

Step 1: ceil(n_tasks / tasks_per_request) brainstorm requests per asymmetric kind -> distinct task definitions
(at most n_tasks per kind). Step 2: n_examples requests per kind; asymmetric example i is written for task i mod
(number of tasks), so each task gets about n_examples / n_tasks examples with different placeholders. Requests are
interleaved across kinds, so a stopped run has a bit of every kind. Running the same command again resumes: done
request ids are skipped (store.py); raising n_examples or n_tasks later extends the data set.

Between the steps, near-duplicate task definitions are removed (task_dedup_threshold, dedup.py; what was dropped
goes to <out>/tasks/near_duplicates.json). Each step runs through the generator's own path: the Batch API
(openai_batch: batch.py), chunks handed to a local engine (vllm, hf_local), or async requests with bounded
concurrency and rate limits (openai: execute.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from embed_lm.errors import ConfigError
from embed_lm.model.instructions import ASYMMETRIC_KINDS, TASK_KINDS, check_task_kind
from embed_lm.synth.dedup import dedup_tasks
from embed_lm.synth.execute import Outcomes, RunStats, SynthError, execute, execute_batched
from embed_lm.synth.generators import Completion, GeneratorError
from embed_lm.synth.parsing import Discard, parse_example, parse_tasks
from embed_lm.synth.prompts import Request, brainstorm_request, example_request, language_of
from embed_lm.synth.store import TASKS_DIR, OutputStore, kind_file
from embed_lm.synth.summary import summarize, write_summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    kinds: tuple[str, ...] = TASK_KINDS
    n_tasks: int = 20               # task definitions per asymmetric kind
    n_examples: int = 100           # examples per kind
    tasks_per_request: int = 20     # task definitions asked for by one step-1 request
    seed: int = 42
    language: str | None = None     # None: sample (weighted to high-resource languages); else every example in it
    task_dedup_threshold: float | None = None  # near-duplicate task definitions (dedup.py); None: exact only

    def __post_init__(self) -> None:
        for kind in self.kinds:
            check_task_kind(kind)
        if min(self.n_tasks, self.n_examples) < 0 or self.tasks_per_request < 1:
            raise ConfigError(f"need n_tasks >= 0, n_examples >= 0, tasks_per_request >= 1; got {self}")
        if self.task_dedup_threshold is not None and not 0 < self.task_dedup_threshold <= 1:
            raise ConfigError(f"task_dedup_threshold must be in (0, 1] or null, got {self.task_dedup_threshold}")

    @property
    def asymmetric(self) -> list[str]:
        return [k for k in self.kinds if k in ASYMMETRIC_KINDS]

    def step1(self) -> list[Request]:
        per = self.tasks_per_request
        n_requests = math.ceil(self.n_tasks / per)
        return [brainstorm_request(k, j, min(per, self.n_tasks - j * per), self.seed)
                for j in range(n_requests) for k in self.asymmetric]

    def task_lists(self, store: OutputStore) -> tuple[dict[str, list[str]], dict[str, dict]]:
        """Each asymmetric kind's task definitions for step 2 (near duplicates removed, at most n_tasks), and per
        kind {"candidates", "near_duplicates", "kept", "near": [NearDuplicate, ...]}."""
        tasks, dedup = {}, {}
        for kind in self.asymmetric:
            candidates = store.tasks(kind)
            kept, near = (candidates, []) if self.task_dedup_threshold is None else dedup_tasks(
                candidates, self.task_dedup_threshold)
            tasks[kind] = kept[:self.n_tasks]
            dedup[kind] = {"candidates": len(candidates), "near_duplicates": len(near), "kept": len(kept),
                           "near": near}
        return tasks, dedup

    def step2_keys(self, tasks: dict[str, list[str]]) -> list[tuple[str, int]]:
        """(kind, i) of every example request, kinds interleaved; asymmetric kinds without tasks are left out."""
        kinds = [k for k in self.kinds if k not in ASYMMETRIC_KINDS or tasks.get(k)]
        return [(k, i) for i in range(self.n_examples) for k in kinds]

    def step2(self, tasks: dict[str, list[str]], skip: set[str] = frozenset()) -> Iterator[Request]:
        """Example requests, rendered lazily (a 500k-example plan never holds all its prompts), ids in skip left out;
        asymmetric example i is written for task i mod len(tasks[kind])."""
        for kind, i in self.step2_keys(tasks):
            if f"{kind}/example/{i}" not in skip:
                task = tasks[kind][i % len(tasks[kind])] if kind in ASYMMETRIC_KINDS else None
                yield example_request(kind, i, task, self.seed, self.language)


def record_meta(request: Request, c: Completion) -> dict:
    return {"placeholders": request.placeholders, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "retries": c.retries, "finish_reason": c.finish_reason}


def handler(store: OutputStore) -> Callable[[Request, Completion], str]:
    def handle(request: Request, c: Completion) -> str:
        base = {"request_id": request.id, "task_kind": request.kind}
        try:
            if request.step == "tasks":
                tasks = parse_tasks(c.text, c.finish_reason)
                store.add_tasks({**base, "tasks": tasks, "meta": record_meta(request, c)})
                return "kept"
            fields = parse_example(c.text, request.kind, c.finish_reason)
        except Discard as d:
            store.add_discard({**base, "step": request.step, "reason": d.reason, "raw": c.text,
                               "meta": record_meta(request, c)})
            return "discarded"
        record = {"task": request.task, **fields, **base, "language": language_of(request.placeholders),
                  "meta": record_meta(request, c)}
        return "kept" if store.add_example(record) else "duplicate"
    return handle


def write_near_duplicates(out: str, dedup: dict[str, dict]) -> None:
    """<out>/tasks/near_duplicates.json: what near-duplicate removal dropped, per kind, to check by eye."""
    doc = {k: [{"task": n.task, "of": n.of, "jaccard": n.jaccard} for n in d["near"]] for k, d in dedup.items()}
    path = Path(out) / TASKS_DIR / "near_duplicates.json"
    path.with_suffix(".tmp").write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(path.with_suffix(".tmp"), path)


def run_step(generator, requests: Iterable[Request], total: int, handle: Callable[[Request, Completion], str],
             stats: RunStats, step: str, out: str, store: OutputStore, concurrency: int, max_consecutive_errors: int,
             progress: bool, where: str) -> None:
    """One step through whichever path the generator offers: Batch API, local engine chunks, or async requests."""
    desc = "step 1 tasks" if step == "tasks" else "step 2 examples"
    if hasattr(generator, "run_step"):  # openai_batch: a failed line never stops collection
        todo = list(requests)
        stats.sent += len(todo)
        outcomes = Outcomes(stats, handle, total, desc, progress, max(len(todo), 1) + 1, where)
        try:
            generator.run_step(step, todo, Path(out), store.done.__contains__, outcomes.answered, outcomes.failed)
        finally:
            outcomes.close()
    elif hasattr(generator, "generate_batch"):
        execute_batched(requests, total, generator, handle, stats, max_consecutive_errors, desc, progress)
    else:
        execute(requests, total, generator, handle, stats, concurrency, max_consecutive_errors, desc, progress,
                where)


def run(generator, out: str, plan: Plan, concurrency: int = 8, prices_per_1m: tuple[float, float] = (0.0, 0.0),
        max_consecutive_errors: int = 20, progress: bool = True, describe: dict | None = None,
        config: dict | None = None) -> dict:
    """Generate (or finish generating) `plan` into `out`; returns the summary also written to <out>/summary.json.

    Raises SynthError (with .summary) when requests were sent and none succeeded: the server is unreachable or
    refuses every request, and the message names it and the last error."""
    store = OutputStore(out)
    describe = describe if describe is not None else getattr(generator, "describe", dict)()
    stats, t0 = RunStats(), time.monotonic()
    handle = handler(store)
    where = (describe or {}).get("base_url") or (describe or {}).get("model") or "the generator"
    lists, error = None, None
    try:
        step1 = plan.step1()
        todo = [r for r in step1 if r.id not in store.done]
        log.info("step 1: %d of %d brainstorm requests to run", len(todo), len(step1))
        run_step(generator, todo, len(todo), handle, stats, "tasks", out, store, concurrency,
                 max_consecutive_errors, progress, where)
        lists = plan.task_lists(store)
        tasks, dedup = lists
        write_near_duplicates(out, dedup)
        for kind, d in dedup.items():
            log.info("%s: %d task definitions, %d near duplicates removed, %d used", kind, d["candidates"],
                     d["near_duplicates"], len(tasks[kind]))
        for kind in (k for k, ts in tasks.items() if not ts):
            log.warning("%s: no task definitions (step 1 answers discarded or failed); its examples are skipped. "
                        "See %s/discarded/%s", kind, out, kind_file(kind))
        keys = plan.step2_keys(tasks)
        n_todo = sum(f"{k}/example/{i}" not in store.done for k, i in keys)
        log.info("step 2: %d of %d example requests to run", n_todo, len(keys))
        run_step(generator, plan.step2(tasks, skip=set(store.done)), n_todo, handle, stats, "example", out, store,
                 concurrency, max_consecutive_errors, progress, where)
        stats.status = "finished" if stats.succeeded() or not stats.sent else "failed"
    except BaseException as e:
        stats.status = "stopped" if isinstance(e, (GeneratorError, SynthError)) else "interrupted"
        error = e
        raise
    finally:
        stats.wall_s = round(time.monotonic() - t0, 1)
        tasks, dedup = lists or plan.task_lists(store)  # as planned from disk
        keys = plan.step2_keys(tasks)
        planned = [r.id for r in plan.step1()] + [f"{k}/example/{i}" for k, i in keys]
        summary = summarize(store, plan_dict(plan), stats.as_dict(), planned, prices_per_1m, describe, config,
                            tasks, dedup)
        write_summary(out, summary)
        store.close()
        if isinstance(error, SynthError):
            error.summary = summary
    if stats.status == "failed":
        raise SynthError(f"no request succeeded: {stats.failed} of {stats.sent} failed against {where} (last error: "
                         f"{stats.last_error}); check that the server runs there (generator.base_url) and "
                         "accepts the model and key, then rerun the same command", summary)
    return summary


def plan_dict(plan: Plan) -> dict:
    d = asdict(plan)
    d["kinds"] = list(plan.kinds)
    return d


def dry_run(out: str, plan: Plan) -> str:
    """Sample prompts (one per step and kind) and the request counts, without sending anything or writing."""
    from embed_lm.synth.prompts import sample_task

    store = OutputStore(out, read_only=True)
    tasks = {k: store.tasks(k, plan.n_tasks) or [sample_task(k)] for k in plan.asymmetric}
    step1, lines = plan.step1(), []
    for kind in plan.kinds:
        samples = [r for r in step1 if r.kind == kind][:1]
        if plan.n_examples:
            samples.append(example_request(kind, 0, tasks.get(kind, [None])[0], plan.seed, plan.language))
        for r in samples:
            lines += [f"===== {r.id}  placeholders: {r.placeholders}", r.prompt, ""]
    n1, n2 = len(step1), plan.n_examples * len(plan.kinds)
    done = sum(r.id in store.done for r in step1) + sum(
        f"{k}/example/{i}" in store.done for k in plan.kinds for i in range(plan.n_examples))
    lines += ["planned requests (kind: step 1 + step 2):"]
    for kind in plan.kinds:
        lines.append(f"  {kind:<12} {sum(r.kind == kind for r in step1):>6} + {plan.n_examples:>8}")
    lines.append(f"  total        {n1:>6} + {n2:>8} = {n1 + n2} requests; {done} already done in {out}, "
                 f"{n1 + n2 - done} to send")
    if store.repaired:
        lines.append(f"  (a killed run left partial last lines, cut on the next real run: {store.repaired})")
    return "\n".join(lines)
