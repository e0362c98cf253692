"""Score mutations of one protein (deep mutational scans, variant effects).

Strategies (Meier et al., 2021, for the bidirectional ones):
  masked-marginals      Σ over mutated positions i: log p(mt_i | x, i masked) − log p(wt_i | …)
  wt-marginals          the same terms from one unmasked pass of the wild type
  pseudo-ppl            PLL(mutant) − PLL(wild type), every residue masked once (slow: L passes
                        per mutant)
  log-likelihood-ratio  causal models: log p(mutant) − log p(wild type), exact
A multi-mutant ``H24C:K30R`` is the sum of its singles for the marginal strategies; the
sequence-level strategies score the whole mutant sequence.

ProteinGym substitution files are read as they come: the wild type may be recovered from the
``mutated_sequence`` column, and ``DMS_score`` / ``DMS_score_bin`` give Spearman ρ and AUC.

Long proteins: FAVOR models score the whole sequence (no length limit, linear memory). For
exact-attention models (e.g. a converted ESM-2, trained on at most 1022 residues) the marginal
strategies score each position in a window of ``window`` residues centred on it (ESM-1v's and
ProteinGym's recipe); the sequence-level strategies always see the whole sequence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from proteinperf.constants import MUTATION_STRATEGIES
from proteinperf.data.alphabet import GAPS, RESIDUES, get_alphabet
from proteinperf.errors import ConfigError, InputError

from .common import (
    DEFAULT_TOKS_PER_BATCH,
    atomic_output,
    check_length,
    length_sorted_batches,
    progress,
)
from .likelihood import (
    batch_log_probs,
    causal_log_probs,
    masked_log_probs,
    pseudo_log_probs,
)

STRATEGIES = MUTATION_STRATEGIES
BIDIRECTIONAL = ("masked-marginals", "wt-marginals", "pseudo-ppl")
WILD_TYPE = ("WT", "_WT")  # a row naming the wild type itself scores 0
MUTATED_SEQUENCE, DMS_SCORE, DMS_BIN = "mutated_sequence", "DMS_score", "DMS_score_bin"
ESM_WINDOW = 1022  # ESM-2's training crop, in residues
_mutation_re = re.compile(r"([A-Z])(-?\d+)([A-Z])")


@dataclass(frozen=True)
class Mutation:
    wt: str
    index: int  # 0-based position in the sequence
    mt: str


def resolve_mutation_strategy(strategy: str | None, causal: bool) -> str:
    if strategy is None:
        return "log-likelihood-ratio" if causal else "masked-marginals"
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if causal and strategy in BIDIRECTIONAL:
        raise ConfigError(
            f"strategy {strategy!r} needs a bidirectional model; this checkpoint is "
            "causal: use log-likelihood-ratio"
        )
    if not causal and strategy == "log-likelihood-ratio":
        raise ConfigError(
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
            raise InputError(
                f"{prefix}cannot parse mutation {part.strip()!r} (expected e.g. "
                "H24C; multi-mutants joined by ':', e.g. H24C:K30R)"
            )
        wt, number, mt = match.group(1), int(match.group(2)), match.group(3)
        index = number - offset
        if not 0 <= index < len(sequence):
            raise InputError(
                f"{prefix}mutation {part} is outside the sequence: positions run from {offset} "
                f"to {offset + len(sequence) - 1} (--offset {offset})"
            )
        if sequence[index] != wt:
            raise InputError(
                f"{prefix}mutation {part}: wild type {wt} does not match the sequence, which has "
                f"{sequence[index]} at position {number} (--offset {offset})"
            )
        if mt not in RESIDUES + GAPS:
            raise InputError(f"{prefix}mutation {part}: {mt!r} is not an amino acid")
        if index in seen:
            raise InputError(f"{prefix}position {number} is mutated twice in {text!r}")
        seen.add(index)
        mutations.append(Mutation(wt, index, mt))
    return tuple(mutations)


def apply(sequence: str, mutations: Sequence[Mutation]) -> str:
    residues = list(sequence)
    for m in mutations:
        residues[m.index] = m.mt
    return "".join(residues)


def resolve_window(model, window: int | str | None = "auto") -> int | None:
    """Residues per scoring window: 'auto' = ESM_WINDOW for exact attention, None (whole
    sequence) for FAVOR; 0 or None = whole sequence."""
    if window == "auto":
        return ESM_WINDOW if model.config.favor_kernel is None else None
    window = int(window or 0)
    if window < 0:
        raise ConfigError(f"--window must be >= 0 residues (0 = whole sequence), got {window}")
    return window or None


def window_start(index: int, length: int, window: int | None) -> int:
    """First residue of the ``window`` centred on ``index``, shifted to lie inside the sequence."""
    if window is None or length <= window:
        return 0
    return min(max(index - window // 2, 0), length - window)


def wild_type_from_mutants(mutants: Sequence[str], mutated: Sequence[str], where: str) -> str:
    """The wild type, undoing the first real mutant's substitutions in its mutated sequence."""
    for row, (text, seq) in enumerate(zip(mutants, mutated)):
        text = str(text).strip().upper()
        if text in WILD_TYPE:
            return seq.strip().upper()
        residues = list(seq.strip().upper())
        for part in text.split(":"):
            match = _mutation_re.fullmatch(part.strip())
            if match is None:
                raise InputError(f"{where}:{row + 2}: cannot parse mutation {part.strip()!r}")
            index = int(match.group(2)) - 1
            if not 0 <= index < len(residues):
                raise InputError(
                    f"{where}:{row + 2}: mutation {part} is outside {MUTATED_SEQUENCE} "
                    f"({len(residues)} residues)"
                )
            residues[index] = match.group(1)
        return "".join(residues)
    raise InputError(f"{where}: no rows to recover the wild type from")


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
        for batch in length_sorted_batches([len(s) for s in mutants], toks_per_batch):
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
    window: int | None = None,
) -> list[float]:
    """One score per variant (a tuple of Mutations; () = wild type, score 0).

    ``window``: residues per scoring window of the marginal strategies (None = whole sequence).
    """
    strategy = resolve_mutation_strategy(strategy, model.config.causal)
    if strategy in ("pseudo-ppl", "log-likelihood-ratio"):
        check_length(model, len(sequence), "sequence")
        with progress(quiet, strategy, unit="seq") as bar:
            return _sequence_scores(
                model, sequence, variants, strategy, toks_per_batch, precision, bar
            )
    check_length(model, min(len(sequence), window or len(sequence)), "sequence window")
    positions = sorted({m.index for variant in variants for m in variant})
    by_start: dict[int, list[int]] = {}
    for i in positions:
        by_start.setdefault(window_start(i, len(sequence), window), []).append(i)
    rows = {}
    with progress(quiet, strategy, unit="pos", total=len(positions)) as bar:
        for start, group in by_start.items():
            part = sequence[start : start + window] if window else sequence
            local = [i - start for i in group]
            if strategy == "wt-marginals":
                log_probs = batch_log_probs(model, [part], precision)[0][1:-1]
                table = log_probs[local]
                bar.update(len(group))
            else:
                table = masked_log_probs(model, part, local, toks_per_batch, precision, bar)
            rows.update(zip(group, table))
    return _marginal_scores(rows, variants)


