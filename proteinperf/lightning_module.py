"""LightningModule for protein language modelling: objectives, metrics, redraws.

One module trains every variant: the objective (``mlm`` on a bidirectional model, ``clm`` on a
causal one) only changes which positions carry targets, and the DataModule already encodes that
in ``batch["targets"]`` (IGNORE = no loss). Metrics are the paper's: cross-entropy, perplexity
and accuracy over target positions; validation also reports the unigram baseline (the loss and
accuracy of predicting every target from the training split's residue frequencies). The
optimizer and its schedule are proteinperf.optim's.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from proteinperf import checkpoint as ckpt_format
from proteinperf.constants import OBJECTIVES
from proteinperf.data.sampling import IGNORE
from proteinperf.model import ModelConfig, PerformerLM
from proteinperf.optim import DEFAULT_OPTIM, OptimConfig, build_optimizer, lr_scale

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


def initial_model(model_cfg: dict, init_from: str | None = None, seed: int = 0):
    """A PerformerLM from config fields, or initialised from a proteinperf checkpoint.

    With ``init_from`` the architecture and weights come from the checkpoint and only the
    RUN_FIELDS of ``model_cfg`` apply (e.g. swap exact attention for FAVOR+).
    """
    if init_from is None:
        return PerformerLM(ModelConfig.from_dict(model_cfg))
    overrides = {k: model_cfg[k] for k in RUN_FIELDS if k in model_cfg}
    model, _ = ckpt_format.load_model(init_from, overrides=overrides, feature_seed=seed)
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
        optim = dataclasses.asdict(OptimConfig.from_dict(optim))
        self.model = initial_model(dict(model), init_from, seed)
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

    @classmethod
    def from_config(cls, model: dict, optim: dict | None = None, seed: int = 0) -> ProteinLM:
        """The module of conf/train.yaml's ``module`` node: ``model`` is a conf/model/ node
        (ModelConfig fields plus ``objective`` and ``init_from``), ``optim`` an OptimConfig."""
        model = dict(model)
        objective, init_from = model.pop("objective", "mlm"), model.pop("init_from", None)
        return cls(model=model, objective=objective, optim=optim, seed=seed, init_from=init_from)

    # ------------------------------------------------------------------ forward and loss

    def forward(
        self,
        tokens: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        padded: bool | None = None,
    ):
        return self.model(tokens, padding_mask=padding_mask, padded=padded)["logits"]

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        # No host synchronisation: no device value is read into Python (no .item() or
        # bool(tensor); no boolean-mask indexing, whose output size is data-dependent), so a
        # GPU step is queued without waiting; the collate says on the host whether a batch
        # has padding. Metrics stay tensors until Lightning logs them.
        logits = self(batch["tokens"], batch["padding_mask"], batch.get("padded"))
        targets = batch["targets"]
        selected = targets != IGNORE
        n = selected.sum()  # target tokens
        per_target = n.clamp_min(1)  # no targets: loss 0 (with a zero gradient), not 0/0
        total = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        loss = total / per_target
        with torch.no_grad():
            acc = ((logits.argmax(-1) == targets) & selected).sum() / per_target
        if stage == "train":
            # Logged per step only: Lightning weighs values by batch_size only in epoch means.
            self.log("train/loss", loss.detach(), prog_bar=True)
            self.log("train/acc", acc, prog_bar=True)
            self.log("train/ppl", loss.detach().exp())
            return loss
        getattr(self, f"{stage}_loss").update(loss.detach(), n)
        getattr(self, f"{stage}_acc").update(acc, n)
        if self.unigram_log_probs.numel():
            # Updated (with weight 0) even without targets: every rank must reach compute().
            log_p = self.unigram_log_probs
            nll = -(log_p[targets.clamp_min(0)] * selected).sum() / per_target
            self.unigram_loss.update(nll, n)
            self.unigram_acc.update(((targets == log_p.argmax()) & selected).sum() / per_target, n)
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
            # Weighted means over target tokens, summed over DDP ranks by compute(): a
            # collective, so every rank computes, also one that saw no targets (or no batch:
            # then the metric was never updated). NaN: no rank had a target.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*compute.*before the.*update", UserWarning)
                loss, acc = float(loss_metric.compute()), float(acc_metric.compute())
            loss_metric.reset()
            acc_metric.reset()
            if math.isnan(loss):
                continue
            sep = "_" if "/" in prefix else "/"
            self.log(f"{prefix}{sep}loss", loss, prog_bar=stage == "val" and sep == "/")
            self.log(f"{prefix}{sep}ppl", math.exp(min(loss, 80.0)))
            self.log(f"{prefix}{sep}acc", acc, prog_bar=sep == "/")

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
        # `proteinperf evaluate` compares any data with the unigram baseline by default.
        unigram = self.unigram_log_probs.tolist() if self.unigram_log_probs.numel() else None
        checkpoint[ckpt_format.LIGHTNING_KEY] = ckpt_format.lightning_metadata(
            self.model.config, self.hparams.objective, unigram
        )
        # Dropout draws from the global generator; restoring it makes resumed losses equal
        # to the uninterrupted run's (all DDP ranks start from the same seed, hence rank 0's).
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[ckpt_format.LIGHTNING_RNG_KEY] = rng
        checkpoint[ckpt_format.LIGHTNING_DRAWN_AT_KEY] = self._drawn_at

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Applied at the first training batch, not now: creating the DataLoader iterators
        # draws from the global generator, which the uninterrupted run did before the save.
        self._pending_rng = checkpoint.get(ckpt_format.LIGHTNING_RNG_KEY)
        self._drawn_at = checkpoint.get(ckpt_format.LIGHTNING_DRAWN_AT_KEY)
        self._rescale_saved_lr(checkpoint)  # before Lightning restores the optimizer from it

    def _restore_rng(self) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if rng is not None:
            torch.set_rng_state(rng["torch"].cpu())
            if "cuda" in rng and torch.cuda.is_available():
                # The run may have seen more devices than this one (resumed on fewer GPUs):
                # restore the generators of the devices there are.
                saved = rng["cuda"][: torch.cuda.device_count()]
                for device, state in enumerate(saved):
                    torch.cuda.set_rng_state(state.cpu(), device)

    # ------------------------------------------------------------------ optimizer

    def learning_rate(self) -> float:
        """optim.lr scaled by optim.lr_scaling for this trainer's global batch."""
        o, trainer = self.hparams.optim, self.trainer
        rule, reference = o.get("lr_scaling", "none"), o.get("reference_batch")
        if rule == "none":
            return o["lr"]
        replicas = trainer.world_size * trainer.accumulate_grad_batches
        data = getattr(getattr(trainer, "datamodule", None), "hparams", {})
        device_batch = data.get("tokens_per_batch") or data.get("batch_size")
        return o["lr"] * lr_scale(rule, replicas, device_batch, reference)

    def configure_optimizers(self):
        estimated = self.trainer.estimated_stepping_batches
        optim = {**self.hparams.optim, "lr": self.learning_rate()}
        if optim["lr"] != self.hparams.optim["lr"] and self.trainer.is_global_zero:
            print(
                f"learning rate {optim['lr']:.4g}: optim.lr {self.hparams.optim['lr']:.4g} "
                f"scaled {optim['lr_scaling']} for {self.trainer.world_size} device(s) x "
                f"{self.trainer.accumulate_grad_batches} accumulated batch(es)",
                flush=True,
            )
        return build_optimizer(self.model.parameters(), optim, estimated)

    def _rescale_saved_lr(self, checkpoint: dict) -> None:
        """A run resumed with another global batch (e.g. on fewer devices) continues its
        schedule from the learning rate the rule gives now, not the one it saved."""
        if self.hparams.optim.get("lr_scaling", "none") == "none" or not self._trainer:
            return
        schedulers = checkpoint.get("lr_schedulers") or []
        if not schedulers or not schedulers[0].get("base_lrs"):
            return
        factor = self.learning_rate() / schedulers[0]["base_lrs"][0]
        if factor == 1.0:
            return
        schedulers[0]["base_lrs"] = [lr * factor for lr in schedulers[0]["base_lrs"]]
        schedulers[0]["_last_lr"] = [lr * factor for lr in schedulers[0].get("_last_lr", [])]
        for state in checkpoint.get("optimizer_states") or []:
            for group in state["param_groups"]:
                for key in ("lr", "initial_lr"):
                    if key in group:
                        group[key] *= factor


