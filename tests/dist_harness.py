"""A small multi-process harness for gloo tests, in the spirit of TorchRec's
``MultiProcessTestBase`` but as a plain function pytest can call.

Example::

    def _body(rank: int, world_size: int, scale: float) -> float:
        t = torch.tensor([float(rank)])
        dist.all_reduce(t)               # the gloo world is initialized
        return t.item() * scale          # any picklable value comes back

    def test_sum() -> None:
        assert run_ranks(_body, 2, 10.0) == [10.0, 10.0]

``fn`` must be a module-level function (it is pickled into the children).  A failure
on any rank raises ``RankFailure`` in pytest with that rank's traceback; a hang
raises after ``timeout`` seconds; the other ranks are then terminated.

Processes come from a ``forkserver`` that preloads torch and torchrec once, so each
world costs a fork, not a fresh interpreter importing torchrec (seconds per rank on
2 shared cores).  Reuse one world for several checks where you can.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback
from typing import Any, Callable

_PRELOAD = ["torch", "torch.distributed", "torchrec", "torchrec.distributed"]


class RankFailure(AssertionError):
    """A rank raised, died, or the world timed out."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def _context() -> mp.context.BaseContext:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _child(
    fn: Callable[..., Any], rank: int, world_size: int, port: int, args: tuple[Any, ...], out: Any
) -> None:
    os.environ.update(
        MASTER_ADDR="localhost",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        # Plain pickle: torch's multiprocessing reducers would pass tensors as shared
        # memory that dies with this process.
        out.put((rank, True, pickle.dumps(result)))
    except BaseException:  # noqa: BLE001 -- every failure must reach the parent
        out.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0) -> list[Any]:
    """Runs ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks on localhost.

    Returns the per-rank return values, indexed by rank.
    """
    ctx = _context()
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(fn, r, world_size, port, args, out), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    failures: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(failures) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RankFailure(f"timed out after {timeout:.0f}s; ranks done: {sorted(results)}\n" + "\n".join(failures))
            try:
                rank, ok, payload = out.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results]
                if dead and out.empty():
                    time.sleep(0.5)  # let a last message arrive
                    if out.empty():
                        raise RankFailure(
                            f"rank(s) {dead} died with exit codes {[procs[r].exitcode for r in dead]}\n"
                            + "\n".join(failures)
                        )
                continue
            if ok:
                results[rank] = pickle.loads(payload)
            else:
                failures.append(f"--- rank {rank} ---\n{payload}")
                break  # the other ranks are likely blocked in a collective
        if failures:
            raise RankFailure("\n".join(failures))
    finally:
        for p in procs:
            p.join(timeout=5 if not failures else 0.1)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return [results[r] for r in range(world_size)]
