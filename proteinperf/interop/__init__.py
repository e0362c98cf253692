"""Interoperability with other protein language models (ESM-2 from fair-esm and transformers)."""
