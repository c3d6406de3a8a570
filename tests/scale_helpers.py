"""Shared by the scale tests: a tiny LoRA encoder and a fixed training batch, identical in every process."""

import json

import torch

from conftest import SAMPLE
from embed_lm.model.backbone import TinyBackbone, add_lora
from embed_lm.model.collator import TextCollator
from embed_lm.data.datamodule import PairCollator
from embed_lm.data.records import TrainExample
from embed_lm.model.encoder import TextEncoder
from embed_lm.model.instructions import NaturalInstruction
from embed_lm.model.pooling import Pooling


def tiny_encoder(dropout: float = 0.0, checkpointing: bool = False, seed: int = 0,
                 architecture: str = "mistral") -> TextEncoder:
    backbone = TinyBackbone(f"tiny_{architecture}", architecture).load()
    torch.manual_seed(seed)
    model = add_lora(backbone.model, 8, 16, dropout, backbone.lora_target_modules, checkpointing)
    for name, p in model.named_parameters():  # LoRA B starts at zero: give it values so every path carries gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return TextEncoder(model, Pooling("last_token")).train()


def lora_names(r: int = 16) -> set[str]:
    """What a run's checkpoint must hold: the LoRA tensors of tiny_mistral, nothing else (a fresh reference)."""
    model = add_lora(TinyBackbone("tiny_mistral", "mistral").load().model, r, 2 * r, 0.1, TinyBackbone.LORA_TARGETS)
    return {"encoder.backbone." + n for n, p in model.named_parameters() if p.requires_grad}


def examples(n: int) -> list[TrainExample]:
    rows = [json.loads(line) for line in (SAMPLE / "train/synthetic/short_long.jsonl").open()][:n]
    return [TrainExample(r["user_query"], r["positive_document"], (r["hard_negative_document"],), r["task"],
                         "short-long") for r in rows]


def varied_examples(n: int) -> list[TrainExample]:
    """examples(n) with texts cut to varied word counts (2 to ~20 words), so rows differ in length."""
    cut = lambda text, k: " ".join(text.split()[:k])  # noqa: E731
    return [TrainExample(cut(e.query, 2 + i % 4), cut(e.positive, 3 + 5 * i % 17), (cut(e.negatives[0], 20 - 3 * i),),
                         e.task, e.task_kind) for i, e in enumerate(examples(n))]


def batch(exs: list[TrainExample], max_length: int = 24):
    tok = TinyBackbone("tiny_mistral", "mistral").load().tokenizer
    return PairCollator(TextCollator(tok, max_length, True), NaturalInstruction())(exs)


def lora_grads(encoder: TextEncoder) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in encoder.named_parameters() if p.requires_grad}


def distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str, per_rank: int) -> None:
    """One rank of the 2-process gloo test: plain gathered loss (local and global), and the cached loss with
    gathering, each followed by the gradient averaging DDP does; rank 0 saves losses and gradients."""
    import torch.distributed as dist

    from embed_lm.model.distributed import average_gradients
    from embed_lm.training.losses.cached_infonce import CachedInfoNCELoss
    from embed_lm.training.losses.infonce import InfoNCELoss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    data = batch(examples(world_size * per_rank)[rank * per_rank:(rank + 1) * per_rank])
    results = {}
    for mode in ("local", "global", "cached"):
        encoder = tiny_encoder()
        if mode == "cached":
            loss = CachedInfoNCELoss(0.02, mini_batch_size=2, gather_across_devices=True).backward_step(
                encoder, data["queries"], data["documents"])
        else:
            q, d = encoder(data["queries"]), encoder(data["documents"])
            loss = InfoNCELoss(0.02, gather_across_devices=True, local_loss=mode == "local")(q, d[:per_rank],
                                                                                             d[per_rank:])
            loss.backward()
        average_gradients(p for p in encoder.parameters() if p.requires_grad)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results[mode] = {"loss": mean_loss.item() / world_size, "grads": lora_grads(encoder)}
    if rank == 0:
        torch.save(results, f"{out_dir}/results.pt")
    dist.barrier()
    dist.destroy_process_group()


def bf16_base(encoder: TextEncoder, keep_bf16: bool) -> TextEncoder:
    """Round the frozen base weights to bfloat16 (the 7B checkpoints' dtype); keep_bf16=False stores the rounded
    values in fp32, which is what FSDP computes with under trainer.precision=32-true (MixedPrecision fp32)."""
    for p in encoder.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16) if keep_bf16 else p.data.to(torch.bfloat16).float()
    return encoder


def fsdp_worker(rank: int, world_size: int, init_file: str, out_dir: str, per_rank: int) -> None:
    """One rank of the 2-process FSDP test, wrapped as trainer=fsdp_cpu wraps it (decoder layers and LoRA matrices
    as separate units, bf16 base, fp32 compute, gathered negatives); rank 0 saves the loss and full LoRA grads."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import MixedPrecision
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

    from embed_lm.training.losses.infonce import InfoNCELoss
    from embed_lm.training.strategies import lora_wrap_policy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    data = batch(examples(world_size * per_rank)[rank * per_rank:(rank + 1) * per_rank])
    encoder = bf16_base(tiny_encoder(), keep_bf16=True)
    model = FSDP(encoder, auto_wrap_policy=lora_wrap_policy({MistralDecoderLayer}), use_orig_params=True,
                 device_id=torch.device("cpu"), mixed_precision=MixedPrecision(torch.float32, torch.float32,
                                                                               torch.float32))
    q, d = model(data["queries"]), model(data["documents"])
    loss = InfoNCELoss(0.02)(q, d[:per_rank], d[per_rank:])  # gather_across_devices=auto: on (world size 2)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    with FSDP.summon_full_params(model, with_grads=True):
        grads = {n.replace("_fsdp_wrapped_module.", ""): p.grad.detach().clone()
                 for n, p in encoder.named_parameters() if p.requires_grad}
    if rank == 0:
        torch.save({"loss": mean_loss.item() / world_size, "grads": grads,
                    "flat_dtypes": sorted({str(p.dtype) for p in model.parameters()})}, f"{out_dir}/fsdp.pt")
    dist.barrier()
    dist.destroy_process_group()
