"""The study's plan: which runs to train and which arms (table rows) to read out of them.

An arm is a model configuration at one budget with its replicas.  Test-time scaling arms: the
M-member homogeneous ensembles (disjoint subsets of one run's independently trained base
members, K = M), the grouped ensembles (M members in K disjoint groups, each group trained on
the BCE of its mean logit; K = 1 is the joint ensemble) and a heterogeneous one (the paper's
models, one each).  Parameter-scaling arms, each FLOP-matched to an M-member ensemble: the base
with wider MLPs, deeper cross nets or wider embeddings, and the rivals of ``recsys.study.rivals``
(Multi-Embed, D-MoE, scaled-up Wukong and RankMixer).

Heavy imports (the model registry, ``recsys.budget``: torch and TorchRec) happen inside the
functions that need them, so ``python -m recsys.study --help`` stays instant.

Example::

    runs, arms, notes = build_plan("dcnv2:embedding_dim=8,mlp=64-32,cross_layers=2", schema)
    [r.name for r in runs]             # ['tts_indep', 'tts_params', 'tts_joint']
    [(a.kind, a.budget_m) for a in arms][:2]  # [('ensemble', 1), ('ensemble', 2)]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from recsys.study.plan_specs import (
    EMBEDDING_DIM_MULTIPLE,
    PlanError,
    match_budget,
    set_fields,
    short_spec,
    spec_field,
    spec_model,
)
from recsys.study.rivals import RIVALS, match_rival

if TYPE_CHECKING:
    from recsys.budget import FlopMatch
    from recsys.data.schema import Schema

__all__ = ["ALL_KNOBS", "BUDGETS", "DEFAULT_BASE", "DEFAULT_HETERO", "DEFAULT_KNOBS", "EMBEDDING_DIM_MULTIPLE",
           "KIND_LABELS", "TTS_KINDS", "Arm", "PlanError", "RunPlan", "build_plan", "match_budget", "set_fields",
           "short_spec", "spec_field", "spec_model"]

DEFAULT_BASE = "dcnv2:embedding_dim=8,mlp=64-32,cross_layers=2"  # configs/demo.toml's dcnv2 member
DEFAULT_HETERO = ("fnn:embedding_dim=8,mlp=64-32", "deepfm:embedding_dim=8,mlp=64-32", "ipnn:embedding_dim=8,mlp=64-32")
DEFAULT_KNOBS = ("mlp_width", "cross_layers", "embedding_dim")
ALL_KNOBS = (*DEFAULT_KNOBS, *RIVALS)  # every parameter-scaling arm (``--knobs all``)
# The arm kinds, in table order, with the label used in the table and the plot.
KIND_LABELS = {
    "ensemble": "homogeneous ensemble (K=M)",
    "joint": "homogeneous ensemble (K=1, joint)",
    "grouped": "homogeneous ensemble (1<K<M, grouped)",
    "hetero": "heterogeneous ensemble (K=M)",
    "mlp_width": "single, wider MLP",
    "cross_layers": "single, deeper cross net",
    "embedding_dim": "single, wider embeddings",
    "multiembed": "single, Multi-Embed",
    "dmoe": "single, D-MoE",
    "wukong": "single, scaled-up Wukong",
    "rankmixer": "single, scaled-up RankMixer",
}
TTS_KINDS = ("ensemble", "joint", "grouped", "hetero")  # test-time scaling; every other kind scales parameters
# What a parameter-scaling arm is matched to: its FLOPs per example (``Arm.target_flops``);
# "latency" arms are FLOP-matched too, and their measured latency is reported beside the ensemble's.
BUDGETS = ("flops", "latency")


@dataclass
class RunPlan:
    """One ``train_group.py`` run: its members and groups; ``lr``, when set, is the run's dense
    learning rate (one point of ``--lr-sweep``), else the study's."""

    name: str
    members: list[str]
    groups: list[list[int]]
    lr: float | None = None


@dataclass
class Arm:
    """One row of the table: a model configuration at one budget, with its replicas.

    ``replicas[r]`` lists the member indices (in run ``run``) whose mean logit is
    replica r; a single model's replica is one member.  ``k`` is the number of groups a
    replica's members trained in (M: independent, 1: joint); ``lr`` the run's dense learning
    rate when the study sweeps it (``recsys.study.sweep`` keeps each arm's best).
    """

    kind: str  # a key of KIND_LABELS
    m: int  # number of members of the arm (1 for a single model)
    budget_m: int  # the ensemble size whose FLOPs this arm matches
    run: str
    replicas: list[list[int]]
    specs: list[str]  # member specs of replica 0 (what the budget columns measure)
    target_flops: int = 0  # 0 = no FLOP matching (the ensembles themselves)
    k: int = 1
    lr: float | None = None
    budget: str = "flops"  # one of BUDGETS

    @property
    def label(self) -> str:
        if self.kind == "grouped":
            return f"homogeneous ensemble (K={self.k})"
        return KIND_LABELS.get(self.kind, self.kind)

    @property
    def scales_test_time(self) -> bool:
        """True for an ensemble arm (test-time scaling), False for a single scaled-up model."""
        return self.kind in TTS_KINDS


def _disjoint(m: int, count: int) -> list[list[int]]:
    """``count`` disjoint replicas of ``m`` consecutive members: [[0..m-1], [m..2m-1], ...]."""
    return [list(range(r * m, (r + 1) * m)) for r in range(count)]


