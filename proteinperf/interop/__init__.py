"""Interoperability with other protein language models (fair-esm ESM-2)."""
