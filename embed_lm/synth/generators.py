"""Generators: chat messages in, a Completion (text, token usage, retries taken) out. One config file each.

    python -m embed_lm.synth generator=openai model=gpt-4o-mini                 # key from $OPENAI_API_KEY
    python -m embed_lm.synth generator=openai model=mistralai/Mistral-7B-Instruct-v0.3 \
        generator.base_url=http://localhost:8000/v1                             # vLLM or any OpenAI-compatible server
    python -m embed_lm.synth generator=openai_batch model=gpt-4o-mini           # Batch API (batch.py), half price
    python -m embed_lm.synth generator=vllm model=/models/Qwen2.5-7B-Instruct    # offline vLLM engine (vllm_engine.py)
    python -m embed_lm.synth generator=hf_local model=/models/Mistral-7B-Instruct-v0.3   # transformers, no server

The API key is read from the environment variable *named* by `api_key_env` when a client is built and handed
straight to it: it is never a config value, an attribute of ours, a log line or a field of summary.json.
OpenAIGenerator is asynchronous (`acomplete`, openai.AsyncOpenAI): the pipeline keeps `concurrency` requests in
flight, paced by a RateLimiter (`requests_per_minute`, `tokens_per_minute`; a 429/503 answer's Retry-After pauses
every request, not only the one that got it). Retries on 429/408/409/5xx and connection errors, with exponential
backoff and jitter (or the server's Retry-After), are the `openai` client's own (`max_retries`);
`Completion.retries` reports how many were taken, and a request that still fails carries `.retries` = max_retries.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from embed_lm.errors import ConfigError, UserError
from embed_lm.synth.ratelimit import RateLimiter, retry_after_seconds

log = logging.getLogger(__name__)


class GeneratorError(UserError, RuntimeError):
    """A configuration problem no retry fixes (no key, rejected key, unknown model, missing path): stop the run."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    finish_reason: str | None = None   # "stop", or "length" when max_tokens cut the answer


def api_key(api_key_env: str, generator: str) -> str:
    if not os.environ.get(api_key_env):
        raise GeneratorError(
            f"generator={generator}: the environment variable {api_key_env} is not set. `export {api_key_env}=...` "
            "with your key (a local server without authentication accepts any value, e.g. EMPTY), or read "
            "another variable with generator.api_key_env=NAME")
    return os.environ[api_key_env]


def check_structured_output(value: str | bool) -> str | bool:
    if value not in ("auto", True, False):
        raise ConfigError(f"generator.structured_output must be auto, true or false; got {value!r}")
    return value


def schema_unsupported(e: Exception) -> bool:
    """A 400 that rejects response_format itself (not the prompt): fall back to plain prompts."""
    text = str(e).lower()
    return getattr(e, "status_code", None) == 400 and any(w in text for w in ("response_format", "json_schema"))


