"""The compiled (Numba) loops of the FASTA block parser, the hot path of `proteinperf prepare`:
one scan over a block of FASTA bytes.

Why hand-written loops here (and nowhere else in the package): prepare has to run near disk
speed on tens of GB, and expressed as whole-array NumPy operations the same work costs a dozen
passes over every byte (newline search, lookup table, header masks, compaction, per-field
gathers), which capped it at ~40 MB/s per core. A compiled single pass touches each input byte
once and writes each token once. `parse_block` in blocks.py turns these raw per-record
positions into arrays and Arrow tables; the semantics are pinned by tests against Biopython and
against `fasta.parse_header`.
"""

from __future__ import annotations

import sys

import numpy as np


def _load_numba_without_scipy_blas() -> None:
    """Import numba's NumPy support with SciPy's BLAS hidden from its probe.

    When numba first loads its NumPy support it imports scipy.linalg to see whether a BLAS is
    there (0.15-0.2 CPU-s, a fifth of `prepare`'s whole budget on a small file). These kernels
    do no linear algebra; the probe's answer only picks the inner loop of numba's
    np.correlate/np.convolve (a plain loop instead of np.dot), and np.dot and np.linalg look
    for BLAS again when they are compiled.
    """
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return  # already paid for (or free)
    name = "scipy.linalg.cython_blas"
    sys.modules[name] = None  # makes `import scipy.linalg.cython_blas` raise ImportError
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        del sys.modules[name]


_load_numba_without_scipy_blas()

from numba import njit  # noqa: E402

DROP, STAR, INVALID = 254, 253, 255  # lut values: whitespace, '*', outside the alphabet
NUM_TOKENS = 33
POLICY_ERROR, POLICY_UNK, POLICY_SKIP = 0, 1, 2

# Rows of the per-record int64 table `rec[column, record]` returned by scan_block (one row per
# column keeps each column contiguous). Header positions index the block; TOK_S/TOK_N index the
# token buffer. Field k of MARKERS has its value at [FIELD_S + k, FIELD_E + k) (start -1 when
# the key is absent).
H0, ID_END, DESC_S, DESC_E, KEY_S, KEY_E, UNIREF, TOK_S, TOK_N, BAD, SEQ_S = range(11)
NUM_MARKERS = 9
FIELD_S = 11
FIELD_E = FIELD_S + NUM_MARKERS
NUM_COLS = FIELD_E + NUM_MARKERS

