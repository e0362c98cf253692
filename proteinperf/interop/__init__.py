"""Interoperability: ESM-2 in (fair-esm files, transformers folders); transformers folders out."""
