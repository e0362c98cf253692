"""Streaming FASTA reading: compression sniffing, header fields, normalisation, one-line errors."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from proteinperf.constants import INVALID_POLICIES
from proteinperf.errors import ProteinperfError

from .alphabet import GAPS, RESIDUES

# "KEY=" fields of UniRef (n Tax TaxID RepID) and UniProtKB (OS OX GN PE SV) title lines. A field
# starts at " KEY=" and runs to the next such marker; the description is the text before the first.
MARKERS = ("n", "Tax", "TaxID", "RepID", "OS", "OX", "GN", "PE", "SV")
HEADER_FIELDS = ("description", "n", "tax", "taxid", "repid", "os", "ox", "gn")
INT_FIELDS = ("n", "taxid", "ox")
UNIREF_PREFIX = r"^UniRef\d+_"
_uniref_re = re.compile(UNIREF_PREFIX)
_marker_re = re.compile(r"(?<= )(" + "|".join(MARKERS) + r")=")
# The id is the first word of the title: blanks before it are skipped, a space or tab ends it.
ID_BLANKS = " \t"
_id_end_re = re.compile(r"[ \t]")
NO_ID = "header line has no id (the id is the first word after '>')"
_valid_chars = frozenset(RESIDUES + GAPS)
_strip_ws = str.maketrans("", "", " \t\r\n\v\f")


class DataError(ProteinperfError, ValueError):
    """Bad input for the data pipeline; its message is one line, ready for `error: ...`."""


class FastaFormatError(DataError):
    """A malformed FASTA file; the message names file:line and, where known, the record id."""


@dataclass(frozen=True)
class FastaRecord:
    id: str
    description: str
    sequence: str
    line: int  # 1-based line number of the header


def parse_header(header: str) -> dict:
    """Fields of a FASTA title line (without '>'): id, description and any UniProt/UniRef fields."""
    header = header.rstrip("\r\n").lstrip(ID_BLANKS)
    end = _id_end_re.search(header)
    head, rest = (header[: end.start()], header[end.end() :]) if end else (header, "")
    fields: dict = {"id": head}
    hits = [(m.start(), m.group(1)) for m in _marker_re.finditer(" " + rest)] if rest else []
    fields["description"] = rest[: max(hits[0][0] - 2, 0)] if hits else rest
    for k, (pos, key) in enumerate(hits):  # pos indexes " " + rest
        end = hits[k + 1][0] - 2 if k + 1 < len(hits) else len(rest)
        name = key.lower()
        if name not in fields and name in HEADER_FIELDS:
            value = rest[pos + len(key) : end]
            fields[name] = int(value) if name in INT_FIELDS and value.isdigit() else value
    if _uniref_re.match(head):
        fields["cluster_id"] = head
    return fields


# --- opening and sniffing ------------------------------------------------------------------

_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_OPENERS = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}
DECOMPRESSION_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


def compression_of(path: str | Path) -> str | None:
    """'gzip', 'bzip2', 'xz' or None, from the magic bytes (the file name may lie)."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


def open_binary(path: str | Path, raw: BinaryIO | None = None) -> BinaryIO:
    """The decompressed byte stream of a plain, gzip, bzip2 or xz file: the one opener.

    ``raw``: the file already open in binary mode, read through (so that progress can follow
    the raw bytes read); it is returned as it is for a plain file.
    """
    kind = compression_of(path)
    if raw is not None:
        return _OPENERS[kind](raw, "rb") if kind else raw
    return _OPENERS[kind](path, "rb") if kind else open(path, "rb")


def record_blocks(stream: BinaryIO, block_size: int, path: str | Path) -> Iterator[bytes]:
    """The rest of ``stream`` in blocks of about ``block_size`` bytes (more for a record that is
    longer), each ending where a record does: before a '>' that starts a line; the last block
    holds what is left. A truncated or corrupt compressed file is one FastaFormatError."""
    carry = b""
    try:
        while chunk := stream.read(block_size):
            data = carry + chunk
            cut = data.rfind(b"\n>") + 1
            if cut <= 0:
                carry = data
                continue
            carry = data[cut:]
            yield data[:cut]
    except DECOMPRESSION_ERRORS as e:
        raise FastaFormatError(f"{path}: truncated or corrupt compressed file ({e})") from None
    if carry:
        yield carry


