"""``python -m recsys.serve``: request latency of a trained ensemble on rows of a split, members
fanned out to one process each against all members in one process, and a check that both
give the same answers (``--engine inprocess``, the default); or, with ``--engine ray``, the
ensemble as a Ray Serve application over HTTP (``recsys.serve.ray_cli``).

Why here and only here: the command line is the one place that reads the machine (its CPU
count, for the sweep table's heading) and turns a user error into one line and exit status 2
(``recsys.cli.run_main``); the server itself takes everything as arguments.

Example::

    python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --sweep
    python -m recsys.serve --engine ray --config configs/demo.toml --checkpoint checkpoints/demo --port 8000
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

import numpy as np

from recsys.cli import run_main
from recsys.config import load_config
from recsys.data.loader import open_split
from recsys.serve.latency import percentiles, sweep_table, time_requests
from recsys.serve.ray_cli import RAY_EXAMPLES, add_ray_arguments, run_ray
from recsys.serve.request import DEFAULT_MAX_ABS_DENSE, DEFAULT_MAX_BATCH_ROWS, ServeError
from recsys.serve.server import DEFAULT_MAX_RESTARTS, DEFAULT_STARTUP_TIMEOUT_S, DEFAULT_TIMEOUT_S, EnsembleServer

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments, with the examples ``--help`` prints."""
    p = argparse.ArgumentParser(
        prog="python -m recsys.serve",
        description="Serve a trained ensemble. --engine inprocess (the default): request latency on rows of a split "
                    "with members fanned out to one process each, against all members in one process, and a check "
                    "that both give the same answers. --engine ray: the ensemble as a Ray Serve application over "
                    "HTTP, one deployment per member, merged before a deadline (docs/serving.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --batch 1 "
               "--requests 500 --mode fanout\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --sweep\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --mode fanout "
               "--timeout-s 5 --max-batch-rows 4096\n" + RAY_EXAMPLES,
    )
    p.add_argument("--engine", choices=["inprocess", "ray"], default="inprocess",
                   help="inprocess: latency of this machine's processes on a split (default); ray: serve over HTTP")
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
    add_ray_arguments(p)
    return p


def _run(args: argparse.Namespace, cores: int | None) -> int:
    """Times each mode (and, with ``--sweep``, each member count); 1 if the modes' answers differ."""
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
    table = []
    for m in sizes:
        answers: dict[str, np.ndarray] = {}
        p50 = {}
        for mode in modes:
            t = time.perf_counter()
            with EnsembleServer(args.config, args.checkpoint, mode=mode, which=args.which,
                                threads_per_member=args.threads, overrides=args.set, members=range(m),
                                timeout_s=args.timeout_s, startup_timeout_s=args.startup_timeout_s,
                                max_restarts=args.max_restarts, max_batch_rows=args.max_batch_rows,
                                max_abs_dense=args.max_abs_dense) as server:
                start_s = time.perf_counter() - t
                lat, answers[mode] = time_requests(server, batches, args.requests, args.warmup)
            p50[mode] = float(np.percentile(lat, 50)) * 1e3
            print(f"{mode}: {m} of {len(cfg.members)} members, batch {args.batch}, {args.requests} requests: "
                  f"{percentiles(lat)} (start-up {start_s:.1f} s)", flush=True)
        if len(answers) == 2:
            diff = float(np.abs(answers["fanout"] - answers["inline"]).max())
            print(f"fanout vs inline: max |probability difference| {diff:.2e}")
            if diff > 1e-5:
                print("error: fanout and inline answers differ", file=sys.stderr)
                return 1
        table.append((m, p50))
    if args.sweep:
        print("\n" + sweep_table(table, cores, args.batch))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; a user error (``ServeError``, ``CheckpointMissing``, ``ConfigError``,
    ``LoaderError``, ...) is one ``error: ...`` line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    if args.engine == "ray":
        return run_main("", lambda: run_ray(args))
    return run_main("", lambda: _run(args, os.cpu_count()))
