"""Where the Hydra config tree and the shipped data files are.

From a source checkout (`make train`, editable installs) they are the checkout's conf/ and
data/, the files people edit. A built wheel carries copies inside the package
(proteinperf/_conf, proteinperf/_data; setup.py copies them in at build time), used when the
package does not sit in a checkout. No imports beyond pathlib: the CLI reads this at start.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The source tree this package was imported from, or None for an installed copy."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "conf" / "train.yaml").is_file():
        return root
    return None


def conf_dir() -> Path:
    root = checkout_root()
    return root / "conf" if root else PACKAGE_DIR / "_conf"


def data_dir() -> Path:
    root = checkout_root()
    return root / "data" if root else PACKAGE_DIR / "_data"


def project_root() -> Path:
    """Root of outputs/ and of relative paths: the checkout, else the current directory."""
    return checkout_root() or Path.cwd()


def cache_dir() -> str | None:
    """Where FASTA files named in configs are prepared once: None (beside the FASTA, in
    data/.cache) in a checkout; the user's cache folder for an installed package, whose own
    folder may be read-only."""
    if checkout_root():
        return None
    import os

    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return str(Path(base) / "proteinperf" / "corpora")
