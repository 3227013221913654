"""One ensemble member as a Ray Serve deployment: it loads only its own weights and batches
concurrent requests into one forward (``@serve.batch``).

Why a deployment per member: Serve places, restarts and scales each member on its own
(replicas, CPUs, GPUs per member), so M members run at the same time on M cores or nodes,
and the ingress (``recsys.serve.ray_ingress``) waits for the slowest that makes the deadline,
not for the sum.  Why batching in the member: requests arriving within
``batch_wait_timeout_s`` of each other share one forward, which is where a CTR model's time
goes (a chain of small ops dispatched from Python per call).

A call is ``logits(dense float32 [B, Dd], ids int64 [B, F])`` -> float32 [B], already checked by
the ingress; requests of different B batch together (rows are concatenated, then split).

Example::

    from ray import serve
    member = serve.deployment(MemberReplica).options(name="member-m0_fnn", num_replicas=1,
                                                     ray_actor_options={"num_cpus": 0.25})
    app = member.bind(MemberSource("configs/demo.toml", (), "checkpoints/demo", "best", 1, None), 0,
                      BatchOptions(max_batch_size=16, batch_wait_timeout_s=0.002), "cpu")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
import numpy as np
import torch
from ray import serve

from recsys.config import load_config
from recsys.data.batch import kjt_from_ids
from recsys.models.member import Member
from recsys.serve.members import forward_members, load_trained_members
from recsys.serve.request import ServeError
from recsys.serve.worker import MemberSource

__all__ = ["BatchOptions", "MemberReplica"]

# ``serve.batch``'s stubs describe a free function of one list; the method form with several
# list arguments, and the ``set_max_batch_size`` / ``set_batch_wait_timeout_s`` setters the
# constructor calls, are what it supports at run time (Ray Serve's batching guide).
_batched: Any = serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)


@dataclass(frozen=True)
class BatchOptions:
    """Cross-request batching of one member: at most ``max_batch_size`` requests per forward,
    gathered for at most ``batch_wait_timeout_s`` after the first arrives (0: never wait)."""

    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.002

    def __post_init__(self) -> None:
        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int) \
                or self.max_batch_size < 1:
            raise ServeError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")
        if not (isinstance(self.batch_wait_timeout_s, (int, float)) and 0 <= self.batch_wait_timeout_s < 60):
            raise ServeError(f"batch_wait_timeout_s must be in [0, 60) seconds, got {self.batch_wait_timeout_s!r}")


class MemberReplica:
    """Member ``j`` (config index) of ``source``'s ensemble, on ``device`` ("cpu" or "cuda").

    The constructor runs in the replica's process: it sets the torch threads, loads the
    member's group checkpoint and keeps only this member (``load_trained_members``), and sets
    the batching limits.  ``source.hook`` (a module-level function, for fault-injection tests)
    runs before each batch's forward with ``(name, dense, ids)`` of the whole batch.
    """

    def __init__(self, source: MemberSource, j: int, batching: BatchOptions, device: str = "cpu") -> None:
        torch.set_num_threads(source.threads)
        cfg = load_config(source.config, list(source.overrides))
        self.name = cfg.member_names[j]
        self.sparse_names = list(cfg.schema().sparse_names)
        self.device = torch.device(device)
        self._hook = source.hook
        self._member: Member = load_trained_members(cfg, [j], source.checkpoint, source.which)[0].to(self.device)
        self.logits.set_max_batch_size(batching.max_batch_size)
        self.logits.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    @_batched
    async def logits(self, dense: list[np.ndarray], ids: list[np.ndarray]) -> list[np.ndarray]:
        """One forward over the rows of every request in the batch; each request gets its own
        rows' logits float32 [B_i] back."""
        sizes = [len(x) for x in ids]
        d, x = np.concatenate(dense), np.concatenate(ids)
        if self._hook is not None:
            self._hook(self.name, d, x)
        out = self._forward(d, x)
        return np.split(out, np.cumsum(sizes)[:-1])

    def _forward(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self.device.type == "cpu":
            return forward_members([self._member], dense, ids, self.sparse_names)[:, 0]
        with torch.inference_mode():
            kjt = kjt_from_ids(torch.from_numpy(ids), self.sparse_names).to(self.device, non_blocking=True)
            out = self._member(torch.from_numpy(dense).to(self.device, non_blocking=True), kjt)
            return out.float().cpu().numpy()

    def member_name(self) -> str:
        """The member this replica serves (the ingress checks it against its own list)."""
        return self.name
