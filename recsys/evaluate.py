"""Evaluation: per-member logits gathered over process groups, merged, scored, reported.

How the [N, M] member-logit matrix reaches global rank 0
--------------------------------------------------------
K groups train in parallel on disjoint rank sets (or one after another on all
ranks).  Every group scores the **same** eval rows, split over its own ranks by
``rank_row_range(N, group_rank, group_size)``, so each rank ends up holding one
block: rows ``[row_start, row_start + n)`` x the columns (config-order member
indices) of the members it evaluated, plus those rows' labels.

``assemble_member_logits`` collects those blocks over the WORLD with two
``all_gather`` calls of plain tensors (works on NCCL and gloo, no pickling):

1. a small int64 header per rank: ``[row_start, n, M_k, col_0 .. col_{M_k-1}, -1 ...]``
   padded to ``3 + M``;
2. the values, ``[logits | label]`` padded to ``[max_n, M + 1]``.

The destination rank scatters every block into ``out[N, M]`` and checks that
every (row, member) cell was written exactly once and that every group saw the
same label for a row (a loader mismatch between groups would otherwise go
unnoticed).  In the sequential schedule every rank evaluated every group on the
same rows, so it concatenates its groups' columns and makes the same single call.

``all_gather`` (not ``gather``) is used because it is the one collective with the
same semantics on every backend; the extra copies on non-destination ranks cost
``W * max_n * (M + 1) * 4`` bytes, about 32 MB per rank for 1M rows, 8 members
and W = 1.  The data moved is small next to the forward passes: the issue's
benchmark target is under 3% of evaluation time, which ``EvalResult.timings``
measures (forward, load-imbalance wait, gather, merge separately).

Example::

    res = evaluate_split(group_module, "data/criteo", "val", 4096,
                         columns=[0, 1], num_members=4, group=pg, group_rank=r, group_size=2)
    if dist.get_rank() == 0:
        report = score(res.member_logits, res.labels, names, groups)
        write_report(report, Path("runs/demo"))
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.datasets.utils import Batch
from tqdm import tqdm

from recsys.ensemble import EnsembleGroup, GroupTrain, merge_logits

# --------------------------------------------------------------------------- metrics


def auc_score(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC (Mann-Whitney U) with ties counted as 1/2, in float64.

    Why not a library metric: ``torchrec.metrics.auc`` sorts and integrates
    without grouping tied scores, so its answer depends on the order of ties;
    ``torchmetrics.functional.binary_auroc`` groups ties correctly but applies a
    sigmoid to inputs outside [0, 1], and float32 sigmoid saturates at |logit| >~ 17,
    turning distinct logits into false ties.  One sort + ``unique_consecutive``
    is exact and takes ~0.1 s on 1M rows.  Returns NaN when one class is absent.

    Example::

        auc_score(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0., 0., 1., 1.]))  # 0.875
    """
    s = scores.detach().reshape(-1).double().cpu()
    y = labels.detach().reshape(-1).double().cpu()
    if s.numel() != y.numel():
        raise ValueError(f"auc_score: {s.numel()} scores but {y.numel()} labels")
    n_pos = float(y.sum())
    n_neg = float(y.numel()) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s)
    s_sorted, y_sorted = s[order], y[order]
    _, counts = torch.unique_consecutive(s_sorted, return_counts=True)
    ends = torch.cumsum(counts, 0)  # 1-based rank of each tie block's last element
    avg_rank = (ends - counts).double() + (counts.double() + 1.0) / 2.0  # average 1-based rank in block
    pos_cum = torch.cumsum(y_sorted, 0)[ends - 1]
    pos_in_block = torch.diff(pos_cum, prepend=pos_cum.new_zeros(1))
    rank_sum = float((avg_rank * pos_in_block).sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def logloss_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of sigmoid(logits), computed stably from logits in float64."""
    return float(
        F.binary_cross_entropy_with_logits(
            logits.detach().reshape(-1).double().cpu(), labels.detach().reshape(-1).double().cpu()
        )
    )


@dataclass
class Metrics:
    auc: float
    logloss: float

    @classmethod
    def of(cls, logits: torch.Tensor, labels: torch.Tensor) -> "Metrics":
        return cls(auc_score(logits, labels), logloss_score(logits, labels))


@dataclass
class EnsembleReport:
    """AUC/logloss for every member, every group (mean logit of its members), the full
    ensemble, and the curve over the first m = 1..M members in config order.

    ``curve[m - 1]`` is the ensemble of members ``0..m-1``, so ``curve[-1] == ensemble``.
    """

    names: list[str]
    groups: list[list[int]]
    num_rows: int
    members: list[Metrics]
    group_metrics: list[Metrics]
    ensemble: Metrics
    curve: list[Metrics]
    extra: dict[str, Any] = field(default_factory=dict)  # split, timings, config name, ...

    def to_json(self) -> dict[str, Any]:
        def m(x: Metrics) -> dict[str, float | None]:
            return {k: (None if math.isnan(v) else v) for k, v in asdict(x).items()}

        return {
            "num_rows": self.num_rows,
            "members": [{"index": i, "name": n, **m(x)} for i, (n, x) in enumerate(zip(self.names, self.members))],
            "groups": [{"index": k, "members": g, **m(x)} for k, (g, x) in enumerate(zip(self.groups, self.group_metrics))],
            "ensemble": m(self.ensemble),
            "curve": [{"m": i + 1, **m(x)} for i, x in enumerate(self.curve)],
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EnsembleReport":
        def m(x: dict[str, Any]) -> Metrics:
            return Metrics(*(float("nan") if x[k] is None else float(x[k]) for k in ("auc", "logloss")))

        return cls(
            names=[x["name"] for x in d["members"]],
            groups=[list(x["members"]) for x in d["groups"]],
            num_rows=int(d["num_rows"]),
            members=[m(x) for x in d["members"]],
            group_metrics=[m(x) for x in d["groups"]],
            ensemble=m(d["ensemble"]),
            curve=[m(x) for x in d["curve"]],
            extra=dict(d.get("extra", {})),
        )


def score(
    member_logits: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    groups: Sequence[Sequence[int]],
    extra: dict[str, Any] | None = None,
) -> EnsembleReport:
    """Scores the [N, M] member-logit matrix (config order) against labels [N].

    Example::

        report = score(torch.randn(1000, 3), (torch.rand(1000) < 0.3).float(),
                       ["m0_fnn", "m1_fnn", "m2_dcnv2"], [[0, 1], [2]])
        report.curve[-1] == report.ensemble   # True
    """
    if member_logits.dim() != 2:
        raise ValueError(f"score: member_logits must be [N, M], got shape {tuple(member_logits.shape)}")
    n, num_members = member_logits.shape
    if len(names) != num_members:
        raise ValueError(f"score: {len(names)} names for {num_members} member columns")
    y = labels.reshape(-1)
    if y.numel() != n:
        raise ValueError(f"score: {y.numel()} labels for {n} rows")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("score: labels must be 0 or 1")
    x = member_logits.detach().double().cpu()
    y = y.detach().double().cpu()
    members = [Metrics.of(x[:, j], y) for j in range(num_members)]
    group_metrics = [Metrics.of(merge_logits(x[:, list(g)]), y) for g in groups]
    curve = [Metrics.of(merge_logits(x[:, :m]), y) for m in range(1, num_members + 1)]
    return EnsembleReport(
        names=list(names),
        groups=[list(g) for g in groups],
        num_rows=n,
        members=members,
        group_metrics=group_metrics,
        ensemble=curve[-1],
        curve=curve,
        extra=dict(extra or {}),
    )


# --------------------------------------------------------------------------- report files


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.5f}"


def report_markdown(report: EnsembleReport) -> str:
    lines = ["| what | members | AUC | logloss |", "|---|---|---:|---:|"]
    for i, (n, x) in enumerate(zip(report.names, report.members)):
        lines.append(f"| member {i} | {n} | {_fmt(x.auc)} | {_fmt(x.logloss)} |")
    for k, (g, x) in enumerate(zip(report.groups, report.group_metrics)):
        names = ", ".join(report.names[i] for i in g)
        lines.append(f"| group {k} | {names} | {_fmt(x.auc)} | {_fmt(x.logloss)} |")
    lines.append(f"| **ensemble** | all {len(report.names)} | **{_fmt(report.ensemble.auc)}** | **{_fmt(report.ensemble.logloss)}** |")
    lines += ["", "AUC vs number of members m (first m in config order):", "", "| m | AUC | logloss |", "|---:|---:|---:|"]
    for i, x in enumerate(report.curve):
        lines.append(f"| {i + 1} | {_fmt(x.auc)} | {_fmt(x.logloss)} |")
    head = f"# Ensemble evaluation ({report.num_rows} rows"
    if "split" in report.extra:
        head += f", split {report.extra['split']}"
    return head + ")\n\n" + "\n".join(lines) + "\n"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def plot_curve(report: EnsembleReport, path: Path) -> None:
    """AUC (left axis) and logloss (right axis) against m; members' own AUCs as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = list(range(1, len(report.curve) + 1))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(ms, [x.auc for x in report.curve], "o-", color="tab:blue", label="ensemble of first m")
    ax.scatter(ms, [x.auc for x in report.members], marker="x", color="tab:gray", label="member m alone")
    ax.set_xlabel("members m (config order)")
    ax.set_ylabel("AUC", color="tab:blue")
    ax.set_xticks(ms)
    ax2 = ax.twinx()
    ax2.plot(ms, [x.logloss for x in report.curve], "s--", color="tab:red", label="logloss")
    ax2.set_ylabel("logloss", color="tab:red")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("AUC vs ensemble size")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_report(report: EnsembleReport, run_dir: Path, prefix: str = "") -> dict[str, Path]:
    """Writes ``{prefix}results.json``, ``{prefix}results.md`` and ``{prefix}auc_vs_m.png`` atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": run_dir / f"{prefix}results.json",
        "md": run_dir / f"{prefix}results.md",
        "png": run_dir / f"{prefix}auc_vs_m.png",
    }
    _atomic_write(paths["json"], (json.dumps(report.to_json(), indent=2) + "\n").encode())
    _atomic_write(paths["md"], report_markdown(report).encode())
    plot_curve(report, paths["png"])
    return paths


# --------------------------------------------------------------------------- gathering


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_gather_padded(
    local: torch.Tensor, group: dist.ProcessGroup | None
) -> list[torch.Tensor]:
    """all_gather of tensors whose first dim differs per rank (other dims equal): pad, gather, trim."""
    _, world = _world(group)
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
    me, world = _world(group)
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


# --------------------------------------------------------------------------- driving a model


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
    _, group_size = _world(group)
    t0 = time.perf_counter()
    # Sharded forwards are collectives: every rank of `group` must run as many as the
    # busiest one, and agree on that BEFORE the first forward (a count exchanged after
    # the loop would deadlock against a forward still running elsewhere).  With len()
    # known that is one all_reduce; otherwise one tiny all_reduce per step.
    total: int | None = None
    if group_size > 1 and hasattr(batches, "__len__"):
        most = torch.tensor([len(batches)], dtype=torch.int64, device=device)  # type: ignore[arg-type]
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
    data_dir: Any,  # a directory (str | Path) or a TorchRecCriteo: whatever make_loader takes
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
    """Scores ``split`` of ``data_dir`` with one group's model on this rank's row range.

    ``pin_memory`` (default: on for a CUDA device) lets the batches' ``non_blocking``
    host-to-device copies actually overlap; from pageable memory they run synchronously.

    The group's ranks split the rows with ``rank_row_range(N, group_rank, group_size)``
    (``make_loader``'s plan), and every rank of ``world`` joins the assembly.

    Example::

        res = evaluate_split(dmp, "data/criteo", "test", 4096, columns=[0, 1], num_members=4,
                             group=pg, group_rank=pg_rank, group_size=2, device=env.device)
    """
    from recsys.data.loader import make_loader

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


# --------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recsys.evaluate",
        description="Score saved group checkpoints on an eval split and write results.json/.md and auc_vs_m.png.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python -m recsys.evaluate --config configs/demo.toml --checkpoint checkpoints/demo
  python -m recsys.evaluate --config configs/demo.toml --checkpoint checkpoints/demo --split val --out runs/demo-eval
  python -m recsys.evaluate --config configs/demo.toml --checkpoint checkpoints/demo --device cuda
""",
    )
    p.add_argument("--config", required=True, help="experiment TOML (members, groups, data_dir)")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir of the run, holding group0/, group1/, ...")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="eval split (default: test)")
    p.add_argument("--batch-size", type=int, default=0, help="eval batch size (default: from the config)")
    p.add_argument("--out", default=None, help="report directory (default: the config's run dir)")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint of each group to load")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. data_dir=data/x")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where to run the forwards (default: the config's device; auto = cuda if available)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Single-process evaluation of saved checkpoints (DCP reshards them into unsharded groups)."""
    args = _build_parser().parse_args(argv)
    from recsys.errors import UserError, one_line

    try:
        return _run_cli(args)
    except UserError as e:  # config, data, spec, a missing or damaged checkpoint: one line
        print("error: " + one_line(e), file=sys.stderr)
        return 2


def _run_cli(args: argparse.Namespace) -> int:
    from recsys.checkpoint import load_trained_group
    from recsys.config import load_config

    # load_config checks the splits and that a requested cuda device exists (one-line errors).
    cfg = load_config(args.config, list(args.set) + ([f"device={args.device}"] if args.device else []))
    cfg.schema()  # a bad data dir fails here, in one line, before any checkpoint is read
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    names = cfg.member_names
    batch_size = args.batch_size or cfg.train.eval_batch_size or cfg.train.batch_size
    ckpt_root = Path(args.checkpoint)
    blocks: list[torch.Tensor] = []
    labels: torch.Tensor | None = None
    t_forward = 0.0
    for k, idx in enumerate(cfg.groups):
        group, step = load_trained_group(cfg, k, ckpt_root, args.which)
        model = GroupTrain(group).to(device)
        res = evaluate_split(model, cfg.data_source(), args.split, batch_size, columns=list(range(len(idx))),
                             num_members=len(idx), device=device, progress=True)
        assert res.member_logits is not None and res.labels is not None
        blocks.append(res.member_logits.float().cpu())
        labels = res.labels.float().cpu()
        t_forward += res.timings["forward"]
        print(f"group {k} ({', '.join(names[i] for i in idx)}): step {step}, {res.member_logits.shape[0]} rows")
    from recsys.ensemble import stack_member_logits

    member_logits = stack_member_logits(blocks, cfg.groups, len(names))
    assert labels is not None
    report = score(member_logits, labels, names, cfg.groups, extra={"split": args.split, "config": str(args.config)})
    out_dir = Path(args.out) if args.out else cfg.run_dir
    paths = write_report(report, out_dir, prefix=f"{args.split}_")
    print(report_markdown(report))
    print(f"report: {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
