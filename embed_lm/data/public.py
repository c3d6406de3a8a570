"""The paper's public "full data" sets (E5-mistral section 4.2 and Table 14): each read through Hugging Face
`datasets` from its hub id or a local copy and mapped to (query, positive, negatives) with the paper's instruction.

    python -m embed_lm.train data=full                                          # needs the sets (hub or cache)
    python -m embed_lm.train data=full data.sources.nq.local=/data/nq/train.jsonl.gz   # a local copy instead

One mapping per schema (MAPPINGS): a function from a table row to zero or more (query, positive, negatives):

    tevatron      query, positive_passages[{docid, title?, text}], negative_passages[...]  (Tevatron sets, MIRACL,
                  Mr. TyDi): first positive; negatives as given
    ms_marco_v21  query, passages{is_selected, passage_text}  (microsoft/ms_marco v2.1): selected passage(s) as
                  positives (one example each), the unselected Bing results as negatives
    squad         question, context  (rajpurkar/squad): no negatives (mined or filled later)
    columns       any flat columns named by `columns: {query, positive, negative}` (sentence-transformers sets:
                  ELI5 question/answer, Quora duplicates and AllNLI anchor/positive/negative)
    beir          BEIR layout: corpus (_id, title, text) + queries (_id, text) + qrels (query-id, corpus-id, score)

With HF_HUB_OFFLINE=1 a set that is neither local nor in the datasets cache fails in check(), before any model is
loaded, naming the set and the override that points at a local copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from embed_lm.errors import ConfigError, MissingFileError
from embed_lm.data.records import SkipCounter
from embed_lm.data.tables import RowSource
from embed_lm.model.instructions import check_task_kind

log = logging.getLogger(__name__)
Pair = tuple[str, str, tuple[str, ...]]  # (query, positive, negatives)


def _passage(p: dict[str, Any]) -> str:
    title, text = (p.get("title") or "").strip(), (p.get("text") or "").strip()
    return f"{title} {text}" if title else text


def map_tevatron(row: dict, columns: dict[str, str]) -> Iterator[Pair]:
    positives = [_passage(p) for p in row.get("positive_passages") or [] if _passage(p)]
    if positives and (row.get("query") or "").strip():
        yield row["query"], positives[0], tuple(_passage(n) for n in row.get("negative_passages") or [])


def map_ms_marco_v21(row: dict, columns: dict[str, str]) -> Iterator[Pair]:
    passages = row["passages"]
    chosen = [t for t, s in zip(passages["passage_text"], passages["is_selected"]) if s]
    others = tuple(t for t, s in zip(passages["passage_text"], passages["is_selected"]) if not s)
    for positive in chosen:
        yield row["query"], positive, others


def map_squad(row: dict, columns: dict[str, str]) -> Iterator[Pair]:
    yield row["question"], row["context"], ()


def map_columns(row: dict, columns: dict[str, str]) -> Iterator[Pair]:
    neg_col = columns.get("negative")
    negatives = row.get(neg_col) if neg_col else None
    negatives = () if negatives is None else (negatives,) if isinstance(negatives, str) else tuple(negatives)
    yield row[columns["query"]], row[columns["positive"]], negatives


ROW_MAPPINGS: dict[str, Callable[[dict, dict[str, str]], Iterable[Pair]]] = {
    "tevatron": map_tevatron, "ms_marco_v21": map_ms_marco_v21, "squad": map_squad, "columns": map_columns}
MAPPINGS = (*ROW_MAPPINGS, "beir")


def pick_task(tasks: str | list[str], query: str) -> str:
    """One of the set's instructions per query, stable across runs (the paper gives some sets two; how examples are
    split between them is not stated)."""
    if isinstance(tasks, str):
        return tasks
    return tasks[int(hashlib.sha1(query.encode()).hexdigest(), 16) % len(tasks)]


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def load_table(dataset: str | None, config: str | None, split: str, local: str | None, option: str):
    """A `datasets.Dataset`: a local file/folder (json/jsonl(.gz), parquet, csv/tsv, or a saved/hub-layout folder)
    if `local` is set, else the hub id (the local datasets cache when offline)."""
    import datasets

    if local:
        path = Path(local).expanduser()
        if not path.exists():
            raise MissingFileError(f"{option}.local: {path} does not exist")
        if path.is_dir():
            return datasets.load_dataset(str(path), config, split=split)
        ext = Path(path.name.removesuffix(".gz")).suffix
        builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}.get(ext)
        if builder is None:
            raise ConfigError(f"{option}.local: {path}: expected .jsonl/.json(.gz), .parquet, .csv or .tsv")
        kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    return datasets.load_dataset(dataset, config, split=split)


class PublicSource(RowSource):
    """`data.sources.<name>` of data=full: one public set, its mapping and the paper's instruction(s) for it."""

    def __init__(self, name: str, mapping: str, task: str | list[str], dataset: str | None = None,
                 configs: list[str] | None = None, split: str = "train", local: str | None = None,
                 qrels_dataset: str | None = None, columns: dict[str, str] | None = None,
                 task_kind: str = "short-long", max_examples: int | None = None, ratio: float | None = None) -> None:
        if mapping not in MAPPINGS:
            raise ConfigError(f"data.sources.{name}.mapping: unknown mapping {mapping!r}; one of {', '.join(MAPPINGS)}")
        if dataset is None and local is None:
            raise ConfigError(f"data.sources.{name}: set `dataset` (a hub id) or `local` (a path to a copy)")
        self.name, self.mapping, self.dataset, self.configs = name, mapping, dataset, list(configs or [None])
        self.task = task if isinstance(task, str) else list(task)
        self.split, self.local, self.qrels_dataset = split, local, qrels_dataset
        self.columns, self.kind = dict(columns or {}), check_task_kind(task_kind)
        self.max_examples, self.ratio = max_examples, ratio

    @property
    def option(self) -> str:
        return f"data.sources.{self.name}"

    def check(self) -> None:
        """Fail at once if the set cannot be read: a missing local path, or, offline, a hub set not cached."""
        if self.local is not None:
            if not Path(self.local).expanduser().exists():
                raise MissingFileError(f"{self.option}.local: {self.local} does not exist")
            return
        if not offline():
            return
        import datasets

        for dataset, config in [(self.dataset, c) for c in self.configs] + (
                [(self.qrels_dataset, None)] if self.qrels_dataset else []):
            try:
                datasets.load_dataset_builder(dataset, config)
            except (ConnectionError, FileNotFoundError, ValueError) as e:
                raise MissingFileError(
                    f"{self.option}: dataset '{dataset}'{f' (config {config})' if config else ''} is not in the "
                    f"local datasets cache and HF_HUB_OFFLINE=1 ({type(e).__name__}). Download it where the hub is "
                    f"reachable, or point at a local copy: {self.option}.local=/path/to/{self.name} "
                    "(a .jsonl/.parquet/.csv file or a folder)") from None

    def _pairs(self) -> Iterator[Pair]:
        if self.mapping == "beir":
            yield from self._beir_pairs()
            return
        fn = ROW_MAPPINGS[self.mapping]
        for config in (self.configs if self.local is None else [None]):
            table = load_table(self.dataset, config, self.split, self.local, self.option)
            for row in table:
                yield from fn(row, self.columns)

    def _beir_pairs(self) -> Iterator[Pair]:
        if self.local is not None:  # a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv
            root = Path(self.local).expanduser()
            corpus = load_table(None, None, "train", str(root / "corpus.jsonl"), self.option)
            queries = load_table(None, None, "train", str(root / "queries.jsonl"), self.option)
            qrels = load_table(None, None, "train", str(root / "qrels" / f"{self.split}.tsv"), self.option)
        else:  # BeIR/<set> (configs corpus, queries) + BeIR/<set>-qrels
            corpus = load_table(self.dataset, "corpus", "corpus", None, self.option)
            queries = load_table(self.dataset, "queries", "queries", None, self.option)
            qrels = load_table(self.qrels_dataset, None, self.split, None, self.option)
        wanted = [(str(r["query-id"]), str(r["corpus-id"])) for r in qrels if int(r["score"]) > 0]
        wanted_q, wanted_d = {q for q, _ in wanted}, {d for _, d in wanted}
        query_text = {str(r["_id"]): r["text"] for r in queries if str(r["_id"]) in wanted_q}
        doc_text = {str(r["_id"]): _passage(r) for r in corpus if str(r["_id"]) in wanted_d}
        missing = sum(q not in query_text or d not in doc_text for q, d in wanted)
        if missing:
            log.warning("source %s: %d qrels rows name a query or document that is not in the set; skipped",
                        self.name, missing)
        for q, d in wanted:
            if q in query_text and d in doc_text:
                yield query_text[q], doc_text[d], ()

    def files(self) -> list[Path]:
        """Local files read (part of the cache key); a hub set is keyed by its id, configs and split instead."""
        if self.local is None:
            return []
        root = Path(self.local).expanduser()
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]

    def options(self) -> dict:
        return {"mapping": self.mapping, "dataset": self.dataset, "configs": self.configs, "split": self.split,
                "qrels_dataset": self.qrels_dataset, "columns": self.columns, "task": self.task, "kind": self.kind}

    def rows(self, skips: SkipCounter) -> Iterator[dict]:
        """TEXT_SCHEMA rows (embed_lm/data/tables.py), written once into the source's Arrow table."""
        n = 0
        for query, positive, negatives in self._pairs():
            n += 1
            yield {"query": query, "positive": positive, "negatives": list(negatives),
                   "task": pick_task(self.task, query), "task_kind": self.kind}
        log.info("source %s: %d examples from %s", self.name, n, self.local or self.dataset)
