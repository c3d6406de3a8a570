"""InfoNCE over in-batch and hard negatives (E5-mistral, eq. 2), on cosine similarity with temperature tau.

For query i with positive d_i^+ and the batch's documents D = {d_1^+..d_B^+} U {hard negatives of every query}:

    L_i = -log( exp(cos(q_i, d_i^+) / tau) / sum_{d in D} exp(cos(q_i, d) / tau) )
    L   = mean_i L_i

Shapes: queries (B, D), positives (B, D), negatives (M, D) with M = B * N for N hard negatives per query (any M,
including 0). Embeddings need not be normalised; the loss normalises them.

Across devices (gather_across_devices=auto, the default: on whenever world size W > 1; true/false force it): D
becomes the documents of all W ranks (W*B positives, W*M negatives), gathered with gradients by
embed_lm.model.distributed.gather_with_grad. local_loss=true (default) scores only this rank's queries, positive
of local query i at global column rank*B + i; local_loss=false gathers the queries too and every rank computes the
full W*B-query loss (same gradients after DDP's averaging, W times the logits work).
See embed_lm/model/distributed.py for why the gradients equal the single-process loss on the concatenated batch.

Duplicates (optional `mask`, (B, P + M) bool, True = not a negative for that query): a document whose text equals
query i's positive, and the positive of another query with i's own text, are left out of i's denominator (their
logits become -inf); the label column is never masked. `InfoNCELoss.duplicate_mask(query_ids, doc_ids)` builds it
from the collator's 64-bit text ids, gathered across ranks exactly as the embeddings are.

    python -m embed_lm.train loss=infonce loss.temperature=0.02 trainer=ddp     # gathers (auto: world size > 1)
    python -m embed_lm.train ... trainer=ddp loss.gather_across_devices=false     # each rank: its own negatives only

`micro_batch_size` / `micro_batch_tokens` are read by the training step, not by the loss: the queries and documents
are embedded as length-sorted micro-batches of at most that many rows and that many padded tokens, each trimmed to
its longest row and keeping its graph (embed_lm/model/length_batching.py). The default, micro_batch_tokens=auto,
is a budget chosen from the device (CPU 1024, GPU 16384; length_batching.AUTO_TOKENS); both null = one padded
pass. The embeddings, loss and gradients equal one padded pass (tested); the padding computed shrinks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from embed_lm.model.distributed import gather_with_grad, world


def info_nce_loss(queries: Tensor, positives: Tensor, negatives: Tensor | None, temperature: float = 0.02,
                  label_offset: int = 0, mask: Tensor | None = None) -> Tensor:
    """Positive of query i at column label_offset + i of cat(positives, negatives); mask (B, P + M) drops columns."""
    q = F.normalize(queries.float(), dim=-1)  # (B, D)
    docs = positives if negatives is None or negatives.numel() == 0 else torch.cat([positives, negatives])
    d = F.normalize(docs.float(), dim=-1)  # (P + M, D)
    logits = q @ d.T / temperature  # (B, P + M)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))  # (B, P + M)
    labels = label_offset + torch.arange(q.size(0), device=q.device)  # (B,)
    return F.cross_entropy(logits, labels)


def duplicate_mask(query_ids: Tensor, column_query_ids: Tensor, doc_ids: Tensor, label_offset: int = 0) -> Tensor:
    """(B, P + M) bool, True where column j is no negative for query i: doc_ids[j] equals the id of i's positive,
    or j < P is the positive of a query with i's id. query_ids (B,), column_query_ids (P,), doc_ids (P + M,)."""
    B, P = query_ids.size(0), column_query_ids.size(0)
    labels = label_offset + torch.arange(B, device=query_ids.device)  # (B,)
    mask = doc_ids[None, :] == doc_ids[labels][:, None]  # (B, P + M)
    mask[:, :P] |= column_query_ids[None, :] == query_ids[:, None]  # (B, P)
    mask[torch.arange(B, device=mask.device), labels] = False
    return mask


