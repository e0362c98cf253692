"""What tests share besides fixtures (tests/conftest.py): paths, the tiny model, small inputs.

Import it as ``from helpers import ...`` (tests/ is on sys.path: tests/conftest.py lives there
and tests/ is no package), never ``from conftest import ...``.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import torch

from proteinperf.model import ModelConfig, PerformerLM

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SAMPLE = ROOT / "data" / "sample_proteins.fasta"

# The one tiny architecture of the test suite (fast on one CPU thread).
TINY = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, nb_features=16, dropout=0.0)
# The same as Hydra overrides of conf/model/ (one layer: training tests run many steps).
TINY_OVERRIDES = [f"model.{k}={v}" for k, v in {**TINY, "n_layers": 1, "max_len": 128}.items()]

# Named variants of inference tests: the attention kinds and layouts a command must handle.
VARIANTS = {
    "favor_relu": dict(attention="favor_relu"),
    "favor_softmax": dict(attention="favor_softmax"),
    "softmax": dict(attention="softmax"),
    "causal": dict(attention="favor_softmax", causal=True),
    "learned": dict(attention="favor_relu", positional="learned", max_len=16),
}
SEQUENCES = {
    "seq1": "MKTAYIAKQRQISFVKSHFSRQ",
    "seq2": "MAD",
    "seq3": "GSHMLEDPVDAFQ",
    "seq4": "WWYCPN",
}


def tiny_model(
    attention: str = "favor_softmax",
    causal: bool = False,
    seed: int = 0,
    weight_scale: float = 1.0,
    **config,
) -> PerformerLM:
    """A TINY PerformerLM in eval mode, seeded; ``weight_scale`` > 1 enlarges the matrices so
    that outputs depend visibly on the input; ``config`` overrides TINY's fields."""
    torch.manual_seed(seed)
    model = PerformerLM(ModelConfig(**{**TINY, **config}, attention=attention, causal=causal))
    if weight_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(weight_scale)
    return model.eval()


def variant_model(name: str) -> PerformerLM:
    """One of VARIANTS, with weights large enough that every input changes the output."""
    return tiny_model(**{"attention": "favor_softmax", **VARIANTS[name]}, weight_scale=20.0)


def write_fasta(path, records: dict) -> str:
    path.write_text("".join(f">{rid} some description\n{seq}\n" for rid, seq in records.items()))
    return str(path)


def write(path: Path, text: str | bytes) -> Path:
    """Write ``text`` to ``path``, compressed as its suffix says (.gz, .bz2, .xz)."""
    data = text.encode() if isinstance(text, str) else text
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)
    with opener(path, "wb") as f:
        f.write(data)
    return path


def cli_env(**extra) -> dict:
    """The environment of a `python -m proteinperf.cli` child: this checkout first on the path,
    one thread, and none of the rank variables a parent DDP run may have set."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK"):
        env.pop(name, None)
    return env
