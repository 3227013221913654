"""The experiment config: one TOML file (parsed with ``tomllib``) -> ``ExperimentConfig``.

Every check that can fail on user input runs in ``load_config``, in the launching
process and before any process group exists, so a typo costs a one-line error and
not a hung torchrun world.

Example (``configs/demo.toml``, abridged)::

    name = "demo"
    data_dir = "data/demo/criteo"     # meta.json must list train, val and test splits with rows > 0
    members = [
      "dcnv2:seed=1,embedding_dim=8,mlp=64-32,cross_layers=2",
      "fnn:seed=2,embedding_dim=8,mlp=64-32",
      "deepfm:seed=3,embedding_dim=8,mlp=64-32",
      "dcnv2:seed=4,embedding_dim=8,mlp=64-32,cross_layers=2",
    ]
    groups = [[0, 1], [2, 3]]         # default: one group per member (K = M)
    device = "auto"                   # auto | cpu | cuda ("cuda" without CUDA is a ConfigError)

    [train]
    batch_size = 1024                 # global batch of one group (split over its ranks)
    eval_batch_size = 4096
    epochs = 3
    patience = 1                      # stop at the first epoch without a val-AUC gain
    checkpoint_interval = 100
    log_every = 10

    [dense_optimizer]                 # torch.optim.Adam on the dense parameters
    lr = 1e-3

    [embedding_optimizer]             # TorchRec fused optimizer
    name = "rowwise_adagrad"          # "auto" = adam on GPU, rowwise_adagrad on CPU
    lr = 0.02                         # omit to take the optimizer's default (AUTO_EMBEDDING_LR)

Data in TorchRec's Criteo-1TB layout (``day_{i}_{dense,sparse,labels}.npy``, no meta.json)
is read in place when the config has a ``[torchrec_criteo]`` section (see
``TorchRecCriteoSection``); code that reads data asks the config, never ``data_dir``::

    schema = cfg.schema()                                  # Schema.load(data_dir) or the day files'
    loader = make_loader(cfg.data_source(), "train", 4096)  # a directory or a TorchRecCriteo

``load_config(path, ["train.epochs=1", "seed=3"])`` applies ``--set`` overrides
(values are TOML literals; bare words are strings).
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from recsys.data.schema import Schema, SchemaError
from recsys.distributed import EMBEDDING_OPTIMIZERS as _SHARDED_OPTIMIZERS
from recsys.distributed import SHARDING_TYPES as _SHARDING_TYPES
from recsys.models.registry import MODELS
from recsys.models.spec import SpecError, parse_spec
from recsys.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file that cannot be run; the message is one line naming the file and the bad value."""


# recsys.distributed owns the lists; the config adds "auto" (device-dependent) and None (planner's choice).
EMBEDDING_OPTIMIZERS = ("auto", *_SHARDED_OPTIMIZERS)
SHARDING_TYPES = (None, *_SHARDING_TYPES)
DEVICES = ("auto", "cpu", "cuda")
REQUIRED_SPLITS = ("train", "val", "test")
# Embedding lr when [embedding_optimizer] gives none.  Adagrad-family steps shrink with the
# accumulated squared gradient, so they need a ~10-20x larger lr than Adam to move the rows
# as far in one epoch (Adam's 1e-3 on rowwise_adagrad leaves the embeddings near their init);
# 0.02 is what configs/demo.toml trains with on CPU.
AUTO_EMBEDDING_LR = {"adam": 1e-3, "rowwise_adagrad": 0.02, "adagrad": 0.02, "sgd": 0.01}


@dataclass
class TrainConfig:
    """Loop knobs.  ``batch_size`` is the global batch of one group, so a group sees the
    same batches whether it runs on 1 rank or on all of them (schedule independence)."""

    batch_size: int = 4096
    eval_batch_size: int = 0  # 0 = same as batch_size
    epochs: int = 10
    patience: int = 1  # epochs without val-AUC gain before stopping; 0 disables early stopping
    eval_interval: int = 0  # also evaluate (val) every N steps; 0 = only at epoch ends
    checkpoint_interval: int = 0  # also checkpoint every N steps mid-epoch; 0 = only at epoch ends
    max_steps_per_epoch: int = 0  # 0 = the whole split; >0 caps it (smoke runs, benchmarks)
    shuffle: bool = True
    pipeline: bool = True  # TrainPipelineSparseDist (overlaps input dist with compute)
    log_every: int = 10  # TensorBoard train-loss interval, in steps


