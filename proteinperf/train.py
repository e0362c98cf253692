"""Hydra entry point of `make train`: python -m proteinperf.train [overrides] (see conf/README.md).

Thin on purpose: it composes the config, instantiates the DataModule, the LightningModule
(proteinperf.lightning_module), callbacks, loggers and the Trainer, trains, evaluates the best
checkpoint and prints a summary. The only subtle part is where each run writes:

- Every run (or multirun job) gets its own folder, ``${paths.log_dir}/${task_name}/runs/<id>``.
- Lightning's ``ddp`` strategy starts ranks 1..n-1 by re-running this module with the same
  argv. Rank 0 leaves its job's exact overrides and output folder in the environment, and the
  children run that single job in that folder (also out of a ``-m`` sweep) without writing a
  config of their own.
- Processes started by SLURM or torchrun name the folder after the job id they all share. A
  SLURM job that is requeued (preempted, or requeued on SIGUSR1 by proteinperf.preemption)
  runs the same command again: it finds the same folder and resumes from its newest
  checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from proteinperf import resources
from proteinperf.errors import ConfigError, ProteinperfError
from proteinperf.preemption import resume_checkpoint, slurm_job_id, slurm_requeued

CHILD_ARGV_ENV = "PROTEINPERF_DDP_CHILD_ARGV"
# What Lightning's DDP launcher leaves in the launching process's environment.
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
RUN_ID_ENV = "PROTEINPERF_RUN_ID"


# ----------------------------------------------------------------------------- run folders


def _distributed_rank() -> int:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _scheduler_run_id() -> str | None:
    """An id all processes of one externally launched job share, if any: under SLURM also
    for a single task, so that the job finds its folder again when it is requeued."""
    env = os.environ
    job = slurm_job_id()
    if job:
        return f"slurm-{job}"
    elastic = env.get("TORCHELASTIC_RUN_ID", "none")
    if elastic != "none" and int(env.get("WORLD_SIZE", "1") or 1) > 1:
        return f"torchrun-{elastic}"
    return None


def run_id(parent: str = "") -> str:
    """``YYYY-MM-DD_HH-MM-SS``, with a suffix when ``parent`` already has that folder."""
    fixed = os.environ.get(RUN_ID_ENV) or _scheduler_run_id()
    if fixed:
        return fixed
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    candidate, n = stamp, 1
    while parent and (Path(parent) / candidate).exists():
        candidate, n = f"{stamp}_{n}", n + 1
    return candidate


def register_resolvers() -> None:
    """${project_root:} and ${run_id:parent} (cached, so a process agrees with itself), and
    the structured configs conf/ builds on (proteinperf.config): call before composing."""
    from proteinperf.config import register_configs

    register_configs()
    if not OmegaConf.has_resolver("project_root"):  # (and the two below: conf/paths/)
        OmegaConf.register_new_resolver("project_root", lambda: str(resources.project_root()))
    if not OmegaConf.has_resolver("data_dir"):
        OmegaConf.register_new_resolver("data_dir", lambda: str(resources.data_dir()))
    if not OmegaConf.has_resolver("cache_dir"):
        OmegaConf.register_new_resolver("cache_dir", resources.cache_dir)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)
    if not OmegaConf.has_resolver("cpu_precision"):  # conf/trainer/cpu.yaml
        OmegaConf.register_new_resolver("cpu_precision", cpu_precision)


def cpu_precision() -> str:
    """bf16-mixed where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): 1.56x the
    float32 steps/s at the same loss (benchmarks/results/mixed_training.md). float32
    elsewhere, where bf16 matmuls are emulated and slower than float32."""
    import torch

    native = [getattr(torch.cpu, f, lambda: False) for f in _NATIVE_BF16]
    return "bf16-mixed" if any(check() for check in native) else "32-true"


_NATIVE_BF16 = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def _adopt_parent_job() -> None:
    """In a DDP child started by Lightning, run rank 0's job in rank 0's folder."""
    local_rank = os.environ.get("LOCAL_RANK", "0")
    argv = os.environ.get(CHILD_ARGV_ENV)
    if argv and local_rank != "0":
        sys.argv = [sys.argv[0], *json.loads(argv), f"hydra.job.name=rank{local_rank}"]
    elif _distributed_rank() != 0:  # SLURM / torchrun: one config copy is enough
        sys.argv.append("hydra.output_subdir=null")


def _hand_job_to_ddp_children() -> None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    hc = HydraConfig.get()
    output_dir = hc.runtime.output_dir.replace("'", "\\'")
    argv = [*hc.overrides.task, f"hydra.run.dir='{output_dir}'", "hydra.output_subdir=null"]
    os.environ[CHILD_ARGV_ENV] = json.dumps(argv)


@contextlib.contextmanager
def _ddp_launch_scope():
    """Undo a Lightning DDP launch afterwards, so that the next multirun job launches afresh.

    Otherwise the next job would find LOCAL_RANK set (taken to mean "launched externally, do
    not start children") and a process group whose other ranks have exited.
    """
    launcher = "LOCAL_RANK" not in os.environ
    saved = {name: os.environ.get(name) for name in LAUNCH_ENV}
    try:
        yield
    finally:
        if launcher:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


# ----------------------------------------------------------------------------- wandb


def _wandb_account_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _default_wandb_offline(cfg: DictConfig) -> None:
    """wandb runs offline unless WANDB_MODE says otherwise or an account is configured."""
    uses_wandb = any("Wandb" in str(c.get("_target_", "")) for c in _entries(cfg.get("logger")))
    if uses_wandb and "WANDB_MODE" not in os.environ and not _wandb_account_configured():
        os.environ["WANDB_MODE"] = "offline"


# ----------------------------------------------------------------------------- training


def _overfit(datamodule, n_batches: int):
    """A DataModule serving the first n training batches: forever for training, once for
    validation (debug=overfit). Lightning's own overfit_batches swaps in a sequential sampler,
    which the batch-planning sampler of ProteinDataModule cannot be replaced by."""
    import itertools

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, IterableDataset

    class Cycle(IterableDataset):
        def __init__(self, batches):
            self.batches = batches

        def __iter__(self):
            return itertools.cycle(self.batches)

    class Overfit(pl.LightningDataModule):
        def setup(self, stage=None):
            if not hasattr(self, "batches"):
                datamodule.setup("fit")
                loader = datamodule.train_dataloader()
                self.batches = list(itertools.islice(loader, n_batches))

        def train_dataloader(self):
            return DataLoader(Cycle(self.batches), batch_size=None)

        def val_dataloader(self):
            return DataLoader(self.batches, batch_size=None)

        def unigram_log_probs(self):
            return datamodule.unigram_log_probs()

    return Overfit()


def _entries(group: DictConfig | None) -> list[DictConfig]:
    """The configured objects of a group like callbacks/ or logger/ (null entries dropped)."""
    if not group:
        return []
    return [c for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def _rank_zero() -> bool:
    return _distributed_rank() == 0


def _say(message: str) -> None:
    if _rank_zero():
        print(message, flush=True)


def _first(results: list[dict] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (results or [{}])[0].items()} if results else {}


def metrics_table(val: dict[str, float], test: dict[str, float], checkpoint: str | None) -> str:
    """The table printed at the end of a run."""
    lines = [f"{'':16}{'loss':>9}{'perplexity':>12}{'accuracy':>10}"]
    for stage, metrics in (("val", val), ("test", test)):
        for label, prefix in (
            (f"model ({stage})", f"{stage}/"),
            (f"unigram ({stage})", f"{stage}/unigram_"),
        ):
            if f"{prefix}loss" in metrics:
                loss, ppl, acc = (metrics[f"{prefix}{k}"] for k in ("loss", "ppl", "acc"))
                lines.append(f"{label:16}{loss:9.4f}{ppl:12.3f}{acc:10.4f}")
    lines.append(f"checkpoint: {checkpoint or '(none saved)'}")
    return "\n".join(lines)


def _requeued_resume_point(trainer, output_dir: Path) -> str | None:
    """In a requeued SLURM job: the newest checkpoint the run left in its folder."""
    if not slurm_requeued():
        return None
    callback = trainer.checkpoint_callback
    folder = callback.dirpath if callback and callback.dirpath else output_dir / "checkpoints"
    path = resume_checkpoint(folder)
    restarts = os.environ["SLURM_RESTART_COUNT"]
    metrics = output_dir / "csv" / "metrics.csv"
    if path and _rank_zero() and metrics.is_file():  # Lightning's CSVLogger would delete it
        metrics.rename(metrics.with_name(f"metrics.before-restart-{restarts}.csv"))
    _say(
        f"requeued SLURM job (restart {restarts}): "
        + (f"resuming from {path}" if path else f"no checkpoint in {folder}, starting afresh")
    )
    return path


# ckpt_path values Lightning resolves itself rather than reading a file.
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def check_ckpt_path(ckpt_path) -> None:
    """A resume checkpoint that is not there fails here, in one line, before any set-up."""
    if ckpt_path is None or str(ckpt_path) in LIGHTNING_CKPT_NAMES:
        return
    path = Path(str(ckpt_path))
    if not path.is_file():
        what = "is a directory, expected a .ckpt file" if path.is_dir() else "no such file"
        raise ConfigError(f"ckpt_path={ckpt_path}: {what}")


MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(value: str | None) -> None:
    """float32 matmuls on CUDA: "high" lets them run on TF32 tensor cores, which changed a
    trained model's attention outputs by ~5e-4 (relative) and its loss by ~1e-5
    (benchmarks/results/precision.md). CPU matmuls are left in full float32."""
    if value is None:
        return
    if value not in MATMUL_PRECISIONS:
        raise ConfigError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got {value!r}")
    import torch

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(value)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (and evaluate) as ``cfg`` says; returns the final metrics and checkpoint path."""
    import pytorch_lightning as pl

    check_ckpt_path(cfg.get("ckpt_path"))
    set_matmul_precision(cfg.get("matmul_precision"))
    pl.seed_everything(cfg.seed, workers=True)
    _default_wandb_offline(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if _rank_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    if cfg.get("overfit_batches"):
        datamodule = _overfit(datamodule, int(cfg.overfit_batches))
    module = hydra.utils.instantiate(cfg.module, _convert_="all")
    callbacks = [
        hydra.utils.instantiate(c, _convert_="all") for c in _entries(cfg.get("callbacks"))
    ]
    if not cfg.trainer.get("enable_progress_bar", True):  # else Lightning refuses to start
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    loggers = [hydra.utils.instantiate(c, _convert_="all") for c in _entries(cfg.get("logger"))]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    _hand_job_to_ddp_children()
    ckpt_path = cfg.get("ckpt_path") or _requeued_resume_point(trainer, output_dir)

    with _ddp_launch_scope():
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        callback = trainer.checkpoint_callback
        checkpoint = (callback.best_model_path or callback.last_model_path) if callback else ""
        checkpoint = checkpoint or None
        fast = bool(cfg.trainer.get("fast_dev_run"))
        val, test = {}, {}
        if trainer.limit_val_batches and not fast:
            val = _first(
                trainer.validate(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
            )
        if cfg.get("test") and not fast:
            test = _first(
                trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
            )
    _say("\n" + metrics_table(val, test, checkpoint))
    return {
        "val": val,
        "test": test,
        "checkpoint": checkpoint,
        "output_dir": str(output_dir),
        "trainer": trainer,
        "module": module,
    }


register_resolvers()


# conf/ of the checkout, or the copy a wheel ships (proteinperf/_conf): see resources.py
@hydra.main(version_base="1.3", config_path=str(resources.conf_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        result = train(cfg)
    except ProteinperfError as err:  # bad input: one line and exit 2, as every other command
        if os.environ.get("PROTEINPERF_DEBUG"):
            raise
        text = str(err).strip().splitlines()
        print(
            f"proteinperf train: error: {text[0] if text else type(err).__name__}", file=sys.stderr
        )
        sys.exit(2)
    return result["val"].get("val/loss")  # for sweepers that optimise the returned value


def main() -> None:
    _adopt_parent_job()
    _hydra_main()


if __name__ == "__main__":
    main()
