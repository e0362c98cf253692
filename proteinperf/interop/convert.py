"""`convert-esm`'s one entry: which kind of ESM-2 source it was given, and its converter."""

from __future__ import annotations

from pathlib import Path

from proteinperf.interop.esm import convert_esm_checkpoint, convert_esm_pretrained
from proteinperf.interop.hf_esm import convert_hf_esm, is_hf_directory


def convert_esm(source, out_path, **options) -> Path:
    """A transformers ``EsmForMaskedLM`` directory, a fair-esm ``.pt`` file (an existing path,
    or any name ending in .pt) or a fair-esm model name."""
    if is_hf_directory(source):
        return convert_hf_esm(source, out_path, **options)
    if str(source).endswith(".pt") or Path(source).exists():
        return convert_esm_checkpoint(source, out_path, **options)
    return convert_esm_pretrained(str(source), out_path, **options)


__all__ = ["convert_esm"]
