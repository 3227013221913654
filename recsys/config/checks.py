"""Everything ``load_config`` checks beyond types: members, groups, value ranges, the device, the data.

Why these run at load time: every check that can fail on user input runs in the launching
process and before any process group exists, so a typo costs a one-line ``ConfigError`` and not
a hung torchrun world.  The checks that need torch (member specs, groups, the CUDA probe) or
numpy (TorchRec's day files) import it inside the check, so ``import recsys.config`` stays light.

Example::

    members = check_members(raw["members"], "c.toml")      # ConfigError: c.toml: members[0]: ...
    check_values(cfg)                                       # ConfigError: c.toml: train.epochs must be positive, got 0
    check_data(cfg)                                         # meta.json lists train, val and test with rows > 0
"""
from __future__ import annotations

from pathlib import Path

from recsys.config.schema import (
    DEVICES,
    EMBEDDING_OPTIMIZERS,
    REQUIRED_SPLITS,
    SHARDING_TYPE_NAMES,
    SHARDING_TYPES,
    ConfigError,
    ExperimentConfig,
    TorchRecCriteoSection,
)
from recsys.data.criteo_layout import day_files
from recsys.data.errors import LoaderError
from recsys.data.schema import Schema, SchemaError


def check_members(members: object, source: str) -> list[str]:
    """A non-empty list of spec strings, each naming a registered model with valid keys."""
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ConfigError(f"{source}: 'members' must be a non-empty list of spec strings, got {members!r}")
    from recsys.models.registry import MODELS  # lazy: the model zoo loads torch; config stays light
    from recsys.models.spec import SpecError, parse_spec

    configs = {k: v.config for k, v in MODELS.items()}
    for i, spec in enumerate(members):
        try:
            parse_spec(spec, configs)
        except SpecError as e:
            raise ConfigError(f"{source}: members[{i}]: {e}") from None
    return list(members)


def check_groups(groups_raw: object, num_members: int, source: str) -> list[list[int]]:
    """``groups`` partitions the members (absent or empty: one group per member)."""
    if groups_raw is not None and (
        not isinstance(groups_raw, list) or not all(isinstance(g, list) for g in groups_raw)
    ):
        raise ConfigError(f"{source}: 'groups' must be a list of lists of member indices, got {groups_raw!r}")
    from recsys.ensemble import validate_groups  # lazy: torch, only when groups are checked

    try:
        groups = validate_groups(num_members, groups_raw if groups_raw else None)
    except ValueError as e:
        raise ConfigError(f"{source}: groups: {e}") from None
    return [list(g) for g in groups]


def _one_of(names: tuple[str, ...]) -> str:
    """``("a", "b", "c")`` -> ``"a, b or c"``."""
    return f"{', '.join(names[:-1])} or {names[-1]}"


