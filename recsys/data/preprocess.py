"""Raw Criteo / Avazu / KDD12 logs -> ``meta.json`` + ``{split}_{dense,sparse,labels}.npy``.

Why it looks like this (speed and memory are requirements, not niceties):

* **No per-row Python.**  Criteo chunks (``--chunk-mb``, default 16 MB) go through a
  compiled single-pass scanner (``recsys.data.fast_parse``, C): one loop over the
  bytes tokenizes, parses numbers, applies ln^2 and hashes every field to a 64-bit
  key, ~0.7 us/row.  ``--hash`` maps the keys straight to ids; vocabulary mode
  dictionary-encodes them per chunk (row -> index of the chunk's distinct value) so
  that everything per value (counting, vocabulary lookup) runs on distinct values.
  Avazu/KDD12 (and ``--engine arrow``) use pyarrow's C++ CSV reader and a
  dictionary encode per column instead; both engines give identical outputs.
* **Parallel** over chunks in ``--workers`` threads (the C engine: its kernels
  release the GIL) or forked processes (pyarrow); results are consumed in chunk
  order, so the output never depends on the worker count.  In pass 2 the
  workers write their rows in place (``pwrite``) into the preallocated outputs
  (offsets are known from pass 1); process workers in ``--hash`` mode spill each
  chunk to a file that the parent appends with ``copy_file_range``, so no output
  rows travel through the pool's pipes.
* **Vocabularies on train only.**  Pass 1 counts each field's values on the
  train rows and caches every chunk's row indices to a scratch dir; pass 2 maps
  the cache to contiguous ids (value seen >= ``--min-count`` times -> 1..V by
  descending count, else OOV id 0).  With ``--hash N`` there is a single pass
  (id = stable 64-bit hash % N) and memory is bounded by chunk size x workers,
  whatever the input size.  Values are identified by a 64-bit hash; two distinct
  values of one field collide with probability ~ n^2 / 2^65 (1e-5 for 10M values).
* **Splits** are a seeded random 8:1:1 (``--split``) drawn per chunk from
  ``(seed, file, chunk)``, or explicit files (``--train/--val/--test``).
* **Atomic.**  The whole conversion (arrays, ``meta.json``, the pass-1 cache) is
  written to a staging directory beside the output, ``.<name>.convert-<pid>-<hex>``
  in the same parent (so the same filesystem), and swapped in when complete by one
  ``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two renames, which a next run
  repairs if killed between them).  Until that swap the previous conversion is
  untouched, whatever happens: bad input found late, too many bad rows, disk full,
  Ctrl-C, ``kill -9``.  Files in the output dir that are not the converter's
  (notes, raw inputs) are moved into the new conversion, never dropped.  A run
  holds an ``flock`` on its staging dir; the next run deletes the staging dirs
  whose owner is gone (and puts back any moved files), and refuses to start while
  another live run converts into the same output.  The cost: old and new
  conversion coexist on disk while a run lasts.  (No ``fsync``: this survives a
  killed process, not a power cut.)
* **Bad rows** (wrong column count, non-numeric value in a numeric column) are
  dropped, counted and the first few reported as ``file:line: reason 'value'``;
  above ``--max-bad-fraction`` the run fails with exit code 1.  Bad flags, a
  missing/empty/binary file, the wrong dataset or an unusable output path stop the
  run before any work with exit code 2; so does a truncated ``.gz`` found later.
* **Never non-finite.**  Numbers are finite or the row is bad (``inf``, ``nan``,
  ``1e309``); dense blocks are checked with ``np.isfinite`` before they are written,
  so a NaN that slipped through would stop the run at its ``file:line``.

Example::

    from recsys.data.preprocess import ConvertConfig, convert
    schema = convert(ConvertConfig(dataset="criteo", inputs=["day_0.gz"], output="data/criteo"))
"""
from __future__ import annotations

import argparse
import codecs
import ctypes
import errno
import gzip
import math
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import threading
import time
import zlib
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: staging dirs are told alive by their pid alone
    fcntl = None  # type: ignore[assignment]

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from recsys.data.raw_formats import (
    EMPTY_KEY,
    FORMATS,
    Column,
    ColumnResult,
    RawFormat,
    criteo_token,
    int_keys,
    transform_column,
    transform_column_arity,
)
from recsys.data.schema import META_FILE, Schema, SparseFeature
from recsys.errors import UserError, one_line

SPLITS = ("train", "val", "test")
CRITEO_NAMES = FORMATS["criteo"].column_names  # label, I1..I13, C1..C26
MAX_REPORTED = 5  # malformed rows printed with file:line


class InputError(UserError):
    """A problem with the user's input (missing/empty/wrong-dataset file, too many bad rows).

    Carries the exit code; the CLI prints ``str(e)`` as one line, never a traceback.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ConvertConfig:
    dataset: str
    output: str
    inputs: list[str] = field(default_factory=list)  # random split over these
    split_files: dict[str, list[str]] = field(default_factory=dict)  # or explicit {split: files}
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    min_count: int | None = None  # None -> the dataset's default
    hash_size: int | None = None  # set -> --hash mode
    numeric: str = "discretize"  # Criteo only: "discretize" | "dense"
    workers: int = 1
    max_bad_fraction: float = 0.001
    chunk_mb: float = 16.0
    progress: bool = True
    engine: str = "auto"  # "auto" (compiled scanner where there is one) | "native" | "arrow"


# ----------------------------------------------------------------------------- input chunks


@dataclass(frozen=True)
class Task:
    """One chunk of one file: either a byte range the worker reads itself, or the bytes (gzip)."""

    file_idx: int
    chunk_idx: int
    path: str
    start: int
    end: int
    data: bytes | None
    split: int  # -1 -> random split; else the fixed split index (explicit split files)
    skip_header: bool


def _is_gz(path: str) -> bool:
    return path.endswith(".gz")


def _open_text(path: str):
    return gzip.open(path, "rb") if _is_gz(path) else open(path, "rb")


_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)  # what a damaged .gz raises while it is read
_MAGIC = {b"\x1f\x8b": "gzip-compressed data (name the file *.gz to read it compressed)",
          b"BZh": "bzip2-compressed data (decompress it first)",
          b"\xfd7zXZ\x00": "xz-compressed data (decompress it first)",
          b"\x28\xb5\x2f\xfd": "zstd-compressed data (decompress it first)",
          b"PK\x03\x04": "a zip archive", b"\x93NUMPY": "a NumPy .npy array"}


def _binary_reason(head: bytes) -> str | None:
    """Why ``head`` (a file's first KB) is not a text log, or None.

    Why: a binary file used to get past the first-line check with a misleading hint
    ("looks like a CSV with a header, e.g. Avazu") or as thousands of bad rows.
    Binary = a known compressed/array magic, a NUL byte, or over a quarter of the
    characters undecodable as UTF-8 or control characters other than tab/CR/LF.
    """
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    if b"\0" in head:
        return "binary data"
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(head, final=False)  # a cut last char is fine
    odd = sum(1 for ch in text if ch == "\ufffd" or ch == "\x7f" or (ch < " " and ch not in "\t\n\r"))
    return "binary data" if text and odd > len(text) / 4 else None


def _gzip_good_prefix(path: str) -> tuple[int, int]:
    """(decompressed bytes, newlines among them) of ``path`` before its damage.

    Only called once a read has failed: ``gzip`` drops what it decompressed in the failing
    ``read``, so this decompresses again with ``zlib`` in 64 KB steps (exact for a
    truncated file, within one step's output for corrupt data)."""
    total = lines = 0
    d = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        while piece := f.read(1 << 16):
            while piece:
                try:
                    out = d.decompress(piece)
                except zlib.error:
                    return total, lines
                total += len(out)
                lines += out.count(b"\n")
                piece = b""
                if d.eof:  # end of one gzip member: the next one starts in the unused bytes
                    piece, d = d.unused_data, zlib.decompressobj(wbits=31)
    return total, lines


def _gzip_error(path: str, e: BaseException) -> InputError:
    """One line for a damaged .gz: the file, how far decompression got, what broke."""
    try:
        good, lines = _gzip_good_prefix(path)
        where = f"after {good:,} decompressed bytes ({lines:,} lines)"
    except OSError:
        good, where = 0, "somewhere"
    if isinstance(e, EOFError):
        return InputError(f"{path}: truncated gzip file: the compressed stream ends {where}")
    if isinstance(e, gzip.BadGzipFile) and str(e).startswith("Not a gzipped file") and not good:
        return InputError(f"{path}: not gzip data, although the name ends in .gz")
    return InputError(f"{path}: corrupt gzip data {where} ({one_line(e)})")


def check_inputs(fmt: RawFormat, files: list[str]) -> None:
    """Fails fast, with exit code 2, on a missing, empty, binary or damaged file or one of another dataset."""
    if not files:
        raise InputError("no input files given (use --input, or --train/--val/--test)")
    expected = len(fmt.columns)
    for path in files:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{path}: no such file")
        if p.is_dir():
            raise InputError(f"{path}: is a directory, expected a {fmt.name} file")
        try:
            with _open_text(path) as f:
                why = _binary_reason(f.read(1024))
                if why:
                    raise InputError(f"{path}: {why}, not a {fmt.name} text log")
                f.seek(0)
                first = f.readline()
                while first in (b"\n", b"\r\n"):
                    first = f.readline()
        except _GZIP_ERRORS as e:
            raise _gzip_error(path, e) from None
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror or one_line(e)})") from None
        if not first:
            raise InputError(f"{path}: empty file")
        line = first.rstrip(b"\r\n").decode("utf-8", "replace")
        cr_only = "\r" in line and line.count(fmt.delimiter) >= expected
        hint = " (its lines end in CR only: convert them to LF)" if cr_only else ""
        got = line.split(fmt.delimiter)
        if fmt.header:
            if got != fmt.column_names:
                raise InputError(
                    f"{path}:1: not a {fmt.name} file: header {line[:80]!r} is not "
                    f"{fmt.delimiter.join(fmt.column_names)[:60]!r}...{hint}"
                )
            continue
        if len(got) != expected:
            if not hint and "," in line and "\t" not in line:
                hint = " (looks like a CSV with a header, e.g. Avazu)"
            raise InputError(
                f"{path}:1: not a {fmt.name} file: expected {expected} "
                f"{'tab' if fmt.delimiter == chr(9) else repr(fmt.delimiter)}-separated columns, "
                f"got {len(got)}{hint}"
            )


