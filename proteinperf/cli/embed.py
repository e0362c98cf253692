"""`proteinperf embed`: FASTA -> per-token / mean / <cls> representations (h5, npz, pt-dir)."""

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
from proteinperf.constants import EMBED_FORMATS, EMBED_INCLUDES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="embed the sequences of a FASTA file",
        description="Embed every record of a FASTA file with a proteinperf checkpoint, like "
        "esm-extract: per-token vectors of the residues, their mean and the <cls> vector, for "
        "one or more layers (0 = token embeddings, -1 = last, after the final LayerNorm).",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("fasta", metavar="FASTA")
    parser.add_argument(
        "output", metavar="OUTPUT", help="an .h5 / .npz file, or a directory for --format pt-dir"
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[-1],
        metavar="L",
        help="layers to store, as esm-extract's --repr_layers (and attention --layers): 0 = "
        "the token embeddings, L = the output of transformer block L, -1 = the last (after the "
        "final LayerNorm); negative numbers count from the end (default: -1)",
    )
    parser.add_argument(
        "--include",
        nargs="+",
        default=["mean"],
        choices=EMBED_INCLUDES,
        help="what to store per layer (default: mean)",
    )
    parser.add_argument(
        "--format",
        dest="fmt",
        choices=EMBED_FORMATS,
        default="h5",
        help="h5: one file, a group per record id; npz: one zip of arrays; "
        "pt-dir: one .pt per record (esm-extract layout) + index.csv "
        "(default: h5)",
    )
    add_input_options(parser)
    add_run_options(parser)
    add_parallel_options(parser, ("--strategy", "--dist-strategy"))
    parser.set_defaults(
        func=run, input_args=("checkpoint", "fasta"), output_args=("output",), stop_hint=resume_hint
    )


def run(args: argparse.Namespace) -> int:
    from proteinperf.inference.embed import embed_fasta
    from proteinperf.inference.runner import summary_line

    device = accelerator(args.device)
    model, _ = load(args.checkpoint, "cpu")  # Lightning moves it to each rank's device
    summary = embed_fasta(
        model,
        args.fasta,
        args.output,
        layers=args.layers,
        include=args.include,
        fmt=args.fmt,
        toks_per_batch=args.toks_per_batch,
        truncate=args.truncate,
        invalid=args.invalid,
        precision=args.precision,
        quiet=args.quiet,
        metadata={"checkpoint": str(args.checkpoint)},
        on_duplicate=args.on_duplicate,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.dist_strategy,
        accelerator=device,
        resume=args.resume,
    )
    if not args.quiet and summary["rank"] == 0:
        print(summary_line("embedded", summary), file=sys.stderr)
    return 0
