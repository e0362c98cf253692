"""`--layers` in embed and attention: one numbering (proteinperf.layers, ESM's repr_layers).

0 = the token embeddings, L = transformer block L, -1 = the last block, in both commands;
attention refuses 0 (the embeddings have no attention)."""

from __future__ import annotations

import pytest
import torch

from proteinperf.analysis.attention_maps import attention_maps, frame_sequence
from proteinperf.attention import softmax_attention_weights
from proteinperf.cli import build_parser
from proteinperf.data import get_alphabet
from proteinperf.errors import ConfigError
from proteinperf.inference.embed import resolve_layers as embed_layers
from proteinperf.layers import block_index, resolve_layers
from proteinperf.model import ModelConfig, PerformerLM

N_LAYERS = 3


def test_both_commands_parse_the_same_numbers():
    parser = build_parser()
    embed = parser.parse_args(["embed", "m.pt", "in.fa", "out.h5", "--layers", "-1", "2"])
    attention = parser.parse_args(["attention", "m.pt", "in.fa", "out/", "--layers", "-1", "2"])
    assert embed.layers == attention.layers == [-1, 2]


def test_one_numbering_for_embeddings_and_attention():
    assert embed_layers([0, 1, -1, -4], N_LAYERS) == [0, 1, 3]  # -4: the embeddings again
    for layer in range(1, N_LAYERS + 1):
        assert resolve_layers([layer], N_LAYERS, embeddings=False) == [layer]
        assert embed_layers([layer], N_LAYERS) == [layer]
        assert block_index(layer) == layer - 1
    for back in range(1, N_LAYERS + 1):  # -1 = block n in both, -n = block 1
        expected = [N_LAYERS + 1 - back]
        assert resolve_layers([-back], N_LAYERS, embeddings=False) == expected
        assert embed_layers([-back], N_LAYERS) == expected
    assert resolve_layers(None, N_LAYERS, embeddings=False) == [1, 2, 3]
    assert resolve_layers(None, N_LAYERS) == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [0, -(N_LAYERS + 1)])
def test_attention_refuses_the_embeddings_with_the_reason(bad):
    with pytest.raises(ConfigError, match=r"layer 0 is the token embeddings, which have no"):
        resolve_layers([bad], N_LAYERS, embeddings=False)


@pytest.mark.parametrize("bad", [N_LAYERS + 1, -(N_LAYERS + 2)])
def test_out_of_range_names_the_range(bad):
    with pytest.raises(ConfigError, match=rf"layer {bad} does not exist.*layers 1\.\.{N_LAYERS}"):
        resolve_layers([bad], N_LAYERS, embeddings=False)
    with pytest.raises(ConfigError, match=rf"layers 0\.\.{N_LAYERS} \(0 = token embeddings\)"):
        embed_layers([bad], N_LAYERS)


def test_attention_layer_l_is_the_block_whose_output_is_embed_layer_l():
    """The model's forward numbers blocks once (1..n) for both its representations and its
    attention inputs; attention_maps(layers=[L]) is block L's attention."""
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_layers=N_LAYERS, n_heads=2, d_ff=32, nb_features=8)
    model = PerformerLM(config).eval()
    tokens = frame_sequence("MKTAYIAKQR", get_alphabet())
    with torch.no_grad():
        out = model(tokens, repr_layers=range(N_LAYERS + 1), return_attention_inputs=True)
    assert sorted(out["attention_inputs"]) == list(range(1, N_LAYERS + 1))
    assert sorted(out["representations"]) == list(range(N_LAYERS + 1))
    for layer in range(1, N_LAYERS + 1):
        maps = attention_maps(model, tokens, layers=[layer])
        inputs = out["attention_inputs"][layer]
        expected = softmax_attention_weights(inputs["q"], inputs["k"], causal=config.causal)
        torch.testing.assert_close(maps.exact[0], expected[0])
        assert maps.layers == [layer]
    last = attention_maps(model, tokens, layers=[-1])
    torch.testing.assert_close(last.model, attention_maps(model, tokens, layers=[N_LAYERS]).model)
    assert not torch.allclose(last.model, attention_maps(model, tokens, layers=[1]).model)


def test_per_layer_figure_reads_old_and_new_studies():
    """Studies written before 0.2 numbered layers from 0; the figure puts both at blocks 1..n."""
    from proteinperf.analysis.plots import per_layer_figure

    row = {"similarity": {"pearson": 0.1, "ci95": [0.0, 0.2]}}
    new = {"model": {"per_layer": [dict(row, layer=1), dict(row, layer=2)]}}
    new["layer_numbering"] = "esm"
    old = {"model": {"per_layer": [dict(row, layer=0), dict(row, layer=1)]}}
    for study in (new, old):
        ax = per_layer_figure(study).axes[0]
        # the model's points sit 0.15 left of their layer
        assert list(ax.lines[0].get_xdata()) == pytest.approx([0.85, 1.85])


def test_empty_layer_lists():
    assert embed_layers([], N_LAYERS) == []  # embed: nothing asked, nothing stored (as before)
    with pytest.raises(ConfigError, match="no layers given"):
        resolve_layers([], N_LAYERS, embeddings=False)
