"""The two-step pipeline: plan requests, run them concurrently, keep what parses, account for tokens and cost.

    python -m embed_lm.synth generator=openai model=gpt-4o-mini n_tasks=100 n_examples=1000 out=data/synth/

Step 1: ceil(n_tasks / tasks_per_request) brainstorm requests per asymmetric kind -> distinct task definitions
(at most n_tasks per kind). Step 2: n_examples requests per kind; asymmetric example i is written for task i mod
(number of tasks), so each task gets about n_examples / n_tasks examples with different placeholders. Requests are
interleaved across kinds, so a stopped run has a bit of every kind. Running the same command again resumes: done
request ids are skipped (store.py); raising n_examples or n_tasks later extends the data set.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import islice

from tqdm.auto import tqdm

from embed_lm.model.instructions import ASYMMETRIC_KINDS, TASK_KINDS, check_task_kind
from embed_lm.synth.generators import Completion, GeneratorError
from embed_lm.synth.parsing import Discard, parse_example, parse_tasks
from embed_lm.synth.prompts import Request, brainstorm_request, example_request, language_of
from embed_lm.synth.store import OutputStore, kind_file
from embed_lm.synth.summary import summarize, write_summary

log = logging.getLogger(__name__)


class SynthError(RuntimeError):
    pass


@dataclass(frozen=True)
class Plan:
    kinds: tuple[str, ...] = TASK_KINDS
    n_tasks: int = 20               # task definitions per asymmetric kind
    n_examples: int = 100           # examples per kind
    tasks_per_request: int = 20     # task definitions asked for by one step-1 request
    seed: int = 42
    language: str | None = None     # None: sample (weighted to high-resource languages); else every example in it

    def __post_init__(self) -> None:
        for kind in self.kinds:
            check_task_kind(kind)
        if min(self.n_tasks, self.n_examples) < 0 or self.tasks_per_request < 1:
            raise ValueError(f"need n_tasks >= 0, n_examples >= 0, tasks_per_request >= 1; got {self}")

    @property
    def asymmetric(self) -> list[str]:
        return [k for k in self.kinds if k in ASYMMETRIC_KINDS]

    def step1(self) -> list[Request]:
        per = self.tasks_per_request
        n_requests = math.ceil(self.n_tasks / per)
        return [brainstorm_request(k, j, min(per, self.n_tasks - j * per))
                for j in range(n_requests) for k in self.asymmetric]

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


@dataclass
class RunStats:
    """This run's traffic (what is on disk is counted by the store)."""

    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    sent: int = 0
    retries: int = 0
    errors: Counter = field(default_factory=Counter)
    recorded: Counter = field(default_factory=Counter)   # kept / discarded / duplicate
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict:  # not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}


def error_reason(e: BaseException) -> str:
    code = getattr(e, "status_code", None)
    return f"http_{code}" if code is not None else type(e).__name__


def execute(requests: Iterable[Request], total: int, generator: Callable[[list[dict]], Completion],
            handle: Callable[[Request, Completion], str], stats: RunStats, concurrency: int,
            max_consecutive_errors: int, desc: str, progress: bool) -> None:
    """Run requests on a bounded thread pool (at most 2 x concurrency queued), handling each answer in this thread.

    A failed request (retries used up) is counted and left undone for the next run; `max_consecutive_errors`
    failures in a row stop the run (the server is probably down). GeneratorError stops it at once."""
    todo: Iterator[Request] = iter(requests)
    pending: dict[Future, Request] = {}
    consecutive, outcomes = 0, Counter()  # outcomes: this step's, for the progress bar
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="synth")
    bar = tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True, disable=not progress)

    def submit(n: int) -> None:
        for request in islice(todo, n):
            pending[pool.submit(generator, request.messages)] = request
            stats.sent += 1

    try:
        submit(2 * concurrency)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                request, error = pending.pop(future), future.exception()
                if isinstance(error, GeneratorError) or (error is not None and not isinstance(error, Exception)):
                    raise error
                if error is not None:
                    reason = error_reason(error)
                    if not stats.errors[reason]:
                        log.warning("request %s failed after retries (%s: %s); it is left for the next run",
                                    request.id, reason, str(error)[:300])
                    stats.errors[reason] += 1
                    consecutive += 1
                    outcomes["errors"] += 1
                    if consecutive >= max_consecutive_errors:
                        raise SynthError(f"{consecutive} requests in a row failed (last: {reason}: {error}); "
                                         "check the server, then rerun the same command to resume")
                else:
                    consecutive = 0
                    completion = future.result()
                    stats.retries += completion.retries
                    stats.prompt_tokens += completion.prompt_tokens
                    stats.completion_tokens += completion.completion_tokens
                    outcome = handle(request, completion)
                    stats.recorded[outcome] += 1
                    outcomes[outcome] += 1
                bar.update(1)
                bar.set_postfix(outcomes, refresh=False)
                submit(1)
    finally:
        bar.close()
        pool.shutdown(wait=False, cancel_futures=True)


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


def run(generator: Callable[[list[dict]], Completion], out: str, plan: Plan, concurrency: int = 8,
        prices_per_1m: tuple[float, float] = (0.0, 0.0), max_consecutive_errors: int = 20, progress: bool = True,
        describe: dict | None = None, config: dict | None = None) -> dict:
    """Generate (or finish generating) `plan` into `out`; returns the summary also written to <out>/summary.json."""
    store = OutputStore(out)
    stats, t0 = RunStats(), time.monotonic()
    handle = handler(store)
    try:
        step1 = plan.step1()
        todo = [r for r in step1 if r.id not in store.done]
        log.info("step 1: %d of %d brainstorm requests to run", len(todo), len(step1))
        execute(todo, len(todo), generator, handle, stats, concurrency, max_consecutive_errors, "step 1 tasks",
                progress)
        tasks = {k: store.tasks(k, plan.n_tasks) for k in plan.asymmetric}
        for kind in (k for k, ts in tasks.items() if not ts):
            log.warning("%s: no task definitions (step 1 answers discarded or failed); its examples are skipped. "
                        "See %s/discarded/%s", kind, out, kind_file(kind))
        keys = plan.step2_keys(tasks)
        n_todo = sum(f"{k}/example/{i}" not in store.done for k, i in keys)
        log.info("step 2: %d of %d example requests to run", n_todo, len(keys))
        execute(plan.step2(tasks, skip=set(store.done)), n_todo, generator, handle, stats, concurrency,
                max_consecutive_errors, "step 2 examples", progress)
        stats.status = "finished"
    except BaseException as e:
        stats.status = "stopped" if isinstance(e, (GeneratorError, SynthError)) else "interrupted"
        raise
    finally:
        stats.wall_s = round(time.monotonic() - t0, 1)
        keys = plan.step2_keys({k: store.tasks(k, plan.n_tasks) for k in plan.asymmetric})  # as planned from disk
        planned = [r.id for r in plan.step1()] + [f"{k}/example/{i}" for k, i in keys]
        summary = summarize(store, plan_dict(plan), stats.as_dict(), planned, prices_per_1m, describe, config)
        write_summary(out, summary)
        store.close()
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
