"""Sharding plans: the sharder, the planner's constraints, and planning one group's tables.

Why one place for both callers: training (``shard_module``, over a live process group) and
``python -m recsys.plan`` (no process group, any hypothetical cluster) must plan the same way
and refuse the same plans with the same one-line ``PlanDoesNotFit``, so both go through
``plan_group``.

Example::

    sharder, dense_kernel = make_sharder(EmbeddingOptimizerConfig("rowwise_adagrad"), torch.device("cpu"))
    topo = TopologySpec(world_size=2, local_world_size=2)
    plan = plan_group(module, topo, torch.device("cpu"), sharder, ShardingConfig(), dense_kernel)  # pg=None
    plan_sharding_types(plan)      # {"m0_fnn__C1": "table_wise", ...}
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.types import CacheParams, ModuleSharder, ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsys import torchrec_compat
from recsys.config.schema import EmbeddingOptimizerConfig, ShardingConfig
from recsys.errors import one_line
from recsys.plan import PlanDoesNotFit, TopologySpec, check_fits, does_not_fit_message, plan_shards

# name -> FBGEMM's optimizer; the keys are recsys.config's EMBEDDING_OPTIMIZER_NAMES.
_FUSED_OPTIMIZERS = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
    "adam": EmbOptimType.ADAM,
}


class RowWiseEBCSharder(EmbeddingBagCollectionSharder):
    """``EmbeddingBagCollectionSharder`` that also offers ROW_WISE on CPU.

    TorchRec 1.8 lists row-wise only for CUDA, but its CPU kernels (all-to-all +
    reduce-scatter over gloo) run it correctly (tests/test_distributed.py checks the
    logits).  DATA_PARALLEL is dropped: member tables are always model-parallel, and
    data_parallel fails on subgroups without global rank 0 (torchrec_compat, bug 3).
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = [t for t in super().sharding_types(compute_device_type) if t != ShardingType.DATA_PARALLEL.value]
        if ShardingType.ROW_WISE.value not in types:
            types.append(ShardingType.ROW_WISE.value)
        return types


def uses_dense_kernel(emb_opt: EmbeddingOptimizerConfig, device: torch.device) -> bool:
    """Adam on CPU: FBGEMM has no CPU fused Adam, so tables use the dense kernel."""
    return emb_opt.name == "adam" and device.type == "cpu"


def fused_params(emb_opt: EmbeddingOptimizerConfig) -> dict[str, Any]:
    """The sharder's ``fused_params``: FBGEMM's optimizer and its hyper-parameters."""
    return {
        "optimizer": _FUSED_OPTIMIZERS[emb_opt.name],
        "learning_rate": emb_opt.lr,
        "eps": emb_opt.eps,
        "weight_decay": emb_opt.weight_decay,
    }


def make_sharder(emb_opt: EmbeddingOptimizerConfig, device: torch.device) -> tuple[RowWiseEBCSharder, bool]:
    """The sharder for ``emb_opt`` on ``device``, and whether the tables use the dense kernel
    (then the sharder fuses nothing and ``make_optimizer`` adds ``torch.optim.Adam``)."""
    dense_kernel = uses_dense_kernel(emb_opt, device)
    return RowWiseEBCSharder(fused_params=None if dense_kernel else fused_params(emb_opt)), dense_kernel


def planner_compute_kernels(device: torch.device, dense_kernel: bool) -> list[str]:
    """Compute kernels the planner may choose from, per table.

    On CUDA the planner picks ``fused`` when the tables fit in HBM and falls back
    to ``fused_uvm_caching`` (rows in host memory, hot rows cached on the GPU) when
    they do not.  On CPU there is only ``fused``; the dense-kernel path (Adam on
    CPU) is planned as ``fused`` and switched to ``dense`` after planning (see
    ``build_plan``).  NOTE: the CUDA branch is untested -- the tests run on CPU only.
    """
    if device.type == "cuda" and not dense_kernel:
        return [EmbeddingComputeKernel.FUSED.value, EmbeddingComputeKernel.FUSED_UVM_CACHING.value]
    return [EmbeddingComputeKernel.FUSED.value]


def ebc_tables(module: nn.Module) -> dict[str, tuple[int, int]]:
    """table name -> (rows, embedding dim) of every table in every EBC inside ``module``."""
    return {
        cfg.name: (cfg.num_embeddings, cfg.embedding_dim)
        for m in module.modules()
        if isinstance(m, EmbeddingBagCollection)
        for cfg in m.embedding_bag_configs()
    }


