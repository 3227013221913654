"""Memory-mapped npy reader, per-rank row ranges and prefetched TorchRec batches.

Why this and not TorchRec's ``InMemoryBinaryCriteoIterDataPipe``: that reader
``np.load``s every file on every rank; this one memory-maps the files and each
rank touches only its own rows, so RAM stays at a few batches whatever the
split size.

Public API::

    rank_row_range(num_rows, rank, world_size) -> (start, stop)
        The contiguous rows of one rank; the ranks together cover every row
        exactly once (sizes differ by at most one).  Pure, for evaluation code.
    plan_batches(num_rows, batch_size, rank=0, world_size=1, *, drop_last=False,
                 equal_batches=False) -> BatchPlan
        How many batches a rank yields and which positions each covers.
    NpySplit(data_dir, split)
        One split, memory-mapped: ``.schema``, ``.num_rows``, ``.read(rows)`` ->
        (dense [n, Dd] f32, sparse [n, F] i64, labels [n] f32), ``.batch(rows)``.
    make_loader(data, split, batch_size, *, rank=0, world_size=1, shuffle=False,
                seed=0, drop_last=False, equal_batches=False, global_batch=False,
                prefetch=2, shuffle_window=1 << 22, pin_memory=False,
                check_ids=True) -> CTRLoader
        ``data`` is a directory in our layout or a ``TorchRecCriteo`` from
        ``recsys.data.torchrec_layout.open_torchrec_criteo``.
    CTRLoader: iterable over ``torchrec.datasets.utils.Batch``; ``len()`` (batches
        per epoch on this rank), ``set_epoch(e)``, ``state_dict()``,
        ``load_state_dict(sd)``, ``.schema``, ``.plan``.

On-disk layout (written by ``data_prep/*_to_npy.py``): ``meta.json`` (a
``Schema``) and per split ``{split}_dense.npy`` float32 [N, Dd] (may be absent
when Dd == 0), ``{split}_sparse.npy`` int [N, F], ``{split}_labels.npy``
float32 [N]; or, when ``schema.preprocessing["parts"][split]`` lists the rows
of each part, ``{split}_{dense|sparse|labels}.{k:05d}.npy`` for k = 0, 1, ...

Two ways to split a split over the W ranks of a process group:

- **Contiguous ranges** (default; evaluation).  Rank r reads its own
  ``rank_row_range`` and cuts it into batches of ``batch_size`` rows.  Every
  rank touches one contiguous block, and evaluation gathers the ranks' logits
  back into split order by those ranges (``recsys.evaluate``).
- **Global batches** (``global_batch=True``; training).  ``batch_size`` is the
  GLOBAL batch B of the whole process group.  Every rank computes the same
  seeded order of all N rows (the block shuffle below, keyed without the rank),
  cuts it into global batches of B, and rank r reads positions
  ``[r*B/W, (r+1)*B/W)`` of each (B % W == 0 is required).  So step i trains on
  the same B rows whether the group runs on 1, 2 or 8 ranks, and with the
  gradients of the global-batch mean (``recsys.grad_sync``) a group's result
  does not depend on how many ranks it had: the parallel and the sequential
  schedule give the same members.  In contiguous mode a step's rows depend on
  W (each rank shuffles its own range), which is why training does not use it.
  Global batches are ``floor(N / B)`` (``drop_last``; the training setting) or
  ``ceil(N / B)`` with the last one split by ``rank_row_range``; every rank
  has the same plan, so ``equal_batches`` does not apply.

Batch counts under a process group (contiguous ranges).  Every DMP step is a collective, so all
ranks of a group must yield the same number of batches:

=================  ==========  ===============================================
equal_batches      drop_last   per rank (N rows, W ranks, q = N // W, B)
=================  ==========  ===============================================
False              False       all its rows, ceil(n_rank / B) batches, last
                               partial.  Counts may differ by one across ranks:
                               use only without per-batch collectives.
False              True        floor(n_rank / B) full batches.
True               True        floor(q / B) full batches on every rank
                               (training: every batch exactly B rows).
True               False       ceil(q / B) batches on every rank, every row
                               exactly once: the last batch takes the rest,
                               between 1 and B + 1 rows (evaluation under DMP).
=================  ==========  ===============================================

Shuffling is a seeded block shuffle, because a full permutation of a
terabyte split per rank would not fit in RAM: the rank's rows are cut into
windows of ``shuffle_window`` rows, the window order is permuted and so are
the rows inside each window, from ``SeedSequence([seed, epoch, rank, ...])``
(global batches: rank 0's key for every rank, the order of a 1-rank loader).
A split smaller than the window is fully shuffled.  Each batch's row indices
are sorted before the single fancy-index read per array, so reads stay
ordered on disk (row order inside a batch does not matter to the loss).

Resuming: the state is ``(epoch, batches_consumed)`` plus the plan it was
taken under.  The source can seek to any batch in O(1), so we keep this small
explicit state instead of torchdata's ``Loader``/``StatefulDataLoader`` state,
which replays (fast-forwards) items after a snapshot and whose epochs restart
implicitly rather than through ``set_epoch``.  Prefetch is torchdata.nodes'
``Prefetcher`` (a thread and a bounded queue); ``PinMemory`` when asked.

Example::

    loader = make_loader("data/criteo", "train", 4096, rank=r, world_size=w,  # 4096 per step
                         shuffle=True, seed=0, global_batch=True, drop_last=True)  # in all
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)          # keeps a restored position of that epoch
        for batch in loader:             # Batch(dense [B, Dd], KJT, labels [B])
            ...
            ckpt["loader"] = loader.state_dict()
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from torchdata.nodes import BaseNode, PinMemory, Prefetcher
from torchrec.datasets.utils import Batch

from recsys.data.batch import batch_from_arrays
from recsys.data.schema import META_FILE, Schema, SchemaError
from recsys.errors import UserError

STATE_VERSION = 1


class LoaderError(UserError, ValueError):
    """A missing or inconsistent data file, or bad loader arguments; one line."""


# ----------------------------------------------------------------------------- row ranges


def rank_row_range(num_rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous rows ``[start, stop)`` of ``rank``; ranks cover all rows once.

    The first ``num_rows % world_size`` ranks get one extra row.

    Example::

        [rank_row_range(10, r, 3) for r in range(3)]  # [(0, 4), (4, 7), (7, 10)]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise LoaderError(f"bad rank {rank} for world_size {world_size}")
    if num_rows < 0:
        raise LoaderError(f"num_rows must be >= 0, got {num_rows}")
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class BatchPlan:
    """Which positions of a rank's (possibly shuffled) rows each batch covers.

    Positions index the rank's rows ``[row_start, row_stop)`` in epoch order;
    batch ``i`` covers positions ``bounds(i)``; positions ``>= used`` are
    dropped this epoch (``drop_last``).
    """

    row_start: int
    row_stop: int
    batch_size: int
    num_batches: int
    used: int

    @property
    def num_rows(self) -> int:
        return self.row_stop - self.row_start

    def bounds(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.num_batches:
            raise IndexError(f"batch {i} out of range [0, {self.num_batches})")
        a = i * self.batch_size
        return a, (self.used if i == self.num_batches - 1 else a + self.batch_size)


def plan_batches(
    num_rows: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    *,
    drop_last: bool = False,
    equal_batches: bool = False,
) -> BatchPlan:
    """The batch plan of one rank; see the table in the module docstring."""
    if batch_size < 1:
        raise LoaderError(f"batch_size must be >= 1, got {batch_size}")
    start, stop = rank_row_range(num_rows, rank, world_size)
    n = stop - start
    q = num_rows // world_size
    base = q if equal_batches else n
    if drop_last:
        nb = base // batch_size
        used = nb * batch_size
    else:
        if equal_batches and q == 0 and num_rows > 0:
            raise LoaderError(
                f"equal_batches without drop_last needs at least world_size={world_size} rows, "
                f"the split has {num_rows}"
            )
        nb = -(-base // batch_size)
        used = n
    return BatchPlan(start, stop, batch_size, nb, used)


class _BlockShuffle:
    """Seeded position -> row-offset map: permuted windows, permuted rows inside each."""

    def __init__(self, num_rows: int, window: int, seed: int, epoch: int, rank: int) -> None:
        self.window = window
        self.num_rows = num_rows
        self.key = [seed, epoch, rank]
        num_windows = -(-num_rows // window)
        self.order = np.random.default_rng(np.random.SeedSequence(self.key)).permutation(num_windows)
        sizes = np.minimum(window, num_rows - self.order * window)
        self.cum = np.concatenate([[0], np.cumsum(sizes)])  # [num_windows + 1]
        self._cache: dict[int, np.ndarray] = {}

    def _perm(self, w: int) -> np.ndarray:
        p = self._cache.get(w)
        if p is None:
            size = min(self.window, self.num_rows - w * self.window)
            p = np.arange(size, dtype=np.int64 if size > 2**31 - 1 else np.int32)
            np.random.default_rng(np.random.SeedSequence(self.key + [int(w)])).shuffle(p)
            if len(self._cache) >= 2:  # a batch spans at most a few windows; keep memory flat
                self._cache.pop(next(iter(self._cache)))
            self._cache[w] = p
        return p

    def offsets(self, a: int, b: int) -> np.ndarray:
        """Row offsets (within the rank's range) of positions [a, b), unsorted."""
        out = []
        k = int(np.searchsorted(self.cum, a, side="right")) - 1
        while a < b:
            w, lo, hi = int(self.order[k]), int(self.cum[k]), int(self.cum[k + 1])
            e = min(b, hi)
            out.append(self._perm(w)[a - lo : e - lo].astype(np.int64) + w * self.window)
            a, k = e, k + 1
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


# ----------------------------------------------------------------------------- files


def _open_npy(path: Path, what: str) -> np.ndarray:
    if not path.exists():
        raise LoaderError(f"{path}: no such file ({what})")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LoaderError(f"{path}: not a readable .npy file ({e})") from None


def _take(arr: np.ndarray, idx: np.ndarray | slice) -> np.ndarray:
    """A private in-RAM copy: a slice of a memmap is a lazy read-only view, which would
    defer the disk read past the prefetch thread and alias the file from torch."""
    return np.array(arr[idx]) if isinstance(idx, slice) else np.asarray(arr[idx])


@dataclass(frozen=True)
class _Part:
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


def _check_part(
    schema: Schema,
    dense_path: Path | None,
    sparse_path: Path,
    labels_path: Path,
    what: str,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Opens and shape-checks one file triple; errors name the file."""
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
        if not (d / META_FILE).exists() and (d / "day_0_sparse.npy").exists():
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
            return tuple(d / f"{split}_{kind}{suffix}.npy" for kind in ("dense", "sparse", "labels"))  # type: ignore[return-value]

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
            dense, sparse, labels = _check_part(schema, dp, sp, lp, what)
            n = sparse.shape[0]
            if counts is not None and counts[k] != n:
                raise LoaderError(f"{sp}: {n} rows, but {meta} lists {counts[k]} for {what}")
            parts.append(_Part(start, n, 0, dense, sparse, labels, sp, dp, lp))
            start += n
        if split in schema.splits and schema.splits[split] != start:
            raise LoaderError(f"{meta}: split {split!r} has {schema.splits[split]} rows, the files hold {start}")
        self._init(schema, split, parts, id_modulo=None)

    @classmethod
    def from_parts(
        cls, schema: Schema, split: str, parts: Sequence[_Part], id_modulo: np.ndarray | None
    ) -> "NpySplit":
        """For other layouts (TorchRec's days): already-opened, checked parts."""
        self = cls.__new__(cls)
        self._init(schema, split, list(parts), id_modulo)
        return self

    def _init(self, schema: Schema, split: str, parts: list[_Part], id_modulo: np.ndarray | None) -> None:
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

    def read(
        self, rows: np.ndarray | slice, check_ids: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows (sorted int array or a step-1 slice) -> dense [n, Dd] f32, sparse [n, F] i64, labels [n] f32.

        One fancy-index (or slice) per array per part: no per-row Python.
        """
        if isinstance(rows, slice):
            a, b, step = rows.indices(self.num_rows)
            if step != 1:
                raise LoaderError("read() takes step-1 slices")
            segs = []
            for p in self._parts:
                lo, hi = max(a, p.start), min(b, p.start + p.n)
                if lo < hi:
                    segs.append((p, slice(lo - p.start + p.lo, hi - p.start + p.lo)))
        else:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.size and (rows[0] < 0 or rows[-1] >= self.num_rows):
                raise LoaderError(f"rows out of range [0, {self.num_rows}) for split {self.split!r}")
            if len(self._parts) == 1:
                p = self._parts[0]
                segs = [(p, rows + p.lo if p.lo else rows)]
            else:
                if rows.size > 1 and np.any(rows[1:] < rows[:-1]):
                    raise LoaderError("read() needs sorted rows when a split has several parts")
                cut = np.searchsorted(rows, self._starts)  # first index of each part
                cut = np.append(cut, rows.size)
                segs = [
                    (p, rows[cut[k] : cut[k + 1]] - p.start + p.lo)
                    for k, p in enumerate(self._parts)
                    if cut[k] < cut[k + 1]
                ]
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
            self._check_ids(sparse, rows, segs)
        self._check_finite(dense, labels, segs)
        return dense, sparse, labels

    @staticmethod
    def _locate(i: int, segs: list) -> tuple["_Part", int]:
        """Batch position i -> (its part, the row in that part's files)."""
        for p, idx in segs:
            m = (idx.stop - idx.start) if isinstance(idx, slice) else len(idx)
            if i < m:
                return p, (idx.start + i) if isinstance(idx, slice) else int(idx[i])
            i -= m
        raise AssertionError("unreachable")

    def _check_finite(self, dense: np.ndarray, labels: np.ndarray, segs: list) -> None:
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

    def _check_ids(self, sparse: np.ndarray, rows: Any, segs: list) -> None:
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

    def batch(self, rows: np.ndarray | slice, check_ids: bool = True) -> Batch:
        """Rows -> ``Batch(dense [n, Dd], KJT keyed by schema.sparse_names, labels [n])``."""
        dense, sparse, labels = self.read(rows, check_ids)
        return batch_from_arrays(torch.from_numpy(dense), torch.from_numpy(sparse), torch.from_numpy(labels), self.keys)


class SplitSource(Protocol):
    """Anything that opens splits (``TorchRecCriteo``); directories are opened with ``NpySplit``."""

    schema: Schema

    def open(self, split: str) -> NpySplit: ...


def open_split(data: str | Path | SplitSource | NpySplit, split: str) -> NpySplit:
    if isinstance(data, NpySplit):
        return data
    if isinstance(data, (str, Path)):
        return NpySplit(data, split)
    return data.open(split)


# ----------------------------------------------------------------------------- loader


@dataclass(frozen=True)
class _Failed:
    """An error from the prefetch thread.  torchdata would re-raise it wrapped, with the
    thread's traceback pasted into the message; passing it through as an item lets the
    consumer raise the original exception with its one-line message."""

    error: Exception


class _BatchNode(BaseNode[Batch]):
    """torchdata node yielding the batches of one epoch from ``start`` on; seekable state."""

    def __init__(self, loader: "CTRLoader", epoch: int, start: int) -> None:
        super().__init__()
        self._loader = loader
        self._initial = {"epoch": epoch, "next_batch": start}
        self._epoch = epoch
        self._next = start
        self._shuffle: _BlockShuffle | None = None

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        st = initial_state or self._initial
        self._epoch, self._next = int(st["epoch"]), int(st["next_batch"])
        self._shuffle = self._loader._shuffler(self._epoch)

    def next(self) -> Batch:
        if self._next >= self._loader.plan.num_batches:
            raise StopIteration
        try:
            b = self._loader._read_batch(self._next, self._shuffle)
        except Exception as e:  # noqa: BLE001 - handed to the consumer unchanged, see _Failed
            self._next = self._loader.plan.num_batches  # stop reading ahead
            return _Failed(e)  # type: ignore[return-value]
        self._next += 1
        return b

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "next_batch": self._next}


class CTRLoader:
    """Iterable over the ``Batch``es of one rank for one epoch; see the module docstring."""

    def __init__(
        self,
        split: NpySplit,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        equal_batches: bool = False,
        global_batch: bool = False,
        prefetch: int = 2,
        shuffle_window: int = 1 << 22,
        pin_memory: bool = False,
        check_ids: bool = True,
    ) -> None:
        if global_batch:
            if world_size < 1 or not 0 <= rank < world_size:
                raise LoaderError(f"bad rank {rank} for world_size {world_size}")
            if batch_size < 1 or batch_size % world_size:
                raise LoaderError(
                    f"global_batch: batch_size={batch_size} (the global batch) must be a positive "
                    f"multiple of world_size={world_size}"
                )
        if seed < 0:
            raise LoaderError(f"seed must be >= 0, got {seed}")
        if shuffle_window < 1:
            raise LoaderError(f"shuffle_window must be >= 1, got {shuffle_window}")
        if prefetch < 0:
            raise LoaderError(f"prefetch must be >= 0, got {prefetch}")
        if pin_memory and not torch.cuda.is_available():
            raise LoaderError("pin_memory=True needs CUDA; pass pin_memory=(device.type == 'cuda')")
        self.split = split
        self.schema = split.schema
        self.global_batch = global_batch
        if global_batch:  # positions index the whole split; every rank has the same plan
            self.plan = plan_batches(split.num_rows, batch_size, 0, 1, drop_last=drop_last)
        else:
            self.plan = plan_batches(
                split.num_rows, batch_size, rank, world_size, drop_last=drop_last, equal_batches=equal_batches
            )
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.shuffle_window = shuffle, seed, shuffle_window
        self.prefetch, self.pin_memory, self.check_ids = prefetch, pin_memory, check_ids
        self._epoch = 0
        self._consumed = 0
        self._resume_at: int | None = None

    def __len__(self) -> int:
        return self.plan.num_batches

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Selects the shuffle order; a position restored for this same epoch is kept."""
        if epoch < 0:
            raise LoaderError(f"epoch must be >= 0, got {epoch}")
        if epoch != self._epoch:
            self._epoch, self._consumed, self._resume_at = epoch, 0, None

    def _shuffler(self, epoch: int) -> _BlockShuffle | None:
        if not self.shuffle or self.plan.num_rows == 0:
            return None
        key_rank = 0 if self.global_batch else self.rank  # global batches: one order for all ranks
        return _BlockShuffle(self.plan.num_rows, self.shuffle_window, self.seed, epoch, key_rank)

    def _bounds(self, i: int) -> tuple[int, int]:
        """Positions of batch i read by this rank: the whole batch, or its slice of a global batch."""
        a, b = self.plan.bounds(i)
        if not self.global_batch:
            return a, b
        lo, hi = rank_row_range(b - a, self.rank, self.world_size)  # B/W each for a full batch
        return a + lo, a + hi

    def _read_batch(self, i: int, shuffle: _BlockShuffle | None) -> Batch:
        a, b = self._bounds(i)
        if shuffle is None:
            rows: np.ndarray | slice = slice(self.plan.row_start + a, self.plan.row_start + b)
        else:
            rows = np.sort(shuffle.offsets(a, b)) + self.plan.row_start  # sorted: ordered reads
        return self.split.batch(rows, self.check_ids)

    def batch_rows(self, epoch: int, i: int) -> np.ndarray:
        """The split rows of batch ``i`` of ``epoch`` on this rank (sorted); for tests and audits."""
        a, b = self._bounds(i)
        sh = self._shuffler(epoch)
        off = np.arange(a, b, dtype=np.int64) if sh is None else np.sort(sh.offsets(a, b))
        return off + self.plan.row_start

    def __iter__(self) -> Iterator[Batch]:
        start = self._resume_at if self._resume_at is not None else 0
        self._resume_at = None
        self._consumed = start
        if start >= len(self):
            return
        root: BaseNode[Batch] = _BatchNode(self, self._epoch, start)
        if self.prefetch > 0:
            root = Prefetcher(root, prefetch_factor=self.prefetch)
        if self.pin_memory:
            root = PinMemory(root)
        for batch in root:
            if isinstance(batch, _Failed):
                raise batch.error
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out; plan fields guard against a changed setup."""
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "batches_consumed": self._consumed,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shuffle_window": self.shuffle_window,
            "num_rows": self.split.num_rows,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.plan.batch_size,
            "num_batches": self.plan.num_batches,
            "global_batch": self.global_batch,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """The next ``iter()`` resumes at batch ``batches_consumed`` of ``epoch``, same order.

        In global-batch mode the state may come from a different rank or world size:
        the row order and the plan do not depend on them (and the model checkpoint is
        resharded by DCP), so only rank/world_size are exempt from the check.
        """
        mine = self.state_dict()
        sd = {"global_batch": False, **sd}  # states saved before global batches existed
        keys: tuple[str, ...] = ("version", "global_batch", "seed", "shuffle", "shuffle_window", "num_rows",
                                 "rank", "world_size", "batch_size", "num_batches")
        if self.global_batch and sd["global_batch"]:
            keys = tuple(k for k in keys if k not in ("rank", "world_size"))
        for k in keys:
            if k not in sd:
                raise LoaderError(f"loader state has no {k!r}: not from CTRLoader.state_dict()")
            if sd[k] != mine[k]:
                raise LoaderError(f"loader state has {k}={sd[k]!r} but this loader has {mine[k]!r}; resume with the same setup")
        if not 0 <= int(sd["batches_consumed"]) <= len(self):
            raise LoaderError(f"loader state batches_consumed={sd['batches_consumed']} outside [0, {len(self)}]")
        self._epoch = int(sd["epoch"])
        self._consumed = self._resume_at = int(sd["batches_consumed"])


def make_loader(
    data: str | Path | SplitSource | NpySplit,
    split: str,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    equal_batches: bool = False,
    global_batch: bool = False,
    prefetch: int = 2,
    shuffle_window: int = 1 << 22,
    pin_memory: bool = False,
    check_ids: bool = True,
) -> CTRLoader:
    """Opens ``split`` of ``data`` and returns this rank's loader; see the module docstring.

    Example::

        train = make_loader(d, "train", 4096, rank=r, world_size=w, shuffle=True,
                            global_batch=True, drop_last=True)    # 4096 rows per step in all
        val = make_loader(d, "val", 8192, rank=r, world_size=w, equal_batches=True)
    """
    return CTRLoader(
        open_split(data, split),
        batch_size,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        equal_batches=equal_batches,
        global_batch=global_batch,
        prefetch=prefetch,
        shuffle_window=shuffle_window,
        pin_memory=pin_memory,
        check_ids=check_ids,
    )


__all__ = [
    "BatchPlan",
    "CTRLoader",
    "LoaderError",
    "NpySplit",
    "SchemaError",
    "SplitSource",
    "make_loader",
    "open_split",
    "plan_batches",
    "rank_row_range",
]
