"""Section ``bench``: FAVOR+ against SDPA (FlashAttention where available) over lengths.

Batch 1, 8 heads, d=64, m=256, bf16 q/k/v (FAVOR+ computes its features and sums in fp32
internally), bidirectional and causal, forward alone (no autograd) and forward + backward.
Time: median of CUDA-event timings after warm-up; memory: the caching allocator's peak above
the inputs (``torch.cuda.max_memory_allocated``). A case that runs out of memory is recorded
as "oom" and the longer lengths of its series are not tried; cases the section's time box
cannot fit are recorded as "skipped".
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict

import torch

from proteinperf.attention import draw_features, favor_attention, softmax_attention

from .device import is_out_of_memory, median_ms, peak_mib, release, synchronize

MODES = ("fwd", "fwd_bwd")
SDPA = "sdpa"


def _flash_context():
    """A context that allows only SDPA's FlashAttention backend (across torch versions)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    except ImportError:  # torch < 2.3
        return torch.backends.cuda.sdp_kernel(
            enable_flash=True, enable_math=False, enable_mem_efficient=False
        )


def sdpa_backend(device: torch.device, dtype: torch.dtype) -> str:
    """ "flash" when SDPA's FlashAttention runs these inputs here, else "default" (PyTorch's
    own choice among its backends)."""
    q = torch.randn(1, 1, 128, 64, device=device, dtype=dtype)
    try:
        with _flash_context():
            softmax_attention(q, q, q, causal=True)
        return "flash"
    except RuntimeError:
        return "default"


def _call(impl: str, backend: str, q, k, v, features, causal: bool):
    if impl == SDPA:
        context = _flash_context() if backend == "flash" else contextlib.nullcontext()
        with context:
            return softmax_attention(q, k, v, causal=causal)
    return favor_attention(q, k, v, features, causal=causal, kernel=impl)


def _step(impl, backend, inputs, features, causal, mode):
    q, k, v, grad = inputs
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                _call(impl, backend, q, k, v, features, causal)

        return forward

    def forward_backward():
        _call(impl, backend, q, k, v, features, causal).backward(grad)
        for t in (q, k, v):  # between calls only the inputs stay allocated
            t.grad = None

    return forward_backward


def _measure(impl, backend, length, causal, mode, s, device, dtype):
    shape = (s.batch, s.heads, length, s.dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in "qkv")
    grad = torch.randn(shape, device=device, dtype=dtype)
    features = draw_features(s.features, s.dim, generator=torch.Generator().manual_seed(0))
    step = _step(impl, backend, (q, k, v, grad), features.to(device), causal, mode)
    start = time.perf_counter()
    step()  # first call: kernel selection, compilation (Triton), allocator growth
    synchronize(device)
    first_ms = (time.perf_counter() - start) * 1e3
    peak = peak_mib(step, device)
    median, times = median_ms(
        step, device, warmup=s.warmup, repeats=s.repeats, budget_s=s.case_budget_s
    )
    return {"first_ms": first_ms, "median_ms": median, "times_ms": times, "peak_mib": peak}


def run(settings, deadline: float, record) -> dict:
    device = torch.device(settings.device)
    s = settings.bench
    dtype = getattr(torch, s.dtype)
    backend = sdpa_backend(device, dtype)
    result = {"shapes": asdict(s), "sdpa_backend": backend, "cases": []}
    record(result)
    failed_at: dict[tuple, int] = {}  # a series stops at its first out-of-memory length
    # Training (fwd_bwd) first, and every series at one length before the next length, so a
    # time box that runs out leaves the longest lengths unmeasured, not a whole direction.
    for mode in reversed(MODES):
        for length in s.lengths:
            for causal in (False, True):
                for impl in (*s.kernels, SDPA):
                    series = (impl, causal, mode)
                    name = impl if impl == SDPA else f"favor_{impl}"
                    case = {"impl": name, "causal": causal, "mode": mode, "length": length}
                    if series in failed_at:
                        case["status"] = "skipped"
                        case["reason"] = f"out of memory at L={failed_at[series]}"
                    elif time.time() > deadline:
                        case["status"], case["reason"] = "skipped", "time box spent"
                    else:
                        try:
                            case.update(
                                _measure(impl, backend, length, causal, mode, s, device, dtype)
                            )
                            case["status"] = "ok"
                        except Exception as exc:  # recorded; the other cases still run
                            oom = is_out_of_memory(exc)
                            case["status"] = "oom" if oom else "error"
                            case["reason"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                            if oom:
                                failed_at[series] = length
                        release(device)
                    result["cases"].append(case)
                    record(result)
    return result
