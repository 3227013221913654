"""The memmap reader: one split of a dataset, opened in place, read a few rows at a time.

Why memory maps and not TorchRec's ``InMemoryBinaryCriteoIterDataPipe``: that reader
``np.load``s every file on every rank; this one maps the files and each rank touches only its
own rows, so RAM stays at a few batches whatever the split size.

On-disk layout (written by ``data_prep/*_to_npy.py``): ``meta.json`` (a ``Schema``) and per
split ``{split}_dense.npy`` float32 [N, Dd] (may be absent when Dd == 0),
``{split}_sparse.npy`` int [N, F], ``{split}_labels.npy`` float32 [N]; or, when
``schema.preprocessing["parts"][split]`` lists the rows of each part,
``{split}_{dense|sparse|labels}.{k:05d}.npy`` for k = 0, 1, ...  Other layouts (TorchRec's
day files, ``recsys.data.torchrec_layout``) open their files with :func:`open_file_triple`
and hand the parts to :meth:`NpySplit.from_parts`.

Every read checks what would otherwise fail deep inside fbgemm or train to NaN: ids outside
``[0, num_embeddings)`` and non-finite dense values or labels, each named by file and row.

Example::

    s = NpySplit("data/criteo", "val")
    dense, sparse, labels = s.read(np.arange(0, 100))   # [100, Dd] f32, [100, F] i64, [100] f32
    batch = s.batch(slice(0, 100))                       # torchrec Batch(dense, KJT, labels)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, Union

import numpy as np
import torch
from torchrec.datasets.utils import Batch

from recsys.data.batch import batch_from_arrays
from recsys.data.criteo_layout import has_day_files
from recsys.data.errors import LoaderError
from recsys.data.schema import META_FILE, Schema

Rows = Union[np.ndarray, slice]  # sorted int64 row numbers, or a step-1 slice


def _open_npy(path: Path, what: str) -> np.ndarray:
    if not path.exists():
        raise LoaderError(f"{path}: no such file ({what})")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LoaderError(f"{path}: not a readable .npy file ({e})") from None


def _take(arr: np.ndarray, idx: Rows) -> np.ndarray:
    """A private in-RAM copy: a slice of a memmap is a lazy read-only view, which would
    defer the disk read past the prefetch thread and alias the file from torch."""
    return np.array(arr[idx]) if isinstance(idx, slice) else np.asarray(arr[idx])


@dataclass(frozen=True)
class FilePart:
    """Rows ``[lo, lo + n)`` of one file triple, at ``start`` in the split."""

    start: int
    n: int
    lo: int
    dense: np.ndarray | None  # None when the schema has no dense features
    sparse: np.ndarray
    labels: np.ndarray
    sparse_path: Path
    dense_path: Path | None = None  # for messages: the files a bad value came from
    labels_path: Path | None = None


Segment = tuple[FilePart, Rows]  # rows of one part, as indices into its files


def open_file_triple(
    schema: Schema,
    dense_path: Path | None,
    sparse_path: Path,
    labels_path: Path,
    what: str,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Opens and shape-checks one (dense, sparse, labels) triple; errors name the file.

    Returns memmaps: dense [N, Dd] float (None when Dd == 0), sparse [N, F] int, labels [N].
    """
    F, Dd = schema.num_sparse, schema.num_dense
    sparse = _open_npy(sparse_path, what)
    if sparse.ndim != 2 or sparse.shape[1] != F:
        raise LoaderError(f"{sparse_path}: shape {list(sparse.shape)}, expected [N, {F}] ({F} sparse features in the schema)")
    if not np.issubdtype(sparse.dtype, np.integer):
        raise LoaderError(f"{sparse_path}: dtype {sparse.dtype}, expected an integer type")
    n = sparse.shape[0]
    labels = _open_npy(labels_path, what)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise LoaderError(f"{labels_path}: shape {list(labels.shape)}, expected [{n}] (rows of {sparse_path.name})")
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_):
        raise LoaderError(f"{labels_path}: dtype {labels.dtype}, expected a numeric type")
    dense = None
    if dense_path is not None and (Dd > 0 or dense_path.exists()):
        dense = _open_npy(dense_path, what)
        if dense.ndim == 1 and Dd == 0 and dense.shape[0] == n:
            dense = None
        elif dense.ndim != 2 or dense.shape != (n, Dd):
            raise LoaderError(f"{dense_path}: shape {list(dense.shape)}, expected [{n}, {Dd}] ({Dd} dense features in the schema)")
        elif not np.issubdtype(dense.dtype, np.floating):
            raise LoaderError(f"{dense_path}: dtype {dense.dtype}, expected a float type")
    if Dd > 0 and dense is None:
        raise LoaderError(f"{sparse_path.parent}: no dense file for {what}")
    return (dense if Dd > 0 else None), sparse, labels


