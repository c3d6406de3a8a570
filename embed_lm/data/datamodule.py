"""ContrastiveDataModule: training pairs from several sources + retrieval dev/test splits, tokenized by the
backbone's TextCollator with the chosen instruction style.

    python -m embed_lm.train data=sample               # bundled Debian sample (synthetic + MS-MARCO formats)
    python -m embed_lm.train data=msmarco_only data.sources.msmarco.collection=/data/msmarco/collection.tsv

Training batch (dict): queries TokenizedBatch (B, L) and documents TokenizedBatch (M, L), M = B * (1 + N): the B
positives first, then each query's N hard negatives in query order; query_ids (B,) and doc_ids (M,), 64-bit hashes
of the texts, with which the loss masks duplicates (a copy of a query's positive is not its negative). Every example
gets exactly N negatives: extra ones are dropped, missing ones are filled with other examples' positives from the
same part (counted, logged). Sources are Arrow tables cached under `data.cache_dir` (embed_lm/data/tables.py),
built by `check` (train.py, before the model loads) or `prepare_data` on local rank 0 and memory-mapped by every
rank and worker.
Eval batch: (indices (b,), TokenizedBatch) over queries (dataloader 2k) and corpus (dataloader 2k+1) of eval split k,
cut as `encode` cuts them (embed_lm/model/length_batching.py `length_batches`: tokenized once, sorted by exact token count, eval_batch_size rows
or eval_max_tokens a batch). With W ranks each rank gets batches rank, rank + W, ... (every rank tokenizes the split,
which is cheap; the encoding is split W ways) and the module gathers the rows; ranks with one batch fewer get a
one-row filler batch of index -1, so every rank runs the same number of forward passes (FSDP needs that).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from embed_lm.errors import ConfigError
from embed_lm.model.length_batching import length_batches
from embed_lm.model.collator import TextCollator, TokenizedBatch
from embed_lm.data.beir import BeirSplit, RetrievalSplit
from embed_lm.data.records import TrainExample
from embed_lm.data.sampler import MixtureBatchSampler, check_sizes
from embed_lm.data.pretokenize import pretokenize
from embed_lm.data.tables import ExampleTable, ensure_built
from embed_lm.model.instructions import InstructionStyle

log = logging.getLogger(__name__)


class TrainSource(Protocol):
    """What `data.sources.<name>` provides: see the source interface in embed_lm/data/tables.py."""

    name: str
    ratio: float | None

    def check(self) -> None: ...

    def cache_key(self) -> dict: ...

    def build(self, out: Path) -> None: ...

    def open(self, out: Path) -> ExampleTable: ...


@dataclass
class Part:
    """One sampling source: rows of a source's table (a task kind of the synthetic source, or all of MS-MARCO)."""

    name: str
    table: ExampleTable
    rows: np.ndarray | None  # (n,) row numbers into table; None = every row
    ratio: float

    def __len__(self) -> int:
        return len(self.table) if self.rows is None else len(self.rows)

    def row(self, i: int) -> int:
        return i if self.rows is None else int(self.rows[i])


class MixtureDataset(Dataset):
    """Global index -> TrainExample over the concatenated parts, each with exactly n negatives: extra ones are
    dropped, missing ones are other examples' positives from the same part, drawn from a generator seeded by
    (seed, index), so the fill is the same in every epoch, rank and worker without being stored."""

    def __init__(self, parts: list[Part], negatives_per_query: int, seed: int) -> None:
        self.parts, self.n, self.seed = parts, negatives_per_query, seed
        self.offsets = np.cumsum([0] + [len(p) for p in parts])  # (P + 1,)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> TrainExample:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        part, i = self.parts[k], index - int(self.offsets[k])
        ex = part.table.example(part.row(i))
        negatives = list(ex.negatives[: self.n])
        tokens = None if ex.tokens is None else list(ex.tokens[2][: self.n])
        if len(negatives) < self.n and len(part) > 1:
            rng = random.Random(self.seed * 1_000_003 + index)
            while len(negatives) < self.n:
                j = rng.randrange(len(part) - 1)
                text, text_tokens = part.table.positive(part.row(j + (j >= i)))
                negatives.append(text)
                if tokens is not None:
                    tokens.append(text_tokens)
        return replace(ex, negatives=tuple(negatives),
                       tokens=None if tokens is None else (ex.tokens[0], ex.tokens[1], tuple(tokens)))


