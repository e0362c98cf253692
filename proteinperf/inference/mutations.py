"""Score mutations of one protein (deep mutational scans, variant effects).

Strategies (Meier et al., 2021, for the bidirectional ones):
  masked-marginals      Σ over mutated positions i: log p(mt_i | x, i masked) − log p(wt_i | …)
  wt-marginals          the same terms from one unmasked pass of the wild type
  pseudo-ppl            PLL(mutant) − PLL(wild type), every residue masked once (slow: L passes
                        per mutant)
  log-likelihood-ratio  causal models: log p(mutant) − log p(wild type), exact
A multi-mutant ``H24C:K30R`` is the sum of its singles for the marginal strategies; the
sequence-level strategies score the whole mutant sequence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from proteinperf.data.alphabet import GAPS, RESIDUES, get_alphabet

from .common import (
    DEFAULT_TOKS_PER_BATCH,
    atomic_output,
    check_length,
    plan_batches,
    progress,
)
from .likelihood import (
    batch_log_probs,
    causal_log_probs,
    masked_log_probs,
    pseudo_log_probs,
)

STRATEGIES = ("masked-marginals", "wt-marginals", "pseudo-ppl", "log-likelihood-ratio")
BIDIRECTIONAL = ("masked-marginals", "wt-marginals", "pseudo-ppl")
WILD_TYPE = ("WT", "_WT")  # a row naming the wild type itself scores 0
_mutation_re = re.compile(r"([A-Z])(-?\d+)([A-Z])")


@dataclass(frozen=True)
class Mutation:
    wt: str
    index: int  # 0-based position in the sequence
    mt: str


def resolve_strategy(strategy: str | None, causal: bool) -> str:
    if strategy is None:
        return "log-likelihood-ratio" if causal else "masked-marginals"
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if causal and strategy in BIDIRECTIONAL:
        raise ValueError(
            f"strategy {strategy!r} needs a bidirectional model; this checkpoint is "
            "causal: use log-likelihood-ratio"
        )
    if not causal and strategy == "log-likelihood-ratio":
        raise ValueError(
            "log-likelihood-ratio needs a causal model; for this bidirectional one "
            "use masked-marginals, wt-marginals or pseudo-ppl"
        )
    return strategy


def parse_mutant(text: str, sequence: str, offset: int = 1, where: str = "") -> tuple:
    """'H24C:K30R' -> (Mutation, ...), checked against ``sequence`` numbered from ``offset``."""
    prefix = f"{where}: " if where else ""
    text = str(text).strip().upper()
    if text in WILD_TYPE:
        return ()
    mutations, seen = [], set()
    for part in text.split(":"):
        match = _mutation_re.fullmatch(part.strip())
        if match is None:
            raise ValueError(
                f"{prefix}cannot parse mutation {part.strip()!r} (expected e.g. "
                "H24C; multi-mutants joined by ':', e.g. H24C:K30R)"
            )
        wt, number, mt = match.group(1), int(match.group(2)), match.group(3)
        index = number - offset
        if not 0 <= index < len(sequence):
            raise ValueError(
                f"{prefix}mutation {part} is outside the sequence: positions run from {offset} "
                f"to {offset + len(sequence) - 1} (--offset {offset})"
            )
        if sequence[index] != wt:
            raise ValueError(
                f"{prefix}mutation {part}: wild type {wt} does not match the sequence, which has "
                f"{sequence[index]} at position {number} (--offset {offset})"
            )
        if mt not in RESIDUES + GAPS:
            raise ValueError(f"{prefix}mutation {part}: {mt!r} is not an amino acid")
        if index in seen:
            raise ValueError(f"{prefix}position {number} is mutated twice in {text!r}")
        seen.add(index)
        mutations.append(Mutation(wt, index, mt))
    return tuple(mutations)


def apply(sequence: str, mutations: Sequence[Mutation]) -> str:
    residues = list(sequence)
    for m in mutations:
        residues[m.index] = m.mt
    return "".join(residues)


def _marginal_scores(rows: dict[int, torch.Tensor], variants) -> list[float]:
    """Σ log p(mt) − log p(wt) over each variant's mutations, from per-position log-prob rows."""
    idx = get_alphabet().tok_to_idx
    return [
        sum(float(rows[m.index][idx[m.mt]] - rows[m.index][idx[m.wt]]) for m in variant)
        for variant in variants
    ]


