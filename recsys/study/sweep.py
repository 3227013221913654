"""The per-arm learning-rate sweep (``--lr-sweep``): every run trained at each learning rate,
and each arm read at the one where its validation AUC is best ("each arm at its best").

Why per arm and on val: a wider model or a jointly trained ensemble may want another step
size than the base; picking on the val split keeps the test split out of the choice.  An
arm's val AUC is the mean over its replicas, scored as the test split is (``arm_scores(..., split="val")``)
from ``runs/<run>/val_results.json`` and ``logits_val.pt``, which every run writes.

Example::

    runs, arms = expand_lrs(runs, arms, [3e-4, 1e-3, 3e-3])   # runs tts_indep_lr0.0003, ...
    ...                                                       # train them all
    best, picks = best_lr_arms(arms, Path("runs"))            # one arm per (kind, budget, ...)
"""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Sequence

from recsys.study.plan import Arm, PlanError, RunPlan
from recsys.study.score import arm_scores


def lr_run_name(name: str, lr: float) -> str:
    """``tts_indep`` at lr 0.003 -> ``tts_indep_lr0.003``."""
    return f"{name}_lr{lr:g}"


def expand_lrs(runs: Sequence[RunPlan], arms: Sequence[Arm], lrs: Sequence[float]) -> tuple[list[RunPlan], list[Arm]]:
    """Every run and arm once per learning rate (none given: unchanged)."""
    lrs = list(dict.fromkeys(float(x) for x in lrs))
    if not lrs:
        return list(runs), list(arms)
    if any(x <= 0 for x in lrs):
        raise PlanError(f"--lr-sweep values must be positive, got {lrs}")
    out_runs = [dataclasses.replace(r, name=lr_run_name(r.name, lr), lr=lr) for lr in lrs for r in runs]
    out_arms = [dataclasses.replace(a, run=lr_run_name(a.run, lr), lr=lr) for a in arms for lr in lrs]
    return out_runs, out_arms


def val_auc(arm: Arm, log_dir: Path) -> float:
    """Mean val AUC over the arm's replicas (mean member logit, as the test scores)."""
    return statistics.fmean(s.auc for s in arm_scores(arm, log_dir, split="val"))


def _key(a: Arm) -> tuple[object, ...]:
    return (a.kind, a.m, a.budget_m, a.k, tuple(a.specs), len(a.replicas))


def best_lr_arms(arms: Sequence[Arm], log_dir: Path) -> tuple[list[Arm], list[str]]:
    """Of each arm trained at several learning rates, the one with the best val AUC, in the
    order of first appearance; and one line per swept arm saying what each lr scored."""
    groups: dict[tuple[object, ...], list[Arm]] = {}
    for a in arms:
        groups.setdefault(_key(a), []).append(a)
    best: list[Arm] = []
    lines: list[str] = []
    for same in groups.values():
        if len(same) == 1:
            best.append(same[0])
            continue
        aucs = [val_auc(a, log_dir) for a in same]
        pick = max(range(len(same)), key=lambda i: aucs[i])
        best.append(same[pick])
        tried = ", ".join(f"{a.lr:g}: {x:.4f}" for a, x in zip(same, aucs))
        lines.append(f"{same[pick].budget_m}x {same[pick].label}: lr {same[pick].lr:g} (val AUC {tried})")
    return best, lines
