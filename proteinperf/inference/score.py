"""Score whole sequences: exact log-likelihood (causal) or pseudo-log-likelihood (bidirectional).

Each strategy sums log p over the residues (not <cls>/<eos>), divides by the length and
exponentiates minus the mean; its columns are named by what they are: log_likelihood and
perplexity (causal, exact), pseudo_log_likelihood and pseudo_perplexity (every residue masked
once, Salazar et al., 2020), wt_marginals_log_prob and wt_marginals_perplexity (all residues
read from one unmasked pass: cheap, but each residue sees itself, so it is optimistic). Every
row also names its strategy and model.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
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
# strategy -> (sum, mean over residues, exp(-mean)) column names
SCORE_COLUMNS = {
    "log-likelihood": ("log_likelihood", "mean_log_likelihood", "perplexity"),
    "pseudo-log-likelihood": (
        "pseudo_log_likelihood",
        "mean_pseudo_log_likelihood",
        "pseudo_perplexity",
    ),
    "wt-marginals": (
        "wt_marginals_log_prob",
        "mean_wt_marginals_log_prob",
        "wt_marginals_perplexity",
    ),
}


def columns(strategy: str) -> tuple[str, ...]:
    """The CSV header of ``strategy``: id, length, its three scores, strategy, model."""
    return ("id", "length", *SCORE_COLUMNS[strategy], "strategy", "model")


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


def row(record_id: str, length: int, total: float, strategy: str, model: str) -> dict:
    """One CSV row from a record's summed log-probabilities."""
    total_col, mean_col, exp_col = SCORE_COLUMNS[strategy]
    mean = total / length
    return {
        "id": record_id,
        "length": length,
        total_col: total,
        mean_col: mean,
        exp_col: math.exp(-mean),
        "strategy": strategy,
        "model": model,
    }


def forward_passes(strategy: str, lengths: Sequence[int], toks_per_batch: int) -> int:
    """Forward passes ``strategy`` needs for records of these lengths: the masked copies of a
    record go through together as the token budget allows (``masked_log_probs``); the one-pass
    strategies run padded batches of records."""
    if strategy == "pseudo-log-likelihood":
        return sum(-(-n // max(1, toks_per_batch // (n + 2))) for n in lengths)
    return len(length_sorted_batches(lengths, toks_per_batch))


def cost_line(strategy: str, lengths: Sequence[int], toks_per_batch: int) -> str:
    """What ``strategy`` will cost on these records, and the alternatives, in one line."""
    records, residues = len(lengths), sum(lengths)
    one_pass = forward_passes("wt-marginals", lengths, toks_per_batch)
    head = f"score: {records:,} records ({residues:,} residues), {strategy}"
    if strategy == "log-likelihood":
        return f"{head} (exact, causal model): ~{one_pass:,} forward passes"
    pll = forward_passes("pseudo-log-likelihood", lengths, toks_per_batch)
    if strategy == "pseudo-log-likelihood":
        return (
            f"{head}: every residue masked once, {residues:,} masked copies in ~{pll:,} forward "
            f"passes; --strategy wt-marginals needs ~{one_pass:,} (one unmasked pass; "
            "optimistic: each residue sees itself)"
        )
    return (
        f"{head}: ~{one_pass:,} forward passes (one unmasked pass; optimistic: each residue "
        f"sees itself); --strategy pseudo-log-likelihood masks every residue once: ~{pll:,}"
    )


@dataclass
class ScoreTask:
    """What a run (``runner.run_task``) computes per batch, and how the CSV is written."""

    strategy: str
    precision: str
    toks_per_batch: int
    model_name: str = ""
    name: str = "score"

    def settings(self) -> dict:
        return {
            "strategy": self.strategy,
            "precision": self.precision,
            "toks_per_batch": self.toks_per_batch,
        }

    @property
    def plan_tokens(self) -> int:
        """The token budget of the records' batches. Pseudo-log-likelihood scores one record
        at a time anyway (its masked copies fill the budget), so one record per batch costs
        nothing and moves the progress bar after every record."""
        return 1 if self.strategy == "pseudo-log-likelihood" else self.toks_per_batch

    def announce(self, lengths: list[int]) -> str:
        """Said on stderr before the work (rank 0, once the input is indexed)."""
        return cost_line(self.strategy, lengths, self.toks_per_batch)

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
            writer = csv.DictWriter(f, fieldnames=columns(self.strategy))
            writer.writeheader()
            for index, record_id in enumerate(records.ids):
                entry = done[index]
                writer.writerow(
                    row(
                        record_id,
                        entry.length,
                        entry.meta["ll"],
                        self.strategy,
                        self.model_name,
                    )
                )


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
    model_name: str | None = None,
) -> dict:
    """Write one CSV row per record of ``fasta`` (input order) to ``output``, atomically.

    Columns: ``columns(strategy)``; ``model`` is ``model_name`` (the CLI gives the checkpoint
    as typed), by default ``sha256:<digest of the weights>``. Unless ``quiet``, one line on
    stderr first says what the strategy costs and what the alternative costs.
    Runs like ``embed_fasta`` (a small input in this process; else sharded over ``devices`` x
    ``num_nodes`` Lightning processes, resumable); ``distributed_strategy`` is Lightning's
    strategy (``strategy`` is the scoring one). Returns the run's summary plus ``strategy``.
    """

    from proteinperf.atomic import check_target

    from .fasta_index import Source
    from .runner import run_task

    strategy = resolve_score_strategy(strategy, model.config.causal)
    check_target(output)
    if toks_per_batch < 1:
        raise ConfigError(f"--toks-per-batch must be positive, got {toks_per_batch}")

    def too_long(record_id: str, length: int) -> None:
        check_length(model, length, f"record '{record_id}'")

    source = Source(str(fasta), truncate, invalid, on_duplicate, length_limit(model), too_long)
    summary = run_task(
        model,
        ScoreTask(strategy, precision, toks_per_batch, model_name or ""),
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
