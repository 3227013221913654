"""Exact ranking and calibration metrics: ROC AUC (tie-correct), logloss, and TorchRec's two
standard CTR metrics, normalized entropy (NE) and calibration.

Why its own module: the data generator (``recsys.data.synth``) reports its planted model's
AUC with the same function evaluation uses, so this module imports only numpy at load time
(no torch, no torchrec); a torch tensor passed in is converted on the way in.

Example::

    auc_score(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1]))    # 0.875
    Metrics.of(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))      # Metrics(auc=0.0, logloss=..., ne=..., calibration=...)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def _flat_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A flat float64 numpy copy of an array or a (CPU or CUDA, grad or not) tensor; bool -> 0/1."""
    if isinstance(x, np.ndarray):
        return x.reshape(-1).astype(np.float64)
    return x.detach().reshape(-1).double().cpu().numpy()


def auc_score(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Exact ROC AUC (Mann-Whitney U) with ties counted as 1/2, in float64.

    ``scores`` [N] (logits or probabilities: only their order matters), ``labels`` [N] in
    {0, 1} (bool allowed); numpy arrays or torch tensors.  Returns NaN when one class is absent.

    Why not a library metric: ``torchrec.metrics.auc`` sorts and integrates without grouping
    tied scores, so its answer depends on the order of ties; ``torchmetrics``'
    ``binary_auroc`` groups ties correctly but applies a sigmoid to inputs outside [0, 1], and
    float32 sigmoid saturates at |logit| >~ 17, turning distinct logits into false ties.  One
    sort plus grouping equal neighbours is exact (the rank sum is a sum of half-integers, so
    it does not depend on summation order) and takes ~0.1 s on 1M rows.

    Example::

        auc_score(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0., 0., 1., 1.]))  # 0.875
    """
    s = _flat_float64(scores)
    y = _flat_float64(labels)
    if s.size != y.size:
        raise ValueError(f"auc_score: {s.size} scores but {y.size} labels")
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    ends = np.append(np.flatnonzero(s_sorted[1:] != s_sorted[:-1]) + 1, s.size)  # 1-based rank of each tie block's last
    counts = np.diff(ends, prepend=0)
    avg_rank = (ends - counts).astype(np.float64) + (counts + 1.0) / 2.0  # average 1-based rank in the block
    pos_cum = np.cumsum(y_sorted)[ends - 1]
    pos_in_block = np.diff(pos_cum, prepend=0.0)
    rank_sum = float((avg_rank * pos_in_block).sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def logloss_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of sigmoid(logits) [N] against labels [N], computed stably from
    the logits in float64 (a logit of -40 with label 1 costs 40, not inf).

    Example::

        logloss_score(torch.tensor([0.0]), torch.tensor([1.0]))   # log 2 = 0.693...
    """
    from torch.nn.functional import binary_cross_entropy_with_logits  # lazy: this module is numpy-only

    return float(
        binary_cross_entropy_with_logits(
            logits.detach().reshape(-1).double().cpu(), labels.detach().reshape(-1).double().cpu()
        )
    )


#: TorchRec's clamp of the base rate (``NEMetricComputation.eta``), so a base rate of 1e-15
#: gives the same NE here as there.
_ETA = 1e-12


def base_rate_entropy(labels: np.ndarray | torch.Tensor) -> float:
    """Entropy in nats of a constant prediction at the base rate p = mean(labels [N]):
    -p log p - (1 - p) log(1 - p), p clamped to [1e-12, 1 - 1e-12] as in TorchRec.  NaN when
    one class is absent: no model can beat a base rate that is exactly right, NE is undefined.

    Example::

        base_rate_entropy(np.array([0, 1]))   # log 2 = 0.693...
    """
    y = _flat_float64(labels)
    n_pos = float(y.sum())
    if y.size == 0 or n_pos == 0 or n_pos == y.size:
        return float("nan")
    p = min(max(n_pos / y.size, _ETA), 1.0 - _ETA)
    return float(-p * np.log(p) - (1.0 - p) * np.log1p(-p))


def normalized_entropy(logloss: float, labels: np.ndarray | torch.Tensor) -> float:
    """NE = logloss / entropy of the base rate (``torchrec.metrics.ne.compute_ne``): the
    logloss relative to always predicting the base rate; below 1 means the model beats it,
    and unlike logloss it does not move with the base rate alone.  NaN with one class.

    Why from a logloss already computed: ``Metrics.of`` has it, and NE is a ratio of two sums
    (TorchRec's log2 cancels), so ``logloss_score``'s stable float64 value is the numerator.

    Example::

        normalized_entropy(0.693, np.array([0, 1]))   # 0.99979...
    """
    return logloss / base_rate_entropy(labels)


def calibration_score(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Calibration = sum(sigmoid(logits [N])) / sum(labels [N])
    (``torchrec.metrics.calibration.compute_calibration``): predicted over observed positives,
    1 when the model's mean CTR is right.  NaN without positives (TorchRec returns 0 there,
    which would read as "predicts no clicks").

    Example::

        calibration_score(np.array([0.0, 0.0]), np.array([1, 0]))   # 1.0
    """
    x = _flat_float64(logits)
    y = _flat_float64(labels)
    if x.size != y.size:
        raise ValueError(f"calibration_score: {x.size} logits but {y.size} labels")
    pos = float(y.sum())
    if pos <= 0:
        return float("nan")
    return float(np.exp(-np.logaddexp(0.0, -x)).sum()) / pos  # sigmoid, exact to float64 for any logit


@dataclass
class Metrics:
    """AUC, logloss, NE and calibration of one score column (a member, a group mean, the
    ensemble).  ``ne`` and ``calibration`` default to NaN so ``Metrics(auc, logloss)`` (and a
    results.json written before they existed) still reads."""

    auc: float
    logloss: float
    ne: float = float("nan")
    calibration: float = float("nan")

    @classmethod
    def of(cls, logits: torch.Tensor, labels: torch.Tensor) -> Metrics:
        """All four metrics of logits [N] against labels [N]."""
        logloss = logloss_score(logits, labels)
        return cls(
            auc_score(logits, labels), logloss, normalized_entropy(logloss, labels), calibration_score(logits, labels)
        )
