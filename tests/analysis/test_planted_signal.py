"""The BLOSUM62 statistics find a planted signal and none where there is none.

Synthetic attention maps go through the very functions the real analysis uses
(ResidueAttentionStats.update -> bootstrap_vs_blosum), on random protein-like sequences.
"""

import math

import numpy as np
import torch

from proteinperf.analysis.blosum_study import shuffle_residues, signal
from proteinperf.analysis.similarity import (
    AMINO_ACIDS,
    ResidueAttentionStats,
    blosum62,
    bootstrap_vs_blosum,
    combine_heads,
    residue_index,
)
from proteinperf.data import get_alphabet

ALPHABET = get_alphabet()
BLOSUM = blosum62()
N_HEADS = 40


def random_tokens(rng, n: int = 16, length: int = 60) -> list[torch.Tensor]:
    letters = list(AMINO_ACIDS)
    return [
        torch.tensor(ALPHABET.encode_framed("".join(rng.choice(letters, length)))) for _ in range(n)
    ]


def head_preferences() -> np.ndarray:
    """(20, 40): per head, a weight for each residue type, whose covariance over heads has
    BLOSUM62's off-diagonal scores. Shares of attention sum to one per head, so their
    covariance has zero row sums: the target is B_off - diag(row sums of B_off) (PSD)."""
    off = BLOSUM.copy()
    np.fill_diagonal(off, 0)
    target = off - np.diag(off.sum(1))
    lam, vectors = np.linalg.eigh(target)
    factor = vectors * np.sqrt(np.clip(lam, 0, None))  # factor @ factor.T == target
    factor /= np.abs(factor).max()
    return 1 + 0.3 * np.concatenate([factor, -factor], axis=1)  # +/- pairs: mean 1 per type


def planted_vig(tokens: torch.Tensor) -> torch.Tensor:
    """Every query of head h spreads attention over keys in proportion to pref[type, h]."""
    index = residue_index(tokens, ALPHABET)
    pref = torch.ones(N_HEADS, len(tokens))
    known = index >= 0
    pref[:, known] = torch.tensor(head_preferences(), dtype=torch.float32)[index[known]].T
    weights = pref[:, None, :].expand(N_HEADS, len(tokens), len(tokens))
    return weights / weights.sum(-1, keepdim=True)


def planted_pairs(tokens: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """A residue of type a attends to one of type b in proportion to exp(BLOSUM62[a, b] / tau)."""
    index = residue_index(tokens, ALPHABET).clamp(min=0)
    weights = torch.exp(torch.tensor(BLOSUM, dtype=torch.float32)[index][:, index] / tau)
    weights = weights / weights.sum(-1, keepdim=True)
    return weights.expand(N_HEADS, -1, -1)


def uniform(tokens: torch.Tensor) -> torch.Tensor:
    n = len(tokens)
    return torch.full((N_HEADS, n, n), 1.0 / n)


def local_windows(tokens: torch.Tensor) -> torch.Tensor:
    """Head h attends uniformly to the keys within h + 1 positions: structure by position,
    none by residue type."""
    n = len(tokens)
    distance = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
    weights = torch.stack([(distance <= h + 1).float() for h in range(N_HEADS)])
    return weights / weights.sum(-1, keepdim=True)


def random_attention(seed: int):
    generator = torch.Generator().manual_seed(seed)

    def make(tokens: torch.Tensor) -> torch.Tensor:
        weights = torch.rand(N_HEADS, len(tokens), len(tokens), generator=generator)
        return weights / weights.sum(-1, keepdim=True)

    return make


def analyse(attention, seed: int = 0, n: int = 16) -> dict:
    stats = ResidueAttentionStats(N_HEADS, keep_per_sequence=True)
    for tokens in random_tokens(np.random.default_rng(seed), n):
        stats.update(attention(tokens), tokens, ALPHABET, causal=False)
    return bootstrap_vs_blosum(stats, BLOSUM, n_resamples=50, seed=seed)


def no_signal(r: float) -> bool:
    return math.isnan(r) or abs(r) < 0.1


def test_planted_vig_signal_is_found():
    result = analyse(planted_vig)["similarity"]
    assert result["pearson"] > 0.9
    assert result["ci95"][0] > 0.8 and result["ci95"][0] <= result["pearson"] <= result["ci95"][1]


def test_planted_pair_signal_is_found():
    result = analyse(planted_pairs)["pair_attention"]
    assert result["pearson"] > 0.9 and result["ci95"][0] > 0.8


def test_uniform_attention_has_no_signal():
    # Every head identical and every pair at exactly 1 x uniform: both correlations are
    # undefined (NaN, reported as such), never a spurious value from rounding noise.
    result = analyse(uniform, n=4)
    assert math.isnan(result["similarity"]["pearson"])
    assert math.isnan(result["pair_attention"]["pearson"])
    assert result["similarity"]["undefined_resamples"] == 50


def test_attention_without_residue_structure_has_no_signal():
    # One seed's r is noise with a spread of ~1/sqrt(190 pairs) ~ 0.07, so a single |r| < 0.1
    # would be luck; the mean over seeds is the test, and every interval must cover 0.
    results = [analyse(random_attention(seed), seed, n=8) for seed in range(4)]
    results += [analyse(local_windows, seed, n=8) for seed in range(4)]
    for statistic in ("similarity", "pair_attention"):
        rs = [r[statistic]["pearson"] for r in results]
        assert no_signal(float(np.mean(rs))), (statistic, rs)
        intervals = [r[statistic]["ci95"] for r in results]
        assert all(low < 0.1 and high > -0.1 for low, high in intervals), (statistic, intervals)


def test_combine_heads_concatenates_layers():
    rng = np.random.default_rng(0)
    parts = [ResidueAttentionStats(N_HEADS, keep_per_sequence=True) for _ in range(2)]
    for tokens in random_tokens(rng, 3, 20):
        parts[0].update(planted_vig(tokens), tokens, ALPHABET, causal=False)
        parts[1].update(uniform(tokens), tokens, ALPHABET, causal=False)
    both = combine_heads(parts)
    assert both.n_heads == 2 * N_HEADS and both.n_sequences == 3
    np.testing.assert_allclose(both.mass, np.concatenate([parts[0].mass, parts[1].mass]))
    np.testing.assert_allclose(both.pair_sum, parts[0].pair_sum + parts[1].pair_sum)


def test_shuffle_keeps_composition_and_is_seeded():
    sequence = "MKTAYIAKQRQISFVKSHFSRQ"
    shuffled = shuffle_residues(sequence, 3)
    assert sorted(shuffled) == sorted(sequence) and shuffled != sequence
    assert shuffle_residues(sequence, 3) == shuffled


def test_signal_needs_interval_above_both_controls():
    model = {"ci95": [0.3, 0.5]}
    assert signal(model, {"ci95": [-0.1, 0.1]}, {"ci95": [0.0, 0.2]})
    assert not signal(model, {"ci95": [-0.1, 0.1]}, {"ci95": [0.2, 0.4]})
    assert not signal({"ci95": [float("nan"), 0.5]}, {"ci95": [-0.1, 0.1]})
