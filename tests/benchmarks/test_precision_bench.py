"""The precision benchmarks: TF32/bf16 emulation, and bf16-mixed against float32 training."""

from pathlib import Path

import pytest
import torch

from proteinperf.benchmarks import mixed_training, precision


def test_round_tf32_keeps_ten_mantissa_bits_to_nearest_even():
    ulp = 2.0**-10
    x = torch.tensor([1 + ulp / 2, 1 + 1.5 * ulp, 1 + 0.75 * ulp, -3.0, 0.0])
    expected = torch.tensor([1.0, 1 + 2 * ulp, 1 + ulp, -3.0, 0.0])
    assert torch.equal(precision.round_tf32(x), expected)
    y = torch.randn(1000) * 1e3
    rounded = precision.round_tf32(y)
    assert ((rounded.view(torch.int32) & 0x1FFF) == 0).all()
    assert ((rounded - y).abs() <= y.abs() * 2.0**-11).all()


def test_tf32_mode_rounds_matmul_operands_only():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(4, 8, 8, generator=g) for _ in range(3))
    with precision.TF32Matmuls():
        product = a @ b
        fused = c.clone().baddbmm_(a, b)
        added = a + b
    expected = precision.round_tf32(a) @ precision.round_tf32(b)
    torch.testing.assert_close(product, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused, c + expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(product, a @ b) and torch.equal(added, a + b)


def test_precision_run_on_two_short_proteins(tmp_path):
    result = precision.run(False, tmp_path, precision.Settings(length=48, proteins=2))
    relu = {row["variant"]: row for row in result["relu"]}
    assert relu["float32"]["attention_rel_error_max"] == 0 and relu["float32"]["loss_delta"] == 0
    for name, row in relu.items():
        if name != "float32":
            assert 0 < row["attention_rel_error_max"] < 0.05, name
    # bf16 inputs cost ~10x the error of TF32 (8 against 11 significant bits)
    assert (
        relu["bf16 q/k/v (projections, rotary)"]["attention_rel_error_max"]
        > 3 * relu["TF32 in the attention contractions"]["attention_rel_error_max"]
    )
    assert len(result["softmax"]) == len(result["relu"]) and "softmax kernel" in result["markdown"]


@pytest.mark.slow
def test_mixed_training_takes_turns_from_one_start(tmp_path):
    settings = mixed_training.Settings(
        steps=4,
        block=2,
        val_batches=1,
        threads=1,
        overrides=("model=tiny", "data=sample", f"paths.cache_dir={tmp_path}"),
    )
    result = mixed_training.run(False, Path(tmp_path), settings)
    fp32, bf16 = (result["results"][p] for p in mixed_training.PRECISIONS)
    assert len(fp32["block_steps_per_s"]) == len(bf16["block_steps_per_s"]) == 2
    assert fp32["train_loss"][0] == pytest.approx(bf16["train_loss"][0], abs=0.05)  # same start
    assert fp32["train_loss"] != bf16["train_loss"]  # ... but not the same arithmetic
    assert "bf16-mixed" in result["markdown"]
