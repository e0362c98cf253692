"""Every notebook runs top to bottom (tiny settings), so none of them rots."""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
KERNEL = "proteinperf-test"


@pytest.fixture(scope="module")
def kernel_manager_factory(tmp_path_factory):
    """Kernels run by this very interpreter (the venv's), whatever kernels are installed."""
    kernels = tmp_path_factory.mktemp("kernels")
    spec = kernels / KERNEL
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "proteinperf test", "language": "python"})
    )
    specs = KernelSpecManager(kernel_dirs=[str(kernels)])

    def make():
        return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)

    return make


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("notebook-cache")
    env = {
        "PROTEINPERF_NOTEBOOK_FAST": "1",
        "PROTEINPERF_NOTEBOOK_CACHE": str(cache),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    saved = {k: os.environ.get(k) for k in [*env, "PROTEINPERF_CHECKPOINT"]}
    os.environ.update(env)
    os.environ.pop("PROTEINPERF_CHECKPOINT", None)  # exercise the train-or-find path
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_notebooks_are_committed_without_outputs():
    assert len(NOTEBOOKS) >= 3
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_manager_factory, notebook_env):
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book,
        timeout=240,
        km=kernel_manager_factory(),
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was shown"
    assert not [o for o in outputs if o.output_type == "error"]