_NL, _CR, _GT, _SP, _TAB, _BAR, _US, _EQ = 10, 13, 62, 32, 9, 124, 95, 61
_P = np.uint64(1099511628211)
_U1 = np.uint64(1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def _match_key(a, s, e, keys, key_lens):
    """Index of the key whose "KEY=" is exactly a[s:e] + "=", or -1."""
    n = e - s + 1
    for k in range(keys.shape[0]):
        if key_lens[k] != n:
            continue
        j = 0
        while j < n - 1 and a[s + j] == keys[k, j]:
            j += 1
        if j == n - 1:
            return k
    return -1


@njit(cache=True, nogil=True)
def _header(h, r, rec, h0, h1, keys, key_lens, longest):
    """Fill the header columns of record r, whose title (after '>') is h[h0:h1]. The id is
    the first word: blanks before it are skipped, a space or tab ends it (empty: id_end == h0)."""
    while h0 < h1 and (h[h0] == _SP or h[h0] == _TAB):
        h0 += 1
    id_end = h0
    while id_end < h1 and h[id_end] != _SP and h[id_end] != _TAB:
        id_end += 1
    for k in range(NUM_MARKERS):
        rec[FIELD_S + k, r] = -1
        rec[FIELD_E + k, r] = -1
    # A field starts at " KEY=" and runs to the next such marker (of any key) or the line end;
    # the first occurrence of a key is kept, later ones only end the field before them.
    # Candidates are found at each '=' (a header has a few) rather than at each space (a
    # description has many): the word between the space before an '=' and the '=' is compared
    # with the keys of its length (a word longer than every key is none of them).
    first_marker = h1
    open_field = -1
    q = id_end
    while True:
        q = _find(h, q, h1, _EQ)
        if q >= h1:
            break
        p = q - 1
        lowest = max(id_end, q - longest)  # longest: of the "KEY=" strings
        while p > lowest and h[p] != _SP:
            p -= 1
        q += 1
        if h[p] != _SP and p != id_end:  # (the blank that ends the id may be a tab)
            continue
        k = _match_key(h, p + 1, q - 1, keys, key_lens)
        if k < 0:
            continue
        if first_marker == h1:
            first_marker = p
        if open_field >= 0:
            rec[FIELD_E + open_field, r] = p
            open_field = -1
        if rec[FIELD_S + k, r] < 0:
            rec[FIELD_S + k, r] = p + 1 + key_lens[k]
            open_field = k
    if open_field >= 0:
        rec[FIELD_E + open_field, r] = h1
    rec[H0, r] = h0
    rec[ID_END, r] = id_end
    rec[DESC_S, r] = min(id_end + 1, first_marker)
    rec[DESC_E, r] = first_marker

    # Split key: "UniRefNN_X" -> X (and the record has a cluster id), then "sp|X|..." or
    # "tr|X|..." -> X; the same rewrites as the regexes ^UniRef\d+_ and ^(?:sp|tr)\|([^|]+)\|.*$
    ks, ke = h0, id_end
    uniref = 0
    if (
        ke - ks > 7
        and h[ks] == 85  # U
        and h[ks + 1] == 110  # n
        and h[ks + 2] == 105  # i
        and h[ks + 3] == 82  # R
        and h[ks + 4] == 101  # e
        and h[ks + 5] == 102  # f
    ):
        q = ks + 6
        while q < ke and 48 <= h[q] <= 57:
            q += 1
        if q > ks + 6 and q < ke and h[q] == _US:
            uniref = 1
            ks = q + 1
    if (
        ke - ks > 3
        and ((h[ks] == 115 and h[ks + 1] == 112) or (h[ks] == 116 and h[ks + 1] == 114))
        and h[ks + 2] == _BAR
    ):
        q = ks + 3
        while q < ke and h[q] != _BAR:
            q += 1
        if q < ke and q > ks + 3:
            ks, ke = ks + 3, q
    rec[KEY_S, r] = ks
    rec[KEY_E, r] = ke
    rec[UNIREF, r] = uniref


@njit(cache=True, nogil=True)
def scan_block(a, out, titles, rec, lut, keys, key_lens, policy, unk):
    """One pass over whole FASTA records in `a` (starting at a header).

    `out` and `titles` (uint8, at least a.size each) receive the tokens (residues of all
    records back to back) and the title lines (after '>', without line ends) back to back;
    `rec` (int64, NUM_COLS rows) the per-record table, grown into a new array when it has too
    few columns. The caller passes buffers it reuses from block to block: fresh ones would be
    page-faulted in anew for every block, which cost as much system time as the scan itself.

    Returns (rec, records, newlines, error_raw): the table (first `records` columns valid;
    header positions index `titles`), the number of newlines, and the block offset of the
    first invalid byte when policy is POLICY_ERROR (-1 if none; then scanning stopped after
    that record).

    Titles are copied while they are in cache so that the later per-field gathers stream
    through a compact buffer instead of missing the cache once per record and field.
    """
    n = a.size
    r = 0
    o = 0
    t_end = 0
    i = 0
    newlines = 0
    width = 60
    longest = key_lens.max()
    while i < n:
        if r == rec.shape[1]:
            grown = np.empty((NUM_COLS, 2 * r), np.int64)
            grown[:, :r] = rec
            rec = grown
        t0 = t_end
        line_end = _find(a, i + 1, n, _NL)  # (i + 1: after the '>')
        t_end = _copy(a, i + 1, line_end, titles, t_end)
        i = line_end
        if t_end > t0 and titles[t_end - 1] == _CR:
            t_end -= 1
        _header(titles, r, rec, t0, t_end, keys, key_lens, longest)
        if i < n:
            newlines += 1
        i += 1
        seq_start = min(i, n)
        ts = o
        stop, o, lines, width, clean = _residues_fast(a, lut, out, seq_start, o, width)
        if clean:
            special = False
            newlines += lines
        else:  # whitespace inside lines, '*', invalid bytes or a width guess gone wrong
            stop, o, lines, special = _residues(a, lut, out, seq_start, ts)
            newlines += lines
        i = stop
        rec[SEQ_S, r] = seq_start
        rec[BAD, r] = 0
        if special:
            first_bad = -1
            for q in range(ts, o):
                if out[q] >= NUM_TOKENS:
                    if first_bad < 0:
                        first_bad = q
                    if policy == POLICY_UNK:
                        out[q] = unk
            if first_bad >= 0:
                rec[BAD, r] = 1
                if policy == POLICY_ERROR:
                    rec[TOK_S, r] = ts
                    rec[TOK_N, r] = o - ts
                    error_at = _raw_offset(a, lut, seq_start, first_bad - ts)
                    return rec, r + 1, newlines, error_at
        rec[TOK_S, r] = ts
        rec[TOK_N, r] = o - ts
        r += 1
    return rec, r, newlines, -1


@njit(cache=True, nogil=True)
def _residues_fast(a, lut, out, i, o, width):
    """The common case, at about half the cost of byte by byte: guess that each residue line is
    as wide as the last one (one comparison finds its newline), then map the line minus a CR
    through the table into the output (no data-dependent branch or output position). Returns
    (next record start, token end, newlines, width, clean); not clean if a byte was not a token
    (whitespace, '*', invalid, or a newline inside a wrong guess): the caller redoes the record.

    Positions are unsigned here: numba wraps negative signed indices around (a compare and an
    add per access), which made this loop 2.5x slower. (Keep every operand unsigned: numba
    types int64 + uint64 as float64.)
    """
    n = _u(a.size)
    i, o, width = _u(i), _u(o), _u(width)
    lines = 0
    seen = 0
    while i < n and a[i] != _GT:
        j = i + width
        if j >= n or a[j] != _NL:
            j = i
            while j < n and a[j] != _NL:
                j += _U1
            width = j - i
        e = j
        if e > i and a[e - _U1] == _CR:
            e -= _U1
        q = i
        while q < e:
            t = lut[a[q]]
            out[o] = t
            seen |= t
            q += _U1
            o += _U1
        if j < n:
            lines += 1
        i = j + _U1
    stop = min(i, n)
    return _i(stop), _i(o), lines, _i(width), (seen & 0xC0) == 0  # tokens < 64; not DROP etc.


@njit(cache=True, nogil=True)
def _find(a, s, e, byte):
    """The first position in [s, e) holding `byte`, or e (unsigned positions: see above)."""
    i, end = _u(s), _u(e)
    while i < end and a[i] != byte:
        i += _U1
    return _i(i)


@njit(cache=True, nogil=True)
def _copy(src, s, e, dst, d):
    """dst[d:d + e - s] = src[s:e]; returns d + e - s."""
    i, end, o = _u(s), _u(e), _u(d)
    while i < end:
        dst[o] = src[i]
        i += _U1
        o += _U1
    return _i(o)


@njit(cache=True, nogil=True)
def _u(x):
    return np.uint64(x)


@njit(cache=True, nogil=True)
def _i(x):
    return np.int64(x)


@njit(cache=True, nogil=True)
def _residues(a, lut, out, i, o):
    """The general case, byte by byte: whitespace dropped, '*' and invalid bytes kept as STAR
    and INVALID (then a trailing run of '*' removed). Returns (next record start, token end,
    newlines, whether a STAR or INVALID was kept)."""
    n = a.size
    ts = o
    lines = 0
    special = False
    while i < n and a[i] != _GT:  # (a '>' right after the header line: no sequence)
        c = a[i]
        t = lut[c]
        if t < NUM_TOKENS:
            out[o] = t
            o += 1
        elif t == DROP:
            if c == _NL:
                lines += 1
                if i + 1 < n and a[i + 1] == _GT:
                    i += 1
                    break
        else:
            out[o] = t
            o += 1
            special = True
        i += 1
    if special:
        while o > ts and out[o - 1] == STAR:  # a trailing '*' ends a record; drop it
            o -= 1
    return min(i, n), o, lines, special


@njit(cache=True, nogil=True)
def _raw_offset(a, lut, start, k):
    """Block offset of the k-th kept (non-whitespace) byte at or after `start`."""
    seen = 0
    for p in range(start, a.size):
        if lut[a[p]] != DROP:
            if seen == k:
                return p
            seen += 1
    return -1


@njit(cache=True, nogil=True)
def _mix64(x):
    """splitmix64 finaliser: spreads a polynomial hash over all 64 bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, nogil=True)
def hash_ranges(a, starts, ends, seed):
    """blocks.hash_strings of the byte ranges [starts[i], ends[i]) of `a`, without copying them."""
    h = np.empty(starts.size, np.uint64)
    for i in range(starts.size):
        acc = np.uint64(0)
        power = np.uint64(1)
        p, end = _u(starts[i]), _u(ends[i])
        while p < end:
            acc += np.uint64(a[p]) * power
            power *= _P
            p += _U1
        acc += np.uint64(ends[i] - starts[i]) * _GOLDEN + seed
        h[i] = _mix64(acc)
    return h


@njit(cache=True, nogil=True)
def gather_strings(a, starts, ends, rows):
    """Arrow string buffers (int64 offsets, bytes) of the ranges of `rows` (start < 0: empty)."""
    offsets = np.empty(rows.size + 1, np.int64)
    offsets[0] = 0
    total = 0
    for k in range(rows.size):
        r = rows[k]
        if starts[r] >= 0 and ends[r] > starts[r]:
            total += ends[r] - starts[r]
        offsets[k + 1] = total
    data = np.empty(total, np.uint8)
    for k in range(rows.size):
        s = starts[rows[k]]
        d = offsets[k]
        _copy(a, s, s + offsets[k + 1] - d, data, d)
    return offsets, data


@njit(cache=True, nogil=True)
def parse_ints(a, starts, ends, rows):
    """Decimal values of the ranges of `rows`; ok is False if a present one is not -?[0-9]{1,18}."""
    values = np.zeros(rows.size, np.int64)
    ok = True
    for k in range(rows.size):
        r = rows[k]
        s, e = starts[r], ends[r]
        if s < 0:
            continue
        neg = s < e and a[s] == 45  # '-'
        if neg:
            s += 1
        if e - s < 1 or e - s > 18:
            ok = False
            continue
        v = 0
        for p in range(s, e):
            d = np.int64(a[p]) - 48
            if d < 0 or d > 9:
                ok = False
            v = v * 10 + d
        values[k] = -v if neg else v
    return values, ok


@njit(cache=True, nogil=True)
def gather_tokens(tokens, starts, lengths, rows, out):
    """The token runs of `rows`, concatenated into `out` (which may be `tokens` itself: runs
    only move towards the start, so copying in order never overwrites an unread run)."""
    o = 0
    for k in range(rows.size):
        s = starts[rows[k]]
        o = _copy(tokens, s, s + lengths[rows[k]], out, o)
    return out[:o]
