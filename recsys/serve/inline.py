"""The in-process baseline: every member in the caller's process, one after another.

Why keep it: it is what fanning out is measured against (``python -m recsys.serve``
compares the two), and it gives the same answers as the fan-out, since both run
``recsys.serve.members.forward_members`` on the same checked request.

Example::

    members = InlineMembers(cfg, [0, 1], "checkpoints/demo", sparse_names=cfg.schema().sparse_names,
                            which="best", threads=1, hook=None)
    logits = members.logits(dense, ids)   # float32 [B, 2]
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from recsys.serve.members import WorkerHook, error_text, forward_members, load_trained_members
from recsys.serve.request import ServeError

if TYPE_CHECKING:
    from recsys.config import ExperimentConfig
    from recsys.models.member import Member

__all__ = ["InlineMembers"]


class InlineMembers:
    """Members ``indices`` (config order) of ``cfg``, loaded here from ``checkpoint``; requests'
    ids come keyed by the schema's ``sparse_names``.

    ``threads``: this process's torch threads (``torch.set_num_threads``, process-wide: the
    baseline owns its process as a worker does).  ``hook``: run with ``(member name, dense,
    ids)`` before the forward, for each member; what it raises is that member's error.
    """

    def __init__(self, cfg: ExperimentConfig, indices: Sequence[int], checkpoint: str | Path, *,
                 sparse_names: Sequence[str], which: str, threads: int, hook: WorkerHook | None) -> None:
        self.names = [cfg.member_names[j] for j in indices]
        self.sparse_names = list(sparse_names)
        self._hook = hook
        torch.set_num_threads(threads)
        self._members: list[Member] = load_trained_members(cfg, indices, checkpoint, which)

    def worker_pids(self) -> list[int | None]:
        """No workers: None per member."""
        return [None] * len(self.names)

    def member_states(self) -> dict[str, str]:
        """Every member is "ready"."""
        return {n: "ready" for n in self.names}

    def logits(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Member logits float32 [B, M] of one checked request (``dense`` [B, Dd], ``ids`` [B, F]),
        or one ``ServeError`` line naming the member (a hook's error) or the members (a forward's)."""
        if self._hook is not None:
            for name in self.names:
                try:
                    self._hook(name, dense, ids)
                except Exception as e:
                    raise ServeError(f"member {name}: {error_text(e)}") from e
        try:
            return forward_members(self._members, dense, ids, self.sparse_names)  # [B, M]
        except Exception as e:
            raise ServeError(f"members {', '.join(self.names)}: {error_text(e)}") from e

    def close(self) -> None:
        """Drop the members (their weights are freed with the last reference)."""
        self._members = []
