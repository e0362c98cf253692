"""Protein data: alphabet, FASTA reading, corpus preparation, memory-mapped corpora, DataModule."""

from .alphabet import Alphabet, get_alphabet
from .corpus import ProteinCorpus
from .fasta import DataError, FastaFormatError, FastaRecord, parse_header, read_fasta
from .prepare import prepare

__all__ = [
    "Alphabet",
    "get_alphabet",
    "ProteinCorpus",
    "ProteinDataModule",
    "read_fasta",
    "FastaRecord",
    "FastaFormatError",
    "DataError",
    "parse_header",
    "prepare",
    "ensure_corpus",
]


def __getattr__(name):  # Lightning is imported only by those who need the DataModule
    if name in ("ProteinDataModule", "ensure_corpus"):
        from . import datamodule

        return getattr(datamodule, name)
    raise AttributeError(name)
