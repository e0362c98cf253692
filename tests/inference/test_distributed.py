"""Sharded, resumable bulk inference (issue 15): plans, duplicates, resume, 2 CPU processes."""

import csv
import filecmp
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from bulk_faults import SimulatedKill, failing, fault_env
from helpers import cli_env, write_fasta

from proteinperf.checkpoint import load_model
from proteinperf.cli import main
from proteinperf.inference.common import assign_batches
from proteinperf.inference.embed import embed_fasta, embed_sequences
from proteinperf.inference.fasta_index import IndexReader, build_index
from proteinperf.inference.score import score_fasta
from proteinperf.inference.shards import shard_dir

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def proteins(n=14, seed=0):
    g = np.random.default_rng(seed)
    return {f"p{i}": "".join(g.choice(list(AMINO), size=int(g.integers(3, 50)))) for i in range(n)}


def h5_arrays(path):
    with h5py.File(path) as f:
        ids = [i.decode() for i in f["_index/ids"][:]]
        keys = [k.decode() for k in f["_index/keys"][:]]
        arrays = {
            (rid, name): f[f"{key}/{name}"][:]
            for rid, key in zip(ids, keys)
            for name in ("mean_representations/2", "representations/2")
            if name in f[key]
        }
    return ids, arrays


# ----------------------------------------------------------------------------- plan


def test_plan_covers_every_record_once_and_does_not_depend_on_world():
    lengths = [int(n) for n in np.random.default_rng(1).integers(1, 300, size=200)]
    cost = lambda ls: len(ls) * (max(ls) + 2)  # noqa: E731
    batches = {}
    for world in (1, 2, 3):
        plan = [p for _, _, window in assign_batches(lengths, 500, cost, world) for p in window]
        assert sorted(i for _, b in plan for i in b) == list(range(len(lengths)))
        batches[world] = sorted(map(tuple, (b for _, b in plan)))
        loads = [0] * world
        for rank, b in plan:
            loads[rank] += cost([lengths[i] for i in b])
        assert max(loads) / (sum(loads) / world) < 1.1  # balanced
    assert batches[1] == batches[2] == batches[3]  # same numbers whatever the world size
    done = set(batches[1][0]) | set(batches[1][5])
    left = [b for _, _, w in assign_batches(lengths, 500, cost, 2, done) for _, b in w]
    assert sorted(map(tuple, left)) == [b for i, b in enumerate(batches[1]) if i not in (0, 5)]


# ----------------------------------------------------------------------------- duplicates


@pytest.fixture
def dup_fasta(tmp_path):
    path = tmp_path / "dup.fasta"
    path.write_text(">a\nMKT\n>b\nAAA\n>a x\nWWW\n>a_2\nCC\n")
    return str(path)


def sequences(index):
    return IndexReader(index).window(0, len(index.ids))


def test_duplicate_policies(dup_fasta):
    with pytest.raises(ValueError, match=r"dup.fasta:5: duplicate id 'a' \(first at line 1\)"):
        build_index(dup_fasta)
    index = build_index(dup_fasta, on_duplicate="suffix")
    assert index.ids == ["a", "b", "a_2", "a_2_2"] and index.renamed == 2
    assert sequences(index) == ["MKT", "AAA", "WWW", "CC"]
    index = build_index(dup_fasta, on_duplicate="skip")
    assert index.ids == ["a", "b", "a_2"] and index.lengths.tolist() == [3, 3, 2]
    assert sequences(index) == ["MKT", "AAA", "CC"] and index.skipped == 1


