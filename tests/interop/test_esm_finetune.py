"""`make train experiment=esm2_to_performer model.init_from=...` on a tiny converted ESM-2."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from proteinperf.checkpoint import load_model
from proteinperf.interop.esm import convert_esm_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_experiment_requires_init_from():
    from proteinperf.train import register_resolvers

    register_resolvers()  # the schemas conf/ builds on: this test must not rely on others' imports
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=esm2_to_performer"])
    assert cfg.model.attention == "favor_softmax" and cfg.optim.lr == 1e-4
    assert cfg.optim.warmup_steps > 0
    assert cfg.model.init_from.startswith("REQUIRED: model.init_from=")
    from proteinperf.lightning_module import initial_model

    with pytest.raises(ValueError, match="REQUIRED: model.init_from=.*no such file"):
        initial_model({"attention": "favor_softmax"}, cfg.model.init_from)


@pytest.mark.slow
def test_finetune_converted_esm2_a_few_steps(tmp_path):
    pytest.importorskip("proteinperf.train")
    from proteinperf.train import train

    from .test_interop_esm import random_esm2, save_official

    esm_model, _ = random_esm2()
    esm_path = save_official(esm_model, tmp_path / "esm2_t2_tiny.pt")
    converted = convert_esm_checkpoint(esm_path, tmp_path / "esm2_t2_tiny.ckpt")
    overrides = [
        "experiment=esm2_to_performer",
        f"model.init_from={converted}",
        "model.nb_features=16",
        f"paths.output_dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.max_length=64",
        "data.batch_size=4",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "optim.warmup_steps=1",
        "test=false",
        "logger=csv",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    result = train(cfg)
    assert result["checkpoint"], "no checkpoint written"
    model, _ = load_model(result["checkpoint"])
    assert model.config.attention == "favor_softmax"
    assert model.config.d_model == 64 and model.config.token_dropout
    # started from ESM-2's weights: a few steps at lr 1e-4 move them very little
    moved = (model.embed_tokens.weight - esm_model.embed_tokens.weight).abs().max()
    assert 0 < moved < 0.05
    assert torch.isfinite(torch.tensor(result["val"]["val/loss"]))
