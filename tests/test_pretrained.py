"""Named pretrained models: registry, export, and names accepted wherever a checkpoint is."""

import json
import os
from pathlib import Path

import helpers
import pytest
import torch

import proteinperf
from proteinperf import load_model, pretrained
from proteinperf.checkpoint import (
    CheckpointError,
    checkpoint_metadata,
    resolve_checkpoint,
    save_model,
)
from proteinperf.checksum import file_sha256
from proteinperf.cli import main
from proteinperf.errors import InputError
from proteinperf.model import ModelConfig, PerformerLM
from proteinperf.pretrained.export import MAX_SHIPPED_MB, export_model

TINY = {**helpers.TINY, "attention": "favor_relu"}


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv(pretrained.MODELS_DIR_ENV, str(folder))
    monkeypatch.setattr(pretrained, "PACKAGE_DIR", tmp_path / "no-shipped-models")
    return folder


@pytest.fixture
def trained(tmp_path) -> tuple[Path, PerformerLM]:
    torch.manual_seed(0)
    model = PerformerLM(ModelConfig(**TINY)).eval()
    unigram = torch.log_softmax(torch.randn(33), -1).tolist()
    path = save_model(tmp_path / "trained.pt", model, extra={"unigram_log_probs": unigram})
    return path, model


def test_empty_registry(models_dir, capsys):
    assert pretrained.registry() == {} and pretrained.list_models() == []
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["models"]) == 0
    assert "no named models" in capsys.readouterr().out


