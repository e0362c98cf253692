"""Sharded, resumable bulk inference over a FASTA file, on one process or many.

Rank 0 reads the FASTA file once (``fasta_index.py``: validation, duplicate ids, sha256, the
byte span of every record) and saves the index into the shard folder, where the other ranks and
a resumed run load it. Every rank then makes the same plan: records are taken in windows,
sorted by length inside a window and batched under the token budget
(``common.length_sorted_batches``); each batch goes to the rank with the least work so far. A
batch's members do not depend on the number of ranks or on what a previous attempt finished, so
its numbers do not either: a resumed or differently sharded run computes the same values. A
DataLoader worker reads each rank's windows and tokenises its batches, so the main process
only runs the model and writes results.

Each rank appends its results to its own shard (``shards.py``); rank 0 waits for the others
(``peers.py``: a rank that fails stops them all with its error) and merges the shards into
the requested output in input order, atomically, and removes them. What is computed and how it
is written is a ``Task`` (embed.py, score.py). One process runs its rank here, in a plain loop
(``run_bulk``); several run theirs through Lightning's predict loop (``distributed.py``), which
starts them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset

from proteinperf.checksum import file_sha256
from proteinperf.errors import STOP_SIGNALS, InputError, check_stopped
from proteinperf.outputs import output_lock

from .common import assign_batches, model_hash, plan_tokens, progress, resolve_accelerator
from .fasta_index import INDEX_FILE, FastaIndex, IndexReader, Source
from .peers import Peers, new_attempt, read_attempt
from .shards import JournalTail, PartWriter, ShardStore, shard_dir


def _libc_trim():
    """glibc's malloc_trim, or None. Batches of ever-changing shapes fragment glibc's heap so
    that freed memory is never handed back: measured here, a CPU run's RSS grew from 0.3 to
    0.9 GB in 300 batches (3 GB over the 20,000-protein corpus); trimming keeps it flat."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------- input


def prepare_index(store: ShardStore, source: Source, resume: bool) -> tuple[FastaIndex, bool]:
    """Rank 0: (the index of the FASTA file, whether it was reused): loaded from the shard
    folder when --resume finds one for the same bytes and options, else built (one pass)."""
    previous = store.previous(resume)  # refuses leftovers without --resume, before any work
    path = store.folder / INDEX_FILE
    if previous is not None:
        if previous.get("fasta_sha256") != file_sha256(source.fasta):
            # refused now, not after indexing a file the shards do not belong to
            raise InputError(
                f"--resume: the shards in {store.folder} were made with other settings "
                "(fasta_sha256 differ); rerun with the same ones or delete that folder"
            )
        if path.exists():
            index = FastaIndex.load(path, source.fasta)
            wanted = FastaIndex(source.fasta, source.truncate, source.invalid, source.on_duplicate)
            if index.sha256 == previous["fasta_sha256"] and index.same_options(wanted):
                return index, True
    return source.build(), False


def rank_batches(index: FastaIndex, task, rank: int = 0, world: int = 1, done=frozenset()):
    """The batches of ``rank`` out of ``world``: {"index", "ids", "lengths", "sequences"} and
    what the task prepares from the sequences (token tensors); records in ``done`` skipped."""
    reader = IndexReader(index)
    lengths = index.lengths.tolist()
    plans = assign_batches(lengths, plan_tokens(task), task.cost, world, done)
    try:
        for start, end, plan in plans:
            mine = [indices for r, indices in plan if r == rank]
            if not mine:
                continue
            window = reader.window(start, end)
            for indices in mine:
                sequences = [window[i - start] for i in indices]
                yield {
                    "index": indices,
                    "ids": [index.ids[i] for i in indices],
                    "lengths": [lengths[i] for i in indices],
                    "sequences": sequences,
                    **task.prepare(sequences),
                }
    finally:
        reader.close()


class BatchStream(IterableDataset):
    """``rank_batches`` as a dataset: made in a DataLoader worker, off the main thread."""

    def __init__(self, index: FastaIndex, task, rank: int, world: int, done):
        self.index, self.task = index, task
        self.rank, self.world, self.done = rank, world, done

    def __iter__(self):
        return rank_batches(self.index, self.task, self.rank, self.world, self.done)


