"""``python -m recsys.bench.serving``: a bounded HTTP load test of the Ray Serve ensemble on
127.0.0.1, against the number of members, the rows per request and in-process serving; the
AUC each number of members costs; a projection to one node per member.

Why a benchmark of its own: the claim under test is the paper's deployment claim, that an
ensemble's latency on the user side stays flat in M when members run in parallel.  Only the
load generator sees what a user sees (HTTP, JSON, the proxy, the ingress, the fan-out and the
slowest member), so that is what is measured; the in-process server (``recsys.serve``) is the
dependency-free baseline.

Load: every request body is encoded before timing.  ``closed``: one request in flight at a
time, ``--requests`` of them after ``--warmup``; ``open R/s``: requests sent at fixed times
``i / R`` whether or not earlier ones answered (open loop: a slow server builds a queue, as
with real traffic), at most ``--requests`` or ``--duration-s``; each request has a client
timeout, so a run always ends.  Throughput = answered requests / wall time.

Projection to one node per member: with a node (or core) per member, a request waits for the
slowest of M independent members.  The measured M = 1 latencies are that distribution
(proxy, ingress and one member, on this machine); the projection draws M of them per request
(bootstrap, 20,000 draws) and takes the largest, plus ``--rtt-ms`` for the network hop that
a member on another node adds.  It is an upper bound on the fan-out cost: the proxy and
ingress parts are counted in every draw.

Example::

    python -m recsys.bench.serving --config configs/demo.toml --checkpoint checkpoints/demo \\
        --members 1,2,4 --batch-sizes 1,64 --rates 50,100 --requests 300 --plot docs/serving_latency.png
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from recsys.cli import run_main
from recsys.errors import UserError

if TYPE_CHECKING:
    import aiohttp
    from matplotlib.figure import Figure

__all__ = ["Point", "auc_curve", "latency_figure", "main", "points_markdown", "project"]


@dataclass
class Point:
    """One measured (or projected) configuration: latencies in ms, throughput in requests/s."""

    engine: str  # "ray, serve batch <= 16" | inline | fanout | "projection of ..."
    members: int
    batch: int  # rows per request
    load: str  # "closed" | "open 50/s"
    p50_ms: float
    p99_ms: float
    throughput: float
    answered: int
    failed: int


def _point(engine: str, m: int, batch: int, load: str, lat_s: Sequence[float], failed: int, wall_s: float) -> Point:
    ms = np.asarray(lat_s, np.float64) * 1e3 if len(lat_s) else np.array([np.nan])
    return Point(engine, m, batch, load, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                 len(lat_s) / wall_s if wall_s > 0 else float("nan"), len(lat_s), failed)


# ------------------------------------------------------------------ the load generator

async def _post(session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float) -> float | None:
    """Seconds to a 200 answer with every member, or None (an error, a timeout, fewer members)."""
    import aiohttp

    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            payload = await r.read()
            ok = r.status == 200 and not json.loads(payload)["missing"]
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None
    return time.perf_counter() - t0 if ok else None


async def http_load(url: str, bodies: Sequence[bytes], *, requests: int, warmup: int, rate: float | None,
                    duration_s: float, timeout_s: float) -> tuple[list[float], int, float]:
    """``(latencies s, failed, wall s)``: closed loop (``rate`` None) or open loop at ``rate``/s."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
        for i in range(warmup):
            await _post(session, url, bodies[i % len(bodies)], timeout_s)
        t0 = time.perf_counter()
        if rate is None:
            got = []
            for i in range(requests):
                got.append(await _post(session, url, bodies[i % len(bodies)], timeout_s))
                if time.perf_counter() - t0 > duration_s:
                    break
        else:
            tasks = []
            for i in range(requests):
                at = t0 + i / rate
                if at - t0 > duration_s:
                    break
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                tasks.append(asyncio.ensure_future(_post(session, url, bodies[i % len(bodies)], timeout_s)))
            got = list(await asyncio.gather(*tasks))
        wall = time.perf_counter() - t0
    lat = [x for x in got if x is not None]
    return lat, len(got) - len(lat), wall


