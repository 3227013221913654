"""The study's results: one row per arm (scores, paired tests, diversity and cost), the
markdown tables, the verdicts, the AUC-vs-FLOPs plot and the gain-vs-diversity plot.

With the arms' test logits (``recsys.study.score.load_test_logits``), ``build_rows`` adds to
each row DeLong's paired test against the homogeneous ensemble of its budget and, for every
ensemble, against the base model (M = 1), on replica 0 (``recsys.study.paired``); each
ensemble's diversity per replica (``recsys.study.diversity``); and each ensemble's rival at
equal measured latency (the rule is in ``recsys.study.cost``'s docstring).

Tables (``table_markdown``): accuracy and significance, cost, and diversity, three tables so
that each stays readable.  The plots are drawn on a ``matplotlib.figure.Figure`` of their own
(no pyplot, no global backend switch), so calling them from a notebook or another tool leaves
their matplotlib state alone.

Example::

    rows = build_rows(arms, scores, budgets, load_test_logits(arms, Path("runs")))
    print(table_markdown(rows)); print("\\n".join(verdict_lines(rows) + latency_verdict_lines(rows)))
    plot_rows(rows, Path("docs/tts_vs_params.png")); plot_diversity(rows, Path("docs/tts_vs_params_diversity.png"))
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from recsys.study.cost import Budget
from recsys.study.diversity import Diversity, diversity
from recsys.study.paired import Comparison, best_within_latency, format_p, gain_threshold, paired_tests
from recsys.study.plan import KIND_LABELS, TTS_KINDS, Arm, short_spec
from recsys.study.score import ArmLogits, Score

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: The serving layouts of the equal-latency verdict: (name, the ``Row`` latency field it reads).
LAYOUTS = (("parallel", "latency_parallel_ms"), ("1-proc", "latency_ms"))


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


@dataclass
class LatencyMatch:
    """An ensemble's rival at equal latency in one serving ``layout``: the best single model
    whose 1-proc latency is <= ``latency_ms`` (the ensemble's, in that layout)."""

    layout: str
    latency_ms: float
    rival: str  # label of the rival row, "" when no single model is that fast
    rival_spec: str = ""
    rival_latency_ms: float = float("nan")
    rival_auc: float = float("nan")
    comparison: Comparison | None = None  # the ensemble against the rival, replica 0 first

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "comparison"}
        d["comparison"] = None if self.comparison is None else self.comparison.to_dict()
        return d


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
    latency_parallel_ms: float | None = None
    nes: list[float] = field(default_factory=list)
    calibrations: list[float] = field(default_factory=list)
    vs_ensemble: Comparison | None = None  # this row - the homogeneous ensemble of its budget
    vs_base: Comparison | None = None  # this ensemble - the base model (M = 1)
    diversity: list[Diversity] = field(default_factory=list)  # per replica, ensembles only
    latency_match: list[LatencyMatch] = field(default_factory=list)  # ensembles only, one per layout

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

    @property
    def ne(self) -> float:
        return _mean(self.nes)

    @property
    def calibration(self) -> float:
        return _mean(self.calibrations)

    @property
    def is_base(self) -> bool:
        """The base model: the M = 1 homogeneous arm, what every budget is relative to."""
        return self.kind == "ensemble" and self.m == 1

    @property
    def name(self) -> str:
        """The label with its size, unique within a study: ``"homogeneous ensemble (K=M), M=4"``."""
        if self.is_base:
            return "base model (M=1)"
        return f"{self.label}, M={self.m}" if self.m > 1 else self.label

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(auc=self.auc, auc_sd=self.auc_sd, logloss=self.logloss, logloss_sd=self.logloss_sd, ne=self.ne,
                 calibration=self.calibration,
                 vs_ensemble=None if self.vs_ensemble is None else self.vs_ensemble.to_dict(),
                 vs_base=None if self.vs_base is None else self.vs_base.to_dict(),
                 diversity=[x.to_dict() for x in self.diversity],
                 latency_match=[x.to_dict() for x in self.latency_match])
        return d


