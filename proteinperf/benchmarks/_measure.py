"""Shared measuring helpers for the benchmarks: fresh-process peak memory, timing, tables, JSON.

A benchmark case runs in a fresh worker process so that its peak memory is not hidden by an
earlier, larger case. The worker calls ``build(**kwargs)`` of a target ``"module:function"``,
which must return ``(prepare, step)``: ``prepare()`` allocates the inputs and ``step(inputs)``
does one unit of work. Anything ``build`` does itself (imports, models, a tiny warm-up run) is
part of the baseline; the reported peak is the rise of resident memory over that baseline while
the inputs are allocated and the first step runs. Later steps are timed.

    result = run_case("proteinperf.benchmarks.attention:build_case", {"length": 1024},
                      repeats=5, budget_s=30, timeout_s=300, mem_limit_bytes=20 * 2**30)
    # {"status": "ok", "peak_mib": ..., "first_s": ..., "times_s": [...], "median_s": ...}
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from proteinperf.plain import plain

MIB = 2**20
THREADS = 2


# ----------------------------------------------------------------------------- memory


def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size: since the last ``reset_peak_rss`` where supported."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


# ----------------------------------------------------------------------------- timing


def time_steps(step: Callable[[], Any], *, repeats: int, budget_s: float = math.inf) -> list[float]:
    """Wall times of up to ``repeats`` calls (at least one), stopping once ``budget_s`` is spent."""
    times: list[float] = []
    while len(times) < max(repeats, 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        if sum(times) >= budget_s:
            break
    return times


def median_time(
    step: Callable[[], Any], *, repeats: int, warmup: int = 1, budget_s: float = math.inf
) -> float:
    """Median wall time of ``step`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    return statistics.median(time_steps(step, repeats=repeats, budget_s=budget_s))


# ----------------------------------------------------------------------------- machine load


def _machine_busy_seconds() -> float | None:
    """CPU-seconds the whole machine has spent working since boot (None without psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own_cpu_seconds() -> float:
    """CPU-seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class OtherLoad:
    """Average number of CPUs kept busy by *other* processes while the block ran.

    Multi-threaded torch on cores that are also busy elsewhere loses far more than its share
    (its threads wait for each other at every op), so timings taken then mislead; this
    measures how much that happened, at no cost to the measurement.
    """

    def __enter__(self) -> OtherLoad:
        self.cpus: float | None = None
        self._start = (time.monotonic(), _machine_busy_seconds(), _own_cpu_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, busy0, own0 = self._start
        busy1 = _machine_busy_seconds()
        wall = time.monotonic() - wall0
        if busy0 is not None and busy1 is not None and wall > 0:
            other = (busy1 - busy0) - (_own_cpu_seconds() - own0)
            self.cpus = max(other, 0.0) / wall


def wait_for_quiet(max_wait_s: float, busy_below: float = 0.3, poll_s: float = 0.5) -> None:
    """Wait (at most ``max_wait_s``) until other processes use under ``busy_below`` CPUs."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        with OtherLoad() as load:
            time.sleep(poll_s)
        if load.cpus is None or load.cpus < busy_below:
            return


# ----------------------------------------------------------------------------- fresh process


def _worker_setup(mem_limit: int | None, nice: int | None) -> Callable[[], None]:
    """What the worker process does before it starts: cap its memory, set its priority."""

    def apply() -> None:
        if mem_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
        if nice is not None:
            # With autogroup scheduling (Linux's default for desktops and VMs) the CPU is shared
            # between sessions first, so the worker gets its own session (start_new_session)
            # and that session's priority is set; plain nice acts only inside a session.
            with contextlib.suppress(OSError):  # raising priority needs privileges
                os.setpriority(os.PRIO_PROCESS, 0, nice)
                with open("/proc/self/autogroup", "w") as f:
                    f.write(str(nice))

    return apply


def _failure(status: str, reason: str) -> dict[str, Any]:
    return {"status": status, "reason": reason}


def run_case(
    target: str,
    kwargs: dict[str, Any],
    *,
    repeats: int,
    budget_s: float,
    timeout_s: float,
    mem_limit_bytes: int | None = None,
    threads: int = THREADS,
    quiet_wait_s: float = 0.0,
    nice: int | None = None,
) -> dict[str, Any]:
    """Run one case in a fresh worker process and return its measurements or its failure.

    The worker's address space is capped at ``mem_limit_bytes`` (an allocation beyond it fails
    inside the worker instead of taking the machine down) and its wall time at ``timeout_s``.
    With ``quiet_wait_s`` > 0 it first waits up to that long for the machine to be idle; the
    CPUs other processes kept busy while the case ran are reported as ``other_cpus``. ``nice``
    sets the worker's scheduling priority (negative: ahead of other work, needs privileges).
    """
    wait_for_quiet(quiet_wait_s)
    setup = _worker_setup(mem_limit_bytes, nice)
    with OtherLoad() as load:
        result = _run_worker(target, kwargs, repeats, budget_s, timeout_s, setup, threads)
    return {**result, "other_cpus": load.cpus, "nice": nice}


def _run_worker(target, kwargs, repeats, budget_s, timeout_s, setup, threads) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out_path = Path(tmp) / "result.json"
        control = {"repeats": repeats, "budget_s": budget_s, "threads": threads}
        cmd = [sys.executable, "-m", __name__, target, json.dumps(kwargs), json.dumps(control)]
        try:
            proc = subprocess.run(
                [*cmd, str(out_path)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                preexec_fn=setup,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            return _failure("timeout", f"timed out after {timeout_s:.0f} s")
        if out_path.exists():
            return json.loads(out_path.read_text())
        if proc.returncode < 0:
            return _failure("crashed", f"killed by signal {-proc.returncode} (out of memory?)")
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return _failure("error", f"exit {proc.returncode}: {tail[0][:200]}")


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or ("alloc" in text and "memory" in text)


def _measure(target: str, kwargs: dict[str, Any], control: dict[str, Any]) -> dict[str, Any]:
    import torch  # the worker is for torch workloads; imported here to keep the parent light

    torch.set_num_threads(control["threads"])
    module_name, func_name = target.split(":")
    build = getattr(importlib.import_module(module_name), func_name)
    prepare, step = build(**kwargs)
    gc.collect()
    reset_peak_rss()
    baseline = current_rss_bytes()
    start = time.perf_counter()
    inputs = prepare()
    step(inputs)
    first_s = time.perf_counter() - start
    peak = max(peak_rss_bytes(), current_rss_bytes()) - baseline
    budget = control["budget_s"]
    times = time_steps(lambda: step(inputs), repeats=control["repeats"], budget_s=budget)
    return {
        "status": "ok",
        "peak_mib": peak / MIB,
        "baseline_mib": baseline / MIB,
        "first_s": first_s,
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),  # less sensitive to other processes than the median
    }


def _worker_main(argv: Sequence[str]) -> int:
    target, kwargs, control, out_path = argv[0], json.loads(argv[1]), json.loads(argv[2]), argv[3]
    try:
        result = _measure(target, kwargs, control)
    except (RuntimeError, MemoryError) as exc:
        if not _is_out_of_memory(exc):
            raise
        result = _failure("oom", f"out of memory: {str(exc).splitlines()[0][:160]}")
    Path(out_path).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- reporting


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are rendered with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    return plain(obj, finite=True)


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented, strictly valid JSON (non-finite floats become null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")
    return path


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import platform

    import torch

    return {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": THREADS,
        "load_average": os.getloadavg(),  # other work on the machine distorts timings
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
