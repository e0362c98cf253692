import dataclasses
import itertools

import helpers
import pytest
import torch

from proteinperf.attention import favor_attention_weights, softmax_attention_weights
from proteinperf.model import ATTENTIONS, POSITIONALS, ModelConfig, PerformerLM, mix_seed

TINY = {**helpers.TINY, "nb_features": 32, "max_len": 64}


def tiny(**overrides) -> PerformerLM:
    torch.manual_seed(0)
    return PerformerLM(ModelConfig(**{**TINY, **overrides})).eval()


def random_tokens(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 29, (batch, length), generator=g)
    tokens[:, 0] = 0
    tokens[:, -1] = 2
    return tokens


def test_defaults_match_alphabet():
    from proteinperf.data.alphabet import get_alphabet

    alphabet, config = get_alphabet(), ModelConfig()
    assert config.vocab_size == len(alphabet)
    assert (config.padding_idx, config.mask_idx, config.cls_idx, config.eos_idx) == (
        alphabet.padding_idx,
        alphabet.mask_idx,
        alphabet.cls_idx,
        alphabet.eos_idx,
    )


@pytest.mark.parametrize(
    "attention", ["softmax", "favor_softmax", "favor_relu", "favor_softmax_hyp", "favor_trig"]
)
@pytest.mark.parametrize("positional", POSITIONALS)
def test_causal_never_sees_the_future(attention, positional):
    model = tiny(attention=attention, positional=positional, causal=True)
    tokens = random_tokens(1, 20)
    with torch.no_grad():
        before = model(tokens)["logits"]
        for t in (3, 11):
            changed = tokens.clone()
            changed[0, t + 1] = 5 if tokens[0, t + 1] != 5 else 6
            after = model(changed)["logits"]
            torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=1e-5, rtol=0)
            assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :], atol=1e-5)


@pytest.mark.parametrize("attention", ["softmax", "favor_softmax", "favor_relu"])
@pytest.mark.parametrize("causal", [False, True])
def test_invariant_to_padding(attention, causal):
    model = tiny(attention=attention, causal=causal, token_dropout=True)
    short, long = random_tokens(1, 9, seed=1), random_tokens(1, 15, seed=2)
    short[0, 4] = model.config.mask_idx
    batch = torch.full((2, 15), model.config.padding_idx)
    batch[0, :9], batch[1] = short[0], long[0]
    with torch.no_grad():
        alone = model(short, repr_layers=[0, 1, 2])
        padded = model(batch, repr_layers=[0, 1, 2])
    torch.testing.assert_close(padded["logits"][0, :9], alone["logits"][0], atol=1e-5, rtol=1e-5)
    for i in (0, 1, 2):
        torch.testing.assert_close(
            padded["representations"][i][0, :9],
            alone["representations"][i][0],
            atol=1e-5,
            rtol=1e-5,
        )
    assert (padded["representations"][0][0, 9:] == 0).all()


def test_explicit_padding_mask_equals_default():
    model = tiny(attention="favor_softmax")
    tokens = random_tokens(2, 12)
    tokens[1, 8:] = model.config.padding_idx
    with torch.no_grad():
        a = model(tokens)["logits"]
        b = model(tokens, padding_mask=tokens != model.config.padding_idx)["logits"]
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_features_redraw_is_seeded_persistent_and_fixed_in_eval():
    model = tiny(attention="favor_softmax")
    layers = model.attention_layers
    assert all(layer.kernel == "softmax" and layer.causal is False for layer in layers)
    assert layers[0].features.shape == (32, 8)

    model.redraw_features(seed=7, step=1000)
    first = [layer.features.clone() for layer in layers]
    torch.manual_seed(123)  # the global RNG must not matter
    model.redraw_features(seed=7, step=1000)
    for layer, f in zip(layers, first):
        assert torch.equal(layer.features, f)
    assert not torch.equal(first[0], first[1])  # layers differ

    model.redraw_features(seed=7, step=2000)
    assert not torch.equal(layers[0].features, first[0])
    model.redraw_features(seed=8, step=1000)
    assert not torch.equal(layers[0].features, first[0])

    state = model.state_dict()
    assert "layers.0.self_attn.features" in state
    other = tiny(attention="favor_softmax")
    other.load_state_dict(state)
    tokens = random_tokens(2, 16)
    with torch.no_grad():
        out1, out2 = model(tokens)["logits"], model(tokens)["logits"]
        out3 = other(tokens)["logits"]
    assert torch.equal(out1, out2)
    assert torch.equal(out1, out3)


def test_maybe_redraw_follows_interval():
    model = tiny(attention="favor_relu", redraw_interval=10)
    assert model.maybe_redraw_features(0, 20)
    assert not model.maybe_redraw_features(0, 25)
    assert not tiny(attention="softmax").maybe_redraw_features(0, 0)
    assert not tiny(attention="favor_relu", redraw_interval=0).maybe_redraw_features(0, 0)


def test_mix_seed_is_stable():
    assert mix_seed(0, 0, 0) == mix_seed(0, 0, 0)
    assert len({mix_seed(0, s, l) for s in range(50) for l in range(8)}) == 400
    assert 0 <= mix_seed(-1, 2**70, 3) < 2**63
    assert mix_seed(1, 2, 3) == 8461649343682384916  # pinned: must never change


