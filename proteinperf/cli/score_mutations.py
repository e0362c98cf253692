"""`proteinperf score-mutations`: a CSV of mutations of one protein -> the CSV plus a score;
ProteinGym substitution files (one, or many through their reference file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from proteinperf.cli import CommandError
from proteinperf.cli._inference import add_run_options, load
from proteinperf.constants import MUTATION_STRATEGIES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score-mutations",
        help="score the mutations of one protein listed in a CSV",
        description="Score mutations such as H24C (multi-mutants H24C:K30R = the sum of their "
        "singles for the marginal strategies). Strategies: masked-marginals (default for "
        "bidirectional models), wt-marginals, pseudo-ppl; log-likelihood-ratio (default and "
        "only choice for causal models). Writes the input CSV plus a score column. Reads "
        "ProteinGym substitution files as they come: the wild type is recovered from "
        "mutated_sequence, and DMS_score / DMS_score_bin give Spearman rho / AUC (stdout and "
        "a JSON summary). --reference with --dms-dir scores many assays, resumably.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--sequence", metavar="SEQ", help="the wild-type sequence")
    source.add_argument(
        "--fasta", metavar="FILE", help="a FASTA file with one record: the wild type"
    )
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--mutations", metavar="IN.csv", help="one CSV of mutations")
    inputs.add_argument(
        "--reference",
        metavar="DMS_substitutions.csv",
        help="ProteinGym reference file (DMS_id, DMS_filename, target_seq): score every "
        "assay in it; needs --dms-dir, and --out is then a directory",
    )
    parser.add_argument("--dms-dir", metavar="DIR", help="folder of the assays' CSV files")
    parser.add_argument(
        "--out", required=True, metavar="OUT", help="OUT.csv, or a directory with --reference"
    )
    parser.add_argument(
        "--summary",
        metavar="JSON",
        default=None,
        help="where the metrics go when the CSV has DMS_score (default: OUT with .json)",
    )
    parser.add_argument(
        "--window",
        default="auto",
        metavar="N",
        help="residues per scoring window of the marginal strategies: each mutated position "
        "is scored in the N residues centred on it; 0 = whole sequence; auto = 1022 for "
        "exact-attention models (ESM-2), whole sequence for FAVOR models (default: auto)",
    )
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
        choices=MUTATION_STRATEGIES,
        help="default: masked-marginals (bidirectional), log-likelihood-ratio (causal)",
    )
    parser.add_argument(
        "--score-col",
        default=None,
        help="name of the added column (default: <checkpoint name>_<strategy>)",
    )
    # --reference: OUT is a folder that a rerun continues (finished assays are skipped)
    add_run_options(parser, guard=lambda args: args.reference is None)
    parser.set_defaults(
        func=run,
        input_args=("checkpoint", "fasta", "mutations", "reference", "dms_dir"),
        output_args=("out", "summary"),
    )


def wild_type(args: argparse.Namespace) -> str | None:
    """--sequence, the one record of --fasta, or None (recovered from mutated_sequence)."""
    if args.sequence is not None:
        return args.sequence
    if args.fasta is None:
        return None
    from proteinperf.inference.common import read_records

    records = list(read_records(args.fasta))
    if len(records) != 1:
        raise CommandError(
            f"{args.fasta}: expected one record (the wild type), found {len(records)}"
        )
    return records[0].sequence


def _window(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise CommandError(f"--window must be a number of residues or auto, got {text!r}") from None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    from proteinperf.inference.common import atomic_output
    from proteinperf.inference.mutations import resolve_mutation_strategy, score_mutations_csv

    if args.reference is not None:
        if args.dms_dir is None:
            raise CommandError("--reference needs --dms-dir (the folder of the assay CSV files)")
        if args.sequence is not None or args.fasta is not None:
            raise CommandError("--reference takes each wild type from target_seq, not --sequence")
    window = _window(args.window)
    model, _ = load(args.checkpoint, args.device)
    strategy = resolve_mutation_strategy(args.strategy, model.config.causal)
    score_col = args.score_col or f"{Path(args.checkpoint).stem}_{strategy}"
    options = dict(toks_per_batch=args.toks_per_batch, precision=args.precision, window=window)
    if args.reference is not None:
        from proteinperf.inference.proteingym import score_reference

        result = score_reference(
            model,
            args.reference,
            args.dms_dir,
            args.out,
            score_col=score_col,
            strategy=strategy,
            quiet=args.quiet,
            **options,
        )
        print(
            f"{result['n_assays']} assays ({result['resumed']} resumed): mean spearman "
            f"{_fmt(result['mean_spearman'])}, mean auc {_fmt(result['mean_auc'])} -> "
            f"{Path(args.out) / 'summary.csv'}"
        )
        return 0
    summary = score_mutations_csv(
        model,
        wild_type(args),
        args.mutations,
        args.out,
        score_col=score_col,
        mutation_col=args.mutation_col,
        offset=args.offset,
        strategy=strategy,
        quiet=args.quiet,
        **options,
    )
    metrics = summary["metrics"]
    if metrics is not None:
        path = Path(args.summary) if args.summary else Path(args.out).with_suffix(".json")
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        line = f"spearman {_fmt(metrics['spearman'])} (n={metrics['n']})"
        if "auc" in metrics:
            line += f", auc {_fmt(metrics['auc'])}"
        print(line)
    if not args.quiet:
        print(
            f"scored {summary['rows']} rows ({strategy}, column {score_col}) -> "
            f"{summary['output']}",
            file=sys.stderr,
        )
    return 0
