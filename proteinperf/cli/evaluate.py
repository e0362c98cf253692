"""`proteinperf evaluate`: held-out accuracy and perplexity of a checkpoint, beside unigram."""

from __future__ import annotations

import argparse
import json
import sys

from proteinperf.cli._inference import positive_int
from proteinperf.cli._outputs import add_overwrite_option
from proteinperf.constants import DEVICES, SPLITS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="masked-LM / next-token accuracy and perplexity on a FASTA file, vs unigram",
        description="Evaluate a checkpoint on every record of a FASTA file (or a split of a "
        "prepared corpus): cross-entropy, perplexity and accuracy over the masked residues "
        "(bidirectional models; fixed masking seed) or every next token (causal models), "
        "beside the unigram baseline. The same examples as the training's test step.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("data", metavar="FASTA", help="a FASTA file or a prepared corpus dir")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default=None,
        help="split of a corpus directory (default: test)",
    )
    parser.add_argument("--out", default=None, metavar="metrics.json", help="write JSON here")
    parser.add_argument("--mask-prob", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0, help="masking seed (default: 0)")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=1024,
        metavar="N",
        help="tokens per sequence incl. <cls>/<eos>; longer ones keep their start",
    )
    parser.add_argument("--toks-per-batch", type=positive_int, default=8192, metavar="N")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument(
        "--unigram-from",
        default=None,
        metavar="FASTA|CORPUS",
        help="residue frequencies of the baseline (default: the checkpoint's training split)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite_option(parser)
    parser.set_defaults(func=run, input_args=("checkpoint", "data"), output_args=("out",))


def run(args: argparse.Namespace) -> int:
    import torch

    from proteinperf.atomic import check_target
    from proteinperf.checkpoint import load_model_and_metadata
    from proteinperf.inference.common import atomic_output, resolve_device
    from proteinperf.inference.evaluate import evaluate, format_table, unigram_log_probs_from

    if args.out is not None:
        check_target(args.out)
    model, _, meta = load_model_and_metadata(args.checkpoint, device=resolve_device(args.device))
    causal = bool(model.config.causal)
    if args.unigram_from is not None:
        unigram = unigram_log_probs_from(args.unigram_from, causal)
        unigram_source = str(args.unigram_from)
    else:
        stored = meta.get("unigram_log_probs")
        unigram = torch.tensor(stored) if stored is not None else None
        unigram_source = "checkpoint" if stored is not None else None
    result = evaluate(
        model,
        args.data,
        split=args.split,
        mask_prob=args.mask_prob,
        seed=args.seed,
        max_length=args.max_length,
        toks_per_batch=args.toks_per_batch,
        unigram_log_probs=unigram,
        progress=not args.quiet,
    )
    result.update(
        checkpoint=str(args.checkpoint),
        data=str(args.data),
        split=args.split,
        unigram_source=unigram_source,
    )
    print(format_table(result))
    if unigram is None:
        print(
            "note: the checkpoint carries no unigram frequencies; give --unigram-from "
            "for the baseline",
            file=sys.stderr,
        )
    if args.out:
        with atomic_output(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")
    return 0
