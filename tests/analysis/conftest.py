from pathlib import Path

import pytest
import torch

from proteinperf.checkpoint import save_model
from proteinperf.model import ModelConfig, PerformerLM

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample_proteins.fasta"
TINY = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, nb_features=32, dropout=0.0)


def tiny_model(attention="favor_softmax", causal=False, seed=0) -> PerformerLM:
    torch.manual_seed(seed)
    model = PerformerLM(ModelConfig(**TINY, attention=attention, causal=causal))
    model.redraw_features(seed=seed + 1, step=0)
    return model.eval()


@pytest.fixture(name="tiny_model")
def tiny_model_factory():
    return tiny_model


@pytest.fixture
def sample() -> Path:
    return SAMPLE


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    return save_model(tmp_path / "tiny.pt", tiny_model())
