"""Generation benchmark, decoding part: a tiny end-to-end run and the step accounting."""

from __future__ import annotations

import pytest
import torch

from proteinperf.benchmarks import generation
from proteinperf.model import ModelConfig, PerformerLM


def test_time_steps_takes_turns_in_blocks_and_advances_each_state():
    torch.manual_seed(0)
    config = dict(d_model=16, n_layers=1, n_heads=2, d_ff=16, nb_features=8, causal=True)
    runs = []
    for attention in ("favor_softmax", "softmax"):
        model = PerformerLM(ModelConfig(**config, attention=attention)).eval()
        with torch.inference_mode():
            runs.append([model, model.step(torch.tensor([[0, 5, 6]]))[1]])
    with torch.inference_mode():
        times = generation._time_steps(runs, steps=5)
    assert len(times) == 2 and all(cpu >= 0 and wall >= 0 for cpu, wall in times)
    taken = generation._steps_taken(5)
    assert taken == 2 * (generation.BLOCK + 1)
    assert [int(state.positions[0]) for _, state in runs] == [3 + taken] * 2


def test_decoding_rows_on_short_positions():
    settings = generation.Settings(positions=(8, 16), steps=2, prefill_chunk=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = generation.decoding(settings)
    finally:
        torch.set_num_threads(threads)
    assert [r["position"] for r in rows] == [8, 16]
    assert rows[0]["performer_state_bytes"] == rows[1]["performer_state_bytes"]
    assert rows[1]["kv_cache_bytes"] > rows[0]["kv_cache_bytes"]
    for r in rows:
        assert r["performer_ms"] > 0 and r["kv_cache_ms"] > 0
        assert r["speedup_vs_kv"] == pytest.approx(r["kv_cache_ms"] / r["performer_ms"])
