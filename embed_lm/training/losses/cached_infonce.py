"""Cached InfoNCE (GradCache, Gao et al. 2021): InfoNCE over a large batch with the activation memory of a small one.

    python -m embed_lm.train loss=cached_infonce loss.mini_batch_size=32 data.batch_size=2048

One training step, for queries (B, L) and documents (M, L):
1. embed every chunk of `mini_batch_size` sequences without a graph, saving the RNG state before each chunk;
2. compute InfoNCELoss (same formula, same cross-device convention) on those embeddings as leaf tensors and
   backpropagate to them: g = dL/d embedding, (B, D) and (M, D);
3. re-embed each chunk with a graph, RNG replayed so dropout masks equal step 1's, and backpropagate g_chunk.
Parameter gradients equal the plain loss's on the same forward passes (tested); peak activations are one chunk's.

The step runs its own backward passes, so the LightningModule uses manual optimisation for it and averages
gradients across ranks itself (embed_lm.training.distributed.average_gradients). Refused at start-up: fp16 autocast (it
would need loss scaling), FSDP and DeepSpeed (they reduce gradients inside each backward pass), gradient
accumulation (use a larger batch: that is what this loss is for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from embed_lm.model.collator import TokenizedBatch
from embed_lm.training.losses.infonce import InfoNCELoss


def split_batch(batch: TokenizedBatch, size: int) -> list[TokenizedBatch]:
    return [TokenizedBatch(batch.input_ids[i:i + size], batch.attention_mask[i:i + size],
                           batch.instruction_mask[i:i + size]) for i in range(0, len(batch), size)]


def rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []


@contextmanager
def replayed_rng(state: tuple) -> Iterator[None]:
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        torch.set_rng_state(state[0])
        if state[1]:
            torch.cuda.set_rng_state_all(state[1])
        yield


class CachedInfoNCELoss(InfoNCELoss):
    """`loss/cached_infonce.yaml`: InfoNCELoss + `mini_batch_size`, used through `backward_step`."""

    def __init__(self, temperature: float = 0.02, mini_batch_size: int = 32,
                 gather_across_devices: bool | str = "auto", local_loss: bool = True) -> None:
        super().__init__(temperature, gather_across_devices, local_loss)
        if mini_batch_size < 1:
            raise ValueError(f"loss.mini_batch_size must be >= 1, got {mini_batch_size}")
        self.mini_batch_size = mini_batch_size

    def backward_step(self, embed: Callable[[TokenizedBatch], Tensor], queries: TokenizedBatch,
                      documents: TokenizedBatch, replay_rng: bool = True, mask: Tensor | None = None) -> Tensor:
        """Accumulate the loss's parameter gradients into .grad; return the (detached) loss."""
        chunks = split_batch(queries, self.mini_batch_size) + split_batch(documents, self.mini_batch_size)
        states, cached = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(rng_state())
                cached.append(embed(chunk))  # (b, D)
        n_q = len(split_batch(queries, self.mini_batch_size))
        q = torch.cat(cached[:n_q]).detach().requires_grad_()  # (B, D)
        d = torch.cat(cached[n_q:]).detach().requires_grad_()  # (M, D)
        B = q.size(0)
        with torch.enable_grad():
            loss = self(q, d[:B], d[B:], mask=mask)
        loss.backward()
        grads = list(q.grad.split([len(c) for c in chunks[:n_q]])) + list(d.grad.split([len(c) for c in chunks[n_q:]]))
        for chunk, state, grad in zip(chunks, states, grads):
            if replay_rng:
                with replayed_rng(state):
                    emb = embed(chunk)  # (b, D), with graph
            else:
                emb = embed(chunk)
            emb.backward(grad.to(emb.dtype))
        return loss.detach()

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", mini_batch_size={self.mini_batch_size})"