@dataclass
class DenseOptimizerConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class EmbeddingOptimizerSection:
    """Becomes ``recsys.distributed.EmbeddingOptimizerConfig`` once the device is known."""

    name: str = "auto"
    lr: float | None = None  # None: AUTO_EMBEDDING_LR[resolved name], so "auto" never pairs Adam's lr with Adagrad
    eps: float = 1e-8
    weight_decay: float = 0.0

    def resolve(self, device_type: str) -> Any:
        """Example: ``EmbeddingOptimizerSection().resolve("cpu")`` -> rowwise_adagrad, lr 0.02."""
        from recsys.distributed import EmbeddingOptimizerConfig

        name = self.name
        if name == "auto":
            # Adam on embeddings is what the reference trains with; TorchRec's CPU kernels
            # only fuse the Adagrad/SGD family, so CPU defaults to row-wise Adagrad.
            name = "adam" if device_type == "cuda" else "rowwise_adagrad"
        lr = AUTO_EMBEDDING_LR[name] if self.lr is None else self.lr
        return EmbeddingOptimizerConfig(name=name, lr=lr, eps=self.eps, weight_decay=self.weight_decay)


@dataclass
class TopologySection:
    """``[topology]``: each rank's memory, for the sharding planner (``recsys.plan``).

    0 = detect: the GPU's memory on CUDA, this machine's RAM split over its local ranks on
    CPU (TorchRec's defaults, 32 GB HBM / 128 GB DDR, are for someone else's machine).
    ``uvm_caching_ratio`` (CUDA): the share of a UVM-cached table kept in HBM when the planner
    puts a table in host memory (0 = TorchRec's default, 0.2).

    Example::

        [topology]
        hbm_gb = 80
        ddr_gb = 240
    """

    hbm_gb: float = 0.0
    ddr_gb: float = 0.0
    local_world_size: int = 0  # 0 = torchrun's LOCAL_WORLD_SIZE
    uvm_caching_ratio: float = 0.0


@dataclass
class ShardingSection:
    sharding_type: str | None = None  # None / "auto" = the planner chooses

    def resolve(self) -> Any:
        from recsys.distributed import ShardingConfig

        return ShardingConfig(sharding_type=self.sharding_type)


@dataclass
class TorchRecCriteoSection:
    """``[torchrec_criteo]``: ``data_dir`` holds TorchRec's ``day_{i}_{dense,sparse,labels}.npy``.

    Those files carry no schema, so the section supplies what ``meta.json`` would: which
    days (or fractions of a day) make each split, and the table sizes ids are taken
    modulo.  A day is ``23`` or ``[23, 0.0, 0.5]`` (rows ``[int(0.0 * N), int(0.5 * N))``).

    Example::

        [torchrec_criteo]
        train_days = [0, 1, 2]
        val_days = [[23, 0.0, 0.5]]
        test_days = [[23, 0.5, 1.0]]
        num_embeddings_per_feature = 40000000   # or a list of 26 sizes
        sparse_suffix = "sparse"                # "sparse_contig": contiguous_preproc_criteo.py's output
    """

    train_days: list[Any] = field(default_factory=list)
    val_days: list[Any] = field(default_factory=list)
    test_days: list[Any] = field(default_factory=list)
    num_embeddings_per_feature: int | list[int] = 0
    sparse_suffix: str = "sparse"

    def days(self) -> dict[str, list[tuple[int, float, float]]]:
        """Every split's days as (day, start_fraction, stop_fraction); the section is validated."""
        return {
            split: [(d, 0.0, 1.0) if isinstance(d, int) else (int(d[0]), float(d[1]), float(d[2])) for d in spec]
            for split, spec in (("train", self.train_days), ("val", self.val_days), ("test", self.test_days))
        }

    def open(self, data_dir: str | Path) -> Any:
        """-> ``recsys.data.torchrec_layout.TorchRecCriteo`` (checks every day file's shape)."""
        from recsys.data.torchrec_layout import open_torchrec_criteo

        d = self.days()
        return open_torchrec_criteo(
            data_dir, train_days=d["train"], val_days=d["val"], test_days=d["test"],
            num_embeddings_per_feature=self.num_embeddings_per_feature, sparse_suffix=self.sparse_suffix,
        )


