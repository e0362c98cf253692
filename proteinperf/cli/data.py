"""`proteinperf data DATASET`: download a UniProt release (unless sample) and prepare it."""

from __future__ import annotations

import argparse

from proteinperf.constants import DATASETS


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="download (unless sample) and prepare a corpus")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--root", default="data/corpora", help="where corpora and downloads go")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument(
        "--overwrite", action="store_true", help="replace the corpus if it was prepared before"
    )
    p.set_defaults(func=run, exit_at_once=True)


def run(args: argparse.Namespace) -> int:
    from proteinperf.cli.prepare import lean_process
    from proteinperf.data.prepare import prepare_dataset

    with lean_process():
        prepare_dataset(args.dataset, args.root, workers=args.workers, overwrite=args.overwrite)
    return 0
