r"""Multi-device strategies as config (conf/trainer/*.yaml) and the start-up check of what combines with what.

    python -m embed_lm.train trainer=ddp loss=cached_infonce                    # the paper's batch
    python -m embed_lm.train trainer=fsdp loss=infonce
    python -m embed_lm.train trainer=deepspeed_zero3                           # pip install -e '.[deepspeed]'
    python -m embed_lm.train backbone=tiny_mistral backbone.dtype=bfloat16 data=sample debug=smoke \
        trainer=fsdp_cpu    # or ddp_cpu, deepspeed_zero2_cpu, deepspeed_zero3_cpu: 2 CPU processes over gloo

Cross-device negatives (loss.gather_across_devices=auto) are on with every strategy whenever world size > 1.

| strategy          | loss=infonce                                   | loss=cached_infonce                            |
|-------------------|------------------------------------------------|------------------------------------------------|
| single device     | yes                                            | yes                                            |
| ddp               | yes (tested: 2 gloo processes)                 | yes (its own gradient averaging; tested)       |
| fsdp              | yes: bf16 base + fp32 LoRA and buffers, only   | refused: FSDP reduce-scatters gradients inside |
|                   | LoRA gathered for checkpoints, resume, test    | every backward pass                            |
|                   | before/after training (tested: 2 gloo procs)   |                                                |
| deepspeed stage 2 | yes: LoRA-only checkpoint folders, fp32-master | refused: ZeRO-2 partitions and reduces         |
|                   | adapter, test after training (tested: 2 gloo)  | gradients during each backward pass            |
| deepspeed stage 3 | yes: partitioned parameters, fp32-master       | refused: ZeRO-3 is known to break GradCache    |
|                   | adapter, test after training (tested: 2 gloo)  | (parameters gathered per forward pass)         |
Every *_cpu preset is its GPU preset (bf16-mixed included) with only accelerator, devices and process-group backend
changed (tests/test_trainer_presets.py). Library internals used here are listed in embed_lm/compat.py.
Also refused with the cached loss: fp16 autocast ("16-mixed": it needs loss scaling; use bf16-mixed) and gradient
accumulation (accumulating never enlarges the negative pool; raise data.batch_size instead).
Resuming: ckpt_path=<run>/checkpoints/last.ckpt, a file (fsdp, ddp) or a folder (deepspeed).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp import MixedPrecision

from embed_lm import compat

from embed_lm.errors import ConfigError


class IncompatibleSetupError(ConfigError):
    pass


def trainable_leaf(module: torch.nn.Module) -> bool:
    """A leaf module with a trainable weight (LoRA's lora_A / lora_B Linear): FSDP wraps it on its own."""
    weight = getattr(module, "weight", None)
    return next(module.children(), None) is None and weight is not None and weight.requires_grad


def lora_wrap_policy(layer_classes: set[type]):
    """PEFT's FSDP policy (peft.utils.other.fsdp_auto_wrap_policy) without needing the model up front: every
    decoder layer is one FSDP unit, and every trainable leaf (a LoRA matrix) is a unit of its own. So each flat
    parameter holds one dtype: the frozen base weights (bf16 on GPUs) apart from the fp32 LoRA weights, which
    "Must flatten tensors with uniform dtype" otherwise refuses; and a checkpoint gathers only the LoRA units."""
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy, transformer_auto_wrap_policy

    policies = [functools.partial(lambda_auto_wrap_policy, lambda_fn=trainable_leaf),
                functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layer_classes)]

    def either(module: torch.nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        return any(policy(module=module, recurse=recurse, nonwrapped_numel=nonwrapped_numel) for policy in policies)

    return either


def keep_buffers_fp32(config: MixedPrecision | None) -> MixedPrecision | None:
    """The precision plugin's FSDP mixed precision with fp32 gradient reduction and buffers left in their own dtype:
    Lightning's bf16-mixed casts every buffer to bf16, the RoPE inv_freq included (rounded positions in training,
    fp32 ones at inference: an angle error of ~0.6 rad at position 512 for Mistral-7B shapes). Every unit casts
    its floating inputs to the compute dtype (PEFT casts a LoRA matrix's input to its weight's dtype, which outside
    the unit's forward is the fp32 sharded weight)."""
    if config is None:
        return None
    return MixedPrecision(param_dtype=config.param_dtype, reduce_dtype=torch.float32, buffer_dtype=None,
                          cast_forward_inputs=True)  # PEFT casts a LoRA input to the fp32 sharded weight's dtype


@contextlib.contextmanager
def _full_state_dicts_without_cpu_offload() -> Iterator[None]:
    """On CPU processes, Lightning's full state-dict contexts without offload_to_cpu (compat entry
    fsdp-full-state-dict-context: on CPU parameters torch 2.13's FSDP would free memory still in use)."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType

    def no_offload(module, world_size: int, rank0_only: bool = True):
        return FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                    FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                    FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))

    with compat.swapped("fsdp-full-state-dict-context", no_offload):
        yield


class LoraFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy with what LoRA training needs, the same on GPUs and on CPU processes (trainer=fsdp_cpu):
    - the LightningModule wraps its encoder in `configure_model` (Lightning's way: `shard`), once; every Trainer
      stage (test before training, fit with validation, test after training) then uses the same FSDP module;
    - mixed precision keeps buffers fp32 and reduces gradients in fp32 (keep_buffers_fp32);
    - checkpoints gather only the trainable (LoRA) units, never the frozen base (lightning_module_state_dict), and
      the optimiser state through torch's public API (optimizer_state);
    - resuming reads the checkpoint with torch.load(mmap=True) (load_checkpoint; compat entry fsdp-lazy-load).
    Lightning refuses accelerator=cpu only for the exact FSDPStrategy type; a subclass passes."""

    def __init__(self, wrap_policy=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.wrap_policy = wrap_policy

    @property
    def mixed_precision_config(self) -> MixedPrecision | None:
        return self.mixed_precision or keep_buffers_fp32(super().mixed_precision_config)

    def shard(self, module: torch.nn.Module) -> FSDP:
        """`module` wrapped by FSDP with this strategy's policy and settings (called by configure_model, inside
        Lightning's model_sharded_context). On CPU, torch's FSDP needs the device itself (Lightning passes its index,
        None on CPU)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for layer in module.modules():  # FSDP casts each unit's inputs (keep_buffers_fp32); PEFT's own cast would use
            if isinstance(layer, BaseTunerLayer):  # the sharded fp32 weight's dtype, or the gathered bf16 one when
                layer.cast_input_dtype_enabled = False  # recomputed under gradient checkpointing (a mismatch)
        device = self.root_device
        return FSDP(module, auto_wrap_policy=self.wrap_policy, cpu_offload=self.cpu_offload,
                    mixed_precision=self.mixed_precision_config, sharding_strategy=self.sharding_strategy,
                    device_id=device if device.type == "cpu" else device.index, **self.kwargs)

    def _offload(self) -> bool:
        return self.root_device.type != "cpu"

    def lightning_module_state_dict(self) -> dict:
        """The trainable weights only, gathered unit by unit on every rank (a collective), kept on rank 0."""
        from embed_lm.training.checkpoints import fsdp_trainable_state_dict

        state = fsdp_trainable_state_dict(self.model, offload=self._offload())
        return state if self.global_rank == 0 else {}

    def optimizer_state(self, optimizer) -> dict:
        """The full optimiser state (LoRA tensors only: the optimiser holds nothing else) on rank 0, as Lightning's
        full state dict stores it, through torch's public FSDP API (no CPU offload on CPU processes)."""
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.fsdp import (FullOptimStateDictConfig, FullStateDictConfig, OptimStateKeyType,
                                            StateDictType)

        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer
        offload = self._offload()
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
                                  FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True)):
            state = FSDP.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        """Lightning reads a full checkpoint with its _lazy_load, which fails under torch 2.13 (UntypedStorage has
        no dtype) on any device: torch.load(mmap=True) instead, as Lightning's own model-parallel loader does."""
        def load(path):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=bool(weights_only))

        cpu_safe = contextlib.nullcontext() if self._offload() else _full_state_dicts_without_cpu_offload()
        with cpu_safe, compat.swapped("fsdp-lazy-load", load):
            return super().load_checkpoint(checkpoint_path, weights_only)


