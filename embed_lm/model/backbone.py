"""Backbones: a pretrained LLM or encoder from a hub id / local path, or a tiny random-init decoder, plus LoRA.

    python -m embed_lm.train backbone=mistral backbone.model_name_or_path=/models/Mistral-7B-v0.1
    python -m embed_lm.train backbone=tiny_llama          # random init from LlamaConfig, CPU seconds

Each `backbone/<name>.yaml` builds one of the two spec classes below; `.load()` returns a LoadedBackbone.
A missing model fails within seconds, naming every place tried and the override that points at a local copy.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from embed_lm.errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY_TOKENIZER = ASSETS / "tiny_tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


class BackboneNotFoundError(MissingFileError):
    """The model named by backbone.model_name_or_path could not be found anywhere we looked."""


@dataclass
class LoadedBackbone:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    append_eos: bool
    padding_side: str
    lora_target_modules: list[str] | str = field(default_factory=list)  # names, or one regex (peft fullmatch)


def hub_reachable(endpoint: str, timeout_s: float) -> bool:
    """TCP connect to the hub host in a daemon thread, so neither DNS nor connect can stall us past timeout_s."""
    url = urlparse(endpoint)
    host, port = url.hostname or endpoint, url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def resolve_model_source(name: str, model_name_or_path: str, probe_timeout_s: float = 3.0) -> tuple[str, bool]:
    """Return (where to load from, local_files_only), or raise BackboneNotFoundError saying what was tried."""
    from huggingface_hub import constants, try_to_load_from_cache

    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneNotFoundError(f"backbone '{name}': {path} exists but holds no config.json; point "
                                        "backbone.model_name_or_path at a Hugging Face model directory")
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise BackboneNotFoundError(f"backbone '{name}': {path} holds no tokenizer (none of "
                                        f"{', '.join(TOKENIZER_FILES)}); copy the model's tokenizer files there")
        return str(path), True
    fix = (f"Download it where the hub is reachable (e.g. `hf download {model_name_or_path} --local-dir "
           f"/models/{Path(model_name_or_path).name}`), then run: python -m embed_lm.train backbone={name} "
           f"backbone.model_name_or_path=/models/{Path(model_name_or_path).name}")
    if _looks_like_path(model_name_or_path):
        raise BackboneNotFoundError(f"backbone '{name}': no model directory at {path.resolve()}. {fix}")
    cached = try_to_load_from_cache(model_name_or_path, "config.json")
    if isinstance(cached, str):
        return model_name_or_path, bool(constants.HF_HUB_OFFLINE) or not hub_reachable(constants.ENDPOINT,
                                                                                         probe_timeout_s)
    tried = [f"local directory {path.resolve()} (absent)",
             f"Hugging Face cache {constants.HF_HUB_CACHE} (no '{model_name_or_path}')"]
    if constants.HF_HUB_OFFLINE:
        tried.append("hub (skipped: HF_HUB_OFFLINE=1)")
    elif not hub_reachable(constants.ENDPOINT, probe_timeout_s):
        tried.append(f"hub {constants.ENDPOINT} (unreachable within {probe_timeout_s:g}s)")
    else:
        return model_name_or_path, False
    raise BackboneNotFoundError(f"backbone '{name}': cannot find model '{model_name_or_path}'. Tried: "
                                + "; ".join(tried) + f". {fix}")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str) -> torch.dtype:
    """'auto' = bfloat16 on a GPU that supports it (frozen weights; LoRA and autocast handle the rest), else fp32."""
    if dtype not in DTYPES:
        raise ConfigError(f"backbone.dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, dtype)


def usable_attention(requested: str, device: str | torch.device = "cpu") -> str:
    """The attention implementation to load a trained model with: `requested` (the run's backbone.attn_implementation
    or the caller's override), except flash_attention_2 where flash-attn cannot run (not installed, or not a CUDA
    device): sdpa then, said in a log line. Same weights, same results up to rounding (padding is masked)."""
    if requested != "flash_attention_2":
        return requested
    import importlib.util

    why = None
    if importlib.util.find_spec("flash_attn") is None:
        why = "flash-attn is not installed"
    elif not str(device).startswith("cuda"):
        why = f"flash-attn needs a CUDA device, not {device}"
    if why is None:
        return requested
    log.info("attn_implementation=flash_attention_2 (the run's) -> sdpa: %s (pass attn_implementation= to choose)",
             why)
    return "sdpa"


def _targets(target_modules: list[str] | str) -> list[str] | str:
    """LoRA targets: module-name suffixes (a list) or one regex that peft matches against the full module name."""
    return target_modules if isinstance(target_modules, str) else list(target_modules)


class PretrainedBackbone:
    """A Hugging Face model loaded with AutoModel (no LM head) from a hub id or local directory."""

    def __init__(self, name: str, model_name_or_path: str, append_eos: bool, lora_target_modules: list[str] | str,
                 padding_side: str = "right", dtype: str = "auto", probe_timeout_s: float = 3.0,
                 trust_remote_code: bool = False, attn_implementation: str = "sdpa") -> None:
        self.name = name
        self.attn_implementation = attn_implementation
        self.model_name_or_path = model_name_or_path
        self.append_eos = append_eos
        self.lora_target_modules = _targets(lora_target_modules)
        self.padding_side = padding_side
        self.dtype = dtype
        self.probe_timeout_s = probe_timeout_s
        self.trust_remote_code = trust_remote_code
        self._source: tuple[str, bool] | None = None

    def check(self) -> None:
        """Fail fast (seconds) if the weights cannot be found; cheap, no weights are read."""
        self._source = resolve_model_source(self.name, self.model_name_or_path, self.probe_timeout_s)

    def load(self) -> LoadedBackbone:
        if self._source is None:
            self.check()
        source, local_only = self._source
        kwargs = dict(local_files_only=local_only, trust_remote_code=self.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModel.from_pretrained(source, dtype=resolve_dtype(self.dtype),
                                          attn_implementation=self.attn_implementation, **kwargs)
        model.config.use_cache = False  # an embedder never decodes; a KV cache would only cost memory
        log.info("loaded backbone %s from %s (%s)", self.name, source, model.dtype)
        return LoadedBackbone(self.name, model, tokenizer, self.append_eos, self.padding_side,
                              self.lora_target_modules)


class TinyBackbone:
    """A small random-init decoder (MistralConfig / LlamaConfig) with the repo's 4k-token BPE tokenizer.

    Same code path as the 7B models (AutoModel from a config, sdpa attention, LoRA on all seven projections),
    deterministic under `seed`, fast on CPU. Not a language model; for tests and smoke runs.
    """

    ARCHITECTURES = ("mistral", "llama")
    LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    def __init__(self, name: str, architecture: str, hidden_size: int = 128, num_hidden_layers: int = 2,
                 num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 256,
                 max_position_embeddings: int = 32768, rope_theta: float = 10000.0,
                 sliding_window: int | None = 4096, tokenizer_path: str | None = None, seed: int = 0,
                 append_eos: bool = True, padding_side: str = "right", dtype: str = "float32",
                 attn_implementation: str = "sdpa") -> None:
        if architecture not in self.ARCHITECTURES:
            raise ConfigError(f"backbone.architecture must be one of {self.ARCHITECTURES}, got {architecture!r}")
        self.name = name
        self.architecture = architecture
        self.config_kwargs = dict(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                                  num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                                  intermediate_size=intermediate_size,
                                  max_position_embeddings=max_position_embeddings,
                                  rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)})
        if architecture == "mistral":
            self.config_kwargs["sliding_window"] = sliding_window
        self.tokenizer_path = tokenizer_path or str(TINY_TOKENIZER)
        self.seed = seed
        self.dtype = dtype
        self.append_eos = append_eos
        self.padding_side = padding_side
        self.lora_target_modules = list(self.LORA_TARGETS)
        self.attn_implementation = attn_implementation

    def check(self) -> None:
        if not Path(self.tokenizer_path, "tokenizer.json").is_file():
            raise BackboneNotFoundError(f"backbone '{self.name}': no tokenizer.json under {self.tokenizer_path}; "
                                        "rebuild it with `python scripts/build_tiny_tokenizer.py`")

    def load(self) -> LoadedBackbone:
        self.check()
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        config = AutoConfig.for_model(self.architecture, vocab_size=len(tokenizer),
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id, **self.config_kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # weights drawn in fp32 then cast: the same values in every dtype
            model = AutoModel.from_config(config, attn_implementation=self.attn_implementation)
        dtype = resolve_dtype(self.dtype)  # bfloat16: a bf16 frozen base, as the 7B models on GPUs
        buffers = {name: b.dtype for name, b in model.named_buffers()}
        model = model.to(dtype)
        for name, b in model.named_buffers():  # as from_pretrained: buffers (RoPE inv_freq) stay in their own dtype
            if b.dtype != buffers[name]:
                owner, _, attribute = name.rpartition(".")
                setattr(model.get_submodule(owner), attribute, b.to(buffers[name]))  # keeps it a (non-)persistent buffer
        model.config.use_cache = False
        return LoadedBackbone(self.name, model, tokenizer, self.append_eos, self.padding_side,
                              self.lora_target_modules)


def tiny_dtype(name: str, dtype: str, tiny: str | None) -> str:
    """A tiny backbone's dtype: backbone.dtype, or backbone.tiny.dtype where only that one is set (not 'auto');
    both set to different dtypes is refused (one would be silently ignored)."""
    if tiny is None or tiny == dtype:
        return dtype
    if dtype == "auto":
        return tiny
    raise ConfigError(f"backbone '{name}': backbone.dtype={dtype} and backbone.tiny.dtype={tiny} disagree; set one "
                      f"(backbone.dtype={tiny} or backbone.tiny.dtype=null)")


def build_backbone(name: str, architecture: str, model_name_or_path: str, append_eos: bool,
                   lora_target_modules: list[str] | str, size: str = "full", tiny: dict | None = None,
                   padding_side: str = "right", dtype: str = "auto", probe_timeout_s: float = 3.0,
                   trust_remote_code: bool = False, attn_implementation: str = "sdpa",
                   max_length: int | None = None,
                   authors_usage: dict | None = None) -> PretrainedBackbone | TinyBackbone:
    """What every `backbone/<name>.yaml` builds. size=full: the pretrained model (hub id or local directory);
    size=tiny: a random-init model of the same architecture with the dimensions in `tiny` (CPU tests, smoke runs,
    the CPU profile of the Table 4 sweep: `backbone.size=tiny`). attn_implementation: transformers' name
    (sdpa, eager, flash_attention_2 with `packing=true` for padding-free varlen attention on GPUs). max_length: a
    released embedder's own maximum length, read by runs.load_base when a base model is evaluated without
    max_length= (not by training). authors_usage: how the model's authors use it ({pooling, instruction_style}
    option names), read by the entry points for the "base as its authors use it" column (not by the backbone)."""
    if size == "full":
        return PretrainedBackbone(name, model_name_or_path, append_eos, lora_target_modules, padding_side, dtype,
                                  probe_timeout_s, trust_remote_code, attn_implementation)
    if size == "tiny":
        if not tiny:
            raise ConfigError(f"backbone '{name}' has no tiny configuration (backbone.tiny); use size=full")
        tiny = dict(tiny)
        tiny["dtype"] = tiny_dtype(name, dtype, tiny.get("dtype"))
        return TinyBackbone(name, architecture, append_eos=append_eos, padding_side=padding_side,
                            attn_implementation=attn_implementation, **tiny)
    raise ConfigError(f"backbone.size must be 'full' or 'tiny', got {size!r}")


def add_lora(model: PreTrainedModel, r: int, alpha: float, dropout: float, target_modules: list[str] | str,
             gradient_checkpointing: bool = False) -> PeftModel:
    """Freeze the backbone and add LoRA adapters (fp32) to every module named in target_modules (name suffixes,
    or one regex matched against the full module name, e.g. to leave out a BERT pooler that gets no gradient)."""
    if gradient_checkpointing:
        # non-reentrant checkpointing needs no input that requires grad, so frozen embeddings are fine
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=_targets(target_modules),
                        bias="none")
    return get_peft_model(model, config)


def full_finetune(model: PreTrainedModel, gradient_checkpointing: bool = False) -> PreTrainedModel:
    """Full fine-tuning (lora_rank=full): every weight the embedding depends on trains, in float32 (AdamW on bf16
    weights would lose most updates). A BERT pooler stays frozen: the embedder pools the last hidden states, so it
    never gets a gradient."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    if model.dtype != torch.float32:
        log.info("full fine-tuning: casting %s weights to float32", model.dtype)
        model = model.float()
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("pooler."))
    return model


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
