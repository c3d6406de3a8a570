"""`generator=openai_batch`: both steps through OpenAI's Batch API (half the synchronous price, results within 24 h).

    python -m embed_lm.synth generator=openai_batch model=gpt-4o-mini n_tasks=150000 n_examples=500000 \
        prices_per_1m.input=0.15 prices_per_1m.output=0.6      # list prices; generator.price_factor=0.5 -> batch

Per step: write the step's requests as JSONL (<out>/batches/<step>-<n>.input.jsonl, one chat-completions body per
line, custom_id = request id, the answer schema as response_format), upload each file (files API, purpose=batch),
create one batch per file (at most max_requests_per_batch lines), poll every poll_interval_s until each batch ends,
download its output and error files and parse every answer as the synchronous path does. Step 2 starts after step 1
has been collected, since its prompts need step 1's task definitions.

Resume: <out>/batches/ledger.jsonl records each upload, batch id and collection, flushed and fsynced BEFORE waiting.
A rerun after a crash (or Ctrl-C while waiting, or a laptop closed for a day) polls the batches already created
instead of paying for them again; an uploaded file whose batch creation was not recorded is looked up in the
account's batches by its input file id. Answers already on disk are not written twice. Requests a batch did not
answer (failed lines, an expired or cancelled batch) are counted as errors and sent again by the next run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from embed_lm.errors import ConfigError
from embed_lm.synth.generators import Completion, GeneratorError, api_key, check_structured_output
from embed_lm.synth.prompts import Request
from embed_lm.synth.schemas import response_format
from embed_lm.synth.store import StoreError

log = logging.getLogger(__name__)
ENDPOINT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
LEDGER_KEYS = {"uploaded": ("step", "input_file_id", "input"), "created": ("step", "batch_id", "input_file_id", "input"),
               "collected": ("batch_id",)}  # what each event must hold


class BatchRequestFailed(RuntimeError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_ledger(path: Path) -> list[dict]:
    """The events of a ledger file; a damaged line (a torn write, an edit) is a StoreError naming file:line."""
    events = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            event = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problem = f"not JSON ({e})"
        else:
            kind = event.get("event") if isinstance(event, dict) else None
            missing = [k for k in LEDGER_KEYS[kind] if k not in event] if kind in LEDGER_KEYS else ["a known event"]
            problem = f"not a ledger event (missing {', '.join(missing)})" if missing else None
        if problem:
            raise StoreError(f"{path}:{lineno}: {problem}; fix or delete that line and rerun the same command "
                             "(a batch whose 'created' line is lost is looked up again by its uploaded file)")
        events.append(event)
    return events


class Ledger:
    """<out>/batches/ledger.jsonl: {"event": "uploaded"|"created"|"collected", ...} lines, fsynced one by one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "ledger.jsonl"
        self.events = read_ledger(self.path) if self.path.is_file() else []

    def add(self, **event) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.events.append(event)

    def custom_ids(self, name: str) -> list[str]:
        """The request ids in an input file written by run_step."""
        lines = (self.folder / name).read_text(encoding="utf-8").splitlines()
        return [json.loads(x)["custom_id"] for x in lines if x.strip()]

    def open_batches(self, step: str) -> dict[str, str]:
        """batch id -> input file name, for the step's batches created but not collected."""
        collected = {e["batch_id"] for e in self.events if e["event"] == "collected"}
        return {e["batch_id"]: e["input"] for e in self.events
                if e["event"] == "created" and e["step"] == step and e["batch_id"] not in collected}

    def orphans(self, step: str) -> dict[str, str]:
        """input file id -> input file name, for uploads of the step with no recorded batch."""
        created = {e["input_file_id"] for e in self.events if e["event"] == "created"}
        return {e["input_file_id"]: e["input"] for e in self.events
                if e["event"] == "uploaded" and e["step"] == step and e["input_file_id"] not in created}


