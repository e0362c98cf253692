"""End-to-end Lightning runs on the sample proteins: tiny models, a few steps, all in tmp."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import CONF, TINY_OVERRIDES

from proteinperf.errors import ConfigError
from proteinperf.lightning_module import ProteinLM
from proteinperf.train import train

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def test_every_model_config_is_tested():
    assert {
        "performer_bid",
        "performer_causal",
        "transformer_bid",
        "transformer_causal",
        "tiny",
        "paper_trembl",
    } <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run(make_cfg, model):
    cfg = make_cfg(
        f"model={model}",
        *TINY_OVERRIDES,
        "debug=fast_dev_run",
        "data.max_length=64",
        "data.batch_size=4",
    )
    result = train(cfg)
    trainer, module = result["trainer"], result["module"]
    assert trainer.global_step == 1
    assert module.model.config.attention == cfg.model.attention
    assert module.model.config.causal == (cfg.model.objective == "clm")
    assert torch.isfinite(torch.tensor(float(trainer.callback_metrics["train/loss"])))


@pytest.mark.parametrize("objective,attention", [("mlm", "favor_relu"), ("clm", "softmax")])
def test_overfit_one_batch(make_cfg, objective, attention):
    cfg = make_cfg(
        "debug=overfit",
        "model=tiny",
        f"model.objective={objective}",
        f"model.causal={objective == 'clm'}",
        f"model.attention={attention}",
        "data.batch_size=4",
        "data.max_length=48",
        "trainer.max_steps=150",
        "trainer.val_check_interval=150",
        "optim.lr=1e-2",
    )
    val = train(cfg)["val"]
    assert val["val/loss"] < 0.1 and val["val/acc"] >= 0.98
    assert val["val/unigram_loss"] > 2.0  # the baseline is measured on the same batch


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {
            int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")
        }


RESUME = [
    "experiment=tiny_cpu",
    "model.dropout=0.1",
    "model.redraw_interval=3",
    "trainer.val_check_interval=5",
    "trainer.log_every_n_steps=1",
    "test=false",
    "trainer.limit_val_batches=2",
    "data.max_length=64",
    "optim.warmup_steps=3",
    "optim.total_steps=10",
]


def test_missing_resume_checkpoint_fails_before_any_set_up(make_cfg, tmp_path, monkeypatch):
    import hydra

    def no_set_up(*args, **kwargs):
        raise AssertionError("set-up started before ckpt_path was checked")

    monkeypatch.setattr(hydra.utils, "instantiate", no_set_up)
    for ckpt_path, what in [(tmp_path / "gone.ckpt", "no such file"), (tmp_path, "a directory")]:
        with pytest.raises(ConfigError, match=f"ckpt_path={ckpt_path}: .*{what}"):
            train(make_cfg(*RESUME, f"ckpt_path={ckpt_path}", tmp=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_missing_resume_checkpoint_is_one_line_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import ROOT

    argv = [
        sys.executable,
        "-m",
        "proteinperf.train",
        f"paths.log_dir={tmp_path}/logs",
        f"paths.output_dir={tmp_path}/run",
        f"ckpt_path={tmp_path}/gone.ckpt",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROTEINPERF_DEBUG": ""}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        done.stderr == f"proteinperf train: error: ckpt_path={tmp_path}/gone.ckpt: no such file\n"
    )


def test_checkpoint_round_trip_and_exact_resume(make_cfg, tmp_path):
    straight = train(make_cfg(*RESUME, "trainer.max_steps=10", tmp=tmp_path / "a"))
    half = train(make_cfg(*RESUME, "trainer.max_steps=5", tmp=tmp_path / "b"))
    last = Path(half["output_dir"]) / "checkpoints" / "last.ckpt"
    resumed = train(
        make_cfg(*RESUME, "trainer.max_steps=10", f"ckpt_path={last}", tmp=tmp_path / "c")
    )
    assert resumed["trainer"].global_step == straight["trainer"].global_step == 10

    # Identical weights, features and optimizer trajectory after the resumed half.
    a = straight["module"].model.state_dict()
    c = resumed["module"].model.state_dict()
    assert a.keys() == c.keys()
    for key in a:
        assert torch.allclose(a[key], c[key], rtol=0, atol=1e-6), key
    losses_a, losses_c = _losses(tmp_path / "a" / "run"), _losses(tmp_path / "c" / "run")
    later = [s for s in losses_a if s >= 5]
    assert later and all(s in losses_c for s in later)
    for s in later:
        assert losses_a[s] == pytest.approx(losses_c[s], abs=1e-6), s

    # The Lightning checkpoint loads safely, with load_model, and as a ProteinLM.
    ckpt = Path(straight["output_dir"]) / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["proteinperf"]["format_version"] == 1
    assert raw["global_step"] == 10
    from proteinperf.checkpoint import load_model

    model, alphabet = load_model(ckpt)
    assert not model.training and len(alphabet) == model.config.vocab_size
    assert dataclasses.asdict(model.config) == raw["proteinperf"]["model_config"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, a[key]), key
    restored = ProteinLM.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert torch.equal(
        restored.model.layers[0].self_attn.features, model.layers[0].self_attn.features
    )


def test_init_from_checkpoint_swaps_attention(make_cfg, tmp_path):
    from proteinperf.checkpoint import save_model
    from proteinperf.model import ModelConfig, PerformerLM

    source = PerformerLM(
        ModelConfig(
            d_model=32, n_layers=1, n_heads=2, d_ff=64, attention="softmax", positional="rotary"
        )
    )
    path = save_model(tmp_path / "source.pt", source)
    cfg = make_cfg(
        "debug=fast_dev_run",
        "data.max_length=64",
        "data.batch_size=4",
        f"model.init_from={path}",
        "model.attention=favor_softmax",
        "model.nb_features=8",
        "model.d_model=999",
    )  # d_model comes from the file
    module = train(cfg)["module"]
    config = module.model.config
    assert (config.attention, config.nb_features, config.d_model) == ("favor_softmax", 8, 32)
    assert module.hparams.model["d_model"] == 32


def test_final_checkpoint_keeps_the_steps_after_the_last_validation(make_cfg, tmp_path):
    """Stopped between validations (7 steps, validating every 5): last.ckpt is the exact-resume
    point of step 5, final.ckpt holds step 7 and the weights training ended with."""
    stopped = train(make_cfg(*RESUME, "trainer.max_steps=7", tmp=tmp_path / "b"))
    folder = Path(stopped["output_dir"]) / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "final.ckpt", "last.ckpt"]
    last, final = (
        torch.load(folder / name, map_location="cpu", weights_only=True)
        for name in ("last.ckpt", "final.ckpt")
    )
    assert last["global_step"] == 5 and final["global_step"] == 7
    key = "model.embed_tokens.weight"
    assert not torch.equal(last["state_dict"][key], final["state_dict"][key])
    from proteinperf.checkpoint import load_model

    model, _ = load_model(folder / "final.ckpt")  # loads like any checkpoint
    assert torch.equal(model.embed_tokens.weight, final["state_dict"][key])