def dms_metrics(table, score_col: str) -> dict | None:
    """Spearman ρ of the scores against DMS_score, AUC against DMS_score_bin (1 = fit);
    rows with a missing value are left out. None when the table has no DMS_score."""
    import numpy as np
    import pandas as pd
    from scipy.stats import rankdata, spearmanr

    if DMS_SCORE not in table.columns:
        return None
    scores = pd.to_numeric(table[score_col], errors="coerce").to_numpy(float)
    measured = pd.to_numeric(table[DMS_SCORE], errors="coerce").to_numpy(float)
    keep = np.isfinite(scores) & np.isfinite(measured)
    rho = float(spearmanr(scores[keep], measured[keep]).statistic) if keep.sum() > 2 else None
    metrics = {"n": int(keep.sum()), "spearman": rho}
    if DMS_BIN in table.columns:
        labels = pd.to_numeric(table[DMS_BIN], errors="coerce").to_numpy(float)
        ok = np.isfinite(scores) & np.isin(labels, (0.0, 1.0))
        pos, n_pos, n_neg = (
            labels[ok] == 1,
            int((labels[ok] == 1).sum()),
            int((labels[ok] == 0).sum()),
        )
        auc = None
        if n_pos and n_neg:
            # Mann-Whitney: AUC = (Σ ranks of positives − n₊(n₊+1)/2) / (n₊ n₋), ties averaged
            ranks = rankdata(scores[ok])
            auc = float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
        metrics["auc"] = auc
    if rho is not None and not np.isfinite(rho):  # constant scores
        metrics["spearman"] = None
    return metrics


