"""`trainer=ddp_cpu`: two gloo processes, one run folder, one checkpoint, identical features."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT

pytestmark = pytest.mark.slow


def test_ddp_cpu_two_processes(tmp_path, corpus_cache):
    probe = tmp_path / "probe"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)]),
    }
    env.pop("PROTEINPERF_DDP_CHILD_ARGV", None)
    cmd = [
        sys.executable,
        "-m",
        "proteinperf.train",
        "experiment=tiny_cpu",
        "trainer=ddp_cpu",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=2",
        "model.redraw_interval=2",
        "data.max_length=64",
        "test=false",
        "trainer.enable_progress_bar=false",
        f"paths.log_dir={tmp_path}/logs",
        f"paths.cache_dir={corpus_cache}",
        "+callbacks.probe._target_=ddp_probe.FeatureProbe",
        f"+callbacks.probe.out_dir={probe}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs = list((tmp_path / "logs" / "tiny_cpu" / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 did not make a run folder of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "probe"]  # nothing in cwd
    run = runs[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.ckpt",
        "final.ckpt",
        "last.ckpt",
    ]
    assert (run / "config.yaml").is_file() and (run / ".hydra" / "config.yaml").is_file()

    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["sums"] == ranks[1]["sums"]
    sums = ranks[0]["sums"]
    assert sorted(map(int, sums)) == [1, 2, 3, 4, 5, 6]
    assert sums["1"] == sums["2"] != sums["3"] == sums["4"] != sums["5"]  # redrawn every 2

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    features = ckpt["state_dict"]["model.layers.0.self_attn.features"]
    assert float(features.double().sum()) == pytest.approx(sums["6"][0], abs=0, rel=1e-12)
