"""Bulk runs on several processes: each rank's ``bulk.RankRun`` inside Lightning's predict loop.

Lightning starts the ranks (DDP: re-running the command, or spawning), places the model and
the batches on each rank's device and gives the barrier that lets rank 0 make the shard folder
before the others read it. Everything else is ``bulk.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings

import pytorch_lightning as pl
import torch

from proteinperf.outputs import output_lock

from .bulk import RankRun, prepare, summary
from .common import resolve_accelerator
from .fasta_index import FastaIndex, Source


class BulkInference(pl.LightningModule):
    """One rank of a bulk run as Lightning's predict loop drives it."""

    def __init__(self, model, task, index: FastaIndex | None, fasta: str, output, quiet: bool):
        super().__init__()
        self.model, self.task, self.index = model, task, index
        self.fasta, self.output, self.quiet = fasta, output, quiet
        self.rank_run: RankRun | None = None

    def setup(self, stage: str) -> None:
        self.trainer.strategy.barrier()  # rank 0 has made the folder before it got here
        self.rank_run = RankRun(self.model, self.task, self.index, self.fasta, self.output,
                                self.global_rank, self.trainer.world_size, self.quiet)  # fmt: skip
        self.rank_run.setup()
        self.index = self.rank_run.index

    def predict_dataloader(self):
        return self.rank_run.batches()

    def on_predict_start(self) -> None:
        self.rank_run.start()

    def predict_step(self, batch: dict, batch_idx: int):
        return self.rank_run.step(batch)

    def on_predict_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.rank_run.after_step(outputs, batch)

    def on_predict_end(self) -> None:
        stats = self.rank_run.finish()
        if stats is not None:  # rank 0; callback metrics reach the caller of ddp_spawn too
            self.trainer.callback_metrics["bulk_rank_stats"] = torch.tensor(stats)


class _ReportFailure(pl.Callback):
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if pl_module.rank_run is not None:
            pl_module.rank_run.failed(exception)


def run_distributed(
    model,
    task,
    source: Source,
    output,
    *,
    devices: int,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> dict:
    """``bulk.run_bulk`` on ``devices`` x ``num_nodes`` Lightning processes; the summary's
    ``rank`` is this process's global rank: only rank 0's describes the output."""
    started = time.monotonic()
    with _quiet_lightning():
        trainer = pl.Trainer(
            accelerator=resolve_accelerator(accelerator, model),
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            precision="32-true",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            callbacks=[_ReportFailure()],
        )
        # One run at a time per output: a second would read the first's shards as an
        # interrupted run. Rank 0 holds the lock; the other ranks belong to its run.
        lock = output_lock(output) if trainer.global_rank == 0 else contextlib.nullcontext()
        with lock:
            index = None
            if trainer.global_rank == 0:  # before the other ranks start (or join)
                index = prepare(model, task, source, output, resume, quiet)
            module = BulkInference(model, task, index, source.fasta, output, quiet)
            trainer.predict(module, return_predictions=False)
    seconds = time.monotonic() - started
    stats = trainer.callback_metrics.get("bulk_rank_stats")
    stats = stats.tolist() if stats is not None else None
    return summary(trainer.global_rank, module.index, stats, seconds, output)


class _quiet_lightning:
    """Lightning's info lines and hints about dataloader workers are noise for a CLI run."""

    def __enter__(self):
        self.loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning_fabric")]
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.WARNING)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
        warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*litlogger.*")
        return self

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)
