"""Running requests: asyncio with bounded concurrency (API generators), or whole chunks at once (local engines).

    execute(requests, total, generator, handle, stats, concurrency=64, ...)   # generator=openai (AsyncOpenAI)
    execute_batched(requests, total, generator, handle, stats, chunk=...)    # generator=vllm / hf_local

`execute` keeps at most `concurrency` requests in flight on one event loop. A generator with `acomplete` (the
OpenAI one) is awaited directly, and paces itself with its own RateLimiter (requests and tokens per minute, server
Retry-After); a plain callable `generator(messages) -> Completion` (test doubles, custom generators) runs on a
thread pool of `concurrency` threads. Answers are handled one at a time on the loop, so the store needs no lock.

A request that fails after its retries is counted (errors by reason, its retries, the last error) and left undone
for the next run; `max_consecutive_errors` failures in a row stop the run; GeneratorError stops it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice

from tqdm.auto import tqdm

from embed_lm.errors import UserError
from embed_lm.synth.generators import Completion, GeneratorError
from embed_lm.synth.prompts import Request
from embed_lm.synth.schemas import response_format

log = logging.getLogger(__name__)


class SynthError(UserError, RuntimeError):
    """The run cannot go on (server down, nothing succeeded); `summary` is what was written before stopping."""

    def __init__(self, message: str, summary: dict | None = None) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class RunStats:
    """This run's traffic (what is on disk is counted by the store)."""

    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    sent: int = 0
    retries: int = 0
    failed: int = 0                                      # requests that failed after their retries (left undone)
    errors: Counter = field(default_factory=Counter)     # reason -> failed requests
    last_error: str | None = None
    recorded: Counter = field(default_factory=Counter)   # kept / discarded / duplicate
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    status: str = "running"

    def as_dict(self) -> dict:  # not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}

    def succeeded(self) -> int:
        return sum(self.recorded.values())


def error_reason(e: BaseException) -> str:
    code = getattr(e, "status_code", None)
    return f"http_{code}" if code is not None else getattr(e, "reason", None) or type(e).__name__


class Outcomes:
    """Counts one step's answers into RunStats, drives the progress bar, and stops after too many failures."""

    def __init__(self, stats: RunStats, handle: Callable[[Request, Completion], str], total: int, desc: str,
                 progress: bool, max_consecutive_errors: int, where: str) -> None:
        self.stats, self.handle, self.max_errors, self.where = stats, handle, max_consecutive_errors, where
        self.consecutive, self.counts = 0, Counter()
        self.bar = tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True, disable=not progress)

    def failed(self, request: Request, error: Exception) -> None:
        s, reason = self.stats, error_reason(error)
        if not s.errors[reason]:
            log.warning("request %s failed after retries (%s: %s); it is left for the next run", request.id, reason,
                        str(error)[:300])
        s.errors[reason] += 1
        s.failed += 1
        s.retries += getattr(error, "retries", 0)
        s.last_error = f"{reason}: {str(error)[:300]}"
        self.consecutive += 1
        self._tick("errors")
        if self.consecutive >= self.max_errors:
            raise SynthError(f"{self.consecutive} requests in a row failed against {self.where} (last: "
                             f"{s.last_error}); check the server, then rerun the same command to resume")

    def answered(self, request: Request, c: Completion) -> None:
        s = self.stats
        self.consecutive = 0
        s.retries += c.retries
        s.prompt_tokens += c.prompt_tokens
        s.completion_tokens += c.completion_tokens
        outcome = self.handle(request, c)
        s.recorded[outcome] += 1
        self._tick(outcome)

    def _tick(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.bar.update(1)
        self.bar.set_postfix(self.counts, refresh=False)

    def close(self) -> None:
        self.bar.close()


def execute(requests: Iterable[Request], total: int, generator, handle: Callable[[Request, Completion], str],
            stats: RunStats, concurrency: int, max_consecutive_errors: int, desc: str, progress: bool,
            where: str = "the server") -> None:
    """Run `requests` with at most `concurrency` in flight; see the module docstring."""
    asyncio.run(_execute(iter(requests), generator, Outcomes(stats, handle, total, desc, progress,
                                                             max_consecutive_errors, where), concurrency))


async def _execute(todo: Iterator[Request], generator, out: Outcomes, concurrency: int) -> None:
    pool = None if hasattr(generator, "acomplete") else ThreadPoolExecutor(concurrency, thread_name_prefix="synth")
    loop = asyncio.get_running_loop()
    pending: dict[asyncio.Future, Request] = {}

    def launch(n: int) -> None:
        for r in islice(todo, n):
            if pool is None:
                fut = asyncio.ensure_future(generator.acomplete(r.messages, response_format(r.kind, r.step)))
            else:
                fut = loop.run_in_executor(pool, generator, r.messages)
            pending[fut] = r
            out.stats.sent += 1

    try:
        launch(concurrency)
        while pending:
            finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in finished:
                request, error = pending.pop(fut), fut.exception()
                if isinstance(error, GeneratorError) or (error is not None and not isinstance(error, Exception)):
                    raise error
                if error is not None:
                    out.failed(request, error)
                else:
                    out.answered(request, fut.result())
                launch(1)
    finally:
        out.close()
        for fut in pending:
            fut.cancel()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if hasattr(generator, "aclose"):
            await generator.aclose()


def execute_batched(requests: Iterable[Request], total: int, generator, handle: Callable[[Request, Completion], str],
                    stats: RunStats, max_consecutive_errors: int, desc: str, progress: bool) -> None:
    """Hand `generator.chunk_size` requests at a time to `generator.generate_batch` (vLLM schedules them with
    continuous batching; hf_local pads them into batches). Each chunk's answers are written as soon as it returns,
    so a crash loses at most one chunk."""
    out = Outcomes(stats, handle, total, desc, progress, max_consecutive_errors, "the local model")
    todo = iter(requests)
    try:
        while chunk := list(islice(todo, generator.chunk_size)):
            stats.sent += len(chunk)
            completions = generator.generate_batch([r.messages for r in chunk],
                                                   [response_format(r.kind, r.step) for r in chunk])
            for request, c in zip(chunk, completions, strict=True):
                out.answered(request, c)
    finally:
        out.close()
