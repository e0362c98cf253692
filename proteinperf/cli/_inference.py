"""Options shared by `embed`, `score` and `score-mutations`, and model loading for them."""

from __future__ import annotations

import argparse

from proteinperf.cli._outputs import add_overwrite_option
from proteinperf.constants import (
    DEFAULT_TOKS_PER_BATCH,
    DEVICES,
    DUPLICATE_POLICIES,
    INVALID_POLICIES,
    PRECISIONS,
)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_run_options(parser: argparse.ArgumentParser, guard=True) -> None:
    parser.add_argument(
        "--toks-per-batch",
        type=positive_int,
        default=DEFAULT_TOKS_PER_BATCH,
        metavar="N",
        help="token budget per forward pass, padding included; "
        f"sequences are sorted by length to waste little (default: "
        f"{DEFAULT_TOKS_PER_BATCH})",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto = cuda when available, else cpu (default: auto)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16 runs the matmuls in bfloat16 (autocast); outputs stay float32 (default: fp32)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite_option(parser, guard)


def load(checkpoint: str, device_name: str):
    """(model in eval mode on the chosen device, alphabet)."""
    from proteinperf.checkpoint import load_model
    from proteinperf.inference.common import resolve_device

    device = resolve_device(device_name)
    return load_model(checkpoint, device=device)


def add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--truncate",
        type=positive_int,
        default=None,
        metavar="N",
        help="keep only the first N residues of each record (default: no limit)",
    )
    parser.add_argument(
        "--invalid",
        choices=INVALID_POLICIES,
        default="error",
        help="a character outside the alphabet: stop with an error naming "
        "file:line, read it as <unk>, or skip the record (default: error)",
    )


def add_parallel_options(parser: argparse.ArgumentParser, strategy_flags=("--strategy",)) -> None:
    """Data-parallel, resumable bulk runs (Lightning's predict loop; see README "Bulk")."""
    group = parser.add_argument_group("many devices, resuming")
    group.add_argument(
        "--devices",
        type=positive_int,
        default=1,
        metavar="N",
        help="processes per node: GPUs with --device cuda, CPU processes (gloo) with "
        "--device cpu (default: 1)",
    )
    group.add_argument(
        "--num-nodes",
        type=positive_int,
        default=1,
        metavar="M",
        help="nodes (SLURM: one task per device on each node) (default: 1)",
    )
    group.add_argument(
        *strategy_flags,
        dest="dist_strategy",
        default="auto",
        metavar="NAME",
        help="Lightning strategy: auto, ddp (one process per device, re-running this command), "
        "ddp_spawn (default: auto = ddp when there is more than one process)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from the shards it left beside OUTPUT "
        "(.OUTPUT.shards/); the result is the same as an uninterrupted run's",
    )
    group.add_argument(
        "--on-duplicate",
        choices=DUPLICATE_POLICIES,
        default="error",
        help="a FASTA id seen before: stop naming both lines, rename it <id>_2 (_3, ...), or "
        "keep only the first (default: error)",
    )


def accelerator(device_name: str) -> str:
    """Lightning's accelerator for --device (auto = cuda when available)."""
    from proteinperf.inference.common import resolve_device

    return resolve_device(device_name).type


def resume_hint(args: argparse.Namespace) -> str | None:
    """What to tell a user whose bulk run was stopped: the finished batches are kept."""
    from proteinperf.inference.shards import shard_dir

    if shard_dir(args.output).exists():
        return f"the finished batches are kept: rerun with --resume to continue ({args.output})"
    return None
