"""Fused FAVOR+ (bidirectional and causal): autograd functions that recompute features blockwise.

Why by hand: with autograd, every (L, m) feature tensor is written to and read back from
DRAM several times and kept for backward, and on a CPU that traffic, not the arithmetic,
sets the speed. Here features are made block by block (a block of rows stays in cache),
only q, k, v, the (m, d+1) context and the normaliser are kept, and backward makes the
features again instead of storing them: memory O(L·d + m·d) and about half the time.

Kernels: "softmax" (FAVOR+ positive features) and "relu"; others use favor.py's autograd
paths. Blocks (bidirectional) and chunks (causal) change speed and memory, never the result.
Bidirectional maths (Choromanski et al., 2021, Eq. 4-5), per (batch, head), with v' = [v, 1]:
    φ(q)_i = exp(Wq̂_i − max_m Wq̂_i)          (per-query shift: cancels in the ratio)
    κ_j    = exp(Wk̂_j − |k̂_j|²/2 − s*)        (one shift s* over all keys and features)
    C = Σ_j κ_j v'_jᵀ,   o_i = φ(q)_iᵀ C,   out_i = o_i[:d] / o_i[d]
"""

from __future__ import annotations

import torch

from .phi import DENOMINATOR_EPS, MASKED_LOG_SCALE, RELU_EPSILON

FUSED_KERNELS = ("softmax", "relu")
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


def _causal_key_logits(k_blk, w, kernel, keep_blk):
    """As ``_key_logits``, padded keys at MASKED_LOG_SCALE (the running max's floor)."""
    return _key_logits(k_blk, w, kernel, keep_blk, MASKED_LOG_SCALE)


def _causal_key_features(logits, kernel, running, keep_blk):
    """κ̃_j = exp(t_j − M_j) ≤ 1 (softmax) or ReLU(t_j) + ε (relu), zero for padded keys."""
    if kernel == "relu":
        phi = torch.relu(logits).add_(RELU_EPSILON)
    else:
        phi = (logits - running.unsqueeze(-1)).exp_()
    return phi if keep_blk is None else phi.mul_(keep_blk.unsqueeze(-1))


def _pair_decay(running, future):
    """exp(M_j − M_i) for j ≤ i inside a chunk, 0 for j > i: (BH, C, C), entries ≤ 1."""
    diff = running.unsqueeze(-2) - running.unsqueeze(-1)
    return diff.masked_fill_(future, -torch.inf).exp_()


