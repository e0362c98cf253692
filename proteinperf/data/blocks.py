"""Parsing of one block of FASTA bytes (whole records) into per-split tokens and metadata.

The bytes are scanned once by a compiled kernel (numba_parser.scan_block: records, tokens, header
field positions, invalid characters); everything after that works on per-record arrays, and the
Arrow columns are gathered straight from the block. No per-record Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from proteinperf.constants import SPLITS  # noqa: F401  (re-exported: blocks.SPLITS)

from .alphabet import get_alphabet
from .fasta import HEADER_FIELDS, INT_FIELDS, INVALID_POLICIES, MARKERS, NO_ID, UNIREF_PREFIX

TRAIN, VALID, TEST, DROPPED = 0, 1, 2, 3
DROP, STAR = 254, 253  # lut values: whitespace (removed) and '*' (removed when trailing)
NUM_TOKENS = 33
ID_HASH_SEED = 0x1D

# Split key: UniRefNN_X, sp|X|NAME and tr|X|NAME all hash as X, so one protein (or cluster
# representative) lands in the same split whichever UniProt product it came from. (The kernel
# applies the same rewrites to the bytes; split_keys is the readable reference.)
_KEY_REWRITES = ((UNIREF_PREFIX, ""), (r"^(?:sp|tr)\|([^|]+)\|.*$", r"\1"))


def byte_table() -> np.ndarray:
    lut = get_alphabet().lut.copy()
    for ch in b" \t\n\r\v\f":
        lut[ch] = DROP
    lut[ord("*")] = STAR
    return lut


def marker_table(markers) -> tuple[np.ndarray, np.ndarray]:
    """The "KEY=" byte strings of `markers` as a zero-padded 2-D array and their lengths."""
    raw = [(m + "=").encode() for m in markers]
    keys = np.zeros((len(raw), max(map(len, raw))), np.uint8)
    for i, r in enumerate(raw):
        keys[i, : len(r)] = np.frombuffer(r, np.uint8)
    return keys, np.array([len(r) for r in raw], np.int64)


_LUT = byte_table()
_KEYS, _KEY_LENS = marker_table(MARKERS)


class Scratch:
    """The buffers parse_block scans into, kept from one block to the next (see
    numba_parser.scan_block). The token arrays parse_block returns may be views of `out`: hand a
    Scratch to another block only once the previous block's tokens are written."""

    def __init__(self):
        self.out = self.titles = np.empty(0, np.uint8)
        self.rec = None

    def fit(self, n: int) -> None:
        if self.out.size < n:
            size = n + n // 8  # the next block is usually a little longer or shorter
            self.out, self.titles = np.empty(size, np.uint8), np.empty(size, np.uint8)
        if self.rec is None or self.rec.shape[1] < n // 256 + 16:
            from .numba_parser import NUM_COLS

            self.rec = np.empty((NUM_COLS, n // 256 + 16), np.int64)


def parse_block(
    data,
    *,
    invalid="error",
    min_length=1,
    max_length=None,
    valid_fraction=0.01,
    test_fraction=0.01,
    seed=0,
    clusters=None,
    scratch: Scratch | None = None,
) -> dict:
    """Parse whole FASTA records in `data` (bytes starting with '>') into per-split arrays.

    With `clusters` (a cluster.ClusterMap), a record is split by its cluster representative's
    key, and the representative's id becomes its `cluster_id`. `scratch`: the buffers to scan
    into (new ones if None); the returned train tokens may be a view of them.

    Returns {"error": None, "newlines", "stats", "id_hashes", "tokens", "lengths", "meta"} with
    one token array, int64 length array and Arrow table per split; or, on bad input, {"error":
    (line in block, record id, what is wrong), "newlines"}: with invalid="error" a character
    outside the alphabet, or an integer header field (n=, TaxID=, OX=) that is not a number.
    """
    from . import numba_parser as k  # numba is imported (and the kernels loaded) on first use only

    a = np.frombuffer(data, dtype=np.uint8)
    policy = INVALID_POLICIES.index(invalid)
    scratch = scratch or Scratch()
    scratch.fit(a.size)
    tokens, titles = scratch.out, scratch.titles
    scratch.rec, n, newlines, error_at = k.scan_block(
        a, tokens, titles, scratch.rec, _LUT, _KEYS, _KEY_LENS, policy, get_alphabet().unk_idx
    )
    rec = scratch.rec[:, :n]
    no_id = np.flatnonzero(rec[k.ID_END] == rec[k.H0])
    if no_id.size:
        row = int(no_id[0])
        line = int(np.count_nonzero(a[: max(rec[k.SEQ_S, row] - 1, 0)] == 10)) + 1
        return _error(a, titles, rec, row, line, NO_ID)
    if error_at >= 0:
        byte = int(a[error_at])
        char = chr(byte) if 32 < byte < 127 else f"\\x{byte:02x}"
        line = int(np.count_nonzero(a[:error_at] == 10)) + 1
        what = f"invalid character {char!r} (use --invalid unk or skip-record to accept it)"
        return _error(a, titles, rec, n - 1, line, what)

    lengths = rec[k.TOK_N]
    bad = rec[k.BAD] != 0
    stats = {
        "records": n,
        "empty": 0,
        "too_short": 0,
        "too_long": 0,
        "invalid_skipped": 0,
        "invalid_unk": 0,
    }
    dropped = np.zeros(n, dtype=bool)
    if invalid == "skip-record":
        dropped |= bad
        stats["invalid_skipped"] = int(bad.sum())
    else:
        stats["invalid_unk"] = int(bad.sum())
    stats["empty"] = int(((lengths == 0) & ~dropped).sum())
    dropped |= lengths == 0
    short = (lengths < min_length) & ~dropped
    long = (lengths > max_length) & ~dropped if max_length else np.zeros_like(short)
    stats["too_short"], stats["too_long"] = int(short.sum()), int(long.sum())
    dropped |= short | long

    key_hash = k.hash_ranges(titles, rec[k.KEY_S], rec[k.KEY_E], np.uint64(seed))
    cluster_index = None
    unclustered_id = None
    if clusters is not None:
        cluster_index, key_hash = clusters.lookup(key_hash)
        # A kept record the clustering does not list would be split on its own: counted, and
        # the first one named, so that prepare refuses an incomplete clustering.
        unclustered = np.flatnonzero((cluster_index < 0) & ~dropped)
        stats["unclustered"] = int(unclustered.size)
        if unclustered.size:
            row = int(unclustered[0])
            unclustered_id = bytes(titles[rec[k.H0, row] : rec[k.ID_END, row]]).decode(
                "utf-8", "replace"
            )
    split = split_of_hash(key_hash, valid_fraction, test_fraction)
    split[dropped] = DROPPED
    id_hash = k.hash_ranges(titles, rec[k.H0], rec[k.ID_END], np.uint64(ID_HASH_SEED))
    out = {
        "newlines": newlines,
        "error": None,
        "stats": stats,
        "id_hashes": np.sort(id_hash[~dropped]),  # sorted: runs for prepare's duplicate count
        "unclustered_id": unclustered_id,
        "tokens": [],
        "lengths": [],
        "meta": [],
    }
    ints = {}
    for name in INT_FIELDS:
        ints[name], bad_row = _int_column(titles, rec, name)
        if bad_row is not None:
            key = _marker_of(name)
            i = MARKERS.index(key)
            value = bytes(titles[rec[k.FIELD_S + i, bad_row] : rec[k.FIELD_E + i, bad_row]])
            what = f"{key}={value.decode('utf-8', 'replace')!r} is not a whole number"
            line = int(np.count_nonzero(a[: max(rec[k.SEQ_S, bad_row] - 1, 0)] == 10)) + 1
            return _error(a, titles, rec, bad_row, line, what)
    split_tokens = {}
    for s in (VALID, TEST, TRAIN):  # train last: it is compacted in place, over the others
        rows = np.flatnonzero(split == s)
        if rows.size == n and n:  # the whole block: the token buffer is already in order
            split_tokens[s] = tokens[: int(rec[k.TOK_S, -1] + rec[k.TOK_N, -1])]
            continue
        into = tokens if s == TRAIN else np.empty(int(lengths[rows].sum()), np.uint8)
        split_tokens[s] = k.gather_tokens(tokens, rec[k.TOK_S], lengths, rows, into)
    for s in range(3):
        rows = np.flatnonzero(split == s)
        out["tokens"].append(split_tokens[s])
        out["lengths"].append(lengths[rows].copy())
        meta = _meta(titles, rec, rows, ints)
        if cluster_index is not None:
            import pyarrow.compute as pc

            reps = pc.cast(clusters.representative_ids(cluster_index[rows]), pa.string())
            meta = meta.set_column(meta.schema.get_field_index("cluster_id"), "cluster_id", reps)
        out["meta"].append(meta)
    return out


def _error(a, titles, rec, row, line, what) -> dict:
    from . import numba_parser as k

    rec_id = bytes(titles[rec[k.H0, row] : rec[k.ID_END, row]]).decode("utf-8", "replace")
    return {"error": (line, rec_id, what), "newlines": int(np.count_nonzero(a == 10))}


def _meta(h, rec, rows, ints) -> pa.Table:
    """The metadata table (id, cluster_id, description, header fields, length) of `rows`."""
    from . import numba_parser as k

    uniref_start = np.where(rec[k.UNIREF] != 0, rec[k.H0], -1)
    cols = {
        "id": _strings(h, rec[k.H0], rec[k.ID_END], rows),
        "cluster_id": _strings(h, uniref_start, rec[k.ID_END], rows, nullable=True),
        "description": _strings(h, rec[k.DESC_S], rec[k.DESC_E], rows),
    }
    for i, key in enumerate(MARKERS):
        name = key.lower()
        if name in INT_FIELDS:
            values, present = ints[name]
            cols[name] = _array(pa.int64(), values[rows], present[rows])
        elif name in HEADER_FIELDS:
            cols[name] = _strings(h, rec[k.FIELD_S + i], rec[k.FIELD_E + i], rows, nullable=True)
    lengths = rec[k.TOK_N][rows].astype(np.int32)
    cols["length"] = pa.Array.from_buffers(pa.int32(), lengths.size, [None, pa.py_buffer(lengths)])
    # (from_arrays, not pa.table or pa.array of NumPy: those import pandas, 0.2 CPU-s)
    return pa.Table.from_arrays(list(cols.values()), names=list(cols))


def _marker_of(name: str) -> str:
    return next(m for m in MARKERS if m.lower() == name)


def _int_column(h, rec, name):
    """((values, present), None) of an integer header field over the whole block, or
    (None, row) with the first row whose value is not a number."""
    from . import numba_parser as k

    i = MARKERS.index(_marker_of(name))
    starts, ends = rec[k.FIELD_S + i], rec[k.FIELD_E + i]
    rows = np.arange(starts.size)
    values, ok = k.parse_ints(h, starts, ends, rows)
    if not ok:  # not plain decimal (e.g. 19 digits): Arrow's parser decides
        import pyarrow.compute as pc

        col = _strings(h, starts, ends, rows, nullable=True)
        try:
            values = pc.cast(col, pa.int64(), safe=False).fill_null(0).to_numpy()
        except pa.ArrowInvalid:
            return None, _first_uncastable(col)
    return (values, starts >= 0), None


def _first_uncastable(col: pa.Array) -> int:
    """Index of the first value of `col` (which does not cast as a whole) that Arrow cannot
    cast to int64: bisection over prefixes, O(n) in all."""
    import pyarrow.compute as pc

    lo, hi = 0, len(col)  # col[:lo] casts, col[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(col.slice(0, mid), pa.int64(), safe=False)
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return hi - 1


def _array(typ, values, present) -> pa.Array:
    validity, nulls = _validity(present)
    return pa.Array.from_buffers(typ, values.size, [validity, pa.py_buffer(values)], nulls)


def _validity(present):
    nulls = present.size - int(np.count_nonzero(present))
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(present, bitorder="little")), nulls


def _strings(h, starts, ends, rows, nullable=False) -> pa.Array:
    """A string array of the byte ranges [starts, ends) of `h` at `rows` (start < 0: null)."""
    from . import numba_parser as k

    offsets, data = k.gather_strings(h, starts, ends, rows)
    validity, nulls = _validity(starts[rows] >= 0) if nullable else (None, 0)
    if data.size < 2**31:  # (pyarrow.compute, for a cast, costs 9 MB and 0.03 s to import)
        return pa.StringArray.from_buffers(
            rows.size, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data), validity, nulls
        )
    return pa.LargeStringArray.from_buffers(
        rows.size, pa.py_buffer(offsets), pa.py_buffer(data), validity, nulls
    )


