"""Loggers whose history survives a resume (conf/logger/*.yaml point here).

    python -m embed_lm.train logger=csv ...                       # <run>/csv/metrics.csv
    python -m embed_lm.train ... ckpt_path=<run>/checkpoints/last.ckpt     # same folder: one history, one W&B run

- `ResumableCSVLogger`: Lightning's CSVLogger deletes an existing metrics.csv when it starts, so a resumed run lost
  every step before its checkpoint. This one keeps the file; when training starts at global step S
  (`KeepCsvHistory`), the rows an earlier process logged at steps >= S (after its last checkpoint, before it died)
  are dropped, since the resumed run logs those steps again. Every step is then in the file once. (A row logged
  at step s belongs to optimizer step s + 1: Lightning logs a step's loss before incrementing the step.)
- `wandb_logger`: the run folder keeps its W&B run id in `wandb/run_id`; a resumed run (the same folder) continues
  that W&B run (`resume="allow"`) instead of starting a second one. Under a W&B sweep agent the agent's run id
  (WANDB_RUN_ID) is used and kept.
"""

from __future__ import annotations

import csv
import os
import secrets
import string
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from embed_lm import compat


class _KeepingWriter(ExperimentWriter):
    @compat.overrides("csv-keep-history")
    def _check_log_dir_exists(self) -> None:  # the parent deletes metrics.csv here; keep it and its header
        self.inherited = 0  # rows written by earlier processes
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                reader = csv.DictReader(f)
                self.inherited = sum(1 for _ in reader)
                self.metrics_keys = list(reader.fieldnames or [])

    def resume_at(self, step: int) -> int:
        """Drop the earlier processes' rows logged at `step` or later; returns how many were dropped."""
        if not self.inherited:
            return 0
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            rows = list(csv.DictReader(f))
        old, new = rows[:self.inherited], rows[self.inherited:]
        kept = [r for r in old if r.get("step") in (None, "") or int(float(r["step"])) < step] + new
        self.inherited -= len(rows) - len(kept)
        if len(kept) < len(rows):
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        return len(rows) - len(kept)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that appends to an existing metrics.csv instead of deleting it (see the module docstring)."""

    @property
    @rank_zero_experiment
    @compat.overrides("csv-logger-experiment")
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


class KeepCsvHistory(L.Callback):
    """At the start of training (the checkpoint's step restored), cut each ResumableCSVLogger's inherited rows at that
    step."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for lg in trainer.loggers:
            if isinstance(lg, ResumableCSVLogger) and trainer.is_global_zero:
                lg.save()  # rows logged before training (test_before_training) go to the file first
                lg.experiment.resume_at(trainer.global_step)


def stored_run_id(run_dir: Path) -> str | None:
    """This run folder's W&B run id: WANDB_RUN_ID (a sweep agent's), else the one kept in <run_dir>/wandb/run_id,
    else a new one; written by rank 0 (other ranks only read it: their WandbLogger never creates a run)."""
    path = run_dir / "wandb" / "run_id"
    run_id = os.environ.get("WANDB_RUN_ID") or (path.read_text().strip() if path.is_file() else None)
    if rank_zero_only.rank != 0:
        return run_id
    if run_id is None:  # W&B's own id format: 8 characters of [a-z0-9]
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def wandb_logger(save_dir: str, id: str | None = None, **kwargs) -> WandbLogger:
    """WandbLogger that continues the run folder's W&B run when the folder is trained again (a resume)."""
    return WandbLogger(save_dir=save_dir, id=id or stored_run_id(Path(save_dir)), resume="allow", **kwargs)
