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

``preset = "tts4ctr"`` (top level) trains with the official TTS4CTR recipe wherever the file
says nothing (Adam lr 1e-4 on everything, batch 4096, 20 epochs, patience 1) and adds
``preset=tts4ctr`` to every member spec without a ``preset=`` (``recsys.config.preset``).

``load_config(path, ["train.epochs=1", "seed=3"])`` applies ``--set`` overrides
(values are TOML literals; bare words are strings).

The package, by what each module holds (none imports torch or torchrec at import time, so the
launcher reads a config in a fraction of a second; checks that need torch import it inside):

- ``schema``: the dataclasses, one per section, and the valid names (the one definition of the
  embedding optimizers and sharding types, which ``recsys.distributed`` uses too);
- ``load``: TOML, ``--set`` overrides and the type walk over the dataclasses' fields;
- ``preset``: ``preset = "tts4ctr"``, the official recipe merged under the file's own values;
- ``checks``: members, groups, value ranges, the CUDA probe and the data directory.
"""
from __future__ import annotations

from recsys.config.load import config_from_dict, load_config
from recsys.config.schema import (
    AUTO_EMBEDDING_LR,
    DEVICES,
    EMBEDDING_OPTIMIZER_NAMES,
    EMBEDDING_OPTIMIZERS,
    REQUIRED_SPLITS,
    SHARDING_TYPE_NAMES,
    SHARDING_TYPES,
    ConfigError,
    DenseOptimizerConfig,
    EmbeddingOptimizerConfig,
    EmbeddingOptimizerSection,
    ExperimentConfig,
    ShardingConfig,
    ShardingSection,
    TopologySection,
    TorchRecCriteoSection,
    TrainConfig,
)

__all__ = [
    "AUTO_EMBEDDING_LR",
    "DEVICES",
    "EMBEDDING_OPTIMIZERS",
    "EMBEDDING_OPTIMIZER_NAMES",
    "REQUIRED_SPLITS",
    "SHARDING_TYPES",
    "SHARDING_TYPE_NAMES",
    "ConfigError",
    "DenseOptimizerConfig",
    "EmbeddingOptimizerConfig",
    "EmbeddingOptimizerSection",
    "ExperimentConfig",
    "ShardingConfig",
    "ShardingSection",
    "TopologySection",
    "TorchRecCriteoSection",
    "TrainConfig",
    "config_from_dict",
    "load_config",
]