def make_tasks(files: list[str], splits: list[int], chunk_bytes: int) -> Iterator[Task]:
    """Chunks every file.  Plain files: byte ranges (workers read them); gzip: bytes read here.

    Chunk boundaries depend only on ``chunk_bytes``, so the random split (seeded by
    file and chunk index) is reproducible whatever ``--workers`` is.
    """
    for fi, (path, split) in enumerate(zip(files, splits)):
        if _is_gz(path):
            # same chunk boundaries as a plain file: chunk k holds the lines that start in
            # [k * chunk_bytes, (k + 1) * chunk_bytes) of the decompressed stream
            with gzip.open(path, "rb") as f:
                ci, pos = 0, 0
                while True:
                    target = (ci + 1) * chunk_bytes
                    try:
                        data = f.read(target - pos) if target > pos else b""
                        if data and not data.endswith(b"\n"):
                            data += f.readline()
                    except _GZIP_ERRORS as e:  # found mid-run: one line, and the caller keeps the old output
                        raise _gzip_error(path, e) from None
                    pos += len(data)
                    if not data and pos < target:
                        break  # end of stream
                    yield Task(fi, ci, path, 0, 0, data, split, ci == 0)
                    ci += 1
        else:
            size = os.path.getsize(path)
            for ci, start in enumerate(range(0, size, chunk_bytes)):
                yield Task(fi, ci, path, start, min(start + chunk_bytes, size), None, split, ci == 0)


def _line_start_at_or_after(fd: int, pos: int, size: int) -> int:
    """Offset just past the first newline at or after ``pos`` (``size`` if none)."""
    while pos < size:
        window = os.pread(fd, 1 << 16, pos)
        nl = window.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(window)
    return size


