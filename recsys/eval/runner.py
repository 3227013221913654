"""Driving a group model over this rank's eval rows, then assembling [N, M] on one rank.

Why the loop is more than ``for batch in loader``: a DMP-sharded group's forward is a
collective (its embedding lookups all-to-all over the group), so every rank of a group must
run as many forwards as the busiest one, and agree on that number before the first.  A rank
that runs out of rows repeats a batch and discards the result.

Example::

    res = evaluate_split(group_module, "data/criteo", "val", 4096,
                         columns=[0, 1], num_members=4, group=pg, group_rank=r, group_size=2)
    if dist.get_rank() == 0:
        report = score(res.member_logits, res.labels, names, groups)
        write_report(report, Path("runs/demo"))
"""
from __future__ import annotations

import time
from collections.abc import Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchrec.datasets.utils import Batch
from tqdm import tqdm

from recsys.data.loader import make_loader
from recsys.ensemble import EnsembleGroup, GroupTrain, merge_logits
from recsys.eval.gather import assemble_member_logits, world_of

if TYPE_CHECKING:
    from recsys.data.source import SplitData


def _unwrap(model: nn.Module) -> nn.Module:
    """DistributedModelParallel keeps the user module in ``.module``."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def _forward_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Logits [B, M_k] from an (optionally DMP-wrapped) ``GroupTrain`` or ``EnsembleGroup``."""
    inner = _unwrap(model)
    if isinstance(inner, GroupTrain):
        _, (_, logits, _) = model(batch)
        return logits
    if isinstance(inner, EnsembleGroup):
        return model(batch.dense_features, batch.sparse_features)
    raise TypeError(f"evaluate: expected a GroupTrain or EnsembleGroup (optionally in DMP), got {type(inner).__name__}")


