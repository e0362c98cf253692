"""Random feature maps φ for FAVOR+ and friends (Choromanski et al., 2021, Sec. 2-3).

Every map returns features in a *scaled* form that cannot overflow: the true key features are
``phi_k * exp(log_scale_k)[..., None]``, with ``phi_k <= 1`` for the exponential kernels. The
attention functions combine the per-key scales with a max-shift, so large |q|, |k| never
produce inf/NaN. Per-query scales are dropped: they cancel between numerator and denominator.
Constant factors (1/√m, h(x)'s constants, FAVOR++'s D) are dropped for the same reason.
"""

from __future__ import annotations

import torch

# The one import of ours in attention/: an import-free module of names (the CLI lists them too).
from proteinperf.constants import KERNELS

RELU_EPSILON = 1e-3  # the ε in ReLU(xωᵀ) + ε, keeps the denominator away from zero
MASKED_LOG_SCALE = torch.finfo(torch.float32).min  # a padded key: exp(. - max) == 0
# The kernels with hand-written fast paths: chunked training (blockwise), fla on CUDA and
# one-token decoding (recurrent); the others run the generic feature-map code.
FUSED_KERNELS = ("softmax", "relu")
DENOMINATOR_EPS = 1e-12  # only guards 0/0 (e.g. a query that sees no unmasked key)


def _max_shifted_exp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(logits - max) over the feature axis, and the (detached) max that was removed."""
    shift = logits.detach().amax(dim=-1, keepdim=True)
    # In place: matmul's backward does not need its output, and exp_ keeps its result for its
    # own backward, so the feature map costs one (L, m) buffer instead of three.
    return logits.sub_(shift).exp_(), shift.squeeze(-1)


def optimal_positive_parameter(
    q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """FAVOR++'s A (Likhosherstov et al., 2022, "Chefs' Random Tables", OPRF), per (batch, head).

    Features f(ω, x) = D·exp(A|ω|² + B ωᵀx − |x|²/2) with B = √(1−4A), D = (1−4A)^{d/4} are
    unbiased for exp(xᵀy) whenever A < 1/4. Minimising the log second moment averaged over all
    (q_i, k_j) pairs, with φ = mean_ij |q_i + k_j|², gives with s = 1 − 8A:
        d·s² − (d + 2φ)·s − 2φ = 0   ⇒   s = (d + 2φ + √((d + 2φ)² + 8dφ)) / (2d).
    φ = 0 gives A = 0, i.e. plain FAVOR+. Inputs are already scaled by d^-1/4, shape (B,H,L,d);
    padded positions are left out of the averages.
    """
    d = q.shape[-1]
    q, k = q.detach(), k.detach()
    if key_padding_mask is None:
        weights = torch.full(q.shape[:-1], 1.0 / q.shape[-2], dtype=q.dtype, device=q.device)
    else:  # padded positions (queries and keys alike) take no part in the statistics
        real = key_padding_mask[:, None, :].to(q.dtype)
        weights = (real / real.sum(-1, keepdim=True).clamp_min(1)).expand(q.shape[:-1])
    mean_q = (weights.unsqueeze(-1) * q).sum(-2)
    mean_k = (weights.unsqueeze(-1) * k).sum(-2)
    phi = (
        (weights * q.pow(2).sum(-1)).sum(-1)
        + (weights * k.pow(2).sum(-1)).sum(-1)
        + 2 * (mean_q * mean_k).sum(-1)
    )
    s = (d + 2 * phi + torch.sqrt((d + 2 * phi) ** 2 + 8 * d * phi)) / (2 * d)
    return (1 - s) / 8


def feature_maps(
    q: torch.Tensor,
    k: torch.Tensor,
    features: torch.Tensor,
    kernel: str = "softmax",
    key_padding_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Map q, k (B, H, L, d) to (phi_q, phi_k, log_scale_k) with phi_* of shape (B, H, L, m).

    ``kernel`` picks the estimator:
      softmax      positive random features exp(ωᵀx − |x|²/2) (FAVOR+, Lemma 1)
      softmax_hyp  hyperbolic positive features exp(±ωᵀx − |x|²/2) from m/2 directions (Lemma 1)
      softmax_opt  FAVOR++ optimised positive features, A chosen from these q and k
      relu         generalised attention ReLU(ωᵀx) + ε (the paper's "Performer-ReLU")
      trig         sin/cos features exp(|x|²/2)[sin ωᵀx, cos ωᵀx] from m/2 directions (FAVOR)
    The softmax kernels estimate exp(qᵀk/√d): q and k are scaled by d^-1/4 here.
    Padded keys (mask False) get zero features and log-scale MASKED_LOG_SCALE.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    d = q.shape[-1]
    if features.shape[-1] != d:
        raise ValueError(f"features have dim {features.shape[-1]} but q/k have dim_head {d}")
    q = q * d**-0.25
    k = k * d**-0.25
    paired = kernel in ("softmax_hyp", "trig")
    if paired and features.shape[0] < 2:
        raise ValueError(f"kernel {kernel!r} needs at least 2 features")
    w = features[: features.shape[0] // 2] if paired else features
    proj_q = q @ w.transpose(0, 1)
    proj_k = k @ w.transpose(0, 1)

    log_scale_k: torch.Tensor | None
    if kernel == "relu":
        phi_q = torch.relu(proj_q) + RELU_EPSILON
        phi_k = torch.relu(proj_k) + RELU_EPSILON
        log_scale_k = None
    elif kernel == "trig":
        phi_q = torch.cat([torch.sin(proj_q), torch.cos(proj_q)], dim=-1)
        phi_k = torch.cat([torch.sin(proj_k), torch.cos(proj_k)], dim=-1)
        log_scale_k = k.pow(2).sum(-1) / 2
    else:
        if kernel == "softmax_hyp":
            proj_q = torch.cat([proj_q, -proj_q], dim=-1)
            proj_k = torch.cat([proj_k, -proj_k], dim=-1)
        elif kernel == "softmax_opt":
            a = optimal_positive_parameter(q, k, key_padding_mask)[..., None, None]  # (B, H, 1, 1)
            b = torch.sqrt(1 - 4 * a)
            w_sq = w.pow(2).sum(-1)  # (m,)
            proj_q = b * proj_q + a * w_sq
            proj_k = b * proj_k + a * w_sq
        phi_q, _ = _max_shifted_exp(proj_q)
        phi_k, shift_k = _max_shifted_exp(proj_k)
        log_scale_k = shift_k - k.pow(2).sum(-1) / 2

    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, :]  # (B, 1, L)
        phi_k = phi_k * keep[..., None]
        if log_scale_k is not None:
            log_scale_k = log_scale_k.masked_fill(~keep, MASKED_LOG_SCALE)
    return phi_q, phi_k, log_scale_k


def check_kernel_for_causal(kernel: str) -> None:
    if kernel == "softmax_opt":
        raise ValueError(
            "kernel 'softmax_opt' picks its parameter from statistics of all keys, which would let "
            "a causal model see the future; use 'softmax' or 'softmax_hyp' for causal attention"
        )


__all__ = ["KERNELS", "feature_maps", "optimal_positive_parameter", "check_kernel_for_causal"]
