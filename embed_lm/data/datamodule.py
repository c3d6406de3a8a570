"""ContrastiveDataModule: training pairs from several sources + retrieval dev/test splits, tokenized by the
backbone's TextCollator with the chosen instruction style.

    python -m embed_lm.train data=sample               # bundled Debian sample (synthetic + MS-MARCO formats)
    python -m embed_lm.train data=msmarco_only data.sources.msmarco.collection=/data/msmarco/collection.tsv

Training batch (dict): queries TokenizedBatch (B, L) and documents TokenizedBatch (M, L), M = B * (1 + N): the B
positives first, then each query's N hard negatives in query order. Every example gets exactly N negatives: extra
ones are dropped, missing ones are filled with other examples' positives from the same source (counted, logged).
Eval batch: (indices (b,), TokenizedBatch) over queries (dataloader 0) and corpus (dataloader 1), cut as `encode`
cuts them (embed_lm/embedder.py `length_batches`: tokenized once, sorted by exact token count, eval_batch_size rows
or eval_max_tokens a batch). With W ranks each rank gets batches rank, rank + W, ... (every rank tokenizes the split,
which is cheap; the encoding is split W ways) and the module gathers the rows; ranks with one batch fewer get a
one-row filler batch of index -1, so every rank runs the same number of forward passes (FSDP needs that).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader

from embed_lm.embedder import length_batches
from embed_lm.model.collator import TextCollator, TokenizedBatch
from embed_lm.data.beir import BeirSplit, RetrievalSplit
from embed_lm.data.records import TrainExample
from embed_lm.data.sampler import MixtureBatchSampler
from embed_lm.model.instructions import InstructionStyle

log = logging.getLogger(__name__)


class TrainSource(Protocol):
    name: str
    ratio: float | None

    def check(self) -> None: ...

    def load(self) -> list[TrainExample]: ...


def fix_negative_count(examples: list[TrainExample], n: int, rng: random.Random) -> tuple[list[TrainExample], int]:
    """Give every example exactly n negatives; returns the examples and how many negatives were filled randomly."""
    filled, out = 0, []
    for i, ex in enumerate(examples):
        negatives = list(ex.negatives[:n])
        while len(negatives) < n and len(examples) > 1:
            j = rng.randrange(len(examples) - 1)
            negatives.append(examples[j + (j >= i)].positive)
            filled += 1
        out.append(replace(ex, negatives=tuple(negatives)))
    return out, filled


class PairCollator:
    def __init__(self, collator: TextCollator, style: InstructionStyle) -> None:
        self.collator, self.style = collator, style

    def __call__(self, examples: list[TrainExample]) -> dict[str, TokenizedBatch]:
        queries = self.collator([self.style.query_prefix(e.task, e.task_kind) for e in examples],
                                [e.query for e in examples])  # (B, Lq)
        docs = [e.positive for e in examples] + [n for e in examples for n in e.negatives]
        doc_prefixes = [self.style.document_prefix(e.task, e.task_kind) for e in examples]
        doc_prefixes += [p for e, p in zip(examples, doc_prefixes) for _ in e.negatives]
        return {"queries": queries, "documents": self.collator(doc_prefixes, docs)}  # documents (M, Ld)


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
                 eval_max_tokens: int | None = None) -> None:
        super().__init__()
        if not sources:
            raise ValueError("data.sources is empty: configure at least one training source")
        self.name, self.sources, self.collator, self.style = name, dict(sources), collator, instruction_style
        self.batch_size, self.negatives_per_query = batch_size, negatives_per_query
        self.single_source_batches, self.seed = single_source_batches, seed
        self.split_specs = {"val": dev, "test": test}
        self.eval_batch_size, self.eval_max_tokens, self.num_workers = eval_batch_size, eval_max_tokens, num_workers
        self.max_length = max_length  # the collator was built with it; kept for the record
        self.examples: list[TrainExample] = []
        self.sizes: list[int] = []
        self.splits: dict[str, RetrievalSplit] = {}

    def check(self) -> None:
        """Fail fast, before any model is loaded, if a configured file is missing."""
        for source in self.sources.values():
            source.check()
        for spec in self.split_specs.values():
            if spec is not None:
                spec.check()

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not self.examples:
            rng = random.Random(self.seed)
            for name, source in self.sources.items():
                examples, filled = fix_negative_count(source.load(), self.negatives_per_query, rng)
                if not examples:
                    raise ValueError(f"data source '{name}' produced no training examples")
                if filled:
                    log.warning("source %s: %d hard negatives were missing; filled them with other examples' "
                                "positives from the same source", name, filled)
                log.info("source %s: %d training examples", name, len(examples))
                self.examples += examples
                self.sizes.append(len(examples))
        for stage_name, spec in self.split_specs.items():
            if spec is not None and stage_name not in self.splits and stage in (None, "fit", "validate", "test"):
                self.splits[stage_name] = spec.load()

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        ratios = [s.ratio if s.ratio is not None else n for s, n in zip(self.sources.values(), self.sizes)]
        sampler = MixtureBatchSampler(self.sizes, ratios, self.batch_size, self.single_source_batches, self.seed,
                                      rank, world)

        def batches_done() -> int:
            return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0

        return ResumableDataLoader(self.examples, batch_sampler=sampler, num_workers=self.num_workers,
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

    def val_dataloader(self) -> list[DataLoader]:
        return self.eval_loaders("val", *self._rank())

    def test_dataloader(self) -> list[DataLoader]:
        return self.eval_loaders("test", *self._rank())
