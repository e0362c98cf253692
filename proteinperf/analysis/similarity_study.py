"""What a model says about amino-acid similarity, each measure against BLOSUM62 with controls.

Three measures, each a 20 x 20 matrix compared with BLOSUM62 on the 190 off-diagonal pairs
(Pearson and Spearman):

- ``embedding``: cosine similarity of the 20 residues' input token embeddings, centred on
  their mean (and of the output, LM-head weights where they are not tied to the input);
- ``substitution``: the model's learned substitution matrix (``substitution.log_odds``);
- ``attention``: the Vig et al. statistic of ``blosum_study`` (the same code path).

Intervals are 95% percentile bootstraps: over proteins for the measures that read proteins
(substitution, attention), over the 190 residue pairs for the embeddings, which do not depend
on the proteins. Controls, each with an interval from the same bootstrap: the same-shape model
untrained (several seeds; its interval spans the lowest to the highest end of the seeds' own
intervals), a frequency-only matrix (-|log f_a - log f_b|, the closeness of the residues'
frequencies in the proteins), and, for the measures that read proteins, the trained model on
the same proteins with their residues shuffled. ``partial_given_frequency`` is the correlation
with BLOSUM62 once the frequency-only matrix is regressed out of both. ``signal`` is true only
when the measure's interval lies above every control's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as scipy_stats

from .attention_maps import untrained_control
from .blosum_study import blosum_study, shuffled_sequences, signal
from .similarity import (
    AMINO_ACIDS,
    blosum62,
    blosum_pearson,
    compare_with_blosum,
    off_diagonal_pairs,
    percentile_interval,
    resample_weights,
    residue_index,
)
from .substitution import MASK_FRACTION, substitution_statistics

MEASURES = ("embedding", "substitution", "attention")
CI_METHODS = {
    "pairs": "95% percentile bootstrap over the 190 residue pairs (the embeddings do not "
    "depend on the proteins); the same resampled pairs for the model and every control",
    "proteins": "95% percentile bootstrap over proteins (per-protein sums resampled); the "
    "same resampled proteins for the model and every control",
}
UNTRAINED_INTERVAL = (
    "ci95 spans the lowest to the highest end of the seeds' own intervals; pearson and "
    "spearman are the means over seeds"
)
SIGNAL_RULE = "signal: the measure's ci95 lies entirely above every control's ci95"


def composition(sequences: Sequence[str], alphabet, max_length: int | None) -> np.ndarray:
    """(proteins, 20) counts of each standard residue in the analysed part of each protein."""
    out = np.zeros((len(sequences), len(AMINO_ACIDS)))
    for i, sequence in enumerate(sequences):
        residues = sequence[:max_length] if max_length else sequence
        index = residue_index(torch.tensor(alphabet.encode(residues)), alphabet).numpy()
        out[i] = np.bincount(index[index >= 0], minlength=len(AMINO_ACIDS))
    return out


def frequency_matrix(counts: np.ndarray) -> np.ndarray:
    """(20, 20) -|log f_a - log f_b| from residue counts (20,): similar = equally frequent.
    NaN rows and columns for residues never seen."""
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_f = np.where(counts > 0, np.log(counts / counts.sum()), np.nan)
    return -np.abs(log_f[:, None] - log_f[None, :])


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    """(T, T) cosine similarity of the rows of vectors (T, d) after removing their mean row
    (the direction all residues share would otherwise make every pair similar)."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v - v.mean(0)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
    return v @ v.T


def residue_vectors(model, alphabet) -> dict:
    """{"input": (20, d), "output": (20, d) or None}: the residues' token embeddings, and the
    LM head's own decoder rows when they are not tied to the input embeddings."""
    ids = [alphabet.tok_to_idx[a] for a in AMINO_ACIDS]
    head = model.lm_head.weight
    return {
        "input": model.embed_tokens.weight.detach()[ids].float().cpu().numpy(),
        "output": None if head is None else head.detach()[ids].float().cpu().numpy(),
    }


