"""The Ray Serve application of a trained ensemble: one deployment per member and the merging
ingress, built from a config and a checkpoint; started here, by ``serve run``, or on a cluster.

Why a builder of its own: the same application is started three ways, and each must get the
same deployments: ``python -m recsys.serve --engine ray`` (``recsys.serve.ray_cli``),
``serve run configs/serve_demo.yaml`` (``app_builder`` below, with the YAML's ``args``), and
tests and benchmarks (``start_app``).  Paths are made absolute here, once, because replicas
may run in another directory or on another node (the checkpoint and data directory must then
be on a shared file system).

Resources: every deployment asks for a fraction of a CPU by default (0.25): Ray counts CPUs
as whole units, and M members + an ingress asking one each would wait forever on 2 cores.
A member's ``num_gpus`` > 0 places it on a GPU and runs it there.

Example::

    opts = RayServeOptions("configs/demo.toml", "checkpoints/demo", merge=MergeOptions(deadline_s=0.5))
    url = start_app(opts, port=8000)       # ray.init() here if needed, serve.start, serve.run
    requests.post(url, json={"sparse": ids.tolist(), "dense": dense.tolist()}).json()["probability"]

    serve run configs/serve_demo.yaml      # the same application from a Serve config file
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import ray
from ray import serve
from ray.serve.deployment import Application

from recsys.config import load_config
from recsys.serve.members import WorkerHook
from recsys.serve.ray_ingress import EnsembleIngress, MergeOptions
from recsys.serve.ray_member import BatchOptions, MemberReplica
from recsys.serve.request import DEFAULT_MAX_ABS_DENSE, DEFAULT_MAX_BATCH_ROWS, RequestSpec, ServeError
from recsys.serve.worker import MemberSource

__all__ = ["APP_NAME", "RayServeOptions", "app_builder", "build_app", "member_deployment_name", "start_app"]

APP_NAME = "recsys"


def member_deployment_name(member: str) -> str:
    """The Serve deployment of a member (``member-m0_dcnv2``): what a Serve config's
    ``deployments:`` list names to change one member's replicas or resources."""
    return f"member-{member}"


