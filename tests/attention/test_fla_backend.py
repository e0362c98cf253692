"""Causal FAVOR+ on flash-linear-attention (fla_backend.py): the glue, on CPU, against naive.py.

fla's Triton kernels need CUDA: under Triton's CPU interpreter (TRITON_INTERPRET=1, triton
3.9.0) fla-core 0.6.0 does not run (its autotuner asks for a GPU driver, and with the autotuner
pinned to one config, ops/common/chunk_h.py calls ``i_t.to(tl.int64)`` on a loop index the
interpreter keeps as a Python int). Here a stand-in ``fla`` package implements their documented
semantics in plain torch (o_t = scale·q_tᵀS_t, S_t = exp(g_t)·S_{t−1} + k_t v_tᵀ, tensors
[B, T, H, ·], state [B, H, K, V]) and rejects any other layout, so layout, gates, padding,
normalisation and the state hand-off are all exercised; the CUDA test at the end runs the
real kernels where they exist.
"""

import sys
import types

import pytest
import torch

from proteinperf.attention import draw_features, favor_attention, fla_backend, naive_attention
from proteinperf.attention import favor as favor_module
from proteinperf.attention import recurrent as recurrent_module
from proteinperf.attention.recurrent import favor_step, init_state

B, H, L, D, M = 2, 3, 37, 8, 16  # all distinct: a swapped axis cannot pass unnoticed


def _recurrence(q, k, v, g, scale, initial_state, output_final_state):
    b, t, h, kd = q.shape
    if k.shape != q.shape or v.shape[:3] != (b, t, h) or g.shape != (b, t, h):
        raise ValueError(f"fake fla: bad shapes q {q.shape} k {k.shape} v {v.shape} g {g.shape}")
    if not all(x.is_contiguous() for x in (q, k, v, g)):
        raise ValueError("fake fla: inputs must be contiguous")
    state = q.new_zeros(b, h, kd, v.shape[-1])
    if initial_state is not None:
        if initial_state.shape != state.shape:
            raise ValueError(f"fake fla: state {initial_state.shape}, expected {state.shape}")
        state = initial_state
    outs = []
    for i in range(t):
        update = k[:, i, :, :, None] * v[:, i, :, None, :]  # (B, H, K, V)
        state = torch.exp(g[:, i])[..., None, None] * state + update
        outs.append(scale * (q[:, i, :, :, None] * state).sum(-2))
    return torch.stack(outs, 1), (state if output_final_state else None)


def _chunk_simple_gla(
    q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False, **kw
):
    if kw:  # e.g. head_first: removed from fla before FLA_VERSION
        raise TypeError(f"fake fla: unexpected arguments {sorted(kw)}")
    g = torch.zeros(q.shape[:3], dtype=q.dtype) if g is None else g
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _recurrence(q, k, v, g, scale, initial_state, output_final_state)


def _chunk_linear_attn(
    q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True, **kw
):
    if normalize:
        raise AssertionError("proteinperf normalises itself: normalize must be False")
    return _chunk_simple_gla(q, k, v, None, None, scale, initial_state, output_final_state, **kw)


def _install_fake(monkeypatch, version=fla_backend.FLA_VERSION):
    fla = types.ModuleType("fla")
    fla.__version__ = version
    ops = types.ModuleType("fla.ops")
    linear_attn = types.ModuleType("fla.ops.linear_attn")
    linear_attn.chunk_linear_attn = _chunk_linear_attn
    simple_gla = types.ModuleType("fla.ops.simple_gla")
    simple_gla.chunk_simple_gla = _chunk_simple_gla
    for module in (fla, ops, linear_attn, simple_gla):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    fla_backend.fla_kernels.cache_clear()


@pytest.fixture
def fake_fla(monkeypatch):
    """The fake fla installed, and the fla path taken on CPU (and for float64)."""
    _install_fake(monkeypatch)
    calls = []

    def on(x, kernel):
        calls.append(kernel)
        return kernel in fla_backend.FUSED_KERNELS

    monkeypatch.setattr(favor_module, "use_fla", on)
    monkeypatch.setattr(recurrent_module, "use_fla", on)
    yield calls
    fla_backend.fla_kernels.cache_clear()