class OpenAIGenerator:
    """`generator=openai`: the official `openai` client against api.openai.com or any compatible server."""

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float | None = 1.0, top_p: float | None = 1.0, max_tokens: int | None = 2048,
                 max_retries: int = 8, timeout: float = 120.0, structured_output: str | bool = "auto",
                 requests_per_minute: int | None = None, tokens_per_minute: int | None = None) -> None:
        import openai

        api_key(api_key_env, "openai")
        self._openai = openai
        self._errors = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
        self._retryable = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
        self.model, self.api_key_env, self.max_retries, self.timeout = model, api_key_env, max_retries, timeout
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.sampling = {k: v for k, v in sampling.items() if v is not None}  # null = leave it to the server
        self.structured_output = check_structured_output(structured_output)
        self._use_schema = structured_output is not False
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self._client: tuple[asyncio.AbstractEventLoop, object] | None = None  # one AsyncOpenAI per event loop

    def describe(self) -> dict:
        return {"generator": "openai", "model": self.model, "base_url": self.base_url,
                "max_retries": self.max_retries, "structured_output": self.structured_output,
                "requests_per_minute": self.limiter.rpm, "tokens_per_minute": self.limiter.tpm, **self.sampling}

    def _async_client(self):
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            async def on_response(response) -> None:  # every HTTP answer, retried ones included
                if response.status_code in (429, 503) and (wait := retry_after_seconds(response.headers)):
                    self.limiter.pause(wait)

            http = self._openai.DefaultAsyncHttpxClient(event_hooks={"response": [on_response]})
            self._client = (loop, self._openai.AsyncOpenAI(
                api_key=api_key(self.api_key_env, "openai"), base_url=self.base_url, max_retries=self.max_retries,
                timeout=self.timeout, http_client=http))
        return self._client[1]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client[1].close()
            self._client = None

    async def acomplete(self, messages: list[dict[str, str]], response_format: dict | None = None) -> Completion:
        client = self._async_client()
        estimate = sum(len(m["content"]) for m in messages) // 4 + self.sampling.get("max_tokens", 0)
        await self.limiter.acquire(estimate)
        extra = {"response_format": response_format} if response_format and self._use_schema else {}
        try:
            raw = await client.chat.completions.with_raw_response.create(model=self.model, messages=messages,
                                                                         **self.sampling, **extra)
        except self._errors as e:  # the server's message may echo part of the key: not repeated here
            raise GeneratorError(
                f"{self.base_url} answered HTTP {e.status_code} ({type(e).__name__}) for model {self.model!r}: "
                f"check the key in ${self.api_key_env}, the model name (model=...) and generator.base_url") from e
        except self._retryable as e:
            e.retries = self.max_retries  # the client used them all
            raise
        except self._openai.BadRequestError as e:
            if not (extra and self.structured_output == "auto" and schema_unsupported(e)):
                raise
            if self._use_schema:
                log.warning("%s rejected response_format json_schema (%s); sending plain prompts from now on, the "
                            "lenient parser reads the answers", self.base_url, str(e)[:200])
            self._use_schema = False
            return await self.acomplete(messages, None)
        response = raw.parse()
        choice, usage = response.choices[0], response.usage
        c = Completion(choice.message.content or "", usage.prompt_tokens if usage else 0,
                       usage.completion_tokens if usage else 0, raw.retries_taken, choice.finish_reason)
        self.limiter.settle(estimate, c.prompt_tokens + c.completion_tokens if usage else estimate)
        return c

    def __call__(self, messages: list[dict[str, str]], response_format: dict | None = None) -> Completion:
        """One request, synchronously (its own event loop)."""
        async def once() -> Completion:
            try:
                return await self.acomplete(messages, response_format)
            finally:
                await self.aclose()
        return asyncio.run(once())


class HFLocalGenerator:
    """`generator=hf_local`: a transformers causal LM from a local folder; `chunk_size` prompts at a time, cut into
    left-padded batches of `batch_size` for one `generate` call each."""

    def __init__(self, model: str, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 2048,
                 dtype: str = "auto", device: str | None = None, batch_size: int = 8) -> None:
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise GeneratorError(f"generator=hf_local: no transformers model at {path} (no config.json there); "
                                 "point model=/path/to/a/causal-lm folder, e.g. a local copy of an instruct model")
        if batch_size < 1:
            raise ConfigError(f"generator.batch_size must be >= 1, got {batch_size}")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.temperature, self.top_p, self.max_new_tokens = path, temperature, top_p, max_new_tokens
        self.batch_size = self.chunk_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()

    def describe(self) -> dict:
        return {"generator": "hf_local", "model": str(self.path), "device": self.device, "batch_size": self.batch_size,
                "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"  # base models: the plain instruction

    def generate_batch(self, conversations: list[list[dict[str, str]]], response_formats=None) -> list[Completion]:
        """Answers in input order (response_formats: ignored, transformers has no guided decoding here)."""
        out: list[Completion] = []
        for start in range(0, len(conversations), self.batch_size):
            out += self._generate([self._prompt(m) for m in conversations[start:start + self.batch_size]])
        return out

    def _generate(self, prompts: list[str]) -> list[Completion]:
        import torch

        tok = self.tokenizer
        eos = tok.eos_token_id
        pad = eos if tok.pad_token_id is None else tok.pad_token_id
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not tok.chat_template)
        enc = enc.to(self.device)  # input_ids, attention_mask: (B, L), left-padded
        sampling = ({"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
                    if self.temperature > 0 else {"do_sample": False})
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, pad_token_id=pad,
                                      **sampling)  # (B, L + new)
        new = out[:, enc["input_ids"].shape[1]:]  # (B, new): rows that stopped early are padded after EOS
        completions = []
        for row, mask in zip(new, enc["attention_mask"], strict=True):
            ends = (row == eos).nonzero() if eos is not None else []
            n = int(ends[0]) + 1 if len(ends) else len(row)  # tokens up to and including the first EOS
            stopped = len(ends) > 0 or n < self.max_new_tokens
            completions.append(Completion(tok.decode(row[:n], skip_special_tokens=True), int(mask.sum()), n, 0,
                                          "stop" if stopped else "length"))
        return completions

    def __call__(self, messages: list[dict[str, str]]) -> Completion:
        return self.generate_batch([messages])[0]