def partial_correlation(matrix, blosum, covariate) -> dict:
    """{"pearson", "spearman"} of matrix with BLOSUM62 given covariate, over the pairs where
    all three are defined (Spearman: the same on ranks)."""
    x, y, z = (off_diagonal_pairs(m) for m in (matrix, blosum, covariate))
    keep = ~(np.isnan(x) | np.isnan(z))
    x, y, z = x[keep], y[keep], z[keep]
    out = {}
    for name, transform in (("pearson", np.asarray), ("spearman", scipy_stats.rankdata)):
        a, b, c = (np.asarray(transform(v), dtype=np.float64) for v in (x, y, z))
        if a.size < 4 or np.ptp(a) == 0 or np.ptp(c) == 0:
            out[name] = math.nan
            continue
        r = np.corrcoef(np.stack([a, b, c]))
        r_xy, r_xz, r_yz = r[0, 1], r[0, 2], r[1, 2]
        rest = (1 - r_xz**2) * (1 - r_yz**2)  # 0: the covariate explains x (or y) entirely
        out[name] = float((r_xy - r_xz * r_yz) / np.sqrt(rest)) if rest > 1e-12 else math.nan
    return out


def weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) Pearson r of x and y (n,) under each row of weights (B, n): a resample of pairs."""
    w = weights / weights.sum(1, keepdims=True)
    mx, my = w @ x, w @ y
    dx, dy = x[None, :] - mx[:, None], y[None, :] - my[:, None]
    cov = (w * dx * dy).sum(1)
    var = (w * dx * dx).sum(1) * (w * dy * dy).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, cov / np.sqrt(var), np.nan)


def pair_bootstrap(matrix, blosum, weights: np.ndarray) -> list[float]:
    """95% interval of r with BLOSUM62 over resamples of the 190 pairs (weights (B, 190))."""
    x, y = off_diagonal_pairs(matrix), off_diagonal_pairs(blosum)
    keep = ~np.isnan(x)
    return percentile_interval(weighted_pearson(x[keep], y[keep], weights[:, keep]))


def entry(matrix, blosum, ci95) -> dict:
    """{"pearson", "spearman", "ci95", "n_pairs"} of one matrix against BLOSUM62."""
    point = compare_with_blosum(matrix, blosum)
    return {
        "pearson": point["pearson"],
        "spearman": point["spearman"],
        "ci95": list(ci95),
        "n_pairs": point["n_pairs"],
    }


def untrained_envelope(per_seed: Sequence[dict]) -> dict:
    """One control from several untrained seeds (see UNTRAINED_INTERVAL)."""
    lows = [s["ci95"][0] for s in per_seed]
    highs = [s["ci95"][1] for s in per_seed]
    undefined = any(v is None or np.isnan(v) for v in [*lows, *highs])
    return {
        "pearson": float(np.nanmean([_nan(s["pearson"]) for s in per_seed])),
        "spearman": float(np.nanmean([_nan(s["spearman"]) for s in per_seed])),
        "ci95": [float("nan")] * 2 if undefined else [min(lows), max(highs)],
        "n_pairs": min(s["n_pairs"] for s in per_seed),
        "max_pearson": float(np.nanmax([_nan(s["pearson"]) for s in per_seed])),
        "interval": UNTRAINED_INTERVAL,
        "seeds": [dict(s) for s in per_seed],
    }


def _copy(result: dict) -> dict:
    """A control's entry of its own for each block that shows it."""
    return {**result, "ci95": list(result["ci95"])}


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def finish_block(block: dict, matrix, blosum, frequency, ci_method: str) -> dict:
    """Add the partial correlation, the CI method and the signal to a block with its controls."""
    block["partial_given_frequency"] = partial_correlation(matrix, blosum, frequency)
    block["ci_method"] = CI_METHODS[ci_method]
    block["signal"] = signal(block, *block["controls"].values())
    return block


@dataclass
class Shared:
    """What every measure of one study uses, computed once."""

    untrained: dict  # seed -> the untrained control of that seed (PerformerLM), built once
    weights: np.ndarray  # (n_resamples, proteins): the protein resamples of every interval
    frequency: np.ndarray  # (20, 20) the frequency-only matrix of all the proteins
    frequency_control: dict  # its entry, with an interval over ``weights``


