"""Inference cost of each arm's replica 0: exact parameter and FLOP counts, and forward latency
timed round-robin over all arms.

Counts and latency do not depend on trained weights, so replicas are built fresh from their
specs; one replica is one ``EnsembleGroup`` running its members one after another.

Example::

    budgets = [arm_budget(a, schema) for a in arms]                       # counts, latency None
    lat = interleaved_latency_ms([arm_modules(a, schema) for a in arms], schema, 1024, 50)
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


@dataclass
class Budget:
    dense_params: int
    embedding_params: int
    flops: int
    latency_ms: float | None


def arm_modules(arm: Arm, schema: Schema) -> EnsembleGroup:
    """Replica 0 of an arm as one ``EnsembleGroup`` (freshly initialized: latency and counts
    do not depend on the trained weights)."""
    # lazy: `import recsys.study` stays torch-free, so `python -m recsys.study --help` is fast
    from recsys.ensemble import EnsembleGroup, member_names
    from recsys.models.registry import build_member

    return EnsembleGroup([build_member(s, schema, n) for s, n in zip(arm.specs, member_names(arm.specs))])


def arm_budget(arm: Arm, schema: Schema) -> Budget:
    """Exact parameter and FLOP counts of one replica (latency is measured separately)."""
    from recsys.budget import count_params, spec_flops  # lazy: `import recsys.study` stays torch-free (--help)

    dense, emb = count_params(arm_modules(arm, schema))
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
    """Every arm's ``Budget``; with ``latency_batch > 0`` its latency too, timed on
    ``latency_threads`` torch threads (restored afterwards)."""
    import torch  # lazy: `import recsys.study` stays torch-free (--help)

    threads = torch.get_num_threads()
    torch.set_num_threads(latency_threads)
    try:
        budgets = [arm_budget(a, schema) for a in arms]
        if latency_batch > 0:
            modules = [arm_modules(a, schema) for a in arms]
            for b, ms in zip(budgets, interleaved_latency_ms(modules, schema, latency_batch, latency_repeats)):
                b.latency_ms = ms
    finally:
        torch.set_num_threads(threads)
    return budgets
