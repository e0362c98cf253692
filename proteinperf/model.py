"""Performer protein language model: config, attention layer (holds the random features), blocks.

The layout follows ESM-2 (pre-LayerNorm blocks, rotary q/k, final LayerNorm, RoBERTa LM head,
the same parameter names), so ESM-2 weights load unchanged and only the attention differs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from proteinperf.attention import (
    draw_features,
    favor_attention,
    favor_attention_weights,
    softmax_attention,
    softmax_attention_weights,
)
from proteinperf.attention.recurrent import (
    TOKEN_KERNELS,
    favor_step,
    favor_token_step,
    init_kv_cache,
    kv_step,
    kv_token_step,
)
from proteinperf.attention.recurrent import init_state as init_favor_state
from proteinperf.constants import ATTENTIONS, FEATURE_SCALINGS  # noqa: F401 (re-exported)
from proteinperf.errors import ConfigError, InputError
from proteinperf.layers import LayerDict, resolve_layers

POSITIONALS = ("learned", "sinusoidal", "rotary")
LM_HEADS = ("esm", "linear")
# ESM-2 trains with 15% masking of which 80% become <mask>; token dropout rescales embeddings
# so their expected norm does not depend on how many positions are masked.
TOKEN_DROPOUT_TRAIN_RATIO = 0.15 * 0.8


@dataclass
class ModelConfig:
    vocab_size: int = 33
    padding_idx: int = 1
    mask_idx: int = 32
    cls_idx: int = 0
    eos_idx: int = 2
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    d_ff: int = 1024
    dropout: float = 0.1
    max_len: int = 1024  # only for positional="learned"
    positional: str = "rotary"  # "learned" | "sinusoidal" | "rotary"
    attention: str = "favor_relu"  # "softmax" (exact) | "favor_<kernel>" for kernel in KERNELS
    nb_features: int = 256
    orthogonal_features: bool = True
    feature_scaling: str = "chi"
    redraw_interval: int = 1000  # optimizer steps; 0 = never
    causal: bool = False
    tie_embeddings: bool = True
    lm_head: str = "esm"  # "esm": dense -> GELU -> LayerNorm -> decoder + bias; "linear"
    final_layer_norm: bool = True  # ESM's emb_layer_norm_after
    qkv_bias: bool = True
    token_dropout: bool = False  # ESM-2's rescaling of <mask> embeddings
    layer_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def favor_kernel(self) -> str | None:
        """The FAVOR kernel name ("softmax", "relu", ...), or None for exact attention."""
        return self.attention.removeprefix("favor_") if self.attention != "softmax" else None

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """Build from a plain mapping (a checkpoint's model_config); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        def fail(message: str) -> None:
            raise ConfigError(f"invalid model config: {message}")

        if self.attention not in ATTENTIONS:
            fail(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.positional not in POSITIONALS:
            fail(f"positional must be one of {POSITIONALS}, got {self.positional!r}")
        if self.lm_head not in LM_HEADS:
            fail(f"lm_head must be one of {LM_HEADS}, got {self.lm_head!r}")
        if self.feature_scaling not in FEATURE_SCALINGS:
            fail(f"feature_scaling must be one of {FEATURE_SCALINGS}, got {self.feature_scaling!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
            if getattr(self, name) < 1:
                fail(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            fail(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.positional == "rotary" and self.head_dim % 2:
            fail(f"rotary embeddings need an even head dim, got {self.head_dim}")
        if self.positional == "sinusoidal" and self.d_model % 2:
            fail(f"sinusoidal embeddings need an even d_model, got {self.d_model}")
        for name in ("padding_idx", "mask_idx", "cls_idx", "eos_idx"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                fail(
                    f"{name} ({getattr(self, name)}) is outside the vocabulary [0, "
                    f"{self.vocab_size})"
                )
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout must be in [0, 1), got {self.dropout}")
        if self.redraw_interval < 0:
            fail(f"redraw_interval must be >= 0 (0 = never), got {self.redraw_interval}")
        kernel = self.favor_kernel
        if kernel is not None:
            if self.nb_features < 1:
                fail(f"nb_features must be positive, got {self.nb_features}")
            if kernel in ("softmax_hyp", "trig") and self.nb_features % 2:
                fail(
                    f"attention {self.attention!r} pairs its features: nb_features must be "
                    f"even, got {self.nb_features}"
                )
            if kernel == "softmax_opt" and self.causal:
                fail(
                    "favor_softmax_opt picks its parameter from all keys and cannot be causal; "
                    "use favor_softmax or favor_softmax_hyp"
                )


# --- positions --------------------------------------------------------------------------------


def rotary_inv_freq(dim: int, device=None) -> torch.Tensor:
    """θ_i = 10000^(-2i/dim), i < dim/2 (float32, as fair-esm computes it)."""
    return 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device).float() / dim))


def rotary_tables(length: int, dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (L, dim) for RoFormer rotary embeddings, fair-esm's layout.

    θ_i = 10000^(-2i/dim) for i < dim/2; the two halves of the head dim share frequencies
    (non-interleaved), so a vector is rotated as x·cos + rotate_half(x)·sin.
    """
    inv_freq = rotary_inv_freq(dim, device)
    t = torch.arange(length, device=device).float()
    freqs = torch.outer(t, inv_freq)  # (L, dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (L, dim)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (..., L, dim); cos, sin: (L, dim)."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def sinusoidal_embedding(length: int, dim: int, device=None) -> torch.Tensor:
    """(L, dim) fixed positions of Vaswani et al. (2017): [sin(t·θ_i), cos(t·θ_i)] halves."""
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=device).float() * (-math.log(10000.0) / dim)
    )
    angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


# --- random features --------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (splitmix64 finaliser), the same in every process."""
    h = 0x9E3779B97F4A7C15
    for value in values:
        h = (h ^ (value & _MASK64)) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


# --- layers -----------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention with exact softmax (SDPA) or FAVOR+ random-feature attention.

    FAVOR layers hold the random projection as a persistent buffer ``features`` (m, head_dim):
    saved in checkpoints, never changed by forward, replaced only by ``redraw``.
    """

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.layer_index = layer_index
        self.causal = config.causal
        self.kernel = config.favor_kernel  # None = exact softmax
        self.attn_dropout = config.dropout
        self.nb_features = config.nb_features
        self.orthogonal_features = config.orthogonal_features
        self.feature_scaling = config.feature_scaling
        self.q_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.out_proj = nn.Linear(d, d)
        if self.kernel is not None:
            self.register_buffer("features", self._draw(None), persistent=True)

    @property
    def is_favor(self) -> bool:
        return self.kernel is not None

    def _draw(self, generator: torch.Generator | None, device=None) -> torch.Tensor:
        return draw_features(
            self.nb_features,
            self.head_dim,
            orthogonal=self.orthogonal_features,
            scaling=self.feature_scaling,
            generator=generator,
            device=device,
        )

    @torch.no_grad()
    def redraw(self, generator: torch.Generator) -> None:
        if self.is_favor:
            new = self._draw(generator, device=self.features.device)
            self.features.copy_(new.to(self.features.dtype))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, dh)

    def project_qk(self, x, rotary):
        """q, k (B, H, L, dh) after rotary: exact attention is softmax(q kᵀ / √dh)."""
        q, k = self._split_heads(self.q_proj(x)), self._split_heads(self.k_proj(x))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        return q, k

    def forward(
        self,
        x: torch.Tensor,  # (B, L, d)
        key_padding_mask: torch.Tensor | None,  # (B, L) True = real, None = no padding
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        q, k = self.project_qk(x, rotary)
        v = self._split_heads(self.v_proj(x))
        if self.is_favor:
            y = favor_attention(
                q,
                k,
                v,
                self.features,
                causal=self.causal,
                kernel=self.kernel,
                key_padding_mask=key_padding_mask,
            )
        else:
            dropout_p = self.attn_dropout if self.training else 0.0
            y = softmax_attention(
                q,
                k,
                v,
                causal=self.causal,
                key_padding_mask=key_padding_mask,
                dropout_p=dropout_p,
            )
        b, _, length, _ = y.shape
        y = y.transpose(1, 2).reshape(b, length, self.n_heads * self.head_dim)  # (B, L, d)
        return self.out_proj(y), (q, k)

    def attention_weights(
        self,
        q: torch.Tensor,  # (B, H, L, dh), as forward returns them
        k: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,  # (B, L) True = real
    ) -> torch.Tensor:
        """The (B, H, L, L) attention matrix this layer applies, float32: D⁻¹ φ(Q) φ(K)ᵀ from
        its own features for FAVOR layers (never formed by forward), softmax(QKᵀ/√dh) else."""
        if self.is_favor:
            return favor_attention_weights(
                q,
                k,
                self.features,
                causal=self.causal,
                kernel=self.kernel,
                key_padding_mask=key_padding_mask,
            )
        return softmax_attention_weights(
            q, k, causal=self.causal, key_padding_mask=key_padding_mask
        )

    def init_state(self, batch: int, device=None):
        """The empty decoding state: FAVOR prefix sums (fixed size) or an exact KV cache."""
        h, dh = self.n_heads, self.head_dim
        if self.is_favor:
            return init_favor_state(batch, h, self.nb_features, dh, device=device)
        return init_kv_cache(batch, h, dh, dh, device=device)

    def step(self, x, keep, rotary, state):
        """Causal attention of the next C positions x (B, C, d) after ``state``: (out, state)."""
        q, k = self.project_qk(x, rotary)
        v = self._split_heads(self.v_proj(x))
        if self.is_favor:
            y, state = favor_step(state, q, k, v, self.features, self.kernel, keep)
        else:
            y, state = kv_step(state, q, k, v, keep)
        b, _, length, _ = y.shape
        y = y.transpose(1, 2).reshape(b, length, self.n_heads * self.head_dim)
        return self.out_proj(y), state

    def token_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k, v projections as one matrix, transposed to (d, 2d + H·d_v'), and its bias,
        for decoding one position. FAVOR layers add one output per head with weight 0 and bias
        1, so v comes out as [v, 1] (d_v' = d_v + 1). A fresh copy of the current weights: built
        once per decoding state (``_TokenLayer.of``), never cached on the module, so weights
        changed in place between generations are always seen."""
        params = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)
        biases = (self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)
        h, dh, d = self.n_heads, self.head_dim, self.q_proj.in_features
        with torch.no_grad(), torch.inference_mode(False):
            w = [p.detach() for p in params]
            b = [p.new_zeros(d) if bias is None else bias.detach() for p, bias in zip(w, biases)]
            if self.is_favor:  # per head: dh rows of v, then the constant 1
                w[2] = torch.cat((w[2].view(h, dh, d), w[2].new_zeros(h, 1, d)), 1).view(-1, d)
                b[2] = torch.cat((b[2].view(h, dh), b[2].new_ones(h, 1)), 1).view(-1)
            return torch.cat(w).T, torch.cat(b)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block, ESM-2 names: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.self_attn = SelfAttention(config, layer_index)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)
        self.fc1 = nn.Linear(d, config.d_ff)
        self.fc2 = nn.Linear(config.d_ff, d)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, key_padding_mask, rotary):
        attn, qk = self.self_attn(self.self_attn_layer_norm(x), key_padding_mask, rotary)
        x = x + self.dropout(attn)
        x = x + self.dropout(self.fc2(F.gelu(self.fc1(self.final_layer_norm(x)))))
        return x, qk

    def step(self, x, keep, rotary, state):
        attn, state = self.self_attn.step(self.self_attn_layer_norm(x), keep, rotary, state)
        x = x + attn
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x)))), state


