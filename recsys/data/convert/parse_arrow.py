"""The pyarrow engine: a chunk of any dataset -> ``Parsed``, with pyarrow's C++ CSV reader.

Why pyarrow and not per-row Python: the reader tokenizes and (for numeric columns) parses
in C++, then each column is dictionary-encoded so that every per-value step (hashing,
numeric transforms) runs on the chunk's *distinct* values only (``formats.transform_column``).
Avazu and KDD12 always come here; Criteo does with ``--engine arrow`` or without a C
compiler, and gives the same outputs as the C scanner (``parse_native``).  Most of this
module makes the reader's view of odd lines (a lone CR, bytes that are not UTF-8, wrong
column counts) match the physical lines, so that bad rows are reported at the same
``file:line`` by both engines.

Example::

    p = parse_chunk(FORMATS["avazu"], data, task, (0.8, 0.1, 0.1), seed=0, numeric="discretize")
    p.indices  # int32 [F, n]: row -> index into p.keys[f], the field's distinct 64-bit keys
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.data.convert.chunks import Task
from recsys.data.convert.errors import InputError
from recsys.data.convert.formats import (
    EMPTY_KEY,
    Column,
    ColumnResult,
    RawFormat,
    criteo_token,
    int_keys,
    transform_column,
    transform_column_arity,
)
from recsys.data.convert.parsed import CR_REASON, MAX_REPORTED, Parsed, field_texts, non_finite
from recsys.data.convert.splits import draw_split
from recsys.errors import one_line


def _lone_cr_lines(data: bytes) -> np.ndarray:
    """1-based lines of ``data`` holding a carriage return that does not end the line.

    Why: pyarrow's reader ends a line at a lone CR, the C scanner does not (it is part of
    a value there), so the engines split such a row differently, and arrow's row numbers
    stopped matching physical lines, shifting every later bad-row report.  Both engines
    now reject these rows as bad, with this reason (the C scanner itself: ``BAD_CR``).
    Costs a ``memchr`` per chunk; the numpy pass runs only on chunks that hold a CR.
    """
    if b"\r" not in data:
        return np.zeros(0, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    cr = np.flatnonzero(buf[:-1] == 13)  # a CR as the chunk's last byte ends its line
    lone = cr[buf[cr + 1] != 10]
    if lone.size == 0:
        return np.zeros(0, dtype=np.int64)
    nl = np.flatnonzero(buf == 10)
    return np.unique(np.searchsorted(nl, lone)) + 1  # newlines before the CR + 1


def _blank_lines(data: bytes, lines: np.ndarray) -> bytes:
    """``data`` with the given 1-based lines overwritten by spaces (same length): the reader
    sees one invalid 1-column row per line, at the same line numbers."""
    buf = bytearray(data)
    nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    for line in lines.tolist():
        start = 0 if line == 1 else int(nl[line - 2]) + 1
        end = int(nl[line - 1]) if line - 1 < nl.size else len(buf)
        buf[start:end] = b" " * (end - start)
    return bytes(buf)


def _column_counts_if_not_utf8(data: bytes, delimiter: str) -> np.ndarray | None:
    """Columns on each line of ``data`` (delimiters + 1, 0 for an empty line), or None when
    ``data`` is valid UTF-8 (nearly always: one ``isascii`` pass).

    Why: pyarrow decodes an invalid row's text as UTF-8 to build the object it hands to
    ``invalid_row_handler``; on other bytes that raises inside pyarrow ("Exception ignored"
    and a traceback on stderr) and the whole chunk fails to parse.  For such chunks the
    caller blanks the wrong-count lines first and reports the counts from here.
    """
    if data.isascii():
        return None
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError:
        pass
    buf = np.frombuffer(data, dtype=np.uint8)
    starts, ends, empty = _line_spans(buf)
    seps = np.concatenate([[0], np.cumsum(buf == ord(delimiter))])
    counts = seps[ends] - seps[starts] + 1
    counts[empty] = 0
    return counts


def _line_spans(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every line of the chunk ``buf`` (uint8): (start, end without the newline, whether it is
    empty), int64 [L], int64 [L], bool [L]; a line of only ``\\r`` is empty."""
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], nl + 1])
    ends = np.append(nl, buf.size)
    lengths = ends - starts
    trailing_cr = np.zeros(lengths.size, dtype=bool)
    has = lengths > 0
    trailing_cr[has] = buf[ends[has] - 1] == 13
    return starts, ends, lengths - trailing_cr == 0


def _nonempty_lines(data: bytes) -> np.ndarray:
    """0-based indices of the chunk's non-empty lines (a line of only ``\\r`` is empty)."""
    return np.flatnonzero(~_line_spans(np.frombuffer(data, dtype=np.uint8))[2])


