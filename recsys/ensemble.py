"""Ensemble members, groups, merging and the group loss.

M members are split into K disjoint groups.  A group is one ``nn.Module`` holding
its members (each with its own EBC, tables ``<member>__<field>``), so DMP shards
all of a group's tables over that group's ranks.  A group trains on the BCE of
its members' **mean logit**: K = M groups is independent training of every
member, K = 1 is joint training of all of them.

Merging is the arithmetic mean in logit space, ``sigmoid(mean(logits))``, as the
reference code does.

Example::

    specs = ["dcnv2:seed=1", "dcnv2:seed=2", "wukong"]
    names = member_names(specs)                   # ["m0_dcnv2", "m1_dcnv2", "m2_wukong"]
    groups = validate_groups(len(specs), [[0, 1], [2]])
    group = build_group(specs, names, groups[0], schema)
    logits = group(dense, kjt)                    # [B, 2]
    loss = group.loss(logits, labels)             # BCE(mean(logits, 1), labels)
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.schema import Schema
from recsys.models.member import Member
from recsys.models.registry import build_member


def member_names(specs: Sequence[str]) -> list[str]:
    """Stable, unique identifiers ``m{i}_{model}`` in config order.

    The index prefix keeps homogeneous ensembles (4 x dcnv2) unique, and the
    names become table-name prefixes and state-dict keys, so they must be
    Python identifiers.

    Example::

        member_names(["dcnv2:seed=1", "dcnv2:seed=2", "wukong"])
        # ["m0_dcnv2", "m1_dcnv2", "m2_wukong"]
    """
    names = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"member {i}: empty spec {spec!r}")
        model = spec.strip().partition(":")[0].strip().lower()
        model = re.sub(r"\W", "_", model) or "member"
        names.append(f"m{i}_{model}")
    return names


def validate_groups(num_members: int, groups: Sequence[Sequence[int]] | None) -> list[list[int]]:
    """Checks that ``groups`` partitions ``range(num_members)``; None -> one group per member.

    Raises a one-line ``ValueError`` naming the bad index or group.

    Example::

        validate_groups(3, None)               # [[0], [1], [2]]
        validate_groups(3, [[0, 2], [1]])      # [[0, 2], [1]]
        validate_groups(3, [[0, 1], [1, 2]])   # ValueError: ... member 1 is in groups 0 and 1
    """
    if num_members <= 0:
        raise ValueError(f"groups: need at least one member, got {num_members}")
    if groups is None:
        return [[i] for i in range(num_members)]
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise ValueError(f"groups: expected a list of lists of member indices, got {groups!r}")
    owner: dict[int, int] = {}
    out: list[list[int]] = []
    for k, g in enumerate(groups):
        if isinstance(g, (str, bytes)) or not isinstance(g, Sequence):
            raise ValueError(f"groups[{k}]: expected a list of member indices, got {g!r}")
        if len(g) == 0:
            raise ValueError(f"groups[{k}] is empty")
        members: list[int] = []
        for i in g:
            if isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(f"groups[{k}]: member index {i!r} is not an integer")
            if not 0 <= i < num_members:
                raise ValueError(
                    f"groups[{k}]: member index {i} is out of range (there are {num_members} members: 0..{num_members - 1})"
                )
            if i in owner:
                where = f"groups {owner[i]} and {k}" if owner[i] != k else f"group {k} twice"
                raise ValueError(f"groups overlap: member {i} is in {where}")
            owner[i] = k
            members.append(i)
        out.append(members)
    missing = [i for i in range(num_members) if i not in owner]
    if missing:
        raise ValueError(f"groups miss member(s) {missing}: every member must be in exactly one group")
    return out


def merge_logits(logits: torch.Tensor) -> torch.Tensor:
    """[N, M] member logits -> [N] ensemble logit: the arithmetic mean in logit space."""
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"merge_logits expects [N, M>=1] logits, got shape {tuple(logits.shape)}")
    return logits.mean(dim=1)


def stack_member_logits(
    blocks: Sequence[torch.Tensor], columns: Sequence[Sequence[int]], num_members: int
) -> torch.Tensor:
    """Places each group's [N, M_k] logits at its members' columns of one [N, M] matrix.

    Why one function: training (merging across groups on rank 0) and offline evaluation
    (one checkpoint per group) both assemble the ensemble's matrix from per-group blocks,
    and both must refuse a block of the wrong height or a member placed twice or never.

    Example::

        m = stack_member_logits([torch.zeros(5, 2), torch.ones(5, 1)], [[0, 2], [1]], 3)
        m.shape                                   # torch.Size([5, 3]); column 1 is ones
    """
    if len(blocks) != len(columns) or not blocks:
        raise ValueError(f"stack_member_logits: {len(blocks)} blocks for {len(columns)} column lists")
    n = blocks[0].shape[0]
    seen = [0] * num_members
    out = torch.empty((n, num_members), dtype=torch.float32)
    for block, cols in zip(blocks, columns):
        if block.dim() != 2 or block.shape != (n, len(cols)):
            raise ValueError(f"stack_member_logits: block of shape {tuple(block.shape)}, expected ({n}, {len(cols)})")
        for c in cols:
            seen[c] += 1
        out[:, list(cols)] = block.detach().float().cpu()
    bad = [i for i, k in enumerate(seen) if k != 1]
    if bad:
        raise ValueError(f"stack_member_logits: member column(s) {bad} placed {[seen[i] for i in bad]} times")
    return out


@torch.fx.wrap
def mean_logit_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of the mean logit: logits [B, M], labels [B] -> scalar.

    ``torch.fx.wrap``-ed so that it stays one opaque call when
    ``TrainPipelineSparseDist`` FX-traces the model: ``merge_logits`` checks its
    input's shape with a Python ``if``, which symbolic tracing cannot follow.
    """
    return F.binary_cross_entropy_with_logits(merge_logits(logits), labels.to(logits.dtype))