class OpenAIBatchGenerator:
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float | None = 1.0, top_p: float | None = 1.0, max_tokens: int | None = 2048,
                 structured_output: bool = True, completion_window: str = "24h", poll_interval_s: float = 60.0,
                 max_requests_per_batch: int = 50_000, price_factor: float = 0.5, max_retries: int = 8,
                 timeout: float = 300.0) -> None:
        import openai

        if not 1 <= max_requests_per_batch <= 50_000:
            raise ConfigError("generator.max_requests_per_batch must be in 1..50000 (the Batch API's limit), got "
                             f"{max_requests_per_batch}")
        self.api_key_env = api_key_env
        self.client = openai.OpenAI(api_key=api_key(api_key_env, "openai_batch"), base_url=base_url,
                                    max_retries=max_retries, timeout=timeout)
        self.model, self.base_url = model, str(self.client.base_url).rstrip("/")
        sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.sampling = {k: v for k, v in sampling.items() if v is not None}
        self.structured_output = check_structured_output(structured_output) is not False
        self.completion_window, self.poll_interval_s = completion_window, poll_interval_s
        self.max_requests_per_batch, self.price_factor = max_requests_per_batch, price_factor

    def describe(self) -> dict:
        return {"generator": "openai_batch", "model": self.model, "base_url": self.base_url,
                "structured_output": self.structured_output, "completion_window": self.completion_window,
                "price_factor": self.price_factor, **self.sampling}

    def body(self, r: Request) -> dict:
        extra = {"response_format": response_format(r.kind, r.step)} if self.structured_output else {}
        return {"model": self.model, "messages": r.messages, **self.sampling, **extra}

    def run_step(self, step: str, requests: list[Request], out: Path, is_done: Callable[[str], bool],
                 answered: Callable[[Request, Completion], None], failed: Callable[[Request, Exception], None]) -> None:
        """Send `requests` (not yet done) as batches, or pick up the step's batches of an earlier run; hand every
        answer to `answered` and every failed line to `failed`. An unreachable server or a refused key stops the
        run with a GeneratorError naming the server; what was recorded in the ledger resumes on the next run."""
        import openai

        ledger = Ledger(out / "batches")
        try:
            self._run_step(ledger, step, requests, is_done, answered, failed)
        except openai.APIConnectionError as e:  # refused, unresolvable or timed out, after the client's retries
            raise GeneratorError(f"generator=openai_batch: cannot reach {self.base_url} ({type(e).__name__}: {e}); "
                                 "check generator.base_url and the network, then rerun the same command (batches "
                                 f"already created resume from {ledger.path})") from e
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise GeneratorError(f"{self.base_url} answered HTTP {e.status_code} ({type(e).__name__}): check the "
                                 f"key in ${self.api_key_env}, the model name (model=...) and generator.base_url"
                                 ) from e

    def _run_step(self, ledger: Ledger, step: str, requests: list[Request], is_done: Callable[[str], bool],
                  answered: Callable[[Request, Completion], None], failed: Callable[[Request, Exception], None]
                  ) -> None:
        by_id = {r.id: r for r in requests}
        waiting = ledger.open_batches(step)
        for file_id, name in ledger.orphans(step).items():
            found = next((b for b in self.client.batches.list(limit=100) if b.input_file_id == file_id), None)
            if found is None:
                found = self._create(ledger, step, file_id, name)
            else:
                ledger.add(event="created", step=step, batch_id=found.id, input_file_id=file_id, input=name)
            waiting[found.id] = name
        in_flight = {rid for name in waiting.values() for rid in ledger.custom_ids(name)}
        fresh = [r for r in requests if r.id not in in_flight]
        if waiting:
            log.info("%s: %d batch(es) of an earlier run still open; polling them", step, len(waiting))
        n0 = sum(e["event"] == "uploaded" for e in ledger.events)
        for n, start in enumerate(range(0, len(fresh), self.max_requests_per_batch), start=n0):
            chunk = fresh[start:start + self.max_requests_per_batch]
            name = f"{step}-{n}.input.jsonl"
            lines = [json.dumps({"custom_id": r.id, "method": "POST", "url": ENDPOINT, "body": self.body(r)},
                                ensure_ascii=False) for r in chunk]
            (ledger.folder / name).parent.mkdir(parents=True, exist_ok=True)
            (ledger.folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
            with (ledger.folder / name).open("rb") as f:
                uploaded = self.client.files.create(file=f, purpose="batch")
            ledger.add(event="uploaded", step=step, input_file_id=uploaded.id, input=name, requests=len(chunk))
            waiting[self._create(ledger, step, uploaded.id, name).id] = name
        while waiting:
            for batch_id in list(waiting):
                batch = self.client.batches.retrieve(batch_id)
                if batch.status in TERMINAL:
                    self._collect(batch, ledger.custom_ids(waiting[batch_id]), by_id, is_done, answered, failed)
                    ledger.add(event="collected", step=step, batch_id=batch_id, status=batch.status)
                    del waiting[batch_id]
                else:
                    counts = batch.request_counts
                    log.info("batch %s: %s%s", batch_id, batch.status,
                             f" ({counts.completed}/{counts.total} done)" if counts else "")
            if waiting:
                time.sleep(self.poll_interval_s)

    def _create(self, ledger: Ledger, step: str, file_id: str, name: str):
        batch = self.client.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                           completion_window=self.completion_window,
                                           metadata={"source": "embed_lm.synth", "input": name})
        ledger.add(event="created", step=step, batch_id=batch.id, input_file_id=file_id, input=name)
        log.info("batch %s created for %s (recorded in %s)", batch.id, name, ledger.path)
        return batch

    def _collect(self, batch, sent: list[str], by_id: dict[str, Request], is_done, answered, failed) -> None:
        seen = set()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in self.client.files.content(file_id).text.splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                rid = rec.get("custom_id")
                request = by_id.get(rid)
                if request is None or is_done(rid) or rid in seen:
                    continue  # not planned any more, or written by a run that crashed before recording collection
                seen.add(rid)
                response = rec.get("response") or {}
                if response.get("status_code") == 200:
                    body = response["body"]
                    choice, usage = body["choices"][0], body.get("usage") or {}
                    answered(request, Completion(choice["message"].get("content") or "",
                                                 usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), 0,
                                                 choice.get("finish_reason")))
                else:
                    error = rec.get("error") or (response.get("body") or {}).get("error") or {}
                    code = response.get("status_code")
                    failed(request, BatchRequestFailed(f"http_{code}" if code else f"batch_{error.get('code')}",
                                                       str(error.get("message", error))[:300]))
        lost = [by_id[i] for i in sent if i in by_id and i not in seen and not is_done(i)]
        if lost:
            log.warning("batch %s ended %s with %d requests unanswered; the next run sends them again (%s)",
                        batch.id, batch.status, len(lost), getattr(batch, "errors", None))
            for r in lost:
                failed(r, BatchRequestFailed(f"batch_{batch.status}", f"batch {batch.id} ended {batch.status}"))