def _match(knob: str, base: str, target: int, schema: Schema, tol: float) -> FlopMatch:
    if knob in RIVALS:
        return match_rival(knob, base, target, schema, tol)
    return match_budget(base, knob, target, schema, tol)


def _check_sizes(ms: list[int], ens_seeds: int, seeds: int, hetero_seeds: int, groups_k: Sequence[int]) -> None:
    if not ms or ms[0] < 1:
        raise PlanError(f"--ms must be positive integers, got {list(ms)}")
    if ens_seeds < ms[-1]:
        raise PlanError(f"--ens-seeds ({ens_seeds}) must be at least the largest M ({ms[-1]})")
    if seeds < 1:
        raise PlanError(f"--seeds must be >= 1, got {seeds}")
    if not 1 <= hetero_seeds <= ens_seeds:
        raise PlanError(f"--hetero-seeds must be in 1..--ens-seeds ({ens_seeds}), got {hetero_seeds}")
    bad = [k for k in groups_k if k < 1 or ms[-1] % k]
    if bad:
        raise PlanError(f"--groups-k: every K must divide the largest M ({ms[-1]}), got {bad}")


def build_plan(
    base: str,
    schema: Schema,
    ms: Sequence[int] = (1, 2, 4),
    ens_seeds: int = 8,
    seeds: int = 2,
    knobs: Sequence[str] = DEFAULT_KNOBS,
    hetero: Sequence[str] = DEFAULT_HETERO,
    joint: bool = True,
    prefix: str = "tts_",
    tol: float = 0.05,
    *,
    groups_k: Sequence[int] | None = None,
    hetero_seeds: int = 1,
    preset: str = "",
) -> tuple[list[RunPlan], list[Arm], list[str]]:
    """The runs to train, the arms (table rows) read out of them, and notes on arms that
    could not be FLOP-matched (skipped rather than trained off-budget).

    Runs: ``<prefix>indep`` (the base with ``ens_seeds`` seeds, then the heterogeneous
    extras, ``hetero_seeds`` sets of them; all independent), ``<prefix>params`` (the
    FLOP-matched single models, ``seeds`` seeds each, independent), ``<prefix>joint`` (K = 1:
    the largest M in one group, ``ens_seeds // M`` replicas) and ``<prefix>grouped_k<K>`` for
    each 1 < K < M of ``groups_k`` (default ``(1,)`` when ``joint``, else none; K = M is the
    independent ensemble, no run of its own).  Member seeds start at 1; the config seed (data
    order) is the same in every run.  ``preset`` (e.g. "tts4ctr") is set on every member spec.

    Example::

        runs, arms, notes = build_plan("dcnv2:embedding_dim=8,mlp=64-32,cross_layers=2", schema)
        [r.name for r in runs]  # ['tts_indep', 'tts_params', 'tts_joint']
    """
    from recsys.budget import spec_flops  # lazy: `import recsys.study` stays torch-free (--help)

    ms = sorted(set(int(m) for m in ms))
    ks = sorted(set(int(k) for k in (((1,) if joint else ()) if groups_k is None else groups_k)))
    _check_sizes(ms, ens_seeds, seeds, hetero_seeds, ks)
    with_preset = {"preset": preset} if preset else {}
    base = set_fields(base, seed=0, **with_preset)  # canonical, seedless
    base_flops = spec_flops(base, schema)

    indep = [set_fields(base, seed=s) for s in range(1, ens_seeds + 1)]
    arms: list[Arm] = []
    for m in ms:
        reps = _disjoint(m, ens_seeds // m)
        arms.append(Arm("ensemble", m, m, f"{prefix}indep", reps, [indep[i] for i in reps[0]], k=m))
    if hetero:
        reps = []
        for r in range(hetero_seeds):
            first = len(indep)
            indep += [set_fields(s, seed=first + 1 + i, **with_preset) for i, s in enumerate(hetero)]
            reps.append([r, *range(first, len(indep))])
        m = len(reps[0])
        arms.append(Arm("hetero", m, m, f"{prefix}indep", reps, [indep[i] for i in reps[0]], k=m))
    runs = [RunPlan(f"{prefix}indep", indep, [[i] for i in range(len(indep))])]

    scaled: list[str] = []
    notes: list[str] = []
    for knob in knobs:
        for m in ms:
            if m == 1:
                continue
            target = m * base_flops
            try:
                match = _match(knob, base, target, schema, tol)
            except ValueError as e:
                notes.append(f"no {KIND_LABELS.get(knob, knob)} arm at budget {m}x: {e}")
                continue
            first = len(scaled)
            scaled += [set_fields(match.spec, seed=s, **with_preset) for s in range(1, seeds + 1)]
            arms.append(Arm(knob, 1, m, f"{prefix}params", [[i] for i in range(first, len(scaled))],
                            [scaled[first]], target_flops=target))
    if scaled:
        runs.append(RunPlan(f"{prefix}params", scaled, [[i] for i in range(len(scaled))]))

    m = ms[-1]
    for k in ks:
        if m == 1 or k == m:
            continue  # K = M: the independent ensemble above
        reps = _disjoint(m, ens_seeds // m)
        members = indep[:len(reps) * m]  # the base seeds 1.. of the independent run: the same inits
        size = m // k
        groups = [r[j * size:(j + 1) * size] for r in reps for j in range(k)]
        name, kind = (f"{prefix}joint", "joint") if k == 1 else (f"{prefix}grouped_k{k}", "grouped")
        runs.append(RunPlan(name, members, groups))
        arms.append(Arm(kind, m, m, name, reps, [members[i] for i in reps[0]], k=k))
    return runs, arms, notes
