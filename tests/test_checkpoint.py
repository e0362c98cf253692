import argparse
import dataclasses

import pytest
import torch
from helpers import TINY

import proteinperf
from proteinperf import checkpoint
from proteinperf.checkpoint import (
    CheckpointError,
    checkpoint_metadata,
    load_model,
    load_model_and_metadata,
    model_config_from_checkpoint,
    model_with_weights,
    read_checkpoint,
    save_model,
)
from proteinperf.model import ModelConfig, PerformerLM


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = PerformerLM(ModelConfig(**TINY, attention="favor_softmax"))
    m.redraw_features(seed=3, step=0)
    return m


def tokens():
    t = torch.randint(4, 29, (2, 12), generator=torch.Generator().manual_seed(0))
    t[1, 9:] = 1
    return t


def same_outputs(a, b):
    with torch.no_grad():
        return torch.equal(a.eval()(tokens())["logits"], b.eval()(tokens())["logits"])


def test_round_trip(tmp_path, model):
    path = save_model(tmp_path / "sub" / "m.pt", model, extra={"step": 5})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "proteinperf-model" and raw["format_version"] == 1
    assert raw["alphabet"] == "ESM-1b" and raw["step"] == 5
    assert raw["model_config"] == dataclasses.asdict(model.config)
    loaded, alphabet = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert len(alphabet) == 33 and alphabet.mask_idx == 32
    assert same_outputs(model, loaded)
    assert proteinperf.load_model is load_model
    assert not list(tmp_path.glob("sub/.*tmp"))  # no temp file left behind


def test_model_and_metadata_from_one_read(tmp_path, model, monkeypatch):
    path = save_model(tmp_path / "m.pt", model, extra={"step": 5, "objective": "mlm"})
    reads = []
    real = checkpoint.read_checkpoint
    monkeypatch.setattr(
        checkpoint, "read_checkpoint", lambda *a, **k: reads.append(a) or real(*a, **k)
    )
    loaded, alphabet, meta = load_model_and_metadata(path)
    assert len(reads) == 1
    assert meta == checkpoint_metadata(path)
    assert meta["step"] == 5 and meta["objective"] == "mlm" and "state_dict" not in meta
    assert same_outputs(model, loaded) and len(alphabet) == 33


def test_save_rejects_reserved_extra(tmp_path, model):
    with pytest.raises(ValueError, match="clash"):
        save_model(tmp_path / "m.pt", model, extra={"state_dict": {}})


def test_lightning_checkpoint(tmp_path, model):
    ckpt = {
        "epoch": 0,
        "global_step": 3,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}
        | {"unigram.counts": torch.ones(33)},
        "proteinperf": {"model_config": dataclasses.asdict(model.config), "format_version": 1},
        "optimizer_states": [],
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded, _ = load_model(tmp_path / "last.ckpt")
    assert same_outputs(model, loaded)
    assert model_config_from_checkpoint(ckpt)["attention"] == "favor_softmax"


def test_attention_override_keeps_weights(tmp_path, model):
    path = save_model(tmp_path / "m.pt", model)
    exact, _ = load_model(path, overrides={"attention": "softmax"})
    assert "layers.0.self_attn.features" not in exact.state_dict()
    favor, _ = load_model(path, overrides={"attention": "favor_relu", "nb_features": 8})
    assert favor.attention_layers[0].features.shape == (8, 8)
    torch.testing.assert_close(favor.embed_tokens.weight, model.embed_tokens.weight)
    back, _ = load_model(
        save_model(tmp_path / "e.pt", exact),
        overrides={"attention": "favor_softmax"},
        feature_seed=3,
    )
    assert same_outputs(model, back)  # same weights, same seeded features


def write(path, payload):
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "name,make,match",
    [
        ("missing.pt", None, "no such file"),
        ("garbage.pt", lambda p: p.write_bytes(b"not a checkpoint at all"), "corrupt"),
        ("truncated.pt", "truncate", "corrupt"),
        ("pickle.pt", lambda p: write(p, {"args": argparse.Namespace(a=1)}), "argparse.Namespace"),
        ("list.pt", lambda p: write(p, [1, 2]), "holds a list"),
        ("dict.pt", lambda p: write(p, {"weights": torch.ones(2)}), "not a proteinperf"),
        ("esm.pt", lambda p: write(p, {"model": {}, "cfg": {"model": {}}}), "convert-esm"),
        ("newer.pt", "newer", "format_version 2"),
        ("mismatch.pt", "mismatch", "weights do not match"),
        ("shape.pt", "shape", "has shape"),
        ("badconfig.pt", "badconfig", "unknown model config keys"),
        ("nan.pt", "nan", r"weight layers\.0\.fc1\.weight holds NaN or infinite values"),
        ("inf.pt", "inf", r"weight embed_tokens\.weight holds NaN or infinite values"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, model, name, make, match):
    path = tmp_path / name
    if make == "truncate":
        save_model(path, model)
        path.write_bytes(path.read_bytes()[:300])
    elif make in ("newer", "mismatch", "shape", "badconfig", "nan", "inf"):
        save_model(path, model)
        obj = torch.load(path, weights_only=True)
        if make == "newer":
            obj["format_version"] = 2
        elif make == "mismatch":
            del obj["state_dict"]["layers.0.fc1.weight"]
        elif make == "shape":
            obj["state_dict"]["layers.0.fc1.weight"] = torch.zeros(3, 3)
        elif make == "nan":
            obj["state_dict"]["layers.0.fc1.weight"][1, 2] = float("nan")
        elif make == "inf":
            obj["state_dict"]["embed_tokens.weight"][0, 0] = -float("inf")
        else:
            obj["model_config"]["colour"] = "red"
        torch.save(obj, path)
    elif make is not None:
        make(path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_read_checkpoint_and_model_with_weights(tmp_path, model):
    obj = read_checkpoint(save_model(tmp_path / "m.pt", model))
    rebuilt = model_with_weights(obj["model_config"], obj["state_dict"])
    assert same_outputs(model, rebuilt)


def test_numpy_metadata_saves_as_plain_python(tmp_path, model):
    """Metadata computed with NumPy (metrics, model cards) must not make the file unloadable
    under weights_only (the 486k reproduction's exported models were)."""
    import numpy as np

    extra = {"card": {"test": {"accuracy": np.float64(0.11)}, "steps": np.int64(3)},
             "unigram_log_probs": np.zeros(3, np.float32)}  # fmt: skip
    path = save_model(tmp_path / "m.pt", model, extra=extra)
    loaded = read_checkpoint(path)
    assert loaded["card"] == {"test": {"accuracy": 0.11}, "steps": 3}
    assert type(loaded["card"]["test"]["accuracy"]) is float
    assert loaded["unigram_log_probs"] == [0.0, 0.0, 0.0]
    load_model(path)


def test_missing_safetensors_is_one_line_naming_the_extra(tmp_path, model, monkeypatch):
    import sys

    from proteinperf.interop.hf_export import export_hf

    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails, as if not installed
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"reading safetensors needs the hf extra .*\[hf\]"):
        checkpoint.read_safetensors(tmp_path / "w.safetensors")
    from proteinperf.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^export-hf needs the hf extra"):
        export_hf(save_model(tmp_path / "m.pt", model), tmp_path / "out")
    assert not (tmp_path / "out").exists()