class EnsembleGroup(nn.Module):
    """The members of ONE group, trained jointly on the BCE of their mean logit.

    Members are kept in an ``nn.ModuleDict`` keyed by member name, so state-dict
    keys (``members.m0_dcnv2.sparse_arch...``) do not depend on how members are
    grouped or scheduled.

    Example::

        group = EnsembleGroup([build_member("fnn", schema, "m0_fnn"),
                               build_member("dcnv2", schema, "m1_dcnv2")])
        logits = group(dense, kjt)          # [B, 2]
        loss = group.loss(logits, labels)   # scalar
    """

    def __init__(self, members: Sequence[Member]) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("EnsembleGroup needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"EnsembleGroup: duplicate member names {names}")
        self.members = nn.ModuleDict({m.name: m for m in members})

    @property
    def names(self) -> list[str]:
        return list(self.members.keys())

    def forward(self, dense: torch.Tensor, features: KeyedJaggedTensor) -> torch.Tensor:
        # dense [B, Dd], features: KJT with B rows -> logits [B, M_k] in member order
        return torch.stack([m(dense, features) for m in self.members.values()], dim=1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE-with-logits of the group mean logit, plus every member's auxiliary loss.

        The auxiliary terms (D-MoE's de-correlation) come from the last forward,
        so call this right after ``forward``.
        """
        loss = mean_logit_bce(logits, labels)
        for m in self.members.values():
            aux = m.auxiliary_loss()  # type: ignore[operator]
            if aux is not None:
                loss = loss + aux
        return loss


class GroupTrain(nn.Module):
    """Batch-in, loss-out wrapper for ``TrainPipelineSparseDist``, like torchrec's ``DLRMTrain``.

    FX-traceable: the pipeline traces it to find the sharded EBCs' inputs, and
    the loss goes through the ``fx.wrap``-ed ``mean_logit_bce``.

    Example::

        model = DistributedModelParallel(GroupTrain(group), ...)
        loss, (loss_d, logits, labels) = model(batch)   # logits [B, M_k]
    """

    def __init__(self, group: EnsembleGroup) -> None:
        super().__init__()
        self.group = group

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.group(batch.dense_features, batch.sparse_features)  # [B, M_k]
        loss = self.group.loss(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)


def build_group(
    specs: Sequence[str], names: Sequence[str], indices: Sequence[int], schema: Schema, materialize: bool = True
) -> EnsembleGroup:
    """Builds the members ``indices`` (config order) of one group, each from its own seeded spec.

    A member's weights depend only on its spec (``build_member`` forks the RNG; tables
    come from per-block seeded ``TableInit``s), so the same member is identical whichever
    group, schedule or sharding plan it lands in.  ``materialize=False`` keeps the
    embedding tables on ``meta`` (training: DMP then allocates only local shards).
    """
    return EnsembleGroup([build_member(specs[i], schema, names[i], materialize) for i in indices])
