"""Reading checkpoint files as data: a Lightning `.ckpt` (torch.load with weights_only=True) and a DeepSpeed
checkpoint folder (DeepSpeed's own converter with every torch.load forced to weights_only=True). Used by resuming
(embed_lm/training/resume.py) and by loading a run for inference (embed_lm/inference/runs.py).

    read_checkpoint("<run>/checkpoints/last.ckpt")              # {"state_dict": ..., "embed_lm_config": ...}
    zero_checkpoint_state_dict("<run>/checkpoints/last.ckpt")   # a DeepSpeed <name>.ckpt/ folder -> LoRA weights
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from embed_lm import compat
from embed_lm.errors import MissingFileError, UnsafeFileError, UserError

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_forward_module.")


def clean_name(name: str) -> str:
    """A parameter's name as a state dict spells it: FSDP's and activation checkpointing's wrapper segments
    removed ('encoder._fsdp_wrapped_module.backbone...' -> 'encoder.backbone...')."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def read_checkpoint(path: str | Path, mmap: bool = False, require_state_dict: bool = True) -> dict:
    """A checkpoint's contents, loaded as data only (tensors and plain values; mmap=True leaves the tensors on disk
    until used); raises a UserError naming the file when it is damaged, not a checkpoint, or asks to run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError as e:
        raise UserError(f"checkpoint {path} does not exist") from e
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise UnsafeFileError(f"{path}: refused: loading it would call {found[1]} (code from the file); an "
                                  "embed_lm checkpoint holds only tensors and plain values. Do not load files from "
                                  "sources you do not trust") from None
        raise UserError(f"{path}: not a readable checkpoint (damaged, or not written by python -m embed_lm.train)"
                        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) and "weights_only" not in str(e) else type(e).__name__
        raise UserError(f"{path}: not a readable checkpoint ({reason}); damaged or truncated?") from None
    if not isinstance(state, dict) or (require_state_dict and "state_dict" not in state):
        raise UserError(f"{path}: not an embed_lm checkpoint (no state_dict)")
    return state


def zero_checkpoint_state_dict(checkpoint_dir: str | Path) -> dict[str, Tensor]:
    """The trainable weights (fp32) of a DeepSpeed checkpoint folder written by trainer=deepspeed_zero2/3
    (<run>/checkpoints/<name>.ckpt/ with `latest` and checkpoint/*_states.pt), keyed like the LightningModule's
    state dict, through DeepSpeed's own converter (get_fp32_state_dict_from_zero_checkpoint)."""
    path = Path(checkpoint_dir)
    if not (path / "latest").is_file():
        raise MissingFileError(f"{path} is a folder but not a DeepSpeed checkpoint (no {path / 'latest'}); pass a "
                                ".ckpt file or folder from a run's checkpoints/")
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as e:
        raise ImportError(f"{path} is a DeepSpeed checkpoint: reading it needs DeepSpeed "
                          "(pip install -e '.[deepspeed]')") from e
    try:
        with data_only_torch_load():
            state = get_fp32_state_dict_from_zero_checkpoint(str(path), exclude_frozen_parameters=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        raise UnsafeFileError(f"{path}: refused: a file in this DeepSpeed checkpoint holds more than tensors and "
                              f"plain values (loading it would call {found[1] if found else 'unknown code'}); do not "
                              "load checkpoints from sources you do not trust") from None
    return {clean_name(k): v for k, v in state.items()}


# DeepSpeed's own plain classes in its checkpoint files (an enum, a loss scaler's attributes, a dataclass of offsets)
DEEPSPEED_SAFE_GLOBALS = ("deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                          "deepspeed.utils.tensor_fragment.fragment_address")


@contextlib.contextmanager
def data_only_torch_load() -> Iterator[None]:
    """DeepSpeed's converter reads its files with torch.load(weights_only=False); inside this context every torch.load
    is weights_only=True with DeepSpeed's few plain classes allow-listed, so a crafted checkpoint cannot run code
    (compat entry torch-load-data-only)."""
    classes = [getattr(importlib.import_module(module), name)
               for module, _, name in (c.rpartition(".") for c in DEEPSPEED_SAFE_GLOBALS)]
    def load(*args, **kwargs):
        return original(*args, **{**kwargs, "weights_only": True})

    with torch.serialization.safe_globals(classes), compat.swapped("torch-load-data-only", load) as original:
        yield
