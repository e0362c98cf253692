"""Score whole sequences: exact log-likelihood (causal) or pseudo-log-likelihood (bidirectional).

log_likelihood sums log p over the residues (not <cls>/<eos>); mean_log_likelihood divides by
the length and perplexity = exp(-mean). For a bidirectional model the pseudo-log-likelihood
masks every residue once (Salazar et al., 2020); ``wt-marginals`` reads all residues from one
unmasked pass instead (cheap, but each residue sees itself, so it is optimistic).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from proteinperf.constants import SCORE_STRATEGIES
from proteinperf.errors import ConfigError

from .common import (
    DEFAULT_TOKS_PER_BATCH,
    atomic_output,
    check_length,
    length_limit,
    length_sorted_batches,
)
from .likelihood import causal_log_probs, pseudo_log_probs, wt_marginal_log_probs

STRATEGIES = SCORE_STRATEGIES
COLUMNS = ("id", "length", "log_likelihood", "mean_log_likelihood", "perplexity")


def resolve_score_strategy(strategy: str | None, causal: bool) -> str:
    """The default for the model's direction, or ``strategy`` if the model supports it."""
    if strategy is None:
        return "log-likelihood" if causal else "pseudo-log-likelihood"
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if causal and strategy != "log-likelihood":
        raise ConfigError(
            f"strategy {strategy!r} needs a bidirectional model; this checkpoint is "
            "causal: use log-likelihood (its exact likelihood)"
        )
    if not causal and strategy == "log-likelihood":
        raise ConfigError(
            "a bidirectional model has no exact log-likelihood; use "
            "pseudo-log-likelihood or wt-marginals"
        )
    return strategy


def summarise(record_id: str, terms) -> dict:
    """One CSV row from the per-residue log-probabilities."""
    return row(record_id, len(terms), float(terms.double().sum()))


def row(record_id: str, length: int, total: float) -> dict:
    """One CSV row from a record's summed log-likelihood."""
    mean = total / length
    return {
        "id": record_id,
        "length": length,
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
    for batch in length_sorted_batches([len(s) for s in sequences], toks_per_batch):
        for i, t in zip(batch, one_pass(model, [sequences[i] for i in batch], precision)):
            terms[i] = t
        bar.update(sum(len(sequences[i]) for i in batch))
    return terms


@dataclass
class ScoreTask:
    """What ``distributed.run_bulk`` computes per batch, and how rank 0 writes the CSV."""

    strategy: str
    precision: str
    toks_per_batch: int
    name: str = "score"

    def settings(self) -> dict:
        return {
            "strategy": self.strategy,
            "precision": self.precision,
            "toks_per_batch": self.toks_per_batch,
        }

    def cost(self, lengths: list[int]) -> int:
        if self.strategy == "pseudo-log-likelihood":  # L masked copies of L + 2 tokens each
            return sum(n * (n + 2) for n in lengths)
        return len(lengths) * (max(lengths) + 2)

    def prepare(self, sequences: list[str]) -> dict:
        return {}  # the strategies tokenise per pass (masked copies): nothing to do ahead

    def compute(self, model, batch: dict) -> list[tuple[bytes, dict]]:
        sequences = batch["sequences"]
        if self.strategy == "pseudo-log-likelihood":
            terms = [
                pseudo_log_probs(model, seq, self.toks_per_batch, self.precision)
                for seq in sequences
            ]
        else:
            one_pass = (
                causal_log_probs if self.strategy == "log-likelihood" else wt_marginal_log_probs
            )
            terms = one_pass(model, sequences, self.precision)
        return [(b"", {"ll": float(t.double().sum())}) for t in terms]

    def merge(self, store, records, done: dict, output: Path) -> None:
        with atomic_output(output) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for index, record_id in enumerate(records.ids):
                entry = done[index]
                writer.writerow(row(record_id, entry.length, entry.meta["ll"]))


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
    on_duplicate: str = "error",
    devices: int = 1,
    num_nodes: int = 1,
    distributed_strategy: str = "auto",
    accelerator: str | None = None,
    resume: bool = False,
) -> dict:
    """Write one CSV row per record of ``fasta`` (input order) to ``output``, atomically.

    Runs like ``embed_fasta`` (sharded over ``devices`` x ``num_nodes`` Lightning processes,
    resumable); ``distributed_strategy`` is Lightning's strategy (``strategy`` is the scoring
    one). Returns the summary of ``distributed.run_bulk`` plus ``strategy``.
    """
    from proteinperf.atomic import check_target

    from .distributed import Source, run_bulk

    strategy = resolve_score_strategy(strategy, model.config.causal)
    check_target(output)
    if toks_per_batch < 1:
        raise ConfigError(f"--toks-per-batch must be positive, got {toks_per_batch}")

    def too_long(record_id: str, length: int) -> None:
        check_length(model, length, f"record '{record_id}'")

    source = Source(str(fasta), truncate, invalid, on_duplicate, length_limit(model), too_long)
    summary = run_bulk(
        model,
        ScoreTask(strategy, precision, toks_per_batch),
        source,
        output,
        devices=devices,
        num_nodes=num_nodes,
        strategy=distributed_strategy,
        accelerator=accelerator,
        resume=resume,
        quiet=quiet,
    )
    return {**summary, "strategy": strategy}


resolve_strategy = resolve_score_strategy  # the old name, kept for callers
