"""Callbacks for the preemption tests (imported by training subprocesses via PYTHONPATH).

``SignalAt`` sends a real signal with os.kill when training reaches a step, as SLURM would:
to this process (every rank that has it), or only from rank 0 to itself (``ranks: [0]``).
``WeightsAt`` records what the resumed and the uninterrupted runs ended with.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

signal_module = signal  # SignalAt's argument is called signal


class SignalAt(pl.Callback):
    def __init__(self, step: int, signal: str = "SIGTERM", ranks: list[int] | None = None):
        self.step, self.signum, self.ranks = int(step), getattr(signal_module, signal), ranks

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # Arrives during step `step` + 1: the run must save after that step, not before.
        if trainer.global_step == self.step and (
            self.ranks is None or trainer.global_rank in self.ranks
        ):
            os.kill(os.getpid(), self.signum)


class LearningRates(pl.Callback):
    """Each rank writes the learning rate of its first optimizer step and the world size."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        path = self.out_dir / f"rank{trainer.global_rank}-{trainer.world_size}.json"
        if not path.exists():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            path.write_text(json.dumps({"lr": lr, "step": trainer.global_step}))


def checksum(state: dict) -> float:
    return float(sum(v.double().sum() for v in state.values() if torch.is_floating_point(v)))


class Pace(pl.Callback):
    """Writes the step reached to ``step_file`` after every step and then sleeps, so that a
    test can send a signal from outside while training runs."""

    def __init__(self, step_file: str, seconds: float = 0.2):
        self.step_file, self.seconds = Path(step_file), float(seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero:
            self.step_file.write_text(str(trainer.global_step))
        time.sleep(self.seconds)
