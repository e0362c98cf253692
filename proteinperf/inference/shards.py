"""Shards of a bulk inference run: what each process has computed, durably, for merge and resume.

A run writes into ``.<output name>.shards/`` beside its output: ``run.json`` (the settings
that fix the numbers: input file, model hash, batching, ...) and, per process and attempt, a
pair ``part-r<rank>-<token>.bin`` (record payloads, appended) and ``.jsonl`` (one line per
finished batch listing its records' index, id, offset, size, length and small results).

A batch's journal line is written only after its data has been flushed and fsync'ed, so a
line that parses names bytes that are durable. To keep the devices busy the data is fsync'ed
every ``SYNC_EVERY_S`` seconds and at close, not per batch: the batches finished since the
last sync are journaled together after it. A process killed in between loses those batches
(at most a few seconds of work) and leaves at most a torn last line, which is ignored: they
are simply computed again on ``--resume``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from proteinperf.atomic import naming_errors, write_text_atomic
from proteinperf.errors import InputError

RUN_FILE = "run.json"
SYNC_EVERY_S = 5.0


def shard_dir(output) -> Path:
    output = Path(output)
    return output.parent / f".{output.name}.shards"


@dataclass(frozen=True)
class Entry:
    """Where one finished record lives."""

    index: int
    id: str
    part: str  # file stem inside the shard folder
    offset: int
    nbytes: int
    length: int
    meta: dict


class ShardStore:
    # what a merge that finds no room tells the user (the run stops; its shards stay)
    kept_note = "; the computed shards are kept: make room, then rerun with --resume"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._readers: dict[str, object] = {}

    # ------------------------------------------------------------------ run lifecycle

    def previous(self, resume: bool) -> dict | None:
        """Read-only: the settings of the interrupted run to continue, or None for a fresh
        start; refuses a folder left by an interrupted run unless ``resume``."""
        if not self.folder.exists():
            return None
        if not resume:
            raise InputError(
                f"{self.folder} holds the shards of an interrupted run: add --resume to "
                "continue it, or delete that folder to start over"
            )
        path = self.folder / RUN_FILE
        if not path.exists():
            raise InputError(f"{self.folder} is not a shard folder ({RUN_FILE} is missing)")
        return json.loads(path.read_text())

    def check(self, settings: dict, resume: bool) -> None:
        """Read-only: may this run start here (the same settings as the shards')?"""
        old = self.previous(resume)
        if old is None:
            return
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise InputError(
                f"--resume: the shards in {self.folder} were made with other settings "
                f"({', '.join(changed)} differ); rerun with the same ones or delete that folder"
            )

    def create(self, settings: dict) -> None:
        """Rank 0, after ``check``."""
        if (self.folder / RUN_FILE).exists():
            return
        write_text_atomic(self.folder / RUN_FILE, json.dumps(settings, indent=1, sort_keys=True))

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------ reading

    def journals(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.jsonl"))

    def done(self) -> dict[int, Entry]:
        """Every record of every complete batch in the folder (index -> Entry)."""
        entries: dict[int, Entry] = {}
        for journal in self.journals():
            size = (journal.with_suffix(".bin")).stat().st_size
            for batch in read_lines(journal):
                records = [Entry(r[0], r[1], journal.stem, *r[2:6]) for r in batch]
                if all(e.offset + e.nbytes <= size for e in records):
                    entries.update((e.index, e) for e in records)
        return entries

    def read(self, entry: Entry) -> bytes:
        f = self._readers.get(entry.part)
        if f is None:
            f = self._readers[entry.part] = open(self.folder / f"{entry.part}.bin", "rb")
        f.seek(entry.offset)
        return f.read(entry.nbytes)

    def close(self) -> None:
        for f in self._readers.values():
            f.close()
        self._readers.clear()


def read_lines(journal: Path, start: int = 0) -> list:
    """Complete batches of a journal from byte ``start``, each a list of
    [index, id, offset, nbytes, length, meta] (a torn last line is left out)."""
    with open(journal, "rb") as f:
        f.seek(start)
        data = f.read()
    batches = []
    for line in data.split(b"\n")[:-1]:
        try:
            batch = json.loads(line)
        except ValueError:
            continue  # a torn line from a killed process
        batches.append(batch)
    return batches


class PartWriter:
    """One process's append-only payload file and journal for this attempt."""

    def __init__(self, folder: Path, rank: int, sync_every_s: float = SYNC_EVERY_S):
        stem = f"part-r{rank:04d}-{uuid.uuid4().hex[:12]}"
        self.data = open(folder / f"{stem}.bin", "ab")
        self.journal = open(folder / f"{stem}.jsonl", "ab")
        self.offset = 0
        self.sync_every_s = sync_every_s
        self.pending: list[bytes] = []  # journal lines of batches written but not yet synced
        self.last_sync = time.monotonic()

    def add_batch(self, records: list[tuple[int, str, int, bytes, dict]]) -> None:
        """records: (index, id, length, payload, meta); journaled once the data is durable."""
        rows = []
        with naming_errors(self.data.name):  # (a full disk: the line names the file)
            for index, record_id, length, payload, meta in records:
                self.data.write(payload)
                rows.append([index, record_id, self.offset, len(payload), length, meta])
                self.offset += len(payload)
        self.pending.append(json.dumps(rows, separators=(",", ":")).encode() + b"\n")
        if time.monotonic() - self.last_sync >= self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        """fsync the data, then journal the batches it holds."""
        with naming_errors(self.data.name):
            self.data.flush()
            os.fsync(self.data.fileno())
        self.last_sync = time.monotonic()
        if not self.pending:
            return
        with naming_errors(self.journal.name):
            self.journal.write(b"".join(self.pending))
            self.journal.flush()
        self.pending.clear()

    def close(self) -> None:
        if not self.data.closed:
            self.sync()
        self.data.close()
        self.journal.close()


class JournalTail:
    """Residues finished by all processes, read from the journals as they grow (progress bar)."""

    def __init__(self, store: ShardStore):
        self.store = store
        self._offsets: dict[Path, int] = {}

    def skip_existing(self) -> None:
        for journal in self.store.journals():
            self._offsets[journal] = journal.stat().st_size

    def new_residues(self) -> int:
        residues = 0
        for journal in self.store.journals():
            start = self._offsets.get(journal, 0)
            with open(journal, "rb") as f:
                f.seek(start)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offsets[journal] = start + end
            for line in data[:end].split(b"\n")[:-1]:
                try:
                    residues += sum(row[4] for row in json.loads(line))
                except ValueError:
                    continue
        return residues
