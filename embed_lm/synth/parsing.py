"""Turn a model's answer into a task list (step 1) or one example (step 2), or a Discard with a countable reason.

Accepted: bare JSON, JSON inside a ```json fence, JSON with prose before or after it (the first JSON value that
parses wins). Discard reasons, counted per kind in summary.json and report.md:

    empty_response        the answer is blank
    truncated_output      no JSON parses and the server stopped at max_tokens (raise generator.max_tokens)
    invalid_json          no JSON value parses
    not_an_object         step 2: the JSON is not an object
    missing_field:<f>     step 2: the kind's field f is absent
    not_text:<f>          step 2: field f is not a string
    empty_field:<f>       step 2: field f is blank
    not_a_list            step 1: no JSON list of task definitions
    no_tasks              step 1: the list holds no non-blank strings
    duplicate             step 2: an exact duplicate of an example already kept (decided by the store)
"""

from __future__ import annotations

import json
import re
from typing import Any

from embed_lm.data.synthetic import FIELDS

FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.S)
MAX_STARTS = 32  # bracket positions tried per candidate; model garbage can hold thousands


class Discard(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def extract_json(text: str, finish_reason: str | None = None) -> Any:
    """The first JSON value in `text`: fenced blocks first, then the whole answer, then from each `{`/`[` on."""
    if not text or not text.strip():
        raise Discard("empty_response")
    decoder = json.JSONDecoder()
    for candidate in [m.group(1) for m in FENCE.finditer(text)] + [text]:
        candidate = candidate.strip()
        starts = [0] + [i for i, ch in enumerate(candidate) if ch in "{["][:MAX_STARTS]
        for start in starts:
            try:
                return decoder.raw_decode(candidate, start)[0]  # ignores whatever follows the value
            except json.JSONDecodeError:
                continue
    raise Discard("truncated_output" if finish_reason == "length" else "invalid_json")


def parse_example(text: str, kind: str, finish_reason: str | None = None) -> dict[str, str]:
    """The kind's fields (FIELDS[kind], the optional negative excluded), stripped; other keys are dropped."""
    obj = extract_json(text, finish_reason)
    if isinstance(obj, list) and len(obj) == 1:  # [{...}] is a common wrapping of the one object asked for
        obj = obj[0]
    if not isinstance(obj, dict):
        raise Discard("not_an_object")
    out = {}
    for name in (f for f in FIELDS[kind] if f is not None):
        if name not in obj:
            raise Discard(f"missing_field:{name}")
        if not isinstance(obj[name], str):
            raise Discard(f"not_text:{name}")
        if not obj[name].strip():
            raise Discard(f"empty_field:{name}")
        out[name] = obj[name].strip()
    return out


def parse_tasks(text: str, finish_reason: str | None = None) -> list[str]:
    """Task definitions from a JSON list of strings (or an object holding exactly one list), blanks dropped."""
    value = extract_json(text, finish_reason)
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else value
    if not isinstance(value, list):
        raise Discard("not_a_list")
    tasks = [t.strip() for t in value if isinstance(t, str) and t.strip()]
    if not tasks:
        raise Discard("no_tasks")
    return tasks
