"""A callback that simulates a crash (or Ctrl-C) at a given global step; used by the resume tests via config.

hook=on_train_batch_end: after step `step`'s optimiser step, inside its end-of-step hooks (global_step == step).
hook=on_before_backward: inside step `step`'s training step, after its forward pass drew the dropout masks and before
its optimiser step (global_step == step - 1): what a Ctrl-C during a step usually hits.
"""

import lightning as L
import torch

EXCEPTIONS = {"RuntimeError": RuntimeError, "KeyboardInterrupt": KeyboardInterrupt}


class CrashAt(L.Callback):
    def __init__(self, step: int, exception: str = "RuntimeError", hook: str = "on_train_batch_end") -> None:
        self.step, self.exception, self.hook = step, exception, hook

    def _crash(self) -> None:
        raise EXCEPTIONS[self.exception](f"simulated crash at step {self.step}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.hook == "on_train_batch_end" and trainer.global_step == self.step:
            self._crash()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.hook == "on_before_backward" and trainer.global_step == self.step - 1:
            self._crash()


class DivergeRanks(L.Callback):
    """Rank r draws r extra numbers from the global torch RNG before each step, so the ranks' random streams (and
    dropout masks) differ: a resume that restored one rank's RNG state on every rank would change the losses."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.rand(trainer.global_rank)
