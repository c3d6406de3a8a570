"""Training layer: the LightningModule, losses, callbacks, strategies, cross-device helpers and the run record."""
