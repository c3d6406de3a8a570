"""Callbacks: write a usable embedder (PEFT adapter or full weights + tokenizer + resolved config) next to the
checkpoints."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class SaveEmbedder(L.Callback):
    """On every checkpoint save and at the end of training, (re)write <dirpath>/ with:

    adapter/      PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors), or with lora_rank=full
    model/        every weight (config.json + model.safetensors) and the tokenizer: a plain transformers folder
    tokenizer/    the tokenizer the run used
    config.yaml   the run's resolved config (backbone, pooling, instruction style, max length, ...)

    Written to a temporary folder and renamed, so a crash mid-write leaves the previous copy intact.
    """

    def __init__(self, dirpath: str | Path, config_yaml: str, tokenizer: PreTrainedTokenizerBase) -> None:
        self.dirpath, self.config_yaml, self.tokenizer = Path(dirpath), config_yaml, tokenizer

    def save(self, module: L.LightningModule) -> None:
        tmp = self.dirpath.with_name(self.dirpath.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model = module.encoder.backbone
        if isinstance(model, PeftModel):
            model.save_pretrained(tmp / "adapter")
        else:  # full fine-tuning
            model.save_pretrained(tmp / "model", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / "model")
        self.tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "config.yaml").write_text(self.config_yaml)
        old = self.dirpath.with_name(self.dirpath.name + ".old")
        if self.dirpath.exists():
            self.dirpath.rename(old)
        tmp.rename(self.dirpath)
        shutil.rmtree(old, ignore_errors=True)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.is_global_zero:
            self.save(module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.save(module)
            log.info("embedder written to %s", self.dirpath)
