"""FAVOR+ attention core: exactness of the linear-time paths, estimator quality, numerics."""

import math

import pytest
import torch

from proteinperf.attention import (
    KERNELS,
    draw_features,
    favor_attention,
    favor_attention_weights,
    feature_maps,
    naive_attention,
    optimal_positive_parameter,
    softmax_attention,
    softmax_attention_weights,
)

CAUSAL_KERNELS = [k for k in KERNELS if k != "softmax_opt"]


def _qkv(b=2, h=2, length=37, d=8, scale=0.5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, length, d, generator=g, dtype=dtype) * s for s in (scale, scale, 1)]


def _explicit_features(x, w, kernel):
    """The paper's φ written out plainly (no stabiliser), float64, for small inputs."""
    x = x * x.shape[-1] ** -0.25
    if kernel == "relu":
        return torch.relu(x @ w.T) + 1e-3
    half = w[: w.shape[0] // 2]
    sq = x.pow(2).sum(-1, keepdim=True) / 2
    if kernel == "softmax":
        return torch.exp(x @ w.T - sq)
    if kernel == "softmax_hyp":
        return torch.cat([torch.exp(x @ half.T - sq), torch.exp(-x @ half.T - sq)], -1)
    if kernel == "trig":
        return torch.exp(sq) * torch.cat([torch.sin(x @ half.T), torch.cos(x @ half.T)], -1)
    raise AssertionError(kernel)


@pytest.mark.parametrize("kernel", CAUSAL_KERNELS)
@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_the_papers_formulas(kernel, causal):
    # Anchors attention/naive.py, against which test_naive_reference.py checks every fast path.
    q, k, v = _qkv(dtype=torch.float64, length=45)
    w = draw_features(32, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = torch.ones(2, 45, dtype=torch.bool)
    mask[1, 30:] = False
    a = _explicit_features(q, w, kernel) @ _explicit_features(k, w, kernel).transpose(-1, -2)
    a = a * mask[:, None, None, :]
    if causal:
        a = a.tril()
    expected = (a @ v) / a.sum(-1, keepdim=True)
    out = naive_attention(q, k, v, w, causal=causal, kernel=kernel, key_padding_mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-8)


def _relative_error(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


def test_softmax_estimate_converges_to_exact_attention():
    q, k, v = _qkv(b=1, h=4, length=128, d=16, scale=0.6, dtype=torch.float64)
    exact = softmax_attention(q, k, v)
    errors = []
    for m in (16, 64, 256, 1024, 4096):
        per_seed = []
        for seed in range(3):
            w = draw_features(m, 16, generator=torch.Generator().manual_seed(seed))
            per_seed.append(_relative_error(favor_attention(q, k, v, w).double(), exact))
        errors.append(sum(per_seed) / len(per_seed))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.15 and errors[-1] < 0.35 * errors[0], errors


def test_orthogonal_features_beat_iid():
    # The paper's Fig. 4 setting: d = 16, error averaged over many draws.
    q, k, v = _qkv(b=1, h=1, length=64, d=16, scale=0.8, dtype=torch.float64, seed=3)
    exact = softmax_attention(q, k, v)

    def mean_error(orthogonal):
        errs = []
        for seed in range(200):  # 20 draws: ahead by 0.1%, behind for other seeds; 200: by 7%
            g = torch.Generator().manual_seed(seed)
            w = draw_features(32, 16, orthogonal=orthogonal, generator=g)
            errs.append(_relative_error(favor_attention(q, k, v, w).double(), exact))
        return sum(errs) / len(errs)

    assert mean_error(True) < mean_error(False)


def test_optimised_features_reduce_error_at_larger_norms():
    q, k, v = _qkv(b=1, h=4, length=256, d=16, scale=0.7, dtype=torch.float64, seed=5)
    exact = softmax_attention(q, k, v)
    errs = {"softmax": 0.0, "softmax_opt": 0.0}
    for seed in range(3):
        w = draw_features(256, 16, generator=torch.Generator().manual_seed(seed))
        for kernel in errs:
            errs[kernel] += _relative_error(
                favor_attention(q, k, v, w, kernel=kernel).double(), exact
            )
    assert errs["softmax_opt"] < 0.8 * errs["softmax"], errs


def test_optimal_parameter_is_plain_favor_for_zero_inputs():
    zeros = torch.zeros(1, 1, 5, 8)
    assert optimal_positive_parameter(zeros, zeros).abs().max() == 0
    a = optimal_positive_parameter(torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8))
    assert (a < 0).all()  # larger inputs pull the features towards smaller |ω| weights


@pytest.mark.parametrize(
    "kernel, causal",
    [
        (k, c)
        for k in ("softmax", "relu", "softmax_hyp", "softmax_opt", "trig")
        for c in (0, 1)
        if not (k == "softmax_opt" and c)
    ],
)
def test_padding_invariance(kernel, causal):
    d, lengths = 8, (29, 17)
    w = draw_features(16, d, generator=torch.Generator().manual_seed(0))
    q, k, v = _qkv(b=2, length=29, d=d, scale=2.0)
    mask = torch.arange(29)[None, :] < torch.tensor(lengths)[:, None]
    # Garbage in the padding must not leak into real positions.
    for t in (q, k, v):
        t[1, :, 17:] = 1e3
    batched = favor_attention(
        q, k, v, w, causal, kernel, key_padding_mask=mask, chunk_size=8, block_size=8
    )
    for i, n in enumerate(lengths):
        alone = favor_attention(
            q[i : i + 1, :, :n],
            k[i : i + 1, :, :n],
            v[i : i + 1, :, :n],
            w,
            causal=causal,
            kernel=kernel,
            chunk_size=8,
            block_size=8,
        )
        torch.testing.assert_close(batched[i : i + 1, :, :n], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", ["softmax", "relu", "trig"])
def test_causal_output_never_depends_on_the_future(kernel):
    q, k, v = _qkv(length=40, scale=1.5)
    w = draw_features(16, 8, generator=torch.Generator().manual_seed(0))
    before = favor_attention(q, k, v, w, causal=True, kernel=kernel, chunk_size=16)
    t = 20
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    k2[:, :, t + 1] *= 40.0  # a future key with a huge logit would dominate a global max
    v2[:, :, t + 1] += 5.0
    after = favor_attention(q2, k2, v2, w, causal=True, kernel=kernel, chunk_size=16)
    torch.testing.assert_close(after[:, :, : t + 1], before[:, :, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, :, t + 1 :], before[:, :, t + 1 :])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["softmax", "relu", "softmax_hyp"])
def test_weights_matrix_is_consistent_with_attention(kernel, causal):
    q, k, v = _qkv(length=30)
    w = draw_features(16, 8, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 25:] = False
    weights = favor_attention_weights(q, k, w, causal=causal, kernel=kernel, key_padding_mask=mask)
    out = favor_attention(q, k, v, w, causal=causal, kernel=kernel, key_padding_mask=mask)
    torch.testing.assert_close(weights @ v, out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 30), atol=1e-5, rtol=0)
    assert (weights[0, :, :, 25:] == 0).all()
    if causal:
        assert (weights.triu(1) == 0).all()


def test_exact_attention_weights_and_padding():
    q, k, v = _qkv(length=12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    for causal in (False, True):
        weights = softmax_attention_weights(q, k, causal=causal, key_padding_mask=mask)
        out = softmax_attention(q, k, v, causal=causal, key_padding_mask=mask)
        torch.testing.assert_close(weights @ v, out, atol=1e-5, rtol=1e-4)
    # A query whose keys are all padded gets zeros, not NaN.
    empty = torch.zeros(2, 12, dtype=torch.bool)
    assert torch.count_nonzero(softmax_attention(q, k, v, key_padding_mask=empty)) == 0


def test_draw_features_orthogonality_scaling_and_determinism():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    w = draw_features(40, 16, generator=g1)
    assert w.shape == (40, 16) and w.dtype == torch.float32
    torch.testing.assert_close(w, draw_features(40, 16, generator=g2), rtol=0, atol=0)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    norms = draw_features(40, 16, scaling="sqrt_d").norm(dim=1)
    torch.testing.assert_close(norms, torch.full((40,), math.sqrt(16)))
    # chi norms: E|ω|² = d
    big = draw_features(4096, 16, generator=torch.Generator().manual_seed(0))
    assert abs(big.pow(2).sum(1).mean().item() - 16) < 0.5
    with pytest.raises(ValueError, match="scaling"):
        draw_features(4, 4, scaling="unit")


@pytest.mark.parametrize("kernel", ["softmax", "relu", "softmax_opt", "softmax_hyp"])
def test_large_norms_under_bf16_autocast_stay_finite(kernel):
    q, k, v = _qkv(b=1, length=64, d=16, scale=30.0)
    q, k, v = (t.bfloat16().requires_grad_() for t in (q, k, v))
    w = draw_features(32, 16)
    causal_options = (False,) if kernel == "softmax_opt" else (False, True)
    for causal in causal_options:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = favor_attention(q, k, v, w, causal=causal, kernel=kernel)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
        out.float().sum().backward()
        for t in (q, k, v):
            assert torch.isfinite(t.grad.float()).all()
            t.grad = None


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_backward_inside_autocast_matches_backward_outside(kernel, causal):
    """``with autocast: loss = ...; loss.backward()`` (backward inside the region, as many
    training loops write it) gives the fused kernels' float32 gradients, not a dtype error."""
    q, k, v = _qkv(b=1, length=40, d=16)
    w = draw_features(32, 16)
    grads = []
    for inside in (False, True):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = favor_attention(*leaves, w, causal=causal, kernel=kernel, chunk_size=16)
            if inside:
                out.float().square().sum().backward()
        if not inside:
            out.float().square().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_feature_maps_zero_padded_keys():
    q, k, _ = _qkv(length=10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    w = draw_features(8, 8)
    _, phi_k, log_scale = feature_maps(q, k, w, "softmax", mask)
    assert (phi_k[0, :, 6:] == 0).all() and (log_scale[0, :, 6:] < -1e30).all()


def test_bad_arguments_are_explained():
    q, k, v = _qkv()
    w = draw_features(8, 8)
    with pytest.raises(ValueError, match="kernel"):
        favor_attention(q, k, v, w, kernel="cosine")
    with pytest.raises(ValueError, match="future"):
        favor_attention(q, k, v, w, causal=True, kernel="softmax_opt")
    with pytest.raises(ValueError, match="features must be"):
        favor_attention(q, k, v, draw_features(8, 4))
    with pytest.raises(ValueError, match="key_padding_mask"):
        favor_attention(q, k, v, w, key_padding_mask=torch.ones(2, 37))
