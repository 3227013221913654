"""Which ranks train which group, and the process groups that tie them together.

Why: with W ranks and K groups, groups train side by side when W >= K and W % K == 0 (each on
its own ``dist.new_group``), else one after another on all ranks; the result must not depend on
the schedule, so the choice is one small pure function.

Example::

    ranks = group_schedule(env.world_size, [[0, 1], [2, 3]])   # [[0, 1], [2, 3]] on 4 ranks; None: sequential
    pgs = new_subgroups(ranks) if ranks else None
"""
from __future__ import annotations

import torch.distributed as dist


def group_schedule(world_size: int, groups: list[list[int]]) -> list[list[int]] | None:
    """Global ranks per group for the parallel schedule, or None for sequential.

    Parallel when W >= K and W % K == 0: group k gets ranks [k*W/K, (k+1)*W/K).
    Otherwise (None) every group trains on all ranks, one after another.

    Example::

        group_schedule(4, [[0, 1], [2]])   # [[0, 1], [2, 3]]
        group_schedule(3, [[0], [1]])      # None
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    k = len(groups)
    if k == 0:
        raise ValueError("no groups given")
    if world_size < k or world_size % k != 0:
        return None
    per = world_size // k
    return [list(range(i * per, (i + 1) * per)) for i in range(k)]


def new_subgroups(rank_lists: list[list[int]]) -> list[dist.ProcessGroup]:
    """One process group per rank list, created by every rank in the same order.

    ``dist.new_group`` is collective over the whole world, so every rank must call
    this with the same lists.  On a rank outside a list the entry is
    ``dist.GroupMember.NON_GROUP_MEMBER`` and must not be used.
    """
    return [dist.new_group(ranks=sorted(ranks)) for ranks in rank_lists]