def shared_inputs(model, counts_per_protein: np.ndarray, seeds, n_resamples: int, seed: int):
    """The untrained controls (on the model's device), the protein resamples and the
    frequency-only control of a study."""
    device = next(model.parameters()).device
    weights = resample_weights(len(counts_per_protein), n_resamples, seed)
    return Shared(
        untrained={s: untrained_control(model.config, s).to(device) for s in seeds},
        weights=weights,
        frequency=frequency_matrix(counts_per_protein.sum(0)),
        frequency_control=frequency_control(counts_per_protein, blosum62(), weights),
    )


def embedding_block(model, alphabet, shared: Shared, n_resamples, seed):
    """The ``embedding`` block and its matrices: {"input"}, and "output" for an untied head."""
    blosum = blosum62()
    weights = resample_weights(len(off_diagonal_pairs(blosum)), n_resamples, seed)
    frequency = entry(shared.frequency, blosum, pair_bootstrap(shared.frequency, blosum, weights))
    untrained = {s: residue_vectors(c, alphabet) for s, c in shared.untrained.items()}
    blocks, matrices = {}, {}
    for side, vectors in residue_vectors(model, alphabet).items():
        if vectors is None:
            continue
        matrix = cosine_similarity(vectors)
        block = entry(matrix, blosum, pair_bootstrap(matrix, blosum, weights))
        per_seed = []
        for s, control_vectors in untrained.items():
            m = cosine_similarity(control_vectors[side])
            per_seed.append({"seed": s, **entry(m, blosum, pair_bootstrap(m, blosum, weights))})
        block["controls"] = {
            "untrained": untrained_envelope(per_seed),
            "frequency": _copy(frequency),
        }
        blocks[side] = finish_block(block, matrix, blosum, shared.frequency, "pairs")
        matrices[side] = matrix
    out = blocks["input"]
    out["vectors"] = "input token embeddings of the 20 residues, mean-centred, cosine similarity"
    out["lm_head"] = blocks.get("output")  # None: the LM head reuses the input embeddings
    return out, matrices


def protein_bootstrap(stats, blosum, weights: np.ndarray) -> list[float]:
    """95% interval of r with BLOSUM62 of a SubstitutionStats over protein resamples."""
    return percentile_interval([blosum_pearson(stats.matrix(w), blosum) for w in weights])


def frequency_control(counts_per_protein: np.ndarray, blosum, weights: np.ndarray) -> dict:
    """The frequency-only control with its interval over the same protein resamples."""
    draws = [blosum_pearson(frequency_matrix(w @ counts_per_protein), blosum) for w in weights]
    return entry(frequency_matrix(counts_per_protein.sum(0)), blosum, percentile_interval(draws))


def substitution_block(model, sequences, alphabet, shared: Shared, options):
    """The ``substitution`` block and its model matrix."""
    blosum = blosum62()
    seed, max_length = options["seed"], options["max_length"]

    def measure(m, seqs):
        stats = substitution_statistics(m, seqs, alphabet, max_length=max_length, seed=seed)
        matrix = stats.matrix()
        return matrix, entry(matrix, blosum, protein_bootstrap(stats, blosum, shared.weights))

    matrix, block = measure(model, sequences)
    per_seed = [{"seed": s, **measure(c, sequences)[1]} for s, c in shared.untrained.items()]
    _, shuffled = measure(model, shuffled_sequences(sequences, seed))
    block["controls"] = {
        "untrained": untrained_envelope(per_seed),
        "frequency": _copy(shared.frequency_control),
        "shuffled": shuffled,
    }
    block["objective"] = "next-token" if model.config.causal else "masked"
    if not model.config.causal:
        block["mask_fraction"] = MASK_FRACTION
    block["construction"] = (
        "2 log2(q_ab / (p_a p_b)): q the symmetrised f_a P(b | a), P(b | a) the mean predicted "
        "distribution (20 residues) at positions of true residue a (every residue but the "
        "first, the initiator methionine's place), p q's marginal"
    )
    return finish_block(block, matrix, blosum, shared.frequency, "proteins"), matrix


