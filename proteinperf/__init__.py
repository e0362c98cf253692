"""proteinperf: Performer (FAVOR+) protein language models."""

__version__ = "0.1.0"
