"""`proteinperf score-mutations`: a CSV of mutations of one protein -> the CSV plus a score."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proteinperf.cli._inference import add_run_options, load


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score-mutations",
        help="score the mutations of one protein listed in a CSV",
        description="Score mutations such as H24C (multi-mutants H24C:K30R = the sum of their "
        "singles for the marginal strategies). Strategies: masked-marginals (default for "
        "bidirectional models), wt-marginals, pseudo-ppl; log-likelihood-ratio (default and "
        "only choice for causal models). Writes the input CSV plus a score column.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sequence", metavar="SEQ", help="the wild-type sequence")
    source.add_argument(
        "--fasta", metavar="FILE", help="a FASTA file with one record: the wild type"
    )
    parser.add_argument("--mutations", required=True, metavar="IN.csv")
    parser.add_argument("--out", required=True, metavar="OUT.csv")
    parser.add_argument(
        "--mutation-col", default="mutant", help="column holding the mutations (default: mutant)"
    )
    parser.add_argument(
        "--offset",
        type=int,
        default=1,
        help="number of the sequence's first residue in the mutation strings (default: 1)",
    )
    parser.add_argument(
        "--strategy",
        default=None,
        choices=("masked-marginals", "wt-marginals", "pseudo-ppl", "log-likelihood-ratio"),
        help="default: masked-marginals (bidirectional), log-likelihood-ratio (causal)",
    )
    parser.add_argument(
        "--score-col",
        default=None,
        help="name of the added column (default: <checkpoint name>_<strategy>)",
    )
    add_run_options(parser)
    parser.set_defaults(func=run)


def wild_type(args: argparse.Namespace) -> str:
    if args.sequence is not None:
        return args.sequence
    from proteinperf.inference.common import read_records

    records = list(read_records(args.fasta))
    if len(records) != 1:
        raise ValueError(f"{args.fasta}: expected one record (the wild type), found {len(records)}")
    return records[0].sequence


def run(args: argparse.Namespace) -> int:
    from proteinperf.inference.mutations import resolve_strategy, score_mutations_csv

    sequence = wild_type(args)
    model, _ = load(args.checkpoint, args.device)
    strategy = resolve_strategy(args.strategy, model.config.causal)
    score_col = args.score_col or f"{Path(args.checkpoint).stem}_{strategy}"
    summary = score_mutations_csv(
        model,
        sequence,
        args.mutations,
        args.out,
        score_col=score_col,
        mutation_col=args.mutation_col,
        offset=args.offset,
        strategy=strategy,
        toks_per_batch=args.toks_per_batch,
        precision=args.precision,
        quiet=args.quiet,
    )
    if not args.quiet:
        print(
            f"scored {summary['rows']} rows ({strategy}, column {score_col}) -> "
            f"{summary['output']}",
            file=sys.stderr,
        )
    return 0
