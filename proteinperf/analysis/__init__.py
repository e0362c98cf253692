"""Attention analysis: explicit FAVOR+ and exact attention maps, amino-acid similarity from
attention (Vig et al., 2020) against BLOSUM62, and their plots."""

from .attention_maps import (
    AttentionMaps,
    approximation_curve,
    approximation_error,
    attention_inputs,
    attention_maps,
    frame_sequence,
    untrained_control,
)
from .similarity import (
    AMINO_ACIDS,
    ResidueAttentionStats,
    amino_acid_similarity,
    blosum62,
    compare_with_blosum,
    pair_values,
)

__all__ = [
    "AMINO_ACIDS",
    "AttentionMaps",
    "ResidueAttentionStats",
    "amino_acid_similarity",
    "approximation_curve",
    "approximation_error",
    "attention_inputs",
    "attention_maps",
    "blosum62",
    "compare_with_blosum",
    "frame_sequence",
    "pair_values",
    "untrained_control",
]
