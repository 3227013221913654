"""Process groups, DMP wrapping, planning, sharders and optimizers for grouped training.

One code path for ``cpu`` + gloo and ``cuda`` + NCCL.  A group of ensemble members
is one ``nn.Module``; ``shard_module`` shards every ``EmbeddingBagCollection`` in it
across the ranks of that group's process group and wraps the dense part in DDP
over the same group, so several groups can train side by side in one torchrun
world (``group_schedule``) or one after another on all ranks.

TorchRec 1.8 bugs that bite when a group lacks global rank 0 are worked around in
``recsys.torchrec_compat`` and nowhere else.

The package, by stage: ``env`` (the torchrun world, read once into a ``DistEnv``),
``groups`` (which ranks train which group), ``planning`` (sharder, constraints, plans that
are refused before any shard exists), ``sharding`` (born-sharded DMP with per-shard seeded
init), ``optim`` (dense Adam + the fused embedding optimizer).  The valid optimizer and
sharding names, and ``EmbeddingOptimizerConfig`` / ``ShardingConfig``, are defined once in
``recsys.config.schema`` and re-exported here.

Example::

    env = init_distributed()                              # torchrun env, or a 1-process world
    ranks = group_schedule(env.world_size, [[0, 1], [2, 3]])   # None -> sequential
    pgs = new_subgroups(ranks) if ranks else None
    dmp = shard_module(group_module, pgs[k] if pgs else None, env,
                       EmbeddingOptimizerConfig("rowwise_adagrad", lr=0.01))
    opt = make_optimizer(dmp, lr=1e-3, emb_opt=EmbeddingOptimizerConfig("rowwise_adagrad", lr=0.01))
    loss = loss_fn(dmp(dense, kjt), labels); loss.backward(); opt.step()
"""
from __future__ import annotations

from recsys.config.schema import EMBEDDING_OPTIMIZER_NAMES as EMBEDDING_OPTIMIZERS
from recsys.config.schema import SHARDING_TYPE_NAMES as SHARDING_TYPES
from recsys.config.schema import EmbeddingOptimizerConfig, ShardingConfig
from recsys.distributed.env import DistEnv, init_distributed
from recsys.distributed.groups import group_schedule, new_subgroups
from recsys.distributed.optim import make_optimizer
from recsys.distributed.planning import (
    RowWiseEBCSharder,
    build_plan,
    ebc_tables,
    fused_params,
    make_sharder,
    plan_group,
    plan_sharding_types,
    planner_compute_kernels,
    planner_constraints,
    uses_dense_kernel,
)
from recsys.distributed.sharding import shard_module

__all__ = [
    "EMBEDDING_OPTIMIZERS",
    "SHARDING_TYPES",
    "DistEnv",
    "EmbeddingOptimizerConfig",
    "RowWiseEBCSharder",
    "ShardingConfig",
    "build_plan",
    "ebc_tables",
    "fused_params",
    "group_schedule",
    "init_distributed",
    "make_optimizer",
    "make_sharder",
    "new_subgroups",
    "plan_group",
    "plan_sharding_types",
    "planner_compute_kernels",
    "planner_constraints",
    "shard_module",
    "uses_dense_kernel",
]
