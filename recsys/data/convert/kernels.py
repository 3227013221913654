"""Compiled single-pass Criteo chunk scanner and the vocabulary kernels: the converter's hot path.

Why: with pyarrow's CSV reader the CPU per row went to three separate passes over
the data (tokenize into columns, dictionary-encode 26 string columns, then numpy
glue per column), ~4.7 us/row in all.  One loop over the chunk's bytes that
tokenizes, parses the numbers, applies the ln^2 transform and hashes each
categorical field as it goes touches every byte once and allocates nothing per
value.  It emits, per row, the *same* 64-bit keys the pyarrow path
(``recsys.data.convert.formats``) computes -- the polynomial byte hash of
``hash_binary`` for categoricals, ``int_keys(token)`` / ``EMPTY_KEY`` for
numeric fields -- so both paths produce identical ids; the tests check that.

The loops are C (``criteo_kernels.c``, built on first use by ``recsys.data.native``);
this module allocates every array with numpy and passes pointers, so memory is owned
and freed by Python.  ctypes releases the GIL for each call.

Rows that are malformed get a status code instead of an exception, so Python
only looks at the (rare) bad rows, to report them as ``file:line``.

Number grammar (what counts as numeric): ``[+-]? digits [. digits] [(e|E) [+-]? digits]``
with at least one digit, e.g. ``-2``, ``260.0``, ``1e3``, ``.5``; ASCII spaces around
it are ignored, as pyarrow's CSV reader ignores them.  Anything else (``abc``, ``inf``,
``nan``, ``1_000``, a field of only spaces) is a non-numeric value.  Values
with at most 19 significant digits and a decimal exponent within +-22 are parsed
exactly (one correctly rounded IEEE operation, equal to ``strtod``); longer ones
are within an ulp.

Example::

    keys, dense, labels, status, aux, lines, n_lines = scan_criteo(np.frombuffer(data, np.uint8), False)
    indices, distinct, counts, offsets = dict_encode(keys, rows, train)
"""
from __future__ import annotations

import ctypes
import time

import numpy as np

from recsys.data import native
from recsys.data.criteo_layout import NUM_DENSE, NUM_SPARSE
from recsys.data.convert.formats import EMPTY_KEY, TAG_NUM, _P, criteo_token, int_keys

# status codes per row
OK = 0
BAD_COLUMNS = 1  # aux = the row's column count
BAD_VALUE = 2  # aux = index of the first bad column (0 = label, 1..13 = I1..I13)
BAD_CR = 3  # a carriage return inside the line (pyarrow's reader ends the line there); aux = 0