def check_values(cfg: ExperimentConfig) -> None:
    """Names and ranges of the typed config; ``sharding_type = "auto"`` becomes None here."""
    source = cfg.source
    if cfg.device not in DEVICES:
        raise ConfigError(f"{source}: device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    if cfg.embedding_optimizer.name not in EMBEDDING_OPTIMIZERS:
        raise ConfigError(
            f"{source}: embedding_optimizer.name must be one of {', '.join(EMBEDDING_OPTIMIZERS)}, "
            f"got {cfg.embedding_optimizer.name!r}"
        )
    if cfg.sharding.sharding_type == "auto":
        cfg.sharding.sharding_type = None
    if cfg.sharding.sharding_type not in SHARDING_TYPES:
        raise ConfigError(
            f"{source}: sharding.sharding_type must be {_one_of(('auto', *SHARDING_TYPE_NAMES))}, "
            f"got {cfg.sharding.sharding_type!r}"
        )
    t = cfg.train
    for k in ("batch_size", "epochs"):
        if getattr(t, k) <= 0:
            raise ConfigError(f"{source}: train.{k} must be positive, got {getattr(t, k)}")
    for k in ("eval_batch_size", "patience", "eval_interval", "checkpoint_interval", "max_steps_per_epoch"):
        if getattr(t, k) < 0:
            raise ConfigError(f"{source}: train.{k} must be >= 0, got {getattr(t, k)}")
    topo = cfg.topology
    for k in ("hbm_gb", "ddr_gb", "local_world_size"):
        if getattr(topo, k) < 0:
            raise ConfigError(f"{source}: topology.{k} must be >= 0 (0 = detect), got {getattr(topo, k)}")
    if not 0 <= topo.uvm_caching_ratio <= 1:
        raise ConfigError(f"{source}: topology.uvm_caching_ratio must be in [0, 1], got {topo.uvm_caching_ratio}")
    if t.log_every <= 0:
        raise ConfigError(f"{source}: train.log_every must be positive, got {t.log_every}")
    if not cfg.name or "/" in cfg.name:
        raise ConfigError(f"{source}: name must be a non-empty string without '/', got {cfg.name!r}")
    emb_lr = cfg.embedding_optimizer.lr
    if cfg.dense_optimizer.lr <= 0 or (emb_lr is not None and emb_lr <= 0):
        raise ConfigError(f"{source}: learning rates must be positive")


def check_device(cfg: ExperimentConfig) -> None:
    """``device = "cuda"`` needs CUDA here (torch is imported only for that case)."""
    if cfg.device != "cuda":
        return
    import torch  # lazy: `import recsys.config` loads no torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{cfg.source}: device = \"cuda\" but torch.cuda.is_available() is False "
            "(use device = \"auto\" or \"cpu\", or the CUDA stack: RECSYS_DEVICE=gpu bash scripts/setup_env.sh)"
        )


def check_torchrec_data(cfg: ExperimentConfig, sec: TorchRecCriteoSection) -> None:
    """Every day file exists (all missing ones named at once) and has the shapes TorchRec writes."""
    source, d = cfg.source, Path(cfg.data_dir)
    if not d.is_dir():
        raise ConfigError(f"{source}: data_dir: {d}: no such directory")
    days = sorted({day for spec in sec.days().values() for day, _, _ in spec})
    missing = [f.name for day in days for f in day_files(d, day, sec.sparse_suffix) if not f.is_file()]
    if missing:
        more = f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""
        raise ConfigError(f"{source}: torchrec_criteo: missing day files in {d}: {', '.join(missing[:8])}{more}")
    try:
        schema = sec.open(d).schema
    except LoaderError as e:
        raise ConfigError(f"{source}: torchrec_criteo: " + " ".join(str(e).split())) from None
    for split in REQUIRED_SPLITS:
        if schema.splits.get(split, 0) <= 0:
            raise ConfigError(f"{source}: torchrec_criteo.{split}_days select no rows of {d}")


def check_data(cfg: ExperimentConfig) -> None:
    """The data exists: TorchRec's day files, or a meta.json listing train, val and test with rows."""
    if cfg.torchrec_criteo is not None:  # no meta.json in TorchRec's layout
        check_torchrec_data(cfg, cfg.torchrec_criteo)
        return
    source = cfg.source
    try:
        schema = Schema.load(cfg.data_dir)
    except SchemaError as e:
        raise ConfigError(f"{source}: data_dir: {e}") from None
    # All three up front: an empty val split makes every epoch's AUC NaN (early stopping
    # then stops silently), and a missing test split would only fail after training.
    meta = Path(cfg.data_dir) / "meta.json"
    for split in REQUIRED_SPLITS:
        if split not in schema.splits:
            have = ", ".join(sorted(schema.splits)) or "none"
            raise ConfigError(f"{source}: data_dir: {meta} has no {split!r} split (splits: {have})")
        if schema.splits[split] <= 0:
            raise ConfigError(f"{source}: data_dir: {meta}: split {split!r} has {schema.splits[split]} rows")
