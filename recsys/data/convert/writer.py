"""The nine output arrays (3 splits x dense/sparse/labels): streamed ``.npy`` files under temp names.

Why streamed with a fixed header: the row count is not known until the last chunk, and the
converter's memory must stay at one chunk per worker whatever the input size.  Each file gets
a 128-byte header with a placeholder shape, rows are appended raw (or written in place by the
workers, once pass 1 has given every chunk its row offsets: ``preallocate``), and the true
header goes in on ``close``.

Example::

    w = SplitWriter(staging_dir, num_dense=13, num_sparse=26)
    w.append([(dense, sparse, labels)] * 3)   # per split: float32 [n, 13], int32 [n, 26], float32 [n]
    w.commit()                               # train_dense.npy ... test_labels.npy
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import numpy.typing as npt

from recsys.data.convert.splits import SPLITS, SplitRows
from recsys.errors import one_line


def raw_bytes(arr: np.ndarray) -> memoryview:
    """The array's bytes, C order, without a ``tobytes`` copy (one copy only if not contiguous)."""
    return np.ascontiguousarray(arr).reshape(-1).data.cast("B")


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Names ``path`` in an OSError raised inside (a failed ``write`` has no filename), so that
    a full disk or ``RLIMIT_FSIZE`` (EFBIG) is reported against the file being written."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or one_line(e), str(path)) from None
        raise


class NpyAppender:
    """Streams rows into ``path`` (a ``.npy``) without knowing the row count up front.

    Writes a fixed-size 128-byte header with a placeholder shape, appends raw
    rows, and rewrites the header with the true shape on ``close``; np.load reads
    the space-padded header like any other.  Memory stays at one chunk.
    """

    HEADER_BYTES = 128

    def __init__(self, path: Path, dtype: npt.DTypeLike, row_shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.rows = 0
        with writing(path):
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
            with writing(self.path):
                self.fh.write(raw_bytes(arr))  # no tobytes copy
        self.rows += rows.shape[0]

    def append_raw(self, src_fd: int, offset: int, nbytes: int, rows: int) -> None:
        """Appends ``rows`` rows stored as raw bytes at ``offset`` of the file ``src_fd``."""
        with writing(self.path):
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
        with writing(self.path):
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

    def append(self, parts: SplitRows) -> None:
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
            with writing(f.path):
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

