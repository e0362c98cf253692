"""The wheel a plain `pip install .` builds carries the Hydra config tree and the default corpus
(copied in by setup.py), and its package finds them once installed outside a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds a wheel: ~5 s


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the working tree (no build/ left in the checkout)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    src = tmp_path_factory.mktemp("src")
    for name in filter(None, listed):
        if name.startswith(("proteinperf/", "conf/", "data/")) or "/" not in name:
            if (ROOT / name).is_file():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*cmd, "-w", str(out), str(src)], check=True, capture_output=True)
    (built,) = out.glob("proteinperf-*.whl")
    return built


def test_wheel_ships_conf_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert "train.yaml" in conf and "paths/default.yaml" in conf
    assert {f"proteinperf/_conf/{c}" for c in conf} <= names
    shipped = ("sample_proteins.fasta", "swissprot_20k.fasta.gz", "swissprot_20k.clusters50.tsv.gz")
    for data in shipped:
        assert f"proteinperf/_data/{data}" in names  # what conf/data/ refers to
    assert "proteinperf/cli/train.py" in names and "proteinperf/constants.py" in names
    pretrained = [
        p.name for ext in ("pt", "json") for p in ROOT.glob(f"proteinperf/pretrained/*.{ext}")
    ]
    assert len(pretrained) >= 4 and "proteinperf/pretrained/__init__.py" in names
    assert {f"proteinperf/pretrained/{name}" for name in pretrained} <= names  # models + cards
    assert not [n for n in names if "__pycache__" in n or n.startswith(("conf/", "data/"))]


def test_installed_package_finds_its_conf_and_data(wheel, tmp_path):
    """Unpacked outside any checkout, the package reads its own copies."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "from proteinperf import resources as r; "
        "print(r.checkout_root(), r.conf_dir(), r.data_dir(), r.project_root(), sep='|')"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout.strip().split("|")  # fmt: skip
    root, conf, data, project = out
    assert root == "None" and project == str(tmp_path)
    assert (Path(conf) / "train.yaml").is_file() and Path(conf).is_relative_to(site)
    assert (Path(data) / "swissprot_20k.fasta.gz").is_file() and Path(data).is_relative_to(site)
