"""Causal FAVOR+: the chunk-parallel kernel against the chunk loop it replaced.

The loop (``LoopCausalFavor``, kept here only as the baseline) ran one Python iteration per
chunk of 128 positions, so every call dispatched O(L/C) ops: on a GPU one kernel launch each.
The production kernel (``attention.blockwise.CausalFavor``) does all chunks at once. Measured:

- dispatched ops of one call, forward + backward (B=2, H=8, d=64, m=64), per length;
- forward + backward time (B=1, H=8, d=64, m=256, float32) at L = 256, 1024, 4096, the two
  kernels timed in turns in one process (interleaved: a load change hits both alike), with
  this process's user and system CPU time and minor page faults per step beside the wall
  time (temporaries too large for glibc to keep are returned and faulted in again at every
  step: the kernel runs long inputs in spans to keep them small);
- the machine's load average before and after (other work distorts timings).
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from proteinperf.attention import blockwise, draw_features
from proteinperf.attention.blockwise import _causal_key_logits, _flatten_heads, _query_features
from proteinperf.attention.favor import default_chunk
from proteinperf.attention.phi import DENOMINATOR_EPS, MASKED_LOG_SCALE, RELU_EPSILON
from proteinperf.benchmarks._measure import THREADS, machine_info, markdown_table

KERNELS = ("relu", "softmax")


@dataclass(frozen=True)
class Settings:
    lengths: tuple[int, ...] = (256, 1024, 4096)
    kernels: tuple[str, ...] = KERNELS
    heads: int = 8
    dim: int = 64
    features: int = 256
    chunk: int | None = None  # chunk-parallel: None = default_chunk (per L); the loop: 128
    repeats: int = 7  # timed steps per variant (after one warm-up), taken in turns
    budget_s: float = 60.0  # per (kernel, L): fewer repeats once this much time is spent
    threads: int = THREADS
    count_batch: int = 2  # the op counts' shape: B=2, H=8, d=64, m=64
    count_features: int = 64


FULL = Settings()
QUICK = Settings(repeats=3, budget_s=15.0)


# ----------------------------------------------------------------------------- the old loop


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


class LoopCausalFavor(torch.autograd.Function):
    """The causal kernel as it was: a Python loop over chunks of C with a carried state.

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


def loop_causal_favor(q, k, v, features, kernel, key_padding_mask, chunk):
    """The chunk loop, same signature as ``blockwise.causal_favor``."""
    b, h, length, _ = q.shape
    args = _flatten_heads(q, k, v, key_padding_mask)
    out = LoopCausalFavor.apply(*args[:3], features, args[3], kernel, chunk)
    return out.view(b, h, length, -1)


IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    "loop": loop_causal_favor,
    "chunk-parallel": blockwise.causal_favor,
}


# ----------------------------------------------------------------------------- op counts


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def dispatched_ops(step: Callable[[], object]) -> int:
    """Number of aten ops ``step()`` dispatches: on a GPU, about one kernel launch each."""
    with _OpCounter() as counter:
        step()
    return counter.count


def _inputs(batch, heads, length, dim, features, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(batch, heads, length, dim, generator=g) for _ in range(4))
    w = draw_features(features, dim, orthogonal=True, generator=g)
    return [t.requires_grad_() for t in (q, k, v)], grad, w


LOOP_CHUNK = 128  # the loop's default, measured fastest for it on CPU (m=256, d=64)


def chunk_of(impl: str, chunk: int | None, inputs) -> int:
    """The chunk size ``impl`` runs with: ``chunk``, or each kernel's own default."""
    (q, _, v), _, w = inputs
    if chunk is not None:
        return chunk
    if impl == "loop":
        return LOOP_CHUNK
    return default_chunk(q.shape[-2], w.shape[0], v.shape[-1], q.device)


def fwd_bwd(impl: str, kernel: str, inputs, chunk: int | None) -> Callable[[], None]:
    """One forward + backward of causal attention through ``impl``."""
    (q, k, v), grad, w = inputs
    chunk = chunk_of(impl, chunk, inputs)

    def step() -> None:
        IMPLS[impl](q, k, v, w, kernel, None, chunk).backward(grad)
        q.grad = k.grad = v.grad = None

    return step


@contextlib.contextmanager
def gpu_span_policy():
    """Run the chunk-parallel kernel on this CPU with the spans it takes on a GPU (one span
    per call: what the launch count there depends on)."""
    saved = blockwise._SPAN_ELEMENTS["cpu"]
    blockwise._SPAN_ELEMENTS["cpu"] = blockwise._SPAN_ELEMENTS["cuda"]
    try:
        yield
    finally:
        blockwise._SPAN_ELEMENTS["cpu"] = saved


