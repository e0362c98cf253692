"""The content digest of a file: what a resumed run and a named model's card compare.

Path, size and mtime do not prove a file unchanged (an in-place edit can keep the size and
restore the mtime), and torch.load does not notice a few flipped bytes inside the weights.
"""

from __future__ import annotations

import hashlib


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file's bytes (as stored: a compressed file is not decompressed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


__all__ = ["file_sha256"]