def _latency_matches(i: int, rows: Sequence[Row], logits: dict[int, ArmLogits]) -> list[LatencyMatch]:
    """``rows[i]``'s rival single model per serving layout (see ``recsys.study.cost``)."""
    row, me = rows[i], logits.get(i)
    singles = [j for j, r in enumerate(rows) if r.m == 1]
    out = []
    for layout, attr in LAYOUTS:
        lat = getattr(row, attr)
        if lat is None:
            continue
        j = best_within_latency(lat, [(j, rows[j].latency_ms, rows[j].auc) for j in singles])
        if j is None:
            out.append(LatencyMatch(layout, lat, ""))
            continue
        rival, theirs = rows[j], logits.get(j)
        comp = None if me is None or theirs is None else paired_tests(me, theirs, rival.name)
        assert rival.latency_ms is not None  # best_within_latency only picks measured ones
        out.append(LatencyMatch(layout, lat, rival.name, rival.spec, rival.latency_ms, rival.auc, comp))
    return out


def build_rows(
    arms: Sequence[Arm],
    scores: Sequence[Sequence[Score]],
    budgets: Sequence[Budget],
    logits: Sequence[ArmLogits | None] | None = None,
) -> list[Row]:
    """One row per arm, sorted by budget, the homogeneous ensemble first within a budget.

    With ``logits`` (one per arm, None where a run saved none): the paired tests, the
    diversity and the equal-latency rivals (see the module docstring).  Without, those stay
    empty and the rows hold scores and cost only.
    """
    pairs = []
    for i, (arm, sc, b) in enumerate(zip(arms, scores, budgets)):
        pairs.append((Row(
            kind=arm.kind, label=arm.label, m=arm.m, budget_m=arm.budget_m, spec=short_spec(arm.specs),
            dense_params=b.dense_params, embedding_params=b.embedding_params, flops=b.flops,
            latency_ms=b.latency_ms, aucs=[s.auc for s in sc], loglosses=[s.logloss for s in sc],
            target_flops=arm.target_flops, latency_parallel_ms=b.latency_parallel_ms,
            nes=[s.ne for s in sc], calibrations=[s.calibration for s in sc],
        ), None if logits is None else logits[i]))
    order = list(KIND_LABELS)
    pairs.sort(key=lambda p: (p[0].budget_m, 0 if p[0].kind == "ensemble"
                              else 1 + (order.index(p[0].kind) if p[0].kind in order else 99)))
    rows = [r for r, _ in pairs]
    held = {j: x for j, (_, x) in enumerate(pairs) if x is not None}
    ens = {r.budget_m: j for j, r in enumerate(rows) if r.kind == "ensemble"}
    base = next((j for j, r in enumerate(rows) if r.is_base), None)
    for j, r in enumerate(rows):
        e = ens.get(r.budget_m)
        if j in held and e is not None and e != j and e in held:
            r.vs_ensemble = paired_tests(held[j], held[e], rows[e].name)
        if r.m > 1:
            if j in held and base is not None and base in held:
                r.vs_base = paired_tests(held[j], held[base], rows[base].name)
            if j in held:
                r.diversity = [diversity(x, held[j].labels) for x in held[j].replicas]
            r.latency_match = _latency_matches(j, rows, held)
    return rows


def _pm(mean: float, sd: float, n: int, digits: int = 4) -> str:
    return f"{mean:.{digits}f}" if n < 2 or math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _delta(c: Comparison | None) -> str:
    """A table cell for replica 0's paired test: ``**+0.0042** (<0.001)`` (bold when decisive)."""
    if c is None:
        return "-"
    t = c.first
    d = f"{t.diff:+.4f}"
    return f"{f'**{d}**' if t.decisive else d} ({format_p(t.p)})"


def _num(x: float, digits: int = 4) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def _budget(r: Row, base: int) -> str:
    return f"{r.flops / base:.2f}x" if base else f"{r.budget_m}x"


