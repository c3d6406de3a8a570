"""Top-1 accuracy of an Embedder on one passkey task (one context length).

    metrics = evaluate_task(embedder, task, instruction="Given a question about ...", max_tokens=65536)

Queries get the embedder's instruction style (natural: "Instruct: {instruction}\\nQuery: {query}"); documents get
none. All documents of a length are encoded as one bucket, batched by a token budget (max_tokens tokens per batch,
so one 32k-token document, or 128 of 256 tokens, per 64k batch), under torch.inference_mode (Embedder). Each query
is scored by cosine against its own candidates; a hit is the positive ranked first (ties go to the lower index, so
a model that cannot tell documents apart scores about 1 / n_candidates, the positives sitting at random indices).
Shapes: Q queries, C candidates per query, N documents, D embedding size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from embed_lm.errors import ConfigError
from embed_lm.inference.embedder import Embedder
from embed_lm.passkey.generate import Document, Task


def top1_hits(queries: Tensor, docs: Tensor, candidates: Tensor, positive: Tensor) -> Tensor:
    """queries (Q, D), docs (N, D), candidates (Q, C) doc indices, positive (Q,) doc index -> hits (Q,) bool."""
    scores = torch.einsum("qd,qcd->qc", queries, docs[candidates])  # (Q, C)
    best = candidates.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)  # (Q,)
    return best == positive


class _Texts(Sequence):
    """Document texts rendered on demand (5,000 documents of 32k tokens would hold ~650 MB of strings)."""

    def __init__(self, docs: list[Document]) -> None:
        self.docs = docs

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i):
        return self.docs[i].text


def evaluate_task(embedder: Embedder, task: Task, instruction: str, max_tokens: int, progress=None) -> dict:
    """accuracy, n_correct, n_queries, mean_tokens, seconds and docs_per_s for one length."""
    longest = max(d.n_tokens for d in task.docs)
    if longest > embedder.collator.max_length:
        raise ConfigError(f"documents of {longest} tokens exceed the embedder's max_length "
                         f"{embedder.collator.max_length}; load it with max_length >= the longest passkey length")
    start = time.perf_counter()
    doc_emb = embedder.encode_documents(_Texts(task.docs), max_tokens=max_tokens, progress=progress)  # (N, D)
    doc_s = time.perf_counter() - start
    q_emb = embedder.encode_queries([q.text for q in task.queries], task=instruction)  # (Q, D)
    candidates = torch.tensor([q.candidates for q in task.queries])  # (Q, C)
    positive = torch.tensor([q.positive for q in task.queries])  # (Q,)
    hits = top1_hits(q_emb, doc_emb, candidates, positive)  # (Q,)
    return dict(accuracy=int(hits.sum()) / len(task.queries), n_correct=int(hits.sum()), n_queries=len(task.queries),
                mean_tokens=sum(d.n_tokens for d in task.docs) / len(task.docs),
                seconds=time.perf_counter() - start, docs_per_s=len(task.docs) / max(doc_s, 1e-9))