def attention_block(model, sequences, alphabet, shared: Shared, options, done=None):
    """The ``attention`` block from blosum_study (Vig et al.'s statistic) and its matrix;
    ``done``: blosum_study's (study, matrices) of the same proteins and settings, if run."""
    blosum = blosum62()
    seed = options["seed"]
    seeds = list(shared.untrained)
    if done is None:
        done = blosum_study(
            model,
            sequences,
            alphabet,
            n_resamples=options["n_resamples"],
            seed=seed,
            max_length=options["max_length"],
            return_matrices=True,
            untrained_seeds=len(seeds),
            untrained_models=list(shared.untrained.values()),
        )
    study, matrices = done
    same = [study[k] for k in ("n_sequences", "max_length", "seed")]
    if (
        same != [len(sequences), options["max_length"], seed]
        or [s["seed"] for s in study["untrained_seeds"]] != seeds
    ):
        raise ValueError("the attention study was run on other proteins or settings")
    keys = ("pearson", "spearman", "ci95", "n_pairs")
    block = {k: study["model"][k] for k in keys}
    block["controls"] = {
        "untrained": untrained_envelope([dict(s) for s in study["untrained_seeds"]]),
        "frequency": _copy(shared.frequency_control),
        "shuffled": {k: study["shuffled"][k] for k in keys},
    }
    block["statistic"] = study["statistic"]
    block["pair_attention"] = {
        name: study[name]["pair_attention"] for name in ("model", "untrained", "shuffled")
    }
    block["per_layer"] = study["model"]["per_layer"]
    block["layer_numbering"] = study["layer_numbering"]
    model_matrix = matrices["model"]
    return finish_block(block, model_matrix, blosum, shared.frequency, "proteins"), model_matrix


def similarity_study(
    model,
    sequences: Sequence[str],
    alphabet,
    n_resamples: int = 200,
    seed: int = 0,
    untrained_seeds: int = 5,
    max_length: int | None = 512,
    attention_study: tuple[dict, dict] | None = None,
    say=None,
) -> tuple[dict, dict]:
    """({"embedding", "substitution", "attention", "settings"}, matrices): the JSON-ready study
    (NaN where undefined) and the 20 x 20 matrices in AMINO_ACIDS order.

    ``attention_study``: the (study, matrices) of ``blosum_study`` with ``return_matrices`` on
    the same proteins, seed, max_length and ``untrained_seeds``, where the caller has run it
    already (`make reproduce`); otherwise it is run here. ``say``: told one line as each
    measure starts (its cost is in how many models run over the proteins)."""
    say = say or (lambda line: None)
    sequences = list(sequences)
    seeds = list(range(seed, seed + untrained_seeds))
    counts = composition(sequences, alphabet, max_length)
    options = dict(n_resamples=n_resamples, seed=seed, max_length=max_length)
    shared = shared_inputs(model, counts, seeds, n_resamples, seed)
    say(f"embeddings: the model and {len(seeds)} untrained controls")
    embedding, embedding_matrices = embedding_block(model, alphabet, shared, n_resamples, seed)
    runs = f"{len(sequences)} proteins x (the model, {len(seeds)} untrained, shuffled residues)"
    say(f"substitutions: predictions over {runs}")
    substitution, substitution_matrix = substitution_block(
        model, sequences, alphabet, shared, options
    )
    if attention_study is None:
        say(f"attention: maps over {runs}")
    attention, attention_matrix = attention_block(
        model, sequences, alphabet, shared, options, attention_study
    )
    study = {"embedding": embedding, "substitution": substitution, "attention": attention}
    study["settings"] = {
        "n_proteins": len(sequences),
        "n_residues": int(counts.sum()),
        "max_length": max_length,
        "n_resamples": n_resamples,
        "seed": seed,
        "untrained_seeds": seeds,
        "objective": "causal" if model.config.causal else "masked",
        "attention": model.config.attention,
        "order": AMINO_ACIDS,
        "comparison": "Pearson and Spearman r with BLOSUM62 over the 190 off-diagonal pairs",
        "signal_rule": SIGNAL_RULE,
    }
    matrices = {
        "embedding": embedding_matrices["input"],
        "substitution": substitution_matrix,
        "attention": attention_matrix,
        "frequency": shared.frequency,
        "blosum62": blosum62(),
    }
    if "output" in embedding_matrices:
        matrices["embedding_output"] = embedding_matrices["output"]
    return study, matrices


__all__ = [
    "CI_METHODS",
    "MEASURES",
    "composition",
    "cosine_similarity",
    "frequency_matrix",
    "partial_correlation",
    "residue_vectors",
    "shared_inputs",
    "similarity_study",
    "untrained_envelope",
    "weighted_pearson",
]
