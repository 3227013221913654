"""FLOP matching: the width or depth of one model whose dense FLOPs per example equal a
target (typically an M-member ensemble's), found by search over the model's config.

FLOPs follow ``recsys.models.blocks``' convention (matmul family only, 2 per multiply-add)
and are computed on the meta device over 1-row tables, so matching costs no memory even
for terabyte-scale vocabularies.

Example::

    # criteo: 39 sparse fields, no dense features
    target = ensemble_flops(["dcnv2:seed=1", "dcnv2:seed=2", "dcnv2:seed=3"], criteo)
    match_flops("dcnv2", "mlp_width", target, criteo).spec     # "dcnv2:mlp=2695-1347-674"
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Collection, Sequence

import torch

from recsys.data.schema import Schema, SparseFeature
from recsys.errors import UserError
from recsys.models.preset import resolve_spec
from recsys.models.registry import MODELS, build_member
from recsys.models.spec import MemberConfig, SpecError, parse_spec, spec_items


class MatchError(UserError, ValueError):
    """No setting of the knob lands within the tolerance, or the knob does not apply."""


def flops_schema(schema: Schema) -> Schema:
    """The schema with 1-row tables: FLOPs do not depend on vocabulary sizes, and
    building a member on it costs nothing for terabyte-scale vocabularies."""
    return dataclasses.replace(schema, sparse_features=tuple(SparseFeature(f.name, 1) for f in schema.sparse_features))


def spec_flops(spec: str, schema: Schema) -> int:
    """FLOPs per example of the member a spec builds (dense weights on the meta device)."""
    small = flops_schema(schema)
    with torch.device("meta"):
        member = build_member(spec, small, "flops", materialize=False)
    return int(member.flops_per_example())


def ensemble_flops(specs: Sequence[str], schema: Schema) -> int:
    """Total FLOPs per example of an ensemble: every member runs on every example."""
    return sum(spec_flops(s, schema) for s in specs)


def _format_value(v: object) -> str:
    if isinstance(v, tuple):
        return "-".join(str(x) for x in v) if v else "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def config_to_spec(model: str, cfg: MemberConfig, keep: Collection[str] = ()) -> str:
    """Inverse of ``parse_spec``: the fields that differ from the defaults, and those in ``keep``.

    Why ``keep``: under a preset a field at OUR default is not unset -- dropped, the preset would
    refill it with ITS value (``finalmlp:preset=tts4ctr,gating=true`` would lose its gate).  A
    spec with a preset therefore keeps every key it names (``preset_keys``).

    Example: ``config_to_spec("fnn", FNNConfig(seed=4))`` is ``"fnn:seed=4"``.
    """
    default = type(cfg)()
    items = [
        f"{f.name}={_format_value(getattr(cfg, f.name))}"
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(default, f.name) or f.name in keep
    ]
    return model + (":" + ",".join(items) if items else "")


def preset_keys(spec: str) -> frozenset[str]:
    """The keys a spec with a preset names itself (what ``config_to_spec`` must keep); empty
    for a spec without one, whose canonical form drops every default.

    Example::

        preset_keys("finalmlp:preset=tts4ctr,gating=true")   # frozenset({"preset", "gating"})
        preset_keys("finalmlp:gating=true")                   # frozenset()
    """
    _, items = spec_items(spec)
    given = dict(items)
    return frozenset(given) if given.get("preset") else frozenset()


_KNOB_ALIASES = {"num_layers": "layers", "depth": "layers"}


@dataclass
class FlopMatch:
    spec: str
    flops: int
    target_flops: int
    knob: str
    value: float  # the width scale factor, or the integer depth/width

    @property
    def rel_error(self) -> float:
        return abs(self.flops - self.target_flops) / self.target_flops


def match_flops(
    base_spec: str, knob: str, target_flops: int, schema: Schema, tol: float = 0.05
) -> FlopMatch:
    """Finds the width or depth of ``base_spec`` whose FLOPs per example match ``target_flops``.

    Knobs:

    - ``"mlp_width"``: scales every MLP of the model (config fields of int tuples
      whose name contains ``mlp``) by one factor ``s``;
    - ``"<field>_width"`` for one int-tuple field, e.g. ``"fmb_mlp_width"``;
    - an int field, e.g. ``"cross_layers"``, ``"layers"`` (alias ``num_layers``),
      ``"embedding_dim"``, searched over 1, 2, 3, ... (embedding_dim over 4, 8, 12, ...)

    Raises ``MatchError`` (a ``ValueError``) when no value lands within ``tol`` (relative).

    Example::

        # criteo: 39 sparse fields, no dense features
        target = ensemble_flops(["dcnv2:seed=1", "dcnv2:seed=2", "dcnv2:seed=3"], criteo)
        match_flops("dcnv2", "mlp_width", target, criteo).spec     # "dcnv2:mlp=2695-1347-674"
        match_flops("dcnv2", "cross_layers", target, criteo).spec  # "dcnv2:cross_layers=16" (1.8% off)
    """
    if target_flops <= 0:
        raise MatchError(f"match_flops: target_flops must be positive, got {target_flops}")
    # A preset is resolved first, so the search scales the preset's values (the matched spec
    # keeps preset=..., and resolving it again changes nothing it sets).
    resolved = resolve_spec(base_spec, schema)
    model, cfg = parse_spec(resolved, {k: v.config for k, v in MODELS.items()})
    keep = preset_keys(resolved)
    hints = typing.get_type_hints(type(cfg))
    fields = [f.name for f in dataclasses.fields(cfg)]
    field_name = _KNOB_ALIASES.get(knob, knob) if _KNOB_ALIASES.get(knob) in fields else knob
    tuple_fields = [f for f in fields if typing.get_origin(hints[f]) is tuple]

    def flops_of(c: MemberConfig) -> int | None:
        try:
            return spec_flops(config_to_spec(model, c, keep), schema)
        except (SpecError, ValueError):
            return None  # an invalid setting (e.g. heads no longer divide a width)

    candidates: list[tuple[float, MemberConfig, int]] = []
    if knob.endswith("_width"):
        base = knob[: -len("_width")]
        scaled = [f for f in tuple_fields if ("mlp" in f if base == "mlp" else f == base) and getattr(cfg, f)]
        if not scaled:
            raise MatchError(f"match_flops: {model} has no non-empty {'MLP' if base == 'mlp' else base!r} tuple field for knob {knob!r}; tuple fields: {tuple_fields}")

        def at_scale(s: float) -> MemberConfig:
            widths: dict[str, Any] = {f: tuple(max(1, round(h * s)) for h in getattr(cfg, f)) for f in scaled}
            return dataclasses.replace(cfg, **widths)

        def f_of(s: float) -> int | None:
            return flops_of(at_scale(s))

        lo, hi = 1e-3, 1.0
        while (f_of(hi) or 0) < target_flops and hi < 1e4:
            lo, hi = hi, hi * 2
        for _ in range(40):  # FLOPs grow with s (quadratically in MLP width)
            mid = math.sqrt(lo * hi)
            fm = f_of(mid)
            if fm is not None and fm >= target_flops:
                hi = mid
            else:
                lo = mid
        for s in (lo, hi):
            fs = f_of(s)
            if fs is not None:
                candidates.append((s, at_scale(s), fs))
    elif field_name in fields and hints[field_name] is int:
        step = 4 if field_name == "embedding_dim" else 1  # FBGEMM needs dim % 4 == 0

        def at(v: int) -> MemberConfig:
            value: dict[str, Any] = {field_name: v * step}
            return dataclasses.replace(cfg, **value)

        v = 1
        while v < 1 << 16:
            fv = flops_of(at(v))
            if fv is not None and fv >= target_flops:
                break
            v *= 2
        lo_v, hi_v = max(1, v // 2), v
        while hi_v - lo_v > 1:  # smallest v with FLOPs >= target
            mid_v = (lo_v + hi_v) // 2
            fm = flops_of(at(mid_v))
            if fm is not None and fm >= target_flops:
                hi_v = mid_v
            else:
                lo_v = mid_v
        for cand in (lo_v, hi_v):
            fc = flops_of(at(cand))
            if fc is not None:
                candidates.append((float(cand * step), at(cand), fc))
    else:
        ints = [f for f in fields if hints[f] is int and f != "seed"]
        raise MatchError(
            f"match_flops: unknown knob {knob!r} for {model}; use mlp_width, <tuple field>_width "
            f"({', '.join(f + '_width' for f in tuple_fields)}) or an int field ({', '.join(ints)})"
        )
    if not candidates:
        raise MatchError(f"match_flops: no valid {model} setting of {knob!r} builds")
    value, best_cfg, best = min(candidates, key=lambda c: abs(c[2] - target_flops))
    result = FlopMatch(config_to_spec(model, best_cfg, keep), best, int(target_flops), knob, value)
    if result.rel_error > tol:
        raise MatchError(
            f"match_flops: cannot match {target_flops:,} FLOPs with {knob!r} of {base_spec!r} within "
            f"{tol:.0%}: closest is {result.spec} with {best:,} ({result.rel_error:.1%} off)"
        )
    return result