def _line_numbers_of_rows(data: bytes, invalid: set[int], rows: np.ndarray) -> np.ndarray:
    """1-based chunk line of each accepted row index: the CSV reader drops empty and invalid lines.

    ``invalid`` holds the reader's numbers of the rows it rejected, which count
    non-empty lines only (1-based).
    """
    keep = _nonempty_lines(data)
    if invalid:
        keep = np.delete(keep, np.fromiter(invalid, dtype=np.int64) - 1)
    return keep[rows] + 1


@dataclass
class _Typed:
    rows: np.ndarray | None  # int32 [n] local value index (discretized numeric fields)
    keys: np.ndarray | None  # uint64 key per local value
    dense: np.ndarray | None
    label: np.ndarray | None
    bad: np.ndarray | None
    reason: str


def _typed_numeric(col: Column, v: np.ndarray, empty: np.ndarray, numeric: str) -> _Typed:
    """Per-row work for a column the reader already parsed as float64 (``empty``: the reader's nulls).

    Why the null mask and not ``isnan``: the reader parses the text ``nan`` as NaN, which
    must be a bad value (as in the C scanner), not an empty one.
    """
    bad = ~np.isfinite(v) & ~empty
    if col.kind == "label":
        bad = bad | empty | (v < 0)
        return _Typed(None, None, None, (v > 0).astype(np.float32), bad if bad.any() else None,
                      f"bad {col.name} (label) value")
    reason = f"non-numeric {col.name} value"
    vv = np.where(empty | bad, 0.0, v)
    if numeric == "dense":
        return _Typed(None, None, np.log1p(np.maximum(vv, 0.0)).astype(np.float32), None,
                      bad if bad.any() else None, reason)
    tok = criteo_token(vv)
    lo = int(tok.min()) if tok.size else 0
    hi = int(tok.max()) if tok.size else 0
    if hi - lo < 4 * tok.size + 1024:  # small token range (the usual case): index = token - lo
        rows = (tok - lo).astype(np.int32)
        rows[empty] = hi - lo + 1
        keys = np.append(int_keys(np.arange(lo, hi + 1)), EMPTY_KEY)
    else:  # huge, sparse range: distinct tokens by sorting
        uniq, inv = np.unique(tok, return_inverse=True)
        rows = inv.astype(np.int32)
        rows[empty] = uniq.size
        keys = np.append(int_keys(uniq), EMPTY_KEY)
    return _Typed(rows, keys, None, None, bad if bad.any() else None, reason)