def parse_gather(value: bool | str) -> bool | str:
    """loss.gather_across_devices: True, False or "auto" (on when more than one process trains)."""
    if isinstance(value, bool):
        return value
    if str(value).lower() == "auto":
        return "auto"
    raise ValueError(f"loss.gather_across_devices must be auto, true or false, got {value!r}")


def check_chunking(name: str, value: int | str | None, auto: bool = False) -> None:
    """loss.<name>: an integer >= 1, null, or (token budgets) auto."""
    if value is None or auto and str(value).lower() == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"loss.{name} must be an integer >= 1{', auto' if auto else ''} or null, got {value!r}")


class InfoNCELoss:
    """Callable config wrapper: `loss/infonce.yaml` -> InfoNCELoss(temperature=0.02, ...)."""

    def __init__(self, temperature: float = 0.02, gather_across_devices: bool | str = "auto", local_loss: bool = True,
                 micro_batch_size: int | None = None, micro_batch_tokens: int | str | None = None) -> None:
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        check_chunking("micro_batch_size", micro_batch_size)
        check_chunking("micro_batch_tokens", micro_batch_tokens, auto=True)
        self.temperature, self.local_loss = temperature, local_loss
        self.gather_setting = parse_gather(gather_across_devices)
        self.micro_batch_size, self.micro_batch_tokens = micro_batch_size, micro_batch_tokens

    @property
    def gather(self) -> bool:
        """Whether this call gathers: the explicit setting, or (auto) world size > 1."""
        return world()[1] > 1 if self.gather_setting == "auto" else self.gather_setting

    def negative_pool(self, n_queries: int, n_documents: int) -> str:
        """One line for the start-up log: the pool each query is scored against, per rank and across ranks."""
        _, size = world()
        if not self.gather:
            why = "loss.gather_across_devices=false" if size > 1 else "one process"
            return (f"negatives: per rank only ({why}): {n_queries} queries x {n_documents} documents per rank"
                    f"{'' if size == 1 else f', world size {size}'}")
        return (f"cross-device negatives: on (loss.gather_across_devices={self.gather_setting}, world size {size}): "
                f"global pool {size * n_queries} queries x {size * n_documents} documents "
                f"({n_queries} x {n_documents} per rank)")

    def __call__(self, queries: Tensor, positives: Tensor, negatives: Tensor | None, mask: Tensor | None = None
                 ) -> Tensor:
        if not self.gather:
            return info_nce_loss(queries, positives, negatives, self.temperature, mask=mask)
        rank, _ = world()
        positives = gather_with_grad(positives)  # (W*B, D)
        negatives = None if negatives is None else gather_with_grad(negatives)  # (W*M, D)
        if self.local_loss:
            return info_nce_loss(queries, positives, negatives, self.temperature, label_offset=rank * queries.size(0),
                                 mask=mask)
        return info_nce_loss(gather_with_grad(queries), positives, negatives, self.temperature, mask=mask)

    def duplicate_mask(self, query_ids: Tensor, doc_ids: Tensor) -> Tensor:
        """This rank's query_ids (B,) and doc_ids (B + M,) -> the `mask` for __call__, (B or W*B, P + M)."""
        B = query_ids.size(0)
        if not self.gather:
            return duplicate_mask(query_ids, query_ids, doc_ids)
        rank, _ = world()
        all_queries = gather_with_grad(query_ids)  # (W*B,)
        columns = torch.cat([gather_with_grad(doc_ids[:B]), gather_with_grad(doc_ids[B:])])  # (W*B + W*M,)
        if self.local_loss:
            return duplicate_mask(query_ids, all_queries, columns, label_offset=rank * B)
        return duplicate_mask(all_queries, all_queries, columns)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(temperature={self.temperature}, gather_across_devices={self.gather_setting}, "
                f"local_loss={self.local_loss}" + ("" if self.micro_batch_size is None and self.micro_batch_tokens
                                                   is None else f", micro_batch_size={self.micro_batch_size}, "
                                                   f"micro_batch_tokens={self.micro_batch_tokens}") + ")")
