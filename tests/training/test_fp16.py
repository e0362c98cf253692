"""Training precision: TF32 on CUDA only; 16-mixed (float16 autocast + loss scaling): the GPU
config, and finite training on CPU.

Lightning turns ``precision=16-mixed`` on CPU into bf16-mixed, so the CPU run below hands it
the float16 plugin itself (torch's CPU float16 autocast and a CPU GradScaler): the same casts
and scaling as on a GPU, at a size that runs in seconds.
"""

from __future__ import annotations

import pytest
import torch

from proteinperf.errors import ConfigError
from proteinperf.train import set_matmul_precision, train

FP16_ON_CPU = [
    "trainer.precision=null",
    "+trainer.plugins=[{_target_: pytorch_lightning.plugins.MixedPrecision, "
    "precision: 16-mixed, device: cpu, scaler: {_target_: torch.amp.GradScaler, device: cpu}}]",
]


def test_tf32_only_on_cuda(make_cfg, monkeypatch):
    assert make_cfg().matmul_precision == "high"
    before = torch.get_float32_matmul_precision()
    try:
        set_matmul_precision("high")
        assert torch.get_float32_matmul_precision() == before  # no GPU: CPU stays float32
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        set_matmul_precision("high")
        assert torch.get_float32_matmul_precision() == "high"
        with pytest.raises(ConfigError, match="matmul_precision must be one of"):
            set_matmul_precision("tf32")
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize(
    "avx512_bf16,amx,expected",
    [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "32-true")],
)
def test_cpu_default_is_bf16_mixed_only_with_native_bf16(
    make_cfg, monkeypatch, avx512_bf16, amx, expected
):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert make_cfg("trainer=cpu").trainer.precision == expected
    assert make_cfg("trainer=gpu").trainer.precision == "bf16-mixed"


def test_gpu_fp16_config(make_cfg):
    cfg = make_cfg("trainer=gpu_fp16")
    assert cfg.trainer.precision == "16-mixed" and cfg.trainer.accelerator == "gpu"


@pytest.mark.parametrize(
    "model,attention", [("performer_bid", "favor_relu"), ("performer_causal", "favor_softmax")]
)
def test_fp16_training_is_finite(make_cfg, model, attention):
    cfg = make_cfg(
        f"model={model}",
        f"model.attention={attention}",
        *FP16_ON_CPU,
        "trainer.max_steps=8",
        "trainer.val_check_interval=8",
        "trainer.limit_val_batches=2",
        "data.max_length=128",
        "data.batch_size=4",
        "model.redraw_interval=4",
        "test=false",
    )
    seen, losses = [], []

    def record(module, inputs, output):
        seen.append(output.dtype)

    from proteinperf.lightning_module import ProteinLM

    setup, step = ProteinLM.setup, ProteinLM.training_step

    def hooked_setup(self, stage):
        setup(self, stage)
        if stage == "fit":
            self.model.layers[0].fc1.register_forward_hook(record)

    def hooked_step(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        losses.append(loss.detach())
        return loss

    ProteinLM.setup, ProteinLM.training_step = hooked_setup, hooked_step
    try:
        result = train(cfg)
    finally:
        ProteinLM.setup, ProteinLM.training_step = setup, step
    trainer, module = result["trainer"], result["module"]
    assert trainer.global_step == 8 and len(losses) == 8
    assert torch.float16 in seen  # the forward really ran in float16
    assert trainer.precision_plugin.scaler is not None
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in module.parameters())
    assert torch.isfinite(torch.stack(losses)).all()
    assert torch.isfinite(torch.tensor(result["val"]["val/loss"]))
