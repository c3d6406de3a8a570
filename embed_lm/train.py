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
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from embed_lm.config import resolvers as conf_resolvers, validate
from embed_lm.data.fingerprint import data_fingerprint
from embed_lm.errors import ResumeMismatchError, exit_on_user_error
from embed_lm.model.backbone import LoadedBackbone, add_lora, count_trainable, full_finetune
from embed_lm.model.collator import TextCollator
from embed_lm.model.encoder import TextEncoder, check_packing
from embed_lm.training import run_record
from embed_lm.training.after_training import (USAGE_GROUPS, authors_usage_specs, evaluate_after_training,
                                              format_metrics, test_as_authors_use_it)
from embed_lm.training.callbacks import SaveEmbedder
from embed_lm.training.curves import write_run_curves
from embed_lm.training.loggers import KeepCsvHistory, ResumableCSVLogger
from embed_lm.training.module import ContrastiveEncoderModule
from embed_lm.training.resume import (CONFIG_KEY, DATA_KEY, ResumeGuard, check_same_config, check_same_data,
                                     checkpoint_record, find_resume_checkpoint)
from embed_lm.training.step_state import StepState
from embed_lm.training.strategies import check_setup

log = logging.getLogger("embed_lm.train")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
conf_resolvers.register()
warnings.filterwarnings("ignore", message=r".*ckpt_path=\"last\"\) is set, but there is no last checkpoint")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from `cfg`, train, test, evaluate; returns the final test (or last logged) metrics.
    A folder that already holds a finished run of the same config is not trained again (done.json)."""
    validate.check_train(cfg)  # every option in its range: before anything loads
    output_dir = Path(cfg.paths.output_dir)
    if (record := run_record.finished(output_dir, cfg)) is not None:
        log.info("%s already holds a finished run of this config (done.json): skipped", output_dir)
        return record["metrics"]
    resume_from = check_resume(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True)
    spec, loss_fn, datamodule = check_inputs(cfg)  # seconds: a bad model path or data file fails before loading
    data = check_resume_data(cfg, resume_from, datamodule)  # the data the checkpoint was trained on, unchanged
    output_dir.mkdir(parents=True, exist_ok=True)
    backbone = spec.load()
    datamodule.collator = TextCollator(backbone.tokenizer, cfg.data.max_length, backbone.append_eos,
                                       backbone.padding_side)
    module = ContrastiveEncoderModule(build_encoder(cfg, backbone), loss_fn, **cfg.optimizer)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = build_trainer(cfg, loggers, output_dir, backbone.tokenizer, data)

    has_test = cfg.data.get("test") is not None and (cfg.test_before_training or cfg.test_after_training)
    before = test(trainer, module, datamodule) if has_test and cfg.test_before_training else None
    base = test_base(cfg, trainer, module, datamodule, before) if before is not None else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    save_last_checkpoint(trainer)
    after = test(trainer, module, datamodule) if has_test and cfg.test_after_training else {
        k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.global_rank == 0:
        write_run_curves(output_dir)  # csv/curves.png: loss, learning rate, val nDCG@10 against the step
        if has_test:
            write_test_metrics(output_dir, cfg.data.name, before, after, base)
    report = None if cfg.get("eval") is None else evaluate_after_training(
        output_dir, OmegaConf.to_container(cfg.eval, resolve=True), OmegaConf.to_container(cfg.evaluation,
        resolve=True), loggers, str(trainer.strategy.root_device), trainer.global_rank,
        command="python -m embed_lm.train " + " ".join(sys.argv[1:]))
    if trainer.global_rank == 0:
        run_record.mark_done(output_dir, cfg, after, None if report is None else
                             {k: report[k] for k in ("suite", "categories", "avg", "n_tasks", "missing_tasks")})
    return after


def check_resume(cfg: DictConfig, output_dir: Path) -> Path | None:
    """The checkpoint to resume from (ckpt_path, else the newest one in this run folder), after checking that it
    and any finished run in the folder were trained with this config (or the keys in resume.allow_changes)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    allow = list(cfg.get("resume", {}).get("allow_changes") or [])
    if (record := run_record.read(output_dir)) is not None:  # finished with another config: continue it, or refuse
        if record.get("config") is None:  # written before done.json kept its config: no diff to show, never relabel
            raise ResumeMismatchError(f"run folder {output_dir} holds a finished run of another config (done.json "
                                      f"fingerprint {record.get('fingerprint')}, this config "
                                      f"{run_record.fingerprint(cfg)}); train into another folder")
        check_same_config(record["config"], resolved, allow, f"run folder {output_dir} (done.json)")
    resume_from = find_resume_checkpoint(cfg.ckpt_path, output_dir / "checkpoints")
    if resume_from is not None:
        check_same_config(checkpoint_record(resume_from).get(CONFIG_KEY), resolved, allow, f"checkpoint {resume_from}")
    return resume_from


