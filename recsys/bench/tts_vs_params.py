"""Test-time scaling vs parameter scaling at the same inference budget.

The project's headline claim is that, for a fixed dense FLOPs-per-example
budget, averaging the logits of M members beats spending the same FLOPs on
one wider or deeper model.  This benchmark tests it end to end with the real
training entry point, so the numbers come from exactly the code users run:

- a base member (``--base``) trained with ``--ens-seeds`` different seeds, each
  alone (K = M, independent groups).  Disjoint subsets of those members form
  the homogeneous ensembles of M = 1, 2, 4 (``--ms``), so every M has
  ``ens_seeds // M`` independent replicas and a spread;
- for each M > 1, single models whose dense FLOPs per example match the
  M-member ensemble within ``--tol`` (``recsys.budget.match_flops``): wider MLPs
  (``mlp_width``), deeper cross networks (``cross_layers``) and wider
  embeddings (``embedding_dim``).  An integer knob rarely lands within 5% on
  its own, so it is set to the largest value under the budget and the MLP
  width closes the rest; the spec in the table says exactly what was trained;
- optionally a K = 1 (joint) homogeneous ensemble of the largest M and a
  heterogeneous ensemble (``--hetero``, trained independently).

Every arm uses the same config seed (data order), epochs, early stopping and
optimizers; only the member specs differ.  Each run is a temporary TOML config
given to ``recsys/train_group.py`` in a subprocess (1 process, or torchrun with
``--nproc``).  Test AUC / logloss are read back from ``runs/<name>/results.json``
and, for ensembles of a subset of a run's members, from the member logits in
``runs/<name>/logits_test.pt`` (mean logit, as the evaluator merges).
Checkpoints are deleted after reading unless ``--keep-checkpoints``.

Examples::

    # the committed experiment (docs/tts_vs_params.md): ~13 min on 2 idle CPU cores, ~20 min when shared
    python -m recsys.bench.tts_vs_params
    # quick smoke run: 1 epoch, fewer replicas, width knob only
    python -m recsys.bench.tts_vs_params --epochs 1 --ens-seeds 4 --seeds 1 --knobs mlp_width --no-joint --no-hetero
    # a bigger run: more data, more epochs, M up to 8, 2 ranks per run
    python -m recsys.bench.tts_vs_params --data data/criteo --epochs 5 --ms 1 2 4 8 --ens-seeds 16 --seeds 3 --nproc 2
    # rebuild the table and the plot from the runs already on disk (no training)
    python -m recsys.bench.tts_vs_params --reuse
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_BASE = "dcnv2:embedding_dim=8,mlp=64-32,cross_layers=2"  # configs/demo.toml's dcnv2 member
DEFAULT_HETERO = ("fnn:embedding_dim=8,mlp=64-32", "deepfm:embedding_dim=8,mlp=64-32", "ipnn:embedding_dim=8,mlp=64-32")
# FBGEMM's embedding kernels (TorchRec's sharded EBC) need dims divisible by 4, on CPU too.
EMBEDDING_DIM_MULTIPLE = 4
DEFAULT_KNOBS = ("mlp_width", "cross_layers", "embedding_dim")
# The arm kinds, in table order, with the label used in the table and the plot.
KIND_LABELS = {
    "ensemble": "homogeneous ensemble (K=M)",
    "joint": "homogeneous ensemble (K=1, joint)",
    "hetero": "heterogeneous ensemble (K=M)",
    "mlp_width": "single, wider MLP",
    "cross_layers": "single, deeper cross net",
    "embedding_dim": "single, wider embeddings",
}


# --------------------------------------------------------------------------- plan


@dataclass
class RunPlan:
    """One ``train_group.py`` run: its members and groups."""

    name: str
    members: list[str]
    groups: list[list[int]]


@dataclass
class Arm:
    """One row of the table: a model configuration at one budget, with its replicas.

    ``replicas[r]`` lists the member indices (in run ``run``) whose mean logit is
    replica r; a single model's replica is one member.
    """

    kind: str  # a key of KIND_LABELS
    m: int  # number of members of the arm (1 for a single model)
    budget_m: int  # the ensemble size whose FLOPs this arm matches
    run: str
    replicas: list[list[int]]
    specs: list[str]  # member specs of replica 0 (what the budget columns measure)
    target_flops: int = 0  # 0 = no FLOP matching (the ensembles themselves)

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


def _configs() -> dict[str, Any]:
    from recsys.models.registry import MODELS

    return {k: v.config for k, v in MODELS.items()}


def set_fields(spec: str, **values: Any) -> str:
    """``spec`` with some config fields replaced, in canonical form (defaults dropped).

    Example::

        set_fields("dcnv2:embedding_dim=8", seed=3)  # "dcnv2:seed=3,embedding_dim=8"
    """
    from recsys.budget import config_to_spec
    from recsys.models.spec import parse_spec

    model, cfg = parse_spec(spec, _configs())
    return config_to_spec(model, dataclasses.replace(cfg, **values))


def spec_field(spec: str, name: str) -> Any:
    from recsys.models.spec import parse_spec

    return getattr(parse_spec(spec, _configs())[1], name)


def match_budget(base: str, knob: str, target_flops: int, schema: Any, tol: float = 0.05) -> Any:
    """The single model matching ``target_flops`` by ``knob``: a ``recsys.budget.FlopMatch``.

    ``mlp_width`` scales the MLPs continuously, so it always lands.  An integer
    knob (``cross_layers``, ``embedding_dim``, ``layers``) steps in large FLOP
    increments (one 312x312 cross layer is ~45% of the demo dcnv2), so when it
    misses ``tol`` it is set to the largest value whose FLOPs stay below the
    target, and the MLP width fills the remainder: the knob still carries most
    of the added compute, and the budget is still matched within ``tol``.
    """
    from recsys.budget import match_flops, spec_flops
    from recsys.models.spec import parse_spec

    step = EMBEDDING_DIM_MULTIPLE if knob == "embedding_dim" else 1
    if knob in ("seed", "dropout"):
        raise ValueError(f"match_budget: {knob!r} does not change FLOPs; use mlp_width or a width/depth field")
    try:
        direct = match_flops(base, knob, target_flops, schema, tol)
        if knob.endswith("_width") or int(spec_field(direct.spec, knob)) % step == 0:
            return direct
        raise ValueError(f"{knob}={spec_field(direct.spec, knob)} is not a multiple of {step}")
    except ValueError:
        value = getattr(parse_spec(base, _configs())[1], knob, None)
        if knob.endswith("_width") or not isinstance(value, int) or isinstance(value, bool):
            raise  # a width knob that cannot land, or not an int knob at all (match_flops names the valid ones)
    spec, flops = base, spec_flops(base, schema)
    while value < 1 << 16:
        nxt = set_fields(base, **{knob: value + step})
        nxt_flops = spec_flops(nxt, schema)
        if nxt_flops > target_flops or nxt_flops <= flops:  # over budget, or the knob adds no compute
            break
        spec, value, flops = nxt, value + step, nxt_flops
    if spec == base:
        raise ValueError(f"match_budget: {knob} of {base!r} cannot grow by {step} without exceeding "
                         f"{target_flops:,} FLOPs")
    out = match_flops(spec, "mlp_width", target_flops, schema, tol)
    out.knob = f"{knob}+mlp_width"
    return out


def build_plan(
    base: str,
    schema: Any,
    ms: Sequence[int] = (1, 2, 4),
    ens_seeds: int = 8,
    seeds: int = 2,
    knobs: Sequence[str] = DEFAULT_KNOBS,
    hetero: Sequence[str] = DEFAULT_HETERO,
    joint: bool = True,
    prefix: str = "tts_",
    tol: float = 0.05,
) -> tuple[list[RunPlan], list[Arm], list[str]]:
    """The runs to train, the arms (table rows) read out of them, and notes on arms that
    could not be FLOP-matched (skipped rather than trained off-budget).

    Runs: ``<prefix>indep`` (the base with ``ens_seeds`` seeds, then the
    heterogeneous extras; all independent), ``<prefix>params`` (the FLOP-matched
    single models, ``seeds`` seeds each, independent) and ``<prefix>joint`` (the
    largest M in one K = 1 group, ``ens_seeds // M`` replicas).  Member seeds
    start at 1; the config seed (data order) is the same in every run.

    Example::

        runs, arms, notes = build_plan("dcnv2:embedding_dim=8,mlp=64-32,cross_layers=2", schema)
        [r.name for r in runs]  # ['tts_indep', 'tts_params', 'tts_joint']
    """
    from recsys.budget import spec_flops

    ms = sorted(set(int(m) for m in ms))
    if not ms or ms[0] < 1:
        raise ValueError(f"--ms must be positive integers, got {list(ms)}")
    if ens_seeds < ms[-1]:
        raise ValueError(f"--ens-seeds ({ens_seeds}) must be at least the largest M ({ms[-1]})")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    base = set_fields(base, seed=0)  # canonical, seedless
    base_flops = spec_flops(base, schema)

    indep = [set_fields(base, seed=s) for s in range(1, ens_seeds + 1)]
    arms: list[Arm] = []
    for m in ms:
        reps = [list(range(r * m, (r + 1) * m)) for r in range(ens_seeds // m)]
        arms.append(Arm("ensemble", m, m, f"{prefix}indep", reps, [indep[i] for i in reps[0]]))
    if hetero:
        extra = [set_fields(s, seed=len(indep) + 1 + i) for i, s in enumerate(hetero)]
        idx = [0] + list(range(len(indep), len(indep) + len(extra)))
        indep += extra
        arms.append(Arm("hetero", len(idx), len(idx), f"{prefix}indep", [idx], [indep[i] for i in idx]))
    runs = [RunPlan(f"{prefix}indep", indep, [[i] for i in range(len(indep))])]

    scaled: list[str] = []
    notes: list[str] = []
    for knob in knobs:
        for m in ms:
            if m == 1:
                continue
            target = m * base_flops
            try:
                match = match_budget(base, knob, target, schema, tol)
            except ValueError as e:
                notes.append(f"no {KIND_LABELS.get(knob, knob)} arm at budget {m}x: {e}")
                continue
            first = len(scaled)
            scaled += [set_fields(match.spec, seed=s) for s in range(1, seeds + 1)]
            arms.append(Arm(knob, 1, m, f"{prefix}params", [[i] for i in range(first, len(scaled))],
                            [scaled[first]], target_flops=target))
    if scaled:
        runs.append(RunPlan(f"{prefix}params", scaled, [[i] for i in range(len(scaled))]))

    if joint and ms[-1] > 1:
        m = ms[-1]
        reps = [list(range(r * m, (r + 1) * m)) for r in range(ens_seeds // m)]
        members = [set_fields(base, seed=s) for s in range(1, len(reps) * m + 1)]
        runs.append(RunPlan(f"{prefix}joint", members, reps))
        arms.append(Arm("joint", m, m, f"{prefix}joint", reps, [members[i] for i in reps[0]]))
    return runs, arms, notes


@dataclass
class TrainSettings:
    """What every arm shares, so that only the member specs differ between arms."""

    data_dir: str = "data/demo/criteo"
    seed: int = 0
    device: str = "cpu"
    epochs: int = 2
    patience: int = 1
    batch_size: int = 1024
    eval_batch_size: int = 4096
    max_steps_per_epoch: int = 0
    dense_lr: float = 1e-3
    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.02
    log_dir: str = "runs"
    checkpoint_dir: str = "checkpoints"


def config_toml(run: RunPlan, s: TrainSettings) -> str:
    """The TOML config of one run (json.dumps writes valid TOML basic strings)."""
    q = json.dumps
    lines = [
        "# written by recsys/bench/tts_vs_params.py",
        f"name = {q(run.name)}",
        f"data_dir = {q(s.data_dir)}",
        "members = [",
        *[f"  {q(m)}," for m in run.members],
        "]",
        f"groups = {json.dumps(run.groups)}",
        f"seed = {s.seed}",
        f"device = {q(s.device)}",
        f"log_dir = {q(s.log_dir)}",
        f"checkpoint_dir = {q(s.checkpoint_dir)}",
        "",
        "[train]",
        f"batch_size = {s.batch_size}",
        f"eval_batch_size = {s.eval_batch_size}",
        f"epochs = {s.epochs}",
        f"patience = {s.patience}",
        f"max_steps_per_epoch = {s.max_steps_per_epoch}",
        "log_every = 50",
        "",
        "[dense_optimizer]",
        f"lr = {s.dense_lr!r}",
        "",
        "[embedding_optimizer]",
        f"name = {q(s.embedding_optimizer)}",
        f"lr = {s.embedding_lr!r}",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- scoring


@dataclass
class Score:
    auc: float
    logloss: float


def _load_logits(run_dir: Path) -> tuple[Any, Any] | None:
    path = run_dir / "logits_test.pt"
    if not path.is_file():
        return None
    import torch

    d = torch.load(path, map_location="cpu")
    return d["member_logits"], d["labels"]  # [N, M], [N]


def replica_score(results: dict[str, Any], replica: Sequence[int], logits: tuple[Any, Any] | None) -> Score:
    """Test AUC / logloss of the mean logit of ``replica``'s members in one run.

    A single member, a whole group, or the whole run is read from results.json;
    any other subset is merged from the saved member logits, as the evaluator
    merges (arithmetic mean of logits).
    """
    rep = sorted(replica)
    if len(rep) == 1:
        m = results["members"][rep[0]]
        return Score(m["auc"], m["logloss"])
    for g in results.get("groups", []):
        if sorted(g["members"]) == rep:
            return Score(g["auc"], g["logloss"])
    if rep == list(range(len(results["members"]))):
        return Score(results["ensemble"]["auc"], results["ensemble"]["logloss"])
    if logits is None:
        raise ValueError(f"members {rep} are no group of the run, and its logits_test.pt is missing")
    from recsys.evaluate import auc_score, logloss_score

    member_logits, labels = logits
    merged = member_logits[:, rep].double().mean(dim=1)
    return Score(auc_score(merged, labels), logloss_score(merged, labels))


def arm_scores(arm: Arm, log_dir: Path) -> list[Score]:
    run_dir = log_dir / arm.run
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (train the run first, or drop --reuse)")
    results = json.loads(path.read_text())
    need_logits = any(len(r) > 1 and not any(sorted(g["members"]) == sorted(r) for g in results.get("groups", []))
                      for r in arm.replicas)
    logits = _load_logits(run_dir) if need_logits else None
    return [replica_score(results, r, logits) for r in arm.replicas]


@dataclass
class Budget:
    dense_params: int
    embedding_params: int
    flops: int
    latency_ms: float | None


def arm_modules(arm: Arm, schema: Any) -> Any:
    """Replica 0 of an arm as one ``EnsembleGroup`` (freshly initialized: latency and counts
    do not depend on the trained weights)."""
    from recsys.ensemble import EnsembleGroup, member_names
    from recsys.models.registry import build_member

    return EnsembleGroup([build_member(s, schema, n) for s, n in zip(arm.specs, member_names(arm.specs))])


def arm_budget(arm: Arm, schema: Any) -> Budget:
    """Exact parameter and FLOP counts of one replica (latency is measured separately)."""
    from recsys.budget import count_params, spec_flops

    dense, emb = count_params(arm_modules(arm, schema))
    return Budget(dense, emb, sum(spec_flops(s, schema) for s in arm.specs), None)


def interleaved_latency_ms(modules: Sequence[Any], schema: Any, batch_size: int, repeats: int) -> list[float]:
    """Median forward time (ms) of each module at ``batch_size``, timed round-robin.

    Why not ``recsys.budget.forward_latency_ms`` per arm: on a shared machine the
    load changes over seconds, and timing arms one after another turns that drift
    into differences between arms.  Round-robin puts every arm under the same
    drift, so the medians compare.  The replica runs its members one after another
    (as ``EnsembleGroup`` does): the cost without fan-out parallelism.
    """
    import torch
    from tqdm import tqdm

    from recsys.budget import random_inputs

    dense, kjt = random_inputs(schema, batch_size)
    times: list[list[float]] = [[] for _ in modules]
    with torch.no_grad():
        for m in modules:
            m.eval()
            m(dense, kjt)  # warm-up
        for _ in tqdm(range(repeats), desc="latency rounds", leave=False):
            for i, m in enumerate(modules):
                t0 = time.perf_counter()
                m(dense, kjt)
                times[i].append(1000.0 * (time.perf_counter() - t0))
    return [statistics.median(t) for t in times]


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
    def logloss(self) -> float:
        return statistics.fmean(self.loglosses)

    @staticmethod
    def _sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else float("nan")

    @property
    def auc_sd(self) -> float:
        return self._sd(self.aucs)

    @property
    def logloss_sd(self) -> float:
        return self._sd(self.loglosses)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(auc=self.auc, auc_sd=self.auc_sd, logloss=self.logloss, logloss_sd=self.logloss_sd)
        return d


def _short_spec(specs: Sequence[str]) -> str:
    """One spec per distinct seedless member spec, e.g. ``4 x dcnv2:...``."""
    plain = [set_fields(s, seed=0) for s in specs]
    out: list[str] = []
    for s in dict.fromkeys(plain):
        n = plain.count(s)
        out.append(f"{n} x {s}" if n > 1 else s)
    return " + ".join(out)


def build_rows(arms: Sequence[Arm], scores: Sequence[Sequence[Score]], budgets: Sequence[Budget]) -> list[Row]:
    rows = []
    for arm, sc, b in zip(arms, scores, budgets):
        rows.append(Row(
            kind=arm.kind, label=arm.label, m=arm.m, budget_m=arm.budget_m, spec=_short_spec(arm.specs),
            dense_params=b.dense_params, embedding_params=b.embedding_params, flops=b.flops,
            latency_ms=b.latency_ms, aucs=[s.auc for s in sc], loglosses=[s.logloss for s in sc],
            target_flops=arm.target_flops,
        ))
    order = list(KIND_LABELS)
    rows.sort(key=lambda r: (r.budget_m, 0 if r.kind == "ensemble" else 1 + (order.index(r.kind) if r.kind in order else 99)))
    return rows


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _pm(mean: float, sd: float, n: int, digits: int = 4) -> str:
    return f"{mean:.{digits}f}" if n < 2 or math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table_markdown(rows: Sequence[Row]) -> str:
    """The results table; ± is the sample standard deviation over the n replicas, and
    "budget" is FLOPs per example relative to the base model (the M = 1 row)."""
    lines = [
        "| budget | arm | config | M | dense params | emb params | FLOPs/ex | latency ms | n | test AUC | test logloss |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next((r.flops for r in rows if r.kind == "ensemble" and r.m == 1), 0)
    for r in rows:
        budget = f"{r.flops / base:.2f}x" if base else f"{r.budget_m}x"
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.2f}"
        flops = _human(r.flops)
        if r.target_flops:
            flops += f" ({(r.flops - r.target_flops) / r.target_flops:+.1%})"
        lines.append(
            f"| {budget} | {r.label} | `{r.spec}` | {r.m} | {_human(r.dense_params)} | "
            f"{_human(r.embedding_params)} | {flops} | {lat} | {len(r.aucs)} | "
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


def plot_rows(rows: Sequence[Row], path: Path, title: str = "") -> None:
    """AUC vs FLOPs per example: one curve per arm kind, each anchored at the base model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next((r for r in rows if r.kind == "ensemble" and r.m == 1), None)
    fig, ax = plt.subplots(figsize=(10, 5))
    styles = {"ensemble": ("C0", "o", "-"), "joint": ("C4", "D", "none"), "hetero": ("C3", "*", "none"),
              "mlp_width": ("C1", "s", "--"), "cross_layers": ("C2", "^", "--"), "embedding_dim": ("C5", "v", "--")}
    for kind in KIND_LABELS:
        pts = sorted((r for r in rows if r.kind == kind), key=lambda r: r.flops)
        if kind in ("mlp_width", "cross_layers", "embedding_dim") and base is not None and pts:
            pts = [base] + pts
        if not pts:
            continue
        color, marker, ls = styles.get(kind, ("k", "x", "-"))
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
    plt.close(fig)


# --------------------------------------------------------------------------- running


def ensure_data(data_dir: Path, rows: int) -> None:
    """Creates the demo's synthetic Criteo data as scripts/demo.sh does, if it is missing."""
    if (data_dir / "meta.json").is_file():
        return
    raw = data_dir.parent / "raw" / "criteo_synthetic.tsv"
    raw.parent.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    print(f"tts_vs_params: {data_dir}/meta.json missing; synthesizing {rows:,} Criteo rows", flush=True)
    subprocess.run([py, "data_prep/synthesize.py", "--dataset", "criteo", "--rows", str(rows), "--output", str(raw),
                    "--seed", "0", "--no-progress"], cwd=ROOT, check=True)
    subprocess.run([py, "data_prep/criteo_to_npy.py", "--input", str(raw), "--output", str(data_dir),
                    "--min-count", "5", "--workers", "2", "--no-progress"], cwd=ROOT, check=True)


def train_command(config: Path, nproc: int) -> list[str]:
    script = str(ROOT / "recsys" / "train_group.py")
    if nproc <= 1:
        return [sys.executable, script, "--config", str(config)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            script, "--config", str(config)]


def train_run(run: RunPlan, settings: TrainSettings, work: Path, nproc: int, reuse: bool) -> float:
    """Trains one run unless ``reuse`` and its results match this exact config; returns seconds."""
    text = config_toml(run, settings)
    config = work / f"{run.name}.toml"
    run_dir = Path(settings.log_dir) / run.name
    log = work / f"{run.name}.log"
    if reuse and (run_dir / "results.json").is_file() and config.is_file() and config.read_text() == text:
        print(f"tts_vs_params: reusing {run_dir} (same config)", flush=True)
        # the earlier training time: the config is written just before training, the log last written at its end
        return log.stat().st_mtime - config.stat().st_mtime if log.is_file() else 0.0
    config.write_text(text)
    t0 = time.perf_counter()
    print(f"tts_vs_params: training {run.name}: {len(run.members)} members in {len(run.groups)} groups "
          f"(log {log})", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(train_command(config, nproc), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"{run.name}: train_group.py exited with {proc.returncode}; last lines of {log}:\n"
                           + "\n".join(tail))
    return time.perf_counter() - t0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recsys.bench.tts_vs_params",
        description="Ensembles (test-time scaling) vs FLOP-matched wider/deeper single models "
        "(parameter scaling), trained with recsys/train_group.py.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples::" + __doc__.split("Examples::", 1)[1],
    )
    p.add_argument("--data", default="data/demo/criteo", help="converted dataset dir (created as demo.sh does "
                   "when it is the default and missing)")
    p.add_argument("--demo-rows", type=int, default=300_000, help="rows to synthesize when --data is missing")
    p.add_argument("--base", default=DEFAULT_BASE, help="the base member spec (its seed is ignored)")
    p.add_argument("--ms", type=int, nargs="+", default=[1, 2, 4], help="ensemble sizes / FLOP budgets")
    p.add_argument("--ens-seeds", type=int, default=8,
                   help="base members trained (seeds 1..N); ensembles of M use N//M disjoint replicas")
    p.add_argument("--seeds", type=int, default=2, help="seeds per parameter-scaled single model")
    p.add_argument("--knobs", default=",".join(DEFAULT_KNOBS),
                   help="parameter-scaling knobs, comma-separated (mlp_width, cross_layers, embedding_dim, "
                   "layers, ...); empty for none")
    p.add_argument("--hetero", default=";".join(DEFAULT_HETERO),
                   help="';'-separated specs added to base seed 1 as a heterogeneous ensemble")
    p.add_argument("--no-hetero", action="store_true", help="skip the heterogeneous ensemble")
    p.add_argument("--no-joint", action="store_true", help="skip the K=1 joint ensemble of the largest M")
    p.add_argument("--tol", type=float, default=0.05, help="relative FLOP-matching tolerance")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--patience", type=int, default=1, help="early stopping on val AUC (0 = off)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="0 = the whole train split")
    p.add_argument("--dense-lr", type=float, default=1e-3)
    p.add_argument("--embedding-optimizer", default="rowwise_adagrad")
    p.add_argument("--embedding-lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0, help="config seed (data order), the same for every run")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--nproc", type=int, default=1, help="ranks per run (torchrun when > 1); note that with fewer "
                   "ranks than groups, groups train one after another on all ranks with a split batch")
    p.add_argument("--prefix", default="tts_", help="run-name prefix (runs/<prefix>indep, ...)")
    p.add_argument("--log-dir", default="runs")
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.add_argument("--work-dir", default="runs/tts_vs_params", help="configs, logs, table and JSON go here")
    p.add_argument("--plot", default="docs/tts_vs_params.png")
    p.add_argument("--latency-batch", type=int, default=1024, help="0 skips latency")
    p.add_argument("--latency-repeats", type=int, default=50, help="timed rounds over all arms (round-robin; each arm's median is kept)")
    p.add_argument("--latency-threads", type=int, default=1,
                   help="torch threads while timing (1 = least disturbed by the other jobs on a shared machine)")
    p.add_argument("--reuse", action="store_true", help="skip runs whose results exist with the same config")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--plan-only", action="store_true", help="print the plan (specs, FLOPs) and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.chdir(ROOT)
    from recsys.data.schema import Schema, SchemaError
    from recsys.models.spec import SpecError

    data = Path(args.data)
    try:
        if args.data == "data/demo/criteo":
            ensure_data(data, args.demo_rows)
        schema = Schema.load(data)
        knobs = [k.strip() for k in args.knobs.split(",") if k.strip()]
        hetero = [] if args.no_hetero else [s.strip() for s in args.hetero.split(";") if s.strip()]
        runs, arms, notes = build_plan(args.base, schema, args.ms, args.ens_seeds, args.seeds, knobs, hetero,
                                not args.no_joint, args.prefix, args.tol)
    except (SchemaError, SpecError, ValueError) as e:
        print(f"tts_vs_params: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"tts_vs_params: error: creating {data} failed: {e}", file=sys.stderr)
        return 2
    settings = TrainSettings(
        data_dir=str(data), seed=args.seed, device=args.device, epochs=args.epochs, patience=args.patience,
        batch_size=args.batch_size, max_steps_per_epoch=args.max_steps_per_epoch, dense_lr=args.dense_lr,
        embedding_optimizer=args.embedding_optimizer, embedding_lr=args.embedding_lr,
        log_dir=args.log_dir, checkpoint_dir=args.checkpoint_dir,
    )
    print("tts_vs_params: plan")
    for a in arms:
        print(f"  {a.budget_m}x {a.label:36s} {_short_spec(a.specs)}  ({len(a.replicas)} replicas, run {a.run})")
    for n in notes:
        print(f"  note: {n}")
    if args.plan_only:
        return 0

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    from tqdm import tqdm

    try:
        for run in tqdm(runs, desc="training runs", unit="run"):
            try:
                seconds[run.name] = train_run(run, settings, work, args.nproc, args.reuse)
            finally:
                if not args.keep_checkpoints:
                    shutil.rmtree(Path(args.checkpoint_dir) / run.name, ignore_errors=True)
        scores = [arm_scores(a, Path(args.log_dir)) for a in arms]
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f"tts_vs_params: error: {e}", file=sys.stderr)
        return 1

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.latency_threads)
    try:
        budgets = [arm_budget(a, schema) for a in arms]
        if args.latency_batch > 0:
            modules = [arm_modules(a, schema) for a in arms]
            for b, ms in zip(budgets, interleaved_latency_ms(modules, schema, args.latency_batch, args.latency_repeats)):
                b.latency_ms = ms
    finally:
        torch.set_num_threads(threads)
    rows = build_rows(arms, scores, budgets)
    table = table_markdown(rows)
    verdict = verdict_lines(rows)
    total = time.perf_counter() - start
    header = (f"data {data} ({schema.dataset}), epochs {args.epochs}, patience {args.patience}, batch "
              f"{args.batch_size}, config seed {args.seed}, latency at batch {args.latency_batch} on "
              f"{args.latency_threads} thread(s); training {sum(seconds.values()):.0f} s, total {total:.0f} s")
    (work / "tts_vs_params.md").write_text(f"{header}\n\n{table}\n\n"
                                          + "\n".join(f"- {v}" for v in verdict + notes) + "\n")
    (work / "tts_vs_params.json").write_text(json.dumps(
        {"settings": dataclasses.asdict(settings), "base": args.base, "run_seconds": seconds, "notes": notes,
         "rows": [r.to_dict() for r in rows]}, indent=2))
    plot_rows(rows, Path(args.plot), f"{schema.dataset}: ensemble vs FLOP-matched single models")
    print(header)
    print()
    print(table)
    print()
    print("\n".join(verdict + notes))
    print(f"\ntts_vs_params: wrote {work / 'tts_vs_params.md'}, {work / 'tts_vs_params.json'}, {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
