"""Cached InfoNCE (GradCache, Gao et al. 2021): InfoNCE over a large batch with the activation memory of a small one.

    python -m embed_lm.train loss=cached_infonce loss.mini_batch_size=32 data.batch_size=2048
    python -m embed_lm.train loss=cached_infonce loss.mini_batch_tokens=8192 data.batch_size=2048  # token budget
    python -m embed_lm.train loss=cached_infonce loss.mini_batch_tokens=null    # 32-row chunks, no token budget

One training step, for queries (B, L) and documents (M, L):
0. sort the queries, and apart from them the documents, by real length and cut them into chunks of at most
   `mini_batch_size` sequences and at most `mini_batch_tokens` padded tokens (default auto: CPU 1024, GPU 16384,
   length_batching.AUTO_TOKENS), each trimmed to its own longest row (embed_lm/model/length_batching.py): a
   chunk of short texts runs short;
1. embed every chunk without a graph, saving the RNG state before each chunk;
2. put the embeddings back in input order and compute InfoNCELoss (same formula, same cross-device convention)
   on them as leaf tensors, backpropagating to them: g = dL/d embedding, (B, D) and (M, D);
3. re-embed each chunk with a graph, RNG replayed so dropout masks equal step 1's, and backpropagate its rows of g.
Parameter gradients equal the plain loss's on the same forward passes (tested); peak activations are one chunk's.

The step runs its own backward passes, so the LightningModule uses manual optimisation for it and averages
gradients across ranks itself (embed_lm.model.distributed.average_gradients). Refused at start-up: fp16 autocast (it
would need loss scaling), FSDP and DeepSpeed (they reduce gradients inside each backward pass), gradient
accumulation (use a larger batch: that is what this loss is for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from embed_lm.model.collator import TokenizedBatch
from embed_lm.model.length_batching import length_chunks, restore_order
from embed_lm.training.losses.infonce import InfoNCELoss, check_chunking


def split_batch(batch: TokenizedBatch, size: int | None, tokens: int | str | None = None
                ) -> list[tuple[Tensor, TokenizedBatch]]:
    """(row indices (b,), chunk (b, l)) pairs: rows sorted by real length, at most `size` rows and `tokens` tokens
    a chunk, each chunk trimmed to its longest row."""
    return length_chunks(batch, size, tokens)


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
    """`loss/cached_infonce.yaml`: InfoNCELoss + `mini_batch_size` and `mini_batch_tokens` (at most that many rows
    and padded tokens per chunk; tokens "auto" = a budget for the device), used through `backward_step`."""

    def __init__(self, temperature: float = 0.02, mini_batch_size: int = 32,
                 gather_across_devices: bool | str = "auto", local_loss: bool = True,
                 mini_batch_tokens: int | str | None = None) -> None:
        super().__init__(temperature, gather_across_devices, local_loss)
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) or mini_batch_size < 1:
            raise ValueError(f"loss.mini_batch_size must be an integer >= 1, got {mini_batch_size!r}")
        check_chunking("mini_batch_tokens", mini_batch_tokens, auto=True)
        self.mini_batch_size, self.mini_batch_tokens = mini_batch_size, mini_batch_tokens

    def chunks(self, batch: TokenizedBatch) -> list[tuple[Tensor, TokenizedBatch]]:
        return split_batch(batch, self.mini_batch_size, self.mini_batch_tokens)

    def backward_step(self, embed: Callable[[TokenizedBatch], Tensor], queries: TokenizedBatch,
                      documents: TokenizedBatch, replay_rng: bool = True, mask: Tensor | None = None) -> Tensor:
        """Accumulate the loss's parameter gradients into .grad; return the (detached) loss."""
        q_chunks, d_chunks = self.chunks(queries), self.chunks(documents)
        states, cached = [], []
        with torch.no_grad():
            for _, chunk in q_chunks + d_chunks:
                states.append(rng_state())
                cached.append(embed(chunk))  # (b, D)
        n_q = len(q_chunks)
        q = restore_order(cached[:n_q], [i for i, _ in q_chunks]).detach().requires_grad_()  # (B, D) input order
        d = restore_order(cached[n_q:], [i for i, _ in d_chunks]).detach().requires_grad_()  # (M, D)
        B = q.size(0)
        with torch.enable_grad():
            loss = self(q, d[:B], d[B:], mask=mask)
        loss.backward()
        grads = [q.grad[i.to(q.device)] for i, _ in q_chunks] + [d.grad[i.to(d.device)] for i, _ in d_chunks]
        for (_, chunk), state, grad in zip(q_chunks + d_chunks, states, grads):  # grad (b, D): the chunk's rows
            if replay_rng:
                with replayed_rng(state):
                    emb = embed(chunk)  # (b, D), with graph
            else:
                emb = embed(chunk)
            emb.backward(grad.to(emb.dtype))
        return loss.detach()

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + (f", mini_batch_size={self.mini_batch_size}, "
                                          f"mini_batch_tokens={self.mini_batch_tokens})")
