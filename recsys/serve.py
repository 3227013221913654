"""Serving a trained ensemble: every request fans out to one worker process per member, and
the answer is ``sigmoid(mean of the members' logits)``, the merge that evaluation reports.

Why a process per member: a member's forward is a chain of small ops dispatched from Python,
so in one process M members run one after another and the latency grows ~M-fold.  With a
worker per member they run at the same time, and the latency a caller sees stays near the
slowest member's plus the hand-off (a pipe round trip), as long as there is a core per
member.  Each worker loads its member from the training checkpoints (DCP reshards them into
an unsharded module) and runs it with ``torch.inference_mode`` on its own threads.
``mode="inline"`` runs every member in the caller's process instead, as the baseline; it
gives the same answers.

Requests are raw rows, as a caller has them: ``dense`` float [B, Dd] and ``ids`` int [B, F]
(one id per sparse field, the npy layout).  ``recsys.serve_request`` checks them (shapes,
integer ids inside their tables, finite and bounded dense values, 1 <= B <= max_batch_rows)
and refuses a bad one with one line naming the field and row, before any worker sees it.

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

    with EnsembleServer("configs/demo.toml", "checkpoints/demo", timeout_s=10) as server:
        probs, member_logits = server.predict(dense, ids)   # [B], [B, M]

    python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --timeout-s 10
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import numpy as np
import torch

from recsys.checkpoint import load_trained_group
from recsys.config import ExperimentConfig, load_config
from recsys.data.batch import kjt_from_ids
from recsys.errors import UserError, one_line
from recsys.models.member import Member
from recsys.serve_request import (DEFAULT_MAX_ABS_DENSE, DEFAULT_MAX_BATCH_ROWS, RequestError, RequestSpec,
                                  ServeError)

__all__ = ["EnsembleServer", "RequestError", "ServeError", "WorkerHook", "load_trained_members", "main"]

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_STARTUP_TIMEOUT_S = 180.0
DEFAULT_MAX_RESTARTS = 3

WorkerHook = Callable[[str, np.ndarray, np.ndarray], None]
"""``hook(member name, dense float32 [B, Dd], ids int64 [B, F])``, run before each forward."""

_READY = 0  # the request id of a worker's start-up reply; requests count from 1


def load_trained_members(
    cfg: ExperimentConfig, indices: Sequence[int], checkpoint_root: str | Path, which: str = "best"
) -> list[Member]:
    """Members ``indices`` (config order) with their groups' checkpointed weights; each group's
    checkpoint is read once, however many of its members are asked for."""
    groups: dict[int, Any] = {}
    members = []
    for j in indices:
        k = next(k for k, idx in enumerate(cfg.groups) if j in idx)
        if k not in groups:
            groups[k] = load_trained_group(cfg, k, checkpoint_root, which)[0]
        member = groups[k].members[cfg.member_names[j]]
        assert isinstance(member, Member)
        members.append(member.eval())
    return members


def _forward(members: Sequence[Member], dense: np.ndarray, ids: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Logits [B, len(members)]; the request's KJT is built once for all of them."""
    with torch.inference_mode():
        kjt = kjt_from_ids(torch.from_numpy(ids), list(names))
        dense_t = torch.from_numpy(dense)
        return torch.stack([m(dense_t, kjt) for m in members], dim=1).numpy()


def _worker(conn: Connection, config: str, overrides: list[str], checkpoint: str, which: str, j: int,
            threads: int, hook: WorkerHook | None) -> None:
    """One member's process: load it, reply ``(0, "ready", name)``, then answer each request
    ``(rid, dense, ids)`` with ``(rid, "ok", logits [B])`` or ``(rid, "error", one line)``
    until ``None`` arrives or the server's end of the pipe closes."""
    torch.set_num_threads(threads)
    try:
        cfg = load_config(config, overrides)
        members = load_trained_members(cfg, [j], checkpoint, which)
        names = cfg.schema().sparse_names
        name = cfg.member_names[j]
        conn.send((_READY, "ready", name))
    except Exception as e:  # reported by the server as one line
        try:
            conn.send((_READY, "error", f"{type(e).__name__}: {one_line(e)}"))
        except OSError:
            pass
        _quit(1)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the server is gone
            _quit(0)
        if msg is None:
            _quit(0)
        rid, dense, ids = msg
        try:
            if hook is not None:
                hook(name, dense, ids)
            reply: tuple[int, str, Any] = (rid, "ok", _forward(members, dense, ids, names)[:, 0])
        except Exception as e:
            reply = (rid, "error", f"{type(e).__name__}: {one_line(e)}")
        try:
            conn.send(reply)
        except OSError:
            _quit(0)


