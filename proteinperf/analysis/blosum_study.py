"""Does attention learn amino-acid similarity? The model beside two controls, with intervals.

For the trained model, an untrained model of the same shape, and the trained model on the same
proteins with their residues shuffled within each sequence (composition kept, order destroyed),
both statistics of ``similarity`` are compared with BLOSUM62, with a bootstrap 95% interval over
proteins, over all heads and per layer. A signal is only claimed where the model's interval
lies above both controls (``signal``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from proteinperf.errors import InputError
from proteinperf.layers import LAYER_NUMBERING
from proteinperf.plain import plain

from .attention_maps import attention_inputs, frame_sequence, layer_attention, untrained_control
from .similarity import ResidueAttentionStats, blosum62, bootstrap_vs_blosum, combine_heads

STATISTICS = ("similarity", "pair_attention")  # Vig et al.'s first: the one the issue reports


def shuffle_residues(sequence: str, seed: int) -> str:
    """The residues of ``sequence`` in a random order (seeded): the shuffled control."""
    order = np.random.default_rng(seed).permutation(len(sequence))
    return "".join(sequence[i] for i in order)


def shuffled_sequences(sequences: Sequence[str], seed: int) -> list[str]:
    """Each sequence shuffled with its own seed from (``seed``, its index): the proteins of the
    shuffled control, the same for every statistic that uses them."""
    return [shuffle_residues(s, seed * 1_000_003 + i) for i, s in enumerate(sequences)]


@torch.no_grad()
def layer_statistics(
    model,
    sequences: Iterable[str],
    alphabet,
    max_length: int | None = 1024,
    threshold: float = 0.0,
) -> list[ResidueAttentionStats]:
    """One ResidueAttentionStats per transformer block, first to last (all heads), per-sequence
    sums kept.

    One forward pass per sequence gives every layer's Q and K; the layers' L x L maps are then
    formed one at a time (memory: one layer's H x L x L).
    """
    config = model.config
    stats = [
        ResidueAttentionStats(config.n_heads, threshold, keep_per_sequence=True)
        for _ in range(config.n_layers)
    ]
    device = next(model.parameters()).device
    for sequence in sequences:
        tokens = frame_sequence(sequence, alphabet, max_length)
        inputs = attention_inputs(model, tokens.to(device))
        for layer, (q, k) in enumerate(inputs):
            favor, exact = layer_attention(model.attention_layers[layer], q, k)
            weights = exact if favor is None else favor  # (1, H, L, L): what the model uses
            stats[layer].update(weights[0].float().cpu(), tokens[0], alphabet, config.causal)
    if not stats or stats[0].n_sequences == 0:
        raise InputError("no sequences to analyse")
    return stats


def summarise_condition(
    per_layer: Sequence[ResidueAttentionStats],
    blosum,
    n_resamples: int,
    seed: int,
    layers: bool = True,
) -> dict:
    """{pearson, ci95, ...} of the Vig statistic over all heads, the pair statistic and (with
    ``layers``) per layer, for one condition (model or control)."""
    overall = bootstrap_vs_blosum(combine_heads(per_layer), blosum, n_resamples, seed)
    out = dict(overall["similarity"])
    out["pair_attention"] = overall["pair_attention"]
    if not layers:
        return out
    out["per_layer"] = []
    for layer, stats in enumerate(per_layer, start=1):  # numbered as embed: 1 = first block
        result = bootstrap_vs_blosum(stats, blosum, n_resamples, seed)
        out["per_layer"].append(
            {
                "layer": layer,
                "similarity": _short(result["similarity"]),
                "pair_attention": _short(result["pair_attention"]),
            }
        )
    return out


def _short(result: dict) -> dict:
    return {"pearson": result["pearson"], "ci95": result["ci95"]}


def _seed_entry(summary: dict) -> dict:
    """One untrained seed's overall numbers (no per-layer rows)."""
    entry = {k: summary[k] for k in ("pearson", "spearman", "ci95", "n_pairs")}
    entry["pair_attention"] = _short(summary["pair_attention"])
    return entry


def signal(model: dict, *controls: dict) -> bool:
    """True only when the model's interval lies above every control's interval."""
    low = model["ci95"][0]
    highs = [c["ci95"][1] for c in controls]
    values = [low, *highs]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return False
    return all(low > high for high in highs)


def blosum_study(
    model,
    sequences: Sequence[str],
    alphabet,
    n_resamples: int = 200,
    seed: int = 0,
    max_length: int | None = 1024,
    threshold: float = 0.0,
    return_matrices: bool = False,
    untrained_seeds: int = 1,
    untrained_models: Sequence | None = None,
):
    """The ``similarity`` entry of reproduce.json (JSON-ready; NaN where undefined)::

        {"model": {pearson, ci95, spearman, pair_attention: {...}, per_layer: [...]},
         "untrained": {...}, "untrained_seeds": [...], "shuffled": {...}, "signal": bool,
         "n_sequences": N, ...}

    ``seed`` seeds the shuffles and the bootstrap; the untrained controls are seeded
    ``seed``, ``seed + 1``, ... (``untrained_seeds`` of them; "untrained" is the first,
    "untrained_seeds" lists each one's r and interval; ``untrained_models``: those controls,
    where the caller has built them already). With ``return_matrices`` also returns
    {"model", "untrained", "shuffled", "blosum62"}: the 20 x 20 Vig similarity matrices (all
    heads; "untrained" of the first seed).
    """
    sequences = list(sequences)
    if not sequences:
        raise InputError("no sequences to analyse")
    if untrained_seeds < 1:
        raise ValueError(f"untrained_seeds must be >= 1, got {untrained_seeds}")
    if untrained_models is not None and len(untrained_models) != untrained_seeds:
        raise ValueError(f"{len(untrained_models)} untrained models for {untrained_seeds} seeds")
    blosum = blosum62()
    device = next(model.parameters()).device
    options = dict(max_length=max_length, threshold=threshold)
    controls = []
    for k in range(untrained_seeds):
        if untrained_models is None:
            control = untrained_control(model.config, seed + k).to(device)
        else:
            control = untrained_models[k]
        controls.append(layer_statistics(control, sequences, alphabet, **options))
    shuffled = shuffled_sequences(sequences, seed)
    conditions = {
        "model": layer_statistics(model, sequences, alphabet, **options),
        "untrained": controls[0],
        "shuffled": layer_statistics(model, shuffled, alphabet, **options),
    }
    out = {
        name: summarise_condition(stats, blosum, n_resamples, seed)
        for name, stats in conditions.items()
    }
    out["untrained_seeds"] = [{"seed": seed, **_seed_entry(out["untrained"])}]
    for k, stats in enumerate(controls[1:], start=1):
        summary = summarise_condition(stats, blosum, n_resamples, seed, layers=False)
        out["untrained_seeds"].append({"seed": seed + k, **_seed_entry(summary)})
    out["signal"] = signal(out["model"], *out["untrained_seeds"], out["shuffled"])
    out["statistic"] = (
        "Pearson r over the 190 amino-acid pairs between BLOSUM62 and the correlation over "
        "heads of each residue type's share of attention (Vig et al. 2020); pair_attention: "
        "mean attention between residue types relative to uniform"
    )
    out["layer_numbering"] = LAYER_NUMBERING
    out["n_sequences"] = len(sequences)
    out["n_heads"] = model.config.n_layers * model.config.n_heads
    out["threshold"] = threshold
    out["max_length"] = max_length
    out["seed"] = seed
    if not return_matrices:
        return out
    matrices = {name: combine_heads(s).similarity() for name, s in conditions.items()}
    matrices["blosum62"] = blosum
    return out, matrices


def json_safe(value):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python numbers."""
    return plain(value, finite=True)


def write_figures(study: dict, matrices: dict, outdir, prefix: str = "similarity") -> list:
    """<prefix>_vs_blosum62.png (the paper's figure, with both controls) and
    <prefix>_per_layer.png in ``outdir``; returns their paths."""
    from pathlib import Path

    from . import plots

    outdir = Path(outdir)
    return [
        plots.save_figure(
            plots.similarity_figure(matrices, study), outdir / f"{prefix}_vs_blosum62.png"
        ),
        plots.save_figure(plots.per_layer_figure(study), outdir / f"{prefix}_per_layer.png"),
    ]


__all__ = [
    "json_safe",
    "write_figures",
    "STATISTICS",
    "blosum_study",
    "layer_statistics",
    "shuffle_residues",
    "shuffled_sequences",
    "signal",
    "summarise_condition",
]
