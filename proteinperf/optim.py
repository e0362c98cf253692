"""Optimizer and learning-rate schedule of training: ``OptimConfig`` (the one place their
defaults live; conf/optim/ and ``python -m proteinperf.train optim.<key>=...`` set them),
``LRSchedule`` and ``build_optimizer``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt")
OPTIMIZERS = ("adamw", "adam")
LR_SCALINGS = ("none", "linear", "sqrt")


@dataclass
class OptimConfig:
    # Paper (Choromanski et al., 2021, App. C): Adam, β=(0.9, 0.98), ε=1e-9, lr 1e-3,
    # weight decay 0.1. Decoupled decay (AdamW) by default: coupled L2 of 0.1 at lr 1e-3
    # fights Adam's normalisation and barely trains small models.
    name: str = "adamw"  # adamw | adam (coupled L2 weight decay)
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-9
    weight_decay: float = 0.1
    decay_norm_and_bias: bool = False  # LayerNorm gains and biases are not decayed
    schedule: str = "linear"  # constant | linear | cosine | inverse_sqrt, after the warm-up
    warmup_steps: int = 0
    total_steps: int | None = None  # None: the trainer's estimate (max_steps, or epochs x batches)
    min_lr_ratio: float = 0.0
    # The learning rate for the global batch (per device x devices x accumulate_grad_batches):
    # none: lr whatever the batch; linear: lr x global / reference; sqrt: lr x sqrt(that).
    # reference_batch is in the data's batch unit (sequences, or tokens with tokens_per_batch);
    # null: one device's batch, i.e. lr is the rate of a 1-device run without accumulation.
    lr_scaling: str = "none"
    reference_batch: int | None = None

    @classmethod
    def from_dict(cls, values: dict | None) -> OptimConfig:
        """Defaults updated with ``values``; unknown keys and names are a ValueError."""
        values = dict(values or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown optim keys {unknown}; known: {sorted(known)}")
        config = cls(**values)
        config.betas = [float(b) for b in config.betas]
        if config.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {config.name!r}")
        if config.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {config.schedule!r}")
        if config.lr_scaling not in LR_SCALINGS:
            raise ValueError(
                f"optim.lr_scaling must be one of {LR_SCALINGS}, got {config.lr_scaling!r}"
            )
        if config.reference_batch is not None and config.reference_batch <= 0:
            raise ValueError(f"optim.reference_batch must be > 0, got {config.reference_batch}")
        return config


DEFAULT_OPTIM = dataclasses.asdict(OptimConfig())  # the same defaults as a plain dict


def lr_scale(rule: str, replicas: int, device_batch: float | None, reference: int | None) -> float:
    """The factor of optim.lr for a global batch of ``replicas`` device batches (devices x
    accumulate_grad_batches) of ``device_batch`` each, against ``reference`` (None: one device
    batch)."""
    if rule == "none":
        return 1.0
    if reference is None:
        ratio = float(replicas)
    elif device_batch:
        ratio = replicas * device_batch / reference
    else:
        raise ValueError("optim.reference_batch needs the data's batch_size or tokens_per_batch")
    return ratio if rule == "linear" else math.sqrt(ratio)


class LRSchedule:
    """Multiplier of the base learning rate at optimizer step ``step`` (a picklable callable).

    A plain object rather than a closure, so LambdaLR saves its state in checkpoints and those
    still load with ``torch.load(weights_only=True)``.
    """

    def __init__(self, schedule: str, warmup_steps: int, total_steps: int, min_ratio: float):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.schedule, self.warmup_steps = schedule, int(warmup_steps)
        self.total_steps, self.min_ratio = max(int(total_steps), 1), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "inverse_sqrt":
            return math.sqrt(max(self.warmup_steps, 1) / max(step, 1))
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        if self.schedule == "linear":
            decay = 1.0 - progress
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * decay


def build_optimizer(parameters, optim: dict, estimated_steps: float) -> dict:
    """Lightning's configure_optimizers answer: Adam(W) over ``parameters`` with a per-step
    LambdaLR. ``estimated_steps`` (the trainer's) ends the schedule unless optim.total_steps."""
    o = OptimConfig.from_dict(optim)
    decay, no_decay = [], []
    for p in parameters:
        if p.requires_grad:
            (decay if p.ndim >= 2 or o.decay_norm_and_bias else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    optimizer = cls(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    total = o.total_steps or estimated_steps
    if not math.isfinite(total):
        if o.schedule in ("linear", "cosine"):
            raise ValueError(
                "a decaying schedule needs an end: set trainer.max_steps or "
                "optim.total_steps (or use optim.schedule=constant|inverse_sqrt)"
            )
        total = 1
    schedule = LRSchedule(o.schedule, o.warmup_steps, int(total), o.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
    }