def check_resume_data(cfg: DictConfig, resume_from: Path | None, datamodule) -> dict:
    """The training data's fingerprint (recorded in every checkpoint), after checking that the checkpoint to resume
    from was trained on the same data (or resume.allow_changes names data)."""
    data = data_fingerprint(datamodule.sources, datamodule.cache_dir)
    if resume_from is not None:
        allow = list(cfg.get("resume", {}).get("allow_changes") or [])
        check_same_data(checkpoint_record(resume_from).get(DATA_KEY), data, allow, f"checkpoint {resume_from}")
    return data


def check_inputs(cfg: DictConfig):
    """(backbone spec, loss, datamodule) with every input checked that can be checked before the weights load:
    the model path, the loss/strategy and packing/backbone combinations, every data file (its table built: each
    source has examples, enough for one global batch), the backbone's authors_usage options."""
    spec = instantiate(cfg.backbone)
    spec.check()
    loss_fn = instantiate(cfg.loss)
    check_setup(loss_fn, cfg.trainer.get("strategy", "auto"), str(cfg.trainer.precision),
                cfg.trainer.get("accumulate_grad_batches", 1), full_finetune=cfg.lora_rank.r is None)
    check_packing(cfg.get("packing", False), cfg.backbone.architecture)
    validate.check_train_files(cfg)
    if cfg.test_before_training and cfg.backbone.get("authors_usage") is not None:  # names a bad option now
        authors_usage_specs(OmegaConf.to_container(cfg.backbone.authors_usage, resolve=True), CONF_DIR)
    datamodule = instantiate(cfg.data, collator=None, instruction_style=instantiate(cfg.instruction_style),
                             _recursive_=True)
    world_size = local_processes(cfg.trainer.get("accelerator", "auto"), cfg.trainer.get("devices", 1)) * int(
        cfg.trainer.get("num_nodes", 1) or 1)
    # builds the Arrow tables (data only; one process per machine: a later rank finds them or fails with rank 0)
    datamodule.check(world_size, build=os.environ.get("LOCAL_RANK", "0") == "0")
    # the collator needs the tokenizer: set once the backbone has loaded
    return spec, loss_fn, datamodule


def build_encoder(cfg: DictConfig, backbone: LoadedBackbone) -> TextEncoder:
    """The backbone with LoRA on its target modules (or every weight trainable: lora_rank=full) + pooling."""
    if cfg.lora_rank.r is None:
        model = full_finetune(backbone.model, cfg.gradient_checkpointing)
        log.info("full fine-tuning: %s trainable parameters", f"{count_trainable(model):,}")
    else:
        model = add_lora(backbone.model, cfg.lora_rank.r, cfg.lora.alpha, cfg.lora.dropout,
                         backbone.lora_target_modules, cfg.gradient_checkpointing)
        log.info("LoRA r=%d on %s: %s trainable parameters", cfg.lora_rank.r, backbone.lora_target_modules,
                 f"{count_trainable(model):,}")
    return TextEncoder(model, instantiate(cfg.pooling), packing=cfg.get("packing", False))


