"""Random projection matrices for FAVOR+ (Choromanski et al., 2021, Sec. 2.4)."""

from __future__ import annotations

import math

import torch

from proteinperf.constants import FEATURE_SCALINGS as SCALINGS  # import-free names


def _orthogonal_block(dim: int, generator: torch.Generator | None) -> torch.Tensor:
    """A (dim, dim) Haar-random orthogonal matrix (QR of a Gaussian, signs fixed by diag(R))."""
    gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    # Without the sign correction QR's output is not Haar-distributed (Mezzadri, 2007).
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def draw_features(
    nb_features: int,
    dim: int,
    orthogonal: bool = True,
    scaling: str = "chi",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw the (nb_features, dim) matrix W of random directions ω_1..ω_m.

    orthogonal=True gives orthogonal random features (ORF): stacked blocks of orthogonal rows,
    so rows within a block are exactly orthogonal and m may exceed d. The rows are then given
    lengths so that each row is marginally N(0, I_d): chi-distributed norms ("chi", keeps the
    estimator unbiased) or the deterministic √d ("sqrt_d", the paper's regularised variant).
    orthogonal=False gives iid Gaussian rows (scaling "sqrt_d" then fixes their length too).
    Drawn on the CPU in float64 so a generator gives the same matrix on every device.
    """
    if nb_features < 1 or dim < 1:
        raise ValueError(f"nb_features and dim must be positive, got {nb_features} and {dim}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    if orthogonal:
        n_blocks = math.ceil(nb_features / dim)
        rows = torch.cat([_orthogonal_block(dim, generator) for _ in range(n_blocks)])
        directions = rows[:nb_features]  # unit-norm rows
        if scaling == "chi":
            norms = torch.randn(nb_features, dim, generator=generator, dtype=torch.float64)
            features = directions * norms.norm(dim=1, keepdim=True)
        else:
            features = directions * math.sqrt(dim)
    else:
        features = torch.randn(nb_features, dim, generator=generator, dtype=torch.float64)
        if scaling == "sqrt_d":
            features = features / features.norm(dim=1, keepdim=True) * math.sqrt(dim)
    return features.to(device=device, dtype=dtype)
