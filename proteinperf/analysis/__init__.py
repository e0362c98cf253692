"""Attention analysis: explicit FAVOR+ and exact attention maps; amino-acid similarity from
embeddings, learned substitutions and attention (Vig et al., 2020) against BLOSUM62; plots."""

from .attention_maps import (
    AttentionMaps,
    approximates_softmax,
    approximation_curve,
    approximation_error,
    attention_inputs,
    attention_maps,
    frame_sequence,
    softmax_estimate,
    untrained_control,
)
from .blosum_study import blosum_study, shuffle_residues
from .similarity import (
    AMINO_ACIDS,
    ResidueAttentionStats,
    amino_acid_similarity,
    blosum62,
    bootstrap_vs_blosum,
    compare_with_blosum,
    pair_values,
)
from .similarity_study import similarity_study

__all__ = [
    "AMINO_ACIDS",
    "AttentionMaps",
    "ResidueAttentionStats",
    "amino_acid_similarity",
    "approximates_softmax",
    "approximation_curve",
    "approximation_error",
    "attention_inputs",
    "attention_maps",
    "blosum62",
    "blosum_study",
    "bootstrap_vs_blosum",
    "compare_with_blosum",
    "frame_sequence",
    "pair_values",
    "shuffle_residues",
    "similarity_study",
    "softmax_estimate",
    "untrained_control",
]
