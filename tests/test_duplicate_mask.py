"""No false negatives from duplicate texts: the masked InfoNCE equals a per-query loop that compares the texts
themselves, in one process, in the cached loss, and across 2 gloo processes (ids gathered like the embeddings)."""

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import mask_worker
from embed_lm.data.datamodule import text_ids
from embed_lm.model.collator import TokenizedBatch
from embed_lm.training.losses.cached_infonce import CachedInfoNCELoss
from embed_lm.training.losses.infonce import InfoNCELoss

QUERIES = ["a", "b", "a", "c", "d", "b"]  # "a" and "b" asked twice
POSITIVES = ["P", "Q", "R", "P", "S", "T"]  # "P" is the positive of two queries
NEGATIVES = ["P", "x", "Q", "y", "S", "z"]  # one hard negative each; "P", "S" copy a query's own positive
TAU = 0.1


def naive_masked_loss(q, docs, queries, doc_texts, tau):
    """Per query i: the denominator skips documents whose text is i's positive text and positives of queries with
    i's text (other than i's own positive column)."""
    B, losses = len(queries), []
    for i in range(B):
        cos = lambda a, b: float(F.cosine_similarity(a, b, dim=0))  # noqa: E731
        keep = [j for j in range(len(doc_texts)) if j == i or not (
            doc_texts[j] == doc_texts[i] or (j < B and queries[j] == queries[i]))]
        denom = sum(math.exp(cos(q[i], docs[j]) / tau) for j in keep)
        losses.append(-math.log(math.exp(cos(q[i], docs[i]) / tau) / denom))
    return sum(losses) / B


def embeddings(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 8, generator=g, dtype=dtype), torch.randn(12, 8, generator=g, dtype=dtype)


def test_masked_loss_matches_the_per_query_loop_and_counts():
    q, d = embeddings()
    loss_fn = InfoNCELoss(TAU)
    mask = loss_fn.duplicate_mask(text_ids(QUERIES), text_ids(POSITIVES + NEGATIVES))  # (6, 12)
    got = loss_fn(q, d[:6], d[6:], mask=mask)
    want = naive_masked_loss(q, d, QUERIES, POSITIVES + NEGATIVES, TAU)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # by hand: q0 {R@2 same query, P@3, P@6}, q1 {T@5 same query, Q@8}, q2 {P@0 same query}, q3 {P@0, P@6},
    # q4 {S@10}, q5 {Q@1 same query}
    texts = POSITIVES + NEGATIVES
    expected = sum(1 for i in range(6) for j in range(12) if j != i and (
        texts[j] == texts[i] or (j < 6 and QUERIES[j] == QUERIES[i])))
    assert int(mask.sum()) == expected == 10
    unmasked = float(loss_fn(q, d[:6], d[6:]))
    assert abs(unmasked - float(got)) > 1e-3  # control: the duplicates did change the loss


def test_cached_loss_takes_the_same_mask():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 8)
    ids = torch.randint(0, 50, (18, 4))
    batch = lambda rows: TokenizedBatch(ids[rows], torch.ones_like(ids[rows]), torch.zeros_like(ids[rows]))  # noqa
    embed = lambda b: emb(b.input_ids).mean(1)  # noqa: E731  (b, D)
    mask = InfoNCELoss(TAU).duplicate_mask(text_ids(QUERIES), text_ids(POSITIVES + NEGATIVES))
    plain = InfoNCELoss(TAU)(embed(batch(slice(0, 6))), embed(batch(slice(6, 12))), embed(batch(slice(12, 18))),
                             mask=mask)
    plain.backward()
    want, emb.weight.grad = emb.weight.grad.clone(), None
    loss = CachedInfoNCELoss(TAU, mini_batch_size=4).backward_step(embed, batch(slice(0, 6)), batch(slice(6, 18)),
                                                                   mask=mask)
    assert float(loss.detach()) == pytest.approx(float(plain.detach()), rel=1e-6)
    torch.testing.assert_close(emb.weight.grad, want)


@pytest.mark.slow
def test_two_gloo_processes_mask_the_gathered_duplicates(tmp_path):
    q, d = embeddings(dtype=torch.float32)
    ids = (text_ids(QUERIES), text_ids(POSITIVES), text_ids(NEGATIVES))
    mp.spawn(mask_worker.run, args=(2, str(tmp_path / "init"), str(tmp_path), q, d, ids, TAU), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    full_mask = InfoNCELoss(TAU).duplicate_mask(text_ids(QUERIES), text_ids(POSITIVES + NEGATIVES))  # (6, 12)
    torch.testing.assert_close(torch.cat([r["mask"] for r in ranks]), full_mask)
    want = naive_masked_loss(q.double(), d.double(), QUERIES, POSITIVES + NEGATIVES, TAU)
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(want, rel=1e-5)
