"""Score whole sequences: exact log-likelihood (causal) or pseudo-log-likelihood (bidirectional).

log_likelihood sums log p over the residues (not <cls>/<eos>); mean_log_likelihood divides by
the length and perplexity = exp(-mean). For a bidirectional model the pseudo-log-likelihood
masks every residue once (Salazar et al., 2020); ``wt-marginals`` reads all residues from one
unmasked pass instead (cheap, but each residue sees itself, so it is optimistic).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .common import (
    DEFAULT_TOKS_PER_BATCH,
    atomic_output,
    check_length,
    plan_batches,
    progress,
    read_records,
    windows,
)
from .likelihood import causal_log_probs, pseudo_log_probs, wt_marginal_log_probs

STRATEGIES = ("log-likelihood", "pseudo-log-likelihood", "wt-marginals")
COLUMNS = ("id", "length", "log_likelihood", "mean_log_likelihood", "perplexity")


def resolve_strategy(strategy: str | None, causal: bool) -> str:
    """The default for the model's direction, or ``strategy`` if the model supports it."""
    if strategy is None:
        return "log-likelihood" if causal else "pseudo-log-likelihood"
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if causal and strategy != "log-likelihood":
        raise ValueError(
            f"strategy {strategy!r} needs a bidirectional model; this checkpoint is "
            "causal: use log-likelihood (its exact likelihood)"
        )
    if not causal and strategy == "log-likelihood":
        raise ValueError(
            "a bidirectional model has no exact log-likelihood; use "
            "pseudo-log-likelihood or wt-marginals"
        )
    return strategy


def summarise(record_id: str, terms) -> dict:
    """One CSV row from the per-residue log-probabilities."""
    total = float(terms.double().sum())
    mean = total / len(terms)
    return {
        "id": record_id,
        "length": len(terms),
        "log_likelihood": total,
        "mean_log_likelihood": mean,
        "perplexity": math.exp(-mean),
    }


def score_window(
    model, sequences: list[str], strategy: str, toks_per_batch: int, precision: str, bar
) -> list:
    """Per-residue log-probability tensors for each sequence, in the given order."""
    if strategy == "pseudo-log-likelihood":
        return [pseudo_log_probs(model, seq, toks_per_batch, precision, bar) for seq in sequences]
    one_pass = causal_log_probs if strategy == "log-likelihood" else wt_marginal_log_probs
    terms: list = [None] * len(sequences)
    for batch in plan_batches([len(s) for s in sequences], toks_per_batch):
        for i, t in zip(batch, one_pass(model, [sequences[i] for i in batch], precision)):
            terms[i] = t
        bar.update(sum(len(sequences[i]) for i in batch))
    return terms


def score_fasta(
    model,
    fasta,
    output,
    *,
    strategy: str | None = None,
    toks_per_batch: int = DEFAULT_TOKS_PER_BATCH,
    truncate: int | None = None,
    invalid: str = "error",
    precision: str = "fp32",
    quiet: bool = False,
) -> dict:
    """Write one CSV row per record of ``fasta`` (input order) to ``output``, atomically."""
    strategy = resolve_strategy(strategy, model.config.causal)
    count = 0
    with (
        atomic_output(Path(output)) as tmp,
        open(tmp, "w", newline="") as f,
        progress(quiet, f"score ({strategy})") as bar,
    ):
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for window in windows(read_records(fasta, truncate, invalid)):
            for record in window:
                check_length(model, len(record.sequence), f"record '{record.id}'")
            sequences = [record.sequence for record in window]
            terms = score_window(model, sequences, strategy, toks_per_batch, precision, bar)
            writer.writerows(summarise(r.id, t) for r, t in zip(window, terms))
            count += len(window)
            bar.set_postfix(records=count, refresh=False)
    return {"records": count, "strategy": strategy, "output": str(output)}
