"""Causal FAVOR+ on flash-linear-attention's chunked Triton kernels (CUDA, ``fla-core``).

fla computes, per (batch, head), o_t = scale·q_tᵀ S_t with S_t = exp(g_t)·S_{t−1} + k_t v_tᵀ,
tensors laid out [B, T, H, ·] (FLA_VERSION; older releases took a ``head_first`` flag
instead, so the version is pinned and checked). Causal FAVOR+ maps onto it exactly, with
v' = [v, 1] so the last output column is the denominator:
  relu     chunk_linear_attn(φ(q), φ(k), v', scale=1, normalize=False)
  softmax  chunk_simple_gla(φ(q), κ̃, v', g, scale=1): key j's features relative to the
           running max M_j = max_{j'≤j} s_j' of the key log-scales, κ̃_j = φ_k_j·exp(s_j − M_j),
           and the gate g_j = M_{j−1} − M_j ≤ 0 rescales the state from M_{j−1} to M_j, so
           S_t is the prefix relative to M_t (as in scan.py and recurrent.FavorState).
           Before the first real key the state is zero and M at the floor: gate 0 there, not
           floor − M_j (whose in-chunk cumulative sums would be −inf − −inf = NaN).
A carried state is fla's [B, H, K, V] state as is: FavorState.context, relative to its shift.
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import lru_cache
from typing import NamedTuple

import torch

from .phi import FUSED_KERNELS, MASKED_LOG_SCALE
from .scan import running_max

FLA_VERSION = "0.6.0"  # the fla-core release whose layout and arguments this module uses
DISABLE_ENV = "PROTEINPERF_FLA"  # "0": always the PyTorch path


class FlaKernels(NamedTuple):
    chunk_linear_attn: object
    chunk_simple_gla: object


@lru_cache(maxsize=1)
def fla_kernels() -> FlaKernels | None:
    """fla's two kernels, or None (PyTorch path) when fla-core is missing or not FLA_VERSION."""
    try:
        fla = importlib.import_module("fla")
        linear_attn = importlib.import_module("fla.ops.linear_attn")
        simple_gla = importlib.import_module("fla.ops.simple_gla")
    except ImportError:
        return None
    version = getattr(fla, "__version__", "unknown")
    if version != FLA_VERSION:
        warnings.warn(
            f"fla-core {version} is installed, proteinperf uses {FLA_VERSION} (its tensor "
            "layout changed between releases): causal FAVOR+ runs on the PyTorch path; "
            f"pip install fla-core=={FLA_VERSION}",
            stacklevel=2,
        )
        return None
    return FlaKernels(linear_attn.chunk_linear_attn, simple_gla.chunk_simple_gla)


def use_fla(x: torch.Tensor, kernel: str) -> bool:
    """Whether causal FAVOR+ of ``x`` runs on fla: CUDA, not float64 (Triton's dots have no
    float64), a fused kernel, fla-core FLA_VERSION importable, and not switched off."""
    return (
        x.is_cuda
        and x.dtype != torch.float64
        and kernel in FUSED_KERNELS
        and os.environ.get(DISABLE_ENV, "1") != "0"
        and fla_kernels() is not None
    )


def to_fla(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, ·) -> fla's (B, L, H, ·), contiguous."""
    return x.transpose(1, 2).contiguous()


def from_fla(x: torch.Tensor) -> torch.Tensor:
    """fla's (B, L, H, ·) -> (B, H, L, ·)."""
    return x.transpose(1, 2)


def running_max_gates(
    log_scale_k: torch.Tensor, shift: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, g), both (B, H, L): M_j = max(shift, s_1..s_j) (detached: the shift cancels), and
    g_j = M_{j−1} − M_j (M_0 = shift, MASKED_LOG_SCALE for no keys), 0 while M_{j−1} is
    at the floor."""
    if shift is None:
        shift = log_scale_k.new_full(log_scale_k.shape[:-1], MASKED_LOG_SCALE)
    running = running_max(log_scale_k, shift)
    before = torch.cat([shift.unsqueeze(-1), running[..., :-1]], -1)
    gates = torch.where(before > MASKED_LOG_SCALE, before - running, torch.zeros_like(running))
    return running, gates


def fla_causal_linear_attention(
    phi_q: torch.Tensor,  # (B, H, L, m)
    phi_k: torch.Tensor,  # (B, H, L, m), zero for padded keys
    log_scale_k: torch.Tensor | None,  # (B, H, L), MASKED_LOG_SCALE for padded keys; relu: None
    v_ext: torch.Tensor,  # (B, H, L, e): [v, 1]
    context: torch.Tensor | None = None,  # (B, H, m, e): a state to start from
    shift: torch.Tensor | None = None,  # (B, H): what ``context`` is relative to
    kernels: FlaKernels | None = None,
):
    """``favor.causal_linear_attention`` on fla's kernels: [numerator, denominator]
    (B, H, L, e) and the state after the last position (context, shift)."""
    kernels = kernels or fla_kernels()
    if kernels is None:
        raise RuntimeError(f"fla-core {FLA_VERSION} is not importable")
    q, v = to_fla(phi_q), to_fla(v_ext)
    if log_scale_k is None:
        out, final = kernels.chunk_linear_attn(
            q,
            to_fla(phi_k),
            v,
            scale=1.0,
            initial_state=context,
            output_final_state=True,
            normalize=False,
        )
        return from_fla(out), (final, shift)
    if context is not None and shift is None:
        raise ValueError("a carried state of the softmax kernel needs its shift")
    running, gates = running_max_gates(log_scale_k, shift)
    kappa = phi_k * torch.exp(log_scale_k - running).unsqueeze(-1)  # ≤ 1, 0 for padded keys
    out, final = kernels.chunk_simple_gla(
        q,
        to_fla(kappa),
        v,
        g=gates.transpose(1, 2).contiguous(),  # (B, L, H)
        scale=1.0,
        initial_state=context,
        output_final_state=True,
    )
    return from_fla(out), (final, running[..., -1])
