"""TOML -> ``ExperimentConfig``: reading, ``--set`` overrides, type checks, then ``checks``.

Why a type walk of our own: TOML already types its values, so the only mistakes left are a
value of the wrong kind (a string where an int belongs) and a misspelt key; each becomes one
line naming the file and the key.  The walk reads each dataclass field's resolved type
(``typing.get_type_hints``), so it follows the annotations instead of matching their spelling.

Example::

    cfg = load_config("configs/demo.toml", ["train.epochs=1", "seed=3"])   # values are TOML literals
    cfg = config_from_dict({"data_dir": "d", "members": ["fnn"]}, check_data=False)
    load_config("c.toml")   # ConfigError: c.toml: train.epochs: expected an integer, got 'two'
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

from recsys.config import checks
from recsys.config.preset import apply_preset
from recsys.config.schema import SECTIONS, ConfigError, ExperimentConfig, TorchRecCriteoSection
from recsys.data.criteo_layout import NUM_SPARSE
from recsys.data.schema import read_document

S = TypeVar("S")

_TOP = {f.name for f in dataclasses.fields(ExperimentConfig)} - set(SECTIONS) - {"source"}
_TOP_SCALARS = ("name", "seed", "device", "log_dir", "checkpoint_dir", "data_dir", "preset")
_TORCHREC_DAY_KEYS = ("train_days", "val_days", "test_days")


def apply_override(raw: dict[str, Any], item: str, src: str) -> None:
    """Sets ``raw[a][b] = value`` for ``item = "a.b=value"``; the value is a TOML literal or a bare word."""
    key, eq, value = item.partition("=")
    if not eq:
        raise ConfigError(f"{src}: override {item!r} must look like key=value (e.g. train.epochs=1)")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare word: a string
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{src}: override {item!r}: {p!r} is not a section")
    node[parts[-1]] = parsed


def check_type(value: Any, tp: object, where: str) -> Any:
    """``value`` checked against the field type ``tp``; ints become floats where a float belongs.

    ``X | None`` is checked as ``X`` (TOML has no null, so a value is always given); int, float,
    bool and str are checked; other types (lists, unions of several types) pass unchanged, their
    sections check them.
    """
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            tp = rest[0]
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
    elif tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build_section(cls: type[S], raw: object, where: str) -> S:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table [{where.rsplit(' ', 1)[-1]}]")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # SECTIONS holds dataclasses
    kwargs = {}
    for k, v in raw.items():
        if k not in fields:
            raise ConfigError(f"{where}: unknown key {k!r}; valid keys: {', '.join(sorted(fields))}")
        kwargs[k] = check_type(v, hints[k], f"{where}.{k}")
    return cls(**kwargs)


def _build_torchrec_criteo(raw: object, where: str) -> TorchRecCriteoSection:
    """Type checks ``[torchrec_criteo]``; the day files are checked by ``checks.check_torchrec_data``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table [torchrec_criteo]")
    valid = [f.name for f in dataclasses.fields(TorchRecCriteoSection)]
    for k in raw:
        if k not in valid:
            raise ConfigError(f"{where}: unknown key {k!r}; valid keys: {', '.join(sorted(valid))}")
    for k in (*_TORCHREC_DAY_KEYS, "num_embeddings_per_feature"):
        if k not in raw:
            raise ConfigError(f"{where}: missing required key {k!r}")
    for k in _TORCHREC_DAY_KEYS:
        days = raw[k]
        if not isinstance(days, list) or not days:
            raise ConfigError(f"{where}.{k}: expected a non-empty list of days, got {days!r}")
        for d in days:
            ok = isinstance(d, int) and not isinstance(d, bool) and d >= 0
            if isinstance(d, list) and len(d) == 3:
                day, lo, hi = d
                ok = (isinstance(day, int) and not isinstance(day, bool) and day >= 0
                      and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi))
                      and 0.0 <= lo < hi <= 1.0)
            if not ok:
                raise ConfigError(
                    f"{where}.{k}: bad day {d!r}: expected a day number or [day, start_fraction, stop_fraction] "
                    "with 0 <= start < stop <= 1"
                )
    n = raw["num_embeddings_per_feature"]
    sizes = [n] if not isinstance(n, list) else n
    if (isinstance(n, list) and len(n) != NUM_SPARSE) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in sizes
    ):
        raise ConfigError(
            f"{where}.num_embeddings_per_feature: expected a positive integer or a list of {NUM_SPARSE}, got {n!r}"
        )
    suffix = raw.get("sparse_suffix", "sparse")
    if not isinstance(suffix, str) or not suffix or "/" in suffix:
        raise ConfigError(f"{where}.sparse_suffix: expected a file-name suffix such as \"sparse_contig\", got {suffix!r}")
    return TorchRecCriteoSection(
        train_days=list(raw["train_days"]), val_days=list(raw["val_days"]), test_days=list(raw["test_days"]),
        num_embeddings_per_feature=n, sparse_suffix=suffix,
    )


def config_from_dict(raw: dict[str, Any], source: str = "<config>", check_data: bool = True) -> ExperimentConfig:
    """Validates a parsed TOML dict; ``check_data=False`` skips the data-dir check (tests, tools).

    A ``preset`` is merged in first (``recsys.config.preset.apply_preset``), under the dict's own
    values, so everything below checks the values the run will use."""
    unknown = set(raw) - _TOP - set(SECTIONS)
    if unknown:
        valid = sorted(_TOP | set(SECTIONS))
        raise ConfigError(f"{source}: unknown key {sorted(unknown)[0]!r}; valid keys: {', '.join(valid)}")
    for req in ("data_dir", "members"):
        if req not in raw:
            raise ConfigError(f"{source}: missing required key {req!r}")
    raw = apply_preset(raw, source)
    members = checks.check_members(raw["members"], source)
    groups = checks.check_groups(raw.get("groups"), len(members), source)

    hints = typing.get_type_hints(ExperimentConfig)
    top = {k: check_type(raw[k], hints[k], f"{source}: {k}") for k in _TOP_SCALARS if k in raw}
    sections: dict[str, Any] = {k: _build_section(cls, raw.get(k, {}), f"{source}: {k}") for k, cls in SECTIONS.items()}
    tr_raw = raw.get("torchrec_criteo")
    tr = _build_torchrec_criteo(tr_raw, f"{source}: torchrec_criteo") if tr_raw is not None else None
    cfg = ExperimentConfig(members=members, groups=groups, source=source, torchrec_criteo=tr, **top, **sections)

    checks.check_values(cfg)
    checks.check_device(cfg)
    if check_data:
        checks.check_data(cfg)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = (), check_data: bool = True) -> ExperimentConfig:
    """Reads, overrides and validates a config; raises ``ConfigError`` with a one-line message.

    A relative ``data_dir`` is taken relative to the current directory (where torchrun runs),
    not the config file, so the shipped configs work from the repository root.
    """
    p = Path(path)
    raw = read_document(p, tomllib.loads, error=ConfigError, missing="no such config file",
                        syntax_error=tomllib.TOMLDecodeError, invalid=lambda e: f"{p}: invalid TOML ({e})")
    for item in overrides:
        apply_override(raw, item, str(p))
    return config_from_dict(raw, source=str(p), check_data=check_data)
