"""DeLong's test and the paired bootstrap (recsys.eval.significance)."""
from __future__ import annotations

import numpy as np
import pytest

from recsys.eval.metrics import auc_score
from recsys.eval.significance import delong_covariance, delong_test, paired_bootstrap


def _data(n: int, seed: int, gap: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels [n] and two correlated score columns [n]; b is a's noisier copy (gap = extra noise)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float64)
    signal = y + rng.normal(size=n)
    return y, signal + 0.3 * rng.normal(size=n), signal + (0.3 + gap) * rng.normal(size=n)


def _brute_force_cov(cols: list[np.ndarray], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong (1988) from the O(m n) pair table psi(x_i, y_j) = 1, 1/2, 0 for >, =, <."""
    v10, v01 = [], []
    for s in cols:
        psi = np.sign(s[y == 1][:, None] - s[y == 0][None, :]) * 0.5 + 0.5  # [m, n]
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = len(v10[0]), len(v01[0])
    return np.array([v.mean() for v in v10]), np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n


def test_delong_identical_scores():
    y, a, _ = _data(500, 0)
    r = delong_test(a, a, y)
    assert r.diff == 0.0 and r.p == 1.0 and r.z == 0.0
    assert r.auc_a == pytest.approx(auc_score(a, y), abs=1e-12)


def test_delong_clearly_different():
    y, a, _ = _data(5000, 1)
    r = delong_test(a, np.random.default_rng(9).normal(size=a.size), y)  # a vs noise
    assert r.diff > 0.2 and r.z > 0 and r.p < 1e-6
    assert delong_test(np.random.default_rng(9).normal(size=a.size), a, y).z < 0


def test_delong_matches_brute_force_with_ties():
    rng = np.random.default_rng(3)
    y = (rng.random(60) < 0.4).astype(np.float64)
    a = np.round(y + rng.normal(size=60), 1)  # rounded: ties within and across classes
    b = np.round(a + rng.normal(size=60), 0)
    c = rng.normal(size=60)
    aucs, cov = delong_covariance([a, b, c], y)
    want_aucs, want_cov = _brute_force_cov([a, b, c], y)
    np.testing.assert_allclose(aucs, want_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, want_cov, rtol=0, atol=1e-10)
    for s, auc in zip((a, b, c), aucs):
        assert auc == pytest.approx(auc_score(s, y), abs=1e-12)
    r = delong_test(a, b, y)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert r.z == pytest.approx(r.diff / np.sqrt(var), rel=1e-12)


def test_bootstrap_agrees_with_delong():
    y, a, b = _data(1500, 4, gap=0.25)
    d = delong_test(a, b, y)
    assert 1e-4 < d.p < 0.5  # a medium example: neither trivially 0 nor 1
    bs = paired_bootstrap(a, b, y, num_resamples=800, seed=0)
    assert bs.diff == pytest.approx(d.diff, abs=1e-12)
    assert bs.ci[0] < d.diff < bs.ci[1]
    assert abs(np.log10(bs.p) - np.log10(d.p)) < 0.5  # within ~3x of each other
    assert paired_bootstrap(a, b, y, num_resamples=800, seed=0) == bs  # seeded


def test_bad_input():
    with pytest.raises(ValueError, match="0 or 1"):
        delong_test(np.zeros(4), np.zeros(4), np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="at least 2 positives"):
        delong_test(np.zeros(4), np.zeros(4), np.array([0, 0, 0, 1]))
    with pytest.raises(ValueError, match="3 scores but 4 labels"):
        delong_test(np.zeros(3), np.zeros(3), np.array([0, 0, 1, 1]))
