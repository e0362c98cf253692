"""Every linear-time FAVOR path against the quadratic reference (attention/naive.py).

Small explicit block and chunk sizes make tiny tensors cross many block boundaries, so the
multi-block online rescaling, the carried causal state and the hand-written backward passes
all run here as they do at training shapes (L ≥ 1024, m = 256).
"""

import pytest
import torch

from proteinperf.attention import (
    FUSED_KERNELS,
    KERNELS,
    blockwise,
    draw_features,
    favor_attention,
    naive_attention,
)
from proteinperf.attention.favor import default_chunk

# softmax_opt fits its parameter to all keys: bidirectional only.
CASES = [(kernel, causal) for kernel in KERNELS for causal in (False, True)]
CASES = [(kernel, causal) for kernel, causal in CASES if not (kernel == "softmax_opt" and causal)]
D, M = 4, 8


def _inputs(length, kernel, batch=2, heads=2, dtype=torch.float64, seed=0):
    """q, k, v (B, H, L, D) and features (M, D). Key norms vary by position (log-uniform over
    a factor 20) so the largest logit moves up and down between blocks; trig, whose features
    grow as exp(|k|²/2) and change sign, keeps small norms."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, D, generator=g, dtype=dtype) for _ in range(3))
    if kernel == "trig":
        q, k = q * 0.5, k * 0.5
    else:
        k = k * torch.exp(torch.empty(length, 1, dtype=dtype).uniform_(-1.6, 1.4, generator=g))
    w = draw_features(M, D, generator=g, dtype=dtype)
    return q, k, v, w


def _mask(pattern, length, size):
    """bool (2, L): row 0 real throughout, row 1 per pattern."""
    mask = torch.ones(2, length, dtype=torch.bool)
    if pattern == "ragged":  # a real length ending inside a block
        mask[1, max(1, (2 * length) // 3) :] = False
    elif pattern == "first_block_padded":  # the first block (or chunk) holds no real key
        mask[1, :size] = False
    elif pattern is not None:
        raise AssertionError(pattern)
    return None if pattern is None else mask


def _values_and_grads(fn, q, k, v, upstream):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    grads = torch.autograd.grad((out * upstream.to(out.dtype)).sum(), (q, k, v))
    return out, grads


def _assert_equal_in_float64(fast, reference, q, k, v, upstream):
    """Values and gradients of ``fast`` equal ``reference``'s to float64 round-off."""
    out, grads = _values_and_grads(fast, q, k, v, upstream)
    ref, ref_grads = _values_and_grads(reference, q, k, v, upstream)
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-10)
    for name, got, want in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9, msg=f"grad {name}")


@pytest.mark.parametrize("kernel, causal", CASES)
# (L, size): one position; whole chunks; a ragged last chunk; size 1; one chunk larger than L;
# two whole chunks; many chunks with a ragged last one.
@pytest.mark.parametrize(
    "length, size", [(1, 4), (24, 4), (23, 4), (23, 1), (5, 16), (16, 8), (40, 7)]
)
@pytest.mark.parametrize("pattern", [None, "ragged", "first_block_padded"])
def test_linear_time_paths_match_the_reference(kernel, causal, length, size, pattern):
    q, k, v, w = _inputs(length, kernel)
    mask = _mask(pattern, length, size)
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=q.dtype)

    def fast(q, k, v):
        return favor_attention(q, k, v, w, causal, kernel, mask, chunk_size=size, block_size=size)

    def reference(q, k, v):
        return naive_attention(q, k, v, w, causal, kernel, mask)

    _assert_equal_in_float64(fast, reference, q, k, v, upstream)


