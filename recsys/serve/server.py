"""``EnsembleServer``: a trained ensemble answering requests with ``sigmoid(mean of the members'
logits)``, the merge that evaluation reports.

Why one class over two ways of running members: the request contract
(``recsys.serve.request``), the merge and the one-request-at-a-time lock are the same whether
the members run in one worker process each (``mode="fanout"``, ``recsys.serve.fanout``) or all
in the caller's process (``mode="inline"``, ``recsys.serve.inline``, the baseline); both give
the same answers.  Members are loaded from the training checkpoints (DCP reshards them into
an unsharded module) and run with ``torch.inference_mode``.

Requests are raw rows, as a caller has them: ``dense`` float [B, Dd] and ``ids`` int [B, F]
(one id per sparse field, the npy layout), refused with one line naming the field and row
before any member sees a bad one.  Deadlines, request ids and restarts: ``recsys.serve.fanout``.

Example::

    with EnsembleServer("configs/demo.toml", "checkpoints/demo", timeout_s=10) as server:
        probs, member_logits = server.predict(dense, ids)   # [B], [B, M]
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recsys.config import load_config
from recsys.serve.fanout import FanoutMembers
from recsys.serve.inline import InlineMembers
from recsys.serve.members import WorkerHook
from recsys.serve.request import DEFAULT_MAX_ABS_DENSE, DEFAULT_MAX_BATCH_ROWS, RequestSpec, ServeError
from recsys.serve.worker import MemberSource

__all__ = ["DEFAULT_MAX_RESTARTS", "DEFAULT_STARTUP_TIMEOUT_S", "DEFAULT_TIMEOUT_S", "EnsembleServer"]

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_STARTUP_TIMEOUT_S = 180.0
DEFAULT_MAX_RESTARTS = 3


class EnsembleServer:
    """Answers ``predict(dense, ids)`` with the merged probability and every member's logit.

    ``mode="fanout"`` starts one worker process per member (spawned: each imports torch and
    loads its member, ~5 s); ``mode="inline"`` keeps all members in this process and sets
    its torch threads to ``threads_per_member``.  ``members`` (config indices) serves a
    subset, e.g. the first m for the AUC-vs-m curve.

    Limits and deadlines (``recsys.serve.fanout`` says what happens when one is hit):
    ``timeout_s`` per request, ``startup_timeout_s`` per worker start-up (a restart's
    included), ``max_restarts`` restarts in a row per member, ``max_batch_rows`` rows per
    request and ``max_abs_dense`` per dense value (``recsys.serve.request``).

    ``worker_hook``: a picklable callable (a module-level function) run before each forward
    with ``(member name, dense, ids)``, in the member's worker (inline: in this process);
    what it raises is that member's error for that request.  It is for fault-injection
    tests and instrumentation, and passed explicitly: nothing else changes a worker.

    One request at a time: ``predict`` holds a lock, so concurrent callers queue.
    """

    def __init__(
        self, config: str | Path, checkpoint: str | Path, *, mode: str = "fanout", which: str = "best",
        threads_per_member: int = 1, overrides: Sequence[str] = (), members: Sequence[int] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S, startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        max_restarts: int = DEFAULT_MAX_RESTARTS, max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        max_abs_dense: float = DEFAULT_MAX_ABS_DENSE, worker_hook: WorkerHook | None = None,
    ) -> None:
        if mode not in ("fanout", "inline"):
            raise ValueError(f"mode must be fanout or inline, got {mode!r}")
        if which not in ("best", "latest"):
            raise ValueError(f"which must be best or latest, got {which!r}")
        for knob, v in (("timeout_s", timeout_s), ("startup_timeout_s", startup_timeout_s)):
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise ServeError(f"{knob} must be a number of seconds > 0, got {v!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ServeError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
        self.cfg = load_config(config, list(overrides))
        schema = self.cfg.schema()
        self.spec = RequestSpec.from_schema(schema, max_batch_rows=max_batch_rows, max_abs_dense=max_abs_dense)
        self.members = list(range(len(self.cfg.members))) if members is None else list(members)
        if not self.members or any(not 0 <= j < len(self.cfg.members) for j in self.members):
            raise ServeError(f"members must be config indices in [0, {len(self.cfg.members)}), got {members}")
        self.names = [self.cfg.member_names[j] for j in self.members]
        self.sparse_names = schema.sparse_names
        self.num_dense = schema.num_dense
        self.mode = mode
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.max_restarts = max_restarts
        self._lock = threading.Lock()
        self._closed = False
        self._backend: InlineMembers | FanoutMembers
        if mode == "inline":
            self._backend = InlineMembers(self.cfg, self.members, checkpoint, sparse_names=self.sparse_names,
                                          which=which, threads=threads_per_member, hook=worker_hook)
        else:
            source = MemberSource(str(config), tuple(overrides), str(checkpoint), which, threads_per_member,
                                  worker_hook)
            self._backend = FanoutMembers(source, self.members, self.names, timeout_s=self.timeout_s,
                                          startup_timeout_s=self.startup_timeout_s, max_restarts=max_restarts)

    def worker_pids(self) -> list[int | None]:
        """The pid of each member's worker, in ``self.names`` order (None: down, or inline)."""
        return self._backend.worker_pids() or [None] * len(self.names)

    def member_states(self) -> dict[str, str]:
        """``{member name: "starting" | "ready" | "down"}`` ("ready" for every member inline)."""
        return self._backend.member_states()

    def predict(self, dense: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(probability [B], member logits [B, M])`` for B rows; merged = sigmoid(mean logit).

        ``dense`` / ``ids``: anything array-like, checked here.  Raises ``RequestError`` (a
        ``ServeError``) for a bad request before any member runs, and ``ServeError`` with one
        line naming the member when a member fails this request.
        """
        dense, ids = self.spec.validate(dense, ids)
        with self._lock:
            if self._closed:
                raise ServeError("the server is closed")
            logits = self._backend.logits(dense, ids)
        return 1.0 / (1.0 + np.exp(-logits.mean(axis=1))), logits

    def close(self) -> None:
        """Stop the members: fan-out asks every worker to exit, waits up to 10 s, then kills
        what is left (stopped ones too)."""
        with self._lock:
            self._closed = True
            self._backend.close()

    def __enter__(self) -> EnsembleServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
