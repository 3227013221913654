"""Inference cost of each arm's replica 0: exact parameter and FLOP counts, and forward latency
timed round-robin, in two serving layouts.

Counts and latency do not depend on trained weights, so replicas are built fresh from their
specs.  The two latencies (``Budget``):

- ``latency_ms``, "1-proc": the replica as one ``EnsembleGroup`` in one process, its members
  one after another (what ``python -m recsys.serve`` runs by default).
- ``latency_parallel_ms``, "parallel": members fanned out, one server per member, all at
  once; the replica answers when its slowest member does, so this is the max over its member
  specs of each member's own latency (one member as its own ``EnsembleGroup``).  It leaves
  out the fan-out's own costs (the request copy, the network, the merge, the tail of the
  slowest of M servers under load), so it is the best case of parallel serving.  A single
  model's two latencies are one measurement.  Member specs that differ only in the seed cost
  the same and are timed once.

Every module (each arm's group, each distinct member spec) is timed in the same round-robin,
so all the medians see the same machine load.

Equal-latency rule (``recsys.study.paired.best_within_latency``, used by the report): for
each ensemble, the rival is the single model (M = 1: the base or any parameter-scaled arm, of
any FLOP budget) with the best mean test AUC among those whose 1-proc latency is <= the
ensemble's latency, read once with the ensemble served in parallel and once in one process.
No tolerance: the medians are compared as measured.  Picking the rival by its test AUC favours
the rival, so the rule is conservative for the ensemble.

Example::

    budgets = [arm_budget(a, schema) for a in arms]                       # counts, latency None
    lat = interleaved_latency_ms([arm_modules(a, schema) for a in arms], schema, 1024, 50)
    budgets = measure_budgets(arms, schema, 1024, 50, 1)                  # both latencies
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from recsys.study.plan import Arm

if TYPE_CHECKING:
    from recsys.data.schema import Schema
    from recsys.ensemble import EnsembleGroup
    from recsys.models.member import Member


@dataclass
class Budget:
    dense_params: int
    embedding_params: int
    flops: int
    latency_ms: float | None  # members one after another in one process
    latency_parallel_ms: float | None = None  # one server per member: the slowest member's latency


def _members(specs: Sequence[str], schema: Schema) -> list[Member]:
    """Freshly initialized members of ``specs``, named as a run names them."""
    # lazy: `import recsys.study` stays torch-free, so `python -m recsys.study --help` is fast
    from recsys.ensemble import member_names
    from recsys.models.registry import build_member

    return [build_member(s, schema, n) for s, n in zip(specs, member_names(specs))]


def arm_modules(arm: Arm, schema: Schema) -> EnsembleGroup:
    """Replica 0 of an arm as one ``EnsembleGroup`` (freshly initialized: latency and counts
    do not depend on the trained weights)."""
    from recsys.ensemble import EnsembleGroup  # lazy: `import recsys.study` stays torch-free

    return EnsembleGroup(_members(arm.specs, schema))


def member_modules(specs: Sequence[str], schema: Schema) -> list[EnsembleGroup]:
    """Each member spec as its own one-member ``EnsembleGroup`` (what one server per member runs)."""
    from recsys.ensemble import EnsembleGroup  # lazy: `import recsys.study` stays torch-free

    return [EnsembleGroup([m]) for m in _members(specs, schema)]


def arm_budget(arm: Arm, schema: Schema, group: EnsembleGroup | None = None) -> Budget:
    """Exact parameter and FLOP counts of one replica (latency is measured separately);
    ``group`` is the replica already built by ``arm_modules``, if the caller has it."""
    from recsys.budget import count_params, spec_flops  # lazy: `import recsys.study` stays torch-free (--help)

    dense, emb = count_params(arm_modules(arm, schema) if group is None else group)
    return Budget(dense, emb, sum(spec_flops(s, schema) for s in arm.specs), None)


def interleaved_latency_ms(
    modules: Sequence[EnsembleGroup], schema: Schema, batch_size: int, repeats: int
) -> list[float]:
    """Median forward time (ms) of each module at ``batch_size``, timed round-robin.

    Why not ``recsys.budget.forward_latency_ms`` per arm: on a shared machine the
    load changes over seconds, and timing arms one after another turns that drift
    into differences between arms.  Round-robin puts every arm under the same
    drift, so the medians compare.  The replica runs its members one after another
    (as ``EnsembleGroup`` does): the cost without fan-out parallelism.
    """
    # lazy: `import recsys.study` stays torch-free (--help)
    import torch
    from tqdm import tqdm

    from recsys.budget import random_inputs

    dense, kjt = random_inputs(schema, batch_size)
    times: list[list[float]] = [[] for _ in modules]
    with torch.no_grad():
        for m in modules:
            m.eval()
            m(dense, kjt)  # warm-up
        for _ in tqdm(range(repeats), desc="latency rounds", leave=False):
            for i, m in enumerate(modules):
                t0 = time.perf_counter()
                m(dense, kjt)
                times[i].append(1000.0 * (time.perf_counter() - t0))
    return [statistics.median(t) for t in times]


def measure_budgets(
    arms: Sequence[Arm], schema: Schema, latency_batch: int, latency_repeats: int, latency_threads: int
) -> list[Budget]:
    """Every arm's ``Budget``; with ``latency_batch > 0`` both latencies too (see the module
    docstring), timed on ``latency_threads`` torch threads (restored afterwards)."""
    import torch  # lazy: `import recsys.study` stays torch-free (--help)

    from recsys.study.plan import set_fields

    threads = torch.get_num_threads()
    torch.set_num_threads(latency_threads)
    try:
        # each multi-member replica is built once, for its counts and its 1-proc latency
        groups = {i: arm_modules(a, schema) for i, a in enumerate(arms) if len(a.specs) > 1}
        budgets = [arm_budget(a, schema, groups.get(i)) for i, a in enumerate(arms)]
        if latency_batch > 0:
            # one module per distinct seedless member spec (a single model's group is its member's)
            # and one per multi-member arm, all timed in one round-robin
            keys = [[set_fields(s, seed=0) for s in a.specs] for a in arms]
            distinct = list(dict.fromkeys(k for ks in keys for k in ks))
            multi = list(groups)
            modules = member_modules(distinct, schema) + [groups[i] for i in multi]
            lat = interleaved_latency_ms(modules, schema, latency_batch, latency_repeats)
            own = dict(zip(distinct, lat))
            for i, (b, ks) in enumerate(zip(budgets, keys)):
                b.latency_parallel_ms = max(own[k] for k in ks)
                b.latency_ms = b.latency_parallel_ms if len(ks) == 1 else lat[len(distinct) + multi.index(i)]
    finally:
        torch.set_num_threads(threads)
    return budgets