class NpySplit:
    """One split of a dataset, memory-mapped; reads only the rows asked for.

    Example::

        s = NpySplit("data/criteo", "val")
        s.num_rows, s.schema.sparse_names
        dense, sparse, labels = s.read(np.arange(0, 100))   # [100, Dd], [100, F], [100]
        batch = s.batch(slice(0, 100))                       # torchrec Batch
    """

    def __init__(self, data_dir: str | Path, split: str) -> None:
        d = Path(data_dir)
        if not d.is_dir():
            raise LoaderError(f"{d}: no such directory")
        if not (d / META_FILE).exists() and has_day_files(d):
            raise LoaderError(
                f"{d}: no {META_FILE} but day_0_sparse.npy is there; this is TorchRec's Criteo layout, "
                "open it with recsys.data.torchrec_layout.open_torchrec_criteo"
            )
        schema = Schema.load(d)
        meta = d / META_FILE
        if schema.splits and split not in schema.splits:
            raise LoaderError(f"{meta}: no split {split!r} (splits: {sorted(schema.splits)})")
        parts_meta = schema.preprocessing.get("parts", {}) or {}

        def paths(suffix: str) -> tuple[Path, Path, Path]:
            return d / f"{split}_dense{suffix}.npy", d / f"{split}_sparse{suffix}.npy", d / f"{split}_labels{suffix}.npy"

        counts = parts_meta.get(split)
        if counts is not None:
            if not isinstance(counts, list) or not all(isinstance(c, int) and c >= 0 for c in counts):
                raise LoaderError(f"{meta}: preprocessing.parts.{split} must be a list of row counts, got {counts!r}")
            files = [(*paths(f".{k:05d}"), f"split {split!r} part {k}") for k in range(len(counts))]
        else:
            files = [(*paths(""), f"split {split!r}")]
        parts = []
        start = 0
        for k, (dp, sp, lp, what) in enumerate(files):
            dense, sparse, labels = open_file_triple(schema, dp, sp, lp, what)
            n = sparse.shape[0]
            if counts is not None and counts[k] != n:
                raise LoaderError(f"{sp}: {n} rows, but {meta} lists {counts[k]} for {what}")
            parts.append(FilePart(start, n, 0, dense, sparse, labels, sp, dp, lp))
            start += n
        if split in schema.splits and schema.splits[split] != start:
            raise LoaderError(f"{meta}: split {split!r} has {schema.splits[split]} rows, the files hold {start}")
        self._init(schema, split, parts, id_modulo=None)

    @classmethod
    def from_parts(
        cls, schema: Schema, split: str, parts: Sequence[FilePart], id_modulo: np.ndarray | None
    ) -> NpySplit:
        """For other layouts (TorchRec's days): already-opened, checked parts."""
        self = cls.__new__(cls)
        self._init(schema, split, list(parts), id_modulo)
        return self

    def _init(self, schema: Schema, split: str, parts: list[FilePart], id_modulo: np.ndarray | None) -> None:
        self.schema = schema
        self.split = split
        self._parts = parts
        self._starts = np.array([p.start for p in parts], dtype=np.int64)
        self.num_rows = int(sum(p.n for p in parts))
        self._modulo = id_modulo  # [1, F] int64 or None
        self._vocab = np.array(schema.vocab_sizes, dtype=np.int64)
        self.keys = schema.sparse_names

    def __len__(self) -> int:
        return self.num_rows

    def _segments(self, rows: Rows) -> list[Segment]:
        """Rows of the split -> (part, rows of that part's files), in order."""
        if isinstance(rows, slice):
            a, b, step = rows.indices(self.num_rows)
            if step != 1:
                raise LoaderError("read() takes step-1 slices")
            segs: list[Segment] = []
            for p in self._parts:
                lo, hi = max(a, p.start), min(b, p.start + p.n)
                if lo < hi:
                    segs.append((p, slice(lo - p.start + p.lo, hi - p.start + p.lo)))
            return segs
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows[0] < 0 or rows[-1] >= self.num_rows):
            raise LoaderError(f"rows out of range [0, {self.num_rows}) for split {self.split!r}")
        if len(self._parts) == 1:
            p = self._parts[0]
            return [(p, rows + p.lo if p.lo else rows)]
        if rows.size > 1 and np.any(rows[1:] < rows[:-1]):
            raise LoaderError("read() needs sorted rows when a split has several parts")
        cut = np.searchsorted(rows, self._starts)  # first index of each part
        cut = np.append(cut, rows.size)
        return [
            (p, rows[cut[k] : cut[k + 1]] - p.start + p.lo)
            for k, p in enumerate(self._parts)
            if cut[k] < cut[k + 1]
        ]

    def read(self, rows: Rows, check_ids: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows (sorted int array or a step-1 slice) -> dense [n, Dd] f32, sparse [n, F] i64, labels [n] f32.

        One fancy-index (or slice) per array per part: no per-row Python.
        """
        segs = self._segments(rows)
        Dd = self.schema.num_dense
        dense_l, sparse_l, labels_l = [], [], []
        for p, idx in segs:
            sparse_l.append(_take(p.sparse, idx))
            labels_l.append(_take(p.labels, idx))
            if p.dense is not None:
                dense_l.append(_take(p.dense, idx))
        n = sum(len(s) for s in sparse_l)
        F = self.schema.num_sparse
        sparse = np.concatenate(sparse_l) if len(sparse_l) != 1 else sparse_l[0]
        sparse = sparse.reshape(n, F).astype(np.int64, copy=False)
        labels = np.concatenate(labels_l) if len(labels_l) != 1 else labels_l[0]
        labels = labels.reshape(n).astype(np.float32, copy=False)
        if Dd:
            dense = np.concatenate(dense_l) if len(dense_l) != 1 else dense_l[0]
            dense = dense.astype(np.float32, copy=False)
        else:
            dense = np.zeros((n, 0), dtype=np.float32)
        if self._modulo is not None:
            sparse = sparse % self._modulo
        if check_ids:
            self._check_ids(sparse, segs)
        self._check_finite(dense, labels, segs)
        return dense, sparse, labels

    @staticmethod
    def _locate(i: int, segs: list[Segment]) -> tuple[FilePart, int]:
        """Batch position i -> (its part, the row in that part's files)."""
        for p, idx in segs:
            m = (idx.stop - idx.start) if isinstance(idx, slice) else len(idx)
            if i < m:
                return p, (idx.start + i) if isinstance(idx, slice) else int(idx[i])
            i -= m
        raise AssertionError("unreachable")

    def _check_finite(self, dense: np.ndarray, labels: np.ndarray, segs: list[Segment]) -> None:
        """NaN or inf in dense values or labels trains a model to NaN (every AUC then reads
        0.5 and a NaN checkpoint can become "best"): refuse the batch and name the row.

        Cheap: one vectorized pass over the batch already in RAM (~0.1 ms per 4096 x 13 block),
        beside the id check; converters refuse to write such values in the first place.
        """
        if dense.size and not np.isfinite(dense).all():
            i, j = (int(x) for x in np.argwhere(~np.isfinite(dense))[0])
            part, row = self._locate(i, segs)
            name = self.schema.dense_features[j] if j < len(self.schema.dense_features) else f"dense[{j}]"
            raise LoaderError(f"{part.dense_path or part.sparse_path} row {row}: dense feature {name!r} is {dense[i, j]} "
                              "(non-finite values would train the model to NaN)")
        if labels.size and not np.isfinite(labels).all():
            i = int(np.argwhere(~np.isfinite(labels))[0, 0])
            part, row = self._locate(i, segs)
            raise LoaderError(f"{part.labels_path or part.sparse_path} row {row}: label is {labels[i]} (labels must be finite, 0 or 1)")

    def _check_ids(self, sparse: np.ndarray, segs: list[Segment]) -> None:
        """A bad id would fail deep inside fbgemm or silently read the wrong row: name it here."""
        if sparse.size == 0 or (sparse.min() >= 0 and (sparse.max(axis=0) < self._vocab).all()):
            return
        bad = (sparse < 0) | (sparse >= self._vocab)
        i, j = (int(x) for x in np.argwhere(bad)[0])
        part, row = self._locate(i, segs)
        raise LoaderError(
            f"{part.sparse_path} row {row}: field {self.keys[j]!r} id {int(sparse[i, j])} "
            f"is outside [0, {int(self._vocab[j])}) (num_embeddings in the schema)"
        )

    def batch(self, rows: Rows, check_ids: bool = True) -> Batch:
        """Rows -> ``Batch(dense [n, Dd], KJT keyed by schema.sparse_names, labels [n])``."""
        dense, sparse, labels = self.read(rows, check_ids)
        return batch_from_arrays(torch.from_numpy(dense), torch.from_numpy(sparse), torch.from_numpy(labels), self.keys)


class SplitSource(Protocol):
    """Anything that opens splits (``TorchRecCriteo``); directories are opened with ``NpySplit``."""

    schema: Schema

    def open(self, split: str) -> NpySplit: ...


SplitData = Union[str, Path, SplitSource, NpySplit]  # what make_loader accepts as ``data``


def open_split(data: SplitData, split: str) -> NpySplit:
    """A directory in our layout, a ``SplitSource`` or an already open ``NpySplit`` -> the split."""
    if isinstance(data, NpySplit):
        return data
    if isinstance(data, (str, Path)):
        return NpySplit(data, split)
    return data.open(split)


__all__ = ["FilePart", "NpySplit", "Rows", "Segment", "SplitData", "SplitSource", "open_file_triple", "open_split"]
