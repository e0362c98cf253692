"""Figures of the attention analysis: matplotlib Figures built without pyplot (no global state,
works under Agg and inline in notebooks), saved as PNG with ``save_figure``."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from .similarity import AMINO_ACIDS, NOTABLE_PAIRS, compare_with_blosum, r_text

MAX_LETTER_TICKS = 60  # beyond this, residue letters on the axes become unreadable
PANEL_INCHES = 1.9
N_GREYS = 16  # of the 256 colours of a palette PNG (save_figure)
GRID_DPI = 100  # heatmap grids: panels of 190 px, enough for the stripes and diagonals
# Figures number layers as the layer numbers of embed and attention (1 = the first transformer
# block) and heads the same way, from 1; ``heads`` arguments are 0-based indices, as in the API.
LAYER_AXIS = "layer (1 = first transformer block)"
HEAD_AXIS = "head (1 = first)"
HEAD_NUMBERING = "1 = first head, -1 = last"  # of the attention report's outputs and --heads


def head_number(head: int) -> int:
    """The number a figure gives the head of 0-based index ``head``."""
    return int(head) + 1


def panel_name(layer: int, head: int) -> str:
    """'layer 3 head 6' for layer number ``layer`` and 0-based head index ``head``."""
    return f"layer {layer} head {head_number(head)}"


def _span(numbers: Sequence[int]) -> str:
    numbers = [int(n) for n in numbers]
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else str(numbers[0])
    return ", ".join(map(str, numbers))


def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, float)


def _sequence_ticks(
    ax, labels: Sequence[str] | None, n: int, x: bool = True, y: bool = True
) -> None:
    """Residue letters on the outer axes of short sequences; positions otherwise. Inner panels
    of a grid get no tick labels (also the bulk of the layout cost)."""
    letters = labels is not None and n <= MAX_LETTER_TICKS
    for show, set_ticks in ((x, ax.set_xticks), (y, ax.set_yticks)):
        if not show:
            set_ticks([])
        elif letters:
            set_ticks(range(n), labels, fontsize=5)
    ax.tick_params(axis="x", labelsize=5 if letters else 6, labelrotation=90 if letters else 0)
    ax.tick_params(axis="y", labelsize=5 if letters else 6)


def grid_dpi(length: int) -> int:
    """Resolution for heatmap grids of ``length`` positions: GRID_DPI, doubled where residue
    letters label the axes (short sequences: small files anyway, letters need the pixels)."""
    return GRID_DPI if length > MAX_LETTER_TICKS else 2 * GRID_DPI


def save_figure(fig: Figure, path, dpi: int = 150, palette: Sequence[str] | None = None) -> Path:
    """Write ``fig`` as PNG (or what the suffix says) and return the path; ``palette`` as in
    ``figure_png``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not palette:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        return path
    path.write_bytes(figure_png(fig, dpi, palette))
    return path


