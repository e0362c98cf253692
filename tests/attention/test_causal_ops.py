"""Causal FAVOR+ dispatches a fixed number of ops per call, whatever the length.

Counted with a TorchDispatchMode (every aten op: on a GPU, about one kernel launch each), for
one call forward + backward at B=2, H=8, d=64, m=64. A Python loop over chunks or positions
would add ops in proportion to L. Counted under the GPU's span policy (one span for the
whole call, ``benchmarks.causal.gpu_span_policy``): on a CPU long inputs run in cache-sized
spans on purpose, where an op costs microseconds and DRAM traffic is what counts.
"""

import pytest
import torch

from proteinperf.attention import draw_features, favor_attention
from proteinperf.benchmarks.causal import dispatched_ops, gpu_span_policy

B, H, D, M = 2, 8, 64, 64


def _count(kernel, length, padded):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, length, D, generator=g).requires_grad_() for _ in range(3))
    w = draw_features(M, D, generator=g)
    mask = None
    if padded:
        mask = torch.ones(B, length, dtype=torch.bool)
        mask[1, length // 3 :] = False

    def step():
        favor_attention(
            q, k, v, w, causal=True, kernel=kernel, key_padding_mask=mask
        ).sum().backward()

    return dispatched_ops(step)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kernel", ["relu", "softmax"])
def test_dispatched_ops_do_not_grow_with_length(kernel, padded):
    with gpu_span_policy():
        counts = {length: _count(kernel, length, padded) for length in (256, 1024, 4096)}
    assert counts[1024] <= 400, counts
    assert counts[4096] <= 1.25 * counts[256], counts
