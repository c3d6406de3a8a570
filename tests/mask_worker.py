"""One rank of test_duplicate_mask's gloo test; imports only torch and the loss so the spawned processes start fast."""

import torch
import torch.distributed as dist

from embed_lm.training.losses.infonce import InfoNCELoss


def run(rank, world, init_file, out, q, d, ids, tau):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    B = q.size(0) // world
    rows = slice(rank * B, (rank + 1) * B)
    query_ids, positive_ids, negative_ids = ids
    loss_fn = InfoNCELoss(tau, gather_across_devices=True, local_loss=True)
    mask = loss_fn.duplicate_mask(query_ids[rows], torch.cat([positive_ids[rows], negative_ids[rows]]))
    loss = loss_fn(q[rows], d[: q.size(0)][rows], d[q.size(0):][rows], mask=mask)
    torch.save({"loss": float(loss), "mask": mask}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
