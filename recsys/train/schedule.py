"""Which groups this rank trains, and how the groups' results meet on global rank 0.

Why here: the schedule (parallel groups on W/K ranks each, or every group on all ranks one
after another) decides both ends of a run -- the process groups a rank trains with, and how
the per-group [N, M_k] logit blocks are merged into the [N, M] matrix the report scores.
Keeping both in one module keeps the two halves of that decision together.

Example::

    runs, parallel = plan_groups(cfg, env)             # [GroupRun(index=1, ranks=[1], ...)], True
    ...                                                # train each run -> GroupResult
    val = merge_across_groups(results, 4, parallel, "val", env)   # ([N, 4] logits, [N] labels) on rank 0
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from recsys.distributed import group_schedule, new_subgroups
from recsys.ensemble import stack_member_logits
from recsys.eval.gather import assemble_member_logits

if TYPE_CHECKING:
    from recsys.config import ExperimentConfig
    from recsys.distributed import DistEnv
    from recsys.eval.runner import EvalResult


@dataclass
class GroupRun:
    """One group as seen from this rank."""

    index: int  # k
    members: list[int]  # member indices, config order
    names: list[str]
    ranks: list[int]  # global ranks training this group
    pg: dist.ProcessGroup | None  # None = the whole world
    group_rank: int
    group_world: int

    @property
    def is_leader(self) -> bool:
        return self.group_rank == 0


@dataclass
class GroupResult:
    """What one group hands to the merge: its members' val/test logits and its training time."""

    index: int
    members: list[int]
    val: EvalResult  # [N, M_k] logits + labels on the group leader
    test: EvalResult
    examples: int  # examples this group trained on in this process (global batch x steps)
    train_seconds: float  # wall time of its training steps (not eval/checkpoint)
    best_step: int | None

    def split(self, split: str) -> EvalResult:
        return self.val if split == "val" else self.test


def plan_groups(cfg: ExperimentConfig, env: DistEnv, sequential: bool = False) -> tuple[list[GroupRun], bool]:
    """-> (the groups this rank trains, in order; whether the schedule is parallel).

    Every rank creates every subgroup (``dist.new_group`` is collective), even
    those it is not part of.  ``sequential`` forces every group onto all ranks.
    """
    names = cfg.member_names
    schedule = None if sequential else group_schedule(env.world_size, cfg.groups)
    runs: list[GroupRun] = []
    if schedule is not None:
        pgs = new_subgroups(schedule)
        for k, ranks in enumerate(schedule):
            if env.rank in ranks:
                g = cfg.groups[k]
                runs.append(GroupRun(k, g, [names[i] for i in g], ranks, pgs[k], ranks.index(env.rank), len(ranks)))
        return runs, True
    world = list(range(env.world_size))
    for k, g in enumerate(cfg.groups):
        runs.append(GroupRun(k, g, [names[i] for i in g], world, None, env.rank, env.world_size))
    return runs, False


def merge_across_groups(
    results: list[GroupResult], num_members: int, parallel: bool, split: str, env: DistEnv
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """All members' logits [N, M] and labels [N] on global rank 0 (None elsewhere).

    Sequential schedule: rank 0 led every group, so it holds every column already.
    Parallel schedule: each group's leader holds its columns; one
    ``assemble_member_logits`` over the world (leaders send [N, M_k], the others
    empty blocks) places them and checks every cell is written once.
    """
    if parallel:
        (r,) = results  # exactly one group per rank in the parallel schedule
        res = r.split(split)
        n = torch.tensor([0 if res.member_logits is None else res.member_logits.shape[0]], device=env.device)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        if res.member_logits is not None and res.labels is not None:
            local, labels = res.member_logits.to(env.device), res.labels.to(env.device)
        else:
            local = torch.zeros((0, len(r.members)), device=env.device)
            labels = torch.zeros((0,), device=env.device)
        return assemble_member_logits(local, labels, 0, int(n.item()), r.members, num_members, group=None, dst=0)
    if env.rank != 0:
        return None
    first = results[0].split(split)
    assert first.labels is not None  # rank 0 leads every group in the sequential schedule
    blocks = []
    for r in results:
        res = r.split(split)
        if res.labels is None or res.member_logits is None or not torch.equal(res.labels, first.labels):
            raise RuntimeError(f"{split}: group {r.index} scored different rows than group 0 (loader mismatch)")
        blocks.append(res.member_logits)
    return stack_member_logits(blocks, [r.members for r in results], num_members), first.labels.float().cpu()


def member_examples_per_s(results: list[GroupResult], parallel: bool, num_groups: int, env: DistEnv) -> float:
    """Throughput of the whole ensemble (collective over the world): member-examples (rows x
    members trained on them) per second of training wall time.  Parallel groups overlap in
    time (max over ranks); sequential ones add up.  Divided by M it is rows per second through
    all M members (``RunLogger.final`` logs both).
    """
    member_ex = torch.tensor([sum(r.examples * len(r.members) for r in results)], dtype=torch.float64,
                             device=env.device)
    secs = torch.tensor([sum(r.train_seconds for r in results)], dtype=torch.float64, device=env.device)
    if parallel:
        dist.all_reduce(member_ex)
        member_ex /= env.world_size // num_groups  # every rank of a group counted its examples
        dist.all_reduce(secs, op=dist.ReduceOp.MAX)
    eps = member_ex / secs.clamp_min(1e-9)
    return float(eps[0])
