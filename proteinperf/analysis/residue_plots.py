"""Figures of the amino-acid similarity study: matrices beside BLOSUM62 in property-group
order, r with intervals against the controls, and a 2-D map of the residue embeddings."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from .plots import matrix_panels, r_label
from .similarity import AMINO_ACIDS, PROPERTY_GROUPS

GROUP_ORDER = "".join(PROPERTY_GROUPS.values())  # AVLIM FWY STNQ KRH DE CGP
GROUP_COLOURS = dict(
    zip(
        PROPERTY_GROUPS,
        ("tab:orange", "tab:purple", "tab:green", "tab:blue", "tab:red", "tab:grey"),
    )
)
TITLES = {
    "embedding": "input embeddings (cosine)",
    "embedding_output": "LM-head embeddings (cosine)",
    "substitution": "learned substitution (half-bits)",
    "attention": "attention (Vig et al.)",
    "frequency": "frequency-only control",
    "blosum62": "BLOSUM62",
}
CONTROL_STYLE = {"untrained": "tab:grey", "frequency": "tab:brown", "shuffled": "tab:orange"}


def reorder(matrix, order: str = GROUP_ORDER, source: str = AMINO_ACIDS) -> np.ndarray:
    """Rows and columns of a matrix in ``source`` order rearranged into ``order``, diagonal
    blanked (self-similarity is not compared)."""
    index = [source.index(a) for a in order]
    m = np.asarray(matrix, dtype=np.float64)[np.ix_(index, index)].copy()
    np.fill_diagonal(m, np.nan)
    return m


def matrices_figure(matrices: Mapping[str, np.ndarray], study: Mapping) -> Figure:
    """Each learned matrix, the frequency-only control and BLOSUM62, residues grouped by
    property (group boundaries drawn), each titled with its r against BLOSUM62."""
    panels = {}
    for key, title in TITLES.items():
        if key not in matrices:
            continue
        block = study.get(key)
        if key == "embedding_output":
            block = study["embedding"].get("lm_head")
        elif key == "frequency":
            block = study["embedding"]["controls"]["frequency"]
        label = title if key == "blosum62" else f"{title}\n{r_label(block)}"
        panels[label] = reorder(matrices[key])
    fig = matrix_panels(panels, order=GROUP_ORDER)
    fig.set_size_inches(3.3 * len(panels), 3.4)
    edges = np.cumsum([len(g) for g in PROPERTY_GROUPS.values()])[:-1] - 0.5
    for ax in fig.axes[: len(panels)]:  # the images (the colour bars come after)
        for edge in edges:
            ax.axhline(edge, color="black", lw=0.6)
            ax.axvline(edge, color="black", lw=0.6)
    fig.suptitle(
        f"amino-acid similarity vs BLOSUM62 ({study['settings']['n_proteins']} proteins), "
        "residues by property group: " + " | ".join(PROPERTY_GROUPS.values()),
        fontsize=9,
    )
    return fig


def _interval(ax, x: float, block: Mapping, colour: str, label: str | None, marker="o") -> None:
    r = block.get("pearson")
    low, high = block.get("ci95") or (None, None)
    if r is None or not np.isfinite(r):
        return
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        ax.plot([x, x], [low, high], color=colour, lw=2)
    ax.plot([x], [r], marker, color=colour, ms=5, label=label)


def correlations_figure(study: Mapping) -> Figure:
    """Pearson r with BLOSUM62 and its 95% interval per measure, each beside its controls."""
    measures = [m for m in ("embedding", "substitution", "attention") if m in study]
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    seen = set()
    for i, measure in enumerate(measures):
        block = study[measure]
        _interval(ax, i - 0.24, block, "tab:blue", None if "model" in seen else "trained model")
        seen.add("model")
        for j, (name, control) in enumerate(block["controls"].items(), start=1):
            colour = CONTROL_STYLE.get(name, "black")
            _interval(ax, i - 0.24 + 0.16 * j, control, colour, None if name in seen else name, "s")
            seen.add(name)
        if block.get("signal"):
            ax.annotate("signal", (i - 0.24, block["ci95"][1]), xytext=(0, 6),
                        textcoords="offset points", ha="center", fontsize=7)  # fmt: skip
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(range(len(measures)), measures)
    ax.set_ylabel("Pearson r vs BLOSUM62 (95% interval)")
    ax.set_title("each measure beside its controls (untrained: envelope over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3, axis="y")
    return fig


def embedding_map(vectors: np.ndarray, title: str = "input token embeddings") -> Figure:
    """The residues' embeddings (20, d), mean-centred, on their first two principal components,
    coloured by property group."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v - v.mean(0)
    u, s, _ = np.linalg.svd(v, full_matrices=False)
    xy = u[:, :2] * s[:2]
    explained = s[:2] ** 2 / max(float((s**2).sum()), 1e-300)
    fig = Figure(figsize=(4.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for group, letters in PROPERTY_GROUPS.items():
        idx = [AMINO_ACIDS.index(a) for a in letters]
        ax.scatter(xy[idx, 0], xy[idx, 1], s=60, color=GROUP_COLOURS[group], label=group)
        for k in idx:
            ax.annotate(AMINO_ACIDS[k], xy[k], ha="center", va="center", fontsize=7, color="white")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%})")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


__all__ = ["GROUP_ORDER", "correlations_figure", "embedding_map", "matrices_figure", "reorder"]
