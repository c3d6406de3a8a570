import pytest
import torch

from embed_lm.model.pooling import Pooling, last_token_pool, mean_pool, weighted_mean_pool


def released_last_token_pool(last_hidden_states, attention_mask):
    """The E5-mistral model card's reference implementation (FACTS.md section 5)."""
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    return last_hidden_states[torch.arange(last_hidden_states.shape[0]), sequence_lengths]


def right_and_left(lengths, L=6, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    tokens = [torch.randn(n, D, generator=g) for n in lengths]
    right, left = torch.zeros(B, L, D), torch.zeros(B, L, D)
    mr, ml = torch.zeros(B, L, dtype=torch.long), torch.zeros(B, L, dtype=torch.long)
    for i, t in enumerate(tokens):
        n = len(t)
        right[i, :n], mr[i, :n] = t, 1
        left[i, L - n:], ml[i, L - n:] = t, 1
        right[i, n:] = 99.0  # padding garbage must never leak in
        left[i, : L - n] = 99.0
    return tokens, (right, mr), (left, ml)


def test_hand_computed_values():
    h = torch.tensor([[[1.0], [2.0], [4.0], [100.0]]])  # (1, 4, 1), last position is padding
    m = torch.tensor([[1, 1, 1, 0]])
    assert last_token_pool(h, m).item() == 4.0
    assert mean_pool(h, m).item() == pytest.approx(7 / 3)
    assert weighted_mean_pool(h, m).item() == pytest.approx((1 * 1 + 2 * 2 + 3 * 4) / 6)


@pytest.mark.parametrize("fn", [last_token_pool, mean_pool, weighted_mean_pool])
def test_left_and_right_padding_agree(fn):
    _, (hr, mr), (hl, ml) = right_and_left([6, 3, 1, 5])
    torch.testing.assert_close(fn(hr, mr), fn(hl, ml), rtol=1e-6, atol=1e-6)  # only summation order differs


def test_last_token_matches_released_model_both_layouts():
    tokens, (hr, mr), (hl, ml) = right_and_left([6, 3, 1, 5])
    expected = torch.stack([t[-1] for t in tokens])
    torch.testing.assert_close(last_token_pool(hr, mr), released_last_token_pool(hr, mr))
    torch.testing.assert_close(last_token_pool(hl, ml), released_last_token_pool(hl, ml))
    torch.testing.assert_close(last_token_pool(hr, mr), expected)


def test_exclude_instruction_drops_the_span_from_means_only():
    h = torch.tensor([[[10.0], [1.0], [3.0]]])
    attention, instruction = torch.tensor([[1, 1, 1]]), torch.tensor([[1, 0, 0]])
    assert Pooling("mean", exclude_instruction=True)(h, attention, instruction).item() == pytest.approx(2.0)
    assert Pooling("mean")(h, attention, instruction).item() == pytest.approx(14 / 3)
    assert Pooling("last_token", exclude_instruction=True)(h, attention, instruction).item() == 3.0


def test_unknown_pooling_names_the_choices():
    with pytest.raises(ValueError, match="last_token"):
        Pooling("max")