def _quit(code: int) -> NoReturn:
    """End a worker at once: a normal interpreter exit tears torch down for ~3 s, which made
    ``close()`` and every restart wait; a worker has nothing to flush but stdio."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exchange(conn: Connection, buf: Any, rid: int | None) -> tuple[str, Any]:
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
        self._jobs: queue.SimpleQueue[tuple[cf.Future[tuple[str, Any]], Any, int | None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"recsys-serve-courier-{name}", daemon=True).start()

    def submit(self, buf: Any, rid: int | None) -> cf.Future[tuple[str, Any]]:
        f: cf.Future[tuple[str, Any]] = cf.Future()
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


def _join_errors(errors: list[str]) -> str:
    """One line for a request that failed in several members: the first error, and who else failed."""
    if len(errors) == 1:
        return errors[0]
    return f"{errors[0]} (and {len(errors) - 1} more: {' | '.join(errors[1:])})"


class EnsembleServer:
    """Answers ``predict(dense, ids)`` with the merged probability and every member's logit.

    ``mode="fanout"`` starts one worker process per member (spawned: each imports torch and
    loads its member, ~5 s); ``mode="inline"`` keeps all members in this process and sets
    its torch threads to ``threads_per_member``.  ``members`` (config indices) serves a
    subset, e.g. the first m for the AUC-vs-m curve.

    Limits and deadlines (see the module docstring for what happens when one is hit):
    ``timeout_s`` per request, ``startup_timeout_s`` per worker start-up (a restart's
    included), ``max_restarts`` restarts in a row per member, ``max_batch_rows`` rows per
    request and ``max_abs_dense`` per dense value (``recsys.serve_request``).

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
        self._hook = worker_hook
        self._worker_args = (str(config), list(overrides), str(checkpoint), which, threads_per_member, worker_hook)
        self._slots: list[_Slot] = []
        self._members: list[Member] = []
        self._rids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        if mode == "inline":
            torch.set_num_threads(threads_per_member)
            self._members = load_trained_members(self.cfg, self.members, checkpoint, which)
            return
        self._ctx = mp.get_context("spawn")  # fork would copy this process's torch threads and state
        try:
            self._slots = [_Slot(j, name) for j, name in zip(self.members, self.names)]
            for s in self._slots:
                self._spawn(s)
            failures = self._await_ready(self._slots)
            if failures:
                raise ServeError(_join_errors([f"member {s.name}: {detail}" for s, detail in failures]))
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ workers

    def _spawn(self, s: _Slot) -> None:
        config, overrides, checkpoint, which, threads, hook = self._worker_args
        parent, child = self._ctx.Pipe()
        p = self._ctx.Process(target=_worker, daemon=True, name=f"recsys-serve-{s.name}",
                              args=(child, config, overrides, checkpoint, which, s.j, threads, hook))
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
            s.state, s.reason = "down", f"{reason}; its restart failed: {type(e).__name__}: {one_line(e)}"
            return f"member {s.name}: {s.reason}"
        return (f"member {s.name}: {reason}; its worker is restarting from the checkpoint "
                f"(restart {s.restarts} of at most {m} in a row)")

    def _await_ready(self, slots: list[_Slot]) -> list[tuple[_Slot, str]]:
        """Read each starting worker's ready message within ``startup_timeout_s`` (one deadline
        for all: they start together).  Returns the failures as ``(slot, reason)``."""
        futs = {s: s.courier.submit(None, _READY) for s in slots if s.courier is not None}
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
                raise ServeError(_join_errors([self._fault(s, f"its restarted worker did not start: {d}")
                                               for s, d in failures]))

    def worker_pids(self) -> list[int | None]:
        """The pid of each member's worker, in ``self.names`` order (None: down, or inline)."""
        return [s.proc.pid if s.proc is not None else None for s in self._slots] or [None] * len(self.names)

    def member_states(self) -> dict[str, str]:
        """``{member name: "starting" | "ready" | "down"}`` ("ready" for every member inline)."""
        if self.mode == "inline":
            return {n: "ready" for n in self.names}
        return {s.name: s.state for s in self._slots}

    # ------------------------------------------------------------------ requests

    def predict(self, dense: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(probability [B], member logits [B, M])`` for B rows; merged = sigmoid(mean logit).

        Raises ``RequestError`` (a ``ServeError``) for a bad request before any member runs, and
        ``ServeError`` with one line naming the member when a member fails this request.
        """
        dense, ids = self.spec.validate(dense, ids)
        with self._lock:
            if self._closed:
                raise ServeError("the server is closed")
            logits = self._inline(dense, ids) if self.mode == "inline" else self._fanout(dense, ids)
        return 1.0 / (1.0 + np.exp(-logits.mean(axis=1))), logits

    def _inline(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self._hook is not None:
            for name in self.names:
                try:
                    self._hook(name, dense, ids)
                except Exception as e:
                    raise ServeError(f"member {name}: {type(e).__name__}: {one_line(e)}") from e
        try:
            return _forward(self._members, dense, ids, self.sparse_names)  # [B, M]
        except Exception as e:
            raise ServeError(f"members {', '.join(self.names)}: {type(e).__name__}: {one_line(e)}") from e

    def _fanout(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
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
                    reason = f"unreadable reply ({type(exc).__name__}: {one_line(exc)})"
                errors.append(self._fault(s, reason))
            else:
                s.restarts = 0  # it replied: a restart that led here was not a crash loop
                status, out = f.result()
                if status == "ok":
                    cols.append(out)
                else:
                    errors.append(f"member {s.name}: {out}")
        if errors:
            raise ServeError(_join_errors(errors))
        return np.stack(cols, axis=1)  # [B, M]

    def close(self) -> None:
        """Ask every worker to exit, wait up to 10 s, then kill what is left (stopped ones too)."""
        with self._lock:
            self._closed = True
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
            self._members = []

    def __enter__(self) -> "EnsembleServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- CLI: latency


def _percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1e3
    return f"p50 {np.percentile(ms, 50):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms"


def _time_requests(server: EnsembleServer, batches: list[tuple[np.ndarray, np.ndarray]], requests: int,
                   warmup: int) -> tuple[list[float], np.ndarray]:
    """Seconds per request, and the probabilities of the first pass over ``batches``."""
    for i in range(warmup):
        server.predict(*batches[i % len(batches)])
    lat, probs = [], []
    for i in range(requests):
        d, x = batches[i % len(batches)]
        t0 = time.perf_counter()
        prob, _ = server.predict(d, x)
        lat.append(time.perf_counter() - t0)
        if i < len(batches):
            probs.append(prob)
    return lat, np.concatenate(probs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recsys.serve",
        description="Serve a trained ensemble on rows of a split: request latency with members fanned out to one "
                    "process each, against all members in one process, and a check that both give the same answers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --batch 1 "
               "--requests 500 --mode fanout\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --sweep\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --mode fanout "
               "--timeout-s 5 --max-batch-rows 4096",
    )
    p.add_argument("--config", required=True, help="the experiment TOML the ensemble was trained with")
    p.add_argument("--checkpoint", required=True, help="its checkpoint directory (group0/, group1/, ...)")
    p.add_argument("--split", default="test", help="rows to send as requests")
    p.add_argument("--batch", type=int, default=256, help="rows per request")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10, help="requests sent before timing")
    p.add_argument("--mode", choices=["both", "fanout", "inline"], default="both")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="checkpoint per group")
    p.add_argument("--threads", type=int, default=1, help="torch threads per member")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--sweep", action="store_true",
                   help="latency of the first m members for m = 1..M, both modes (the latency-vs-M table)")
    p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                   help="deadline of one request, all members together; a worker that misses it is killed and "
                        "restarted (default %(default)g)")
    p.add_argument("--startup-timeout-s", type=float, default=DEFAULT_STARTUP_TIMEOUT_S,
                   help="deadline of a worker's start-up, a restart's included (default %(default)g)")
    p.add_argument("--max-restarts", type=int, default=DEFAULT_MAX_RESTARTS,
                   help="restarts in a row of one member's worker before the member is down (default %(default)s)")
    p.add_argument("--max-batch-rows", type=int, default=DEFAULT_MAX_BATCH_ROWS,
                   help="most rows one request may carry; larger ones are refused (default %(default)s)")
    p.add_argument("--max-abs-dense", type=float, default=DEFAULT_MAX_ABS_DENSE,
                   help="largest |dense value| accepted in a request (default %(default)g)")
    args = p.parse_args(argv)
    from recsys.data.loader import open_split

    try:
        if args.batch < 1 or args.requests < 1 or args.warmup < 0 or args.threads < 1:
            raise ServeError(f"--batch, --requests and --threads must be >= 1 and --warmup >= 0, got "
                             f"{args.batch}, {args.requests}, {args.threads} and {args.warmup}")
        cfg = load_config(args.config, args.set)
        rows = open_split(cfg.data_source(), args.split)
        n = min(rows.num_rows, args.batch * (args.requests + args.warmup))
        dense, ids, _ = rows.read(np.arange(n))
        batches = [(dense[i:i + args.batch], ids[i:i + args.batch]) for i in range(0, n, args.batch)]
        batches = [b for b in batches if len(b[1]) == args.batch] or batches
        modes = ["fanout", "inline"] if args.mode == "both" or args.sweep else [args.mode]
        sizes = range(1, len(cfg.members) + 1) if args.sweep else [len(cfg.members)]
        knobs = dict(timeout_s=args.timeout_s, startup_timeout_s=args.startup_timeout_s,
                     max_restarts=args.max_restarts, max_batch_rows=args.max_batch_rows,
                     max_abs_dense=args.max_abs_dense)
        table = []
        for m in sizes:
            answers: dict[str, np.ndarray] = {}
            p50 = {}
            for mode in modes:
                t = time.perf_counter()
                with EnsembleServer(args.config, args.checkpoint, mode=mode, which=args.which,
                                    threads_per_member=args.threads, overrides=args.set,
                                    members=range(m), **knobs) as server:
                    start_s = time.perf_counter() - t
                    lat, answers[mode] = _time_requests(server, batches, args.requests, args.warmup)
                p50[mode] = float(np.percentile(lat, 50)) * 1e3
                print(f"{mode}: {m} of {len(cfg.members)} members, batch {args.batch}, {args.requests} requests: "
                      f"{_percentiles(lat)} (start-up {start_s:.1f} s)", flush=True)
            if len(answers) == 2:
                diff = float(np.abs(answers["fanout"] - answers["inline"]).max())
                print(f"fanout vs inline: max |probability difference| {diff:.2e}")
                if diff > 1e-5:
                    print("error: fanout and inline answers differ", file=sys.stderr)
                    return 1
            table.append((m, p50))
        if args.sweep:
            print(f"\n| members | fanout p50 ms | inline p50 ms |   ({os.cpu_count()} CPU cores, batch {args.batch})")
            print("|---:|---:|---:|")
            for m, p in table:
                print(f"| {m} | {p['fanout']:.2f} | {p['inline']:.2f} |")
    except UserError as e:  # ServeError, RequestError, CheckpointMissing, ConfigError, LoaderError, ...
        print("error: " + one_line(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
