"""bf16-mixed against float32 training on this CPU: optimizer steps per second and the loss.

The default training run (conf/train.yaml: the small bidirectional Performer-ReLU, 16 Swiss-Prot
proteins of ≤ 256 tokens a batch, AdamW, clip 0.5, feature redraws) is built twice from one
seed, so both models start from the same weights and see the same batches. They train in
alternating blocks of ``block`` steps (which one goes first alternates too), so both see the
same machine load; bf16-mixed is Lightning's CPU AMP, ``torch.autocast("cpu", torch.bfloat16)``
around the forward, float32 weights and optimizer. The machine is shared: the load average is
recorded per block and every block's rate is kept, not only the median. Quality is the mean
training loss of the last blocks and the validation loss of both models, evaluated in float32
on the same validation batches.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from proteinperf.benchmarks._measure import machine_info, markdown_table
from proteinperf.data.sampling import IGNORE

PRECISIONS = ("32-true", "bf16-mixed")


@dataclass(frozen=True)
class Settings:
    steps: int = 200  # per precision
    block: int = 25
    val_batches: int = 16
    threads: int = 1  # a shared, loaded machine: two threads each would only contend
    overrides: tuple[str, ...] = ()  # Hydra overrides of the training config


FULL = Settings()
QUICK = Settings(steps=8, block=4, val_batches=2, overrides=("model=tiny", "data=sample"))


def _loss(module, batch) -> torch.Tensor:
    logits = module(batch["tokens"], batch["padding_mask"], batch.get("padded"))
    return F.cross_entropy(
        logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE
    )


class _Run:
    """One model, its optimizer and schedule, trained a block at a time."""

    def __init__(self, cfg, precision: str, total_steps: int):
        from hydra.utils import instantiate

        from proteinperf.optim import build_optimizer

        torch.manual_seed(cfg.seed)
        self.module = instantiate(cfg.module).train()
        built = build_optimizer(self.module.model.parameters(), dict(cfg.optim), total_steps)
        self.optimizer = built["optimizer"]
        self.scheduler = built["lr_scheduler"]["scheduler"]
        self.precision = precision
        self.step = 0
        self.losses: list[float] = []
        self.block_rates: list[float] = []

    def warm_up(self, batch: dict) -> None:
        """One forward and backward, no update: first-call costs out of the timed blocks."""
        with self._autocast():
            loss = _loss(self.module, batch)
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)

    def _autocast(self):
        if self.precision == "bf16-mixed":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def train(self, batches: list[dict]) -> None:
        start = time.perf_counter()
        losses = []
        for batch in batches:
            self.module.redraw_if_due(self.step)
            with self._autocast():
                loss = _loss(self.module, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), 0.5)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            losses.append(loss.detach())
        self.block_rates.append(len(batches) / (time.perf_counter() - start))
        self.losses += [float(x) for x in losses]

    @torch.no_grad()
    def validate(self, batches: list[dict]) -> float:
        self.module.eval()
        total = sum(float(_loss(self.module, b)) for b in batches)
        self.module.train()
        return total / len(batches)


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> dict:
    from proteinperf.reproduce import compose

    s = settings or (QUICK if quick else FULL)
    torch.set_num_threads(s.threads)
    cfg = compose(["trainer=cpu", *s.overrides])
    from hydra.utils import instantiate

    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    train_batches = list(itertools.islice(itertools.cycle(data.train_dataloader()), s.steps))
    val_batches = list(itertools.islice(data.val_dataloader(), s.val_batches))
    runs = {p: _Run(cfg, p, s.steps) for p in PRECISIONS}
    for r in runs.values():
        r.warm_up(train_batches[0])
    loads = []
    for n, lo in enumerate(range(0, s.steps, s.block)):
        order = PRECISIONS if n % 2 == 0 else PRECISIONS[::-1]
        for precision in order:
            runs[precision].train(train_batches[lo : lo + s.block])
        loads.append(os.getloadavg()[0])
        rates = ", ".join(f"{p} {runs[p].block_rates[-1]:.2f}" for p in PRECISIONS)
        print(
            f"  steps {lo + s.block}/{s.steps}: steps/s {rates}; load {loads[-1]:.1f}", flush=True
        )

    tail = max(1, s.steps // 4)
    results = {}
    for precision, r in runs.items():
        results[precision] = {
            "steps_per_s_median": statistics.median(r.block_rates),
            "block_steps_per_s": r.block_rates,
            "train_loss_last_quarter": statistics.fmean(r.losses[-tail:]),
            "train_loss": r.losses,
            "val_loss_fp32": r.validate(val_batches),
        }
    ratios = [b / a for a, b in zip(*(runs[p].block_rates for p in PRECISIONS))]
    summary = {
        "speedup_median": statistics.median(ratios),
        "speedup_min": min(ratios),
        "speedup_max": max(ratios),
        "val_loss_delta": results["bf16-mixed"]["val_loss_fp32"]
        - results["32-true"]["val_loss_fp32"],
        "load_average_1min": loads,
    }
    rows = [
        [
            p,
            f"{results[p]['steps_per_s_median']:.2f}",
            f"{min(runs[p].block_rates):.2f}–{max(runs[p].block_rates):.2f}",
            f"{results[p]['train_loss_last_quarter']:.4f}",
            f"{results[p]['val_loss_fp32']:.4f}",
        ]
        for p in PRECISIONS
    ]
    table = markdown_table(
        ["precision", "steps/s (median block)", "block range", "train loss, last 1/4", "val loss"],
        rows,
    )
    markdown = "\n".join(
        [
            "# bf16-mixed against float32 training on CPU",
            "",
            f"{s.steps} steps each, alternating blocks of {s.block}, {s.threads} threads, "
            f"config overrides {list(s.overrides) or 'none (the default `make train` run)'}. "
            "Same initial weights, same batches; validation loss in float32 on "
            f"{len(val_batches)} validation batches.",
            "",
            table,
            "",
            f"bf16-mixed / float32 steps/s per block pair: median {summary['speedup_median']:.2f}"
            f" (range {summary['speedup_min']:.2f}–{summary['speedup_max']:.2f}); validation "
            f"loss difference {summary['val_loss_delta']:+.4f}. 1-minute load average during "
            f"the run: {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores (a shared "
            "machine: rates swing with the other users' load).",
        ]
    )
    return {
        "settings": asdict(s),
        "machine": machine_info(),
        "results": results,
        "summary": summary,
        "markdown": markdown,
    }