def check_fasta_start(head: bytes, path: str | Path) -> None:
    """Raise a one-line DataError unless `head` (the first bytes of a file) looks like FASTA."""
    text = head.lstrip()
    if not text:
        raise FastaFormatError(f"{path}: empty file (no FASTA records)")
    if b"\x00" in head or _looks_binary(head):
        raise FastaFormatError(f"{path}: binary data, not a FASTA file")
    if text.startswith(b">"):
        return
    if text.startswith(b"@"):
        raise FastaFormatError(f"{path}:1: looks like FASTQ ('@' header), expected FASTA ('>')")
    if text.startswith(b"LOCUS"):
        raise FastaFormatError(f"{path}:1: looks like GenBank ('LOCUS'), expected FASTA ('>')")
    line = head[: len(head) - len(text)].count(b"\n") + 1
    raise FastaFormatError(f"{path}:{line}: no '>' header line before sequence data")


def _looks_binary(head: bytes) -> bool:
    sample = head[:4096]
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(sample) - 4  # a multi-byte char cut at the end is fine
    control = sum(b < 9 or 13 < b < 32 for b in sample)
    return control > len(sample) // 100


# --- the record reader ---------------------------------------------------------------------


def normalise(raw: str) -> str:
    """Whitespace removed, uppercased, trailing '*' stripped."""
    return raw.translate(_strip_ws).upper().rstrip("*")


def read_fasta(path: str | Path, invalid: str = "error") -> Iterator[FastaRecord]:
    """Yield normalised records one by one (any compression, width, line ending).

    invalid: 'error' raises FastaFormatError at the first character outside the alphabet,
    'unk' keeps it (Alphabet.encode maps it to <unk>), 'skip-record' drops the record.
    """
    if invalid not in INVALID_POLICIES:
        raise DataError(f"invalid must be one of {INVALID_POLICIES}, got {invalid!r}")
    with open_binary(path) as f:
        try:
            yield from _records(f, str(path), invalid)
        except DECOMPRESSION_ERRORS as e:
            raise FastaFormatError(f"{path}: truncated or corrupt compressed file ({e})") from None


def _records(f: BinaryIO, path: str, invalid: str) -> Iterator[FastaRecord]:
    head = f.peek(65536)[:65536]
    if head.strip():
        check_fasta_start(head, path)
    header, start, chunks, lines = None, 0, [], []
    for lineno, raw in enumerate(f, 1):
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(">"):
            if header is not None:
                rec = _finish(header, start, chunks, lines, path, invalid)
                if rec is not None:
                    yield rec
            header, start, chunks, lines = line[1:].rstrip(), lineno, [], []
        elif header is None:
            if line.strip():
                raise FastaFormatError(f"{path}:{lineno}: no '>' header line before sequence data")
        else:
            chunks.append(line)
            lines.append(lineno)
    if header is None:
        raise FastaFormatError(f"{path}: empty file (no FASTA records)")
    rec = _finish(header, start, chunks, lines, path, invalid)
    if rec is not None:
        yield rec


def _finish(header, start, chunks, lines, path, invalid) -> FastaRecord | None:
    seq = normalise("".join(chunks))
    bad = None if _valid_chars.issuperset(seq) else next(c for c in seq if c not in _valid_chars)
    fields = parse_header(header)
    if not fields["id"]:
        raise FastaFormatError(f"{path}:{start}: {NO_ID}")
    if bad is not None:
        if invalid == "skip-record":
            return None
        if invalid == "error":
            where = next(n for n, c in zip(lines, chunks) if bad in c.upper())
            raise FastaFormatError(
                f"{path}:{where}: record '{fields['id']}': invalid character {bad!r} "
                "(use --invalid unk or skip-record to accept)"
            )
    return FastaRecord(fields["id"], fields["description"], seq, start)
