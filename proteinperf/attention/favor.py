"""FAVOR+ attention: D⁻¹ φ(Q) (φ(K)ᵀ V) in O(L·m·d) time (Choromanski et al., 2021, Eq. 3-5).

Two linear-time implementations per direction, both tested against the quadratic reference
in naive.py:
- FUSED_KERNELS ("softmax", "relu": what training uses) run as hand-written autograd functions
  (blockwise.py) that recompute features in backward instead of storing (L, m) tensors: about
  half the time and O(L·d + m·d) saved memory.
- On CUDA with fla-core installed, causal "softmax" and "relu" run on flash-linear-attention's
  chunked Triton kernels instead (fla_backend.py; features and normaliser here, in float32).
- The comparison estimators (softmax_hyp, softmax_opt, trig) take the autograd paths below, on
  phi.feature_maps. Fused backward passes are derived by hand per feature map; paired
  directions, sin/cos of either sign and an A fitted to all of q and k would need three more.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .blockwise import bidirectional_favor, causal_favor
from .fla_backend import fla_causal_linear_attention, use_fla
from .naive import naive_attention_weights
from .phi import (
    DENOMINATOR_EPS,
    FUSED_KERNELS,
    MASKED_LOG_SCALE,
    check_kernel_for_causal,
    feature_maps,
)
from .scan import ChunkDecays, chunk_prefixes, pad_positions, running_max, scaled


def default_chunk(length: int, nb_features: int, dim_v: int, device: torch.device) -> int:
    """Positions per chunk of the causal paths when the caller names none.

    Per position, the products inside a chunk cost C·(m + e) and the scan over the L/C chunk
    states (L/C)²·m·e/L, e = d_v + 1: their sum is least at C* = (2·L·m·e / (m + e))^(1/3).
    Small (C, C) products run below the large ones' speed, so the power of two at or above
    1.3·C*, between 16 and 256; on a GPU at least 64 (matrix-unit tiles). Measured on CPU,
    fwd+bwd, one thread, H=8 (chosen C in bold): L=256, m=64, d=16, B=16: C=16 59 ms, **32**
    54, 64 66, 128 87; L=256, m=256, d=64: 32 25, **64** 20, 128 24; L=1024: 32 117, **64**
    97, 128 103; L=4096 (softmax): 64 564, **128** 563, 256 632.
    """
    e = dim_v + 1
    best = 1.3 * (2 * length * nb_features * e / (nb_features + e)) ** (1 / 3)
    chunk = 1 << max(0, math.ceil(math.log2(best)))
    floor = 64 if device.type == "cuda" else 16
    return min(max(chunk, floor), 256)


def favor_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    features: torch.Tensor,
    causal: bool = False,
    kernel: str = "softmax",
    key_padding_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """Linear-time attention with random features.

    q, k: (B, H, L, d); v: (B, H, L, d_v); features: (m, d) from ``draw_features``;
    key_padding_mask: bool (B, L), True = real token. Returns (B, H, L, d_v) in v's dtype.
    chunk_size: positions per chunk of the causal paths; None picks it from L, m and the
    device (``default_chunk``). block_size: rows per block of the fused bidirectional kernels
    (FUSED_KERNELS); None sizes blocks to the device's cache. Both change only speed and
    memory (and float rounding), never the result.
    Features and contractions run in float32 (float64 for float64 inputs) even under
    autocast: exp of bf16 logits loses the estimator, and φ(K)ᵀV sums L terms.
    """
    _check_shapes(q, k, v, features, key_padding_mask)
    if chunk_size is None:
        chunk_size = default_chunk(q.shape[-2], features.shape[0], v.shape[-1], q.device)
    _check_size("chunk_size", chunk_size)
    if block_size is not None:
        _check_size("block_size", block_size)
    if causal:
        check_kernel_for_causal(kernel)
    out_dtype = v.dtype
    on_fla = causal and use_fla(q, kernel)
    with torch.autocast(device_type=q.device.type, enabled=False):
        if kernel in FUSED_KERNELS and not on_fla:
            args = (*_upcast(q, k, v, features), kernel, key_padding_mask)
            if causal:
                out = causal_favor(*args, chunk_size)
            else:
                out = bidirectional_favor(*args, block_size)
            return out.to(out_dtype)
        q, k, v, features = _upcast(q, k, v, features)
        phi_q, phi_k, log_scale_k = feature_maps(q, k, features, kernel, key_padding_mask)
        # A ones column turns the denominator D = φ(Q)φ(K)ᵀ1 into one more output column.
        v_ext = F.pad(v, (0, 1), value=1.0)
        if on_fla:
            out, _ = fla_causal_linear_attention(phi_q, phi_k, log_scale_k, v_ext)
        elif causal:
            out, _ = causal_linear_attention(phi_q, phi_k, log_scale_k, v_ext, chunk_size)
        else:
            out = _bidirectional_linear_attention(phi_q, phi_k, log_scale_k, v_ext)
        out = out[..., :-1] / (out[..., -1:] + DENOMINATOR_EPS)
    return out.to(out_dtype)


def favor_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    features: torch.Tensor,
    causal: bool = False,
    kernel: str = "softmax",
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The implicit (B, H, L, L) attention matrix D⁻¹ φ(Q) φ(K)ᵀ, materialised for analysis.

    ``weights @ v`` equals ``favor_attention(q, k, v, ...)``: same features, same scaling.
    float32 (float64 for float64 inputs), also under autocast.
    """
    _check_shapes(q, k, k, features, key_padding_mask)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, features = _upcast(q, k, features)
        return naive_attention_weights(q, k, features, causal, kernel, key_padding_mask)