def ddp(process_group_backend: str | None = None) -> DDPStrategy:
    """Lightning's DDPStrategy (what trainer.strategy=ddp builds), with the process-group backend as an option so that
    trainer=ddp_cpu differs from trainer=ddp only in it (gloo) and the accelerator."""
    return DDPStrategy(process_group_backend=process_group_backend)


def fsdp(sharding_strategy: str = "FULL_SHARD", layer_classes: list[str] | None = None,
         activation_checkpointing: bool = False, **kwargs) -> LoraFSDPStrategy:
    """FSDP sharding each decoder layer (`layer_classes`, dotted names) with LoRA matrices wrapped apart
    (lora_wrap_policy), use_orig_params for LoRA's mix of frozen and trainable parameters. FSDP mixed precision
    follows trainer.precision (bf16-mixed: bf16 compute, fp32 gradient reduction, fp32 buffers and LoRA master
    weights); `kwargs` go to Lightning's FSDPStrategy (e.g. process_group_backend=gloo for CPU)."""
    classes = set()
    for dotted in layer_classes or []:
        module, _, name = dotted.rpartition(".")
        classes.add(getattr(importlib.import_module(module), name))
    return LoraFSDPStrategy(wrap_policy=lora_wrap_policy(classes), sharding_strategy=sharding_strategy,
                            use_orig_params=True,
                            activation_checkpointing_policy=classes if activation_checkpointing else None, **kwargs)


class ZeroStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy that also runs on CPU processes (gloo; DeepSpeed picks its CPU accelerator when
    no GPU is visible), for tests and for checking a set-up here. On GPUs it behaves exactly as the parent.

    On CPU (compat entries zero-*): the CUDA-only check in setup_environment and the device-index check in
    setup_distributed are skipped, deepspeed.initialize gets the local rank as its device rank (for training and for
    the inference set-up of test/validate), and DeepSpeed's compiled shared-memory all-reduce is skipped (gloo
    communicates). Tested by tests/test_deepspeed.py.
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
        with compat.swapped("zero-shm-allreduce", lambda: None):
            compat.original("zero-setup-distributed")(self)

    def init_deepspeed(self) -> None:
        if not self._on_cpu():
            return super().init_deepspeed()
        rank = self.local_rank

        def initialize(*args, **kwargs):
            if getattr(kwargs.get("args"), "device_rank", 0) is None:
                kwargs["args"].device_rank = rank
            return initialize.original(*args, **kwargs)

        with compat.swapped("zero-device-rank", initialize) as initialize.original:
            super().init_deepspeed()


def deepspeed(stage: int, gradient_clipping: float | None = 1.0, param_persistence_threshold: int | None = None,
              process_group_backend: str | None = None) -> ZeroStrategy:
    """DeepSpeed ZeRO `stage` 2 or 3 with the optimiser from configure_optimizers (AdamW: no DeepSpeed ops are
    compiled), gradient clipping done by DeepSpeed (optimizer.grad_clip), and checkpoints without the frozen
    base weights (a <name>.ckpt/ folder of LoRA weights + optimiser shards; embed_lm.training.checkpoints reads it).
    param_persistence_threshold: ZeRO-3 keeps parameters smaller than this gathered (DeepSpeed's default 1e5
    exceeds every weight of a tiny model: the tests set 0 so that partitioning is real)."""
    if stage not in (2, 3):
        raise ConfigError(f"trainer.strategy.stage must be 2 or 3 (DeepSpeed ZeRO), got {stage}")
    zero: dict = {"stage": stage}
    if param_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = param_persistence_threshold
    # train_micro_batch_size_per_gpu: only DeepSpeed's throughput timers read it (Lightning feeds the batches); set,
    # so that Lightning never builds the train dataloader to guess it (it would in a test stage before training)
    config = {"zero_optimization": zero, "zero_allow_untested_optimizer": True,
              "gradient_clipping": float(gradient_clipping or 0.0), "train_micro_batch_size_per_gpu": 1}
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
