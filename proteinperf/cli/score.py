"""`proteinperf score`: FASTA -> CSV of (pseudo-)log-likelihoods and perplexities."""

from __future__ import annotations

import argparse
import sys

from proteinperf.cli._inference import (
    accelerator,
    add_input_options,
    add_parallel_options,
    add_run_options,
    load,
    resume_hint,
)
from proteinperf.constants import SCORE_STRATEGIES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score the sequences of a FASTA file (log-likelihood, perplexity)",
        description="Score every record of a FASTA file. Causal models: exact log-likelihood "
        "(columns log_likelihood, mean_log_likelihood, perplexity). Bidirectional models: "
        "pseudo-log-likelihood, the default (every residue masked once: about one forward pass "
        "per residue, many masked copies per pass; columns pseudo_log_likelihood, "
        "mean_pseudo_log_likelihood, pseudo_perplexity), or wt-marginals (one unmasked pass, "
        "about L times faster for proteins of L residues, but optimistic: each residue sees "
        "itself; columns "
        "wt_marginals_log_prob, mean_wt_marginals_log_prob, wt_marginals_perplexity). Every "
        "CSV starts with id, length and ends with strategy, model (the CHECKPOINT as given). "
        "One line on stderr says what the strategy will cost before it starts.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("fasta", metavar="FASTA")
    parser.add_argument("output", metavar="OUTPUT.csv")
    parser.add_argument(
        "--strategy",
        default=None,
        choices=SCORE_STRATEGIES,
        help="default: log-likelihood for causal models, pseudo-log-likelihood (slow: one "
        "pass per residue) for bidirectional ones; wt-marginals: one pass per batch",
    )
    add_input_options(parser)
    add_run_options(parser)
    add_parallel_options(parser, ("--dist-strategy",))  # --strategy is the scoring one
    parser.set_defaults(
        func=run, input_args=("checkpoint", "fasta"), output_args=("output",), stop_hint=resume_hint
    )


def run(args: argparse.Namespace) -> int:
    from proteinperf.inference.runner import summary_line
    from proteinperf.inference.score import score_fasta

    device = accelerator(args.device)
    model, _ = load(args.checkpoint, "cpu")  # Lightning moves it to each rank's device
    summary = score_fasta(
        model,
        args.fasta,
        args.output,
        strategy=args.strategy,
        toks_per_batch=args.toks_per_batch,
        truncate=args.truncate,
        invalid=args.invalid,
        precision=args.precision,
        quiet=args.quiet,
        on_duplicate=args.on_duplicate,
        devices=args.devices,
        num_nodes=args.num_nodes,
        distributed_strategy=args.dist_strategy,
        accelerator=device,
        resume=args.resume,
        model_name=args.checkpoint,
    )
    if not args.quiet and summary["rank"] == 0:
        print(summary_line(f"scored ({summary['strategy']})", summary), file=sys.stderr)
    return 0
