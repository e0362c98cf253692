"""Section ``env``: what the numbers were measured on (GPU, driver, torch/CUDA/cuDNN, libraries)."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from importlib import metadata

import torch

from proteinperf.benchmarks.attention import code_version

# Distributions whose versions matter to the numbers; absent ones are reported as None.
# The GPU-side libraries a report names beside torch.
GPU_LIBRARIES = (
    "triton",
    "pytorch-triton",
    "fla-core",
    "flash-linear-attention",
    "lightning",
    "pytorch-lightning",
)
DISTRIBUTIONS = ("torch", *GPU_LIBRARIES, "numpy", "pyarrow", "proteinperf")
# Modules the sections import beyond torch (their absence fails only the section needing them).
MODULES = ("numpy", "pyarrow", "tqdm", "triton", "fla", "pytorch_lightning", "lightning")

# Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets, for model FLOPs
# utilisation. Matched in order against the device name: more specific names first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
)


def peak_bf16_tflops(name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name, None when it is not in the table."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> dict | None:
    query = "name,driver_version,memory.total,power.limit,clocks.max.sm"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(query.split(","), values))


def _gpu(device: torch.device) -> dict:
    props = torch.cuda.get_device_properties(device)
    name = props.name
    return {
        "name": name,
        "memory_gib": props.total_memory / 2**30,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "device_count": torch.cuda.device_count(),
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "peak_bf16_tflops": peak_bf16_tflops(name),
        "nvidia_smi": _nvidia_smi(),
    }


def _sdpa_flags() -> dict:
    flags = {}
    for name in ("flash_sdp_enabled", "mem_efficient_sdp_enabled", "math_sdp_enabled"):
        fn = getattr(torch.backends.cuda, name, None)
        flags[name] = fn() if fn is not None else None
    return flags


def run(settings, deadline: float, record) -> dict:
    device = torch.device(settings.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError(
            f"torch {torch.__version__} sees no CUDA device (built for CUDA "
            f"{torch.version.cuda}); use a CUDA build of torch, or --dry-run on a CPU"
        )
    result = {
        "device": str(device),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "distributions": {name: _version(name) for name in DISTRIBUTIONS},
        "modules": {name: importlib.util.find_spec(name) is not None for name in MODULES},
        "code": code_version(),  # git commit where there is one; the attention sources' hash
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "sdpa": _sdpa_flags(),
        "gpu": None,
    }
    record(result)
    if cuda:
        result["gpu"] = _gpu(device)
        # The first allocation creates the context: a broken driver shows up here, not later.
        torch.ones(1, device=device).add_(1).item()
        result["driver"] = (result["gpu"]["nvidia_smi"] or {}).get("driver_version")
    return result