def text_ids(texts: list[str]) -> torch.Tensor:
    """(n,) int64: a 64-bit hash of each text; equal texts get equal ids (the loss masks duplicates with them)."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little", signed=True)
                         for t in texts], dtype=torch.long)


class PairCollator:
    """Examples -> queries (B, L), documents (M, L) and the text ids the loss uses to mask duplicates:
    query_ids (B,) of the query texts, doc_ids (M,) of the document texts in document order."""

    def __init__(self, collator: TextCollator, style: InstructionStyle) -> None:
        self.collator, self.style = collator, style

    def __call__(self, examples: list[TrainExample]) -> dict[str, TokenizedBatch | torch.Tensor]:
        docs = [e.positive for e in examples] + [n for e in examples for n in e.negatives]
        if all(e.tokens is not None for e in examples):  # pre-tokenised (data.pretokenize): only pad
            queries = self.collator.pad([e.tokens[0] for e in examples])  # (B, Lq)
            documents = self.collator.pad([e.tokens[1] for e in examples] + [n for e in examples for n in e.tokens[2]])
        else:
            queries = self.collator([self.style.query_prefix(e.task, e.task_kind) for e in examples],
                                    [e.query for e in examples])  # (B, Lq)
            doc_prefixes = [self.style.document_prefix(e.task, e.task_kind) for e in examples]
            doc_prefixes += [p for e, p in zip(examples, doc_prefixes) for _ in e.negatives]
            documents = self.collator(doc_prefixes, docs)  # (M, Ld)
        return {"queries": queries, "documents": documents,
                "query_ids": text_ids([e.query for e in examples]), "doc_ids": text_ids(docs)}  # (B,), (M,)


class EvalCollator:
    """(row indices, tokenized rows) of one prepared batch -> (indices (b,), TokenizedBatch (b, L))."""

    def __init__(self, collator: TextCollator) -> None:
        self.collator = collator

    def __call__(self, item: tuple[list[int], list]) -> tuple[torch.Tensor, TokenizedBatch]:
        indices, rows = item  # rows: (token ids, instruction flags) from TextCollator.tokenize
        return torch.tensor(indices, dtype=torch.long), self.collator.pad(rows)  # (b,), (b, L)


def shard_batches(texts: list[str], prefix: str, collator: TextCollator, batch_size: int, max_tokens: int | None,
                  rank: int = 0, world: int = 1) -> list[tuple[list[int], list]]:
    """This rank's (row indices, tokenized rows) batches of `texts`, cut as `encode` cuts them; every rank gets
    ceil(batches / W) of them (a one-row filler batch of index -1 evens the count)."""
    rows = collator.tokenize([prefix] * len(texts), texts)
    batches = length_batches([len(ids) for ids, _ in rows], batch_size, max_tokens)
    mine = [(b, [rows[i] for i in b]) for b in batches[rank::world]]
    if batches and len(mine) < -(-len(batches) // world):
        mine.append(([-1], [rows[batches[-1][-1]]]))  # the shortest row; its embedding is dropped
    return mine


def eval_batches(split: RetrievalSplit, style: InstructionStyle, collator: TextCollator, batch_size: int,
                 max_tokens: int | None = None, rank: int = 0, world: int = 1) -> tuple[list, list]:
    """This rank's query batches and corpus batches (row = position in split.queries / split.corpus)."""
    q_prefix = style.query_prefix(split.task, split.task_kind)
    d_prefix = style.document_prefix(split.task, split.task_kind)
    return (shard_batches(list(split.queries.values()), q_prefix, collator, batch_size, max_tokens, rank, world),
            shard_batches(list(split.corpus.values()), d_prefix, collator, batch_size, max_tokens, rank, world))


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning can checkpoint mid-epoch (it is `_Stateful`): saves (epoch, batches trained)."""

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches_done": self._batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume(state["epoch"], state["batches_done"])


class ContrastiveDataModule(L.LightningDataModule):
    def __init__(self, name: str, sources: dict[str, TrainSource], collator: TextCollator,
                 instruction_style: InstructionStyle, batch_size: int = 32, negatives_per_query: int = 1,
                 single_source_batches: bool = True, dev: BeirSplit | None = None, test: BeirSplit | None = None,
                 eval_batch_size: int = 64, num_workers: int = 0, seed: int = 0, max_length: int = 512,
                 cache_dir: str = ".cache/data", pretokenize: bool = False,
                 extra_tests: dict[str, BeirSplit] | None = None,
                 eval_max_tokens: int | None = None) -> None:
        super().__init__()
        if not any(s is not None for s in (sources or {}).values()):
            raise ConfigError("data.sources is empty: configure at least one training source")
        if not isinstance(negatives_per_query, int) or negatives_per_query < 0:
            raise ConfigError(f"data.negatives_per_query must be an integer >= 0, got {negatives_per_query!r}")
        # a config may switch a source off with null (data=full replaces msmarco by msmarco_passage: issue 12 item 5)
        sources = {k: v for k, v in sources.items() if v is not None}
        self.name, self.sources, self.collator, self.style = name, sources, collator, instruction_style
        self.batch_size, self.negatives_per_query = batch_size, negatives_per_query
        self.single_source_batches, self.seed = single_source_batches, seed
        self.split_specs = {"val": dev, "test": test}
        # issue 12 item 6 (transfer): more test splits, logged as test_<name>/<metric> (e.g. another domain, or the
        # test split asked with a reworded instruction)
        self.split_specs |= {f"test_{name}": spec for name, spec in (extra_tests or {}).items() if spec is not None}
        self.eval_batch_size, self.eval_max_tokens, self.num_workers = eval_batch_size, eval_max_tokens, num_workers
        self.max_length = max_length  # the collator was built with it; kept for the record
        self.cache_dir, self.pretokenize = cache_dir, pretokenize
        self.dataset: MixtureDataset | None = None
        self.splits: dict[str, RetrievalSplit] = {}

    def check(self, world_size: int = 1, build: bool = True) -> None:
        """Fail fast, before any model is loaded: a configured file missing; with build, also a file without
        examples, a bad kind_ratios or a source smaller than one global batch (batch_size * world_size): the tables
        are built here (once: prepare_data then finds them cached)."""
        for source in self.sources.values():
            source.check()
        for spec in self.split_specs.values():
            if spec is not None:
                spec.check()
        if build:
            parts = self.parts(tokens=False)
            check_sizes([len(p) for p in parts], [p.ratio for p in parts], self.batch_size, world_size,
                        self.single_source_batches, [p.name for p in parts])

    def prepare_data(self) -> None:
        """Parse every source into its Arrow cache (Lightning runs this on local rank 0; the others wait)."""
        for source in self.sources.values():
            self._table(source)

    def _table(self, source: TrainSource, tokens: bool = True) -> ExampleTable:
        """Memory-map the source's table, building it (and its tokens, with data.pretokenize) if not cached yet."""
        folder = ensure_built(source, self.cache_dir)
        table = source.open(folder)
        return pretokenize(table, folder, self.collator, self.style) if self.pretokenize and tokens else table

    def parts(self, tokens: bool = True) -> list[Part]:
        """Memory-map each source's table and split it into its sampling parts (e.g. one per synthetic kind)."""
        parts = []
        for name, source in self.sources.items():
            table = self._table(source, tokens)  # built already unless prepare_data was skipped
            if len(table) == 0:
                raise ConfigError(f"data source '{name}' produced no training examples")
            split = source.parts(table) if hasattr(source, "parts") else [(name, None, 1.0)]
            ratio = source.ratio if source.ratio is not None else float(len(table))
            total = sum(w for _, _, w in split)
            for part_name, rows, weight in split:
                part = Part(part_name, table, rows, ratio * weight / total if total else 0.0)
                missing = int(np.clip(self.negatives_per_query - part.table.negative_counts()[
                    slice(None) if rows is None else rows], 0, None).sum())
                if missing:
                    log.warning("source %s: %d hard negatives were missing; filled with other examples' positives "
                                "from the same source", part_name, missing)
                log.info("source %s: %d training examples, sampling weight %.3g", part_name, len(part), part.ratio)
                parts.append(part)
        return parts

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.dataset is None:
            self.dataset = MixtureDataset(self.parts(), self.negatives_per_query, self.seed)
            self.record_sources()
        for stage_name, spec in self.split_specs.items():
            if spec is not None and stage_name not in self.splits and stage in (None, "fit", "validate", "test"):
                self.splits[stage_name] = spec.load()

    def record_sources(self) -> None:
        """<run folder>/data_sources.json: per sampling part, the examples used and the share of batches drawn
        from it (rank 0; the run folder is the trainer's default_root_dir)."""
        trainer = self.trainer
        if trainer is None or trainer.global_rank != 0:
            return
        total = sum(p.ratio for p in self.dataset.parts) or 1.0
        record = {p.name: {"examples": len(p), "share_of_batches": round(p.ratio / total, 6)}
                  for p in self.dataset.parts}
        out = Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "data_sources.json").write_text(json.dumps(record, indent=1))

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        parts = self.dataset.parts
        sampler = MixtureBatchSampler([len(p) for p in parts], [p.ratio for p in parts], self.batch_size,
                                      self.single_source_batches, self.seed, rank, world, [p.name for p in parts])

        def batches_done() -> int:
            return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0

        return ResumableDataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                   collate_fn=PairCollator(self.collator, self.style), batches_done=batches_done)

    def eval_loaders(self, stage: str, rank: int = 0, world: int = 1) -> list[DataLoader]:
        split = self.splits.get(stage)
        if split is None:
            return []
        if world > 1:
            log.info("%s: each of %d ranks encodes 1/%d of the %d queries and %d documents", stage, world, world,
                     len(split.queries), len(split.corpus))
        return [DataLoader(batches, batch_size=None, num_workers=self.num_workers,
                           collate_fn=EvalCollator(self.collator))
                for batches in eval_batches(split, self.style, self.collator, self.eval_batch_size,
                                            self.eval_max_tokens, rank, world)]

    def eval_splits(self, stage: str) -> list[tuple[str, RetrievalSplit]]:
        """(metric prefix, split) for a stage: loaders 2k and 2k+1 hold split k's queries and corpus."""
        return [(name, split) for name, split in self.splits.items() if name.split("_")[0] == stage]

    def val_dataloader(self) -> list[DataLoader]:
        return self.eval_loaders("val", *self._rank())

    def test_dataloader(self) -> list[DataLoader]:
        return [loader for name, _ in self.eval_splits("test") for loader in self.eval_loaders(name, *self._rank())]
