"""The planner's model of one data-parallel training step (per GPU), for decoder LoRA training.

Memory (bytes):
    weights, gradients and optimiser state: per strategy (ddp, fsdp, zero2, zero3) in embed_lm/plan/sharding.py
        (ddp: frozen weights P * w, w = 2 for bf16, 4 for fp32; LoRA P_lora * 16: fp32 weight, gradient, 2 moments)
    activations        S_live * T * per_token
        per_token = layers * b * (c_d * D + c_f * F + c_kv * KV + c_0) + b * c_out * D   without checkpointing
                  = layers * b * D + b * c_out * D + one layer's full set (its recompute)  with checkpointing
        S_live = sequences alive at once: the local batch B * (2 + N) (queries, positives, N negatives), or the
                 cached loss's mini_batch_size (its embeddings cache, (B * (2 + N), D) floats, is negligible)
    the coefficients c_* are measured on tiny models (embed_lm/plan/activations.py) and checked in the tests.
Step time: forward 2 * P * tokens FLOPs, backward ~2 * P * tokens (activation gradients; frozen weights get none),
plus one more forward per checkpointed layer (recompute) and, for the cached loss, the no-grad first pass;
attention adds 4 * T^2 * D per layer per sequence and pass. Time = FLOPs per GPU / (peak * mfu), at the mean
sequence length (plan.mean_seq_len; memory takes the longest batch, at data.max_length).
Communication (sharding.py) is reported as bytes and as seconds at plan.link_gb_per_s if it did not overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from embed_lm.plan.sharding import comm_bytes, state_bytes, wire_bytes_per_rank

# values kept per token per layer, as multiples of D (hidden), F (FFN) and KV (k/v width), plus a constant; measured
# with saved_tensors_hooks on tiny Mistral/LLaMA with LoRA on all seven projections (sdpa attention), fitted
# exactly on four shapes; tests/test_plan.py re-measures an unseen shape against this formula
C_D, C_F, C_KV, C_0 = 6.0, 4.0, 2.0, 56.0
C_OUT = 1.0


@dataclass
class Shape:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def params(self) -> int:
        attn = self.hidden * (2 * self.hidden + 2 * self.kv_dim)
        mlp = 3 * self.hidden * self.ffn
        return self.layers * (attn + mlp + 2 * self.hidden) + self.vocab * self.hidden + self.hidden

    def root_params(self) -> int:
        """Outside the decoder layers: token embeddings and the final norm."""
        return self.vocab * self.hidden + self.hidden

    def lora_params(self, r: int) -> int:  # q, k, v, o, gate, up, down
        d, f, kv = self.hidden, self.ffn, self.kv_dim
        return self.layers * r * ((d + d) * 2 + (d + kv) * 2 + (d + f) * 3)


@dataclass
class Plan:
    params_gb: float  # frozen + LoRA weights held per GPU (sharded under fsdp / zero3)
    grads_gb: float
    optim_gb: float
    gathered_gb: float  # sharded strategies: layers gathered in full while they compute
    activations_gb: float
    total_gb: float
    step_flops: float
    step_seconds: float
    tokens_per_second: float
    comm: dict[str, float]  # collective volume per step, bytes: all_gather, reduce_scatter, all_reduce
    comm_wire_bytes: float  # bytes each GPU sends per step with ring collectives
    strategy: str = "ddp"


def activation_bytes_per_token(shape: Shape, bytes_per_value: int, checkpointing: bool) -> float:
    layer = bytes_per_value * (C_D * shape.hidden + C_F * shape.ffn + C_KV * shape.kv_dim + C_0)
    out = bytes_per_value * C_OUT * shape.hidden
    if checkpointing:  # saved: each layer's input; peak adds one layer's full set while it is recomputed
        return saved_bytes_per_token(shape, bytes_per_value, True) + layer
    return shape.layers * layer + out


def saved_bytes_per_token(shape: Shape, bytes_per_value: int, checkpointing: bool) -> float:
    """What the forward pass keeps for backward (what activations.py measures), per token."""
    if checkpointing:
        return shape.layers * bytes_per_value * shape.hidden + bytes_per_value * C_OUT * shape.hidden
    return activation_bytes_per_token(shape, bytes_per_value, False)


def step_flops(shape: Shape, seqs: int, seq_len: float, checkpointing: bool, cached: bool) -> float:
    """Model FLOPs of one step over `seqs` sequences of `seq_len` tokens (MFU's numerator)."""
    dense = 2 * shape.params() * seqs * seq_len
    attention = 4 * seq_len * seq_len * shape.hidden * shape.layers * seqs
    passes = 2.0 + (1.0 if checkpointing else 0.0) + (1.0 if cached else 0.0)  # fwd + bwd + extras
    return (dense + attention) * passes


def plan_step(shape: Shape, r: int, local_batch: int, negatives: int, seq_len: int, devices: int,
              mini_batch_size: int | None, checkpointing: bool, bytes_per_value: int = 2,
              peak_tflops: float = 989.0, mfu: float = 0.4, strategy: str = "ddp",
              mean_seq_len: float | None = None, gather_across_devices: bool = False,
              frozen_bytes: int | None = None) -> Plan:
    """Per-GPU memory at `seq_len` (the longest batch sets the peak) and step time at `mean_seq_len` (the tokens a
    step computes on average; None = every sequence at seq_len). frozen_bytes: bytes per frozen weight (default
    bytes_per_value). Strategy state and communication: embed_lm/plan/sharding.py."""
    seqs = local_batch * (2 + negatives)
    live = min(seqs, mini_batch_size) if mini_batch_size else seqs
    w = frozen_bytes or bytes_per_value
    frozen, trainable = shape.params(), shape.lora_params(r)
    layer = (frozen - shape.root_params()) / shape.layers * w + 4 * trainable / shape.layers
    state = state_bytes(strategy, frozen, trainable, devices, w, layer)
    acts = live * seq_len * activation_bytes_per_token(shape, bytes_per_value, checkpointing)
    logits = local_batch * devices * local_batch * (1 + negatives) * 4 * 3
    mean = float(mean_seq_len or seq_len)
    tokens = seqs * mean
    flops = step_flops(shape, seqs, mean, checkpointing, bool(mini_batch_size))
    seconds = flops / (peak_tflops * 1e12 * mfu)
    chunks = math.ceil(local_batch / mini_batch_size) + math.ceil(local_batch * (1 + negatives) / mini_batch_size) \
        if mini_batch_size else 1
    passes = 2 * chunks if mini_batch_size else 2  # cached: a no-grad and a grad pass per chunk
    comm = comm_bytes(strategy, frozen, trainable, devices, w, passes, checkpointing, shape.root_params(),
                      local_batch * (1 + negatives) if gather_across_devices else 0, shape.hidden)
    gb = 1024 ** 3
    total = state.total + acts + logits
    return Plan(state.params / gb, state.grads / gb, state.optim / gb, state.gathered / gb, (acts + logits) / gb,
                total / gb, flops, seconds, tokens / seconds, comm, wire_bytes_per_rank(comm, devices), strategy)


def largest_chunk(shape: Shape, r: int, local_batch: int, negatives: int, seq_len: int, devices: int,
                  checkpointing: bool, memory_gb: float, headroom: float = 0.9, bytes_per_value: int = 2,
                  strategy: str = "ddp") -> int:
    """The largest power-of-two mini_batch_size whose plan fits `headroom` of the GPU memory (0 if none)."""
    best = 0
    for k in range(0, int(math.log2(max(1, local_batch * (2 + negatives)))) + 1):
        chunk = 2 ** k
        plan = plan_step(shape, r, local_batch, negatives, seq_len, devices, chunk, checkpointing, bytes_per_value,
                         strategy=strategy)
        if plan.total_gb <= memory_gb * headroom:
            best = chunk
    return best
