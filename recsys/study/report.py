"""The study's results: one row per arm (scores and cost), the markdown table, the verdict per
budget, and the AUC-vs-FLOPs plot.

The plot is drawn on a ``matplotlib.figure.Figure`` of its own (no pyplot, no global backend
switch), so calling it from a notebook or another tool leaves their matplotlib state alone.

Example::

    rows = build_rows(arms, scores, budgets)
    print(table_markdown(rows)); print("\\n".join(verdict_lines(rows)))
    plot_rows(rows, Path("docs/tts_vs_params.png"))
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from recsys.study.cost import Budget
from recsys.study.plan import KIND_LABELS, Arm, short_spec
from recsys.study.score import Score


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


@dataclass
class Row:
    kind: str
    label: str
    m: int
    budget_m: int
    spec: str
    dense_params: int
    embedding_params: int
    flops: int
    latency_ms: float | None
    aucs: list[float]
    loglosses: list[float]
    target_flops: int = 0

    @property
    def auc(self) -> float:
        return statistics.fmean(self.aucs)

    @property
    def auc_sd(self) -> float:
        return _sd(self.aucs)

    @property
    def logloss(self) -> float:
        return statistics.fmean(self.loglosses)

    @property
    def logloss_sd(self) -> float:
        return _sd(self.loglosses)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(auc=self.auc, auc_sd=self.auc_sd, logloss=self.logloss, logloss_sd=self.logloss_sd)
        return d


def build_rows(arms: Sequence[Arm], scores: Sequence[Sequence[Score]], budgets: Sequence[Budget]) -> list[Row]:
    """One row per arm, sorted by budget, the homogeneous ensemble first within a budget."""
    rows = []
    for arm, sc, b in zip(arms, scores, budgets):
        rows.append(Row(
            kind=arm.kind, label=arm.label, m=arm.m, budget_m=arm.budget_m, spec=short_spec(arm.specs),
            dense_params=b.dense_params, embedding_params=b.embedding_params, flops=b.flops,
            latency_ms=b.latency_ms, aucs=[s.auc for s in sc], loglosses=[s.logloss for s in sc],
            target_flops=arm.target_flops,
        ))
    order = list(KIND_LABELS)
    rows.sort(key=lambda r: (r.budget_m, 0 if r.kind == "ensemble" else 1 + (order.index(r.kind) if r.kind in order else 99)))
    return rows


def _pm(mean: float, sd: float, n: int, digits: int = 4) -> str:
    return f"{mean:.{digits}f}" if n < 2 or math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table_markdown(rows: Sequence[Row]) -> str:
    """The results table; ± is the sample standard deviation over the n replicas, and
    "budget" is FLOPs per example relative to the base model (the M = 1 row)."""
    from recsys.budget import human  # lazy: `import recsys.study` stays torch-free (--help)

    lines = [
        "| budget | arm | config | M | dense params | emb params | FLOPs/ex | latency ms | n | test AUC | test logloss |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next((r.flops for r in rows if r.kind == "ensemble" and r.m == 1), 0)
    for r in rows:
        budget = f"{r.flops / base:.2f}x" if base else f"{r.budget_m}x"
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.2f}"
        flops = human(r.flops)
        if r.target_flops:
            flops += f" ({(r.flops - r.target_flops) / r.target_flops:+.1%})"
        lines.append(
            f"| {budget} | {r.label} | `{r.spec}` | {r.m} | {human(r.dense_params)} | "
            f"{human(r.embedding_params)} | {flops} | {lat} | {len(r.aucs)} | "
            f"{_pm(r.auc, r.auc_sd, len(r.aucs))} | {_pm(r.logloss, r.logloss_sd, len(r.loglosses))} |"
        )
    return "\n".join(lines)


def verdict_lines(rows: Sequence[Row]) -> list[str]:
    """Per budget: the homogeneous ensemble's AUC minus each FLOP-matched single model's."""
    out = []
    ens = {r.budget_m: r for r in rows if r.kind == "ensemble"}
    for r in rows:
        if r.kind in ("ensemble", "joint", "hetero") or r.budget_m not in ens:
            continue
        e = ens[r.budget_m]
        d = e.auc - r.auc
        who = "tie" if d == 0 else ("ensemble ahead" if d > 0 else "parameter scaling ahead")
        spread = max((x for x in (e.auc_sd, r.auc_sd) if not math.isnan(x)), default=float("nan"))
        if not math.isnan(spread):
            who += ", beyond the replica spread" if abs(d) > spread else ", within the replica spread"
        out.append(f"budget {r.budget_m}x: ensemble AUC {e.auc:.4f} vs {r.label} {r.auc:.4f}: {d:+.4f} ({who})")
    return out


_STYLES = {"ensemble": ("C0", "o", "-"), "joint": ("C4", "D", "none"), "hetero": ("C3", "*", "none"),
           "mlp_width": ("C1", "s", "--"), "cross_layers": ("C2", "^", "--"), "embedding_dim": ("C5", "v", "--")}


def plot_rows(rows: Sequence[Row], path: Path, title: str = "") -> None:
    """AUC vs FLOPs per example: one curve per arm kind, each anchored at the base model."""
    from matplotlib.figure import Figure  # lazy: matplotlib costs seconds; only the plot needs it

    base = next((r for r in rows if r.kind == "ensemble" and r.m == 1), None)
    fig = Figure(figsize=(10, 5))
    ax = fig.subplots()
    for kind in KIND_LABELS:
        pts = sorted((r for r in rows if r.kind == kind), key=lambda r: r.flops)
        if kind in ("mlp_width", "cross_layers", "embedding_dim") and base is not None and pts:
            pts = [base] + pts
        if not pts:
            continue
        color, marker, ls = _STYLES.get(kind, ("k", "x", "-"))
        ax.errorbar([r.flops for r in pts], [r.auc for r in pts],
                    yerr=[0.0 if math.isnan(r.auc_sd) else r.auc_sd for r in pts],
                    color=color, marker=marker, linestyle=ls, capsize=3, markersize=8 if marker == "*" else 6,
                    label=KIND_LABELS[kind])
        if kind == "ensemble":
            for r in pts:
                ax.annotate(f"M={r.m}", (r.flops, r.auc), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("dense FLOPs per example (log scale)")
    ax.set_ylabel("test AUC (mean ± sd over replicas)")
    ax.set_title(title or "Test-time scaling vs parameter scaling at equal FLOPs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
