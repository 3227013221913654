"""What an HTTP request body means: rows as already-converted ids, or raw rows through the
training vocabulary, turned into the ``(dense, ids)`` arrays ``recsys.serve.request`` checks.

Why a module of its own, numpy only: the ingress deployment (``recsys.serve.ray_ingress``)
parses every request before any member sees it, and the parsing is the same whoever calls
it, so it is testable without Ray, torch or a network.  The parsers are pluggable: a body
names its form by its keys, and each form has one parser.

The forms of a JSON body (one object):

- ids: ``{"dense": [[float] * Dd] * B, "sparse": [[int] * F] * B}``, the npy layout
  (``"dense"`` may be left out when the schema has no dense features);
- raw lines: ``{"lines": ["<a Criteo TSV line>", ...]}``, as in the dataset's files, label
  column included (``"labeled": false``: lines without it, as in Criteo's test.txt);
- raw rows: ``{"rows": [{"<field>": <raw value>, ...}, ...]}`` (Criteo ``I1``..``C26``).

Options, in any form: ``"member_logits": true`` (answer each member's logit too) and
``"deadline_ms": <number>`` (this request's deadline, at most the server's).  Any other key is
refused, so a misspelt option is an error, not silently ignored.

The raw forms need the vocabulary the converter saved beside ``meta.json`` (``vocab/``) and
its encoder (``recsys.data.convert``'s ``RawRowEncoder``); without them a raw request gets one
line saying so (``RawUnsupported``), and the ids form still works.

Example::

    parser = BodyParser.for_data(spec, "data/demo/criteo")
    parsed = parser.parse(b'{"dense": [[0.5]], "sparse": [[1, 2, 3]], "member_logits": true}')
    parsed.dense, parsed.ids, parsed.member_logits    # [[0.5]], [[1, 2, 3]], True
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from recsys.errors import UserError, one_line
from recsys.serve.request import RequestError, RequestSpec, ServeError

if TYPE_CHECKING:
    from recsys.data.convert.raw_rows import RawRowEncoder

__all__ = ["BodyParser", "IdsParser", "ParsedRequest", "RawParser", "RawUnsupported", "RowParser"]

_OPTIONS = ("member_logits", "deadline_ms")


class RawUnsupported(ServeError):
    """A raw request reached a server without a usable vocabulary (HTTP 501: the server's
    configuration, not the request, is what lacks)."""


@dataclass(frozen=True)
class ParsedRequest:
    """One request's rows and options: ``dense`` / ``ids`` as parsed (not yet checked against
    the schema: ``RequestSpec.validate`` does that), ``member_logits`` and ``deadline_ms``
    (None: the server's)."""

    dense: Any
    ids: Any
    member_logits: bool = False
    deadline_ms: float | None = None


class RowParser(Protocol):
    """One body form: ``keys`` are the row keys that select it; ``parse`` returns
    ``(dense, ids)`` array-likes ([B, Dd], [B, F]) or raises a ``RequestError`` naming the field."""

    @property
    def keys(self) -> tuple[str, ...]: ...

    def parse(self, body: Mapping[str, Any]) -> tuple[Any, Any]: ...


def _rows_of(body: Mapping[str, Any], key: str, width: int, names: Sequence[str], spec: RequestSpec) -> list[Any]:
    """``body[key]`` as a list of B rows of ``width`` values each, or one line naming the field."""
    rows = body[key]
    if not isinstance(rows, list):
        raise RequestError(f"{key} must be a list of rows (lists of {width} values), got {type(rows).__name__}")
    if len(rows) > spec.max_batch_rows:  # before looking at any row
        raise RequestError(f"request has {len(rows)} rows in {key}, more than max_batch_rows = "
                           f"{spec.max_batch_rows}; split it into smaller requests")
    if not rows:
        raise RequestError(f"request has no rows (B = 0) in {key}; send at least one row")
    for r, row in enumerate(rows):
        if not isinstance(row, list):
            raise RequestError(f"{key}: row {r} must be a list of {width} values, got {type(row).__name__}")
        if len(row) != width:
            first, last = (names[0], names[-1]) if names else ("", "")
            raise RequestError(f"{key}: row {r} has {len(row)} values, expected {width} (one per field, "
                               f"{first}..{last})")
    return rows


def _numbers(rows: list[Any]) -> np.ndarray:
    """Rows of JSON numbers as one array, fast; any other value (a string, a boolean, null)
    keeps its own type in an object array, so the check names that value, not a converted one
    (numpy would turn ``[1, "x"]`` into two strings and ``[1, true]`` into ``[1, 1]``)."""
    if all(type(v) is int or type(v) is float for row in rows for v in row):
        return np.asarray(rows)
    return np.array(rows, dtype=object)


@dataclass(frozen=True)
class IdsParser:
    """Rows already converted: ``"sparse"`` ids [B, F] and ``"dense"`` [B, Dd]."""

    spec: RequestSpec
    keys: tuple[str, ...] = ("sparse", "dense")

    def parse(self, body: Mapping[str, Any]) -> tuple[Any, Any]:
        if "sparse" not in body:
            raise RequestError('an ids request needs "sparse": [[id] * F] * B (and "dense" when the '
                               f"schema has {len(self.spec.dense_names)} dense features)")
        ids = _rows_of(body, "sparse", len(self.spec.sparse_names), self.spec.sparse_names, self.spec)
        if "dense" not in body or (not self.spec.dense_names and body["dense"] == []):
            if self.spec.dense_names:
                raise RequestError(f'"dense" is missing: the schema has {len(self.spec.dense_names)} dense '
                                   f"features ({self.spec.dense_names[0]}..)")
            return None, _numbers(ids)
        dense = _rows_of(body, "dense", len(self.spec.dense_names), self.spec.dense_names, self.spec)
        if len(dense) != len(ids):
            raise RequestError(f"dense has {len(dense)} rows but sparse has {len(ids)}")
        return _numbers(dense), _numbers(ids)


@dataclass(frozen=True)
class RawParser:
    """Raw rows through the training vocabulary: ``"lines"`` (raw text lines) or ``"rows"``
    (objects of raw field values).  ``encoder`` is the converter's ``RawRowEncoder`` (or None:
    every raw request is refused with ``why``)."""

    spec: RequestSpec
    encoder: RawRowEncoder | None = None
    why: str = ""
    keys: tuple[str, ...] = ("lines", "rows", "labeled")

    @classmethod
    def for_data(cls, spec: RequestSpec, data_dir: str | Path | None) -> "RawParser":
        """The encoder of ``data_dir``'s ``vocab/``, when both the encoder and the vocabulary exist."""
        if data_dir is None:
            return cls(spec, None, "the server was started without a data directory")
        vocab = Path(data_dir) / "vocab"
        hint = (f"raw requests need a converted vocab/ directory beside meta.json ({vocab} is missing); "
                "convert the data again with this version of the converter, or send converted ids as "
                '{"dense": [[...]], "sparse": [[...]]}')
        if not vocab.is_dir():
            return cls(spec, None, hint)
        from recsys.data.convert.raw_rows import RawRowEncoder  # the converter's parsers: raw requests only

        try:
            encoder = RawRowEncoder.from_dir(data_dir)
        except UserError as e:  # a damaged vocabulary: ids requests are still served
            return cls(spec, None, f"the vocabulary cannot be used ({one_line(e)}); send converted ids")
        if list(encoder.field_names) != list(spec.sparse_names):
            return cls(spec, None, f"the vocabulary's fields ({len(encoder.field_names)}) are not the model's "
                                   f"({len(spec.sparse_names)}); send converted ids")
        return cls(spec, encoder)

    def parse(self, body: Mapping[str, Any]) -> tuple[Any, Any]:
        if ("lines" in body) == ("rows" in body):
            raise RequestError('a raw request carries either "lines" or "rows" (one of them)')
        if self.encoder is None:
            raise RawUnsupported(self.why)
        key = "lines" if "lines" in body else "rows"
        values = body[key]
        if not isinstance(values, list):
            raise RequestError(f"{key} must be a list, got {type(values).__name__}")
        if len(values) > self.spec.max_batch_rows:
            raise RequestError(f"request has {len(values)} rows in {key}, more than max_batch_rows = "
                               f"{self.spec.max_batch_rows}; split it into smaller requests")
        for r, v in enumerate(values):
            want = str if key == "lines" else dict
            if not isinstance(v, want):
                raise RequestError(f"{key}: row {r} must be a{' string' if want is str else 'n object'}, "
                                   f"got {type(v).__name__}")
        labeled = body.get("labeled", True)
        if not isinstance(labeled, bool):
            raise RequestError(f"labeled must be true or false, got {labeled!r}")
        try:
            if key == "lines":
                return self.encoder.encode_lines(values, labeled=labeled)
            return self.encoder.encode_json(values)
        except UserError as e:  # the encoder's line names the row and the field
            if isinstance(e, ServeError):
                raise
            raise RequestError(f"{key}: {one_line(e)}") from None


@dataclass(frozen=True)
class BodyParser:
    """Picks the body's form by its keys and parses it; every refusal is one line."""

    spec: RequestSpec
    parsers: tuple[RowParser, ...]
    max_deadline_ms: float

    @classmethod
    def for_data(cls, spec: RequestSpec, data_dir: str | Path | None,
                 max_deadline_ms: float = math.inf) -> "BodyParser":
        """The ids form and the raw forms (the latter through ``data_dir``'s vocabulary)."""
        return cls(spec, (IdsParser(spec), RawParser.for_data(spec, data_dir)), max_deadline_ms)

    def parse(self, raw: bytes | str) -> ParsedRequest:
        """The request in ``raw`` (JSON text), or a ``RequestError`` / ``RawUnsupported`` line."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(f"the body is not JSON ({one_line(e)})") from None
        if not isinstance(body, dict):
            raise RequestError(f"the body must be a JSON object, got {type(body).__name__}")
        known = {k for p in self.parsers for k in p.keys} | set(_OPTIONS)
        unknown = sorted(set(body) - known)
        if unknown:
            raise RequestError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        chosen = [p for p in self.parsers if any(k in body for k in p.keys)]
        if len(chosen) != 1:
            forms = " | ".join("/".join(p.keys) for p in self.parsers)
            raise RequestError(f"a request carries rows in exactly one form ({forms}), got "
                               f"{'none' if not chosen else 'several'}")
        dense, ids = chosen[0].parse(body)
        return ParsedRequest(dense, ids, self._flag(body), self._deadline(body))

    @staticmethod
    def _flag(body: Mapping[str, Any]) -> bool:
        v = body.get("member_logits", False)
        if not isinstance(v, bool):
            raise RequestError(f"member_logits must be true or false, got {v!r}")
        return v

    def _deadline(self, body: Mapping[str, Any]) -> float | None:
        if "deadline_ms" not in body:
            return None
        v = body["deadline_ms"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise RequestError(f"deadline_ms must be a number of milliseconds > 0, got {v!r}")
        return float(min(v, self.max_deadline_ms))
