"""The recurrent FAVOR+ state and the KV cache reproduce full causal attention."""

import pytest
import torch

from proteinperf.attention import draw_features, favor_attention, naive_attention, softmax_attention
from proteinperf.attention.recurrent import (
    FavorState,
    favor_step,
    init_kv_cache,
    init_state,
    kv_step,
    read_state,
    update_state,
)

B, H, L, D, M = 2, 2, 100, 8, 16
CHUNK = 32  # the full causal kernel's chunks: L crosses three boundaries


def _inputs(scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (scale * torch.randn(B, H, L, D, generator=g, dtype=dtype) for _ in range(3))
    return q, k, v, draw_features(M, D, generator=g, dtype=dtype)


def _token_by_token(q, k, v, w, kernel):
    state, outs = init_state(B, H, M, D, dtype=q.dtype), []
    for i in range(L):
        sl = slice(i, i + 1)
        out, state = favor_step(state, q[:, :, sl], k[:, :, sl], v[:, :, sl], w, kernel)
        outs.append(out)
    return torch.cat(outs, dim=2), state


@pytest.mark.parametrize("kernel", ["softmax", "relu", "softmax_hyp"])
def test_token_by_token_and_chunks_match_full_causal(kernel):
    q, k, v, w = _inputs()
    full = favor_attention(q, k, v, w, causal=True, kernel=kernel, chunk_size=CHUNK)
    steps, _ = _token_by_token(q, k, v, w, kernel)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)
    # A prompt of 37 in chunks of 20, then the rest in one call.
    out1, state = favor_step(
        init_state(B, H, M, D), q[:, :, :37], k[:, :, :37], v[:, :, :37], w, kernel, chunk_size=20
    )
    out2, _ = favor_step(state, q[:, :, 37:], k[:, :, 37:], v[:, :, 37:], w, kernel)
    torch.testing.assert_close(torch.cat([out1, out2], 2), full, atol=1e-5, rtol=1e-4)


def test_trig_matches_in_float64():
    q, k, v, w = _inputs(dtype=torch.float64)
    full = favor_attention(q, k, v, w, causal=True, kernel="trig", chunk_size=CHUNK)
    steps, _ = _token_by_token(q, k, v, w, "trig")
    torch.testing.assert_close(steps, full, atol=1e-8, rtol=1e-6)


def test_update_then_read_is_one_step():
    q, k, v, w = _inputs()
    _, state = favor_step(init_state(B, H, M, D), q[:, :, :50], k[:, :, :50], v[:, :, :50], w)
    sl = slice(50, 51)
    out, stepped = favor_step(state, q[:, :, sl], k[:, :, sl], v[:, :, sl], w)
    updated = update_state(state, k[:, :, sl], v[:, :, sl], w)
    torch.testing.assert_close(read_state(updated, q[:, :, sl], w), out)
    torch.testing.assert_close(updated.context, stepped.context)


def test_state_does_not_overflow_with_huge_keys():
    q, k, v, w = _inputs(scale=40.0)  # exp(ωᵀk) alone would overflow float32
    full = favor_attention(q, k, v, w, causal=True, chunk_size=CHUNK)
    steps, state = _token_by_token(q, k, v, w, "softmax")
    assert torch.isfinite(state.context).all() and state.context.abs().max() <= L
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)


def test_state_size_is_constant():
    q, k, v, w = _inputs()
    _, short = favor_step(init_state(B, H, M, D), q[:, :, :3], k[:, :, :3], v[:, :, :3], w)
    _, long = favor_step(init_state(B, H, M, D), q, k, v, w)
    assert short.nbytes() == long.nbytes() == (B * H * M * (D + 1) + B * H) * 4


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_state_after_a_prompt_holds_only_its_own_numbers(kernel):
    # The chunked kernel's final state is one row of all the chunk prefixes: the state that
    # decoding keeps (and updates in place) must not be a strided view that keeps them alive.
    q, k, v, w = _inputs()
    _, state = favor_step(init_state(B, H, M, D), q, k, v, w, kernel, chunk_size=CHUNK)
    for t in state:
        assert t.is_contiguous()
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_padded_keys_leave_the_state_unchanged(kernel):
    q, k, v, w = _inputs()
    mask = torch.ones(B, 10, dtype=torch.bool)
    mask[0, 6:] = False
    _, padded = favor_step(
        init_state(B, H, M, D),
        q[:, :, :10],
        k[:, :, :10],
        v[:, :, :10],
        w,
        kernel,
        key_padding_mask=mask,
    )
    _, short = favor_step(
        init_state(1, H, M, D), q[:1, :, :6], k[:1, :, :6], v[:1, :, :6], w, kernel
    )
    torch.testing.assert_close(padded.context[:1], short.context)


def test_kv_cache_matches_full_causal_and_grows():
    q, k, v, _ = _inputs()
    full = softmax_attention(q, k, v, causal=True)
    out1, cache = kv_step(
        init_kv_cache(B, H, D, D, capacity=4), q[:, :, :40], k[:, :, :40], v[:, :, :40]
    )
    outs = [out1]
    for i in range(40, L):
        sl = slice(i, i + 1)
        out, cache = kv_step(cache, q[:, :, sl], k[:, :, sl], v[:, :, sl])
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), full, atol=1e-5, rtol=1e-4)
    assert cache.length == L and cache.nbytes() == L * (B * H * 2 * D * 4 + B)


