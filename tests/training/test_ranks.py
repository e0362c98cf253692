"""Ranks that disagree: uneven evaluation splits, a learning-rate rule for the global batch,
resuming on fewer devices than the run saved random states for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT

from proteinperf.data.sampling import BatchPlanSampler, NoTargets
from proteinperf.optim import OptimConfig, lr_scale


@pytest.mark.parametrize("batches", [1, 2, 4, 5])
def test_evaluation_batches_are_dealt_evenly_with_fillers(batches):
    lengths = np.arange(10 * batches) % 17 + 5
    per_rank = [
        list(BatchPlanSampler(lengths, batch_size=10, shuffle=False, rank=r, num_replicas=3))
        for r in range(3)
    ]
    assert [len(p) for p in per_rank] == [-(-batches // 3)] * 3  # every rank as many steps
    real = [i for p in per_rank for keys in p if not isinstance(keys, NoTargets) for _, i in keys]
    assert sorted(real) == list(range(lengths.size))  # each sample once
    fillers = sum(isinstance(keys, NoTargets) for p in per_rank for keys in p)
    assert fillers == (-batches) % 3


def test_filler_batches_carry_no_targets(tmp_path):
    from proteinperf.data import ProteinDataModule
    from proteinperf.data.sampling import IGNORE

    data = ProteinDataModule(
        str(ROOT / "data" / "sample_proteins.fasta"), max_length=32, cache_dir=str(tmp_path)
    )
    data.setup()
    dataset = data.datasets["valid"]
    keys = [(2**31 - 1, 0), (2**31 - 1, 1)]
    real, filler = dataset[keys], dataset[NoTargets(keys)]
    assert torch.equal(real["tokens"], filler["tokens"])
    assert (real["targets"] != IGNORE).any() and (filler["targets"] == IGNORE).all()


def test_lr_scaling_rules():
    assert lr_scale("none", 8, 16, None) == 1.0
    assert lr_scale("linear", 8, 16, None) == 8.0  # reference: one device's batch
    assert lr_scale("sqrt", 4, 16, None) == 2.0
    assert lr_scale("linear", 4, 16, 32) == 2.0  # global 64 against a reference of 32
    assert lr_scale("sqrt", 1, 4096, 2048) == pytest.approx(2**0.5)
    with pytest.raises(ValueError, match="lr_scaling"):
        OptimConfig.from_dict({"lr_scaling": "quadratic"})


def test_resume_with_fewer_devices_than_saved_random_states(monkeypatch):
    """A checkpoint of a 4-GPU run holds four CUDA generator states; resumed where one GPU is
    visible, that GPU's is restored (torch.cuda.set_rng_state_all failed on the others)."""
    from proteinperf.lightning_module import ProteinLM

    restored = []

    def set_rng_state(state, device=0):
        if device >= 1:
            raise RuntimeError(f"invalid device ordinal {device}")
        restored.append((device, state))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    module = ProteinLM(model={"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32})
    module._pending_rng = {"torch": torch.get_rng_state(), "cuda": states}
    module._restore_rng()
    assert [d for d, _ in restored] == [0] and torch.equal(restored[0][1], states[0])


def _run(args: list[str], tmp_path: Path, env: dict | None = None, timeout=240):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)]),
        **(env or {}),
    }
    env.pop("PROTEINPERF_DDP_CHILD_ARGV", None)
    cmd = [sys.executable, "-m", "proteinperf.train", *args]
    return subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_three_ranks_uneven_evaluation_lr_rule_and_resume_on_one(tmp_path, corpus_cache):
    """3 gloo ranks, evaluation splits of 2 batches (the third rank gets none of its own):
    no deadlock, and the metrics equal a single-process evaluation; lr scaled by 3; resumed
    on one process, the rule gives lr x 1 from there on."""
    from proteinperf.checkpoint import load_model
    from proteinperf.inference.evaluate import evaluate

    common = [
        "experiment=tiny_cpu",
        "data.batch_size=32",  # ~43 validation and test proteins: 2 batches each
        "data.max_length=64",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1.0",
        "trainer.enable_progress_bar=false",
        "optim.lr_scaling=linear",
        "optim.warmup_steps=0",
        "optim.schedule=constant",
        f"paths.log_dir={tmp_path}/logs",
        f"paths.cache_dir={corpus_cache}",
        "+callbacks.lrs._target_=preemption_probe.LearningRates",
        f"+callbacks.lrs.out_dir={tmp_path}/lrs",
        "callbacks.preemption.interval_minutes=null",
    ]
    env = {"PROTEINPERF_RUN_ID": "three"}
    proc = _run(
        [*common, "trainer=ddp_cpu", "trainer.devices=3", "trainer.max_steps=3", "test=true"],
        tmp_path,
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "logs" / "tiny_cpu" / "runs" / "three"
    lrs = {p.stem: json.loads(p.read_text())["lr"] for p in (tmp_path / "lrs").iterdir()}
    assert lrs == {f"rank{r}-3": pytest.approx(3e-3) for r in range(3)}  # 1e-3 x 3 ranks

    test_row = re.search(r"model \(test\)\s+([\d.]+)\s+[\d.]+\s+([\d.]+)", proc.stdout)
    assert test_row, proc.stdout[-2000:]
    model, _ = load_model(run / "checkpoints" / "best.ckpt")
    corpus = next(corpus_cache.rglob("manifest.json")).parent
    single = evaluate(model, corpus, split="test", max_length=64, seed=0)
    assert float(test_row.group(1)) == pytest.approx(single["loss"], abs=2e-4)
    assert float(test_row.group(2)) == pytest.approx(single["accuracy"], abs=2e-4)

    last = run / "checkpoints" / "last.ckpt"
    proc = _run(
        [*common, "trainer.max_steps=4", "test=false", f"ckpt_path={last}"],
        tmp_path,
        {"PROTEINPERF_RUN_ID": "one"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "lrs" / "rank0-1.json").read_text())["lr"] == pytest.approx(1e-3)
    resumed = torch.load(
        tmp_path / "logs" / "tiny_cpu" / "runs" / "one" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    assert resumed["global_step"] == 4
    assert resumed["lr_schedulers"][0]["base_lrs"] == [pytest.approx(1e-3)] * 2


def test_module_learning_rate_follows_the_rule_and_resumes_with_the_new_batch():
    from types import SimpleNamespace

    from proteinperf.lightning_module import ProteinLM

    tiny = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32}
    module = ProteinLM(model=tiny, optim={"lr": 1e-3, "lr_scaling": "linear"})
    trainer = SimpleNamespace(
        world_size=4,
        accumulate_grad_batches=2,
        estimated_stepping_batches=100,
        is_global_zero=True,
        datamodule=SimpleNamespace(hparams={"batch_size": 8}),
    )
    module._trainer = trainer
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(8e-3)  # x 4 devices x 2 batches

    # Saved by that run at lr 8e-3; resumed on one device without accumulation: 1e-3.
    saved = {
        "lr_schedulers": [{"base_lrs": [8e-3, 8e-3], "_last_lr": [4e-3, 4e-3]}],
        "optimizer_states": [{"param_groups": [{"lr": 4e-3, "initial_lr": 8e-3} for _ in "ab"]}],
    }
    trainer.world_size, trainer.accumulate_grad_batches = 1, 1
    module.on_load_checkpoint(saved)
    assert saved["lr_schedulers"][0]["base_lrs"] == [pytest.approx(1e-3)] * 2
    assert saved["lr_schedulers"][0]["_last_lr"] == [pytest.approx(5e-4)] * 2
    group = saved["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == pytest.approx(5e-4) and group["initial_lr"] == pytest.approx(1e-3)
