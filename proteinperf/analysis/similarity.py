"""Amino-acid similarity from attention (Vig et al., 2020), compared with BLOSUM62.

Vig et al. ("BERTology meets biology", ICLR 2021, Sec. 4.3) represent each amino acid by the
fraction of attention every head directs to it, and call two amino acids similar when those
vectors over heads correlate (Pearson). Choromanski et al. (2021, Fig. 13) show the same for a
Performer. A second, simpler statistic is the mean attention between residue types, measured
relative to uniform attention so sequences of different lengths are comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from proteinperf.data.alphabet import STANDARD_AMINO_ACIDS

AMINO_ACIDS = STANDARD_AMINO_ACIDS  # the residue order of every 20x20 matrix here
# Pairs the paper and Vig et al. single out as learnt: acids, aromatics, aliphatics, bases.
NOTABLE_PAIRS = ("DE", "FY", "IV", "IL", "LM", "KR", "NQ", "ST", "WY")
# Physicochemical groups (a common textbook grouping), the order of the figures' axes.
PROPERTY_GROUPS = {
    "aliphatic": "AVLIM",
    "aromatic": "FWY",
    "polar": "STNQ",
    "positive": "KRH",
    "negative": "DE",
    "special": "CGP",
}


def residue_index(tokens: torch.Tensor, alphabet, order: str = AMINO_ACIDS) -> torch.Tensor:
    """(L,) index of each token in ``order`` (0..19), -1 for specials and other letters."""
    lookup = torch.full((len(alphabet),), -1, dtype=torch.long)
    for i, letter in enumerate(order):
        lookup[alphabet.tok_to_idx[letter]] = i
    return lookup[tokens.long().cpu()]


def residue_mask(tokens: torch.Tensor, alphabet) -> torch.Tensor:
    """(L,) True where a token is a residue (including X, B, ...), False for <cls>, <eos>, ..."""
    special = torch.tensor([alphabet.is_special(i) for i in range(len(alphabet))])
    return ~special[tokens.long().cpu()]


def _one_hot(index: torch.Tensor, n: int) -> torch.Tensor:
    """(L, n) float one-hot; rows of index -1 are all zero."""
    out = torch.zeros(index.shape[0], n)
    known = index >= 0
    out[known.nonzero().squeeze(-1), index[known]] = 1.0
    return out


def head_attention_mass(
    weights: torch.Tensor,
    index: torch.Tensor,
    positions: torch.Tensor,
    threshold: float = 0.0,
    n_types: int = len(AMINO_ACIDS),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head: attention landing on each residue type, and all attention counted.

    weights (H, L, L) rows = queries; index (L,) residue type or -1; positions (L,) bool, the
    queries and keys taken into account. Weights ≤ ``threshold`` are dropped first (Vig et al.
    keep only "high-confidence" weights, θ = 0.3). Returns (mass (H, n_types), total (H,)).
    """
    w = weights.float().cpu()[:, positions][:, :, positions]
    if threshold > 0:
        w = w * (w > threshold)
    per_key = w.sum(1)  # (H, keys)
    mass = per_key @ _one_hot(index[positions], n_types)
    return mass, per_key.sum(-1)


def fractions(mass: np.ndarray, total: np.ndarray) -> np.ndarray:
    """(H, 20) fraction of each head's counted attention on each residue type (NaN if none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total[:, None] > 0, mass / total[:, None], np.nan)


def pair_attention_sums(
    weights: torch.Tensor,
    index: torch.Tensor,
    positions: torch.Tensor,
    causal: bool,
    n_types: int = len(AMINO_ACIDS),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts of attention from type a to type b, relative to uniform attention.

    Each query's weights over the counted keys are divided by their mean over the keys it may
    see (j ≤ i when causal), so 1 means "as much as uniform". Returns (sums, counts), both
    (n_types, n_types), summed over heads; sums / counts is the mean.
    """
    w = weights.float().cpu()[:, positions][:, :, positions]  # (H, n, n)
    n = w.shape[-1]
    allowed = torch.ones(n, n).tril() if causal else torch.ones(n, n)
    row_mass = w.sum(-1, keepdim=True)
    row_keys = allowed.sum(-1, keepdim=True)
    relative = torch.where(row_mass > 0, w * row_keys / row_mass.clamp(min=1e-30), 0.0)
    one_hot = _one_hot(index[positions], n_types)  # (n, T)
    sums = one_hot.T @ relative.sum(0) @ one_hot
    counts = w.shape[0] * (one_hot.T @ allowed @ one_hot)
    return sums, counts