def op_counts(s: Settings) -> list[dict]:
    """Per (kernel, L): ops of the loop, of the chunk-parallel kernel as spanned on a GPU
    (the launches there) and as spanned on a CPU (cache-sized spans past 2^21 entries)."""
    rows = []
    for kernel in s.kernels:
        for length in s.lengths:
            inputs = _inputs(s.count_batch, s.heads, length, s.dim, s.count_features)
            counts = {
                impl: dispatched_ops(fwd_bwd(impl, kernel, inputs, s.chunk)) for impl in IMPLS
            }
            with gpu_span_policy():
                gpu = dispatched_ops(fwd_bwd("chunk-parallel", kernel, inputs, s.chunk))
            rows.append({
                "kernel": kernel,
                "length": length,
                "loop": counts["loop"],
                "chunk-parallel": gpu,
                "chunk-parallel cpu spans": counts["chunk-parallel"],
            })  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- timing


def _usage() -> tuple[float, float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt


def _timed(step: Callable[[], None]) -> dict:
    before = _usage()
    step()
    after = _usage()
    wall, user, system, faults = (b - a for a, b in zip(before, after))
    return {"wall_s": wall, "user_s": user, "sys_s": system, "faults": faults}


def timings(s: Settings) -> list[dict]:
    """Per (kernel, L): the median of each measure per implementation, steps in turns."""
    rows = []
    for kernel in s.kernels:
        for length in s.lengths:
            inputs = _inputs(1, s.heads, length, s.dim, s.features)
            steps = {impl: fwd_bwd(impl, kernel, inputs, s.chunk) for impl in IMPLS}
            for step in steps.values():
                step()  # warm-up: first-call allocations and one-off set-up
            samples: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
            deadline = time.monotonic() + s.budget_s
            for _ in range(s.repeats):
                for impl, step in steps.items():
                    samples[impl].append(_timed(step))
                if time.monotonic() > deadline:
                    break
            row = {"kernel": kernel, "length": length, "repeats": len(samples["loop"])}
            row["chunk"] = chunk_of("chunk-parallel", s.chunk, inputs)
            for impl, got in samples.items():
                for key in got[0]:
                    row[f"{impl} {key}"] = statistics.median(g[key] for g in got)
            row["speedup"] = row["loop wall_s"] / row["chunk-parallel wall_s"]
            print(_progress(row), flush=True)
            rows.append(row)
    return rows


def _progress(r: dict) -> str:
    times = "  ".join(f"{impl} {r[f'{impl} wall_s'] * 1e3:8.1f} ms" for impl in IMPLS)
    return f"  {r['kernel']:>7} L={r['length']:<5} {times}  loop/new {r['speedup']:.2f}x"


# ----------------------------------------------------------------------------- entry point


def _tables(counts: list[dict], rows: list[dict]) -> tuple[str, str]:
    columns = ["loop", "chunk-parallel", "chunk-parallel cpu spans"]
    count_table = markdown_table(
        ["kernel", "L", "loop ops", "chunk-parallel ops (GPU spans)", "(CPU spans)"],
        [[c["kernel"], c["length"], *(c[k] for k in columns)] for c in counts],
    )
    headers = ["kernel", "L", "C", "steps"]
    for impl in IMPLS:
        headers += [f"{impl} ms", f"{impl} user+sys ms", f"{impl} faults"]
    headers.append("loop / chunk-parallel (wall)")
    body = []
    for r in rows:
        line = [r["kernel"], r["length"], r["chunk"], r["repeats"]]
        for impl in IMPLS:
            cpu = r[f"{impl} user_s"] + r[f"{impl} sys_s"]
            line += [
                f"{r[f'{impl} wall_s'] * 1e3:.1f}",
                f"{cpu * 1e3:.0f}",
                f"{r[f'{impl} faults']:.0f}",
            ]
        line.append(f"{r['speedup']:.2f}x")
        body.append(line)
    return count_table, markdown_table(headers, body)


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> dict:
    """Op counts and interleaved fwd+bwd timings of the loop and the chunk-parallel kernel."""
    s = settings or (QUICK if quick else FULL)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    load_before = os.getloadavg()
    try:
        counts = op_counts(s)
        rows = timings(s)
    finally:
        torch.set_num_threads(threads)
    load_after = os.getloadavg()
    count_table, time_table = _tables(counts, rows)
    chunks = f"C={s.chunk}" if s.chunk else f"loop C={LOOP_CHUNK}, chunk-parallel C per L"
    shape = f"B=1, H={s.heads}, d={s.dim}, m={s.features}, {chunks}, float32"
    markdown = "\n\n".join([
        f"### Causal FAVOR+: dispatched ops per call, forward + backward "
        f"(B={s.count_batch}, H={s.heads}, d={s.dim}, m={s.count_features})",
        count_table,
        f"### Causal FAVOR+ forward + backward, chunk loop vs chunk-parallel ({shape}, "
        f"{s.threads} threads; medians of steps taken in turns; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after)",
        time_table,
    ])  # fmt: skip
    return {
        "name": "causal",
        "quick": quick,
        "settings": asdict(s),
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "op_counts": counts,
        "timings": rows,
        "markdown": markdown,
    }