@dataclass
class ExperimentConfig:
    data_dir: str
    members: list[str]
    groups: list[list[int]] = field(default_factory=list)  # filled with one group per member
    name: str = "run"
    seed: int = 0
    device: str = "auto"
    log_dir: str = "runs"
    checkpoint_dir: str = "checkpoints"
    train: TrainConfig = field(default_factory=TrainConfig)
    dense_optimizer: DenseOptimizerConfig = field(default_factory=DenseOptimizerConfig)
    embedding_optimizer: EmbeddingOptimizerSection = field(default_factory=EmbeddingOptimizerSection)
    sharding: ShardingSection = field(default_factory=ShardingSection)
    topology: TopologySection = field(default_factory=TopologySection)
    torchrec_criteo: TorchRecCriteoSection | None = None  # set: data_dir is in TorchRec's day layout
    source: str = "<config>"  # the file it came from, for messages

    @property
    def run_dir(self) -> Path:
        return Path(self.log_dir) / self.name

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.checkpoint_dir) / self.name

    @property
    def member_names(self) -> list[str]:
        from recsys.ensemble import member_names

        return member_names(self.members)

    def data_source(self) -> Any:
        """What to pass to ``make_loader`` / ``evaluate_split``: ``data_dir`` (our layout, with
        meta.json) or, with ``[torchrec_criteo]``, a ``TorchRecCriteo`` over its day files.

        Example: ``make_loader(cfg.data_source(), "val", 4096, equal_batches=True)``
        """
        if self.torchrec_criteo is None:
            return self.data_dir
        return self.torchrec_criteo.open(self.data_dir)

    def schema(self) -> Schema:
        """The data's ``Schema``: meta.json's, or the one built from ``[torchrec_criteo]``."""
        if self.torchrec_criteo is None:
            return Schema.load(self.data_dir)
        return self.torchrec_criteo.open(self.data_dir).schema

    def hparams(self) -> dict[str, Any]:
        """Flat scalar/str dict for TensorBoard's hparams plugin."""
        out: dict[str, Any] = {
            "name": self.name,
            "data_dir": self.data_dir,
            "members": ";".join(self.members),
            "groups": str(self.groups),
            "num_members": len(self.members),
            "num_groups": len(self.groups),
            "seed": self.seed,
        }
        for sec in ("train", "dense_optimizer", "embedding_optimizer", "sharding"):
            for k, v in dataclasses.asdict(getattr(self, sec)).items():
                out[f"{sec}.{k}"] = "auto" if v is None else v
        if self.torchrec_criteo is not None:  # lists as strings: hparams takes scalars only
            for k, v in dataclasses.asdict(self.torchrec_criteo).items():
                out[f"torchrec_criteo.{k}"] = v if isinstance(v, (int, str)) else str(v)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


_SECTIONS: dict[str, type] = {
    "train": TrainConfig,
    "dense_optimizer": DenseOptimizerConfig,
    "embedding_optimizer": EmbeddingOptimizerSection,
    "sharding": ShardingSection,
    "topology": TopologySection,
}
_TOP = {f.name for f in dataclasses.fields(ExperimentConfig)} - set(_SECTIONS) - {"source"}
_TORCHREC_DAY_KEYS = ("train_days", "val_days", "test_days")
_NUM_CAT = 26  # torchrec.datasets.criteo.DEFAULT_CAT_NAMES; not imported here to keep load_config light


def _apply_override(raw: dict[str, Any], item: str, src: str) -> None:
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


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """TOML already types values; this catches e.g. a string where an int belongs."""
    tp_s = str(tp)
    if tp_s.endswith(" | None"):  # optional fields: TOML has no null, so a value is always given
        tp_s = tp = tp_s.removesuffix(" | None")
    if tp_s in ("int", "<class 'int'>") or tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif tp is float or tp_s == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
    elif tp is bool or tp_s == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
    elif tp is str or tp_s == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build_section(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table [{where.rsplit(' ', 1)[-1]}]")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        if k not in fields:
            raise ConfigError(f"{where}: unknown key {k!r}; valid keys: {', '.join(sorted(fields))}")
        kwargs[k] = _check_type(v, fields[k].type, f"{where}.{k}")
    return cls(**kwargs)


def _build_torchrec_criteo(raw: Any, where: str) -> TorchRecCriteoSection:
    """Type checks ``[torchrec_criteo]``; the day files are checked by ``_check_torchrec_data``."""
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
    if (isinstance(n, list) and len(n) != _NUM_CAT) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in sizes
    ):
        raise ConfigError(
            f"{where}.num_embeddings_per_feature: expected a positive integer or a list of {_NUM_CAT}, got {n!r}"
        )
    suffix = raw.get("sparse_suffix", "sparse")
    if not isinstance(suffix, str) or not suffix or "/" in suffix:
        raise ConfigError(f"{where}.sparse_suffix: expected a file-name suffix such as \"sparse_contig\", got {suffix!r}")
    return TorchRecCriteoSection(
        train_days=list(raw["train_days"]), val_days=list(raw["val_days"]), test_days=list(raw["test_days"]),
        num_embeddings_per_feature=n, sparse_suffix=suffix,
    )


