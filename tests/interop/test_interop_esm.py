import argparse
import dataclasses
import re
import urllib.error
from pathlib import Path

import esm
import pytest
import torch

from proteinperf.checkpoint import load_model, read_checkpoint
from proteinperf.cli import main
from proteinperf.interop.esm import (
    ESMConversionError,
    convert_esm_checkpoint,
    performer_from_esm_model,
)
from proteinperf.model import PerformerLM, rotary_inv_freq

LAYERS, DIM, HEADS = 2, 64, 4
SEQUENCES = [
    ("a", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"),
    ("b", "KALTARQQEVFDLIRD"),
    ("c", "MSEQNNTEMTFQIQRIYTKDISFEAPNAPHVFQKDWXBZ"),
]


def random_esm2(token_dropout=True, seed=0):
    torch.manual_seed(seed)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(
        num_layers=LAYERS,
        embed_dim=DIM,
        attention_heads=HEADS,
        alphabet=alphabet,
        token_dropout=token_dropout,
    )
    with torch.no_grad():  # LayerNorms and biases away from their init, so all are exercised
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval(), alphabet


def save_official(model, path, prefixed=True, regression=True):
    """The layout of the released files: fairseq prefixes, cfg.model as a Namespace, the
    contact regression in a separate <name>-contact-regression.pt."""
    state = model.state_dict()
    contact = {k: state.pop(k) for k in list(state) if k.startswith("contact_head.")}
    if prefixed:
        state = {
            ("encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder.") + k: v
            for k, v in state.items()
        }
    cfg = argparse.Namespace(
        encoder_layers=model.num_layers,
        encoder_embed_dim=model.embed_dim,
        encoder_ffn_embed_dim=4 * model.embed_dim,
        encoder_attention_heads=model.attention_heads,
        token_dropout=model.token_dropout,
        dropout=0.0,
        arch="ESM2",
    )
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    if regression:
        torch.save({"model": contact}, path.with_name(path.stem + "-contact-regression.pt"))
    return path


def batch(alphabet, mask_positions=()):
    _, _, tokens = alphabet.get_batch_converter()(SEQUENCES)
    for row, col in mask_positions:
        tokens[row, col] = alphabet.mask_idx
    return tokens


@pytest.fixture(scope="module")
def esm2_file(tmp_path_factory):
    model, alphabet = random_esm2()
    path = save_official(model, tmp_path_factory.mktemp("esm") / "esm2_t2_tiny_UR50D.pt")
    return model, alphabet, path


def test_official_layout_is_what_fair_esm_loads(esm2_file):
    model, _, path = esm2_file
    data = torch.load(path, weights_only=False)
    regression = torch.load(path.with_name(path.stem + "-contact-regression.pt"))
    loaded, _ = esm.pretrained.load_model_and_alphabet_core(path.stem, data, regression)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("masked", [False, True])
def test_softmax_conversion_matches_fair_esm(tmp_path, esm2_file, masked):
    model, alphabet, path = esm2_file
    out = convert_esm_checkpoint(path, tmp_path / "converted.ckpt")
    ours, our_alphabet = load_model(out)
    assert our_alphabet.tokens == alphabet.all_toks
    tokens = batch(alphabet, [(0, 3), (0, 10), (1, 5), (2, 1)] if masked else ())
    assert (tokens == alphabet.padding_idx).any()  # padded batch
    layers = list(range(LAYERS + 1))
    with torch.no_grad():
        expected = model(tokens, repr_layers=layers)
        got = ours(tokens, repr_layers=layers)
    torch.testing.assert_close(got["logits"], expected["logits"], atol=1e-4, rtol=0)
    for i in layers:
        torch.testing.assert_close(
            got["representations"][i], expected["representations"][i], atol=1e-4, rtol=0
        )


def test_head_weights_and_negative_layers_match_fair_esm(tmp_path, esm2_file):
    """need_head_weights: fair-esm's "attentions" (B, layers, heads, L, L), padding zeroed;
    repr_layers=[-1] is fair-esm's last layer."""
    model, alphabet, path = esm2_file
    ours, our_alphabet = load_model(convert_esm_checkpoint(path, tmp_path / "c.ckpt"))
    _, _, tokens = our_alphabet.get_batch_converter()(SEQUENCES)
    torch.testing.assert_close(tokens, alphabet.get_batch_converter()(SEQUENCES)[2])
    assert (tokens == alphabet.padding_idx).any()
    with torch.no_grad():
        expected = model(tokens, repr_layers=[LAYERS], need_head_weights=True)
        got = ours(tokens, repr_layers=[-1], need_head_weights=True)
    assert got["attentions"].shape == expected["attentions"].shape
    torch.testing.assert_close(got["attentions"], expected["attentions"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        got["representations"][-1], expected["representations"][LAYERS], atol=1e-4, rtol=0
    )


def test_mean_embeddings_match_esm_extraction(tmp_path, esm2_file):
    model, alphabet, path = esm2_file
    ours, _ = load_model(convert_esm_checkpoint(path, tmp_path / "c.ckpt"))
    tokens = batch(alphabet)
    with torch.no_grad():
        expected = model(tokens, repr_layers=[1, LAYERS])["representations"]
        got = ours(tokens, repr_layers=[1, LAYERS])["representations"]
    for layer in (1, LAYERS):
        for i, (_, seq) in enumerate(SEQUENCES):
            # esm's extract.py: mean over residues, <cls> (0) and <eos> excluded
            want = expected[layer][i, 1 : len(seq) + 1].mean(0)
            real = (
                (tokens[i] != alphabet.padding_idx)
                & (tokens[i] != alphabet.cls_idx)
                & (tokens[i] != alphabet.eos_idx)
            )
            torch.testing.assert_close(got[layer][i][real].mean(0), want, atol=1e-5, rtol=1e-5)


def test_contact_regression_is_kept(tmp_path, esm2_file):
    model, _, path = esm2_file
    obj = read_checkpoint(convert_esm_checkpoint(path, tmp_path / "c.ckpt"))
    contact = obj["contact_regression"]
    assert torch.equal(contact["weight"], model.contact_head.regression.weight)
    assert torch.equal(contact["bias"], model.contact_head.regression.bias)
    assert obj["model_config"]["token_dropout"] is True
    assert obj["source"]["name"] == path.stem


def test_unprefixed_layout_without_regression_and_no_token_dropout(tmp_path):
    model, alphabet = random_esm2(token_dropout=False, seed=1)
    path = save_official(model, tmp_path / "esm2_plain.pt", prefixed=False, regression=False)
    obj = read_checkpoint(convert_esm_checkpoint(path, tmp_path / "c.ckpt"))
    assert "contact_regression" not in obj
    ours, _ = load_model(tmp_path / "c.ckpt")
    tokens = batch(alphabet, [(0, 4)])
    with torch.no_grad():
        torch.testing.assert_close(
            ours(tokens)["logits"], model(tokens)["logits"], atol=1e-4, rtol=0
        )


def test_cli_favor_conversion(tmp_path, esm2_file, capsys):
    model, alphabet, path = esm2_file
    out = tmp_path / "favor.ckpt"
    assert (
        main(
            [
                "convert-esm",
                str(path),
                str(out),
                "--attention",
                "favor_relu",
                "--nb-features",
                "32",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert str(out) in capsys.readouterr().out
    ours, _ = load_model(out)
    assert ours.config.attention == "favor_relu"
    assert ours.attention_layers[0].features.shape == (32, DIM // HEADS)
    again = performer_from_esm_model(model, "favor_relu", 32, seed=3)
    assert torch.equal(again.attention_layers[1].features, ours.attention_layers[1].features)
    with torch.no_grad():
        logits = ours(batch(alphabet))["logits"]
    assert torch.isfinite(logits).all()


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["convert-esm", str(tmp_path / "nope.pt"), str(tmp_path / "o.ckpt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_rejects_esm1b_and_incomplete_files(tmp_path, esm2_file):
    _, _, path = esm2_file
    obj = torch.load(path, weights_only=False)
    bad = dict(
        obj,
        model={
            **obj["model"],
            "encoder.sentence_encoder.embed_positions.weight": torch.zeros(3, DIM),
        },
    )
    torch.save(bad, tmp_path / "esm1b.pt")
    with pytest.raises(ESMConversionError, match="ESM-1b"):
        convert_esm_checkpoint(tmp_path / "esm1b.pt", tmp_path / "o.ckpt")
    torch.save({"model": obj["model"], "cfg": {"model": {}}}, tmp_path / "noheads.pt")
    with pytest.raises(ESMConversionError, match="encoder_attention_heads"):
        convert_esm_checkpoint(tmp_path / "noheads.pt", tmp_path / "o.ckpt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ESMConversionError, match="not a fair-esm"):
        convert_esm_checkpoint(tmp_path / "list.pt", tmp_path / "o.ckpt")
    assert not (tmp_path / "o.ckpt").exists()


def test_proteinperf_embed_matches_esm_extraction(tmp_path, esm2_file):
    embed = pytest.importorskip("proteinperf.inference.embed")
    model, alphabet, path = esm2_file
    ours, _ = load_model(convert_esm_checkpoint(path, tmp_path / "c.ckpt"))
    seqs = [seq for _, seq in SEQUENCES]
    results = embed.embed_sequences(ours, seqs, layers=[0, 1, LAYERS], include=("mean",))
    with torch.no_grad():
        expected = model(batch(alphabet), repr_layers=[0, 1, LAYERS])["representations"]
    for layer in (0, 1, LAYERS):
        for i, seq in enumerate(seqs):
            want = expected[layer][i, 1 : len(seq) + 1].mean(0)  # esm-extract's mean
            got = results[i]["mean_representations"][layer]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- by model name


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty torch-hub cache in tmp_path; any download attempt fails as offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # let TORCH_HOME decide

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(f"offline test: would download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    assert Path(torch.hub.get_dir()) / "checkpoints" == checkpoints
    checkpoints.mkdir(parents=True)
    return checkpoints


def test_convert_by_name_uses_fair_esm_loader_and_keeps_contact_head(tmp_path, hub_cache, capsys):
    # The released files' names and layout, randomly initialised weights.
    model, alphabet = random_esm2(seed=2)
    save_official(model, hub_cache / "esm2_t6_8M_UR50D.pt")
    assert (hub_cache / "esm2_t6_8M_UR50D-contact-regression.pt").exists()
    out = tmp_path / "esm2_t6.ckpt"
    assert main(["convert-esm", "esm2_t6_8M_UR50D", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    obj = read_checkpoint(out)
    assert obj["source"]["name"] == "esm2_t6_8M_UR50D"
    assert torch.equal(obj["contact_regression"]["weight"], model.contact_head.regression.weight)
    assert torch.equal(obj["contact_regression"]["bias"], model.contact_head.regression.bias)
    ours, _ = load_model(out)
    tokens = batch(alphabet, [(1, 3)])
    with torch.no_grad():
        torch.testing.assert_close(
            ours(tokens)["logits"], model(tokens)["logits"], atol=1e-4, rtol=0
        )


def test_convert_by_name_errors(tmp_path, hub_cache, capsys):
    out = tmp_path / "o.ckpt"
    assert main(["convert-esm", "esm1b_t33_650M_UR50S", str(out)]) == 2
    err = capsys.readouterr().err
    assert "neither a .pt file nor an ESM-2 model" in err and "esm2_t6_8M_UR50D" in err
    assert main(["convert-esm", "esm2_t12_35M_UR50D", str(out)]) == 2  # not cached, offline
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "could not load it" in err and str(hub_cache) in err
    assert not out.exists()


def float16_esm2_file(tmp_path):
    """A file saved as the released esm2_t36_3B / t48_15B are, in float16, and fair-esm's model
    of it: float32 parameters holding the float16 values, rotary inv_freq rounded to float16."""
    model, alphabet = random_esm2(seed=2)
    path = save_official(model.half(), tmp_path / "esm2_t2_half_UR50D.pt")
    data = torch.load(path, weights_only=False)
    regression = torch.load(path.with_name(path.stem + "-contact-regression.pt"))
    loaded, _ = esm.pretrained.load_model_and_alphabet_core(path.stem, data, regression)
    return loaded.eval(), alphabet, path


def test_float16_file_converts_with_its_rotary_frequencies(tmp_path, capsys):
    """fair-esm runs a float16 file with the float16 rotary frequencies it stores; so does the
    converted model. Both compute in float32 from the same float16-valued weights, so float32's
    tolerance holds; the float32 frequencies miss it by far."""
    reference, alphabet, path = float16_esm2_file(tmp_path)
    inv_freq = reference.layers[0].self_attn.rot_emb.inv_freq
    assert inv_freq.dtype == torch.float32 and not torch.equal(inv_freq, rotary_inv_freq(16))
    assert main(["convert-esm", str(path), str(tmp_path / "c.ckpt")]) == 0
    ours, _ = load_model(tmp_path / "c.ckpt")
    assert ours.config.rotary_inv_freq_dtype == "float16"
    assert read_checkpoint(tmp_path / "c.ckpt")["model_config"]["rotary_inv_freq_dtype"] == (
        "float16"
    )
    tokens = batch(alphabet, [(0, 3), (2, 1)])
    with torch.no_grad():
        expected = reference(tokens)["logits"]
        torch.testing.assert_close(ours(tokens)["logits"], expected, atol=1e-4, rtol=0)
        # fair-esm's module loaded from that file (the by-name path) converts the same way
        again = performer_from_esm_model(reference)
        assert again.config.rotary_inv_freq_dtype == "float16"
        torch.testing.assert_close(again(tokens)["logits"], expected, atol=1e-4, rtol=0)
        float32 = PerformerLM(dataclasses.replace(ours.config, rotary_inv_freq_dtype="float32"))
        float32.load_state_dict(ours.state_dict())
        assert (float32.eval()(tokens)["logits"] - expected).abs().max() > 1e-3


def test_float32_file_keeps_the_float32_frequencies(tmp_path, esm2_file):
    _, _, path = esm2_file
    ours, _ = load_model(convert_esm_checkpoint(path, tmp_path / "c.ckpt"))
    assert ours.config.rotary_inv_freq_dtype == "float32"


@pytest.mark.parametrize(
    "layer, inv_freq, message",
    [  # neither float32's nor float16's frequencies; layers that disagree
        (0, lambda f: f * 1.01, "layer 0 rotary inv_freq differs from 1/10000.+ in float32 and"),
        (1, lambda f: rotary_inv_freq(16), r"layer 0: float16, layer 1: float32"),
    ],
)
def test_other_rotary_frequencies_are_refused(tmp_path, capsys, layer, inv_freq, message):
    _, _, path = float16_esm2_file(tmp_path)
    obj = torch.load(path, weights_only=False)
    key = f"encoder.sentence_encoder.layers.{layer}.self_attn.rot_emb.inv_freq"
    obj["model"][key] = inv_freq(obj["model"][key])
    torch.save(obj, tmp_path / "odd.pt")
    assert main(["convert-esm", str(tmp_path / "odd.pt"), str(tmp_path / "o.ckpt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert str(tmp_path / "odd.pt") in err
    assert not (tmp_path / "o.ckpt").exists()