# --- stable hashing and splits -------------------------------------------------------------

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads a polynomial hash over all 64 bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_strings(arr: pa.Array, seed: int = 0) -> np.ndarray:
    """A stable 64-bit hash of each string (same on every machine, process and worker count)."""
    import pyarrow.compute as pc

    arr = pc.cast(arr, pa.large_string()).fill_null("")
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] else np.zeros(0, np.uint8)
    data = data[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    lens = np.diff(offsets)
    pos = np.arange(data.size, dtype=np.int64) - np.repeat(offsets[:-1], lens)
    powers = np.cumprod(np.full(max(int(lens.max(initial=0)), 1), 1099511628211, np.uint64))
    with np.errstate(over="ignore"):
        powers = np.concatenate([[np.uint64(1)], powers[:-1]])
        terms = data.astype(np.uint64) * powers[pos]
        cs = np.concatenate([[np.uint64(0)], np.cumsum(terms, dtype=np.uint64)])
        h = cs[offsets[1:]] - cs[offsets[:-1]]
        h = h + lens.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
    return _mix64(h)


def split_keys(ids: pa.Array) -> pa.Array:
    import pyarrow.compute as pc

    for pattern, rewrite in _KEY_REWRITES:
        ids = pc.replace_substring_regex(ids, pattern, rewrite)
    return ids


def assign_splits(
    keys: pa.Array, valid_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """0 train / 1 valid / 2 test from a uniform number derived from the key's hash."""
    return split_of_hash(hash_strings(keys, seed), valid_fraction, test_fraction)


def split_of_hash(h: np.ndarray, valid_fraction: float, test_fraction: float) -> np.ndarray:
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    split = np.full(u.size, TRAIN, dtype=np.uint8)
    split[u < valid_fraction + test_fraction] = TEST
    split[u < valid_fraction] = VALID
    return split