@pytest.mark.parametrize("kernel", FUSED_KERNELS)
# (L, chunk, chunks per span): even spans, a ragged last chunk; a ragged last span; one chunk
# per span; size-1 chunks; one span for all (the span larger than the input).
@pytest.mark.parametrize(
    "length, size, span", [(24, 4, 2), (23, 4, 2), (40, 7, 3), (23, 4, 1), (23, 1, 5), (9, 4, 8)]
)
@pytest.mark.parametrize("pattern", [None, "ragged", "first_block_padded"])
@pytest.mark.parametrize("keep", [True, False])
def test_causal_spans_match_the_reference(kernel, length, size, span, pattern, keep, monkeypatch):
    """Long inputs run the causal kernel in spans of chunks with the state carried between
    them (blockwise.span_chunks); here spans are forced small. "first_block_padded" pads
    the whole first span. keep=False: one span recomputes its features in backward, as
    large calls do."""
    if not keep:
        monkeypatch.setattr(blockwise, "_KEEP_ELEMENTS", 0)
    q, k, v, w = _inputs(length, kernel)
    mask = _mask(pattern, length, size * span)
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=q.dtype)

    def fast(q, k, v):
        return blockwise.causal_favor(q, k, v, w, kernel, mask, size, span)

    def reference(q, k, v):
        return naive_attention(q, k, v, w, True, kernel, mask)

    _assert_equal_in_float64(fast, reference, q, k, v, upstream)


@pytest.mark.parametrize("kernel", FUSED_KERNELS)
def test_causal_spans_with_large_key_norms_in_float32(kernel):
    # The stabiliser carried from span to span: real logits far below 0 after a padded span.
    q, k, v, w = _inputs(24, kernel)
    k = k / k.norm(dim=-1, keepdim=True) * 100.0
    mask = _mask("first_block_padded", 24, 8)
    ref = naive_attention(q, k, v, w, True, kernel, mask)
    q, k, v, w = (t.float() for t in (q, k, v, w))
    out = blockwise.causal_favor(q, k, v, w, kernel, mask, 4, 2)
    assert ref[1, :, 8:].abs().amax() > 0.1
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-3)


def test_span_size_bounds_the_temporaries():
    # CPU: one span while a call's (positions, m) tensors hold <= 2^21 entries, else spans of
    # <= 2^18 (at least one chunk); a GPU keeps long inputs in one span.
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert blockwise.span_chunks(8, 256, 64, 16, cpu) == 16  # B=1, H=8, m=256, L=1024
    assert blockwise.span_chunks(16, 64, 128, 16, cpu) == 16  # B=2, H=8, m=64, L=2048
    assert blockwise.span_chunks(16, 64, 128, 32, cpu) == 2  # L=4096: 2^22 entries
    assert blockwise.span_chunks(8, 256, 128, 32, cpu) == 1  # B=1, H=8, m=256, L=4096
    assert blockwise.span_chunks(1, 64, 16, 4096, cpu) == 256  # small chunks: 2^18 a span
    assert blockwise.span_chunks(1 << 10, 1 << 10, 256, 4, cpu) == 1
    assert blockwise.span_chunks(8, 256, 256, 128, cuda) == 128  # L = 32768


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", ["softmax", "softmax_hyp"])
def test_padded_first_block_with_large_key_norms(kernel, dtype, causal):
    # Real logits far below 0 (|k| ≈ 100): a stabiliser stuck at 0 after an all-padded first
    # block would underflow every real key and return zeros.
    q, k, v, w = _inputs(12, kernel)
    k = k / k.norm(dim=-1, keepdim=True) * 100.0
    mask = _mask("first_block_padded", 12, 4)
    ref = naive_attention(q, k, v, w, causal, kernel, mask)
    q, k, v, w = (t.to(dtype) for t in (q, k, v, w))
    out = favor_attention(q, k, v, w, causal, kernel, mask, chunk_size=4, block_size=4)
    assert ref[1, :, 4:].abs().amax() > 0.1
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kernel, causal", CASES)
def test_sequence_of_padding_only_gives_zeros(kernel, causal):
    q, k, v, w = _inputs(9, kernel)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = favor_attention(q, k, v, w, causal, kernel, mask, chunk_size=4, block_size=4)
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(naive_attention(q, k, v, w, causal, kernel, mask)) == 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


