"""Per-residue log-probabilities under a model: the primitives behind score and score-mutations.

Positions are residue indices (0-based, without <cls>); token position = residue index + 1.
All functions run under ``torch.inference_mode`` and return float32 CPU tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from proteinperf.data.alphabet import get_alphabet

from .common import autocast, encode_batch, model_device


@torch.inference_mode()
def batch_log_probs(model, sequences: Sequence[str], precision: str = "fp32") -> list[torch.Tensor]:
    """One pass over a padded batch: per sequence, (L + 2, V) log-softmax of the logits."""
    device = model_device(model)
    tokens, mask = encode_batch(sequences, device)
    with autocast(device, precision):
        logits = model(tokens, padding_mask=mask)["logits"]
    log_probs = logits.float().log_softmax(-1).cpu()
    return [log_probs[row, : len(seq) + 2] for row, seq in enumerate(sequences)]


def _gather(log_probs: torch.Tensor, sequence: str) -> torch.Tensor:
    """log p(x_i) for each residue i from (L, V) rows aligned with the residues."""
    ids = torch.tensor(get_alphabet().encode(sequence), dtype=torch.long)
    return log_probs.gather(-1, ids[:, None]).squeeze(-1)


def causal_log_probs(
    model, sequences: Sequence[str], precision: str = "fp32"
) -> list[torch.Tensor]:
    """Causal model: log p(x_i | <cls>, x_<i) for every residue (the exact likelihood's terms).

    <eos> is not scored, so that the per-residue mean compares with the masked strategies.
    """
    rows = batch_log_probs(model, sequences, precision)
    return [_gather(lp[: len(seq)], seq) for lp, seq in zip(rows, sequences)]


def wt_marginal_log_probs(model, sequences: Sequence[str], precision: str = "fp32"):
    """Bidirectional model, one unmasked pass: log p(x_i | x) for every residue."""
    rows = batch_log_probs(model, sequences, precision)
    return [_gather(lp[1 : len(seq) + 1], seq) for lp, seq in zip(rows, sequences)]


@torch.inference_mode()
def masked_log_probs(
    model,
    sequence: str,
    positions: Sequence[int],
    toks_per_batch: int,
    precision: str = "fp32",
    progress=None,
) -> torch.Tensor:
    """(len(positions), V): log-softmax at each position with that one position masked.

    Many masked copies of the sequence go through one forward, as many as fit the token
    budget (at least one), so a short protein costs a handful of passes, not one per residue.
    """
    device = model_device(model)
    alphabet = get_alphabet()
    tokens, _ = encode_batch([sequence], device)  # (1, L + 2), no padding
    per_batch = max(1, toks_per_batch // tokens.shape[1])
    positions = torch.as_tensor(list(positions), dtype=torch.long)
    out = []
    for chunk in positions.split(per_batch):
        rows = torch.arange(len(chunk), device=device)
        cols = chunk.to(device) + 1
        copies = tokens.repeat(len(chunk), 1)
        copies[rows, cols] = alphabet.mask_idx
        with autocast(device, precision):
            logits = model(copies)["logits"][rows, cols]
        out.append(logits.float().log_softmax(-1).cpu())
        if progress is not None:
            progress.update(len(chunk))
    return torch.cat(out) if out else torch.empty(0, len(alphabet))


def pseudo_log_probs(
    model, sequence: str, toks_per_batch: int, precision: str = "fp32", progress=None
) -> torch.Tensor:
    """log p(x_i | x with i masked) for every residue: the pseudo-log-likelihood's terms."""
    rows = masked_log_probs(
        model, sequence, range(len(sequence)), toks_per_batch, precision, progress
    )
    return _gather(rows, sequence)
