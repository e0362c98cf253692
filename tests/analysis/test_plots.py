"""The figures say what is true: bands that stay positive on log axes, shared colour scales,
no "error" drawn for kernels that estimate nothing, layers and heads numbered from 1, small
heatmap files."""

import numpy as np
import pytest
from PIL import Image

from proteinperf.analysis import approximates_softmax, plots


def test_approximation_band_stays_within_the_draws():
    """mean ± std of skewed draws dips far below every draw on a log axis; percentiles do not."""
    errors = np.array([[1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 1e-2]] * 3)
    fig = plots.approximation_curves([4, 16, 64], {"positive": errors})
    band = fig.axes[0].collections[0].get_paths()[0].vertices
    assert band[:, 1].min() >= errors.min() * (1 - 1e-9)
    assert "relative error" in fig.axes[0].get_ylabel()


def test_error_grids_share_a_colour_scale():
    grid = plots.error_grid(np.full((2, 3), 0.1), [1, 2], [0, 1, 2], vmax=0.4)
    assert grid.axes[0].images[0].get_clim() == (0.0, 0.4)


def test_no_difference_panel_for_a_kernel_that_estimates_no_softmax():
    exact, favor = np.eye(5), np.full((5, 5), 0.2)
    rows = [("layer 1 head 1", exact, favor), ("layer 1 head 2", exact, 2 * favor)]
    estimate = plots.exact_vs_favor(rows, approximates=True)
    titles = [ax.get_title() for ax in estimate.axes if ax.get_title()]
    assert sum("−" in t for t in titles) == 2
    # both difference panels on the scale of the larger difference
    limits = {
        estimate.axes[i].images[0].get_clim()
        for i in range(len(estimate.axes))
        if estimate.axes[i].images and "−" in estimate.axes[i].get_title()
    }
    assert limits == {(-0.8, 0.8)}  # row 1 differs by 0.8, row 2 by 0.6
    relu = plots.exact_vs_favor(rows, approximates=False, name="FAVOR (relu)")
    titles = [ax.get_title() for ax in relu.axes if ax.get_title()]
    assert len(titles) == 4 and not any("−" in t for t in titles)
    assert approximates_softmax("softmax") and approximates_softmax("trig")
    assert not approximates_softmax("relu") and not approximates_softmax(None)


def test_per_layer_ticks_are_the_layer_numbers():
    row = {"similarity": {"pearson": 0.1, "ci95": [0.0, 0.2]}}
    study = {"model": {"per_layer": [dict(row, layer=n) for n in (1, 2, 3)]}}
    study["layer_numbering"] = "esm"
    assert list(plots.per_layer_figure(study).axes[0].get_xticks()) == [1, 2, 3]


def test_layers_and_heads_are_numbered_from_one_and_say_so():
    """Heads are 0-based indices in the API; every figure numbers heads and layers from 1."""
    grid = plots.error_grid(np.full((2, 3), 0.1), [1, 2], [0, 1, 2])
    ax = grid.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2"]
    assert "1 = first" in ax.get_xlabel() and "1 = first" in ax.get_ylabel()
    maps = plots.attention_grid(np.random.default_rng(0).random((2, 2, 5, 5)), [3, 4], [6, 7])
    titles = [a.get_title() for a in maps.axes if a.get_title()]
    assert titles == ["head 7", "head 8"]
    assert "head 7-8" in maps.get_supxlabel() and "layer 3-4" in maps.get_supxlabel()
    assert plots.panel_name(3, 5) == "layer 3 head 6"
    study = {"model": {"per_layer": []}, "layer_numbering": "esm"}
    assert plots.per_layer_figure(study).axes[0].get_xlabel() == plots.LAYER_AXIS


def test_palette_png_is_small_and_keeps_the_colour_map(tmp_path):
    rng = np.random.default_rng(0)
    maps = rng.random((2, 2, 300, 300))
    fig = plots.attention_grid(maps, [1, 2], [0, 1])
    full = plots.save_figure(fig, tmp_path / "full.png", dpi=plots.GRID_DPI)
    small = plots.save_figure(fig, tmp_path / "small.png", plots.GRID_DPI, ["viridis"])
    image = Image.open(small)
    assert image.mode == "P"
    assert small.stat().st_size < 0.6 * full.stat().st_size
    # the palette is the colour map itself, evenly sampled (an adaptive palette bands the bar)
    from matplotlib import colormaps

    n = 256 - plots.N_GREYS
    palette = np.array(image.getpalette()[: 3 * n]).reshape(n, 3)
    np.testing.assert_allclose(
        palette, 255 * colormaps["viridis"](np.linspace(0, 1, n))[:, :3], atol=1
    )
    assert len(image.getcolors(256)) > 150


@pytest.mark.parametrize("kernel", ["relu", "softmax"])
def test_report_names_an_error_only_for_softmax_estimators(kernel, tmp_path):
    import torch

    from proteinperf.analysis import untrained_control
    from proteinperf.analysis.report import _figures, analyse_model
    from proteinperf.analysis.similarity import blosum62
    from proteinperf.data.alphabet import get_alphabet
    from proteinperf.data.fasta import FastaRecord
    from proteinperf.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(
        d_model=16, n_layers=1, n_heads=2, d_ff=32, nb_features=8, attention=f"favor_{kernel}"
    )
    model, control = untrained_control(config, 0), untrained_control(config, 1)
    alphabet = get_alphabet()
    record = FastaRecord("P1", "", "MKTAYIAKQR", 1)
    analysis = analyse_model(model, [record.sequence], alphabet)
    control_a = analyse_model(control, [record.sequence], alphabet)
    figures = dict(_figures(model, control, record, analysis, control_a, blosum62(), alphabet, 64))
    title = figures["approximation_error.png"].axes[0].get_title()
    assert ("not an estimate" in title) == (kernel == "relu")


def test_curves_above_the_stated_top_stay_inside_the_axes():
    errors = {"positive": np.full((3, 4), 0.5), "trig": np.full((3, 4), 300.0)}
    ax = plots.approximation_curves([4, 16, 64], errors, top=5).axes[0]
    assert ax.get_ylim()[1] == 5
    assert all(np.max(line.get_ydata(), initial=0) <= 5 for line in ax.lines)
    assert any(line.get_marker() == "^" for line in ax.lines)
    assert any("above 5" in t.get_text() for t in ax.get_legend().get_texts())


def test_matrix_panels_name_their_axes():
    fig = plots.matrix_panels({"a": np.eye(20)}, xlabel="key residue", ylabel="query residue")
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == ("key residue", "query residue")
