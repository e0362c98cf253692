"""One rule for every command's outputs: an existing one is replaced only with --overwrite."""

from __future__ import annotations

import argparse
from pathlib import Path

from proteinperf.errors import InputError


def add_overwrite_option(parser: argparse.ArgumentParser, guard=True) -> None:
    """``--overwrite``; without it an existing output (a file, a non-empty folder) is refused.
    ``guard`` may be a function of the parsed arguments: False where the command itself
    continues an existing output (e.g. a resumable folder of results)."""
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the output if it already exists"
    )
    parser.set_defaults(guard_existing=guard)


def check_existing(args: argparse.Namespace) -> None:
    guard = getattr(args, "guard_existing", False)
    if callable(guard):
        guard = guard(args)
    if not guard or getattr(args, "overwrite", False):
        return
    for name in getattr(args, "output_args", ()):
        value = getattr(args, name, None)
        if not value:
            continue
        path = Path(value)
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            raise InputError(
                f"output {path} already exists: add --overwrite to replace it, or choose "
                "another path"
            )
