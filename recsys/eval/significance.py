"""Paired significance tests for two AUCs scored on the same rows: DeLong's test and a
stratified paired bootstrap.

Why paired: an ensemble and its best member score the same test rows, so their AUCs are
strongly correlated; testing each AUC's own interval would call most real gains noise.
DeLong (1988) estimates the covariance of the two AUCs from the structural components (each
positive's share of negatives it outranks, and each negative's of positives), here in Sun &
Xu's (2014) O(N log N) form: midranks of the pooled, positive-only and negative-only scores
give every component with three sorts per score column, instead of the O(N^2) pair table.
The bootstrap (pROC's ``method="bootstrap"``) needs no asymptotics and gives a CI of the
difference, at B times the cost of one AUC.

Like ``metrics``, numpy only at import.

Example::

    r = delong_test(ens_logits, best_member_logits, labels)
    r.diff, r.p                                  # AUC gain of a over b, two-sided p-value
    paired_bootstrap(ens_logits, best_member_logits, labels, num_resamples=1000, seed=0).ci
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from recsys.eval.metrics import _flat_float64, auc_score

if TYPE_CHECKING:
    import torch


class DeLongResult(NamedTuple):
    """AUCs of score columns a and b, ``diff = auc_a - auc_b``, its z and two-sided p."""

    auc_a: float
    auc_b: float
    diff: float
    z: float
    p: float


class BootstrapResult(NamedTuple):
    """``diff = auc_a - auc_b`` on the full data, the percentile CI of the resampled
    differences at level ``1 - alpha``, and the two-sided p of z = diff / sd(resampled)."""

    diff: float
    ci: tuple[float, float]
    p: float


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x [N] with each tie block given its mean rank, in x's order."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ends = np.append(np.flatnonzero(xs[1:] != xs[:-1]) + 1, x.size)  # one past each tie block
    counts = np.diff(ends, prepend=0)
    block_rank = (ends - counts) + (counts + 1.0) / 2.0
    out = np.empty(x.size, dtype=np.float64)
    out[order] = np.repeat(block_rank, counts)
    return out


def _split(
    scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, what: str
) -> tuple[np.ndarray, np.ndarray]:
    s, y = _flat_float64(scores), _flat_float64(labels)
    if s.size != y.size:
        raise ValueError(f"{what}: {s.size} scores but {y.size} labels")
    pos = y == 1
    if not bool((pos | (y == 0)).all()):
        raise ValueError(f"{what}: labels must be 0 or 1")
    return s[pos], s[~pos]


def delong_covariance(
    scores: list[np.ndarray | torch.Tensor], labels: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs [K] of K score columns (each [N]) on the same labels [N], and DeLong's estimate of
    their covariance [K, K]: S10 / m + S01 / n, S10 and S01 the sample covariances (ddof 1) of
    the positives' and negatives' structural components, m positives, n negatives.
    Raises ``ValueError`` when a class has fewer than 2 rows (no covariance to estimate).

    Example::

        aucs, cov = delong_covariance([a, b], labels)
        cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]     # variance of auc_a - auc_b
    """
    splits = [_split(s, labels, "delong") for s in scores]
    m, n = splits[0][0].size, splits[0][1].size
    if m < 2 or n < 2:
        raise ValueError(f"delong: needs at least 2 positives and 2 negatives, got {m} and {n}")
    v10 = np.empty((len(scores), m))
    v01 = np.empty((len(scores), n))
    for k, (xp, xn) in enumerate(splits):
        tz = _midranks(np.concatenate([xp, xn]))
        v10[k] = (tz[:m] - _midranks(xp)) / n  # share of negatives each positive outranks
        v01[k] = 1.0 - (tz[m:] - _midranks(xn)) / m  # share of positives that outrank each negative
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def _two_sided(diff: float, var: float) -> tuple[float, float]:
    """(z, p) of a normal difference; a zero variance gives p = 1 for no difference, else 0."""
    if var <= 0.0:
        return (0.0, 1.0) if diff == 0.0 else (math.copysign(math.inf, diff), 0.0)
    z = diff / math.sqrt(var)
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def delong_test(
    scores_a: np.ndarray | torch.Tensor, scores_b: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> DeLongResult:
    """DeLong's test of AUC(a) = AUC(b) for two score columns [N] (logits or probabilities)
    on the same labels [N].

    Example::

        delong_test(x[:, 0], x[:, 0], y).p    # 1.0: a column against itself
    """
    aucs, cov = delong_covariance([scores_a, scores_b], labels)
    diff = float(aucs[0] - aucs[1])
    z, p = _two_sided(diff, float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]))
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, z, p)


def paired_bootstrap(
    scores_a: np.ndarray | torch.Tensor,
    scores_b: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    num_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """Stratified paired bootstrap of auc_a - auc_b: each of ``num_resamples`` resamples draws
    positives and negatives with replacement (same rows for both columns, class counts kept, so
    every resample has an AUC), seeded by ``seed``.  Cost: 2 * num_resamples AUCs.

    Example::

        r = paired_bootstrap(a, b, y, num_resamples=2000, seed=0)
        r.ci[0] > 0     # the gain's 95% CI excludes 0
    """
    if num_resamples < 2:
        raise ValueError(f"paired_bootstrap: num_resamples must be >= 2, got {num_resamples}")
    ap, an = _split(scores_a, labels, "paired_bootstrap")
    bp, bn = _split(scores_b, labels, "paired_bootstrap")
    m, n = ap.size, an.size
    if m == 0 or n == 0:
        raise ValueError(f"paired_bootstrap: needs both classes, got {m} positives and {n} negatives")
    y = np.concatenate([np.ones(m), np.zeros(n)])
    a, b = np.concatenate([ap, an]), np.concatenate([bp, bn])
    rng = np.random.default_rng(seed)
    diffs = np.empty(num_resamples)
    for r in range(num_resamples):
        idx = np.concatenate([rng.integers(0, m, m), m + rng.integers(0, n, n)])
        diffs[r] = auc_score(a[idx], y) - auc_score(b[idx], y)
    diff = auc_score(a, y) - auc_score(b, y)
    lo, hi = np.quantile(diffs, [alpha / 2.0, 1.0 - alpha / 2.0])
    _, p = _two_sided(diff, float(np.var(diffs, ddof=1)))
    return BootstrapResult(float(diff), (float(lo), float(hi)), p)
