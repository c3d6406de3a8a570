"""Generators: chat messages in, a Completion (text, token usage, retries taken) out. One config file each.

    python -m embed_lm.synth generator=openai model=gpt-4o-mini                 # key from $OPENAI_API_KEY
    python -m embed_lm.synth generator=openai model=mistralai/Mistral-7B-Instruct-v0.3 \
        generator.base_url=http://localhost:8000/v1                             # vLLM or any OpenAI-compatible server
    python -m embed_lm.synth generator=hf_local model=/models/Mistral-7B-Instruct-v0.3   # transformers, no server

The API key is read from the environment variable *named* by `api_key_env` when the client is built and handed
straight to it: it is never a config value, an attribute of ours, a log line or a field of summary.json.
Retries on 429/408/409/5xx and connection errors, with exponential backoff and jitter (or the server's
Retry-After), are the `openai` client's own (`max_retries`); `Completion.retries` reports how many were taken.
A generator is called from several threads at once; HFLocalGenerator serialises its calls.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path


class GeneratorError(RuntimeError):
    """A configuration problem no retry fixes (no key, rejected key, unknown model, missing path): stop the run."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    finish_reason: str | None = None   # "stop", or "length" when max_tokens cut the answer


class OpenAIGenerator:
    """`generator=openai`: the official `openai` client against api.openai.com or any compatible server."""

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float | None = 1.0, top_p: float | None = 1.0, max_tokens: int | None = 2048,
                 max_retries: int = 8, timeout: float = 120.0) -> None:
        import openai

        if not os.environ.get(api_key_env):
            raise GeneratorError(
                f"generator=openai: the environment variable {api_key_env} is not set. `export {api_key_env}=...` "
                "with your key (a local server without authentication accepts any value, e.g. EMPTY), or read "
                "another variable with generator.api_key_env=NAME")
        self._client = openai.OpenAI(api_key=os.environ[api_key_env], base_url=base_url, max_retries=max_retries,
                                     timeout=timeout)
        self._errors = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
        self.model, self.api_key_env, self.max_retries = model, api_key_env, max_retries
        self.base_url = str(self._client.base_url)
        sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.sampling = {k: v for k, v in sampling.items() if v is not None}  # null = leave it to the server

    def describe(self) -> dict:
        return {"generator": "openai", "model": self.model, "base_url": self.base_url,
                "max_retries": self.max_retries, **self.sampling}

    def __call__(self, messages: list[dict[str, str]]) -> Completion:
        try:
            raw = self._client.chat.completions.with_raw_response.create(model=self.model, messages=messages,
                                                                         **self.sampling)
        except self._errors as e:  # the server's message may echo part of the key: not repeated here
            raise GeneratorError(
                f"{self.base_url} answered HTTP {e.status_code} ({type(e).__name__}) for model {self.model!r}: "
                f"check the key in ${self.api_key_env}, the model name (model=...) and generator.base_url") from e
        response = raw.parse()
        choice, usage = response.choices[0], response.usage
        return Completion(choice.message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, raw.retries_taken, choice.finish_reason)


class HFLocalGenerator:
    """`generator=hf_local`: a transformers causal LM from a local folder, sampled one request at a time."""

    def __init__(self, model: str, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 2048,
                 dtype: str = "auto", device: str | None = None) -> None:
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise GeneratorError(f"generator=hf_local: no transformers model at {path} (no config.json there); "
                                 "point model=/path/to/a/causal-lm folder, e.g. a local copy of an instruct model")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.temperature, self.top_p, self.max_new_tokens = path, temperature, top_p, max_new_tokens
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"generator": "hf_local", "model": str(self.path), "device": self.device,
                "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"  # base models: the plain instruction

    def __call__(self, messages: list[dict[str, str]]) -> Completion:
        import torch

        tok = self.tokenizer
        enc = tok(self._prompt(messages), return_tensors="pt", add_special_tokens=not tok.chat_template)
        enc = enc.to(self.device)
        eos = tok.eos_token_id
        sampling = ({"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
                    if self.temperature > 0 else {"do_sample": False})
        with self._lock, torch.inference_mode():
            pad = eos if tok.pad_token_id is None else tok.pad_token_id
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, pad_token_id=pad,
                                      **sampling)  # (1, L + new)
        new = out[0, enc["input_ids"].shape[1]:]  # (new,)
        stopped = len(new) < self.max_new_tokens or (eos is not None and int(new[-1]) == eos)
        return Completion(tok.decode(new, skip_special_tokens=True), int(enc["input_ids"].shape[1]), len(new), 0,
                          "stop" if stopped else "length")
