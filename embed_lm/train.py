"""Train a text embedder with the E5-mistral recipe, configured by Hydra (conf/train.yaml).

    python -m embed_lm.train                                   # paper defaults (needs Mistral-7B + your data)
    python -m embed_lm.train experiment=demo                   # MiniLM on the bundled sample, CPU, minutes
    python -m embed_lm.train backbone=llama2 pooling=mean lora_rank=r8 instruction_style=task_prefix data=msmarco_only
    python -m embed_lm.train backbone=tiny_mistral data=sample debug=smoke
    python -m embed_lm.train ... ckpt_path=<run dir>/checkpoints/last.ckpt      # resume a killed run
    python -m embed_lm.train --cfg job                          # print the resolved config
    python -m embed_lm.train -m 'ablation=glob(*)' trainer=ddp_cpu   # a sweep; each row its own process group

Writes to the run folder: checkpoints/ (resumable), embedder/ (LoRA adapter, or model/ with lora_rank=full;
tokenizer; resolved config), csv/metrics.csv and csv/curves.png (python -m embed_lm.report runs <run>... for
several), wandb/ (offline unless a key is set), and test_metrics.json.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from embed_lm.config import resolvers as conf_resolvers, validate
from embed_lm.errors import ResumeMismatchError, UserError, exit_on_user_error
from embed_lm.training.curves import write_run_curves
from embed_lm.training import run_record
from embed_lm.training.resume import ResumeGuard, check_same_config, find_resume_checkpoint, recorded_config
from embed_lm.model.backbone import BackboneNotFoundError, add_lora, count_trainable, full_finetune
from embed_lm.training.callbacks import SaveEmbedder
from embed_lm.training.loggers import KeepCsvHistory, ResumableCSVLogger
from embed_lm.model.collator import TextCollator
from embed_lm.data.records import DataFormatError
from embed_lm.model.encoder import TextEncoder
from embed_lm.training.module import ContrastiveEncoderModule
from embed_lm.training.strategies import IncompatibleSetupError, check_setup

log = logging.getLogger("embed_lm.train")
conf_resolvers.register()
warnings.filterwarnings("ignore", message=r".*ckpt_path=\"last\"\) is set, but there is no last checkpoint")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
USER_ERRORS = (UserError, BackboneNotFoundError, DataFormatError, FileNotFoundError, IncompatibleSetupError)


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def format_metrics(before: dict[str, float] | None, after: dict[str, float]) -> str:
    names = sorted(after)
    width = max([16] + [len(n) + 2 for n in names])
    rows = [f"{'metric':<{width}}" + ("" if before is None else f"{'before':>10}") + f"{'after':>10}"]
    for name in names:
        b = "" if before is None else f"{before.get(name, float('nan')):>10.4f}"
        rows.append(f"{name:<{width}}{b}{after[name]:>10.4f}")
    return "\n".join(rows)


def evaluate_after_training(cfg: DictConfig, output_dir: Path, loggers: list, device: str = "auto",
                            rank: int = 0) -> dict | None:
    """Run the `eval` group's suite on the run just written (python -m embed_lm.evaluate) on every rank of the
    run, each encoding 1/W of every task's texts on its own device; rank 0 logs the scores to the run's own
    loggers and returns the scores report (None on the other ranks)."""
    if cfg.get("eval") is None:
        return None
    from embed_lm.evaluate import evaluate

    resolved = OmegaConf.to_container(cfg, resolve=True)
    evaluation = resolved["evaluation"]
    if evaluation["device"] == "auto":
        evaluation["device"] = device  # the rank's own device
    eval_cfg = OmegaConf.create(evaluation | {"run": str(output_dir), "output_dir": None, "eval": resolved["eval"],
                                              "paths": resolved["paths"]})
    report = evaluate(eval_cfg)
    if rank > 0:
        return None
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
    validate.check_train(cfg)  # every option in its range: before anything loads
    output_dir = Path(cfg.paths.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    allow = list(cfg.get("resume", {}).get("allow_changes") or [])
    if (record := run_record.finished(output_dir, cfg)) is not None:
        log.info("%s already holds a finished run of this config (done.json): skipped", output_dir)
        return record["metrics"]
    if (record := run_record.read(output_dir)) is not None:  # finished with another config: continue it, or refuse
        if record.get("config") is None:  # written before done.json kept its config: no diff to show, never relabel
            raise ResumeMismatchError(f"run folder {output_dir} holds a finished run of another config (done.json "
                                      f"fingerprint {record.get('fingerprint')}, this config "
                                      f"{run_record.fingerprint(cfg)}); train into another folder")
        check_same_config(record["config"], resolved, allow, f"run folder {output_dir} (done.json)")
    resume_from = find_resume_checkpoint(cfg.ckpt_path, output_dir / "checkpoints")
    if resume_from is not None:
        check_same_config(recorded_config(resume_from), resolved, allow, f"checkpoint {resume_from}")
    L.seed_everything(cfg.seed, workers=True)

    spec = instantiate(cfg.backbone)
    spec.check()  # seconds: a missing model or file fails before anything heavy happens
    loss_fn = instantiate(cfg.loss)
    check_setup(loss_fn, cfg.trainer.get("strategy", "auto"), str(cfg.trainer.precision),
                cfg.trainer.get("accumulate_grad_batches", 1), full_finetune=cfg.lora_rank.r is None)
    style = instantiate(cfg.instruction_style)
    validate.check_train_files(cfg)  # every data file exists and is readable
    datamodule = instantiate(cfg.data, collator=None, instruction_style=style, _recursive_=True)
    datamodule.check()  # data files: before the weights load (the collator needs the tokenizer: set below)
    output_dir.mkdir(parents=True, exist_ok=True)
    backbone = spec.load()
    datamodule.collator = TextCollator(backbone.tokenizer, cfg.data.max_length, backbone.append_eos,
                                       backbone.padding_side)

    if cfg.lora_rank.r is None:  # lora_rank=full
        model = full_finetune(backbone.model, cfg.gradient_checkpointing)
        log.info("full fine-tuning: %s trainable parameters", f"{count_trainable(model):,}")
    else:
        model = add_lora(backbone.model, cfg.lora_rank.r, cfg.lora.alpha, cfg.lora.dropout,
                         backbone.lora_target_modules, cfg.gradient_checkpointing)
        log.info("LoRA r=%d on %s: %s trainable parameters", cfg.lora_rank.r, backbone.lora_target_modules,
                 f"{count_trainable(model):,}")
    encoder = TextEncoder(model, instantiate(cfg.pooling), packing=cfg.get("packing", False))
    module = ContrastiveEncoderModule(encoder, loss_fn, **cfg.optimizer)

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    loggers = build_loggers(cfg)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not loggers:  # logger=none: nothing to monitor learning rates into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(SaveEmbedder(output_dir / "embedder", config_yaml, backbone.tokenizer))
    if any(isinstance(lg, ResumableCSVLogger) for lg in loggers):
        callbacks.append(KeepCsvHistory())
    callbacks.append(ResumeGuard(run_record.trained_config(cfg), output_dir / "checkpoints"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    has_test = cfg.data.get("test") is not None and (cfg.test_before_training or cfg.test_after_training)
    before = trainer.test(module, datamodule=datamodule, verbose=False)[0] if (
        has_test and cfg.test_before_training) else None
    # resume_from: ckpt_path, else the newest checkpoint in this run folder (re-running a run dir continues it)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    stopped_by_max_steps = 0 < trainer.max_steps <= trainer.global_step  # ResumeGuard saved last.ckpt mid-epoch
    if trainer.checkpoint_callback is not None and not trainer.interrupted and not stopped_by_max_steps:
        trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt", weights_only=False)  # full
    after = trainer.test(module, datamodule=datamodule, verbose=False)[0] if (
        has_test and cfg.test_after_training) else {k: float(v) for k, v in trainer.callback_metrics.items()}
    rank = trainer.global_rank
    if rank == 0:
        write_run_curves(output_dir)  # csv/curves.png: loss, learning rate, val nDCG@10 against the step
    if has_test and rank == 0:
        (output_dir / "test_metrics.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
        print(f"\nHeld-out retrieval ({cfg.data.name} test split), run folder {output_dir}:\n"
              f"{format_metrics(before, after)}\n")
    report = evaluate_after_training(cfg, output_dir, loggers, str(trainer.strategy.root_device), rank)
    if rank > 0:
        return after
    run_record.mark_done(output_dir, cfg, after, None if report is None else
                         {k: report[k] for k in ("suite", "categories", "avg", "n_tasks", "missing_tasks")})
    return after


def local_processes(accelerator: str, devices) -> int:
    """How many processes Lightning starts on this machine for trainer.accelerator / trainer.devices."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if str(devices) in ("auto", "-1"):
        return torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 1
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return int(devices)


