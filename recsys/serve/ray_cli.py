"""``python -m recsys.serve --engine ray``: the ensemble as a Ray Serve application over HTTP,
until Ctrl-C.

Why a module of its own: ``recsys.serve.cli`` keeps the in-process latency command (the
default engine, torch only); this one adds the Ray options and imports Ray only when asked.
It reads nothing from the environment: the cluster is ``--address`` (none: a local Ray).

Example::

    python -m recsys.serve --engine ray --config configs/demo.toml --checkpoint checkpoints/demo --port 8000
    curl -s localhost:8000/ -d '{"sparse": [[0, 1, ...]], "member_logits": true}'
"""
from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Callable

from recsys.serve.request import ServeError

if TYPE_CHECKING:
    from recsys.serve.ray_app import RayServeOptions

__all__ = ["RAY_EXAMPLES", "add_ray_arguments", "options_from_args", "run_ray"]

RAY_EXAMPLES = (
    "  python -m recsys.serve --engine ray --config configs/demo.toml --checkpoint checkpoints/demo --port 8000\n"
    "  python -m recsys.serve --engine ray --config configs/demo.toml --checkpoint checkpoints/demo "
    "--deadline-ms 50 --min-members 2 --max-batch-size 32 --batch-wait-ms 2\n"
    "  python -m recsys.serve --engine ray --config configs/demo.toml --checkpoint checkpoints/demo "
    "--address HEAD:6379 --host 0.0.0.0 --replicas 2 --num-cpus 1   # on a Ray cluster\n"
    "  serve run configs/serve_demo.yaml                             # the same, from a Serve config file\n"
    "  curl -s localhost:8000/ -d '{\"sparse\": [[...39 ids...]], \"member_logits\": true}'"
)


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--engine ray`` options (an argument group of the serve command)."""
    g = p.add_argument_group("--engine ray (a Ray Serve application over HTTP)")
    g.add_argument("--address", default=None,
                   help="a running Ray cluster to join (HOST:6379 or auto); default: start a local Ray")
    g.add_argument("--host", default="127.0.0.1", help="HTTP host of Serve's proxy (0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=8000, help="HTTP port (default %(default)s)")
    g.add_argument("--members", type=int, default=None, metavar="M", help="serve the first M members (default: all)")
    g.add_argument("--deadline-ms", type=float, default=1000.0,
                   help="a request's deadline; members that miss it are left out of the merge (default %(default)g)")
    g.add_argument("--min-members", type=int, default=1,
                   help="fewest members merged into an answer; fewer in time: HTTP 503 (default %(default)s)")
    g.add_argument("--replicas", type=int, default=1, help="replicas per member deployment (default %(default)s)")
    g.add_argument("--num-cpus", type=float, default=0.25,
                   help="CPUs Ray reserves per member replica, fractions allowed (default %(default)g)")
    g.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per member replica; > 0 runs it on CUDA")
    g.add_argument("--max-batch-size", type=int, default=16,
                   help="requests batched into one member forward (@serve.batch, default %(default)s)")
    g.add_argument("--batch-wait-ms", type=float, default=2.0,
                   help="longest wait for a batch to fill (default %(default)g)")
    g.add_argument("--num-cpus-local", type=int, default=None,
                   help="CPUs of the local Ray started without --address (default: all)")


def options_from_args(args: argparse.Namespace) -> RayServeOptions:
    """The ``RayServeOptions`` of the command line (imports Ray)."""
    from recsys.serve.ray_app import RayServeOptions
    from recsys.serve.ray_ingress import MergeOptions
    from recsys.serve.ray_member import BatchOptions

    if args.members is not None and args.members < 1:
        raise ServeError(f"--members must be >= 1, got {args.members}")
    return RayServeOptions(
        args.config, args.checkpoint, overrides=tuple(args.set),
        members=None if args.members is None else tuple(range(args.members)), which=args.which,
        replicas=args.replicas, num_cpus=args.num_cpus, num_gpus=args.num_gpus, threads=args.threads,
        batching=BatchOptions(args.max_batch_size, args.batch_wait_ms / 1e3),
        merge=MergeOptions(args.deadline_ms / 1e3, args.min_members),
        max_batch_rows=args.max_batch_rows, max_abs_dense=args.max_abs_dense)


def run_ray(args: argparse.Namespace, wait: Callable[[], None] | None = None) -> int:
    """Starts the application and serves until Ctrl-C (or until ``wait()`` returns), then
    shuts Serve down.  A user error (config, checkpoint, options) is a ``UserError`` line."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ServeError('--engine ray needs Ray Serve: pip install "ray[serve]==2.60.0" '
                         "(scripts/setup_env.sh installs it)") from None
    from ray import serve

    from recsys.serve.ray_app import start_app

    opts: RayServeOptions = options_from_args(args)
    url = start_app(opts, host=args.host, port=args.port, address=args.address, num_cpus=args.num_cpus_local)
    print(f"serving at {url} (POST a JSON body; GET describes the server; Ctrl-C stops)", flush=True)
    try:
        (wait or _forever)()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0


def _forever() -> None:
    while True:
        time.sleep(3600)
