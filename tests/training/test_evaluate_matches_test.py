"""`proteinperf evaluate` on a corpus's test split gives the training's test-step numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from proteinperf.checkpoint import checkpoint_metadata, load_model
from proteinperf.inference.evaluate import evaluate, unigram_log_probs_from
from proteinperf.train import train


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_evaluate_equals_test_step(make_cfg, tmp_path, objective):
    result = train(
        make_cfg(
            "experiment=tiny_cpu",
            f"model.objective={objective}",
            f"model.causal={objective == 'clm'}",
            "trainer.max_steps=6",
            "trainer.val_check_interval=6",
            "trainer.limit_val_batches=2",
            "data.max_length=96",
            "test=true",
        )
    )
    test = result["test"]
    ckpt = result["checkpoint"]
    corpus = result["trainer"].datamodule.corpus_path
    model, _ = load_model(ckpt)
    stored = checkpoint_metadata(ckpt)["unigram_log_probs"]
    assert torch.allclose(torch.tensor(stored), unigram_log_probs_from(corpus, objective == "clm"))
    got = evaluate(
        model,
        corpus,
        split="test",
        max_length=96,
        seed=0,
        toks_per_batch=500,  # other batches than the test loader's: the totals do not care
        unigram_log_probs=torch.tensor(stored),
    )
    assert got["objective"] == objective
    assert got["loss"] == pytest.approx(test["test/loss"], abs=1e-4)
    # Other batches pad to other lengths, which moves causal FAVOR+ logits by an ulp (chunked
    # sums): after 6 steps some logits are near-ties, so one prediction may flip, no more.
    assert got["accuracy"] == pytest.approx(test["test/acc"], abs=1.5 / got["targets"])
    assert got["unigram"]["loss"] == pytest.approx(test["test/unigram_loss"], abs=1e-4)
    assert got["unigram"]["accuracy"] == pytest.approx(test["test/unigram_acc"], abs=1e-5)

    # The command line: table on stdout, JSON with --out, baseline from the checkpoint.
    out = tmp_path / "metrics.json"
    cmd = [
        sys.executable,
        "-m",
        "proteinperf.cli",
        "evaluate",
        str(ckpt),
        str(corpus),
        "--split",
        "test",
        "--max-length",
        "96",
        "--out",
        str(out),
        "--quiet",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "unigram" in done.stdout and "vs unigram" in done.stdout
    saved = json.loads(out.read_text())
    assert saved["loss"] == pytest.approx(got["loss"], abs=1e-5)
    assert saved["unigram_source"] == "checkpoint"
    assert Path(saved["checkpoint"]) == Path(ckpt)
