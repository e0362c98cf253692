"""Hydra-composed configs for training tests: tiny models, few steps, everything under tmp.

Paths and the tiny model's overrides are in tests/helpers.py (helpers.TINY_OVERRIDES).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from proteinperf.train import register_resolvers

QUIET = ["trainer.enable_progress_bar=false", "logger=csv", "callbacks.model_summary=null"]


def compose_train(tmp: Path, cache: Path, overrides: list[str]) -> DictConfig:
    """conf/train.yaml with ``overrides``; outputs in tmp, the prepared sample in cache."""
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.log_dir={tmp}/logs",
                f"paths.output_dir={tmp}/run",
                f"paths.cache_dir={cache}",
                "data=sample",  # the small fixture; the default corpus is for real runs
                *overrides,
            ],
        )


@pytest.fixture
def corpus_cache(tmp_path_factory) -> Path:
    """One prepared copy of data/sample_proteins.fasta for the whole session (every module)."""
    path = tmp_path_factory.getbasetemp() / "training-corpus-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def make_cfg(tmp_path, corpus_cache):
    def make(*overrides: str, tmp: Path | None = None) -> DictConfig:
        return compose_train(tmp or tmp_path, corpus_cache, [*QUIET, *overrides])

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and spinning threads suffer on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
