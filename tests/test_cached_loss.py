"""The cached (GradCache) loss gives the plain loss's value and parameter gradients, chunk size notwithstanding;
its chunks are sorted by length and trimmed, and the embeddings go back in input order."""

import pytest
import torch

from embed_lm.model.length_batching import embed_by_length
from embed_lm.training.losses.cached_infonce import CachedInfoNCELoss, split_batch
from embed_lm.training.losses.infonce import InfoNCELoss
from scale_helpers import batch, lora_grads, tiny_encoder, varied_examples

B = 6


@pytest.fixture(scope="module")
def data():
    return batch(varied_examples(B), max_length=40)  # rows of varied lengths: sorted chunks run shorter


def plain(encoder, data, chunked: int | None = None, tokens: int | None = None):
    """Reference: InfoNCELoss with one backward; `chunked` embeds chunk by chunk (same chunks and RNG order as the
    cache), the embeddings back in input order."""
    torch.manual_seed(123)
    embed = (lambda b: encoder(b)) if chunked is None and tokens is None else (
        lambda b: embed_by_length(encoder, b, None if tokens else chunked, tokens))
    q, d = embed(data["queries"]), embed(data["documents"])
    loss = InfoNCELoss(0.02)(q, d[:B], d[B:])
    loss.backward()
    return loss.item(), lora_grads(encoder)


def cached(encoder, data, size, replay=True, tokens=None):
    torch.manual_seed(123)
    loss = CachedInfoNCELoss(0.02, mini_batch_size=size, mini_batch_tokens=tokens).backward_step(
        encoder, data["queries"], data["documents"], replay_rng=replay)
    return loss.item(), lora_grads(encoder)


def assert_same(a, b, rtol=1e-4, atol=1e-6):
    """Float32 summation order differs between the paths: atol scales with each gradient tensor's magnitude."""
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    for k in a[1]:
        scale = max(1.0, b[1][k].abs().max().item())
        torch.testing.assert_close(a[1][k], b[1][k], rtol=rtol, atol=atol * scale, msg=k)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("size", [1, 4, 64])
def test_same_value_and_gradients_as_the_plain_loss(data, size, checkpointing):
    reference = plain(tiny_encoder(checkpointing=checkpointing), data)
    assert_same(cached(tiny_encoder(checkpointing=checkpointing), data, size), reference)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_dropout_masks_are_replayed(data, checkpointing):
    """With dropout, the second (graph) pass must reuse the first pass's masks; without replay it would not."""
    reference = plain(tiny_encoder(dropout=0.3, checkpointing=checkpointing), data, chunked=4)
    assert_same(cached(tiny_encoder(dropout=0.3, checkpointing=checkpointing), data, 4), reference)
    loss, grads = cached(tiny_encoder(dropout=0.3, checkpointing=checkpointing), data, 4, replay=False)
    assert any(not torch.allclose(grads[k], reference[1][k], atol=1e-6) for k in grads)  # the test can fail


def test_token_budget_gives_the_same_value_and_gradients(data):
    reference = plain(tiny_encoder(), data)
    assert_same(cached(tiny_encoder(), data, 32, tokens=60), reference)


def test_chunks_are_sorted_by_length_and_trimmed(data):
    docs = data["documents"]
    lengths = docs.attention_mask.sum(1)
    chunks = split_batch(docs, 4)
    assert torch.cat([i for i, _ in chunks]).tolist() == torch.argsort(lengths, descending=True, stable=True).tolist()
    widths = [c.input_ids.size(1) for _, c in chunks]
    assert widths == [int(lengths[i].max()) for i, _ in chunks] and widths[-1] < docs.input_ids.size(1)
    assert all(len(i) * c.input_ids.size(1) <= 60 or len(i) == 1 for i, c in split_batch(docs, 32, 60))


def test_mini_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedInfoNCELoss(mini_batch_size=0)
    with pytest.raises(ValueError, match="mini_batch_tokens"):
        CachedInfoNCELoss(mini_batch_tokens=0)
