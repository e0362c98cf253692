"""Held-out benchmark: what a random split hides, and what the default run learns.

`make train`'s configuration is trained twice on the default corpus (20,000 Swiss-Prot
proteins): once with the plain hash split (homologs on both sides) and once with the shipped
50%-identity MMseqs2 clustering (the default). Each checkpoint is then evaluated, beside the
unigram baseline of its training split, on

- its own validation split (what a training run reports),
- the test split of the clustered corpus (no relative of >= 50% identity in train),
- ``data/far_proteins.fasta.gz``: 2,000 UniProt proteins with no MMseqs2 hit at all in the
  20,000 (families absent from training; see data/README.md).

Wall and CPU seconds of each training run are recorded with the machine's load: the target
(<= 4 min on 2 idle cores) only means something on an idle machine.
"""

from __future__ import annotations

import functools
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from proteinperf import resources
from proteinperf.benchmarks._measure import machine_info, markdown_table

ROOT = resources.project_root()
FAR = resources.data_dir() / "far_proteins.fasta.gz"
TARGET_POINTS, TARGET_PPL_RATIO, TARGET_SECONDS = 1.5, 0.92, 240.0
SPLITS = {
    "random split": ["data.clusters_file=null"],
    "clustered split (default)": [],
}
QUICK_OVERRIDES = [
    "model=tiny",
    "trainer.max_steps=10",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=2",
    "data.max_length=64",
]


def _train(overrides: list[str], log_dir: Path) -> dict[str, Any]:
    """Run `python -m proteinperf.train` as `make train` does; wall and CPU time, checkpoint."""
    cmd = [
        sys.executable,
        "-m",
        "proteinperf.train",
        *overrides,
        f"paths.log_dir={log_dir}",
        "test=false",
        "trainer.enable_progress_bar=false",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"training failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    ckpt = sorted(log_dir.glob("train/runs/*/checkpoints/last.ckpt"))[-1]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "command": "make train " + " ".join(overrides),
        "checkpoint": str(ckpt),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def _evaluations(ckpt: str) -> dict[str, dict]:
    import torch

    from proteinperf.checkpoint import checkpoint_metadata, load_model
    from proteinperf.inference.evaluate import evaluate

    model, _ = load_model(ckpt)
    unigram = torch.tensor(checkpoint_metadata(ckpt)["unigram_log_probs"])
    corpus = _corpus_of(ckpt)
    clustered = _clustered_corpus()
    sets = {
        "own validation split": (corpus, "valid"),
        "clustered test split": (clustered, "test"),
        "far proteins": (FAR, None),
    }
    return {
        name: evaluate(model, data, split=split, unigram_log_probs=unigram)
        for name, (data, split) in sets.items()
    }


def _corpus_of(ckpt: str) -> Path:
    """The prepared corpus a run trained on (its resolved config names the data module's)."""
    from omegaconf import OmegaConf

    from proteinperf.data.datamodule import ProteinDataModule

    cfg = OmegaConf.load(Path(ckpt).parents[1] / "config.yaml")
    data = OmegaConf.to_container(cfg.data)
    data.pop("_target_")
    return ProteinDataModule(**data)._corpus_path()


@functools.cache
def _clustered_corpus() -> Path:
    """The default corpus with its shipped 50% clustering, prepared once (cached on disk)."""
    from proteinperf.data.datamodule import ProteinDataModule

    data = resources.data_dir()
    return ProteinDataModule(
        str(data / "swissprot_20k.fasta.gz"),
        clusters_file=str(data / "swissprot_20k.clusters50.tsv.gz"),
    )._corpus_path()


def _row(split: str, where: str, r: dict) -> list:
    u = r["unigram"]
    return [
        split,
        where,
        f"{r['accuracy']:.4f}",
        f"{u['accuracy']:.4f}",
        f"{100 * (r['accuracy'] - u['accuracy']):+.2f}",
        f"{r['perplexity']:.2f}",
        f"{u['perplexity']:.2f}",
        f"{r['perplexity'] / u['perplexity']:.3f}",
        f"{r['sequences']:,}",
    ]


def run(quick: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    extra = QUICK_OVERRIDES if quick else []
    runs = {}
    with tempfile.TemporaryDirectory(prefix="proteinperf-heldout-") as tmp:
        for i, (name, overrides) in enumerate(SPLITS.items()):
            trained = _train([*overrides, *extra], Path(tmp) / str(i))
            trained["evaluation"] = _evaluations(trained.pop("checkpoint"))
            runs[name] = trained
            print(f"{name}: trained in {trained['wall_s']} s wall, {trained['cpu_s']} s CPU")
    rows = [
        _row(split, where, r)
        for split, run_ in runs.items()
        for where, r in run_["evaluation"].items()
    ]
    default = runs["clustered split (default)"]
    far = default["evaluation"]["far proteins"]
    points = 100 * (far["accuracy"] - far["unigram"]["accuracy"])
    ratio = far["perplexity"] / far["unigram"]["perplexity"]
    targets = [
        [
            "accuracy - unigram on far proteins",
            f">= +{TARGET_POINTS} points",
            f"{points:+.2f}",
            "met" if points >= TARGET_POINTS else "missed",
        ],
        [
            "perplexity / unigram on far proteins",
            f"<= {TARGET_PPL_RATIO}",
            f"{ratio:.3f}",
            "met" if ratio <= TARGET_PPL_RATIO else "missed",
        ],
        [
            "make train wall time (2 cores)",
            f"<= {TARGET_SECONDS:.0f} s idle",
            f"{default['wall_s']:.0f} s (load {default['load_before']})",
            "met" if default["wall_s"] <= TARGET_SECONDS else "missed (see load)",
        ],
    ]
    markdown = "\n\n".join(
        [
            markdown_table(
                [
                    "trained on",
                    "evaluated on",
                    "accuracy",
                    "unigram acc",
                    "Δ points",
                    "perplexity",
                    "unigram ppl",
                    "ppl ratio",
                    "proteins",
                ],
                rows,
            ),
            markdown_table(["target", "goal", "measured", ""], targets),
        ]
    )
    return {
        "quick": quick,
        "runs": runs,
        "targets": targets,
        "machine": machine_info(),
        "markdown": markdown,
    }
