"""Collectives of evaluation: per-rank row blocks of member logits assembled into [N, M].

How the [N, M] member-logit matrix reaches global rank 0
--------------------------------------------------------
K groups train in parallel on disjoint rank sets (or one after another on all
ranks).  Every group scores the **same** eval rows, split over its own ranks by
``rank_row_range(N, group_rank, group_size)``, so each rank ends up holding one
block: rows ``[row_start, row_start + n)`` x the columns (config-order member
indices) of the members it evaluated, plus those rows' labels.

``assemble_member_logits`` collects those blocks over the WORLD in two steps of
plain tensors (works on NCCL and gloo, no pickling):

1. an ``all_gather`` of a small int64 header per rank:
   ``[row_start, n, M_k, col_0 .. col_{M_k-1}, -1 ...]`` padded to ``3 + M``;
2. the values, ``[logits | label]`` [n, M + 1], sent point to point to the
   destination rank (the headers give it every block's row count), or
   all-gathered padded to ``[max_n, M + 1]`` when every rank wants the result.

The destination rank scatters every block into ``out[N, M]`` and checks that
every (row, member) cell was written exactly once and that every group saw the
same label for a row (a loader mismatch between groups would otherwise go
unnoticed).  In the sequential schedule every rank evaluated every group on the
same rows, so it concatenates its groups' columns and makes the same single call.

The data moved is small next to the forward passes: the issue's benchmark
target is under 3% of evaluation time, which ``EvalResult.timings`` measures
(forward, load-imbalance wait, gather, merge separately).

Example::

    start, stop = rank_row_range(N, rank, world)
    out = assemble_member_logits(local_logits, local_labels, start, N, columns=[0, 1], num_members=4)
    if out is not None:                      # on global rank 0
        member_logits, labels = out          # [N, 4], [N]
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def world_of(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank, size) of this process in ``group`` (None: the world); (0, 1) without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_gather_padded(local: torch.Tensor, group: dist.ProcessGroup | None) -> list[torch.Tensor]:
    """all_gather of tensors whose first dim differs per rank (other dims equal): pad, gather, trim."""
    _, world = world_of(group)
    if world == 1:
        return [local]
    n = torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    counts = [int(s.item()) for s in sizes]
    max_n = max(counts)
    padded = local.new_zeros((max_n, *local.shape[1:]))
    padded[: local.shape[0]] = local
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous(), group=group)
    return [o[:c] for o, c in zip(out, counts)]


def _gather_to(
    local: torch.Tensor, counts: Sequence[int], group: dist.ProcessGroup | None, dst: int | None
) -> list[torch.Tensor] | None:
    """Every rank's ``local`` (``counts[r]`` rows on rank r, from the headers the callers
    all-gather anyway) on group rank ``dst`` only (None: on all).

    Why not ``all_gather`` when only ``dst`` needs the result: all_gather pads every block to
    the largest and hands all W of them to every rank, W x N rows on each.  For a Criteo-1TB
    test day (~90M rows x M members) that is gigabytes on every rank of the world.  Here each
    rank sends its exact block to ``dst`` point to point: ``dst`` receives N rows in all, the
    others hold only their own block.
    """
    me, world = world_of(group)
    if dst is None or world == 1:
        return _all_gather_padded(local, group)
    if me != dst:
        if local.shape[0]:
            dist.send(local.contiguous(), group_dst=dst, group=group)
        return None
    out = []
    for r, c in enumerate(counts):
        if r == me:
            out.append(local)
        elif c:
            buf = local.new_empty((c, *local.shape[1:]))
            dist.recv(buf, group_src=r, group=group)
            out.append(buf)
        else:
            out.append(local.new_empty((0, *local.shape[1:])))
    return out


def gather_rows(
    local: torch.Tensor,
    row_start: int,
    num_rows_total: int,
    group: dist.ProcessGroup | None,
    dst: int | None = None,
) -> torch.Tensor | None:
    """Collects each rank's row block ``[row_start, row_start + n)`` into ``[N, ...]``.

    Blocks may have different sizes (uneven splits).  Every rank of ``group``
    must call it.  ``dst`` is a group-local rank that receives the result
    (others get None); None means every rank receives it.  Raises if the blocks
    do not tile ``[0, N)`` exactly once.

    Example::

        start, stop = rank_row_range(N, rank, world)
        full = gather_rows(local_logits, start, N, group=None)   # [N, M_k] on every rank
    """
    header = torch.tensor([row_start, local.shape[0]], dtype=torch.int64, device=local.device)
    headers = [h.tolist() for h in _all_gather_padded(header.unsqueeze(0), group)]
    blocks = _gather_to(local, [int(h[0][1]) for h in headers], group, dst)
    if blocks is None:
        return None
    spans = sorted((int(h[0][0]), int(h[0][1]), r) for r, h in enumerate(headers))
    pos = 0
    for start, n, r in spans:
        if n == 0:
            continue
        if start != pos:
            what = "overlaps" if start < pos else "leaves a gap before"
            raise ValueError(f"gather_rows: rank {r}'s block [{start}, {start + n}) {what} row {pos}")
        pos = start + n
    if pos != num_rows_total:
        raise ValueError(f"gather_rows: the blocks cover rows [0, {pos}) but there are {num_rows_total} rows")
    out = local.new_empty((num_rows_total, *local.shape[1:]))
    for start, n, r in spans:
        out[start : start + n] = blocks[r]
    return out


def assemble_member_logits(
    local_logits: torch.Tensor,
    local_labels: torch.Tensor,
    row_start: int,
    num_rows: int,
    columns: Sequence[int],
    num_members: int,
    group: dist.ProcessGroup | None = None,
    dst: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Assembles the full [N, M] member-logit matrix (and labels [N]) from every rank's block.

    ``local_logits`` [n, M_k] holds rows ``[row_start, row_start + n)`` of the
    members ``columns`` (config-order indices).  Every rank of ``group`` (default:
    the world) must call it; see the module docstring for the protocol.  Returns
    CPU tensors on ``dst`` (None = every rank), None elsewhere.

    Example::

        out = assemble_member_logits(logits, labels, start, N, columns=[2, 3], num_members=4)
        if out is not None:
            member_logits, labels = out   # [N, 4], [N]
    """
    n, mk = local_logits.shape
    if mk != len(columns):
        raise ValueError(f"assemble_member_logits: {mk} logit columns but {len(columns)} member indices")
    if local_labels.numel() != n:
        raise ValueError(f"assemble_member_logits: {local_labels.numel()} labels for {n} rows")
    dev = local_logits.device
    header = torch.full((1, 3 + num_members), -1, dtype=torch.int64, device=dev)
    header[0, :3] = torch.tensor([row_start, n, mk])
    if mk:
        header[0, 3 : 3 + mk] = torch.tensor(list(columns), dtype=torch.int64)
    values = torch.zeros((n, num_members + 1), dtype=torch.float32, device=dev)
    values[:, :mk] = local_logits.float()
    values[:, num_members] = local_labels.reshape(-1).float()
    headers = _all_gather_padded(header, group)
    blocks = _gather_to(values, [int(h[0, 1]) for h in headers], group, dst)
    if blocks is None:
        return None

    out = torch.zeros((num_rows, num_members), dtype=torch.float32)
    written = torch.zeros((num_rows, num_members), dtype=torch.int8)  # 1 byte a cell: ~90M x M at scale
    labels = torch.full((num_rows,), float("nan"), dtype=torch.float32)
    for r, (h, b) in enumerate(zip(headers, blocks)):
        start, cnt, k = (int(v) for v in h[0, :3].tolist())
        cols = [int(c) for c in h[0, 3 : 3 + k].tolist()]
        if cnt == 0:
            continue
        if start < 0 or start + cnt > num_rows or any(not 0 <= c < num_members for c in cols):
            raise ValueError(f"assemble_member_logits: rank {r} sent rows [{start}, {start + cnt}) of members {cols}, outside [0, {num_rows}) x [0, {num_members})")
        b = b.cpu()
        rows = slice(start, start + cnt)
        idx = torch.tensor(cols, dtype=torch.int64)
        out[rows, idx] = b[:, :k]
        written[rows, idx] += 1
        seen = labels[rows]
        clash = ~torch.isnan(seen) & (seen != b[:, num_members])
        if bool(clash.any()):
            row = start + int(clash.nonzero()[0])
            raise ValueError(f"assemble_member_logits: rank {r} has a different label for row {row} than another group (loaders disagree)")
        labels[rows] = b[:, num_members]
    bad = written != 1
    if bool(bad.any()):
        row, col = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"assemble_member_logits: member {col} row {row} was scored {int(written[row, col])} times (expected once); {int(bad.sum())} cells bad")
    return out, labels

