"""FASTA -> corpus directory: parallel over blocks, deterministic, atomic, bounded memory.

Layout of a corpus directory (CORPUS_FORMAT_VERSION 1), per split in train/valid/test:
  {split}.tokens.bin   uint8 token ids (residues only, records back to back)
  {split}.offsets.bin  int64, n+1 entries: record i is tokens[offsets[i]:offsets[i+1]]
  {split}.meta.parquet id, cluster_id, description, n, tax, taxid, repid, os, ox, gn, length
and manifest.json (record and residue counts, alphabet, inputs, command line, skips).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from proteinperf.atomic import atomic_output
from proteinperf.constants import DATASETS

from .alphabet import get_alphabet
from .blocks import SPLITS, Scratch, parse_block
from .direct import CHUNK, AppendFile
from .fasta import (
    DECOMPRESSION_ERRORS,
    INVALID_POLICIES,
    DataError,
    FastaFormatError,
    check_fasta_start,
    compression_of,
    open_binary,
    record_blocks,
)

CORPUS_FORMAT_VERSION = 1
BLOCK_SIZE = 8 << 20
CHECKSUM_LEAD = 256 << 20  # bytes the checksum thread may read ahead of the parse
# Metadata encoding, chosen for speed (it is written by the one thread that orders the
# output): a dictionary only for columns with repeated values (ids are unique, and trying a
# dictionary for them costs time), snappy rather than zstd (half the encode time, files ~3x
# larger, ~5% of the token file), no column statistics.
_DICTIONARY_COLUMNS = ["description", "n", "tax", "taxid", "os", "ox", "gn"]
_PARQUET_OPTIONS = dict(
    compression="snappy", use_dictionary=_DICTIONARY_COLUMNS, write_statistics=False
)


def prepare(
    inputs,
    out,
    *,
    valid_fraction=0.01,
    test_fraction=0.01,
    min_length=1,
    max_length=None,
    workers=None,
    seed=0,
    invalid="error",
    block_size=BLOCK_SIZE,
    progress=True,
    command=None,
    cluster_identity=None,
    cluster_method="cluster",
    cluster_coverage=0.8,
    clusters_file=None,
    direct_io=True,
    overwrite=False,
) -> dict:
    """Build the corpus directory `out` from FASTA `inputs`; returns the manifest.

    An existing corpus at `out` is replaced only with `overwrite` (an empty folder always may
    be used; anything else never is).

    With `cluster_identity` F the records are clustered with MMseqs2 (identity >= F, members
    covered >= `cluster_coverage` by their representative) and whole clusters are assigned to
    splits, so no valid/test record has a relative of >= F identity in train. UniRef input is
    already clustered: its cluster ids are the split keys, and no clustering runs.
    `clusters_file` instead takes a finished clustering (MMseqs2's `representative<TAB>member`
    TSV, e.g. from `mmseqs createtsv`), which must list every record kept.
    `direct_io`: write the token files around the page cache where the filesystem allows
    (data/direct.py); False for plain buffered writes (e.g. on a slow disk, where the page
    cache lets prepare finish before the bytes reach it).
    """
    if invalid not in INVALID_POLICIES:
        raise DataError(f"--invalid must be one of {', '.join(INVALID_POLICIES)}")
    if not 0 <= valid_fraction + test_fraction < 1:
        raise DataError("valid and test fractions must be >= 0 and sum to less than 1")
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    for p in inputs:
        if not p.is_file():
            raise DataError(f"{p}: no such file")
    out = Path(out)
    if out.exists() and not _replaceable(out):
        raise DataError(
            f"{out}: exists and is not a corpus directory (no manifest.json); it would be "
            "replaced, choose another --out"
        )
    if not overwrite and (out / "manifest.json").is_file():
        raise DataError(
            f"{out}: a corpus already exists there (built from {_built_from(out)}); add "
            "--overwrite to replace it, or choose another --out"
        )
    options = dict(
        invalid=invalid,
        min_length=min_length,
        max_length=max_length,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    workers = workers or min(os.cpu_count() or 1, 8)
    if cluster_identity is not None and clusters_file is not None:
        raise DataError("give either a cluster identity or a clusters file, not both")
    if cluster_identity is not None:
        from .cluster import check_cluster_options

        check_cluster_options(cluster_identity, cluster_coverage)
    # Built in a temporary folder beside `out`, which replaces `out` only once complete.
    with atomic_output(out, directory=True) as tmp:
        clusters, clustering = None, None
        if clusters_file is not None:
            clusters, clustering = _clusters_from_file(clusters_file, seed)
        elif cluster_identity is not None:
            clusters, clustering = _clusters(
                inputs,
                tmp,
                out.parent / f"{out.name}.mmseqs.log",
                cluster_identity,
                cluster_method,
                cluster_coverage,
                seed,
                workers,
                progress,
            )
        with _truncation_guard(tmp):
            manifest = _build(
                inputs, tmp, options, workers, block_size, progress, clusters, direct_io
            )
        if clustering is not None:
            manifest["clustering"] = clustering
        manifest["command"] = command or " ".join(sys.argv)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if progress:
        print(summary(manifest), file=sys.stderr)
    return manifest


def _is_uniref(path: Path) -> bool:
    with open_binary(path) as f:
        head = f.read(64).lstrip()
    return head.startswith(b">UniRef")


def _clusters(inputs, tmp, log, identity, method, coverage, seed, workers, progress):
    """(ClusterMap or None, the manifest's "clustering" entry). MMseqs2's output goes to
    `log`, outside the temporary corpus: kept if it fails (its message names it), else removed."""
    from .cluster import ClusterMap, cluster_fasta

    entry = {"identity": identity, "coverage": coverage, "method": method}
    if all(_is_uniref(p) for p in inputs):
        entry["method"] = "uniref"  # UniRefNN_X records: X is already the cluster
        return None, entry
    if progress:
        print(f"clustering at {identity:.0%} identity with MMseqs2 ({method})", file=sys.stderr)
    t0 = time.monotonic()
    work = tmp / ".mmseqs"
    table = cluster_fasta(
        inputs, identity, work, coverage=coverage, method=method, threads=workers, log=log
    )
    shutil.rmtree(work, ignore_errors=True)
    log.unlink(missing_ok=True)
    clusters = ClusterMap.from_table(table, seed, source=f"MMseqs2's clustering ({method})")
    entry.update(clusters=clusters.clusters, seconds=round(time.monotonic() - t0, 3))
    return clusters, entry


def _clusters_from_file(path, seed):
    from .cluster import ClusterMap, read_cluster_tsv

    clusters = ClusterMap.from_table(read_cluster_tsv(path), seed, source=str(path))
    return clusters, {"method": "file", "file": str(path), "clusters": clusters.clusters}


def _built_from(corpus: Path) -> str:
    try:
        manifest = json.loads((corpus / "manifest.json").read_text())
        return ", ".join(str(i["path"]) for i in manifest["inputs"]) or "?"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unreadable manifest"


def _replaceable(out: Path) -> bool:
    """An earlier corpus or an empty folder may be replaced; anything else is the user's."""
    return out.is_dir() and ((out / "manifest.json").is_file() or not any(out.iterdir()))


class _Writer:
    """Appends parsed blocks, in input order, to the split files of a temp corpus directory."""

    def __init__(self, root: Path, input_bytes: int, direct_io: bool = True):
        self.root = root
        # The token streams are most of the output: written around the page cache (direct.py),
        # through staging buffers no larger than the input (a small run stays small).
        chunk = min(CHUNK, max(input_bytes, 1))
        self.tokens = [
            AppendFile(root / f"{s}.tokens.bin", direct=direct_io, chunk=chunk) for s in SPLITS
        ]
        self.offsets = [open(root / f"{s}.offsets.bin", "wb") for s in SPLITS]
        for f in self.offsets:
            f.write(np.zeros(1, np.int64).tobytes())
        self.meta = [None, None, None]
        self.ends = [0, 0, 0]
        self.records = [0, 0, 0]
        self.hashes = open(root / ".id_hashes", "wb")
        self.stats: dict[str, int] = {}

    def add(self, r: dict) -> None:
        for s in range(3):
            self.tokens[s].write(r["tokens"][s])
            ends = self.ends[s] + np.cumsum(r["lengths"][s])
            self.offsets[s].write(ends.astype(np.int64).tobytes())
            self.ends[s] = int(ends[-1]) if ends.size else self.ends[s]
            self.records[s] += r["lengths"][s].size
            table = r["meta"][s]
            if self.meta[s] is None:
                self.meta[s] = pq.ParquetWriter(
                    self.root / f"{SPLITS[s]}.meta.parquet", table.schema, **_PARQUET_OPTIONS
                )
            if table.num_rows:
                self.meta[s].write_table(table)
        self.hashes.write(r["id_hashes"].tobytes())
        for k, v in r["stats"].items():
            self.stats[k] = self.stats.get(k, 0) + v

    def close(self) -> None:
        """Finish every file; the first error is raised after all of them are closed."""
        with ExitStack() as stack:
            for f in [*self.tokens, *self.offsets, self.hashes]:
                stack.callback(f.close)
            for s, w in enumerate(self.meta):
                if w is not None:
                    stack.callback(w.close)
                else:
                    stack.callback(_empty_meta, self.root / f"{SPLITS[s]}.meta.parquet")

    def abandon(self) -> None:
        """Close every file after an error, keeping that error (the corpus is discarded)."""
        try:
            self.close()
        except Exception:
            pass


def _empty_meta(path: Path) -> None:
    pq.write_table(pa.table({"id": pa.array([], pa.string())}), path)


def _build(
    inputs, tmp, options, workers, block_size, progress, clusters=None, direct_io=True
) -> dict:
    total = sum(p.stat().st_size for p in inputs)
    writer = _Writer(tmp, total, direct_io)
    bar = _progress_bar(total) if progress else _NoBar()
    # Threads, not processes: the parsing kernels release the GIL, so threads run in parallel
    # while sharing one copy of the compiled kernels (loading them costs ~1 CPU second per
    # process) and handing results over without pickling.
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    # Checksums of plain files are taken by one more thread, from the start: zlib releases the
    # GIL, so they are computed while the parser's compiled kernels load (~0.3 s of one core
    # in which nothing else can run) instead of beside the parse. It runs at most `lead`
    # blocks ahead of the parse, so that on a file larger than memory both read it from the
    # page cache once.
    summer = ThreadPoolExecutor(1) if workers > 1 else None
    stop = threading.Event()
    described = []
    unclustered_id = None  # the first kept record the clustering does not list
    scratches = _ScratchPool()
    t0 = time.monotonic()
    finished = False
    try:
        for path in inputs:
            digest = hashlib.sha256()
            lines = 0
            parse_options = dict(options, clusters=clusters, scratches=scratches)
            tasks = _block_tasks(path, block_size)
            sums = None
            if summer is not None and compression_of(path) is None:
                lead = threading.Semaphore(max(workers + 2, CHECKSUM_LEAD // block_size))
                sums = summer.submit(_range_checksums, path, block_size, stop, lead)
            for r, n_in in _parsed_blocks(tasks, parse_options, pool, workers, sums is None):
                if r["error"] is not None:
                    line, rec_id, what = r["error"]
                    record = f"record '{rec_id}': " if rec_id else ""
                    raise FastaFormatError(f"{path}:{lines + line}: {record}{what}")
                lines += r["newlines"]
                if sums is None:
                    digest.update(r["checksum"].to_bytes(4, "little"))
                else:
                    lead.release()
                writer.add(r)
                unclustered_id = unclustered_id or r["unclustered_id"]
                r["release"]()  # its tokens are written: the buffers can take the next block
                bar.update(n_in)
                done = sum(writer.records)
                bar.set_postfix_str(f"{done / max(time.monotonic() - t0, 1e-9):,.0f} rec/s")
            for checksum in sums.result() if sums is not None else ():
                digest.update(checksum.to_bytes(4, "little"))
            described.append(
                {
                    "path": str(path),
                    "size": path.stat().st_size,
                    "compression": compression_of(path),
                    # (of the adler32s of the blocks prepare cut at this block size)
                    "checksum": "sha256-of-block-adler32:" + digest.hexdigest(),
                    "checksum_block_size": block_size,
                }
            )
        finished = True
    finally:
        bar.close()
        stop.set()
        for executor in (pool, summer):
            if executor is not None:
                # After an error or a stop, do not wait for a block still in a worker (the
                # first run after an install compiles the kernels there for ~20 s): workers
                # only read the input and their own buffers, never the output.
                executor.shutdown(wait=finished, cancel_futures=True)
        if finished:
            writer.close()
        else:
            writer.abandon()  # the error in flight is the one to report
    if clusters is not None:
        clusters.check_complete(
            sum(writer.records), writer.stats.get("unclustered", 0), unclustered_id
        )
    if sum(writer.records) == 0:
        raise DataError(
            f"{', '.join(map(str, inputs))}: no records kept ({_skips_text(writer.stats)})"
        )
    duplicates = _duplicate_count(tmp / ".id_hashes")
    os.remove(tmp / ".id_hashes")
    alphabet = get_alphabet()
    return {
        "format_version": CORPUS_FORMAT_VERSION,
        "splits": {
            s: {
                "records": writer.records[i],
                "residues": writer.ends[i],
            }
            for i, s in enumerate(SPLITS)
        },
        "records_read": writer.stats["records"],
        "skipped": {
            k: writer.stats[k] for k in ("empty", "too_short", "too_long", "invalid_skipped")
        },
        "records_with_unk": writer.stats["invalid_unk"],
        "duplicate_ids": duplicates,
        "alphabet": alphabet.tokens,
        "inputs": described,
        "options": options,
        "seconds": round(time.monotonic() - t0, 3),
    }


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        file=sys.stderr,
        desc="prepare",
        smoothing=0.1,
    )


class _NoBar:
    """The bar's interface, for --quiet (without importing tqdm: 0.02 s of a 1 s run)."""

    def update(self, n):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


class _ScratchPool:
    """blocks.Scratch buffers for the blocks in flight: taken by a worker, given back once the
    block is written (at most workers + 2 exist, as many as blocks in flight)."""

    def __init__(self):
        self.free: list[Scratch] = []
        self.lock = threading.Lock()

    def take(self) -> Scratch:
        with self.lock:
            return self.free.pop() if self.free else Scratch()

    def give(self, scratch: Scratch) -> None:
        with self.lock:
            self.free.append(scratch)


def _parsed_blocks(tasks, options, pool, workers, checksum=True):
    """Parsed blocks of one file's (task, bytes) plan, in file order, with the number of input
    bytes each covers (and the block's adler32 as "checksum" if `checksum`)."""
    if pool is None:
        for task, n_in in tasks:
            yield _work(task, options, checksum), n_in
        return
    pending = []
    for task, n_in in tasks:  # keep a bounded window in flight (memory stays O(workers))
        pending.append((pool.submit(_work, task, options, checksum), n_in))
        if len(pending) > workers + 1:
            fut, n = pending.pop(0)
            yield fut.result(), n
    for fut, n in pending:
        yield fut.result(), n


def _work(task, options, checksum=True) -> dict:
    if isinstance(task, tuple):
        with _mapped_task(task) as data:
            return _parse(data, options, checksum)
    return _parse(task, options, checksum)


@contextmanager
def _mapped_task(task):
    """The bytes of a planned block (path, start, stop, state) of a plain file, mapped; the
    file is checked unchanged before mapping and after use."""
    path, start, stop, planned = task
    with open(path, "rb") as f:
        _check_unchanged(f, path, planned)
        with _mapped(f, start, stop, path) as data:
            yield data
        _check_unchanged(f, path, planned)


def _range_checksums(path, block_size, stop: threading.Event, lead) -> list[int]:
    """adler32 of each block of a plain file, as _block_tasks cuts them; one `lead` permit per
    block (the parse gives one back per block it finishes)."""
    sums = []
    for task, _bytes in _block_tasks(path, block_size):
        while not lead.acquire(timeout=0.05):
            if stop.is_set():
                return sums
        with _mapped_task(task) as data:
            sums.append(zlib.adler32(data))
    return sums


def _file_state(f) -> tuple[int, int]:
    st = os.fstat(f.fileno())
    return st.st_size, st.st_mtime_ns


def _check_unchanged(f, path, planned: tuple[int, int]) -> None:
    """A file that changed since its blocks were planned fails with one line. Checked before a
    block is mapped (mapping past the end of a file that shrank, then touching those pages,
    kills the process with SIGBUS) and again after it is parsed (a change during the parse).
    A truncation inside that window raises SIGBUS, which _truncation_guard turns into the same
    kind of line."""
    size, mtime = _file_state(f)
    if (size, mtime) != planned:
        what = f"size {planned[0]:,} -> {size:,} bytes" if size != planned[0] else "rewritten"
        raise DataError(f"{path}: changed while being read ({what}); run prepare again")


def _parse(data, options, checksum=True) -> dict:
    scratches = options["scratches"]
    scratch = scratches.take()
    r = parse_block(data, **{k: v for k, v in options.items() if k != "scratches"}, scratch=scratch)
    r["checksum"] = zlib.adler32(data) if checksum else None
    r["release"] = lambda: scratches.give(scratch)
    return r


_MAPPED_NOW: list = []  # the input file being parsed from a memory map, for the SIGBUS message


@contextmanager
def _truncation_guard(tmp: Path):
    """Turn SIGBUS into the CLI's one-line error (exit status 2) while a corpus is built.

    Input blocks are parsed straight from a memory map. If another process truncates the file
    meanwhile, touching a page past the new end raises SIGBUS inside the parser, which Python
    cannot turn into an exception (the faulting load would just repeat). A C-level handler
    (ctypes) prints the line, removes the half-built corpus and exits. Only where libc and
    SIGBUS exist, only in the main thread, and the previous handler is restored afterwards.
    """
    import signal

    if not hasattr(signal, "SIGBUS") or threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    except (OSError, AttributeError):
        yield
        return

    def on_sigbus(signum):
        path = _MAPPED_NOW[-1] if _MAPPED_NOW else "an input file"
        line = f"proteinperf prepare: error: {path}: truncated while being read; run prepare again"
        os.write(2, (line + "\n").encode(errors="replace"))
        shutil.rmtree(tmp, ignore_errors=True)
        os._exit(2)

    handler = handler_type(on_sigbus)
    previous = libc.signal(signal.SIGBUS, ctypes.cast(handler, ctypes.c_void_p))
    try:
        yield
    finally:
        libc.signal(signal.SIGBUS, previous)


@contextmanager
def _mapped(f, start: int, stop: int, path=None):
    """Bytes [start, stop) of an open file as a read-only memory map: no copy, about half the
    CPU time of read() (the block is parsed in place from the page cache)."""
    lo = start - start % mmap.ALLOCATIONGRANULARITY
    try:
        m = mmap.mmap(f.fileno(), stop - lo, offset=lo, access=mmap.ACCESS_READ)
    except ValueError:  # "mmap length is greater than file size": it shrank since planning
        raise DataError(
            f"{path}: changed while being read (now shorter); run prepare again"
        ) from None
    view = memoryview(m)[start - lo :]
    _MAPPED_NOW.append(str(path or f.name))
    try:
        yield view
    finally:
        _MAPPED_NOW.pop()
        try:
            view.release()
            m.close()
        except BufferError:  # still referenced (by a traceback): garbage collection unmaps it
            pass


def _block_tasks(path: Path, block_size: int):
    """(task, bytes) pairs: (path, start, stop) ranges of a plain file, or decompressed bytes."""
    with open_binary(path) as f:
        try:
            head = f.read(1 << 16)
        except DECOMPRESSION_ERRORS as e:
            raise FastaFormatError(f"{path}: truncated or corrupt compressed file ({e})") from None
        check_fasta_start(head, path)
        start = len(head) - len(head.lstrip())
    if compression_of(path) is None:
        yield from _plain_ranges(path, start, block_size)
    else:
        yield from _decompressed_blocks(path, start, block_size)


def _plain_ranges(path: Path, start: int, block_size: int):
    with open(path, "rb") as f:
        planned = _file_state(f)
        size = planned[0]
        while start < size:
            stop = _next_record_start(f, start + block_size, size)
            yield (str(path), start, stop, planned), stop - start
            start = stop


def _next_record_start(f, pos: int, size: int) -> int:
    """The first offset >= pos that begins a line starting with '>' (or the file size)."""
    if pos >= size:
        return size
    f.seek(pos - 1)
    buf = b""
    want = 1 << 16  # most records are shorter; grown for long ones
    while True:
        chunk = f.read(want)
        want = min(2 * want, 1 << 22)
        if not chunk:
            return size
        buf += chunk
        i = buf.find(b"\n>")
        if i >= 0:
            return pos - 1 + i + 1


def _decompressed_blocks(path: Path, start: int, block_size: int):
    """(block, compressed bytes read for it): the blocks of ``fasta.record_blocks``."""
    with open(path, "rb") as fraw, open_binary(path, raw=fraw) as f:
        f.read(start)  # (read once already: the head)
        seen = 0
        for block in record_blocks(f, block_size, path):
            pos = fraw.tell()
            yield block, pos - seen
            seen = pos


def _duplicate_count(path: Path, budget: int = 256 << 20) -> int:
    """Records whose id hash was seen before, in passes over hash ranges to bound memory.

    Each block's hashes arrive sorted (parse_block sorts them, in parallel), so the stable sort
    here (timsort for uint64) only merges runs: ~4x faster than sorting afresh.
    """
    size = path.stat().st_size
    passes = max(1, -(-size // budget))
    if passes == 1:
        h = np.fromfile(path, np.uint64)
        h.sort(kind="stable")
        return int(np.count_nonzero(h[1:] == h[:-1]))
    dups = 0
    hashes = np.memmap(path, np.uint64, "r") if size else np.zeros(0, np.uint64)
    for p in range(passes):
        lo, hi = (1 << 64) * p // passes, (1 << 64) * (p + 1) // passes
        part = [
            c[(c >= np.uint64(lo)) & ((c < np.uint64(hi)) if hi < 1 << 64 else True)]
            for c in np.array_split(hashes, max(1, size // (64 << 20)))
        ]
        h = np.sort(np.concatenate(part), kind="stable") if part else np.zeros(0, np.uint64)
        dups += int((h[1:] == h[:-1]).sum())
    del hashes
    return dups


def _skips_text(stats: dict) -> str:
    parts = [
        f"{stats.get(k, 0)} {k.replace('_', ' ')}"
        for k in ("empty", "too_short", "too_long", "invalid_skipped")
        if stats.get(k)
    ]
    return ", ".join(parts) or "nothing skipped"


def summary(m: dict) -> str:
    kept = {s: m["splits"][s]["records"] for s in SPLITS}
    residues = sum(m["splits"][s]["residues"] for s in SPLITS)
    text = (
        f"prepared {sum(kept.values()):,} records ({residues:,} residues) in "
        f"{m['seconds']:.1f} s: train {kept['train']:,}, valid {kept['valid']:,}, "
        f"test {kept['test']:,}; skipped: {_skips_text(m['skipped'])}"
    )
    if m["records_with_unk"]:
        text += f"; {m['records_with_unk']:,} records with <unk>"
    clustering = m.get("clustering")
    if clustering:
        if clustering["method"] == "uniref":
            how = "UniRef clusters"
        elif clustering["method"] == "file":
            how = f"{clustering['clusters']:,} clusters from {clustering['file']}"
        else:
            how = (
                f"{clustering['clusters']:,} MMseqs2 clusters at "
                f"{clustering['identity']:.0%} identity"
            )
        text += f"; split by {how}"
    if m["duplicate_ids"]:
        text += f"; warning: {m['duplicate_ids']:,} duplicate ids (all kept)"
    return text


def prepare_dataset(dataset: str, root, *, workers=None, overwrite=False) -> dict:
    """`proteinperf data DATASET`: the shipped sample, or a UniProt release downloaded into
    root/downloads, prepared into root/DATASET."""
    if dataset not in DATASETS:
        raise DataError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    root = Path(root)
    if dataset == "sample":
        from proteinperf.resources import data_dir

        source = data_dir() / "sample_proteins.fasta"
    else:
        from .download import download_dataset

        source = download_dataset(dataset, root / "downloads")
    return prepare(
        [source],
        root / dataset,
        workers=workers,
        command=f"proteinperf data {dataset}",
        overwrite=overwrite,
    )
