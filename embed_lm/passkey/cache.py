"""Generated passkey tasks, saved as one JSONL file each and reused (generation tokenizes every document).

    task, key = load_or_generate(cache_dir, tokenizer, length=4096, n_queries=50, n_candidates=100,
                                 scheme="per_query", key_digits=5, seed=0)

File: <cache_dir>/<key>.jsonl; line 1 {"task": {...settings}}, then one {"doc": {...}} per document, then one
{"query": {...}} per query. A document is stored by its recipe (name, key, needle and filler character counts,
token counts); `Document.text` rebuilds its text (a 32k-token document would otherwise take ~130 kB a line).
The key names the tokenizer (its folder name + a hash of its serialised vocabulary and rules, without the
truncation/padding state that calls change), the length and every setting that changes the task, so a changed
setting never reuses a stale file. Files are written under a temporary name and renamed: an interrupted generation
leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

from embed_lm.errors import UserError
from embed_lm.passkey.generate import Document, Query, Task, generate_task

VERSION = 1  # bump when generate.py changes the documents it makes


def tokenizer_id(tokenizer) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(tokenizer.name_or_path)).name or "tokenizer")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None), spec.pop("padding", None)  # call-time state, not the tokenizer's identity
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def task_key(tokenizer, length: int, n_queries: int, n_candidates: int, scheme: str, key_digits: int, seed: int,
             append_eos: bool = True, tolerance: int = 0) -> str:
    return (f"{tokenizer_id(tokenizer)}-L{length}-{scheme}-q{n_queries}-c{n_candidates}-d{key_digits}-s{seed}"
            f"-eos{int(append_eos)}-t{tolerance}-v{VERSION}")


def save_task(task: Task, path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("w") as f:
        meta = dict(key=key, length=task.length, scheme=task.scheme, seed=task.seed, key_digits=task.key_digits)
        f.write(json.dumps({"task": meta}) + "\n")
        for doc in task.docs:
            f.write(json.dumps({"doc": dataclasses.asdict(doc)}) + "\n")
        for query in task.queries:
            f.write(json.dumps({"query": dataclasses.asdict(query)}) + "\n")
    tmp.replace(path)


def load_task(path: Path) -> Task:
    task: Task | None = None
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                if "task" in row:
                    meta = row["task"]
                    task = Task(meta["length"], meta["scheme"], meta["seed"], meta["key_digits"])
                elif "doc" in row:
                    task.docs.append(Document(**row["doc"]))
                else:
                    q = row["query"]
                    task.queries.append(Query(q["name"], q["key"], q["positive"], tuple(q["candidates"])))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"{path}:{lineno}: not a passkey task line ({e!r}); delete the file to regenerate"
                                 ) from e
    if task is None:
        raise UserError(f"{path} is empty; delete it to regenerate")
    return task


def load_or_generate(cache_dir: str | Path, tokenizer, length: int, n_queries: int, n_candidates: int, scheme: str,
                     key_digits: int, seed: int, append_eos: bool = True, tolerance: int = 0,
                     progress=None) -> tuple[Task, str]:
    """(task, key): the cached task if its file exists, else a freshly generated one, saved."""
    settings = dict(length=length, n_queries=n_queries, n_candidates=n_candidates, scheme=scheme,
                    key_digits=key_digits, seed=seed, append_eos=append_eos, tolerance=tolerance)
    key = task_key(tokenizer, **settings)
    path = Path(cache_dir) / f"{key}.jsonl"
    if path.is_file():
        return load_task(path), key
    task = generate_task(tokenizer, progress=progress, **settings)
    save_task(task, path, key)
    return task, key
