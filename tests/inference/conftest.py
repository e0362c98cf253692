import pytest
import torch

from proteinperf.checkpoint import save_model
from proteinperf.model import ModelConfig, PerformerLM

TINY = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, nb_features=8, dropout=0.0)
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


def tiny_model(name: str) -> PerformerLM:
    torch.manual_seed(0)
    model = PerformerLM(ModelConfig(**TINY, **VARIANTS[name]))
    # Weights larger than the default init, so that outputs depend visibly on the input.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(20.0)
    return model.eval()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return {name: save_model(folder / f"{name}.pt", tiny_model(name)) for name in VARIANTS}


def write_fasta(path, records: dict) -> str:
    path.write_text("".join(f">{rid} some description\n{seq}\n" for rid, seq in records.items()))
    return str(path)


@pytest.fixture
def fasta(tmp_path):
    return write_fasta(tmp_path / "in.fasta", SEQUENCES)