def parse_chunk(
    fmt: RawFormat, data: bytes, task: Task, split_fracs: tuple[float, ...], seed: int, numeric: str
) -> Parsed:
    """One chunk's bytes -> its good rows, dictionary-encoded per field, and its bad-row report.

    ``numeric``: ``"discretize"`` (Criteo's ln^2 tokens) or ``"dense"`` (log1p floats).
    Bad rows are dropped and counted; the first ``MAX_REPORTED`` are reported by chunk line.
    """
    invalid: dict[int, str] = {}

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # row.number is the 1-based physical line in ``data``
        invalid[int(row.number)] = f"expected {row.expected_columns} columns, got {row.actual_columns}"
        return "skip"

    line_shift = 0  # lines before ``data`` in this chunk: the header, cut off here
    if fmt.header and task.skip_header:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
        line_shift = 1
    if not data.strip():
        return Parsed(data.count(b"\n") + line_shift, 0, np.zeros((0, 0), np.int32), [], np.zeros((0, 0), np.float32),
                      np.zeros(0, np.float32), np.zeros(0, np.uint8), 0, [])
    cr_lines = _lone_cr_lines(data)
    if cr_lines.size:
        data = _blank_lines(data, cr_lines)
    true_counts: dict[int, int] = {}  # 1-based line -> its column count, for lines blanked here
    counts = _column_counts_if_not_utf8(data, fmt.delimiter)
    if counts is not None:
        wrong = np.flatnonzero((counts != 0) & (counts != len(fmt.columns))) + 1
        true_counts = dict(zip(wrong.tolist(), counts[wrong - 1].tolist()))
        data = _blank_lines(data, wrong)
    names = fmt.column_names
    used = [c for c in fmt.columns if c.kind != "drop"]
    # Plain binary columns in 1 MB blocks, then a dictionary encode per column: measured
    # ~2x less CPU than asking the reader for dictionary columns or using one big block.
    # Numeric and label columns are first tried as float64 (C++ parsing, no dictionary);
    # a chunk with a non-numeric value there is re-read as text to find the bad rows.
    typed = {c.name: pa.float64() for c in used if c.kind in ("num", "label")}
    block = 1 << 20

    def read(types: dict[str, pa.DataType]) -> pa.Table:
        invalid.clear()
        return pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=block),
            parse_options=pacsv.ParseOptions(delimiter=fmt.delimiter, quote_char=False, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c.name: types.get(c.name, pa.binary()) for c in used},
                include_columns=[c.name for c in used],
                null_values=[""],  # only an empty field is null: "nan", "NA", "null" are values (bad ones)
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                check_utf8=False,
            ),
        )

    while True:
        try:
            table = read(typed)
            break
        except pa.ArrowInvalid as e:
            if "straddl" in str(e) and block <= len(data):  # a line longer than a block: one block for all
                block = len(data) + 1
            elif typed:  # a non-numeric value in a numeric column: re-read as text to find the bad rows
                typed = {}
            else:
                raise InputError(f"{task.path}: cannot parse chunk {task.chunk_idx} "
                                 f"(bytes from {task.start:,}): {one_line(e)}") from None
    n = table.num_rows
    bad = np.zeros(n, dtype=bool)
    reasons: list[tuple[np.ndarray, str, int]] = []  # (bad rows, why, raw column index)
    raw_index = {c.name: i for i, c in enumerate(fmt.columns)}
    num_fields = sum(len(transform_column_arity(c, numeric)) for c in used)
    indices = np.empty((num_fields, n), dtype=np.int32)
    keys: list[np.ndarray] = []
    dense_cols: list[np.ndarray] = []
    labels = np.zeros(n, dtype=np.float32)
    for col in used:
        if col.name in typed:
            column = table.column(col.name)
            nulls = pc.is_null(column).to_numpy(zero_copy_only=False) if column.null_count else np.zeros(n, bool)
            fast = _typed_numeric(col, column.to_numpy(), nulls, numeric)
            if fast.bad is not None:
                bad |= fast.bad
                reasons.append((fast.bad, fast.reason, raw_index[col.name]))
            if fast.rows is not None and fast.keys is not None:  # a discretized numeric field
                indices[len(keys)] = fast.rows
                keys.append(fast.keys)
            if fast.dense is not None:
                dense_cols.append(fast.dense)
            if fast.label is not None:
                labels = fast.label
            continue
        encoded = pc.dictionary_encode(table.column(col.name))
        if encoded.num_chunks:
            # chunked encoding shares one growing dictionary: the last chunk's covers all
            dictionary = encoded.chunks[-1].dictionary
            rows = np.concatenate([ch.indices.to_numpy(zero_copy_only=False) for ch in encoded.chunks])
        else:
            dictionary, rows = pa.array([], pa.binary()), np.zeros(0, np.int32)
        res: ColumnResult = transform_column(col, dictionary, numeric)
        if res.bad.any():
            row_bad = res.bad[rows]
            bad |= row_bad
            reasons.append((row_bad, res.reason, raw_index[col.name]))
        for k in res.keys:
            indices[len(keys)] = rows
            keys.append(k)
        if res.dense is not None:
            dense_cols.append(res.dense[rows])
        if res.label is not None:
            labels = res.label[rows]

    split = draw_split(n, task, split_fracs, seed)

    examples: list[tuple[int, str]] = []
    if invalid:  # the reader numbers non-empty lines only: back to physical lines
        physical = _nonempty_lines(data) + 1
        crs = set(cr_lines.tolist())

        def reason(line: int, why: str) -> str:
            if line in crs:
                return CR_REASON
            if line in true_counts:
                return f"expected {len(fmt.columns)} columns, got {true_counts[line]}"
            return why

        examples = [(int(physical[num - 1]) + line_shift, reason(int(physical[num - 1]), why))
                    for num, why in sorted(invalid.items())[:MAX_REPORTED]]
    if bad.any():
        bad_rows = np.flatnonzero(bad)[:MAX_REPORTED]
        lines = _line_numbers_of_rows(data, set(invalid), bad_rows)  # lines of ``data``: before the shift
        found = [next((reason, c) for mask, reason, c in reasons if mask[r]) for r in bad_rows]
        values = field_texts(data, [(int(line), c) for line, (_, c) in zip(lines, found)], fmt.delimiter)
        for line, (why, _), value in zip(lines, found, values):
            examples.append((int(line) + line_shift, f"{why} {value}"))
        examples = sorted(examples)[:MAX_REPORTED]
    good = ~bad
    all_good = bool(good.all())
    dense = np.stack(dense_cols, axis=1) if dense_cols else np.zeros((n, 0), np.float32)
    if not all_good:
        indices, dense, labels, split = indices[:, good], dense[good], labels[good], split[good]
    if dense.size and not np.isfinite(dense).all():
        r = int(np.argwhere(~np.isfinite(dense))[0][0])
        line = int(_line_numbers_of_rows(data, set(invalid), np.flatnonzero(good)[r:r + 1])[0]) + line_shift
        non_finite(task, dense, r, line, fmt.feature_names(numeric)[1])
    return Parsed(
        n_lines=data.count(b"\n") + line_shift,
        n_rows=n + len(invalid),
        indices=np.ascontiguousarray(indices, dtype=np.int32),
        keys=keys,
        dense=np.ascontiguousarray(dense, dtype=np.float32),
        labels=labels.astype(np.float32, copy=False),
        split=split,
        bad_count=int(bad.sum()) + len(invalid),
        bad_examples=examples,
    )