def _fraction(v: Any, what: str, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v < 1e6:
        raise ServeError(f"{what} must be a number >= {lo:g}, got {v!r}")
    return float(v)


def _count(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ServeError(f"{what} must be an integer >= 1, got {v!r}")
    return v


@dataclass(frozen=True)
class RayServeOptions:
    """Everything the application is built from.

    ``config`` / ``overrides`` / ``checkpoint`` / ``which``: the trained ensemble;
    ``members``: config indices to serve (None: all, in config order);
    ``replicas`` / ``num_cpus`` / ``num_gpus``: per member deployment (Serve's replica count
    and ``ray_actor_options``); ``threads``: torch threads per member replica;
    ``ingress_replicas`` / ``ingress_num_cpus``: the ingress deployment's;
    ``batching``: ``@serve.batch`` limits per member; ``merge``: deadline, minimum members and
    body size; ``max_batch_rows`` / ``max_abs_dense``: the request contract
    (``recsys.serve.request``); ``hook``: a module-level function run in each member replica
    before its forward (fault-injection tests only).
    """

    config: str
    checkpoint: str
    overrides: tuple[str, ...] = ()
    members: tuple[int, ...] | None = None
    which: str = "best"
    replicas: int = 1
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    threads: int = 1
    ingress_replicas: int = 1
    ingress_num_cpus: float = 0.25
    batching: BatchOptions = field(default_factory=BatchOptions)
    merge: MergeOptions = field(default_factory=MergeOptions)
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    max_abs_dense: float = DEFAULT_MAX_ABS_DENSE
    hook: WorkerHook | None = None

    def __post_init__(self) -> None:
        if self.which not in ("best", "latest"):
            raise ServeError(f"which must be best or latest, got {self.which!r}")
        for what in ("replicas", "threads", "ingress_replicas"):
            _count(getattr(self, what), what)
        _fraction(self.num_cpus, "num_cpus")
        _fraction(self.num_gpus, "num_gpus")
        _fraction(self.ingress_num_cpus, "ingress_num_cpus")

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> "RayServeOptions":
        """The options of a Serve config file's ``args:`` (flat keys; times in milliseconds:
        ``deadline_ms``, ``batch_wait_ms``; ``max_batch_size``, ``min_members``,
        ``max_body_bytes``; ``members`` as a list of config indices); unknown keys are refused."""
        a = dict(args)
        batch = {"max_batch_size": a.pop("max_batch_size", BatchOptions.max_batch_size),
                 "batch_wait_timeout_s": a.pop("batch_wait_ms", BatchOptions.batch_wait_timeout_s * 1e3) / 1e3}
        merge = {"deadline_s": a.pop("deadline_ms", MergeOptions.deadline_s * 1e3) / 1e3,
                 "min_members": a.pop("min_members", MergeOptions.min_members),
                 "max_body_bytes": a.pop("max_body_bytes", MergeOptions.max_body_bytes)}
        names = {f.name for f in dataclasses.fields(cls)} - {"batching", "merge", "hook"}
        unknown = sorted(set(a) - names)
        if unknown:
            raise ServeError(f"unknown serve argument {unknown[0]!r} (known: "
                             f"{', '.join(sorted(names | {'max_batch_size', 'batch_wait_ms', 'deadline_ms', 'min_members', 'max_body_bytes'}))})")
        if "config" not in a or "checkpoint" not in a:
            raise ServeError("serve arguments need config and checkpoint")
        if "overrides" in a:
            a["overrides"] = tuple(a["overrides"])
        if a.get("members") is not None:
            a["members"] = tuple(a["members"])
        return cls(**a, batching=BatchOptions(**batch), merge=MergeOptions(**merge))


def _absolute(opts: RayServeOptions) -> tuple[RayServeOptions, str]:
    """The options with absolute paths (config, checkpoint, and ``data_dir`` as an override),
    and the absolute data directory."""
    cfg = load_config(opts.config, list(opts.overrides))
    data_dir = str(Path(cfg.data_dir).resolve())
    overrides = (*opts.overrides, f"data_dir = {json.dumps(data_dir)}")
    return dataclasses.replace(opts, config=str(Path(opts.config).resolve()),
                               checkpoint=str(Path(opts.checkpoint).resolve()), overrides=overrides), data_dir


def build_app(opts: RayServeOptions) -> Application:
    """The ingress bound to one deployment per member (``member-<name>``), ready for ``serve.run``."""
    opts, data_dir = _absolute(opts)
    cfg = load_config(opts.config, list(opts.overrides))
    indices: Sequence[int] = range(len(cfg.members)) if opts.members is None else opts.members
    if not indices or any(not 0 <= j < len(cfg.members) for j in indices) or len(set(indices)) != len(indices):
        raise ServeError(f"members must be distinct config indices in [0, {len(cfg.members)}), got {opts.members}")
    names = [cfg.member_names[j] for j in indices]
    spec = RequestSpec.from_schema(cfg.schema(), max_batch_rows=opts.max_batch_rows, max_abs_dense=opts.max_abs_dense)
    source = MemberSource(opts.config, opts.overrides, opts.checkpoint, opts.which, opts.threads, opts.hook)
    device = "cuda" if opts.num_gpus > 0 else "cpu"
    member_apps = [
        serve.deployment(
            name=member_deployment_name(name), num_replicas=opts.replicas,
            ray_actor_options={"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus},
            max_ongoing_requests=max(16, 2 * opts.batching.max_batch_size),
            health_check_period_s=2.0, health_check_timeout_s=30.0,
        )(MemberReplica).bind(source, j, opts.batching, device)
        for j, name in zip(indices, names)
    ]
    ingress = serve.deployment(
        name="ingress", num_replicas=opts.ingress_replicas, ray_actor_options={"num_cpus": opts.ingress_num_cpus},
        max_ongoing_requests=256)(EnsembleIngress)
    return ingress.bind(member_apps, names, spec, data_dir, opts.merge)


def app_builder(args: dict[str, Any]) -> Application:
    """``serve run`` / ``serve deploy``'s entry point (``import_path:
    recsys.serve.ray_app:app_builder``): the application of the config file's ``args``."""
    return build_app(RayServeOptions.from_args(args))


def start_app(opts: RayServeOptions, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
              num_cpus: int | None = None, request_timeout_s: float = 30.0, name: str = APP_NAME,
              route_prefix: str = "/", warmup_timeout_s: float = 120.0) -> str:
    """Starts (or reaches) Ray, Serve's HTTP proxy on ``host:port``, and the application;
    returns once every replica is up, with the URL to POST requests to.

    ``address``: a running Ray cluster (``"auto"``, ``"HOST:6379"``); None starts a local Ray
    with ``num_cpus``.  ``request_timeout_s``: the proxy's own limit per request, a backstop
    behind the ingress's deadline.  ``name`` / ``route_prefix``: the application's, so that
    several ensembles share one Serve (each under its own prefix); where Serve already runs,
    its proxy (host, port) stays as it is.  Before returning it sends every member one
    warm-up row through the ingress (``EnsembleIngress.warmup``, at most ``warmup_timeout_s``),
    so that the first user request does not pay the handles' set-up against its deadline.
    """
    if not ray.is_initialized():
        if address is None:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, configure_logging=False)
        else:
            ray.init(address=address)
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s})
    ingress = serve.run(build_app(opts), name=name, route_prefix=route_prefix)
    missing = ingress.warmup.remote(warmup_timeout_s).result()
    if missing:
        raise ServeError("members did not answer a warm-up request: "
                         + "; ".join(f"{n}: {why}" for n, why in missing.items()))
    return f"http://{host}:{port}{route_prefix}"
