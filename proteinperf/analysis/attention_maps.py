"""Explicit attention matrices of a Performer, for analysis only.

A FAVOR+ layer never forms its L×L attention; here it is materialised on purpose as
D⁻¹ φ(Q) φ(K)ᵀ (causal-masked for causal models) from the layer's own features, together with
the exact softmax(QKᵀ/√d) of the very same Q and K, so the approximation can be measured on a
real model, per layer and head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from proteinperf.attention import (
    draw_features,
    favor_attention_weights,
    softmax_attention_weights,
)
from proteinperf.errors import ConfigError
from proteinperf.layers import block_index, resolve_layers
from proteinperf.model import ModelConfig, PerformerLM

# FAVOR kernels whose features give an unbiased estimate of the softmax kernel exp(q·k/√d) (ReLU
# features define another attention, the paper's "generalised attention", and estimate nothing).
SOFTMAX_ESTIMATORS = ("softmax", "softmax_hyp", "softmax_opt", "trig")

# Keeps the relative Frobenius error finite for an all-zero reference (never met in practice).
_TINY = 1e-12


@dataclass
class AttentionMaps:
    """Attention of selected layers and heads for one sequence: tensors (layers, heads, L, L).
    ``layers`` are layer numbers as in embed (1 = the first transformer block; see
    proteinperf.layers), ``heads`` 0-based.

    ``model`` is what the network actually uses (``favor`` for a FAVOR model, ``exact`` for a
    softmax one); ``favor`` is None for exact-attention models.
    """

    exact: torch.Tensor
    favor: torch.Tensor | None
    layers: list[int]
    heads: list[int]
    causal: bool
    kernel: str | None

    @property
    def model(self) -> torch.Tensor:
        return self.exact if self.favor is None else self.favor


def frame_sequence(sequence: str, alphabet, max_length: int | None = None) -> torch.Tensor:
    """(1, L) token ids: <cls> residues <eos>, residues cut to ``max_length`` if given."""
    residues = sequence[:max_length] if max_length else sequence
    return torch.tensor([alphabet.encode_framed(residues)], dtype=torch.long)


def select(indices: Sequence[int] | None, n: int, what: str) -> list[int]:
    """Validated 0-based indices, e.g. of heads (all of ``range(n)`` when None); negative ones
    count from the end (-1 = the last). Layers are numbered by proteinperf.layers instead."""
    if indices is None:
        return list(range(n))
    chosen = [int(i) for i in indices]
    bad = [i for i in chosen if not -n <= i < n]
    if bad or not chosen:
        raise ConfigError(f"{what} must be in 0..{n - 1} (or -{n}..-1), got {list(indices)}")
    return [i % n for i in chosen]


def select_numbered(numbers: Sequence[int] | None, n: int, what: str) -> list[int]:
    """0-based indices of items numbered from 1, as figures number heads (-1 = the last; all
    of them when None)."""
    if numbers is None:
        return list(range(n))
    chosen = [int(i) for i in numbers]
    bad = [i for i in chosen if not (1 <= i <= n or -n <= i <= -1)]
    if bad or not chosen:
        raise ConfigError(
            f"{what} are numbered 1..{n} (or -{n}..-1 from the end), got {list(numbers)}"
        )
    return [i - 1 if i > 0 else i % n for i in chosen]


@torch.no_grad()
def attention_inputs(
    model: PerformerLM, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(q, k) of every layer, 0-based, each (B, H, L, d_head) after rotary, model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        out = model(tokens, padding_mask=padding_mask, return_attention_inputs=True)
    finally:
        model.train(was_training)
    inputs = out["attention_inputs"]
    return [(inputs[i]["q"], inputs[i]["k"]) for i in sorted(inputs)]


def layer_attention(
    layer,
    q: torch.Tensor,
    k: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(implicit FAVOR matrix or None, exact softmax matrix) of one SelfAttention layer."""
    exact = softmax_attention_weights(q, k, causal=layer.causal, key_padding_mask=key_padding_mask)
    if not layer.is_favor:
        return None, exact
    return layer.attention_weights(q, k, key_padding_mask), exact


def _one_sequence_inputs(model, tokens, layers, heads) -> tuple[list[int], list[int], list]:
    """(layers resolved, 0-based heads, (q, k) of every layer) of one sequence, tokens (1, L)."""
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"expected tokens of shape (1, L), got {tuple(tokens.shape)}")
    config = model.config
    layers = resolve_layers(layers, config.n_layers, embeddings=False)
    heads = select(heads, config.n_heads, "heads")
    inputs = attention_inputs(model, tokens.to(next(model.parameters()).device))
    return layers, heads, inputs


