"""One numbering of a model's layers for every command and function that takes `layers`.

ESM's `repr_layers` numbering, which protein-LM users already know: 0 is the token embeddings
(the input of the first block), L in 1..n is transformer block L (its output, for embeddings;
its attention, for attention maps), and negative numbers count from the end (-1 = the last
block, -(n+1) = the embeddings). Only blocks have attention, so attention tools refuse 0.

(Until version 0.2 `attention --layers` counted blocks from 0: old block I is layer I+1 now.
Outputs written since carry "layer_numbering": LAYER_NUMBERING.)
"""

from __future__ import annotations

from collections.abc import Sequence

from proteinperf.errors import ConfigError

LAYER_NUMBERING = "esm"  # 0 = token embeddings, L = transformer block L (1-based), -1 = last


def resolve_layers(
    layers: Sequence[int] | None, n_layers: int, *, embeddings: bool = True
) -> list[int]:
    """Layer numbers in 0..n_layers (1..n_layers without `embeddings`), in the order given,
    each once; negative ones count from the end. None: every layer."""
    first = 0 if embeddings else 1
    if layers is None:
        return list(range(first, n_layers + 1))
    resolved: list[int] = []
    for layer in layers:
        layer = int(layer)
        if not -(n_layers + 1) <= layer <= n_layers:
            raise ConfigError(
                f"layer {layer} does not exist: this model has layers {first}..{n_layers} "
                f"{'(0 = token embeddings) ' if embeddings else ''}or -{n_layers + 1 - first}..-1 "
                "counted from the end"
            )
        layer %= n_layers + 1
        if layer == 0 and not embeddings:
            raise ConfigError(
                "layer 0 is the token embeddings, which have no attention: attention layers are "
                f"1..{n_layers} (transformer blocks, numbered as in embed) or -{n_layers}..-1"
            )
        if layer not in resolved:
            resolved.append(layer)
    if not resolved and not embeddings:
        raise ConfigError("no layers given")
    return resolved


def block_index(layer: int) -> int:
    """The 0-based index into the model's blocks of attention layer number `layer` (>= 1)."""
    if layer < 1:
        raise ValueError(f"layer {layer} is not a transformer block (blocks are 1..n)")
    return layer - 1


class LayerDict(dict):
    """{layer number: value} as the model and embed_sequences return representations: the keys
    are layer numbers 0..n_layers, and a lookup also takes a negative number, counted from the
    end as everywhere else (``reps[-1]`` is ``reps[n_layers]``)."""

    def __init__(self, n_layers: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_layers = n_layers

    def _key(self, layer):
        if isinstance(layer, int) and -(self.n_layers + 1) <= layer < 0:
            return layer % (self.n_layers + 1)
        return layer

    def __getitem__(self, layer):
        return super().__getitem__(self._key(layer))

    def __contains__(self, layer) -> bool:
        return super().__contains__(self._key(layer))

    def get(self, layer, default=None):
        return super().get(self._key(layer), default)

    def __missing__(self, layer):
        raise KeyError(
            f"layer {layer} was not asked for: these are layers {sorted(self)} of "
            f"0..{self.n_layers} (ask for it in repr_layers / layers)"
        )