def project(lat_m1_s: Sequence[float], m: int, rtt_ms: float, seed: int = 0, draws: int = 20000) -> tuple[float, float]:
    """``(p50 ms, p99 ms)`` of the slowest of ``m`` independent draws from the M = 1 latencies,
    plus ``rtt_ms`` (one member per node)."""
    x = np.asarray(lat_m1_s, np.float64) * 1e3
    worst = np.random.default_rng(seed).choice(x, size=(draws, m)).max(axis=1) + (rtt_ms if m > 1 else 0.0)
    return float(np.percentile(worst, 50)), float(np.percentile(worst, 99))


# ------------------------------------------------------------------ the engines

def _rows(config: str, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    from recsys.config import load_config
    from recsys.data.loader import open_split

    rows = open_split(load_config(config).data_source(), split)
    dense, ids, _ = rows.read(np.arange(min(n, rows.num_rows)))
    return dense, ids


def _bodies(dense: np.ndarray, ids: np.ndarray, batch: int, count: int = 32) -> list[bytes]:
    starts = [(i * batch) % max(1, len(ids) - batch) for i in range(count)]
    return [json.dumps({"dense": dense[s:s + batch].tolist(), "sparse": ids[s:s + batch].tolist()}).encode()
            for s in starts]


def ray_points(args: argparse.Namespace, dense: np.ndarray, ids: np.ndarray
               ) -> tuple[list[Point], dict[tuple[str, int], list[float]]]:
    """Every (serve batch, members, rows, load) point of the Ray Serve application; the
    closed-loop latencies of M = 1 per (engine, rows per request), for the projection."""
    import ray
    from ray import serve

    from recsys.serve.ray_app import APP_NAME, RayServeOptions, build_app
    from recsys.serve.ray_ingress import MergeOptions
    from recsys.serve.ray_member import BatchOptions

    if args.throughput_optimized:  # read by Serve's processes at start-up, which inherit this environment
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    points: list[Point] = []
    m1: dict[tuple[str, int], list[float]] = {}
    quiet = {"enable_access_log": False, "log_level": "WARNING"}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port, "request_timeout_s": 30},
                    logging_config=quiet)
        url = f"http://127.0.0.1:{args.port}/"
        for mbs in args.max_batch_sizes:
            engine = f"ray, serve batch <= {mbs}"
            for m in args.members:
                opts = RayServeOptions(args.config, args.checkpoint, members=tuple(range(m)),
                                       batching=BatchOptions(mbs, args.batch_wait_ms / 1e3 if mbs > 1 else 0.0),
                                       merge=MergeOptions(deadline_s=args.deadline_ms / 1e3))
                serve.run(build_app(opts), name=APP_NAME, route_prefix="/", logging_config=quiet)
                for batch in args.batch_sizes:
                    bodies = _bodies(dense, ids, batch)
                    for rate in [None, *args.rates]:
                        lat, failed, wall = asyncio.run(http_load(
                            url, bodies, requests=args.requests, warmup=args.warmup if rate is None else 0,
                            rate=rate, duration_s=args.duration_s, timeout_s=args.timeout_s))
                        load = "closed" if rate is None else f"open {rate:g}/s"
                        points.append(p := _point(engine, m, batch, load, lat, failed, wall))
                        print(_row(p), flush=True)
                        if m == 1 and rate is None:
                            m1[engine, batch] = lat
    finally:
        serve.shutdown()
        ray.shutdown()
    return points, m1


def inprocess_points(args: argparse.Namespace, dense: np.ndarray, ids: np.ndarray) -> list[Point]:
    """Closed-loop latency of ``recsys.serve.EnsembleServer`` (no HTTP), inline and fan-out."""
    from recsys.serve.latency import time_requests
    from recsys.serve.server import EnsembleServer

    points = []
    for mode in args.inprocess:
        for m in args.members:
            with EnsembleServer(args.config, args.checkpoint, mode=mode, members=range(m)) as server:
                for batch in args.batch_sizes:
                    batches = [(dense[s:s + batch], ids[s:s + batch]) for s in range(0, 32 * batch, batch)]
                    t0 = time.perf_counter()
                    lat, _ = time_requests(server, batches, args.requests, args.warmup)
                    p = _point(mode, m, batch, "closed", lat, 0, time.perf_counter() - t0)
                    points.append(p)
                    print(_row(p), flush=True)
    return points


