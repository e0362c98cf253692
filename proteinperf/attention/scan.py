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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def chunk_weights(ends: torch.Tensor, initial_end: torch.Tensor) -> torch.Tensor:
    """Weights of the scan over [initial state, chunk 0, ..., chunk N−1], (..., N+1, N+1):
    entry (a, b ≤ a) is exp(E_b − E_a) with E = [initial_end, E_0, ..., E_{N−1}] (ends:
    (..., N)), 0 above the diagonal. Unscaled features: ends all 0, ones on and below it."""
    refs = torch.cat([initial_end.unsqueeze(-1), ends], -1)
    return pair_decay(refs, future_mask(refs.shape[-1], refs.device))


def chunk_prefixes(
    states: torch.Tensor,  # (..., N, m, e): the keys of each chunk, relative to its end E_n
    weights: torch.Tensor,  # from chunk_weights
    initial: torch.Tensor | None = None,  # (..., m, e): the state before the first chunk
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The state before each chunk (..., N, m, e), contiguous, and (given an initial state)
    the state after the last (..., m, e), else None. Scaled: prefix n is relative to E_{n−1}
    (the initial end for n = 0), the final state to E_{N−1}. A matmul with the weights: an
    exclusive prefix sum in log space."""
    n = states.shape[-3]
    flat = states.flatten(-2)  # (..., N, m·e)
    prefixes = weights[..., :n, 1:] @ flat
    if initial is None:
        return prefixes.view_as(states), None
    start = initial.flatten(-2).unsqueeze(-2)  # (..., 1, m·e)
    prefixes = prefixes.addcmul_(weights[..., :n, :1], start)
    final = torch.addcmul(weights[..., n:, 1:] @ flat, weights[..., n:, :1], start)
    return prefixes.view_as(states), final.view_as(initial)


def chunk_suffixes(grad_prefixes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Backward of ``chunk_prefixes`` (no initial state) to the chunk states: the gradient of
    S_n is Σ_{n' > n} w[n', n+1] dP_n', (..., N, m, e)."""
    n = grad_prefixes.shape[-3]
    flat = weights[..., :n, 1:].transpose(-1, -2) @ grad_prefixes.flatten(-2)
    return flat.view_as(grad_prefixes)
