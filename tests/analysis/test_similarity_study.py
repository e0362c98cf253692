"""The amino-acid similarity study: the substitution log-odds, the controls, the intervals and
the signal rule, exactly, on hand-made numbers and tiny models."""

import importlib
import json
import math

import numpy as np
import pytest
import torch
from helpers import tiny_model

from proteinperf.analysis.similarity import AMINO_ACIDS, blosum62, off_diagonal_pairs, r_text
from proteinperf.analysis.similarity_study import (
    composition,
    cosine_similarity,
    embedding_block,
    finish_block,
    frequency_matrix,
    partial_correlation,
    shared_inputs,
    untrained_envelope,
    weighted_pearson,
)
from proteinperf.analysis.substitution import (
    SubstitutionStats,
    log_odds,
    substitution_statistics,
)
from proteinperf.data import get_alphabet

ALPHABET = get_alphabet()
# the modules (the package's names of the same spelling are their functions)
attention_maps, blosum_study, similarity_study = (
    importlib.import_module(f"proteinperf.analysis.{name}")
    for name in ("attention_maps", "blosum_study", "similarity_study")
)
PROTEINS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MADEFWYCPNGSHMLEDPVDAFQ", "MSTNQKRHDE"]


def test_log_odds_of_a_symmetric_distribution_by_hand():
    # Two residues seen twice each; P(b | a) = 0.75 on the diagonal: q = [[3/8, 1/8], [1/8, 3/8]],
    # p = [1/2, 1/2], s = 2 log2(q / p p).
    s = log_odds([[1.5, 0.5], [0.5, 1.5]], [2, 2])
    expected = np.array([[2 * math.log2(1.5), -2.0], [-2.0, 2 * math.log2(1.5)]])
    np.testing.assert_allclose(s, expected, rtol=1e-12)


def test_log_odds_of_an_asymmetric_distribution_by_hand():
    # f = [3/4, 1/4]; P(.|0) = [0.8, 0.2], P(.|1) = [0.5, 0.5]; joint [[0.6, 0.15], [0.125,
    # 0.125]], symmetrised q01 = 0.1375, marginals p = [0.7375, 0.2625].
    s = log_odds([[2.4, 0.6], [0.5, 0.5]], [3, 1])
    assert s[0, 1] == s[1, 0] == pytest.approx(2 * math.log2(0.1375 / (0.7375 * 0.2625)))
    assert s[0, 0] == pytest.approx(2 * math.log2(0.6 / 0.7375**2))
    assert s[1, 1] == pytest.approx(2 * math.log2(0.125 / 0.2625**2))


def test_log_odds_is_symmetric_and_unseen_residues_are_nan():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 50, size=20).astype(float)
    counts[5] = 0
    pred = rng.dirichlet(np.ones(20), size=20) * counts[:, None]
    s = log_odds(pred, counts)
    assert np.isnan(s[5]).all() and np.isnan(s[:, 5]).all()
    seen = np.delete(np.delete(s, 5, 0), 5, 1)
    assert np.isfinite(seen).all()
    np.testing.assert_allclose(seen, seen.T, rtol=0, atol=1e-12)
    # Predicting the residue frequencies whatever the true residue: q = f f = p p, so s = 0.
    flat = np.tile(counts / counts.sum(), (20, 1)) * counts[:, None]
    assert np.nanmax(np.abs(log_odds(flat, counts))) < 1e-12


def test_substitution_stats_resample_weights():
    stats = SubstitutionStats(n_types=2)
    stats.add(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))
    stats.add(torch.tensor([[0.6, 0.4], [0.5, 0.5]]), torch.tensor([0, -1]))  # -1: skipped
    pred, counts = stats.totals(np.array([2.0, 1.0]))
    np.testing.assert_allclose(pred, [[2.4, 0.6], [0.4, 1.6]])
    np.testing.assert_allclose(counts, [3.0, 2.0])


@pytest.mark.parametrize("causal", [False, True])
def test_substitution_statistics_score_every_residue_but_the_first(causal):
    model = tiny_model("favor_relu", causal=causal)
    stats = substitution_statistics(model, PROTEINS, ALPHABET, max_length=20, seed=3)
    cut = [p[:20] for p in PROTEINS]
    expected = composition([p[1:] for p in cut], ALPHABET, None)
    np.testing.assert_array_equal(np.stack(stats.counts), expected)
    for pred, counts in zip(stats.pred_sum, stats.counts):
        np.testing.assert_allclose(pred.sum(1), counts, rtol=1e-5)  # distributions
    again = substitution_statistics(model, PROTEINS, ALPHABET, max_length=20, seed=3)
    np.testing.assert_array_equal(np.stack(again.pred_sum), np.stack(stats.pred_sum))


