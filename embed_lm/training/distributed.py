"""The one place that talks across devices: embeddings gathered from every rank *with* gradients, and the
gradient all-reduce that the cached (GradCache) loss does itself.

Convention (open_clip's local loss): each rank scores its own B queries against the documents of all W ranks and
takes the mean over its queries. all_gather's backward sums, into each rank's local embeddings, the gradients
that every rank's loss sends them; data-parallel training then averages parameter gradients over the W ranks.
Together that is exactly the gradient of the loss over the concatenated global batch (mean over all W*B
queries), as a 2-process gloo test proves against a single process. Lightning's `all_gather` would drop the
gradients (unless sync_grads=True); torch.distributed.nn.functional.all_gather keeps them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate x (n, ...) from all ranks in rank order: (W * n, ...); gradients flow back to every rank."""
    _, size = world()
    if size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def average_gradients(parameters) -> None:
    """Average .grad over ranks (what DDP's reducer does), for steps that run their own backward passes."""
    _, size = world()
    if size == 1:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(size)