class CausalFavor(torch.autograd.Function):
    """Causal FAVOR+ over chunks of C positions with a carried (m, d+1) state.

    Key logits are shifted by the running max M_i = max_{j≤i} max_m t_jm (never by a max over
    future keys), so every exponent is ≤ 0 and output i depends on keys ≤ i only, also in
    floating point. Pair (i, j ≤ i) inside a chunk is weighted exp(M_j − M_i); the state after
    chunk n is kept relative to E_n, the running max at its last row. Backward runs the chunks
    in reverse with a suffix state G_n = Σ_{i after chunk n} exp(E_n − M_i) φ(q)_i do_iᵀ and
    recomputes the features; only the N chunk-start states (N·m·(d+1)) are stored.
    """

    @staticmethod
    def forward(ctx, q, k, v_ext, w, keep, kernel, chunk):
        bh, length, _ = q.shape
        m, e = w.shape[0], v_ext.shape[-1]
        scaled = kernel != "relu"
        state = q.new_zeros(bh, m, e)
        end_prev = q.new_full((bh,), MASKED_LOG_SCALE)
        starts, ends_prev = [], []
        running_all = q.new_zeros(bh, length)
        out_ext = torch.empty(bh, length, e, dtype=q.dtype, device=q.device)
        for lo in range(0, length, chunk):
            sl = slice(lo, lo + chunk)
            keep_blk = None if keep is None else keep[:, sl]
            starts.append(state)
            ends_prev.append(end_prev)
            phi_q, _ = _query_features(q[:, sl], w, kernel)
            logits = _causal_key_logits(k[:, sl], w, kernel, keep_blk)
            size = logits.shape[1]
            future = torch.ones(size, size, dtype=torch.bool, device=q.device).triu(1)
            if scaled:
                row_max = logits.amax(-1)
                running = torch.maximum(row_max.cummax(-1).values, end_prev.unsqueeze(-1))
                running_all[:, sl] = running
                kappa = _causal_key_features(logits, kernel, running, keep_blk)
                scores = (phi_q @ kappa.transpose(1, 2)).mul_(_pair_decay(running, future))
                inter = (phi_q @ state).mul_(
                    torch.exp(end_prev.unsqueeze(-1) - running).unsqueeze(-1)
                )
                end = running[:, -1]
                to_end = torch.exp(running - end.unsqueeze(-1)).unsqueeze(-1)
                state = state * torch.exp(end_prev - end)[:, None, None] + kappa.transpose(1, 2) @ (
                    v_ext[:, sl] * to_end
                )
                end_prev = end
            else:
                kappa = _causal_key_features(logits, kernel, None, keep_blk)
                scores = (phi_q @ kappa.transpose(1, 2)).masked_fill_(future, 0.0)
                inter = phi_q @ state
                state = state + kappa.transpose(1, 2) @ v_ext[:, sl]
            out_ext[:, sl] = torch.baddbmm(inter, scores, v_ext[:, sl])
        den = out_ext[..., -1:] + DENOMINATOR_EPS
        out = out_ext[..., :-1] / den
        ctx.save_for_backward(
            q,
            k,
            v_ext,
            w,
            keep,
            torch.stack(starts, 1),
            torch.stack(ends_prev, 1),
            running_all,
            den,
            out,
        )
        ctx.kernel, ctx.chunk = kernel, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v_ext, w, keep, starts, ends_prev, running_all, den, out = ctx.saved_tensors
        kernel, chunk = ctx.kernel, ctx.chunk
        scaled = kernel != "relu"
        bh, length, _ = q.shape
        grad_o = torch.cat([grad_out / den, -(grad_out * out).sum(-1, keepdim=True) / den], -1)
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v_ext)
        suffix = torch.zeros_like(starts[:, 0])  # G_n, relative to E_n
        chunk_starts = list(range(0, length, chunk))
        for n in reversed(range(len(chunk_starts))):
            sl = slice(chunk_starts[n], chunk_starts[n] + chunk)
            keep_blk = None if keep is None else keep[:, sl]
            do, ve = grad_o[:, sl], v_ext[:, sl]
            state, end_prev = starts[:, n], ends_prev[:, n]
            phi_q, proj_q = _query_features(q[:, sl], w, kernel)
            logits = _causal_key_logits(k[:, sl], w, kernel, keep_blk)
            size = logits.shape[1]
            future = torch.ones(size, size, dtype=torch.bool, device=q.device).triu(1)
            if scaled:
                running = running_all[:, sl]
                kappa = _causal_key_features(logits, kernel, running, keep_blk)
                pair = _pair_decay(running, future)
                from_prev = torch.exp(end_prev.unsqueeze(-1) - running).unsqueeze(-1)  # (BH,C,1)
                end = running[:, -1]
                to_end = torch.exp(running - end.unsqueeze(-1)).unsqueeze(-1)
            else:
                kappa = _causal_key_features(logits, kernel, None, keep_blk)
                pair = (~future).to(q.dtype).expand(bh, size, size)
                from_prev = to_end = None
            # Query side: dφq_i = Σ_j pair_ij (do_i·v'_j) κ̃_j + [exp(E_{n-1} − M_i)] S do_i
            weights = (do @ ve.transpose(1, 2)).mul_(pair)  # (BH, C_i, C_j)
            grad_phi_q = weights @ kappa
            inter_q = do @ state.transpose(1, 2)
            grad_phi_q += inter_q if from_prev is None else inter_q.mul_(from_prev)
            if scaled:
                grad_q[:, sl] = grad_phi_q.mul_(phi_q) @ w
            else:
                grad_q[:, sl] = grad_phi_q.mul_(proj_q > 0) @ w
            # Key side: inner_j = Σ_{i≥j} exp(M_j − M_i)(do_i·v'_j) φq_i, in-chunk + later chunks.
            inner = weights.transpose(1, 2) @ phi_q
            later = ve @ suffix.transpose(1, 2)
            inner += later if to_end is None else later.mul_(to_end)
            scores = (phi_q @ kappa.transpose(1, 2)).mul_(pair)  # (BH, C_i, C_j)
            later_v = kappa @ suffix
            grad_v[:, sl] = torch.baddbmm(
                later_v if to_end is None else later_v.mul_(to_end), scores.transpose(1, 2), do
            )
            if scaled:
                grad_logits = inner.mul_(kappa)
                grad_k[:, sl] = grad_logits @ w - k[:, sl] * grad_logits.sum(-1, keepdim=True)
            else:
                mask = logits > 0
                if keep_blk is not None:
                    mask &= keep_blk.unsqueeze(-1)
                grad_k[:, sl] = inner.mul_(mask) @ w
            # G_{n-1} = exp(E_{n-1} − E_n) G_n + Σ_{i∈n} exp(E_{n-1} − M_i) φq_i do_iᵀ
            if scaled:
                suffix = suffix * torch.exp(end_prev - end)[:, None, None] + phi_q.transpose(
                    1, 2
                ) @ (do * from_prev)
            else:
                suffix = suffix + phi_q.transpose(1, 2) @ do
        return grad_q, grad_k, grad_v, None, None, None, None


def causal_favor(q, k, v, features, kernel, key_padding_mask, chunk):
    """Shapes as ``favor_attention``; float32 (or float64) in and out."""
    b, h, length, _ = q.shape
    args = _flatten_heads(q, k, v, key_padding_mask)
    return CausalFavor.apply(*args[:3], features, args[3], kernel, chunk).view(b, h, length, -1)
