import math

import pytest
import torch
import torch.nn.functional as F

from embed_lm.training.losses.infonce import InfoNCELoss, info_nce_loss


def naive_info_nce(q, pos, neg, tau):
    """The paper's formula, one query at a time: -log(e^{s+/tau} / (e^{s+/tau} + sum_n e^{s_n/tau}))."""
    losses = []
    for i in range(q.size(0)):
        cos = lambda a, b: float(F.cosine_similarity(a, b, dim=0))  # noqa: E731
        positive = math.exp(cos(q[i], pos[i]) / tau)
        negatives = [pos[j] for j in range(pos.size(0)) if j != i] + list(neg)  # in-batch + every hard negative
        denom = positive + sum(math.exp(cos(q[i], n) / tau) for n in negatives)
        losses.append(-math.log(positive / denom))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("n_neg", [0, 1, 3])
@pytest.mark.parametrize("tau", [0.02, 0.5])
def test_matches_naive_loop(n_neg, tau):
    g = torch.Generator().manual_seed(n_neg)
    B, D = 5, 8
    q, pos = torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64)
    neg = torch.randn(B * n_neg, D, generator=g, dtype=torch.float64)
    got = info_nce_loss(q, pos, neg if n_neg else None, tau)
    assert float(got) == pytest.approx(naive_info_nce(q, pos, neg, tau), rel=1e-5)


def test_gradients_flow_to_all_inputs_and_scale_invariance():
    g = torch.Generator().manual_seed(1)
    q, pos, neg = (torch.randn(4, 6, generator=g, requires_grad=True) for _ in range(3))
    loss = InfoNCELoss(0.02)(q, pos, neg)
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, pos, neg))
    # cosine similarity: rescaling an embedding changes nothing
    assert float(info_nce_loss(3 * q.detach(), pos.detach(), neg.detach())) == pytest.approx(loss.item(), rel=1e-5)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)