def announce(task, index: FastaIndex, quiet: bool) -> None:
    """The task's line before the work (e.g. what a scoring strategy will cost), on stderr."""
    line = getattr(task, "announce", None)
    if line is not None and not quiet:
        print(line(index.lengths.tolist()), file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- one rank


class RankRun:
    """One rank's part of a run: its batches, its shard, and on rank 0 the merge.

    Rank 0 arrives with the index (``prepare_index``) and the shard folder made; the other
    ranks load both from that folder (``setup``, after the barrier that waits for rank 0).
    """

    def __init__(self, model, task, index: FastaIndex | None, fasta: str, output,
                 rank: int = 0, world: int = 1, quiet: bool = True):  # fmt: skip
        self.model, self.task, self.index = model, task, index
        self.fasta, self.output = fasta, Path(output)
        self.rank, self.world, self.quiet = rank, world, quiet
        self.store = ShardStore(shard_dir(output))
        self.peers: Peers | None = None
        self.part: PartWriter | None = None

    def setup(self) -> None:
        if self.index is None:
            self.index = FastaIndex.load(self.store.folder / INDEX_FILE, self.fasta)
        self.attempt = read_attempt(self.store.folder)
        self.done = self.store.done()
        for index, entry in self.done.items():
            if index >= len(self.index.ids) or entry.id != self.index.ids[index]:
                raise InputError(f"{self.store.folder}: shards do not match the input; delete it")

    def batches(self) -> DataLoader:
        stream = BatchStream(self.index, self.task, self.rank, self.world, set(self.done))
        return DataLoader(
            stream, batch_size=None, num_workers=1, prefetch_factor=4, worker_init_fn=_by_name
        )

    def start(self) -> None:
        self.part = PartWriter(self.store.folder, self.rank)
        self.peers = Peers(self.store.folder, self.attempt, self.rank, self.world)
        self.peers.start()
        self.batches_done, self.residues, self.busy = 0, 0, 0.0
        self.started = time.monotonic()
        self.trim, self.last_trim = _libc_trim(), 0.0
        self.bar = None
        if self.rank == 0:
            done = sum(entry.length for entry in self.done.values())
            self.tail = JournalTail(self.store)
            self.tail.skip_existing()
            self.bar = progress(self.quiet, self.task.name, total=self.index.residues)
            self.bar.update(done)
            self.last_poll = 0.0

    def step(self, batch: dict) -> list:
        """(index, id, length, payload, meta) of every record of ``batch``."""
        check_stopped()
        self.peers.check()
        results = self.task.compute(self.model, batch)
        return list(zip(batch["index"], batch["ids"], batch["lengths"], *zip(*results)))

    def after_step(self, outputs: list, batch: dict) -> None:
        self.part.add_batch(outputs)
        self.batches_done += 1
        self.residues += sum(batch["lengths"])
        self.busy = time.monotonic() - self.started
        if self.trim is not None and time.monotonic() - self.last_trim > 1.0:
            self.trim(0)
            self.last_trim = time.monotonic()
        if self.bar is not None and time.monotonic() - self.last_poll > 0.5:
            self._advance_bar()

    def _advance_bar(self) -> None:
        self.bar.update(self.tail.new_residues())
        self.last_poll = time.monotonic()

    def finish(self) -> list[list[float]] | None:
        """Rank 0: merges, and returns every rank's [residues, batches, busy seconds]."""
        self.part.close()
        self.peers.finish([self.residues, self.batches_done, self.busy])
        if self.rank != 0:
            self.peers.stop()
            return None
        stats = self.peers.wait_all()
        self.peers.stop()
        self._advance_bar()
        self.bar.close()
        done = self.store.done()
        missing = len(self.index.ids) - len(done)
        if missing:
            raise RuntimeError(f"{self.store.folder}: {missing} records missing after the run")
        self.task.merge(self.store, self.index, done, self.output)
        self.store.remove()
        return stats

    def failed(self, error: BaseException) -> None:
        """This rank raised: keep what it finished and tell the other ranks to stop."""
        if self.part is not None:
            with contextlib.suppress(Exception):
                self.part.close()
        if self.peers is not None:
            self.peers.fail(error)

    def run(self) -> list[list[float]] | None:
        """The whole rank in this process (one rank: no Lightning)."""
        try:
            self.start()
            with _stop_signals_held():  # the worker is forked here
                batches = iter(self.batches())
            with torch.inference_mode():
                for batch in batches:
                    self.after_step(self.step(batch), batch)
            return self.finish()
        except BaseException as error:
            self.failed(error)
            raise


def _by_name(worker_id: int) -> None:
    """Batches leave the worker through named shared memory, not passed file descriptors: a
    process stopped by a signal while it receives a descriptor leaves the worker's descriptor
    server to print a ConnectionResetError traceback after the one-line stop message."""
    torch.multiprocessing.set_sharing_strategy("file_system")
    if hasattr(signal, "pthread_sigmask"):  # the fork inherited _stop_signals_held's mask
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def _stop_signals_held():
    """SIGINT/SIGTERM wait until the block ends. Forking the worker runs at-fork hooks (logging
    releases its locks there): a stop raised inside one is only printed, and leaves logging's
    lock held, so the next log call hangs. Held, the signal is handled right after the fork."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ----------------------------------------------------------------------------- runs


def run_bulk(
    model, task, source: Source, output, *, accelerator=None, resume=False, quiet=False
) -> dict:
    """Run ``task`` over the records of ``source`` on this one process, with shards beside
    ``output`` (``resume`` continues an interrupted run from them); returns a summary."""
    started = time.monotonic()
    was_training = model.training
    model.to(torch.device(resolve_accelerator(accelerator, model))).eval()
    try:
        with output_lock(output):  # one run at a time per output
            index = prepare(model, task, source, output, resume, quiet)
            rank = RankRun(model, task, index, source.fasta, output, quiet=quiet)
            rank.setup()
            stats = rank.run()
    finally:
        model.train(was_training)
    return summary(0, index, stats, time.monotonic() - started, output)


def prepare(model, task, source: Source, output, resume: bool, quiet: bool) -> FastaIndex:
    """Rank 0: index the input, check the shard folder against this run, make or reuse it."""
    store = ShardStore(shard_dir(output))
    index, reused = prepare_index(store, source, resume)
    settings = {
        "task": task.name,
        "fasta": str(Path(source.fasta).resolve()),
        "fasta_size": os.path.getsize(source.fasta),
        "fasta_sha256": index.sha256,
        "truncate": source.truncate,
        "invalid": source.invalid,
        "records": len(index.ids),
        "model": model_hash(model),
        **task.settings(),
    }
    if getattr(task, "model_name", None) == "":  # unnamed: its digest, hashed once (rank 0 merges)
        task.model_name = f"sha256:{settings['model']}"
    store.check(settings, resume)
    store.create(settings)
    if not reused:
        index.save(store.folder / INDEX_FILE)
    new_attempt(store.folder)
    announce(task, index, quiet)
    return index


def summary(rank: int, index: FastaIndex | None, stats, seconds: float, output) -> dict:
    """The summary of a run from rank 0's ``RankRun.finish`` stats (None on other ranks)."""
    per_rank = [int(residues) for residues, _, _ in stats] if stats else []
    mean = sum(per_rank) / len(per_rank) if per_rank else 0.0
    return {
        "rank": rank,
        "records": len(index.ids) if index is not None else 0,
        "residues": index.residues if index is not None else 0,
        "seconds": seconds,
        "residues_per_s": sum(per_rank) / seconds if seconds > 0 else 0.0,
        "rank_residues": per_rank,
        "balance": max(per_rank) / mean if mean else 1.0,
        "renamed": index.renamed if index is not None else 0,
        "skipped_duplicates": index.skipped if index is not None else 0,
        "output": str(output),
    }