SUFFICIENT_STATISTICS = ("mass", "total", "pair_sum", "pair_count")


@dataclass
class ResidueAttentionStats:
    """Running sums over sequences for one model's selected layers x heads (flattened)."""

    n_heads: int
    threshold: float = 0.0
    n_types: int = len(AMINO_ACIDS)
    mass: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    pair_sum: np.ndarray = field(init=False)
    pair_count: np.ndarray = field(init=False)
    n_sequences: int = 0
    n_residues: int = 0
    keep_per_sequence: bool = False  # keep each sequence's sums too, for the bootstrap
    per_sequence: dict[str, list[np.ndarray]] = field(init=False)

    def __post_init__(self):
        self.mass = np.zeros((self.n_heads, self.n_types))
        self.total = np.zeros(self.n_heads)
        self.pair_sum = np.zeros((self.n_types, self.n_types))
        self.pair_count = np.zeros((self.n_types, self.n_types))
        self.per_sequence = {k: [] for k in SUFFICIENT_STATISTICS}

    def update(self, weights: torch.Tensor, tokens: torch.Tensor, alphabet, causal: bool) -> None:
        """Add one sequence: weights (..., L, L) with n_heads maps in front, tokens (L,)."""
        weights = weights.reshape(-1, *weights.shape[-2:])
        if weights.shape[0] != self.n_heads:
            raise ValueError(f"expected {self.n_heads} attention maps, got {weights.shape[0]}")
        index, positions = residue_index(tokens, alphabet), residue_mask(tokens, alphabet)
        mass, total = head_attention_mass(weights, index, positions, self.threshold, self.n_types)
        sums, counts = pair_attention_sums(weights, index, positions, causal, self.n_types)
        self.add(
            mass.double().numpy(),
            total.double().numpy(),
            sums.double().numpy(),
            counts.double().numpy(),
        )
        self.n_residues += int(positions.sum())

    def add(self, mass, total, pair_sum, pair_count) -> None:
        """Add one sequence's sufficient statistics (what ``update`` computes from attention)."""
        self.mass += mass
        self.total += total
        self.pair_sum += pair_sum
        self.pair_count += pair_count
        self.n_sequences += 1
        if self.keep_per_sequence:
            for key, value in zip(SUFFICIENT_STATISTICS, (mass, total, pair_sum, pair_count)):
                self.per_sequence[key].append(np.asarray(value, dtype=np.float64))

    def fractions(self) -> np.ndarray:
        return fractions(self.mass, self.total)

    def similarity(self) -> np.ndarray:
        return amino_acid_similarity(self.fractions())

    def pair_attention(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.pair_count > 0, self.pair_sum / self.pair_count, np.nan)


def amino_acid_similarity(head_fractions: np.ndarray) -> np.ndarray:
    """(T, T) Pearson correlation between residue types, each a vector over heads (H, T).

    Heads with no counted attention (NaN rows) are left out; a type whose vector is constant
    over heads has no defined correlation (NaN row and column, 1 on the diagonal).
    """
    f = np.asarray(head_fractions, dtype=np.float64)
    f = f[~np.isnan(f).any(1)]
    n_types = f.shape[1]
    if f.shape[0] < 2:
        out = np.full((n_types, n_types), np.nan)
    else:
        centred = f - f.mean(0)
        norms = np.sqrt((centred**2).sum(0))
        # Constant over heads up to rounding (e.g. uniform attention): no correlation defined.
        norms[norms <= 1e-6 * np.sqrt((f**2).sum(0))] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (centred.T @ centred) / np.outer(norms, norms)
    np.fill_diagonal(out, 1.0)
    return np.clip(out, -1.0, 1.0)


