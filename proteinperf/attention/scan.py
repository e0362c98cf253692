"""Causal FAVOR+ across chunks, batched: the pieces every causal path shares.

Positions are cut into N chunks of C. Inside a chunk, pairs (i, j ≤ i) are formed as a masked
(C, C) product; across chunks each chunk's keys are summed into a state (m, d+1), and the
state a chunk reads is the sum over all chunks before it: a prefix sum over the chunk axis.
All N chunks are done at once (no Python loop over chunks), so a call dispatches the same
number of ops whatever L is: on a GPU, a constant number of kernel launches.

Exponential kernels carry a stabiliser in log space: key j's features are relative to the
running max M_j = max_{j'≤j} s_j' of the key log-scales, and the state of chunk n is relative
to E_n, M at its last row. Chunk n reaches chunk n' ≥ n with weight exp(E_n − E_n') ≤ 1, so the
prefix sum is a lower-triangular (N+1, N+1) matrix of such weights times the stacked states.
A plain cumsum would need exp(E_n) itself (overflows) or one common reference (underflows
early chunks whose keys are far below later ones): neither is exact. The matrix costs
N²·m·(d+1) per (batch, head), small next to the L·C·(m+d) of the intra-chunk products.
Unscaled features (relu) need no weights: their prefix sums are a cumsum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .phi import MASKED_LOG_SCALE


def future_mask(size: int, device: torch.device) -> torch.Tensor:
    """bool (size, size): True where j > i (a key after the query)."""
    return torch.ones(size, size, dtype=torch.bool, device=device).triu_(1)


def pair_decay(log_scale: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
    """exp(a_j − a_i) for j ≤ i, 0 for j > i: (..., K) -> (..., K, K), entries ≤ 1 when a is
    non-decreasing (a running max). Future entries are masked before exp: never inf·0."""
    diff = log_scale.unsqueeze(-2) - log_scale.unsqueeze(-1)
    return diff.masked_fill_(future, -torch.inf).exp_()


def pad_positions(x: torch.Tensor, pad: int, dim: int, value: float = 0.0) -> torch.Tensor:
    """x with ``pad`` more positions along ``dim`` (a negative index), filled with ``value``."""
    if not pad:
        return x
    widths = [0, 0] * (-dim - 1) + [0, pad]
    return F.pad(x, widths, value=value)


def running_max(log_scale: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """M_j = max(start, s_1..s_j) along the last axis, detached (the shift cancels in the
    ratio). start (...,): the stabiliser of a carried state; None: no keys before."""
    running = log_scale.detach().cummax(-1).values
    return running if start is None else torch.maximum(running, start.unsqueeze(-1))


def chunk_weights(ends: torch.Tensor, initial_end: torch.Tensor) -> torch.Tensor:
    """Weights of the scan over [initial state, chunk 0, ..., chunk N−1], (..., N+1, N+1):
    entry (a, b ≤ a) is exp(E_b − E_a) with E = [initial_end, E_0, ..., E_{N−1}] (ends:
    (..., N)), 0 above the diagonal."""
    refs = torch.cat([initial_end.unsqueeze(-1), ends], -1)
    return pair_decay(refs, future_mask(refs.shape[-1], refs.device))


class ChunkDecays:
    """The stabiliser's weights for N chunks of C, from the running max M (..., N, C) and the
    stabiliser ``start`` (...,) of the state before chunk 0 (None: no state, the floor):
    pair (i, j ≤ i) exp(M_j − M_i), (..., N, C, C); query i from the state before its chunk
    exp(E_{n−1} − M_i) and key j to its chunk's end exp(M_j − E_n), (..., N, C, 1); the scan
    over chunks (``chunk_weights``); ``end`` (...,) = E_{N−1}, what the state after the last
    chunk is relative to. All ≤ 1.
    Unscaled features (running None): every weight is 1, so all are None and ``mask`` keeps
    the lower triangle."""

    def __init__(self, running: torch.Tensor | None, start: torch.Tensor | None = None):
        self.pair = self.scan = self.from_prev = self.to_end = self.end = None
        if running is None:
            return
        if start is None:  # no state before: the floor, below every real key
            start = torch.full_like(running[..., 0, 0], MASKED_LOG_SCALE)
        self.pair = pair_decay(running, future_mask(running.shape[-1], running.device))
        ends = running[..., -1]  # E_n, (..., N)
        self.scan = chunk_weights(ends, start)
        before = torch.cat([start.unsqueeze(-1), ends[..., :-1]], -1)  # E_{n−1}
        self.from_prev = torch.exp(before.unsqueeze(-1) - running).unsqueeze(-1)
        self.to_end = torch.exp(running - ends.unsqueeze(-1)).unsqueeze(-1)
        self.end = ends[..., -1]

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """(..., N, C, C) in-chunk pair products, in place: weighted, future pairs zeroed."""
        return scores.tril_() if self.pair is None else scores.mul_(self.pair)


def scaled(x: torch.Tensor, factor: torch.Tensor | None, inplace: bool = False) -> torch.Tensor:
    """x · factor (a ChunkDecays weight), or x itself where the weight is None (all ones)."""
    if factor is None:
        return x
    return x.mul_(factor) if inplace else x * factor


def chunk_prefixes(
    states: torch.Tensor,  # (..., N, m, e): the keys of each chunk, relative to its end E_n
    weights: torch.Tensor | None,  # ChunkDecays.scan; None: unscaled (plain sums)
    initial: torch.Tensor | None = None,  # (..., m, e): the state before the first chunk
    final: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The state before each chunk (..., N, m, e) and (if ``final``) the state
    after the last (..., m, e), else None. Scaled: prefix n is relative to E_{n−1} (the
    initial end for n = 0), the final state to E_{N−1}: a matmul with the weights, an
    exclusive prefix sum in log space. Unscaled: an exclusive cumsum."""
    n = states.shape[-3]
    if weights is None:
        first = initial.unsqueeze(-3) if initial is not None else None
        if first is None:
            first = torch.zeros_like(states[..., :1, :, :])
        prefixes = torch.cat([first, states[..., :-1, :, :]], -3).cumsum_(-3)
        last = prefixes[..., -1, :, :] + states[..., -1, :, :] if final else None
        return prefixes, last
    flat = states.flatten(-2)  # (..., N, m·e)
    rows = weights[..., : n + 1 if final else n, :]
    out = rows[..., 1:] @ flat
    if initial is not None:
        out = out.addcmul_(rows[..., :1], initial.flatten(-2).unsqueeze(-2))
    prefixes = out[..., :n, :].view_as(states)
    return prefixes, out[..., n, :].view_as(states[..., 0, :, :]) if final else None


