"""Lightning callbacks the Hydra configs name (conf/callbacks/)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


class ModelCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint (best.ckpt, last.ckpt at each validation) plus final.ckpt:
    the state training ended with.

    A run that stops between validations (trainer.max_time, or max_steps not a multiple of
    val_check_interval) trained steps that last.ckpt does not hold: Lightning writes last.ckpt
    at the end of training only if it wrote none during the run. final.ckpt holds them. It is
    the file to evaluate or export; last.ckpt stays the point of an exact resume (a checkpoint
    written after training ended resumes into a new data epoch).
    """

    FINAL_NAME = "final"

    def __init__(self, *args, save_final: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_final = save_final

    @property
    def final_model_path(self) -> str:
        return str(Path(self.dirpath) / f"{self.FINAL_NAME}{self.FILE_EXTENSION}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_final and self.dirpath and trainer.global_step > 0:
            trainer.save_checkpoint(self.final_model_path)