def blosum62(order: str = AMINO_ACIDS) -> np.ndarray:
    """BLOSUM62 (Henikoff & Henikoff, 1992) from Biopython, rows and columns in ``order``."""
    from Bio.Align import substitution_matrices

    matrix = substitution_matrices.load("BLOSUM62")
    return np.array([[matrix[a][b] for b in order] for a in order], dtype=np.float64)


def off_diagonal_pairs(matrix: np.ndarray) -> np.ndarray:
    """Values of the symmetrised matrix at i < j: one value per unordered pair (190 for 20)."""
    m = np.asarray(matrix, dtype=np.float64)
    sym = (m + m.T) / 2
    return sym[np.triu_indices(m.shape[0], k=1)]


def compare_with_blosum(matrix: np.ndarray, blosum: np.ndarray | None = None) -> dict:
    """Pearson and Spearman correlation with BLOSUM62 over the off-diagonal pairs.

    Diagonals are excluded: self-substitution scores and self-similarity would dominate.
    Pairs where ``matrix`` is NaN (a residue type never seen) are dropped.
    """
    blosum = blosum62() if blosum is None else blosum
    x, y = off_diagonal_pairs(matrix), off_diagonal_pairs(blosum)
    keep = ~np.isnan(x)
    x, y = x[keep], y[keep]
    result = {
        "pearson": math.nan,
        "pearson_p": math.nan,
        "spearman": math.nan,
        "spearman_p": math.nan,
        "n_pairs": int(keep.sum()),
    }
    # float32 attention: spreads at rounding level (uniform attention) are no variation.
    if x.size >= 3 and np.ptp(x) > 1e-6 * max(np.abs(x).max(), 1e-300):
        pearson = stats.pearsonr(x, y)
        spearman = stats.spearmanr(x, y)
        result.update(
            pearson=float(pearson.statistic),
            pearson_p=float(pearson.pvalue),
            spearman=float(spearman.statistic),
            spearman_p=float(spearman.pvalue),
        )
    return result


def pair_values(matrix: np.ndarray, pairs=NOTABLE_PAIRS, order: str = AMINO_ACIDS) -> dict:
    """{"DE": value, ...} of a 20x20 matrix, symmetrised, for pairs of one-letter codes."""
    m = np.asarray(matrix, dtype=np.float64)
    sym = (m + m.T) / 2
    return {p: float(sym[order.index(p[0]), order.index(p[1])]) for p in pairs}


def combine_heads(parts: Sequence[ResidueAttentionStats]) -> ResidueAttentionStats:
    """One statistic over the heads of several (e.g. one per layer, same sequences): head
    vectors side by side, pair sums added."""
    out = ResidueAttentionStats(sum(p.n_heads for p in parts), parts[0].threshold)
    out.keep_per_sequence = all(p.keep_per_sequence for p in parts)
    for i in range(parts[0].n_sequences if out.keep_per_sequence else 0):
        seq = [{k: p.per_sequence[k][i] for k in SUFFICIENT_STATISTICS} for p in parts]
        out.add(
            np.concatenate([s["mass"] for s in seq]),
            np.concatenate([s["total"] for s in seq]),
            sum(s["pair_sum"] for s in seq),
            sum(s["pair_count"] for s in seq),
        )
    if not out.keep_per_sequence:
        out.mass = np.concatenate([p.mass for p in parts])
        out.total = np.concatenate([p.total for p in parts])
        out.pair_sum = sum(p.pair_sum for p in parts)
        out.pair_count = sum(p.pair_count for p in parts)
        out.n_sequences = parts[0].n_sequences
    out.n_residues = parts[0].n_residues
    return out