def train_small_model(
    fasta,
    out,
    model: dict | None = None,
    steps: int = 1500,
    cache_dir=None,
    max_length: int = 128,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
):
    """Train a small bidirectional FAVOR+ masked LM on ``fasta`` (CPU, no validation, no logs)
    and save it as a model file at ``out``: the trained model the notebooks analyse.

    ``model`` holds ModelConfig fields over these: positive softmax features
    (favor_softmax), no dropout, fixed features (redraw_interval 0).
    """
    from proteinperf.checkpoint import save_model
    from proteinperf.data import ProteinDataModule

    pl.seed_everything(seed, verbose=False)
    data = ProteinDataModule(
        str(fasta),
        objective="mlm",
        max_length=max_length,
        batch_size=batch_size,
        cache_dir=str(cache_dir) if cache_dir else None,
        seed=seed,
    )
    module = ProteinLM(
        model={"attention": "favor_softmax", "dropout": 0.0, "redraw_interval": 0, **(model or {})},
        objective="mlm",
        optim={"lr": lr, "warmup_steps": steps // 10},
        seed=seed,
    )
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    return save_model(out, module.model, extra={"steps": steps})


__all__ = [
    "DEFAULT_OPTIM",
    "IGNORE",
    "OBJECTIVES",
    "ProteinLM",
    "RUN_FIELDS",
    "initial_model",
    "train_small_model",
]
