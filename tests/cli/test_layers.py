"""`--layers` in embed and attention: the same blocks by the same numbers where they overlap.

embed counts as esm-extract (0 = token embeddings, L = output of block L); attention counts the
blocks from 0; -1 is the last block in both, and embed's layer L is attention's block L-1."""

from __future__ import annotations

import pytest
import torch

from proteinperf.analysis.attention_maps import attention_maps, frame_sequence, select
from proteinperf.cli import build_parser
from proteinperf.data import get_alphabet
from proteinperf.inference.embed import resolve_layers
from proteinperf.model import ModelConfig, PerformerLM

N_LAYERS = 3


def test_negative_layers_parse_and_name_the_last_block():
    parser = build_parser()
    embed = parser.parse_args(["embed", "m.pt", "in.fa", "out.h5", "--layers", "-1", "0"])
    attention = parser.parse_args(["attention", "m.pt", "in.fa", "out/", "--layers", "-1", "0"])
    assert embed.layers == attention.layers == [-1, 0]
    assert resolve_layers([-1], N_LAYERS) == [N_LAYERS]  # output of the last block
    assert select([-1], N_LAYERS, "layers") == [N_LAYERS - 1]  # the last block
    for block in range(N_LAYERS):  # embed's layer L is the output of attention's block L-1
        assert resolve_layers([block + 1], N_LAYERS) == [select([block], N_LAYERS, "x")[0] + 1]
        assert select([block - N_LAYERS], N_LAYERS, "x") == [block]


@pytest.mark.parametrize("bad", [N_LAYERS, -N_LAYERS - 1])
def test_attention_layers_out_of_range_fail(bad):
    with pytest.raises(ValueError, match=rf"layers must be in 0..{N_LAYERS - 1} \(or -"):
        select([bad], N_LAYERS, "layers")


def test_attention_maps_of_layer_minus_one_are_the_last_blocks():
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_layers=N_LAYERS, n_heads=2, d_ff=32, nb_features=8)
    model = PerformerLM(config).eval()
    tokens = frame_sequence("MKTAYIAKQR", get_alphabet())
    last = attention_maps(model, tokens, layers=[-1])
    explicit = attention_maps(model, tokens, layers=[N_LAYERS - 1])
    torch.testing.assert_close(last.model, explicit.model)
    assert not torch.allclose(last.model, attention_maps(model, tokens, layers=[0]).model)
