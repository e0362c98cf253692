"""proteinperf: Performer (FAVOR+) protein language models."""

from proteinperf.errors import ProteinperfError

__version__ = "0.2.0"

__all__ = ["__version__", "load_model", "ProteinperfError"]


def __getattr__(name):
    # Lazy, so that `import proteinperf` (e.g. for the CLI's --version) does not import torch.
    if name == "load_model":
        from proteinperf.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'proteinperf' has no attribute {name!r}")
