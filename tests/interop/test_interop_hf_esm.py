"""convert-esm on transformers' ESM-2 directories: the parity the fair-esm tests ask, against
transformers' own EsmForMaskedLM (randomly initialised, saved with save_pretrained)."""

import json

import esm
import pytest
import torch

from proteinperf.checkpoint import load_model, read_checkpoint
from proteinperf.cli import main
from proteinperf.data.alphabet import get_alphabet
from proteinperf.inference.contacts import predict_contacts
from proteinperf.interop.esm import ESMConversionError
from proteinperf.interop.hf_esm import convert_hf_esm, read_hf_esm
from proteinperf.model import rotary_inv_freq

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

LAYERS, DIM, HEADS = 2, 64, 4
SEQUENCES = [
    ("a", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"),
    ("b", "KALTARQQEVFDLIRD"),
    ("c", "MSEQNNTEMTFQIQRIYTKDISFEAPNAPHVFQKDWXBZ"),
]
MASKED = [(0, 3), (0, 10), (1, 5), (2, 1)]


def esm2_config(**changes):
    """ESM-2's settings as the published configs have them, at a small size."""
    settings = dict(
        vocab_size=33,
        mask_token_id=32,
        pad_token_id=1,
        hidden_size=DIM,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * DIM,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=True,
        layer_norm_eps=1e-5,
    )
    return transformers.EsmConfig(**{**settings, **changes})


def random_hf_esm2(seed=0, **changes):
    torch.manual_seed(seed)
    model = transformers.EsmForMaskedLM(esm2_config(**changes))
    with torch.no_grad():  # LayerNorms, biases and the contact head away from their init
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            if ".query." in name or ".key." in name:
                p.mul_(8.0)  # attention far from uniform, so contacts have structure
        model.esm.contact_head.regression.weight.normal_(0.0, 3.0)
    model.config._attn_implementation = "eager"  # attention weights, for the contact head
    return model.eval()


def fair_esm_vocab(directory):
    """EsmTokenizer's vocab.txt for ESM-2: fair-esm's alphabet, one token a line."""
    tokens = esm.data.Alphabet.from_architecture("ESM-1b").all_toks
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return directory / "vocab.txt"


def tokens_and_mask(masked=()):
    _, _, tokens = get_alphabet().get_batch_converter()(SEQUENCES)
    for row, col in masked:
        tokens[row, col] = get_alphabet().mask_idx
    return tokens, (tokens != get_alphabet().padding_idx).long()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = random_hf_esm2()
    directory = tmp_path_factory.mktemp("hf") / "esm2_t2_tiny"
    model.save_pretrained(directory)
    tokenizer = transformers.EsmTokenizer(str(fair_esm_vocab(directory)))
    tokenizer.save_pretrained(directory)
    return model, directory


def test_tokenizer_ids_are_our_alphabet(hf_dir):
    _, directory = hf_dir
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(33)] == get_alphabet().tokens
    encoded = tokenizer([s for _, s in SEQUENCES], padding=True, return_tensors="pt")
    tokens, mask = tokens_and_mask()
    assert torch.equal(encoded["input_ids"], tokens)
    assert torch.equal(encoded["attention_mask"], mask)
    assert (
        tokenizer.mask_token_id
        == get_alphabet().mask_idx
        == json.loads((directory / "config.json").read_text())["mask_token_id"]
    )


@pytest.mark.parametrize("masked", [False, True])
def test_softmax_conversion_matches_transformers(tmp_path, hf_dir, masked):
    model, directory = hf_dir
    ours, _ = load_model(convert_hf_esm(directory, tmp_path / "c.ckpt"))
    tokens, mask = tokens_and_mask(MASKED if masked else ())
    assert not mask.all()  # padded batch
    layers = list(range(LAYERS + 1))
    with torch.no_grad():
        expected = model(tokens, attention_mask=mask, output_hidden_states=True)
        got = ours(tokens, repr_layers=layers)
    torch.testing.assert_close(got["logits"], expected.logits, atol=1e-4, rtol=0)
    # transformers' hidden states: the embeddings, then each block's output, the last one
    # after emb_layer_norm_after, as fair-esm's representations
    hidden = expected.hidden_states
    assert len(hidden) == LAYERS + 1
    final = model.esm.encoder.emb_layer_norm_after
    assert not torch.allclose(final(hidden[LAYERS - 1]), hidden[LAYERS - 1])
    real = mask.bool()
    for i in layers:
        torch.testing.assert_close(
            got["representations"][i][real], hidden[i][real], atol=1e-4, rtol=0
        )


