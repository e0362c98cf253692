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
    from proteinperf import pretrained

    if args.export:
        from proteinperf.pretrained.export import export_model

        if not args.out:
            raise CommandError("--export needs --out FILE.pt")
        print(export_model(args.export, args.out, _card(args.card)))
        return 0
    cards = pretrained.list_models()
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    if not cards:
        print(
            f"no named models installed (searched: {', '.join(map(str, pretrained.search_dirs()))})"
        )
        return 0
    for index, card in enumerate(cards):
        if index:
            print()
        print("\n".join(describe(card)))
    return 0


def _number(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _held_out(label: str, result, unigram) -> str | None:
    """One row: accuracy and perplexity, each beside unigram's on the same proteins."""
    if not isinstance(result, dict):
        return None
    unigram = unigram if isinstance(unigram, dict) else {}
    acc, ppl = result.get("accuracy"), result.get("perplexity")
    u_acc, u_ppl = unigram.get("accuracy"), unigram.get("perplexity")
    gain = f"{(acc - u_acc) * 100:+.1f} points" if acc is not None and u_acc else ""
    ratio = f"{ppl / u_ppl:.3f}x" if ppl is not None and u_ppl else ""
    n = result.get("sequences")
    proteins = f"{n:,}" if isinstance(n, int) else "-"
    return (
        f"  {label:<10}{proteins:>8}  {_number(acc, 3):>6} ({_number(u_acc, 3)}) {gain:>12}"
        f"  {_number(ppl, 2):>6} ({_number(u_ppl, 2)}) {ratio:>7}"
    )


def describe(card: dict) -> list[str]:
    """A model card for the terminal: size, training, held-out figures beside unigram, limits."""
    import textwrap

    params = card.get("parameters")
    size = f"{params / 1e6:.2f} M parameters" if isinstance(params, int) else "? parameters"
    steps, seconds = card.get("steps"), card.get("seconds")
    trained = f"{steps:,} steps" if isinstance(steps, int) else ""
    if isinstance(seconds, (int, float)):
        trained += f" / {seconds / 60:.0f} min" if trained else f"{seconds / 60:.0f} min"
    head = [card["name"], card.get("objective") or "-", card.get("attention") or "-", size]
    head += [part for part in (trained, card.get("size_mb") and f"{card['size_mb']} MB") if part]
    lines = ["  ".join(head)]
    rows = [
        _held_out("test", card.get("test"), card.get("unigram")),
        _held_out("far", card.get("far"), (card.get("far") or {}).get("unigram")),
    ]
    rows = [row for row in rows if row]
    if rows:
        task = {"mlm": "masked residues", "clm": "next token"}.get(card.get("objective"), "")
        lines.append(
            f"  {'held out':<10}{'proteins':>8}  {'accuracy (unigram)':>27}  "
            f"{'perplexity (unigram)':>23}  {task}"
        )
        lines += rows
    for field in ("data", "split", "limits"):
        if card.get(field):
            lines += textwrap.wrap(
                f"{field}: {card[field]}",
                width=100,
                initial_indent="  ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
    lines.append(f"  path: {card['path']}")
    return lines
