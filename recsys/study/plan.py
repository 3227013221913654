"""The study's plan: which runs to train and which arms (table rows) to read out of them.

An arm is a model configuration at one FLOP budget with its replicas: the M-member
homogeneous ensembles (disjoint subsets of one run's independently trained base members),
FLOP-matched single models (wider MLPs, deeper cross nets, wider embeddings) and, optionally,
a K = 1 joint ensemble and a heterogeneous one.

Heavy imports (the model registry, ``recsys.budget``: torch and TorchRec) happen inside the
functions that need them, so ``python -m recsys.study --help`` stays instant.

Example::

    runs, arms, notes = build_plan("dcnv2:embedding_dim=8,mlp=64-32,cross_layers=2", schema)
    [r.name for r in runs]             # ['tts_indep', 'tts_params', 'tts_joint']
    [(a.kind, a.budget_m) for a in arms][:2]  # [('ensemble', 1), ('ensemble', 2)]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from recsys.errors import UserError

if TYPE_CHECKING:
    from recsys.budget import FlopMatch
    from recsys.data.schema import Schema
    from recsys.models.spec import MemberConfig

DEFAULT_BASE = "dcnv2:embedding_dim=8,mlp=64-32,cross_layers=2"  # configs/demo.toml's dcnv2 member
DEFAULT_HETERO = ("fnn:embedding_dim=8,mlp=64-32", "deepfm:embedding_dim=8,mlp=64-32", "ipnn:embedding_dim=8,mlp=64-32")
# FBGEMM's embedding kernels (TorchRec's sharded EBC) need dims divisible by 4, on CPU too.
EMBEDDING_DIM_MULTIPLE = 4
DEFAULT_KNOBS = ("mlp_width", "cross_layers", "embedding_dim")
# The arm kinds, in table order, with the label used in the table and the plot.
KIND_LABELS = {
    "ensemble": "homogeneous ensemble (K=M)",
    "joint": "homogeneous ensemble (K=1, joint)",
    "hetero": "heterogeneous ensemble (K=M)",
    "mlp_width": "single, wider MLP",
    "cross_layers": "single, deeper cross net",
    "embedding_dim": "single, wider embeddings",
}


class PlanError(UserError, ValueError):
    """A study that cannot be planned: bad sizes, or a knob that cannot match a budget."""


@dataclass
class RunPlan:
    """One ``train_group.py`` run: its members and groups."""

    name: str
    members: list[str]
    groups: list[list[int]]


@dataclass
class Arm:
    """One row of the table: a model configuration at one budget, with its replicas.

    ``replicas[r]`` lists the member indices (in run ``run``) whose mean logit is
    replica r; a single model's replica is one member.
    """

    kind: str  # a key of KIND_LABELS
    m: int  # number of members of the arm (1 for a single model)
    budget_m: int  # the ensemble size whose FLOPs this arm matches
    run: str
    replicas: list[list[int]]
    specs: list[str]  # member specs of replica 0 (what the budget columns measure)
    target_flops: int = 0  # 0 = no FLOP matching (the ensembles themselves)

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


def _parse(spec: str) -> tuple[str, MemberConfig]:
    # lazy: `import recsys.study` stays torch-free (the CLI's parser takes its defaults from here)
    from recsys.models.registry import MODELS
    from recsys.models.spec import parse_spec

    return parse_spec(spec, {k: v.config for k, v in MODELS.items()})


def set_fields(spec: str, **values: object) -> str:
    """``spec`` with some config fields replaced, in canonical form (defaults dropped).

    Example::

        set_fields("dcnv2:embedding_dim=8", seed=3)  # "dcnv2:seed=3,embedding_dim=8"
    """
    from recsys.budget import config_to_spec  # lazy: `import recsys.study` stays torch-free (--help)

    model, cfg = _parse(spec)
    changes: dict[str, Any] = dict(values)  # field names and types vary by model
    return config_to_spec(model, dataclasses.replace(cfg, **changes))


def spec_field(spec: str, name: str) -> object:
    """One config field of ``spec``: ``spec_field("dcnv2:cross_layers=3", "cross_layers") == 3``."""
    return getattr(_parse(spec)[1], name)


def short_spec(specs: Sequence[str]) -> str:
    """One spec per distinct seedless member spec, e.g. ``4 x dcnv2:...``."""
    plain = [set_fields(s, seed=0) for s in specs]
    out: list[str] = []
    for s in dict.fromkeys(plain):
        n = plain.count(s)
        out.append(f"{n} x {s}" if n > 1 else s)
    return " + ".join(out)


def match_budget(base: str, knob: str, target_flops: int, schema: Schema, tol: float = 0.05) -> FlopMatch:
    """The single model matching ``target_flops`` by ``knob``: a ``recsys.budget.FlopMatch``.

    ``mlp_width`` scales the MLPs continuously, so it always lands.  An integer
    knob (``cross_layers``, ``embedding_dim``, ``layers``) steps in large FLOP
    increments (one 312x312 cross layer is ~45% of the demo dcnv2), so when it
    misses ``tol`` it is set to the largest value whose FLOPs stay below the
    target, and the MLP width fills the remainder: the knob still carries most
    of the added compute, and the budget is still matched within ``tol``.
    """
    from recsys.budget import match_flops, spec_flops  # lazy: `import recsys.study` stays torch-free (--help)

    step = EMBEDDING_DIM_MULTIPLE if knob == "embedding_dim" else 1
    if knob in ("seed", "dropout"):
        raise PlanError(f"match_budget: {knob!r} does not change FLOPs; use mlp_width or a width/depth field")
    try:
        direct = match_flops(base, knob, target_flops, schema, tol)
        if knob.endswith("_width"):
            return direct
        found = spec_field(direct.spec, knob)
        if isinstance(found, int) and found % step == 0:
            return direct
        raise PlanError(f"{knob}={found} is not a multiple of {step}")
    except ValueError:
        value = getattr(_parse(base)[1], knob, None)
        if knob.endswith("_width") or not isinstance(value, int) or isinstance(value, bool):
            raise  # a width knob that cannot land, or not an int knob at all (match_flops names the valid ones)
    spec, flops = base, spec_flops(base, schema)
    while value < 1 << 16:
        nxt = set_fields(base, **{knob: value + step})
        nxt_flops = spec_flops(nxt, schema)
        if nxt_flops > target_flops or nxt_flops <= flops:  # over budget, or the knob adds no compute
            break
        spec, value, flops = nxt, value + step, nxt_flops
    if spec == base:
        raise PlanError(f"match_budget: {knob} of {base!r} cannot grow by {step} without exceeding "
                        f"{target_flops:,} FLOPs")
    out = match_flops(spec, "mlp_width", target_flops, schema, tol)
    out.knob = f"{knob}+mlp_width"
    return out


def _disjoint(m: int, count: int) -> list[list[int]]:
    """``count`` disjoint replicas of ``m`` consecutive members: [[0..m-1], [m..2m-1], ...]."""
    return [list(range(r * m, (r + 1) * m)) for r in range(count)]


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
) -> tuple[list[RunPlan], list[Arm], list[str]]:
    """The runs to train, the arms (table rows) read out of them, and notes on arms that
    could not be FLOP-matched (skipped rather than trained off-budget).

    Runs: ``<prefix>indep`` (the base with ``ens_seeds`` seeds, then the
    heterogeneous extras; all independent), ``<prefix>params`` (the FLOP-matched
    single models, ``seeds`` seeds each, independent) and ``<prefix>joint`` (the
    largest M in one K = 1 group, ``ens_seeds // M`` replicas).  Member seeds
    start at 1; the config seed (data order) is the same in every run.

    Example::

        runs, arms, notes = build_plan("dcnv2:embedding_dim=8,mlp=64-32,cross_layers=2", schema)
        [r.name for r in runs]  # ['tts_indep', 'tts_params', 'tts_joint']
    """
    from recsys.budget import spec_flops  # lazy: `import recsys.study` stays torch-free (--help)

    ms = sorted(set(int(m) for m in ms))
    if not ms or ms[0] < 1:
        raise PlanError(f"--ms must be positive integers, got {list(ms)}")
    if ens_seeds < ms[-1]:
        raise PlanError(f"--ens-seeds ({ens_seeds}) must be at least the largest M ({ms[-1]})")
    if seeds < 1:
        raise PlanError(f"--seeds must be >= 1, got {seeds}")
    base = set_fields(base, seed=0)  # canonical, seedless
    base_flops = spec_flops(base, schema)

    indep = [set_fields(base, seed=s) for s in range(1, ens_seeds + 1)]
    arms: list[Arm] = []
    for m in ms:
        reps = _disjoint(m, ens_seeds // m)
        arms.append(Arm("ensemble", m, m, f"{prefix}indep", reps, [indep[i] for i in reps[0]]))
    if hetero:
        extra = [set_fields(s, seed=len(indep) + 1 + i) for i, s in enumerate(hetero)]
        idx = [0] + list(range(len(indep), len(indep) + len(extra)))
        indep += extra
        arms.append(Arm("hetero", len(idx), len(idx), f"{prefix}indep", [idx], [indep[i] for i in idx]))
    runs = [RunPlan(f"{prefix}indep", indep, [[i] for i in range(len(indep))])]

    scaled: list[str] = []
    notes: list[str] = []
    for knob in knobs:
        for m in ms:
            if m == 1:
                continue
            target = m * base_flops
            try:
                match = match_budget(base, knob, target, schema, tol)
            except ValueError as e:
                notes.append(f"no {KIND_LABELS.get(knob, knob)} arm at budget {m}x: {e}")
                continue
            first = len(scaled)
            scaled += [set_fields(match.spec, seed=s) for s in range(1, seeds + 1)]
            arms.append(Arm(knob, 1, m, f"{prefix}params", [[i] for i in range(first, len(scaled))],
                            [scaled[first]], target_flops=target))
    if scaled:
        runs.append(RunPlan(f"{prefix}params", scaled, [[i] for i in range(len(scaled))]))

    if joint and ms[-1] > 1:
        m = ms[-1]
        reps = _disjoint(m, ens_seeds // m)
        members = [set_fields(base, seed=s) for s in range(1, len(reps) * m + 1)]
        runs.append(RunPlan(f"{prefix}joint", members, reps))
        arms.append(Arm("joint", m, m, f"{prefix}joint", reps, [members[i] for i in reps[0]]))
    return runs, arms, notes
