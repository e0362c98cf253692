"""`proteinperf convert-esm`: an ESM-2 checkpoint (fair-esm file or model name, or a transformers
directory) -> a proteinperf checkpoint."""

from __future__ import annotations

import argparse

from proteinperf.cli._outputs import add_overwrite_option
from proteinperf.constants import ATTENTIONS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-esm",
        help="convert an ESM-2 checkpoint (fair-esm .pt or model name, or a transformers "
        "directory) into a proteinperf one",
        description="Convert an ESM-2 checkpoint into a proteinperf checkpoint: a fair-esm "
        "file (esm2_t6_8M_UR50D.pt; a <name>-contact-regression.pt beside it is kept), a "
        "fair-esm model name (esm2_t6_8M_UR50D), which fair-esm's pretrained loader downloads "
        "into the torch-hub cache on first use, contact regression included, or a transformers "
        "EsmForMaskedLM directory as save_pretrained writes it (config.json + model.safetensors "
        "or pytorch_model.bin; contact head kept). With "
        "--attention softmax the model reproduces ESM-2 exactly; with FAVOR+ attention it is a "
        "Performer to fine-tune (experiment=esm2_to_performer).",
    )
    parser.add_argument(
        "esm_checkpoint",
        metavar="ESM_CHECKPOINT",
        help="a fair-esm .pt file, an ESM-2 model name (e.g. esm2_t6_8M_UR50D) or a "
        "transformers EsmForMaskedLM directory",
    )
    parser.add_argument("output", metavar="OUTPUT.ckpt")
    parser.add_argument(
        "--attention",
        choices=ATTENTIONS,
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
    add_overwrite_option(parser)
    parser.set_defaults(
        func=lambda args: _run(args), input_args=("esm_checkpoint",), output_args=("output",)
    )


def _run(args: argparse.Namespace) -> int:
    from proteinperf.interop.convert import convert_esm

    out = convert_esm(
        args.esm_checkpoint,
        args.output,
        attention=args.attention,
        nb_features=args.nb_features,
        seed=args.seed,
    )
    print(out)
    return 0
