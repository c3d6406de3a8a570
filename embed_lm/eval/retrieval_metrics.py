"""Retrieval metrics for an embedding model: rank a corpus by cosine similarity and score with torchmetrics.

    nDCG@10, MRR@10, Recall@k (k = 100 by default)

Exact for any corpus size: each query is scored on its top-`depth` documents plus all its relevant documents
(with their true scores), which is all that nDCG@k, MRR@k and Recall@k (k <= depth) can see; queries without a
relevant document are skipped.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

from embed_lm.errors import UserError


def top_k(query_emb: Tensor, corpus_emb: Tensor, k: int, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Top-k (scores, indices) of each query over the corpus, in query chunks: (Q, k), (Q, k)."""
    k = min(k, corpus_emb.size(0))
    scores, indices = [], []
    for start in range(0, query_emb.size(0), chunk):
        sim = query_emb[start:start + chunk] @ corpus_emb.T  # (q, C)
        s, i = sim.topk(k, dim=1)
        scores.append(s)
        indices.append(i)
    return torch.cat(scores), torch.cat(indices)


def retrieval_metrics(query_emb: Tensor, corpus_emb: Tensor, relevant: list[dict[int, int]],
                      recall_k: int = 100, depth: int = 100) -> dict[str, float]:
    """query_emb (Q, D), corpus_emb (C, D), both L2-normalised; relevant[q] = {corpus index: relevance}."""
    depth = max(depth, recall_k, 10)
    scores, indices = top_k(query_emb.float(), corpus_emb.float(), depth)  # (Q, k), (Q, k)
    preds, targets, groups = [], [], []
    for q, rel in enumerate(relevant):
        if not rel:
            continue
        cand = dict(zip(indices[q].tolist(), scores[q].tolist()))
        missing = [d for d in rel if d not in cand]
        if missing:
            cand.update(zip(missing, (query_emb[q].float() @ corpus_emb[missing].float().T).tolist()))
        preds += cand.values()
        targets += [rel.get(d, 0) for d in cand]
        groups += [q] * len(cand)
    if not groups:
        raise UserError("no query has a relevant document in the corpus; check the qrels")
    p, t, g = torch.tensor(preds), torch.tensor(targets), torch.tensor(groups)
    metrics = {"ndcg@10": RetrievalNormalizedDCG(top_k=10), "mrr@10": RetrievalMRR(top_k=10),
               f"recall@{recall_k}": RetrievalRecall(top_k=recall_k)}
    return {name: float(m(p, t > 0 if name != "ndcg@10" else t, indexes=g)) for name, m in metrics.items()}
