"""Performer protein language model: config, attention layer (holds the random features), blocks.

The layout follows ESM-2 (pre-LayerNorm blocks, rotary q/k, final LayerNorm, RoBERTa LM head,
the same parameter names), so ESM-2 weights load unchanged and only the attention differs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as nn_module

from proteinperf.attention import (
    draw_features,
    favor_attention_weights,
    softmax_attention_weights,
)
from proteinperf.attention.dispatch import attend
from proteinperf.attention.recurrent import init_kv_cache
from proteinperf.attention.recurrent import init_state as init_favor_state
from proteinperf.constants import ATTENTIONS, FEATURE_SCALINGS  # noqa: F401 (re-exported)
from proteinperf.errors import ConfigError, InputError
from proteinperf.layers import LayerDict, resolve_layers

POSITIONALS = ("learned", "sinusoidal", "rotary")
ROTARY_INV_FREQ_DTYPES = ("float32", "float16")
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
    # rotary frequencies rounded to this dtype: ESM-2 files saved in float16 store them so
    rotary_inv_freq_dtype: str = "float32"
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
        if self.rotary_inv_freq_dtype not in ROTARY_INV_FREQ_DTYPES:
            fail(
                f"rotary_inv_freq_dtype must be one of {ROTARY_INV_FREQ_DTYPES}, got "
                f"{self.rotary_inv_freq_dtype!r}"
            )
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


def rotary_inv_freq(dim: int, device=None, dtype: str = "float32") -> torch.Tensor:
    """θ_i = 10000^(-2i/dim), i < dim/2, computed in float32 as fair-esm does, then rounded to
    ``dtype`` (fair-esm's buffer as a float16 file stores it) and returned as float32."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device).float() / dim))
    return inv_freq.to(getattr(torch, dtype)).float()


_ROTARY_CONSTANTS: dict = {}


def rotary_tables(
    positions: torch.Tensor, dim: int, inv_freq_dtype: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (*positions.shape, dim) of RoFormer rotary embeddings at integer positions,
    fair-esm's layout: the two halves of the head dim share the frequencies θ_i
    (non-interleaved). sin's first half is negated, so that ``apply_rotary`` can rotate x as
    x·cos + swap(x)·sin, swap exchanging the halves (= fair-esm's rotate_half(x)·sin).
    ``inv_freq_dtype`` as in ``rotary_inv_freq``."""
    key = (dim, positions.device, inv_freq_dtype)
    if key not in _ROTARY_CONSTANTS:  # built outside inference mode: training may reuse them
        with torch.inference_mode(False):
            sign = torch.ones(2, dim // 2, device=positions.device)
            sign[0] = -1.0
            freqs = rotary_inv_freq(dim, positions.device, inv_freq_dtype).repeat(2)
            _ROTARY_CONSTANTS[key] = (freqs, sign.view(dim))
    freqs, sign = _ROTARY_CONSTANTS[key]
    angles = positions.float().unsqueeze(-1) * freqs  # (..., dim)
    return angles.cos(), angles.sin().mul_(sign)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., L, dim) rotated by ``rotary_tables`` (cos, sin broadcasting to x)."""
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    swapped = x.roll(x.shape[-1] // 2, -1)  # the two halves exchanged
    return torch.addcmul(x * cos, swapped, sin)


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(*positions.shape, dim) fixed positions of Vaswani et al. (2017): [sin(t·θ_i),
    cos(t·θ_i)] halves at integer positions t."""
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=positions.device).float() * (-math.log(10000.0) / dim)
    )
    angles = positions.float().unsqueeze(-1) * inv_freq
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

    def forward(
        self,
        x: torch.Tensor,  # (B, L, d)
        key_padding_mask: torch.Tensor | None,  # (B, L) True = real, None = no padding
        rotary: tuple[torch.Tensor, torch.Tensor] | None,  # cos, sin broadcasting to (B, H, L, dh)
        state=None,  # this layer's decoding state (``init_state``), or None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], object]:
        """(out (B, L, d), (q, k) (B, H, L, dh) after rotary, state after these positions)."""
        q, k = self._split_heads(self.q_proj(x)), self._split_heads(self.k_proj(x))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        v = self._split_heads(self.v_proj(x))
        y, state = attend(
            q,
            k,
            v,
            self.features if self.is_favor else None,
            kernel=self.kernel,
            causal=self.causal,
            key_padding_mask=key_padding_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            state=state,
        )
        b, _, length, _ = y.shape
        y = y.transpose(1, 2).reshape(b, length, self.n_heads * self.head_dim)  # (B, L, d)
        return self.out_proj(y), (q, k), state

    def token(self, x, key_padding_mask, rotary, state):
        """``forward`` of one decoding position per row (B, 1, d) without module calls (see
        ``Block.token``), q and k rotated together."""
        b, h, dh = x.shape[0], self.n_heads, self.head_dim
        x = x.view(b, -1)
        q = F.linear(x, *_tensors(self, "q_proj"))
        k = F.linear(x, *_tensors(self, "k_proj"))
        qk = torch.cat((q, k), 1).view(b, 2 * h, 1, dh)  # [q heads, k heads]
        if rotary is not None:
            qk = apply_rotary(qk, *rotary)
        q, k = qk.view(b, 2, h, 1, dh).unbind(1)  # (B, H, 1, dh) each
        y, state = attend(
            q,
            k,
            F.linear(x, *_tensors(self, "v_proj")).view(b, h, 1, dh),
            self._buffers["features"] if self.kernel is not None else None,
            kernel=self.kernel,
            causal=self.causal,
            key_padding_mask=key_padding_mask,
            state=state,
        )
        return F.linear(y.reshape(b, 1, -1), *_tensors(self, "out_proj")), (q, k), state

    def attention_weights(
        self,
        q: torch.Tensor,  # (B, H, L, dh), as forward returns them
        k: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,  # (B, L) True = real
    ) -> torch.Tensor:
        """The (B, H, L, L) attention matrix this layer applies, float32: D⁻¹ φ(Q) φ(K)ᵀ from
        its own features for FAVOR layers (never formed by forward), softmax(QKᵀ/√dh) else.
        Padded keys get weight 0."""
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

    def forward(self, x, key_padding_mask, rotary, state=None):
        y, qk, state = self.self_attn(self.self_attn_layer_norm(x), key_padding_mask, rotary, state)
        if self.training:  # dropout is the identity in eval: not even a call while decoding
            y = self.dropout(y)
        x = x + y
        y = self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        if self.training:
            y = self.dropout(y)
        return x + y, qk, state

    def token(self, x, key_padding_mask, rotary, state):
        """``forward`` of one decoding position per row, calling no modules: a token costs
        ~100 tiny ops whose price is per call, not per FLOP. The same math as ``forward``
        (tests compare both); ``PerformerLM.forward`` takes it only without autograd and
        where no forward hook could tell the difference."""
        modules = self._modules
        ln1, ln2 = modules["self_attn_layer_norm"], modules["final_layer_norm"]
        y = torch.layer_norm(
            x, ln1.normalized_shape, *_tensors(self, "self_attn_layer_norm"), ln1.eps
        )
        y, qk, state = modules["self_attn"].token(y, key_padding_mask, rotary, state)
        x = x + y
        y = torch.layer_norm(x, ln2.normalized_shape, *_tensors(self, "final_layer_norm"), ln2.eps)
        y = F.gelu(F.linear(y, *_tensors(self, "fc1")))
        return x + F.linear(y, *_tensors(self, "fc2")), qk, state


def _tensors(module: nn.Module, name: str) -> tuple:
    """(weight, bias) of the Linear or LayerNorm ``name`` in ``module``, read from the module
    dicts: nn.Module's attribute lookup costs more than a decoding step's ops on them."""
    parameters = module._modules[name]._parameters
    return parameters["weight"], parameters["bias"]


def _unobserved(modules: list[nn.Module]) -> bool:
    """No autograd and no forward hooks on any of ``modules`` (nor on all modules): their
    callers may skip the module calls."""
    if torch.is_grad_enabled():
        return False
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return False
    return not (any(map(_HOOKS, modules)) or any(map(_PRE_HOOKS, modules)))


_HOOKS = operator.attrgetter("_forward_hooks")  # C-level loops: checked at every step
_PRE_HOOKS = operator.attrgetter("_forward_pre_hooks")


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


@dataclass
class DecodingState:
    """What causal decoding carries between steps: one state per layer, positions per row.

    FAVOR layers: ``recurrent.FavorState`` (fixed size); exact layers: ``recurrent.KVCache``.
    """

    layers: list
    positions: torch.Tensor  # (B,) tokens consumed per row = the next token's position

    def nbytes(self) -> int:
        """Bytes of the per-layer states (the KV cache's used slots)."""
        return sum(layer.nbytes() for layer in self.layers)


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
        self._modules_seen = None  # ``_submodules``

    def _submodules(self) -> list[nn.Module]:
        """Every module of the model, listed at the first decoding step (whose hooks each step
        checks; a module swapped in later is not seen)."""
        if getattr(self, "_modules_seen", None) is None:
            self._modules_seen = list(self.modules())
        return self._modules_seen

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

    def embed(
        self,
        tokens: torch.Tensor,  # (B, L)
        padding_mask: torch.Tensor | None,  # (B, L) True = real; None = all real
        positions: torch.Tensor,  # (B|1, L) of each token
        whole: bool = True,  # the tokens are whole sequences (not the next ones of a state)
    ) -> torch.Tensor:
        """(B, L) -> (B, L, d): token (+ position) embeddings, token dropout, padding zeroed."""
        config = self.config
        x = self.embed_tokens(tokens)
        if config.token_dropout:
            is_mask = tokens == config.mask_idx  # (B, L)
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            # ESM-2 rescales by the share of <mask> in each sequence; a decoding step sees part
            # of a sequence and assumes none.
            scale = 1 - TOKEN_DROPOUT_TRAIN_RATIO
            if whole:
                real = padding_mask.sum(-1).clamp(min=1).to(x.dtype)
                scale = (scale / (1 - is_mask.sum(-1).to(x.dtype) / real))[:, None, None]
            x = x * scale
        if config.positional == "learned":
            length = tokens.shape[1] if whole else int(positions.max()) + 1
            if length > config.max_len:
                raise InputError(
                    f"{length} positions are past the model's learned positions "
                    f"(max_len {config.max_len})"
                )
            x = x + self.embed_positions(positions)
        elif config.positional == "sinusoidal":
            x = x + sinusoidal_embedding(positions, config.d_model).to(x.dtype)
        if padding_mask is not None:
            x = x * padding_mask.unsqueeze(-1).to(x.dtype)
        return x

    def forward(
        self,
        tokens: torch.Tensor,  # (B, L) token ids
        padding_mask: torch.Tensor | None = None,  # (B, L) bool, True = real token
        repr_layers: Sequence[int] = (),
        return_attention_inputs: bool = False,
        padded: bool | None = None,  # any padding in the batch, where the caller knows
        need_head_weights: bool = False,
        state: DecodingState | None = None,
    ) -> dict:
        """{"logits": (B, L, V), "representations": {layer: (B, L, d)}} as fair-esm's models.

        ``repr_layers`` are numbered as in proteinperf.layers (0 = token embeddings, n = the
        last block after the final LayerNorm, negative from the end); the representations are
        keyed 0..n and also answer to negative numbers. ``need_head_weights`` adds
        "attentions" (B, n_layers, H, L, L): each layer's attention as the model applies it
        (the implicit FAVOR+ matrix for Performers), zero at padded queries and keys.

        ``padded`` False lets attention skip the mask (SDPA's fastest kernels need none);
        None reads it off the mask, which waits for the device (a host synchronisation).

        With a ``state`` (causal models, ``init_state``) the tokens are the next ones after
        the state's: ``padding_mask`` None means all real, padded tokens take no position and
        leave the state unchanged, and the result adds "state", the state after them (the
        old one may have been updated in place: continue from the new one). ``step`` wraps it.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        b, length = tokens.shape
        if state is None:
            if padding_mask is None:
                padding_mask = tokens != self.config.padding_idx
            if padded is None:
                padded = not bool(padding_mask.all())
            key_padding_mask = padding_mask if padded else None
            positions = torch.arange(length, device=tokens.device)[None]  # (1, L)
        else:
            if need_head_weights:
                raise ValueError("need_head_weights needs whole sequences, not a decoding state")
            key_padding_mask = padding_mask
            positions = state.positions[:, None]  # (B, 1)
            if padding_mask is not None:  # the row's count so far + its real tokens before
                positions = (positions + padding_mask.long().cumsum(1) - 1).clamp(min=0)
            elif length > 1:
                positions = positions + torch.arange(length, device=tokens.device)
        n = self.config.n_layers
        repr_layers = set(resolve_layers(list(repr_layers), n)) if repr_layers else ()

        x = self.embed(tokens, padding_mask, positions, whole=state is None)  # (B, L, d)
        representations = LayerDict(n)
        if 0 in repr_layers:
            representations[0] = x
        if self.training:
            x = self.dropout(x)

        rotary = None
        if self.config.positional == "rotary":
            rotary = rotary_tables(  # (B|1, 1, L, dh)
                positions[:, None], self.config.head_dim, self.config.rotary_inv_freq_dtype
            )

        attention_inputs, attentions, layer_states = {}, None, []
        token = (  # the hook-free one-token branch: same math as forward without dropout
            state is not None
            and length == 1
            and not self.training
            and _unobserved(self._submodules())
        )
        for i, block in enumerate(self.layers, start=1):
            layer_state = None if state is None else state.layers[i - 1]
            if token:
                x, (q, k), layer_state = block.token(x, key_padding_mask, rotary, layer_state)
            else:
                x, (q, k), layer_state = block(x, key_padding_mask, rotary, layer_state)
            layer_states.append(layer_state)
            if i in repr_layers and i != n:
                representations[i] = x
            if return_attention_inputs:
                attention_inputs[i] = {"q": q, "k": k, "causal": self.config.causal}
            if need_head_weights:  # padded keys are zero already; padded queries below
                weights = block.self_attn.attention_weights(q, k, key_padding_mask)
                if attentions is None:
                    attentions = weights.new_empty((b, n, *weights.shape[1:]))
                attentions[:, i - 1] = weights
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
            if key_padding_mask is not None:
                attentions.masked_fill_(~key_padding_mask[:, None, None, :, None], 0.0)
            result["attentions"] = attentions  # (B, n, H, L, L)
        if state is not None:
            consumed = length if padding_mask is None else padding_mask.sum(1)
            result["state"] = DecodingState(layer_states, state.positions + consumed)
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
        state after them: ``forward`` with a state, equal to ``forward`` on the whole sequence
        in eval mode (no dropout).

        A prompt goes in as one call (processed in chunks of ``chunk_size`` positions); then
        one token per call. Padded tokens (mask False) do not enter the state and take no
        position, so rows may hold prompts of different lengths. The state may be updated in
        place (a KV cache always; FAVOR prefix sums in one-token steps without autograd):
        continue from the returned state, never from an old one.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        if tokens.shape[1] <= chunk_size:  # one call, no slicing (one-token decoding)
            out = self(tokens, padding_mask, state=state)
            return out["logits"], out["state"]
        logits = []
        for lo in range(0, tokens.shape[1], chunk_size):
            keep = None if padding_mask is None else padding_mask[:, lo : lo + chunk_size]
            out = self(tokens[:, lo : lo + chunk_size], keep, state=state)
            logits.append(out["logits"])
            state = out["state"]
        return torch.cat(logits, dim=1), state


__all__ = [
    "ATTENTIONS",
    "POSITIONALS",
    "ROTARY_INV_FREQ_DTYPES",
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
