"""Attention as a recurrence for decoding: the fixed-size FAVOR+ prefix state and the KV cache.

Causal FAVOR+ (Choromanski et al., 2021, Sec. 2.7) only ever needs, per (batch, head), the
prefix sums of the key features against [v, 1]:

    S_n = Σ_{j≤n} φ(k_j) [v_j, 1]ᵀ   (m × (d_v + 1)),
    out_i = φ(q_i)ᵀ S_i[:, :d_v] / φ(q_i)ᵀ S_i[:, d_v]

so decoding carries S (a constant m·(d_v+1) numbers) instead of all past keys and values.
For the exponential kernels the true key features are phi_k·exp(s_j) (``feature_maps``'s
scaled form); S is kept relative to E_n = max_{j≤n} s_j, the same running max that the chunked
causal kernel (``blockwise.CausalFavor``) uses, so every exponent is ≤ 0 however long the
sequence: S_n = Σ_{j≤n} exp(s_j − E_n) phi_k_j [v_j, 1]ᵀ. Query i reads S_i, which is relative
to M_i = E_i; the same shift in numerator and denominator makes outputs identical to the full
causal forward (up to float rounding), including its DENOMINATOR_EPS.

Exact softmax attention decodes with a KV cache instead: past keys and values, growing with
every token. Both states are plain tuples of tensors; the functions here are pure except that
``kv_step`` writes into the cache's preallocated buffers (amortised O(1) appends).

Decoding one token is ~50 tiny ops per layer, so its speed is per-op overhead and memory
traffic, not FLOPs: without autograd, ``favor_step`` of one position takes ``_favor_token``, the
same math in fewer ops that updates the state in place; ``kv_step`` writes into its buffers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .favor import DENOMINATOR_EPS, causal_linear_attention, default_chunk
from .fla_backend import fla_causal_linear_attention, use_fla
from .phi import (
    FUSED_KERNELS,
    MASKED_LOG_SCALE,
    RELU_EPSILON,
    check_kernel_for_causal,
    feature_maps,
)


class FavorState(NamedTuple):
    """Prefix state of causal FAVOR+ after n keys, per (batch, head)."""

    context: torch.Tensor  # (B, H, m, d_v + 1): Σ exp(s_j − shift) phi_k_j [v_j, 1]ᵀ
    shift: torch.Tensor  # (B, H): E_n = max_{j≤n} s_j (MASKED_LOG_SCALE before any key)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self)


def init_state(
    batch: int, heads: int, nb_features: int, dim_v: int, device=None, dtype=torch.float32
) -> FavorState:
    """The empty prefix (no keys yet)."""
    return FavorState(
        torch.zeros(batch, heads, nb_features, dim_v + 1, device=device, dtype=dtype),
        torch.full((batch, heads), MASKED_LOG_SCALE, device=device, dtype=dtype),
    )


def _upcast(*tensors):
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    return [t.to(dtype) for t in tensors]


def update_state(
    state: FavorState,
    k: torch.Tensor,  # (B, H, C, d)
    v: torch.Tensor,  # (B, H, C, d_v)
    features: torch.Tensor,  # (m, d)
    kernel: str = "softmax",
    key_padding_mask: torch.Tensor | None = None,  # (B, C) bool, True = real key
) -> FavorState:
    """The state after also seeing keys/values k, v (padded keys leave it unchanged)."""
    k, v, features = _upcast(k, v, features)
    # Only the key side of feature_maps is used; the query features of k are discarded.
    _, phi_k, log_scale = feature_maps(k, k, features, kernel, key_padding_mask)
    v_ext = F.pad(v, (0, 1), value=1.0)
    return _absorb(state, phi_k, log_scale, v_ext)


def _absorb(state, phi_k, log_scale, v_ext) -> FavorState:
    context, shift = state
    if log_scale is None:  # relu: features are not scaled, nothing to shift
        return FavorState(context + phi_k.transpose(-1, -2) @ v_ext, shift)
    new_shift = torch.maximum(shift, log_scale.amax(-1))  # E_n
    weights = torch.exp(log_scale - new_shift.unsqueeze(-1)).unsqueeze(-1)  # (B, H, C, 1), ≤ 1
    context = context * torch.exp(shift - new_shift)[..., None, None]
    return FavorState(context + phi_k.transpose(-1, -2) @ (v_ext * weights), new_shift)


def read_state(
    state: FavorState, q: torch.Tensor, features: torch.Tensor, kernel: str = "softmax"
) -> torch.Tensor:
    """Attention output (B, H, C, d_v) of queries q that see every key in ``state``."""
    (q, features), out_dtype = _upcast(q, features), q.dtype
    phi_q, _, _ = feature_maps(q, q, features, kernel, None)
    out = phi_q @ state.context
    return (out[..., :-1] / (out[..., -1:] + DENOMINATOR_EPS)).to(out_dtype)


def favor_step(
    state: FavorState,
    q: torch.Tensor,  # (B, H, C, d): the next C positions' queries ...
    k: torch.Tensor,  # ... keys (B, H, C, d)
    v: torch.Tensor,  # ... and values (B, H, C, d_v)
    features: torch.Tensor,
    kernel: str = "softmax",
    key_padding_mask: torch.Tensor | None = None,  # (B, C)
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, FavorState]:
    """Causal FAVOR+ of C new positions after the prefix in ``state``: (out, new state).

    Position i sees the prefix and the new positions ≤ i. Several positions run in chunks of
    ``chunk_size`` (None: ``favor.default_chunk``), all at once
    (``favor.causal_linear_attention``): each chunk forms its masked product directly and
    reads the state before it from one scan over the chunks, so a long prompt costs
    O(C + m + m·d/C) memory per position. One position (decoding) joins the state directly;
    without autograd, in the state's dtype and for FUSED_KERNELS it takes the fused
    ``_favor_token``, which updates the state IN PLACE (the returned state shares its
    tensors): continue from the returned state, never from an old one.
    """
    if q.shape[-2] == 1 and _fused_token_applies(state.context, q, k, v, features, kernel):
        return _favor_token(state, q, k, v, features, kernel, key_padding_mask)  # causal ones
    check_kernel_for_causal(kernel)
    out_dtype = v.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, features = _upcast(q, k, v, features)
        state = FavorState(*_upcast(*state))
        phi_q, phi_k, log_scale = feature_maps(q, k, features, kernel, key_padding_mask)
        v_ext = F.pad(v, (0, 1), value=1.0)
        if q.shape[-2] == 1:  # one token (~10 ops): it joins the state, then reads it
            state = _absorb(state, phi_k, log_scale, v_ext)
            out = phi_q @ state.context
        else:
            if chunk_size is None:
                chunk_size = default_chunk(q.shape[-2], phi_q.shape[-1], v.shape[-1], q.device)
            if use_fla(q, kernel):
                out, state = fla_causal_linear_attention(
                    phi_q, phi_k, log_scale, v_ext, state.context, state.shift
                )
            else:
                out, state = causal_linear_attention(
                    phi_q, phi_k, log_scale, v_ext, chunk_size, state.context, state.shift
                )
            # The scan's final state is a view into all the chunk prefixes: copied out, so that
            # the state holds only its own numbers and one-token steps update it contiguously.
            state = FavorState(*(t.contiguous() for t in state))
        out = out[..., :-1] / (out[..., -1:] + DENOMINATOR_EPS)
    return out.to(out_dtype), state


# --- one decoding position, fused --------------------------------------------------------


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def _fused_token_applies(context, q, k, v, features, kernel) -> bool:
    """No autograd, nothing to upcast, a state that may be written in place."""
    if kernel not in FUSED_KERNELS or torch.is_grad_enabled() or _autocast_on(q.device.type):
        return False
    if not q.dtype == k.dtype == v.dtype == features.dtype == context.dtype:
        return False
    return torch.is_inference_mode_enabled() or not context.is_inference()


def _favor_token(
    state: FavorState,
    q: torch.Tensor,  # (B, H, 1, d)
    k: torch.Tensor,  # (B, H, 1, d)
    v: torch.Tensor,  # (B, H, 1, d_v)
    features: torch.Tensor,  # (m, d)
    kernel: str,
    key_padding_mask: torch.Tensor | None,  # (B, 1) bool: False = a padded position
) -> tuple[torch.Tensor, FavorState]:
    """``favor_step`` of one position in ~15 fused ops: (out (B, H, 1, d_v), state).

    Same math as ``feature_maps`` + ``_absorb`` + read, but q and k share one feature
    projection and the key's weight exp(s − E_n) goes straight into its features. The prefix
    sums are updated IN PLACE.
    """
    context, shift = state
    b, h, _, d = q.shape
    m, e = context.shape[-2:]
    qk = torch.cat((q, k), 1).mul_(d**-0.25)  # (B, 2H, 1, d): feature_maps' normaliser
    proj = F.linear(qk.view(-1, d), features).view(b, 2, h, m)
    keep = None if key_padding_mask is None else key_padding_mask[:, 0]  # (B,)
    if kernel == "relu":
        phi = proj.relu_().add_(RELU_EPSILON)
    else:  # softmax
        # exp(ωᵀx − |x|²/2) as in feature_maps: the query's own shift cancels in out; the key's
        # log-scale s = max_ω ωᵀk − |k|²/2 joins the running max E_n = max(E_{n−1}, s).
        peak = proj.amax(-1)  # (B, 2, H)
        key = qk.view(b, 2, h, d).select(1, 1)
        sq = torch.linalg.vecdot(key, key)  # (B, H): |k|²
        peak_k = peak.select(1, 1)
        log_scale = torch.sub(peak_k, sq, alpha=0.5)
        if keep is not None:
            log_scale.masked_fill_(~keep.unsqueeze(-1), MASKED_LOG_SCALE)
        new_shift = torch.maximum(shift, log_scale)
        # E_{n−1} → E_n. Late in a sequence the running max rarely moves, and a rescaling by
        # exp(0) = 1 changes nothing: where reading the flag costs no device sync (a CPU),
        # skip that read and write of the whole state, which decoding pays per layer.
        if context.device.type != "cpu" or bool((log_scale > shift).any()):
            context.mul_(torch.sub(shift, new_shift).exp_().view(b, h, 1, 1))
        # The key's features times exp(s − E_n) ≤ 1 in one exp: ωᵀk − |k|²/2 − E_n.
        torch.add(new_shift, sq, alpha=0.5, out=peak_k)
        phi = proj.sub_(peak.unsqueeze(-1)).exp_()
        shift = new_shift
    phi_q, phi_k = phi.unbind(1)  # (B, H, m)
    if keep is not None:
        phi_k = torch.where(keep.view(b, 1, 1), phi_k, 0.0)
    v_ext = torch.constant_pad_nd(v.view(b, h, -1), (0, 1), 1.0)  # (B, H, d_v + 1): F.pad in 1 call
    context.addcmul_(phi_k.unsqueeze(-1), v_ext.unsqueeze(-2))  # += φ(k) [v, 1]ᵀ
    out = torch.bmm(phi_q.reshape(b * h, 1, m), context.view(b * h, m, e)).view(b, h, 1, e)
    return out[..., :-1] / (out[..., -1:] + DENOMINATOR_EPS), FavorState(context, shift)


# --- exact softmax: KV cache ---------------------------------------------------------------


class KVCache(NamedTuple):
    """Past keys/values of exact attention in buffers of ``capacity`` slots, ``length`` used."""

    k: torch.Tensor  # (B, H, capacity, d)
    v: torch.Tensor  # (B, H, capacity, d_v)
    keep: torch.Tensor  # (B, capacity) bool: slot holds a real key
    length: int

    def nbytes(self) -> int:
        """Bytes of the used slots (the buffers hold up to 2x more, amortising growth)."""
        per_slot = sum(t.numel() * t.element_size() for t in self[:3]) // max(1, self.k.shape[2])
        return per_slot * self.length


def init_kv_cache(batch, heads, dim, dim_v, device=None, dtype=torch.float32, capacity=64):
    return KVCache(
        torch.zeros(batch, heads, capacity, dim, device=device, dtype=dtype),
        torch.zeros(batch, heads, capacity, dim_v, device=device, dtype=dtype),
        torch.zeros(batch, capacity, dtype=torch.bool, device=device),
        0,
    )


def _reserve(cache: KVCache, extra: int) -> KVCache:
    need = cache.length + extra
    if need <= cache.k.shape[2]:
        return cache
    capacity = max(need, 2 * cache.k.shape[2])

    def grow(t, dim):
        shape = list(t.shape)
        shape[dim] = capacity
        out = t.new_zeros(shape)
        out.narrow(dim, 0, cache.length).copy_(t.narrow(dim, 0, cache.length))
        return out

    return KVCache(grow(cache.k, 2), grow(cache.v, 2), grow(cache.keep, 1), cache.length)


def kv_step(
    cache: KVCache,
    q: torch.Tensor,  # (B, H, C, d)
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,  # (B, C)
) -> tuple[torch.Tensor, KVCache]:
    """Causal softmax attention of C new positions over the cache and themselves.

    Appends k, v to the cache in place (the returned cache shares the buffers; do not reuse
    the old tuple).
    """
    b, _, size, _ = q.shape
    cache = _reserve(cache, size)
    lo, hi = cache.length, cache.length + size
    cache.k[:, :, lo:hi] = k
    cache.v[:, :, lo:hi] = v
    cache.keep[:, lo:hi] = True if key_padding_mask is None else key_padding_mask
    cache = cache._replace(length=hi)
    keys, values = cache.k[:, :, :hi], cache.v[:, :, :hi]
    if size == 1 and bool(cache.keep[:, :hi].all()):
        return F.scaled_dot_product_attention(q, keys, values), cache
    # Query c (slot lo + c) sees real slots ≤ lo + c.
    slots = torch.arange(hi, device=q.device)
    causal = slots[None, :] <= (lo + torch.arange(size, device=q.device))[:, None]  # (C, L)
    allowed = causal[None, None] & cache.keep[:, None, None, :hi]  # (B, 1, C, L)
    empty = ~allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed | empty)
    return out.masked_fill(empty, 0.0), cache


__all__ = [
    "FavorState",
    "KVCache",
    "favor_step",
    "init_kv_cache",
    "init_state",
    "kv_step",
    "read_state",
    "update_state",
]
