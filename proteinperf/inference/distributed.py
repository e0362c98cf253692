"""Sharded, resumable, data-parallel inference over a FASTA file through Lightning's predict loop.

Every process (rank) reads the FASTA file itself and makes the same plan: records are read in
windows, sorted by length inside a window and batched under the token budget
(``common.length_sorted_batches``); each batch goes to the rank with the least work so far. A
batch's members do not depend on the number of ranks or on what a previous attempt finished, so
its numbers do not either: a resumed or differently sharded run computes the same values.

Each rank appends its results to its own shard (``shards.py``); rank 0 merges the shards into
the requested output in input order, atomically, and removes them. What is computed and how it
is written is a ``Task`` (embed.py, score.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from proteinperf.checksum import file_sha256
from proteinperf.constants import DUPLICATE_POLICIES
from proteinperf.data.fasta import DataError
from proteinperf.errors import ConfigError, InputError
from proteinperf.outputs import output_lock

from .common import WINDOW_RECORDS, WINDOW_RESIDUES, length_sorted_batches, progress, read_records
from .shards import JournalTail, PartWriter, ShardStore, shard_dir

# Test hook: a rank dies (SIGKILL) after writing this many batches, or before merging if it has
# fewer; "K:raise" raises SimulatedKill instead (for runs inside the test process).
KILL_AFTER_ENV = "PROTEINPERF_TEST_KILL_AFTER_BATCHES"


class SimulatedKill(RuntimeError):
    pass


def _libc_trim():
    """glibc's malloc_trim, or None. Batches of ever-changing shapes fragment glibc's heap so
    that freed memory is never handed back: measured here, a CPU run's RSS grew from 0.3 to
    0.9 GB in 300 batches (3 GB over the 20,000-protein corpus); trimming keeps it flat."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------- input scan


@dataclass
class Scan:
    """The kept records of a FASTA file, in input order, as every rank sees them."""

    fasta: str
    truncate: int | None
    invalid: str
    ids: list[str] = field(default_factory=list)  # final ids (after --on-duplicate)
    lengths: list[int] = field(default_factory=list)  # residues, after --truncate
    dropped: set[int] = field(default_factory=set)  # positions in read_records' output
    renamed: int = 0

    @property
    def residues(self) -> int:
        return sum(self.lengths)

    def records(self) -> Iterator[tuple[int, str, str]]:
        """(index, final id, sequence) of every kept record, reading the file again."""
        index = 0
        for position, record in enumerate(read_records(self.fasta, self.truncate, self.invalid)):
            if position in self.dropped:
                continue
            yield index, self.ids[index], record.sequence
            index += 1


def scan_fasta(fasta, truncate=None, invalid="error", on_duplicate="error", check=None) -> Scan:
    """Read ``fasta`` once: validate every record (``check(record)``), resolve duplicate ids.

    on_duplicate: 'error' names the id and both header lines, 'suffix' renames the later
    occurrence to ``<id>_2`` (``_3``, ... if taken), 'skip' keeps only the first.
    """
    if on_duplicate not in DUPLICATE_POLICIES:
        raise ConfigError(f"on_duplicate must be one of {DUPLICATE_POLICIES}, got {on_duplicate!r}")
    scan = Scan(str(fasta), truncate, invalid)
    first_line: dict[str, int] = {}
    for position, record in enumerate(read_records(fasta, truncate, invalid)):
        if check is not None:
            check(record)
        record_id = record.id
        if record_id in first_line:
            if on_duplicate == "error":
                raise DataError(
                    f"{fasta}:{record.line}: duplicate id '{record_id}' (first at line "
                    f"{first_line[record_id]}); use --on-duplicate suffix or skip"
                )
            if on_duplicate == "skip":
                scan.dropped.add(position)
                continue
            n = 2
            while f"{record_id}_{n}" in first_line:
                n += 1
            record_id = f"{record_id}_{n}"
            scan.renamed += 1
        first_line[record_id] = record.line
        scan.ids.append(record_id)
        scan.lengths.append(len(record.sequence))
    return scan


# ----------------------------------------------------------------------------- plan


def window_bounds(lengths: Sequence[int]) -> Iterator[tuple[int, int]]:
    """[start, end) of the windows ``common.windows`` makes of records with these lengths."""
    start, residues = 0, 0
    for i, n in enumerate(lengths):
        residues += n
        if residues >= WINDOW_RESIDUES or i + 1 - start >= WINDOW_RECORDS:
            yield start, i + 1
            start, residues = i + 1, 0
    if start < len(lengths):
        yield start, len(lengths)


