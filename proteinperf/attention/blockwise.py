"""Fused FAVOR+ (bidirectional and causal): autograd functions that recompute features blockwise.

Why by hand: with autograd, every (L, m) feature tensor is written to and read back from
DRAM several times and kept for backward, and on a CPU that traffic, not the arithmetic,
sets the speed. Here features are made block by block (a block of rows stays in cache),
only q, k, v, the (m, d+1) context and the normaliser are kept, and backward makes the
features again instead of storing them: memory O(L·d + m·d) and about half the time.

Kernels: "softmax" (FAVOR+ positive features) and "relu"; others use favor.py's autograd
paths. Blocks (bidirectional), chunks and spans (causal) change speed and memory, never the
result.
Bidirectional maths (Choromanski et al., 2021, Eq. 4-5), per (batch, head), with v' = [v, 1]:
    φ(q)_i = exp(Wq̂_i − max_m Wq̂_i)          (per-query shift: cancels in the ratio)
    κ_j    = exp(Wk̂_j − |k̂_j|²/2 − s*)        (one shift s* over all keys and features)
    C = Σ_j κ_j v'_jᵀ,   o_i = φ(q)_iᵀ C,   out_i = o_i[:d] / o_i[d]
"""

from __future__ import annotations

import functools

import torch

from .phi import DENOMINATOR_EPS, MASKED_LOG_SCALE, RELU_EPSILON
from .scan import ChunkDecays, chunk_prefixes, chunk_suffixes, pad_positions, running_max, scaled

_BLOCK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 25}  # feature entries per block


