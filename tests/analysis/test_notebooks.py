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


def test_notebooks_are_committed_executed_and_clean():
    """Committed with every output (figures a reader sees on GitHub, from `make notebooks`),
    without what changes from run to run (timestamps, versions), errors or warnings."""
    assert len(NOTEBOOKS) >= 3
    total = 0
    for path in NOTEBOOKS:
        total += path.stat().st_size
        book = nbformat.read(path, as_version=4)
        assert set(book.metadata.get("language_info", {})) <= {"name"}, path.name
        code = [cell for cell in book.cells if cell.cell_type == "code"]
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), path.name
        outputs = [o for cell in code for o in cell.outputs]
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2, path.name
        for cell in code:
            assert "execution" not in cell.metadata, path.name
            for o in cell.outputs:
                assert o.output_type != "error", path.name
                assert not (o.output_type == "stream" and o.name == "stderr"), (path.name, o.text)
    assert total < 3_000_000, f"notebooks hold {total:,} bytes: figures at too high a dpi?"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_manager_factory, notebook_env):
    """Tiny settings, outputs kept in memory: the committed notebook is left as it is."""
    committed = path.read_bytes()
    book = nbformat.read(path, as_version=4)
    km = kernel_manager_factory()
    client = NotebookClient(
        book, timeout=240, km=km, resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        client.execute()
    finally:
        if km.has_kernel:  # nbclient shuts down only the kernels it made itself
            km.shutdown_kernel(now=True)
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was shown"
    assert not [o for o in outputs if o.output_type == "error"]
    assert path.read_bytes() == committed
