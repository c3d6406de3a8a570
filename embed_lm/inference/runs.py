"""Load what a training run wrote, for the entry points that use it (evaluate, encode, export, passkey).

    load_run("outputs/train/runs/<run>")                       # base model + the run's LoRA adapter (embedder/),
                                                               # or its full weights (embedder/model/, lora_rank=full)
    load_run("outputs/train/runs/<run>/checkpoints/last.ckpt") # base model + the LoRA weights of that checkpoint
                                                               # (a file, or a folder from trainer=deepspeed_*)
    load_run("exported/<name>")                                # a merged export (python -m embed_lm.export)
    load_base(cfg)                                             # a base model, no adapter (backbone/pooling/style)

The run's resolved config (embedder/config.yaml) rebuilds the same backbone, pooling, instruction style and
maximum length that training used. What is read from disk is data, never code: the config's model parts must be the
project's own (embed_lm/model/registry.py; no `instantiate`), checkpoints load with torch.load(weights_only=True),
`trust_remote_code` comes only from the caller (the command line), and a merged export loads the weights in its own
folder wherever it was moved or copied to.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from peft import PeftModel

from embed_lm.errors import ConfigError, MissingFileError, UserError
from embed_lm.model.backbone import usable_attention
from embed_lm.model.collator import TextCollator
from embed_lm.inference.embedder import Embedder
from embed_lm.model.encoder import TextEncoder
from embed_lm.model.registry import build_part
from embed_lm.inference.checkpoint_files import read_checkpoint, zero_checkpoint_state_dict

log = logging.getLogger(__name__)


MERGED_CONFIG = "embed_lm.yaml"  # written by python -m embed_lm.export next to the merged weights
FULL_WEIGHTS = "model"          # embedder/model/: a lora_rank=full run's weights (no adapter/)


class RunNotFoundError(MissingFileError):
    pass


def read_config(path: Path) -> DictConfig:
    """A saved config file as data (YAML; interpolations are left to the caller), naming the file on error."""
    try:
        cfg = OmegaConf.load(path)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"{path}: not a readable config ({e})") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(cfg).__name__}")
    return cfg


def model_parts(cfg: DictConfig, where: str, **backbone_overrides) -> tuple:
    """(backbone spec, pooling, instruction style) that `cfg` describes, from the closed set of the project's parts."""
    try:
        sections = {k: OmegaConf.to_container(cfg[k], resolve=True) if k in cfg else None
                    for k in ("backbone", "pooling", "instruction_style")}
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {e}") from e
    return tuple(build_part(k, v, where, **(backbone_overrides if k == "backbone" else {}))
                 for k, v in sections.items())


def find_embedder_dir(run: str | Path) -> tuple[Path, Path | None]:
    """(embedder dir, checkpoint or None) for a run folder, its embedder/ folder, or a .ckpt inside the run."""
    path = Path(run).expanduser()
    if path.suffix == ".ckpt":
        if not path.exists():  # a file, or a folder (DeepSpeed)
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
                   device: str = "cpu", merge: bool = False, max_length: int | None = None,
                   trust_remote_code: bool = False, where: str = "config", **backbone_overrides) -> Embedder:
    """The embedder `cfg` describes; adapter_dir: a run's embedder/ folder (LoRA adapter/ on the base model, or
    full weights in model/). `trust_remote_code` is the caller's (the command line's), never the file's."""
    saved = (cfg.get("backbone") or {}).get("trust_remote_code", False)
    if saved and not trust_remote_code:
        log.warning("%s sets backbone.trust_remote_code=true: ignored (only the command line can allow a model's "
                    "own code to run; pass trust_remote_code=true if you trust this model)", where)
    full = adapter_dir is not None and (adapter_dir / FULL_WEIGHTS / "config.json").is_file()
    requested = backbone_overrides.get("attn_implementation") or (cfg.get("backbone") or {}).get(
        "attn_implementation", "sdpa")
    backbone_overrides["attn_implementation"] = usable_attention(requested, device)  # flash-attn missing: sdpa
    if full:  # lora_rank=full: the run's own weights replace the base model's
        backbone_overrides |= {"model_name_or_path": str(adapter_dir / FULL_WEIGHTS), "size": "full"}
    spec, pooling, style = model_parts(cfg, where, trust_remote_code=trust_remote_code, **backbone_overrides)
    state = None if ckpt is None else (  # read before the weights load: fail fast
        zero_checkpoint_state_dict(ckpt) if ckpt.is_dir() else read_checkpoint(ckpt)["state_dict"])  # dir: DeepSpeed
    spec.check()
    backbone = spec.load()
    model = backbone.model
    if adapter_dir is not None and not full:
        model = PeftModel.from_pretrained(model, str(adapter_dir / "adapter"))
    if state is not None:
        prefix = "encoder.backbone."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing = [k for k in weights if k not in dict(model.named_parameters())]
        if missing:
            raise UserError(f"{ckpt}: {len(missing)} tensors do not fit the run's "
                            f"{'weights' if full else 'adapter'} (e.g. {missing[0]}); was it written by this run?")
        model.load_state_dict(weights, strict=False)
    if merge and isinstance(model, PeftModel):
        model = model.merge_and_unload()
    tokenizer = backbone.tokenizer
    if adapter_dir is not None and (adapter_dir / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir / "tokenizer"))
    max_length = max_length or OmegaConf.select(cfg, "data.max_length")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise ConfigError(f"{where}: data.max_length={max_length!r}: must be an integer >= 2")
    collator = TextCollator(tokenizer, max_length, backbone.append_eos, backbone.padding_side)
    encoder = TextEncoder(model, pooling)
    dtype = torch.bfloat16 if str(device).startswith("cuda") and torch.cuda.is_bf16_supported() else None
    return Embedder(encoder, collator, style, device=device, dtype=dtype)


def load_run(run: str | Path, device: str = "cpu", merge: bool = False, max_length: int | None = None,
             trust_remote_code: bool = False, attn_implementation: str | None = None) -> tuple[Embedder, DictConfig]:
    """The run's embedder and its resolved training config (a merged export: its weights, no adapter).
    A merged export always loads the weights in its own folder (moved or copied, it still loads itself).
    attn_implementation: overrides the run's (sdpa, eager, flash_attention_2); by default the run's, except
    flash_attention_2 where flash-attn cannot run: sdpa (logged)."""
    attention = {"attn_implementation": attn_implementation} if attn_implementation else {}
    folder = Path(run).expanduser()
    if (folder / MERGED_CONFIG).is_file():
        cfg = read_config(folder / MERGED_CONFIG)
        return build_embedder(cfg, None, None, device, False, max_length, trust_remote_code,
                              str(folder / MERGED_CONFIG), model_name_or_path=str(folder.resolve()), **attention), cfg
    embedder_dir, ckpt = find_embedder_dir(run)
    cfg = read_config(embedder_dir / "config.yaml")
    return build_embedder(cfg, embedder_dir, ckpt, device, merge, max_length, trust_remote_code,
                          str(embedder_dir / "config.yaml"), **attention), cfg


def load_base(cfg: DictConfig, device: str = "cpu", max_length: int | None = None) -> Embedder:
    """A base model without adapter, from a config holding backbone, pooling, instruction_style, data.max_length
    (the command line's: its trust_remote_code is the user's own). Max length: the max_length argument, else the
    backbone's own (backbone.max_length), else data.max_length."""
    trust = bool((cfg.get("backbone") or {}).get("trust_remote_code", False))
    return build_embedder(cfg, None, None, device, False, max_length or cfg.backbone.get("max_length"), trust,
                          "the command line")