@pytest.mark.parametrize("attention,positional", list(itertools.product(ATTENTIONS, POSITIONALS)))
def test_every_combination_trains(attention, positional):
    causal = attention != "favor_softmax_opt" and positional == "learned"
    model = tiny(
        attention=attention,
        positional=positional,
        causal=causal,
        dropout=0.1,
        lm_head="linear" if positional == "sinusoidal" else "esm",
        tie_embeddings=positional != "learned",
    )
    model.train()
    tokens = random_tokens(2, 13)
    tokens[1, 10:] = model.config.padding_idx
    out = model(tokens, repr_layers=[0, 1, 2])
    assert out["logits"].shape == (2, 13, 33)
    assert set(out["representations"]) == {0, 1, 2}
    loss = torch.nn.functional.cross_entropy(out["logits"].flatten(0, 1), tokens.flatten())
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_representations_follow_esm_convention():
    model = tiny(attention="softmax")
    tokens = random_tokens(1, 10)
    with torch.no_grad():
        out = model(tokens, repr_layers=[0, 1, 2])
    last = out["representations"][2]
    # after the final LayerNorm: zero mean, unit variance before the affine (ones/zeros at init)
    torch.testing.assert_close(last.mean(-1), torch.zeros(1, 10), atol=1e-5, rtol=0)
    assert set(out["representations"]) == {0, 1, 2}


@pytest.mark.parametrize("attention", ["softmax", "favor_softmax", "favor_relu"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_inputs_reproduce_the_layer(attention, causal):
    model = tiny(attention=attention, causal=causal)
    tokens = random_tokens(2, 11)
    tokens[1, 7:] = model.config.padding_idx
    mask = tokens != model.config.padding_idx
    captured = {}
    layer = model.attention_layers[1]
    hook = layer.register_forward_hook(lambda m, args, out: captured.update(x=args[0], y=out[0]))
    with torch.no_grad():
        out = model(tokens, return_attention_inputs=True)
    hook.remove()
    inputs = out["attention_inputs"][2]
    assert set(out["attention_inputs"]) == {1, 2} and inputs["causal"] is causal
    q, k = inputs["q"], inputs["k"]
    assert q.shape == (2, 4, 11, 8)
    if layer.kernel is None:
        weights = softmax_attention_weights(q, k, causal, mask)
    else:
        weights = favor_attention_weights(q, k, layer.features, causal, layer.kernel, mask)
    v = layer._split_heads(layer.v_proj(captured["x"]))
    y = layer.out_proj((weights @ v).transpose(1, 2).reshape(2, 11, 32))
    torch.testing.assert_close(y[0], captured["y"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y[1, :7], captured["y"][1, :7], atol=1e-5, rtol=1e-4)


def test_tied_embeddings_share_and_count_once():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert untied.num_parameters() - tied.num_parameters() == 33 * 32
    assert "lm_head.weight" not in tied.state_dict()


def test_learned_positions_reject_long_sequences():
    with pytest.raises(ValueError, match="max_len"):
        tiny(positional="learned", max_len=8)(random_tokens(1, 9))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(d_model=30, n_heads=4), "divisible"),
        (dict(attention="favor_softmax_opt", causal=True), "causal"),
        (dict(attention="performer"), "attention must be"),
        (dict(positional="alibi"), "positional"),
        (dict(lm_head="mlp"), "lm_head"),
        (dict(feature_scaling="unit"), "feature_scaling"),
        (dict(attention="favor_trig", nb_features=31), "even"),
        (dict(dropout=1.0), "dropout"),
        (dict(padding_idx=40), "padding_idx"),
        (dict(d_model=36, n_heads=4), "rotary"),
        (dict(redraw_interval=-1), "redraw_interval"),
        (dict(rotary_inv_freq_dtype="bfloat16"), "rotary_inv_freq_dtype"),
    ],
)
def test_config_validation(overrides, match):
    config = ModelConfig(**{**TINY, **overrides})
    with pytest.raises(ValueError, match=match):
        config.validate()
    with pytest.raises(ValueError, match=match):
        PerformerLM(config)


def test_config_from_dict_round_trip_and_unknown_keys():
    config = ModelConfig(**TINY)
    assert ModelConfig.from_dict(dataclasses.asdict(config)) == config
    with pytest.raises(ValueError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({**dataclasses.asdict(config), "colour": "red"})


def test_one_token_steps_take_the_module_path_in_train_mode(monkeypatch):
    # The hook-free one-token branch (Block.token) has no dropout: only eval mode may take it.
    from proteinperf.model import Block

    model = tiny(causal=True, attention="favor_relu", dropout=0.1)
    taken = []
    real = Block.token
    monkeypatch.setattr(Block, "token", lambda *a: taken.append(1) or real(*a))
    tokens = torch.tensor([[0, 5, 6]])
    with torch.no_grad():
        _, state = model.step(tokens[:, :2])
        model.step(tokens[:, 2:], state)
        assert taken, "eval mode decodes through the one-token branch"
        taken.clear()
        model.train()
        _, state = model.step(tokens[:, :2])
        model.step(tokens[:, 2:], state)
    assert not taken
