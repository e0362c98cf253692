"""`proteinperf prepare INPUT [INPUT ...] --out DIR`: FASTA -> memory-mapped corpus."""

import importlib

# The package re-exports a function named `prepare`, which shadows the module attribute.
_prepare = importlib.import_module("proteinperf.data.prepare")


def register(subparsers) -> None:
    parser = _prepare.add_prepare_parser(subparsers)
    parser.set_defaults(func=lambda args: (_prepare.run_prepare(args), 0)[1])
