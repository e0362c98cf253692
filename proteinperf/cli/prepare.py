"""`proteinperf prepare INPUT [INPUT ...] --out DIR`: FASTA -> memory-mapped corpus."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys

from proteinperf.constants import CLUSTER_METHODS, INVALID_POLICIES


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="FASTA -> tokenized, memory-mapped corpus directory")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="FASTA files (.gz/.bz2/.xz too)")
    p.add_argument("--out", required=True, help="corpus directory to write")
    p.add_argument("--valid-fraction", type=float, default=0.01)
    p.add_argument("--test-fraction", type=float, default=0.01)
    p.add_argument("--min-length", type=int, default=1, help="skip shorter sequences")
    p.add_argument("--max-length", type=int, default=None, help="skip longer sequences")
    p.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split hash")
    p.add_argument(
        "--invalid",
        choices=INVALID_POLICIES,
        default="error",
        help="characters outside the alphabet: fail, map to <unk>, or skip the record",
    )
    p.add_argument(
        "--cluster-identity",
        type=float,
        default=None,
        metavar="F",
        help="cluster with MMseqs2 at this sequence identity (e.g. 0.5, as UniRef50) and split "
        "whole clusters, so no valid/test record has a relative of >= F identity in train",
    )
    p.add_argument(
        "--cluster-method",
        choices=CLUSTER_METHODS,
        default="cluster",
        help="MMseqs2 cascaded clustering (sensitive, default) or linclust (linear time)",
    )
    p.add_argument(
        "--cluster-coverage",
        type=float,
        default=0.8,
        help="share of a member that must align to its representative (UniRef: 0.8)",
    )
    p.add_argument(
        "--clusters",
        default=None,
        metavar="TSV",
        help="split by a finished clustering: MMseqs2's representative<TAB>member TSV",
    )
    p.add_argument(
        "--buffered-writes",
        action="store_true",
        help="write the token files through the page cache instead of around it (O_DIRECT, "
        "the default where the filesystem allows): faster on a slow disk for a corpus that "
        "fits in memory",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a corpus that already exists at --out (refused without it)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(
        func=run, exit_at_once=True, input_args=("inputs", "clusters"), output_args=("out",)
    )


@contextlib.contextmanager
def lean_process():
    """Settings for a process that only prepares data: one OpenBLAS thread (nothing here
    multiplies matrices, and idle BLAS threads spin), and no cyclic garbage collection while
    NumPy, Arrow and numba load (the collector rescans their many long-lived objects: ~0.1
    CPU-s of a 0.7 s run) and blocks are parsed (which creates no reference cycles)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # read when NumPy is first imported
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run(args: argparse.Namespace) -> int:
    with lean_process():
        from proteinperf.data.prepare import prepare

        prepare(
            args.inputs,
            args.out,
            valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction,
            min_length=args.min_length,
            max_length=args.max_length,
            workers=args.workers,
            seed=args.seed,
            invalid=args.invalid,
            progress=not args.quiet,
            command="proteinperf prepare " + " ".join(sys.argv[2:]),
            cluster_identity=args.cluster_identity,
            cluster_method=args.cluster_method,
            cluster_coverage=args.cluster_coverage,
            clusters_file=args.clusters,
            direct_io=not args.buffered_writes,
            overwrite=args.overwrite,
        )
    return 0
