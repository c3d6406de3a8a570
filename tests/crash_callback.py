"""A callback that simulates a crash (or Ctrl-C) at a given global step; used by the resume test via config."""

import lightning as L


class CrashAt(L.Callback):
    def __init__(self, step: int, exception: str = "RuntimeError") -> None:
        self.step, self.exception = step, exception

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise {"RuntimeError": RuntimeError, "KeyboardInterrupt": KeyboardInterrupt}[self.exception](
                f"simulated crash at step {self.step}")
