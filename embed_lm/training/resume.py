"""Resume and re-run rules. A checkpoint records the resolved config it was trained with (`embed_lm_config`, plain
types); resuming with another config, or re-running a finished run folder (done.json) with another config, is
refused with a readable diff, unless the user names the keys allowed to change.

    python -m embed_lm.train <overrides> ckpt_path=<run>/checkpoints/last.ckpt               # same config: resumes
    python -m embed_lm.train <overrides> trainer.max_steps=12 ckpt_path=<8-step run>/checkpoints/last.ckpt
    python -m embed_lm.train <overrides> optimizer.lr=5e-5 ckpt_path=... resume.allow_changes=[optimizer.lr]

Keys that never change what is trained (output places, logging, evaluation: IGNORED) may always differ; the
training length (LENGTH: trainer.max_steps, trainer.max_epochs) may differ and the change is logged: the LR
schedule then runs to the new total, and the steps already taken stay as they were. Every other key (backbone,
pooling, lora_rank, data.batch_size, ...) only if named in resume.allow_changes (a prefix names its subtree).
The checkpoint also records the training data's fingerprint (`embed_lm_data`: content hashes, see
embed_lm/data/fingerprint.py); a resume on changed data is refused naming the files unless resume.allow_changes
names `data`. ckpt_path is a .ckpt file or a DeepSpeed checkpoint folder (its config is checked too); any other
folder is refused in one line before a model loads. Re-running a run folder resumes from the checkpoint with the
highest recorded global step. Exactness (RNG states, loop counters) is embed_lm/training/step_state.py's.
Checkpoints are read with torch.load(weights_only=True): data only, a pickled object is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from embed_lm.data.fingerprint import data_changes
from embed_lm.errors import ResumeMismatchError, UserError
from embed_lm.inference.checkpoint_files import data_only_torch_load, read_checkpoint
from embed_lm.training.step_state import KEY as STEP_KEY

log = logging.getLogger(__name__)

CONFIG_KEY = "embed_lm_config"
DATA_KEY = "embed_lm_data"  # the training data's fingerprint (embed_lm/data/fingerprint.py)
IGNORED = ("paths", "ckpt_path", "logger", "callbacks", "run_name", "resume", "eval", "evaluation",
           "test_before_training", "test_after_training", "data.dev", "data.test", "data.eval_batch_size",
           "data.num_workers", "trainer.log_every_n_steps", "trainer.val_check_interval",
           "trainer.num_sanity_val_steps", "trainer.default_root_dir", "trainer.enable_progress_bar")
LENGTH = ("trainer.max_steps", "trainer.max_epochs")
ABSENT = "(absent)"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: leaf value}; lists are leaves."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _under(key: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_diff(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every leaf that differs, keys in IGNORED left out."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if not _under(k, IGNORED))
    return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in keys if a.get(k, ABSENT) != b.get(k, ABSENT)]


def format_diff(diff: list[tuple[str, Any, Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, old, new in diff)


def check_same_config(saved: dict | None, now: dict, allow: list[str], what: str) -> None:
    """Raise ResumeMismatchError unless `now` differs from `saved` only in IGNORED, LENGTH or `allow` keys."""
    if saved == {}:
        return
    if saved is None:
        log.warning("%s records no config (written before embed_lm checked resumes): cannot check that it was "
                    "trained with this config", what)
        return
    diff = config_diff(saved, now)
    refused = [d for d in diff if not _under(d[0], LENGTH) and not _under(d[0], allow)]
    if refused:
        keys = ",".join(k for k, _, _ in refused)
        raise ResumeMismatchError(
            f"{what} was trained with another config:\n{format_diff(refused)}\nUse the same config, or name the "
            f"keys allowed to change: resume.allow_changes=[{keys}] (a changed backbone, pooling or lora_rank "
            "makes the saved weights mean something else: allow it only if you mean it)")
    if diff:
        log.warning("%s: continuing with these config changes:\n%s", what, format_diff(diff))


def checkpoint_record(path: Path) -> dict:
    """What a checkpoint records besides weights: global_step, embed_lm_config, embed_lm_data, embed_lm_resume. Reads
    a .ckpt file (memory-mapped: its tensors stay on disk) or a DeepSpeed checkpoint folder (Lightning's state is in
    <folder>/<tag>/[zero_pp_rank_0_]mp_rank_00_model_states.pt); any other folder is refused (UserError), before a
    model loads."""
    if not path.is_dir():
        return read_checkpoint(path, mmap=True)
    latest = path / "latest"
    if not latest.is_file():
        inside = sorted(p.name for p in (path / "checkpoints").glob("*.ckpt")) if (path / "checkpoints").is_dir() \
            else []
        hint = f" (this looks like a run folder: ckpt_path={path / 'checkpoints' / inside[0]})" if inside else ""
        raise UserError(f"ckpt_path={path} is a folder but not a checkpoint (a DeepSpeed checkpoint folder has a "
                        f"`latest` file); pass a .ckpt file or folder from a run's checkpoints/{hint}")
    tag = path / latest.read_text().strip()  # ZeRO-2: mp_rank_00_model_states.pt; ZeRO-3: one per rank
    found = [tag / name for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
             if (tag / name).is_file()]
    if not found:
        raise UserError(f"ckpt_path={path}: DeepSpeed checkpoint folder without {tag}/*mp_rank_00_model_states.pt "
                        "(damaged, or written by a run that was killed while saving); pass another checkpoint")
    state_file = found[0]
    try:
        with data_only_torch_load():
            return read_checkpoint(state_file, mmap=True, require_state_dict=False)
    except ImportError as e:
        raise UserError(f"ckpt_path={path} is a DeepSpeed checkpoint: resuming it needs DeepSpeed "
                        "(pip install -e '.[deepspeed]')") from e


def find_resume_checkpoint(ckpt_path: str | None, checkpoints_dir: Path) -> Path | None:
    """The checkpoint a run resumes from: ckpt_path if given, else the last*.ckpt / on_exception.ckpt of the run
    folder with the highest recorded global step (re-running a run folder continues it; not the newest file:
    DeepSpeed rewrites the files inside last.ckpt/ in place), else None."""
    if ckpt_path not in (None, "last"):
        path = Path(ckpt_path).expanduser()
        if not path.exists():
            raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        checkpoint_record(path)  # a folder that is not a checkpoint: refused here, before the model loads
        return path
    ranked = []
    for path in [*checkpoints_dir.glob("last*.ckpt"), *checkpoints_dir.glob("on_exception.ckpt")]:
        try:
            record = checkpoint_record(path)
        except UserError as e:  # e.g. truncated by a kill while saving: the others may still serve
            log.warning("not resuming from %s: %s", path, e)
            continue
        exact = not (record.get(STEP_KEY) or {}).get("inexact")
        ranked.append(((int(record.get("global_step", -1)), exact, path.stat().st_mtime), path))
    if ranked:
        best = max(ranked)[1]
        log.info("resuming from %s (the highest global step of %s)", best, ", ".join(
            f"{p.name}: {key[0]}" for key, p in sorted(ranked)))
        return best
    return None


def check_same_data(saved: dict | None, now: dict, allow: list[str], what: str) -> None:
    """Raise ResumeMismatchError if the training data changed since `saved` (embed_lm/data/fingerprint.py), unless
    `allow` names `data`."""
    if saved is None:
        log.warning("%s records no data fingerprint (written before embed_lm recorded one): cannot check that it was "
                    "trained on this data", what)
        return
    changes = data_changes(saved, now)
    if changes and "data" not in allow:
        raise ResumeMismatchError(
            f"{what} was trained on other data: {'; '.join(changes[:5])}"
            f"{f' (+{len(changes) - 5} more)' if len(changes) > 5 else ''}. Resuming would apply its data position "
            "to different data; train into a new folder, or allow it: resume.allow_changes=[data]")
    if changes:
        log.warning("%s: continuing on changed data (resume.allow_changes names data): %s", what, "; ".join(changes))


class ResumeGuard(L.Callback):
    """Records the resolved config in every checkpoint; on a resume, applies the module's (possibly allowed-to-
    change) optimiser settings to the restored optimiser; saves last.ckpt at the step that reaches max_steps, so a
    run stopped by max_steps is continued mid-epoch (`trainer.max_steps=<more>`), not taken for a finished epoch."""

    def __init__(self, config: dict, checkpoints_dir: Path, data: dict | None = None) -> None:
        self.config, self.checkpoints_dir, self.data = config, Path(checkpoints_dir), data

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config
        if self.data is not None:
            checkpoint[DATA_KEY] = self.data

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        lr = getattr(module, "lr", None)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                for key in ("weight_decay", "betas"):
                    if hasattr(module, key) and key in group:
                        group[key] = getattr(module, key)
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if lr is None or not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) or scheduler.last_epoch < 1:
                continue
            scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
            for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
                group["initial_lr"] = lr
                group["lr"] = lr * factor(scheduler.last_epoch)  # what scheduler.step() sets, at the new total

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        if 0 < trainer.max_steps <= trainer.global_step and trainer.checkpoint_callback is not None:
            trainer.save_checkpoint(self.checkpoints_dir / "last.ckpt", weights_only=False)  # = the full state
