"""Plan a training run: estimated peak memory per GPU and step time for a config, and the largest cached-loss
chunk that fits a GPU. Takes the same overrides as training (conf/plan.yaml adds the GPU's figures).

    python -m embed_lm.plan backbone=mistral trainer.devices=8 data.batch_size=256 loss=cached_infonce \
        loss.mini_batch_size=32 plan.gpu_memory_gb=80
    python -m embed_lm.plan backbone=llama2 trainer.devices=32 data.batch_size=64 gradient_checkpointing=false
    python -m embed_lm.plan backbone=mistral trainer=fsdp trainer.devices=8 data.batch_size=64 plan.mean_seq_len=200

The strategy (trainer=ddp | fsdp | deepspeed_zero2 | deepspeed_zero3) sets what each GPU holds and what crosses
the links per step (embed_lm/plan/sharding.py); cross-device negatives (loss.gather_across_devices) add their
embedding all-gather.

The memory and FLOP model is in embed_lm/plan/estimate.py; its activation coefficients are measured
(embed_lm/plan/activations.py) and re-checked against a fresh measurement in tests/test_plan.py.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from embed_lm.config import resolvers as conf_resolvers, validate
from embed_lm.errors import exit_on_user_error
from embed_lm.plan.estimate import largest_chunk, plan_step
from embed_lm.plan.shapes import shape_of
from embed_lm.plan.sharding import strategy_key
from embed_lm.training.strategies import strategy_name

conf_resolvers.register()


def devices_of(cfg: DictConfig) -> int:
    devices = int(cfg.trainer.devices if str(cfg.trainer.devices).isdigit() else cfg.plan.devices_if_auto)
    return devices * int(cfg.trainer.get("num_nodes", 1) or 1)


def gathers_across_devices(cfg: DictConfig, devices: int) -> bool:
    value = cfg.loss.get("gather_across_devices")  # null / absent = on whenever several devices train
    return devices > 1 and (value is None or bool(value))


def plan(cfg: DictConfig) -> dict:
    validate.check_train(cfg)  # the training options in range (a bad one: one line, exit 2)
    shape = shape_of(cfg.backbone)
    devices = devices_of(cfg)
    strategy = strategy_key(strategy_name(cfg.trainer.get("strategy")))
    local, negatives, seq = int(cfg.data.batch_size), int(cfg.data.negatives_per_query), int(cfg.data.max_length)
    mean_len = cfg.plan.get("mean_seq_len") or seq
    chunk = cfg.loss.get("mini_batch_size")
    bytes_per_value = 2 if "16" in str(cfg.plan.precision) else 4
    p = plan_step(shape, cfg.lora_rank.r, local, negatives, seq, devices, chunk, cfg.gradient_checkpointing,
                  bytes_per_value, cfg.plan.peak_tflops, cfg.plan.mfu, strategy, mean_len,
                  gathers_across_devices(cfg, devices))
    fits = largest_chunk(shape, cfg.lora_rank.r, local, negatives, seq, devices, cfg.gradient_checkpointing,
                         cfg.plan.gpu_memory_gb, bytes_per_value=bytes_per_value, strategy=strategy)
    print(f"model: {shape.layers} layers, hidden {shape.hidden}, FFN {shape.ffn}, {shape.params() / 1e9:.2f}B params"
          f", LoRA r{cfg.lora_rank.r}: {shape.lora_params(cfg.lora_rank.r):,} trainable")
    print(f"batch: {local} queries x {devices} devices = {local * devices} global, {2 + negatives} sequences each, "
          f"{seq} tokens max, {mean_len:g} mean; loss={'cached, chunk ' + str(chunk) if chunk else 'plain'}; "
          f"gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}; strategy {strategy}")
    print(f"memory per GPU: parameters {p.params_gb:.2f} GB + gradients {p.grads_gb:.3f} GB + optimiser "
          f"{p.optim_gb:.3f} GB + gathered layers {p.gathered_gb:.2f} GB + activations {p.activations_gb:.1f} GB = "
          f"{p.total_gb:.1f} GB of {cfg.plan.gpu_memory_gb} GB"
          f"{'' if p.total_gb <= cfg.plan.gpu_memory_gb else '  -> DOES NOT FIT'}")
    print(f"step: {p.step_flops / 1e15:.1f} PFLOP per GPU, about {p.step_seconds:.1f} s at {cfg.plan.mfu:.0%} of "
          f"{cfg.plan.peak_tflops} TFLOP/s ({p.tokens_per_second:,.0f} tokens/s per GPU)")
    gb = 1024 ** 3
    comm_s = p.comm_wire_bytes / (cfg.plan.link_gb_per_s * 1e9)
    print(f"communication per step: all-gather {p.comm['all_gather'] / gb:.2f} GB, reduce-scatter "
          f"{p.comm['reduce_scatter'] / gb:.3f} GB, all-reduce {p.comm['all_reduce'] / gb:.3f} GB; "
          f"{p.comm_wire_bytes / gb:.2f} GB sent per GPU, {comm_s:.2f} s at {cfg.plan.link_gb_per_s} GB/s "
          "if not overlapped")
    if strategy != "ddp":
        print(f"cached loss: refused with strategy {strategy} (embed_lm/training/strategies.py); use trainer=ddp")
    else:
        advice = "none: the weights alone do not fit" if fits == 0 else \
            f"loss=cached_infonce loss.mini_batch_size={fits}"
        print(f"largest cached-loss chunk that fits {cfg.plan.gpu_memory_gb} GB (90%): {advice}")
    return {"plan": p, "largest_chunk": fits, "shape": shape}


@hydra.main(version_base="1.3", config_path="../../conf", config_name="plan")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(plan, cfg)  # a UserError: one line, exit 2


if __name__ == "__main__":
    main()
