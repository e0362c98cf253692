"""`proteinperf export-hf`: a checkpoint (file, folder or model name) -> a transformers folder."""

from __future__ import annotations

import argparse

from proteinperf.cli._outputs import add_overwrite_option


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-hf",
        help="write a checkpoint as a Hugging Face transformers folder (trust_remote_code)",
        description="Write a checkpoint as a folder that transformers loads with "
        "trust_remote_code=True where proteinperf is not installed: config.json, "
        "model.safetensors, the tokenizer (proteinperf's alphabet, ESM-2's ids), the package's "
        "own model code and a README model card. AutoModelForMaskedLM (bidirectional) or "
        "AutoModelForCausalLM (causal), AutoModel and AutoTokenizer load it; every proteinperf "
        "command accepts the folder as a CHECKPOINT too.",
    )
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="a model file, Lightning .ckpt or model name"
    )
    parser.add_argument("output", metavar="DIR", help="the folder to write")
    add_overwrite_option(parser)
    parser.set_defaults(
        func=lambda args: _run(args), input_args=("checkpoint",), output_args=("output",)
    )


def _run(args: argparse.Namespace) -> int:
    from proteinperf.interop.hf_export import export_hf

    print(export_hf(args.checkpoint, args.output))
    return 0
