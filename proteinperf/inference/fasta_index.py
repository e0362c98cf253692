"""The index of a FASTA file for bulk inference: one pass, shared by every rank and by --resume.

One read of the file validates every record (as ``common.read_records`` would), resolves
duplicate ids and records, per kept record, its final id, its length (after --truncate) and
the byte span of its sequence lines in the decompressed stream; the same pass computes the
file's sha256. Rank 0 builds it and saves it into the shard folder (``index.npz``); the other
ranks and a resumed run load it instead of reading the FASTA again. ``IndexReader`` then
reads the sequences of a window of records straight from their spans.

Records are classified with numpy over large blocks of the file; only a record with something
unusual in it (a character outside the alphabet, '*', an odd id) goes through the record
reader's own code (``fasta._finish``), so both paths give the same sequences and errors.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from proteinperf.atomic import atomic_output
from proteinperf.constants import DUPLICATE_POLICIES, INVALID_POLICIES
from proteinperf.data.alphabet import GAPS, RESIDUES
from proteinperf.data.fasta import (
    DataError,
    FastaFormatError,
    _finish,
    check_fasta_start,
    compression_of,
    normalise,
    open_binary,
    record_blocks,
)
from proteinperf.errors import ConfigError

INDEX_FILE = "index.npz"
BLOCK = 16 << 20  # bytes of decompressed FASTA classified at a time
_WHITESPACE, _RESIDUE, _OTHER = 0, 1, 2
_CLASS = np.full(256, _OTHER, dtype=np.uint8)
_CLASS[list(b" \t\r\n\v\f")] = _WHITESPACE
for _c in (RESIDUES + GAPS).encode():
    _CLASS[_c] = _RESIDUE
    _CLASS[ord(chr(_c).lower())] = _RESIDUE
# The id as ``parse_header`` finds it, where it is plain ASCII with no whitespace inside.
_ID_RE = re.compile(rb"^[ \t]*([^ \t\n]*)", re.M)
_ODD_TITLE = re.compile(rb"[ \t]")
_ODD_ID = re.compile(rb"[^\x21-\x7e\n]")


@dataclass
class FastaIndex:
    """The kept records of a FASTA file, in input order."""

    fasta: str
    truncate: int | None
    invalid: str
    on_duplicate: str
    sha256: str = ""
    compressed: bool = False
    ids: list[str] = field(default_factory=list)  # final ids (after --on-duplicate)
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # after truncate
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sequence bytes
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    renamed: int = 0
    skipped: int = 0  # duplicates left out by --on-duplicate skip

    @property
    def residues(self) -> int:
        return int(self.lengths.sum())

    def same_options(self, other: FastaIndex) -> bool:
        return (self.truncate, self.invalid, self.on_duplicate) == (
            other.truncate,
            other.invalid,
            other.on_duplicate,
        )

    def save(self, path: Path) -> None:
        """Written atomically and fsync'ed: a reader (another rank, --resume) never sees half
        of it."""
        meta = [self.sha256, str(self.truncate or 0), self.invalid, self.on_duplicate]
        meta += [str(int(self.compressed)), str(self.renamed), str(self.skipped)]
        with atomic_output(path, fsync=True) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                ids=np.frombuffer("\n".join(self.ids).encode(), dtype=np.uint8),
                lengths=self.lengths,
                starts=self.starts,
                ends=self.ends,
                meta=np.array(meta),
            )

    @classmethod
    def load(cls, path: Path, fasta) -> FastaIndex:
        with np.load(path) as z:
            sha, truncate, invalid, on_duplicate, compressed, renamed, skipped = z["meta"]
            ids = z["ids"].tobytes().decode()
            index = cls(str(fasta), int(truncate) or None, str(invalid), str(on_duplicate))
            index.sha256, index.compressed = str(sha), compressed == "1"
            index.renamed, index.skipped = int(renamed), int(skipped)
            index.lengths, index.starts, index.ends = z["lengths"], z["starts"], z["ends"]
        index.ids = ids.split("\n") if len(index.lengths) else []
        return index


# ----------------------------------------------------------------------------- building


class _HashingReader:
    """A raw binary file that hashes every byte read through it."""

    def __init__(self, f, digest):
        self.f, self.digest = f, digest

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        return data

    def readinto(self, buffer) -> int:
        n = self.f.readinto(buffer)
        self.digest.update(memoryview(buffer)[:n])
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def __getattr__(self, name):
        return getattr(self.f, name)


def _blocks(path: str, digest) -> Iterator[bytes]:
    """``fasta.record_blocks`` of ``path``, hashing the raw bytes on the way."""
    with open(path, "rb") as raw:
        reader = _HashingReader(raw, digest)
        yield from record_blocks(open_binary(path, reader), BLOCK, path)
        reader.drain()


@dataclass
class _Block:
    """The records of one block: positions relative to it, line numbers absolute."""

    ids: list[str]
    lengths: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    lines: np.ndarray
    keep: np.ndarray  # False: dropped by --invalid skip-record
    error: tuple[int, Exception] | None = None  # (record, error) of the first bad record


def _index_block(data: bytes, line0: int, path: str, invalid: str, truncate) -> _Block:
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    line_starts = np.concatenate(([0], newlines + 1))
    line_starts = line_starts[line_starts < len(arr)]
    headers = line_starts[arr[line_starts] == ord(">")]
    if len(headers) == 0 or headers[0] > 0:
        lead = data[: headers[0] if len(headers) else len(data)]
        if lead.strip():
            stray = line0 + lead[: len(lead) - len(lead.lstrip())].count(b"\n")
            raise FastaFormatError(f"{path}:{stray}: no '>' header line before sequence data")
    if len(headers) == 0:  # blank lines before the first record
        empty = np.zeros(0, dtype=np.int64)
        return _Block([], empty, empty, empty, empty, np.zeros(0, dtype=bool))
    header_ends = np.append(newlines, len(arr))[np.searchsorted(newlines, headers)]
    starts = np.minimum(header_ends + 1, len(arr))
    ends = np.append(headers[1:], len(arr))
    lines = line0 + np.searchsorted(newlines, headers)
    classes = _CLASS[arr]
    # a span's count of bytes of a class: positions of that class before its end and start
    spaces = np.flatnonzero(classes == _WHITESPACE)
    other = np.flatnonzero(classes == _OTHER)
    lengths = (ends - starts) - (np.searchsorted(spaces, ends) - np.searchsorted(spaces, starts))
    odd = np.searchsorted(other, ends) - np.searchsorted(other, starts) > 0
    titles = _titles(data, headers + 1, header_ends)
    if _ODD_TITLE.search(titles) is None:  # ids only: nothing after the first word
        captured = titles.split(b"\n")
    else:
        captured = _ID_RE.findall(titles)
    joined = b"\n".join(captured)
    if _ODD_ID.search(joined) is None and all(captured):
        ids = joined.decode("ascii").split("\n")
    else:
        ids = []
        for k, raw in enumerate(captured):
            if raw and _ODD_ID.search(raw) is None:
                ids.append(raw.decode("ascii"))
            else:  # the reader's own parse: non-ASCII, control characters, empty ids
                odd[k] = True
                ids.append("")
    keep = np.ones(len(headers), dtype=bool)
    block = _Block(ids, lengths, starts, ends, lines, keep)
    for k in np.flatnonzero(odd | (lengths == 0)).tolist():
        try:
            record = _exact(data, int(headers[k]), int(starts[k]), int(ends[k]), int(lines[k]),
                            path, invalid)  # fmt: skip
        except DataError as e:
            block.error = (k, e)
            break
        if record is None:
            keep[k] = False
        else:
            ids[k], lengths[k] = record.id, len(record.sequence)
    if truncate is not None:
        np.minimum(lengths, truncate, out=lengths)
    return block


def _titles(data: bytes, starts: np.ndarray, ends: np.ndarray) -> bytes:
    """The bytes [start, end) of every span, joined by newlines (the header lines)."""
    return b"\n".join([data[a:b] for a, b in zip(starts.tolist(), ends.tolist())])


def _exact(data: bytes, header: int, start: int, end: int, line: int, path: str, invalid: str):
    """One record through the reader's code: the record, None (skipped) or its error."""
    title = data[header:start].decode("utf-8", errors="replace")[1:].rstrip()
    chunks = [line.decode("utf-8", errors="replace") for line in data[start:end].split(b"\n")]
    record = _finish(title, line, chunks, list(range(line + 1, line + 1 + len(chunks))), path,
                     invalid)  # fmt: skip
    if record is not None and not record.sequence:
        raise DataError(f"{path}:{line}: record '{record.id}' has no residues")
    return record


