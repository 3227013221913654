"""Raw column layouts of Criteo, Avazu and KDD12, and how each raw column becomes features.

Why a table and not code per dataset: the converter's hot path is generic (parse a
byte chunk into dictionary-encoded columns, turn each column's *distinct values*
into 64-bit keys, gather per row), so a dataset is fully described by its columns
and one "kind" per column.  Work per kind is done on a chunk's distinct values
only, which is what makes the converter fast: a 1M-row chunk has far fewer
distinct values per column than rows.  (Criteo itself goes through the compiled
scanner in ``recsys.data.convert.kernels``, which reproduces these keys bit for bit.)

Kinds:
  * ``cat``   opaque string -> stable 64-bit hash (empty string is its own value)
  * ``int``   integer id; ``"7"`` and ``"7.0"`` are the same value; non-numeric, fractional or
              from +-2^53 on (where float64 stops being exact) -> bad row
  * ``num``   Criteo integer feature: ``--numeric discretize`` gives the paper's token
              (v > 2 -> floor(ln(v)^2), else v; empty is its own token),
              ``--numeric dense`` gives the float log(1 + max(v, 0)) (empty -> 0)
  * ``hour``  Avazu ``YYMMDDHH`` -> three fields: hour-of-day, weekday, is-weekend
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.criteo_layout import RAW_DENSE_NAMES, RAW_SPARSE_NAMES

# ----------------------------------------------------------------------------- hashing

_M64 = (1 << 64) - 1
_P = 0x100000001B3  # FNV prime: odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
TAG_NUM = np.uint64(0x6E756D65726963)  # "numeric": keeps numeric tokens apart from string hashes
EMPTY_KEY = np.uint64(0xE3B0C44298FC1C14)  # key of an empty numeric value (its own token)
MAX_EXACT_INT = float(2**53)  # |integer ids| from this on are not exact in float64: bad rows


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads poor low bits so ``key % N`` buckets evenly."""
    x = x.astype(np.uint64, copy=True)
    x += np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _powers(base: int, n: int) -> np.ndarray:
    """[base^0, base^1, ..., base^(n-1)] mod 2^64 (uint64 multiplication wraps)."""
    p = np.full(n, base, dtype=np.uint64)
    if n:
        p[0] = 1
    return np.cumprod(p, dtype=np.uint64)


def hash_binary(arr: pa.Array) -> np.ndarray:
    """Stable 64-bit hash of every value of a (non-null) binary/string array, vectorized.

    A polynomial hash of each value computed from one prefix sum over the whole
    data buffer: h(s, e) = (H[e] - H[s]) * P^-s, all mod 2^64, then mixed with the
    length.  No Python loop per value, and stable across runs and machines
    (unlike Python's ``hash``), which ``--hash`` needs.
    """
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4).astype(np.int64)
    base, top = int(off[0]), int(off[-1])
    total = top - base
    data = np.frombuffer(bufs[2], dtype=np.uint8, count=total, offset=base) if total else np.zeros(0, np.uint8)
    pw = _powers(_P, total + 1)
    h = np.zeros(total + 1, dtype=np.uint64)
    np.cumsum((data.astype(np.uint64) + np.uint64(1)) * pw[:total], out=h[1:])
    s, e = off[:-1] - base, off[1:] - base
    inv = _powers(_P_INV, total + 1)
    out = (h[e] - h[s]) * inv[s]
    out ^= (e - s).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    return mix64(out)


def int_keys(values: np.ndarray) -> np.ndarray:
    return mix64(values.astype(np.int64).view(np.uint64) ^ TAG_NUM)


# ----------------------------------------------------------------------------- numeric parsing


