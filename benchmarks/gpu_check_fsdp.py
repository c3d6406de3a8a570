"""The FSDP section of benchmarks/gpu_check.py: FULL_SHARD over `procs` processes (one per GPU, NCCL; or CPU
processes over gloo for the tiny test), plain InfoNCE with cross-device negatives, one warm-up and one timed step.

Wrapping: each decoder layer is a unit, and each LoRA layer a unit of its own (PEFT's FSDP wrap policy), so every
flat parameter has one dtype (bf16 frozen weights, fp32 LoRA) and only LoRA units reduce gradients;
use_orig_params=True. Memory is the largest peak over the ranks; tokens/s counts every rank's tokens.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gpu_check import LORA_R, NEGATIVES, Meter, build_encoder, step_row, train_step
from embed_lm.plan.estimate import Shape, plan_step


def wrap(encoder, device: torch.device):
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

    from embed_lm.training.strategies import lora_wrap_policy

    policy = lora_wrap_policy({MistralDecoderLayer})  # what trainer=fsdp wraps with
    return FullyShardedDataParallel(encoder, auto_wrap_policy=policy, use_orig_params=True, device_id=device,
                                    sharding_strategy=ShardingStrategy.FULL_SHARD)


def worker(rank: int, procs: int, tmp: str, shape: Shape, model_path: str | None, batch: int, seq: int,
           peak: float | None, device_type: str) -> None:
    cuda = device_type == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(1)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{tmp}/init", rank=rank,
                            world_size=procs)
    torch.manual_seed(0)
    encoder = build_encoder(shape, model_path, device, torch.bfloat16 if cuda else torch.float32)
    model = wrap(encoder, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    torch.manual_seed(1 + rank)  # each rank its own data
    train_step(model, optimizer, batch, seq, shape.vocab, device, None, gather=True)  # warm-up
    with Meter(device) as m:
        loss = train_step(model, optimizer, batch, seq, shape.vocab, device, None, gather=True)
    stats = torch.tensor([m.seconds, m.peak_gb or 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)  # the slowest rank's step, the largest peak
    if rank == 0:
        m.seconds, m.peak_gb = float(stats[0]), (float(stats[1]) if cuda else None)
        planned = plan_step(shape, LORA_R, batch, NEGATIVES, seq, procs, None, True, 2, peak or 989.0,
                            strategy="fsdp", gather_across_devices=True)
        row = step_row("fsdp", shape, batch, seq, m, loss, peak, planned, devices=procs)
        row["tokens"] *= procs  # every rank's tokens in the slowest rank's time
        row["tokens_per_s"] *= procs
        row["plan"]["tokens_per_s"] *= procs
        Path(tmp, "row.json").write_text(json.dumps(row))
    dist.barrier()
    dist.destroy_process_group()


def fsdp_row(shape: Shape, model_path: str | None, procs: int, batch: int, seq: int, peak: float | None,
             device_type: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(procs, tmp, shape, model_path, batch, seq, peak, device_type), nprocs=procs)
        return json.loads(Path(tmp, "row.json").read_text())
