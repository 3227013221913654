"""The paper's other models, sized from the study's base: the heterogeneous ensemble's 8
members, and the parameter-scaling rivals (Multi-Embed, D-MoE, scaled-up Wukong and RankMixer)
FLOP-matched to a budget.

Why derive them from the base: an arm should differ from the base in the one thing it scales.
Every derived spec takes the base's ``embedding_dim``, its MLP (``mlp``) and, where the model
has one, its ``cross_layers``; the model's other fields stay at their reference defaults.

How each rival meets its budget (``match_rival``):

- ``multiembed``: more embedding sets (``num_embeddings_sets``, the paper's embedding-scaling
  knob), as many as stay under the budget, then the MLP width closes the rest;
- ``dmoe``: the width of its experts' and head's MLPs (its expert list stays the reference's);
- ``wukong`` / ``rankmixer``: depth first (``layers`` 1 .. ``MAX_RIVAL_LAYERS``, the largest
  under the budget), then the MLP width; when one layer is already over the budget the widths
  shrink instead (Wukong's factorization-machine MLPs are 4x a small DCNv2 on Criteo).

Example::

    hetero_specs("dcnv2:embedding_dim=8,mlp=64-32,cross_layers=2")[:2]
    # ['fnn:embedding_dim=8,mlp=64-32', 'ipnn:embedding_dim=8,mlp=64-32']
    match_rival("wukong", base, 2 * spec_flops(base, schema), schema).spec  # the demo's Criteo schema
    # 'wukong:embedding_dim=8,layers=1,fmb_mlp=291-291,mlp=36-18' (one layer is 3.9x: narrower)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recsys.study.plan_specs import PlanError, grow_int_knob, set_fields, spec_field, spec_model

if TYPE_CHECKING:
    from recsys.budget import FlopMatch
    from recsys.data.schema import Schema

# The paper's 8 models (TTS4CTR's heterogeneous ensemble), in its order.
HETERO_MODELS = ("fnn", "ipnn", "deepfm", "dcn", "dcnv2", "finalmlp", "wukong", "rankmixer")
RIVALS = ("multiembed", "dmoe", "wukong", "rankmixer")
MAX_RIVAL_LAYERS = 8  # a deeper Wukong / RankMixer stack is not what the papers scaled to


def _base_fields(base: str, model: str) -> dict[str, Any]:
    """The base's embedding dim, MLP and cross depth, for the fields ``model`` has."""
    from recsys.models.registry import MODELS  # lazy: `import recsys.study` stays torch-free (--help)

    from recsys.models.spec import spec_items

    target = MODELS[model].config.__dataclass_fields__
    given = dict(spec_items(base)[1])
    out: dict[str, Any] = {}
    for name in ("embedding_dim", "mlp", "cross_layers", "preset"):
        if given.get("preset") and name not in given:
            continue  # under a preset an unnamed field is the preset's, per model (RankMixer's D = tokens)
        try:
            value = spec_field(base, name)
        except AttributeError:
            continue
        if name in target and value not in ((), None):
            out[name] = value
    return out


def derived_spec(base: str, model: str, **values: object) -> str:
    """``model`` sized like ``base`` (see the module doc), with ``values`` on top, canonical."""
    return set_fields(model, **{**_base_fields(base, model), **values})


def hetero_specs(base: str) -> list[str]:
    """The paper's 8 models sized like ``base``, less the base's own model (the heterogeneous
    arm takes the base member itself for that one).

    Wukong's factorization-machine MLP scales with the base's MLP at the official ratio
    (``fmb_mlp`` 512-512 beside ``mlp`` 1024-512-256: two layers of half the first width).
    At its fixed 512-512 a Wukong beside a small base costs ~10x the base's FLOPs (4.7M
    against 434K per example for the demo's dcnv2), and the ensemble's budget would be Wukong's.
    """
    out = []
    for m in HETERO_MODELS:
        if m == spec_model(base):
            continue
        mlp = _base_fields(base, m).get("mlp")
        extra = {"fmb_mlp": (max(1, mlp[0] // 2),) * 2} if m == "wukong" and isinstance(mlp, tuple) and mlp else {}
        out.append(derived_spec(base, m, **extra))
    return out


def rival_base(kind: str, base: str) -> str:
    """The smallest form of a rival that its budget matching starts from."""
    if kind == "multiembed":
        return derived_spec(base, "multiembed", num_embeddings_sets=1)
    if kind == "dmoe":
        mlp = _base_fields(base, "dmoe").get("mlp")
        return derived_spec(base, "dmoe", **({"expert_mlp": mlp} if mlp else {}))
    if kind in ("wukong", "rankmixer"):
        return derived_spec(base, kind, layers=1)
    raise PlanError(f"unknown rival {kind!r}; valid: {', '.join(RIVALS)}")


def match_rival(kind: str, base: str, target_flops: int, schema: Schema, tol: float = 0.05) -> FlopMatch:
    """The rival ``kind`` (one of ``RIVALS``) at ``target_flops``, within ``tol``."""
    from recsys.budget import match_flops  # lazy: torch

    start = rival_base(kind, base)
    if kind == "dmoe":
        return match_flops(start, "mlp_width", target_flops, schema, tol)
    knob = "num_embeddings_sets" if kind == "multiembed" else "layers"
    cap = 1 << 16 if kind == "multiembed" else MAX_RIVAL_LAYERS
    try:
        deeper = grow_int_knob(start, knob, target_flops, schema, step=1, cap=cap)
    except PlanError:  # one set / layer is already over the budget: narrower instead
        return match_flops(start, "mlp_width", target_flops, schema, tol)
    out = match_flops(deeper, "mlp_width", target_flops, schema, tol)
    out.knob = f"{knob}+mlp_width"
    return out
