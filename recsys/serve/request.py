"""The contract of one serving request, checked before any member sees it.

Why a module of its own: what a valid request is (rows, fields, dtypes, bounds) does not
depend on how the members run.  ``recsys.serve.EnsembleServer`` calls ``RequestSpec.validate``
today; a Ray Serve ingress (members as deployments) can call the same function and answer
with the same one-line errors.  Only numpy is needed here.

A request is raw rows, as a caller has them: ``dense`` [B, Dd] and ``ids`` [B, F] (one id
per sparse field, the npy layout).  The rules, each broken one refused with ONE line that
names the field by its schema name (e.g. ``I3`` / ``C7``) and the row:

- rows: 1 <= B <= ``max_batch_rows`` (default 65536).  The size is read from the shape
  before anything is copied, so a 1,000,000-row request costs nothing.  An empty request
  (B = 0) is refused too: it has no answer to give, and refusing it keeps every member's
  forward away from a zero-row batch.
- ids: integers.  Integer dtypes are taken as they are; float arrays are accepted when
  every value is exactly integral (2.0 is id 2; 2.7, NaN and inf are refused, never
  truncated), since ids read through a float column are common and lossless below 2**53.
  Strings, booleans and objects that are not integers are refused.  Every id must be
  inside its table, [0, vocab) of its field.
- dense: real numbers (integer or float dtypes), finite, and |x| <= ``max_abs_dense``
  (default 1e6).  The models are trained on the converters' output (Criteo counts are
  ``log(1 + max(v, 0))``, so |x| < 25 for any 32-bit count); a value far outside that is a
  raw or garbage feature, and the answer to it would be meaningless, so it is refused.  The
  schema records no per-feature range, so the bound is one configurable number.

Example::

    spec = RequestSpec.from_schema(cfg.schema(), max_batch_rows=4096)
    dense, ids = spec.validate(dense, ids)     # float32 [B, Dd], int64 [B, F], C-contiguous
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from recsys.errors import UserError, one_line

if TYPE_CHECKING:
    from recsys.data.schema import Schema

DEFAULT_MAX_BATCH_ROWS = 65536
DEFAULT_MAX_ABS_DENSE = 1e6


class ServeError(UserError, RuntimeError):
    """A checkpoint, request or worker problem, with a one-line message."""


class RequestError(ServeError, ValueError):
    """A request refused before any member ran: the message names the field and row at fault."""


def _rows(x: Any) -> int | None:
    """Leading dimension of an array or a sequence, read without copying it (None if unknown)."""
    shape = getattr(x, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) >= 1 else None
    if isinstance(x, (list, tuple)):
        return len(x)
    return None


def _as_array(x: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise RequestError(f"{what} must be a rectangular array ({one_line(e)})") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return isinstance(v, (numbers.Real, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True)
class RequestSpec:
    """What a request must look like for one schema, and the serving limits.

    ``sparse_names`` / ``vocab_sizes``: the F id fields and their table sizes;
    ``dense_names``: the Dd dense fields; ``max_batch_rows``: the most rows one request may
    carry; ``max_abs_dense``: the largest |dense value| accepted.
    """

    sparse_names: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    dense_names: tuple[str, ...]
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    max_abs_dense: float = DEFAULT_MAX_ABS_DENSE

    def __post_init__(self) -> None:
        if len(self.sparse_names) != len(self.vocab_sizes):
            raise ValueError(f"{len(self.sparse_names)} sparse names but {len(self.vocab_sizes)} vocab sizes")
        if isinstance(self.max_batch_rows, bool) or not isinstance(self.max_batch_rows, int) \
                or self.max_batch_rows < 1:
            raise ServeError(f"max_batch_rows must be an integer >= 1, got {self.max_batch_rows!r}")
        if not (isinstance(self.max_abs_dense, (int, float)) and self.max_abs_dense > 0
                and math.isfinite(self.max_abs_dense)):
            raise ServeError(f"max_abs_dense must be a finite number > 0, got {self.max_abs_dense!r}")

    @classmethod
    def from_schema(cls, schema: Schema, *, max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
                    max_abs_dense: float = DEFAULT_MAX_ABS_DENSE) -> "RequestSpec":
        """The spec of a ``recsys.data.schema.Schema`` (field names and table sizes)."""
        return cls(tuple(schema.sparse_names), tuple(int(v) for v in schema.vocab_sizes),
                   tuple(schema.dense_features), max_batch_rows, max_abs_dense)

    # ------------------------------------------------------------------ the checks

    def validate(self, dense: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(dense float32 [B, Dd], ids int64 [B, F])``, C-contiguous, or a ``RequestError``.

        ``dense`` may be None (or empty) when the schema has no dense features.  The order of
        the checks: size limit, ids shape, empty request, dense shape, ids values, dense values.
        """
        for what, x in (("ids", ids), ("dense", dense)):
            n = _rows(x)
            if n is not None and n > self.max_batch_rows:
                raise RequestError(f"request has {n} rows in {what}, more than max_batch_rows = "
                                   f"{self.max_batch_rows}; split it into smaller requests")
        F, Dd = len(self.sparse_names), len(self.dense_names)
        ids_a = _as_array(ids, "ids")
        if ids_a.ndim != 2 or ids_a.shape[1] != F:
            raise RequestError(f"ids must be [B, {F}] (one id per sparse field), got {ids_a.shape}")
        B = ids_a.shape[0]
        if B == 0:
            raise RequestError("request has no rows (B = 0); send at least one row")
        if Dd == 0 and (dense is None or np.size(dense) == 0):
            dense_a = np.zeros((B, 0), np.float32)
        else:
            dense_a = _as_array(dense, "dense")
        if dense_a.shape != (B, Dd):
            got = "None" if dense is None else dense_a.shape
            raise RequestError(f"dense must be [B, {Dd}] with B = {B} as in ids, got {got}")
        return self._dense(dense_a), self._ids(ids_a)

    def _ids(self, a: np.ndarray) -> np.ndarray:
        vocab = np.asarray(self.vocab_sizes, dtype=np.int64)
        if a.dtype.kind in "iu":
            bad = (a < 0) | (a >= vocab)
        elif a.dtype.kind == "f":
            finite = np.isfinite(a)
            frac = ~finite | (a != np.floor(np.where(finite, a, 0)))
            if frac.any():
                r, f = map(int, np.argwhere(frac)[0])
                raise RequestError(f"row {r}: id {a[r, f].item()!r} of {self.sparse_names[f]} is not an integer "
                                   "(ids must be integers; floats only when exactly integral)")
            bad = (a < 0) | (a >= vocab)
        else:  # strings, booleans, complex, objects: each element on its own
            return self._ids_elementwise(a, vocab)
        if bad.any():
            r, f = map(int, np.argwhere(bad)[0])
            raise RequestError(f"row {r}: id {a[r, f].item()!r} of {self.sparse_names[f]} is outside its table "
                               f"[0, {vocab[f]})")
        return np.ascontiguousarray(a, dtype=np.int64)

    def _ids_elementwise(self, a: np.ndarray, vocab: np.ndarray) -> np.ndarray:
        out = np.empty(a.shape, np.int64)
        for (r, f), v in np.ndenumerate(a):
            name = self.sparse_names[f]
            v = v.item() if isinstance(v, np.generic) else v
            if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
                v = int(v)
            if not _is_int(v):
                raise RequestError(f"row {r}: id {v!r} of {name} is a {type(v).__name__}, not an integer "
                                   "(ids must be integers)")
            if not 0 <= v < vocab[f]:
                raise RequestError(f"row {r}: id {v!r} of {name} is outside its table [0, {vocab[f]})")
            out[r, f] = v
        return out

    def _dense(self, a: np.ndarray) -> np.ndarray:
        if a.dtype.kind not in "iuf":
            if a.dtype.kind != "O":  # strings, booleans, complex: the first value is already wrong
                self._refuse_dense(0, 0, a[0, 0].item() if a.size else a)
            values = np.empty(a.shape, np.float64)
            for (r, f), v in np.ndenumerate(a):
                v = v.item() if isinstance(v, np.generic) else v
                if not _is_real(v):
                    self._refuse_dense(r, f, v)
                values[r, f] = float(v)
            a = values
        x = a.astype(np.float64, copy=False)
        bad = ~np.isfinite(x) | (np.abs(x) > self.max_abs_dense)
        if bad.any():
            r, f = map(int, np.argwhere(bad)[0])
            name = self.dense_names[f]
            if not math.isfinite(x[r, f]):
                raise RequestError(f"row {r}: dense {name} is {float(x[r, f])!r} (dense values must be finite)")
            raise RequestError(f"row {r}: dense {name} = {x[r, f]:g} is beyond max_abs_dense = "
                               f"{self.max_abs_dense:g}")
        return np.ascontiguousarray(a, dtype=np.float32)

    def _refuse_dense(self, r: int, f: int, v: Any) -> NoReturn:
        raise RequestError(f"row {r}: dense {self.dense_names[f]} {v!r} is a {type(v).__name__}, not a number")


def validate_request(dense: Any, ids: Any, spec: RequestSpec) -> tuple[np.ndarray, np.ndarray]:
    """``spec.validate(dense, ids)``: the one function an ingress calls per request."""
    return spec.validate(dense, ids)


__all__ = ["DEFAULT_MAX_ABS_DENSE", "DEFAULT_MAX_BATCH_ROWS", "RequestError", "RequestSpec", "ServeError",
           "validate_request"]
