"""`proteinperf convert-esm`: a fair-esm ESM-2 checkpoint -> a proteinperf checkpoint."""

from __future__ import annotations

import argparse

ATTENTION_CHOICES = (
    "softmax",
    "favor_softmax",
    "favor_relu",
    "favor_softmax_hyp",
    "favor_softmax_opt",
    "favor_trig",
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-esm",
        help="convert a fair-esm ESM-2 checkpoint (.pt) into a proteinperf checkpoint",
        description="Convert a downloaded fair-esm ESM-2 checkpoint (e.g. esm2_t6_8M_UR50D.pt) "
        "into a proteinperf checkpoint. With --attention softmax the model reproduces ESM-2 "
        "exactly; with FAVOR+ attention it is a Performer to fine-tune (experiment="
        "esm2_to_performer). A <name>-contact-regression.pt beside the input is kept.",
    )
    parser.add_argument("esm_checkpoint", metavar="ESM_CHECKPOINT.pt")
    parser.add_argument("output", metavar="OUTPUT.ckpt")
    parser.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        default="softmax",
        help="attention of the converted model (default: softmax = exact ESM-2)",
    )
    parser.add_argument(
        "--nb-features",
        type=int,
        default=256,
        metavar="M",
        help="random features per head for FAVOR+ attention (default: 256)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random features (default: 0)"
    )
    parser.set_defaults(func=lambda args: _run(args))


def _run(args: argparse.Namespace) -> int:
    from proteinperf.interop.esm import convert_esm_checkpoint

    out = convert_esm_checkpoint(
        args.esm_checkpoint,
        args.output,
        attention=args.attention,
        nb_features=args.nb_features,
        seed=args.seed,
    )
    print(out)
    return 0
