"""Born-sharded DMP: ``shard_module`` plans a group's tables, lets DMP allocate only this rank's
shards, and fills each from its seeded ``TableInit``.

Why: no rank may ever hold a whole table (members are built on ``meta``), and each shard's
initial values must be a pure function of (seed, table, row, column) so that results do not
depend on the plan or the world size.

Example::

    member = build_member("fnn:seed=1", schema, "m0", materialize=False)   # tables on meta
    dmp = shard_module(member, pg, env, EmbeddingOptimizerConfig("rowwise_adagrad", lr=0.01))
    logits = dmp(dense, kjt)   # [B_local]; each rank holds only its shards
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingEnv

from recsys import torchrec_compat
from recsys.config.schema import EmbeddingOptimizerConfig, ShardingConfig
from recsys.distributed.env import DistEnv
from recsys.distributed.planning import build_plan, make_sharder
from recsys.models.embedding_init import table_inits

if TYPE_CHECKING:
    from recsys.models.embedding_init import TableInit
    from recsys.plan import TopologySpec


def _load_weights(dmp: DistributedModelParallel, full: dict[str, torch.Tensor], inits: dict[str, TableInit]) -> None:
    """Gives the sharded module its initial values, touching only this rank's shards.

    A key in ``full`` (a tensor the caller's module held on a real device) is copied: for a
    table, each local shard takes its slice.  A table that was on ``meta`` has no values
    anywhere: each local shard is filled from its ``TableInit`` (``inits``, by table name),
    a pure function of (seed, table, row, column), so every plan and world size gives the
    same numbers without any rank holding the whole table.
    """
    state = dmp.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            src = full.get(key)
            if isinstance(value, ShardedTensor):
                table = key.split(".")[-2]  # ...embedding_bags.<table>.weight
                if src is None and table not in inits:
                    raise KeyError(f"{key}: no values and no TableInit for table {table!r}")
                for shard in value.local_shards():
                    offsets = shard.metadata.shard_offsets
                    sizes = shard.metadata.shard_sizes
                    if src is not None:
                        shard.tensor.copy_(src[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))])
                    else:
                        inits[table].fill(shard.tensor, offsets[0], offsets[1])
            elif src is not None:
                value.copy_(src)
            else:
                raise KeyError(f"sharded module has a key the unsharded one lacks: {key}")
    dmp.load_state_dict(state)


def shard_module(
    module: nn.Module,
    pg: dist.ProcessGroup | None,
    env: DistEnv,
    emb_opt: EmbeddingOptimizerConfig,
    sharding: ShardingConfig = ShardingConfig(),
    topology: TopologySpec | None = None,
    group_index: int = 0,
) -> DistributedModelParallel:
    """Shards every EBC inside ``module`` across the ranks of ``pg`` (None = world).

    Tables are born sharded: the caller builds the module with its embedding tables on
    ``meta`` (``build_group(..., materialize=False)``), DMP allocates only this rank's
    shards, and each shard is filled from its table's ``TableInit``, so no rank ever holds
    a whole table and the values do not depend on the plan or the ranks.  Tables the
    caller did materialize keep their values (each rank copies its slice).  Dense
    parameters keep the caller's (seeded) values.
    ``module`` itself is consumed (DMP swaps its EBCs for sharded ones).  Every
    submodule with a ``set_process_group(pg)`` method gets the group's ``pg``.  Works on
    subgroups without global rank 0 (``recsys.torchrec_compat``).  Dense
    parameters are wrapped in DDP over ``pg``.  ``topology`` (a ``recsys.plan.TopologySpec``
    for the group's ranks; None = detected) tells the planner each rank's memory; a plan that
    does not fit raises ``recsys.plan.PlanDoesNotFit`` before any shard exists.

    Example::

        dmp = shard_module(member, None, env, EmbeddingOptimizerConfig(),
                           ShardingConfig("row_wise"))
        logits = dmp(dense, kjt)   # [B_local]
    """
    group = pg if pg is not None else dist.group.WORLD
    assert group is not None, "call init_distributed() first"
    if group == dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(f"rank {env.rank} is not a member of the process group it was asked to shard on")
    # Only what holds values: meta tables are filled per shard from their TableInit.
    full = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items() if not v.is_meta}
    inits = table_inits(module)
    sharder, dense_kernel = make_sharder(emb_opt, env.device)
    plan = build_plan(module, group, env.device, sharder, sharding, dense_kernel, topology, group_index, emb_opt.name,
                      local_world_size=env.local_world_size)
    # Modules with batch statistics over the group's ranks (D-MoE's de-correlation
    # term) must use this group, not the world: see recsys/models/dmoe.py.
    for m in module.modules():
        set_pg = getattr(m, "set_process_group", None)
        if callable(set_pg):
            set_pg(group)
    # Ranks per node: where a global rank's CUDA shard lives is cuda:{rank % this}.
    torchrec_compat.globalize_placements(plan, group, max(env.local_world_size, 1))
    dmp = DistributedModelParallel(
        module,
        env=ShardingEnv.from_process_group(group),
        device=env.device,
        plan=plan,
        sharders=[sharder],
    )
    _load_weights(dmp, {k: v.to(env.device) for k, v in full.items()}, inits)
    return dmp
