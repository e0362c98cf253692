"""Exact softmax attention: the regular Transformer baseline (PyTorch SDPA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _allowed(
    length: int, causal: bool, key_padding_mask: torch.Tensor | None, device
) -> torch.Tensor | None:
    """Bool (B|1, 1, L, L) mask of allowed query->key pairs, or None when all are allowed."""
    allowed = None
    if key_padding_mask is not None:
        allowed = key_padding_mask[:, None, None, :]
    if causal:
        tril = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        allowed = tril if allowed is None else allowed & tril
    return allowed


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(q kᵀ/√d) v with PyTorch's fused kernels; shapes as ``favor_attention``.

    A query with no allowed key (all keys padded) gets zeros rather than NaN.
    """
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p)
    allowed = _allowed(q.shape[-2], causal, key_padding_mask, q.device)
    empty = ~allowed.any(-1, keepdim=True)  # (B, 1, L, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | empty, dropout_p=dropout_p)
    return out.masked_fill(empty, 0.0)


def softmax_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The explicit (B, H, L, L) softmax attention matrix, for analysis."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    allowed = _allowed(q.shape[-2], causal, key_padding_mask, q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -torch.inf)
    weights = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)
