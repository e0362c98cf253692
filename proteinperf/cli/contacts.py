"""`proteinperf contacts`: FASTA -> per-protein contact maps from a checkpoint's contact head."""

from __future__ import annotations

import argparse
import sys

from proteinperf.cli._inference import add_input_options, load, positive_int
from proteinperf.cli._outputs import add_overwrite_option
from proteinperf.constants import CONTACT_FORMATS, DEVICES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "contacts",
        help="predict contact maps with a checkpoint's contact head (converted ESM-2)",
        description="Contact maps with ESM's recipe: the attention maps of every layer and head "
        "(symmetrised, APC-corrected, <cls>/<eos> dropped) into the contact head's logistic "
        "regression. Converted ESM-2 checkpoints carry that head; FAVOR+ models use their "
        "implicit attention maps. Writes per protein the probability map (<name>.npz or "
        "<name>.csv), the top-L contacts (<name>.top.csv: i, j, p, 1-based) and with --plot a "
        "PNG, plus index.csv (id -> name).",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("fasta", metavar="FASTA")
    parser.add_argument("output", metavar="OUTDIR")
    parser.add_argument(
        "--format",
        dest="fmt",
        choices=CONTACT_FORMATS,
        default="npz",
        help="npz: array 'probabilities' (L, L) and 'sequence'; csv: L rows of L values "
        "(default: npz)",
    )
    parser.add_argument("--plot", action="store_true", help="also write <name>.png")
    parser.add_argument(
        "--contact-head",
        metavar="CKPT",
        default=None,
        help="take the contact regression from this checkpoint instead (e.g. the converted "
        "ESM-2 a fine-tuned Performer started from; same layers x heads)",
    )
    parser.add_argument(
        "--min-separation",
        type=positive_int,
        default=6,
        metavar="S",
        help="top-L contacts only between residues at least S apart (default: 6)",
    )
    add_input_options(parser)
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto = cuda when available, else cpu (default: auto)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite_option(parser)
    parser.set_defaults(func=run, input_args=("checkpoint", "fasta"), output_args=("output",))


def run(args: argparse.Namespace) -> int:
    from proteinperf.inference.contacts import read_contact_regression, write_contacts

    regression = read_contact_regression(args.contact_head or args.checkpoint)
    model, _ = load(args.checkpoint, args.device)
    summary = write_contacts(
        model,
        regression,
        args.fasta,
        args.output,
        fmt=args.fmt,
        plot=args.plot,
        min_separation=args.min_separation,
        truncate=args.truncate,
        invalid=args.invalid,
        quiet=args.quiet,
    )
    if not args.quiet:
        print(f"{summary['records']} contact maps -> {summary['output']}", file=sys.stderr)
    return 0
