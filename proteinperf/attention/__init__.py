"""FAVOR+ attention core: pure tensor functions, no module state, no project imports."""

from .exact import softmax_attention, softmax_attention_weights
from .favor import favor_attention, favor_attention_weights
from .features import draw_features
from .kernels import KERNELS, feature_maps, optimal_positive_parameter

__all__ = [
    "KERNELS",
    "draw_features",
    "favor_attention",
    "favor_attention_weights",
    "feature_maps",
    "optimal_positive_parameter",
    "softmax_attention",
    "softmax_attention_weights",
]
