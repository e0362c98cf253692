"""The LightningModule on its own: objectives, metrics, schedule, causality and padding."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY

from proteinperf.lightning_module import IGNORE, ProteinLM
from proteinperf.optim import LRSchedule


def module(**model) -> ProteinLM:
    torch.manual_seed(0)
    causal = model.get("causal", False)
    return ProteinLM({**TINY, **model}, objective="clm" if causal else "mlm").eval()


def tokens(b=2, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(4, 24, (b, length), generator=g)
    t[:, 0], t[:, -1] = 0, 2
    return t


@pytest.mark.parametrize("attention", ["softmax", "favor_softmax", "favor_relu"])
def test_causal_module_never_sees_the_future(attention):
    m = module(attention=attention, causal=True)
    x = tokens()
    y = x.clone()
    y[:, 11] = (y[:, 11] + 3) % 20 + 4
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[:, :11], b[:, :11], atol=1e-5)
    assert not torch.allclose(a[:, 11:], b[:, 11:], atol=1e-5)


@pytest.mark.parametrize("attention", ["softmax", "favor_relu"])
def test_bidirectional_module_ignores_padding(attention):
    m = module(attention=attention)
    x = tokens(1, 15)
    padded = torch.cat([x, torch.ones(1, 7, dtype=torch.long)], 1)
    with torch.no_grad():
        alone = m(x, x != 1)
        batch = m(padded, padded != 1)
    assert torch.allclose(alone, batch[:, :15], atol=1e-5)


def test_objective_must_match_causality():
    with pytest.raises(ValueError, match="causal"):
        ProteinLM({**TINY, "causal": False}, objective="clm")
    with pytest.raises(ValueError, match="bidirectional"):
        ProteinLM({**TINY, "causal": True}, objective="mlm")
    with pytest.raises(ValueError, match="optim"):
        ProteinLM(TINY, optim={"lr": 1e-3, "momentum": 0.9})


def test_loss_counts_only_targets_and_unigram_baseline():
    m = module()
    x = tokens(2, 12)
    targets = torch.full_like(x, IGNORE)
    targets[0, 3], targets[1, 5] = 5, 6
    batch = {"tokens": x, "padding_mask": x != 1, "targets": targets}
    logits = m(x)
    expected = torch.nn.functional.cross_entropy(logits[[0, 1], [3, 5]], torch.tensor([5, 6]))
    m.unigram_log_probs = torch.log_softmax(torch.arange(33.0), 0)
    loss = m._step(batch, "val")
    assert torch.allclose(loss, expected)
    assert torch.allclose(m.val_loss.compute(), expected)
    log_p = m.unigram_log_probs
    assert torch.allclose(m.unigram_loss.compute(), -(log_p[5] + log_p[6]) / 2)
    assert float(m.unigram_acc.compute()) == 0.0  # argmax is token 32, never a target here


def test_redraw_schedule_is_a_function_of_seed_and_step():
    m = module(attention="favor_relu", redraw_interval=4)
    layer = m.model.attention_layers[0]
    m.seed = 7
    drawn = {}
    for step in range(9):
        m.redraw_if_due(step)
        drawn[step] = layer.features.clone()
    assert torch.equal(drawn[0], drawn[3]) and not torch.equal(drawn[3], drawn[4])
    assert torch.equal(drawn[4], drawn[7]) and not torch.equal(drawn[7], drawn[8])
    other = module(attention="favor_relu", redraw_interval=4)
    other.model.redraw_features(seed=7, step=4)
    assert torch.equal(other.model.attention_layers[0].features, drawn[4])


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "inverse_sqrt"])
def test_lr_schedules(schedule):
    f = LRSchedule(schedule, warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    end = {"constant": 1.0, "linear": 0.1, "cosine": 0.1, "inverse_sqrt": math.sqrt(10 / 110)}
    assert f(110) == pytest.approx(end[schedule])
    assert all(f(s) >= f(s + 1) - 1e-12 for s in range(10, 200))


def test_weight_decay_skips_norms_and_biases():
    m = module()

    class _T:
        estimated_stepping_batches = 100

    m._trainer = _T()  # configure_optimizers reads only the step estimate
    opt = m.configure_optimizers()["optimizer"]
    m._trainer = None
    decay, no_decay = opt.param_groups
    assert isinstance(opt, torch.optim.AdamW)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-9


def test_train_small_model_saves_a_loadable_model(tmp_path, corpus_cache):
    from helpers import SAMPLE

    from proteinperf.checkpoint import checkpoint_metadata, load_model
    from proteinperf.lightning_module import train_small_model

    out = train_small_model(
        SAMPLE, tmp_path / "small.pt", TINY, steps=2, cache_dir=corpus_cache, max_length=32
    )
    model, _ = load_model(out)
    assert model.config.attention == "favor_softmax" and model.config.d_model == TINY["d_model"]
    assert checkpoint_metadata(out)["steps"] == 2
