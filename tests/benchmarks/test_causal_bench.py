"""The causal benchmark: its loop baseline computes the same thing, and a tiny run's structure."""

from __future__ import annotations

import torch

from proteinperf.attention import blockwise, draw_features
from proteinperf.benchmarks import causal

TINY = causal.Settings(
    lengths=(16, 40), heads=2, dim=8, features=8, chunk=8, repeats=2, budget_s=5.0, threads=1
)


def test_loop_baseline_matches_the_production_kernel():
    g = torch.Generator().manual_seed(0)
    q, k, v, up = (torch.randn(2, 2, 21, 8, generator=g, dtype=torch.float64) for _ in range(4))
    w = draw_features(8, 8, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 21, dtype=torch.bool)
    mask[1, 13:] = False
    for kernel in causal.KERNELS:
        results = []
        for fn in (causal.loop_causal_favor, blockwise.causal_favor):
            inputs = [t.clone().requires_grad_() for t in (q, k, v)]
            out = fn(*inputs, w, kernel, mask, 5)
            results.append((out, *torch.autograd.grad((out * up).sum(), inputs)))
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_tiny_run(tmp_path):
    result = causal.run(quick=True, out_dir=tmp_path, settings=TINY)
    counts = {(c["kernel"], c["length"]): c for c in result["op_counts"]}
    for kernel in causal.KERNELS:
        short, long = counts[(kernel, 16)], counts[(kernel, 40)]
        assert long["loop"] > short["loop"]  # one more pass per chunk
        assert long["chunk-parallel"] <= short["chunk-parallel"] + 8  # + padding a ragged chunk
    assert len(result["timings"]) == 4
    for row in result["timings"]:
        assert row["loop wall_s"] > 0 and row["chunk-parallel wall_s"] > 0
    assert "chunk-parallel ops" in result["markdown"]
