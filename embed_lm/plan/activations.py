"""Measure the activation memory a training forward pass keeps for backward: the bytes of every tensor autograd
saves (torch.autograd.graph.saved_tensors_hooks), storages counted once. Device-independent, so the planner's
formula can be calibrated and checked on CPU with tiny models of the real architectures.
"""

from __future__ import annotations

import torch
from torch import nn


def saved_activation_bytes(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if t.requires_grad and t.grad_fn is None and isinstance(t, nn.Parameter):
            return t  # a parameter, not an activation
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    params = {p.data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out.float().sum().backward()
    return sum(n for ptr, n in seen.items() if ptr not in params)
