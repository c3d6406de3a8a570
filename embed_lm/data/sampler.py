"""MixtureBatchSampler: batches over several training sources with per-source sampling ratios.

With single_source=True (default) every global batch comes from one source, chosen with probability equal to its
ratio, so in-batch negatives stay meaningful (a retrieval query is not contrasted with STS sentences). With
single_source=False, each example's source is drawn independently.

Distributed: a global batch of B * W examples is drawn once per step from a generator seeded by (seed, epoch), the
same on every rank; rank r takes slice [r*B, (r+1)*B). Resumable: `resume(epoch, batches_done)` replays the same
epoch and skips what was already trained on.

No example twice in a global batch: a source smaller than the global batch is refused (single-source batches), and
when a source's pass ends mid-batch its next permutation puts the examples already in the batch last. Each source
keeps one permutation tensor (int64 per example), never a Python list.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from embed_lm.errors import ConfigError


def check_sizes(sizes: list[int], ratios: list[float] | None, batch_size: int, world_size: int = 1,
                single_source: bool = True, names: list[str] | None = None) -> list[float]:
    """ConfigError unless every sampled source can fill one global batch (batch_size * world_size) without
    repeating an example; returns the ratios (sizes when None). The datamodule calls it before any model loads."""
    names = names or [f"#{i}" for i in range(len(sizes))]
    empty = [n for n, s in zip(names, sizes) if s <= 0]
    if not sizes or empty:
        raise ConfigError(f"data source {empty[0] if empty else 'data.sources'!r} has no training examples; every "
                          "training source needs at least one example: remove it from data.sources or give it data")
    ratios = list(sizes) if ratios is None else list(ratios)
    if len(ratios) != len(sizes) or min(ratios) < 0 or sum(ratios) <= 0:
        raise ConfigError(f"ratios {ratios} of {names} must be one non-negative number per source, not all zero "
                          "(data.sources.<name>.ratio)")
    need = batch_size * world_size
    small = [(n, s) for n, s, r in zip(names, sizes, ratios) if r > 0 and s < need] if single_source else (
        [] if sum(s for s, r in zip(sizes, ratios) if r > 0) >= need else [("all sources", sum(sizes))])
    if small:
        raise ConfigError(f"data source {small[0][0]!r} has {small[0][1]} examples, fewer than one global batch "
                          f"of {need} (data.batch_size={batch_size} x {world_size} devices): a batch would hold "
                          "the same example twice (a false negative). Lower data.batch_size, add data, or give "
                          "the source ratio 0")
    return ratios


class MixtureBatchSampler(Sampler[list[int]]):
    def __init__(self, sizes: list[int], ratios: list[float] | None, batch_size: int, single_source: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, names: list[str] | None = None) -> None:
        ratios = check_sizes(sizes, ratios, batch_size, world_size, single_source, names)
        self.sizes, self.batch_size, self.single_source = list(sizes), batch_size, single_source
        self.ratios = torch.tensor(ratios, dtype=torch.double) / sum(ratios)
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.global_batch = batch_size * world_size
        self.epoch, self._skip = 0, 0

    def __len__(self) -> int:
        return max(1, sum(self.sizes) // self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._skip = epoch, 0

    def resume(self, epoch: int, batches_done: int) -> None:
        self.epoch, self._skip = epoch, batches_done

    def _global_batches(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perms = [torch.randperm(n, generator=g) for n in self.sizes]  # (n_s,) each
        cursors = [0] * len(self.sizes)

        def take(s: int, batch: list[int]) -> int:
            if cursors[s] == len(perms[s]):  # source exhausted: reshuffle, this batch's examples last
                perm = torch.randperm(self.sizes[s], generator=g)  # (n_s,)
                taken = torch.tensor([i - self.offsets[s] for i in batch
                                      if self.offsets[s] <= i < self.offsets[s] + self.sizes[s]], dtype=torch.long)
                later = torch.isin(perm, taken)
                perms[s], cursors[s] = torch.cat([perm[~later], perm[later]]), 0
            cursors[s] += 1
            return self.offsets[s] + int(perms[s][cursors[s] - 1])

        for _ in range(len(self)):
            if self.single_source:
                s = int(torch.multinomial(self.ratios, 1, generator=g))
                choice = [s] * self.global_batch
            else:
                choice = self._capped(torch.multinomial(self.ratios, self.global_batch, replacement=True,
                                                        generator=g).tolist())
            batch: list[int] = []
            for s in choice:
                batch.append(take(s, batch))
            yield batch

    def _capped(self, choice: list[int]) -> list[int]:
        """Mixed batches: a source drawn more often than it has examples gives the excess to other sources."""
        counts = [choice.count(s) for s in range(len(self.sizes))]
        if all(c <= n for c, n in zip(counts, self.sizes)):
            return choice
        for s in range(len(counts)):
            for t in range(len(counts)):
                moved = min(counts[s] - self.sizes[s], self.sizes[t] - counts[t])
                if t != s and self.ratios[t] > 0 and moved > 0:
                    counts[s], counts[t] = counts[s] - moved, counts[t] + moved
        return [s for s, c in enumerate(counts) for _ in range(c)]

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        for i, batch in enumerate(self._global_batches()):
            if i >= skip:
                yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
