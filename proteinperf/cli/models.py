"""`proteinperf models`: the named pretrained models every CHECKPOINT argument accepts, and
`--export` to turn a trained checkpoint into one."""

from __future__ import annotations

import argparse
import json

from proteinperf.cli import CommandError
from proteinperf.cli._outputs import add_overwrite_option


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the named pretrained models (usable wherever a CHECKPOINT is asked for)",
        description="List the named pretrained models: shipped in proteinperf/pretrained/ and in "
        "the folders of PROTEINPERF_MODELS_DIR. Any command taking a CHECKPOINT accepts a name, "
        "e.g. `proteinperf embed swissprot-performer-bid proteins.fasta out.h5`. With --export, "
        "write a trained checkpoint as a weights-only fp16 named model (<= 15 MB) plus its card.",
    )
    parser.add_argument("--json", action="store_true", help="a JSON list of model cards")
    parser.add_argument(
        "--export",
        metavar="CHECKPOINT",
        help="checkpoint (Lightning .ckpt or model file) to export as a named model",
    )
    parser.add_argument(
        "--out", metavar="FILE.pt", help="with --export: the model file, named <name>.pt"
    )
    parser.add_argument(
        "--card",
        metavar="JSON",
        help="with --export: model card fields as a JSON object or a .json file "
        "(data, split, steps, seconds, test, far, description, limits, ...)",
    )
    add_overwrite_option(parser)
    parser.set_defaults(
        func=lambda args: _run(args), input_args=("export", "card"), output_args=("out",)
    )


def _card(text: str | None) -> dict:
    from pathlib import Path

    if not text:
        return {}
    try:
        card = json.loads(Path(text).read_text() if text.endswith(".json") else text)
    except json.JSONDecodeError as err:
        raise CommandError(f"--card: not valid JSON ({err})") from None
    if not isinstance(card, dict):
        raise CommandError(f"--card: expected a JSON object, got {type(card).__name__}")
    return card


def _run(args: argparse.Namespace) -> int:
    from proteinperf import models

    if args.export:
        if not args.out:
            raise CommandError("--export needs --out FILE.pt")
        print(models.export_model(args.export, args.out, _card(args.card)))
        return 0
    cards = models.list_models()
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    if not cards:
        print(f"no named models installed (searched: {', '.join(map(str, models.search_dirs()))})")
        return 0
    print(f"{'name':<32} {'objective':<9} {'attention':<14} {'test acc':>8}  path")
    for card in cards:
        test = card.get("test") or {}
        acc = f"{test['accuracy']:.3f}" if isinstance(test.get("accuracy"), float) else "-"
        print(
            f"{card['name']:<32} {card.get('objective') or '-':<9} "
            f"{card.get('attention') or '-':<14} {acc:>8}  {card['path']}"
        )
    return 0