def test_duplicate_cli(tmp_path, checkpoints, dup_fasta, capsys):
    out = tmp_path / "s.csv"
    ckpt = str(checkpoints["causal"])
    assert main(["score", ckpt, dup_fasta, str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'a'" in err and ":5:" in err and "line 1" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.fasta"]  # nothing half-written
    assert main(["score", ckpt, dup_fasta, str(out), "--quiet", "--on-duplicate", "skip"]) == 0
    assert list(pd.read_csv(out)["id"]) == ["a", "b", "a_2"]
    h5 = tmp_path / "e.h5"
    assert main(["embed", ckpt, dup_fasta, str(h5), "--on-duplicate", "suffix"]) == 0
    assert "2 renamed" in capsys.readouterr().err
    assert h5_arrays(h5)[0] == ["a", "b", "a_2", "a_2_2"]


# ----------------------------------------------------------------------------- edge cases


def test_empty_fasta(tmp_path, checkpoints, capsys):
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    out = tmp_path / "e.h5"
    assert main(["embed", str(checkpoints["favor_relu"]), str(empty), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "empty" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.fasta"]


def test_record_over_the_budget_gets_a_batch_of_its_own(tmp_path, checkpoints):
    model, _ = load_model(checkpoints["favor_softmax"])
    records = {"short1": "MKT", "long": "MKTAYIAKQRQISFVKSHFSRQ" * 4, "short2": "WWYC"}
    fasta = write_fasta(tmp_path / "in.fasta", records)
    out = tmp_path / "e.h5"
    embed_fasta(model, fasta, out, include=["per-token"], toks_per_batch=20, quiet=True)
    with h5py.File(out) as f:
        assert [i.decode() for i in f["_index/ids"][:]] == list(records)
        for rid, seq in records.items():
            alone = embed_sequences(model, [seq], [2], ["per-token"])[0]["representations"][2]
            np.testing.assert_allclose(f[f"{rid}/representations/2"][:], alone, atol=1e-5)


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("task", ["embed-h5", "embed-pt-dir", "score"])
def test_killed_run_resumes_to_the_same_output(tmp_path, checkpoints, task, bulk_path):
    model, _ = load_model(checkpoints["favor_relu"])
    fasta = write_fasta(tmp_path / "in.fasta", proteins())
    if task == "score":
        run = lambda out, **kw: score_fasta(  # noqa: E731
            model, fasta, out, strategy="wt-marginals", toks_per_batch=60, quiet=True, **kw
        )
        name = "s.csv"
    else:
        fmt = task.split("-", 1)[1]
        run = lambda out, **kw: embed_fasta(  # noqa: E731
            model, fasta, out, fmt=fmt, include=["mean", "per-token"], toks_per_batch=60,
            quiet=True, **kw,
        )  # fmt: skip
        name = "e.h5" if fmt == "h5" else "pt"
    reference = tmp_path / "ref" / name
    run(reference)
    out = tmp_path / "run" / name
    with failing(after_batches=2), pytest.raises(SimulatedKill):
        run(out)
    assert not out.exists() and shard_dir(out).is_dir()
    with pytest.raises(ValueError, match="--resume"):
        run(out)
    with pytest.raises(ValueError, match="toks_per_batch differ"):
        embed_fasta(model, fasta, out, toks_per_batch=61, resume=True, quiet=True)
    summary = run(out, resume=True)
    assert summary["records"] == 14 and sum(summary["rank_residues"]) < summary["residues"]
    assert not shard_dir(out).exists()
    if out.is_dir():
        cmp = filecmp.dircmp(reference, out)
        assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
        assert filecmp.cmpfiles(reference, out, os.listdir(out), shallow=False)[0]
    else:
        assert filecmp.cmp(reference, out, shallow=False)


# ----------------------------------------------------------------------------- 2 processes


@pytest.mark.slow
def test_two_processes_killed_and_resumed_match_one_process_h5(
    tmp_path, tmp_path_factory, checkpoints
):
    """The user's path: `python -m proteinperf.cli embed --devices 2` (Lightning re-runs it
    for rank 1); both ranks are SIGKILLed after a batch, then the run is resumed."""
    ckpt = str(checkpoints["favor_relu"])
    fasta = write_fasta(tmp_path / "in.fasta", proteins(16, seed=2))
    out = tmp_path / "two.h5"
    cmd = [sys.executable, "-m", "proteinperf.cli", "embed", ckpt, fasta, str(out),
           "--include", "mean", "per-token", "--toks-per-batch", "50", "--device", "cpu",
           "--devices", "2", "--strategy", "ddp"]  # fmt: skip
    env = fault_env(tmp_path_factory.mktemp("faults"), cli_env(), after_batches=1, kill=True)
    killed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0, killed.stderr[-2000:]
    assert not out.exists() and len(list(shard_dir(out).glob("part-r000[01]-*.jsonl"))) == 2
    assert (shard_dir(out) / "index.npz").is_file()  # rank 0's, read by rank 1 and --resume
    resumed = subprocess.run(
        [*cmd, "--resume"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = resumed.stderr.strip().splitlines()[-1]
    assert summary.startswith("embedded 16 records") and "2 ranks" in summary, summary
    assert not shard_dir(out).exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "in.fasta",
        "two.h5",
    ]

    model, _ = load_model(ckpt)
    one = tmp_path / "one.h5"
    embed_fasta(model, fasta, one, include=["mean", "per-token"], toks_per_batch=50, quiet=True)
    ids_one, arrays_one = h5_arrays(one)
    ids_two, arrays_two = h5_arrays(out)
    assert ids_one == ids_two == list(proteins(16, seed=2))
    for key, array in arrays_one.items():
        np.testing.assert_allclose(arrays_two[key], array, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_two_processes_spawn_match_one_process_pt_dir(tmp_path, checkpoints):
    model, _ = load_model(checkpoints["softmax"])
    fasta = write_fasta(tmp_path / "in.fasta", proteins(10, seed=3))
    options = dict(fmt="pt-dir", include=["mean", "bos", "per-token"], toks_per_batch=40)
    one, two = tmp_path / "one", tmp_path / "two"
    embed_fasta(model, fasta, one, quiet=True, **options)
    summary = embed_fasta(
        model, fasta, two, devices=2, strategy="ddp_spawn", accelerator="cpu", quiet=True,
        **options,
    )  # fmt: skip
    assert len(summary["rank_residues"]) == 2 and min(summary["rank_residues"]) > 0
    index = (one / "index.csv").read_text()
    assert (two / "index.csv").read_text() == index
    for row in csv.DictReader(index.splitlines()):
        a = torch.load(one / row["file"], weights_only=True)
        b = torch.load(two / row["file"], weights_only=True)
        assert a["label"] == b["label"] == row["id"]
        for kind in ("representations", "mean_representations", "bos_representations"):
            torch.testing.assert_close(b[kind][2], a[kind][2], atol=1e-5, rtol=0)


def test_resume_refuses_an_input_edited_in_place(tmp_path, checkpoints, bulk_path):
    """Same path, size and mtime, other residues: the shards would be stale embeddings."""
    model, _ = load_model(checkpoints["favor_relu"])
    fasta = Path(write_fasta(tmp_path / "in.fasta", proteins()))
    out = tmp_path / "e.h5"
    run = lambda **kw: embed_fasta(model, fasta, out, toks_per_batch=60, quiet=True, **kw)  # noqa: E731
    with failing(after_batches=2), pytest.raises(SimulatedKill):
        run()
    stat = fasta.stat()
    text = fasta.read_text()
    first = text.splitlines()[1]
    edited = text.replace(first, first[::-1], 1)
    assert edited != text and len(edited) == len(text)
    fasta.write_text(edited)
    os.utime(fasta, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ValueError, match=r"other settings \(fasta_sha256 differ\)"):
        run(resume=True)
    assert not out.exists() and shard_dir(out).is_dir()
