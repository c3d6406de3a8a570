"""Exact resume from any checkpoint the project writes (periodic, last, on_exception), on every rank.

    python -m embed_lm.train <overrides> ckpt_path=<run>/checkpoints/on_exception.ckpt     # after Ctrl-C or a crash

`StepState` (a callback, first in the list) adds to every checkpoint `embed_lm_resume`:

    rng          one entry per rank (python, numpy, torch CPU, this rank's CUDA device): every rank's dropout masks
                 continue as they would have; each rank restores its own entry before its first resumed step
    world_size   the number of processes that wrote it; a resume on another number logs what cannot be exact
    inexact      None, or why a resume from this checkpoint cannot be exact (logged when resuming)

Lightning saves whatever its loop holds at the moment of saving. A Ctrl-C or crash (OnExceptionCheckpoint) lands
mid-step: the unfinished step has drawn its dropout masks and the loop counts its batch as started, so a resume
would draw other masks and label every later step one too high in metrics.csv. The weights, optimiser and LR
schedule there are still those of the last completed optimiser step (they change only at its optimiser step), so
this callback writes that step's loop counters (including the data position) and RNG states instead, as captured
at its end: the checkpoint is the one a save at that step's end would have written. A crash inside a step's
end-of-step hooks (after its optimiser step) writes that step's metrics row first, which Lightning would only have
written after the hooks. Only an interrupt between an optimiser step and the end of its training step (e.g. inside
the cached loss's manual step) cannot be undone: that checkpoint is marked inexact, with the reason.
"""

from __future__ import annotations

import copy
import io
import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

KEY = "embed_lm_resume"


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain values and tensors (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.copy()), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # written by an older embed_lm: every visible device's state, rank 0's view
        cuda = cuda[torch.cuda.current_device()] if cuda and torch.cuda.is_available() and len(cuda) > \
            torch.cuda.current_device() else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)  # this rank's current device


def all_ranks(value: Any) -> list[Any]:
    """[value of rank 0, rank 1, ...] (a collective when several processes run; [value] otherwise)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    buffer = io.BytesIO()
    torch.save(value, buffer)  # sent as bytes, read back as data only (tensors inside objects do not unpickle here)
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, buffer.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in out]


class StepState(L.Callback):
    """See the module docstring. Keep it first in the callback list: its end-of-step capture must precede any other
    callback's on_train_batch_end (Lightning runs checkpoint callbacks last)."""

    def __init__(self) -> None:
        self._done: dict | None = None  # {"step", "epoch", "loops", "rng"} as of the end of the last completed step
        self._restore: list | None = None  # the loaded checkpoint's per-rank RNG states, restored at the first batch
        self._in_step = False  # a batch of the next optimiser step has started (accumulated batches included)
        self._ending = False  # the step's end-of-batch hooks are running: its metrics row is not written yet

    # --- capture ----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._done is None:  # a fresh run: nothing done, no loop state (Lightning's restart logic would count
            # an unfinished first batch as a step); its RNG is taken at the first batch, after the dataloader's draws
            self._done = {"step": trainer.global_step, "epoch": trainer.current_epoch, "rng": None, "loops": None}

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        self._in_step, self._ending = True, False
        restore, self._restore = self._restore, None
        if restore is not None and trainer.global_rank < len(restore):  # after the dataloader iterators were made
            set_rng_state(restore[trainer.global_rank])
        if self._done is not None and self._done["rng"] is None:
            self._done["rng"] = rng_state()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        if self._done is not None and trainer.global_step == self._done["step"]:
            return  # accumulating gradients: no optimiser step in this batch; the last completed step stays
        self._done = self._capture(trainer, rng=rng_state())
        self._in_step, self._ending = False, True

    @staticmethod
    def _capture(trainer: L.Trainer, rng: dict | None) -> dict:
        return {"step": trainer.global_step, "epoch": trainer.current_epoch, "rng": rng,
                "loops": copy.deepcopy(trainer._checkpoint_connector._get_loops_state_dict())}

    # --- interrupt: the step's metrics row before the checkpoint ----------------------------------------------
    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if self._ending and trainer.training and progress.completed < progress.processed:
            trainer._logger_connector.update_train_step_metrics()  # what Lightning does right after these hooks
        self._ending = False

    # --- save / load ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        done, inexact, rng = self._done, None, rng_state()
        if self._in_step and trainer.training and done is not None:  # mid-step: an interrupt
            if done["step"] == trainer.global_step:  # no optimiser step yet: save the last completed step
                checkpoint["loops"], checkpoint["epoch"] = copy.deepcopy(done["loops"]), done["epoch"]
                if done["loops"] is None:
                    del checkpoint["loops"]  # a resume starts the loop afresh, from these weights (= the initial)
                rng = done["rng"] if done["rng"] is not None else rng
            else:
                inexact = (f"saved at step {trainer.global_step} between its optimiser step and the end of its "
                           "training step (an interrupt there): its RNG states and loop counters are those of that "
                           "moment")
        ranks = all_ranks({"rng": rng, "inexact": inexact})  # one collective: every rank saves (dump_checkpoint)
        reasons = [r["inexact"] for r in ranks if r["inexact"]]
        checkpoint[KEY] = {"rng": [r["rng"] for r in ranks], "world_size": trainer.world_size,
                           "inexact": reasons[0] if reasons else None}

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        saved = checkpoint.get(KEY)
        if saved is None and "rng" in checkpoint:  # written by an older embed_lm: rank 0's state only
            saved = {"rng": [checkpoint["rng"]], "world_size": None, "inexact": None if trainer.world_size == 1 else
                     "it holds rank 0's RNG state only (written before embed_lm saved every rank's)"}
        rank = trainer.global_rank
        self._done = {"step": checkpoint["global_step"], "epoch": checkpoint["epoch"],
                      "loops": copy.deepcopy(checkpoint.get("loops")),
                      "rng": saved["rng"][rank] if saved is not None and rank < len(saved["rng"]) else None}
        if saved is None:
            log.warning("the checkpoint records no RNG state: the resume continues with fresh random streams "
                        "(dropout masks differ from an uninterrupted run)")
            return
        self._restore = saved["rng"]
        notes = []
        if saved.get("inexact"):
            notes.append(saved["inexact"])
        if saved["world_size"] not in (None, trainer.world_size):
            notes.append(f"written by {saved['world_size']} processes, resumed on {trainer.world_size}: each step's "
                         f"global batch (data.batch_size x processes) and so the data order, the cross-device "
                         f"negatives and the random streams of the ranks the checkpoint does not hold differ from an "
                         f"uninterrupted run")
        if notes and trainer.is_global_zero:
            log.warning("resuming from step %d, not exactly as an uninterrupted run would continue: %s",
                        checkpoint["global_step"], "; ".join(notes))
