"""Reader for MS-MARCO passage ranking in its public formats (any one of):

1. ids:   collection.tsv (pid, passage) + queries.tsv (qid, query) + either triples of ids (qid, pos_pid, neg_pid;
          as qidpidtriples.train.full.2.tsv) or qrels.tsv (qid, 0, pid, rel; positives only).
2. text triples: triples.tsv of (query, positive passage, negative passage) as triples.train.small.tsv.
3. jsonl: one object a line with `query`, `positive` (or `positives` / `pos`, a string or a list) and optionally
          `negative` (or `negatives` / `neg`).

Strictness (every rule names file:line, or skips and counts the line under skip_invalid):
- collection/queries: split on the first tab only, so a passage may contain tabs; an empty text is an error; a
  repeated id with a different text is an error (the same text again is fine and stored once).
- triples and qrels: exactly 3 / 4 columns (a tab inside a text-triples passage would shift the columns), no empty
  cell, every id present in collection/queries.
- several positives (jsonl list): ONE EXAMPLE PER POSITIVE, each with the line's negatives, so every positive is
  trained on in every epoch (identical queries in one batch are masked as each other's negatives by the loss).
- a file without any example is an error naming it.

The ids format is stored as row references: the collection and queries are Arrow tables (memory-mapped, looked up by
row), the examples table holds only row numbers, so 8.8M passages cost no Python objects and no per-rank copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embed_lm.errors import ConfigError
from embed_lm.data.records import DataFormatError, SkipCounter, expand_paths, read_jsonl, read_tsv, text_field
from embed_lm.data.tables import ExampleTable, RowSource, no_examples_error, open_arrow, write_arrow
from embed_lm.model.instructions import MSMARCO_TASK

POSITIVE_KEYS = ("positive", "positives", "pos")
NEGATIVE_KEYS = ("negative", "negatives", "neg")
ID_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("line", pa.int64())])
REF_SCHEMA = pa.schema([("query", pa.int64()), ("positive", pa.int64()), ("negatives", pa.list_(pa.int64()))])
CHUNK = 1_000_000  # id pairs resolved per vectorised lookup


def _texts(obj: dict, keys: tuple[str, ...], path: Path, lineno: int, required: bool) -> tuple[str, ...]:
    key = next((k for k in keys if k in obj), None)
    if key is None:
        if required:
            raise DataFormatError(path, lineno, keys[0], f"missing (one of {', '.join(keys)})")
        return ()
    value = obj[key]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise DataFormatError(path, lineno, key, "must be a non-empty string or list of non-empty strings")
    return tuple(values)


class MsMarcoSource(RowSource):
    """`data.sources.msmarco`: set collection+queries+(triples|qrels), or triples alone (text), or jsonl."""

    def __init__(self, name: str, collection: str | None = None, queries: str | None = None,
                 qrels: str | None = None, triples: str | None = None, jsonl: str | list[str] | None = None,
                 task: str = MSMARCO_TASK, ratio: float | None = None, skip_invalid: bool = False,
                 max_examples: int | None = None) -> None:
        self.name, self.task, self.ratio, self.skip_invalid = name, task, ratio, skip_invalid
        self.collection, self.queries, self.qrels, self.triples, self.jsonl = collection, queries, qrels, triples, jsonl
        self.max_examples = max_examples
        if jsonl is None and triples is None and not (collection and queries and qrels):
            raise ConfigError(f"data.sources.{name}: set `jsonl`, or `triples` (text), or `collection`, `queries` "
                             "and `triples`/`qrels` (ids)")

    def _files(self) -> dict[str, Path]:
        opt = f"data.sources.{self.name}"
        names = {"collection": self.collection, "queries": self.queries, "qrels": self.qrels,
                 "triples": self.triples}
        return {k: expand_paths(v, f"{opt}.{k}")[0] for k, v in names.items() if v}

    def files(self) -> list[Path]:
        if self.jsonl is not None:
            return expand_paths(self.jsonl, f"data.sources.{self.name}.jsonl")
        return list(self._files().values())

    def options(self) -> dict:
        return {"task": self.task, "layout": "jsonl" if self.jsonl is not None else
                "text triples" if not self.collection else "ids", "qrels": bool(self.qrels and not self.triples)}

    # --- text layouts (jsonl, text triples): RowSource writes the rows -----------------------------------
    def rows(self, skips: SkipCounter) -> Iterator[dict]:
        if self.jsonl is not None:
            yield from self._jsonl_rows(skips)
        else:
            path, count = self._files()["triples"], 0
            for _, (q, p, n) in read_tsv(path, 3, skips, names=("query", "positive", "negative")):
                count += 1
                yield self._row(q, p, (n,))
            if count == 0:
                raise no_examples_error(path, self.name, bool(skips.reasons))

    def _row(self, query: str, positive: str, negatives: tuple[str, ...]) -> dict:
        return {"query": query, "positive": positive, "negatives": list(negatives), "task": self.task,
                "task_kind": "short-long"}

    def _jsonl_rows(self, skips: SkipCounter) -> Iterator[dict]:
        for path in self.files():
            count, before = 0, sum(skips.reasons.values())
            for lineno, obj in read_jsonl(path, skips):
                try:
                    query = text_field(obj, "query", path, lineno)
                    positives = _texts(obj, POSITIVE_KEYS, path, lineno, required=True)
                    negatives = _texts(obj, NEGATIVE_KEYS, path, lineno, required=False)
                except DataFormatError as e:
                    skips.handle(e)
                    continue
                for positive in positives:  # one example per positive (see the module docstring)
                    count += 1
                    yield self._row(query, positive, negatives)
            if count == 0:
                raise no_examples_error(path, self.name, sum(skips.reasons.values()) > before)

    # --- ids layout: Arrow tables of texts + an examples table of row references --------------------------
    def build(self, out: Path) -> None:
        if self.collection is None:
            return super().build(out)
        files, skips = self._files(), SkipCounter(self.skip_invalid)
        for what, field in (("collection", "passage"), ("queries", "query")):
            rows = ({"id": i, "text": t, "line": n}
                    for n, (i, t) in read_tsv(files[what], 2, skips, text_last=True, names=("id", field)))
            if write_arrow(out / f"{what}.arrow", ID_SCHEMA, rows) == 0:
                raise no_examples_error(files[what], self.name, bool(skips.reasons))
            check_unique_ids(open_arrow(out / f"{what}.arrow").data.table, files[what], skips)
        pids = open_arrow(out / "collection.arrow").data.column("id").combine_chunks()
        qids = open_arrow(out / "queries.arrow").data.column("id").combine_chunks()
        pairs = self._id_pairs(files, skips)
        n = write_arrow(out / "examples.arrow", REF_SCHEMA, resolve_ids(pairs, qids, pids, files, skips))
        if n == 0:
            raise no_examples_error(files.get("triples") or files["qrels"], self.name, bool(skips.reasons))
        skips.report(self.name)

    def _id_pairs(self, files: dict[str, Path], skips: SkipCounter) -> Iterator[tuple[str, str, str | None, Path, int]]:
        """(qid, positive pid, negative pid or None, file, line), at most max_examples of them."""
        n = 0
        if "triples" in files:
            lines = ((qid, pos, neg, files["triples"], ln) for ln, (qid, pos, neg) in
                     read_tsv(files["triples"], 3, skips, names=("query id", "positive id", "negative id")))
        else:
            lines = ((qid, pid, None, files["qrels"], ln) for ln, (qid, _, pid, rel) in
                     read_tsv(files["qrels"], 4, skips, names=("query id", "iteration", "passage id", "relevance"))
                     if rel.strip() != "0")
        for pair in lines:
            if self.max_examples is not None and n >= self.max_examples:
                return
            n += 1
            yield pair

    def open(self, out: Path) -> ExampleTable:
        if self.collection is None:
            return super().open(out)
        return ExampleTable(open_arrow(out / "examples.arrow"), open_arrow(out / "queries.arrow"),
                            open_arrow(out / "collection.arrow"), self.task, "short-long")

    def load(self):
        """Every example as a Python object (small files and tests); the ids layout goes through a temp cache."""
        if self.collection is None:
            return super().load()
        import tempfile

        from embed_lm.data.tables import ensure_built

        with tempfile.TemporaryDirectory() as tmp:
            table = self.open(ensure_built(self, tmp))
            return [table.example(i) for i in range(len(table))]


def check_unique_ids(table: pa.Table, path: Path, skips: SkipCounter) -> None:
    """A repeated id with a different text is an error (the lookup keeps the first); the same text again is fine."""
    if pc.count_distinct(table.column("id")).as_py() == table.num_rows:
        return
    counts = table.group_by("id").aggregate([("id", "count")])
    repeated = counts.filter(pc.greater(counts.column("id_count"), 1)).column("id")
    rows = table.filter(pc.is_in(table.column("id"), value_set=repeated))  # only the repeated ids' rows
    texts = rows.group_by("id").aggregate([("text", "count_distinct")])
    clash = texts.filter(pc.greater(texts.column("text_count_distinct"), 1)).column("id").to_pylist()
    for pid in clash:
        lines = rows.filter(pc.equal(rows.column("id"), pid)).column("line").to_pylist()
        skips.handle(DataFormatError(path, lines[1], "id", f"{pid!r} repeats line {lines[0]} with a different "
                                     "text (the first one is kept under skip_invalid)"))


def resolve_ids(pairs: Iterator[tuple], qids: pa.Array, pids: pa.Array, files: dict[str, Path],
                skips: SkipCounter) -> Iterator[dict]:
    """Id pairs -> row references, CHUNK pairs per vectorised lookup; an unknown id names its file:line."""
    chunk: list[tuple] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == CHUNK:
            yield from _resolve_chunk(chunk, qids, pids, files, skips)
            chunk = []
    yield from _resolve_chunk(chunk, qids, pids, files, skips)


def _resolve_chunk(chunk: list[tuple], qids, pids, files, skips) -> Iterator[dict]:
    if not chunk:
        return
    def rows(column: int, ids: pa.Array) -> np.ndarray:  # (chunk,) float row numbers, NaN where unknown
        keys = pa.array([c[column] for c in chunk], pa.string())
        return pc.index_in(keys, value_set=ids).to_numpy(zero_copy_only=False).astype(np.float64)

    q, p, n = rows(0, qids), rows(1, pids), rows(2, pids)
    for i, (qid, pos, neg, path, lineno) in enumerate(chunk):
        missing = [(what, key) for what, key, row in (("query id", qid, q[i]), ("passage id", pos, p[i]),
                                                      ("passage id", neg, n[i])) if key and np.isnan(row)]
        if missing:
            what, key = missing[0]
            skips.handle(DataFormatError(path, lineno, what, f"{key!r} not found in "
                                         f"{files['queries'] if what == 'query id' else files['collection']}"))
            continue
        yield {"query": int(q[i]), "positive": int(p[i]), "negatives": [int(n[i])] if neg else []}
