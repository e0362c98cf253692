"""`proteinperf similarity`: the amino-acid similarity study of a checkpoint written to a
directory that appears whole: similarity.json, similarity.md, matrices.npz and figures."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from proteinperf.atomic import atomic_output
from proteinperf.errors import ConfigError, InputError
from proteinperf.outputs import check_apart
from proteinperf.plain import plain

from . import plots, residue_plots
from .similarity import AMINO_ACIDS, r_text
from .similarity_study import MEASURES, residue_vectors, similarity_study

FIGURES = ("similarity_matrices.png", "similarity_vs_controls.png", "embedding_map.png")


def check_outdir(outdir, inputs, overwrite: bool) -> Path:
    """OUTDIR, refused when it exists (without ``overwrite``), is not a directory, is one of
    the inputs or holds one (proteinperf.outputs.check_apart: replacing it would delete the
    input)."""
    outdir = Path(outdir)
    check_apart(inputs, [outdir])
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir} exists and is not a directory")
    if outdir.exists() and not overwrite:
        raise InputError(f"{outdir} exists (use --overwrite to replace it)")
    return outdir


def markdown(study: dict, title: str) -> str:
    """A short page: per measure r with its interval, Spearman, each control, the partial
    correlation given frequency and whether a signal is claimed."""
    s = study["settings"]
    lines = [
        f"# Amino-acid similarity vs BLOSUM62: {title}",
        "",
        f"{s['n_proteins']} proteins ({s['n_residues']:,} residues, first {s['max_length']} "
        f"of each), {s['n_resamples']} bootstrap resamples, untrained seeds "
        f"{s['untrained_seeds']}. Pearson r [95% interval] over the 190 off-diagonal pairs.",
        "",
        "| Measure | r [95% CI] | Spearman | Untrained (envelope) | Frequency-only | "
        "Shuffled residues | Partial r given frequency | Signal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(m, study[m]) for m in MEASURES]
    if study["embedding"].get("lm_head"):
        rows.insert(1, ("embedding (LM head)", study["embedding"]["lm_head"]))
    for name, block in rows:
        c = block["controls"]
        spearman = block.get("spearman")
        partial = block["partial_given_frequency"]["pearson"]
        lines.append(
            f"| {name} | {r_text(block)} | {'-' if spearman is None else f'{spearman:.3f}'} | "
            f"{r_text(c['untrained'])} | {r_text(c['frequency'])} | "
            f"{r_text(c['shuffled']) if 'shuffled' in c else 'n/a'} | "
            f"{'-' if partial is None else f'{partial:.3f}'} | "
            f"{'yes' if block['signal'] else 'no'} |"
        )
    lines += [
        "",
        f"Intervals: embeddings, {study['embedding']['ci_method']}; substitution and attention, "
        f"{study['substitution']['ci_method']}. Untrained: "
        f"{study['embedding']['controls']['untrained']['interval']}. {s['signal_rule']}.",
    ]
    return "\n".join(lines) + "\n"


def write_similarity_report(
    checkpoint,
    fasta,
    outdir,
    max_seqs: int = 200,
    max_length: int = 512,
    n_resamples: int = 200,
    untrained_seeds: int = 5,
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    say=None,
) -> Path:
    """Run ``similarity_study`` on the first ``max_seqs`` proteins of ``fasta``; write OUTDIR.
    ``say``: told a line as each stage starts (None: silent)."""
    from proteinperf.checkpoint import load_model, resolve_checkpoint
    from proteinperf.data import read_fasta

    if max_seqs < 1 or max_length < 1:
        raise ConfigError(f"max_seqs and max_length must be positive, got {max_seqs}, {max_length}")
    if n_resamples < 10:
        raise ConfigError(f"--bootstrap needs at least 10 resamples, got {n_resamples}")
    if untrained_seeds < 1:
        raise ConfigError(f"--untrained-seeds must be at least 1, got {untrained_seeds}")
    outdir = check_outdir(outdir, [resolve_checkpoint(checkpoint), fasta], overwrite)
    model, alphabet = load_model(checkpoint, device=device)
    records = list(itertools.islice(read_fasta(fasta), max_seqs))
    if not records:
        raise InputError(f"{fasta}: no sequences")
    study, matrices = similarity_study(
        model,
        [r.sequence for r in records],
        alphabet,
        n_resamples=n_resamples,
        seed=seed,
        untrained_seeds=untrained_seeds,
        max_length=max_length,
        say=say,
    )
    study["settings"] = {"checkpoint": str(checkpoint), "fasta": str(fasta), **study["settings"]}
    title = Path(str(checkpoint)).stem
    with atomic_output(outdir, directory=True) as tmp:
        text = json.dumps(plain(study, finite=True), indent=2, allow_nan=False)
        (tmp / "similarity.json").write_text(text + "\n")
        (tmp / "similarity.md").write_text(markdown(plain(study, finite=True), title))
        np.savez_compressed(tmp / "matrices.npz", order=np.array(list(AMINO_ACIDS)), **matrices)
        vectors = residue_vectors(model, alphabet)["input"]
        figures = (
            residue_plots.matrices_figure(matrices, study),
            residue_plots.correlations_figure(study),
            residue_plots.embedding_map(vectors, f"{title}: input token embeddings"),
        )
        for name, fig in zip(FIGURES, figures):
            plots.save_figure(fig, tmp / name, dpi=100)
    return outdir


def describe_similarity(outdir) -> list[str]:
    """One line per measure of a written report: r, its interval, and whether it stands above
    every control."""
    study = json.loads((Path(outdir) / "similarity.json").read_text())
    lines = []
    for name in MEASURES:
        block = study[name]
        verdict = "signal" if block["signal"] else "no signal (not above every control)"
        lines.append(f"{name}: r {r_text(block)}: {verdict}")
    return lines


__all__ = [
    "FIGURES",
    "check_outdir",
    "describe_similarity",
    "markdown",
    "write_similarity_report",
]
