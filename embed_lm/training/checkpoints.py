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

from embed_lm import compat
from embed_lm.inference.checkpoint_files import clean_name

if TYPE_CHECKING:
    import lightning as L

def _name_in(root: torch.nn.Module, module: torch.nn.Module) -> str:
    """module's state-dict prefix inside root ('' for root itself)."""
    for name, m in root.named_modules():
        if m is module:
            return clean_name(name + ".") if name else ""
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}")


def fsdp_trainable_state_dict(root: torch.nn.Module, offload: bool = False) -> dict[str, Tensor]:
    """The trainable weights under FSDP, full-size, named as root.state_dict() names them, on every rank (a
    collective: call it on all ranks). Only the FSDP units holding trainable weights are gathered, one at a time
    (lora_wrap_policy makes each LoRA matrix a unit of its own): the frozen base is never gathered, so a checkpoint
    of a 7B run moves and holds only the LoRA bytes. offload: copy each gathered tensor to the CPU (GPUs)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    names = {id(p): clean_name(n) for n, p in root.named_parameters() if p.requires_grad}
    for top in FSDP.fsdp_modules(root, root_only=True):  # before any forward: else each unit takes itself for a root
        compat.original("fsdp-lazy-init")(top, top)
    state: dict[str, Tensor] = {}
    for unit in FSDP.fsdp_modules(root):
        own = [p for p in unit.module.parameters(recurse=False) if id(p) in names]
        if not own:  # a decoder layer's unit (frozen) or a unit whose trainable weights sit in child units
            continue
        with FSDP.summon_full_params(unit, recurse=False, writeback=False):
            for p in own:
                state[names[id(p)]] = p.detach().to("cpu" if offload else p.device, copy=True)
    missing = set(names.values()) - set(state)
    if missing:
        raise RuntimeError(f"{len(missing)} trainable tensors are not in an FSDP unit of their own (e.g. "
                           f"{sorted(missing)[0]}); trainer=fsdp wraps each LoRA matrix apart (lora_wrap_policy)")
    return state


def adapter_weights(trainer: L.Trainer, peft_model: torch.nn.Module) -> dict[str, Tensor]:
    """The trainable weights of `peft_model`, full-size, on CPU, named as peft_model.state_dict() names them (what
    write_adapter takes). Call it on every rank: under FSDP and ZeRO-3 the gathering is a collective. Complete on
    every rank.
    DeepSpeed with bf16-mixed trains bf16 module weights against fp32 master weights held by its optimiser: the
    adapter is written from the fp32 master weights (what the checkpoint holds), not from the rounded module."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy  # here: runs.py needs no Lightning

    strategy = trainer.strategy
    named = [(clean_name(n), p) for n, p in peft_model.named_parameters() if p.requires_grad]
    if isinstance(strategy, FSDPStrategy):
        root = strategy.model  # the LightningModule, its encoder wrapped in configure_model
        prefix = _name_in(root, peft_model)
        full = fsdp_trainable_state_dict(root, offload=strategy.root_device.type != "cpu")
        return {k[len(prefix):]: v.cpu() for k, v in full.items() if k.startswith(prefix)}
    if isinstance(strategy, DeepSpeedStrategy):
        return _zero_fp32_weights(strategy, named)
    return {n: p.detach().cpu().clone() for n, p in named}


def _zero_fp32_weights(strategy, named: list[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """The fp32 master weights of DeepSpeed's optimiser for `named` parameters, full-size, on every rank
    (deepspeed.utils.safe_get_full_fp32_param: public, a collective under ZeRO-3)."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for n, p in named:
        full = safe_get_full_fp32_param(p)
        if full is None:
            raise RuntimeError(f"DeepSpeed holds no fp32 master weight for {n}; is it trained by the engine's optimiser?")
        out[n] = full.detach().float().cpu().clone()
    return out


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