def chunk_suffixes(
    grad_prefixes: torch.Tensor,  # (..., N, m, e)
    weights: torch.Tensor | None,  # as given to chunk_prefixes
    grad_final: torch.Tensor | None = None,  # (..., m, e): d of the state after the last chunk
    initial: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Backward of ``chunk_prefixes`` to the chunk states (..., N, m, e): the gradient of S_b
    is Σ_{n > b} w[n, b+1] dP_n (+ w[N, b+1] dF), and (if ``initial``) to the initial state
    Σ_n w[n, 0] dP_n (+ w[N, 0] dF), else None."""
    n = grad_prefixes.shape[-3]
    if weights is None:  # a suffix sum: the product with a triangle of ones (flip is slower)
        weights = grad_prefixes.new_ones(n + 1, n + 1).tril_()
    flat = grad_prefixes.flatten(-2)
    if grad_final is not None:
        flat = torch.cat([flat, grad_final.flatten(-2).unsqueeze(-2)], -2)
    rows = weights[..., : flat.shape[-2], :] if initial else weights[..., : flat.shape[-2], 1:]
    out = rows.transpose(-1, -2) @ flat
    if not initial:
        return out.view_as(grad_prefixes), None
    first = out[..., 0, :].view_as(grad_prefixes[..., 0, :, :])
    return out[..., 1:, :].view_as(grad_prefixes), first