def assign_batches(lengths, toks_per_batch, cost, world, done=frozenset()):
    """(window start, end, [(rank, [record indices])]) per window; finished batches left out.

    Greedy: each batch (longest first) goes to the rank with the least ``cost`` so far.
    """
    loads = [0] * world
    for start, end in window_bounds(lengths):
        window = lengths[start:end]
        plan = []
        for batch in length_sorted_batches(window, toks_per_batch):
            indices = [start + i for i in batch]
            if all(i in done for i in indices):
                continue
            rank = min(range(world), key=loads.__getitem__)
            loads[rank] += cost([window[i] for i in batch])
            plan.append((rank, indices))
        yield start, end, plan


class BatchStream(IterableDataset):
    """This rank's batches: {"index": [...], "ids": [...], "sequences": [...]}."""

    def __init__(self, scan: Scan, toks_per_batch: int, cost, rank: int, world: int, done):
        self.scan, self.toks_per_batch, self.cost = scan, toks_per_batch, cost
        self.rank, self.world, self.done = rank, world, done

    def __iter__(self):
        records = self.scan.records()
        plans = assign_batches(
            self.scan.lengths, self.toks_per_batch, self.cost, self.world, self.done
        )
        for start, end, plan in plans:
            # read the window whether or not this rank has work in it: the file is sequential
            window = [next(records)[2] for _ in range(start, end)]
            for rank, indices in plan:
                if rank == self.rank:
                    yield {
                        "index": indices,
                        "ids": [self.scan.ids[i] for i in indices],
                        "sequences": [window[i - start] for i in indices],
                    }


# ----------------------------------------------------------------------------- Lightning