# softmax_opt's parameter A is detached by design (a statistic, like a normaliser), so finite
# differences, which see A move, disagree with its gradient; its gradients are checked against
# the reference above instead.
@pytest.mark.parametrize("kernel, causal", [c for c in CASES if c[0] != "softmax_opt"])
def test_gradcheck_float64_across_block_boundaries(kernel, causal):
    q, k, v, w = _inputs(7, kernel, heads=1)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 5:] = False  # ragged tail
    mask[1, :2] = False  # a fully padded first block

    def f(q, k, v):
        return favor_attention(q, k, v, w, causal, kernel, mask, chunk_size=3, block_size=2)

    # The full Jacobian for the hand-written backward passes (both directions); for the
    # autograd paths random projections of it.
    full = kernel in FUSED_KERNELS
    assert torch.autograd.gradcheck(f, (q, k, v), fast_mode=not full)


@pytest.mark.parametrize("kernel, causal", CASES)
def test_bf16_autocast_matches_the_float64_reference(kernel, causal):
    q, k, v, w = _inputs(21, kernel, dtype=torch.bfloat16)
    w = w.float()
    mask = _mask("first_block_padded", 21, 4)
    mask[0, 15:] = False
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))

    def fast(q, k, v):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return favor_attention(q, k, v, w, causal, kernel, mask, chunk_size=4, block_size=4)

    def reference(q, k, v):
        return naive_attention(q.double(), k.double(), v.double(), w.double(), causal, kernel, mask)

    out, grads = _values_and_grads(fast, q, k, v, upstream)
    ref, ref_grads = _values_and_grads(reference, q, k, v, upstream)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    # bf16 keeps 8 bits: the only loss is rounding the float32 results (and q, k, v) to it.
    torch.testing.assert_close(out.double(), ref, rtol=1.6e-2, atol=1e-2)
    for name, got, want in zip("qkv", grads, ref_grads):
        err = (got.double() - want.double()).norm() / want.double().norm()
        assert err < 1e-2, f"grad {name}: relative error {err:.3g}"


def test_block_and_chunk_sizes_reach_the_fused_kernels(monkeypatch):
    """Guards the grid above: with sizes ignored every case would run as one block."""
    seen = []
    for name in ("BidirectionalFavor", "CausalFavor"):
        cls = getattr(blockwise, name)
        original = cls.apply

        def spy(*args, _original=original, _name=name):
            seen.append((_name, args[6]))  # the block rows or the chunk size
            return _original(*args)

        monkeypatch.setattr(cls, "apply", spy)
    q, k, v, w = _inputs(10, "softmax")
    favor_attention(q, k, v, w, block_size=3)
    favor_attention(q, k, v, w, causal=True, chunk_size=5)
    favor_attention(q, k, v, w)  # default: blocks sized to the cache
    favor_attention(q, k, v, w, causal=True)  # default: chunks sized to L, m, the device
    rows = blockwise.block_rows(2 * 2, M, q.device)
    chunk = default_chunk(10, M, D, q.device)
    assert seen == [
        ("BidirectionalFavor", 3),
        ("CausalFavor", 5),
        ("BidirectionalFavor", rows),
        ("CausalFavor", chunk),
    ]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_default_chunk_is_a_bounded_power_of_two(device):
    device = torch.device(device)  # only its type is read: no GPU needed
    sizes = [
        default_chunk(length, m, d, device)
        for length in (1, 256, 4096, 1 << 20)
        for m, d in ((16, 8), (64, 16), (256, 64))
    ]
    assert all(c & (c - 1) == 0 and 16 <= c <= 256 for c in sizes)
    assert min(sizes) >= (64 if device.type == "cuda" else 16)
    assert default_chunk(256, 256, 64, device) <= default_chunk(4096, 256, 64, device)


@pytest.mark.parametrize("bad", [0, -2, 2.5])
def test_bad_sizes_are_explained(bad):
    q, k, v, w = _inputs(5, "softmax")
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        favor_attention(q, k, v, w, block_size=bad)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        favor_attention(q, k, v, w, causal=True, chunk_size=bad)