def test_head_weights_and_contacts_match_transformers(tmp_path, hf_dir):
    model, directory = hf_dir
    out = convert_hf_esm(directory, tmp_path / "c.ckpt")
    ours, _ = load_model(out)
    tokens, mask = tokens_and_mask()
    with torch.no_grad():
        expected = model(tokens, attention_mask=mask, output_attentions=True).attentions
        got = ours(tokens, need_head_weights=True)["attentions"]
        hf_contacts = model.predict_contacts(tokens, mask)
    pair = (mask[:, :, None] * mask[:, None, :]).bool()[:, None, None]  # zero at padding, as ours
    torch.testing.assert_close(got, torch.stack(expected, 1) * pair, atol=1e-5, rtol=0)
    regression = read_checkpoint(out)["contact_regression"]
    state = model.esm.contact_head.regression.state_dict()
    assert all(torch.equal(regression[k], state[k]) for k in ("weight", "bias"))
    for row, (_, seq) in enumerate(SEQUENCES):
        want = hf_contacts[row, : len(seq), : len(seq)]
        assert want.std() > 0.05  # a map with structure, not a constant
        torch.testing.assert_close(predict_contacts(ours, seq, regression), want, atol=1e-5, rtol=0)


def test_checkpoint_records_source_and_settings(tmp_path, hf_dir):
    _, directory = hf_dir
    obj = read_checkpoint(convert_hf_esm(directory, tmp_path / "c.ckpt", seed=4))
    assert obj["source"] == {
        "kind": "transformers-esm",
        "name": "esm2_t2_tiny",
        "feature_seed": 4,
    }
    config = obj["model_config"]
    assert config["token_dropout"] is True and config["layer_norm_eps"] == 1e-5
    assert config["tie_embeddings"] is True and config["d_ff"] == 4 * DIM


