"""The server's side of the fan-out: one worker process per member, its pipe, its deadlines and
its restarts.

Why a process per member: a member's forward is a chain of small ops dispatched from Python,
so in one process M members run one after another and the latency grows ~M-fold.  With a
worker per member (``recsys.serve.worker``) they run at the same time, and the latency a
caller sees stays near the slowest member's plus the hand-off (a pipe round trip), as long
as there is a core per member.

What a caller can rely on (docs/serving.md):

- Request ids: every request carries a new id and every reply the id of its request; a
  reply with another id is stale and dropped, so an answer is always to the request asked.
- Deadlines: every wait has one, ``timeout_s`` for a request (all members together; the
  send of a big request included) and ``startup_timeout_s`` for a worker's "ready".
- A known state after every failure: a member's own error is one ServeError line, and the
  other members' replies to that request are still read, so none is left in a pipe.  A
  worker that misses the deadline is killed; a dead worker is noticed.  Either is restarted
  (it reloads its member from the checkpoint) and the request fails with one line naming
  the member; the next request waits for the new worker's "ready".  At most
  ``max_restarts`` restarts in a row (a reply resets the count): after that the member is
  down and every request is refused with one line, never a restart loop.

Example::

    pool = FanoutMembers(source, [0, 1], ["m0_fnn", "m1_fnn"], timeout_s=10,
                         startup_timeout_s=180, max_restarts=3)   # waits for both "ready"
    logits = pool.logits(dense, ids)   # float32 [B, 2], one column per member
    pool.close()
"""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing as mp
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Sequence, Union

import numpy as np

from recsys.serve.members import error_text
from recsys.serve.request import ServeError
from recsys.serve.worker import READY, MemberSource, serve_member

__all__ = ["FanoutMembers", "join_errors"]

Payload = Union[np.ndarray, str, None]
"""A reply's payload: logits [B] ("ok"), one line ("error"), the member name ("ready")."""
Exchange = tuple[str, Payload]
"""``(status, payload)`` of the reply to one request; ``("sent", None)`` for a send only."""


def _exchange(conn: Connection, buf: memoryview | bytes | None, rid: int | None) -> Exchange:
    """Send one pickled message (if any) and read replies until the one for ``rid``;
    ``rid=None``: send only.  A reply with another id is stale (its request's caller gave up)
    and dropped.  Blocks without a deadline: the caller's ``Future`` carries it."""
    if buf is not None:
        conn.send_bytes(buf)
    if rid is None:
        return "sent", None
    while True:
        got, status, payload = conn.recv()
        if got == rid:
            return status, payload


