"""Re-execute the notebooks in place, default settings and shipped models (`make notebooks`).

    python notebooks/execute.py [NOTEBOOK ...]     # default: every notebooks/*.ipynb

Each notebook runs top to bottom in a kernel of this interpreter, from the notebooks folder;
the executed copy replaces the file only when every cell ran. Volatile metadata (execution
timestamps, the Python patch version) is stripped, so a rerun that draws the same figures
changes nothing in git.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil  # an ipykernel dependency
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
KERNEL = "proteinperf"
CELL_TIMEOUT_S = 1800


def clean(book: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop what changes from run to run without changing a result."""
    book.metadata = nbformat.from_dict(
        {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        }
    )
    for cell in book.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        for output in cell.get("outputs", []):
            output.get("metadata", {}).pop("execution", None)
    return book


def kernel_manager(spec_dir: Path) -> KernelManager:
    """A kernel run by this very interpreter, whatever kernels are installed."""
    spec = spec_dir / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "proteinperf", "language": "python"})
    )
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir)])
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def execute(path: Path, spec_dir: Path) -> tuple[float, float]:
    """Run one notebook and write it back cleaned; returns (wall, kernel CPU) seconds."""
    book = nbformat.read(path, as_version=4)
    cpu = [0.0]

    def kernel_cpu(**_) -> None:  # called after the last cell, before the kernel shuts down
        times = psutil.Process(client.km.provisioner.pid).cpu_times()
        cpu[0] = times.user + times.system

    client = NotebookClient(
        book,
        timeout=CELL_TIMEOUT_S,
        km=kernel_manager(spec_dir),
        resources={"metadata": {"path": str(path.parent)}},
        on_notebook_complete=kernel_cpu,
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        if client.km.has_kernel:  # a kernel manager handed in is not shut down by nbclient
            client.km.shutdown_kernel(now=True)
    seconds = time.perf_counter() - start
    text = nbformat.writes(clean(book))
    text += "" if text.endswith("\n") else "\n"
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return seconds, cpu[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    for name in ("PROTEINPERF_NOTEBOOK_FAST", "PROTEINPERF_CHECKPOINT", "PROTEINPERF_TRAIN_OWN"):
        os.environ.pop(name, None)  # the committed outputs: default settings, shipped models
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    with tempfile.TemporaryDirectory() as spec_dir:
        for path in paths:
            load = os.getloadavg()[0]
            seconds, cpu = execute(path, Path(spec_dir))
            print(
                f"{path.name}: {seconds:.0f} s wall, {cpu:.0f} CPU-s (load average "
                f"{load:.1f} -> {os.getloadavg()[0]:.1f}), {path.stat().st_size / 1e6:.2f} MB",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
