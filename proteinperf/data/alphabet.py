"""The protein vocabulary: token ids identical to fair-esm's "ESM-1b" alphabet (also ESM-2's)."""

from __future__ import annotations

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

    def decode(self, ids) -> str:
        return "".join(self.tokens[int(i)] for i in ids)

    def is_special(self, idx: int) -> bool:
        return self.tokens[idx].startswith("<")


@lru_cache(maxsize=1)
def get_alphabet() -> Alphabet:
    return Alphabet()
