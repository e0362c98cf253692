"""Vectorised parsing of one block of FASTA bytes (whole records) into tokens and metadata.

The block is handled with a few whole-array NumPy passes (newline scan, byte lookup table,
header masking, compaction); headers go through one RE2 regex in pyarrow. No per-record Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .alphabet import get_alphabet
from .fasta import INT_FIELDS, MARKERS, UNIREF_PREFIX

TRAIN, VALID, TEST, DROPPED = 0, 1, 2, 3
SPLITS = ("train", "valid", "test")
DROP, STAR = 254, 253  # lut values: whitespace (removed) and '*' (removed when trailing)
NUM_TOKENS = 33

# Split key: UniRefNN_X, sp|X|NAME and tr|X|NAME all hash as X, so one protein (or cluster
# representative) lands in the same split whichever UniProt product it came from.
_KEY_REWRITES = ((UNIREF_PREFIX, ""), (r"^(?:sp|tr)\|([^|]+)\|.*$", r"\1"))


def byte_table() -> np.ndarray:
    lut = get_alphabet().lut.copy()
    for ch in b" \t\n\r\v\f":
        lut[ch] = DROP
    lut[ord("*")] = STAR
    return lut


_LUT = byte_table()


def parse_block(
    data,
    *,
    invalid="error",
    min_length=1,
    max_length=None,
    valid_fraction=0.01,
    test_fraction=0.01,
    seed=0,
) -> dict:
    """Parse whole FASTA records in `data` (bytes starting with '>') into per-split arrays."""
    a = np.frombuffer(data, dtype=np.uint8)
    n = a.size
    nl = np.flatnonzero(a == 10)
    after = nl + 1
    after = after[after < n]
    hs = np.concatenate([[0], after[a[after] == 62]])  # header starts ('>')
    k = np.searchsorted(nl, hs)
    he = np.append(nl, n)[k]  # header ends (its newline)
    seq_start = np.minimum(he + 1, n)
    seq_end = np.append(hs[1:], n)

    in_header = np.repeat(
        np.tile(np.array([True, False]), hs.size),
        np.stack([seq_start - hs, seq_end - seq_start], 1).ravel(),
    )
    tok = _LUT[a]
    np.putmask(tok, in_header, DROP)
    kept = tok != DROP
    tokens = tok[kept]
    del tok

    lengths = (seq_end - seq_start) - (
        np.searchsorted(nl, seq_end) - np.searchsorted(nl, seq_start)
    )
    if lengths.sum() != tokens.size:  # CR, tabs or spaces inside sequences: count them exactly
        other = np.flatnonzero(~kept & ~in_header & (a != 10))
        lengths -= np.searchsorted(other, seq_end) - np.searchsorted(other, seq_start)
    del in_header

    meta = _headers(a, hs, he)
    stats = {
        "records": int(hs.size),
        "empty": 0,
        "too_short": 0,
        "too_long": 0,
        "invalid_skipped": 0,
        "invalid_unk": 0,
    }
    dropped = np.zeros(hs.size, dtype=bool)
    error = None
    if tokens.size and tokens.max() > NUM_TOKENS:
        tokens, lengths, bad, error = _specials(tokens, lengths, invalid)
        if error is not None:
            rec, pos, char = error
            raw = int(np.flatnonzero(kept)[pos])
            line = int(np.searchsorted(nl, raw, side="right")) + 1
            char = chr(a[raw]) if 32 < a[raw] < 127 else f"\\x{a[raw]:02x}"
            return {"error": (line, meta.column("id")[rec].as_py(), char), "newlines": int(nl.size)}
        if invalid == "skip-record":
            dropped |= bad
            stats["invalid_skipped"] = int(bad.sum())
        else:
            stats["invalid_unk"] = int(bad.sum())
    del kept

    stats["empty"] = int(((lengths == 0) & ~dropped).sum())
    dropped |= lengths == 0
    short = (lengths < min_length) & ~dropped
    long = (lengths > max_length) & ~dropped if max_length else np.zeros_like(short)
    stats["too_short"], stats["too_long"] = int(short.sum()), int(long.sum())
    dropped |= short | long

    ids = meta.column("id").combine_chunks()
    split = assign_splits(split_keys(ids), valid_fraction, test_fraction, seed)
    split[dropped] = DROPPED
    meta = meta.append_column("length", pa.array(lengths.astype(np.int32)))
    out = {
        "newlines": int(nl.size),
        "error": None,
        "stats": stats,
        "id_hashes": hash_strings(ids, seed=0x1D)[~dropped],
    }
    out.update(_by_split(tokens, lengths, split, meta))
    return out


def _headers(a: np.ndarray, hs: np.ndarray, he: np.ndarray) -> pa.Table:
    """Header fields of every record, found with array ops on the block (markers after spaces)."""
    h0 = hs + 1
    h1 = he - ((he > h0) & (a[np.maximum(he - 1, 0)] == 13))  # drop a CR before the newline
    sp = np.flatnonzero(a == 32)
    rec = np.searchsorted(hs, sp, side="right") - 1
    inside = sp < h1[rec]
    sp, rec = sp[inside], rec[inside]
    first_sp = np.append(sp, a.size)[np.searchsorted(sp, h0)]
    id_end = np.minimum(first_sp, h1)

    # 6 bytes after each space packed into an integer, compared with each "KEY=" marker
    code = np.zeros(sp.size, np.uint64)
    for j in range(6):
        code |= a[np.minimum(sp + 1 + j, a.size - 1)].astype(np.uint64) << np.uint64(8 * j)
    kind = np.full(sp.size, -1, np.int8)
    for k, key in enumerate(MARKERS):
        raw = (key + "=").encode()
        want = int.from_bytes(raw, "little")
        mask = (1 << (8 * len(raw))) - 1
        kind[(code & np.uint64(mask)) == np.uint64(want)] = k
    hit = kind >= 0
    hpos, hkind, hrec = sp[hit], kind[hit], rec[hit]
    hend = np.append(hpos[1:], 0)
    last = np.append(hrec[1:] != hrec[:-1], True)[: hrec.size]
    hend[last] = h1[hrec[last]]
    first_marker = h1.copy()
    np.minimum.at(first_marker, hrec, hpos)

    cols = {
        "id": _strings(a, h0, id_end),
        "cluster_id": None,
        "description": _strings(a, np.minimum(id_end + 1, first_marker), first_marker),
    }
    for k, key in enumerate(MARKERS):
        sel = hkind == k
        r, p, e = hrec[sel], hpos[sel], hend[sel]
        r, keep = np.unique(r[::-1], return_index=True)  # first occurrence of the key
        keep = sel.sum() - 1 - keep
        starts = np.zeros(hs.size, np.int64)
        ends = np.zeros(hs.size, np.int64)
        starts[r], ends[r] = p[keep] + len(key) + 2, e[keep]
        present = np.zeros(hs.size, bool)
        present[r] = True
        col = _strings(a, starts, ends, present)
        name = key.lower()
        cols[name] = pc.cast(col, pa.int64(), safe=False) if name in INT_FIELDS else col
    for name in ("pe", "sv"):
        cols.pop(name, None)
    ids = cols["id"]
    cols["cluster_id"] = pc.if_else(
        pc.starts_with(ids, "UniRef"),
        pc.if_else(pc.match_substring_regex(ids, UNIREF_PREFIX), ids, None),
        None,
    )
    return pa.table(cols)


def _strings(a, starts, ends, present=None) -> pa.Array:
    """A string array of the byte ranges [starts, ends) of `a` (null where not present)."""
    lens = np.maximum(ends - starts, 0)
    if present is not None:
        lens = np.where(present, lens, 0)
    offsets = np.zeros(lens.size + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    idx = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1])
    data = a[idx]
    validity = None if present is None else pa.array(present).buffers()[1]
    arr = pa.LargeStringArray.from_buffers(
        lens.size,
        pa.py_buffer(offsets),
        pa.py_buffer(data),
        validity,
        -1 if present is not None else 0,
    )
    return pc.cast(arr, pa.string())


def _specials(tokens, lengths, invalid):
    """Strip trailing '*', then apply the invalid-character policy. Rare path."""
    ends = np.cumsum(lengths)
    pos = np.flatnonzero(tokens > NUM_TOKENS)
    rec = np.searchsorted(ends, pos, side="right")
    strip = np.zeros(pos.size, dtype=bool)
    for j in range(pos.size - 1, -1, -1):  # a star is trailing if only stars follow it
        if tokens[pos[j]] == STAR:
            nxt_ok = pos[j] == ends[rec[j]] - 1 or (
                j + 1 < pos.size and strip[j + 1] and pos[j + 1] == pos[j] + 1
            )
            strip[j] = nxt_ok
    bad_pos = pos[~strip]
    bad = np.zeros(lengths.size, dtype=bool)
    bad[rec[~strip]] = True
    if bad_pos.size and invalid == "error":
        p = int(bad_pos[0])
        char = "*" if tokens[p] == STAR else None
        return tokens, lengths, bad, (int(rec[~strip][0]), p, char)
    tokens[bad_pos] = get_alphabet().unk_idx
    lengths = lengths - np.bincount(rec[strip], minlength=lengths.size)
    return np.delete(tokens, pos[strip]), lengths, bad, None


def _by_split(tokens, lengths, split, meta) -> dict:
    ends = np.cumsum(lengths)
    starts = ends - lengths
    change = np.flatnonzero(split[1:] != split[:-1]) + 1
    run_lo = np.concatenate([[0], change])
    run_hi = np.append(change, split.size)
    pieces = [[], [], []]
    for lo, hi in zip(run_lo.tolist(), run_hi.tolist()):
        s = split[lo]
        if s != DROPPED:
            pieces[s].append(tokens[starts[lo] : ends[hi - 1]])
    out = {"tokens": [], "lengths": [], "meta": []}
    for s in range(3):
        toks = np.concatenate(pieces[s]) if pieces[s] else np.zeros(0, np.uint8)
        out["tokens"].append(toks)
        out["lengths"].append(lengths[split == s].astype(np.int64))
        out["meta"].append(meta.filter(pa.array(split == s)))
    return out


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
    for pattern, rewrite in _KEY_REWRITES:
        ids = pc.replace_substring_regex(ids, pattern, rewrite)
    return ids


def assign_splits(
    keys: pa.Array, valid_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """0 train / 1 valid / 2 test from a uniform number derived from the key's hash."""
    u = (hash_strings(keys, seed) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    split = np.full(u.size, TRAIN, dtype=np.uint8)
    split[u < valid_fraction + test_fraction] = TEST
    split[u < valid_fraction] = VALID
    return split
