"""Every command works with a Lightning checkpoint of the training module, on CPU and GPU."""

import dataclasses

import pandas as pd
import pytest
import torch
from helpers import SEQUENCES, TINY

from proteinperf.cli import main


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory):
    training = pytest.importorskip("proteinperf.lightning_module")
    from proteinperf.model import ModelConfig

    config = dataclasses.asdict(ModelConfig(**TINY, attention="favor_relu"))
    module = training.ProteinLM(model=config, objective="mlm")
    checkpoint = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(checkpoint)  # what Lightning adds: proteinperf metadata
    path = tmp_path_factory.mktemp("lightning") / "last.ckpt"
    torch.save(checkpoint, path)
    return str(path)


def devices():
    yield "cpu"
    yield pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    )


@pytest.mark.parametrize("device", devices())
def test_every_command_with_a_lightning_checkpoint(tmp_path, lightning_ckpt, fasta, device):
    common = ["--quiet", "--device", device]
    assert main(["embed", lightning_ckpt, fasta, str(tmp_path / "e.h5"), *common]) == 0
    assert main(["score", lightning_ckpt, fasta, str(tmp_path / "s.csv"), *common]) == 0
    assert len(pd.read_csv(tmp_path / "s.csv")) == len(SEQUENCES)
    (tmp_path / "m.csv").write_text("mutant\nK2R\n")
    assert (
        main(
            [
                "score-mutations",
                lightning_ckpt,
                "--sequence",
                "MKTAYI",
                "--mutations",
                str(tmp_path / "m.csv"),
                "--out",
                str(tmp_path / "o.csv"),
                *common,
            ]
        )
        == 0
    )
    assert list(pd.read_csv(tmp_path / "o.csv").columns) == ["mutant", "last_masked-marginals"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_matches_cpu():
    from helpers import variant_model

    from proteinperf.inference.embed import embed_sequences

    model = variant_model("favor_softmax")
    seqs = list(SEQUENCES.values())
    cpu = embed_sequences(model, seqs, [2], ["mean"])
    gpu = embed_sequences(model.cuda(), seqs, [2], ["mean"])
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(
            a["mean_representations"][2], b["mean_representations"][2], atol=1e-4, rtol=1e-4
        )


def test_bad_checkpoint_is_one_line(tmp_path, fasta, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["embed", str(bad), fasta, str(tmp_path / "e.h5"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt or not a PyTorch file" in err
    if not torch.cuda.is_available():
        assert main(["embed", str(bad), fasta, str(tmp_path / "e.h5"), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
