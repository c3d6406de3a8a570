"""Pooling: turn a backbone's last hidden states (B, L, D) into one vector per text (B, D).

Each function takes an explicit pooling mask (B, L) of 0/1 built by the collator (never inferred from token ids),
so left and right padding give identical results.

- last_token:     the hidden state at the last 1 of each mask row (the appended EOS in the E5-mistral recipe).
                  Equals the released model's rule: position -1 if every row ends in a 1 (left padding), else
                  mask.sum(1) - 1 (right padding).
- mean:           sum_i m_i h_i / sum_i m_i.
- weighted_mean:  SGPT's position-weighted mean, w_i = p_i / sum_j p_j with p_i the position (1-based) of token i
                  among the pooled tokens; later tokens have seen more of the text under causal attention.

`exclude_instruction=True` drops the instruction span from the pooling mask (only matters for the means; the paper
does not say, the default keeps it, as the released model's last-token rule is unaffected).
"""

from __future__ import annotations

import torch
from torch import Tensor

from embed_lm.errors import ConfigError


def last_token_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    L = mask.size(1)
    last = L - 1 - mask.flip(1).long().argmax(dim=1)  # (B,) index of the last 1 in each row
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]  # (B, D)


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)


def weighted_mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(hidden.dtype)  # (B, L)
    w = (m.cumsum(dim=1) * m).unsqueeze(-1)  # (B, L, 1) position among pooled tokens, 0 on the rest
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)  # (B, D)


class Pooling:
    """A named pooling rule; `pooling/<name>.yaml` builds one: python -m embed_lm.train pooling=mean."""

    FUNCTIONS = {"last_token": last_token_pool, "mean": mean_pool, "weighted_mean": weighted_mean_pool}

    def __init__(self, name: str, exclude_instruction: bool = False) -> None:
        if name not in self.FUNCTIONS:
            raise ConfigError(f"unknown pooling {name!r}; choose one of {sorted(self.FUNCTIONS)}")
        self.name = name
        self.exclude_instruction = exclude_instruction
        self.fn = self.FUNCTIONS[name]

    def pooling_mask(self, attention_mask: Tensor, instruction_mask: Tensor) -> Tensor:
        if self.exclude_instruction:
            return attention_mask * (1 - instruction_mask)  # (B, L)
        return attention_mask

    def __call__(self, hidden: Tensor, attention_mask: Tensor, instruction_mask: Tensor) -> Tensor:
        return self.fn(hidden, self.pooling_mask(attention_mask, instruction_mask))  # (B, D)

    def __repr__(self) -> str:
        return f"Pooling({self.name!r}, exclude_instruction={self.exclude_instruction})"