def table_markdown(rows: Sequence[Row]) -> str:
    """Three tables: accuracy and significance; cost; diversity (ensembles only, when known).

    ± is the sample standard deviation over the n replicas; "budget" is FLOPs per example
    relative to the base model (the M = 1 row); a Δ column is this row's AUC minus the
    reference's on replica 0 with DeLong's two-sided p.
    """
    from recsys.budget import human  # lazy: `import recsys.study` stays torch-free (--help)

    base = next((r.flops for r in rows if r.is_base), 0)
    acc = [
        "| budget | arm | M | n | test AUC | test logloss | NE | calibration | Δ AUC vs homog. ens. (p) "
        "| Δ AUC vs M=1 (p) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cost = [
        "| budget | arm | config | M | dense params | emb params | FLOPs/ex | latency 1-proc ms "
        "| latency parallel ms |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    div = [
        "| budget | arm | replica | M | logit corr | ambiguity (logit) | ambiguity (prob) | AUC "
        "| gain vs mean member | gain vs best member |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        budget = _budget(r, base)
        acc.append(
            f"| {budget} | {r.label} | {r.m} | {len(r.aucs)} | {_pm(r.auc, r.auc_sd, len(r.aucs))} | "
            f"{_pm(r.logloss, r.logloss_sd, len(r.loglosses))} | {_num(r.ne)} | {_num(r.calibration)} | "
            f"{_delta(r.vs_ensemble)} | {_delta(r.vs_base)} |"
        )
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.2f}"
        par = "-" if r.latency_parallel_ms is None else f"{r.latency_parallel_ms:.2f}"
        flops = human(r.flops)
        if r.target_flops:
            flops += f" ({(r.flops - r.target_flops) / r.target_flops:+.1%})"
        cost.append(
            f"| {budget} | {r.label} | `{r.spec}` | {r.m} | {human(r.dense_params)} | "
            f"{human(r.embedding_params)} | {flops} | {lat} | {par} |"
        )
        for k, d in enumerate(r.diversity):
            div.append(
                f"| {budget} | {r.label} | {k} | {d.m} | {_num(d.logit_correlation, 3)} | {_num(d.ambiguity)} | "
                f"{_num(d.prob_ambiguity)} | {_num(d.ensemble_auc)} | {d.auc_gain_over_mean:+.4f} | "
                f"{d.auc_gain_over_best:+.4f} |"
            )
    legend = (f"Δ: this row's test AUC minus the reference's, on replica 0, with DeLong's two-sided p; "
              f"**bold**: p < 0.05 and |Δ| >= {gain_threshold():g} (the paper's 0.1% AUC bar).")
    tables = ["\n".join(acc), legend, "\n".join(cost)]
    if len(div) > 2:
        tables.append("\n".join(div))
        tables.append("Ambiguity (logit): mean member logloss minus the logloss of the mean logit (the merge "
                      "served; >= 0, label-free); (prob): the same against the mean probability. Members of a "
                      "joint or grouped ensemble (K < M) are trained on their group's loss, so one alone is no "
                      "model: their gain over a member measures co-adaptation, not merging, and the diversity "
                      "plot leaves them out.")
    return "\n\n".join(tables)


def verdict_lines(rows: Sequence[Row]) -> list[str]:
    """Per budget: the homogeneous ensemble's AUC minus each FLOP-matched single model's (with
    the paired test where the logits were read); then each ensemble against the base model."""
    out = []
    ens = {r.budget_m: r for r in rows if r.kind == "ensemble"}
    for r in rows:
        if r.kind in TTS_KINDS or r.budget_m not in ens:  # the ensembles (grouped too) are not rivals
            continue
        e = ens[r.budget_m]
        d = e.auc - r.auc
        who = "tie" if d == 0 else ("ensemble ahead" if d > 0 else "parameter scaling ahead")
        spread = max((x for x in (e.auc_sd, r.auc_sd) if not math.isnan(x)), default=float("nan"))
        if not math.isnan(spread):
            who += ", beyond the replica spread" if abs(d) > spread else ", within the replica spread"
        line = f"budget {r.budget_m}x: ensemble AUC {e.auc:.4f} vs {r.label} {r.auc:.4f}: {d:+.4f} ({who})"
        if r.vs_ensemble is not None:
            line += f"; paired, ensemble minus single: {r.vs_ensemble.flipped(e.name).summary()}"
        out.append(line)
    base = next((r.flops for r in rows if r.is_base), 0)
    for r in rows:
        if r.vs_base is not None:  # a heterogeneous M=8 is not an 8x budget: say its FLOPs
            out.append(f"M={r.m} at {_budget(r, base)} FLOPs: {r.name} vs the base model (M=1): "
                       f"{r.vs_base.summary()}")
    return out


