"""Reading ahead: one epoch's batches from a torchdata node chain, a thread and a bounded queue.

Why torchdata.nodes' ``Prefetcher`` (and ``PinMemory`` when asked): the next batches are
read in a thread while the current step runs, and the nodes' state is just an epoch and a
batch index, which the source can seek to in O(1) (see ``recsys.data.loader`` on resuming).

Errors: an exception in the prefetch thread travels to the consumer as an item and is raised
there unchanged, so a ``LoaderError`` keeps its one-line message (torchdata would wrap it with
the thread's traceback pasted into the message).

Example::

    def reader(epoch: int) -> Callable[[int], Batch]:       # batch i of that epoch
        return lambda i: split.batch(slice(i * 64, (i + 1) * 64))

    for batch in prefetched(reader, num_batches=10, epoch=0, start=0, prefetch=2, pin_memory=False):
        ...
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Union

from torchdata.nodes import BaseNode, PinMemory, Prefetcher
from torchrec.datasets.utils import Batch

EpochReader = Callable[[int], Callable[[int], Batch]]  # epoch -> (batch index -> Batch)


@dataclass(frozen=True)
class _Failed:
    """An error from the prefetch thread, passed through as an item (see the module docstring)."""

    error: Exception


_Item = Union[Batch, _Failed]


class BatchNode(BaseNode[_Item]):
    """torchdata node yielding batches ``start, start + 1, ...`` of one epoch; seekable state.

    State: ``{"epoch": e, "next_batch": i}``; ``reset`` with a state resumes there.
    """

    def __init__(self, reader: EpochReader, num_batches: int, epoch: int, start: int) -> None:
        super().__init__()
        self._reader = reader
        self._num_batches = num_batches
        self._initial = {"epoch": epoch, "next_batch": start}
        self._epoch = epoch
        self._next = start
        self._read: Callable[[int], Batch] | None = None

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        st = initial_state or self._initial
        self._epoch, self._next = int(st["epoch"]), int(st["next_batch"])
        self._read = self._reader(self._epoch)

    def next(self) -> _Item:
        if self._next >= self._num_batches:
            raise StopIteration
        assert self._read is not None, "BaseNode calls reset() before next()"
        try:
            b = self._read(self._next)
        except Exception as e:  # noqa: BLE001 - handed to the consumer unchanged, see _Failed
            self._next = self._num_batches  # stop reading ahead
            return _Failed(e)
        self._next += 1
        return b

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "next_batch": self._next}


def prefetched(
    reader: EpochReader, num_batches: int, epoch: int, start: int, *, prefetch: int, pin_memory: bool
) -> Iterator[Batch]:
    """Batches ``start..num_batches-1`` of ``epoch``, ``prefetch`` read ahead (0: none), pinned if asked."""
    root: BaseNode[_Item] = BatchNode(reader, num_batches, epoch, start)
    if prefetch > 0:
        root = Prefetcher(root, prefetch_factor=prefetch)
    if pin_memory:
        root = PinMemory(root)
    for item in root:
        if isinstance(item, _Failed):
            raise item.error
        yield item


__all__ = ["BatchNode", "EpochReader", "prefetched"]
