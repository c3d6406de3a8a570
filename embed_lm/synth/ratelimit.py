"""Client-side rate limiting for API generators: requests and tokens per minute, and the server's Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from embed_lm.errors import ConfigError


def retry_after_seconds(headers) -> float | None:
    """Seconds from a `retry-after-ms` or `retry-after` header (a number of seconds; HTTP dates are ignored)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


class RateLimiter:
    """Requests and tokens per minute, spread evenly (no bursts), plus pauses the server asks for (Retry-After).

    Virtual scheduling: each request is given the earliest start that keeps at least 60/rpm s after the previous
    start and 60 x tokens/tpm s after the previous request's tokens, and not before a pause ends; `acquire` reserves
    that start and sleeps until it. `tokens` is an estimate (prompt characters / 4 + max_tokens, as OpenAI counts a
    request against its TPM); `settle` moves later starts by the difference to the usage the server reported.
    None = no limit. Used from one event loop (no lock)."""

    def __init__(self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and value <= 0:
                raise ConfigError(f"generator.{name} must be > 0 or null, got {value}")
        self.rpm, self.tpm, self.clock = requests_per_minute, tokens_per_minute, clock
        self.next_request = self.next_tokens = self.paused_until = float("-inf")

    async def acquire(self, tokens: int) -> int:
        start = max(self.clock(), self.next_request, self.next_tokens, self.paused_until)
        if self.rpm:
            self.next_request = start + 60.0 / self.rpm
        if self.tpm:
            self.next_tokens = start + 60.0 * tokens / self.tpm
        while (delay := max(start, self.paused_until) - self.clock()) > 0:  # a pause may come while waiting
            await asyncio.sleep(delay)
        return tokens

    def settle(self, estimate: int, tokens: int) -> None:
        if self.tpm:
            self.next_tokens += 60.0 * (tokens - estimate) / self.tpm

    def pause(self, seconds: float) -> None:
        """Hold every request back for `seconds` (a 429/503 answer's Retry-After)."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)
