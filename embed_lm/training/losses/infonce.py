"""InfoNCE over in-batch and hard negatives (E5-mistral, eq. 2), on cosine similarity with temperature tau.

For query i with positive d_i^+ and the batch's documents D = {d_1^+..d_B^+} U {hard negatives of every query}:

    L_i = -log( exp(cos(q_i, d_i^+) / tau) / sum_{d in D} exp(cos(q_i, d) / tau) )
    L   = mean_i L_i

Shapes: queries (B, D), positives (B, D), negatives (M, D) with M = B * N for N hard negatives per query (any M,
including 0). Embeddings need not be normalised; the loss normalises them.

Across devices (gather_across_devices=true): D becomes the documents of all W ranks (W*B positives, W*M negatives),
gathered with gradients by embed_lm.training.distributed.gather_with_grad. local_loss=true (default) scores only this
rank's queries, positive of local query i at global column rank*B + i; local_loss=false gathers the queries too
and every rank computes the full W*B-query loss (same gradients after DDP's averaging, W times the logits work).
See embed_lm/training/distributed.py for why the gradients equal the single-process loss on the concatenated batch.

    python -m embed_lm.train loss=infonce loss.temperature=0.02 loss.gather_across_devices=true

`micro_batch_size` / `micro_batch_tokens` (default null: one padded pass) are read by the training step, not by
the loss: the queries and documents are then embedded as length-sorted micro-batches of that many rows (or that
many padded tokens), each trimmed to its longest row and keeping its graph (embed_lm/model/length_batching.py).
The embeddings, loss and gradients equal one padded pass (tested); the padding computed shrinks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from embed_lm.training.distributed import gather_with_grad, world


def info_nce_loss(queries: Tensor, positives: Tensor, negatives: Tensor | None, temperature: float = 0.02,
                  label_offset: int = 0) -> Tensor:
    """Positive of query i at column label_offset + i of cat(positives, negatives)."""
    q = F.normalize(queries.float(), dim=-1)  # (B, D)
    docs = positives if negatives is None or negatives.numel() == 0 else torch.cat([positives, negatives])
    d = F.normalize(docs.float(), dim=-1)  # (P + M, D)
    logits = q @ d.T / temperature  # (B, P + M)
    labels = label_offset + torch.arange(q.size(0), device=q.device)  # (B,)
    return F.cross_entropy(logits, labels)


class InfoNCELoss:
    """Callable config wrapper: `loss/infonce.yaml` -> InfoNCELoss(temperature=0.02, ...)."""

    def __init__(self, temperature: float = 0.02, gather_across_devices: bool = False, local_loss: bool = True,
                 micro_batch_size: int | None = None, micro_batch_tokens: int | None = None) -> None:
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        for name, value in (("micro_batch_size", micro_batch_size), ("micro_batch_tokens", micro_batch_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"loss.{name} must be >= 1 or null, got {value}")
        self.temperature, self.gather, self.local_loss = temperature, gather_across_devices, local_loss
        self.micro_batch_size, self.micro_batch_tokens = micro_batch_size, micro_batch_tokens

    def __call__(self, queries: Tensor, positives: Tensor, negatives: Tensor | None) -> Tensor:
        if not self.gather:
            return info_nce_loss(queries, positives, negatives, self.temperature)
        rank, _ = world()
        positives = gather_with_grad(positives)  # (W*B, D)
        negatives = None if negatives is None else gather_with_grad(negatives)  # (W*M, D)
        if self.local_loss:
            return info_nce_loss(queries, positives, negatives, self.temperature, label_offset=rank * queries.size(0))
        return info_nce_loss(gather_with_grad(queries), positives, negatives, self.temperature)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(temperature={self.temperature}, gather_across_devices={self.gather}, "
                f"local_loss={self.local_loss}" + ("" if self.micro_batch_size is None and self.micro_batch_tokens
                                                   is None else f", micro_batch_size={self.micro_batch_size}, "
                                                   f"micro_batch_tokens={self.micro_batch_tokens}") + ")")
