"""InfoNCE over in-batch and hard negatives (E5-mistral, eq. 2), on cosine similarity with temperature tau.

For query i with positive d_i^+ and the batch's documents D = {d_1^+..d_B^+} U {hard negatives of every query}:

    L_i = -log( exp(cos(q_i, d_i^+) / tau) / sum_{d in D} exp(cos(q_i, d) / tau) )
    L   = mean_i L_i

Shapes: queries (B, D), positives (B, D), negatives (M, D) with M = B * N for N hard negatives per query (any M,
including 0). Embeddings need not be normalised; the loss normalises them. Distributed convention: this is the
local loss over whatever the caller passes; gathering across devices is the caller's business.

    python -m embed_lm.train loss=infonce loss.temperature=0.02
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce_loss(queries: Tensor, positives: Tensor, negatives: Tensor | None, temperature: float = 0.02) -> Tensor:
    q = F.normalize(queries.float(), dim=-1)  # (B, D)
    docs = positives if negatives is None or negatives.numel() == 0 else torch.cat([positives, negatives])
    d = F.normalize(docs.float(), dim=-1)  # (B + M, D)
    logits = q @ d.T / temperature  # (B, B + M)
    labels = torch.arange(q.size(0), device=q.device)  # positive of query i sits in column i
    return F.cross_entropy(logits, labels)


class InfoNCELoss:
    """Callable config wrapper: `loss/infonce.yaml` -> InfoNCELoss(temperature=0.02)."""

    def __init__(self, temperature: float = 0.02) -> None:
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def __call__(self, queries: Tensor, positives: Tensor, negatives: Tensor | None) -> Tensor:
        return info_nce_loss(queries, positives, negatives, self.temperature)

    def __repr__(self) -> str:
        return f"InfoNCELoss(temperature={self.temperature})"