class LMHead(nn.Module):
    """Token logits. "esm": decoder(LN(GELU(dense(x)))) + bias (RoBERTa/ESM-2); "linear"."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.d_model
        self.kind = config.lm_head
        if self.kind == "esm":
            self.dense = nn.Linear(d, d)
            self.layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.weight = None
        if not config.tie_embeddings:
            self.weight = nn.Parameter(torch.empty(config.vocab_size, d))
            nn.init.normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        if self.kind == "esm":
            x = self.layer_norm(F.gelu(self.dense(x)))
        weight = embedding_weight if self.weight is None else self.weight
        return F.linear(x, weight) + self.bias  # (B, L, V)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


class PerformerLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.d_model, padding_idx=config.padding_idx
        )
        if config.positional == "learned":
            self.embed_positions = nn.Embedding(config.max_len, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([Block(config, i) for i in range(config.n_layers)])
        if config.final_layer_norm:
            self.emb_layer_norm_after = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lm_head = LMHead(config)
        self.apply(_init_weights)

    @property
    def attention_layers(self) -> list[SelfAttention]:
        return [block.self_attn for block in self.layers]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def redraw_features(self, seed: int, step: int) -> None:
        """Redraw every FAVOR layer's features from (seed, step, layer): the same on every rank
        and on resume, whatever happened to the global RNG."""
        for layer in self.attention_layers:
            if layer.is_favor:
                generator = torch.Generator().manual_seed(mix_seed(seed, step, layer.layer_index))
                layer.redraw(generator)

    def maybe_redraw_features(self, seed: int, step: int) -> bool:
        """Redraw when ``step`` is a multiple of ``redraw_interval`` (> 0); True if it did."""
        interval = self.config.redraw_interval
        if interval <= 0 or step % interval or self.config.favor_kernel is None:
            return False
        self.redraw_features(seed, step)
        return True

    def embed(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, d): token (+ position) embeddings, token dropout, padding zeroed."""
        config = self.config
        x = self.embed_tokens(tokens)
        if config.token_dropout:
            is_mask = tokens == config.mask_idx  # (B, L)
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            observed = is_mask.sum(-1).to(x.dtype) / padding_mask.sum(-1).clamp(min=1).to(x.dtype)
            x = x * ((1 - TOKEN_DROPOUT_TRAIN_RATIO) / (1 - observed))[:, None, None]
        length = tokens.shape[1]
        if config.positional == "learned":
            if length > config.max_len:
                raise InputError(f"sequence length {length} exceeds max_len {config.max_len}")
            x = x + self.embed_positions.weight[:length]
        elif config.positional == "sinusoidal":
            x = x + sinusoidal_embedding(length, config.d_model, tokens.device).to(x.dtype)
        return x * padding_mask.unsqueeze(-1).to(x.dtype)

    def forward(
        self,
        tokens: torch.Tensor,  # (B, L) token ids
        padding_mask: torch.Tensor | None = None,  # (B, L) bool, True = real token
        repr_layers: Sequence[int] = (),
        return_attention_inputs: bool = False,
        padded: bool | None = None,  # any padding in the batch, where the caller knows
        need_head_weights: bool = False,
    ) -> dict:
        """{"logits": (B, L, V), "representations": {layer: (B, L, d)}} as fair-esm's models.

        ``repr_layers`` are numbered as in proteinperf.layers (0 = token embeddings, n = the
        last block after the final LayerNorm, negative from the end); the representations are
        keyed 0..n and also answer to negative numbers. ``need_head_weights`` adds
        "attentions" (B, n_layers, H, L, L): each layer's attention as the model applies it
        (the implicit FAVOR+ matrix for Performers), zero at padded queries and keys.

        ``padded`` False lets attention skip the mask (SDPA's fastest kernels need none);
        None reads it off the mask, which waits for the device (a host synchronisation).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        if padding_mask is None:
            padding_mask = tokens != self.config.padding_idx
        n = self.config.n_layers
        repr_layers = set(resolve_layers(list(repr_layers or ()), n))

        x = self.embed(tokens, padding_mask)  # (B, L, d)
        representations = LayerDict(n)
        if 0 in repr_layers:
            representations[0] = x
        x = self.dropout(x)

        if padded is None:
            padded = not bool(padding_mask.all())
        key_padding_mask = padding_mask if padded else None
        rotary = None
        if self.config.positional == "rotary":
            rotary = rotary_tables(tokens.shape[1], self.config.head_dim, tokens.device)

        attention_inputs, attentions = {}, []
        for i, block in enumerate(self.layers, start=1):
            x, (q, k) = block(x, key_padding_mask, rotary)
            if i in repr_layers and i != n:
                representations[i] = x
            if return_attention_inputs:
                attention_inputs[i] = {"q": q, "k": k, "causal": self.config.causal}
            if need_head_weights:
                attentions.append(block.self_attn.attention_weights(q, k, key_padding_mask))
        if self.config.final_layer_norm:
            x = self.emb_layer_norm_after(x)
        if n in repr_layers:
            representations[n] = x

        result = {
            "logits": self.lm_head(x, self.embed_tokens.weight),
            "representations": representations,
        }
        if return_attention_inputs:
            result["attention_inputs"] = attention_inputs
        if need_head_weights:
            real = padding_mask.to(attentions[0].dtype)  # (B, L)
            pairs = real[:, None, None, :, None] * real[:, None, None, None, :]
            result["attentions"] = torch.stack(attentions, 1) * pairs  # (B, n, H, L, L)
        return result

    # --- incremental (causal) decoding ----------------------------------------------------

    def init_state(self, batch: int, device=None) -> DecodingState:
        if not self.config.causal:
            raise ValueError("incremental decoding needs a causal model (causal=true)")
        device = device if device is not None else self.embed_tokens.weight.device
        return DecodingState(
            [layer.init_state(batch, device) for layer in self.attention_layers],
            torch.zeros(batch, dtype=torch.long, device=device),
        )

    def step(
        self,
        tokens: torch.Tensor,  # (B, C) the next C tokens of each sequence
        state: DecodingState | None = None,
        padding_mask: torch.Tensor | None = None,  # (B, C) bool, True = real; None = all real
        chunk_size: int = 1024,
    ) -> tuple[torch.Tensor, DecodingState]:
        """Logits (B, C, V) of the next tokens given ``state`` (the tokens before them), and the
        state after them: equal to ``forward`` on the whole sequence, in eval mode (no dropout).

        A prompt goes in as one call (processed in chunks of ``chunk_size`` positions); then
        one token per call. Padded tokens (mask False) do not enter the state and take no
        position, so rows may hold prompts of different lengths. The state is updated in place
        (a KV cache always; FAVOR prefix sums in one-token steps without autograd, which take
        the fused ``_step_token``): continue from the returned state, never from an old one.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        if tokens.shape[1] == 1:
            if self._token_path(tokens, state):
                return self._step_token(tokens, padding_mask, state)
            return self._step_chunk(tokens, padding_mask, state)
        logits = []
        for lo in range(0, tokens.shape[1], chunk_size):
            keep = None if padding_mask is None else padding_mask[:, lo : lo + chunk_size]
            out, state = self._step_chunk(tokens[:, lo : lo + chunk_size], keep, state)
            logits.append(out)
        return torch.cat(logits, dim=1), state

    def _token_path(self, tokens, state) -> bool:
        """One position, no autograd, nothing to upcast: the fused in-place ``_step_token``."""
        if torch.is_grad_enabled() or self.training:
            return False
        if _autocast_on(tokens.device.type):
            return False
        if self.config.favor_kernel not in (None, *TOKEN_KERNELS):
            return False
        first = state.layers[0][0]  # FAVOR context or KV keys
        if first.dtype != self.embed_tokens.weight.dtype:
            return False
        return torch.is_inference_mode_enabled() or not first.is_inference()

    def _step_chunk(self, tokens, keep, state):
        config = self.config
        x, real, positions = self._step_inputs(tokens, keep, state)
        rotary = None
        if config.positional == "rotary":
            rotary = _rotary_at(positions, config.head_dim)
        layer_states = []
        for block, layer_state in zip(self.layers, state.layers):
            x, layer_state = block.step(x, keep, rotary, layer_state)
            layer_states.append(layer_state)
        return self._step_outputs(x, state, layer_states, real)

    def _step_inputs(self, tokens, keep, state):
        """Embeddings (B, C, d) of the next tokens, real-token mask (None = all) and positions."""
        config = self.config
        if keep is None and tokens.shape[1] == 1:
            real, positions = None, state.positions[:, None]  # (B, 1)
        else:
            real = torch.ones_like(tokens, dtype=torch.bool) if keep is None else keep
            # Position of each real token: the row's count so far + real tokens before it here.
            positions = state.positions[:, None] + real.long().cumsum(1) - 1  # (B, C)
            positions = positions.clamp(min=0)
        x = self.embed_tokens(tokens)
        if config.token_dropout:  # assumes no <mask> in the sequence: a constant rescaling
            x = x.masked_fill((tokens == config.mask_idx).unsqueeze(-1), 0.0)
            x = x * (1 - TOKEN_DROPOUT_TRAIN_RATIO)
        if config.positional == "learned":
            if int(positions.max()) >= config.max_len:
                raise ValueError(
                    f"position {int(positions.max())} is past the model's learned positions "
                    f"(max_len {config.max_len})"
                )
            x = x + self.embed_positions(positions)
        elif config.positional == "sinusoidal":
            x = x + _sinusoidal_at(positions, config.d_model).to(x.dtype)
        if real is not None:
            x = x * real.unsqueeze(-1).to(x.dtype)
        return x, real, positions

    def _step_outputs(self, x, state, layer_states, real):
        if self.config.final_layer_norm:
            x = self.emb_layer_norm_after(x)
        logits = self.lm_head(x, self.embed_tokens.weight)
        consumed = x.shape[1] if real is None else real.sum(1)
        return logits, DecodingState(layer_states, state.positions + consumed, state.plan)

    def _step_token(self, tokens, keep, state):
        """``_step_chunk`` of one position per row, fused for speed: per layer one q/k/v
        projection (``SelfAttention.token_weights``), rotary as x·cos + flip(x)·sin on the two
        halves of each head, FAVOR+ by ``recurrent.favor_token_step`` (state updated in place),
        no module calls. Same math as ``Block.step`` (tests compare both with ``forward``)."""
        config = self.config
        b, h, dh = tokens.shape[0], config.n_heads, config.head_dim
        x, real, positions = self._step_inputs(tokens, keep, state)
        x = x.view(b, -1)  # (B, d)
        rotary = None
        if config.positional == "rotary":  # FAVOR's d^-1/4 goes into cos and sin
            scale = 1.0 if config.favor_kernel is None else dh**-0.25
            rotary = _token_rotary(positions[:, 0], dh, scale, x.dtype)
        alone = None if real is None else real[:, 0]
        if state.plan is None:
            state.plan = [_TokenLayer.of(block) for block in self.layers]
        shape, qk_size = (config.d_model,), 2 * h * dh
        layer_states = []
        for layer, layer_state in zip(state.plan, state.layers):
            y = torch.layer_norm(x, shape, layer.ln1_weight, layer.ln1_bias, layer.ln1_eps)
            qkv = torch.addmm(layer.qkv_bias, y, layer.qkv_weight_t)  # (B, 2d + H·d_v')
            qk = qkv[:, :qk_size]
            if rotary is not None:
                qk = qk.view(b, 2, h, 2, dh // 2)
                qk = torch.addcmul(qk * rotary[0], qk.flip(-2), rotary[1])
            elif layer.kernel is not None:
                qk = qk * dh**-0.25
            qk = qk.reshape(b, 2, h, dh)
            v = qkv[:, qk_size:].view(b, h, -1)  # (B, H, d_v')
            if layer.kernel is not None:
                y, layer_state = favor_token_step(
                    layer_state, qk, v, layer.features_t, layer.kernel, alone
                )
            else:
                y, layer_state = kv_token_step(layer_state, qk, v, alone)
            layer_states.append(layer_state)
            x = x + torch.addmm(layer.out_bias, y.view(b, -1), layer.out_weight_t)
            y = torch.layer_norm(x, shape, layer.ln2_weight, layer.ln2_bias, layer.ln2_eps)
            y = F.gelu(torch.addmm(layer.fc1_bias, y, layer.fc1_weight_t))
            x = x + torch.addmm(layer.fc2_bias, y, layer.fc2_weight_t)
        return self._step_outputs(x.view(b, 1, -1), state, layer_states, real)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


class _TokenLayer(NamedTuple):
    """A block's tensors for ``PerformerLM._step_token`` (``_t``: transposed): views of its
    parameters, except the fused q/k/v projection (a copy, made when a state first steps)."""

    qkv_weight_t: torch.Tensor
    qkv_bias: torch.Tensor
    kernel: str | None
    features_t: torch.Tensor | None
    ln1_weight: torch.Tensor
    ln1_bias: torch.Tensor
    ln1_eps: float
    out_weight_t: torch.Tensor
    out_bias: torch.Tensor
    ln2_weight: torch.Tensor
    ln2_bias: torch.Tensor
    ln2_eps: float
    fc1_weight_t: torch.Tensor
    fc1_bias: torch.Tensor
    fc2_weight_t: torch.Tensor
    fc2_bias: torch.Tensor

    @classmethod
    def of(cls, block: Block) -> _TokenLayer:
        attn, ln1, ln2 = block.self_attn, block.self_attn_layer_norm, block.final_layer_norm
        return cls(
            *attn.token_weights(),
            attn.kernel,
            attn.features.T if attn.is_favor else None,
            ln1.weight,
            ln1.bias,
            ln1.eps,
            attn.out_proj.weight.T,
            attn.out_proj.bias,
            ln2.weight,
            ln2.bias,
            ln2.eps,
            block.fc1.weight.T,
            block.fc1.bias,
            block.fc2.weight.T,
            block.fc2.bias,
        )


@dataclass
class DecodingState:
    """What causal decoding carries between steps: one state per layer, positions per row.

    FAVOR layers: ``recurrent.FavorState`` (fixed size); exact layers: ``recurrent.KVCache``.
    """

    layers: list
    positions: torch.Tensor  # (B,) tokens consumed per row = the next token's position
    # The model's tensors for one-token steps, gathered at the first such step: a state is
    # stepped by the model that made it, whose weights stay fixed until the state is dropped.
    plan: list | None = field(default=None, repr=False, compare=False)

    def nbytes(self) -> int:
        """Bytes of the per-layer states (the KV cache's used slots)."""
        return sum(layer.nbytes() for layer in self.layers)


def _rotary_at(positions: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, 1, C, dim) at integer positions (B, C): ``rotary_tables`` rows, per row."""
    freqs = positions.float().unsqueeze(-1) * rotary_inv_freq(dim, positions.device)
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
    return emb.cos(), emb.sin()


_ROTARY_CONSTANTS: dict = {}


def _token_rotary(positions: torch.Tensor, dim: int, scale: float, dtype) -> tuple:
    """cos·scale, sin·scale of one position per row (B,), as (B, 1, 1, 2, dim/2) to broadcast
    over (B, 2, H, 2, dim/2) = [q, k] × heads × halves; sin's first half is negated, so that
    rotate_half(x)·sin = flip(x, halves)·sin. Same angles as ``rotary_tables``."""
    key = (dim, positions.device, scale)
    if key not in _ROTARY_CONSTANTS:
        with torch.inference_mode(False):
            freqs = rotary_inv_freq(dim, positions.device).repeat(2)  # (dim,)
            sign = torch.ones(2, dim // 2, device=positions.device)
            sign[0] = -1.0
            _ROTARY_CONSTANTS[key] = (freqs, scale * sign.view(dim), scale)
    freqs, sin_scale, cos_scale = _ROTARY_CONSTANTS[key]
    angles = positions.float().unsqueeze(-1) * freqs  # (B, dim)
    shape = (-1, 1, 1, 2, dim // 2)
    cos = (angles.cos() * cos_scale).to(dtype).view(shape)
    sin = (angles.sin() * sin_scale).to(dtype).view(shape)
    return cos, sin


def _sinusoidal_at(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, C, dim) rows of ``sinusoidal_embedding`` at integer positions (B, C)."""
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=positions.device).float() * (-math.log(10000.0) / dim)
    )
    angles = positions.float().unsqueeze(-1) * inv_freq
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


__all__ = [
    "ATTENTIONS",
    "POSITIONALS",
    "LM_HEADS",
    "ModelConfig",
    "PerformerLM",
    "DecodingState",
    "SelfAttention",
    "Block",
    "LMHead",
    "mix_seed",
    "rotary_inv_freq",
    "rotary_tables",
    "apply_rotary",
    "sinusoidal_embedding",
]
