"""ProteinCorpus: the memory-mapped view of one split of a prepared corpus directory."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from .alphabet import get_alphabet
from .fasta import DataError
from .prepare import CORPUS_FORMAT_VERSION


def _memmap(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class ProteinCorpus:
    """len(corpus), corpus.id(i), corpus.sequence(i), corpus.tokens(i), corpus.lengths."""

    def __init__(self, path: str | Path, split: str = "train"):
        self.path = Path(path)
        manifest_file = self.path / "manifest.json"
        if not manifest_file.is_file():
            raise FileNotFoundError(f"{self.path}: not a prepared corpus (no manifest.json)")
        try:
            self.manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{manifest_file}: corrupt manifest ({err}); prepare again") from None
        if self.manifest.get("format_version") != CORPUS_FORMAT_VERSION:
            raise DataError(
                f"{self.path}: corpus format {self.manifest.get('format_version')}, "
                f"expected {CORPUS_FORMAT_VERSION}; run `proteinperf prepare` again"
            )
        if split not in self.manifest["splits"]:
            raise DataError(f"split must be one of {list(self.manifest['splits'])}, got {split!r}")
        self.split = split
        self._tokens = _memmap(self.path / f"{split}.tokens.bin", np.uint8)
        self.offsets = _memmap(self.path / f"{split}.offsets.bin", np.int64)
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return self.lengths.size

    def tokens(self, i: int) -> np.ndarray:
        """Residue token ids of record i (uint8, a view into the memory map, no framing)."""
        return self._tokens[self.offsets[i] : self.offsets[i + 1]]

    def sequence(self, i: int) -> str:
        return get_alphabet().decode(self.tokens(i))

    @cached_property
    def ids(self) -> list[str]:
        import pyarrow.parquet as pq

        return pq.read_table(self.path / f"{self.split}.meta.parquet", columns=["id"])[
            "id"
        ].to_pylist()

    def id(self, i: int) -> str:
        return self.ids[i]

    def metadata(self):
        """The split's metadata table as a pandas DataFrame."""
        import pandas as pd

        return pd.read_parquet(self.path / f"{self.split}.meta.parquet")

    def token_counts(self, max_tokens: int = 50_000_000) -> np.ndarray:
        """Token frequencies (33 bins): exact up to max_tokens, else from 64 evenly spaced slices.

        Counted here rather than in prepare because np.bincount would cost prepare ~25% of its
        throughput, and a unigram baseline does not need every residue of UniRef.
        """
        toks = self._tokens
        n = len(get_alphabet())
        if toks.size <= max_tokens:
            return np.bincount(toks, minlength=n)[:n]
        step, width = toks.size // 64, max_tokens // 64
        parts = [np.bincount(toks[i * step : i * step + width], minlength=n)[:n] for i in range(64)]
        return np.sum(parts, axis=0)

    def __repr__(self) -> str:
        return f"ProteinCorpus({str(self.path)!r}, split={self.split!r}, records={len(self)})"