def model_hash(model: torch.nn.Module) -> str:
    """Digest of the weights and buffers (random features included): resume needs the same."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class BulkInference(pl.LightningModule):
    """Runs a Task over a Scan on every rank; rank 0 merges the shards into the output."""

    def __init__(self, model, task, scan: Scan, output, settings: dict, resume: bool):
        super().__init__()
        self.model = model
        self.task, self.scan, self.output = task, scan, Path(output)
        self.settings, self.resume = settings, resume
        self.store = ShardStore(shard_dir(output))
        self.quiet = True

    def setup(self, stage: str) -> None:
        self.store.check(self.settings, self.resume)  # every rank, before anything is written
        self.trainer.strategy.barrier()
        if self.global_rank == 0:
            self.store.create(self.settings)
        self.trainer.strategy.barrier()
        self.done = self.store.done()
        for index, entry in self.done.items():
            if index >= len(self.scan.ids) or entry.id != self.scan.ids[index]:
                raise InputError(f"{self.store.folder}: shards do not match the input; delete it")

    def predict_dataloader(self):
        stream = BatchStream(
            self.scan,
            getattr(self.task, "plan_tokens", self.task.toks_per_batch),
            self.task.cost,
            self.global_rank,
            self.trainer.world_size,
            set(self.done),
        )
        return DataLoader(stream, batch_size=None)

    def on_predict_start(self) -> None:
        self.part = PartWriter(self.store.folder, self.global_rank)
        self.batches, self.residues, self.busy = 0, 0, 0.0
        self.started = time.monotonic()
        self.kill_after = os.environ.get(KILL_AFTER_ENV)
        self.trim, self.last_trim = _libc_trim(), 0.0
        self.bar = None
        if self.global_rank == 0:
            done = sum(entry.length for entry in self.done.values())
            self.tail = JournalTail(self.store)
            self.tail.skip_existing()
            self.bar = progress(self.quiet, self.task.name, total=self.scan.residues)
            self.bar.update(done)
            self.last_poll = 0.0

    def predict_step(self, batch: dict, batch_idx: int):
        results = self.task.compute(self.model, batch["sequences"])
        lengths = [len(s) for s in batch["sequences"]]
        return list(zip(batch["index"], batch["ids"], lengths, *zip(*results)))

    def on_predict_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.part.add_batch(outputs)
        self.batches += 1
        self.residues += sum(len(s) for s in batch["sequences"])
        self.busy = time.monotonic() - self.started
        if self.trim is not None and time.monotonic() - self.last_trim > 1.0:
            self.trim(0)
            self.last_trim = time.monotonic()
        if self.bar is not None and time.monotonic() - self.last_poll > 0.5:
            self._advance_bar()
        if self.kill_after and self.batches >= int(self.kill_after.split(":")[0]):
            self._die()

    def _advance_bar(self) -> None:
        self.bar.update(self.tail.new_residues())
        self.last_poll = time.monotonic()

    def _die(self) -> None:
        self.part.close()
        if self.kill_after.endswith(":raise"):
            raise SimulatedKill(f"{KILL_AFTER_ENV}={self.kill_after}")
        os.kill(os.getpid(), signal.SIGKILL)

    def on_predict_end(self) -> None:
        if self.kill_after:
            self._die()
        self.part.close()
        # (world, 3): residues, batches, busy seconds of every rank
        stats = torch.zeros(self.trainer.world_size, 3, dtype=torch.float64, device=self.device)
        stats[self.global_rank] = torch.tensor([self.residues, self.batches, self.busy])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)  # also the barrier before rank 0 merges
        stats = stats.cpu()
        if self.global_rank != 0:
            return
        self._advance_bar()
        self.bar.close()
        done = self.store.done()
        missing = len(self.scan.ids) - len(done)
        if missing:
            raise RuntimeError(f"{self.store.folder}: {missing} records missing after the run")
        self.task.merge(self.store, self.scan, done, self.output)
        self.store.remove()
        self.trainer.callback_metrics["bulk_rank_residues"] = stats[:, 0].clone()
        self.trainer.callback_metrics["bulk_rank_seconds"] = stats[:, 2].clone()


def resolve_accelerator(accelerator: str | None, model) -> str:
    if accelerator in (None, "auto"):
        return next(model.parameters()).device.type
    return accelerator


def run_bulk(
    model,
    task,
    scan: Scan,
    output,
    *,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> dict:
    """Run ``task`` over ``scan`` on ``devices`` x ``num_nodes`` processes; returns a summary.

    The summary's ``rank`` is this process's global rank: only rank 0's describes the output.
    """
    settings = {
        "task": task.name,
        "fasta": str(Path(scan.fasta).resolve()),
        "fasta_size": os.path.getsize(scan.fasta),
        "fasta_sha256": file_sha256(scan.fasta),
        "truncate": scan.truncate,
        "invalid": scan.invalid,
        "records": len(scan.ids),
        "model": model_hash(model),
        **task.settings(),
    }
    module = BulkInference(model, task, scan, output, settings, resume)
    module.quiet = quiet
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
        )
        # One run at a time per output: a second would read the first's shards as an
        # interrupted run. Rank 0 holds the lock; the other ranks belong to its run.
        lock = output_lock(output) if trainer.global_rank == 0 else contextlib.nullcontext()
        with lock:
            trainer.predict(module, return_predictions=False)
    seconds = time.monotonic() - started
    ranks = trainer.callback_metrics.get("bulk_rank_residues")
    per_rank = [int(r) for r in ranks.tolist()] if ranks is not None else []
    mean = sum(per_rank) / len(per_rank) if per_rank else 0.0
    return {
        "rank": trainer.global_rank,
        "records": len(scan.ids),
        "residues": scan.residues,
        "seconds": seconds,
        "residues_per_s": sum(per_rank) / seconds if seconds > 0 else 0.0,
        "rank_residues": per_rank,
        "balance": max(per_rank) / mean if mean else 1.0,
        "renamed": scan.renamed,
        "skipped_duplicates": len(scan.dropped),
        "output": str(output),
    }


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


def summary_line(verb: str, summary: dict) -> str:
    """One line: records, residues, seconds, residues/s and the per-rank balance."""
    ranks = summary["rank_residues"]
    balance = ""
    if len(ranks) > 1:
        balance = f"; {len(ranks)} ranks: {'/'.join(map(str, ranks))} residues (max/mean " + (
            f"{summary['balance']:.2f})"
        )
    extra = ""
    if summary["renamed"] or summary["skipped_duplicates"]:
        renamed, skipped = summary["renamed"], summary["skipped_duplicates"]
        extra = f"; duplicate ids: {renamed} renamed, {skipped} skipped"
    return (
        f"{verb} {summary['records']} records ({summary['residues']} residues) in "
        f"{summary['seconds']:.1f} s, {summary['residues_per_s']:.0f} residues/s{balance}{extra}"
        f" -> {summary['output']}"
    )
