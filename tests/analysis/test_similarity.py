import numpy as np
import pytest
import torch

from proteinperf.analysis.similarity import (
    AMINO_ACIDS,
    ResidueAttentionStats,
    amino_acid_similarity,
    blosum62,
    compare_with_blosum,
    head_attention_mass,
    pair_attention_sums,
    pair_values,
    residue_index,
    residue_mask,
)
from proteinperf.data import get_alphabet

ALPHABET = get_alphabet()


def framed(sequence: str) -> torch.Tensor:
    return torch.tensor(ALPHABET.encode_framed(sequence))


def attention_onto(tokens: torch.Tensor, letter: str, n_heads: int = 1) -> torch.Tensor:
    """Every query spreads its attention evenly over the positions holding ``letter``."""
    target = (tokens == ALPHABET.tok_to_idx[letter]).float()
    row = target / target.sum()
    return row.expand(n_heads, len(tokens), len(tokens)).clone()


def test_residue_index_and_mask():
    tokens = framed("ACXY")
    assert residue_index(tokens, ALPHABET).tolist() == [-1, 0, 1, -1, 19, -1]
    assert residue_mask(tokens, ALPHABET).tolist() == [False, True, True, True, True, False]


def test_all_attention_on_one_type_gives_fraction_one():
    tokens = framed("ADKDDGWD")
    weights = attention_onto(tokens, "D", n_heads=3)
    index, positions = residue_index(tokens, ALPHABET), residue_mask(tokens, ALPHABET)
    mass, total = head_attention_mass(weights, index, positions)
    frac = (mass / total[:, None]).numpy()
    expected = np.zeros(20)
    expected[AMINO_ACIDS.index("D")] = 1.0
    np.testing.assert_allclose(frac, np.tile(expected, (3, 1)), atol=1e-6)


def test_known_mixture_and_specials_excluded():
    tokens = framed("AAKW")  # <cls> A A K W <eos>
    L = len(tokens)
    weights = torch.zeros(1, L, L)
    # Each query: 0.5 on <cls> (not counted), 0.3 on the first A, 0.2 on W.
    weights[0, :, 0], weights[0, :, 1], weights[0, :, 4] = 0.5, 0.3, 0.2
    index, positions = residue_index(tokens, ALPHABET), residue_mask(tokens, ALPHABET)
    mass, total = head_attention_mass(weights, index, positions)
    frac = (mass / total[:, None])[0]
    assert frac[AMINO_ACIDS.index("A")] == pytest.approx(0.6)
    assert frac[AMINO_ACIDS.index("W")] == pytest.approx(0.4)
    # Vig et al.'s threshold drops the 0.2 weights: everything counted lands on A.
    mass, total = head_attention_mass(weights, index, positions, threshold=0.25)
    assert (mass / total[:, None])[0, AMINO_ACIDS.index("A")] == pytest.approx(1.0)


def test_uniform_attention_pairs_are_one():
    tokens = framed("ACDEFGHIKLMNPQRSTVWY" * 2)
    L = len(tokens)
    index, positions = residue_index(tokens, ALPHABET), residue_mask(tokens, ALPHABET)
    for causal in (False, True):
        weights = torch.ones(2, L, L)
        if causal:
            weights = weights.tril()
        weights = weights / weights.sum(-1, keepdim=True)
        sums, counts = pair_attention_sums(weights, index, positions, causal)
        np.testing.assert_allclose((sums / counts).numpy(), 1.0, rtol=1e-5)


def test_stats_accumulate_and_similarity_from_heads():
    stats = ResidueAttentionStats(n_heads=4)
    tokens = framed("DEFYDEFY")
    letters = "DEFY"
    # Head h attends to letter h: D and E never share a head, so they anticorrelate.
    weights = torch.stack([attention_onto(tokens, c)[0] for c in letters])
    stats.update(weights, tokens, ALPHABET, causal=False)
    assert stats.n_sequences == 1 and stats.n_residues == 8
    frac = stats.fractions()
    for h, c in enumerate(letters):
        assert frac[h, AMINO_ACIDS.index(c)] == pytest.approx(1.0)
    sim = stats.similarity()
    d, e = AMINO_ACIDS.index("D"), AMINO_ACIDS.index("E")
    assert sim[d, e] == pytest.approx(-1 / 3)
    assert np.isnan(sim[AMINO_ACIDS.index("A"), d])  # A never attended to: undefined
    assert sim[d, d] == 1.0
    with pytest.raises(ValueError, match="4 attention maps"):
        stats.update(weights[:2], tokens, ALPHABET, causal=False)


def test_similarity_is_pearson_over_heads():
    rng = np.random.default_rng(0)
    f = rng.random((12, 20))
    f[:, 1] = 2 * f[:, 0] + 0.1  # perfectly correlated with type 0
    f[:, 2] = -f[:, 0]
    sim = amino_acid_similarity(f)
    assert sim[0, 1] == pytest.approx(1.0) and sim[0, 2] == pytest.approx(-1.0)
    np.testing.assert_allclose(sim, np.corrcoef(f.T), atol=1e-12)


def test_blosum_orientation_and_correlation_signs():
    b = blosum62()
    assert b.shape == (20, 20) and np.array_equal(b, b.T)
    i = AMINO_ACIDS.index
    assert b[i("W"), i("W")] == 11 and b[i("D"), i("E")] == 2 and b[i("F"), i("Y")] == 3
    same = compare_with_blosum(b)
    assert same["pearson"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    assert same["n_pairs"] == 190
    flipped = compare_with_blosum(-b + 7 * np.eye(20))  # diagonal changes must not matter
    assert flipped["pearson"] == pytest.approx(-1.0)
    noise = compare_with_blosum(np.random.default_rng(1).normal(size=(20, 20)))
    assert abs(noise["pearson"]) < 0.3
    partial = b.astype(float).copy()
    partial[0, :] = partial[:, 0] = np.nan
    assert compare_with_blosum(partial)["n_pairs"] == 171
    assert pair_values(b, ("DE", "FY")) == {"DE": 2.0, "FY": 3.0}
