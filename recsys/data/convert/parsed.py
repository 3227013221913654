"""What a parser hands back for one chunk, and the bad-row texts both parsers share.

Why shared: the pyarrow parser (``parse_arrow``) and the C scanner (``parse_native``) must
report the very same rows, lines and texts (the tests compare their reports), so the
pieces of a report live here once.  ``Parsed`` is the dictionary-encoded chunk (row ->
index of the chunk's distinct value, per field); ``Scanned`` keeps one 64-bit key per row
and field, which ``--hash`` maps straight to ids.

Example::

    p = parse_chunk(fmt, data, task, (0.8, 0.1, 0.1), 0, "discretize")   # Parsed
    p.indices.shape == (num_fields, n_good_rows)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.convert import kernels
from recsys.data.convert.chunks import Task
from recsys.data.convert.errors import ChunkFault

MAX_REPORTED = 5  # malformed rows printed with file:line
CR_REASON = "carriage return inside the line"
SHOW_CHARS = 40  # a bad value is shown in a report up to this many characters


@dataclass
class Parsed:
    """A parsed chunk.  Row arrays hold good rows only, in file order."""

    n_lines: int  # newlines in the chunk: lets the main process turn local lines into file lines
    n_rows: int  # rows read (good + bad)
    indices: np.ndarray  # int32 [F, n] (field-major: contiguous per field): row -> distinct-value index
    keys: list[np.ndarray]  # per field: uint64 key of each distinct value
    dense: np.ndarray  # float32 [n, Dd]
    labels: np.ndarray  # float32 [n]
    split: np.ndarray  # uint8 [n]
    bad_count: int
    bad_examples: list[tuple[int, str]]  # (1-based line within chunk, reason)


@dataclass
class Scanned:
    """A chunk scanned by the compiled kernel (``recsys.data.convert.kernels``).

    Unlike ``Parsed`` it keeps one 64-bit key per row and field: ``--hash`` mode maps
    those straight to ids, and vocabulary mode dictionary-encodes them (``to_parsed``).
    """

    n_lines: int
    n_rows: int  # rows read (good + bad)
    keys: np.ndarray  # uint64 [F, n_rows]: every row read, bad ones hold garbage
    good: np.ndarray  # int64 [n]: the columns of ``keys`` that are good rows, in file order
    dense: np.ndarray  # float32 [n, Dd]
    labels: np.ndarray  # float32 [n]
    split: np.ndarray  # uint8 [n]
    bad_count: int
    bad_examples: list[tuple[int, str]]

    def to_parsed(self) -> tuple[Parsed, list[tuple[np.ndarray, np.ndarray]]]:
        """Dictionary-encodes the keys, counting train rows on the way: (Parsed, per field
        (keys, train counts) of the values seen in train rows)."""
        indices, distinct, cnt, off = kernels.dict_encode(self.keys, self.good, self.split == 0)
        keys = [distinct[off[f]:off[f + 1]] for f in range(self.keys.shape[0])]
        counts = []
        for f, k in enumerate(keys):
            c = cnt[off[f]:off[f + 1]]
            seen = c > 0
            counts.append((k[seen], c[seen]))
        parsed = Parsed(self.n_lines, self.n_rows, indices, keys, self.dense, self.labels, self.split,
                        self.bad_count, self.bad_examples)
        return parsed, counts


def field_texts(data: bytes, wanted: list[tuple[int, int]], delimiter: str) -> list[str]:
    """The raw text of column ``col`` on 1-based physical line ``line`` of ``data``, for each
    ``(line, col)``, quoted and cut to ``SHOW_CHARS`` for a bad-row report.

    Why from the raw bytes: both engines then show the very same text (the tests compare
    their reports), and a value the reader parsed (``inf``) is shown as it was written.
    Costs one newline search over the chunk, only for chunks with bad rows.
    """
    if not wanted:
        return []
    nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    sep = delimiter.encode()
    out = []
    for line, col in wanted:
        start = 0 if line <= 1 else int(nl[line - 2]) + 1
        end = int(nl[line - 1]) if line - 1 < nl.size else len(data)
        raw = data[start:end]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        fields = raw.split(sep)
        text = fields[col].decode("utf-8", "replace") if col < len(fields) else ""
        out.append(repr(text[:SHOW_CHARS]) + (f"... ({len(text):,} chars)" if len(text) > SHOW_CHARS else ""))
    return out


def non_finite(task: Task, dense: np.ndarray, row: int, line: int, names: list[str]) -> None:
    """Stops the run at a non-finite dense value: never written, named by file line and feature."""
    col = int(np.flatnonzero(~np.isfinite(dense[row]))[0])
    raise ChunkFault(task.file_idx, line, f"dense feature {names[col]} is {float(dense[row, col])} after "
                                          "conversion; nothing written (a converter bug: please report this row)")

