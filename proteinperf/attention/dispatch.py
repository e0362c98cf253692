"""One attention op for every layer: exact or FAVOR+, over a whole sequence or continuing a
decoding state, as flash-linear-attention's layers take and return their recurrent state."""

from __future__ import annotations

import torch

from .exact import softmax_attention
from .favor import favor_attention
from .recurrent import FavorState, KVCache, favor_step, kv_step


def attend(
    q: torch.Tensor,  # (B, H, L, d)
    k: torch.Tensor,  # (B, H, L, d)
    v: torch.Tensor,  # (B, H, L, d_v)
    features: torch.Tensor | None = None,  # (m, d) for FAVOR+; None: exact softmax
    kernel: str | None = "softmax",  # FAVOR+'s feature map (phi.KERNELS)
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,  # (B, L) bool, True = real; None = no padding
    dropout_p: float = 0.0,
    state: FavorState | KVCache | None = None,
) -> tuple[torch.Tensor, FavorState | KVCache | None]:
    """(out (B, H, L, d_v), state). ``features`` None: softmax(q kᵀ/√d) v (SDPA, with
    ``dropout_p``); else FAVOR+ with this feature map ``kernel``.

    With a ``state`` (causal only: the FAVOR+ prefix sums, or the exact KV cache) the L
    positions continue after the ones the state has seen, and the state after them comes back
    (padded positions leave it unchanged); without one, the state returned is None. One
    position without autograd takes the fused kernels, which update the state in place:
    continue from the returned state, never from an old one.
    """
    if state is None:
        if features is None:
            out = softmax_attention(q, k, v, causal, key_padding_mask, dropout_p)
        else:
            out = favor_attention(q, k, v, features, causal, kernel, key_padding_mask)
        return out, None
    if not causal:
        raise ValueError("a decoding state continues causal attention only")
    if features is None:
        return kv_step(state, q, k, v, key_padding_mask)
    return favor_step(state, q, k, v, features, kernel, key_padding_mask)


__all__ = ["attend"]
