r"""Multi-device strategies as config (conf/trainer/*.yaml) and the start-up check of what combines with what.

    python -m embed_lm.train trainer=ddp loss=cached_infonce                    # the paper's batch
    python -m embed_lm.train trainer=fsdp loss=infonce
    python -m embed_lm.train trainer=deepspeed_zero3                           # pip install -e '.[deepspeed]'
    python -m embed_lm.train backbone=tiny_mistral backbone.tiny.dtype=bfloat16 data=sample debug=smoke \
        trainer=fsdp_cpu    # or ddp_cpu, deepspeed_zero2_cpu, deepspeed_zero3_cpu: 2 CPU processes over gloo

Cross-device negatives (loss.gather_across_devices=auto) are on with every strategy whenever world size > 1.

| strategy          | loss=infonce                                   | loss=cached_infonce                            |
|-------------------|------------------------------------------------|------------------------------------------------|
| single device     | yes                                            | yes                                            |
| ddp               | yes (tested: 2 gloo processes)                 | yes (its own gradient averaging; tested)       |
| fsdp              | yes: bf16 base + fp32 LoRA, LoRA-only          | refused: FSDP reduce-scatters gradients inside |
|                   | checkpoints, resume (tested: 2 gloo processes) | every backward pass                            |
| deepspeed stage 2 | yes: LoRA-only checkpoint folders (tested: 2   | refused: ZeRO-2 partitions and reduces         |
|                   | gloo processes)                                | gradients during each backward pass            |
| deepspeed stage 3 | yes: partitioned parameters, adapter gathered  | refused: ZeRO-3 is known to break GradCache    |
|                   | before saving (tested: 2 gloo processes)       | (parameters gathered per forward pass)         |
Also refused with the cached loss: fp16 autocast ("16-mixed": it needs loss scaling; use bf16-mixed) and gradient
accumulation (accumulating never enlarges the negative pool; raise data.batch_size instead).
Resuming: ckpt_path=<run>/checkpoints/last.ckpt, a file (fsdp, ddp) or a folder (deepspeed).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
from collections.abc import Iterator
from unittest import mock

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP


class IncompatibleSetupError(ValueError):
    pass


def trainable_leaf(module: torch.nn.Module) -> bool:
    """A leaf module with a trainable weight (LoRA's lora_A / lora_B Linear): FSDP wraps it on its own."""
    weight = getattr(module, "weight", None)
    return next(module.children(), None) is None and weight is not None and weight.requires_grad


def lora_wrap_policy(layer_classes: set[type]):
    """PEFT's FSDP policy (peft.utils.other.fsdp_auto_wrap_policy) without needing the model up front: every
    decoder layer is one FSDP unit, and every trainable leaf (a LoRA matrix) is a unit of its own. So each flat
    parameter holds one dtype: the frozen base weights (bf16 on GPUs) apart from the fp32 LoRA weights, which
    "Must flatten tensors with uniform dtype" otherwise refuses."""
    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy, transformer_auto_wrap_policy

    return functools.partial(_or_policy, policies=[
        functools.partial(lambda_auto_wrap_policy, lambda_fn=trainable_leaf),
        functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layer_classes)])


@contextlib.contextmanager
def _full_state_dicts_without_cpu_offload() -> Iterator[None]:
    """Lightning always asks FSDP for full state dicts with offload_to_cpu=True; on parameters that already live on
    the CPU, torch 2.13's FSDP then frees memory still in use (segfault, measured with 2 gloo processes). On CPU
    processes the same contexts without the (pointless) offload are used instead."""
    import lightning.fabric.strategies.fsdp as fabric_fsdp
    import lightning.fabric.strategies.model_parallel as fabric_mp
    import lightning.pytorch.strategies.fsdp as pytorch_fsdp
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType

    def no_offload(module, world_size: int, rank0_only: bool = True):
        return FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                    FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                    FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))

    with contextlib.ExitStack() as stack:
        for module in (fabric_fsdp, fabric_mp, pytorch_fsdp):
            if hasattr(module, "_get_full_state_dict_context"):
                stack.enter_context(mock.patch.object(module, "_get_full_state_dict_context", no_offload))
        yield


class LoraFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, which on GPUs it is. On CPU processes (trainer=fsdp_cpu, gloo), for tests:
    Lightning refuses accelerator=cpu only for the exact FSDPStrategy type (a subclass passes), torch's FSDP
    needs the CPU device named explicitly (Lightning passes the device index, None on CPU), and full state dicts
    must not offload to the CPU (_full_state_dicts_without_cpu_offload). On every device: resuming reads the
    checkpoint with torch.load (load_checkpoint). Written against lightning 2.6.6 and torch 2.13; tests/test_fsdp.py
    runs all of it."""

    def _cpu_safe(self):
        return _full_state_dicts_without_cpu_offload() if self.root_device.type == "cpu" else contextlib.nullcontext()

    def lightning_module_state_dict(self) -> dict:
        with self._cpu_safe():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer) -> dict:
        with self._cpu_safe():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        """Lightning reads a full checkpoint with its _lazy_load, which fails under torch 2.13 (UntypedStorage has
        no dtype) on any device: torch.load(mmap=True) instead, as Lightning's own model-parallel loader does."""
        import lightning.pytorch.strategies.fsdp as pytorch_fsdp

        def load(path):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=bool(weights_only))

        with self._cpu_safe(), mock.patch.object(pytorch_fsdp, "_lazy_load", load):
            return super().load_checkpoint(checkpoint_path, weights_only)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type != "cpu" or any(isinstance(m, FSDP) for m in model.modules()):
            return super()._setup_model(model)
        from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing

        model = FSDP(module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                     sharding_strategy=self.sharding_strategy, device_id=self.root_device, **self.kwargs)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