# --- fused one-position steps (decoding) -----------------------------------------------------


def _at(i, *tensors):
    return [t[:, :, i : i + 1] for t in tensors]


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("scale", [2.0, 40.0])  # 40: exp(ωᵀk) alone would overflow float32
@torch.inference_mode()
def test_fused_token_step_equals_favor_step(kernel, scale):
    """Without autograd, favor_step of one position takes the fused in-place kernel."""
    q, k, v, w = _inputs(scale=scale)
    exact = favor_attention(*(t.double() for t in (q, k, v, w)), causal=True, kernel=kernel)
    with torch.inference_mode(False), torch.enable_grad():  # the unfused one-position path
        _, expected_state = _token_by_token(q, k, v, w, kernel)
    state, outs = init_state(B, H, M, D), []
    context = state.context
    for i in range(L):
        out, state = favor_step(state, *_at(i, q, k, v), w, kernel)
        outs.append(out)
    assert state.context is context  # updated in place: the fused kernel ran
    # Exponents reach ~10³ at scale 40: float32 keeps ~1e-4 of them (favor_step: 1.3e-3).
    tol = 1e-5 if scale == 2.0 else 1e-3
    torch.testing.assert_close(torch.cat(outs, 2), exact.float(), atol=tol, rtol=1e-4)
    torch.testing.assert_close(state.shift, expected_state.shift)
    torch.testing.assert_close(state.context, expected_state.context, atol=tol, rtol=1e-3)


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@torch.inference_mode()
def test_fused_token_step_skips_padded_rows(kernel):
    q, k, v, w = _inputs()
    _, state = favor_step(init_state(B, H, M, D), q[:, :, :5], k[:, :, :5], v[:, :, :5], w, kernel)
    before = FavorState(*(t.clone() for t in state))
    keep = torch.tensor([[True], [False]])
    out, after = favor_step(state, *_at(5, q, k, v), w, kernel, keep)
    assert after.context is state.context
    torch.testing.assert_close(after.context[1], before.context[1], atol=0, rtol=0)
    torch.testing.assert_close(after.shift[1], before.shift[1], atol=0, rtol=0)
    with torch.inference_mode(False), torch.enable_grad():
        alone, _ = favor_step(before, *_at(5, q, k, v), w, kernel)
    torch.testing.assert_close(out[0], alone[0], atol=1e-5, rtol=1e-4)


def test_fused_token_step_only_without_autograd_and_for_its_kernels():
    q, k, v, w = _inputs()
    for kernel, fused in (("softmax", True), ("relu", True), ("softmax_hyp", False)):
        with torch.inference_mode():
            state = init_state(B, H, M, D)
            _, after = favor_step(state, *_at(0, q, k, v), w, kernel)
        assert (after.context is state.context) == fused, kernel
    state = init_state(B, H, M, D)
    _, after = favor_step(state, *_at(0, q, k, v), w)  # autograd on: a new state, the old kept
    assert after.context is not state.context and state.context.abs().sum() == 0


def test_kv_step_one_position_at_a_time():
    q, k, v, _ = _inputs()
    cache, outs = init_kv_cache(B, H, D, D, capacity=4), []
    for i in range(20):
        out, cache = kv_step(cache, *_at(i, q, k, v))
        outs.append(out)
    full = softmax_attention(q[:, :, :20], k[:, :, :20], v[:, :, :20], causal=True)
    torch.testing.assert_close(torch.cat(outs, 2), full, atol=1e-5, rtol=1e-4)
    # A padded position takes a slot that no later query sees.
    keep = torch.tensor([[True], [False]])
    _, cache = kv_step(cache, *_at(20, q, k, v), keep)
    out, cache = kv_step(cache, *_at(21, q, k, v))
    assert cache.length == 22 and cache.keep[:, :22].sum() == 43
    drop = torch.cat((torch.arange(20), torch.tensor([21])))
    alone = softmax_attention(q[1:, :, drop], k[1:, :, drop], v[1:, :, drop], causal=True)
    torch.testing.assert_close(out[1, :, 0], alone[0, :, -1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", ["softmax", "relu", "softmax_hyp"])
def test_prompt_after_a_state_matches_the_reference_and_update_state(kernel):
    # After a 5-position prefix, the rest in one call (chunks of 7: a ragged last chunk), keys
    # of row 1 padded in the middle and at the end: outputs are the quadratic reference's,
    # and the state returned is the one update_state builds key by key.
    q, k, v, w = _inputs(dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 20:30] = False
    mask[1, 90:] = False
    start = init_state(B, H, M, D, dtype=q.dtype)
    _, start = favor_step(start, q[:, :, :5], k[:, :, :5], v[:, :, :5], w, kernel)
    out, state = favor_step(
        start, q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], w, kernel, mask[:, 5:], chunk_size=7
    )
    reference = naive_attention(q, k, v, w, causal=True, kernel=kernel, key_padding_mask=mask)
    torch.testing.assert_close(out, reference[:, :, 5:], rtol=1e-9, atol=1e-11)
    updated = update_state(start, k[:, :, 5:], v[:, :, 5:], w, kernel, mask[:, 5:])
    torch.testing.assert_close(state.shift, updated.shift, rtol=0, atol=0)
    torch.testing.assert_close(state.context, updated.context, rtol=1e-10, atol=1e-12)
