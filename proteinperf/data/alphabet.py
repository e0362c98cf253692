"""The protein vocabulary: token ids identical to fair-esm's "ESM-1b" alphabet (also ESM-2's)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

SPECIALS_BEFORE = ("<cls>", "<pad>", "<eos>", "<unk>")
RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO"
GAPS = ".-"
SPECIALS_AFTER = ("<null_1>", "<mask>")
STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"

INVALID = 255  # lut value for a byte that is not part of any sequence alphabet


class Alphabet:
    """33 tokens: <cls> <pad> <eos> <unk>, 25 residue letters, '.', '-', <null_1>, <mask>."""

    def __init__(self):
        self.tokens: list[str] = [*SPECIALS_BEFORE, *RESIDUES, *GAPS, *SPECIALS_AFTER]
        self.tok_to_idx: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        self.cls_idx = self.tok_to_idx["<cls>"]
        self.padding_idx = self.tok_to_idx["<pad>"]
        self.eos_idx = self.tok_to_idx["<eos>"]
        self.unk_idx = self.tok_to_idx["<unk>"]
        self.mask_idx = self.tok_to_idx["<mask>"]
        self.residue_token_ids: list[int] = [self.tok_to_idx[a] for a in STANDARD_AMINO_ACIDS]
        self.sequence_token_ids: list[int] = [self.tok_to_idx[c] for c in RESIDUES + GAPS]
        self.lut = self._byte_lut()

    def _byte_lut(self) -> np.ndarray:
        """byte -> token id for residue letters (either case) and gaps; INVALID otherwise."""
        lut = np.full(256, INVALID, dtype=np.uint8)
        for ch in RESIDUES + GAPS:
            lut[ord(ch)] = self.tok_to_idx[ch]
            lut[ord(ch.lower())] = self.tok_to_idx[ch]
        return lut

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, seq: str) -> list[int]:
        """Residues only, no framing; characters outside the alphabet become <unk> (as in ESM)."""
        get, unk = self.tok_to_idx.get, self.unk_idx
        return [get(c, unk) for c in seq.upper()]

    def encode_framed(self, seq: str) -> list[int]:
        return [self.cls_idx, *self.encode(seq), self.eos_idx]

    def tokenize(self, text: str) -> list[int]:
        """Like ``encode``, but a special token written out (``<mask>``, ``<unk>``, ...) is one
        token, as in fair-esm: ``"MK<mask>A"`` is 4 tokens."""
        if "<" not in text:
            return self.encode(text)
        ids: list[int] = []
        for piece in self._special_pattern().split(text):
            special = self.tok_to_idx.get(piece)
            if special is not None and piece.startswith("<"):
                ids.append(special)
            else:
                ids.extend(self.encode(piece))
        return ids

    def _special_pattern(self) -> re.Pattern:
        specials = [t for t in self.tokens if t.startswith("<")]
        return re.compile("(" + "|".join(map(re.escape, specials)) + ")")

    def get_batch_converter(self, truncation_seq_length: int | None = None) -> BatchConverter:
        """fair-esm's batch converter: [(label, sequence), ...] -> (labels, strs, tokens)."""
        return BatchConverter(self, truncation_seq_length)

    def decode(self, ids) -> str:
        return "".join(self.tokens[int(i)] for i in ids)

    def is_special(self, idx: int) -> bool:
        return self.tokens[idx].startswith("<")


class BatchConverter:
    """Turns [(label, sequence), ...] into (labels, strs, tokens) as fair-esm's does: tokens is
    an int64 (B, longest + 2) tensor, each row <cls> residues <eos> then <pad>. Residues are
    cut to ``truncation_seq_length`` tokens first, if given; special tokens written in a
    sequence (``<mask>``) are one token each."""

    def __init__(self, alphabet: Alphabet, truncation_seq_length: int | None = None):
        self.alphabet = alphabet
        self.truncation_seq_length = truncation_seq_length

    def __call__(self, raw_batch: Sequence[tuple[str, str]]):
        import torch

        if not raw_batch:
            raise ValueError("the batch is empty: give a list of (label, sequence) pairs")
        labels = [label for label, _ in raw_batch]
        strs = [seq for _, seq in raw_batch]
        encoded = [self.alphabet.tokenize(seq) for seq in strs]
        if self.truncation_seq_length:
            encoded = [ids[: self.truncation_seq_length] for ids in encoded]
        width = max(len(ids) for ids in encoded) + 2
        tokens = torch.full((len(encoded), width), self.alphabet.padding_idx, dtype=torch.int64)
        for row, ids in enumerate(encoded):
            framed = [self.alphabet.cls_idx, *ids, self.alphabet.eos_idx]
            tokens[row, : len(framed)] = torch.tensor(framed, dtype=torch.int64)
        return labels, strs, tokens


@lru_cache(maxsize=1)
def get_alphabet() -> Alphabet:
    return Alphabet()
