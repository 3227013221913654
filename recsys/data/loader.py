"""One rank's batches of one split: options, the epoch/resume state, and ``make_loader``.

The pieces live in their own modules and are re-exported here, so ``recsys.data.loader``
stays the one import for users:

- ``recsys.data.source``: the memmap reader ``NpySplit`` (our npy layout), ``SplitSource``,
  ``open_split``;
- ``recsys.data.ranges``: ``rank_row_range``, ``plan_batches`` -> ``BatchPlan``, the block
  shuffle (the batch-count table is in its docstring);
- ``recsys.data.prefetch``: the torchdata node chain that reads ahead in a thread;
- ``recsys.data.torchrec_layout``: TorchRec's Criteo-1TB day files as a ``SplitSource``;
- ``recsys.data.errors``: ``LoaderError``.

Public API::

    make_loader(data, split, batch_size, *, rank=0, world_size=1, shuffle=False,
                seed=0, drop_last=False, equal_batches=False, global_batch=False,
                prefetch=2, shuffle_window=1 << 22, pin_memory=False,
                check_ids=True) -> CTRLoader
        ``data``: a directory in our layout, a ``TorchRecCriteo`` from
        ``recsys.data.torchrec_layout.open_torchrec_criteo``, or an ``NpySplit``; the
        keywords are the fields of ``LoaderOptions``.
    CTRLoader(split, options): iterable over ``torchrec.datasets.utils.Batch``; ``len()``
        (batches per epoch on this rank), ``set_epoch(e)``, ``state_dict()``,
        ``load_state_dict(sd)``, ``.schema``, ``.plan``, ``.split``, ``.options``.

Two ways to split a split over the W ranks of a process group:

- **Contiguous ranges** (default; evaluation).  Rank r reads its own ``rank_row_range`` and
  cuts it into batches of ``batch_size`` rows.  Every rank touches one contiguous block, and
  evaluation gathers the ranks' logits back into split order by those ranges.
- **Global batches** (``global_batch=True``; training).  ``batch_size`` is the GLOBAL batch
  B of the whole process group.  Every rank computes the same seeded order of all N rows
  (the block shuffle, keyed without the rank), cuts it into global batches of B, and rank r
  reads positions ``[r*B/W, (r+1)*B/W)`` of each (B % W == 0 is required).  So step i trains
  on the same B rows whether the group runs on 1, 2 or 8 ranks, and with the gradients of
  the global-batch mean (``recsys.grad_sync``) a group's result does not depend on how many
  ranks it had.  In contiguous mode a step's rows depend on W (each rank shuffles its own
  range), which is why training does not use it.  Global batches are ``floor(N / B)``
  (``drop_last``; the training setting) or ``ceil(N / B)`` with the last one split by
  ``rank_row_range``; every rank has the same plan, so ``equal_batches`` does not apply.

Each batch's row indices are sorted before the single fancy-index read per array, so reads
stay ordered on disk (row order inside a batch does not matter to the loss).

Resuming: the state is ``(epoch, batches_consumed)`` plus the plan it was taken under.  The
source can seek to any batch in O(1), so we keep this small explicit state instead of
torchdata's ``Loader``/``StatefulDataLoader`` state, which replays (fast-forwards) items
after a snapshot and whose epochs restart implicitly rather than through ``set_epoch``.

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

from dataclasses import KW_ONLY, dataclass
from typing import Any, Callable, Concatenate, Iterator, ParamSpec

import numpy as np
import torch
from torchrec.datasets.utils import Batch

from recsys.data.errors import LoaderError
from recsys.data.prefetch import prefetched
from recsys.data.ranges import BatchPlan, BlockShuffle, plan_batches, rank_row_range
from recsys.data.schema import SchemaError
from recsys.data.source import NpySplit, Rows, SplitData, SplitSource, open_split

STATE_VERSION = 1
# The plan fields a state must match to be resumed (rank/world_size are exempt in global-batch mode).
_STATE_KEYS = ("version", "global_batch", "seed", "shuffle", "shuffle_window", "num_rows",
               "rank", "world_size", "batch_size", "num_batches")


@dataclass(frozen=True)
class LoaderOptions:
    """Everything a loader is built with but the split: the one declaration of these options.

    ``make_loader``'s keywords are exactly these fields (it takes its signature from this
    class), so a new option is added here once.  Values are checked on construction.

    Example::

        opts = LoaderOptions(4096, rank=1, world_size=2, shuffle=True, global_batch=True, drop_last=True)
        loader = CTRLoader(NpySplit("data/criteo", "train"), opts)
    """

    batch_size: int  # rows per batch on this rank; with global_batch, of the whole group
    _: KW_ONLY
    rank: int = 0
    world_size: int = 1
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    equal_batches: bool = False  # contiguous ranges: the same batch count on every rank
    global_batch: bool = False
    prefetch: int = 2  # batches read ahead in a thread; 0: read on demand
    shuffle_window: int = 1 << 22  # rows per block of the block shuffle
    pin_memory: bool = False  # needs CUDA
    check_ids: bool = True  # ids outside [0, num_embeddings) raise LoaderError

    def __post_init__(self) -> None:
        if self.global_batch:
            if self.world_size < 1 or not 0 <= self.rank < self.world_size:
                raise LoaderError(f"bad rank {self.rank} for world_size {self.world_size}")
            if self.batch_size < 1 or self.batch_size % self.world_size:
                raise LoaderError(
                    f"global_batch: batch_size={self.batch_size} (the global batch) must be a positive "
                    f"multiple of world_size={self.world_size}"
                )
        if self.seed < 0:
            raise LoaderError(f"seed must be >= 0, got {self.seed}")
        if self.shuffle_window < 1:
            raise LoaderError(f"shuffle_window must be >= 1, got {self.shuffle_window}")
        if self.prefetch < 0:
            raise LoaderError(f"prefetch must be >= 0, got {self.prefetch}")


class CTRLoader:
    """Iterable over the ``Batch``es of one rank for one epoch; see the module docstring."""

    def __init__(self, split: NpySplit, options: LoaderOptions) -> None:
        o = options
        if o.pin_memory and not torch.cuda.is_available():
            raise LoaderError("pin_memory=True needs CUDA; pass pin_memory=(device.type == 'cuda')")
        self.split = split
        self.schema = split.schema
        self.options = o
        if o.global_batch:  # positions index the whole split; every rank has the same plan
            self.plan = plan_batches(split.num_rows, o.batch_size, 0, 1, drop_last=o.drop_last)
        else:
            self.plan = plan_batches(
                split.num_rows, o.batch_size, o.rank, o.world_size, drop_last=o.drop_last, equal_batches=o.equal_batches
            )
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

    def _shuffler(self, epoch: int) -> BlockShuffle | None:
        o = self.options
        if not o.shuffle or self.plan.num_rows == 0:
            return None
        key_rank = 0 if o.global_batch else o.rank  # global batches: one order for all ranks
        return BlockShuffle(self.plan.num_rows, o.shuffle_window, o.seed, epoch, key_rank)

    def _bounds(self, i: int) -> tuple[int, int]:
        """Positions of batch i read by this rank: the whole batch, or its slice of a global batch."""
        a, b = self.plan.bounds(i)
        if not self.options.global_batch:
            return a, b
        lo, hi = rank_row_range(b - a, self.options.rank, self.options.world_size)  # B/W each for a full batch
        return a + lo, a + hi

    def _reader(self, epoch: int) -> Callable[[int], Batch]:
        """Batch index -> that batch of ``epoch`` on this rank (the shuffle is built once per epoch)."""
        shuffle = self._shuffler(epoch)

        def read(i: int) -> Batch:
            a, b = self._bounds(i)
            if shuffle is None:
                rows: Rows = slice(self.plan.row_start + a, self.plan.row_start + b)
            else:
                rows = np.sort(shuffle.offsets(a, b)) + self.plan.row_start  # sorted: ordered reads
            return self.split.batch(rows, self.options.check_ids)

        return read

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
        o = self.options
        for batch in prefetched(self._reader, len(self), self._epoch, start, prefetch=o.prefetch, pin_memory=o.pin_memory):
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out; plan fields guard against a changed setup."""
        o = self.options
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "batches_consumed": self._consumed,
            "seed": o.seed,
            "shuffle": o.shuffle,
            "shuffle_window": o.shuffle_window,
            "num_rows": self.split.num_rows,
            "rank": o.rank,
            "world_size": o.world_size,
            "batch_size": self.plan.batch_size,
            "num_batches": self.plan.num_batches,
            "global_batch": o.global_batch,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """The next ``iter()`` resumes at batch ``batches_consumed`` of ``epoch``, same order.

        In global-batch mode the state may come from a different rank or world size:
        the row order and the plan do not depend on them (and the model checkpoint is
        resharded by DCP), so only rank/world_size are exempt from the check.
        """
        mine = self.state_dict()
        sd = {"global_batch": False, **sd}  # states saved before global batches existed
        keys: tuple[str, ...] = _STATE_KEYS
        if self.options.global_batch and sd["global_batch"]:
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