def ddp(process_group_backend: str | None = None) -> DDPStrategy:
    """Lightning's DDPStrategy (what trainer.strategy=ddp builds), with the process-group backend as an option so that
    trainer=ddp_cpu differs from trainer=ddp only in it (gloo) and the accelerator."""
    return DDPStrategy(process_group_backend=process_group_backend)


def fsdp(sharding_strategy: str = "FULL_SHARD", layer_classes: list[str] | None = None,
         activation_checkpointing: bool = False, **kwargs) -> LoraFSDPStrategy:
    """FSDP sharding each decoder layer (`layer_classes`, dotted names) with LoRA matrices wrapped apart
    (lora_wrap_policy), use_orig_params for LoRA's mix of frozen and trainable parameters. FSDP mixed precision
    follows trainer.precision (bf16-mixed: bf16 compute and reduce, fp32 LoRA master weights); `kwargs` go to
    Lightning's FSDPStrategy (e.g. process_group_backend=gloo for CPU)."""
    classes = set()
    for dotted in layer_classes or []:
        module, _, name = dotted.rpartition(".")
        classes.add(getattr(importlib.import_module(module), name))
    return LoraFSDPStrategy(sharding_strategy=sharding_strategy, auto_wrap_policy=lora_wrap_policy(classes),
                            use_orig_params=True,
                            activation_checkpointing_policy=classes if activation_checkpointing else None, **kwargs)


class ZeroStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy that also runs on CPU processes (gloo; DeepSpeed picks its CPU accelerator when
    no GPU is visible), for tests and for checking a set-up here. On GPUs it behaves exactly as the parent.

    Three private Lightning steps refuse or break on CPU (written against lightning 2.6.6 and deepspeed 0.19.8,
    tested by tests/test_deepspeed.py): the CUDA-only check in setup_environment, the device-index check in
    setup_distributed, and deepspeed.initialize's device rank (a CPU device has no index: the local rank is used).
    DeepSpeed's compiled shared-memory all-reduce is skipped on CPU (gloo communicates).
    """

    def _on_cpu(self) -> bool:
        return self.root_device.type == "cpu"

    def setup_environment(self) -> None:
        if not self._on_cpu():
            return super().setup_environment()
        DDPStrategy.setup_environment(self)  # what the parent does after its CUDA check

    def setup_distributed(self) -> None:
        if not self._on_cpu():
            return super().setup_distributed()
        reset_seed()
        self.set_world_ranks()
        # DeepSpeed's CPU accelerator would JIT-compile a shared-memory all-reduce (C++; minutes of CPU here):
        # gloo does the communication without it
        with mock.patch("deepspeed.comm.torch.build_shm_op", lambda: None):
            self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        if not self._on_cpu():
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank), config=self.config, model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad], optimizer=optimizer,
            lr_scheduler=lr_scheduler, dist_init_required=False)
        return engine, ds_optimizer


def deepspeed(stage: int, gradient_clipping: float | None = 1.0, param_persistence_threshold: int | None = None,
              process_group_backend: str | None = None) -> ZeroStrategy:
    """DeepSpeed ZeRO `stage` 2 or 3 with the optimiser from configure_optimizers (AdamW: no DeepSpeed ops are
    compiled), gradient clipping done by DeepSpeed (optimizer.grad_clip), and checkpoints without the frozen
    base weights (a <name>.ckpt/ folder of LoRA weights + optimiser shards; embed_lm.training.checkpoints reads it).
    param_persistence_threshold: ZeRO-3 keeps parameters smaller than this gathered (DeepSpeed's default 1e5
    exceeds every weight of a tiny model: the tests set 0 so that partitioning is real)."""
    if stage not in (2, 3):
        raise ValueError(f"trainer.strategy.stage must be 2 or 3 (DeepSpeed ZeRO), got {stage}")
    zero: dict = {"stage": stage}
    if param_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = param_persistence_threshold
    config = {"zero_optimization": zero, "zero_allow_untested_optimizer": True,
              "gradient_clipping": float(gradient_clipping or 0.0)}
    return ZeroStrategy(config=config, exclude_frozen_parameters=True, process_group_backend=process_group_backend)


def strategy_name(strategy) -> str:
    """'ddp', 'deepspeed_stage_3', ... for a strategy string, a config node with _target_, or an object."""
    if strategy is None:
        return "auto"
    if isinstance(strategy, str):
        return strategy.lower()
    if hasattr(strategy, "get") and strategy.get("_target_"):
        name = str(strategy["_target_"]).rsplit(".", 1)[-1].lower()
        return f"{name}_stage_{strategy['stage']}" if strategy.get("stage") else name
    return type(strategy).__name__.lower()


def check_setup(loss, strategy, precision: str, accumulate_grad_batches: int, full_finetune: bool = False) -> None:
    """Refuse combinations that cannot train correctly, with the reason and the alternative."""
    name = strategy_name(strategy)
    if full_finetune and ("fsdp" in name or "deepspeed" in name):
        raise IncompatibleSetupError(f"lora_rank=full cannot run with trainer.strategy={name} yet: its checkpoint and "
                                     "embedder saving under FSDP/DeepSpeed are written (and tested) for LoRA adapters. "
                                     "Use one device or trainer=ddp for full fine-tuning, or a LoRA rank (lora_rank=r16)")
    if "deepspeed" in name:
        try:
            importlib.import_module("deepspeed")
        except ImportError as e:
            raise IncompatibleSetupError(f"trainer.strategy={name} needs DeepSpeed: DS_BUILD_OPS=0 pip install "
                                         "deepspeed (pip install -e '.[deepspeed]' and make install do it)") from e
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