@dataclass
class EvalResult:
    """What ``evaluate_batches`` returns on every rank.

    ``member_logits`` [N, M] / ``labels`` [N] are set on the destination rank only.
    ``timings`` (seconds, this rank): ``forward`` (batches to device + forward),
    ``wait`` (barrier: load imbalance between ranks, not gathering), ``gather``
    (assembling the [N, M] matrix), ``merge`` (ensemble/group mean logits).
    ``gather_fraction`` = (gather + merge) / (forward + gather + merge).
    """

    member_logits: torch.Tensor | None
    labels: torch.Tensor | None
    num_local_rows: int
    timings: dict[str, float]

    @property
    def gather_fraction(self) -> float:
        t = self.timings
        total = t["forward"] + t["gather"] + t["merge"]
        return (t["gather"] + t["merge"]) / total if total > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    row_start: int,
    num_rows: int,
    columns: Sequence[int],
    num_members: int,
    group: dist.ProcessGroup | None = None,
    world: dist.ProcessGroup | None = None,
    dst: int | None = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """Runs the group model over this rank's batches, then assembles [N, M] on ``dst``.

    ``group`` is the process group the model is sharded over: its ranks must run
    the same number of forwards (sharded EBCs do collectives), so a rank that
    runs out of batches repeats its first batch and discards the result.  Use
    ``make_loader(..., equal_batches=True)`` to make that unnecessary.
    ``world`` is where the blocks are assembled (None = the default world).

    Example::

        res = evaluate_batches(group_model, my_batches, row_start=start, num_rows=N,
                               columns=[0, 1], num_members=2)
        res.member_logits   # [N, 2] on rank 0
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    logits_parts: list[torch.Tensor] = []
    label_parts: list[torch.Tensor] = []
    _, group_size = world_of(group)
    t0 = time.perf_counter()
    # Sharded forwards are collectives: every rank of `group` must run as many as the
    # busiest one, and agree on that BEFORE the first forward (a count exchanged after
    # the loop would deadlock against a forward still running elsewhere).  With len()
    # known that is one all_reduce; otherwise one tiny all_reduce per step.
    total: int | None = None
    if group_size > 1 and isinstance(batches, Sized):
        most = torch.tensor([len(batches)], dtype=torch.int64, device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=group)
        total = int(most.item())
    it = iter(batches)
    first: Batch | None = None
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    step = 0
    while True:
        batch = next(it, None)
        if group_size > 1 and total is None:
            flag = torch.tensor([0 if batch is None else 1], dtype=torch.int64, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
            if int(flag.item()) == 0:
                break
        elif batch is None and (total is None or step >= total):
            break
        if batch is None:  # out of rows while the group still runs: a discarded forward
            if first is None:
                raise ValueError("evaluate: this rank has no eval rows but its group still runs batches (fewer rows than ranks?)")
            _forward_logits(model, first)
        else:
            batch = batch.to(device, non_blocking=True)
            if first is None:
                first = batch
            logits_parts.append(_forward_logits(model, batch))
            label_parts.append(batch.labels)
        step += 1
        bar.update(1)
    bar.close()
    _sync(device)
    t_forward = time.perf_counter() - t0
    if was_training:
        model.train()

    mk = len(columns)
    local = torch.cat(logits_parts) if logits_parts else torch.zeros((0, mk), device=device)
    local_labels = torch.cat(label_parts) if label_parts else torch.zeros((0,), device=device)
    if local.shape[1] != mk:
        raise ValueError(f"evaluate: the model returned {local.shape[1]} logit columns, expected {mk} (columns={list(columns)})")

    t0 = time.perf_counter()
    if dist.is_available() and dist.is_initialized():
        dist.barrier(group=world)
    t_wait = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = assemble_member_logits(local, local_labels, row_start, num_rows, columns, num_members, group=world, dst=dst)
    t_gather = time.perf_counter() - t0
    t_merge = 0.0
    if out is not None:
        t0 = time.perf_counter()
        merge_logits(out[0])  # the merge itself; score() repeats it per group and m
        t_merge = time.perf_counter() - t0
    return EvalResult(
        member_logits=None if out is None else out[0],
        labels=None if out is None else out[1],
        num_local_rows=int(local.shape[0]),
        timings={"forward": t_forward, "wait": t_wait, "gather": t_gather, "merge": t_merge},
    )


def evaluate_split(
    model: nn.Module,
    data_dir: SplitData,
    split: str,
    batch_size: int,
    *,
    columns: Sequence[int],
    num_members: int,
    group: dist.ProcessGroup | None = None,
    group_rank: int = 0,
    group_size: int = 1,
    world: dist.ProcessGroup | None = None,
    dst: int | None = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    pin_memory: bool | None = None,
) -> EvalResult:
    """Scores ``split`` of ``data_dir`` (whatever ``make_loader`` opens: a directory or a
    TorchRec Criteo source) with one group's model on this rank's row range.

    ``pin_memory`` (default: on for a CUDA device) lets the batches' ``non_blocking``
    host-to-device copies actually overlap; from pageable memory they run synchronously.

    The group's ranks split the rows with ``rank_row_range(N, group_rank, group_size)``
    (``make_loader``'s plan), and every rank of ``world`` joins the assembly.

    Example::

        res = evaluate_split(dmp, "data/criteo", "test", 4096, columns=[0, 1], num_members=4,
                             group=pg, group_rank=pg_rank, group_size=2, device=env.device)
    """
    # equal_batches: every rank of the group runs the same number of forwards (the
    # sharded EBCs do collectives per batch); rows stay rank_row_range's, each once.
    if pin_memory is None:
        pin_memory = torch.device(device).type == "cuda"
    loader = make_loader(data_dir, split, batch_size, rank=group_rank, world_size=group_size,
                         shuffle=False, drop_last=False, equal_batches=True, pin_memory=pin_memory)
    num_rows = int(loader.split.num_rows)
    start = int(loader.plan.row_start)
    return evaluate_batches(
        model, loader, row_start=start, num_rows=num_rows, columns=columns, num_members=num_members,
        group=group, world=world, dst=dst, device=device, progress=progress, desc=f"eval {split}",
    )