def auc_curve(config: str, checkpoint: str, split: str, which: str = "best") -> list[tuple[int, float, float, float]]:
    """``[(m, AUC of the first m members' merge, worst and best AUC of any m members)]`` on
    ``split``: the first m through ``recsys.eval.report.score`` (evaluation's curve), any m
    because a deadline leaves out whichever members are late."""
    import itertools

    import torch

    from recsys.config import load_config
    from recsys.data.loader import open_split
    from recsys.ensemble import merge_logits
    from recsys.eval.metrics import auc_score
    from recsys.eval.report import score
    from recsys.serve.members import forward_members, load_trained_members

    cfg = load_config(config)
    members = load_trained_members(cfg, range(len(cfg.members)), checkpoint, which)
    rows = open_split(cfg.data_source(), split)
    names = cfg.schema().sparse_names
    logits, labels = [], []
    for s in range(0, rows.num_rows, 8192):
        dense, ids, labels_part = rows.read(np.arange(s, min(s + 8192, rows.num_rows)))
        logits.append(forward_members(members, dense, ids.astype(np.int64), names))
        labels.append(labels_part)
    x, y = torch.from_numpy(np.concatenate(logits)), torch.from_numpy(np.concatenate(labels))
    report = score(x, y, cfg.member_names, cfg.groups)
    out = []
    for i, c in enumerate(report.curve):
        subsets = itertools.combinations(range(x.shape[1]), i + 1)
        any_m = [auc_score(merge_logits(x[:, list(sub)]), y) for sub in subsets]
        out.append((i + 1, float(c.auc), min(any_m), max(any_m)))
    return out


# ------------------------------------------------------------------ reports

def _row(p: Point) -> str:
    return (f"| {p.engine} | {p.members} | {p.batch} | {p.load} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | "
            f"{p.throughput:.1f} | {p.answered} | {p.failed} |")


