"""Compiled single-pass Criteo chunk scanner (numba), the converter's hot path for Criteo.

Why: with pyarrow's CSV reader the CPU per row went to three separate passes over
the data (tokenize into columns, dictionary-encode 26 string columns, then numpy
glue per column), ~4.7 us/row in all.  One loop over the chunk's bytes that
tokenizes, parses the numbers, applies the ln^2 transform and hashes each
categorical field as it goes touches every byte once and allocates nothing per
value.  It emits, per row, the *same* 64-bit keys the pyarrow path
(``recsys.data.raw_formats``) computes -- the polynomial byte hash of
``hash_binary`` for categoricals, ``int_keys(token)`` / ``EMPTY_KEY`` for
numeric fields -- so both paths produce identical ids; the tests check that.

Rows that are malformed get a status code instead of an exception, so Python
only looks at the (rare) bad rows, to report them as ``file:line``.

Number grammar (what counts as numeric): ``[+-]? digits [. digits] [(e|E) [+-]? digits]``
with at least one digit, e.g. ``-2``, ``260.0``, ``1e3``, ``.5``.  Anything else
(``abc``, ``inf``, ``nan``, surrounding spaces) is a non-numeric value.  Values
with at most 19 significant digits and a decimal exponent within +-22 are parsed
exactly (one correctly rounded IEEE operation, equal to ``strtod``); longer ones
are within an ulp.

numba compiles the kernels on first use (a few seconds) and caches the machine
code in ``__pycache__`` (``cache=True``), so later processes load it in ~0.3-1 s (reported as ``jit_seconds`` in meta.json).

Example::

    keys, dense, labels, status, aux, lines, n_lines = scan_criteo(np.frombuffer(data, np.uint8), False)
    indices, distinct, counts, offsets = dict_encode(keys, rows, train)
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from recsys.data.raw_formats import EMPTY_KEY, TAG_NUM, _P, criteo_token, int_keys

# status codes per row
OK = 0
BAD_COLUMNS = 1  # aux = the row's column count
BAD_VALUE = 2  # aux = index of the first bad column (0 = label, 1..13 = I1..I13)

CRITEO_COLUMNS = 40
_NUM_INT = 13
_NUM_CAT = 26

_U_P = np.uint64(_P)
_U_P2 = np.uint64((_P * _P) % (1 << 64))
_U_LEN = np.uint64(0xC2B2AE3D27D4EB4F)
_U_TAG = np.uint64(TAG_NUM)
_U_EMPTY = np.uint64(EMPTY_KEY)
_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_ONE = np.uint64(1)
_POW10 = np.array([10.0**i for i in range(23)], dtype=np.float64)  # exact doubles
_POWS_P = np.cumprod(np.array([1] + [_P] * 63, dtype=np.uint64), dtype=np.uint64)  # P^0..P^63 mod 2^64
_TABLE = 1 << 16  # small non-negative integers (most Criteo values) use precomputed tables


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Key of each small integer's ln^2 token, and its dense log1p, computed by the very numpy
    functions the pyarrow path uses (so both paths agree to the bit) and saving a log per value."""
    v = np.arange(_TABLE, dtype=np.float64)
    return int_keys(criteo_token(v)), np.log1p(v).astype(np.float32)


@njit(nogil=True, cache=True, inline="always")
def _mix64(x: np.uint64) -> np.uint64:
    x = x + _G
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(nogil=True, cache=True, inline="always")
def _hash_bytes(buf: np.ndarray, s: int, e: int) -> np.uint64:
    """``hash_binary`` of buf[s:e]: sum((b_i + 1) * P^i), xor length * C, then mix64."""
    h = np.uint64(0)
    pw = _ONE
    i = s
    while i + 1 < e:  # two bytes per step: halves the dependent multiply chain on pw
        h = h + (np.uint64(buf[i]) + _ONE) * pw + (np.uint64(buf[i + 1]) + _ONE) * (pw * _U_P)
        pw = pw * _U_P2
        i += 2
    if i < e:
        h = h + (np.uint64(buf[i]) + _ONE) * pw
    h = h ^ (np.uint64(e - s) * _U_LEN)
    return _mix64(h)


