"""Where an inference task runs: in this process for a small input, else the bulk path.

A small input (a FASTA file of at most ``SMALL_INPUT_BYTES`` once decompressed: a few hundred
proteins, seconds of work) on one device and without --resume runs here, in a plain loop: the
same index of the file, the same batches (``common.assign_batches`` for one rank), the same
Task computing them and writing the output, without shards, a journal or a digest of the
weights. A larger input or --resume takes the bulk path (``bulk.run_bulk``: shards beside the
output, resumable), and several devices take it through Lightning (``distributed.py``). All
write the same bytes.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from proteinperf.data.fasta import DECOMPRESSION_ERRORS, compression_of, open_binary
from proteinperf.errors import check_stopped

from . import bulk
from .bulk import announce, rank_batches, summary
from .common import model_hash, progress, resolve_accelerator
from .fasta_index import Source
from .shards import Entry, shard_dir

SMALL_INPUT_BYTES = 256 << 10


def small_input(fasta, limit: int | None = None) -> bool:
    """Whether ``fasta`` holds at most ``limit`` (default ``SMALL_INPUT_BYTES``) bytes of FASTA
    text: the file's size, or for a compressed file the first ``limit`` + 1 decompressed bytes.
    A file that cannot be read counts as small: the index raises its error either way."""
    limit = SMALL_INPUT_BYTES if limit is None else limit
    path = Path(fasta)
    try:
        if compression_of(path) is None:
            return path.stat().st_size <= limit
        with open_binary(path) as stream:
            return len(stream.read(limit + 1)) <= limit
    except (OSError, *DECOMPRESSION_ERRORS):
        return True


def run_task(
    model,
    task,
    source: Source,
    output,
    *,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> dict:
    """Run ``task`` over the records of ``source`` into ``output``; returns a summary
    (``bulk.summary``; ``rank`` is this process's: only rank 0's describes the output)."""
    if devices * num_nodes > 1:
        from .distributed import run_distributed  # (imports Lightning)

        return run_distributed(model, task, source, output, devices=devices,
                               num_nodes=num_nodes, strategy=strategy, accelerator=accelerator,
                               resume=resume, quiet=quiet)  # fmt: skip
    if resume or shard_dir(output).exists() or not small_input(source.fasta):
        return bulk.run_bulk(model, task, source, output, accelerator=accelerator, resume=resume,
                        quiet=quiet)  # fmt: skip
    return run_local(model, task, source, output, accelerator=accelerator, quiet=quiet)


class MemoryStore:
    """The finished records of an in-process run, read by ``Task.merge`` like a shard store."""

    kept_note = ""  # a merge that finds no room loses them: nothing to resume

    def __init__(self):
        self.done: dict[int, Entry] = {}
        self.payloads: dict[int, bytes] = {}

    def add(self, entry: Entry, payload: bytes) -> None:
        self.done[entry.index] = entry
        self.payloads[entry.index] = payload

    def read(self, entry: Entry) -> bytes:
        return self.payloads[entry.index]

    def close(self) -> None:
        self.payloads.clear()


def run_local(model, task, source: Source, output, *, accelerator=None, quiet=False) -> dict:
    """``task`` over every record of ``source`` in this process, on one device."""
    started = time.monotonic()
    index = source.build()
    announce(task, index, quiet)
    if getattr(task, "model_name", None) == "":
        task.model_name = f"sha256:{model_hash(model)}"
    was_training = model.training
    model.to(torch.device(resolve_accelerator(accelerator, model))).eval()
    store = MemoryStore()
    bar = progress(quiet, task.name, total=index.residues)
    batches = rank_batches(index, task)
    try:
        with torch.inference_mode():
            for batch in batches:
                check_stopped()
                rows = zip(batch["index"], batch["lengths"], task.compute(model, batch))
                for i, length, (payload, meta) in rows:
                    store.add(Entry(i, index.ids[i], "", 0, len(payload), length, meta), payload)
                bar.update(sum(batch["lengths"]))
    finally:
        batches.close()  # the FASTA's reader, now (not when the generator is collected)
        bar.close()
        model.train(was_training)
    task.merge(store, index, store.done, Path(output))
    seconds = time.monotonic() - started
    return summary(0, index, [[index.residues, 0, seconds]], seconds, output)


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