_P = ParamSpec("_P")


def _taking_options_of(options: Callable[_P, LoaderOptions]) -> Callable[Concatenate[SplitData, str, _P], CTRLoader]:
    """``make_loader`` with the parameters of ``options`` after ``(data, split)``, checked by mypy:
    the keyword list is declared once, on ``LoaderOptions``, not copied into a second signature."""

    def make_loader(data: SplitData, split: str, /, *args: _P.args, **kwargs: _P.kwargs) -> CTRLoader:
        """Opens ``split`` of ``data`` and returns this rank's loader; see ``recsys.data.loader``.

        The parameters after ``split`` are ``LoaderOptions``'s: ``batch_size`` and the keywords
        rank, world_size, shuffle, seed, drop_last, equal_batches, global_batch, prefetch,
        shuffle_window, pin_memory, check_ids.

        Example::

            train = make_loader(d, "train", 4096, rank=r, world_size=w, shuffle=True,
                                global_batch=True, drop_last=True)    # 4096 rows per step in all
            val = make_loader(d, "val", 8192, rank=r, world_size=w, equal_batches=True)
        """
        return CTRLoader(open_split(data, split), options(*args, **kwargs))

    make_loader.__qualname__ = "make_loader"
    return make_loader


make_loader = _taking_options_of(LoaderOptions)


__all__ = [
    "BatchPlan",
    "CTRLoader",
    "LoaderError",
    "LoaderOptions",
    "NpySplit",
    "SchemaError",
    "SplitSource",
    "make_loader",
    "open_split",
    "plan_batches",
    "rank_row_range",
]
