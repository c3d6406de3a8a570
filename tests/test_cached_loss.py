"""The cached (GradCache) loss gives the plain loss's value and parameter gradients, chunk size notwithstanding."""

import pytest
import torch

from embed_lm.training.losses.cached_infonce import CachedInfoNCELoss, split_batch
from embed_lm.training.losses.infonce import InfoNCELoss
from scale_helpers import batch, examples, lora_grads, tiny_encoder

B = 6


@pytest.fixture(scope="module")
def data():
    return batch(examples(B))


def plain(encoder, data, chunked: int | None = None):
    """Reference: InfoNCELoss with one backward; `chunked` embeds chunk by chunk (same RNG order as the cache)."""
    torch.manual_seed(123)
    embed = (lambda b: encoder(b)) if chunked is None else (
        lambda b: torch.cat([encoder(c) for c in split_batch(b, chunked)]))
    q, d = embed(data["queries"]), embed(data["documents"])
    loss = InfoNCELoss(0.02)(q, d[:B], d[B:])
    loss.backward()
    return loss.item(), lora_grads(encoder)


def cached(encoder, data, size, replay=True):
    torch.manual_seed(123)
    loss = CachedInfoNCELoss(0.02, mini_batch_size=size).backward_step(encoder, data["queries"], data["documents"],
                                                                       replay_rng=replay)
    return loss.item(), lora_grads(encoder)


def assert_same(a, b, rtol=1e-4, atol=1e-6):
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k], rtol=rtol, atol=atol, msg=k)


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


def test_mini_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedInfoNCELoss(mini_batch_size=0)
