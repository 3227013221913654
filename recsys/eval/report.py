"""The ensemble report: every member, every group, the ensemble and the AUC-vs-m curve
(AUC, logloss, NE, calibration each), plus DeLong's test of the ensemble against its best
member, scored from the [N, M] member-logit matrix and written as JSON, markdown and a PNG.

Why the plot draws on a bare ``matplotlib.figure.Figure``: pyplot keeps a process-wide
figure registry and selects a backend for the whole process; a figure that is only saved
needs neither, so evaluating never changes matplotlib's state for the caller.

Example::

    report = score(member_logits, labels, ["m0_fnn", "m1_dcnv2"], [[0], [1]], extra={"split": "test"})
    paths = write_report(report, Path("runs/demo"), prefix="test_")   # json, md, png
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from recsys.ensemble import merge_logits
from recsys.eval.metrics import Metrics
from recsys.eval.significance import delong_test

if TYPE_CHECKING:
    from matplotlib.figure import Figure


#: The paper's bar for a meaningful CTR gain: 0.1% AUC, i.e. 0.001 absolute.
AUC_GAIN_THRESHOLD = 0.001


@dataclass
class Comparison:
    """DeLong's test of the ensemble against its best single member (highest AUC) on the
    same rows: ``diff`` = ensemble AUC - member AUC, its z and two-sided ``p``, and whether the
    gain clears the paper's 0.1% bar (``diff >= 0.001``; significance is ``p``'s to say)."""

    member: int
    name: str
    diff: float
    z: float
    p: float

    @property
    def clears_threshold(self) -> bool:
        return self.diff >= AUC_GAIN_THRESHOLD

    def to_json(self) -> dict[str, Any]:
        """``{"member", "name", "diff", "z", "p", "clears_0.001"}``; an infinite z becomes null."""
        z = self.z if math.isfinite(self.z) else None
        return {"member": self.member, "name": self.name, "diff": self.diff, "z": z, "p": self.p,
                "clears_0.001": self.clears_threshold}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Comparison:
        z = math.copysign(math.inf, float(d["diff"])) if d["z"] is None else float(d["z"])
        return cls(int(d["member"]), str(d["name"]), float(d["diff"]), z, float(d["p"]))


def compare_best_member(x: torch.Tensor, y: torch.Tensor, ensemble_logits: torch.Tensor,
                        members: Sequence[Metrics], names: Sequence[str]) -> Comparison | None:
    """DeLong of ``ensemble_logits`` [N] against the member column of x [N, M] with the highest
    AUC, on labels y [N]; None when no member has an AUC or a class has < 2 rows.

    Example::

        compare_best_member(x, y, merge_logits(x), rep.members, rep.names).p
    """
    aucs = [m.auc for m in members]
    if all(math.isnan(a) for a in aucs) or min(int(y.sum()), int((1 - y).sum())) < 2:
        return None
    best = max((j for j in range(len(aucs)) if not math.isnan(aucs[j])), key=lambda j: aucs[j])
    r = delong_test(ensemble_logits, x[:, best], y)
    return Comparison(best, names[best], r.diff, r.z, r.p)


@dataclass
class EnsembleReport:
    """AUC/logloss/NE/calibration for every member, every group (mean logit of its members),
    the full ensemble, and the curve over the first m = 1..M members in config order; DeLong's
    test of the ensemble against the best member (None with one class).

    ``curve[m - 1]`` is the ensemble of members ``0..m-1``, so ``curve[-1] == ensemble``.
    ``extra`` holds JSON-able context (split, timings, config name, ...).
    """

    names: list[str]
    groups: list[list[int]]
    num_rows: int
    members: list[Metrics]
    group_metrics: list[Metrics]
    ensemble: Metrics
    curve: list[Metrics]
    extra: dict[str, Any] = field(default_factory=dict)
    ensemble_vs_best_member: Comparison | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``results.json`` layout; NaN (a split with one class) becomes null."""

        def m(x: Metrics) -> dict[str, float | None]:
            return {k: (None if math.isnan(v) else v) for k, v in asdict(x).items()}

        return {
            "num_rows": self.num_rows,
            "members": [{"index": i, "name": n, **m(x)} for i, (n, x) in enumerate(zip(self.names, self.members))],
            "groups": [{"index": k, "members": g, **m(x)} for k, (g, x) in enumerate(zip(self.groups, self.group_metrics))],
            "ensemble": m(self.ensemble),
            "curve": [{"m": i + 1, **m(x)} for i, x in enumerate(self.curve)],
            "extra": self.extra,
            "ensemble_vs_best_member": None if (c := self.ensemble_vs_best_member) is None else c.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EnsembleReport:
        """Inverse of ``to_json`` (null back to NaN); a results.json from before NE, calibration
        and the comparison reads with NaN and None for them."""

        def m(x: dict[str, Any]) -> Metrics:
            keys = ("auc", "logloss", "ne", "calibration")
            return Metrics(*(float("nan") if x.get(k) is None else float(x[k]) for k in keys))

        c = d.get("ensemble_vs_best_member")

        return cls(
            names=[x["name"] for x in d["members"]],
            groups=[list(x["members"]) for x in d["groups"]],
            num_rows=int(d["num_rows"]),
            members=[m(x) for x in d["members"]],
            group_metrics=[m(x) for x in d["groups"]],
            ensemble=m(d["ensemble"]),
            curve=[m(x) for x in d["curve"]],
            extra=dict(d.get("extra", {})),
            ensemble_vs_best_member=None if c is None else Comparison.from_json(c),
        )


def score(
    member_logits: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    groups: Sequence[Sequence[int]],
    extra: dict[str, Any] | None = None,
    compare: bool = True,
) -> EnsembleReport:
    """Scores the [N, M] member-logit matrix (config order) against labels [N].

    ``compare=False`` skips DeLong's test of the ensemble against the best member (its
    ``ensemble_vs_best_member`` is then None): the per-epoch validation only logs AUC, logloss,
    NE and calibration, and DeLong's O(N log N) midrank pass per member is wasted there.

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
        ensemble_vs_best_member=compare_best_member(x, y, merge_logits(x), members, names) if compare else None,
    )


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.5f}"


def report_markdown(report: EnsembleReport) -> str:
    """``results.md``: one table of members, groups and the ensemble, the ensemble-vs-best-member
    line, one table of the curve."""
    lines = ["| what | members | AUC | logloss | NE | calibration |", "|---|---|---:|---:|---:|---:|"]
    for i, (n, x) in enumerate(zip(report.names, report.members)):
        lines.append(f"| member {i} | {n} | {_fmt(x.auc)} | {_fmt(x.logloss)} | {_fmt(x.ne)} | {_fmt(x.calibration)} |")
    for k, (g, x) in enumerate(zip(report.groups, report.group_metrics)):
        names = ", ".join(report.names[i] for i in g)
        lines.append(f"| group {k} | {names} | {_fmt(x.auc)} | {_fmt(x.logloss)} | {_fmt(x.ne)} | {_fmt(x.calibration)} |")
    e = report.ensemble
    lines.append(f"| **ensemble** | all {len(report.names)} | **{_fmt(e.auc)}** | **{_fmt(e.logloss)}** "
                 f"| **{_fmt(e.ne)}** | **{_fmt(e.calibration)}** |")
    if (c := report.ensemble_vs_best_member) is not None:
        verdict = "clears" if c.clears_threshold else "does not clear"
        lines += ["", f"Ensemble vs best member ({c.name}): AUC {c.diff:+.5f}, DeLong p = {c.p:.3g}; "
                      f"{verdict} the paper's 0.1% (0.001) AUC bar."]
    lines += ["", "AUC vs number of members m (first m in config order):", "",
              "| m | AUC | logloss | NE | calibration |", "|---:|---:|---:|---:|---:|"]
    for i, x in enumerate(report.curve):
        lines.append(f"| {i + 1} | {_fmt(x.auc)} | {_fmt(x.logloss)} | {_fmt(x.ne)} | {_fmt(x.calibration)} |")
    head = f"# Ensemble evaluation ({report.num_rows} rows"
    if "split" in report.extra:
        head += f", split {report.extra['split']}"
    return head + ")\n\n" + "\n".join(lines) + "\n"


def curve_figure(report: EnsembleReport) -> Figure:
    """The AUC-vs-m plot, 600 x 400 px: AUC (left axis) and logloss (right axis) against m,
    the members' own AUCs as crosses.  A bare ``Figure`` (no pyplot, no backend choice).

    Example::

        curve_figure(report).savefig("auc_vs_m.png")
        writer.add_figure("test/auc_vs_m_plot", curve_figure(report), 0)
    """
    from matplotlib.figure import Figure  # lazy: matplotlib takes seconds; training imports score

    ms = list(range(1, len(report.curve) + 1))
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
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
    return fig


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def plot_curve(report: EnsembleReport, path: Path) -> None:
    """Saves ``curve_figure(report)`` as a PNG at ``path``, atomically."""
    tmp = path.with_name(path.name + ".tmp.png")
    curve_figure(report).savefig(tmp)
    tmp.replace(path)


def write_report(report: EnsembleReport, run_dir: Path, prefix: str = "") -> dict[str, Path]:
    """Writes ``{prefix}results.json``, ``{prefix}results.md`` and ``{prefix}auc_vs_m.png`` atomically.

    Example::

        write_report(report, Path("runs/demo"), prefix="val_")["md"]   # runs/demo/val_results.md
    """
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