def test_masked_prediction_does_not_see_the_masked_residue():
    # Two proteins that differ only at residue 5: with residue 5 masked, its prediction is the
    # same in both (the model reads <mask> there), whatever the true residue.
    model = tiny_model("softmax", weight_scale=20.0)
    a, b = "MKTAYIAKQRQ", "MKTAYWAKQRQ"
    sa = substitution_statistics(model, [a], ALPHABET, seed=0, mask_fraction=1.0)
    sb = substitution_statistics(model, [b], ALPHABET, seed=0, mask_fraction=1.0)
    i, w = AMINO_ACIDS.index("I"), AMINO_ACIDS.index("W")
    np.testing.assert_allclose(sa.pred_sum[0][i], sb.pred_sum[0][w], rtol=1e-5)


def test_frequency_matrix_and_composition():
    counts = composition(["AACX", "CA"], ALPHABET, max_length=3)  # X not counted; cut to 3
    a, c = AMINO_ACIDS.index("A"), AMINO_ACIDS.index("C")
    assert counts[0, a] == 2 and counts[0, c] == 1 and counts[1, a] == 1 and counts.sum() == 5
    m = frequency_matrix(counts.sum(0))
    assert m[a, c] == pytest.approx(-abs(math.log(3 / 5) - math.log(2 / 5)))
    assert np.isnan(m[AMINO_ACIDS.index("W"), a]) and m[a, a] == 0


def test_partial_correlation_equals_correlation_of_residuals():
    rng = np.random.default_rng(1)
    blosum, z = blosum62(), rng.normal(size=(20, 20))
    x = 0.5 * blosum + 2 * z + rng.normal(size=(20, 20))
    xs, ys, zs = (off_diagonal_pairs(m) for m in (x, blosum, z))

    def residual(v):
        design = np.stack([np.ones_like(zs), zs], 1)
        return v - design @ np.linalg.lstsq(design, v, rcond=None)[0]

    expected = np.corrcoef(residual(xs), residual(ys))[0, 1]
    assert partial_correlation(x, blosum, z)["pearson"] == pytest.approx(expected)
    # A matrix that is the covariate itself has nothing left to correlate.
    assert math.isnan(partial_correlation(z, blosum, z)["pearson"])


def test_weighted_pearson_is_pearson_of_the_resampled_pairs():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=12), rng.normal(size=12)
    weights = rng.multinomial(12, np.full(12, 1 / 12), size=3).astype(float)
    for w, r in zip(weights, weighted_pearson(x, y, weights)):
        idx = np.repeat(np.arange(12), w.astype(int))
        assert r == pytest.approx(np.corrcoef(x[idx], y[idx])[0, 1])


def test_cosine_similarity_is_of_centred_vectors():
    v = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, -1.0]])  # mean (2, 0)
    s = cosine_similarity(v)
    assert s[0, 1] == pytest.approx(-1.0) and s[2, 3] == pytest.approx(-1.0)
    assert s[0, 2] == pytest.approx(0.0) and np.allclose(np.diag(s), 1.0)


def _block(low, high, **controls):
    return {"pearson": (low + high) / 2, "ci95": [low, high], "controls": controls}


def _c(low, high):
    return {"pearson": (low + high) / 2, "spearman": 0.0, "ci95": [low, high], "n_pairs": 190}


def test_untrained_envelope_spans_every_seed():
    env = untrained_envelope([_c(-0.1, 0.2), _c(0.0, 0.4), _c(-0.3, 0.1)])
    assert env["ci95"] == [-0.3, 0.4] and env["max_pearson"] == pytest.approx(0.2)
    assert env["pearson"] == pytest.approx((0.05 + 0.2 - 0.1) / 3)
    assert np.isnan(untrained_envelope([_c(0.0, 0.1), _c(math.nan, 0.2)])["ci95"]).all()


@pytest.mark.parametrize(
    "model, untrained, frequency, shuffled, expected",
    [
        ((0.5, 0.7), (-0.1, 0.2), (0.1, 0.3), (0.0, 0.4), True),
        ((0.5, 0.7), (-0.1, 0.2), (0.1, 0.3), (0.0, 0.5), False),  # touches shuffled
        ((0.5, 0.7), (-0.1, 0.6), (0.1, 0.3), (0.0, 0.4), False),  # one seed reaches it
        ((0.5, 0.7), (-0.1, 0.2), (0.1, 0.55), (0.0, 0.4), False),  # frequency alone explains
        ((math.nan, 0.7), (-0.1, 0.2), (0.1, 0.3), (0.0, 0.4), False),  # undefined: no claim
    ],
)
def test_signal_only_above_every_control(model, untrained, frequency, shuffled, expected):
    blosum, noise = blosum62(), np.random.default_rng(0).normal(size=(20, 20))
    block = _block(*model, untrained=untrained_envelope([_c(-0.2, 0.1), _c(*untrained)]),
                   frequency=_c(*frequency), shuffled=_c(*shuffled))  # fmt: skip
    out = finish_block(block, blosum + noise, blosum, noise.T, "proteins")
    assert out["signal"] is expected
    assert "bootstrap over proteins" in out["ci_method"]


