"""Member diversity of an ensemble, and what it buys: "will my data reward M servers?"

Pure functions of one ensemble's member test logits x [N, M] and labels y [N]; the
ensemble's logit is the evaluator's merge, the mean of the member logits (``merge_logits``).

What is computed, exactly:

- ``logit_correlation``: the mean over the M (M - 1) / 2 member pairs of the Pearson
  correlation of their logit columns.  1 for identical members; lower means the members
  rank and score rows differently, which is the only way averaging can help.
- ``ambiguity`` (logit space, the merge we serve): mean member logloss minus the logloss of
  the mean logit.  Logloss as a function of the logit z is l(z, y) = softplus(z) - y z, convex
  in z, so by Jensen the gap is >= 0 on every row.  The label term is linear and cancels:
  the gap is mean_i softplus(z_i) - softplus(mean_i z_i), a property of the members' logits
  alone (like Krogh and Vedelsby's ambiguity for squared error), 0 iff the members agree.
- ``prob_ambiguity``: mean member logloss minus the logloss of the mean *probability* (the
  other common merge).  Logloss is convex in p too, so it is >= 0 as well, but it depends on
  the labels.  Reported for comparison; the study's ensembles merge logits.
- AUC gains of the ensemble over the mean member AUC and over the best member AUC.

Like ``recsys.eval.metrics``, numpy only at import; torch tensors or numpy arrays in.

Example::

    d = diversity(member_logits, labels)           # member_logits [N, M], labels [N]
    d.logit_correlation, d.ambiguity, d.auc_gain_over_best
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recsys.eval.metrics import _flat_float64, auc_score

if TYPE_CHECKING:
    import torch


def _matrix(member_logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """[N, M] float64 numpy copy; refuses anything that is not 2-D with M >= 1."""
    shape = tuple(member_logits.shape)
    if len(shape) != 2 or shape[1] < 1:
        raise ValueError(f"diversity: expected member logits [N, M>=1], got shape {shape}")
    return _flat_float64(member_logits).reshape(shape)


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)  # log(1 + e^z), exact for any z


def _logloss(z: np.ndarray, y: np.ndarray) -> float:
    """Mean logloss of logits z [N] (or [N, M]: per column, then averaged) against y [N]."""
    yy = y if z.ndim == 1 else y[:, None]
    return float((_softplus(z) - yy * z).mean())


def logit_correlation(member_logits: np.ndarray | torch.Tensor) -> float:
    """Mean pairwise Pearson correlation of the member logit columns of x [N, M].

    NaN when M < 2 (no pair) or a column is constant (its correlation is undefined).

    Example::

        logit_correlation(np.stack([z, z], 1))    # 1.0
    """
    x = _matrix(member_logits)
    m = x.shape[1]
    if m < 2 or x.shape[0] < 2:
        return float("nan")
    sd = x.std(axis=0)
    if not bool((sd > 0).all()):
        return float("nan")
    c = np.corrcoef(x, rowvar=False)
    iu = np.triu_indices(m, k=1)
    return float(c[iu].mean())


def ambiguity(member_logits: np.ndarray | torch.Tensor) -> float:
    """Mean member logloss minus the logloss of the mean logit, for x [N, M] (nats, >= 0).

    Needs no labels: the label term of the logloss is linear in the logit and cancels, leaving
    mean_rows[mean_i softplus(z_i) - softplus(mean_i z_i)] (see the module docstring).

    Example::

        ambiguity(np.array([[-1.0, 1.0]]))   # softplus(-1)/2 + softplus(1)/2 - softplus(0) = 0.120...
    """
    x = _matrix(member_logits)
    return float((_softplus(x).mean(axis=1) - _softplus(x.mean(axis=1))).mean())


def prob_ambiguity(member_logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Mean member logloss minus the logloss of the mean probability (nats, >= 0), x [N, M], y [N].

    Example::

        prob_ambiguity(np.array([[-1.0, 1.0]]), np.array([1.0]))   # 0.120...: mean p is 0.5
    """
    x, y = _matrix(member_logits), _flat_float64(labels)
    if y.size != x.shape[0]:
        raise ValueError(f"prob_ambiguity: {x.shape[0]} rows of logits but {y.size} labels")
    # log of the mean probability, stably: log mean_i sigmoid(z_i) = logsumexp_i(-softplus(-z_i)) - log M
    log_p = np.logaddexp.reduce(-_softplus(-x), axis=1) - math.log(x.shape[1])
    log_1mp = np.logaddexp.reduce(-_softplus(x), axis=1) - math.log(x.shape[1])
    mixture = float(-(y * log_p + (1.0 - y) * log_1mp).mean())
    return _logloss(x, y) - mixture


@dataclass
class Diversity:
    """One ensemble's diversity and gains; see the module docstring for each definition."""

    m: int
    logit_correlation: float
    ambiguity: float
    prob_ambiguity: float
    mean_member_logloss: float
    ensemble_logloss: float
    mean_member_auc: float
    best_member_auc: float
    ensemble_auc: float

    @property
    def auc_gain_over_mean(self) -> float:
        return self.ensemble_auc - self.mean_member_auc

    @property
    def auc_gain_over_best(self) -> float:
        return self.ensemble_auc - self.best_member_auc

    def to_dict(self) -> dict[str, float]:
        from dataclasses import asdict

        d: dict[str, float] = asdict(self)
        d.update(auc_gain_over_mean=self.auc_gain_over_mean, auc_gain_over_best=self.auc_gain_over_best)
        return d


def diversity(member_logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> Diversity:
    """Every diversity number of one ensemble, member logits x [N, M] against labels y [N].

    Example::

        diversity(np.stack([z, z], 1), y).ambiguity    # 0.0: identical members
    """
    x, y = _matrix(member_logits), _flat_float64(labels)
    if y.size != x.shape[0]:
        raise ValueError(f"diversity: {x.shape[0]} rows of logits but {y.size} labels")
    aucs = [auc_score(x[:, i], y) for i in range(x.shape[1])]
    merged = x.mean(axis=1)
    return Diversity(
        m=x.shape[1],
        logit_correlation=logit_correlation(x),
        ambiguity=ambiguity(x),
        prob_ambiguity=prob_ambiguity(x, y),
        mean_member_logloss=_logloss(x, y),
        ensemble_logloss=_logloss(merged, y),
        mean_member_auc=float(np.mean(aucs)),
        best_member_auc=float(max(aucs)),
        ensemble_auc=auc_score(merged, y),
    )
