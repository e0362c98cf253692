"""Inference on trained models: embed FASTA files, score sequences, score mutations.

Library functions take a loaded model (``proteinperf.load_model``) and paths; the CLI
(``proteinperf embed | score | score-mutations``) only parses arguments and wires them.
"""

from .embed import embed_fasta, embed_sequences, resolve_layers
from .generate import generate  # the function; `from .generate import ...` still works
from .mutations import parse_mutant, score_mutations_csv, score_variants
from .score import score_fasta

__all__ = [
    "embed_fasta",
    "embed_sequences",
    "generate",
    "parse_mutant",
    "resolve_layers",
    "score_fasta",
    "score_mutations_csv",
    "score_variants",
]