def read_text_csv(path):
    """A CSV as text cells (every column kept as it is); one-line errors for unreadable files."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from err


def read_mutations_table(path, mutation_col: str, score_col: str):
    """The CSV as text cells (every column kept as is), checked for the columns we need."""
    path = Path(path)
    table = read_text_csv(path)
    if mutation_col not in table.columns:
        raise InputError(
            f"{path}: no column {mutation_col!r} (columns: "
            f"{', '.join(map(str, table.columns))}); set --mutation-col"
        )
    if score_col in table.columns:
        raise InputError(f"{path}: already has a column {score_col!r}; choose --score-col")
    if table.empty:
        raise InputError(f"{path}: no mutations (the CSV has a header only)")
    return table


def score_mutations_csv(
    model,
    sequence: str | None,
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
    window: int | str | None = "auto",
) -> dict:
    """The input CSV plus a ``score_col`` column, written atomically to ``output``.

    Cells are read and written as text, so every input column comes back unchanged. With
    ``sequence`` None the wild type is recovered from a ProteinGym ``mutated_sequence``
    column; when that column is present every row is checked against it. Returns a summary
    with "metrics" (Spearman ρ, AUC) when the CSV has DMS_score.
    """
    path = Path(mutations_csv)
    table = read_mutations_table(path, mutation_col, score_col)
    has_mutated = MUTATED_SEQUENCE in table.columns
    if sequence is None:
        if not has_mutated:
            raise InputError(
                f"{path}: no wild type: give --sequence/--fasta, or a {MUTATED_SEQUENCE!r} "
                "column (ProteinGym layout)"
            )
        if offset != 1:
            raise ConfigError(f"{path}: {MUTATED_SEQUENCE} numbers residues from 1, not {offset}")
        sequence = wild_type_from_mutants(table[mutation_col], table[MUTATED_SEQUENCE], str(path))
    sequence = sequence.strip().upper()
    if not sequence:
        raise InputError("the wild-type sequence is empty")
    bad = sorted(set(sequence) - set(RESIDUES + GAPS))
    if bad:
        raise InputError(f"the wild-type sequence has invalid residues: {''.join(bad)}")
    strategy = resolve_mutation_strategy(strategy, model.config.causal)
    window = resolve_window(model, window)
    # Data row r (0-based) is on line r + 2 when no cell spans lines: that is what editors show.
    variants = [
        parse_mutant(text, sequence, offset, f"{path}:{row + 2}")
        for row, text in enumerate(table[mutation_col])
    ]
    if has_mutated and offset == 1:
        for row, (variant, given) in enumerate(zip(variants, table[MUTATED_SEQUENCE])):
            if apply(sequence, variant) != given.strip().upper():
                raise InputError(
                    f"{path}:{row + 2}: {MUTATED_SEQUENCE} is not the wild type with "
                    f"{table[mutation_col].iloc[row]} applied"
                )
    scores = score_variants(
        model,
        sequence,
        variants,
        strategy=strategy,
        toks_per_batch=toks_per_batch,
        precision=precision,
        quiet=quiet,
        window=window,
    )
    table[score_col] = scores
    with atomic_output(Path(output)) as tmp:
        table.to_csv(tmp, index=False)
    return {
        "rows": len(table),
        "strategy": strategy,
        "score_col": score_col,
        "length": len(sequence),
        "window": window,
        "output": str(output),
        "metrics": dms_metrics(table, score_col),
    }
