"""A training step never waits for the device: nothing in it reads a device value on the host.

On a GPU, .item(), bool(tensor), int(tensor), .cpu()/.tolist() and boolean-mask indexing (its
output size depends on the data) make the host wait until every queued kernel has run, so
the next step cannot be queued behind the current one. On the CPU the same calls dispatch
recognisable ops (aten._local_scalar_dense, aten.nonzero, index with a bool mask): a
dispatch mode records any that our code makes while a Lightning training step (forward,
loss, logging, backward, optimizer step) runs.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY
from torch.utils._python_dispatch import TorchDispatchMode

from proteinperf.data.alphabet import get_alphabet
from proteinperf.data.sampling import clm_example, collate, frame, mlm_example
from proteinperf.lightning_module import ProteinLM

aten = torch.ops.aten
HOST_READS = {
    aten._local_scalar_dense,
    aten.is_nonzero,
    aten.item,
    aten.nonzero,
    aten.masked_select,
}
MASK_INDEXING = {aten.index, aten.index_put, aten.index_put_}
PACKAGE = str(Path(__import__("proteinperf").__file__).parent)
TORCH = str(Path(torch.__file__).parent)


def _ours() -> traceback.FrameSummary | None:
    """The innermost Python frame outside torch (whose dispatch wrappers sit between the
    caller and this mode) and this file, if it is proteinperf's own code: our read, not one
    inside Lightning or the optimizer."""
    frames = [
        f
        for f in traceback.extract_stack()
        if f.filename != __file__ and not f.filename.startswith(TORCH)
    ]
    return frames[-1] if frames and frames[-1].filename.startswith(PACKAGE) else None


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(
        isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices
    )


class HostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.active = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in HOST_READS or (packet in MASK_INDEXING and _bool_index(args)):
            self.note(str(func))
        return func(*args, **(kwargs or {}))

    def note(self, what: str) -> None:
        frame_ = _ours()
        if self.active and frame_ is not None:
            self.found.append(f"{what} at {frame_.filename}:{frame_.lineno} {frame_.line}")


class WatchTrainingSteps(pl.Callback):
    """The dispatch mode from the start to the end of every training batch."""

    def __init__(self, mode: HostReads) -> None:
        self.mode, self.steps = mode, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.mode.active = True
        self.mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.mode.__exit__(None, None, None)
        self.mode.active = False
        self.steps += 1


def _watch_copies_to_host(monkeypatch, mode: HostReads) -> None:
    """.cpu(), .numpy() and .tolist() dispatch nothing on a CPU tensor: wrapped instead."""
    for name in ("cpu", "numpy", "tolist"):
        original = getattr(torch.Tensor, name)

        def watched(self, *args, _original=original, _name=name, **kwargs):
            mode.note(f"Tensor.{_name}()")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, watched)


def _batches(causal: bool) -> list[dict]:
    """One batch of equal lengths (no padding), one with padding."""
    rng = np.random.default_rng(0)
    ids = np.asarray(get_alphabet().residue_token_ids)
    batches = []
    for lengths in ((12, 12), (12, 7)):
        examples = []
        for n in lengths:
            tokens = frame(ids[rng.integers(len(ids), size=n)])
            examples.append(clm_example(tokens) if causal else mlm_example(tokens, rng, 0.15))
        batches.append(collate(examples))
    return batches


@pytest.mark.parametrize(
    "attention, causal",
    [
        ("favor_relu", False),
        ("softmax", False),
        ("favor_softmax", True),
        ("favor_relu", True),
        ("softmax", True),
    ],
)
def test_training_step_never_reads_device_values(attention, causal, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = {**TINY, "attention": attention, "causal": causal, "redraw_interval": 1}
    module = ProteinLM(model, objective="clm" if causal else "mlm")
    batches = _batches(causal)
    assert [b["padded"] for b in batches] == [False, True]
    mode = HostReads()
    _watch_copies_to_host(monkeypatch, mode)
    watch = WatchTrainingSteps(mode)
    trainer = pl.Trainer(
        max_steps=len(batches),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[watch],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    assert watch.steps == len(batches)
    assert mode.found == []