@njit(nogil=True, cache=True, inline="always")
def _parse_number(buf: np.ndarray, s: int, e: int, pow10: np.ndarray) -> tuple[int, float]:
    """(state, value) of buf[s:e]: state 0 = number, 1 = empty, 2 = not a number."""
    if s == e:
        return 1, 0.0
    i = s
    neg = False
    c = buf[i]
    if c == 45 or c == 43:  # '-' '+'
        neg = c == 45
        i += 1
    mant = 0
    digits = 0  # significant digits accumulated in mant
    exp10 = 0
    seen = False
    while i < e and 48 <= buf[i] <= 57:
        seen = True
        if digits < 19:
            mant = mant * 10 + (buf[i] - 48)
            if mant > 0:
                digits += 1
        else:
            exp10 += 1
        i += 1
    if i < e and buf[i] == 46:  # '.'
        i += 1
        while i < e and 48 <= buf[i] <= 57:
            seen = True
            if digits < 19:
                mant = mant * 10 + (buf[i] - 48)
                exp10 -= 1
                if mant > 0:
                    digits += 1
            i += 1
    if not seen:
        return 2, 0.0
    if i < e and (buf[i] == 101 or buf[i] == 69):  # 'e' 'E'
        i += 1
        eneg = False
        if i < e and (buf[i] == 45 or buf[i] == 43):
            eneg = buf[i] == 45
            i += 1
        if i == e:
            return 2, 0.0
        ev = 0
        while i < e and 48 <= buf[i] <= 57:
            if ev < 100000:
                ev = ev * 10 + (buf[i] - 48)
            i += 1
        exp10 += -ev if eneg else ev
    if i != e:
        return 2, 0.0
    v = float(mant)
    if exp10 != 0 and mant != 0:
        if mant < (1 << 53) and -22 <= exp10 <= 22:
            v = v * pow10[exp10] if exp10 > 0 else v / pow10[-exp10]
        else:
            v = v * 10.0**exp10
    if not math.isfinite(v):
        return 2, 0.0
    return 0, -v if neg else v


