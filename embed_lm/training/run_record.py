"""done.json: what a finished training run leaves behind, so a re-run of the same config (e.g. `make sweep-table4`
again after a partial sweep) skips it, and reports can be rebuilt from finished runs alone.

The fingerprint is a hash of the resolved config without the keys that do not change what is trained or
measured (output folder, resume checkpoint, logging).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

IGNORED = ("paths", "ckpt_path", "logger", "callbacks", "run_name")
DONE = "done.json"


def fingerprint(cfg: DictConfig) -> str:
    body = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in IGNORED}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished(output_dir: Path, cfg: DictConfig) -> dict | None:
    """The saved record if this folder holds a finished run of the same config, else None."""
    path = output_dir / DONE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("fingerprint") == fingerprint(cfg) else None


def mark_done(output_dir: Path, cfg: DictConfig, metrics: dict, evaluation: dict | None) -> None:
    record = {"fingerprint": fingerprint(cfg), "metrics": metrics, "evaluation": evaluation}
    tmp = output_dir / (DONE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float))
    tmp.replace(output_dir / DONE)
