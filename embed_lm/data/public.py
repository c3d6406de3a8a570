"""The paper's public "full data" sets (E5-mistral section 4.2 and Table 14): each read through Hugging Face
`datasets` from its hub id or a local copy and mapped to (query, positive, negatives) with the paper's instruction.

    python -m embed_lm.train data=full                                          # needs the sets (hub or cache)
    python -m embed_lm.train data=full data.sources.nq.local=/data/nq/train.jsonl.gz   # a local copy instead
    python -m embed_lm.data.build t2ranking                                     # the two sets built first

One mapping per schema (MAPPINGS): a function from a table row to zero or more (query, positive, negatives):

    tevatron      query, positive_passages[{docid, title?, text}], negative_passages[...]  (Tevatron sets, MIRACL,
                  Mr. TyDi): first positive; negatives as given
    ms_marco_v21  query, passages{is_selected, passage_text}  (microsoft/ms_marco v2.1): selected passage(s) as
                  positives (one example each), the unselected Bing results as negatives
    squad         question, context  (rajpurkar/squad): no negatives (mined or filled later)
    columns       any flat columns named by `columns: {query, positive, negative}` (sentence-transformers sets:
                  ELI5 question/answer, Quora duplicates and AllNLI anchor/positive/negative)
    beir          BEIR layout: corpus (_id, title, text) + queries (_id, text) + qrels (query-id, corpus-id, score)

Where a set is read from (conf/data/full.yaml records the evidence for each hub id): `load_hub`, the one
`datasets.load_dataset` call, from a repository with no loading script (`datasets` >= 4 refuses scripts): a parquet
or JSON repository by config name, or the hub's parquet export of a script-only repository
(`revision: refs/convert/parquet`, `data_files: "{config}/{split}/*.parquet"`). MS-MARCO document ranking and
T2Ranking are built into BEIR folders first (`python -m embed_lm.data.build <set>`, embed_lm/data/build.py).

`sample_ratio` is the paper's sample ratio (appendix A): the fraction of the set's examples used, the same rows in
every run (a seeded draw without replacement); `ratio` stays the sampling weight among sets (null = the number of
examples used). check() runs before any model loads: offline, a table that is not cached fails naming the
`.local=` override; online, every table's builder is resolved (card and file list), so a script-only, gated or
missing repository fails then too, not after the backbone has loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from embed_lm.data.records import SkipCounter
from embed_lm.data.tables import RowSource
from embed_lm.errors import ConfigError, UserError
from embed_lm.model.instructions import check_task_kind

log = logging.getLogger(__name__)
Pair = tuple[str, str, tuple[str, ...]]  # (query, positive, negatives)
BUILT = ("msmarco_document", "t2ranking")  # BEIR folders written by `python -m embed_lm.data.build <set>`


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


class SetUnavailableError(UserError, FileNotFoundError):
    """A public set cannot be read: not cached offline, unreachable or gated online, or a missing local copy."""


class ScriptOnlyError(UserError, ValueError):
    """The hub repository (at that revision) holds a dataset loading script, which `datasets` >= 4 refuses."""


def load_hub(root: str, config: str | None, split: str, revision: str | None = None,
             data_files: str | None = None):
    """The one `datasets.load_dataset` call of a hub set. `root` is the hub id, or a local replica laid out as the
    repository is (tests). A repository with a dataset card picks the config by name; the hub's parquet export
    (revision refs/convert/parquet) has no card, so there `data_files` ("{config}/{split}/*.parquet") picks it."""
    import datasets

    if data_files:
        files = {split: data_files.format(config=config, split=split)}
        return datasets.load_dataset(root, data_files=files, split=split, revision=revision)
    return datasets.load_dataset(root, config, split=split, revision=revision)


def probe_hub(root: str, config: str | None, revision: str | None = None, data_files: str | None = None,
              split: str = "train") -> None:
    """Resolve the set's builder (dataset card and file list; no data is downloaded): what `load_hub` would read."""
    import datasets

    files = None if not data_files else {split: data_files.format(config=config, split=split)}
    datasets.load_dataset_builder(root, None if files else config, revision=revision, data_files=files)


def load_table(dataset: str | None, config: str | None, split: str, local: str | None, option: str,
               revision: str | None = None, data_files: str | None = None):
    """A `datasets.Dataset`: a local file/folder (json/jsonl(.gz), parquet, csv/tsv, or a saved/hub-layout folder)
    if `local` is set, else the hub id through `load_hub` (the local datasets cache when offline)."""
    import datasets

    if local:
        path = Path(local).expanduser()
        if not path.exists():
            raise SetUnavailableError(f"{option}.local: {path} does not exist")
        if path.is_dir():
            return datasets.load_dataset(str(path), config, split=split)
        ext = Path(path.name.removesuffix(".gz")).suffix
        builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}.get(ext)
        if builder is None:
            raise ConfigError(f"{option}.local: {path}: expected .jsonl/.json(.gz), .parquet, .csv or .tsv")
        kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    return load_hub(dataset, config, split, revision, data_files)


