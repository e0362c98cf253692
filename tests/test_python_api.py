"""The Python API a fair-esm user expects: batch converter, repr_layers, need_head_weights,
embed_sequences with negative layers, and the README's example run as written."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import ROOT, SEQUENCES, tiny_model, write_fasta

from proteinperf.analysis.attention_maps import attention_maps, frame_sequence
from proteinperf.data.alphabet import get_alphabet
from proteinperf.errors import ConfigError
from proteinperf.inference import embed_sequences
from proteinperf.layers import LayerDict

BATCH = [("a", "MKTAYIAK"), ("b", "MAD"), ("c", "GS<mask>LEDP"), ("d", "wwycpn")]


def model_variants():
    return {
        "favor_relu": tiny_model("favor_relu", weight_scale=5.0),
        "softmax": tiny_model("softmax", weight_scale=5.0),
        "causal": tiny_model("favor_softmax", causal=True, weight_scale=5.0),
    }


def test_batch_converter_frames_pads_and_reads_special_tokens():
    alphabet = get_alphabet()
    labels, strs, tokens = alphabet.get_batch_converter()(BATCH)
    assert labels == ["a", "b", "c", "d"] and strs == [seq for _, seq in BATCH]
    assert tokens.dtype == torch.int64 and tokens.shape == (4, 10)  # 8 residues + <cls>/<eos>
    assert tokens[:, 0].tolist() == [alphabet.cls_idx] * 4
    assert tokens[1].tolist() == [0, *alphabet.encode("MAD"), 2, *[alphabet.padding_idx] * 5]
    assert tokens[2, 3] == alphabet.mask_idx and tokens[2, 8] == alphabet.eos_idx  # 7 tokens
    assert tokens[3, 1:7].tolist() == alphabet.encode("WWYCPN")
    _, _, cut = alphabet.get_batch_converter(truncation_seq_length=4)(BATCH)
    assert cut.shape == (4, 6) and cut[0].tolist() == [0, *alphabet.encode("MKTA"), 2]


def test_batch_converter_gives_fair_esm_tokens():
    esm = pytest.importorskip("esm")
    theirs = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
    upper = [*BATCH[:3], ("d", "WWYCPN")]  # fair-esm reads upper-case residues only
    for converter in (theirs, get_alphabet().get_batch_converter()):
        labels, strs, tokens = converter(upper)
        assert labels == [label for label, _ in upper] and strs == [s for _, s in upper]
    torch.testing.assert_close(get_alphabet().get_batch_converter()(upper)[2], theirs(upper)[2])


@pytest.mark.parametrize("name", ["favor_relu", "softmax", "causal"])
def test_negative_repr_layers_are_the_cli_numbering(name):
    model = model_variants()[name]
    _, _, tokens = get_alphabet().get_batch_converter()(BATCH)
    n = model.config.n_layers
    with torch.no_grad():
        negative = model(tokens, repr_layers=[-1, -(n + 1)])["representations"]
        positive = model(tokens, repr_layers=[n, 0])["representations"]
    assert sorted(negative) == [0, n]
    for layer in (-1, n, 0, -(n + 1)):
        torch.testing.assert_close(negative[layer], positive[layer], atol=0, rtol=0)
    assert -1 in negative and 1 not in negative
    with pytest.raises(KeyError, match="layer 1 was not asked for"):
        negative[1]
    with pytest.raises(ConfigError, match="does not exist"):
        model(tokens, repr_layers=[n + 1])


@pytest.mark.parametrize("name", ["favor_relu", "softmax", "causal"])
def test_need_head_weights_gives_the_maps_the_model_applies(name):
    model = model_variants()[name]
    _, strs, tokens = get_alphabet().get_batch_converter()(BATCH[:2])
    with torch.no_grad():
        out = model(tokens, need_head_weights=True)
        plain = model(tokens)
    attentions = out["attentions"]
    config = model.config
    assert attentions.shape == (2, config.n_layers, config.n_heads, 10, 10)
    torch.testing.assert_close(out["logits"], plain["logits"], atol=0, rtol=0)
    # each protein's maps are those the analysis computes for it alone (FAVOR+ for Performers)
    for row, seq in enumerate(strs):
        width = len(seq) + 2
        alone = attention_maps(model, frame_sequence(seq, get_alphabet())).model
        torch.testing.assert_close(
            attentions[row, :, :, :width, :width], alone, atol=1e-5, rtol=1e-4
        )
        assert (attentions[row, :, :, width:] == 0).all()
        assert (attentions[row, :, :, :, width:] == 0).all()
        sums = attentions[row, :, :, :width].sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-4, rtol=0)
    if config.attention != "softmax":  # not the exact softmax of the same q, k
        exact = attention_maps(model, frame_sequence(strs[0], get_alphabet())).exact
        assert (attentions[0, :, :, :10, :10] - exact).abs().max() > 1e-3


def test_embed_sequences_takes_negative_layers():
    model = tiny_model("favor_relu", weight_scale=5.0)
    n = model.config.n_layers
    seqs = [seq for seq in SEQUENCES.values()]
    negative = embed_sequences(model, seqs, layers=[-1, 0], include=["mean", "per-token"])
    positive = embed_sequences(model, seqs, layers=[n, 0], include=["mean", "per-token"])
    for got, expected in zip(negative, positive):
        assert sorted(got["mean_representations"]) == [0, n]
        for kind in ("mean_representations", "representations"):
            torch.testing.assert_close(got[kind][-1], expected[kind][n], atol=0, rtol=0)
    default = embed_sequences(model, seqs)
    torch.testing.assert_close(
        default[0]["mean_representations"][n], positive[0]["mean_representations"][n]
    )
    with pytest.raises(ConfigError, match="does not exist"):
        embed_sequences(model, seqs, layers=[n + 1])


def test_layer_dict_survives_copy_and_pickle():
    import copy
    import pickle

    reps = LayerDict(2, {0: "emb", 2: "last"})
    for clone in (copy.deepcopy(reps), pickle.loads(pickle.dumps(reps))):
        assert clone[-1] == "last" and clone[-3] == "emb" and dict(clone) == {0: "emb", 2: "last"}


def readme_python_api() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section has one example"
    return blocks[0]


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    write_fasta(tmp_path / "proteins.fasta", SEQUENCES)
    scope: dict = {}
    exec(compile(readme_python_api(), "README.md", "exec"), scope)
    model, strs = scope["model"], scope["strs"]
    n = model.config.n_layers
    length = max(len(get_alphabet().tokenize(s)) for s in strs) + 2
    assert scope["last"].shape == (2, length, model.config.d_model)
    assert scope["attentions"].shape == (2, n, model.config.n_heads, length, length)
    torch.testing.assert_close(
        scope["mean"], scope["vectors"][0]["mean_representations"][n], atol=1e-5, rtol=1e-4
    )
    # the loop ended on the last record of the file: its vector equals embed_sequences'
    expected = embed_sequences(model, [SEQUENCES["seq4"]], layers=[-1])[0]
    np.testing.assert_allclose(
        scope["vector"], expected["mean_representations"][-1].numpy(), atol=1e-5
    )
    assert scope["record_id"] == "seq4" and scope["layer"] == n
