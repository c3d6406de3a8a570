"""Evaluate a trained run (or a base model) with the `mteb` library; write per-task scores, MTEB category means
and the overall mean (over datasets) to <output_dir>/scores.{json,csv}, and log them to W&B.

    python -m embed_lm.evaluate run=outputs/train/runs/<run> eval=local
    python -m embed_lm.evaluate run=<run>/checkpoints/last.ckpt eval=mteb_en eval.tasks=[STS12,SciFact]
    python -m embed_lm.evaluate run=<run> eval=beir eval.path=/data/scifact eval.instruction="Given a claim, ..."
    python -m embed_lm.evaluate run=null backbone=minilm pooling=mean instruction_style=none eval=local

Encodes with the run's own pooling, instruction style and max length. Interrupted evaluations resume: finished
tasks are read back from <output_dir>/mteb_cache (overwrite=true recomputes).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from embed_lm.config import resolvers as conf_resolvers, validate
from embed_lm.errors import exit_on_user_error
from embed_lm.eval.runner import evaluate_embedder
from embed_lm.eval.suites import build_tasks
from embed_lm.inference.runs import load_base, load_run
from embed_lm.model.distributed import resolve_device, world

log = logging.getLogger("embed_lm.evaluate")
conf_resolvers.register()


def init_from_launcher() -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment), one GPU per local rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or world()[1] > 1:
        return
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def run_folder(run: str) -> Path:
    """The run folder of `run=`: the folder itself, or the run holding a checkpoints/<name>.ckpt."""
    path = Path(run)
    return path.parent.parent if path.suffix == ".ckpt" else path


def output_dir_for(cfg: DictConfig) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    if cfg.run:
        run = Path(cfg.run)
        tag = cfg.eval.suite if run.suffix != ".ckpt" else f"{cfg.eval.suite}-{run.stem}"
        return run_folder(cfg.run) / "eval" / tag
    return Path(cfg.paths.log_dir) / "eval" / cfg.backbone.name / cfg.eval.suite


def log_to_wandb(cfg: DictConfig, report: dict, out: Path, name: str) -> None:
    import wandb

    mode = "offline" if conf_resolvers.wandb_offline() else "online"
    run = wandb.init(project=cfg.wandb.project, name=f"eval-{cfg.eval.suite}-{name}", dir=str(out), mode=mode,
                     job_type="eval", config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous")
    prefix = f"eval/{cfg.eval.suite}"
    run.log({f"{prefix}/{c}": v for c, v in report["categories"].items() if v is not None}
            | {f"{prefix}/avg": report["avg"]})
    table = wandb.Table(columns=["task", "category", "main_score", "score"],
                        data=[[t["task"], t["category"], t["main_score"], t["score"]] for t in report["tasks"]])
    run.log({f"{prefix}/tasks": table})
    run.finish()


def evaluate(cfg: DictConfig) -> dict:
    validate.check_evaluate(cfg)  # every option in range before any model loads
    tasks = build_tasks(**OmegaConf.to_container(cfg.eval, resolve=True))
    device = resolve_device(cfg.device)
    if cfg.run:
        embedder, _ = load_run(cfg.run, device=device, max_length=cfg.max_length,
                               trust_remote_code=bool(cfg.get("trust_remote_code", False)))
        name = run_folder(cfg.run).resolve().name
    else:
        embedder, name = load_base(cfg, device=device, max_length=cfg.max_length), f"base-{cfg.backbone.name}"
    out = output_dir_for(cfg)
    report = evaluate_embedder(embedder, name, tasks, out, cfg.eval.suite, batch_size=cfg.batch_size,
                               max_tokens=cfg.max_tokens, overwrite=cfg.overwrite, raise_error=cfg.raise_error,
                               command="python -m embed_lm.evaluate " + " ".join(sys.argv[1:]))
    if world()[0] == 0 and cfg.wandb.enabled:
        log_to_wandb(cfg, report, out, name)
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    init_from_launcher()
    report = exit_on_user_error(evaluate, cfg)  # a UserError: one line, exit 2
    return report["avg"]


if __name__ == "__main__":
    main()
