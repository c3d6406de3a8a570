"""What checkpoints and the saved adapter need from the strategy: parameter names under wrappers, the LoRA weights
gathered from every rank (FSDP, DeepSpeed ZeRO-3), and a DeepSpeed checkpoint folder read back as a state dict.

    adapter_weights(trainer, peft_model)       # on EVERY rank (a collective under FSDP / ZeRO-3); complete on rank 0
    write_adapter(peft_model, weights, dir)    # rank 0: PEFT's adapter folder

A checkpoint holds only the trainable (LoRA) weights: ContrastiveEncoderModule.on_save_checkpoint trims the state
dict (single device, DDP, FSDP's full state dict), DeepSpeed writes with exclude_frozen_parameters=True.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from embed_lm.inference.checkpoint_files import clean_name

if TYPE_CHECKING:
    import lightning as L

def _name_in(root: torch.nn.Module, module: torch.nn.Module) -> str:
    """module's state-dict prefix inside root ('' for root itself)."""
    for name, m in root.named_modules():
        if m is module:
            return clean_name(name + ".") if name else ""
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}")


def adapter_weights(trainer: L.Trainer, peft_model: torch.nn.Module) -> dict[str, Tensor]:
    """The trainable weights of `peft_model`, full-size, on CPU, named as peft_model.state_dict() names them (what
    write_adapter takes). Call it on every rank: under FSDP the full state dict and
    under ZeRO-3 the gathering are collectives. Complete on rank 0 (FSDP leaves the other ranks empty)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy  # here: runs.py needs no Lightning

    strategy = trainer.strategy
    trainable = {clean_name(n) for n, p in peft_model.named_parameters() if p.requires_grad}
    if isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = strategy.model  # FSDP(LightningModule)
        prefix = _name_in(root, peft_model)
        offload = strategy.root_device.type != "cpu"  # on CPU it would segfault: strategies.LoraFSDPStrategy
        with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=offload, rank0_only=True)):
            full = root.state_dict()  # gathered unit by unit; only rank 0 keeps the tensors
        return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix) and k[len(prefix):] in trainable}
    named = [(clean_name(n), p) for n, p in peft_model.named_parameters() if p.requires_grad]
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in named}
    return {n: p.detach().cpu().clone() for n, p in named}


def write_adapter(peft_model: torch.nn.Module, weights: dict[str, Tensor], path: Path) -> None:
    """PEFT's adapter folder (adapter_config.json + adapter_model.safetensors, keys without the adapter name, as
    PeftModel.from_pretrained reads it) from weights gathered by adapter_weights. Not PeftModel.save_pretrained:
    it finds the LoRA entries by module names, which FSDP's wrappers change, and would then write none."""
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import save_file

    name = peft_model.active_adapter
    path.mkdir(parents=True, exist_ok=True)
    config = copy.copy(peft_model.peft_config[name])
    config.inference_mode = True  # as save_pretrained writes it
    base = type(peft_model.get_base_model())
    config.save_pretrained(str(path), auto_mapping_dict=None if config.task_type else {
        "base_model_class": base.__name__, "parent_library": base.__module__})
    save_file({k.replace(f".{name}.", "."): v.contiguous() for k, v in weights.items()},
              str(path / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})