def build_trainer(cfg: DictConfig, loggers: list, output_dir: Path, tokenizer, data: dict | None = None
                  ) -> L.Trainer:
    """The Lightning Trainer of the `trainer` group, with the configured callbacks plus the embedder writer, the
    CSV history keeper and the resume guard; every logger gets the resolved config as hyperparameters."""
    callbacks = [StepState(), *(instantiate(c) for c in cfg.callbacks.values() if c is not None)]  # first: it
    # captures each step's end before any other callback runs (exact resume from on_exception.ckpt)
    if not loggers:  # logger=none: nothing to monitor learning rates into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(SaveEmbedder(output_dir / "embedder", OmegaConf.to_yaml(cfg, resolve=True), tokenizer))
    if any(isinstance(lg, ResumableCSVLogger) for lg in loggers):
        callbacks.append(KeepCsvHistory())
    callbacks.append(ResumeGuard(run_record.trained_config(cfg), output_dir / "checkpoints", data))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return trainer


def test(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    return trainer.test(module, datamodule=datamodule, verbose=False)[0]


def test_base(cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
              before: dict[str, float]) -> dict[str, float] | None:
    """The test splits on the base model as its authors use it (backbone.authors_usage); `before` when this run
    already uses that format (no second pass); None for a backbone that does not name its authors' usage."""
    usage = cfg.backbone.get("authors_usage")
    if usage is None:
        return None
    specs = authors_usage_specs(OmegaConf.to_container(usage, resolve=True), CONF_DIR)
    if all(OmegaConf.to_container(cfg[g], resolve=True) == specs[g] for g in USAGE_GROUPS):
        return before
    log.info("testing the base model as its authors use it too: %s", dict(usage))
    return test_as_authors_use_it(trainer, module, datamodule, specs)


def save_last_checkpoint(trainer: L.Trainer) -> None:
    """last.ckpt with the optimiser state at the end of an epoch-bounded run (a run stopped by max_steps already
    has it: ResumeGuard saved it mid-epoch, so it is not taken for a finished epoch)."""
    stopped_by_max_steps = 0 < trainer.max_steps <= trainer.global_step
    if trainer.checkpoint_callback is not None and not trainer.interrupted and not stopped_by_max_steps:
        trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt", weights_only=False)


def write_test_metrics(output_dir: Path, data_name: str, before: dict | None, after: dict,
                       base: dict | None = None) -> None:
    """test_metrics.json: base (the base model as its authors use it), before, after, and after - base."""
    gain = None if base is None else {k: v - base[k] for k, v in after.items() if k in base}
    (output_dir / "test_metrics.json").write_text(json.dumps({"base": base, "before": before, "after": after,
                                                              "gain_vs_base": gain}, indent=2))
    print(f"\nHeld-out retrieval ({data_name} test split), run folder {output_dir}:\n"
          f"{format_metrics(before, after, base)}\n")


def local_processes(accelerator: str, devices) -> int:
    """How many processes Lightning starts on this machine for trainer.accelerator / trainer.devices."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if str(devices) in ("auto", "-1"):
        return torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 1
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return int(devices)


def runs_jobs_in_own_process_group(launcher_target: str) -> bool:
    """True for launchers that start every job as its own process group (submitit's SLURM and local launchers);
    False for those that run jobs in the sweep's own process or its workers (Hydra's basic launcher, joblib)."""
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    return issubclass(get_class(launcher_target), BaseSubmititLauncher)


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
    own_process = not runs_jobs_in_own_process_group(hydra_cfg.launcher._target_) and local_processes(
        cfg.trainer.get("accelerator", "auto"), cfg.trainer.get("devices", 1)) > 1
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
    """train(cfg); a user error (embed_lm.errors.UserError) is printed as one line with exit status 2."""
    metrics = exit_on_user_error(train, cfg)
    return metrics.get("test/ndcg@10")


if __name__ == "__main__":
    main()
