"""Multi-device strategies as config (conf/trainer/*.yaml) and the start-up check of what combines with what.

    python -m embed_lm.train trainer=ddp loss=cached_infonce loss.gather_across_devices=true     # the paper's batch
    python -m embed_lm.train trainer=fsdp loss=infonce loss.gather_across_devices=true
    python -m embed_lm.train trainer=deepspeed_zero2                                            # pip install deepspeed

| strategy          | loss=infonce | loss=cached_infonce                                                        |
|-------------------|--------------|----------------------------------------------------------------------------|
| single device     | yes          | yes                                                                        |
| ddp               | yes          | yes (its own gradient averaging; tested with 2 gloo processes)             |
| fsdp              | yes          | refused: FSDP reduce-scatters gradients inside every backward pass          |
| deepspeed stage 2 | yes          | refused: ZeRO-2 partitions and reduces gradients during each backward pass |
| deepspeed stage 3 | yes          | refused: ZeRO-3 is known to break GradCache (parameters gathered per forward) |
Also refused with the cached loss: fp16 autocast ("16-mixed": it needs loss scaling; use bf16-mixed) and gradient
accumulation (accumulating never enlarges the negative pool; raise data.batch_size instead).
"""

from __future__ import annotations

import importlib

from lightning.pytorch.strategies import FSDPStrategy


class IncompatibleSetupError(ValueError):
    pass


def fsdp(sharding_strategy: str = "FULL_SHARD", layer_classes: list[str] | None = None,
         activation_checkpointing: bool = False) -> FSDPStrategy:
    """FSDP sharding each decoder layer (`layer_classes`, dotted names); use_orig_params for LoRA's mix of frozen
    and trainable parameters."""
    classes = set()
    for dotted in layer_classes or []:
        module, _, name = dotted.rpartition(".")
        classes.add(getattr(importlib.import_module(module), name))
    return FSDPStrategy(sharding_strategy=sharding_strategy, auto_wrap_policy=classes or None, use_orig_params=True,
                        activation_checkpointing_policy=classes if activation_checkpointing else None)


def strategy_name(strategy) -> str:
    """'ddp', 'deepspeed_stage_3', ... for a strategy string, a config node with _target_, or an object."""
    if strategy is None:
        return "auto"
    if isinstance(strategy, str):
        return strategy.lower()
    if hasattr(strategy, "get") and strategy.get("_target_"):
        return str(strategy["_target_"]).rsplit(".", 1)[-1].lower()
    return type(strategy).__name__.lower()


def check_setup(loss, strategy, precision: str, accumulate_grad_batches: int) -> None:
    """Refuse combinations that cannot train correctly, with the reason and the alternative."""
    name = strategy_name(strategy)
    if "deepspeed" in name:
        try:
            importlib.import_module("deepspeed")
        except ImportError as e:
            raise IncompatibleSetupError(f"trainer.strategy={name} needs DeepSpeed: pip install deepspeed") from e
    if not getattr(loss, "mini_batch_size", None):
        return
    why = None
    if "fsdp" in name:
        why = "FSDP reduce-scatters gradients inside every backward pass, and GradCache runs one per chunk"
    elif "deepspeed" in name and ("3" in name or "stage_3" in name):
        why = "DeepSpeed ZeRO-3 is known to break GradCache (parameters are gathered per forward pass)"
    elif "deepspeed" in name:
        why = "DeepSpeed ZeRO-2 partitions and reduces gradients during each backward pass"
    elif str(precision).startswith("16"):
        why = "fp16 autocast needs loss scaling, which the cached loss's own backward passes do not apply; use " \
              "trainer.precision=bf16-mixed (or 32-true)"
    elif accumulate_grad_batches > 1:
        why = "gradient accumulation never enlarges the in-batch negative pool; raise data.batch_size instead"
    if why:
        raise IncompatibleSetupError(f"loss=cached_infonce cannot run with trainer.strategy={name}, precision="
                                     f"{precision}, accumulate_grad_batches={accumulate_grad_batches}: {why}. "
                                     "Use trainer=ddp (or one device) with the cached loss, or loss=infonce.")
