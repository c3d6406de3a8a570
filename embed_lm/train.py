"""Train a text embedder with the E5-mistral recipe, configured by Hydra (conf/train.yaml).

    python -m embed_lm.train                                   # paper defaults (needs Mistral-7B + your data)
    python -m embed_lm.train experiment=demo                   # MiniLM on the bundled sample, CPU, minutes
    python -m embed_lm.train backbone=llama2 pooling=mean lora_rank=r8 instruction_style=task_prefix data=msmarco_only
    python -m embed_lm.train backbone=tiny_mistral data=sample debug=smoke
    python -m embed_lm.train ... ckpt_path=<run dir>/checkpoints/last.ckpt      # resume a killed run
    python -m embed_lm.train --cfg job                          # print the resolved config

Writes to the run folder: checkpoints/ (resumable), embedder/ (LoRA adapter, or model/ with lora_rank=full; tokenizer;
resolved config),
csv/metrics.csv, wandb/ (offline unless a key is set), and test_metrics.json.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from embed_lm import conf_resolvers
from embed_lm.training import run_record
from embed_lm.model.backbone import BackboneNotFoundError, add_lora, count_trainable, full_finetune
from embed_lm.training.callbacks import SaveEmbedder
from embed_lm.model.collator import TextCollator
from embed_lm.data.records import DataFormatError
from embed_lm.model.encoder import TextEncoder
from embed_lm.training.module import ContrastiveEncoderModule
from embed_lm.training.strategies import IncompatibleSetupError, check_setup

log = logging.getLogger("embed_lm.train")
conf_resolvers.register()
warnings.filterwarnings("ignore", message=r".*ckpt_path=\"last\"\) is set, but there is no last checkpoint")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
USER_ERRORS = (BackboneNotFoundError, DataFormatError, FileNotFoundError, IncompatibleSetupError)


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def format_metrics(before: dict[str, float] | None, after: dict[str, float]) -> str:
    names = sorted(after)
    rows = [f"{'metric':<16}" + ("" if before is None else f"{'before':>10}") + f"{'after':>10}"]
    for name in names:
        b = "" if before is None else f"{before.get(name, float('nan')):>10.4f}"
        rows.append(f"{name:<16}{b}{after[name]:>10.4f}")
    return "\n".join(rows)


def evaluate_after_training(cfg: DictConfig, output_dir: Path, loggers: list) -> dict | None:
    """Run the `eval` group's suite on the run just written (python -m embed_lm.evaluate), log the scores to the
    run's own loggers, return the scores report."""
    if cfg.get("eval") is None:
        return None
    from embed_lm.evaluate import evaluate

    resolved = OmegaConf.to_container(cfg, resolve=True)
    eval_cfg = OmegaConf.create(resolved["evaluation"] | {"run": str(output_dir), "output_dir": None,
                                                          "eval": resolved["eval"], "paths": resolved["paths"]})
    report = evaluate(eval_cfg)
    suite = cfg.eval.suite
    scores = {f"eval/{suite}/{c}": v for c, v in report["categories"].items() if v is not None}
    scores |= {f"eval/{suite}/avg": report["avg"]} | {f"eval/{suite}/{t['task']}": t["score"] for t in report["tasks"]}
    for lg in loggers:
        lg.log_metrics(scores)
        if isinstance(lg, WandbLogger):
            lg.log_table(f"eval/{suite}/tasks", columns=["task", "category", "main_score", "score"],
                         data=[[t["task"], t["category"], t["main_score"], t["score"]] for t in report["tasks"]])
        lg.save()
    return report


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from `cfg`, train, test, evaluate; returns the final test (or last logged) metrics.
    A folder that already holds a finished run of the same config is not trained again (done.json)."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if (record := run_record.finished(output_dir, cfg)) is not None:
        log.info("%s already holds a finished run of this config (done.json): skipped", output_dir)
        return record["metrics"]
    L.seed_everything(cfg.seed, workers=True)

    spec = instantiate(cfg.backbone)
    spec.check()  # seconds: a missing model or file fails before anything heavy happens
    loss_fn = instantiate(cfg.loss)
    check_setup(loss_fn, cfg.trainer.get("strategy", "auto"), str(cfg.trainer.precision),
                cfg.trainer.get("accumulate_grad_batches", 1))
    style = instantiate(cfg.instruction_style)
    backbone = spec.load()
    collator = TextCollator(backbone.tokenizer, cfg.data.max_length, backbone.append_eos, backbone.padding_side)
    datamodule = instantiate(cfg.data, collator=collator, instruction_style=style, _recursive_=True)
    datamodule.check()

    if cfg.lora_rank.r is None:  # lora_rank=full
        model = full_finetune(backbone.model, cfg.gradient_checkpointing)
        log.info("full fine-tuning: %s trainable parameters", f"{count_trainable(model):,}")
    else:
        model = add_lora(backbone.model, cfg.lora_rank.r, cfg.lora.alpha, cfg.lora.dropout,
                         backbone.lora_target_modules, cfg.gradient_checkpointing)
        log.info("LoRA r=%d on %s: %s trainable parameters", cfg.lora_rank.r, backbone.lora_target_modules,
                 f"{count_trainable(model):,}")
    encoder = TextEncoder(model, instantiate(cfg.pooling))
    module = ContrastiveEncoderModule(encoder, loss_fn, **cfg.optimizer)

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    loggers = build_loggers(cfg)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not loggers:  # logger=none: nothing to monitor learning rates into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(SaveEmbedder(output_dir / "embedder", config_yaml, backbone.tokenizer))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    has_test = cfg.data.get("test") is not None and (cfg.test_before_training or cfg.test_after_training)
    before = trainer.test(module, datamodule=datamodule, verbose=False)[0] if (
        has_test and cfg.test_before_training) else None
    # "last" resumes from the newest checkpoint in this run folder, if any (re-running the same run dir continues it)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path or "last")
    if trainer.checkpoint_callback is not None and not trainer.interrupted:  # last.ckpt = the final state
        trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")
    after = trainer.test(module, datamodule=datamodule, verbose=False)[0] if (
        has_test and cfg.test_after_training) else {k: float(v) for k, v in trainer.callback_metrics.items()}
    if not trainer.is_global_zero:
        return after
    if has_test:
        (output_dir / "test_metrics.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
        print(f"\nHeld-out retrieval ({cfg.data.name} test split), run folder {output_dir}:\n"
              f"{format_metrics(before, after)}\n")
    report = evaluate_after_training(cfg, output_dir, loggers)
    run_record.mark_done(output_dir, cfg, after, None if report is None else
                         {k: report[k] for k in ("suite", "categories", "avg", "n_tasks", "missing_tasks")})
    return after


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = train(cfg)
    except Exception as e:
        if multirun:  # one failed job must not stop the sweep: record it, let the others run, the report lists it
            log.exception("job failed: %s", e)
            Path(cfg.paths.output_dir, "failed.txt").write_text(f"{type(e).__name__}: {e}\n")
            return None
        if not isinstance(e, USER_ERRORS) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)  # a message the user can act on; no traceback
        sys.exit(2)
    return metrics.get("test/ndcg@10")


if __name__ == "__main__":
    main()
