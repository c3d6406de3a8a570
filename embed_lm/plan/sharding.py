"""What each multi-GPU strategy keeps per GPU, and what it communicates per training step, for LoRA training.

    python -m embed_lm.plan backbone=mistral trainer=fsdp trainer.devices=8 data.batch_size=64
    python -m embed_lm.plan backbone=mistral trainer=deepspeed_zero3 trainer.devices=32 plan.mean_seq_len=180

Notation: P frozen (base) parameters stored with w bytes each, T trainable (LoRA) parameters in fp32 (4 bytes),
W devices. Only LoRA parameters have gradients and optimiser state; frozen parameters are sharded like the rest
under FSDP/ZeRO-3.

State per GPU (bytes):
| strategy      | parameters          | gradients | optimiser state                                         |
|---------------|---------------------|-----------|---------------------------------------------------------|
| ddp           | P*w + 4T            | 4T        | 8T (AdamW: two fp32 moments)                            |
| fsdp          | (P*w + 4T) / W      | 4T / W    | 8T / W                                                  |
| zero2         | P*w + 4T            | 4T / W    | 12T / W (DeepSpeed: fp32 master copy + two moments)     |
| zero3         | (P*w + 4T) / W      | 4T / W    | 12T / W                                                 |
Sharded strategies also hold one wrapped unit (a decoder layer) gathered in full while it computes, plus the next
one prefetched: `gathered` = 2 * the largest layer's bytes (a model; not measured at rest).

Communication per step, as collective volume (the full tensor's bytes; a ring all-gather or reduce-scatter moves
(W-1)/W of it through each GPU's link, an all-reduce 2(W-1)/W). `passes` = forward calls of the model per step
(2 with the plain loss: queries, then documents); E = embedding/final-norm parameters (FSDP's root unit), the rest
in decoder layers, LoRA layers wrapped in units of their own (uniform dtype, PEFT's FSDP wrap policy):
| strategy | per step                                                                                         |
|----------|--------------------------------------------------------------------------------------------------|
| ddp      | all-reduce of the LoRA gradients: 4T                                                             |
| fsdp     | all-gather: the root unit once, E*w (FSDP keeps the root gathered after forward); each frozen     |
|          | layer once per forward pass and once for the whole backward, (passes + 1) * (P - E) * w; the LoRA  |
|          | units once per forward pass and once per recomputation (gradient checkpointing; else once in the  |
|          | backward), 2 * passes * 4T. Reduce-scatter of the LoRA gradients: 4T                              |
| zero2    | reduce-scatter of the LoRA gradients 4T, all-gather of the updated LoRA weights 4T                |
| zero3    | modelled as fsdp (not measured: DeepSpeed is not run here)                                       |
Cross-device negatives add, for any strategy: all-gather of the documents' embeddings (M, D) fp32, W*M*D*4, and
in the backward a reduce-scatter of the same size.
Measured: tests/test_plan_strategies.py runs DDP and torch FSDP FULL_SHARD in 2 gloo processes on tiny Mistral +
LoRA and compares every figure above (state exactly, FSDP's all-gather within 1%); ZeRO-2/3 and the transient
`gathered` memory are a model only.
"""

from __future__ import annotations

from dataclasses import dataclass

from embed_lm.errors import ConfigError

STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
ADAM_BYTES = 8  # two fp32 moments per trainable parameter
DEEPSPEED_OPTIM_BYTES = 12  # DeepSpeed keeps an fp32 master copy as well


@dataclass
class StateBytes:
    params: float
    grads: float
    optim: float
    gathered: float  # transient: units gathered in full while they compute (sharded strategies)

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optim + self.gathered


def strategy_key(name: str) -> str:
    """'ddp' | 'fsdp' | 'zero2' | 'zero3' from a trainer strategy name (embed_lm.training.strategies.strategy_name);
    a single device counts as ddp (every state in full, and no communication when W = 1)."""
    name = name.lower()
    if "fsdp" in name:
        return "fsdp"
    if "deepspeed" in name or "zero" in name:
        return "zero3" if "3" in name else "zero2"
    return "ddp"


def state_bytes(strategy: str, frozen: int, trainable: int, devices: int, frozen_bytes: int,
                largest_layer_bytes: float = 0.0) -> StateBytes:
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    W = devices
    params = frozen * frozen_bytes + 4 * trainable
    optim = DEEPSPEED_OPTIM_BYTES if strategy.startswith("zero") else ADAM_BYTES
    shard_params = strategy in ("fsdp", "zero3")
    shard_grads = strategy != "ddp"
    gathered = 2 * largest_layer_bytes if shard_params and W > 1 else 0.0
    return StateBytes(params=params / W if shard_params else params,
                      grads=4 * trainable / W if shard_grads else 4 * trainable,
                      optim=optim * trainable / W if shard_grads else optim * trainable, gathered=gathered)


def comm_bytes(strategy: str, frozen: int, trainable: int, devices: int, frozen_bytes: int, passes: int = 2,
               checkpointing: bool = True, root_frozen: int = 0, gathered_embeddings: int = 0,
               embedding_dim: int = 0) -> dict[str, float]:
    """Collective volume per step by kind: {'all_gather': ..., 'reduce_scatter': ..., 'all_reduce': ...} (bytes);
    all zero on one device. root_frozen: frozen parameters outside the decoder layers (embeddings, final norm);
    gathered_embeddings: documents per rank gathered across devices (0 = off)."""
    out = {"all_gather": 0.0, "reduce_scatter": 0.0, "all_reduce": 0.0}
    if devices == 1:
        return out
    grads = 4 * trainable
    if strategy == "ddp":
        out["all_reduce"] += grads
    elif strategy in ("fsdp", "zero3"):
        lora_gathers = 2 * passes if checkpointing else passes + 1
        out["all_gather"] += root_frozen * frozen_bytes + (passes + 1) * (frozen - root_frozen) * frozen_bytes \
            + lora_gathers * grads
        out["reduce_scatter"] += grads
    elif strategy == "zero2":
        out["reduce_scatter"] += grads
        out["all_gather"] += grads
    embeddings = devices * gathered_embeddings * embedding_dim * 4
    out["all_gather"] += embeddings
    out["reduce_scatter"] += embeddings
    return out


def wire_bytes_per_rank(comm: dict[str, float], devices: int) -> float:
    """Bytes each GPU sends over its link with ring collectives."""
    if devices == 1:
        return 0.0
    share = (devices - 1) / devices
    return share * (comm["all_gather"] + comm["reduce_scatter"]) + 2 * share * comm["all_reduce"]