def latency_verdict_lines(rows: Sequence[Row]) -> list[str]:
    """Per ensemble and serving layout: the ensemble against the best single model at most as
    slow (the rule is in ``recsys.study.cost``'s docstring)."""
    out = []
    for r in rows:
        for x in r.latency_match:
            head = f"equal latency, {x.layout}: {r.name} at {x.latency_ms:.2f} ms"
            if not x.rival:
                out.append(f"{head}: no single model is that fast")
                continue
            vs = (f"{r.auc - x.rival_auc:+.4f} in mean AUC (no logits for a paired test)" if x.comparison is None
                  else x.comparison.summary())
            out.append(f"{head} vs the best single model within it, {x.rival} `{x.rival_spec}` "
                       f"({x.rival_latency_ms:.2f} ms, AUC {x.rival_auc:.4f}): {vs}")
    return out


# (color, marker, line) per arm kind: test-time scaling solid or unjoined, parameter scaling dashed.
_STYLES = {"ensemble": ("C0", "o", "-"), "joint": ("C4", "D", "none"), "grouped": ("C9", "P", "none"),
           "hetero": ("C3", "*", "none"), "mlp_width": ("C1", "s", "--"), "cross_layers": ("C2", "^", "--"),
           "embedding_dim": ("C5", "v", "--"), "multiembed": ("C6", "<", "--"), "dmoe": ("C7", ">", "--"),
           "wukong": ("C8", "h", "--"), "rankmixer": ("k", "X", "--")}


def plot_rows(rows: Sequence[Row], path: Path, title: str = "") -> None:
    """AUC vs FLOPs per example: one curve per arm kind, each anchored at the base model."""
    from matplotlib.figure import Figure  # lazy: matplotlib costs seconds; only the plot needs it

    base = next((r for r in rows if r.is_base), None)
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
    _finish(fig, ax, path, "dense FLOPs per example (log scale)", "test AUC (mean ± sd over replicas)",
            title or "Test-time scaling vs parameter scaling at equal FLOPs", 8)


def _finish(fig: Figure, ax: Axes, path: Path, xlabel: str, ylabel: str, title: str, legend_size: int) -> None:
    """Labels, grid, the legend right of the axes, and the PNG at ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=legend_size, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# Ensemble kinds whose members are each trained alone (K = M): only there is a member a model of
# its own, so only there does "gain over the mean / best member" measure what merging buys.
TRAINED_ALONE = ("ensemble", "hetero")
# Short point labels of the diversity plot, per ensemble kind.
_TAGS = {"ensemble": "homog.", "joint": "joint", "grouped": "grouped", "hetero": "hetero"}


def plot_diversity(rows: Sequence[Row], path: Path, title: str = "") -> bool:
    """Ensemble AUC gain over its mean member (filled) and over its best member (hollow) against
    the members' mean pairwise logit correlation, one point per ensemble replica of a kind in
    ``TRAINED_ALONE``, labeled ``<kind> M=<m> r<replica>``.  Returns False (and writes nothing) when no row has diversity numbers."""
    pts = [(r, k, d) for r in rows if r.kind in TRAINED_ALONE for k, d in enumerate(r.diversity)
           if not math.isnan(d.logit_correlation)]
    if not pts:
        return False
    from matplotlib.figure import Figure  # lazy: matplotlib costs seconds; only the plot needs it

    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    seen: set[str] = set()
    for r, k, d in pts:
        color, marker, _ = _STYLES.get(r.kind, ("k", "x", "-"))
        first = r.kind not in seen
        seen.add(r.kind)
        ax.scatter([d.logit_correlation], [d.auc_gain_over_mean], color=color, marker=marker, s=40,
                   label=f"{KIND_LABELS.get(r.kind, r.kind)}: gain over mean member" if first else None)
        ax.scatter([d.logit_correlation], [d.auc_gain_over_best], facecolors="none", edgecolors=color,
                   marker=marker, s=40, label=f"{KIND_LABELS.get(r.kind, r.kind)}: gain over best member" if first else None)
        ax.annotate(f"{_TAGS.get(r.kind, r.kind)} M={r.m} r{k}", (d.logit_correlation, d.auc_gain_over_mean),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.margins(x=0.3, y=0.1)  # room for the labels at the edges
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.axhline(gain_threshold(), color="gray", lw=0.8, ls=":", label=f"the paper's bar (+{gain_threshold():g})")
    _finish(fig, ax, path, "mean pairwise Pearson correlation of member test logits", "ensemble test AUC gain",
            title or "When does test-time scaling pay? Gain vs member diversity", 7)
    return True