def planner_constraints(
    module: nn.Module, world: int, device: torch.device, sharder: ModuleSharder[nn.Module], sharding: ShardingConfig,
    dense_kernel: bool, topology: TopologySpec | None = None,
) -> dict[str, ParameterConstraints]:
    """One ``ParameterConstraints`` per table: the sharding types allowed (a forced type, or
    the sharder's), the kernels (``planner_compute_kernels``), column-wise's ``min_partition``
    (dim / world, so each rank really holds a slice) and, on CUDA, the UVM cache ratio of a
    ``recsys.plan.TopologySpec``."""
    types = [sharding.sharding_type] if sharding.sharding_type else sharder.sharding_types(device.type)
    ratio = topology.uvm_caching_ratio if topology is not None else None
    constraints = {}
    for name, (_, dim) in ebc_tables(module).items():
        min_partition = None
        if sharding.sharding_type == "column_wise":
            if dim % world != 0:
                raise ValueError(f"column_wise: embedding dim {dim} of table {name} is not divisible by {world} ranks")
            min_partition = dim // world
        constraints[name] = ParameterConstraints(
            sharding_types=types,
            compute_kernels=planner_compute_kernels(device, dense_kernel),
            min_partition=min_partition,
            cache_params=CacheParams(load_factor=ratio) if ratio and device.type == "cuda" else None,
        )
    return constraints


def plan_group(
    module: nn.Module,
    topology: TopologySpec,
    device: torch.device,
    sharder: ModuleSharder[nn.Module],
    sharding: ShardingConfig,
    dense_kernel: bool,
    group_index: int = 0,
    optimizer: str = "rowwise_adagrad",
    pg: dist.ProcessGroup | None = None,
) -> ShardingPlan:
    """Plans every EBC table of ``module`` on ``topology``'s ranks, or raises ``PlanDoesNotFit``.

    ``pg``: the group's process group (its rank 0 plans and broadcasts, and alone reports a
    refusal); None plans in this process alone (``recsys.plan``, no process group needed).
    Refused either way: what TorchRec's planner cannot place (one line: the shortfall and the
    largest table) and what it places but ``check_fits`` finds overflowing a rank.
    """
    world = pg.size() if pg is not None else topology.world_size
    planner = EmbeddingShardingPlanner(
        topology=topology.topology(),
        constraints=planner_constraints(module, world, device, sharder, sharding, dense_kernel, topology),
    )
    report_here = pg is None or pg.rank() == 0
    try:
        if pg is None:
            plan = planner.plan(module, [sharder])
        else:
            plan = torchrec_compat.plan_on_group(planner, module, [sharder], pg)
    except torchrec_compat.PlannerError as e:
        msg = does_not_fit_message(group_index, ebc_tables(module), optimizer, topology, sharding.sharding_type,
                                   one_line(e)[:200])
        raise PlanDoesNotFit(msg, report_here=report_here) from None
    check_fits(group_index, plan_shards(plan)[0], topology, optimizer, report_here=report_here)
    return plan


def build_plan(
    module: nn.Module,
    pg: dist.ProcessGroup,
    device: torch.device,
    sharder: ModuleSharder[nn.Module],
    sharding: ShardingConfig,
    dense_kernel: bool,
    topology: TopologySpec | None = None,
    group_index: int = 0,
    optimizer: str = "rowwise_adagrad",
    *,
    local_world_size: int,
) -> ShardingPlan:
    """Plans all EBC tables of ``module`` over the ranks of ``pg`` (ranks group-local).

    The planner gets the group's ``Topology`` with each rank's memory (``topology``, a
    ``recsys.plan.TopologySpec``; None = detected for this device, with ``local_world_size``
    ranks per node, ``DistEnv.local_world_size``) and the constraints of
    ``planner_constraints``.  A plan that cannot fit raises ``PlanDoesNotFit`` (one line:
    the shortfall and the largest table) on every rank of the group, before any shard is
    allocated (the tables are still on ``meta``).  For the dense-kernel path (Adam on CPU)
    the planner's placements are kept and the kernel is switched to ``dense`` -- what
    ``construct_module_sharding_plan(..., compute_kernel="dense")`` would build, without
    re-deriving the placements.
    """
    world = pg.size()
    if topology is None:
        topology = TopologySpec(world_size=world, local_world_size=min(world, local_world_size), device=device.type)
    plan = plan_group(module, topology, device, sharder, sharding, dense_kernel, group_index, optimizer, pg)
    if dense_kernel:
        for module_plan in plan.plan.values():
            for param_sharding in module_plan.values():
                param_sharding.compute_kernel = EmbeddingComputeKernel.DENSE.value
    return plan


def plan_sharding_types(plan: ShardingPlan) -> dict[str, str]:
    """table name -> sharding type, for logs and tests."""
    return {
        table: ps.sharding_type
        for module_plan in plan.plan.values()
        for table, ps in module_plan.items()
    }
