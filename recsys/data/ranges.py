"""Which rows each rank reads, and in which order: row ranges, batch plans, the block shuffle.

Pure index arithmetic (numpy only, no files), so evaluation code and tests can ask which
rows a rank owns without opening a split.

Batch counts under a process group (contiguous ranges).  Every DMP step is a collective, so
all ranks of a group must yield the same number of batches:

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

Shuffling is a seeded block shuffle, because a full permutation of a terabyte split per
rank would not fit in RAM: the rank's rows are cut into windows of ``shuffle_window`` rows,
the window order is permuted and so are the rows inside each window, from
``SeedSequence([seed, epoch, rank, ...])``.  A split smaller than the window is fully
shuffled.

Example::

    [rank_row_range(10, r, 3) for r in range(3)]          # [(0, 4), (4, 7), (7, 10)]
    plan = plan_batches(10, 4, rank=0, world_size=3)      # 1 batch: positions (0, 4)
    BlockShuffle(10, window=4, seed=0, epoch=0, rank=0).offsets(0, 4)   # 4 of the 10 offsets
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.errors import LoaderError


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


class BlockShuffle:
    """Seeded position -> row-offset map: permuted windows, permuted rows inside each.

    Memory stays at two windows' permutations whatever the split size (a batch spans at most
    a few windows, and batches are read in order).
    """

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


__all__ = ["BatchPlan", "BlockShuffle", "plan_batches", "rank_row_range"]
