"""Input files -> chunks: the checks before any work, the chunk tasks and reading a chunk's bytes.

Why chunks by bytes: chunk boundaries depend only on ``--chunk-mb``, so the random split
(seeded by file and chunk index) and hence the output never depend on ``--workers``.  A plain
file's chunk is a byte range its worker reads itself (``pread``); a gzip stream cannot be
seeked, so its chunks are decompressed here and the bytes travel with the task.

Example::

    check_inputs(FORMATS["criteo"], ["day_0.gz"])           # InputError (exit 2) on a bad file
    for task in make_tasks(["day_0.tsv"], [-1], 16 << 20):
        data = read_task_bytes(task)                        # the lines that start in the range
"""
from __future__ import annotations

import codecs
import gzip
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from recsys.data.convert.errors import InputError
from recsys.data.convert.formats import RawFormat
from recsys.errors import one_line


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


def is_gz(path: str) -> bool:
    """Whether ``path`` is read as gzip (by its name, as the user was told to name it)."""
    return path.endswith(".gz")


def _open_text(path: str) -> gzip.GzipFile | io.BufferedReader:
    return gzip.open(path, "rb") if is_gz(path) else open(path, "rb")


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
        if is_gz(path):
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

