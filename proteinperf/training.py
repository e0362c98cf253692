"""LightningModule for protein language modelling: objectives, metrics, optimizer, redraws.

One module trains every variant: the objective (``mlm`` on a bidirectional model, ``clm`` on a
causal one) only changes which positions carry targets, and the DataModule already encodes that
in ``batch["targets"]`` (-100 = no loss). Metrics are the paper's: cross-entropy, perplexity
and accuracy over target positions; validation also reports the unigram baseline (the loss and
accuracy of predicting every target from the training split's residue frequencies).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

IGNORE = -100
OBJECTIVES = ("mlm", "clm")
SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt")
OPTIMIZERS = ("adamw", "adam")
FORMAT_VERSION = 1

# With init_from, these come from the run's config; every other architecture field from the
# checkpoint (the weights only fit that architecture). Attention and its features carry no
# weights, which is what makes an ESM-2 -> Performer conversion possible at all.
RUN_FIELDS = (
    "attention",
    "nb_features",
    "orthogonal_features",
    "feature_scaling",
    "redraw_interval",
    "dropout",
    "causal",
)

DEFAULT_OPTIM: dict[str, Any] = {
    # Paper (Choromanski et al., 2021, App. C): Adam, β=(0.9, 0.98), ε=1e-9, lr 1e-3,
    # weight decay 0.1. Decoupled decay (AdamW) by default: coupled L2 of 0.1 at lr 1e-3
    # fights Adam's normalisation and barely trains small models.
    "name": "adamw",
    "lr": 1e-3,
    "betas": (0.9, 0.98),
    "eps": 1e-9,
    "weight_decay": 0.1,
    "decay_norm_and_bias": False,
    "schedule": "linear",  # constant | linear | cosine | inverse_sqrt (after the warm-up)
    "warmup_steps": 0,
    "total_steps": None,  # None: the trainer's estimate (max_steps, or epochs x batches)
    "min_lr_ratio": 0.0,
}


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


def build_model(model_cfg: dict, init_from: str | None = None, seed: int = 0):
    """A PerformerLM from config fields, or initialised from a proteinperf checkpoint.

    With ``init_from`` the architecture and weights come from the checkpoint and only the
    RUN_FIELDS of ``model_cfg`` apply (e.g. swap exact attention for FAVOR+).
    """
    from proteinperf.model import ModelConfig, PerformerLM

    if init_from is None:
        return PerformerLM(ModelConfig.from_dict(model_cfg))

    from proteinperf.checkpoint import load_model

    overrides = {k: model_cfg[k] for k in RUN_FIELDS if k in model_cfg}
    model, _ = load_model(init_from, overrides=overrides, feature_seed=seed)
    return model.train()


class ProteinLM(pl.LightningModule):
    """Masked (mlm) or causal (clm) language model around ``proteinperf.model.PerformerLM``.

    Hyperparameters are plain containers so that checkpoints load with weights_only=True.
    ``seed`` seeds the feature-redraw schedule: features at optimizer step s are a function of
    (seed, last redraw step <= s), so resumed runs and DDP ranks hold identical features.
    """

    def __init__(
        self,
        model: dict,
        objective: str = "mlm",
        optim: dict | None = None,
        seed: int = 0,
        init_from: str | None = None,
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        optim = {**DEFAULT_OPTIM, **(optim or {})}
        unknown = set(optim) - set(DEFAULT_OPTIM)
        if unknown:
            raise ValueError(
                f"unknown optim keys {sorted(unknown)}; known: {sorted(DEFAULT_OPTIM)}"
            )
        if optim["name"] not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {optim['name']!r}")
        optim["betas"] = list(optim["betas"])
        self.model = build_model(dict(model), init_from, seed)
        # The built config (not the request): with init_from it is the checkpoint's, so
        # ProteinLM.load_from_checkpoint rebuilds the right architecture without that file.
        config = dataclasses.asdict(self.model.config)
        self.save_hyperparameters(
            {"model": config, "objective": objective, "optim": optim, "seed": int(seed)}
        )
        causal = self.model.config.causal
        if objective == "clm" and not causal:
            raise ValueError("objective 'clm' needs a causal model (model.causal=true)")
        if objective == "mlm" and causal:
            raise ValueError("objective 'mlm' needs a bidirectional model (model.causal=false)")
        self.seed = int(seed)
        self._drawn_at: int | None = None  # optimizer step of the features now in the buffers
        self._pending_rng: dict | None = None  # RNG state of a checkpoint being resumed
        for stage in ("val", "test"):
            setattr(self, f"{stage}_loss", MeanMetric())
            setattr(self, f"{stage}_acc", MeanMetric())
        self.unigram_loss, self.unigram_acc = MeanMetric(), MeanMetric()
        self.register_buffer("unigram_log_probs", torch.empty(0), persistent=False)

    # ------------------------------------------------------------------ forward and loss

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None):
        return self.model(tokens, padding_mask=padding_mask)["logits"]

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch["tokens"], batch["padding_mask"])
        targets = batch["targets"]
        selected = targets != IGNORE
        n = int(selected.sum())
        logits, targets = logits[selected].float(), targets[selected]
        loss = F.cross_entropy(logits, targets) if n else logits.sum() * 0.0
        with torch.no_grad():
            acc = (logits.argmax(-1) == targets).float().mean() if n else loss.new_zeros(())
        if stage == "train":
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=max(n, 1))
            self.log("train/acc", acc, prog_bar=True, batch_size=max(n, 1))
            self.log("train/ppl", loss.detach().exp(), batch_size=max(n, 1))
            return loss
        getattr(self, f"{stage}_loss").update(loss.detach(), n)
        getattr(self, f"{stage}_acc").update(acc, n)
        if self.unigram_log_probs.numel() and n:
            log_p = self.unigram_log_probs
            self.unigram_loss.update(-log_p[targets].mean(), n)
            self.unigram_acc.update((targets == log_p.argmax()).float().mean(), n)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        pairs = [(stage, getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc"))]
        if self.unigram_log_probs.numel():
            pairs.append((f"{stage}/unigram", self.unigram_loss, self.unigram_acc))
        for prefix, loss_metric, acc_metric in pairs:
            if not loss_metric.update_called:
                continue
            # Weighted means over target tokens, already summed over DDP ranks by compute().
            loss, acc = float(loss_metric.compute()), float(acc_metric.compute())
            sep = "_" if "/" in prefix else "/"
            self.log(f"{prefix}{sep}loss", loss, prog_bar=stage == "val" and sep == "/")
            self.log(f"{prefix}{sep}ppl", math.exp(min(loss, 80.0)))
            self.log(f"{prefix}{sep}acc", acc, prog_bar=sep == "/")
            loss_metric.reset()
            acc_metric.reset()

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def on_test_epoch_end(self):
        self._log_epoch("test")

    # ------------------------------------------------------------------ unigram baseline

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        unigram = getattr(datamodule, "unigram_log_probs", None)
        if callable(unigram):
            self.unigram_log_probs = unigram().float().to(self.device)

    # ------------------------------------------------------------------ random features

    def _redraw_interval(self) -> int:
        return int(getattr(self.model.config, "redraw_interval", 0) or 0)

    def redraw_if_due(self, step: int) -> None:
        """Redraw features at every redraw_interval-th optimizer step (from step 0 on)."""
        interval = self._redraw_interval()
        if interval <= 0 or step % interval or self._drawn_at == step:
            return
        self.model.redraw_features(seed=self.seed, step=step)
        self._drawn_at = step

    def on_train_batch_start(self, batch, batch_idx):
        if self._pending_rng is not None:
            self._restore_rng()
        # Called for every micro-batch; with gradient accumulation global_step stays put
        # between them, so all micro-batches of one optimizer step share the same features.
        self.redraw_if_due(self.global_step)

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["proteinperf"] = {
            "model_config": dataclasses.asdict(self.model.config),
            "objective": self.hparams.objective,
            "format_version": FORMAT_VERSION,
        }
        if self.unigram_log_probs.numel():
            # `proteinperf evaluate` compares any data with this baseline by default.
            checkpoint["proteinperf"]["unigram_log_probs"] = self.unigram_log_probs.tolist()
        # Dropout draws from the global generator; restoring it makes resumed losses equal
        # to the uninterrupted run's (all DDP ranks start from the same seed, hence rank 0's).
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["proteinperf_rng"] = rng
        checkpoint["proteinperf_drawn_at"] = self._drawn_at

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Applied at the first training batch, not now: creating the DataLoader iterators
        # draws from the global generator, which the uninterrupted run did before the save.
        self._pending_rng = checkpoint.get("proteinperf_rng")
        self._drawn_at = checkpoint.get("proteinperf_drawn_at")

    def _restore_rng(self) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if rng is not None:
            torch.set_rng_state(rng["torch"].cpu())
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------------ optimizer

    def configure_optimizers(self):
        o = self.hparams.optim
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 or o["decay_norm_and_bias"] else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": o["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        cls = torch.optim.AdamW if o["name"] == "adamw" else torch.optim.Adam
        optimizer = cls(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
        total = o["total_steps"] or self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            if o["schedule"] in ("linear", "cosine"):
                raise ValueError(
                    "a decaying schedule needs an end: set trainer.max_steps or "
                    "optim.total_steps (or use optim.schedule=constant|inverse_sqrt)"
                )
            total = 1
        schedule = LRSchedule(o["schedule"], o["warmup_steps"], int(total), o["min_lr_ratio"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
