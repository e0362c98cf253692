"""`proteinperf attention`: attention maps and amino-acid similarity vs BLOSUM62 of a checkpoint,
beside an untrained control of the same shape."""

from __future__ import annotations

import argparse
import sys
import time

from proteinperf.constants import DEVICES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "attention",
        help="attention maps, FAVOR+ approximation error and amino-acid similarity vs BLOSUM62",
        description="Analyse a checkpoint's attention on the sequences of FASTA: heatmap grids "
        "(layers x heads) of one protein, FAVOR+ vs exact softmax from the same Q and K, and "
        "the amino-acid similarity of Vig et al. (2020) against BLOSUM62, always beside an "
        "untrained control of the same shape. Writes PNGs, matrices.npz and summary.json to "
        "OUTDIR (built in a temporary folder and renamed into place when complete).",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("fasta", metavar="FASTA")
    parser.add_argument("outdir", metavar="OUTDIR")
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        metavar="L",
        help="layers to analyse, numbered as in embed (and ESM's repr_layers): 1..n = "
        "transformer block 1..n from the input, negative numbers count from the end (-1 = the "
        "last); 0, the token embeddings, has no attention. Before version 0.2 this flag "
        "counted blocks from 0 (default: all)",
    )
    parser.add_argument(
        "--heads",
        type=int,
        nargs="+",
        metavar="J",
        help="heads to analyse, numbered as in the figures: 1 = first, -1 = last (default: all)",
    )
    parser.add_argument(
        "--max-seqs",
        type=int,
        default=800,
        metavar="N",
        help="analyse the first N sequences of FASTA (default: 800)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=1024,
        metavar="L",
        help="cut sequences to their first L residues (default: 1024)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        metavar="T",
        help="ignore attention weights <= T in the similarity, as Vig et al. "
        "(who used 0.3); default 0: count all",
    )
    parser.add_argument(
        "--protein",
        metavar="ID",
        help="sequence whose maps are drawn, e.g. HBA_HUMAN (default: the first)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto = cuda when available, else cpu (default: auto)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the untrained control model (default: 0)"
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="also write the BLOSUM62 study (blosum_study.json, study_*.png): r with a bootstrap "
        "95%% interval from N resamples over proteins, per layer, beside the untrained and the "
        "shuffled-residue controls (e.g. 200; default 0: off)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUTDIR if it exists and is not empty"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress and no summary on stderr")
    parser.set_defaults(
        func=lambda args: _run(args), input_args=("checkpoint", "fasta"), output_args=("outdir",)
    )


def _run(args: argparse.Namespace) -> int:
    from proteinperf.analysis.report import describe_report, write_attention_report
    from proteinperf.inference.common import resolve_device

    started = time.monotonic()
    out = write_attention_report(
        args.checkpoint,
        args.fasta,
        args.outdir,
        layers=args.layers,
        heads=args.heads,
        max_seqs=args.max_seqs,
        max_length=args.max_length,
        threshold=args.threshold,
        protein=args.protein,
        device=str(resolve_device(args.device)),
        seed=args.seed,
        overwrite=args.overwrite,
        bootstrap=args.bootstrap,
        quiet=args.quiet,
    )
    if not args.quiet:
        for line in describe_report(out, time.monotonic() - started):
            print(line, file=sys.stderr)
    print(out)
    return 0