@njit(nogil=True, cache=True)
def _scan(buf: np.ndarray, dense_mode: bool, cap: int, pow10: np.ndarray, key_table: np.ndarray,
          log_table: np.ndarray, pows: np.ndarray):  # type: ignore[no-untyped-def]
    num_fields = _NUM_CAT if dense_mode else _NUM_INT + _NUM_CAT
    keys = np.empty((num_fields, cap), dtype=np.uint64)  # [F, rows]: field-major
    dense = np.zeros((cap, _NUM_INT if dense_mode else 0), dtype=np.float32)
    labels = np.zeros(cap, dtype=np.float32)
    status = np.zeros(cap, dtype=np.int8)
    aux = np.zeros(cap, dtype=np.int32)
    lines = np.zeros(cap, dtype=np.int64)
    cat0 = 0 if dense_mode else _NUM_INT  # output field of C1
    n = buf.size
    pos = 0
    line = 0
    r = 0
    newlines = 0
    while pos < n:
        line += 1
        end = pos
        while end < n and buf[end] != 10:
            end += 1
        nxt = end + 1
        if end < n:
            newlines += 1
        if end > pos and buf[end - 1] == 13:
            end -= 1
        if end == pos:  # empty line: skipped, like pyarrow's reader
            pos = nxt
            continue
        lines[r] = line
        st = 0
        bad_col = -1
        col = 0
        s = pos
        while True:
            # field `col` starts at s; each branch leaves i at its end (a tab, or the line end)
            i = s
            if col <= _NUM_INT:
                # fast path: a plain non-negative integer (nearly every Criteo value)
                iv = 0
                while i < end and 48 <= buf[i] <= 57 and i - s < 15:
                    iv = iv * 10 + (buf[i] - 48)
                    i += 1
                if i > s and (i == end or buf[i] == 9):
                    state, v, small = 0, float(iv), iv < _TABLE
                else:
                    while i < end and buf[i] != 9:
                        i += 1
                    state, v = _parse_number(buf, s, i, pow10)
                    small = state == 0 and 0 <= v < _TABLE and v == math.floor(v)
                    iv = int(v) if small else 0
                if col == 0:
                    if state != 0 or v < 0:
                        if bad_col < 0:
                            bad_col = 0
                    else:
                        labels[r] = 1.0 if v > 0 else 0.0
                elif state == 2:
                    if bad_col < 0:
                        bad_col = col
                elif dense_mode:
                    if small:
                        dense[r, col - 1] = log_table[iv]
                    else:  # empty and negatives give log1p(0) = 0
                        dense[r, col - 1] = np.float32(math.log1p(max(v, 0.0)))
                elif state == 1:
                    keys[col - 1, r] = _U_EMPTY
                elif small:
                    keys[col - 1, r] = key_table[iv]
                else:
                    tok = math.floor(math.log(v) ** 2) if v > 2 else math.trunc(v)
                    keys[col - 1, r] = _mix64(np.uint64(np.int64(tok)) ^ _U_TAG)
            elif col < CRITEO_COLUMNS:
                # hash while scanning; independent multiplies by P^k from a table, no chain
                h = np.uint64(0)
                # 8-byte fast path (nearly every Criteo categorical is 8 hex digits): the bytes
                # are checked for tabs without a branch each, then hashed as one sum
                if (i + 8 <= end and (i + 8 == end or buf[i + 8] == 9)
                        and min(min(min(buf[i], buf[i + 1]), min(buf[i + 2], buf[i + 3])),
                                min(min(buf[i + 4], buf[i + 5]), min(buf[i + 6], buf[i + 7]))) > 9):
                    h = ((np.uint64(buf[i]) + _ONE) * pows[0] + (np.uint64(buf[i + 1]) + _ONE) * pows[1]
                         + (np.uint64(buf[i + 2]) + _ONE) * pows[2] + (np.uint64(buf[i + 3]) + _ONE) * pows[3]
                         + (np.uint64(buf[i + 4]) + _ONE) * pows[4] + (np.uint64(buf[i + 5]) + _ONE) * pows[5]
                         + (np.uint64(buf[i + 6]) + _ONE) * pows[6] + (np.uint64(buf[i + 7]) + _ONE) * pows[7])
                    i += 8
                while i < end and buf[i] != 9 and i - s < 64:
                    h = h + (np.uint64(buf[i]) + _ONE) * pows[i - s]
                    i += 1
                if i < end and buf[i] != 9:  # a value longer than 64 bytes
                    while i < end and buf[i] != 9:
                        i += 1
                    keys[cat0 + col - 1 - _NUM_INT, r] = _hash_bytes(buf, s, i)
                else:
                    keys[cat0 + col - 1 - _NUM_INT, r] = _mix64(h ^ (np.uint64(i - s) * _U_LEN))
            else:
                while i < end and buf[i] != 9:
                    i += 1
            col += 1
            if i >= end:
                break
            s = i + 1
        if col != CRITEO_COLUMNS:
            st = BAD_COLUMNS
            aux[r] = col
        elif bad_col >= 0:
            st = BAD_VALUE
            aux[r] = bad_col
        status[r] = st
        r += 1
        pos = nxt
    return keys, dense, labels, status, aux, lines, r, newlines


_TABLES = _tables()


@njit(nogil=True, cache=True)
def _count_newlines(buf: np.ndarray) -> int:
    c = 0
    for i in range(buf.size):
        c += buf[i] == 10
    return c


def scan_criteo(buf: np.ndarray, dense_mode: bool):  # type: ignore[no-untyped-def]
    """Scans a uint8 chunk of Criteo TSV lines.

    Returns ``(keys [F, n] uint64, dense [n, 13 or 0] float32, labels [n] float32,
    status [n] int8, aux [n] int32, lines [n] int64 (1-based), n_newlines)`` over the
    chunk's n non-empty lines; F = 39 (discretize) or 26 (dense).  Rows whose
    status is not OK hold garbage in the other arrays.
    """
    # rows <= newlines + 1; one spare column more keeps keys[:, :r] a non-contiguous view
    # whatever r is, so the kernels downstream see one array layout and compile once
    cap = _count_newlines(buf) + 2
    key_table, log_table = _TABLES
    keys, dense, labels, status, aux, lines, r, newlines = _scan(buf, dense_mode, cap, _POW10, key_table, log_table,
                                                                 _POWS_P)
    return keys[:, :r], dense[:r], labels[:r], status[:r], aux[:r], lines[:r], int(newlines)