class _Duplicates:
    """--on-duplicate over the records in input order."""

    def __init__(self, path: str, policy: str, ids: list[str], lines: list[np.ndarray]):
        self.path, self.policy = path, policy
        self.ids, self.lines = ids, lines  # the kept records so far (final ids, header lines)
        self.taken: set[str] = set()
        self.renamed = self.skipped = 0

    def resolve(self, ids: list[str], lines: np.ndarray) -> tuple[list[str], list[bool] | None]:
        """(final ids, kept flags or None: all kept); raises at an 'error' duplicate."""
        new = set(ids)
        if len(new) == len(ids) and self.taken.isdisjoint(new):
            self.taken |= new
            return ids, None
        lines = lines.tolist()
        final, kept = [], []
        for record_id, line in zip(ids, lines):
            if record_id in self.taken:
                if self.policy == "error":
                    raise DataError(
                        f"{self.path}:{line}: duplicate id '{record_id}' (first at line "
                        f"{self._first_line(record_id, final, kept, lines)}); use "
                        "--on-duplicate suffix or skip"
                    )
                if self.policy == "skip":
                    self.skipped += 1
                    final.append(record_id)
                    kept.append(False)
                    continue
                n = 2
                while f"{record_id}_{n}" in self.taken:
                    n += 1
                record_id = f"{record_id}_{n}"
                self.renamed += 1
            self.taken.add(record_id)
            final.append(record_id)
            kept.append(True)
        return final, kept

    def _first_line(self, record_id, final, kept, lines) -> int:
        if record_id in self.ids:
            return int(np.concatenate(self.lines)[self.ids.index(record_id)])
        here = [i for i, k in zip(final, kept) if k].index(record_id)
        return [line for line, k in zip(lines, kept) if k][here]