def test_embedding_block_controls_and_separate_lm_head():
    counts = composition(PROTEINS, ALPHABET, None)

    def block(model, seeds, n_resamples):
        shared = shared_inputs(model, counts, seeds, n_resamples, 0)
        return embedding_block(model, ALPHABET, shared, n_resamples, 0)

    tied, matrices = block(tiny_model(), [0, 1, 2], 50)
    assert tied["lm_head"] is None and set(matrices) == {"input"}
    assert set(tied["controls"]) == {"untrained", "frequency"}  # embeddings read no proteins
    assert [s["seed"] for s in tied["controls"]["untrained"]["seeds"]] == [0, 1, 2]
    assert "190 residue pairs" in tied["ci_method"] and tied["n_pairs"] == 190
    assert tied["ci95"][0] <= tied["ci95"][1]
    untied, matrices = block(tiny_model(tie_embeddings=False), [0], 50)
    assert set(matrices) == {"input", "output"}
    assert set(untied["lm_head"]) >= {"pearson", "spearman", "ci95", "controls", "signal"}
    # A planted embedding: residues as BLOSUM62's own rows make r high, above every control.
    model = tiny_model(d_model=20, n_heads=2)
    with torch.no_grad():
        ids = [ALPHABET.tok_to_idx[a] for a in AMINO_ACIDS]
        model.embed_tokens.weight[ids] = torch.tensor(blosum62(), dtype=torch.float32)
    planted, _ = block(model, [0, 1, 2], 100)
    assert planted["pearson"] > 0.6 and planted["signal"] is True


def counting(monkeypatch, module, name):
    """Count the calls of ``module.name`` (still calling it)."""
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_study_builds_each_control_and_the_frequency_control_once(monkeypatch):
    """One untrained model per seed for all three measures, one protein resample and one
    frequency-only control for substitution and attention (were built per measure)."""
    builds = counting(monkeypatch, similarity_study, "untrained_control")
    builds_attention = counting(monkeypatch, blosum_study, "untrained_control")
    resamples = counting(monkeypatch, similarity_study, "resample_weights")
    frequency = counting(monkeypatch, similarity_study, "frequency_control")
    study, _ = similarity_study.similarity_study(
        tiny_model(), PROTEINS, ALPHABET, n_resamples=10, seed=3, untrained_seeds=2, max_length=20
    )
    assert [seed for _, seed in builds] == [3, 4] and not builds_attention
    assert sorted(n for n, *_ in resamples) == [len(PROTEINS), 190]  # proteins once, pairs once
    assert len(frequency) == 1
    for measure in ("substitution", "attention"):
        assert (
            study[measure]["controls"]["frequency"]
            == study["substitution"]["controls"]["frequency"]
        )
    assert [s["seed"] for s in study["attention"]["controls"]["untrained"]["seeds"]] == [3, 4]


def test_blosum_study_with_the_callers_controls_equals_its_own(monkeypatch):
    model = tiny_model(weight_scale=3.0)
    options = dict(n_resamples=10, seed=1, max_length=20, untrained_seeds=2)
    own = blosum_study.blosum_study(model, PROTEINS, ALPHABET, **options)
    controls = [attention_maps.untrained_control(model.config, s) for s in (1, 2)]
    builds = counting(monkeypatch, blosum_study, "untrained_control")
    given = blosum_study.blosum_study(
        model, PROTEINS, ALPHABET, untrained_models=controls, **options
    )
    assert not builds
    assert json.dumps(given, sort_keys=True) == json.dumps(own, sort_keys=True)
    with pytest.raises(ValueError, match="1 untrained models for 2 seeds"):
        blosum_study.blosum_study(
            model, PROTEINS, ALPHABET, untrained_models=controls[:1], **options
        )


def test_summary_without_layers_is_the_full_summary_less_its_layers():
    """The extra untrained seeds keep only the overall numbers: the per-layer bootstraps they
    no longer run would have been thrown away."""
    stats = blosum_study.layer_statistics(tiny_model(), PROTEINS, ALPHABET, max_length=20)
    full = blosum_study.summarise_condition(stats, blosum62(), 10, 0)
    short = blosum_study.summarise_condition(stats, blosum62(), 10, 0, layers=False)
    assert "per_layer" in full and {**short, "per_layer": full["per_layer"]} == full


@pytest.mark.parametrize(
    "result, text, label",
    [
        ({"pearson": 0.1234, "ci95": [0.01, 0.3]}, "0.123 [0.010, 0.300]", "r = 0.12 [0.01, 0.30]"),
        ({"pearson": -0.25, "ci95": [None, None]}, "-0.250", "r = -0.25"),
        ({"pearson": -0.25, "ci95": [math.nan, 0.1]}, "-0.250", "r = -0.25"),
        ({"pearson": 0.5}, "0.500", "r = 0.50"),
        ({"pearson": None, "ci95": [0.1, 0.2]}, "undefined", "r undefined"),
        ({"pearson": math.nan, "ci95": [0.1, 0.2]}, "undefined", "r undefined"),
        ({}, "undefined", "r undefined"),
        (None, "undefined", "r undefined"),
    ],
)
def test_r_text_is_the_one_format_of_r_and_its_interval(result, text, label):
    from proteinperf.analysis.plots import r_label

    assert r_text(result) == text and r_label(result) == label
