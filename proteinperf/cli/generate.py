"""`proteinperf generate`: sample proteins from a causal checkpoint into a FASTA file."""

from __future__ import annotations

import argparse
import sys

from proteinperf.cli import CommandError
from proteinperf.cli._inference import load, positive_int
from proteinperf.cli._outputs import add_overwrite_option
from proteinperf.constants import DEVICES, TEMPERATURE_RANGE


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return value


def _temperature(text: str) -> float:
    low, high = TEMPERATURE_RANGE
    expected = f"expected 0 (greedy) or a number from {low:g} to {high:g}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
    if not (value == 0 or low <= value <= high):  # (NaN fails both)
        raise argparse.ArgumentTypeError(f"{expected}, got {text}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="sample protein sequences from a causal model",
        description="Sample proteins from a causal (next-token) checkpoint with recurrent "
        "decoding: a FAVOR+ model carries a fixed-size state per layer, so every residue costs "
        "the same at any length. Only the 20 standard amino acids are generated. Each FASTA "
        "header holds the sample index, seed, length and the model's mean log-likelihood per "
        "residue.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("output", metavar="OUT.fasta")
    parser.add_argument(
        "--num-samples",
        type=positive_int,
        required=True,
        metavar="N",
        help="samples per prompt (one prompt: the given one, or none)",
    )
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="SEQ", help="residues every sample starts with")
    prompt.add_argument(
        "--prompt-fasta", metavar="FASTA", help="N samples for each record of this FASTA file"
    )
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=500,
        metavar="L",
        help="residues per sample at most, prompt included (default: 500)",
    )
    parser.add_argument(
        "--min-length",
        type=int,
        default=1,
        metavar="L",
        help="hold <eos> back until this many residues (default: 1)",
    )
    parser.add_argument(
        "--temperature",
        type=_temperature,
        default=1.0,
        metavar="T",
        help=f"0 = greedy, else {TEMPERATURE_RANGE[0]:g} to {TEMPERATURE_RANGE[1]:g} "
        "(default: 1.0)",
    )
    parser.add_argument("--top-k", type=positive_int, default=None, metavar="K")
    parser.add_argument("--top-p", type=_probability, default=None, metavar="P")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="(default: 0)")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        metavar="B",
        help="samples decoded together (default: 16)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto = cuda when available, else cpu (default: auto)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_overwrite_option(parser)
    parser.set_defaults(
        func=run, input_args=("checkpoint", "prompt_fasta"), output_args=("output",)
    )


def run(args: argparse.Namespace) -> int:
    from proteinperf.atomic import check_target
    from proteinperf.inference.common import progress, read_records
    from proteinperf.inference.generate import check_generative, generate, write_samples

    if args.min_length < 0 or args.min_length > args.max_length:
        raise CommandError(
            f"--min-length must be between 0 and --max-length ({args.max_length}), "
            f"got {args.min_length}"
        )
    check_target(args.output)
    prompts = [args.prompt or ""]
    if args.prompt_fasta:
        prompts = [record.sequence for record in read_records(args.prompt_fasta)]
    model, _ = load(args.checkpoint, args.device)
    check_generative(model, args.max_length)
    total = len(prompts) * args.num_samples
    with progress(args.quiet, "generate", unit="seq", total=total) as bar:
        samples = generate(
            model,
            prompts,
            n=args.num_samples,
            max_length=args.max_length,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            min_length=args.min_length,
            batch_size=args.batch_size,
            progress=bar,
        )
    path = write_samples(samples, args.output, seed=args.seed)
    if not args.quiet:
        residues = sum(len(s.sequence) for s in samples)
        print(
            f"generated {len(samples)} sequences ({residues} residues) -> {path}", file=sys.stderr
        )
    return 0
