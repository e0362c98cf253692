"""A callback for the DDP test (imported by the training subprocess via PYTHONPATH).

After every training step each rank writes the checksum of every FAVOR layer's features, so
the test can compare what the ranks actually trained with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl


class FeatureProbe(pl.Callback):
    def __init__(self, out_dir: str):
        self.out_dir, self.sums = Path(out_dir), {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        layers = pl_module.model.attention_layers
        step = trainer.global_step
        self.sums[step] = [float(layer.features.double().sum()) for layer in layers]

    def on_train_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"world_size": trainer.world_size, "sums": self.sums}))
