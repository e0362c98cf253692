"""``make gpu-check``: python -m proteinperf.benchmarks.gpu_check [--dry-run] [--out DIR] ..."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import SECTIONS
from .runner import run_check
from .settings import settings_for

STARTED = time.monotonic()  # the budget counts from here, torch's first import included
DEFAULT_OUT = Path("benchmarks") / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m proteinperf.benchmarks.gpu_check",
        description="One time-boxed check of a single GPU: environment, attention kernels "
        "against float64, FAVOR+ against SDPA over lengths, paper-size training throughput. "
        "Writes OUT/gpu_check.json and OUT/gpu_check.md.",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results folder (default: %(default)s)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="on the CPU with tiny shapes (seconds)"
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        help="proteins for the training run: a FASTA file (any compression) or a prepared "
        "corpus folder (default: the shipped data/swissprot_20k.fasta.gz)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        help="wall-clock budget of the whole check (default 480; dry run 300)",
    )
    parser.add_argument(
        "--train-s",
        type=float,
        help="measured training time, shared by the bidirectional and the causal model "
        "(default 120; dry run 4)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="the GPU's dense bf16 peak for MFU (default: by its name)"
    )
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        parser.error(f"--sections: choose from {','.join(SECTIONS)}, got {args.sections}")
    for name in ("budget_s", "train_s", "peak_tflops"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.corpus is not None and not args.corpus.exists():
        parser.error(f"--corpus {args.corpus}: no such file or folder")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a folder")
    problem = _torch_problem(args.dry_run)
    if problem:
        parser.error(problem)
    return args


def _torch_problem(dry_run: bool) -> str | None:
    """Why the check cannot run with this Python's torch, or None."""
    try:
        import torch
    except ImportError as exc:
        return f"torch is not importable ({exc}); install it, or bring wheels: WHEELS=<folder>"
    if not dry_run and not torch.cuda.is_available():
        return (
            f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device; "
            "on a machine without a GPU use --dry-run"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    settings = settings_for(
        args.dry_run,
        budget_s=args.budget_s,
        train_s=args.train_s,
        corpus=None if args.corpus is None else str(args.corpus.resolve()),
        peak_tflops=args.peak_tflops,
    )
    report = run_check(settings, args.sections, args.out, argv, started=STARTED)
    print((args.out / "gpu_check.md").read_text())
    print(f"results: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
