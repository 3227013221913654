"""Member-spec helpers of the study's plan: canonical specs, one field read or set, and the
FLOP matching of a single model by one knob.

Heavy imports (the model registry, ``recsys.budget``: torch and TorchRec) happen inside the
functions that need them, so ``python -m recsys.study --help`` stays instant.

Example::

    set_fields("dcnv2:seed=3,embedding_dim=8", seed=0)         # 'dcnv2:embedding_dim=8'
    match_budget("dcnv2:embedding_dim=8", "cross_layers", 2 * spec_flops(base, schema), schema).spec
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Sequence

from recsys.errors import UserError

if TYPE_CHECKING:
    from recsys.budget import FlopMatch
    from recsys.data.schema import Schema
    from recsys.models.spec import MemberConfig

# FBGEMM's embedding kernels (TorchRec's sharded EBC) need dims divisible by 4, on CPU too.
EMBEDDING_DIM_MULTIPLE = 4


class PlanError(UserError, ValueError):
    """A study that cannot be planned: bad sizes, or a knob that cannot match a budget."""


def _parse(spec: str) -> tuple[str, MemberConfig]:
    # lazy: `import recsys.study` stays torch-free (the CLI's parser takes its defaults from here)
    from recsys.models.registry import MODELS
    from recsys.models.spec import parse_spec

    return parse_spec(spec, {k: v.config for k, v in MODELS.items()})


def spec_model(spec: str) -> str:
    """The model name of a spec: ``spec_model("dcnv2:seed=1") == "dcnv2"``."""
    return _parse(spec)[0]


def set_fields(spec: str, **values: object) -> str:
    """``spec`` with some config fields replaced, in canonical form (defaults dropped).

    Example::

        set_fields("dcnv2:embedding_dim=8", seed=3)  # "dcnv2:seed=3,embedding_dim=8"
    """
    from recsys.budget.matching import config_to_spec, preset_keys  # lazy: `import recsys.study` stays torch-free

    model, cfg = _parse(spec)
    changes: dict[str, Any] = dict(values)  # field names and types vary by model
    new = dataclasses.replace(cfg, **changes)
    # under a preset, every key the spec names or this call sets stays written, so the preset
    # cannot refill it (see config_to_spec); a zero seed is still dropped (no preset sets one)
    keep = preset_keys(spec) | (set(changes) if new.preset else set())
    return config_to_spec(model, new, keep - ({"seed"} if new.seed == 0 else set()))


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


def grow_int_knob(base: str, knob: str, target_flops: int, schema: Schema, step: int = 1,
                  cap: int = 1 << 16) -> str:
    """``base`` with the int field ``knob`` raised by ``step`` while the FLOPs stay within
    ``target_flops`` and the value within ``cap``: the largest such value.  ``PlanError`` when
    not even one step fits, with why: over budget, the knob adds no compute (or takes some
    away: under a preset, a spec that sets ``embedding_dim`` gets ``model_dim=0``), or at
    ``cap``.

    The start is the value ``base`` builds with, read from the spec resolved against the
    schema: under a preset that is the preset's (RankMixer's embedding_dim follows the
    fields), not our default, which would skip or misname the first steps."""
    from recsys.budget import spec_flops  # lazy: torch
    from recsys.models.preset import resolve_spec

    value = spec_field(resolve_spec(base, schema), knob)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PlanError(f"{knob} of {base!r} is not an integer field")
    spec, flops = base, spec_flops(base, schema)
    stop = f"is at its cap {cap}"
    while value + step <= cap:
        nxt = set_fields(base, **{knob: value + step})
        nxt_flops = spec_flops(nxt, schema)
        if nxt_flops <= flops:
            stop = (f"adds no compute: {knob}={value + step} costs {nxt_flops:,} FLOPs, "
                    f"{'the same as' if nxt_flops == flops else 'less than'} {knob}={value}'s {flops:,}")
            break
        if nxt_flops > target_flops:
            stop = (f"cannot grow by {step} without exceeding {target_flops:,} FLOPs "
                    f"({knob}={value + step}: {nxt_flops:,})")
            break
        spec, value, flops = nxt, value + step, nxt_flops
    if spec == base:
        raise PlanError(f"match_budget: {knob} of {base!r} {stop}")
    return spec


def match_budget(base: str, knob: str, target_flops: int, schema: Schema, tol: float = 0.05) -> FlopMatch:
    """The single model matching ``target_flops`` by ``knob``: a ``recsys.budget.FlopMatch``.

    ``mlp_width`` scales the MLPs continuously, so it always lands.  An integer
    knob (``cross_layers``, ``embedding_dim``, ``layers``) steps in large FLOP
    increments (one 312x312 cross layer is ~45% of the demo dcnv2), so when it
    misses ``tol`` it is set to the largest value whose FLOPs stay below the
    target, and the MLP width fills the remainder: the knob still carries most
    of the added compute, and the budget is still matched within ``tol``.
    """
    from recsys.budget import match_flops  # lazy: `import recsys.study` stays torch-free (--help)

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
    out = match_flops(grow_int_knob(base, knob, target_flops, schema, step), "mlp_width", target_flops, schema, tol)
    out.knob = f"{knob}+mlp_width"
    return out
