"""Metric history survives a resume: metrics.csv holds every step once, and the W&B run (offline here) is continued
under the id kept in the run folder."""

import csv
import re

import pytest
import wandb
from omegaconf import open_dict

from conftest import compose_train
from embed_lm.train import train

BASE = ["backbone=tiny_mistral", "data=sample", "debug=smoke", "logger=wandb", "trainer.max_steps=5",
        "test_after_training=false", "callbacks.model_checkpoint.every_n_train_steps=2", "data.max_length=32"]


def rows(run_dir, key: str) -> list[tuple[int, float]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def test_resume_in_the_same_folder_keeps_one_history_and_one_wandb_run(tmp_path):
    run = tmp_path / "run"
    cfg = compose_train(BASE, run)
    with open_dict(cfg):  # dies at step 4 before that step's checkpoint: last.ckpt holds step 2
        cfg.callbacks.crash = {"_target_": "crash_callback.CrashAt", "step": 4, "exception": "KeyboardInterrupt"}
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(cfg)
    wandb.finish(exit_code=1)  # what the dying process's exit does
    before = rows(run, "train/loss")
    # the row of the step the crash interrupted (3: step 4's, after its optimiser step) is written at the crash;
    # rows from step 2 on come after the checkpoint: the resume drops and logs them again
    assert [s for s, _ in before] == [0, 1, 2, 3]
    run_id = (run / "wandb" / "run_id").read_text().strip()

    train(compose_train([*BASE, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run))
    wandb.finish()
    after = rows(run, "train/loss")
    assert [s for s, _ in after] == [0, 1, 2, 3, 4]  # every step once, in order
    assert after[:2] == before[:2]  # the rows before the checkpoint are the first process's own
    assert [s for s, _ in rows(run, "lr-AdamW")] == [0, 1, 2, 3, 4]

    assert (run / "wandb" / "run_id").read_text().strip() == run_id
    runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    # both offline runs carry the id (W&B adds "-1" to the second folder when both started in the same second)
    assert len(runs) == 2 and all(re.search(rf"-{run_id}(-\d+)?$", name) for name in runs), runs