@njit(nogil=True, cache=True)
def _dict_encode(keys: np.ndarray, rows: np.ndarray, train: np.ndarray):  # type: ignore[no-untyped-def]
    num_fields = keys.shape[0]
    n = rows.size
    indices = np.empty((num_fields, n), dtype=np.int32)
    # sized for the worst case but never cleared: only the slots of distinct values are
    # touched (zeroing 8 bytes x F x n per chunk, page faults included, cost ~0.1 us/row)
    distinct = np.empty(num_fields * n, dtype=np.uint64)
    counts = np.empty(num_fields * n, dtype=np.int64)
    offsets = np.zeros(num_fields + 1, dtype=np.int64)
    total = 0
    for f in range(num_fields):
        # Slot h is (table[2h], table[2h + 1]) = (key, local index + 1; 0 = free): key and
        # index share a cache line, one miss per probe.  The table starts small and doubles
        # at half load, so a field with few distinct values (the numeric ones) stays in L1.
        size = 1024
        table = np.zeros(2 * size, dtype=np.uint64)
        base = total
        for i in range(n):
            k = keys[f, rows[i]]
            h = np.int64(k & np.uint64(size - 1))  # keys are already mixed: low bits are uniform
            while True:
                j1 = table[2 * h + 1]
                if j1 == 0:
                    m = total - base
                    table[2 * h] = k
                    table[2 * h + 1] = np.uint64(m + 1)
                    distinct[total] = k
                    counts[total] = 0
                    total += 1
                    j = m
                    if 2 * (m + 1) > size:  # grow: reinsert this field's distinct keys
                        size *= 2
                        table = np.zeros(2 * size, dtype=np.uint64)
                        for jj in range(m + 1):
                            kk = distinct[base + jj]
                            hh = np.int64(kk & np.uint64(size - 1))
                            while table[2 * hh + 1] != 0:
                                hh = (hh + 1) & (size - 1)
                            table[2 * hh] = kk
                            table[2 * hh + 1] = np.uint64(jj + 1)
                    break
                if table[2 * h] == k:
                    j = np.int64(j1) - 1
                    break
                h = (h + 1) & (size - 1)
            indices[f, i] = j
            counts[base + j] += train[i]
        offsets[f + 1] = total
    return indices, distinct[:total].copy(), counts[:total].copy(), offsets