def _upcast(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """float32, or float64 when the inputs are float64 (gradcheck, reference computations)."""
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    return [t.to(dtype) for t in tensors]


def _check_size(name: str, size) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"{name} must be a positive int, got {size!r}")


def _check_shapes(q, k, v, features, key_padding_mask) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            "expected q, k of shape (batch, heads, length, dim_head) and v sharing the first "
            f"three dims, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if features.dim() != 2 or features.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"features must be (nb_features, dim_head={q.shape[-1]}), got {tuple(features.shape)}"
        )
    if key_padding_mask is not None and (
        key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (q.shape[0], q.shape[2])
    ):
        raise ValueError(
            f"key_padding_mask must be bool (batch, length) = {(q.shape[0], q.shape[2])}, "
            f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
        )


def _bidirectional_linear_attention(phi_q, phi_k, log_scale_k, v_ext):
    """φ(Q) (φ(K)ᵀ [V 1]): (B,H,L,m) x (B,H,m,d+1)."""
    if log_scale_k is not None:
        # True key features are phi_k·exp(s); shifting s by its max (a constant that cancels)
        # keeps every weight ≤ 1. Folded into V: (L, d+1) multiplies instead of (L, m).
        shift = log_scale_k.detach().amax(-1, keepdim=True)
        v_ext = v_ext * torch.exp(log_scale_k - shift).unsqueeze(-1)
    context = phi_k.transpose(-1, -2) @ v_ext
    return phi_q @ context


def causal_linear_attention(phi_q, phi_k, log_scale_k, v_ext, chunk: int, context=None, shift=None):
    """Causal φ(Q)·prefix-sums of φ(K)ᵀ[V 1] without an (L, m, d) tensor, all chunks at once.

    Positions are cut into N chunks of C (scan.py). Inside a chunk the masked (C, C) product
    is formed directly; the state each chunk reads is one scan over the N chunk states.
    Memory O(L·(C + m) + N·m·d), time O(L·m·d + L·C·(m + d) + N²·m·d); autograd saves the same.

    Key scales s_j are shifted by the running max M_i = max_{j'≤i} s_j' (never by a max over
    future keys): every exponent is ≤ 0 and output i depends on keys ≤ i only, also in
    floating point. The state of chunk n is kept relative to E_n = M at its last row.
    ``context`` (B, H, m, e) and ``shift`` (B, H) are a state to start from (relative to
    ``shift``; None: no keys yet). Returns [numerator, denominator] (B, H, L, e) and the
    state after the last position, (context, shift); shift stays None for unscaled features.
    """
    b, h, length, m = phi_q.shape
    e = v_ext.shape[-1]
    size = min(chunk, length)
    n = -(-length // size)
    pad = n * size - length
    pq, pk, ve = (pad_positions(t, pad, -2).view(b, h, n, size, -1) for t in (phi_q, phi_k, v_ext))
    decays = ChunkDecays(None)
    if log_scale_k is not None:
        if shift is None:
            shift = phi_q.new_full((b, h), MASKED_LOG_SCALE)
        s = pad_positions(log_scale_k, pad, -1, MASKED_LOG_SCALE)
        running = running_max(s, shift)  # M_i
        # Key j's scale relative to M_j, folded into v' (an (L, e) product, not (L, m)).
        ve = ve * torch.exp(s - running).view(b, h, n, size, 1)
        decays = ChunkDecays(running.view(b, h, n, size), shift)
    states = pk.transpose(-1, -2) @ scaled(ve, decays.to_end)  # (B, H, N, m, e)
    prefixes, final = chunk_prefixes(states, decays.scan, context, final=True)
    scores = decays.mask(pq @ pk.transpose(-1, -2))  # (B, H, N, C, C)
    out = scaled(pq @ prefixes, decays.from_prev, True) + scores @ ve
    end = shift if decays.end is None else decays.end
    return out.view(b, h, n * size, e)[:, :, :length], (final, end)