def test_pytorch_bin_untied_without_token_dropout(tmp_path):
    """The older layout (pytorch_model.bin, LayerNorm .weight/.bias, position ids and an unused
    position table), an untied decoder, token dropout off and a config.json without
    rope_theta."""
    model = random_hf_esm2(seed=1, token_dropout=False, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.decoder.weight.normal_()
    directory = tmp_path / "bin"
    model.save_pretrained(directory)
    (directory / "model.safetensors").unlink()
    unused = {  # what older transformers saved beside the weights, unused by rotary models
        "esm.embeddings.position_ids": torch.arange(1026)[None],
        "esm.embeddings.position_embeddings.weight": torch.randn(1026, DIM),
    }
    torch.save({**model.state_dict(), **unused}, directory / "pytorch_model.bin")
    config = json.loads((directory / "config.json").read_text())
    del config["rope_theta"]
    (directory / "config.json").write_text(json.dumps(config))
    assert any(k.endswith("LayerNorm.weight") for k in model.state_dict())

    ours, _ = load_model(convert_hf_esm(directory, tmp_path / "c.ckpt"))
    assert ours.config.tie_embeddings is False and ours.config.token_dropout is False
    tokens, mask = tokens_and_mask(MASKED)
    with torch.no_grad():
        want = model(tokens, attention_mask=mask).logits
        torch.testing.assert_close(ours(tokens)["logits"], want, atol=1e-4, rtol=0)


def test_sharded_directory_reads_as_one(tmp_path, hf_dir):
    model, directory = hf_dir
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    whole, hparams, contact = read_hf_esm(directory)
    parts, hparams2, contact2 = read_hf_esm(tmp_path / "sharded")
    assert hparams == hparams2 and whole.keys() == parts.keys()
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    assert all(torch.equal(contact[k], contact2[k]) for k in contact)


def test_cli_converts_a_directory_with_favor(tmp_path, hf_dir, capsys):
    _, directory = hf_dir
    out = tmp_path / "favor.ckpt"
    args = ["convert-esm", str(directory), str(out), "--attention", "favor_relu"]
    assert main([*args, "--nb-features", "32", "--seed", "3"]) == 0
    assert str(out) in capsys.readouterr().out
    ours, _ = load_model(out)
    assert ours.config.attention == "favor_relu"
    assert ours.attention_layers[0].features.shape == (32, DIM // HEADS)
    with torch.no_grad():
        assert torch.isfinite(ours(tokens_and_mask()[0])["logits"]).all()


def rewrite(directory, tmp_path, name, config=None, files=None):
    """A copy of ``directory`` with config.json changed and files replaced."""
    copy = tmp_path / name
    copy.mkdir()
    for path in directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    if config is not None:
        base = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps({**base, **config}))
    for file, text in (files or {}).items():
        if text is None:
            (copy / file).unlink()
        else:
            (copy / file).write_text(text)
    return copy


@pytest.mark.parametrize(
    "name, config, files, message",
    [
        ("esm1b", {"position_embedding_type": "absolute"}, None, "ESM-1b-style"),
        ("nopos", {"position_embedding_type": None}, None, "only rotary ESM-2"),
        ("lnbefore", {"emb_layer_norm_before": True}, None, "ESM-1b-style"),
        ("theta", {"rope_theta": 500.0}, None, "rope_theta 500.0"),
        ("bert", {"model_type": "bert"}, None, "not a transformers ESM model"),
        ("mask", {"mask_token_id": 31}, None, "mask_token_id 31, ESM-2's alphabet has 32"),
        ("vocab", None, {"vocab.txt": "<pad>\n<cls>\n"}, "vocab.txt:1: token '<pad>'"),
        ("noconfig", None, {"config.json": None}, "no config.json"),
        ("noweights", None, {"model.safetensors": None}, "no model.safetensors or"),
        ("corrupt", None, {"model.safetensors": "not safetensors"}, "cannot be read"),
    ],
)
def test_refuses_what_is_not_esm2(tmp_path, hf_dir, capsys, name, config, files, message):
    _, directory = hf_dir
    bad = rewrite(directory, tmp_path, name, config, files)
    out = tmp_path / "o.ckpt"
    assert main(["convert-esm", str(bad), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(bad) in err
    assert not out.exists()


def test_refuses_base_model_and_other_rotary_frequencies(tmp_path, hf_dir):
    model, _ = hf_dir
    base = tmp_path / "base"
    model.esm.save_pretrained(base)  # EsmModel: no LM head
    with pytest.raises(ESMConversionError, match="not an EsmForMaskedLM"):
        convert_hf_esm(base, tmp_path / "o.ckpt")
    model2 = random_hf_esm2(seed=2)
    model2.esm.rotary_embeddings.inv_freq.mul_(1.01)
    odd = tmp_path / "odd"
    model2.save_pretrained(odd)
    (odd / "model.safetensors").unlink()
    torch.save(model2.state_dict(), odd / "pytorch_model.bin")
    with pytest.raises(ESMConversionError, match="rotary inv_freq differs"):
        convert_hf_esm(odd, tmp_path / "o.ckpt")
    assert not (tmp_path / "o.ckpt").exists()


@pytest.mark.parametrize("layout", ["safetensors", "per-layer bin"])
def test_float16_directory_converts_with_its_rotary_frequencies(tmp_path, layout):
    """A model saved in float16: transformers loads its rotary inv_freq as stored (rounded to
    float16) and runs with it; so does the converted model. Both compute in float32 from the
    same float16-valued weights: float32's tolerance. The hub's ESM-2 files store one inv_freq
    per layer (older transformers); transformers 5 saves one for all layers."""
    directory = tmp_path / "half"
    model = random_hf_esm2(seed=3).half()
    model.save_pretrained(directory)
    if layout == "per-layer bin":
        state = model.state_dict()
        shared = state.pop("esm.rotary_embeddings.inv_freq")
        for i in range(LAYERS):
            state[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = shared
        (directory / "model.safetensors").unlink()
        torch.save(state, directory / "pytorch_model.bin")
    reference = transformers.EsmForMaskedLM.from_pretrained(directory, dtype=torch.float32)
    inv_freq = reference.esm.rotary_embeddings.inv_freq
    assert inv_freq.dtype == torch.float32 and not torch.equal(inv_freq, rotary_inv_freq(16))

    ours, _ = load_model(convert_hf_esm(directory, tmp_path / "c.ckpt"))
    assert ours.config.rotary_inv_freq_dtype == "float16"
    tokens, mask = tokens_and_mask(MASKED)
    with torch.no_grad():
        expected = reference.eval()(tokens, attention_mask=mask).logits
        torch.testing.assert_close(ours(tokens)["logits"], expected, atol=1e-4, rtol=0)
