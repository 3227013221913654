"""The worker pool: chunks run on threads (C engine) or forked processes (pyarrow), results in order.

Why in order: results are consumed in chunk order, so the output never depends on the
worker count.  Why a bounded window (2 x workers in flight) and not ``Pool.imap``: its feeder
thread would read a whole gzip file ahead into memory.  The process-wide tuning a worker
process gets (``keep_freed_memory``) is asked for explicitly, by the pool's caller or a CLI
entry point; importing or calling this module in-process never changes the caller's process.

Example::

    pool = make_pool(workers=4, engine="arrow", tune_malloc=True)   # None for workers <= 1
    try:
        for result in ordered_map(run_hash_chunk, tasks, job, pool, workers=4):
            ...
    finally:
        if pool is not None:
            pool.close()
            pool.join()
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from multiprocessing.pool import AsyncResult, Pool, ThreadPool
from typing import Callable, Iterable, Iterator, TypeVar

import pyarrow as pa

J = TypeVar("J")  # the job: what every item of one map shares
T = TypeVar("T")  # an item (a chunk task)
R = TypeVar("R")  # its result

DRAIN_SECONDS = 300.0  # after a failure, how long in-flight chunks may take before the pool is terminated


def keep_freed_memory() -> None:
    """Lets glibc's malloc keep freed chunk-sized buffers for the next chunk (Linux only).

    Why: every chunk allocates tens of MB of arrays; by default glibc maps each one
    fresh (``mmap``) and unmaps it on free, so every page is faulted in and zeroed by
    the kernel again for every chunk: ~0.15-0.3 us/row of system CPU in pool workers.
    Raising the mmap and trim thresholds reuses the same heap pages instead; peak
    memory stays bounded by one chunk's working set per process.  It changes the whole
    process: call it only in a process that is the converter's alone (a pool worker,
    a converter CLI), never from library code running in someone else's process.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): keep the defaults
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 512 << 20)
    mallopt(m_trim_threshold, 1 << 30)


def _init_worker(tune_malloc: bool, close_fds: tuple[int, ...]) -> None:
    # The CLI turns SIGTERM into an exception (to clean up); a forked worker must not keep that:
    # Pool.terminate() SIGTERMs its workers, and one busy in C code or blocked on the task queue
    # never runs a Python handler, so terminate() (after any failure mid-run) hung.  The worker
    # was forked with SIGTERM blocked (make_pool): a SIGTERM sent before this point is pending,
    # and kills it here, once the default action is back.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    pa.set_cpu_count(1)  # one process per core already
    if tune_malloc:
        keep_freed_memory()
    # the staging lock means "the driver is alive": after a kill -9 of the driver, orphaned
    # workers (which exit at their next read of the task pipe) must not keep it looking alive
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _call(args: tuple[Callable[[J, T], R], J, T]) -> R:
    fn, job, item = args
    return fn(job, item)


def make_pool(workers: int, engine: str, tune_malloc: bool = False,
              close_fds: Iterable[int] = ()) -> Pool | None:
    """A worker pool, or None for in-process work (workers <= 1).

    The C engine gets threads: its kernels run without the GIL, and threads share
    the loaded library and the vocabulary tables with no fork, pickling or spill
    files (1M rows, min-count, 2 workers: 1.5-1.8 s with numba in forked workers,
    0.68-0.79 s with C in threads).  The pyarrow engine gets processes, forked, not
    spawned: start-up is instant, nothing is re-imported, and it works
    when the caller has no importable ``__main__`` (stdin, notebooks).  Arrow
    registers at-fork handlers (``arrow::internal::RegisterAtFork``) that rebuild
    its thread pools in the child, and ``convert`` creates the pool before running
    any pyarrow kernel itself.

    ``tune_malloc``: each forked worker tunes its own malloc (``keep_freed_memory()``);
    threads never do, they share the caller's process.  ``close_fds``: descriptors a forked
    worker closes at start (the staging locks: see ``staging.held_lock_fds``).
    """
    if workers <= 1:
        return None
    if engine == "native":
        return ThreadPool(workers)
    # SIGTERM blocked while the pool forks its workers and starts its threads (which inherit the
    # mask, so a worker it re-forks later is born blocked too): a worker SIGTERMed by
    # Pool.terminate() before its initializer ran used to lose the signal and hang terminate()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return mp.get_context("fork").Pool(workers, initializer=_init_worker,
                                           initargs=(tune_malloc, tuple(close_fds)))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def ordered_map(fn: Callable[[J, T], R], items: Iterable[T], job: J, pool: Pool | None,
                workers: int) -> Iterator[R]:
    """fn(job, item) for each item, in order, on the pool (or here when pool is None).

    At most 2 x workers chunks are in flight, unlike ``Pool.imap`` whose feeder
    thread would read a whole gzip file ahead into memory.
    """
    if pool is None:
        for item in items:
            yield fn(job, item)
        return
    pending: deque[AsyncResult[R]] = deque()
    try:
        for item in items:
            pending.append(pool.apply_async(_call, ((fn, job, item),)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        # Left early (bad input found mid-run, a failed chunk, Ctrl-C): the caller terminates the
        # pool next.  Let the chunks in flight finish first: Pool.terminate() stops the result
        # thread and then writes to the result pipe, so a worker still sending a large result
        # (pass-1 counts: MBs) would hold the pipe's lock forever and terminate() would hang.
        deadline = time.monotonic() + DRAIN_SECONDS
        for r in pending:
            r.wait(max(0.0, deadline - time.monotonic()))