def read_task_bytes(task: Task) -> bytes:
    """The chunk's bytes: the lines that *start* inside [start, end).

    Two small reads find the line boundaries, then one ``pread`` of exactly those bytes:
    no readline, no concatenation (which copied the 16 MB chunk twice more).
    """
    if task.data is not None:
        return task.data
    fd = os.open(task.path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        begin = 0 if task.start == 0 else _line_start_at_or_after(fd, task.start - 1, size)
        if begin >= task.end:
            return b""
        stop = _line_start_at_or_after(fd, task.end - 1, size)
        return os.pread(fd, stop - begin, begin)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- chunk parsing


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


CR_REASON = "carriage return inside the line"


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
    nl = np.flatnonzero(buf == 10)
    ends = np.append(nl, buf.size)
    starts = np.concatenate([[0], nl + 1])
    seps = np.concatenate([[0], np.cumsum(buf == ord(delimiter))])
    counts = seps[ends] - seps[starts] + 1
    lengths = ends - starts
    trailing_cr = np.zeros(lengths.size, dtype=bool)
    has = lengths > 0
    trailing_cr[has] = buf[ends[has] - 1] == 13
    counts[lengths - trailing_cr == 0] = 0
    return counts


def _nonempty_lines(data: bytes) -> np.ndarray:
    """0-based indices of the chunk's non-empty lines (a line of only ``\\r`` is empty)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [buf.size]])
    lengths = ends - starts
    trailing_cr = np.zeros(lengths.size, dtype=bool)
    has = lengths > 0
    trailing_cr[has] = buf[ends[has] - 1] == 13
    return np.flatnonzero(lengths - trailing_cr > 0)


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


SHOW_CHARS = 40  # a bad value is shown in a report up to this many characters


def _field_texts(data: bytes, wanted: list[tuple[int, int]], delimiter: str) -> list[str]:
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


class ChunkFault(Exception):
    """A check failed on chunk-local line ``line`` of input file ``file_idx``.

    Raised in a worker, which does not know how many lines came before its chunk; the
    driver, which consumes chunks in order, turns it into an ``InputError`` naming the
    file line.  Plain args, so it pickles back from a forked worker.
    """

    def __init__(self, file_idx: int, line: int, what: str) -> None:
        super().__init__(file_idx, line, what)
        self.file_idx, self.line, self.what = file_idx, line, what


def _non_finite(task: Task, dense: np.ndarray, row: int, line: int, names: list[str]) -> None:
    """Stops the run at a non-finite dense value: never written, named by file line and feature."""
    col = int(np.flatnonzero(~np.isfinite(dense[row]))[0])
    raise ChunkFault(task.file_idx, line, f"dense feature {names[col]} is {float(dense[row, col])} after "
                                          "conversion; nothing written (a converter bug: please report this row)")


def parse_chunk(
    fmt: RawFormat, data: bytes, task: Task, split_fracs: tuple[float, ...], seed: int, numeric: str
) -> Parsed:
    invalid: dict[int, str] = {}

    def on_invalid(row: Any) -> str:
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
            if fast.rows is not None:
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

    rng = np.random.default_rng([seed, task.file_idx, task.chunk_idx])
    if task.split >= 0:
        split = np.full(n, task.split, dtype=np.uint8)
    else:
        split = np.searchsorted(np.cumsum(split_fracs)[:-1], rng.random(n), side="right").astype(np.uint8)

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
        values = _field_texts(data, [(int(line), c) for line, (_, c) in zip(lines, found)], fmt.delimiter)
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
        _non_finite(task, dense, r, line, fmt.feature_names(numeric)[1])
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


# ----------------------------------------------------------------------------- compiled path (Criteo)


@dataclass
class Scanned:
    """A chunk scanned by the compiled kernel (``recsys.data.fast_parse``).

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
        from recsys.data.fast_parse import dict_encode

        indices, distinct, cnt, off = dict_encode(self.keys, self.good, self.split == 0)
        keys = [distinct[off[f]:off[f + 1]] for f in range(self.keys.shape[0])]
        counts = []
        for f, k in enumerate(keys):
            c = cnt[off[f]:off[f + 1]]
            seen = c > 0
            counts.append((k[seen], c[seen]))
        parsed = Parsed(self.n_lines, self.n_rows, indices, keys, self.dense, self.labels, self.split,
                        self.bad_count, self.bad_examples)
        return parsed, counts


def _draw_split(n: int, task: Task, split_fracs: tuple[float, ...], seed: int) -> np.ndarray:
    """Split of each of the chunk's n rows that have the right column count (bad values included,
    so that both parsers draw the same numbers)."""
    if task.split >= 0:
        return np.full(n, task.split, dtype=np.uint8)
    rng = np.random.default_rng([seed, task.file_idx, task.chunk_idx])
    return np.searchsorted(np.cumsum(split_fracs)[:-1], rng.random(n), side="right").astype(np.uint8)


def scan_chunk(data: bytes, task: Task, split_fracs: tuple[float, ...], seed: int, numeric: str) -> Scanned:
    """Criteo chunk -> per-row keys with the compiled scanner; same rows, keys, splits and
    bad-row reports as ``parse_chunk`` (tests/test_preprocess.py checks both agree)."""
    from recsys.data import fast_parse as fp

    keys, dense, labels, status, aux, lines, n_lines = fp.scan_criteo(
        np.frombuffer(data, dtype=np.uint8), numeric == "dense")
    ok = status == fp.OK
    n_ok = int(np.count_nonzero(ok))
    colok = (status != fp.BAD_COLUMNS) & (status != fp.BAD_CR)  # arrow draws no split for either
    split = _draw_split(int(np.count_nonzero(colok)), task, split_fracs, seed)
    if n_ok == status.size:
        good = np.arange(status.size, dtype=np.int64)
        examples: list[tuple[int, str]] = []
    else:
        good = np.flatnonzero(ok)
        split = split[ok[colok]]
        dense, labels = dense[good], labels[good]
        examples = []
        names = CRITEO_NAMES
        shown = [r for r in np.flatnonzero(~ok)[:MAX_REPORTED]]
        values = iter(_field_texts(data, [(int(lines[r]), int(aux[r])) for r in shown
                                          if status[r] == fp.BAD_VALUE], "\t"))
        for r in shown:
            if status[r] == fp.BAD_CR:
                why = CR_REASON
            elif status[r] == fp.BAD_COLUMNS:
                why = f"expected {fp.CRITEO_COLUMNS} columns, got {aux[r]}"
            elif aux[r] == 0:
                why = f"bad label (label) value {next(values)}"
            else:
                why = f"non-numeric {names[aux[r]]} value {next(values)}"
            examples.append((int(lines[r]), why))
    if dense.size and not np.isfinite(dense).all():
        r = int(np.argwhere(~np.isfinite(dense))[0][0])
        _non_finite(task, dense, r, int(lines[good[r]]), list(CRITEO_NAMES[1:1 + dense.shape[1]]))
    return Scanned(n_lines, int(status.size), keys, good, np.ascontiguousarray(dense), labels, split,
                   int(status.size - n_ok), examples)


def resolve_engine(engine: str, dataset: str, log: Callable[[str], None] = print) -> tuple[str, float]:
    """("native", seconds spent building/loading the C kernels) when the compiled scanner covers
    ``dataset`` and a C compiler is there, else ("arrow", 0.0).  Must run before the pool forks,
    so that the workers inherit the loaded library."""
    if engine not in ("auto", "native", "arrow"):
        raise InputError(f"engine must be auto, native or arrow, got {engine!r}")
    if engine == "native" and dataset != "criteo":
        raise InputError(f"--engine native: the compiled scanner reads criteo only, not {dataset}")
    if engine == "arrow" or dataset != "criteo":
        return "arrow", 0.0
    from recsys.data import fast_parse, native

    try:
        return "native", fast_parse.load()
    except native.NativeUnavailable as e:
        if engine == "native":
            raise InputError(f"--engine native unavailable: {e}") from None
        log(f"warning: {e}; parsing with pyarrow (--engine arrow, ~3x slower)")
        return "arrow", 0.0


def _parse(job: Job, data: bytes, task: Task) -> Parsed | Scanned:
    if job.engine == "native":
        return scan_chunk(data, task, job.split_fracs, job.seed, job.numeric)
    return parse_chunk(FORMATS[job.fmt_name], data, task, job.split_fracs, job.seed, job.numeric)


@contextmanager
def _writing(path: str | Path) -> Iterator[None]:
    """Names ``path`` in an OSError raised inside (a failed ``write`` has no filename), so that
    a full disk or ``RLIMIT_FSIZE`` (EFBIG) is reported against the file being written."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or one_line(e), str(path)) from None
        raise


# ----------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides the chunk: small, pickled with every task."""

    fmt_name: str
    numeric: str
    split_fracs: tuple[float, ...]
    seed: int
    hash_size: int | None
    cache_dir: str
    out_dir: str
    vocab_path: str | None = None
    engine: str = "arrow"  # resolved: "native" (recsys.data.fast_parse) or "arrow"
    spill: bool = False  # --hash in a pool worker: hand rows back through a file, not the pipe


@dataclass
class ChunkStats:
    task: Task
    n_lines: int
    n_rows: int
    bad_count: int
    bad_examples: list[tuple[int, str]]
    n_bytes: int


CACHE_ARRAYS = ("indices", "dense", "labels", "split", "keys", "offsets")  # a chunk's pass-1 cache files


@dataclass
class Pass1Result:
    stats: ChunkStats
    counts: list[tuple[np.ndarray, np.ndarray]]  # per field: (keys, train counts)
    cache_file: str
    split_rows: list[int]  # good rows per split: where pass 2 writes this chunk


@dataclass
class SplitArrays:
    """One --hash chunk's output rows for each split: (dense, sparse, labels).

    From a pool worker the rows come as a spill file instead (``spill``: path, and
    per split its (dense, sparse, labels) rows in file order), because pickling
    ~160 bytes per row through the pool's pipe cost the parent ~0.4 us/row of CPU
    (its result thread reads and unpickles) plus ~0.2 us/row to write them again.
    """

    stats: ChunkStats
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None
    spill: str | None = None
    spill_rows: list[int] | None = None  # rows per split in the spill file


def _stats(task: Task, data: bytes, p: Parsed | Scanned) -> ChunkStats:
    return ChunkStats(task, p.n_lines, p.n_rows, p.bad_count, p.bad_examples, len(data))


def _split_parts(dense: np.ndarray, sparse: np.ndarray, labels: np.ndarray, split: np.ndarray) -> list:
    return [(dense[m], sparse[m], labels[m]) for m in (split == s for s in range(len(SPLITS)))]


def run_hash_chunk(job: Job, task: Task) -> SplitArrays:
    """--hash mode, the only pass: parse, hash % N, hand back per-split rows."""
    data = read_task_bytes(task)
    p = _parse(job, data, task)
    assert job.hash_size is not None
    if isinstance(p, Scanned):
        from recsys.data.fast_parse import hashed_ids

        parts = []
        for s in range(len(SPLITS)):
            m = p.split == s
            parts.append((p.dense[m], hashed_ids(p.keys, p.good[m], job.hash_size), p.labels[m]))
    else:
        n_buckets = np.uint64(job.hash_size)
        sparse_t = np.empty(p.indices.shape, dtype=np.int32)  # [F, n]
        for f, k in enumerate(p.keys):
            np.take((k % n_buckets).astype(np.int32), p.indices[f], out=sparse_t[f])
        parts = _split_parts(p.dense, sparse_t.T, p.labels, p.split)
    if not job.spill:
        return SplitArrays(_stats(task, data, p), parts)
    path = os.path.join(job.cache_dir, f"hash_{task.file_idx:04d}_{task.chunk_idx:06d}.bin")
    with _writing(path), open(path, "wb") as f:
        for dense, sparse, labels in parts:
            for arr in (dense, sparse, labels):
                if arr.size:
                    f.write(memoryview(np.ascontiguousarray(arr).reshape(-1)).cast("B"))
    return SplitArrays(_stats(task, data, p), None, path, [int(x[2].shape[0]) for x in parts])


def run_count_chunk(job: Job, task: Task) -> Pass1Result:
    """Vocabulary pass 1: parse, count values on train rows, cache the parsed chunk."""
    data = read_task_bytes(task)
    scanned = _parse(job, data, task)
    if isinstance(scanned, Scanned):
        p, counts = scanned.to_parsed()
    else:
        p = scanned
        train = p.split == 0
        counts = []
        for f, k in enumerate(p.keys):
            c = np.bincount(p.indices[f][train], minlength=len(k))
            seen = c > 0
            counts.append((k[seen], c[seen]))
    offsets = np.cumsum([0] + [k.size for k in p.keys])
    # raw .npy files, not .npz: zip's crc32 alone cost more than the write.  Holding the chunks
    # in memory instead (thread workers share it) was measured at 1M rows, 2 workers: the count
    # pass 0.05 s faster, the map pass 0.02 s slower, +170 MB peak RSS; not worth the memory.
    cache_file = os.path.join(job.cache_dir, f"chunk_{task.file_idx:04d}_{task.chunk_idx:06d}")
    for name, arr in zip(CACHE_ARRAYS, (p.indices, p.dense, p.labels, p.split,
                                        np.concatenate(p.keys) if p.keys else np.zeros(0, np.uint64), offsets)):
        with _writing(f"{cache_file}.{name}.npy"):
            np.save(f"{cache_file}.{name}.npy", arr)
    split_rows = np.bincount(p.split, minlength=len(SPLITS)).tolist()
    return Pass1Result(_stats(task, data, p), counts, cache_file, split_rows)


# per process: a worker loads the vocabulary once, not once per chunk; cleared by convert()
_VOCAB_MEMO: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
_TABLE_MEMO: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # native: fast_parse.build_vocab_tables


_MEMO_LOCK = threading.RLock()  # thread workers (native engine) share the memos: build once


def _vocab_tables(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with _MEMO_LOCK:
        if path not in _TABLE_MEMO:
            from recsys.data.fast_parse import build_vocab_tables

            _TABLE_MEMO.clear()
            _TABLE_MEMO[path] = build_vocab_tables(_load_vocab(path))
        return _TABLE_MEMO[path]


def _load_vocab(path: str) -> list[tuple[np.ndarray, np.ndarray]]:
    with _MEMO_LOCK:
        if path not in _VOCAB_MEMO:
            with np.load(path) as z:
                nf = len(z.files) // 2
                _VOCAB_MEMO.clear()
                _VOCAB_MEMO[path] = [(z[f"keys{f}"], z[f"ids{f}"]) for f in range(nf)]
        return _VOCAB_MEMO[path]


def lookup(vocab_keys: np.ndarray, vocab_ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Contiguous id of each key (sorted-key binary search); 0 (OOV) when not in the vocabulary."""
    if vocab_keys.size == 0:
        return np.zeros(keys.shape, dtype=np.int32)
    pos = np.searchsorted(vocab_keys, keys)
    pos[pos == vocab_keys.size] = 0
    return np.where(vocab_keys[pos] == keys, vocab_ids[pos], 0).astype(np.int32)


def run_map_chunk(job: Job, item: tuple[str, list[int]]) -> None:
    """Vocabulary pass 2: cached chunk -> contiguous ids, written in place at this chunk's
    row offset of each split's (preallocated) output, so no rows travel back to the parent."""
    cache_file, row_offsets = item
    assert job.vocab_path is not None
    vocab = _load_vocab(job.vocab_path)
    z = {name: np.load(f"{cache_file}.{name}.npy") for name in CACHE_ARRAYS}
    indices, keys, off = z["indices"], z["keys"], z["offsets"]
    if indices.shape[1] == 0:  # a chunk with no good rows
        vocab = []
    if job.engine == "native":
        from recsys.data.fast_parse import lookup_gather

        sparse, order, starts = lookup_gather(indices, keys, off, _vocab_tables(job.vocab_path), z["split"],
                                              len(SPLITS))
        if int(np.diff(starts).max(initial=0)) == sparse.shape[0]:  # all rows in one split: order is 0..n-1
            dense, labels = z["dense"], z["labels"]
        else:
            dense, labels = z["dense"][order], z["labels"][order]
        parts = [(dense[a:b], sparse[a:b], labels[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    else:
        sparse_t = np.empty(indices.shape, dtype=np.int32)  # [F, n]
        for f, (vk, vi) in enumerate(vocab):
            np.take(lookup(vk, vi, keys[off[f]:off[f + 1]]), indices[f], out=sparse_t[f])
        parts = _split_parts(z["dense"], sparse_t.T, z["labels"], z["split"])
    for s, (dense, sparse, labels) in zip(SPLITS, parts):
        n, at = labels.shape[0], row_offsets[SPLITS.index(s)]
        for kind, arr in (("dense", dense), ("sparse", sparse), ("labels", labels)):
            if n and arr.size:
                # this chunk's rows of a split are contiguous in the file: one positional write.
                # (A memmap + flush here msync'ed every chunk to disk: ~1 us/row of CPU.)
                row_bytes = arr.itemsize * (arr.size // n)
                path = os.path.join(job.out_dir, f"{s}_{kind}.npy.tmp")
                with _writing(path):
                    fd = os.open(path, os.O_WRONLY)
                    try:
                        os.pwrite(fd, memoryview(np.ascontiguousarray(arr).reshape(-1)).cast("B"),
                                  NpyAppender.HEADER_BYTES + at * row_bytes)
                    finally:
                        os.close(fd)
    for name in z:
        os.remove(f"{cache_file}.{name}.npy")


def _keep_freed_memory() -> None:
    """Lets glibc's malloc keep freed chunk-sized buffers for the next chunk (Linux only).

    Why: every chunk allocates tens of MB of arrays; by default glibc maps each one
    fresh (``mmap``) and unmaps it on free, so every page is faulted in and zeroed by
    the kernel again for every chunk: ~0.15-0.3 us/row of system CPU in pool workers.
    Raising the mmap and trim thresholds reuses the same heap pages instead; peak
    memory stays bounded by one chunk's working set per process.
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): keep the defaults
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 512 << 20)
    mallopt(m_trim_threshold, 1 << 30)


def _init_worker() -> None:
    # The CLI turns SIGTERM into an exception (to clean up); a forked worker must not keep that:
    # Pool.terminate() SIGTERMs its workers, and one busy in C code or blocked on the task queue
    # never runs a Python handler, so terminate() (after any failure mid-run) hung.  The worker
    # was forked with SIGTERM blocked (make_pool): a SIGTERM sent before this point is pending,
    # and kills it here, once the default action is back.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    pa.set_cpu_count(1)  # one process per core already
    _keep_freed_memory()
    # the staging lock means "the driver is alive": after a kill -9 of the driver, orphaned
    # workers (which exit at their next read of the task pipe) must not keep it looking alive
    for fd in list(_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCK_FDS.clear()


def _call(args: tuple[Callable[[Job, Any], Any], Job, Any]) -> Any:
    fn, job, item = args
    return fn(job, item)


def make_pool(workers: int, engine: str) -> Any:
    """A worker pool, or None for in-process work (workers <= 1).

    The C engine gets threads: its kernels run without the GIL, and threads share
    the loaded library and the vocabulary tables with no fork, pickling or spill
    files (1M rows, min-count, 2 workers: 1.5-1.8 s with numba in forked workers,
    0.68-0.79 s with C in threads).  The pyarrow engine gets processes, forked, not
    spawned: start-up is instant, nothing is re-imported, and it works
    when the caller has no importable ``__main__`` (stdin, notebooks).  Arrow
    registers at-fork handlers (``arrow::internal::RegisterAtFork``) that rebuild
    its thread pools in the child, and ``convert`` creates the pool before running
    any pyarrow kernel itself.
    """
    if workers <= 1:
        return None
    if engine == "native":
        return ThreadPool(workers)
    # SIGTERM blocked while the pool forks its workers and starts its threads (which inherit the
    # mask, so a worker it re-forks later is born blocked too): a worker SIGTERMed by
    # Pool.terminate() before its initializer ran used to lose the signal and hang terminate()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return mp.get_context("fork").Pool(workers, initializer=_init_worker)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


DRAIN_SECONDS = 300.0  # after a failure, how long in-flight chunks may take before the pool is terminated


def ordered_map(fn: Callable[[Job, Any], Any], items: Iterable[Any], job: Job, pool: Any, workers: int) -> Iterator[Any]:
    """fn(job, item) for each item, in order, on the pool (or here when pool is None).

    At most 2 x workers chunks are in flight, unlike ``Pool.imap`` whose feeder
    thread would read a whole gzip file ahead into memory.
    """
    if pool is None:
        for item in items:
            yield fn(job, item)
        return
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.apply_async(_call, ((fn, job, item),)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        # Left early (bad input found mid-run, a failed chunk, Ctrl-C): the caller terminates the
        # pool next.  Let the chunks in flight finish first: Pool.terminate() stops the result
        # thread and then writes to the result pipe, so a worker still sending a large result
        # (pass-1 counts: MBs) would hold the pipe's lock forever and terminate() would hang.
        deadline = time.monotonic() + DRAIN_SECONDS
        for r in pending:
            r.wait(max(0.0, deadline - time.monotonic()))


# ----------------------------------------------------------------------------- outputs


class NpyAppender:
    """Streams rows into ``path`` (a ``.npy``) without knowing the row count up front.

    Writes a fixed-size 128-byte header with a placeholder shape, appends raw
    rows, and rewrites the header with the true shape on ``close``; np.load reads
    the space-padded header like any other.  Memory stays at one chunk.
    """

    HEADER_BYTES = 128

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.rows = 0
        with _writing(path):
            self.fh = open(path, "wb")
            self.fh.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
             "shape": (rows,) + self.row_shape}
        text = repr(d).encode("latin1")
        pad = self.HEADER_BYTES - 10 - len(text) - 1
        assert pad >= 0
        body = text + b" " * pad + b"\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body

    def append(self, rows: np.ndarray) -> None:
        assert rows.shape[1:] == self.row_shape, (rows.shape, self.row_shape)
        arr = np.ascontiguousarray(rows, dtype=self.dtype)
        if arr.size:
            with _writing(self.path):
                self.fh.write(memoryview(arr.reshape(-1)).cast("B"))  # no tobytes copy
        self.rows += rows.shape[0]

    def append_raw(self, src_fd: int, offset: int, nbytes: int, rows: int) -> None:
        """Appends ``rows`` rows stored as raw bytes at ``offset`` of the file ``src_fd``."""
        with _writing(self.path):
            self._append_raw(src_fd, offset, nbytes, rows)

    def _append_raw(self, src_fd: int, offset: int, nbytes: int, rows: int) -> None:
        self.fh.flush()
        dst = self.fh.fileno()
        at = self.HEADER_BYTES + self.rows * int(np.prod(self.row_shape)) * self.dtype.itemsize
        done = 0
        try:
            while done < nbytes:
                got = os.copy_file_range(src_fd, dst, nbytes - done, offset + done, at + done)
                if got == 0:
                    raise OSError("copy_file_range copied nothing")
                done += got
        except OSError:  # a filesystem or kernel without it (or a full disk): through user space
            os.lseek(dst, at + done, os.SEEK_SET)
            chunk = os.pread(src_fd, nbytes - done, offset + done)
            while chunk:  # os.write may write less than asked
                chunk = chunk[os.write(dst, chunk):]
        self.fh.seek(at + nbytes)
        self.rows += rows

    def close(self) -> None:
        """Writes the true header and closes; the file is closed even when that fails."""
        with _writing(self.path):
            try:
                self.fh.seek(0)
                self.fh.write(self._header(self.rows))
            finally:
                self.fh.close()  # flushes; if the flush fails the descriptor is still closed


class SplitWriter:
    """The nine output arrays (3 splits x dense/sparse/labels), written under temp names."""

    def __init__(self, out: Path, num_dense: int, num_sparse: int) -> None:
        self.out = out
        self.files: dict[tuple[str, str], NpyAppender] = {}
        for s in SPLITS:
            self.files[(s, "dense")] = NpyAppender(self._tmp(s, "dense"), np.float32, (num_dense,))
            self.files[(s, "sparse")] = NpyAppender(self._tmp(s, "sparse"), np.int32, (num_sparse,))
            self.files[(s, "labels")] = NpyAppender(self._tmp(s, "labels"), np.float32, ())

    def _tmp(self, split: str, kind: str) -> Path:
        return self.out / f"{split}_{kind}.npy.tmp"

    def append(self, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        for s, (dense, sparse, labels) in zip(SPLITS, parts):
            if labels.shape[0]:
                self.files[(s, "dense")].append(dense)
                self.files[(s, "sparse")].append(sparse)
                self.files[(s, "labels")].append(labels)

    def append_spill(self, path: str, rows: list[int]) -> None:
        """Appends a worker's spill file (per split: dense, sparse, labels rows, raw) with
        ``os.copy_file_range``: the kernel copies file to file, no bytes pass through Python."""
        with open(path, "rb") as src:
            pos = 0
            for s, n in zip(SPLITS, rows):
                for kind in ("dense", "sparse", "labels"):
                    f = self.files[(s, kind)]
                    nbytes = n * int(np.prod(f.row_shape)) * f.dtype.itemsize
                    if nbytes:
                        f.append_raw(src.fileno(), pos, nbytes, n)
                        pos += nbytes
                    elif n:
                        f.rows += n  # zero-width rows (no dense features): nothing to copy

    def preallocate(self, rows: dict[str, int]) -> None:
        """Sizes every file for ``rows`` rows (zeros) so that workers can fill them in place."""
        for f in self.files.values():
            split = f.path.name.split("_", 1)[0]
            with _writing(f.path):
                f.fh.truncate(NpyAppender.HEADER_BYTES + rows[split] * int(np.prod(f.row_shape)) * f.dtype.itemsize)
                f.rows = rows[split]
                f.fh.seek(0)
                f.fh.write(f._header(f.rows))
                f.fh.flush()

    def rows(self) -> dict[str, int]:
        return {s: self.files[(s, "labels")].rows for s in SPLITS}

    def _close_all(self) -> list[OSError]:
        """Closes every file, whatever fails: a full disk fails each close (its header and
        buffer are written then), and stopping at the first one leaked the others."""
        errors = []
        for f in self.files.values():
            if f.fh.closed:
                continue
            try:
                f.close()
            except OSError as e:
                errors.append(e)
        return errors

    def commit(self) -> None:
        """Closes all files, then renames each to its final name (meta.json comes after).

        Raises one OSError for all the files that failed to close: the first one's errno
        and file, and how many failed."""
        errors = self._close_all()
        if errors:
            e = errors[0]
            more = f" (and {len(errors) - 1} more of the {len(self.files)} output files)" if len(errors) > 1 else ""
            raise OSError(e.errno, f"{e.strerror or one_line(e)}{more}", e.filename)
        for (s, kind), f in self.files.items():
            f.path.replace(self.out / f"{s}_{kind}.npy")

    def abort(self) -> list[OSError]:
        """Closes and deletes every file (a failed run); returns the close errors, which only
        repeat the error that stopped the run."""
        errors = self._close_all()
        for f in self.files.values():
            try:
                f.path.unlink(missing_ok=True)
            except OSError as e:
                errors.append(e)
        return errors


# ----------------------------------------------------------------------------- output staging

STAGING_INFIX = ".convert-"  # staging dir of output <parent>/<name>: <parent>/.<name>.convert-<pid>-<hex>
OWNER_FILE = ".owner"  # in a staging dir: the owner's pid, flock'ed by it for as long as it runs
PREVIOUS = ".previous"  # two-rename swap: the old conversion, parked inside the new one for a moment
KINDS = ("dense", "sparse", "labels")
OUTPUT_NAMES = frozenset([META_FILE] + [f"{s}_{k}.npy" for s in SPLITS for k in KINDS])
# the converter's scratch names; in an output dir only leftovers of a killed run (or of older versions)
SCRATCH_NAMES = frozenset([".convert_cache", OWNER_FILE, PREVIOUS] + [f"{n}.tmp" for n in OUTPUT_NAMES
                                                                       if n != META_FILE])
_ACTIVE_STAGING: set[str] = set()  # staging dirs this process is converting into right now
_LOCK_FDS: set[int] = set()  # their lock descriptors: forked pool workers close their copies


def _owned(name: str) -> bool:
    """Whether an output-dir entry is the converter's (replaced by a new conversion) or the user's
    (kept: moved into the new conversion)."""
    return name in OUTPUT_NAMES or name in SCRATCH_NAMES


@dataclass
class Staging:
    """Where a run writes: ``dir`` beside the output ``out`` (a real path), locked by ``lock_fd``."""

    out: Path
    dir: Path
    lock_fd: int | None


def _staging_pid(d: Path, out: Path) -> int | None:
    m = re.fullmatch(re.escape(f".{out.name}{STAGING_INFIX}") + r"(\d+)-[0-9a-f]+", d.name)
    return int(m.group(1)) if m else None


def _staging_alive(d: Path, pid: int) -> bool:
    """Whether the run that made staging dir ``d`` still runs: its flock on ``.owner`` (survives
    pid reuse), else its pid (before ``.owner`` exists, or while a swap has removed it)."""
    if fcntl is not None:
        try:
            fd = os.open(d / OWNER_FILE, os.O_RDWR)
        except FileNotFoundError:
            fd = -1
        except OSError:
            return True  # cannot tell: leave it alone
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return False
            except OSError:
                return True
            finally:
                os.close(fd)  # releases the lock we may have taken
    if pid == os.getpid():
        return str(d) in _ACTIVE_STAGING
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover(d: Path, out: Path) -> None:
    """Removes the staging dir ``d`` of a dead run, first putting back what belongs to ``out``.

    A run killed between the two renames of the fallback swap left the old conversion at
    ``d/.previous`` and no ``out``: it goes back.  A run killed while moving the user's
    files into ``d`` (just before the swap) left some there: they go back too.  After a
    completed swap ``d`` holds only the old conversion's own files, which are deleted.
    """
    prev = d / PREVIOUS
    if prev.is_dir() and not out.exists():
        for e in list(d.iterdir()):
            if not _owned(e.name) and not (prev / e.name).exists():
                os.rename(e, prev / e.name)
        os.rename(prev, out)
    elif out.is_dir():
        for e in list(d.iterdir()):
            if not _owned(e.name) and not os.path.lexists(out / e.name):
                os.rename(e, out / e.name)
    shutil.rmtree(d, ignore_errors=True)


def open_staging(output: str) -> Staging:
    """Checks the output path, cleans up after killed runs, and makes this run's staging dir.

    Raises ``InputError`` (before any work) for a path that is or lies below a file, a
    mount point (which cannot be swapped), an unwritable parent, or an output another
    live run is converting into.
    """
    if not output:
        raise InputError("--output is empty")
    out = Path(os.path.realpath(output))  # a symlinked output: convert into (and swap) its target
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                if p == out:
                    raise InputError(f"{output}: is a file, not a directory")
                raise InputError(f"{p}: is a file, not a directory (in --output {output})")
            break
    if out.exists() and os.path.ismount(out):
        raise InputError(f"{output}: is a mount point; the converter swaps the whole output directory, "
                         "so give a directory inside it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{e.filename or out.parent}: cannot create ({e.strerror or one_line(e)})") from None
    live = []
    for d in out.parent.glob(f".{glob_escape(out.name)}{STAGING_INFIX}*"):
        pid = _staging_pid(d, out)
        if pid is None or not d.is_dir() or d.is_symlink():
            continue
        if _staging_alive(d, pid):
            live.append((d, pid))
            continue
        try:
            _recover(d, out)
        except OSError:  # cannot repair it now (permissions?): never fatal, the next run tries again
            pass
    if live:
        d, pid = live[0]
        raise InputError(f"{output}: another conversion into it is running (pid {pid}, writing {d}); "
                         "wait for it to finish or stop it")
    if out.is_dir():  # leftovers in the output itself: a killed fallback swap, or older converter versions
        for name in SCRATCH_NAMES:
            q = out / name
            if q.is_dir() and not q.is_symlink():
                shutil.rmtree(q, ignore_errors=True)
            elif q.exists() or q.is_symlink():
                q.unlink(missing_ok=True)
    d = out.parent / f".{out.name}{STAGING_INFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(d)
    except OSError as e:
        raise InputError(f"{out.parent}: cannot create the staging directory {d.name} "
                         f"({e.strerror or one_line(e)}); the converter writes the new conversion beside "
                         f"{output} and swaps it in when complete") from None
    _ACTIVE_STAGING.add(str(d))
    lock_fd = None
    try:
        lock_fd = os.open(d / OWNER_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        _LOCK_FDS.add(lock_fd)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        if fcntl is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
    except OSError as e:
        close_staging(Staging(out, d, lock_fd), discard=True)
        raise InputError(f"{d}: cannot write ({e.strerror or one_line(e)})") from None
    return Staging(out, d, lock_fd)


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped (an output dir may be called ``run[1]``)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps the paths ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where that is not available (other systems, old kernels or C libraries,
    filesystems without it); raises OSError on a real failure."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(st: Staging) -> None:
    """Makes the complete conversion in ``st.dir`` the output, in one rename.

    An existing output dir is exchanged with the staging dir (atomic: a reader sees the
    old or the new conversion, never a mix and never none), then deleted.  Its entries
    that are not the converter's are first moved into the new conversion, and its mode
    bits carried over.  On any failure before the swap, the moved entries go back.
    """
    (st.dir / OWNER_FILE).unlink(missing_ok=True)  # not part of the output; our fd keeps the lock
    if not st.out.is_dir():
        os.rename(st.dir, st.out)
        return
    moved: list[str] = []
    try:
        for e in list(os.scandir(st.out)):
            if not _owned(e.name):
                os.rename(e.path, st.dir / e.name)
                moved.append(e.name)
        os.chmod(st.dir, stat.S_IMODE(os.stat(st.out).st_mode))
        if _exchange(st.dir, st.out):
            old = st.dir
        else:  # two renames; a run killed between them is repaired by the next one (_recover)
            os.rename(st.out, st.dir / PREVIOUS)
            try:
                os.rename(st.dir, st.out)
            except BaseException:
                os.rename(st.dir / PREVIOUS, st.out)
                raise
            old = st.out / PREVIOUS
    except BaseException:
        for name in moved:
            if not os.path.lexists(st.out / name):
                os.rename(st.dir / name, st.out / name)
        raise
    shutil.rmtree(old, ignore_errors=True)


def close_staging(st: Staging, discard: bool) -> None:
    """Releases the staging lock; ``discard`` deletes the staging dir (a failed run)."""
    if discard:
        shutil.rmtree(st.dir, ignore_errors=True)
    _ACTIVE_STAGING.discard(str(st.dir))
    if st.lock_fd is not None:
        _LOCK_FDS.discard(st.lock_fd)
        os.close(st.lock_fd)
        st.lock_fd = None


# ----------------------------------------------------------------------------- driver


@dataclass
class BadRowLog:
    """Counts rows and malformed rows; keeps the first few as ``file:line: reason``."""

    rows: int = 0
    bad: int = 0
    examples: list[str] = field(default_factory=list)
    lines_before: dict[int, int] = field(default_factory=dict)  # file_idx -> lines seen so far

    def add(self, s: ChunkStats) -> None:
        base = self.lines_before.get(s.task.file_idx, 0)
        self.lines_before[s.task.file_idx] = base + s.n_lines
        self.rows += s.n_rows
        self.bad += s.bad_count
        for line, why in s.bad_examples:
            if len(self.examples) < MAX_REPORTED:
                self.examples.append(f"{s.task.path}:{base + line}: {why}")

    def check(self, max_fraction: float, files: list[str] | None = None) -> None:
        if self.rows == 0:
            shown = ", ".join((files or [])[:3]) + (f" and {len(files) - 3} more" if files and len(files) > 3 else "")
            raise InputError(f"{shown or 'the input files'}: no data rows (only blank lines or a header)")
        if self.bad == self.rows:  # even --max-bad-fraction 1 must not "succeed" with an empty dataset
            raise InputError(f"all {self.rows} rows malformed, nothing to convert; first: "
                             f"{self.examples[0] if self.examples else '?'}", exit_code=1)
        frac = self.bad / self.rows
        if frac > max_fraction:
            raise InputError(
                f"{self.bad} of {self.rows} rows malformed ({100 * frac:.3g}% > --max-bad-fraction "
                f"{100 * max_fraction:.3g}%); first: {self.examples[0] if self.examples else '?'}",
                exit_code=1,
            )


def _resolve_files(cfg: ConvertConfig) -> tuple[list[str], list[int]]:
    if cfg.split_files:
        files, splits = [], []
        for s, paths in cfg.split_files.items():
            for p in paths:
                files.append(p)
                splits.append(SPLITS.index(s))
        return files, splits
    return list(cfg.inputs), [-1] * len(cfg.inputs)


def _build_vocab(
    counts: list[list[tuple[np.ndarray, np.ndarray]]], min_count: int, engine: str, pool: Any = None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int]]:
    """Per field: (sorted keys, their ids) for values with train count >= min_count.

    Ids 1..V go by descending count (ties by key), so frequent values get small
    ids; 0 is OOV.  num_embeddings = V + 1.  With a thread pool the fields are built
    in parallel (the merge kernel and numpy's sorts release the GIL); this step runs
    between the passes, while the workers would otherwise wait.
    """

    def field_vocab(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        k, c = _merge_counts(parts, engine)
        keep = c >= min_count
        k, c = k[keep], c[keep]
        order = np.lexsort((k, -c))
        ids = np.empty(k.size, dtype=np.int32)
        ids[order] = np.arange(1, k.size + 1, dtype=np.int32)
        by_key = np.argsort(k)
        return k[by_key], ids[by_key]

    threads = isinstance(pool, ThreadPool)
    vocab = pool.map(field_vocab, counts, chunksize=1) if threads else [field_vocab(parts) for parts in counts]
    return vocab, [int(k.size) + 1 for k, _ in vocab]


def _merge_counts(parts: list[tuple[np.ndarray, np.ndarray]], engine: str) -> tuple[np.ndarray, np.ndarray]:
    """Sums counts of equal keys: the C kernel's hash aggregation, or arrow's group-by (~10x slower)."""
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    if engine == "native":
        from recsys.data.fast_parse import sum_by_key

        return sum_by_key(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    t = pa.table({"k": np.concatenate([p[0] for p in parts]), "c": np.concatenate([p[1] for p in parts])})
    g = t.group_by("k").aggregate([("c", "sum")])
    return g.column("k").to_numpy(), g.column("c_sum").to_numpy()


class _Counter:
    """Per-field train counts, compacted whenever the pending chunk lists grow large."""

    COMPACT_AT = 8_000_000

    def __init__(self, num_fields: int, engine: str) -> None:
        self.parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(num_fields)]
        self.pending = 0
        self.engine = engine

    def add(self, counts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for f, kc in enumerate(counts):
            self.parts[f].append(kc)
            self.pending += kc[0].size
        if self.pending > self.COMPACT_AT:
            self.parts = [[_merge_counts(p, self.engine)] for p in self.parts]
            self.pending = sum(p[0][0].size for p in self.parts)

    def final(self) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        return self.parts


MAX_HASH = 2**31  # ids are int32: --hash N gives ids 0..N-1


def check_config(cfg: ConvertConfig) -> tuple[RawFormat, int, tuple[float, float, float]]:
    """Refuses every bad flag with one line, before any file is read or written.

    Returns (format, min_count, split fractions).  Why all here and not in argparse:
    ``convert`` is also called as a library, and a flag that only fails mid-run (a
    negative ``--seed`` in numpy's RNG) or silently misbehaves (``--workers 0``,
    ``--max-bad-fraction -1`` shown as "-100%", ``--hash 3000000000`` overflowing int32
    ids) must be refused the same way from both.
    """
    if cfg.dataset not in FORMATS:
        raise InputError(f"unknown dataset {cfg.dataset!r}; choose from {', '.join(FORMATS)}")
    fmt = FORMATS[cfg.dataset]
    if cfg.numeric not in ("discretize", "dense"):
        raise InputError(f"--numeric must be discretize or dense, got {cfg.numeric!r}")
    if cfg.numeric == "dense" and not any(c.kind == "num" for c in fmt.columns):
        raise InputError(f"--numeric dense: {fmt.name} has no numeric features")
    if cfg.hash_size is not None and cfg.min_count is not None:
        raise InputError("give --min-count or --hash, not both")
    if cfg.hash_size is not None and not 1 <= cfg.hash_size <= MAX_HASH:
        raise InputError(f"--hash must be in 1..{MAX_HASH} (ids are int32), got {cfg.hash_size}")
    if cfg.min_count is not None and cfg.min_count < 1:
        raise InputError(f"--min-count must be >= 1 (values seen fewer times in train get the OOV id 0), "
                         f"got {cfg.min_count}")
    if cfg.workers < 1:
        raise InputError(f"--workers must be >= 1, got {cfg.workers}")
    if not (math.isfinite(cfg.chunk_mb) and cfg.chunk_mb > 0):
        raise InputError(f"--chunk-mb must be a positive number of megabytes, got {cfg.chunk_mb}")
    if not 0.0 <= cfg.max_bad_fraction <= 1.0:  # NaN fails too
        raise InputError(f"--max-bad-fraction must be a fraction in [0, 1], got {cfg.max_bad_fraction}")
    if cfg.seed < 0:
        raise InputError(f"--seed must be >= 0, got {cfg.seed}")
    fracs = tuple(float(x) for x in cfg.split)
    if len(fracs) != 3 or not all(math.isfinite(x) and x >= 0 for x in fracs) or abs(sum(fracs) - 1.0) > 1e-6:
        raise InputError(f"--split must be three non-negative fractions summing to 1, got {cfg.split}")
    if cfg.hash_size is None and (not cfg.split_files and fracs[0] == 0 or cfg.split_files and
                                  not cfg.split_files.get("train")):
        raise InputError("no train rows to count the vocabularies on (give train a share of --split or "
                         "--train files, or use --hash N)")
    if cfg.split_files and (set(cfg.split_files) - set(SPLITS)):
        raise InputError(f"unknown splits {sorted(set(cfg.split_files) - set(SPLITS))}; use {', '.join(SPLITS)}")
    min_count = fmt.default_min_count if cfg.min_count is None else cfg.min_count
    return fmt, min_count, fracs  # type: ignore[return-value]


def _os_error_line(e: OSError, st: Staging, output: str) -> str:
    """One line for an OSError of a run: a write into the staging dir is reported against the
    output (it is what the user named) and says the output was kept; a read names its file."""
    what = e.strerror or one_line(e)
    name = str(e.filename) if e.filename is not None else None
    if name is None:
        return f"{output}: {what}; {output} left as it was"
    if name.startswith(str(st.dir)):
        rel = os.path.relpath(name, st.dir)
        return f"{output}: cannot write {rel}: {what}; {output} left as it was"
    return f"{name}: {what}"


def convert(cfg: ConvertConfig, log: Callable[[str], None] = print) -> Schema:
    """Runs the whole conversion; returns the written schema.  Raises InputError on bad input.

    Flags, inputs and the output path are checked before any work; the conversion is
    written to a staging dir and swapped in only when complete (see "Atomic" above), so
    the previous output is left as it was by every failure.
    """
    fmt, min_count, fracs = check_config(cfg)
    files, file_splits = _resolve_files(cfg)
    check_inputs(fmt, files)
    st = open_staging(cfg.output)
    ok = False
    try:
        schema, rows, elapsed = _convert_into(st.dir, cfg, fmt, files, file_splits, min_count, fracs, log)
        swap_in(st)
        ok = True
    except OSError as e:
        raise InputError(_os_error_line(e, st, cfg.output)) from None
    finally:
        close_staging(st, discard=not ok)
    log(f"{fmt.name}: {sum(rows.values())} rows -> {cfg.output} ({', '.join(f'{s}={n}' for s, n in rows.items())}) "
        f"in {elapsed:.1f}s ({sum(rows.values()) / max(elapsed, 1e-9):,.0f} rows/s)")
    return schema


def _convert_into(
    out: Path, cfg: ConvertConfig, fmt: RawFormat, files: list[str], file_splits: list[int], min_count: int,
    fracs: tuple[float, float, float], log: Callable[[str], None],
) -> tuple[Schema, dict[str, int], float]:
    """The conversion proper, written into the (staging) dir ``out``: (schema, rows per split, seconds)."""
    sparse_names, dense_names = fmt.feature_names(cfg.numeric)
    cache_dir = out / ".convert_cache"
    cache_dir.mkdir()
    cpu0 = time.process_time()
    engine, load_seconds = resolve_engine(cfg.engine, fmt.name, log=log)
    load_cpu = time.process_time() - cpu0
    job = Job(fmt.name, cfg.numeric, fracs, cfg.seed, cfg.hash_size, str(cache_dir), str(out), engine=engine,
              spill=cfg.workers > 1 and engine != "native")
    chunk_bytes = max(1 << 16, int(cfg.chunk_mb * (1 << 20)))
    # gzip chunks are counted in decompressed bytes, whose total is unknown up front
    total_bytes = None if any(_is_gz(p) for p in files) else sum(os.path.getsize(p) for p in files)
    t0 = time.perf_counter()
    phases: dict[str, float] = {}  # wall seconds per phase, in meta.json: where a run's time went
    pool = make_pool(cfg.workers, engine)
    writer = SplitWriter(out, len(dense_names), len(sparse_names))
    bad = BadRowLog()
    try:
        tasks = make_tasks(files, file_splits, chunk_bytes)
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"{fmt.name}: read", disable=not cfg.progress)
        if cfg.hash_size is not None:
            for res in ordered_map(run_hash_chunk, tasks, job, pool, cfg.workers):
                bad.add(res.stats)
                if res.spill is not None:
                    writer.append_spill(res.spill, res.spill_rows)
                    os.remove(res.spill)
                else:
                    writer.append(res.parts)
                bar.update(res.stats.n_bytes)
            bar.close()
            bad.check(cfg.max_bad_fraction, files)
            sizes = [cfg.hash_size] * len(sparse_names)
            phases["hash_pass"] = time.perf_counter() - t0
        else:
            counter = _Counter(len(sparse_names), job.engine)
            caches: list[tuple[str, list[int]]] = []
            split_rows = [0] * len(SPLITS)
            for r in ordered_map(run_count_chunk, tasks, job, pool, cfg.workers):
                bad.add(r.stats)
                counter.add(r.counts)
                caches.append((r.cache_file, list(split_rows)))  # this chunk's row offsets
                split_rows = [a + b for a, b in zip(split_rows, r.split_rows)]
                bar.update(r.stats.n_bytes)
            bar.close()
            bad.check(cfg.max_bad_fraction, files)
            phases["count_pass"] = time.perf_counter() - t0
            vocab, sizes = _build_vocab(counter.final(), min_count, job.engine, pool)
            vocab_path = str(cache_dir / "vocab.npz")
            with _writing(vocab_path):
                np.savez(vocab_path, **{f"keys{f}": k for f, (k, _) in enumerate(vocab)},
                         **{f"ids{f}": i for f, (_, i) in enumerate(vocab)})
            del vocab, counter
            job2 = replace(job, vocab_path=vocab_path)
            writer.preallocate(dict(zip(SPLITS, split_rows)))
            phases["vocabulary"] = time.perf_counter() - t0 - phases["count_pass"]
            if split_rows[0] == 0:
                log("warning: no good train rows: the vocabularies are empty and every id is the OOV id 0")
            for _ in tqdm(ordered_map(run_map_chunk, caches, job2, pool, cfg.workers), total=len(caches),
                          unit="chunk", desc=f"{fmt.name}: map", disable=not cfg.progress):
                pass
            phases["map_pass"] = time.perf_counter() - t0 - phases["count_pass"] - phases["vocabulary"]
        rows = writer.rows()
        writer.commit()
    except ChunkFault as e:  # chunks come in order: every line before this chunk is counted
        if pool is not None:
            pool.terminate()
        writer.abort()
        line = bad.lines_before.get(e.file_idx, 0) + e.line
        raise InputError(f"{files[e.file_idx]}:{line}: {e.what}", exit_code=1) from None
    except BaseException:
        if pool is not None:
            pool.terminate()
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        _VOCAB_MEMO.clear()
        _TABLE_MEMO.clear()
        shutil.rmtree(cache_dir, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    for line in bad.examples:
        log(f"warning: malformed row skipped: {line}")
    if bad.bad:
        log(f"warning: skipped {bad.bad} malformed rows of {bad.rows} ({100 * bad.bad / bad.rows:.3g}%)")
    preprocessing: dict[str, Any] = {
        "converter": f"data_prep/{fmt.name}_to_npy.py",
        "inputs": files,
        "split_mode": "files" if cfg.split_files else "random",
        "split": list(fracs) if not cfg.split_files else None,
        "split_files": cfg.split_files or None,
        "seed": cfg.seed,
        "vocab": "hash" if cfg.hash_size is not None else "min_count",
        "min_count": None if cfg.hash_size is not None else min_count,
        "hash_size": cfg.hash_size,
        "vocab_counted_on": None if cfg.hash_size is not None else "train",
        "oov_id": None if cfg.hash_size is not None else 0,
        "numeric": cfg.numeric if fmt.name == "criteo" else None,
        "numeric_transform": (
            ("floor(ln(v)^2) if v > 2 else int(v); empty is its own token" if cfg.numeric == "discretize"
             else "log(1 + max(v, 0)); empty -> 0") if fmt.name == "criteo" else None
        ),
        "chunk_bytes": chunk_bytes,
        "engine": job.engine,
        # C kernels' build (first run of a source version) or load, before "seconds" starts
        "kernel_load_seconds": round(load_seconds, 3),
        "kernel_load_cpu_seconds": round(load_cpu, 3),
        "rows_read": bad.rows,
        "bad_rows": bad.bad,
        "max_bad_fraction": cfg.max_bad_fraction,
        "seconds": round(elapsed, 3),
        "phase_seconds": {k: round(v, 3) for k, v in phases.items()},
    }
    schema = Schema(
        dataset=fmt.name,
        sparse_features=tuple(SparseFeature(n, s) for n, s in zip(sparse_names, sizes)),
        dense_features=tuple(dense_names),
        splits=rows,
        preprocessing=preprocessing,
    )
    with _writing(out / META_FILE):
        schema.save(out)
    return schema, rows, elapsed


# ----------------------------------------------------------------------------- CLI


def build_parser(dataset: str) -> argparse.ArgumentParser:
    fmt = FORMATS[dataset]
    script = f"data_prep/{dataset}_to_npy.py"
    ex = {
        "criteo": "day_0.gz day_1.gz",
        "avazu": "train.gz",
        "kdd12": "training.txt",
    }[dataset]
    p = argparse.ArgumentParser(
        prog=script,
        description=(
            f"Convert raw {dataset} logs to recsys npy arrays + meta.json. Vocabularies are counted "
            f"on the train split only (values seen < --min-count times -> OOV id 0), or --hash N."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            f"  python {script} --input {ex} --output data/{dataset}\n"
            f"  python {script} --input {ex} --output data/{dataset}_h --hash 1000000 --workers 4\n"
            f"  python {script} --train {ex.split()[0]} --val {ex.split()[0]} --test {ex.split()[0]} "
            f"--output data/{dataset}_days\n"
        ),
    )
    p.add_argument("--input", nargs="+", default=[], metavar="FILE", help="raw files (.gz ok), split randomly")
    p.add_argument("--train", nargs="+", default=[], metavar="FILE", help="explicit train files")
    p.add_argument("--val", nargs="+", default=[], metavar="FILE", help="explicit validation files")
    p.add_argument("--test", nargs="+", default=[], metavar="FILE", help="explicit test files")
    p.add_argument("--output", required=True, metavar="DIR")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--min-count", type=int, default=None,
                   help=f"min train count to get an own id (default {fmt.default_min_count})")
    g.add_argument("--hash", type=int, default=None, metavar="N",
                   help="map values by a stable hash mod N (single pass, bounded memory)")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    if any(c.kind == "num" for c in fmt.columns):
        p.add_argument("--numeric", choices=["discretize", "dense"], default="discretize",
                       help="discretize: floor(ln(v)^2) tokens (paper); dense: log(1+v) floats")
    p.add_argument("--max-bad-fraction", type=float, default=0.001)
    p.add_argument("--chunk-mb", type=float, default=16.0, help="bytes per parallel chunk (MB)")
    p.add_argument("--engine", choices=["auto", "native", "arrow"], default="auto",
                   help="parser: native = compiled single-pass C scanner (Criteo; auto picks it when a C "
                        "compiler is there to build it once), arrow = pyarrow CSV reader (all datasets)")
    p.add_argument("--no-progress", action="store_true")
    return p


class Terminated(BaseException):
    """SIGTERM in a CLI run: unwinds like Ctrl-C, so the staging dir is removed (``kill -9``
    cannot be caught; the next run removes what it leaves)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def main(dataset: str, argv: list[str] | None = None) -> int:
    """CLI entry: one-line errors; exit code 2 for unusable flags, input or output, 1 when the
    data fails a check during the run (too many bad rows), 130/143 when interrupted/terminated.
    Whatever fails, the previous conversion in --output is left as it was."""
    given = list(sys.argv[1:] if argv is None else argv)
    fixed: list[str] = []
    while given:  # "--split -0.1,0.6,0.5": argparse would take the value for a flag; say what is wrong
        a = given.pop(0)
        if a == "--split" and given and re.match(r"-[0-9.]", given[0]):
            a = f"--split={given.pop(0)}"
        fixed.append(a)
    args = build_parser(dataset).parse_args(fixed)
    prog = f"{dataset}_to_npy"
    explicit = {s: getattr(args, s) for s in SPLITS if getattr(args, s)}
    if args.input and explicit:
        print(f"{prog}: error: give either --input or --train/--val/--test, not both", file=sys.stderr)
        return 2
    try:
        split = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        print(f"{prog}: error: --split wants three fractions like 0.8,0.1,0.1, got {args.split!r}", file=sys.stderr)
        return 2
    cfg = ConvertConfig(
        dataset=dataset, output=args.output, inputs=args.input, split_files=explicit, split=split,  # type: ignore[arg-type]
        seed=args.seed, min_count=args.min_count, hash_size=args.hash,
        numeric=getattr(args, "numeric", "discretize"), workers=args.workers,
        max_bad_fraction=args.max_bad_fraction, chunk_mb=args.chunk_mb, progress=not args.no_progress,
        engine=args.engine,
    )
    _keep_freed_memory()  # this process is ours alone (a CLI run): the in-process worker gains too
    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        convert(cfg, log=lambda s: print(s, file=sys.stderr))
    except InputError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {args.output} left as it was", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated; {args.output} left as it was", file=sys.stderr)
        return 143
    except OSError as e:  # outside the run proper (convert names the files of the run's own errors)
        print(f"{prog}: error: {e.filename or args.output}: {e.strerror or one_line(e)}", file=sys.stderr)
        return 2
    except pa.ArrowException as e:  # a parse failure we did not anticipate: still one line
        print(f"{prog}: error: cannot parse input: {one_line(str(e).splitlines()[0])}", file=sys.stderr)
        return 2
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, old_term)
    return 0
