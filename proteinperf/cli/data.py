"""`proteinperf data DATASET`: download a UniProt release (unless sample) and prepare it."""

import importlib

# The package re-exports a function named `prepare`, which shadows the module attribute.
_prepare = importlib.import_module("proteinperf.data.prepare")


def register(subparsers) -> None:
    parser = _prepare.add_data_parser(subparsers)
    parser.set_defaults(func=lambda args: (_prepare.run_data(args), 0)[1])
