"""TorchRec 1.8 workarounds for DMP on a process group that lacks global rank 0.

Everything here exists only because of bugs in TorchRec 1.8 and can be deleted
when TorchRec is upgraded (each function says what replaces it).  Nothing else
in the project should know about these bugs: ``recsys.distributed`` calls
``plan_on_group`` and ``globalize_placements`` and nothing more.

TorchRec 1.6.1 (the release for torch 2.11, which the lent GPU machines have; see
docs/gpu.md) has the same bugs and needs the same workarounds, and no other API of
it that this project uses differs: on torch 2.11 + fbgemm-gpu-cpu 1.6.0 + torchrec
1.6.1 the suites that exercise TorchRec (test_torchrec_compat, test_distributed,
test_models*, test_evaluate, test_ensemble, test_serve, test_train_group) pass
unchanged.  So there is no version switch here; if one is ever needed, it lives
here and nowhere else.

The bugs (all reproduce with 4 gloo ranks and a subgroup {2, 3}; see
``tests/test_distributed.py::test_subgroup_without_rank0``):

1. ``EmbeddingShardingPlanner.collective_plan(module, sharders, pg)`` fails with
   "Global rank 0 is not part of group": ``invoke_on_rank_and_broadcast_result``
   passes ``src=0`` as a GLOBAL rank to ``broadcast_object_list``.  Fixed upstream
   after 1.8 (meta-pytorch/torchrec#1837 added sub-group planning); replace
   ``plan_on_group`` with ``planner.collective_plan`` then.
2. ``ShardedTensor`` validates ``sharding_spec.shards[*].placement`` against
   GLOBAL ranks, while DMP's sharding (all-to-all over ``pg``) wants the
   parameter sharding's ``ranks`` to be GROUP-LOCAL.  The plan is correct for
   the embedding kernels and wrong only for the ShardedTensor metadata, so we
   rewrite only the placements.  Delete ``globalize_placements`` when
   ShardedTensor accepts group-local placements (or TorchRec moves to DTensor).
3. ``data_parallel`` tables fail too (``reset_parameters`` broadcasts from global
   rank 0).  There is no workaround here: ``recsys.distributed`` simply never
   plans data_parallel for member tables (they are model-parallel by design).
"""
from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch.distributed.remote_device import _remote_device
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import PlannerError  # noqa: F401 - re-exported for recsys.distributed.planning
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ModuleSharder, ShardingPlan


def plan_on_group(
    planner: EmbeddingShardingPlanner,
    module: nn.Module,
    sharders: list[ModuleSharder[nn.Module]],
    pg: dist.ProcessGroup,
) -> ShardingPlan:
    """``planner.collective_plan`` that works on any subgroup (bug 1).

    The group's rank 0 plans; the plan is broadcast with a GROUP-local source.
    The planner is deterministic, but planning once and broadcasting keeps the
    ranks consistent even if it were not (this is what collective_plan intends).
    A plan that cannot fit is broadcast as the planner's error text, so every rank of the
    group raises ``PlannerError`` together instead of waiting on a broadcast that never comes.
    """
    obj: list[ShardingPlan | str | None] = [None]
    if pg.rank() == 0:
        try:
            obj[0] = planner.plan(module, sharders)
        except PlannerError as e:
            obj[0] = f"PlannerError: {e}"
    dist.broadcast_object_list(obj, group=pg, group_src=0)
    plan = obj[0]
    if isinstance(plan, str):
        raise PlannerError(plan)
    assert plan is not None
    return plan


def globalize_placements(plan: ShardingPlan, pg: dist.ProcessGroup, local_world_size: int) -> None:
    """Rewrites, in place, every shard placement ``rank:{r}/dev`` from group-local
    ``r`` to the global rank (bug 2).  ``ParameterSharding.ranks`` stay group-local.

    On CUDA the device index becomes the global rank's local device
    (``global % local_world_size``), which is where that rank's shard lives.
    Idempotent on the WORLD group (local rank == global rank).
    """
    group_ranks = dist.get_process_group_ranks(pg)
    for module_plan in plan.plan.values():
        assert isinstance(module_plan, EmbeddingModuleShardingPlan), type(module_plan)
        for param_sharding in module_plan.values():
            spec = param_sharding.sharding_spec
            if spec is None or not hasattr(spec, "shards"):
                continue
            for shard in spec.shards:
                placement = shard.placement
                assert isinstance(placement, _remote_device)
                local_rank = placement.rank()
                assert local_rank is not None, f"placement {placement} has no rank"
                global_rank = group_ranks[local_rank]
                device = placement.device()
                if device.type == "cuda":
                    dev = f"cuda:{global_rank % local_world_size}"
                else:
                    dev = device.type
                shard.placement = _remote_device(f"rank:{global_rank}/{dev}")
