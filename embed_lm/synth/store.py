"""The output folder of `python -m embed_lm.synth`: append-only JSONL whose contents are also the resume state.

    <out>/short_long.jsonl ... bitext.jsonl   kept examples, one file per kind: what embed_lm.data.synthetic reads
    <out>/tasks/<kind>.jsonl                  step 1 answers: {"request_id", "task_kind", "tasks": [...], "meta"}
    <out>/discarded/<kind>.jsonl              answers not kept: {"request_id", "task_kind", "step", "reason", "raw",
                                              "meta"}; in a subfolder so that <out>/*.jsonl is exactly the examples
    <out>/summary.json                        counts, tokens, cost, run history (written by the pipeline)

Every finished request writes exactly one line to exactly one of these files, flushed at once, carrying its
`request_id`; a request is done iff its id is on disk. A kill can leave only a partial last line, which the next
run cuts off (that request is redone), so a resumed run neither repeats nor loses examples. Exact duplicates (same
kind, same field texts) are recognised across runs by a 16-byte hash and written to discarded/ instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

from embed_lm.errors import UserError
from embed_lm.data.synthetic import FIELDS
from embed_lm.model.instructions import TASK_KINDS

log = logging.getLogger(__name__)
DISCARDED_DIR = "discarded"
TASKS_DIR = "tasks"
SUMMARY = "summary.json"


class StoreError(UserError, ValueError):
    pass


def kind_file(kind: str) -> str:
    return kind.replace("-", "_") + ".jsonl"


def content_key(kind: str, record: dict) -> bytes:
    texts = [kind] + [record[f] for f in FIELDS[kind] if f is not None]
    return hashlib.blake2b(json.dumps(texts, ensure_ascii=False).encode(), digest_size=16).digest()


class OutputStore:
    """Scan `out` (cutting partial last lines unless read_only), then append records one flushed line at a time."""

    def __init__(self, out: str | Path, read_only: bool = False) -> None:
        self.out, self.read_only = Path(out), read_only
        self.done: set[str] = set()
        self.keys: set[bytes] = set()
        self.task_lists: dict[str, dict[int, list[str]]] = defaultdict(dict)  # kind -> step-1 request index -> tasks
        self.examples: Counter[str] = Counter()                                # kind -> kept examples
        self.discards: dict[str, Counter[str]] = defaultdict(Counter)  # kind (step 2) or kind/tasks -> reason -> n
        self.tokens: Counter[str] = Counter()                                  # prompt / completion
        self.repaired: list[str] = []
        self._files: dict[Path, object] = {}
        if not read_only:
            for sub in (TASKS_DIR, DISCARDED_DIR):
                (self.out / sub).mkdir(parents=True, exist_ok=True)
        for kind in TASK_KINDS:
            self._scan(self.out / kind_file(kind), "example")
            self._scan(self.out / TASKS_DIR / kind_file(kind), "tasks")
            self._scan(self.out / DISCARDED_DIR / kind_file(kind), "discard")

    def _scan(self, path: Path, what: str) -> None:
        if not path.is_file():
            return
        end = 0  # bytes of complete lines
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    break  # a partial last line: the run writing it was killed mid-write
                end += len(raw)
                if not raw.strip():
                    continue
                try:
                    self._count(what, json.loads(raw))
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
                    raise StoreError(f"{path}:{lineno}: not a record written by embed_lm.synth ({e}); fix or delete "
                                     "that line, or write to a fresh folder with out=...") from e
        size = path.stat().st_size
        if end < size:
            self.repaired.append(f"{path} ({size - end} bytes)")
            if not self.read_only:
                with path.open("r+b") as f:
                    f.truncate(end)
                log.warning("%s: cut a partial last line left by a killed run; its request will be redone", path)

    def _count(self, what: str, record: dict) -> None:
        rid, kind = record["request_id"], record["task_kind"]
        if rid in self.done:
            raise StoreError(f"request {rid} appears twice")
        self.done.add(rid)
        meta = record.get("meta") or {}
        self.tokens["prompt"] += meta.get("prompt_tokens", 0)
        self.tokens["completion"] += meta.get("completion_tokens", 0)
        if what == "example":
            self.examples[kind] += 1
            self.keys.add(content_key(kind, record))
        elif what == "tasks":
            self.task_lists[kind][int(rid.rsplit("/", 1)[1])] = list(record["tasks"])
        else:
            step = record.get("step", "example")
            self.discards[kind if step == "example" else f"{kind}/{step}"][record["reason"]] += 1

    def tasks(self, kind: str, limit: int | None = None) -> list[str]:
        """The kind's distinct task definitions in step-1 request order (stable across resumes), at most `limit`."""
        ordered = [t for _, ts in sorted(self.task_lists.get(kind, {}).items()) for t in ts]
        return list(dict.fromkeys(ordered))[:limit]

    def _append(self, path: Path, what: str, record: dict) -> None:
        if self.read_only:
            raise StoreError(f"{self.out} was opened read-only")
        self._count(what, record)
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = path.open("a", encoding="utf-8")
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()

    def add_example(self, record: dict) -> bool:
        """Append a kept example; an exact duplicate goes to discarded/ instead (returns False)."""
        kind = record["task_kind"]
        if content_key(kind, record) in self.keys:
            self.add_discard({"request_id": record["request_id"], "task_kind": kind, "step": "example",
                              "reason": "duplicate", "meta": record.get("meta", {})})
            return False
        self._append(self.out / kind_file(kind), "example", record)
        return True

    def add_tasks(self, record: dict) -> None:
        self._append(self.out / TASKS_DIR / kind_file(record["task_kind"]), "tasks", record)

    def add_discard(self, record: dict) -> None:
        self._append(self.out / DISCARDED_DIR / kind_file(record["task_kind"]), "discard", record)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
