"""JSON schemas of the answers (pydantic models), sent as `response_format` where the server supports it.

With `generator.structured_output=auto` (default) the OpenAI generators send
`{"type": "json_schema", "json_schema": {"name", "strict": true, "schema"}}` and, if the server rejects it (HTTP 400
naming response_format / json_schema), log it once and send plain prompts from then on; the lenient parser
(parsing.py) reads both kinds of answer, so discards by reason are counted the same way. vLLM gets the same schema as
guided (structured) decoding; hf_local ignores it.

Step 1 asks for `{"tasks": [...]}` (strict schemas need an object at the root; parse_tasks accepts an object holding
exactly one list). The example models have exactly the fields of embed_lm.data.synthetic.FIELDS, all required.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")  # -> "additionalProperties": false, which strict mode requires


class TaskList(_Answer):
    tasks: list[str]


class ShortLong(_Answer):
    user_query: str
    positive_document: str
    hard_negative_document: str


class LongShort(_Answer):
    input_text: str
    label: str
    misleading_label: str


class ShortShort(_Answer):
    input: str
    positive_document: str


class LongLong(_Answer):
    input: str
    positive_document: str


class Triple(_Answer):  # sts and bitext
    S1: str
    S2: str
    S3: str


EXAMPLE_MODELS: dict[str, type[BaseModel]] = {"short-long": ShortLong, "long-short": LongShort,
                                              "short-short": ShortShort, "long-long": LongLong, "sts": Triple,
                                              "bitext": Triple}


def answer_model(kind: str, step: str) -> type[BaseModel]:
    return TaskList if step == "tasks" else EXAMPLE_MODELS[kind]


def response_format(kind: str, step: str) -> dict:
    """The OpenAI `response_format` for one request (chat completions and the Batch API alike)."""
    name = f"{kind.replace('-', '_')}_{'task_list' if step == 'tasks' else 'example'}"
    return {"type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": answer_model(kind, step).model_json_schema()}}
