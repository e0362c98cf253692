"""Fixtures every test folder shares: the tiny model, its checkpoints, small inputs.

Plain helpers (paths, TINY, write_fasta) are in tests/helpers.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SAMPLE, SEQUENCES, VARIANTS, tiny_model, variant_model, write_fasta

from proteinperf.checkpoint import save_model


@pytest.fixture(name="tiny_model")
def tiny_model_factory():
    """helpers.tiny_model: call it as tiny_model(attention, causal, seed, **config)."""
    return tiny_model


@pytest.fixture
def sample() -> Path:
    """data/sample_proteins.fasta (866 proteins)."""
    return SAMPLE


@pytest.fixture
def fasta(tmp_path) -> str:
    """A FASTA file of helpers.SEQUENCES."""
    return write_fasta(tmp_path / "in.fasta", SEQUENCES)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    return save_model(tmp_path / "tiny.pt", tiny_model())


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A model file of every helpers.VARIANTS entry: {name: path}."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {name: save_model(folder / f"{name}.pt", variant_model(name)) for name in VARIANTS}


@pytest.fixture
def bulk_path(monkeypatch):
    """Every FASTA input takes the bulk (sharded, resumable) path, however small."""
    from proteinperf.inference import runner

    monkeypatch.setattr(runner, "SMALL_INPUT_BYTES", -1)


@pytest.fixture(autouse=True)
def environment_restored():
    """Each test leaves os.environ as it found it: later tests hand os.environ to their
    subprocesses, and Lightning's launchers (MASTER_PORT), seed_everything (PL_GLOBAL_SEED)
    and proteinperf.train (its DDP children's argv) set variables in the calling process."""
    saved = dict(os.environ)
    yield
    for name in set(saved) | set(os.environ):
        if name == "PYTEST_CURRENT_TEST" or os.environ.get(name) == saved.get(name):
            continue
        if name in saved:
            os.environ[name] = saved[name]
        else:
            del os.environ[name]


BENCHMARK_TESTS = Path(__file__).parent / "benchmarks"


def pytest_collection_modifyitems(config, items):
    """Benchmark tests measure in fresh processes: slow by nature (`make test-fast` skips)."""
    for item in items:
        if BENCHMARK_TESTS in item.path.parents:
            item.add_marker(pytest.mark.slow)