def points_markdown(points: Sequence[Point]) -> str:
    """The figures table: one row per point."""
    head = ["| engine | members | rows/request | load | p50 ms | p99 ms | answered/s | answered | failed |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    return "\n".join(head + [_row(p) for p in points])


def latency_figure(points: Sequence[Point]) -> Figure:
    """p50 (solid) and p99 (dashed) against members, one request in flight, one panel per rows
    per request (a bare ``matplotlib.figure.Figure``: no pyplot, no backend chosen)."""
    from matplotlib.figure import Figure

    closed = [p for p in points if p.load == "closed"]
    batches = sorted({p.batch for p in closed})
    fig = Figure(figsize=(5.5 * len(batches), 4.2))
    for k, batch in enumerate(batches):
        ax = fig.add_subplot(1, len(batches), k + 1)
        for engine in sorted({p.engine for p in closed}):
            ps = sorted((p for p in closed if p.engine == engine and p.batch == batch), key=lambda p: p.members)
            if not ps:
                continue
            line, = ax.plot([p.members for p in ps], [p.p50_ms for p in ps], marker="o", label=engine,
                            ls=":" if engine.startswith("projection") else "-")
            ax.plot([p.members for p in ps], [p.p99_ms for p in ps], ls="--", color=line.get_color(), alpha=0.5)
        ax.set_xlabel("members M")
        ax.set_ylabel("latency ms (p50; p99 dashed)")
        ax.set_xticks(sorted({p.members for p in closed}))
        ax.set_title(f"{batch} row(s) per request")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recsys.bench.serving", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Bounded HTTP load test of the Ray Serve ensemble on 127.0.0.1: p50/p99/throughput vs members, "
                    "rows per request and in-process serving; AUC vs members; a one-node-per-member projection.",
        epilog="examples:\n"
               "  python -m recsys.bench.serving --config configs/demo.toml --checkpoint checkpoints/demo\n"
               "  python -m recsys.bench.serving --config configs/demo.toml --checkpoint checkpoints/demo "
               "--members 1,2,4 --batch-sizes 1,64 --rates 50,100 --requests 300 --plot docs/serving_latency.png\n"
               "  python -m recsys.bench.serving --config configs/demo.toml --checkpoint checkpoints/demo --auc-only")
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="test", help="rows sent as requests, and scored for the AUC curve")
    p.add_argument("--members", type=_ints, default=[1, 2, 4], help="member counts (the first m), e.g. 1,2,4")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 64], help="rows per request, e.g. 1,64")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",") if x], default=[50.0],
                   help="open-loop request rates per second (empty: closed loop only)")
    p.add_argument("--requests", type=int, default=200, help="requests per point (a bound)")
    p.add_argument("--duration-s", type=float, default=20.0, help="seconds per point at most (a bound)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--timeout-s", type=float, default=10.0, help="client timeout per request")
    p.add_argument("--deadline-ms", type=float, default=2000.0, help="the server's deadline")
    p.add_argument("--max-batch-sizes", type=_ints, default=[16],
                   help="@serve.batch requests per member forward, each a run (1: no batching, no wait), e.g. 1,16")
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--inprocess", type=lambda s: [x for x in s.split(",") if x], default=["inline", "fanout"],
                   help="in-process modes measured too (empty: none)")
    p.add_argument("--rtt-ms", type=float, default=0.2, help="network round trip added per remote member")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--throughput-optimized", action="store_true",
                   help="start the local Ray with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Serve runs user code on the "
                        "replica's own event loop: fewer thread hops per request)")
    p.add_argument("--auc-only", action="store_true", help="only the AUC-vs-members curve")
    p.add_argument("--json", type=Path, default=None, help="write every point here")
    p.add_argument("--plot", type=Path, default=None, help="write the latency plot here (PNG)")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.requests < 1 or args.duration_s <= 0 or not args.members or not args.batch_sizes:
        raise UserError("--requests, --duration-s, --members and --batch-sizes must be positive and non-empty")
    curve = auc_curve(args.config, args.checkpoint, args.split)
    print(f"\nAUC of the first m members' merge on {args.split} ({os.cpu_count()} CPUs):")
    print("| members used | AUC, first m | worst m | best m |\n|---:|---:|---:|---:|\n"
          + "\n".join(f"| {m} | {a:.4f} | {lo:.4f} | {hi:.4f} |" for m, a, lo, hi in curve), flush=True)
    if args.auc_only:
        return 0
    dense, ids = _rows(args.config, args.split, 32 * max(args.batch_sizes) + 1)
    ids = ids.astype(np.int64)
    print("\n" + points_markdown([]), flush=True)
    points, m1 = ray_points(args, dense, ids)
    points += inprocess_points(args, dense, ids)
    for (engine, batch), lat in m1.items():
        for m in args.members:
            p50, p99 = project(lat, m, args.rtt_ms)
            points.append(Point(f"projection of {engine}", m, batch, "closed", p50, p99, float("nan"), 0, 0))
    print(f"\n{points_markdown(points)}\n\n({os.cpu_count()} CPUs, uptime load {os.getloadavg()[0]:.2f})")
    closed = {(p.engine, p.members, p.batch): p for p in points if p.load == "closed"}
    for (engine, batch) in m1:
        if (engine, 2, batch) in closed:
            ratio = closed[engine, 2, batch].p50_ms / closed[engine, 1, batch].p50_ms
            print(f"{engine}, {batch} rows: p50 at M=2 / M=1 = {ratio:.2f} (target <= 1.25)")
    if args.json:
        args.json.write_text(json.dumps({"auc_curve": curve, "points": [asdict(p) for p in points]}, indent=1))
    if args.plot:
        latency_figure(points).savefig(args.plot, dpi=110)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; a user error is one ``serving: error: ...`` line and exit status 2."""
    args = build_parser().parse_args(argv)
    return run_main("serving", lambda: _run(args))


if __name__ == "__main__":
    raise SystemExit(main())
