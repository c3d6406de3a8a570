"""Instruction styles (Table 4's "instruction" rows): what is prepended to a query before it is embedded.

- natural:      `Instruct: {task}\nQuery: {query}` (the paper's default; documents get nothing).
- none:         the raw query.
- task_prefix:  `classify: ` for long-short (classification-like) tasks, `query: ` for the other asymmetric tasks,
                nothing for symmetric tasks (STS, bitext).

Training data marks every example with a task kind (synthetic formats, FACTS.md section 4):
short-long, long-short, short-short, long-long (asymmetric), sts, bitext (symmetric).
"""

from __future__ import annotations

from embed_lm.errors import ConfigError

ASYMMETRIC_KINDS = ("short-long", "long-short", "short-short", "long-long")
SYMMETRIC_KINDS = ("sts", "bitext")
TASK_KINDS = ASYMMETRIC_KINDS + SYMMETRIC_KINDS
MSMARCO_TASK = "Given a web search query, retrieve relevant passages that answer the query"  # paper Table 14


def default_task(cfg) -> str:
    """A run config's test task, else MS-MARCO's: the instruction used for queries when none is given."""
    return ((cfg.get("data") or {}).get("test") or {}).get("task") or MSMARCO_TASK


def check_task_kind(kind: str) -> str:
    if kind not in TASK_KINDS:
        raise ConfigError(f"unknown task kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")
    return kind


class InstructionStyle:
    """Base: documents never carry an instruction, so a document index survives a change of task."""

    name = "base"

    def query_prefix(self, task: str, kind: str) -> str:
        raise NotImplementedError

    def document_prefix(self, task: str, kind: str) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NaturalInstruction(InstructionStyle):
    """python -m embed_lm.train instruction_style=natural"""

    name = "natural"

    def query_prefix(self, task: str, kind: str) -> str:
        return f"Instruct: {task}\nQuery: "


class NoInstruction(InstructionStyle):
    """python -m embed_lm.train instruction_style=none"""

    name = "none"

    def query_prefix(self, task: str, kind: str) -> str:
        return ""


class TaskTypePrefix(InstructionStyle):
    """python -m embed_lm.train instruction_style=task_prefix"""

    name = "task_prefix"

    def query_prefix(self, task: str, kind: str) -> str:
        kind = check_task_kind(kind)
        if kind in SYMMETRIC_KINDS:
            return ""
        return "classify: " if kind == "long-short" else "query: "