# what counts as a number, in both engines: [+-]? digits [. digits] [(e|E) [+-]? digits], at least
# one digit (recsys/data/criteo_kernels.c parse_number); no inf/nan, no underscores
NUMBER = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_numbers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parses a column's distinct values. Returns (value float64, is_empty, is_bad).

    ``260.0`` parses as 260.  Non-finite or non-numeric text is bad.  The fast path
    is one arrow cast; only when it fails (some bad value in the chunk) do we fall
    back to Python ``float`` over the distinct values, for those that match
    ``NUMBER`` (the C scanner's grammar) once surrounding spaces are stripped, as
    arrow's CSV reader strips them: Python's ``float`` alone would also take
    ``"1_000"``, ``"infinity"`` or a tab, and the two engines would disagree.
    """
    n = len(arr)
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False)
    empty = lengths == 0
    values = np.zeros(n, dtype=np.float64)
    bad = np.zeros(n, dtype=bool)
    nonempty = np.flatnonzero(~empty)
    if nonempty.size == 0:
        return values, empty, bad
    sub = arr.take(pa.array(nonempty))
    try:
        parsed = pc.cast(pc.cast(sub, pa.string()), pa.float64()).to_numpy(zero_copy_only=False)
        values[nonempty] = parsed
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for i, raw in zip(nonempty, sub.to_pylist()):
            if NUMBER.fullmatch(raw.strip(b" ")):  # spaces around a number: as the typed read above
                values[i] = float(raw)
            else:
                bad[i] = True
    bad |= ~np.isfinite(values)
    values[bad] = 0.0
    return values, empty, bad


def criteo_token(v: np.ndarray) -> np.ndarray:
    """The paper's numeric token: v > 2 -> floor(ln(v)^2); else int(v) (truncation)."""
    out = np.trunc(v)
    big = v > 2
    out[big] = np.floor(np.log(v[big]) ** 2)
    with np.errstate(invalid="ignore"):  # below -2^63: INT64_MIN, as the C scanner does
        return out.astype(np.int64)


# ----------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "label" | "drop" | "cat" | "int" | "num" | "hour"


@dataclass(frozen=True)
class RawFormat:
    """One dataset's raw layout.  ``columns`` are in file order."""

    name: str
    columns: tuple[Column, ...]
    delimiter: str
    header: bool
    default_min_count: int

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def feature_names(self, numeric: str) -> tuple[list[str], list[str]]:
        """(sparse field names, dense feature names) in output order (file order)."""
        sparse = [n for c in self.columns for n in transform_column_arity(c, numeric)]
        dense = [c.name for c in self.columns if c.kind == "num" and numeric == "dense"]
        return sparse, dense


CRITEO = RawFormat(
    "criteo",
    (Column("label", "label"),)
    + tuple(Column(n, "num") for n in RAW_DENSE_NAMES)
    + tuple(Column(n, "cat") for n in RAW_SPARSE_NAMES),
    "\t",
    False,
    10,
)

_AVAZU_HEX = {"site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category",
              "device_id", "device_ip", "device_model"}
AVAZU = RawFormat(
    "avazu",
    (Column("id", "drop"), Column("click", "label"), Column("hour", "hour"))
    + tuple(
        Column(n, "cat" if n in _AVAZU_HEX else "int")
        for n in (
            "C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
            "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
        ).split(",")
    ),
    ",",
    True,
    2,
)

KDD12 = RawFormat(
    "kdd12",
    (Column("Click", "label"),)
    + tuple(
        Column(n, "int")
        for n in ("Impression", "DisplayURL", "AdID", "AdvertiserID", "Depth", "Position",
                  "QueryID", "KeywordID", "TitleID", "DescriptionID", "UserID")
    ),
    "\t",
    False,
    10,
)

FORMATS: dict[str, RawFormat] = {f.name: f for f in (CRITEO, AVAZU, KDD12)}


# ----------------------------------------------------------------------------- per-column transforms


@dataclass
class ColumnResult:
    """What one raw column's distinct values turn into (all arrays indexed by distinct value)."""

    keys: list[np.ndarray]  # one uint64 key array per output sparse field
    dense: np.ndarray | None  # float32 per value when the column is a dense feature
    label: np.ndarray | None  # float32 label per value
    bad: np.ndarray  # bool per value: a row holding it is malformed
    reason: str  # what was wrong, for the error report


def transform_column_arity(col: Column, numeric: str = "discretize") -> list[str]:
    """Names of the sparse fields a raw column produces (in output order)."""
    if col.kind in ("cat", "int"):
        return [col.name]
    if col.kind == "num":
        return [] if numeric == "dense" else [col.name]
    if col.kind == "hour":
        return ["hour", "weekday", "is_weekend"]
    return []


def transform_column(col: Column, values: pa.Array, numeric: str) -> ColumnResult:
    n = len(values)
    none = np.zeros(n, dtype=bool)
    if col.kind == "cat":
        return ColumnResult([hash_binary(values)], None, None, none, "")
    v, empty, bad = parse_numbers(values)
    if col.kind == "label":
        bad = bad | empty | (v < 0)
        return ColumnResult([], None, (v > 0).astype(np.float32), bad, f"bad {col.name} (label) value")
    if col.kind == "int":
        # from 2^53 on a float64 is no exact integer: "9007199254740993" parses to 2^53 and would
        # silently share its id, and beyond 2^63 every value would share INT64_MIN's; bad rows
        # instead (any integer text below 2^53 is exact, any at or above it rounds to >= 2^53)
        bad = bad | empty | (v != np.trunc(v)) | (np.abs(v) >= MAX_EXACT_INT)
        return ColumnResult([int_keys(np.where(bad, 0.0, v))], None, None, bad,
                            f"non-integer or out-of-range {col.name} value")
    if col.kind == "num":
        reason = f"non-numeric {col.name} value"
        if numeric == "dense":
            d = np.log1p(np.maximum(v, 0.0)).astype(np.float32)
            return ColumnResult([], d, None, bad, reason)
        keys = int_keys(criteo_token(v))
        keys[empty] = EMPTY_KEY
        return ColumnResult([keys], None, None, bad, reason)
    if col.kind == "hour":
        return _hour(values)
    raise ValueError(f"unknown column kind {col.kind!r}")


def _hour(values: pa.Array) -> ColumnResult:
    """Avazu ``YYMMDDHH`` -> hour-of-day, weekday, is-weekend (distinct values are few: 24/day)."""
    n = len(values)
    hod = np.zeros(n, dtype=np.int64)
    wd = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for i, raw in enumerate(values.to_pylist()):
        try:
            s = raw.decode("ascii")
            if len(s) != 8 or not s.isdigit():
                raise ValueError
            day = _dt.date(2000 + int(s[0:2]), int(s[2:4]), int(s[4:6]))
            h = int(s[6:8])
            if h > 23:
                raise ValueError
            hod[i], wd[i] = h, day.weekday()
        except (UnicodeDecodeError, ValueError):
            bad[i] = True
    return ColumnResult(
        [int_keys(hod), int_keys(wd), int_keys((wd >= 5).astype(np.int64))], None, None, bad,
        "bad hour value (want YYMMDDHH)",
    )
