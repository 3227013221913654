"""Paired AUC tests between two arms of the study on the same test rows (DeLong's test).

What is paired with what: replica r of one arm against replica r of the other, for every
r < min(replicas of both).  Replica 0's test is the one the table and the verdict quote;
the others say whether it repeats ("2 of 2 replica pairs pass").  Why not the replica-mean
logits: averaging the logits of a single model's seeds makes an ensemble of them, so the
single-model arm would no longer be a single model.

"Passes" means both: DeLong's two-sided p < ``ALPHA`` and a gain of at least the paper's 0.1%
AUC bar, ``recsys.eval.report.AUC_GAIN_THRESHOLD`` = 0.001 absolute (the project's one
definition).  For any AUC <= 1 an absolute 0.001 is at least 0.1% relative (0.001 * AUC), so
a gain that passes the absolute bar also clears the relative one; ``rel_diff`` is kept in
the JSON for readers who use the relative form.

Example::

    t = paired_tests(ens_logits, single_logits)   # two ArmLogits on the same rows
    t[0].diff, t[0].p, t[0].passes                # replica 0: AUC(a) - AUC(b), DeLong p
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from recsys.study.score import ArmLogits

#: Significance level of the paired tests.
ALPHA = 0.05


def gain_threshold() -> float:
    """The paper's 0.1% AUC bar, from ``recsys.eval.report`` (one definition in the project)."""
    from recsys.eval.report import AUC_GAIN_THRESHOLD  # lazy: torch; `import recsys.study` stays torch-free

    return AUC_GAIN_THRESHOLD


@dataclass
class PairTest:
    """DeLong's test of AUC(a) = AUC(b) for replica ``replica`` of both arms on the same rows."""

    replica: int
    auc_a: float
    auc_b: float
    diff: float  # auc_a - auc_b
    z: float
    p: float

    @property
    def rel_diff(self) -> float:
        return self.diff / self.auc_b if self.auc_b else float("nan")

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    @property
    def clears_threshold(self) -> bool:
        return self.diff >= gain_threshold()

    @property
    def passes(self) -> bool:
        """A significant gain of a over b that also clears the 0.1% bar."""
        return self.significant and self.clears_threshold

    @property
    def decisive(self) -> bool:
        """Significant and at least the bar apart, in either direction."""
        return self.significant and abs(self.diff) >= gain_threshold()

    def flipped(self) -> PairTest:
        """The same test read as b against a."""
        return PairTest(self.replica, self.auc_b, self.auc_a, -self.diff, -self.z, self.p)

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return {"replica": self.replica, "auc_a": self.auc_a, "auc_b": self.auc_b, "diff": self.diff,
                "rel_diff": self.rel_diff, "z": self.z if math.isfinite(self.z) else None, "p": self.p,
                "significant": self.significant, "clears_threshold": self.clears_threshold, "passes": self.passes}


@dataclass
class Comparison:
    """Arm a against reference arm b (``against`` is b's label): one test per replica pair."""

    against: str
    tests: list[PairTest]

    @property
    def first(self) -> PairTest:
        return self.tests[0]

    def flipped(self, against: str) -> Comparison:
        """The same tests read as b against a (``against`` is now a's label)."""
        return Comparison(against, [t.flipped() for t in self.tests])

    def summary(self) -> str:
        """``"+0.0012, DeLong p 0.003 on replica 0, significant, clears the 0.001 bar (2 of 2 pairs pass)"``."""
        t = self.first
        sig = "significant" if t.significant else "not significant"
        bar = "clears" if t.clears_threshold else "below"
        n_pass = sum(x.passes for x in self.tests)
        return (f"{t.diff:+.4f}, DeLong p {format_p(t.p)} on replica 0: {sig}, {bar} the "
                f"{gain_threshold():g} bar ({n_pass} of {len(self.tests)} replica pairs pass)")

    def to_dict(self) -> dict[str, object]:
        return {"against": self.against, "tests": [t.to_dict() for t in self.tests]}


def format_p(p: float) -> str:
    """A p-value for a table: ``"0.031"``, ``"<0.001"``."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def paired_tests(a: ArmLogits, b: ArmLogits, against: str = "") -> Comparison | None:
    """DeLong on replica r of ``a`` against replica r of ``b``, r < min(len); None when a class
    of the test labels has fewer than 2 rows (DeLong has no variance to estimate).

    Both must hold the same test rows (``recsys.study.score.load_test_logits`` checks that).
    """
    import torch  # lazy: `import recsys.study` stays torch-free (--help)

    from recsys.eval.significance import delong_test

    if not torch.equal(a.labels, b.labels):
        raise ValueError("paired_tests: the two arms hold different test labels")
    pos = int(a.labels.sum())
    if min(pos, a.labels.numel() - pos) < 2:
        return None
    tests = []
    for r in range(min(len(a.replicas), len(b.replicas))):
        d = delong_test(a.merged(r), b.merged(r), a.labels)
        tests.append(PairTest(r, d.auc_a, d.auc_b, d.diff, d.z, d.p))
    return Comparison(against, tests)


def best_within_latency(
    latency: float, candidates: Sequence[tuple[int, float | None, float]]
) -> int | None:
    """The index of the best candidate whose latency is <= ``latency``: the highest mean AUC,
    the lower latency on a tie, then the first; None when none fits.  ``candidates``: (index, latency ms or
    None when not measured, mean AUC).

    Example::

        best_within_latency(2.0, [(0, 1.0, 0.70), (1, 1.9, 0.72), (2, 2.5, 0.80)])   # 1
    """
    fits = [(auc, -lat, -i) for i, lat, auc in candidates if lat is not None and lat <= latency and not math.isnan(auc)]
    return -max(fits)[2] if fits else None
