"""FAVOR+ attention core: pure tensor functions, no module state; of ours it imports only the
import-free names of proteinperf.constants."""

from .dispatch import attend
from .exact import softmax_attention, softmax_attention_weights
from .favor import favor_attention, favor_attention_weights
from .features import draw_features
from .naive import naive_attention, naive_attention_weights
from .phi import (
    FUSED_KERNELS,
    KERNELS,
    MASKED_LOG_SCALE,
    RELU_EPSILON,
    check_kernel_for_causal,
    feature_maps,
    optimal_positive_parameter,
)

__all__ = [
    "FUSED_KERNELS",
    "attend",
    "KERNELS",
    "MASKED_LOG_SCALE",
    "RELU_EPSILON",
    "check_kernel_for_causal",
    "draw_features",
    "favor_attention",
    "favor_attention_weights",
    "feature_maps",
    "naive_attention",
    "naive_attention_weights",
    "optimal_positive_parameter",
    "softmax_attention",
    "softmax_attention_weights",
]
