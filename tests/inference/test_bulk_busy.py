"""Bulk inference that keeps the devices busy: one index, interval fsync, failing ranks."""

import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from bulk_faults import SimulatedKill, failing, fault_env
from helpers import cli_env, write_fasta

from proteinperf.checkpoint import load_model
from proteinperf.inference import fasta_index, peers, shards
from proteinperf.inference.common import read_records
from proteinperf.inference.embed import embed_fasta
from proteinperf.inference.fasta_index import INDEX_FILE, IndexReader, build_index
from proteinperf.inference.peers import PeerFailed, Peers, new_attempt
from proteinperf.inference.shards import PartWriter, ShardStore, read_lines, shard_dir

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def proteins(n=14, seed=0, low=3, high=50):
    g = np.random.default_rng(seed)
    return {
        f"p{i}": "".join(g.choice(list(AMINO), size=int(g.integers(low, high)))) for i in range(n)
    }


# ----------------------------------------------------------------------------- the index

TRICKY = (
    b">a desc\nMKT\n>b\nAAa*\n>a x\nWW W\n\n>a_2\nCC\n>c\nMBJ\n> d\n\nLL\r\n>e\x0bq\nAA\n"
    b">f\tOS=x\nmk\xc3\xa9t\n>g\n**\n>h\nM\nK\n"
)


@pytest.mark.parametrize("block", [fasta_index.BLOCK, 7])
@pytest.mark.parametrize("text", [TRICKY, b"\n\n>a\nMKT\n>b\n\n>c\nAA\n", b">a\r\nMK\r\n>b\nAA"])
def test_index_reads_what_the_record_reader_reads(tmp_path, monkeypatch, block, text):
    """Same ids, lengths, sequences and first error as ``read_records`` + the old duplicate
    rules, for every option, whatever the block size (records cut across blocks)."""
    monkeypatch.setattr(fasta_index, "BLOCK", block)
    path = tmp_path / "in.fasta"
    path.write_bytes(text)
    for invalid in ("error", "unk", "skip-record"):
        for on_duplicate in ("suffix", "skip", "error"):
            for truncate in (None, 2):
                try:
                    expected = _reference(path, truncate, invalid, on_duplicate)
                except ValueError as e:
                    with pytest.raises(ValueError) as got:
                        build_index(path, truncate, invalid, on_duplicate)
                    assert str(got.value) == str(e)
                    continue
                index = build_index(path, truncate, invalid, on_duplicate)
                got = list(zip(index.ids, IndexReader(index).window(0, len(index.ids))))
                assert got == expected, (invalid, on_duplicate, truncate)
                assert index.lengths.tolist() == [len(s) for _, s in expected]


def _reference(path, truncate, invalid, on_duplicate):
    """The records as the reader gives them, duplicates resolved as bulk runs always did."""
    first, out = {}, []
    for record in read_records(path, truncate, invalid):
        record_id = record.id
        if record_id in first:
            if on_duplicate == "error":
                raise ValueError(
                    f"{path}:{record.line}: duplicate id '{record_id}' (first at line "
                    f"{first[record_id]}); use --on-duplicate suffix or skip"
                )
            if on_duplicate == "skip":
                continue
            n = 2
            while f"{record_id}_{n}" in first:
                n += 1
            record_id = f"{record_id}_{n}"
        first[record_id] = record.line
        out.append((record_id, record.sequence))
    return out


def test_index_of_a_compressed_file_and_its_digest(tmp_path):
    import gzip
    import hashlib

    records = proteins(40, seed=4)
    plain = Path(write_fasta(tmp_path / "in.fasta", records))
    packed = tmp_path / "in.fasta.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        index = build_index(path)
        assert index.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        reader = IndexReader(index)
        got = reader.window(0, 10) + reader.window(10, 25) + reader.window(30, 40)
        assert got == [records[i] for i in [*index.ids[:25], *index.ids[30:]]]
        index.save(tmp_path / INDEX_FILE)
        loaded = fasta_index.FastaIndex.load(tmp_path / INDEX_FILE, path)
        assert loaded.ids == index.ids and loaded.sha256 == index.sha256
        assert np.array_equal(loaded.starts, index.starts) and loaded.compressed == index.compressed


def test_resume_reuses_the_index_and_reads_the_file_once(
    tmp_path, checkpoints, monkeypatch, bulk_path
):
    model, _ = load_model(checkpoints["favor_relu"])
    fasta = write_fasta(tmp_path / "in.fasta", proteins())
    run = lambda out, **kw: embed_fasta(  # noqa: E731
        model, fasta, out, include=["mean", "per-token"], toks_per_batch=60, quiet=True, **kw
    )
    reference = tmp_path / "ref.h5"
    run(reference)
    built = []
    build = fasta_index.build_index
    monkeypatch.setattr(
        fasta_index, "build_index", lambda *a, **kw: built.append(a) or build(*a, **kw)
    )
    out = tmp_path / "e.h5"
    with failing(after_batches=2), pytest.raises(SimulatedKill):
        run(out)
    assert len(built) == 1 and (shard_dir(out) / INDEX_FILE).is_file()
    run(out, resume=True)
    assert len(built) == 1  # the resumed run loaded the index rank 0 saved
    assert filecmp.cmp(reference, out, shallow=False)


