"""Test AUC / logloss / NE / calibration of each arm's replicas, read back from the runs
``train_group.py`` wrote, and every replica's member test logits for the paired tests and the
diversity numbers.

A single member, a whole group or a whole run is read from ``runs/<name>/results.json``;
any other subset of a run's members (the M-member ensembles cut out of independently trained
members) is merged from ``runs/<name>/logits_test.pt`` (member logits [N, M], labels [N]) as
the evaluator merges: the arithmetic mean of the logits.

Why ``load_test_logits`` checks the labels: a paired test (DeLong) is only valid when both arms
scored the same rows in the same order.  Every run of a study reads the same data dir and
test split, so their label vectors must be equal; when they are not (a run trained on other
data was kept, e.g. by hand) the study refuses with one line instead of pairing unrelated rows.

Example::

    scores = arm_scores(arm, Path("runs"))    # one Score per replica
    [s.auc for s in scores]                   # e.g. [0.7906, 0.7903]
    logits = load_test_logits(arms, Path("runs"))  # one ArmLogits (or None) per arm
    logits[0].merged(0)                       # replica 0's ensemble logit [N]
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from recsys.errors import UserError
from recsys.study.plan import Arm

if TYPE_CHECKING:
    import torch


class ResultsMissing(UserError, FileNotFoundError):
    """A run's results.json is not there (it was not trained, or was set aside)."""


class LogitsMissing(UserError, ValueError):
    """A replica needs a merge of member logits, and the run saved none."""


class TestRowsDiffer(UserError, ValueError):
    """Two runs of the study were scored on different test rows (their labels differ)."""

    __test__ = False  # not a pytest class, despite the name


@dataclass
class Score:
    """One replica's test metrics; NE and calibration are NaN when read from a results.json
    written before they existed."""

    auc: float
    logloss: float
    ne: float = float("nan")
    calibration: float = float("nan")

    @classmethod
    def of_json(cls, d: dict[str, Any]) -> Score:
        """From a results.json entry (null, as NaN is written there, reads as NaN)."""
        get = lambda k: float("nan") if d.get(k) is None else float(d[k])  # noqa: E731
        return cls(get("auc"), get("logloss"), get("ne"), get("calibration"))


@dataclass
class ArmLogits:
    """The test labels [N] and, per replica, its members' test logits [N, m] (float32, CPU)."""

    labels: torch.Tensor
    replicas: list[torch.Tensor]

    def merged(self, replica: int = 0) -> torch.Tensor:
        """Replica ``replica``'s ensemble logit [N]: the mean of its member logits, in float64."""
        return self.replicas[replica].double().mean(dim=1)


# What train_group.py writes per split: the scores, and the member logits [N, M] with labels [N].
RESULTS_FILES = {"test": "results.json", "val": "val_results.json"}


def _load_logits(run_dir: Path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor] | None:
    path = run_dir / f"logits_{split}.pt"
    if not path.is_file():
        return None
    import torch  # lazy: `import recsys.study` stays torch-free (--help)

    d = torch.load(path, map_location="cpu")
    return d["member_logits"], d["labels"]  # [N, M], [N]


# run name -> its (member logits [N, M], labels [N]) or None, shared by ``arm_scores`` and
# ``load_test_logits`` so each run's logits_test.pt (hundreds of MB on a real test day) is read once
LogitsCache = dict[str, "tuple[torch.Tensor, torch.Tensor] | None"]


def _run_logits(log_dir: Path, run: str, cache: LogitsCache | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    if cache is None:
        return _load_logits(log_dir / run)
    if run not in cache:
        cache[run] = _load_logits(log_dir / run)
    return cache[run]


def replica_score(
    results: dict[str, Any], replica: Sequence[int], logits: tuple[torch.Tensor, torch.Tensor] | None
) -> Score:
    """Test AUC / logloss of the mean logit of ``replica``'s members in one run.

    ``results`` is the run's parsed results.json.  A single member, a whole group, or the
    whole run is read from it; any other subset is merged from the saved member logits, as
    the evaluator merges (arithmetic mean of logits).
    """
    rep = sorted(replica)
    if len(rep) == 1:
        return Score.of_json(results["members"][rep[0]])
    for g in results.get("groups", []):
        if sorted(g["members"]) == rep:
            return Score.of_json(g)
    if rep == list(range(len(results["members"]))):
        return Score.of_json(results["ensemble"])
    if logits is None:
        raise LogitsMissing(f"members {rep} are no group of the run, and its logits_test.pt is missing")
    from recsys.eval.metrics import Metrics  # lazy: numpy; `import recsys.study` stays light

    member_logits, labels = logits
    x = Metrics.of(member_logits[:, rep].double().mean(dim=1), labels)
    return Score(x.auc, x.logloss, x.ne, x.calibration)


def arm_scores(arm: Arm, log_dir: Path, cache: LogitsCache | None = None, split: str = "test") -> list[Score]:
    """One ``Score`` per replica of ``arm`` on ``split`` (test, or val for the lr sweep), from
    ``log_dir/<arm.run>``; the logits file is read only when some replica is not a group of the
    run (once per run with a shared ``cache``, which holds test logits only)."""
    run_dir = log_dir / arm.run
    path = run_dir / RESULTS_FILES[split]
    if not path.is_file():
        raise ResultsMissing(f"{path}: missing (train the run first: run the study without --plan-only / --dry-run)")
    results = json.loads(path.read_text())
    need_logits = any(len(r) > 1 and not any(sorted(g["members"]) == sorted(r) for g in results.get("groups", []))
                      for r in arm.replicas)
    logits = None
    if need_logits:
        logits = _run_logits(log_dir, arm.run, cache) if split == "test" else _load_logits(run_dir, split)
        if logits is None:
            raise LogitsMissing(f"{arm.run}: a replica is no group of the run, and its logits_{split}.pt is missing")
    return [replica_score(results, r, logits) for r in arm.replicas]


def _label_mismatch(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """Why label vectors a [N] and b [N'] are not the same rows, or None when they are equal."""
    if a.numel() != b.numel():
        return f"{a.numel()} vs {b.numel()} test rows"
    differ = int((a.reshape(-1).double() != b.reshape(-1).double()).sum())
    return f"labels differ at {differ} of {a.numel()} rows" if differ else None


def load_test_logits(arms: Sequence[Arm], log_dir: Path, cache: LogitsCache | None = None) -> list[ArmLogits | None]:
    """Each arm's ``ArmLogits`` (None when its run saved no logits_test.pt), each run read once
    (and not again when ``cache`` already holds it from ``arm_scores``).

    Raises ``TestRowsDiffer`` when two runs' test labels differ (count or values): a paired
    test needs the same rows in the same order in every arm.
    """
    loaded: LogitsCache = {} if cache is None else cache
    first: tuple[str, torch.Tensor] | None = None
    for run in dict.fromkeys(a.run for a in arms):
        got = _run_logits(log_dir, run, loaded)
        if got is None:
            continue
        if first is None:
            first = (run, got[1])
        elif (why := _label_mismatch(first[1], got[1])) is not None:
            raise TestRowsDiffer(
                f"runs {first[0]} and {run} were scored on different test rows ({why}); paired tests need "
                f"one data dir and split for every run: train them again with --retrain")
    out: list[ArmLogits | None] = []
    for arm in arms:
        got = loaded[arm.run]
        out.append(None if got is None else ArmLogits(got[1], [got[0][:, sorted(r)] for r in arm.replicas]))
    return out
