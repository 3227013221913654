"""Member spec strings: ``"dcnv2:seed=3,cross_layers=4,mlp=512-256"``.

A spec is a model name from ``recsys.models.MODELS`` and optional ``key=value``
pairs that set fields of that model's config dataclass.  Values are coerced by
the field's type: ints, floats, bools (true/false/1/0), strings, and int tuples
written with dashes (``mlp=512-256``; ``mlp=`` or ``mlp=none`` is the empty tuple).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from recsys.errors import UserError


class SpecError(UserError, ValueError):
    """A member spec that names an unknown model or key, or a bad value."""


@dataclass
class MemberConfig:
    """Knobs every member has.  Model configs subclass this.

    ``seed`` fully determines the member's initialization, which is what makes
    homogeneous ensembles diverse.
    """

    seed: int = 0
    # A named bundle of defaults (``recsys.models.preset.PRESETS``; "" = ours), resolved
    # against the data's schema by ``recsys.models.preset.resolve_spec`` before building.
    preset: str = ""
    embedding_dim: int = 16
    dropout: float = 0.0
    # Embedding tables: "xavier" (uniform on +-sqrt(6 / (rows + dim)) per field: NOT the
    # reference code's init, whose one global table gives a far smaller bound) or "normal"
    # (N(0, embedding_init_std^2); FuxiCTR's default is std 1e-4).  Xavier is the default
    # because it keeps seeds diverse: on the demo data 4 DCNv2 seeds ensemble to +0.0013 AUC
    # over their mean with it, +0.0001 with N(0, 1e-4^2) (their test logits correlate at
    # 0.988 vs 0.999), although each single is 0.0007 better with the latter.
    # DeepFM overrides the default (see DeepFMConfig).  docs/design_notes.md has the table.
    # "xavier_global" is the official TTS4CTR init (the preset's): one bound sqrt(6 / (rows of
    # all the member's fields + dim)), as its single global table; see embedding_init.py.
    embedding_init: str = "xavier"
    embedding_init_std: float = 1e-4  # the "normal" init's standard deviation
    # The width the model sees: the first model_dim columns of each stored table (0: all
    # embedding_dim of them).  Why: FBGEMM stores tables only at dim % 4 == 0, while the
    # official RankMixer needs D = the number of fields (39 on Criteo); the table is stored
    # at 40 columns and the model sees 39.  Dense parameters and FLOPs follow model_dim.
    model_dim: int = 0

    @property
    def width(self) -> int:
        """D of the tokens the interaction sees: ``model_dim`` or, when 0, ``embedding_dim``."""
        return self.model_dim or self.embedding_dim


def check_layer_sizes(**layers: tuple[int, ...]) -> None:
    """Refuses an MLP with a layer of size <= 0: every config with MLP knobs calls this from
    ``__post_init__``, so ``fnn:mlp=0`` fails like ``ipnn:mlp=0`` (``parse_spec`` turns the
    ValueError into a one-line ``SpecError`` that names the model).  An empty tuple is
    allowed: no hidden layers.

    Example::

        check_layer_sizes(mlp=(512, 256), fmb_mlp=(64,))   # fine
        check_layer_sizes(mlp=(32, 0))   # ValueError: mlp sizes must be positive, got (32, 0)
    """
    for key, sizes in layers.items():
        if any(h <= 0 for h in sizes):
            raise ValueError(f"{key} sizes must be positive, got {sizes}")


def _coerce(value: str, tp: object, model: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return value
        if origin is tuple:
            if value.strip().lower() in ("", "none"):
                return ()
            (inner, *_rest) = typing.get_args(tp)
            return tuple(inner(v) for v in value.split("-"))
    except ValueError:
        raise SpecError(f"{model}: bad value {value!r} for {key} (expected {_type_name(tp)})") from None
    raise SpecError(f"{model}: key {key} has unsupported type {tp}")


def _type_name(tp: object) -> str:
    if typing.get_origin(tp) is tuple:
        return "ints joined by '-', e.g. 512-256"
    return getattr(tp, "__name__", str(tp))


def spec_items(spec: str) -> tuple[str, list[tuple[str, str]]]:
    """Splits a spec into its model name (lower case) and its (key, value) items, in order,
    without checking them against a config: ``parse_spec`` and
    ``recsys.models.preset.resolve_spec`` both read specs through this.

    Example::

        spec_items("DCNv2:seed=3, mlp=512-256")   # ("dcnv2", [("seed", "3"), ("mlp", "512-256")])
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty member spec {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    items = []
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise SpecError(f"{name}: expected key=value, got {item!r} in spec {spec!r}")
        items.append((key.strip(), value.strip()))
    return name, items


def parse_spec(spec: str, configs: dict[str, type[MemberConfig]]) -> tuple[str, MemberConfig]:
    """Parses a spec into (model name, config instance), with errors that list valid choices.

    A ``preset`` key is kept as given; ``recsys.models.preset.resolve_spec`` fills in its
    values beforehand (``build_member`` does).
    """
    name, items = spec_items(spec)
    if name not in configs:
        raise SpecError(f"unknown model {name!r} in spec {spec!r}; valid models: {', '.join(sorted(configs))}")
    cls = configs[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in items:
        if key not in fields:
            raise SpecError(f"{name}: unknown key {key!r}; valid keys: {', '.join(sorted(fields))}")
        if key in kwargs:
            raise SpecError(f"{name}: key {key!r} given twice in spec {spec!r}")
        kwargs[key] = _coerce(value, hints[key], name, key)
    try:
        cfg = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{name}: {e}") from None
    if cfg.embedding_dim <= 0 or cfg.embedding_dim % 4:
        # FBGEMM's embedding kernels (what DMP shards onto) assert dim % 4 == 0; say so
        # here, before any process group starts, instead of deep inside sharding.
        raise SpecError(f"{name}: embedding_dim={cfg.embedding_dim} must be a positive multiple of 4")
    if not 0 <= cfg.model_dim <= cfg.embedding_dim:
        raise SpecError(f"{name}: model_dim={cfg.model_dim} must be in [0, embedding_dim={cfg.embedding_dim}] "
                        "(0 = embedding_dim)")
    return name, cfg
