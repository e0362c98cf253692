"""Small inputs run in process, large ones (and --devices, --resume) in bulk: same bytes."""

import filecmp
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_env, write_fasta

from proteinperf.checkpoint import load_model
from proteinperf.inference import bulk, runner
from proteinperf.inference.embed import embed_fasta
from proteinperf.inference.score import score_fasta
from proteinperf.inference.shards import shard_dir

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def proteins(n=30, seed=1):
    g = np.random.default_rng(seed)
    records = {
        f"p{i}": "".join(g.choice(list(AMINO), size=int(g.integers(3, 70)))) for i in range(n)
    }
    records["p/odd id"] = "MKTAYW"  # renamed in h5 keys and pt-dir file names
    return records


def _same(a: Path, b: Path) -> None:
    if a.is_dir():
        names = sorted(os.listdir(a))
        assert names == sorted(os.listdir(b))
        match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
        assert not mismatch and not errors
    else:
        assert filecmp.cmp(a, b, shallow=False)


@pytest.mark.parametrize("fmt", ["h5", "npz", "pt-dir"])
def test_small_and_bulk_paths_write_the_same_bytes(tmp_path, checkpoints, monkeypatch, fmt):
    model, _ = load_model(checkpoints["favor_softmax"])
    fasta = write_fasta(tmp_path / "in.fasta", proteins())
    taken = []
    real = bulk.run_bulk
    monkeypatch.setattr(bulk, "run_bulk", lambda *a, **k: taken.append(1) or real(*a, **k))
    outs = {}
    for path, limit in (("small", runner.SMALL_INPUT_BYTES), ("bulk", -1)):
        monkeypatch.setattr(runner, "SMALL_INPUT_BYTES", limit)
        out = tmp_path / path / ("emb" if fmt == "pt-dir" else f"emb.{fmt}")
        summary = embed_fasta(model, fasta, out, fmt=fmt, layers=[0, -1], quiet=True,
                              include=["mean", "per-token", "bos"], toks_per_batch=150)  # fmt: skip
        assert summary["records"] == 31 and summary["rank_residues"] == [summary["residues"]]
        assert not shard_dir(out).exists()
        outs[path] = out
    assert taken == [1]  # the first run stayed in this process
    _same(outs["small"], outs["bulk"])


def test_small_and_bulk_scores_are_the_same(tmp_path, checkpoints, monkeypatch):
    model, _ = load_model(checkpoints["favor_relu"])
    fasta = write_fasta(tmp_path / "in.fasta", proteins(12))
    outs = []
    for limit in (runner.SMALL_INPUT_BYTES, -1):
        monkeypatch.setattr(runner, "SMALL_INPUT_BYTES", limit)
        outs.append(tmp_path / f"s{limit}.csv")
        score_fasta(model, fasta, outs[-1], strategy="wt-marginals", toks_per_batch=100, quiet=True)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert "sha256:" in outs[0].read_text()  # an unnamed model: the digest of its weights


def test_what_counts_as_small(tmp_path):
    text = "".join(f">r{i}\n{'M' * 50}\n" for i in range(100)).encode()
    plain = tmp_path / "in.fasta"
    plain.write_bytes(text)
    packed = tmp_path / "in.fasta.gz"
    packed.write_bytes(gzip.compress(text))
    for path in (plain, packed):  # a compressed file counts by its decompressed size
        assert runner.small_input(path, limit=len(text))
        assert not runner.small_input(path, limit=len(text) - 1)
    assert len(packed.read_bytes()) < len(text) // 10
    broken = tmp_path / "broken.fasta.gz"
    broken.write_bytes(gzip.compress(text)[:40])
    assert runner.small_input(broken, limit=len(text))  # the index reports it


@pytest.mark.parametrize(
    "options, leftover, path",
    [
        ({}, False, "local"),
        ({"devices": 2}, False, "ddp"),
        ({"num_nodes": 2, "resume": True}, False, "ddp"),
        ({"resume": True}, False, "bulk"),
        ({}, True, "bulk"),  # an interrupted run's shards: refused (or resumed) by the bulk path
    ],
)
def test_the_bulk_path_is_for_several_devices_resume_and_leftovers(
    tmp_path, monkeypatch, options, leftover, path
):
    from proteinperf.inference import distributed

    calls = []
    monkeypatch.setattr(distributed, "run_distributed", lambda *a, **k: calls.append("ddp"))
    monkeypatch.setattr(bulk, "run_bulk", lambda *a, **k: calls.append("bulk"))
    monkeypatch.setattr(runner, "run_local", lambda *a, **k: calls.append("local"))
    fasta = write_fasta(tmp_path / "in.fasta", {"a": "MKT"})
    out = tmp_path / "e.h5"
    if leftover:
        shard_dir(out).mkdir()
    runner.run_task(None, None, runner.Source(fasta), out, **options)
    assert calls == [path]


_PROBE = """
import json, sys
from proteinperf.cli import main
code = main(sys.argv[1:])
print(json.dumps([code, sorted({m.split(".")[0] for m in sys.modules})]))
"""


@pytest.mark.parametrize("resume", [False, True])
def test_one_process_imports_no_lightning(tmp_path, checkpoints, resume):
    """A small input in process, and the bulk path on one process (--resume), import neither
    Lightning nor anything else heavy."""
    fasta = write_fasta(tmp_path / "in.fasta", proteins(4))
    out = tmp_path / "e.h5"
    argv = ["embed", str(checkpoints["favor_relu"]), fasta, str(out), "--quiet", "--device", "cpu"]
    argv += ["--resume"] if resume else []
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True,
                          env=cli_env(), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    code, imported = json.loads(done.stdout.splitlines()[-1])
    assert code == 0 and out.is_file()
    heavy = {"pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics", "hydra",
             "omegaconf", "pandas", "wandb", "scipy", "transformers"}  # fmt: skip
    assert heavy.isdisjoint(imported), sorted(heavy & set(imported))