def train_in_own_process(overrides: list[str], output_dir: Path) -> dict[str, float]:
    """One multirun job as `python -m embed_lm.train <its overrides>` in a child process. Lightning starts a
    multi-device job's ranks by re-running the command line; from inside a multirun that command is the whole
    sweep (`-m ablation=glob(*)`), so every rank would run its own sweep. The child's command is the one row."""
    cmd = [sys.executable, "-m", "embed_lm.train", *overrides, f'hydra.run.dir="{output_dir}"',
           "hydra.output_subdir=null"]  # the sweep job wrote .hydra/ already
    log.info("multirun job with several devices: running it as its own process group: %s", shlex.join(cmd))
    status = subprocess.run(cmd).returncode
    if status != 0:
        raise RuntimeError(f"the job's process exited with status {status} (its log is above): {shlex.join(cmd)}")
    return json.loads((output_dir / run_record.DONE).read_text())["metrics"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return run(cfg)
    local_launcher = hydra_cfg.launcher._target_.endswith((".BasicLauncher", ".JoblibLauncher"))  # not SLURM's
    own_process = local_launcher and local_processes(cfg.trainer.get("accelerator", "auto"),
                                                     cfg.trainer.get("devices", 1)) > 1
    try:
        metrics = (train_in_own_process(list(hydra_cfg.overrides.task), Path(cfg.paths.output_dir)) if own_process
                   else train(cfg))
    except Exception as e:  # one failed job must not stop the sweep: record it, let the others run, the report lists it
        log.exception("job failed: %s", e)
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        Path(cfg.paths.output_dir, "failed.txt").write_text(f"{type(e).__name__}: {e}\n")
        return None
    return metrics.get("test/ndcg@10")


def run(cfg: DictConfig) -> float | None:
    """train(cfg); a user error is printed as one line (no traceback) with exit status 2."""
    metrics = exit_on_user_error(train, cfg, errors=USER_ERRORS, env=("HYDRA_FULL_ERROR", "EMBED_LM_TRACEBACK"))
    return metrics.get("test/ndcg@10")


if __name__ == "__main__":
    main()
