"""The experiment config's shape: one dataclass per TOML section, and the names they may hold.

Why its own module with no heavy imports: the launcher, the planner and the tests read a config
before any process group (or even torch) exists, and the optimizer / sharding names validated
here are the single definition ``recsys.distributed`` checks against too (it sits above this
layer and imports them).  ``EmbeddingOptimizerConfig`` and ``ShardingConfig`` are the resolved,
device-specific forms of ``[embedding_optimizer]`` and ``[sharding]`` that ``shard_module``
takes; they live here so that ``resolve()`` does not reach up into ``recsys.distributed``.

Example::

    cfg = ExperimentConfig(data_dir="data/demo/criteo", members=["fnn"], groups=[[0]])
    cfg.run_dir                                   # Path("runs/run")
    cfg.embedding_optimizer.resolve("cpu")        # EmbeddingOptimizerConfig("rowwise_adagrad", lr=0.02)
    cfg.hparams()["train.batch_size"]             # 4096
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.data.criteo_layout import parse_day
from recsys.data.schema import Schema
from recsys.errors import UserError

if TYPE_CHECKING:
    from recsys.data.torchrec_layout import TorchRecCriteo


class ConfigError(UserError, ValueError):
    """A config file that cannot be run; the message is one line naming the file and the bad value."""


# The single definition of the valid names.  recsys.distributed re-exports the first two as its
# EMBEDDING_OPTIMIZERS / SHARDING_TYPES; the config adds "auto" (device-dependent) and None
# (the planner's choice) on top.
EMBEDDING_OPTIMIZER_NAMES = ("rowwise_adagrad", "adagrad", "sgd", "adam")
SHARDING_TYPE_NAMES = ("table_wise", "row_wise", "column_wise")
EMBEDDING_OPTIMIZERS = ("auto", *EMBEDDING_OPTIMIZER_NAMES)
SHARDING_TYPES = (None, *SHARDING_TYPE_NAMES)
DEVICES = ("auto", "cpu", "cuda")
REQUIRED_SPLITS = ("train", "val", "test")
# Embedding lr when [embedding_optimizer] gives none.  Adagrad-family steps shrink with the
# accumulated squared gradient, so they need a ~10-20x larger lr than Adam to move the rows
# as far in one epoch (Adam's 1e-3 on rowwise_adagrad leaves the embeddings near their init);
# 0.02 is what configs/demo.toml trains with on CPU.
AUTO_EMBEDDING_LR = {"adam": 1e-3, "rowwise_adagrad": 0.02, "adagrad": 0.02, "sgd": 0.01}


@dataclass
class EmbeddingOptimizerConfig:
    """The embedding tables' optimizer, as ``recsys.distributed.shard_module`` takes it.

    rowwise_adagrad | adagrad | sgd are FBGEMM fused (applied in backward) on CPU and
    CUDA.  adam is fused on CUDA; FBGEMM refuses Adam on CPU, so there the tables use
    the ``dense`` compute kernel and ``torch.optim.Adam`` (see ``make_optimizer``).

    Example::

        EmbeddingOptimizerConfig("adam", lr=1e-3)
        EmbeddingOptimizerConfig("lamb")   # ValueError: unknown embedding optimizer 'lamb'; valid: ...
    """

    name: str = "rowwise_adagrad"
    lr: float = 0.01
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in EMBEDDING_OPTIMIZER_NAMES:
            raise ValueError(
                f"unknown embedding optimizer {self.name!r}; valid: {', '.join(EMBEDDING_OPTIMIZER_NAMES)}"
            )


@dataclass
class ShardingConfig:
    """``sharding_type`` None lets the planner choose (never data_parallel).

    Example::

        ShardingConfig("row_wise"); ShardingConfig()   # forced row-wise; the planner's choice
    """

    sharding_type: str | None = None  # None | table_wise | row_wise | column_wise

    def __post_init__(self) -> None:
        if self.sharding_type is not None and self.sharding_type not in SHARDING_TYPE_NAMES:
            raise ValueError(
                f"unknown sharding type {self.sharding_type!r}; valid: {', '.join(SHARDING_TYPE_NAMES)} (or None)"
            )


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
    """``[embedding_optimizer]``; becomes an ``EmbeddingOptimizerConfig`` once the device is known."""

    name: str = "auto"
    lr: float | None = None  # None: AUTO_EMBEDDING_LR[resolved name], so "auto" never pairs Adam's lr with Adagrad
    eps: float = 1e-8
    weight_decay: float = 0.0

    def resolve(self, device_type: str) -> EmbeddingOptimizerConfig:
        """Example: ``EmbeddingOptimizerSection().resolve("cpu")`` -> rowwise_adagrad, lr 0.02."""
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
    """``[sharding]``: ``sharding_type`` None (or "auto") lets the planner choose."""

    sharding_type: str | None = None

    def resolve(self) -> ShardingConfig:
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
            split: [parse_day(d) for d in spec]
            for split, spec in (("train", self.train_days), ("val", self.val_days), ("test", self.test_days))
        }

    def open(self, data_dir: str | Path) -> TorchRecCriteo:
        """-> ``recsys.data.torchrec_layout.TorchRecCriteo`` (checks every day file's shape)."""
        from recsys.data.torchrec_layout import open_torchrec_criteo  # lazy: numpy + torchrec, only when data is read

        d = self.days()
        return open_torchrec_criteo(
            data_dir, train_days=d["train"], val_days=d["val"], test_days=d["test"],
            num_embeddings_per_feature=self.num_embeddings_per_feature, sparse_suffix=self.sparse_suffix,
        )


@dataclass
class ExperimentConfig:
    """One experiment: its data, members, groups and every section (see ``recsys.config``)."""

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
    preset: str = ""  # "tts4ctr": the official recipe under the file's values (recsys.config.preset); "": ours
    source: str = "<config>"  # the file it came from, for messages

    @property
    def run_dir(self) -> Path:
        return Path(self.log_dir) / self.name

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.checkpoint_dir) / self.name

    @property
    def member_names(self) -> list[str]:
        from recsys.ensemble import member_names  # lazy: torch, only when members are named

        return member_names(self.members)

    def data_source(self) -> str | TorchRecCriteo:
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

    def hparams(self) -> dict[str, str | int | float | bool]:
        """Flat scalar/str dict for TensorBoard's hparams plugin: the resolved values (a preset's
        included) and the preset's name ("none" for our defaults), so a run says what it trained with."""
        out: dict[str, str | int | float | bool] = {
            "name": self.name,
            "data_dir": self.data_dir,
            "members": ";".join(self.members),
            "groups": str(self.groups),
            "num_members": len(self.members),
            "num_groups": len(self.groups),
            "seed": self.seed,
            "preset": self.preset or "none",
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


# The TOML tables that map one-to-one onto a section dataclass ([torchrec_criteo] is built apart:
# its days need more than a type check).
SECTIONS: dict[str, type] = {
    "train": TrainConfig,
    "dense_optimizer": DenseOptimizerConfig,
    "embedding_optimizer": EmbeddingOptimizerSection,
    "sharding": ShardingSection,
    "topology": TopologySection,
}
