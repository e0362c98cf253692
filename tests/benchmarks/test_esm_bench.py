import json

import pytest

from proteinperf.benchmarks.esm import Settings, run


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    s = Settings(
        features=(8,),
        kernels=("favor_softmax",),
        seeds=1,
        eval_sequences=8,
        max_len=48,
        train_seconds=5.0,
        train_steps=2,
        batch_size=2,
        train_len=32,
    )
    result = run(quick=True, out_dir=tmp_path, settings=s)
    json.dumps(result, allow_nan=False)
    rows = result["rows"]
    assert len(rows) == 4 and result["training"]["steps"] == 2
    exact = [r for r in rows if r["m"] is None]
    assert all(r["kl"] < 1e-6 and r["top1_agreement"] == 1.0 for r in exact)
    assert all(r["kl"] >= 0 for r in rows)
    assert "| favor_softmax | 8 |" in result["markdown"]