def _sequence_scores(model, sequence, variants, strategy, toks_per_batch, precision, bar):
    """Whole-sequence strategies: score(mutant) − score(wild type), each distinct mutant once."""
    mutants = sorted({apply(sequence, v) for v in variants if v} | {sequence})
    totals: dict[str, float] = {}
    if strategy == "pseudo-ppl":
        for seq in mutants:
            totals[seq] = float(pseudo_log_probs(model, seq, toks_per_batch, precision).sum())
            bar.update(1)
    else:
        for batch in plan_batches([len(s) for s in mutants], toks_per_batch):
            seqs = [mutants[i] for i in batch]
            for seq, terms in zip(seqs, causal_log_probs(model, seqs, precision)):
                totals[seq] = float(terms.double().sum())
            bar.update(len(batch))
    wild = totals[sequence]
    return [totals[apply(sequence, v)] - wild if v else 0.0 for v in variants]


def score_variants(
    model,
    sequence: str,
    variants: Sequence[tuple],
    *,
    strategy: str | None = None,
    toks_per_batch: int = DEFAULT_TOKS_PER_BATCH,
    precision: str = "fp32",
    quiet: bool = True,
) -> list[float]:
    """One score per variant (a tuple of Mutations; () = wild type, score 0)."""
    strategy = resolve_strategy(strategy, model.config.causal)
    check_length(model, len(sequence), "sequence")
    if strategy in ("pseudo-ppl", "log-likelihood-ratio"):
        with progress(quiet, strategy, unit="seq") as bar:
            return _sequence_scores(
                model, sequence, variants, strategy, toks_per_batch, precision, bar
            )
    positions = sorted({m.index for variant in variants for m in variant})
    if strategy == "wt-marginals":
        log_probs = batch_log_probs(model, [sequence], precision)[0][1:-1]
        rows = {i: log_probs[i] for i in positions}
    else:
        with progress(quiet, strategy, unit="pos", total=len(positions)) as bar:
            table = masked_log_probs(model, sequence, positions, toks_per_batch, precision, bar)
        rows = dict(zip(positions, table))
    return _marginal_scores(rows, variants)


def score_mutations_csv(
    model,
    sequence: str,
    mutations_csv,
    output,
    *,
    score_col: str,
    mutation_col: str = "mutant",
    offset: int = 1,
    strategy: str | None = None,
    toks_per_batch: int = DEFAULT_TOKS_PER_BATCH,
    precision: str = "fp32",
    quiet: bool = False,
) -> dict:
    """The input CSV plus a ``score_col`` column, written atomically to ``output``.

    Cells are read and written as text, so every input column comes back unchanged.
    """
    import pandas as pd

    sequence = sequence.strip().upper()
    if not sequence:
        raise ValueError("the wild-type sequence is empty")
    bad = sorted(set(sequence) - set(RESIDUES + GAPS))
    if bad:
        raise ValueError(f"the wild-type sequence has invalid residues: {''.join(bad)}")
    path = Path(mutations_csv)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from err
    if mutation_col not in table.columns:
        raise ValueError(
            f"{path}: no column {mutation_col!r} (columns: "
            f"{', '.join(map(str, table.columns))}); set --mutation-col"
        )
    if score_col in table.columns:
        raise ValueError(f"{path}: already has a column {score_col!r}; choose --score-col")
    if table.empty:
        raise ValueError(f"{path}: no mutations (the CSV has a header only)")
    strategy = resolve_strategy(strategy, model.config.causal)
    # Data row r (0-based) is on line r + 2 when no cell spans lines: that is what editors show.
    variants = [
        parse_mutant(text, sequence, offset, f"{path}:{row + 2}")
        for row, text in enumerate(table[mutation_col])
    ]
    scores = score_variants(
        model,
        sequence,
        variants,
        strategy=strategy,
        toks_per_batch=toks_per_batch,
        precision=precision,
        quiet=quiet,
    )
    table[score_col] = scores
    with atomic_output(Path(output)) as tmp:
        table.to_csv(tmp, index=False)
    return {"rows": len(table), "strategy": strategy, "output": str(output)}
