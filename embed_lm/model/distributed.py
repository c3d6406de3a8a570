"""The one place that talks across devices: embeddings gathered from every rank *with* gradients, the gradient
all-reduce that the cached (GradCache) loss does itself, and, for evaluation (no gradients), rows of different
counts per rank gathered in rank order plus a small result broadcast from rank 0.

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


def resolve_device(device: str) -> str:
    """"auto" -> cuda if available else cpu; under several processes on GPUs each rank gets its own GPU."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device == "cuda" and world()[1] > 1:
        return f"cuda:{torch.cuda.current_device()}"  # each rank its own GPU
    return device


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


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo (CPU runs) moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def gather_rows(x: Tensor, to_all: bool = True) -> Tensor | None:
    """Concatenate x (n_r, ...) from all ranks in rank order, n_r may differ per rank: (sum n_r, ...) on the CPU,
    on every rank (to_all) or on rank 0 only (None elsewhere). No gradients: for evaluation."""
    rank, size = world()
    if size == 1:
        return x.cpu()
    device = _collective_device()
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([x.size(0)], device=device))
    counts = [int(c) for c in counts]
    padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype, device=device)  # (max n_r, ...)
    padded[:x.size(0)] = x
    parts = [torch.empty_like(padded) for _ in range(size)] if to_all or rank == 0 else None
    if to_all:
        dist.all_gather(parts, padded)
    else:
        dist.gather(padded, parts, dst=0)
    if parts is None:
        return None
    return torch.cat([p[:n] for p, n in zip(parts, counts)]).cpu()  # (sum n_r, ...)


def broadcast_from_first(obj):
    """Rank 0's picklable `obj` on every rank (e.g. metrics computed once)."""
    _, size = world()
    if size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