def build_index(
    fasta,
    truncate: int | None = None,
    invalid: str = "error",
    on_duplicate: str = "error",
    max_residues: int | None = None,
    too_long: Callable[[str, int], None] | None = None,
) -> FastaIndex:
    """Read ``fasta`` once: validate, resolve duplicates, index; the first error in file order
    is raised, as the record reader would raise it. ``too_long(id, length)`` is called for the
    first kept record longer than ``max_residues`` (it raises)."""
    if on_duplicate not in DUPLICATE_POLICIES:
        raise ConfigError(f"on_duplicate must be one of {DUPLICATE_POLICIES}, got {on_duplicate!r}")
    if invalid not in INVALID_POLICIES:
        raise DataError(f"invalid must be one of {INVALID_POLICIES}, got {invalid!r}")
    if truncate is not None and truncate < 1:
        raise ConfigError(f"--truncate must be a positive number of residues, got {truncate}")
    path = str(fasta)
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file")
    index = FastaIndex(path, truncate, invalid, on_duplicate)
    index.compressed = compression_of(path) is not None
    digest = hashlib.sha256()
    ids: list[str] = []
    parts: dict[str, list[np.ndarray]] = {"lengths": [], "starts": [], "ends": [], "lines": []}
    duplicates = _Duplicates(path, on_duplicate, ids, parts["lines"])
    base, line0, first = 0, 1, True
    for data in _blocks(path, digest):
        if first:
            head = data[:65536]
            if head.strip():
                check_fasta_start(head, path)
            first = False
        block = _index_block(data, line0, path, invalid, truncate)
        line0 += data.count(b"\n")
        stop = block.error[0] if block.error else len(block.ids)
        valid = np.flatnonzero(block.keep[:stop])  # records the reader yields, in order
        too_long_at = None
        if max_residues is not None and too_long is not None:
            over = np.flatnonzero(block.lengths[valid] > max_residues)
            if len(over):  # the reader checked a record's length before its id
                too_long_at = int(over[0])
                valid = valid[: too_long_at + 1]
        before = valid[:too_long_at]
        candidates = block.ids
        if len(before) < len(block.ids):
            candidates = [block.ids[k] for k in before.tolist()]
        final, keep = duplicates.resolve(candidates, block.lines[before])
        if too_long_at is not None:
            k = int(valid[too_long_at])
            too_long(block.ids[k], int(block.lengths[k]))
        if block.error:
            raise block.error[1]
        if keep is None:  # no duplicates
            kept = before
            ids += final
        else:
            kept = before[np.asarray(keep, dtype=bool)]
            ids += [i for i, k in zip(final, keep) if k]
        lengths = block.lengths[kept]
        parts["lengths"].append(lengths)
        parts["starts"].append(block.starts[kept] + base)
        parts["ends"].append(block.ends[kept] + base)
        parts["lines"].append(block.lines[kept])
        base += len(data)
    if first:
        raise FastaFormatError(f"{path}: empty file (no FASTA records)")
    index.ids = ids
    for name in ("lengths", "starts", "ends"):
        setattr(index, name, np.concatenate(parts[name]).astype(np.int64))
    index.sha256 = digest.hexdigest()
    index.renamed, index.skipped = duplicates.renamed, duplicates.skipped
    return index


@dataclass(frozen=True)
class Source:
    """The FASTA file and the options that decide its records."""

    fasta: str
    truncate: int | None = None
    invalid: str = "error"
    on_duplicate: str = "error"
    max_residues: int | None = None  # longer records are refused by ``too_long(id, length)``
    too_long: Callable[[str, int], None] | None = None

    def build(self) -> FastaIndex:
        return build_index(self.fasta, self.truncate, self.invalid, self.on_duplicate,
                           self.max_residues, self.too_long)  # fmt: skip


# ----------------------------------------------------------------------------- reading


class IndexReader:
    """The sequences of consecutive index windows, read from their byte spans in order."""

    def __init__(self, index: FastaIndex):
        self.index = index
        self.stream = open_binary(index.fasta)
        self.position = 0  # in the decompressed stream

    def window(self, start: int, end: int) -> list[str]:
        """Sequences of records [start, end); windows must come in increasing order."""
        index = self.index
        first, last = int(index.starts[start]), int(index.ends[end - 1])
        if index.compressed:
            skip = first - self.position
            while skip > 0:
                skip -= len(self.stream.read(min(skip, 1 << 24)))
        else:
            self.stream.seek(first)
        data = self.stream.read(last - first)
        self.position = last
        truncate = index.truncate
        out = []
        for a, b in zip(index.starts[start:end].tolist(), index.ends[start:end].tolist()):
            seq = normalise(data[a - first : b - first].decode("utf-8", errors="replace"))
            out.append(seq[:truncate] if truncate is not None else seq)
        return out

    def close(self) -> None:
        self.stream.close()
