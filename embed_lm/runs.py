"""Load what a training run wrote, for the entry points that use it (evaluate, encode, export, passkey).

    load_run("outputs/train/runs/<run>")                       # base model + the run's LoRA adapter (embedder/),
                                                               # or its full weights (embedder/model/, lora_rank=full)
    load_run("outputs/train/runs/<run>/checkpoints/last.ckpt") # base model + the LoRA weights of that checkpoint
    load_run("exported/<name>")                                # a merged export (python -m embed_lm.export)
    load_base(cfg)                                             # a base model, no adapter (backbone/pooling/style)

The run's resolved config (embedder/config.yaml) rebuilds the same backbone, pooling, instruction style and
maximum length that training used. Like train.py, this module may instantiate config; library code does not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel

from embed_lm.model.collator import TextCollator
from embed_lm.embedder import Embedder
from embed_lm.model.encoder import TextEncoder


MERGED_CONFIG = "embed_lm.yaml"  # written by python -m embed_lm.export next to the merged weights
FULL_WEIGHTS = "model"          # embedder/model/: a lora_rank=full run's weights (no adapter/)


class RunNotFoundError(FileNotFoundError):
    pass


def find_embedder_dir(run: str | Path) -> tuple[Path, Path | None]:
    """(embedder dir, checkpoint or None) for a run folder, its embedder/ folder, or a .ckpt inside the run."""
    path = Path(run).expanduser()
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise RunNotFoundError(f"checkpoint {path} does not exist")
        candidates = [p / "embedder" for p in path.parents][:3]
        found = next((c for c in candidates if (c / "config.yaml").is_file()), None)
        if found is None:
            raise RunNotFoundError(f"no embedder/config.yaml next to checkpoint {path} (looked in "
                                   f"{', '.join(map(str, candidates))}); pass the run folder written by "
                                   "python -m embed_lm.train")
        return found, path
    for candidate in (path / "embedder", path):
        if (candidate / "config.yaml").is_file() and ((candidate / "adapter" / "adapter_config.json").is_file()
                                                     or (candidate / FULL_WEIGHTS / "config.json").is_file()):
            return candidate, None
    raise RunNotFoundError(f"{path} is not a training run: expected {path / 'embedder' / 'config.yaml'} and "
                           f"{path / 'embedder' / 'adapter' / 'adapter_config.json'} (or embedder/{FULL_WEIGHTS}/"
                           "config.json; written by python -m embed_lm.train), a .ckpt file inside a run's checkpoints/, or a merged export "
                           f"with {MERGED_CONFIG} (python -m embed_lm.export)")


def build_embedder(cfg: DictConfig, adapter_dir: Path | None = None, ckpt: Path | None = None,
                   device: str = "cpu", merge: bool = False, max_length: int | None = None) -> Embedder:
    """adapter_dir: a run's embedder/ folder (LoRA adapter/ on the base model, or full weights in model/)."""
    full = adapter_dir is not None and (adapter_dir / FULL_WEIGHTS / "config.json").is_file()
    if full:  # lora_rank=full: the run's own weights replace the base model's
        cfg = OmegaConf.merge(cfg, {"backbone": {"model_name_or_path": str(adapter_dir / FULL_WEIGHTS),
                                                 "size": "full"}})
    spec = instantiate(cfg.backbone)
    backbone = spec.load()
    model = backbone.model
    if adapter_dir is not None and not full:
        model = PeftModel.from_pretrained(model, str(adapter_dir / "adapter"))
    if ckpt is not None:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        prefix = "encoder.backbone."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing = [k for k in weights if k not in dict(model.named_parameters())]
        if missing:
            raise KeyError(f"{ckpt}: {len(missing)} tensors do not fit the run's "
                           f"{'weights' if full else 'adapter'} (e.g. {missing[0]})")
        model.load_state_dict(weights, strict=False)
    if merge and isinstance(model, PeftModel):
        model = model.merge_and_unload()
    tokenizer = backbone.tokenizer
    if adapter_dir is not None and (adapter_dir / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir / "tokenizer"))
    collator = TextCollator(tokenizer, max_length or cfg.data.max_length, backbone.append_eos, backbone.padding_side)
    encoder = TextEncoder(model, instantiate(cfg.pooling))
    dtype = torch.bfloat16 if str(device).startswith("cuda") and torch.cuda.is_bf16_supported() else None
    return Embedder(encoder, collator, instantiate(cfg.instruction_style), device=device, dtype=dtype)


def load_run(run: str | Path, device: str = "cpu", merge: bool = False, max_length: int | None = None
             ) -> tuple[Embedder, DictConfig]:
    """The run's embedder and its resolved training config (a merged export: its weights, no adapter)."""
    if (Path(run).expanduser() / MERGED_CONFIG).is_file():
        cfg = OmegaConf.load(Path(run).expanduser() / MERGED_CONFIG)
        return build_embedder(cfg, None, None, device, False, max_length), cfg
    embedder_dir, ckpt = find_embedder_dir(run)
    cfg = OmegaConf.load(embedder_dir / "config.yaml")
    return build_embedder(cfg, embedder_dir, ckpt, device, merge, max_length), cfg


def load_base(cfg: DictConfig, device: str = "cpu", max_length: int | None = None) -> Embedder:
    """A base model without adapter, from a config holding backbone, pooling, instruction_style, data.max_length.
    Max length: the max_length argument, else the backbone's own (backbone.max_length), else data.max_length."""
    return build_embedder(cfg, None, None, device, False, max_length or cfg.backbone.get("max_length"))
