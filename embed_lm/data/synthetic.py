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
By default each kind is its own sampling source (see SyntheticSource): a single-source batch is single-kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from embed_lm.errors import ConfigError
from embed_lm.data.records import (DataFormatError, SkipCounter, TrainExample, expand_paths, read_jsonl,
                                   text_field)
from embed_lm.data.tables import ExampleTable, RowSource, no_examples_error
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


class SyntheticSource(RowSource):
    """`data.sources.synthetic`: paths (glob or list) of synthetic JSONL files.

    split_by_kind=True (default): each task kind present is sampled as a source of its own (`synthetic/sts`, ...),
    so single-source batches are single-kind. Its share of this source's ratio is `kind_ratios[kind]` (relative
    weights; a present kind missing from the dict is an error, 0 leaves it out) or, with kind_ratios null, its
    number of examples.
    """

    def __init__(self, name: str, paths: str | list[str], ratio: float | None = None, skip_invalid: bool = False,
                 max_examples: int | None = None, split_by_kind: bool = True,
                 kind_ratios: dict[str, float] | None = None) -> None:
        self.name, self.paths, self.ratio, self.skip_invalid = name, paths, ratio, skip_invalid
        self.max_examples, self.split_by_kind = max_examples, split_by_kind
        self.kind_ratios = None if kind_ratios is None else {str(k): float(v) for k, v in dict(kind_ratios).items()}
        unknown = set(self.kind_ratios or ()) - set(FIELDS)
        if unknown or any(v < 0 for v in (self.kind_ratios or {}).values()):
            raise ConfigError(f"data.sources.{name}.kind_ratios: {self.kind_ratios} must map task kinds "
                             f"({', '.join(FIELDS)}) to non-negative weights")

    def files(self) -> list[Path]:
        return expand_paths(self.paths, f"data source '{self.name}' (data.sources.{self.name}.paths)")

    def rows(self, skips: SkipCounter) -> Iterator[dict]:
        for path in self.files():
            file_kind, before, count = kind_from_filename(path), sum(skips.reasons.values()), 0
            for lineno, obj in read_jsonl(path, skips):
                try:
                    kind = obj.get("task_kind", file_kind)
                    if kind not in FIELDS:
                        raise DataFormatError(path, lineno, "task_kind",
                                              f"unknown or missing task kind {kind!r} (name the file after the kind, "
                                              f"e.g. short_long.jsonl, or add task_kind: one of {list(FIELDS)})")
                    e = parse_example(obj, kind, path, lineno)
                except DataFormatError as e:
                    skips.handle(e)
                    continue
                count += 1
                yield {"query": e.query, "positive": e.positive, "negatives": list(e.negatives), "task": e.task,
                       "task_kind": e.task_kind}
            if count == 0:
                raise no_examples_error(path, self.name, sum(skips.reasons.values()) > before)

    def parts(self, table: ExampleTable) -> list[tuple[str, np.ndarray | None, float]]:
        """(name, rows, weight) per task kind present; one part (all rows) when split_by_kind is off."""
        if not self.split_by_kind:
            return [(self.name, None, 1.0)]
        kinds = table.column("task_kind")  # (n,) Arrow strings: never turned into n Python objects
        present = sorted(pc.unique(kinds).to_pylist())
        if self.kind_ratios is not None and set(present) - set(self.kind_ratios):
            raise ConfigError(f"data.sources.{self.name}.kind_ratios has no weight for "
                             f"{sorted(set(present) - set(self.kind_ratios))} (present: {present}); give every "
                             "present kind a weight (0 leaves it out)")
        out = []
        for kind in present:
            rows = pc.indices_nonzero(pc.equal(kinds, kind)).to_numpy()  # (n_kind,) row numbers
            weight = self.kind_ratios[kind] if self.kind_ratios is not None else float(len(rows))
            out.append((f"{self.name}/{kind}", rows, weight))
        return out
