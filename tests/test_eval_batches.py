"""Validation/test batching: the length-aware batches (cut as `encode` cuts them, embed_lm/inference/embedder.py) give the
embeddings and metrics of plain input-order padded batches, and W shards cover every row once with equal batch
counts (the 2-process run itself is in tests/test_multirun_ddp.py)."""

from dataclasses import replace

import pytest
import torch

from conftest import SAMPLE
from embed_lm.data.beir import BeirSplit
from embed_lm.data.datamodule import EvalCollator, eval_batches
from embed_lm.model.backbone import TinyBackbone
from embed_lm.model.collator import TextCollator
from embed_lm.model.instructions import NaturalInstruction
from embed_lm.eval.retrieval_metrics import retrieval_metrics
from scale_helpers import tiny_encoder

BATCH = 16
TASK = "Given a one-line summary of a Debian software package, retrieve the package's full description"


@pytest.fixture(scope="module")
def setup():
    split = BeirSplit(str(SAMPLE / "dev"), "dev", TASK, max_queries=40).load()
    keep = {d for q in split.qrels.values() for d in q} | set(list(split.corpus)[:160])  # a small corpus
    split = replace(split, corpus={d: t for d, t in split.corpus.items() if d in keep})
    backbone = TinyBackbone("tiny_mistral", "mistral").load()
    collator = TextCollator(backbone.tokenizer, 64, backbone.append_eos, backbone.padding_side)
    return split, collator, tiny_encoder().eval()


def relevant(split):
    doc_index = {d: i for i, d in enumerate(split.corpus)}
    return [{doc_index[d]: r for d, r in split.qrels[q].items()} for q in split.queries]


@torch.no_grad()
def plain(encoder, collator, prefix, texts, batch_size=BATCH):
    """Input order, each batch padded to its longest row: what the eval dataloaders did before."""
    return torch.cat([encoder(collator([prefix] * len(texts[i:i + batch_size]), texts[i:i + batch_size]))
                      for i in range(0, len(texts), batch_size)])  # (N, D)


@torch.no_grad()
def length_aware(encoder, collator, batches, n):
    out = torch.full((n, encoder.backbone.config.hidden_size), float("nan"))  # (N, D)
    for item in batches:
        indices, tokens = EvalCollator(collator)(item)
        emb = encoder(tokens)  # (b, D)
        out[indices[indices >= 0]] = emb[indices >= 0]
    return out


def test_length_aware_eval_batches_equal_plain_padding(setup):
    split, collator, encoder = setup
    style = NaturalInstruction()
    q_batches, c_batches = eval_batches(split, style, collator, batch_size=BATCH)
    q = length_aware(encoder, collator, q_batches, len(split.queries))
    c = length_aware(encoder, collator, c_batches, len(split.corpus))
    q_ref = plain(encoder, collator, style.query_prefix(TASK, "short-long"), list(split.queries.values()))
    c_ref = plain(encoder, collator, style.document_prefix(TASK, "short-long"), list(split.corpus.values()))
    torch.testing.assert_close(q, q_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(c, c_ref, rtol=0, atol=1e-5)
    got, ref = retrieval_metrics(q, c, relevant(split)), retrieval_metrics(q_ref, c_ref, relevant(split))
    assert got == pytest.approx(ref, abs=1e-6)
    # the batches are length-sorted: fewer padded positions than input order (queries vary in length)
    positions = sum(len(b) * max(len(ids) for ids, _ in rows) for b, rows in q_batches)
    rows = collator.tokenize([style.query_prefix(TASK, "short-long")] * len(q), list(split.queries.values()))
    assert positions < sum(len(rows[i:i + BATCH]) * max(len(ids) for ids, _ in rows[i:i + BATCH])
                           for i in range(0, len(rows), BATCH))


@pytest.mark.parametrize("world,max_tokens", [(2, None), (3, None), (3, 600)])
def test_shards_cover_every_row_once_with_equal_batch_counts(setup, world, max_tokens):
    split, collator, _ = setup
    single = eval_batches(split, NaturalInstruction(), collator, 64, max_tokens)
    shards = [eval_batches(split, NaturalInstruction(), collator, 64, max_tokens, rank, world)
              for rank in range(world)]
    for kind, n in ((0, len(split.queries)), (1, len(split.corpus))):
        assert len({len(s[kind]) for s in shards}) == 1  # every rank runs as many forward passes
        seen = sorted(i for s in shards for indices, _ in s[kind] for i in indices if i >= 0)
        assert seen == list(range(n))
        # the shards hold exactly one process's batches (so the gathered rows equal a single process's)
        assert sorted(tuple(b) for s in shards for b, _ in s[kind] if b != [-1]) == sorted(
            tuple(b) for b, _ in single[kind])
