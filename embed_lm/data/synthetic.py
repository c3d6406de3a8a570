"""Reader for the paper's synthetic data (E5-mistral section 3.1, FACTS.md section 4): JSONL, one example a line.

Every line carries `task` (the task definition, used by the instruction) and the fields of its task kind:

    kind          query          positive             hard negative
    short-long    user_query     positive_document    hard_negative_document
    long-short    input_text     label                misleading_label
    short-short   input          positive_document    (hard_negative_document, if mined)
    long-long     input          positive_document    (hard_negative_document, if mined)
    sts, bitext   S1             S2                   S3

The kind is the line's `task_kind` field if present, else the file name's prefix (short_long*.jsonl, sts*.jsonl,
...), which is how `python -m embed_lm.synth` writes one file per kind. Files may be gzipped (.jsonl.gz).
"""

from __future__ import annotations

from pathlib import Path

from embed_lm.data.records import (DataFormatError, SkipCounter, TrainExample, expand_paths, read_jsonl,
                                   text_field)
from embed_lm.model.instructions import TASK_KINDS

FIELDS: dict[str, tuple[str, str, str | None]] = {
    "short-long": ("user_query", "positive_document", "hard_negative_document"),
    "long-short": ("input_text", "label", "misleading_label"),
    "short-short": ("input", "positive_document", None),
    "long-long": ("input", "positive_document", None),
    "sts": ("S1", "S2", "S3"),
    "bitext": ("S1", "S2", "S3"),
}
OPTIONAL_NEGATIVE = "hard_negative_document"


def kind_from_filename(path: Path) -> str | None:
    stem = path.name.split(".")[0].replace("_", "-").lower()
    return next((k for k in sorted(TASK_KINDS, key=len, reverse=True) if stem.startswith(k)), None)


def parse_example(obj: dict, kind: str, path: Path, lineno: int) -> TrainExample:
    q_key, p_key, n_key = FIELDS[kind]
    query, positive = text_field(obj, q_key, path, lineno), text_field(obj, p_key, path, lineno)
    task = text_field(obj, "task", path, lineno)
    n_key = n_key or (OPTIONAL_NEGATIVE if OPTIONAL_NEGATIVE in obj else None)
    negatives = (text_field(obj, n_key, path, lineno),) if n_key else ()
    return TrainExample(query, positive, negatives, task, kind)


class SyntheticSource:
    """`data.sources.synthetic`: paths (glob or list) of synthetic JSONL files."""

    def __init__(self, name: str, paths: str | list[str], ratio: float | None = None,
                 skip_invalid: bool = False) -> None:
        self.name, self.paths, self.ratio, self.skip_invalid = name, paths, ratio, skip_invalid

    def check(self) -> None:
        expand_paths(self.paths, f"data source '{self.name}' (data.sources.{self.name}.paths)")

    def load(self) -> list[TrainExample]:
        examples: list[TrainExample] = []
        skips = SkipCounter(self.skip_invalid)
        for path in expand_paths(self.paths, f"data source '{self.name}' (data.sources.{self.name}.paths)"):
            file_kind = kind_from_filename(path)
            for lineno, obj in read_jsonl(path, skips):
                try:
                    kind = obj.get("task_kind", file_kind)
                    if kind not in FIELDS:
                        raise DataFormatError(path, lineno, "task_kind",
                                              f"unknown or missing task kind {kind!r} (name the file after the kind, "
                                              f"e.g. short_long.jsonl, or add task_kind: one of {list(FIELDS)})")
                    examples.append(parse_example(obj, kind, path, lineno))
                except DataFormatError as e:
                    skips.handle(e)
        skips.report(self.name)
        return examples