def test_export_register_load_by_name(models_dir, trained, capsys):
    path, model = trained
    card = {"data": "sample", "steps": 3, "test": {"accuracy": 0.25, "perplexity": 17.0}}
    out = export_model(path, models_dir / "tiny-bid.pt", card)
    assert out.stat().st_size < path.stat().st_size  # fp16
    assert pretrained.registry() == {"tiny-bid": out}
    assert resolve_checkpoint("tiny-bid") == out

    loaded, _ = load_model("tiny-bid")
    tokens = torch.randint(4, 24, (1, 12))
    expected = model(tokens)["logits"]
    got = loaded(tokens)["logits"]
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)  # fp16 weights
    meta = checkpoint_metadata("tiny-bid")  # names resolve here too
    assert meta["objective"] == "mlm" and len(meta["unigram_log_probs"]) == 33
    assert meta["card"]["steps"] == 3

    assert main(["models", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["name"] == "tiny-bid" and listed["path"] == str(out)
    assert listed["objective"] == "mlm" and listed["attention"] == "favor_relu"
    assert listed["test"]["accuracy"] == 0.25 and listed["size_mb"] > 0
    assert main(["models"]) == 0
    assert "tiny-bid" in capsys.readouterr().out


def test_cli_commands_accept_a_name(models_dir, trained, tmp_path, capsys):
    path, _ = trained
    export_model(path, models_dir / "tiny-bid.pt")
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nMSDNELLKKAVE\n")
    assert main(["evaluate", "tiny-bid", str(fasta)]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_unknown_name_is_one_line_listing_known(models_dir, trained, capsys):
    path, _ = trained
    export_model(path, models_dir / "tiny-bid.pt")
    with pytest.raises(CheckpointError, match=r"not-a-model.*known: tiny-bid"):
        load_model("not-a-model")
    assert main(["evaluate", "not-a-model", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such file" in err and "tiny-bid" in err


def test_a_named_model_whose_bytes_changed_is_refused(models_dir, trained, capsys):
    path, _ = trained
    out = export_model(path, models_dir / "tiny-bid.pt")
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(out)
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x04  # a flipped bit inside the weights: torch.load does not notice
    out.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tiny-bid.pt: sha256 .* differs from its card"):
        load_model("tiny-bid")
    assert main(["evaluate", "tiny-bid", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the file is damaged" in err
    # a file that is not a registered model has no card to check against
    assert pretrained.card_sha256(path) is None


def test_a_named_model_is_read_in_full_once_per_process(models_dir, trained, monkeypatch):
    """Loading by name again does not hash the file again; a file rewritten since (new mtime)
    is hashed again and refused if its bytes no longer match the card."""
    path, _ = trained
    out = export_model(path, models_dir / "tiny-bid.pt")
    hashed = []
    real = pretrained.file_sha256
    monkeypatch.setattr(pretrained, "file_sha256", lambda p: hashed.append(p) or real(p))
    for _ in range(3):
        load_model("tiny-bid")
    assert hashed == [out.resolve()]
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x04
    mtime = out.stat().st_mtime_ns
    out.write_bytes(bytes(data))
    os.utime(out, ns=(mtime + 10**9, mtime + 10**9))
    with pytest.raises(CheckpointError, match="differs from its card"):
        load_model("tiny-bid")
    assert len(hashed) == 2


def test_export_refuses_oversized_files(models_dir, trained):
    path, _ = trained
    with pytest.raises(ValueError, match="MB"):
        export_model(path, models_dir / "big.pt", max_mb=0.001)
    assert not list(models_dir.iterdir())  # nothing half-written


def test_export_refuses_weights_beyond_float16(models_dir, tmp_path, capsys):
    """A weight past float16's 65504 (a run that drifted, e.g. trained in 16-mixed without
    enough scaling) would be saved as inf: refused with its name, nothing written."""
    torch.manual_seed(0)
    model = PerformerLM(ModelConfig(**TINY)).eval()
    with torch.no_grad():
        model.layers[0].fc1.weight[0, 0] = 1e5
    path = save_model(tmp_path / "drifted.pt", model)
    with pytest.raises(InputError, match=r"weight layers\.0\.fc1\.weight reaches 1e\+05"):
        export_model(path, models_dir / "drifted.pt")
    assert not list(models_dir.iterdir())
    out = export_model(path, models_dir / "wide.pt", dtype=torch.bfloat16)
    assert load_model(out)[0].layers[0].fc1.weight[0, 0] == 99840.0  # 1e5 in bf16: finite
    out = models_dir / "cli.pt"
    assert main(["models", "--export", str(path), "--out", str(out)]) == 2
    assert "beyond torch.float16's range" in capsys.readouterr().err and not out.exists()


def test_package_data_ships_pretrained_files():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"proteinperf.pretrained" = ["*.pt", "*.json"]' in text


def test_shipped_models_load_and_match_their_cards():
    """Every model in proteinperf/pretrained/ loads by name (weights_only), fits the shipping
    limit and is what its card says."""
    from proteinperf.pretrained import PACKAGE_DIR, model_card

    shipped = sorted(PACKAGE_DIR.glob("*.pt"))
    assert {p.stem for p in shipped} >= {"swissprot-performer-bid", "swissprot-transformer-causal"}
    for path in shipped:
        assert path.stat().st_size <= MAX_SHIPPED_MB * 2**20
        card = model_card(path.stem)
        model, _ = proteinperf.load_model(path.stem)
        assert model.config.causal == (card["objective"] == "clm")
        assert model.config.attention == card["attention"]
        assert card["test"]["accuracy"] > card["unigram"]["accuracy"]
        for key in ("data", "split", "steps", "seconds", "far", "limits"):
            assert card.get(key), (path.stem, key)
        assert card["sha256"] == file_sha256(path), path.stem


def test_listing_shows_size_training_held_out_beside_unigram_and_limits(monkeypatch, capsys):
    from proteinperf.pretrained import PACKAGE_DIR, model_card

    monkeypatch.delenv(pretrained.MODELS_DIR_ENV, raising=False)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for path in sorted(PACKAGE_DIR.glob("*.pt")):
        card = model_card(path.stem)
        block = out.split(card["name"] + "  ", 1)[1].split("\n\n", 1)[0]
        assert f"{card['parameters'] / 1e6:.2f} M parameters" in block
        assert f"{card['steps']:,} steps" in block
        test, unigram = card["test"], card["unigram"]
        assert f"{test['accuracy']:.3f} ({unigram['accuracy']:.3f})" in block
        assert f"{(test['accuracy'] - unigram['accuracy']) * 100:+.1f} points" in block
        assert f"{test['perplexity']:.2f} ({unigram['perplexity']:.2f})" in block
        far = card["far"]
        assert f"{far['perplexity'] / far['unigram']['perplexity']:.3f}x" in block
        flat = " ".join(block.split())
        assert f"limits: {' '.join(card['limits'].split())}" in flat
        assert f"data: {' '.join(card['data'].split())}" in flat
