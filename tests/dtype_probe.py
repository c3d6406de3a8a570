"""A callback (added to a run by config: +callbacks.probe._target_=dtype_probe.DtypeProbe) that records, on rank 0
after the first training step's forward, the dtype of every buffer of the encoder (RoPE inv_freq) to a JSON file."""

import json

import lightning as L


class DtypeProbe(L.Callback):
    def __init__(self, path: str) -> None:
        self.path, self.done = path, False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not self.done and trainer.is_global_zero:
            self.done = True
            with open(self.path, "w") as f:
                json.dump({name: str(b.dtype) for name, b in module.encoder.named_buffers()}, f)
