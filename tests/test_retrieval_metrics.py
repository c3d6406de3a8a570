import math

import pytest
import torch
import torch.nn.functional as F

from embed_lm.eval.retrieval_metrics import retrieval_metrics


def naive(q, c, relevant, k_recall):
    """Textbook definitions over the full ranking (binary relevance)."""
    ndcg, mrr, rec = [], [], []
    for i, rel in enumerate(relevant):
        order = torch.argsort(q[i] @ c.T, descending=True).tolist()
        gains = [1.0 if d in rel else 0.0 for d in order]
        dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains[:10]))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), 10)))
        ndcg.append(dcg / idcg)
        mrr.append(next((1 / (r + 1) for r, g in enumerate(gains[:10]) if g), 0.0))
        rec.append(sum(gains[:k_recall]) / len(rel))
    return {"ndcg@10": sum(ndcg) / len(ndcg), "mrr@10": sum(mrr) / len(mrr),
            f"recall@{k_recall}": sum(rec) / len(rec)}


@pytest.mark.parametrize("depth", [20, 300])
def test_matches_textbook_definitions(depth):
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(30, 16, generator=g), dim=-1)
    c = F.normalize(torch.randn(300, 16, generator=g), dim=-1)
    relevant = [{int(d): 1 for d in torch.randint(0, 300, (1 + i % 3,), generator=g)} for i in range(30)]
    got = retrieval_metrics(q, c, relevant, recall_k=20, depth=depth)
    want = naive(q, c, relevant, 20)
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name


def test_perfect_ranking_scores_one():
    c = torch.eye(5)
    got = retrieval_metrics(c.clone(), c, [{i: 1} for i in range(5)], recall_k=1)
    assert got == {"ndcg@10": 1.0, "mrr@10": 1.0, "recall@1": 1.0}