def block_rows(batch_heads: int, nb_features: int, device: torch.device) -> int:
    target = _BLOCK_ELEMENTS.get(device.type, 1 << 22)
    rows = max(32, target // max(1, batch_heads * nb_features))
    return 1 << (rows.bit_length() - 1)  # a power of two


def _query_features(q_blk, w, kernel):
    proj = q_blk @ w.T
    if kernel == "relu":
        return torch.relu(proj).add_(RELU_EPSILON), proj
    proj = proj.sub_(proj.amax(-1, keepdim=True))
    return proj.exp_(), None


def _key_logits(k_blk, w, kernel, keep_blk, fill=-torch.inf):
    """softmax: Wk̂ − |k̂|²/2 with padded keys at ``fill``; relu: Wk̂."""
    proj = k_blk @ w.T
    if kernel == "relu":
        return proj
    proj = proj.sub_(k_blk.pow(2).sum(-1, keepdim=True).mul_(0.5))
    if keep_blk is not None:
        proj = proj.masked_fill_(~keep_blk.unsqueeze(-1), fill)
    return proj


def _key_features(logits, kernel, shift, keep_blk):
    if kernel == "relu":
        phi = torch.relu(logits).add_(RELU_EPSILON)
        return phi if keep_blk is None else phi.mul_(keep_blk.unsqueeze(-1))
    return (logits - shift).exp_()  # padded: exp(-inf) = 0, no mask pass needed


def _without_autocast(backward):
    """Backward in the forward's float32 also when ``loss.backward()`` is called inside an
    autocast region (autocast would turn its matmuls to bf16 next to float32 buffers)."""

    @functools.wraps(backward)
    def run(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return backward(ctx, grad_out)

    return run


class BidirectionalFavor(torch.autograd.Function):
    """(q̂, k̂, v', W) -> out, for q̂ = q·d^-1/4, all (BH, L, ·) float32 contiguous."""

    @staticmethod
    def forward(ctx, q, k, v_ext, w, keep, kernel, rows):
        bh, length, _ = q.shape
        m, e = w.shape[0], v_ext.shape[-1]
        context = q.new_zeros(bh, m, e)
        top = q.new_full((bh, 1, 1), -torch.inf)  # largest key logit so far; -inf: none yet
        shift = torch.zeros_like(top)  # top, or 0 while every key so far was padded
        for lo in range(0, length, rows):
            sl = slice(lo, lo + rows)
            keep_blk = None if keep is None else keep[:, sl]
            logits = _key_logits(k[:, sl], w, kernel, keep_blk)
            if kernel != "relu":
                # Online max (as in streaming softmax): rescale what is summed so far. Before
                # the first real key the context is zero: factor exp(-inf − shift) = 0, and
                # the shift then jumps to the real max (a fixed 0 would underflow logits far
                # below 0: an all-padded first block once returned zeros).
                new_top = torch.maximum(top, logits.amax((1, 2), keepdim=True))
                shift = torch.where(torch.isinf(new_top), 0.0, new_top)
                context.mul_(torch.exp(top - shift))
                top = new_top
            kappa = _key_features(logits, kernel, shift, keep_blk)
            context.baddbmm_(kappa.transpose(1, 2), v_ext[:, sl])
        out_ext = torch.empty(bh, length, e, dtype=q.dtype, device=q.device)
        for lo in range(0, length, rows):
            phi_q, _ = _query_features(q[:, lo : lo + rows], w, kernel)
            out_ext[:, lo : lo + rows] = phi_q @ context
        den = out_ext[..., -1:] + DENOMINATOR_EPS
        out = out_ext[..., :-1] / den
        ctx.save_for_backward(q, k, v_ext, w, keep, context, shift, den, out)
        ctx.kernel, ctx.rows = kernel, rows
        return out

    @staticmethod
    @_without_autocast
    def backward(ctx, grad_out):
        q, k, v_ext, w, keep, context, shift, den, out = ctx.saved_tensors
        kernel, rows = ctx.kernel, ctx.rows
        length = q.shape[1]
        # d out / d [num, den] for out = num / den.
        grad_num = grad_out / den
        grad_den = -(grad_out * out).sum(-1, keepdim=True) / den
        grad_o = torch.cat([grad_num, grad_den], dim=-1)  # (BH, L, e)

        grad_q = torch.empty_like(q)
        grad_context = torch.zeros_like(context)
        for lo in range(0, length, rows):
            sl = slice(lo, lo + rows)
            phi_q, proj = _query_features(q[:, sl], w, kernel)
            grad_phi = grad_o[:, sl] @ context.transpose(1, 2)
            grad_context.baddbmm_(phi_q.transpose(1, 2), grad_o[:, sl])
            if kernel == "relu":
                grad_proj = grad_phi.mul_(proj > 0)
            else:
                grad_proj = grad_phi.mul_(phi_q)  # d exp(x)/dx = exp(x); the shift is constant
            grad_q[:, sl] = grad_proj @ w

        grad_k = torch.empty_like(k)
        grad_v = torch.empty_like(v_ext)
        for lo in range(0, length, rows):
            sl = slice(lo, lo + rows)
            keep_blk = None if keep is None else keep[:, sl]
            logits = _key_logits(k[:, sl], w, kernel, keep_blk)
            kappa = _key_features(logits, kernel, shift, keep_blk)
            grad_v[:, sl] = kappa @ grad_context
            grad_kappa = v_ext[:, sl] @ grad_context.transpose(1, 2)
            if kernel == "relu":
                mask = logits > 0
                if keep_blk is not None:
                    mask &= keep_blk.unsqueeze(-1)
                grad_k[:, sl] = grad_kappa.mul_(mask) @ w
            else:
                grad_logits = grad_kappa.mul_(kappa)
                # logits = Wk̂ − |k̂|²/2  =>  dk̂ = Wᵀg − k̂ Σ_m g
                grad_k[:, sl] = grad_logits @ w - k[:, sl] * grad_logits.sum(-1, keepdim=True)
        return grad_q, grad_k, grad_v, None, None, None, None


def _flatten_heads(q, k, v, key_padding_mask):
    """(B, H, L, ·) -> contiguous (B·H, L, ·): q̂ = q·d^-1/4, k̂, v' = [v, 1], mask per row."""
    b, h, length, d = q.shape
    scale = d**-0.25
    q_hat = (q * scale).reshape(b * h, length, d).contiguous()
    k_hat = (k * scale).reshape(b * h, length, d).contiguous()
    v_ext = torch.nn.functional.pad(v, (0, 1), value=1.0).reshape(b * h, length, -1)
    keep = None
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, :].expand(b, h, length).reshape(b * h, length)
    return q_hat, k_hat, v_ext, keep


def bidirectional_favor(q, k, v, features, kernel, key_padding_mask, block_size=None):
    """Shapes as ``favor_attention``; float32 (or float64) in and out; block_size rows a block."""
    b, h, length, _ = q.shape
    rows = block_size or block_rows(b * h, features.shape[0], q.device)
    args = _flatten_heads(q, k, v, key_padding_mask)
    return BidirectionalFavor.apply(*args[:3], features, args[3], kernel, rows).view(
        b, h, length, -1
    )


# Causal: (positions, m) entries per span (super-chunk). On a CPU a call whose (L, m) tensors
# hold up to 2^21 entries (8 MiB) runs as one span and keeps its features for backward; a
# longer one runs in spans of at most 2^18 entries (1 MiB: a span's temporaries stay in the
# L2 cache), at least one chunk. Measured (B=1, H=8, d=64, m=256, C=128, fwd+bwd, 2 threads):
# at L=2048 one span took 145 ms, spans of one chunk 122; at L=4096 spans of 4 chunks 249,
# of one chunk 226 (the old chunk loop 239); at L=1024 one span 59, spans of one chunk 67;
# a CPU training batch (B=16, H=8, d=16, m=64, L=1024, C=64) relu 225 ms in one span, 134 in
# spans of one chunk. The extra ops of a span (~170) are cheap on a CPU. A GPU keeps long
# inputs in one span (one set of kernel launches). One span is exactly what keeps features.
_KEEP_ELEMENTS = 1 << 21  # (L, m) entries up to which the causal kernel keeps its features
_SPAN_ELEMENTS = {"cpu": (_KEEP_ELEMENTS, 1 << 18), "cuda": (1 << 28, 1 << 28)}


def span_chunks(
    batch_heads: int, nb_features: int, size: int, chunks: int, device: torch.device
) -> int:
    """Chunks of ``size`` positions per span of the causal kernel (at least one)."""
    whole, part = _SPAN_ELEMENTS.get(device.type, (1 << 24, 1 << 24))
    per_chunk = max(1, batch_heads * nb_features * size)
    if chunks * per_chunk <= whole:
        return chunks
    return max(1, part // per_chunk)


def _spans(chunks: int, per: int) -> list[tuple[int, int]]:
    """[lo, hi) chunk ranges of at most ``per`` chunks, as even as they go."""
    count = -(-chunks // per)
    per = -(-chunks // count)
    return [(lo, min(chunks, lo + per)) for lo in range(0, chunks, per)]


def _causal_key_logits(k_blk, w, kernel, keep_blk):
    """As ``_key_logits``, padded keys at MASKED_LOG_SCALE (the running max's floor)."""
    return _key_logits(k_blk, w, kernel, keep_blk, MASKED_LOG_SCALE)


def _causal_features(q, k, w, keep, kernel, running=None, start=None):
    """φ(q) and the key features κ̃ (zero for padded keys), (BH, L, m), and (softmax) the
    running max M_j of the key logits, (BH, L): given, or from the logits and ``start`` (BH,),
    the stabiliser of a carried state. In place: no projection is kept (relu's backward
    reads its mask off the features: ReLU(x) + ε > ε exactly where x > 0, short of
    0 < x < ε·2⁻²⁴ in float32, where the kink makes any slope as good)."""
    proj = q @ w.T
    if kernel == "relu":
        phi_q = proj.clamp_min_(0.0).add_(RELU_EPSILON)
    else:
        phi_q = proj.sub_(proj.amax(-1, keepdim=True)).exp_()
    logits = _causal_key_logits(k, w, kernel, keep)
    if kernel == "relu":
        kappa, running = logits.clamp_min_(0.0).add_(RELU_EPSILON), None
    else:
        if running is None:
            running = running_max(logits.amax(-1), start)
        kappa = logits.sub_(running.unsqueeze(-1)).exp_()  # κ̃_j = exp(t_j − M_j)
    if keep is not None:
        kappa = kappa.mul_(keep.unsqueeze(-1))
    return phi_q, kappa, running


def _decays(running, start, chunks, size):
    """ChunkDecays of a span: running (BH, N·C) or None (relu); start (BH,) or None (no
    keys before: the floor)."""
    if running is None:
        return ChunkDecays(None)
    return ChunkDecays(running.view(-1, chunks, size), start)


def _zero_where_at_most(grad, x, threshold):
    """grad[x ≤ threshold] = 0, in place: ReLU's backward op, one pass and no mask tensor
    (masked_fill_ with an (L, m) bool mask is ~10x slower on CPU)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, x, threshold, grad_input=grad)


def _feature_backward(grad, features, kernel):
    """From d features to d projections, in place. relu: zero where the features sit at ε
    (ReLU's flat side, or κ̃ = 0: a padded key); softmax: times the features, as
    d exp(x)/dx = exp(x) (the shifts are constants)."""
    features = features.view_as(grad)
    if kernel == "relu":
        return _zero_where_at_most(grad, features, RELU_EPSILON)
    return grad.mul_(features)


def _bmm(a, b, out):
    """a @ b over (BH, N, ·, ·) into ``out`` (a dead buffer of that shape)."""
    torch.bmm(a.flatten(0, 1), b.flatten(0, 1), out=out.flatten(0, 1))
    return out


def _add_bmm(acc, a, b):
    """acc += a @ b in place over (BH, N, ·, ·): one pass, no product temporary."""
    acc.flatten(0, 1).baddbmm_(a.flatten(0, 1), b.flatten(0, 1))
    return acc


def _span_forward(q, k, ve, w, keep, kernel, size, carried, final):
    """One span of N chunks after the state ``carried`` ((context, its stabiliser), or None:
    no keys before): [numerator, denominator] (BH, N·C, e), the chunk prefixes (BH, N, m, e),
    the running max (softmax), if ``final`` the state after the span, and what backward could
    otherwise recompute: φ(q), κ̃ (BH, N, C, m) and the weighted in-chunk products
    (BH, N, C, C)."""
    bh, positions, e = ve.shape
    n = positions // size
    initial, start = carried if carried is not None else (None, None)
    phi_q, kappa, running = _causal_features(q, k, w, keep, kernel, start=start)
    decays = _decays(running, start, n, size)
    phi_q, kappa, ve = (t.view(bh, n, size, -1) for t in (phi_q, kappa, ve))
    states = kappa.transpose(-1, -2) @ scaled(ve, decays.to_end)  # (BH, N, m, e)
    prefixes, state = chunk_prefixes(states, decays.scan, initial, final)
    del states
    scores = decays.mask(phi_q @ kappa.transpose(-1, -2))  # (BH, N, C, C)
    out_ext = _add_bmm(scaled(phi_q @ prefixes, decays.from_prev, True), scores, ve)
    carried = (state, decays.end) if final else None
    return out_ext.view(bh, positions, e), prefixes, running, carried, (phi_q, kappa, scores)


def _span_backward(
    q, k, ve, w, keep, kernel, size, prefixes, running, carried, do, grad_final, kept=None
):
    """Backward of ``_span_forward``: d q, d k, d v' of the span and, if a state was
    ``carried`` in ((True, its stabiliser: the running max before the span; relu: None), or
    None), d of that state. ``grad_final``: d of the state after the span (None: the last);
    ``kept``: forward's φ(q), κ̃ and in-chunk products, or None (recomputed)."""
    start = None if carried is None else carried[1]
    bh, positions, e = ve.shape
    n = positions // size
    if kept is None:
        phi_q, kappa, _ = _causal_features(q, k, w, keep, kernel, running=running)
        kept = (phi_q, kappa, None)
    phi_q, kappa, scores = kept
    decays = _decays(running, start, n, size)
    phi_q, kappa, ve, do = (t.view(bh, n, size, -1) for t in (phi_q, kappa, ve, do))
    # Query side: dφq_i = Σ_{j≤i} pair_ij (do_i·v'_j) κ̃_j + exp(E_{n−1} − M_i) P_n do_i.
    # Ordered so that at most four (L, m)-sized buffers are alive at once.
    do_prev = scaled(do, decays.from_prev)
    weights = decays.mask(do @ ve.transpose(-1, -2))  # (BH, N, C_i, C_j)
    grad_phi_q = _add_bmm(do_prev @ prefixes.transpose(-1, -2), weights, kappa)
    grad_states, grad_initial = chunk_suffixes(
        phi_q.transpose(-1, -2) @ do_prev, decays.scan, grad_final, initial=carried is not None
    )
    del do_prev
    grad_q = _feature_backward(grad_phi_q.view(bh, positions, -1), phi_q, kernel) @ w
    # Key side, in-chunk pairs and (through S_n) every later query. Into dφq's buffer:
    # fresh (L, m) memory costs the kernel's page zeroing, about as much as the product.
    later = _bmm(scaled(ve, decays.to_end), grad_states.transpose(-1, -2), out=grad_phi_q)
    grad_kappa = _add_bmm(later, weights.transpose(-1, -2), phi_q)
    if scores is None:
        scores = decays.mask(_bmm(phi_q, kappa.transpose(-1, -2), out=weights))
    del phi_q
    grad_v = _add_bmm(
        scaled(kappa @ grad_states, decays.to_end, True), scores.transpose(-1, -2), do
    )
    del scores, weights, grad_states
    grad_logits = _feature_backward(grad_kappa.view(bh, positions, -1), kappa, kernel)
    if kernel == "relu":
        grad_k = grad_logits @ w
    else:  # logits = Wk̂ − |k̂|²/2  =>  dk̂ = Wᵀg − k̂ Σ_m g
        grad_k = grad_logits @ w - k * grad_logits.sum(-1, keepdim=True)
    return grad_q, grad_k, grad_v.view(bh, positions, e), grad_initial


def _cat(parts, dim):
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


class CausalFavor(torch.autograd.Function):
    """Causal FAVOR+ over N chunks of C positions, all chunks of a span at once (scan.py).

    Key logits are shifted by the running max M_i = max_{j≤i} max_m t_jm (never by a max over
    future keys), so every exponent is ≤ 0 and output i depends on keys ≤ i only, also in
    floating point. Per chunk: the masked (C, C) products inside it, and its state
    S_n = Σ_{j∈n} exp(M_j − E_n) κ̃_j v'_jᵀ; the prefixes P_n (the states before each chunk)
    are one scan over the S_n. Backward runs the scan backwards:
    dS_n = Σ_{n' > n} exp(E_n − E_{n'−1}) dP_n'. Saved: q, k, v', the N prefixes
    (N·m·(d+1)) and the running max (L); the features are recomputed in backward, except in
    calls of at most _KEEP_ELEMENTS (L, m) entries, which keep them and the in-chunk
    products. A ragged last chunk is padded with zeros: its padded keys come after every
    real query.

    Long inputs run in spans of whole chunks (``span_chunks``: bounded temporaries), the
    state after a span carried into the next and its gradient back: ~170 more ops per span.
    """

    @staticmethod
    def forward(ctx, q, k, v_ext, w, keep, kernel, chunk, span=None):
        bh, length, _ = q.shape
        size = min(chunk, length)
        n = -(-length // size)
        pad = n * size - length
        q, k, v_ext = (pad_positions(t, pad, -2) for t in (q, k, v_ext))
        keep = None if keep is None else pad_positions(keep, pad, -1, False)
        spans = _spans(n, span or span_chunks(bh, w.shape[0], size, n, q.device))
        outs, prefixes, runnings, carried = None, [], [], None
        for lo, hi in spans:
            rows = (lo * size, hi * size)
            part = _rows(spans, *rows, q, k, v_ext, keep)
            out_span, pre, running, carried, kept = _span_forward(
                *part[:3], w, part[3], kernel, size, carried, final=hi < n
            )
            outs = _gather(outs, (out_span,), spans, rows, (v_ext,))
            prefixes.append(pre)
            runnings.append(running)
        out_ext = outs[0][:, :length]
        den = out_ext[..., -1:] + DENOMINATOR_EPS
        out = out_ext[..., :-1] / den
        running = None if kernel == "relu" else _cat(runnings, 1)
        # Small calls keep φ(q), κ̃ and the in-chunk products for backward (autograd's way):
        # recomputing them costs a fifth of the call, and memory is no concern at this size.
        if len(spans) > 1 or bh * q.shape[1] * w.shape[0] > _KEEP_ELEMENTS:
            kept = (None, None, None)
        ctx.save_for_backward(q, k, v_ext, w, keep, _cat(prefixes, 1), running, den, out, *kept)
        ctx.kernel, ctx.size, ctx.spans = kernel, size, spans
        return out

    @staticmethod
    @_without_autocast
    def backward(ctx, grad_out):
        q, k, v_ext, w, keep, prefixes, running, den, out, *kept = ctx.saved_tensors
        size, spans = ctx.size, ctx.spans
        padded, length = q.shape[1], grad_out.shape[1]
        grad_o = torch.cat([grad_out / den, -(grad_out * out).sum(-1, keepdim=True) / den], -1)
        grad_o = pad_positions(grad_o, padded - length, -2)
        grads, grad_state = None, None
        for lo, hi in reversed(spans):
            rows = (lo * size, hi * size)
            part = _rows(spans, *rows, q, k, v_ext, keep, running, grad_o)
            carried = None
            if lo > 0:
                carried = (True, None if running is None else running[:, rows[0] - 1])
            *grad, grad_state = _span_backward(
                *part[:3], w, part[3], ctx.kernel, size,
                prefixes[:, lo:hi] if len(spans) > 1 else prefixes,
                part[4], carried, part[5], grad_state, None if kept[0] is None else kept,
            )  # fmt: skip
            grads = _gather(grads, grad, spans, rows, (q, k, v_ext))
        grad_q, grad_k, grad_v = (g[:, :length] for g in grads)
        return grad_q, grad_k, grad_v, None, None, None, None, None


def _gather(wholes, pieces, spans, rows, like):
    """Span results into whole-length tensors shaped as ``like`` (made on the first call):
    each piece is copied in and freed, never all pieces and the whole at once. One span:
    the pieces are the wholes."""
    if len(spans) == 1:
        return pieces
    if wholes is None:
        wholes = [torch.empty_like(t) for t in like]
    for whole, piece in zip(wholes, pieces):
        whole[:, rows[0] : rows[1]] = piece
    return wholes


def _rows(spans, lo, hi, *tensors):
    """The rows [lo, hi) of each (BH, L, ...) tensor (None stays None); all of it for one span."""
    if len(spans) == 1:
        return tensors
    return tuple(None if t is None else t[:, lo:hi] for t in tensors)


def causal_favor(q, k, v, features, kernel, key_padding_mask, chunk, span=None):
    """Shapes as ``favor_attention``; float32 (or float64) in and out. ``span``: chunks per
    span (None: ``span_chunks``)."""
    b, h, length, _ = q.shape
    args = _flatten_heads(q, k, v, key_padding_mask)
    out = CausalFavor.apply(*args[:3], features, args[3], kernel, chunk, span)
    return out.view(b, h, length, -1)
