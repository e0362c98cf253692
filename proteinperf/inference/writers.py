"""Embedding writers: h5 (default), npz and an esm-extract-like directory of .pt files.

Every format stores, per record, ``representations`` (per-token, residues only),
``mean_representations`` and ``bos_representations`` keyed by layer, plus an index of the
input ids in input order. Records are written as they are computed (streamed), and the bytes
depend only on the inputs: no timestamps, a fixed order, so a rerun gives identical files.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from proteinperf.constants import EMBED_FORMATS
from proteinperf.errors import InputError

FORMATS = EMBED_FORMATS
INDEX_KEY = "_index"  # h5 group / npz prefix of the id index; never given to a record
INDEX_FILE = "index.csv"  # pt-dir: id -> file
MAX_NAME = 100
# File names: a portable set. Keys inside one h5/npz file: anything but the path separator.
UNSAFE_FILE = re.compile(r"[^A-Za-z0-9._-]")
UNSAFE_KEY = re.compile(r"[/\\\x00-\x1f]")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class NameAllocator:
    """Record id -> a unique name, safe as a file name (``files=True``) or an h5/npz key.

    A safe, unused id is kept as is; anything else (a slash, a space in a file name, a leading
    dot, an id seen before, for files one that differs only in case from a name in use)
    becomes its sanitised form plus a short hash of (id, occurrence): deterministic and
    collision-free.
    """

    def __init__(self, files: bool, reserved: tuple[str, ...] = (INDEX_KEY, INDEX_FILE)):
        self._unsafe = UNSAFE_FILE if files else UNSAFE_KEY
        self._fold = str.lower if files else str  # case-insensitive file systems
        self._used = {self._fold(name) for name in reserved}
        self._seen: dict[str, int] = {}

    def _is_safe(self, name: str) -> bool:
        return (
            0 < len(name) <= MAX_NAME
            and not name.startswith(".")
            and not self._unsafe.search(name)
            and self._fold(name) not in self._used
        )

    def __call__(self, record_id: str) -> str:
        occurrence = self._seen.get(record_id, 0)
        self._seen[record_id] = occurrence + 1
        name = record_id
        salt = 0
        # The stem leaves room for "_" + 10 hex digits, so every renamed form fits MAX_NAME and
        # only a hash collision (vanishingly rare) can send the loop round again.
        stem = self._unsafe.sub("_", record_id).lstrip(".")[: MAX_NAME - 11] or "record"
        while not self._is_safe(name):
            digest = hashlib.sha1(f"{record_id}\0{occurrence}\0{salt}".encode()).hexdigest()
            name = f"{stem}_{digest[:10]}"
            salt += 1
        self._used.add(self._fold(name))
        return name


def record_arrays(result: dict) -> list[tuple[str, int, np.ndarray]]:
    """(kind, layer, array) for every stored array of one record, in a fixed order."""
    return [
        (kind, layer, tensor.numpy())
        for kind in ("representations", "mean_representations", "bos_representations")
        for layer, tensor in sorted(result.get(kind, {}).items())
    ]


_entries = record_arrays


class H5Writer:
    """One HDF5 file: ``/<name>/<kind>/<layer>`` datasets, attrs id/length, ``/_index``.

    HDF5 writes through a ``_WriteGuard`` (h5py's file-object driver): HDF5 does not recover
    from a failed write (the file can then be neither flushed nor closed, and the library
    crashes the process at exit), so a full disk is kept from it and raised here instead.

    Records go through h5py's low-level calls with property lists and types made once: the
    same objects, and bytes, as ``create_group`` / ``attrs[...] =`` / ``create_dataset``, at
    about half the cost per record (measured 0.4 vs 0.75 ms, one mean vector per record).
    """

    def __init__(self, path: Path, metadata: dict):
        import h5py
        from h5py import h5p, h5s, h5t

        self._h5py = h5py
        self.guard = _WriteGuard(path)
        self.file = h5py.File(self.guard, "w", libver="earliest", track_order=False)
        for key, value in metadata.items():
            self.file.attrs[key] = value
        # as h5py's high-level calls make them: untimed groups and datasets, no attribute
        # order, names ASCII where they can be (else UTF-8)
        self._gcpl = h5p.create(h5p.GROUP_CREATE)
        self._gcpl.set_obj_track_times(False)
        self._dcpl = h5p.create(h5p.DATASET_CREATE)
        self._dcpl.set_obj_track_times(False)
        self._dcpl.set_attr_creation_order(0)
        self._lcpl = {}
        for cset in (h5t.CSET_ASCII, h5t.CSET_UTF8):
            self._lcpl[cset] = h5p.create(h5p.LINK_CREATE)
            self._lcpl[cset].set_create_intermediate_group(True)
            self._lcpl[cset].set_char_encoding(cset)
        self._str = h5py.string_dtype()
        self._str_types = (h5t.py_create(self._str, logical=True), h5t.py_create(self._str))
        self._int_types = (h5t.py_create(np.dtype(np.int64), logical=True),
                           h5t.py_create(np.dtype(np.int64)))  # fmt: skip
        self._float = h5t.py_create(np.dtype(np.float32), logical=True)
        self._scalar = h5s.create_simple(())

    def add(self, name: str, record_id: str, result: dict) -> None:
        from h5py import h5a, h5d, h5g, h5s, h5t

        try:
            key, cset = name.encode("ascii"), h5t.CSET_ASCII
        except UnicodeEncodeError:
            key, cset = name.encode("utf-8"), h5t.CSET_UTF8
        group = h5g.create(self.file.id, key, lcpl=self._lcpl[cset], gcpl=self._gcpl)
        for attr, value, (stored, given) in (
            (b"id", np.asarray(record_id, dtype=self._str), self._str_types),
            (b"length", np.asarray(result["length"], dtype=np.int64), self._int_types),
        ):
            attribute = h5a.create(group, attr, stored, self._scalar)
            attribute.write(value, mtype=given)
            attribute.close()
        kinds = {}
        for kind, layer, array in _entries(result):
            if kind not in kinds:
                kinds[kind] = h5g.create(group, kind.encode(), lcpl=self._lcpl[h5t.CSET_ASCII],
                                         gcpl=self._gcpl)  # fmt: skip
            array = np.ascontiguousarray(array, dtype=np.float32)
            dataset = h5d.create(kinds[kind], str(layer).encode(), self._float,
                                 h5s.create_simple(array.shape), dcpl=self._dcpl)  # fmt: skip
            dataset.write(h5s.ALL, h5s.ALL, array)
        self.guard.check()

    def close(self, ids: list[str], names: list[str]) -> None:
        index = self.file.create_group(INDEX_KEY)
        strings = self._h5py.string_dtype()
        index.create_dataset(
            "ids", data=np.array(ids, dtype=object), dtype=strings, track_times=False
        )
        index.create_dataset(
            "keys", data=np.array(names, dtype=object), dtype=strings, track_times=False
        )
        self.file.close()
        self.guard.close()  # raises the first failed write, if any

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # (discarded: the error in flight is the one)
            self.file.close()
        with contextlib.suppress(OSError):
            self.guard.close()


class _WriteGuard:
    """The file HDF5 writes through (positioned reads and writes, no buffer). A write that
    fails (a full disk) is recorded and reported to HDF5 as done: that write and all later ones
    are held in memory, and reads see them, so HDF5 stays consistent until ``check`` (after each
    record) or ``close`` raises the error and the file is discarded."""

    def __init__(self, path: Path):
        self.f = open(path, "w+b", buffering=0)
        self.fd = self.f.fileno()
        self.pos = 0
        self.error: OSError | None = None
        self.held: list[tuple[int, bytes]] = []  # (offset, data) written after the error
        self.size = 0  # the file's logical size (the file is new: kept here, not fstat'ed)

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = os.pwrite(self.fd, data, self.pos)
                while done < len(data):
                    done += os.pwrite(self.fd, data[done:], self.pos + done)
            except OSError as err:
                self.error = err
        if self.error is not None:
            self.held.append((self.pos, bytes(data)))
        self.size = max(self.size, self.pos + len(data))
        self.pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if not self.held and size is not None and size >= 0:
            out = os.pread(self.fd, size, self.pos)
            self.pos += len(out)
            return out
        end = self.size if size is None or size < 0 else self.pos + size
        out = bytearray(os.pread(self.fd, max(end - self.pos, 0), self.pos))
        for offset, data in self.held:  # in write order: later writes win
            lo, hi = max(offset, self.pos), min(offset + len(data), end)
            if lo < hi:
                if len(out) < hi - self.pos:
                    out.extend(bytes(hi - self.pos - len(out)))
                out[lo - self.pos : hi - self.pos] = data[lo - offset : hi - offset]
        self.pos += len(out)
        return bytes(out)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        self.size = size
        if self.error is None:
            os.ftruncate(self.fd, size)
        else:
            self.held = [(o, d[: max(size - o, 0)]) for o, d in self.held if o < size]
        return size

    def flush(self) -> None:
        pass

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.f.close()
        self.held = []
        self.check()


class NpzWriter:
    """A .npz (zip of .npy) streamed entry by entry: ``<name>/<kind>/<layer>``, ``_index/ids``."""

    def __init__(self, path: Path, metadata: dict):
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def _write(self, key: str, array: np.ndarray) -> None:
        info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
        with self.zip.open(info, "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)

    def add(self, name: str, record_id: str, result: dict) -> None:
        for kind, layer, array in _entries(result):
            self._write(f"{name}/{kind}/{layer}", array)

    def close(self, ids: list[str], names: list[str]) -> None:
        self._write(f"{INDEX_KEY}/ids", np.array(ids, dtype=str))
        self._write(f"{INDEX_KEY}/keys", np.array(names, dtype=str))
        self.zip.close()

    def abort(self) -> None:
        self.zip.close()


class PtDirWriter:
    """esm-extract's layout: ``<name>.pt`` = {label, representations, mean_representations,
    bos_representations} (layer -> tensor), plus ``index.csv`` (id, file)."""

    def __init__(self, path: Path, metadata: dict):
        self.path = path

    def add(self, name: str, record_id: str, result: dict) -> None:
        payload = {"label": record_id}
        for kind in ("representations", "mean_representations", "bos_representations"):
            if kind in result:
                # clone: a view would drag its whole batch's storage into the file
                payload[kind] = {layer: t.clone() for layer, t in sorted(result[kind].items())}
        # Serialised in memory, then written: torch.save straight to a file reports a full
        # disk as a RuntimeError without the file's name; a plain write raises OSError.
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        with open(self.path / f"{name}.pt", "wb") as f:
            f.write(buffer.getbuffer())

    def close(self, ids: list[str], names: list[str]) -> None:
        with open(self.path / INDEX_FILE, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "file"])
            writer.writerows((record_id, f"{name}.pt") for record_id, name in zip(ids, names))

    def abort(self) -> None:
        pass


WRITERS = {"h5": H5Writer, "npz": NpzWriter, "pt-dir": PtDirWriter}


def check_replaceable_dir(path: Path) -> None:
    """Only an earlier pt-dir output (it has index.csv) or an empty folder may be replaced."""
    if path.is_dir() and any(path.iterdir()) and not (path / INDEX_FILE).exists():
        raise InputError(
            f"output {path} is a non-empty directory that is not a pt-dir embedding output "
            f"(no {INDEX_FILE}); choose another path"
        )


def stored_bytes(payload: int, fmt: str) -> int:
    """About what a record of ``payload`` float bytes takes on disk in format ``fmt``: measured
    at ~2.8 KB of HDF5 group and dataset headers (npz: ~0.5 KB), and for pt-dir a file of its
    own (zip headers, rounded up to 4 KB blocks)."""
    if fmt == "pt-dir":
        return -(-(payload + 3072) // 4096) * 4096
    return payload + 3072