_NUM_INT = NUM_DENSE
_NUM_CAT = NUM_SPARSE
CRITEO_COLUMNS = 1 + _NUM_INT + _NUM_CAT  # label, I1..I13, C1..C26: criteo_kernels.c's CRITEO_COLUMNS (40)
_TABLE = 1 << 16  # small non-negative integers (most Criteo values) use precomputed tables
_POWS_P = np.cumprod(np.array([1] + [_P] * 63, dtype=np.uint64), dtype=np.uint64)  # P^0..P^63 mod 2^64


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Key of each small integer's ln^2 token, and its dense log1p, computed by the very numpy
    functions the pyarrow path uses (so both paths agree to the bit) and saving a log per value."""
    v = np.arange(_TABLE, dtype=np.float64)
    return int_keys(criteo_token(v)), np.log1p(v).astype(np.float32)


_KEY_TABLE, _LOG_TABLE = _tables()
_LIB: ctypes.CDLL | None = None


def load() -> float:
    """Builds (first run of this source version, ~1 s) and loads the C kernels; returns the seconds.

    Raises ``native.NativeUnavailable`` when there is no C compiler.  Forked pool workers
    inherit the loaded library.
    """
    global _LIB
    t0 = time.perf_counter()
    if _LIB is None:
        _LIB = native.load()
    return time.perf_counter() - t0


def _lib() -> ctypes.CDLL:
    if _LIB is None:
        load()
    assert _LIB is not None
    return _LIB


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


ScanResult = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]


def scan_criteo(buf: np.ndarray, dense_mode: bool) -> ScanResult:
    """Scans a uint8 chunk of Criteo TSV lines.

    Returns ``(keys [F, n] uint64, dense [n, 13 or 0] float32, labels [n] float32,
    status [n] int8, aux [n] int32, lines [n] int64 (1-based), n_newlines)`` over the
    chunk's n non-empty lines; F = 39 (discretize) or 26 (dense).  Rows whose
    status is not OK hold garbage in the other arrays.
    """
    buf = np.ascontiguousarray(buf, dtype=np.uint8)
    # The exact row bound costs a newline count (memchr, ~0.02 us/row), but a cap guessed from the
    # size (a valid row has >= 40 bytes) made the arrays several times larger than needed: beyond
    # glibc's 64 MB per-thread heaps they are mmap'ed fresh for every chunk, and the page
    # faults cost more system CPU (+0.4 s per 1M rows with 2 threads) than the count saves.
    cap = int(_lib().rc_count_newlines(_ptr(buf), buf.size)) + 1  # rows <= newlines + 1
    num_fields = _NUM_CAT if dense_mode else _NUM_INT + _NUM_CAT
    keys = np.empty((num_fields, cap), dtype=np.uint64)  # [F, rows]: field-major
    dense = np.empty((cap, _NUM_INT if dense_mode else 0), dtype=np.float32)
    labels = np.empty(cap, dtype=np.float32)
    status = np.empty(cap, dtype=np.int8)
    aux = np.empty(cap, dtype=np.int32)
    lines = np.empty(cap, dtype=np.int64)
    newlines = ctypes.c_int64(0)
    r = int(_lib().rc_scan_criteo(_ptr(buf), buf.size, int(dense_mode), cap, _ptr(_POWS_P), _ptr(_KEY_TABLE),
                                  _ptr(_LOG_TABLE), int(TAG_NUM), int(EMPTY_KEY), _ptr(keys), _ptr(dense),
                                  _ptr(labels), _ptr(status), _ptr(aux), _ptr(lines), ctypes.byref(newlines)))
    if r < 0:  # the kernel's guard against writing past cap; unreachable with cap = newlines + 1
        raise RuntimeError("scan_criteo: more rows than newlines + 1")
    return keys[:, :r], dense[:r], labels[:r], status[:r], aux[:r], lines[:r], int(newlines.value)


def _field_rows(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """(array whose rows are the fields, stride between fields in elements): accepts the
    ``keys[:, :r]`` views ``scan_criteo`` returns without copying them."""
    if (keys.dtype != np.uint64 or keys.ndim != 2 or keys.strides[1] != 8
            or keys.strides[0] % 8 or keys.strides[0] < 0):
        keys = np.ascontiguousarray(keys, dtype=np.uint64).reshape(keys.shape[0], -1)
    return keys, keys.strides[0] // 8 if keys.shape[0] > 1 else keys.shape[1]


def _check(rc: int) -> None:
    if rc < 0:
        raise MemoryError("criteo kernels: out of memory")


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
    keys, stride = _field_rows(keys)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    train = np.ascontiguousarray(train, dtype=np.uint8)
    num_fields, n = keys.shape[0], rows.size
    if n and (rows.min() < 0 or rows.max() >= keys.shape[1]):
        raise IndexError("dict_encode: a row index is out of range")
    indices = np.empty((num_fields, n), dtype=np.int32)
    # sized for the worst case; only the slots of distinct values are ever touched
    distinct = np.empty(num_fields * n, dtype=np.uint64)
    counts = np.empty(num_fields * n, dtype=np.int64)
    offsets = np.empty(num_fields + 1, dtype=np.int64)
    _check(_lib().rc_dict_encode(_ptr(keys), stride, num_fields, _ptr(rows), n, _ptr(train), _ptr(indices),
                                 _ptr(distinct), _ptr(counts), _ptr(offsets)))
    total = int(offsets[-1])
    return indices, distinct[:total].copy(), counts[:total].copy(), offsets


def hashed_ids(keys: np.ndarray, rows: np.ndarray, n_buckets: int) -> np.ndarray:
    """``--hash`` ids of the selected rows: int32 [len(rows), F] = keys[:, rows].T % n_buckets."""
    keys, stride = _field_rows(keys)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= keys.shape[1]):
        raise IndexError("hashed_ids: a row index is out of range")
    out = np.empty((rows.size, keys.shape[0]), dtype=np.int32)  # [n, F]: row-major, as written
    _lib().rc_mod_ids(_ptr(keys), stride, keys.shape[0], _ptr(rows), rows.size, n_buckets, _ptr(out))
    return out


def sum_by_key(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys in first-seen order, summed counts): merges per-chunk value counts.

    Replaces an arrow ``group_by`` that cost ~0.5 us per row of input in the parent, serial.
    Keys must be well mixed (all our keys are: ``mix64``).
    """
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    out_keys = np.empty(keys.size, dtype=np.uint64)
    out_counts = np.empty(keys.size, dtype=np.int64)
    m = int(_lib().rc_sum_by_key(_ptr(keys), _ptr(counts), keys.size, _ptr(out_keys), _ptr(out_counts)))
    _check(m)
    return out_keys[:m].copy(), out_counts[:m].copy()


