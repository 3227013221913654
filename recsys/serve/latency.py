"""Request latency of a server, and the latency-vs-members table of ``python -m recsys.serve --sweep``.

Why a module of its own: timing is the same for any server with a ``predict(dense, ids)``,
and the table is the figure docs/serving.md and docs/benchmarks.md quote.

Example::

    lat, probs = time_requests(server, batches, requests=100, warmup=10)   # seconds, [requests' rows]
    print(percentiles(lat))                        # "p50 6.80 ms, p90 7.10 ms, p99 9.30 ms"
    print(sweep_table([(1, {"fanout": 6.8, "inline": 6.1})], cores=2, batch=256))
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from recsys.serve.server import EnsembleServer

__all__ = ["percentiles", "sweep_table", "time_requests"]


def percentiles(seconds: Sequence[float]) -> str:
    """``"p50 .. ms, p90 .. ms, p99 .. ms"`` of request latencies given in seconds."""
    ms = np.array(seconds) * 1e3
    return f"p50 {np.percentile(ms, 50):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms"


def time_requests(server: EnsembleServer, batches: Sequence[tuple[np.ndarray, np.ndarray]], requests: int,
                  warmup: int) -> tuple[list[float], np.ndarray]:
    """Seconds per request (``requests`` of them, cycling through ``batches`` of ``(dense, ids)``,
    after ``warmup`` untimed ones), and the probabilities of the first pass over ``batches``."""
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


def sweep_table(rows: Sequence[tuple[int, dict[str, float]]], cores: int | None, batch: int) -> str:
    """The markdown table of p50 milliseconds per mode for each member count: ``rows`` holds
    ``(m, {"fanout": p50 ms, "inline": p50 ms})``; ``cores`` and ``batch`` go in its heading."""
    lines = [f"| members | fanout p50 ms | inline p50 ms |   ({cores} CPU cores, batch {batch})", "|---:|---:|---:|"]
    lines += [f"| {m} | {p50['fanout']:.2f} | {p50['inline']:.2f} |" for m, p50 in rows]
    return "\n".join(lines)
