"""The one record every reader produces, the data error type, and line-numbered file reading.

A TrainExample is (query, positive, negatives) plus the task definition and task kind that pick its instruction.
A malformed line raises DataFormatError naming file:line and the field at fault; with skip_invalid=True the
reader skips it and the caller logs how many were skipped and why.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from embed_lm.errors import MissingFileError, UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainExample:
    query: str
    positive: str
    negatives: tuple[str, ...]
    task: str
    task_kind: str
    # pre-tokenised (data.pretokenize): ((ids, flags) of the query, of the positive, of each negative); else None
    tokens: tuple | None = field(default=None, compare=False, repr=False)


class DataFormatError(UserError, ValueError):
    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        what = f" field '{field}'" if field else ""
        super().__init__(f"{where}:{what} {problem}".replace(": ", ": ", 1))
        self.path, self.line, self.field, self.problem = str(path), line, field, problem


class SkipCounter:
    """Counts lines skipped under skip_invalid, by reason, and logs one summary line per file."""

    def __init__(self, skip_invalid: bool) -> None:
        self.skip_invalid = skip_invalid
        self.reasons: Counter[str] = Counter()

    def handle(self, error: DataFormatError) -> None:
        if not self.skip_invalid:
            raise error
        self.reasons[f"{error.field or 'line'}: {error.problem}"] += 1

    def report(self, source: str) -> None:
        if self.reasons:
            total = sum(self.reasons.values())
            detail = "; ".join(f"{n} x {r}" for r, n in self.reasons.most_common(5))
            log.warning("source %s: skipped %d invalid lines (%s)", source, total, detail)


def expand_paths(pattern: str | list[str], what: str) -> list[Path]:
    """Expand globs; raise FileNotFoundError naming the pattern and the option to change when nothing matches."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    paths = sorted({Path(p) for pat in patterns for p in glob.glob(str(Path(pat).expanduser()))})
    if not paths:
        raise MissingFileError(f"{what}: no file matches {patterns}")
    return paths


def open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_lines(path: Path, skips: SkipCounter) -> Iterator[tuple[int, str]]:
    """Yield (line number, text without the newline) for each non-blank line. Decoding is per line, so a
    non-UTF-8 byte names file:line (or is skipped and counted under skip_invalid) instead of a bare traceback."""
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                skips.handle(DataFormatError(path, lineno, None, f"not valid UTF-8 (byte {raw[e.start]:#04x} at "
                                             f"column {e.start + 1})"))
                continue
            if line.strip():
                yield lineno, line


def read_jsonl(path: Path, skips: SkipCounter) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; bad JSON goes through `skips`."""
    for lineno, line in read_lines(path, skips):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            skips.handle(DataFormatError(path, lineno, None, f"invalid JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            skips.handle(DataFormatError(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        yield lineno, obj


def read_tsv(path: Path, columns: int, skips: SkipCounter, header_startswith: str | None = None,
             text_last: bool = False, names: tuple[str, ...] = ()) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, cells) for rows of exactly `columns` tab-separated cells; a header row may be skipped.

    text_last=True: split on the first `columns - 1` tabs only, so the last cell (an id's text) may hold tabs.
    With `names` (one per column), an empty cell is an error naming that column.
    """
    for lineno, line in read_lines(path, skips):
        if lineno == 1 and header_startswith and line.startswith(header_startswith):
            continue
        cells = line.split("\t", columns - 1) if text_last else line.split("\t")
        if len(cells) != columns:
            skips.handle(DataFormatError(path, lineno, None, f"expected {columns} tab-separated columns, found "
                                         f"{len(cells)}" + ("" if text_last else " (a tab inside a text?)")))
            continue
        empty = next((n for n, c in zip(names, cells) if not c.strip()), None)
        if empty:
            skips.handle(DataFormatError(path, lineno, empty, "is empty"))
            continue
        yield lineno, cells


def text_field(obj: dict, key: str, path: Path, lineno: int) -> str:
    value = obj.get(key)
    if value is None:
        raise DataFormatError(path, lineno, key, "missing")
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(path, lineno, key, "must be a non-empty string")
    return value
