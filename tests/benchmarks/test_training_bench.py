"""The training benchmark runs end to end (tiny sizes) and reports speed-ups and memory."""

from __future__ import annotations

from proteinperf.benchmarks import training


def test_build_case_steps_and_learns():
    prepare, step = training.build_case(
        "favor_relu", 32, d_model=32, n_layers=1, n_heads=2, d_ff=64, nb_features=16, batch=2
    )
    inputs = prepare()
    assert inputs["tokens"].shape == (2, 32)
    losses = [step(inputs) for _ in range(5)]
    assert losses[-1] < losses[0]


def test_run_reports_a_table(tmp_path):
    settings = training.Settings(
        lengths=(32,),
        attentions=("favor_relu", "softmax"),
        d_model=32,
        n_heads=2,
        d_ff=64,
        nb_features=16,
        repeats=1,
        case_budget_s=1.0,
        timeout_s=120.0,
        quiet_wait_s=0.0,
    )
    result = training.run(quick=True, out_dir=tmp_path, settings=settings)
    assert [c["status"] for c in result["cases"]] == ["ok", "ok"]
    assert result["cases"][0]["tokens_per_s"] > 0 and result["cases"][0]["peak_mib"] >= 0
    assert "favor_relu" in result["speedups"]["32"]
    assert "| Transformer (exact, SDPA) | 32 |" in result["markdown"]
    assert not result["target"]["measured"]
