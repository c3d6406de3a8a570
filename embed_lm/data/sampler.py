"""MixtureBatchSampler: batches over several training sources with per-source sampling ratios.

With single_source=True (default) every global batch comes from one source, chosen with probability equal to its
ratio, so in-batch negatives stay meaningful (a retrieval query is not contrasted with STS sentences). With
single_source=False, each example's source is drawn independently.

Distributed: a global batch of B * W examples is drawn once per step from a generator seeded by (seed, epoch), the
same on every rank; rank r takes slice [r*B, (r+1)*B). Resumable: `resume(epoch, batches_done)` replays the same
epoch and skips what was already trained on.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class MixtureBatchSampler(Sampler[list[int]]):
    def __init__(self, sizes: list[int], ratios: list[float] | None, batch_size: int, single_source: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not sizes or min(sizes) <= 0:
            raise ValueError(f"every training source needs at least one example, got sizes {sizes}")
        ratios = list(sizes) if ratios is None else list(ratios)
        if len(ratios) != len(sizes) or min(ratios) < 0 or sum(ratios) <= 0:
            raise ValueError(f"ratios {ratios} must be one non-negative number per source, not all zero")
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
        perms = [torch.randperm(n, generator=g).tolist() for n in self.sizes]
        cursors = [0] * len(self.sizes)

        def take(s: int) -> int:
            if cursors[s] == len(perms[s]):  # source exhausted: reshuffle and go round again
                perms[s], cursors[s] = torch.randperm(self.sizes[s], generator=g).tolist(), 0
            cursors[s] += 1
            return self.offsets[s] + perms[s][cursors[s] - 1]

        for _ in range(len(self)):
            if self.single_source:
                s = int(torch.multinomial(self.ratios, 1, generator=g))
                yield [take(s) for _ in range(self.global_batch)]
            else:
                choice = torch.multinomial(self.ratios, self.global_batch, replacement=True, generator=g).tolist()
                yield [take(s) for s in choice]

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        for i, batch in enumerate(self._global_batches()):
            if i >= skip:
                yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