class _Courier:
    """A daemon thread that owns one worker's pipe and runs its exchanges one after another.

    Why a thread: a stopped worker blocks the send of a request bigger than the pipe buffer
    as well as the read of its reply, and ``Connection`` has no deadline for either.  The
    server waits on the ``Future`` with its deadline instead, and on a miss kills the
    worker, which ends the blocked call (EOF / broken pipe).  One thread per pipe keeps the
    messages of two requests from interleaving; being a daemon it never holds up exit.
    """

    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self._jobs: queue.SimpleQueue[tuple[cf.Future[Exchange], memoryview | bytes | None, int | None] | None] = \
            queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"recsys-serve-courier-{name}", daemon=True).start()

    def submit(self, buf: memoryview | bytes | None, rid: int | None) -> cf.Future[Exchange]:
        f: cf.Future[Exchange] = cf.Future()
        self._jobs.put((f, buf, rid))
        return f

    def retire(self) -> None:
        """Finish the queued exchanges (they fail fast once the worker is dead), then close the pipe."""
        self._jobs.put(None)

    def _run(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                f, buf, rid = job
                if f.set_running_or_notify_cancel():
                    try:
                        f.set_result(_exchange(self.conn, buf, rid))
                    except BaseException as e:  # EOF, broken pipe, an unreadable reply: the server decides
                        f.set_exception(e)
        finally:
            self.conn.close()


@dataclass(eq=False)
class _Slot:
    """One member's worker: its process, the courier that owns its pipe, and its health."""

    j: int  # config index
    name: str
    proc: BaseProcess | None = None
    courier: _Courier | None = None
    state: str = "starting"  # starting (its "ready" not read yet) | ready | down
    restarts: int = 0  # restarts since the member's worker last replied to a request
    reason: str = ""  # why it is down


def _exit_text(proc: BaseProcess | None) -> str:
    if proc is None:
        return ""
    proc.join(5)  # it is dead or dying: reap it to read its exit code
    code = proc.exitcode
    if code is None:
        return ""
    if code < 0:
        try:
            return f" (killed by {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f" (exit code {code})"


def join_errors(errors: list[str]) -> str:
    """One line for a request that failed in several members: the first error, and who else failed."""
    if len(errors) == 1:
        return errors[0]
    return f"{errors[0]} (and {len(errors) - 1} more: {' | '.join(errors[1:])})"


class FanoutMembers:
    """Members ``indices`` (config order, named ``names``), one spawned worker each.

    Starting one imports torch and loads its member (~5 s); the constructor returns once every
    worker sent its "ready" within ``startup_timeout_s``, or stops them all and raises one
    ``ServeError`` line naming each member that failed.  Not thread-safe: the caller
    (``EnsembleServer``) runs one request at a time.
    """

    def __init__(self, source: MemberSource, indices: Sequence[int], names: Sequence[str], *,
                 timeout_s: float, startup_timeout_s: float, max_restarts: int) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.max_restarts = max_restarts
        self._rids = itertools.count(1)
        self._ctx = mp.get_context("spawn")  # fork would copy this process's torch threads and state
        self._slots: list[_Slot] = []
        try:
            self._slots = [_Slot(j, name) for j, name in zip(indices, names)]
            for s in self._slots:
                self._spawn(s)
            failures = self._await_ready(self._slots)
            if failures:
                raise ServeError(join_errors([f"member {s.name}: {detail}" for s, detail in failures]))
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ workers

    def _spawn(self, s: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        p = self._ctx.Process(target=serve_member, daemon=True, name=f"recsys-serve-{s.name}",
                              args=(child, self.source, s.j))
        try:
            p.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        s.proc, s.courier, s.state = p, _Courier(parent, s.name), "starting"

    def _stop(self, s: _Slot) -> None:
        """Kill the worker (a stopped one too: SIGKILL needs no cooperation) and retire its pipe."""
        if s.proc is not None:
            if s.proc.is_alive():
                s.proc.kill()
            s.proc.join(10)
            if s.proc.exitcode is not None:
                s.proc.close()
        if s.courier is not None:
            s.courier.retire()
        s.proc, s.courier = None, None

    def _fault(self, s: _Slot, reason: str) -> str:
        """A worker is stuck, dead or never became ready: replace it (or, out of restarts,
        mark the member down).  Returns the request's error line for this member."""
        self._stop(s)
        m = self.max_restarts
        if s.restarts >= m:
            s.state, s.reason = "down", reason
            return (f"member {s.name}: {reason}; not restarted: {s.restarts} restarts in a row already "
                    f"(max_restarts = {m}), the member is down")
        s.restarts += 1
        try:
            self._spawn(s)
        except Exception as e:
            s.state, s.reason = "down", f"{reason}; its restart failed: {error_text(e)}"
            return f"member {s.name}: {s.reason}"
        return (f"member {s.name}: {reason}; its worker is restarting from the checkpoint "
                f"(restart {s.restarts} of at most {m} in a row)")

    def _await_ready(self, slots: list[_Slot]) -> list[tuple[_Slot, str]]:
        """Read each starting worker's ready message within ``startup_timeout_s`` (one deadline
        for all: they start together).  Returns the failures as ``(slot, reason)``."""
        futs = {s: s.courier.submit(None, READY) for s in slots if s.courier is not None}
        done, _ = cf.wait(futs.values(), timeout=self.startup_timeout_s)
        failures = []
        for s, f in futs.items():
            if f not in done:
                failures.append((s, f"no 'ready' from its worker within startup_timeout_s = "
                                    f"{self.startup_timeout_s:g} s"))
            elif f.exception() is not None:
                failures.append((s, f"worker process exited during start-up{_exit_text(s.proc)}"))
            else:
                status, detail = f.result()
                if status == "ready":
                    s.state = "ready"
                else:
                    failures.append((s, str(detail)))
        return failures

    def _ensure_ready(self) -> None:
        """Refuse if a member is down; wait for restarted workers' ready (a failed start-up is
        a fault: restarted again, one try per request, or the member goes down)."""
        for s in self._slots:
            if s.state == "down":
                raise ServeError(f"member {s.name} is down ({s.reason}); start a new server")
            if s.courier is None:  # a restart interrupted (KeyboardInterrupt) between stop and spawn
                self._spawn(s)
        starting = [s for s in self._slots if s.state == "starting"]
        if starting:
            failures = self._await_ready(starting)
            if failures:
                raise ServeError(join_errors([self._fault(s, f"its restarted worker did not start: {d}")
                                              for s, d in failures]))

    def worker_pids(self) -> list[int | None]:
        """The pid of each member's worker, in member order (None: down); empty once closed."""
        return [s.proc.pid if s.proc is not None else None for s in self._slots]

    def member_states(self) -> dict[str, str]:
        """``{member name: "starting" | "ready" | "down"}``; empty once closed."""
        return {s.name: s.state for s in self._slots}

    # ------------------------------------------------------------------ requests

    def logits(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Member logits float32 [B, M] of one checked request (``dense`` [B, Dd], ``ids`` [B, F]),
        or one ``ServeError`` line naming every member that failed it."""
        self._ensure_ready()
        rid = next(self._rids)
        buf = ForkingPickler.dumps((rid, dense, ids))  # pickled once for all members
        futs = []
        for s in self._slots:
            assert s.courier is not None and s.state == "ready"  # _ensure_ready's promise
            futs.append(s.courier.submit(buf, rid))
        done, _ = cf.wait(futs, timeout=self.timeout_s)  # every member starts before any answer is awaited
        errors, cols = [], []
        for s, f in zip(self._slots, futs):
            if f not in done:
                errors.append(self._fault(s, f"no answer within timeout_s = {self.timeout_s:g} s (worker killed)"))
            elif (exc := f.exception()) is not None:
                if isinstance(exc, (EOFError, OSError)):
                    reason = f"worker process died{_exit_text(s.proc)}"
                else:
                    reason = f"unreadable reply ({error_text(exc)})"
                errors.append(self._fault(s, reason))
            else:
                s.restarts = 0  # it replied: a restart that led here was not a crash loop
                status, out = f.result()
                if status == "ok":
                    assert isinstance(out, np.ndarray)
                    cols.append(out)
                else:
                    errors.append(f"member {s.name}: {out}")
        if errors:
            raise ServeError(join_errors(errors))
        return np.stack(cols, axis=1)  # [B, M]

    def close(self) -> None:
        """Ask every worker to exit, wait up to 10 s, then kill what is left (stopped ones too)."""
        stops = [s.courier.submit(ForkingPickler.dumps(None), None) for s in self._slots
                 if s.courier is not None and s.proc is not None and s.proc.is_alive()]
        cf.wait(stops, timeout=5)
        deadline = time.monotonic() + 10
        for s in self._slots:
            if s.proc is not None:
                s.proc.join(max(0.0, deadline - time.monotonic()))
        for s in self._slots:
            self._stop(s)
        self._slots = []
