"""Training that survives preemption: save on SIGTERM / SIGUSR1, resume when requeued.

Lightning's SLURM support (pytorch_lightning 2.6) does part of the job and is used for it:
``SLURMEnvironment`` takes the ranks from SLURM's variables and names the requeue signal
(SIGUSR1, what ``sbatch --signal=USR1@<seconds>`` sends). Three things it does not do are here:

- Its SIGUSR1 handler writes ``hpc_ckpt_<n>.ckpt`` from inside the signal handler, wherever
  the step happens to be (between two parameter updates of the optimizer, or with a barrier
  while another rank waits in a gradient all-reduce); its SIGTERM handler saves nothing and
  runs a broadcast inside the handler. ``Preemption`` only sets a flag in the handler. One
  process acts on it after the optimizer step under way; under DDP the ranks agree in one
  small all-reduce every ``check_every_n_steps`` optimizer steps (each costs a host sync, so
  not every step). All ranks then save ``last.ckpt`` together at that step boundary (the point
  Lightning's own ``every_n_train_steps`` checkpoints resume exactly from), rank 0 asks SLURM
  to requeue (SIGUSR1 only: a preempted job is requeued by SLURM itself) and the process exits
  with 128 + the signal number. A signal that the end of training overtakes stops the run
  there, before the evaluation that follows it.
- ``last.ckpt`` is otherwise written at validations only; ``Preemption`` also writes it every
  ``interval_minutes`` of wall-clock time, so a SIGKILL loses at most that much.
- A requeued job starts again with the same command; ``resume_checkpoint`` finds the newest
  checkpoint of its run folder (the folder is named after the job id, proteinperf.train). It is
  not Lightning's ``ckpt_path="last"``, which considers ``last*.ckpt`` only: a job requeued
  after training ended resumes from ``final.ckpt``, and the run needs the path before ``fit``
  (it keeps the previous part's CSV log, which Lightning's logger would otherwise delete).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from proteinperf.atomic import atomic_output

log = logging.getLogger(__name__)

# Decisions the ranks agree on with one max-reduce (a larger one includes the smaller ones).
_NOTHING, _SAVE, _STOP, _STOP_REQUEUE = 0, 1, 2, 3
# The checkpoints a run can resume from, newest first by time; best.ckpt is the same state
# as a last.ckpt of its validation or an older one.
RESUMABLE = ("last.ckpt", "final.ckpt")


class Preempted(SystemExit):
    """Training stopped on a signal after saving its resume point (exit status 128 + signal)."""

    def __init__(self, signum: int, checkpoint: str, step: int):
        super().__init__(128 + int(signum))
        self.signum, self.checkpoint, self.step = int(signum), checkpoint, step


def slurm_requeued() -> bool:
    """True in a SLURM job that SLURM started again (preempted or ``scontrol requeue``)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def slurm_job_id() -> str | None:
    """The job id of a SLURM batch job (array jobs: ``<array job>_<task>``); None outside
    SLURM and in interactive allocations (``srun --pty bash``, ``salloc``), which Lightning
    does not treat as SLURM jobs either."""
    env = os.environ
    if not env.get("SLURM_JOB_ID") or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def resume_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The newest resumable checkpoint in ``checkpoint_dir`` (None if there is none)."""
    folder = Path(checkpoint_dir)
    found = [folder / name for name in RESUMABLE if (folder / name).is_file()]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def requeue_slurm_job(job_id: str) -> bool:
    """``scontrol requeue <job>``: SLURM ends this run of the job and queues it again."""
    if not re.fullmatch(r"[0-9_]+", job_id):
        raise ValueError(f"not a SLURM job id: {job_id!r}")
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("could not requeue SLURM job %s: %s", job_id, err)
        return False
    if done.returncode:
        log.warning("scontrol requeue %s failed (exit %d)", job_id, done.returncode)
    return done.returncode == 0


class Preemption(pl.Callback):
    """Saves ``last.ckpt`` on SIGTERM or the requeue signal and exits; and every
    ``interval_minutes`` of training (None or 0: only at validations and on signals).

    ``requeue``: after the requeue signal (SIGUSR1 unless Lightning's SLURMEnvironment names
    another), rank 0 runs ``scontrol requeue`` in a SLURM job. ``check_every_n_steps``: under
    DDP, the optimizer steps between two agreements of the ranks (a signal is acted on at most
    that many steps late; one process checks after every step).
    """

    def __init__(
        self,
        interval_minutes: float | None = 30.0,
        requeue: bool = True,
        check_every_n_steps: int = 10,
    ):
        if interval_minutes is not None and interval_minutes < 0:
            raise ValueError(f"interval_minutes must be >= 0, got {interval_minutes}")
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.interval = float(interval_minutes or 0) * 60.0
        self.requeue = requeue
        self.check_every = int(check_every_n_steps)
        self.received: int | None = None  # the first signal since training started
        self._requeue_signal = signal.SIGUSR1
        self._previous: dict[int, object] = {}
        self._last_save = time.monotonic()
        self._last_step = -1

    # ------------------------------------------------------------------ signals

    def _handle(self, signum, frame) -> None:
        # Only a flag: a signal handler runs between two bytecodes of whatever the main
        # thread was doing, which is no place for collectives or file writes.
        if self.received is None or signum == self._requeue_signal:
            self.received = signum

    def _install(self, trainer: pl.Trainer) -> None:
        from lightning_fabric.plugins.environments import SLURMEnvironment

        env = getattr(trainer.strategy, "cluster_environment", None)  # None: one device
        if isinstance(env, SLURMEnvironment) and env.requeue_signal is not None:
            self._requeue_signal = env.requeue_signal
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, self._requeue_signal):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer, pl_module):
        # After Lightning's own handlers (registered when the run starts): these replace them
        # for the training loop; Lightning restores the originals when the run ends.
        self.received = None
        self._last_save = time.monotonic()
        self._last_step = trainer.global_step
        self._install(trainer)

    def on_train_end(self, trainer, pl_module):
        # A signal after the last check: stop here, not after the evaluation that follows (a
        # requeued run resumes from this last.ckpt straight into it).
        decision = self._agree(trainer, self._local_decision(signals_only=True))
        self._restore()
        if decision >= _STOP:
            self._stop(trainer, decision, self._save_last(trainer))

    def on_exception(self, trainer, pl_module, exception):
        self._restore()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self._last_step:  # accumulating: no optimizer step yet
            return
        self._last_step = trainer.global_step
        if trainer.world_size > 1 and trainer.global_step % self.check_every:
            return
        decision = self._agree(trainer, self._local_decision())
        if decision == _NOTHING:
            return
        path = self._save_last(trainer)
        if decision >= _STOP:
            self._stop(trainer, decision, path)

    def _local_decision(self, signals_only: bool = False) -> int:
        if self.received is not None:
            return _STOP_REQUEUE if self.received == self._requeue_signal else _STOP
        if signals_only:
            return _NOTHING
        if self.interval and time.monotonic() - self._last_save >= self.interval:
            return _SAVE
        return _NOTHING

    @staticmethod
    def _agree(trainer: pl.Trainer, decision: int) -> int:
        """The largest decision of any rank, on every rank (one small all-reduce under DDP:
        SLURM signals every task, but a rank may see it a step later, and the clocks of
        wall-clock saves differ between ranks)."""
        if trainer.world_size == 1:
            return decision
        value = torch.tensor(decision, device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(value, reduce_op="max"))

    def _save_last(self, trainer: pl.Trainer) -> str:
        callback = trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback and callback.dirpath else None
        folder = folder or Path(trainer.default_root_dir) / "checkpoints"
        path = folder / "last.ckpt"
        # Every rank calls save_checkpoint (it holds a barrier); rank 0 writes, beside the
        # file and renamed into place: a kill during the write leaves the previous last.ckpt.
        if trainer.is_global_zero:
            with atomic_output(path, fsync=True) as tmp:
                trainer.save_checkpoint(tmp)
        else:
            trainer.save_checkpoint(path)
        trainer.strategy.barrier("preemption-save")
        self._last_save = time.monotonic()
        return str(path)

    def _stop(self, trainer: pl.Trainer, decision: int, path: str) -> None:
        signum = self._requeue_signal if decision == _STOP_REQUEUE else signal.SIGTERM
        step = int(trainer.global_step)
        for logger in trainer.loggers:  # e.g. the CSV logger holds up to 100 steps of rows
            logger.save()
        if trainer.is_global_zero:
            name = signal.Signals(signum).name
            print(f"{name}: saved {path} at step {step}; exiting", flush=True)
            job = slurm_job_id()
            if decision == _STOP_REQUEUE and self.requeue and job:
                if requeue_slurm_job(job):
                    print(f"requeued SLURM job {job}", flush=True)
        raise Preempted(signum, path, step)
