"""Smoke test of the attention benchmark harness: tiny sizes, structure and sanity, no timings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from proteinperf.benchmarks import attention
from proteinperf.benchmarks.__main__ import main

TINY = attention.Settings(
    lengths=(64,),
    impls=("favor", "sdpa"),
    heads=2,
    dim=16,
    features=8,
    repeats=1,
    case_budget_s=1.0,
    step_cap_s=10.0,
    total_budget_s=120.0,
    mem_limit_gib=8.0,
    quiet_wait_s=0.0,
    worker_nice=None,
    quality_length=32,
    quality_heads=1,
    quality_ms=(8, 32),
    logit_stds=(0.5,),
    seeds=1,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> tuple[dict, Path]:
    if attention.ours_unavailable():
        pytest.skip(attention.ours_unavailable())
    out = tmp_path_factory.mktemp("bench")
    return attention.run(quick=True, out_dir=out, settings=TINY), out


def test_speed_cases_are_measured_in_fresh_processes(result):
    res, _ = result
    assert len(res["speed"]) == 2 * 2 * 2  # impls x {bidirectional, causal} x {fwd, fwd+bwd}
    for case in res["speed"]:
        assert case["status"] == "ok", case
        assert case["median_s"] > 0 and all(t > 0 for t in case["times_s"])
        assert (
            case["peak_mib"] >= 0 and case["baseline_mib"] > 0
        )  # tiny inputs may fit in free heap


def test_quality_errors_are_positive_and_cover_the_grid(result):
    res, _ = result
    names = {row["estimator"] for row in res["quality"]}
    assert {"uniform", "softmax/orthogonal", "softmax/iid", "softmax_opt/orthogonal"} <= names
    for row in res["quality"]:
        assert len(row["errors"]) == TINY.seeds
        assert all(math.isfinite(e) and e > 0 for e in row["errors"])


def test_targets_ratios_plots_and_tables(result):
    res, out = result
    assert set(res["ratios"]) == {t["name"] for t in res["targets"]}
    for t in res["targets"]:
        assert t["pass"] in (True, False, None)
        assert (t["value"] is None) == (t["pass"] is None)
    # the tiny run measures no L=16384 case, so those targets are reported, not guessed
    assert res["ratios"]["speedup_vs_sdpa_bid_fwdbwd_16384"] is None
    for name in res["plots"]:
        assert (out / name).stat().st_size > 0
    for heading in ("speed", "quality", "Targets"):
        assert heading in res["markdown"]
    json.dumps(res, allow_nan=False)


def test_main_skips_missing_modules_and_writes_json(tmp_path, monkeypatch, capsys):
    def fake_run(quick, out_dir):
        return {"name": "attention", "quick": quick, "markdown": "| a |\n|---|\n| 1 |"}

    monkeypatch.setattr(attention, "run", fake_run)
    monkeypatch.setattr("proteinperf.benchmarks.__main__.BENCHMARKS", ("attention", "nonesuch"))
    assert main(["--only", "attention,nonesuch", "--quick", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "attention.json").read_text())["quick"] is True
    printed = capsys.readouterr().out
    assert "| 1 |" in printed and "skip nonesuch" in printed


def test_quality_points_above_the_axis_are_clipped_at_its_top(tmp_path):
    """trig's errors of 10^3 stay inside the axes: clipped at the top, marked, and said so."""
    from unittest import mock

    s = attention.Settings(quality_ms=(16, 64), logit_stds=(1.0,), seeds=1)
    quality = [
        {"estimator": name, "logit_std": 1.0, "m": m, "mean": err}
        for name, errs in (("softmax/orthogonal", (2.0, 1.0)), ("trig/orthogonal", (5e3, 0.5)))
        for m, err in zip(s.quality_ms, errs)
    ]
    with mock.patch.object(attention, "_save", side_effect=lambda fig, path, **kw: fig):
        fig = attention._plot_quality(quality, s, tmp_path / "q.png")
    ax = fig.axes[0]
    top = ax.get_ylim()[1]
    assert all(max(line.get_ydata()) <= top * (1 + 1e-9) for line in ax.lines)
    assert any(line.get_marker() == "^" for line in ax.lines)
    assert any("clipped" in text.get_text() for text in fig.texts)
