"""The attention report of `proteinperf attention`: statistics of a model beside its untrained
control, written as PNGs, matrices (.npz) and summary.json into a directory that appears whole.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proteinperf.atomic import atomic_output
from proteinperf.errors import ConfigError, InputError
from proteinperf.layers import LAYER_NUMBERING, resolve_layers
from proteinperf.plain import plain

from . import plots
from .attention_maps import (
    approximates_softmax,
    approximation_error,
    attention_maps,
    frame_sequence,
    select,
    select_numbered,
)
from .plots import HEAD_NUMBERING, head_number
from .similarity import (
    AMINO_ACIDS,
    ResidueAttentionStats,
    blosum62,
    compare_with_blosum,
    pair_values,
    r_text,
)

ERROR_METRICS = ("tv", "mse", "rel_frobenius")
MAX_FAVOR_VS_EXACT_ROWS = 3
# Heatmap grids -> their colour maps: written as palette PNGs, several times smaller.
PALETTE_FIGURES = {
    "attention_maps.png": ["viridis"],
    "attention_maps_control.png": ["viridis"],
    "favor_vs_exact.png": ["viridis", "RdBu_r"],
}


@dataclass
class ModelAnalysis:
    """Statistics of one model over a set of sequences (selected layers x heads)."""

    layers: list[int]
    heads: list[int]
    kernel: str | None
    stats: ResidueAttentionStats  # from the attention the model uses
    exact_stats: ResidueAttentionStats | None  # FAVOR models: the exact softmax of the same Q, K
    errors: dict[str, np.ndarray] | None  # FAVOR models: metric -> (layers, heads), mean/seq


def analyse_model(
    model,
    sequences: Iterable[str],
    alphabet,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    threshold: float = 0.0,
    max_length: int | None = 1024,
    progress=None,
) -> ModelAnalysis:
    """Accumulate residue-type statistics and FAVOR+ approximation errors, one sequence at a time
    (no padding, so no padded keys to account for; memory is one layer's H x L x L).
    ``progress``: anything with ``update(n)`` (a tqdm bar), told each sequence's residues."""
    config = model.config
    layers = resolve_layers(layers, config.n_layers, embeddings=False)
    heads = select(heads, config.n_heads, "heads")
    n_maps = len(layers) * len(heads)
    stats = ResidueAttentionStats(n_maps, threshold)
    exact_stats = ResidueAttentionStats(n_maps, threshold) if config.favor_kernel else None
    error_sums = {m: np.zeros((len(layers), len(heads))) for m in ERROR_METRICS}
    for sequence in sequences:
        tokens = frame_sequence(sequence, alphabet, max_length)
        maps = attention_maps(model, tokens, layers, heads)
        stats.update(maps.model, tokens[0], alphabet, maps.causal)
        if exact_stats is not None:
            exact_stats.update(maps.exact, tokens[0], alphabet, maps.causal)
            for name, value in approximation_error(maps.favor, maps.exact).items():
                error_sums[name] += value.double().numpy()
        if progress is not None:
            progress.update(tokens.shape[1] - 2)
    if stats.n_sequences == 0:
        raise InputError("no sequences to analyse")
    errors = None
    if exact_stats is not None:
        errors = {name: total / stats.n_sequences for name, total in error_sums.items()}
    return ModelAnalysis(layers, heads, config.favor_kernel, stats, exact_stats, errors)


def summarise(analysis: ModelAnalysis, blosum: np.ndarray) -> dict:
    """JSON-ready numbers: correlations with BLOSUM62, notable pairs, approximation errors."""
    similarity = analysis.stats.similarity()
    out = {
        "n_sequences": analysis.stats.n_sequences,
        "n_residues": analysis.stats.n_residues,
        "similarity_vs_blosum62": compare_with_blosum(similarity, blosum),
        "pair_attention_vs_blosum62": compare_with_blosum(analysis.stats.pair_attention(), blosum),
        "notable_pairs_similarity": pair_values(similarity),
    }
    if analysis.exact_stats is not None:
        out["exact_softmax_similarity_vs_blosum62"] = compare_with_blosum(
            analysis.exact_stats.similarity(), blosum
        )
    if analysis.errors is not None:
        out["approximation_error"] = {
            name: {"mean": float(values.mean()), "per_layer_head": values.tolist()}
            for name, values in analysis.errors.items()
        }
    return out


def _json_safe(value):
    """NaN/inf -> null, so summary.json stays strict JSON."""
    return plain(value, finite=True)


def _matches(record_id: str, protein: str) -> bool:
    return protein == record_id or protein in record_id.split("|")


def pick_record(records: Iterable, protein: str | None):
    """The first record whose id, or a |-separated field of it (e.g. HBA_HUMAN), is ``protein``;
    the first record when ``protein`` is None."""
    for record in records:
        if protein is None or _matches(record.id, protein):
            return record
    raise InputError(f"protein {protein!r} not found" if protein else "no sequences")


def _matrices(model_a: ModelAnalysis, control_a: ModelAnalysis, blosum) -> dict:
    out = {
        "amino_acids": np.array(list(AMINO_ACIDS)),
        "layers": np.array(model_a.layers),  # numbered as embed: 1 = first block
        "layer_numbering": np.array(LAYER_NUMBERING),
        "heads": np.array([head_number(h) for h in model_a.heads]),
        "head_numbering": np.array(HEAD_NUMBERING),
        "blosum62": blosum,
    }
    for prefix, a in (("model", model_a), ("control", control_a)):
        out[f"{prefix}_similarity"] = a.stats.similarity()
        out[f"{prefix}_head_fractions"] = a.stats.fractions()
        out[f"{prefix}_pair_attention"] = a.stats.pair_attention()
        if a.exact_stats is not None:
            out[f"{prefix}_exact_similarity"] = a.exact_stats.similarity()
        for name, values in (a.errors or {}).items():
            out[f"{prefix}_error_{name}"] = values
    return out


def _figures(model, control, record, model_a, control_a, blosum, alphabet, max_length):
    """(file name, Figure) pairs of the report."""
    tokens = frame_sequence(record.sequence, alphabet, max_length)
    labels = [alphabet.tokens[int(t)].strip("<>")[:3] for t in tokens[0]]
    name = record.id.split("|")[-1]
    layers, heads = model_a.layers, model_a.heads
    maps = attention_maps(model, tokens, layers, heads)
    control_maps = attention_maps(control, tokens, layers, heads)
    kind = f"FAVOR+ ({maps.kernel})" if maps.favor is not None else "exact softmax"
    yield (
        "attention_maps.png",
        plots.attention_grid(
            maps.model, layers, heads, labels, f"{name}: trained model, {kind} attention"
        ),
    )
    yield (
        "attention_maps_control.png",
        plots.attention_grid(
            control_maps.model, layers, heads, labels, f"{name}: untrained control"
        ),
    )
    if maps.favor is not None:
        pairs = list(itertools.product(range(len(layers)), range(len(heads))))
        worst = sorted(pairs, key=lambda p: -float(model_a.errors["tv"][p]))
        rows = [
            (plots.panel_name(layers[r], heads[c]), maps.exact[r, c], maps.favor[r, c])
            for r, c in worst[:MAX_FAVOR_VS_EXACT_ROWS]
        ]
        estimates = approximates_softmax(maps.kernel)
        name = f"FAVOR {maps.kernel}"
        yield "favor_vs_exact.png", plots.exact_vs_favor(rows, labels, estimates, name)
        n = model_a.stats.n_sequences
        if estimates:
            title = f"{name} vs exact softmax of the same Q, K, mean over {n} sequences"
            label = "mean total variation (approximation error)"
        else:
            title = (
                f"{name} is not an estimate of softmax: its distance from\nthe softmax of the "
                f"same Q, K, mean over {n} sequences"
            )
            label = "mean total variation (a distance, not an error)"
        yield (
            "approximation_error.png",
            plots.error_grid(model_a.errors["tv"], layers, heads, title, label),
        )
    similarity = {
        "trained model": model_a.stats.similarity(),
        "untrained control": control_a.stats.similarity(),
    }
    yield (
        "similarity_vs_blosum62.png",
        plots.matrix_panels(
            {**similarity, "BLOSUM62": blosum},
            title="amino-acid similarity from attention (Pearson over heads) vs BLOSUM62",
        ),
    )
    yield "similarity_scatter.png", plots.blosum_scatter(similarity, blosum)
    pair = {
        "trained model": model_a.stats.pair_attention(),
        "untrained control": control_a.stats.pair_attention(),
    }
    yield (
        "pair_attention_vs_blosum62.png",
        plots.matrix_panels(
            {**pair, "BLOSUM62": blosum},
            centres={k: 1.0 for k in pair},
            title="mean attention between residue types (1 = uniform) vs BLOSUM62",
        ),
    )
    yield (
        "pair_attention_scatter.png",
        plots.blosum_scatter(pair, blosum, ylabel="attention relative to uniform"),
    )


def write_attention_report(
    checkpoint,
    fasta,
    outdir,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    max_seqs: int = 800,
    max_length: int = 1024,
    threshold: float = 0.0,
    protein: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    overwrite: bool = False,
    bootstrap: int = 0,
    quiet: bool = True,
) -> Path:
    """Analyse ``checkpoint`` on the first ``max_seqs`` sequences of ``fasta`` beside an untrained
    control of the same shape (seeded by ``seed``); write the report to ``outdir``. ``layers``
    are numbered as in embed (1 = first block) and ``heads`` as in the figures (1 = first), and
    the outputs number them the same way.

    ``bootstrap`` > 0 adds the BLOSUM62 study (blosum_study.json, similarity_vs_blosum62 with
    both controls, per layer): that many bootstrap resamples over the sequences, all layers and
    heads, the untrained and the shuffled-residue controls. Unless ``quiet``, says on stderr
    what it analyses, with a progress bar per model (``describe_report`` sums up the result)."""
    from proteinperf.checkpoint import load_model
    from proteinperf.data import read_fasta

    from .attention_maps import untrained_control

    if max_seqs < 1 or max_length < 1:
        raise ConfigError(f"max_seqs and max_length must be positive, got {max_seqs}, {max_length}")
    if threshold < 0 or threshold >= 1:
        raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir} exists and is not a directory")
    if outdir.is_dir() and any(outdir.iterdir()) and not overwrite:
        raise InputError(f"{outdir} exists and is not empty (use --overwrite to replace it)")
    # The whole file is read (and so checked), though only the first max_seqs are analysed.
    records, wanted = [], None
    for record in read_fasta(fasta):
        if len(records) < max_seqs:
            records.append(record)
        if wanted is None and protein is not None and _matches(record.id, protein):
            wanted = record
    if not records:
        raise InputError(f"{fasta}: no sequences")
    record = records[0] if protein is None else wanted
    if record is None:
        raise InputError(f"{fasta}: protein {protein!r} not found")
    model, alphabet = load_model(checkpoint, device=device)
    control = untrained_control(model.config, seed).to(device)
    config = model.config
    layers = resolve_layers(layers, config.n_layers, embeddings=False)  # bad ones: before work
    heads = select_numbered(heads, config.n_heads, "heads")
    blosum = blosum62()
    options = dict(layers=layers, heads=heads, threshold=threshold, max_length=max_length)
    sequences = [r.sequence for r in records]
    say = _teller(quiet)
    say(
        f"attention: {checkpoint} ({config.attention}, {config.n_layers} layers x "
        f"{config.n_heads} heads) and its untrained control on {len(sequences)} sequences of "
        f"{fasta} (cut to {max_length} residues), device {device}"
    )
    residues = sum(min(len(seq), max_length) for seq in sequences)
    analyses = []
    for who, network in (("model", model), ("untrained control", control)):
        with _bar(quiet, who, residues) as bar:
            analyses.append(analyse_model(network, sequences, alphabet, progress=bar, **options))
    model_a, control_a = analyses
    say(f"attention: drawing the figures of {record.id}")

    with atomic_output(outdir, directory=True) as tmp:
        for file_name, fig in _figures(
            model, control, record, model_a, control_a, blosum, alphabet, max_length
        ):
            if file_name in PALETTE_FIGURES:
                dpi = plots.grid_dpi(min(len(record.sequence), max_length) + 2)  # <cls>, <eos>
                plots.save_figure(fig, tmp / file_name, dpi, PALETTE_FIGURES[file_name])
            else:
                plots.save_figure(fig, tmp / file_name)
        np.savez_compressed(tmp / "matrices.npz", **_matrices(model_a, control_a, blosum))
        summary = {
            "checkpoint": str(checkpoint),
            "fasta": str(fasta),
            "protein": record.id,
            "attention": model.config.attention,
            "causal": model.config.causal,
            "layers": model_a.layers,
            "layer_numbering": LAYER_NUMBERING,
            "heads": [head_number(h) for h in model_a.heads],
            "head_numbering": HEAD_NUMBERING,
            "threshold": threshold,
            "max_length": max_length,
            "seed": seed,
            "amino_acids": AMINO_ACIDS,
            "model": summarise(model_a, blosum),
            "control": summarise(control_a, blosum),
        }
        (tmp / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
        if bootstrap > 0:
            from .blosum_study import blosum_study, json_safe, write_figures

            say(f"attention: BLOSUM62 study, {bootstrap} bootstrap resamples and its controls")

            study, matrices = blosum_study(
                model,
                sequences,
                alphabet,
                n_resamples=bootstrap,
                seed=seed,
                max_length=max_length,
                threshold=threshold,
                return_matrices=True,
                untrained_models=[control],  # the control above: the same seed
            )
            (tmp / "blosum_study.json").write_text(json.dumps(json_safe(study), indent=2) + "\n")
            write_figures(study, matrices, tmp, prefix="study")
    return outdir


def _teller(quiet: bool):
    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    return say


def _bar(quiet: bool, desc: str, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="res", unit_scale=True, disable=quiet, leave=False)


def describe_report(outdir, seconds: float | None = None) -> list[str]:
    """A few lines on what a report folder holds and what it found, for the terminal."""
    outdir = Path(outdir)
    summary = json.loads((outdir / "summary.json").read_text())
    files = sorted(p.name for p in outdir.iterdir())
    figures = sum(name.endswith(".png") for name in files)
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    model, control = summary["model"], summary["control"]
    lines = [
        f"wrote {outdir}/{took}: summary.json, matrices.npz, {figures} figures "
        f"({summary['model']['n_sequences']} sequences, layers {summary['layers']}, "
        f"protein drawn: {summary['protein']})",
        "  attention similarity vs BLOSUM62 (Pearson r over residue-type pairs): model "
        f"{r_text(model['similarity_vs_blosum62'], undefined='n/a')}, untrained control "
        f"{r_text(control['similarity_vs_blosum62'], undefined='n/a')}",
        "  mean attention between residue types vs BLOSUM62: model "
        f"{r_text(model['pair_attention_vs_blosum62'], undefined='n/a')}, untrained control "
        f"{r_text(control['pair_attention_vs_blosum62'], undefined='n/a')}",
    ]
    if "approximation_error" in model:
        tv = model["approximation_error"]["tv"]["mean"]
        tv_control = control["approximation_error"]["tv"]["mean"]
        relu = summary["attention"] == "favor_relu"
        lines.append(
            f"  {summary['attention']} vs exact softmax of the same Q, K: mean total variation "
            f"per query {tv:.3f} (untrained control {tv_control:.3f}; 0 = same, 1 = disjoint)"
            + (
                "; ReLU features do not estimate softmax, so this is a distance, not an "
                "approximation error"
                if relu
                else ""
            )
        )
    study = outdir / "blosum_study.json"
    if study.is_file():
        found = json.loads(study.read_text()).get("signal")
        verdict = "above every control" if found else "not above the controls"
        lines.append(f"  BLOSUM62 study (bootstrap, blosum_study.json): attention signal {verdict}")
    return lines


__all__ = [
    "ModelAnalysis",
    "analyse_model",
    "describe_report",
    "pick_record",
    "summarise",
    "write_attention_report",
]
