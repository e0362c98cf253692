"""The plain quadratic FAVOR estimator: the (L, L) matrix φ(Q)φ(K)ᵀ written out, masked, normalised.

The reference the linear-time paths (favor.py, blockwise.py) are tested against, and the source
of ``favor_attention_weights``. Same feature maps and stabilisers as production (phi.py),
no chunks, no blocks, no carried state: O(L²) time and memory, for analysis and small inputs.
"""

from __future__ import annotations

import torch

from .exact import _allowed
from .phi import DENOMINATOR_EPS, check_kernel_for_causal, feature_maps


def naive_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    features: torch.Tensor,
    causal: bool = False,
    kernel: str = "softmax",
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """D⁻¹ φ(Q) φ(K)ᵀ with future and padded keys removed: (B, H, L, L) in q's dtype.

    q, k: (B, H, L, d); features: (m, d); key_padding_mask: bool (B, L), True = real token.
    Computes in the inputs' dtype: pass float64 for a reference.
    """
    if causal:
        check_kernel_for_causal(kernel)
    with torch.autocast(device_type=q.device.type, enabled=False):
        phi_q, phi_k, log_scale_k = feature_maps(q, k, features, kernel, key_padding_mask)
        scores = phi_q @ phi_k.transpose(-1, -2)  # (B, H, L, L)
        allowed = _allowed(q.shape[-2], causal, key_padding_mask, q.device)  # (B|1, 1, L|1, L)
        if log_scale_k is None:
            return _normalise(scores if allowed is None else scores.masked_fill(~allowed, 0.0))
        # True key features are φ_k·exp(s_j). Query i's weights are scaled by exp(−c_i), c_i the
        # largest s_j among the keys it sees: cancels in the ratio, keeps every factor ≤ 1.
        s = log_scale_k.unsqueeze(-2)  # (B, H, 1, L)
        if allowed is not None:
            s = s.masked_fill(~allowed, -torch.inf)
        c = s.detach().amax(-1, keepdim=True)
        c = c.masked_fill(torch.isinf(c), 0.0)  # a query that sees no key: all weights exp(-inf)
        return _normalise(scores * torch.exp(s - c))


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    features: torch.Tensor,
    causal: bool = False,
    kernel: str = "softmax",
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``favor_attention`` as (weights @ v): (B, H, L, d_v), computed in q's dtype."""
    weights = naive_attention_weights(q, k, features, causal, kernel, key_padding_mask)
    return weights @ v.to(weights.dtype)


def _normalise(scores: torch.Tensor) -> torch.Tensor:
    return scores / (scores.sum(-1, keepdim=True) + DENOMINATOR_EPS)
