"""`proteinperf similarity`: what a checkpoint says about amino-acid similarity (embeddings,
learned substitutions, attention), each against BLOSUM62 beside controls."""

from __future__ import annotations

import argparse
import sys
import time

from proteinperf.constants import DEVICES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "similarity",
        help="amino-acid similarity from embeddings, substitutions and attention vs BLOSUM62",
        description="Compare with BLOSUM62 (Pearson and Spearman over the 190 residue pairs) "
        "three things a checkpoint says about amino-acid similarity: its residue token "
        "embeddings, a substitution matrix learned from its masked (or next-token) predictions "
        "on the proteins of FASTA, and its attention (Vig et al. 2020). Each gets a bootstrap "
        "95% interval and controls: the same model untrained (several seeds), a "
        "frequency-only matrix and shuffled residues; a signal is claimed only where the "
        "interval lies above every control. Writes similarity.json, similarity.md, "
        "matrices.npz and PNGs to OUTDIR (built in a temporary folder, renamed when complete).",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or model name")
    parser.add_argument("fasta", metavar="FASTA")
    parser.add_argument("outdir", metavar="OUTDIR")
    parser.add_argument(
        "--max-seqs",
        type=int,
        default=200,
        metavar="N",
        help="analyse the first N proteins of FASTA (default: 200)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=512,
        metavar="L",
        help="analyse the first L residues of each protein (default: 512)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        metavar="N",
        help="bootstrap resamples of each interval (default: 200)",
    )
    parser.add_argument(
        "--untrained-seeds",
        type=int,
        default=5,
        metavar="N",
        help="untrained controls, seeded SEED..SEED+N-1 (default: 5)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the controls, masks and bootstrap (default: 0)"
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto = cuda when available, else cpu (default: auto)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTDIR if it exists")
    parser.add_argument(
        "--quiet", action="store_true", help="no stage lines and no summary on stderr"
    )
    parser.set_defaults(
        func=lambda args: _run(args), input_args=("checkpoint", "fasta"), output_args=("outdir",)
    )


def _run(args: argparse.Namespace) -> int:
    from proteinperf.analysis.similarity_report import describe_similarity, write_similarity_report
    from proteinperf.inference.common import resolve_device

    started = time.monotonic()

    def say(line: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - started:5.0f} s] {line}", file=sys.stderr, flush=True)

    out = write_similarity_report(
        args.checkpoint,
        args.fasta,
        args.outdir,
        max_seqs=args.max_seqs,
        max_length=args.max_length,
        n_resamples=args.bootstrap,
        untrained_seeds=args.untrained_seeds,
        seed=args.seed,
        device=str(resolve_device(args.device)),
        overwrite=args.overwrite,
        say=say,
    )
    if not args.quiet:
        for line in describe_similarity(out):
            say(line)
    print(out)
    return 0