def _inputs(scale=1.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    q, k, v = (scale * torch.randn(B, H, L, D, generator=g, dtype=dtype) for _ in range(3))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :4] = False  # leading padded keys: the running max starts at the floor
    mask[0, 20:23] = False  # padded keys between real ones
    mask[1, 30:] = False  # trailing padding
    return q, k, v, draw_features(M, D, generator=g, dtype=dtype), mask


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("padded", [False, True])
def test_values_and_gradients_equal_naive(fake_fla, kernel, padded):
    q, k, v, w, mask = _inputs()
    mask = mask if padded else None
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = favor_attention(*leaves, w, causal=True, kernel=kernel, key_padding_mask=mask)
    assert fake_fla == [kernel]  # the fla path ran
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = naive_attention(*ref_leaves, w, causal=True, kernel=kernel, key_padding_mask=mask)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-9)


def test_large_logits_stay_finite(fake_fla):
    """Key log-scales far apart (|k| large): the gates carry the running max, no overflow."""
    q, k, v, w, mask = _inputs(scale=8.0)
    out = favor_attention(q, k, v, w, causal=True, kernel="softmax", key_padding_mask=mask)
    ref = naive_attention(q, k, v, w, causal=True, kernel="softmax", key_padding_mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-10)


def test_gates_are_changes_of_the_running_max():
    floor = fla_backend.MASKED_LOG_SCALE
    s = torch.tensor([[[floor, 1.0, 0.5, 3.0, floor, 2.0]]], dtype=torch.float64)
    running, gates = fla_backend.running_max_gates(s, None)
    assert running.tolist() == [[[floor, 1.0, 1.0, 3.0, 3.0, 3.0]]]
    assert gates.tolist() == [[[0.0, 0.0, 0.0, -2.0, 0.0, 0.0]]]  # 0 while no key was seen
    running, gates = fla_backend.running_max_gates(s, torch.tensor([[2.0]], dtype=torch.float64))
    assert running[0, 0, 0] == 2.0 and gates[0, 0, 3] == -1.0


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_state_hand_off_matches_the_pytorch_path(fake_fla, kernel, monkeypatch):
    """A prompt in two parts: outputs and the carried FavorState equal the PyTorch path's."""
    q, k, v, w, mask = _inputs()
    cut = 15

    def two_parts():
        state = init_state(B, H, M, D, dtype=q.dtype)
        outs = []
        for part in (slice(0, cut), slice(cut, L)):
            out, state = favor_step(
                state, q[:, :, part], k[:, :, part], v[:, :, part], w, kernel, mask[:, part]
            )
            outs.append(out)
        return torch.cat(outs, 2), state

    out, state = two_parts()
    assert fake_fla == [kernel, kernel]
    monkeypatch.setattr(recurrent_module, "use_fla", lambda x, kernel: False)
    ref_out, ref_state = two_parts()
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(state.context, ref_state.context, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(state.shift, ref_state.shift)
    full = naive_attention(q, k, v, w, causal=True, kernel=kernel, key_padding_mask=mask)
    torch.testing.assert_close(out, full, rtol=1e-8, atol=1e-10)


def test_other_versions_fall_back_to_pytorch(monkeypatch):
    _install_fake(monkeypatch, version="0.4.0")
    with pytest.warns(UserWarning, match="fla-core 0.4.0 is installed"):
        assert fla_backend.fla_kernels() is None
    fla_backend.fla_kernels.cache_clear()


def test_not_used_on_cpu_float64_or_when_switched_off(monkeypatch):
    _install_fake(monkeypatch)
    x = torch.zeros(1)
    assert not fla_backend.use_fla(x, "softmax")  # CPU
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert fla_backend.use_fla(x, "relu")
    assert not fla_backend.use_fla(x, "trig")
    assert not fla_backend.use_fla(x.double(), "relu")
    monkeypatch.setenv(fla_backend.DISABLE_ENV, "0")
    assert not fla_backend.use_fla(x, "relu")
    fla_backend.fla_kernels.cache_clear()


def _real_fla() -> bool:
    fla_backend.fla_kernels.cache_clear()
    return torch.cuda.is_available() and fla_backend.fla_kernels() is not None


@pytest.mark.skipif(not _real_fla(), reason="needs CUDA and fla-core " + fla_backend.FLA_VERSION)
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernels_match_naive(kernel, dtype):
    q, k, v, w, mask = (t.cuda() for t in _inputs(dtype=torch.float32))
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = favor_attention(*leaves, w, causal=True, kernel=kernel, key_padding_mask=mask)
    assert fla_backend.use_fla(leaves[0], kernel)
    ref_leaves = [t.to(dtype).double().requires_grad_() for t in (q, k, v)]
    ref = naive_attention(*ref_leaves, w.double(), True, kernel, mask)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3  # fla's float32 dots may run in TF32
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=5 * tol, atol=5 * tol)