def dict_encode(
    keys: np.ndarray, rows: np.ndarray, train: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per field, row keys -> (local index of the row's value, the field's distinct keys).

    ``keys`` is uint64 [F, N]; only the columns ``rows`` (int64 [n]) are encoded, in
    that order; ``train`` (bool [n]) marks the rows whose values are counted.
    Returns ``indices`` int32 [F, n], ``distinct`` uint64
    (all fields' distinct keys, concatenated, in first-seen order) and ``offsets``
    int64 [F + 1] (field f's distinct keys are ``distinct[offsets[f]:offsets[f + 1]]``),
    with ``counts`` int64 (train rows holding each distinct key) between them.
    An open-addressing table per field, grown as needed: what pyarrow's
    dictionary_encode does, minus the strings.
    """
    return _dict_encode(keys, rows.astype(np.int64, copy=False), train.astype(np.uint8, copy=False))


@njit(nogil=True, cache=True)
def _mod_ids(keys: np.ndarray, rows: np.ndarray, n_buckets: np.uint64) -> np.ndarray:
    num_fields = keys.shape[0]
    out = np.empty((rows.size, num_fields), dtype=np.int32)  # [n, F]: row-major, as written
    for i in range(rows.size):
        r = rows[i]
        for f in range(num_fields):
            out[i, f] = np.int32(keys[f, r] % n_buckets)
    return out


def hashed_ids(keys: np.ndarray, rows: np.ndarray, n_buckets: int) -> np.ndarray:
    """``--hash`` ids of the selected rows: int32 [len(rows), F] = keys[:, rows].T % n_buckets."""
    return _mod_ids(keys, rows.astype(np.int64, copy=False), np.uint64(n_buckets))


@njit(nogil=True, cache=True)
def _sum_by_key(keys: np.ndarray, counts: np.ndarray):  # type: ignore[no-untyped-def]
    size = 1024
    slot_key = np.empty(size, dtype=np.uint64)
    slot_idx = np.full(size, -1, dtype=np.int64)
    out_keys = np.empty(keys.size, dtype=np.uint64)
    out_counts = np.zeros(keys.size, dtype=np.int64)
    m = 0
    for i in range(keys.size):
        k = keys[i]
        h = np.int64(k & np.uint64(size - 1))
        while True:
            j = slot_idx[h]
            if j < 0:
                j = m
                slot_idx[h] = j
                slot_key[h] = k
                out_keys[m] = k
                m += 1
                if 2 * m > size:
                    size *= 2
                    slot_key = np.empty(size, dtype=np.uint64)
                    slot_idx = np.full(size, -1, dtype=np.int64)
                    for jj in range(m):
                        kk = out_keys[jj]
                        hh = np.int64(kk & np.uint64(size - 1))
                        while slot_idx[hh] >= 0:
                            hh = (hh + 1) & (size - 1)
                        slot_idx[hh] = jj
                        slot_key[hh] = kk
                break
            if slot_key[h] == k:
                break
            h = (h + 1) & (size - 1)
        out_counts[j] += counts[i]
    return out_keys[:m].copy(), out_counts[:m].copy()


def sum_by_key(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys in first-seen order, summed counts): merges per-chunk value counts.

    Replaces an arrow ``group_by`` that cost ~0.5 us per row of input in the parent, serial.
    Keys must be well mixed (all our keys are: ``mix64``).
    """
    return _sum_by_key(np.ascontiguousarray(keys, dtype=np.uint64), np.ascontiguousarray(counts, dtype=np.int64))


@njit(nogil=True, cache=True)
def _gather_ids(indices: np.ndarray, local_ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    num_fields = indices.shape[0]
    out = np.empty((rows.size, num_fields), dtype=np.int32)
    for i in range(rows.size):
        r = rows[i]
        for f in range(num_fields):
            out[i, f] = local_ids[offsets[f] + indices[f, r]]
    return out


def gather_ids(indices: np.ndarray, local_ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Vocabulary pass 2: int32 [len(rows), F] with out[i, f] = local_ids[offsets[f] + indices[f, rows[i]]].

    ``local_ids`` holds the id of each of the chunk's distinct values (all fields concatenated);
    writes the output row-major in one pass instead of a take per field, a transpose and a
    boolean mask per split.
    """
    return _gather_ids(np.ascontiguousarray(indices, dtype=np.int32), np.ascontiguousarray(local_ids, dtype=np.int32),
                       np.ascontiguousarray(offsets, dtype=np.int64), rows.astype(np.int64, copy=False))


def warm_up() -> float:
    """Compiles (first run) or loads from the on-disk cache every kernel; returns the seconds.

    Call it before forking workers: the children inherit the machine code instead of each
    loading it again (~0.3 s of CPU per kernel set and process, which at 1M rows was
    most of the extra CPU that 2 workers used over 1).
    """
    import time

    t0 = time.perf_counter()
    line = b"1\t" + b"\t".join([b"5"] * 13) + b"\t" + b"\t".join([b"68fd1e64"] * 26) + b"\n"
    for dense_mode in (False, True):
        keys, _, _, status, _, _, _ = scan_criteo(np.frombuffer(line * 2, dtype=np.uint8), dense_mode)
        rows = np.flatnonzero(status == OK)
        indices, distinct, counts, offsets = dict_encode(keys, rows, np.ones(rows.size, dtype=bool))
        hashed_ids(keys, rows, 7)
        sum_by_key(distinct, counts)
        gather_ids(indices, np.zeros(distinct.size, np.int32), offsets, rows)
        tables = build_vocab_tables([(distinct[offsets[f]:offsets[f + 1]], np.ones(1, np.int32))
                                     for f in range(offsets.size - 1)])
        lookup_gather(indices, distinct, offsets, tables, np.zeros(rows.size, np.uint8), 3)
    return time.perf_counter() - t0


@njit(nogil=True, cache=True)
def _build_vocab_tables(keys: np.ndarray, ids: np.ndarray, voff: np.ndarray):  # type: ignore[no-untyped-def]
    num_fields = voff.size - 1
    base = np.zeros(num_fields + 1, dtype=np.int64)
    mask = np.zeros(num_fields, dtype=np.int64)
    for f in range(num_fields):
        size = 16
        while size < 2 * (voff[f + 1] - voff[f]):
            size *= 2
        mask[f] = size - 1
        base[f + 1] = base[f] + 2 * size
    tbl = np.zeros(base[num_fields], dtype=np.uint64)
    for f in range(num_fields):
        b, m = base[f], mask[f]
        for j in range(voff[f], voff[f + 1]):
            k = keys[j]
            h = np.int64(k & np.uint64(m))
            while tbl[b + 2 * h + 1] != 0:
                h = (h + 1) & m
            tbl[b + 2 * h] = k
            tbl[b + 2 * h + 1] = np.uint64(ids[j])
    return tbl, base, mask


def build_vocab_tables(vocab: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-field open-addressing tables (key, id) of the vocabularies ``[(keys, ids >= 1)]``, in one
    flat array: ``(tbl, base [F + 1], mask [F])``, for ``lookup_gather``.

    Why: pass 2 looked every chunk's distinct values up by binary search (``np.searchsorted``,
    ~17 dependent cache misses each, ~0.2 us/row); a table at load <= 0.5 needs ~1 probe.
    """
    keys = np.concatenate([k for k, _ in vocab]) if vocab else np.zeros(0, np.uint64)
    ids = np.concatenate([i for _, i in vocab]) if vocab else np.zeros(0, np.int32)
    voff = np.cumsum([0] + [k.size for k, _ in vocab]).astype(np.int64)
    return _build_vocab_tables(keys.astype(np.uint64, copy=False), ids.astype(np.int64), voff)


@njit(nogil=True, cache=True)
def _lookup_gather(indices: np.ndarray, keys: np.ndarray, offsets: np.ndarray, tbl: np.ndarray, base: np.ndarray,
                   mask: np.ndarray, split: np.ndarray, num_splits: int):  # type: ignore[no-untyped-def]
    num_fields, n = indices.shape
    local = np.zeros(keys.size, dtype=np.int32)  # id of each distinct value of the chunk (0 = OOV)
    if n > 0:
        for f in range(num_fields):
            b, m = base[f], mask[f]
            for j in range(offsets[f], offsets[f + 1]):
                k = keys[j]
                h = np.int64(k & np.uint64(m))
                while True:
                    v = tbl[b + 2 * h + 1]
                    if v == 0:
                        break
                    if tbl[b + 2 * h] == k:
                        local[j] = np.int32(v)
                        break
                    h = (h + 1) & m
    starts = np.zeros(num_splits + 1, dtype=np.int64)
    for i in range(n):
        starts[split[i] + 1] += 1
    for s in range(num_splits):
        starts[s + 1] += starts[s]
    at = starts[:num_splits].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[at[split[i]]] = i
        at[split[i]] += 1
    out = np.empty((n, num_fields), dtype=np.int32)
    for o in range(n):
        i = order[o]
        for f in range(num_fields):
            out[o, f] = local[offsets[f] + indices[f, i]]
    return out, order, starts


def lookup_gather(
    indices: np.ndarray, keys: np.ndarray, offsets: np.ndarray, tables: tuple[np.ndarray, np.ndarray, np.ndarray],
    split: np.ndarray, num_splits: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vocabulary pass 2 in one call: ``(ids int32 [n, F], order int64 [n], starts int64 [S + 1])``.

    ``indices`` int32 [F, n] and ``keys``/``offsets`` are a chunk's dictionary encoding,
    ``tables`` = ``build_vocab_tables(...)``, ``split`` uint8 [n].  Rows come out grouped by
    split (file order within one): split s is ``ids[starts[s]:starts[s + 1]]``, contiguous, ready
    to write; ``order`` maps output rows back to chunk rows (for dense and labels).  Replaces a
    binary search per field, a mask + ``flatnonzero`` + gather per split.
    """
    tbl, base, mask = tables
    return _lookup_gather(np.ascontiguousarray(indices, dtype=np.int32), np.ascontiguousarray(keys, dtype=np.uint64),
                          np.ascontiguousarray(offsets, dtype=np.int64), tbl, base, mask,
                          np.ascontiguousarray(split, dtype=np.uint8), num_splits)