def blosum_pearson(matrix: np.ndarray, blosum: np.ndarray) -> float:
    """compare_with_blosum's Pearson r without the p-values (a bootstrap's inner loop)."""
    x, y = off_diagonal_pairs(matrix), off_diagonal_pairs(blosum)
    keep = ~np.isnan(x)
    x, y = x[keep], y[keep]
    if x.size < 3 or not np.ptp(x) > 1e-6 * max(np.abs(x).max(), 1e-300):
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def resample_weights(n: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """(n_resamples, n) bootstrap resamples as weights: how often each of n items (proteins,
    pairs) is drawn with replacement. The same (n, n_resamples, seed) give the same resamples,
    so statistics bootstrapped separately over the same proteins are paired."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)


def percentile_interval(values, level: float = 0.95) -> list[float]:
    """[low, high] percentile interval of bootstrap values, NaN ones left out ([NaN, NaN] if
    none is defined)."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    if not defined.size:
        return [math.nan, math.nan]
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(defined, tail)), float(np.percentile(defined, 100 - tail))]


def r_text(result, digits: int = 3, prefix: str = "", undefined: str = "undefined") -> str:
    """A {"pearson", "ci95"} result as reports write it: "r [low, high]" (prefixed), the r alone
    when the interval is undefined, ``undefined`` when r is (missing, None or NaN)."""
    r = (result or {}).get("pearson")
    if r is None or not np.isfinite(r):
        return undefined
    low, high = result.get("ci95") or (None, None)
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{prefix}{r:.{digits}f}"
    return f"{prefix}{r:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def bootstrap_vs_blosum(
    stats: ResidueAttentionStats,
    blosum: np.ndarray | None = None,
    n_resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Both statistics against BLOSUM62 with a percentile bootstrap interval over sequences.

    Each resample draws the sequences with replacement and recomputes the statistic from the
    summed per-sequence sums (so a resample costs one weighted sum, not a forward pass).
    Returns {"similarity": {...}, "pair_attention": {...}}, each with pearson, spearman,
    n_pairs (the point estimate on all sequences) and ci95 [low, high] (NaN when undefined).
    """
    if not stats.keep_per_sequence or stats.n_sequences != len(stats.per_sequence["mass"]):
        raise ValueError("the bootstrap needs ResidueAttentionStats(keep_per_sequence=True)")
    blosum = blosum62() if blosum is None else blosum
    n = stats.n_sequences
    per = {k: np.stack(stats.per_sequence[k]).reshape(n, -1) for k in SUFFICIENT_STATISTICS}
    h, t = stats.n_heads, stats.n_types
    counts = resample_weights(n, n_resamples, seed)
    sums = {k: counts @ v for k, v in per.items()}  # each (n_resamples, flattened statistic)
    draws = {"similarity": [], "pair_attention": []}
    for b in range(n_resamples):
        f = fractions(sums["mass"][b].reshape(h, t), sums["total"][b])
        draws["similarity"].append(blosum_pearson(amino_acid_similarity(f), blosum))
        with np.errstate(invalid="ignore", divide="ignore"):
            pair_count = sums["pair_count"][b].reshape(t, t)
            pair = np.where(pair_count > 0, sums["pair_sum"][b].reshape(t, t) / pair_count, np.nan)
        draws["pair_attention"].append(blosum_pearson(pair, blosum))
    point = {
        "similarity": compare_with_blosum(stats.similarity(), blosum),
        "pair_attention": compare_with_blosum(stats.pair_attention(), blosum),
    }
    out = {}
    for name, values in draws.items():
        values = np.asarray(values)
        defined = values[~np.isnan(values)]
        out[name] = {
            "pearson": point[name]["pearson"],
            "ci95": percentile_interval(values, level),
            "spearman": point[name]["spearman"],
            "n_pairs": point[name]["n_pairs"],
            "n_resamples": n_resamples,
            "undefined_resamples": int(values.size - defined.size),
        }
    return out


__all__ = [
    "AMINO_ACIDS",
    "NOTABLE_PAIRS",
    "PROPERTY_GROUPS",
    "ResidueAttentionStats",
    "SUFFICIENT_STATISTICS",
    "amino_acid_similarity",
    "blosum62",
    "blosum_pearson",
    "bootstrap_vs_blosum",
    "combine_heads",
    "compare_with_blosum",
    "fractions",
    "head_attention_mass",
    "off_diagonal_pairs",
    "pair_attention_sums",
    "pair_values",
    "percentile_interval",
    "resample_weights",
    "residue_index",
    "residue_mask",
    "r_text",
]