def first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else ""


def sample_rows(n: int, ratio: float | None, seed: str) -> np.ndarray | None:
    """(k,) sorted row numbers: round(ratio * n) of n rows (at least one), drawn without replacement from a
    generator seeded by the set's name, so every run and rank picks the same rows; None = every row."""
    if ratio is None or ratio >= 1 or n == 0:
        return None
    k = max(1, round(ratio * n))
    rng = np.random.default_rng(int(hashlib.sha1(seed.encode()).hexdigest(), 16) % 2**32)
    return np.sort(rng.choice(n, size=k, replace=False))


def rows_by_id(table, wanted: set[str]) -> dict[str, dict]:
    """The rows of a BEIR corpus/queries table whose `_id` is wanted, filtered in Arrow: the other rows (millions in
    FEVER's and HotpotQA's corpora) never become Python objects."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = table.data.table if hasattr(table, "data") else table  # (memory-mapped) Arrow table of a datasets.Dataset
    ids = pc.cast(data.column("_id"), pa.string())
    kept = data.filter(pc.is_in(ids, value_set=pa.array(sorted(wanted), pa.string())))
    return {str(r["_id"]): r for r in kept.to_pylist()}


class PublicSource(RowSource):
    """`data.sources.<name>` of data=full: one public set, where it is read from, its mapping, the paper's
    instruction(s) and sample ratio (the fraction of the set's examples used)."""

    def __init__(self, name: str, mapping: str, task: str | list[str], dataset: str | None = None,
                 configs: list[str] | None = None, split: str = "train", local: str | None = None,
                 qrels_dataset: str | None = None, qrels_config: str | None = None,
                 columns: dict[str, str] | None = None, task_kind: str = "short-long",
                 max_examples: int | None = None, ratio: float | None = None, sample_ratio: float | None = None,
                 revision: str | None = None, data_files: str | None = None, licence: str | None = None) -> None:
        if mapping not in MAPPINGS:
            raise ConfigError(f"data.sources.{name}.mapping: unknown mapping {mapping!r}; one of {', '.join(MAPPINGS)}")
        if dataset is None and local is None:
            raise ConfigError(f"data.sources.{name}: set `dataset` (a hub id) or `local` (a path to a copy)")
        if sample_ratio is not None and not 0 < sample_ratio <= 1:
            raise ConfigError(f"data.sources.{name}.sample_ratio={sample_ratio}: the fraction of the set used, "
                              "in (0, 1], or null for all of it")
        self.name, self.mapping, self.dataset, self.configs = name, mapping, dataset, list(configs or [None])
        self.task = task if isinstance(task, str) else list(task)
        self.split, self.local, self.qrels_dataset, self.qrels_config = split, local, qrels_dataset, qrels_config
        self.columns, self.kind = dict(columns or {}), check_task_kind(task_kind)
        self.max_examples, self.ratio, self.sample_ratio = max_examples, ratio, sample_ratio
        self.revision, self.data_files, self.licence = revision, data_files, licence

    @property
    def option(self) -> str:
        return f"data.sources.{self.name}"

    def hub_tables(self) -> list[tuple[str, str | None, str]]:
        """(repository, config, split) of every table read from the hub, in reading order."""
        if self.mapping == "beir":  # corpus and queries configs (BEIR, MTEB layout) + the qrels' train split
            return [(self.dataset, "corpus", "corpus"), (self.dataset, "queries", "queries"),
                    (self.qrels_dataset or self.dataset, self.qrels_config, self.split)]
        return [(self.dataset, config, self.split) for config in self.configs]

    def _hub(self, what: Callable[[], Any], dataset: str, config: str | None) -> Any:
        """what(), with a script-only repository, a missing set or an unreachable hub as one line naming the fix."""
        at = f"'{dataset}'" + (f" (config {config})" if config else "") + (
            f" at revision {self.revision}" if self.revision else "")
        try:
            return what()
        except UserError:
            raise
        except RuntimeError as e:
            if "scripts are no longer supported" not in str(e):
                raise
            raise ScriptOnlyError(
                f"{self.option}: {at} holds only a dataset loading script ({str(e).rsplit(' ', 1)[-1]}), which "
                "`datasets` >= 4 refuses. Read its parquet export instead: "
                f"{self.option}.revision=refs/convert/parquet {self.option}.data_files='{{config}}/{{split}}/*.parquet'"
                f", or point {self.option}.dataset at a parquet copy, or {self.option}.local=/path/to/{self.name}"
            ) from None
        except Exception as e:  # noqa: BLE001 - datasets/hub raise many types; all mean "cannot read this set"
            why = ("cannot be read" if Path(dataset).exists() else "is not in the local datasets cache and "
                   "HF_HUB_OFFLINE=1" if offline() else "cannot be loaded from the hub")
            raise SetUnavailableError(
                f"{self.option}: dataset {at} {why} ({type(e).__name__}: {first_line(e)})."
                f" Download it where the hub is reachable, or point at a local copy: {self.option}.local=/path/to/"
                f"{self.name} (a .jsonl/.parquet/.csv file or a folder), or leave the set out: {self.option}=null"
            ) from None

    def check(self) -> None:
        """Fail at once, before any model loads, if the set cannot be read: a missing local path; offline, a hub
        table not in the cache; online, a script-only, gated or missing repository (each table's builder is
        resolved: dataset card and file list, no data)."""
        if self.local is not None:
            if not Path(self.local).expanduser().exists():
                build = f"build it: python -m embed_lm.data.build {self.name}, or " if self.name in BUILT else ""
                raise SetUnavailableError(f"{self.option}.local: {self.local} does not exist; {build}point at a copy: "
                                          f"{self.option}.local=/path, or leave the set out: {self.option}=null")
            return
        for dataset, config, split in self.hub_tables():
            self._hub(lambda: probe_hub(dataset, config, self.revision, self.data_files, split), dataset, config)

    def _load(self, dataset: str | None, config: str | None, split: str):
        if self.local is not None:
            return load_table(None, config, split, self.local, self.option)
        return self._hub(lambda: load_table(dataset, config, split, None, self.option, self.revision,
                                            self.data_files), dataset, config)

    def _pairs(self) -> Iterator[Pair]:
        if self.mapping == "beir":
            yield from self._beir_pairs()
            return
        fn = ROW_MAPPINGS[self.mapping]
        for dataset, config, split in (self.hub_tables() if self.local is None else [(None, None, self.split)]):
            table = self._load(dataset, config, split)
            rows = sample_rows(len(table), self.sample_ratio, f"{self.name}/{config}")
            self.read_rows += len(table)
            for row in (table if rows is None else table.select(rows)):
                yield from fn(row, self.columns)

    def _beir_pairs(self) -> Iterator[Pair]:
        if self.local is not None:  # a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv
            root = Path(self.local).expanduser()
            corpus = load_table(None, None, "train", str(root / "corpus.jsonl"), self.option)
            queries = load_table(None, None, "train", str(root / "queries.jsonl"), self.option)
            qrels = load_table(None, None, "train", str(root / "qrels" / f"{self.split}.tsv"), self.option)
        else:
            corpus, queries, qrels = (self._load(*table) for table in self.hub_tables())
        wanted = [(str(q), str(d)) for q, d, s in zip(qrels["query-id"], qrels["corpus-id"], qrels["score"])
                  if int(s) > 0]
        self.read_rows += len(wanted)
        rows = sample_rows(len(wanted), self.sample_ratio, self.name)
        wanted = wanted if rows is None else [wanted[i] for i in rows]
        wanted_q, wanted_d = {q for q, _ in wanted}, {d for _, d in wanted}
        query_text = {i: r["text"] for i, r in rows_by_id(queries, wanted_q).items()}
        doc_text = {i: _passage(r) for i, r in rows_by_id(corpus, wanted_d).items()}
        missing = sum(q not in query_text or d not in doc_text for q, d in wanted)
        if missing:
            log.warning("source %s: %d qrels rows name a query or document that is not in the set; skipped",
                        self.name, missing)
        for q, d in wanted:
            if q in query_text and d in doc_text:
                yield query_text[q], doc_text[d], ()

    def files(self) -> list[Path]:
        """Local files read (part of the cache key); a hub set is keyed by its id, configs, revision and split."""
        if self.local is None:
            return []
        root = Path(self.local).expanduser()
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]

    def options(self) -> dict:
        return {"mapping": self.mapping, "dataset": self.dataset, "configs": self.configs, "split": self.split,
                "qrels_dataset": self.qrels_dataset, "qrels_config": self.qrels_config, "columns": self.columns,
                "task": self.task, "kind": self.kind, "revision": self.revision, "data_files": self.data_files,
                "sample_ratio": self.sample_ratio}

    def rows(self, skips: SkipCounter) -> Iterator[dict]:
        """TEXT_SCHEMA rows (embed_lm/data/tables.py), written once into the source's Arrow table."""
        n, self.read_rows = 0, 0
        for query, positive, negatives in self._pairs():
            n += 1
            yield {"query": query, "positive": positive, "negatives": list(negatives),
                   "task": pick_task(self.task, query), "task_kind": self.kind}
        ratio = "all" if self.sample_ratio is None else f"sample ratio {self.sample_ratio:g}"
        log.info("source %s: %d examples used (%s of %d %s) from %s", self.name, n, ratio, self.read_rows,
                 "relevant qrels" if self.mapping == "beir" else "rows", self.local or self.dataset)