# ----------------------------------------------------------------------------- durability


def test_journal_names_only_bytes_that_were_fsynced(tmp_path, monkeypatch):
    """Batches are journaled after the fsync that covers them, and not every batch pays one."""
    clock = [0.0]
    monkeypatch.setattr(shards, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # its own
    synced: dict[int, int] = {}  # fd -> size of the file at its last fsync
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        synced[fd] = os.fstat(fd).st_size
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(shards.os, "fsync", fsync)
    writer = PartWriter(tmp_path, rank=0, sync_every_s=5.0)
    journal = Path(writer.journal.name)
    index = 0
    for step in range(12):
        clock[0] = step * 1.5
        batch = [(index + k, f"r{index + k}", 3, bytes([k]) * (10 + k), {}) for k in range(3)]
        index += 3
        writer.add_batch(batch)
        durable = synced.get(writer.data.fileno(), 0)
        for rows in read_lines(journal):
            assert all(offset + size <= durable for _, _, offset, size, *_ in rows)
    assert 0 < len(read_lines(journal)) < 12
    assert len(synced) == 1  # only the data file is fsync'ed
    writer.close()
    assert len(read_lines(journal)) == 12 and len(calls) <= 4
    store = ShardStore(tmp_path)
    assert sorted(store.done()) == list(range(36))


# ----------------------------------------------------------------------------- peers


def test_peers_see_an_error_marker_and_a_silent_rank(tmp_path, monkeypatch):
    """Rank 1 beats from its thread, rank 2 never does: past dead_after_s by rank 0's clock
    (a fake one: a busy machine may stall any thread for longer than the test's seconds),
    rank 2 is dead and rank 1 is not."""
    clock = [0.0]
    monkeypatch.setattr(peers, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    attempt = new_attempt(tmp_path)
    zero = Peers(tmp_path, attempt, 0, 3, dead_after_s=0.3, heartbeat_s=0.02)
    one = Peers(tmp_path, attempt, 1, 3, dead_after_s=0.3, heartbeat_s=0.02)
    zero.start(), one.start()
    zero.check(force=True)  # rank 2 has not beaten yet, but it has time
    beat = tmp_path / f"alive-{attempt}-r0001"
    first = beat.stat().st_mtime_ns
    deadline = time.monotonic() + 60
    while beat.stat().st_mtime_ns == first:  # rank 1's thread beats (every 0.02 s)
        assert time.monotonic() < deadline, "rank 1 never beat"
        time.sleep(0.01)
    clock[0] = 0.4
    with pytest.raises(PeerFailed, match="rank 2 stopped without an error"):
        zero.check(force=True)
    one.fail(MemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore"))
    two = Peers(tmp_path, attempt, 2, 3)
    with pytest.raises(PeerFailed, match=r"^rank 1 failed: MemoryError: CUDA out of memory\."):
        two.check(force=True)
    assert new_attempt(tmp_path) != attempt and not list(tmp_path.glob("error-*"))
    zero.stop(), one.stop()


@pytest.mark.slow
def test_a_failing_rank_stops_both_ranks_with_its_error(tmp_path, tmp_path_factory, checkpoints):
    """Two gloo CPU processes; rank 1 raises after its first batch while rank 0 has a long way
    to go: rank 0 stops at its next batch with rank 1's error, the shards kept for --resume."""
    ckpt = str(checkpoints["favor_relu"])
    fasta = write_fasta(tmp_path / "in.fasta", proteins(3000, seed=5, low=30, high=60))
    out = tmp_path / "e.h5"
    cmd = [sys.executable, "-m", "proteinperf.cli", "embed", ckpt, fasta, str(out),
           "--toks-per-batch", "64", "--device", "cpu", "--devices", "2",
           "--strategy", "ddp"]  # fmt: skip
    env = fault_env(tmp_path_factory.mktemp("faults"), cli_env(), after_batches=1, ranks=[1])
    # ~15 s; the timeout only guards against a hang (rank 0 at the 30-minute gloo timeout)
    failed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert "rank 1 failed: SimulatedKill" in failed.stderr, failed.stderr[-2000:]
    folder = shard_dir(out)
    assert not out.exists() and (folder / INDEX_FILE).is_file()
    journals = list(folder.glob("part-r0000-*.jsonl"))
    assert len(journals) == 1
    done = sum(len(rows) for rows in read_lines(journals[0]))
    assert done < 3000 / 2  # rank 0 stopped long before its half was done
    assert json.loads((folder / "run.json").read_text())["records"] == 3000