@torch.no_grad()
def attention_maps(
    model: PerformerLM,
    tokens: torch.Tensor,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> AttentionMaps:
    """Exact and (for FAVOR models) implicit FAVOR attention of one sequence, tokens (1, L)."""
    layers, heads, inputs = _one_sequence_inputs(model, tokens, layers, heads)
    exact, favor = [], []
    for layer in layers:
        block = block_index(layer)
        q, k = inputs[block]
        f, e = layer_attention(model.attention_layers[block], q[:, heads], k[:, heads])
        exact.append(e[0].cpu())
        if f is not None:
            favor.append(f[0].cpu())
    return AttentionMaps(
        exact=torch.stack(exact),
        favor=torch.stack(favor) if favor else None,
        layers=layers,
        heads=heads,
        causal=model.config.causal,
        kernel=model.config.favor_kernel,
    )


def approximation_error(approx: torch.Tensor, exact: torch.Tensor) -> dict[str, torch.Tensor]:
    """Errors of attention matrices (..., L, L) reduced over the last two dims.

    tv: mean over queries of the total variation distance ½Σ_j|a_ij − e_ij| between the two
    attention distributions of a query (0 = same, 1 = disjoint); mse: mean squared error over
    all entries (the paper's Fig. 4 metric); rel_frobenius: ‖A − E‖_F / ‖E‖_F.
    """
    diff = approx.float() - exact.float()
    return {
        "tv": 0.5 * diff.abs().sum(-1).mean(-1),
        "mse": diff.pow(2).mean((-1, -2)),
        "rel_frobenius": diff.flatten(-2).norm(dim=-1)
        / (exact.float().flatten(-2).norm(dim=-1) + _TINY),
    }


def approximates_softmax(kernel: str | None) -> bool:
    """Whether FAVOR attention with this kernel is an estimate of softmax attention, so that
    its difference from exact softmax is an approximation error (False for exact models)."""
    return kernel in SOFTMAX_ESTIMATORS


@torch.no_grad()
def softmax_estimate(
    model: PerformerLM,
    tokens: torch.Tensor,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    nb_features: int | None = None,
    kernel: str = "softmax",
    seed: int = 0,
) -> torch.Tensor:
    """FAVOR estimate (layers, heads, L, L) of the softmax attention of the model's own Q and K
    for one sequence, tokens (1, L), with fresh features (``nb_features``, default the model's;
    orthogonality and scaling as the model's config), causal if the model is. For any model,
    whatever attention it computes: the estimate to compare with ``attention_maps(...).exact``
    when the model's own kernel estimates no softmax (ReLU features, exact attention)."""
    if not approximates_softmax(kernel):
        raise ConfigError(
            f"kernel {kernel!r} estimates no softmax; use one of {SOFTMAX_ESTIMATORS}"
        )
    config = model.config
    layers, heads, inputs = _one_sequence_inputs(model, tokens, layers, heads)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for layer in layers:
        q, k = inputs[block_index(layer)]
        features = draw_features(
            int(nb_features or config.nb_features),
            q.shape[-1],
            orthogonal=config.orthogonal_features,
            scaling=config.feature_scaling,
            generator=generator,
            device=q.device,
        )
        favor = favor_attention_weights(
            q[:, heads], k[:, heads], features, causal=config.causal, kernel=kernel
        )
        out.append(favor[0].cpu())
    return torch.stack(out)


def untrained_control(config: ModelConfig, seed: int = 0) -> PerformerLM:
    """A freshly initialised model of the same shape: the control of every statistic."""
    # fork_rng: seeding the initialisation must not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PerformerLM(dataclasses.replace(config))
    model.redraw_features(seed, 0)
    return model.eval()


@torch.no_grad()
def approximation_curve(
    q: torch.Tensor,
    k: torch.Tensor,
    nb_features: Sequence[int],
    kernel: str = "softmax",
    orthogonal: bool = True,
    scaling: str = "chi",
    n_draws: int = 5,
    causal: bool = False,
    metric: str = "mse",
    seed: int = 0,
) -> np.ndarray:
    """Error of FAVOR attention against exact softmax, (len(nb_features), n_draws).

    Every draw uses fresh features (seeded by ``seed``, the feature count and the draw), so
    curves for different kernels or feature types share nothing but Q, K and the seed.
    Returns the ``metric`` of ``approximation_error`` averaged over batch and heads.
    """
    exact = softmax_attention_weights(q, k, causal=causal)
    errors = np.zeros((len(nb_features), n_draws))
    for row, m in enumerate(nb_features):
        for draw in range(n_draws):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + m * 1009 + draw)
            features = draw_features(
                int(m),
                q.shape[-1],
                orthogonal=orthogonal,
                scaling=scaling,
                generator=generator,
                device=q.device,
            )
            favor = favor_attention_weights(q, k, features, causal=causal, kernel=kernel)
            errors[row, draw] = approximation_error(favor, exact)[metric].mean().item()
    return errors


__all__ = [
    "SOFTMAX_ESTIMATORS",
    "AttentionMaps",
    "approximates_softmax",
    "approximation_curve",
    "approximation_error",
    "attention_inputs",
    "attention_maps",
    "frame_sequence",
    "layer_attention",
    "select",
    "softmax_estimate",
    "untrained_control",
]
