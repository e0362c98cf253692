import pytest
import torch

from proteinperf.analysis.attention_maps import (
    approximation_curve,
    approximation_error,
    attention_inputs,
    attention_maps,
    frame_sequence,
    layer_attention,
    untrained_control,
)
from proteinperf.attention import favor_attention
from proteinperf.data import get_alphabet

ALPHABET = get_alphabet()
SEQUENCE = "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF"  # start of HBA_HUMAN


def _captured_layer_io(model, tokens, index):
    """(input, output) of attention layer ``index`` in a real forward pass."""
    seen = {}

    def hook(module, args, output):
        seen["x"], seen["y"] = args[0], output[0]

    handle = model.attention_layers[index].register_forward_hook(hook)
    with torch.no_grad():
        model(tokens)
    handle.remove()
    return seen["x"], seen["y"]


@pytest.mark.parametrize(
    "attention,causal",
    [
        ("favor_softmax", False),
        ("favor_relu", False),
        ("favor_softmax", True),
        ("favor_softmax_hyp", True),
    ],
)
def test_implicit_matrix_reproduces_the_layer(tiny_model, attention, causal):
    model = tiny_model(attention, causal)
    tokens = frame_sequence(SEQUENCE, ALPHABET)
    inputs = attention_inputs(model, tokens)
    for index, layer in enumerate(model.attention_layers):
        x, y = _captured_layer_io(model, tokens, index)
        q, k = inputs[index]
        v = layer._split_heads(layer.v_proj(x))
        favor, exact = layer_attention(layer, q, k)
        expected = favor_attention(q, k, v, layer.features, causal=causal, kernel=layer.kernel)
        torch.testing.assert_close(favor @ v, expected, atol=1e-5, rtol=1e-4)
        b, h, length, dh = v.shape
        merged = (favor @ v).transpose(1, 2).reshape(b, length, h * dh)
        torch.testing.assert_close(layer.out_proj(merged), y, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(exact.sum(-1), torch.ones(b, h, length))


def test_causal_maps_are_lower_triangular(tiny_model):
    model = tiny_model("favor_softmax", causal=True)
    maps = attention_maps(model, frame_sequence(SEQUENCE, ALPHABET), layers=[2], heads=[0, 3])
    assert maps.favor.shape == maps.exact.shape == (1, 2, len(SEQUENCE) + 2, len(SEQUENCE) + 2)
    assert maps.layers == [2] and maps.heads == [0, 3] and maps.causal
    for m in (maps.favor, maps.exact):
        assert torch.all(m.triu(1) == 0)
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))


def test_exact_model_has_no_favor_map_and_bad_indices_fail(tiny_model):
    model = tiny_model("softmax")
    maps = attention_maps(model, frame_sequence("ACDE", ALPHABET))
    assert maps.favor is None and maps.model is maps.exact and maps.kernel is None
    assert maps.layers == [1, 2]  # numbered as embed: 1 = the first block
    with pytest.raises(ValueError, match="layer 3 does not exist: this model has layers 1..2"):
        attention_maps(model, frame_sequence("ACDE", ALPHABET), layers=[3])
    with pytest.raises(ValueError, match="layer 0 is the token embeddings"):
        attention_maps(model, frame_sequence("ACDE", ALPHABET), layers=[0])


def test_approximation_error_metrics():
    eye = torch.eye(4).expand(2, 4, 4)
    shifted = eye.roll(1, dims=-1)
    zero = approximation_error(eye, eye)
    assert all(torch.all(v == 0) for v in zero.values())
    disjoint = approximation_error(shifted, eye)
    torch.testing.assert_close(disjoint["tv"], torch.ones(2))
    torch.testing.assert_close(disjoint["mse"], torch.full((2,), 8 / 16))
    torch.testing.assert_close(disjoint["rel_frobenius"], torch.full((2,), 2**0.5))


def test_control_is_seeded_and_leaves_global_rng_alone(tiny_model):
    config = tiny_model().config
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = untrained_control(config, seed=5)
    after = torch.rand(1)
    b = untrained_control(config, seed=5)
    assert torch.equal(before, after)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    c = untrained_control(config, seed=6)
    assert not torch.equal(a.attention_layers[0].features, c.attention_layers[0].features)


def test_more_features_approximate_better():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 64, 16, generator=g) * 0.7
    k = torch.randn(1, 2, 64, 16, generator=g) * 0.7
    errors = approximation_curve(q, k, [4, 256], kernel="softmax", n_draws=3)
    assert errors.shape == (2, 3)
    assert errors[1].mean() < errors[0].mean() / 4


@pytest.mark.parametrize("attention,causal", [("favor_relu", False), ("softmax", True)])
def test_softmax_estimate_of_any_model_converges_to_its_exact_softmax(
    tiny_model, attention, causal
):
    """ReLU or exact models estimate no softmax themselves; FAVOR+ on their own Q and K does."""
    from proteinperf.analysis import softmax_estimate
    from proteinperf.errors import ConfigError

    model = tiny_model(attention, causal)
    tokens = frame_sequence(SEQUENCE, ALPHABET)
    exact = attention_maps(model, tokens, layers=[2], heads=[1]).exact
    errors = [
        approximation_error(softmax_estimate(model, tokens, [2], [1], m), exact)["tv"].item()
        for m in (4, 4096)
    ]
    assert errors[1] < 0.5 * errors[0] and errors[1] < 0.05
    with pytest.raises(ConfigError, match="estimates no softmax"):
        softmax_estimate(model, tokens, kernel="relu")