def build_vocab_tables(vocab: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-field open-addressing tables (key, id) of the vocabularies ``[(keys, ids >= 1)]``, in one
    flat array: ``(tbl, base [F + 1], mask [F])``, for ``lookup_gather``.

    Why: pass 2 looked every chunk's distinct values up by binary search (``np.searchsorted``,
    ~17 dependent cache misses each, ~0.2 us/row); a table at load <= 0.5 needs ~1 probe.
    """
    keys = np.ascontiguousarray(np.concatenate([k for k, _ in vocab]) if vocab else np.zeros(0), dtype=np.uint64)
    ids = np.ascontiguousarray(np.concatenate([i for _, i in vocab]) if vocab else np.zeros(0), dtype=np.int64)
    voff = np.cumsum([0] + [k.size for k, _ in vocab]).astype(np.int64)
    # per field: the smallest power of two >= 16 and >= twice its vocabulary (load <= 0.5)
    sizes = np.array([max(16, 1 << max(0, int(2 * k.size - 1).bit_length())) for k, _ in vocab], dtype=np.int64)
    mask = sizes - 1
    base = np.concatenate([[0], np.cumsum(2 * sizes)]).astype(np.int64)
    tbl = np.zeros(int(base[-1]), dtype=np.uint64)
    _lib().rc_build_vocab_tables(_ptr(keys), _ptr(ids), _ptr(voff), len(vocab), _ptr(base), _ptr(mask), _ptr(tbl))
    return tbl, base, mask


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
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    split = np.ascontiguousarray(split, dtype=np.uint8)
    num_fields, n = indices.shape
    if base.size != num_fields + 1 or offsets.size != num_fields + 1 or split.size != n:
        raise ValueError("lookup_gather: fields or rows of indices, offsets, tables and split disagree")
    if n and int(split.max()) >= num_splits:
        raise ValueError(f"lookup_gather: a split id is >= {num_splits}")
    out = np.empty((n, num_fields), dtype=np.int32)
    order = np.empty(n, dtype=np.int64)
    starts = np.empty(num_splits + 1, dtype=np.int64)
    _check(_lib().rc_lookup_gather(_ptr(indices), num_fields, n, _ptr(keys), _ptr(offsets), _ptr(tbl), _ptr(base),
                                   _ptr(mask), _ptr(split), num_splits, _ptr(out), _ptr(order), _ptr(starts)))
    return out, order, starts
