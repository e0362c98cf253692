"""Held-out language-model metrics of a checkpoint on any FASTA file or prepared corpus split.

The examples are exactly the training module's evaluation examples (proteinperf.data:
deterministic crops, BERT masking seeded by (seed, index), next-token targets for causal
models), so `evaluate` on a corpus's test split gives the numbers of the training's test step.
Beside the model it reports the unigram baseline: every target predicted from residue
frequencies (by default those of the checkpoint's training split, which checkpoints carry).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from proteinperf.data.corpus import ProteinCorpus
from proteinperf.data.datamodule import SequenceDataset, unigram_log_probs
from proteinperf.data.fasta import DataError
from proteinperf.data.sampling import IGNORE, BatchPlanSampler

DEFAULT_TOKS_PER_BATCH = 8192


def unigram_log_probs_from(path, causal: bool) -> torch.Tensor:
    """Unigram baseline from a FASTA file (all of it) or a corpus directory (its train split)."""
    with _corpus(path, "train") as corpus:
        return unigram_log_probs(corpus, causal)


class _corpus:
    """A ProteinCorpus split of a corpus directory, or of a FASTA prepared into a temp dir."""

    def __init__(self, path, split: str | None):
        self.path, self.split, self._tmp = Path(path), split, None

    def __enter__(self) -> ProteinCorpus:
        if (self.path / "manifest.json").is_file():
            return ProteinCorpus(self.path, self.split or "test")
        if self.path.is_dir():
            raise DataError(f"{self.path}: a directory but not a prepared corpus (no manifest)")
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        from proteinperf.data.prepare import prepare

        self._tmp = tempfile.TemporaryDirectory(prefix="proteinperf-eval-")
        out = Path(self._tmp.name) / "corpus"
        prepare(
            [self.path],
            out,
            valid_fraction=0.0,
            test_fraction=0.0,
            workers=1,
            progress=False,
            command=f"evaluate {self.path}",
        )
        return ProteinCorpus(out, "train")

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


@torch.no_grad()
def evaluate(
    model,
    data,
    *,
    split: str | None = None,
    mask_prob: float = 0.15,
    seed: int = 0,
    max_length: int = 1024,
    toks_per_batch: int = DEFAULT_TOKS_PER_BATCH,
    unigram_log_probs: torch.Tensor | None = None,
    progress: bool = False,
) -> dict:
    """{"loss", "perplexity", "accuracy", "targets", "sequences", "objective", "unigram": {...}}.

    ``data``: a FASTA file (every record is evaluated) or a prepared corpus directory (``split``,
    default "test"). Loss is the mean cross-entropy (nats) over target positions: the masked
    ~``mask_prob`` of residues for a bidirectional model, every next token (and the final <eos>)
    for a causal one. Sequences are cropped to their first ``max_length`` tokens incl. framing.
    """
    if max_length < 3:
        raise DataError(f"--max-length must leave room for residues (>= 3), got {max_length}")
    if not 0.0 < mask_prob < 1.0:
        raise DataError(f"--mask-prob must be in (0, 1), got {mask_prob}")
    causal = bool(model.config.causal)
    objective = "clm" if causal else "mlm"
    device = next(model.parameters()).device
    model.eval()
    with _corpus(data, split) as corpus:
        if len(corpus) == 0:
            raise DataError(f"{data}: no sequences to evaluate")
        dataset = SequenceDataset(corpus, max_length, objective, mask_prob, seed, train=False)
        sampler = BatchPlanSampler(
            dataset.lengths,
            tokens_per_batch=max(toks_per_batch, max_length),
            shuffle=False,
            seed=seed,
            rank=0,
            num_replicas=1,
        )
        totals = np.zeros(4)  # model nll, model correct, unigram nll, unigram correct
        n_targets = 0
        from tqdm import tqdm

        for keys in tqdm(sampler, disable=not progress, desc="evaluate", unit="batch"):
            batch = dataset[keys]
            tokens = batch["tokens"].to(device)
            targets = batch["targets"].to(device)
            logits = model(tokens, padding_mask=batch["padding_mask"].to(device))["logits"]
            selected = targets != IGNORE
            logits, targets = logits[selected].float(), targets[selected]
            totals[0] += float(F.cross_entropy(logits, targets, reduction="sum"))
            totals[1] += float((logits.argmax(-1) == targets).sum())
            if unigram_log_probs is not None:
                log_p = unigram_log_probs.to(device)
                totals[2] += float(-log_p[targets].sum())
                totals[3] += float((targets == log_p.argmax()).sum())
            n_targets += int(targets.numel())
        sequences = len(corpus)
    result = {
        "objective": objective,
        "sequences": sequences,
        "targets": n_targets,
        **_metrics(totals[0], totals[1], n_targets),
        "mask_prob": mask_prob if objective == "mlm" else None,
        "seed": seed,
        "max_length": max_length,
    }
    if unigram_log_probs is not None:
        result["unigram"] = _metrics(totals[2], totals[3], n_targets)
    return result


def _metrics(nll: float, correct: float, n: int) -> dict:
    loss = nll / max(n, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "accuracy": correct / max(n, 1)}


def format_table(result: dict, name: str = "model") -> str:
    """A small text table: model vs unigram (with the differences)."""
    rows = [(name, result)]
    if "unigram" in result:
        rows.append(("unigram", result["unigram"]))
    lines = [f"{'':<10} {'accuracy':>9} {'perplexity':>11} {'loss':>8}"]
    for label, r in rows:
        lines.append(
            f"{label:<10} {r['accuracy']:>9.4f} {r['perplexity']:>11.3f} {r['loss']:>8.4f}"
        )
    if "unigram" in result:
        u = result["unigram"]
        lines.append(
            f"{'vs unigram':<10} {100 * (result['accuracy'] - u['accuracy']):>+8.2f}p "
            f"{result['perplexity'] / u['perplexity']:>10.3f}x"
        )
    where = (
        f"{result['sequences']:,} sequences, {result['targets']:,} {result['objective']} targets"
    )
    return "\n".join([*lines, where])
