"""Device-neutral timing and memory: CUDA events and the caching allocator's peak on a GPU,
wall clock (and no memory figure) on the CPU of ``--dry-run``."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch

from proteinperf.benchmarks._measure import MIB, _is_out_of_memory


def is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", ())  # torch >= 1.13
    return (bool(oom) and isinstance(exc, oom)) or _is_out_of_memory(exc)


def release(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so the next case starts clean."""
    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()


def time_ms(step: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call: CUDA events around it on a GPU (the host does not wait
    between launches), the wall clock after a synchronisation otherwise."""
    if is_cuda(device):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    step()
    return (time.perf_counter() - begin) * 1e3


def median_ms(
    step: Callable[[], object],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    budget_s: float,
) -> tuple[float, list[float]]:
    """Median milliseconds over up to ``repeats`` timed calls after ``warmup`` untimed ones;
    timing stops once ``budget_s`` of timed calls are spent (at least one call is timed)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times: list[float] = []
    while len(times) < max(repeats, 1):
        times.append(time_ms(step, device))
        if sum(times) >= budget_s * 1e3:
            break
    return statistics.median(times), times


def peak_mib(step: Callable[[], object], device: torch.device) -> float | None:
    """MiB the caching allocator held at its peak during one call, above what was allocated
    before it (torch.cuda.max_memory_allocated); None on the CPU."""
    if not is_cuda(device):
        step()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MIB
