"""Callbacks: write a usable embedder (PEFT adapter or full weights + tokenizer + resolved config) next to the
checkpoints."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from embed_lm.training.checkpoints import adapter_weights, write_adapter

log = logging.getLogger(__name__)


class SaveEmbedder(L.Callback):
    """On every checkpoint save and at the end of training, (re)write <dirpath>/ with:

    adapter/      PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors), or with lora_rank=full
    model/        every weight (config.json + model.safetensors) and the tokenizer: a plain transformers folder
    tokenizer/    the tokenizer the run used
    config.yaml   the run's resolved config (backbone, pooling, instruction style, max length, ...)

    Written to a temporary folder and renamed, so a crash mid-write leaves the previous copy intact. Every rank
    takes part in collecting the adapter (a collective under FSDP and DeepSpeed ZeRO-3); rank 0 writes it.
    """

    def __init__(self, dirpath: str | Path, config_yaml: str, tokenizer: PreTrainedTokenizerBase) -> None:
        self.dirpath, self.config_yaml, self.tokenizer = Path(dirpath), config_yaml, tokenizer

    def save(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        model = module.encoder.backbone
        full = not isinstance(model, PeftModel)
        weights = None if full else adapter_weights(trainer, model)  # on every rank (collective under FSDP/ZeRO-3)
        if not trainer.is_global_zero:
            return
        tmp = self.dirpath.with_name(self.dirpath.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if full:  # lora_rank=full: every weight, as a transformers model folder
            model.save_pretrained(tmp / "model", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / "model")
        else:
            write_adapter(model, weights, tmp / "adapter")
        self.tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "config.yaml").write_text(self.config_yaml)
        old = self.dirpath.with_name(self.dirpath.name + ".old")
        if self.dirpath.exists():
            self.dirpath.rename(old)
        tmp.rename(self.dirpath)
        shutil.rmtree(old, ignore_errors=True)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        self.save(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.save(trainer, module)
        if trainer.is_global_zero:
            log.info("embedder written to %s", self.dirpath)