def figure_png(fig: Figure, dpi: int = 150, palette: Sequence[str] | None = None) -> bytes:
    """``fig`` as PNG bytes (for files, and for notebooks: ``IPython.display.Image(...)``).

    ``palette``: the names of the colour maps the figure uses; it is then written as a palette
    PNG whose 256 colours are those maps, sampled evenly, and 16 greys for text and lines.
    Heatmap grids shrink several-fold without visible loss (an adaptive palette would spend
    its colours on the most frequent shades and band the colour bar).
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    if not palette:
        return buffer.getvalue()
    from matplotlib import colormaps
    from PIL import Image

    per_map = (256 - N_GREYS) // len(palette)
    shades = [colormaps[name](np.linspace(0, 1, per_map))[:, :3] for name in palette]
    greys = np.repeat(np.linspace(0, 1, N_GREYS)[:, None], 3, axis=1)
    colours = np.concatenate([*shades, greys])
    table = Image.new("P", (1, 1))
    table.putpalette((colours * 255).round().astype(np.uint8).flatten().tolist())
    image = Image.open(buffer).convert("RGB")
    out = io.BytesIO()
    image.quantize(palette=table, dither=Image.Dither.NONE).save(out, format="png", optimize=True)
    return out.getvalue()


def attention_grid(
    maps,
    layers: Sequence[int],
    heads: Sequence[int],
    labels: Sequence[str] | None = None,
    title: str | None = None,
    quantile: float = 0.99,
) -> Figure:
    """Heatmaps (layers x heads) of one sequence's attention, maps (layers, heads, L, L).

    One colour scale for all panels, capped at a high quantile so that a few weights on
    <cls>/<eos> do not wash out the rest; the colour bar says so.
    """
    maps = _numpy(maps)
    n_rows, n_cols, length = maps.shape[0], maps.shape[1], maps.shape[-1]
    vmax = float(np.quantile(maps, quantile)) or float(maps.max()) or 1.0
    # Blocks when a panel has a pixel or more per position (they compress well, too); smoothed
    # downsampling, not a random pick of positions, when it has fewer.
    interpolation = "nearest" if length <= PANEL_INCHES * GRID_DPI else "antialiased"
    fig = Figure(
        figsize=(PANEL_INCHES * n_cols + 1.2, PANEL_INCHES * n_rows + 0.6), layout="constrained"
    )
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    image = None
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r, c]
            image = ax.imshow(
                maps[r, c], cmap="viridis", vmin=0.0, vmax=vmax, interpolation=interpolation
            )
            _sequence_ticks(ax, labels, length, x=r == n_rows - 1, y=c == 0)
            if r == 0:
                ax.set_title(f"head {head_number(head)}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"layer {layer}\nquery", fontsize=9)
            if r == n_rows - 1:
                ax.set_xlabel("key", fontsize=8)
    bar = fig.colorbar(image, ax=axes, shrink=0.6)
    bar.set_label(f"attention weight (capped at {quantile:.0%} quantile)")
    fig.supxlabel(
        f"columns: head {_span([head_number(h) for h in heads])}; rows: layer {_span(layers)} "
        "(1 = first transformer block)",
        fontsize=8,
    )
    if title:
        fig.suptitle(title)
    return fig


def _diverging_limits(matrix: np.ndarray, centre: float) -> tuple[float, float]:
    spread = np.nanmax(np.abs(matrix - centre)) if np.isfinite(matrix).any() else 1.0
    spread = float(spread) or 1.0
    return centre - spread, centre + spread


def matrix_panels(
    panels: Mapping[str, np.ndarray],
    order: str = AMINO_ACIDS,
    centres: Mapping[str, float] | None = None,
    title: str | None = None,
    xlabel: str = "",
    ylabel: str = "",
) -> Figure:
    """20x20 matrices side by side on the same residue order, each with its own colour bar.

    Diverging colours centred on ``centres[name]`` (0 by default): 0 for correlations and
    BLOSUM scores, 1 for attention relative to uniform. ``xlabel``/``ylabel`` name the axes
    (say which residue is which where the matrix is not symmetric).
    """
    centres = dict(centres or {})
    fig = Figure(figsize=(4.4 * len(panels), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    for ax, (name, matrix) in zip(axes, panels.items()):
        matrix = _numpy(matrix)
        vmin, vmax = _diverging_limits(matrix, centres.get(name, 0.0))
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks(range(len(order)), list(order), fontsize=7)
        ax.set_yticks(range(len(order)), list(order), fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def blosum_scatter(
    series: Mapping[str, np.ndarray],
    blosum: np.ndarray,
    ylabel: str = "attention similarity",
    order: str = AMINO_ACIDS,
    annotate: Sequence[str] = NOTABLE_PAIRS,
    seed: int = 0,
) -> Figure:
    """Off-diagonal values of each matrix against BLOSUM62, one panel per series, with r and ρ.

    BLOSUM scores are integers; a little horizontal jitter keeps the points apart.
    """
    rng = np.random.default_rng(seed)
    iu = np.triu_indices(len(order), k=1)
    fig = Figure(figsize=(4.4 * len(series), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(series), squeeze=False)[0])
    x = blosum[iu]
    jitter = rng.uniform(-0.15, 0.15, size=x.shape)
    wanted = {tuple(sorted((order.index(p[0]), order.index(p[1])))) for p in annotate}
    for ax, (name, matrix) in zip(axes, series.items()):
        matrix = _numpy(matrix)
        y = ((matrix + matrix.T) / 2)[iu]
        stats = compare_with_blosum(matrix, blosum)
        ax.scatter(x + jitter, y, s=10, alpha=0.6, color="tab:blue")
        for k, (i, j) in enumerate(zip(*iu)):
            if (i, j) in wanted and np.isfinite(y[k]):
                ax.annotate(
                    order[i] + order[j],
                    (x[k] + jitter[k], y[k]),
                    fontsize=8,
                    color="tab:red",
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_title(
            f"{name}\nPearson r = {stats['pearson']:.2f}, "
            f"Spearman ρ = {stats['spearman']:.2f} ({stats['n_pairs']} pairs)",
            fontsize=9,
        )
        ax.set_xlabel("BLOSUM62 score")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    return fig


def exact_vs_favor(
    rows: Sequence[tuple[str, object, object]],
    labels: Sequence[str] | None = None,
    approximates: bool = True,
    name: str = "FAVOR+",
    quantile: float = 0.99,
) -> Figure:
    """Per row (title, exact (L, L), favor (L, L)): exact softmax, the FAVOR map and, where the
    FAVOR kernel estimates softmax (``approximates``), FAVOR − exact on one colour scale shared
    by all rows. Kernels that estimate no softmax (ReLU features) get the two maps side by side
    and no difference: there is no error to show, only two different attentions.

    Colour scales are capped at the ``quantile`` of the values (of |FAVOR − exact| for the
    differences), so that a few extreme entries do not wash out the rest; the bars say so."""
    n_cols = 3 if approximates else 2
    fig = Figure(figsize=(3.6 * n_cols + 1.0, 3.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    pairs = [(_numpy(exact), _numpy(favor)) for _, exact, favor in rows]
    diffs = np.concatenate([np.abs(f - e).ravel() for e, f in pairs]) if pairs else np.zeros(1)
    limit = float(np.quantile(diffs, quantile)) or float(diffs.max()) or 1.0
    reference = "exact softmax" if approximates else "softmax of the same Q, K (not estimated)"
    for r, ((title, _, _), (exact, favor)) in enumerate(zip(rows, pairs)):
        vmax = float(max(np.quantile(exact, quantile), np.quantile(favor, quantile))) or 1.0
        panels = [
            (reference, exact, "viridis", 0.0, vmax, "weight"),
            (f"{name} (implicit)", favor, "viridis", 0.0, vmax, "weight"),
        ]
        if approximates:
            panels.append((f"{name} − exact", favor - exact, "RdBu_r", -limit, limit, "difference"))
        for c, (kind, matrix, cmap, lo, hi, what) in enumerate(panels):
            ax = axes[r, c]
            image = ax.imshow(matrix, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            _sequence_ticks(ax, labels, matrix.shape[-1], x=r == len(rows) - 1, y=c == 0)
            ax.set_title(f"{title}\n{kind}", fontsize=8)
            ax.set_xlabel("key", fontsize=8)
            ax.set_ylabel("query", fontsize=8)
            bar = fig.colorbar(image, ax=ax, shrink=0.8, extend="both" if lo < 0 else "max")
            bar.set_label(f"{what} (capped at {quantile:.0%} quantile)", fontsize=7)
    return fig


def error_grid(
    errors,
    layers: Sequence[int],
    heads: Sequence[int],
    title: str = "FAVOR+ approximation error",
    label: str = "mean total variation",
    vmax: float | None = None,
) -> Figure:
    """Heatmap of a per-(layer, head) error with the values written in the cells.

    ``vmax``: the top of the colour scale; give grids that are compared (a model and its
    control) the same one. Default: this grid's maximum."""
    errors = _numpy(errors)
    vmax = float(vmax if vmax is not None else errors.max()) or 1.0
    fig = Figure(figsize=(0.8 * len(heads) + 2.4, 0.6 * len(layers) + 1.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(errors, cmap="magma_r", vmin=0.0, vmax=vmax, aspect="auto")
    for (r, c), value in np.ndenumerate(errors):
        ax.text(
            c,
            r,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > 0.6 * vmax else "black",
        )
    ax.set_xticks(range(len(heads)), [str(head_number(h)) for h in heads])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel(HEAD_AXIS)
    ax.set_ylabel(LAYER_AXIS)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax).set_label(label)
    return fig


def approximation_curves(
    nb_features: Sequence[int],
    curves: Mapping[str, np.ndarray],
    ylabel: str = "relative error ‖Â − A‖_F / ‖A‖_F",
    title: str | None = None,
    baselines: Mapping[str, float] | None = None,
    band: tuple[float, float] = (10.0, 90.0),
    ax=None,
    legend: bool = True,
    top: float | None = None,
) -> Figure:
    """Error against the number of random features, log-log: the median over draws (feature
    samples), shaded between the ``band`` percentiles of the draws. Percentiles of positive
    errors stay positive, so the band never dips towards zero on the log axis the way
    mean − std does. ``baselines``: horizontal reference lines (e.g. uniform attention).
    ``ax``: draw into these axes (of a larger figure) instead of a new figure. ``top``: the
    top of the y axis; medians above it sit on it as open triangles, bands are cut there, so
    that a few huge errors (trigonometric features) do not flatten the other curves."""
    if ax is None:
        fig = Figure(figsize=(5.8, 4.0), layout="constrained")
        ax = fig.subplots()
    cut = np.inf if top is None else top
    clipped = False
    for name, errors in curves.items():
        errors = np.asarray(errors, dtype=float)
        low, median, high = np.percentile(errors, [band[0], 50.0, band[1]], axis=1)
        over = median > cut
        (line,) = ax.plot(nb_features, np.minimum(median, cut), marker="o", ms=4, label=name)
        colour = line.get_color()
        ax.fill_between(
            nb_features, np.minimum(low, cut), np.minimum(high, cut), alpha=0.2, color=colour, lw=0
        )
        if over.any():
            clipped = True
            x = np.asarray(nb_features)[over]
            ax.plot(x, np.full(len(x), cut), "^", ms=8, mfc="white", mec=colour, clip_on=False)
    if clipped:
        ax.plot([], [], "^", ms=8, mfc="white", mec="black", label=f"median above {cut:g}")
    for name, value in (baselines or {}).items():
        ax.axhline(value, color="grey", ls="-.", lw=1, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if top is not None:
        ax.set_ylim(top=top)
    ax.set_xticks(list(nb_features), [str(m) for m in nb_features])
    ax.xaxis.set_minor_locator(NullLocator())  # y keeps its labelled minor ticks
    ax.set_xlabel("number of random features m")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(
            fontsize=7, title=f"median, {band[0]:g}–{band[1]:g}th pct. of draws", title_fontsize=7
        )
    if title:
        ax.set_title(title, fontsize=10)
    return ax.figure


__all__ = [
    "approximation_curves",
    "attention_grid",
    "blosum_scatter",
    "error_grid",
    "exact_vs_favor",
    "matrix_panels",
    "r_label",
    "save_figure",
]


def _off_diagonal(matrix) -> np.ndarray:
    m = _numpy(matrix).copy()
    np.fill_diagonal(m, np.nan)
    return m


def r_label(result: Mapping | None) -> str:
    """A figure's "r = 0.42 [0.30, 0.51]" (see similarity.r_text)."""
    return r_text(result, digits=2, prefix="r = ", undefined="r undefined")


def similarity_figure(matrices: Mapping[str, np.ndarray], study: Mapping) -> Figure:
    """The paper's figure: the 20x20 attention-derived similarity of the trained model (and of
    its two controls) next to BLOSUM62, same residue order, diagonals left blank; each title
    gives r against BLOSUM62 with its bootstrap 95% interval."""
    names = {"model": "trained model", "untrained": "untrained control", "shuffled": "shuffled"}
    panels = {
        f"{label}\n{r_label(study.get(key, {}))}": _off_diagonal(matrices[key])
        for key, label in names.items()
        if key in matrices
    }
    panels["BLOSUM62"] = _off_diagonal(matrices["blosum62"])
    return matrix_panels(
        panels,
        title=f"amino-acid similarity from attention (Vig et al.) vs BLOSUM62, "
        f"{study.get('n_sequences', '?')} held-out proteins",
    )


def per_layer_figure(study: Mapping, statistic: str = "similarity") -> Figure:
    """r against BLOSUM62 per layer with 95% intervals, model beside both controls."""
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    numbers: set[int] = set()
    for offset, (key, colour) in zip(
        (-0.15, 0.0, 0.15),
        (("model", "tab:blue"), ("untrained", "tab:grey"), ("shuffled", "tab:orange")),
    ):
        rows = study.get(key, {}).get("per_layer", [])
        first = 0 if "layer_numbering" in study else 1  # studies before 0.2 counted from 0
        numbers.update(row["layer"] + first for row in rows)
        x = np.array([row["layer"] + first for row in rows], dtype=float) + offset
        r = np.array([_nan(row[statistic]["pearson"]) for row in rows])
        ci = np.array([[_nan(v) for v in row[statistic]["ci95"]] for row in rows]).reshape(-1, 2)
        yerr = np.abs(np.stack([r - ci[:, 0], ci[:, 1] - r])) if len(rows) else None
        ax.errorbar(x, r, yerr=yerr, fmt="o", ms=3, capsize=2, color=colour, label=key)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(sorted(numbers))
    ax.set_xlabel(LAYER_AXIS)
    ax.set_ylabel("Pearson r vs BLOSUM62")
    ax.set_title(f"{statistic} per layer, bootstrap 95% intervals over proteins", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _nan(value) -> float:
    return float("nan") if value is None else float(value)
