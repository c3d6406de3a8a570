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
from dataclasses import asdict
import sys
from pathlib import Path

import hydra
import mteb
import torch
from omegaconf import DictConfig, OmegaConf

from embed_lm.config import resolvers as conf_resolvers, validate
from embed_lm.data.records import DataFormatError
from embed_lm.errors import UserError, exit_on_user_error
from embed_lm.eval.mteb_encoder import MtebEncoder
from embed_lm.eval.scores import TaskScore, format_table, summarize, write_scores
from embed_lm.eval.suites import DatasetUnavailableError, UnknownTaskError, build_tasks
from embed_lm.inference.runs import RunNotFoundError, load_base, load_run
from embed_lm.model.distributed import resolve_device, world

log = logging.getLogger("embed_lm.evaluate")
conf_resolvers.register()
USER_ERRORS = (UserError, RunNotFoundError, UnknownTaskError, DatasetUnavailableError, FileNotFoundError,
               DataFormatError)  # not every ValueError: a bug keeps its traceback


class ReadOnlyResultCache(mteb.ResultCache):
    """Ranks > 0: see the tasks rank 0 finished (so every rank skips the same ones), write nothing."""

    def save_to_cache(self, *args, **kwargs) -> None:
        return None


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
    tasks = build_tasks(cfg.eval.suite, list(cfg.eval.tasks) if cfg.eval.get("tasks") else None,
                        sample_dir=cfg.eval.get("sample_dir"), path=cfg.eval.get("path"),
                        split=cfg.eval.get("split", "test"), instruction=cfg.eval.get("instruction"),
                        name=cfg.eval.get("name"))
    device = resolve_device(cfg.device)
    if cfg.run:
        embedder, run_cfg = load_run(cfg.run, device=device, max_length=cfg.max_length,
                                     trust_remote_code=bool(cfg.get("trust_remote_code", False)))
        name = run_folder(cfg.run).resolve().name
    else:
        embedder, name = load_base(cfg, device=device, max_length=cfg.max_length), f"base-{cfg.backbone.name}"
    out = output_dir_for(cfg)
    model = MtebEncoder(embedder, name=f"embed_lm/{name}", batch_size=cfg.batch_size, max_tokens=cfg.max_tokens)
    rank, size = world()
    cache = (mteb.ResultCache if rank == 0 else ReadOnlyResultCache)(cache_path=str(out / "mteb_cache"))
    log.info("evaluating %s on %d %s task(s); results in %s", name, len(tasks), cfg.eval.suite, out)
    results = mteb.evaluate(model, tasks, cache=cache, overwrite_strategy="always" if cfg.overwrite else
                            "only-missing", raise_error=cfg.raise_error, show_progress_bar=rank == 0)
    log.info("rank %d of %d encoded %d texts itself", rank, size, model.encoded)
    by_name = {tr.task_name: tr for tr in results.task_results}
    scores = [TaskScore(t.metadata.name, t.metadata.type, t.metadata.main_score,
                        100 * float(by_name[t.metadata.name].get_score())) for t in tasks if t.metadata.name in by_name]
    missing = [t.metadata.name for t in tasks if t.metadata.name not in by_name]
    command = "python -m embed_lm.evaluate " + " ".join(sys.argv[1:])
    if rank > 0:
        return summarize(scores) | {"suite": cfg.eval.suite, "missing_tasks": missing,
                                    "tasks": [asdict(t) | {"category": t.category} for t in scores]}
    report = write_scores(out, scores, {"suite": cfg.eval.suite, "model": name, "command": command,
                                        "missing_tasks": missing,
                                        "instructions": {f"{k[0]}/{k[1]}": v for k, v in model.prefixes_used.items()}})
    if missing:
        log.warning("%d task(s) failed and are missing from the means: %s", len(missing), ", ".join(missing))
    if cfg.wandb.enabled:
        log_to_wandb(cfg, report, out, name)
    print(f"\n{cfg.eval.suite} scores for {name} (x100; Avg = mean over tasks), written to {out}/scores.csv:\n"
          f"{format_table(report)}\n")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    init_from_launcher()
    report = exit_on_user_error(evaluate, cfg, errors=USER_ERRORS, env=("HYDRA_FULL_ERROR", "EMBED_LM_TRACEBACK"))
    return report["avg"]


if __name__ == "__main__":
    main()