def _check_torchrec_data(cfg: ExperimentConfig, sec: TorchRecCriteoSection) -> None:
    """Every day file exists (all missing ones named at once) and has the shapes TorchRec writes."""
    from recsys.data.loader import LoaderError

    source, d = cfg.source, Path(cfg.data_dir)
    if not d.is_dir():
        raise ConfigError(f"{source}: data_dir: {d}: no such directory")
    days = sorted({day for spec in sec.days().values() for day, _, _ in spec})
    missing = [
        f"day_{day}_{kind}.npy"
        for day in days
        for kind in ("dense", sec.sparse_suffix, "labels")
        if not (d / f"day_{day}_{kind}.npy").is_file()
    ]
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


def config_from_dict(raw: dict[str, Any], source: str = "<config>", check_data: bool = True) -> ExperimentConfig:
    """Validates a parsed TOML dict; ``check_data=False`` skips the data-dir check (tests, tools)."""
    unknown = set(raw) - _TOP - set(_SECTIONS)
    tr_raw = raw.get("torchrec_criteo")
    if unknown:
        valid = sorted(_TOP | set(_SECTIONS))
        raise ConfigError(f"{source}: unknown key {sorted(unknown)[0]!r}; valid keys: {', '.join(valid)}")
    for req in ("data_dir", "members"):
        if req not in raw:
            raise ConfigError(f"{source}: missing required key {req!r}")
    members = raw["members"]
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ConfigError(f"{source}: 'members' must be a non-empty list of spec strings, got {members!r}")
    configs = {k: v.config for k, v in MODELS.items()}
    for i, spec in enumerate(members):
        try:
            parse_spec(spec, configs)
        except SpecError as e:
            raise ConfigError(f"{source}: members[{i}]: {e}") from None

    from recsys.ensemble import validate_groups

    groups_raw = raw.get("groups")
    if groups_raw is not None and (
        not isinstance(groups_raw, list) or not all(isinstance(g, list) for g in groups_raw)
    ):
        raise ConfigError(f"{source}: 'groups' must be a list of lists of member indices, got {groups_raw!r}")
    try:
        groups = validate_groups(len(members), groups_raw if groups_raw else None)
    except ValueError as e:
        raise ConfigError(f"{source}: groups: {e}") from None

    top = {k: _check_type(raw[k], ExperimentConfig.__dataclass_fields__[k].type, f"{source}: {k}")
           for k in ("name", "seed", "device", "log_dir", "checkpoint_dir", "data_dir") if k in raw}
    sections = {k: _build_section(cls, raw.get(k, {}), f"{source}: {k}") for k, cls in _SECTIONS.items()}
    tr = _build_torchrec_criteo(tr_raw, f"{source}: torchrec_criteo") if tr_raw is not None else None
    cfg = ExperimentConfig(members=list(members), groups=[list(g) for g in groups], source=source,
                           torchrec_criteo=tr, **top, **sections)

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
            f"{source}: sharding.sharding_type must be auto, table_wise, row_wise or column_wise, "
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
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"{source}: device = \"cuda\" but torch.cuda.is_available() is False "
                "(use device = \"auto\" or \"cpu\", or the CUDA stack: RECSYS_DEVICE=gpu bash scripts/setup_env.sh)"
            )

    if check_data and cfg.torchrec_criteo is not None:  # no meta.json in TorchRec's layout
        _check_torchrec_data(cfg, cfg.torchrec_criteo)
    elif check_data:
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
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = (), check_data: bool = True) -> ExperimentConfig:
    """Reads, overrides and validates a config; raises ``ConfigError`` with a one-line message.

    A relative ``data_dir`` is taken relative to the current directory (where torchrun runs),
    not the config file, so the shipped configs work from the repository root.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML ({e})") from None
    for item in overrides:
        _apply_override(raw, item, str(p))
    return config_from_dict(raw, source=str(p), check_data=check_data)
