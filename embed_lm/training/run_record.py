"""done.json: what a finished training run leaves behind, so a re-run of the same config (e.g. `make sweep-table4`
again after a partial sweep) skips it, and reports can be rebuilt from finished runs alone.

The fingerprint is a hash of the resolved config without the keys that do not change what is trained or
measured (output folder, resume checkpoint, logging). The record keeps that config too, so a re-run with another
config is refused with a readable diff (embed_lm/training/resume.py), never relabelled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

IGNORED = ("paths", "ckpt_path", "logger", "callbacks", "run_name", "resume")
DONE = "done.json"


def trained_config(cfg: DictConfig) -> dict:
    """The resolved config (plain types) without the IGNORED keys: what a checkpoint and done.json record."""
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in IGNORED}


def fingerprint(cfg: DictConfig) -> str:
    body = trained_config(cfg)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read(output_dir: Path) -> dict | None:
    """The folder's done.json record, or None."""
    path = output_dir / DONE
    return json.loads(path.read_text()) if path.is_file() else None


def finished(output_dir: Path, cfg: DictConfig) -> dict | None:
    """The saved record if this folder holds a finished run of the same config, else None."""
    record = read(output_dir)
    return record if record is not None and record.get("fingerprint") == fingerprint(cfg) else None


def mark_done(output_dir: Path, cfg: DictConfig, metrics: dict, evaluation: dict | None) -> None:
    record = {"fingerprint": fingerprint(cfg), "metrics": metrics, "evaluation": evaluation,
              "config": trained_config(cfg)}
    tmp = output_dir / (DONE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float))
    tmp.replace(output_dir / DONE)
