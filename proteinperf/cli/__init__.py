"""`proteinperf` command line: argument parsing and wiring only.

Each subcommand lives in its own module here and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (a callable taking the parsed namespace and returning an exit
code). The work itself happens in library functions that take paths and objects.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from proteinperf import __version__

# Order of appearance in --help.
COMMAND_MODULES = (
    "train",
    "prepare",
    "data",
    "evaluate",
    "embed",
    "score",
    "score_mutations",
    "generate",
    "contacts",
    "attention",
    "convert_esm",
    "models",
)


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


# Exceptions that describe bad input or environment: one line, exit 2 (PROTEINPERF_DEBUG=1
# shows the traceback). Anything else is a bug and keeps its traceback.
USER_ERRORS = (
    CommandError,
    ValueError,
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
    KeyError,
    OSError,
    EOFError,
    RuntimeError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proteinperf",
        description="Performer (FAVOR+) protein language models: prepare data, embed, score, "
        "analyse attention, convert ESM-2.",
    )
    parser.add_argument("--version", action="version", version=f"proteinperf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"{__name__}.{name}":
                continue  # command not installed in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("proteinperf: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("PROTEINPERF_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, KeyError):
            message = f"missing key {message}"
        print(f"proteinperf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
