"""Interoperability: ESM-2 checkpoints in, Hugging Face transformers folders out."""
