"""Test AUC / logloss of each arm's replicas, read back from the runs ``train_group.py`` wrote.

A single member, a whole group or a whole run is read from ``runs/<name>/results.json``;
any other subset of a run's members (the M-member ensembles cut out of independently trained
members) is merged from ``runs/<name>/logits_test.pt`` (member logits [N, M], labels [N]) as
the evaluator merges: the arithmetic mean of the logits.

Example::

    scores = arm_scores(arm, Path("runs"))    # one Score per replica
    [s.auc for s in scores]                   # e.g. [0.7906, 0.7903]
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
    """A run's results.json is not there (it was not trained, or ``--reuse`` found none)."""


class LogitsMissing(UserError, ValueError):
    """A replica needs a merge of member logits, and the run saved none."""


@dataclass
class Score:
    auc: float
    logloss: float


def _load_logits(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    path = run_dir / "logits_test.pt"
    if not path.is_file():
        return None
    import torch  # lazy: `import recsys.study` stays torch-free (--help)

    d = torch.load(path, map_location="cpu")
    return d["member_logits"], d["labels"]  # [N, M], [N]


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
        m = results["members"][rep[0]]
        return Score(m["auc"], m["logloss"])
    for g in results.get("groups", []):
        if sorted(g["members"]) == rep:
            return Score(g["auc"], g["logloss"])
    if rep == list(range(len(results["members"]))):
        return Score(results["ensemble"]["auc"], results["ensemble"]["logloss"])
    if logits is None:
        raise LogitsMissing(f"members {rep} are no group of the run, and its logits_test.pt is missing")
    from recsys.eval.metrics import auc_score, logloss_score  # lazy: numpy; `import recsys.study` stays light

    member_logits, labels = logits
    merged = member_logits[:, rep].double().mean(dim=1)
    return Score(auc_score(merged, labels), logloss_score(merged, labels))


def arm_scores(arm: Arm, log_dir: Path) -> list[Score]:
    """One ``Score`` per replica of ``arm``, from ``log_dir/<arm.run>``; the logits file is read
    only when some replica is not a group of the run."""
    run_dir = log_dir / arm.run
    path = run_dir / "results.json"
    if not path.is_file():
        raise ResultsMissing(f"{path}: missing (train the run first, or drop --reuse)")
    results = json.loads(path.read_text())
    need_logits = any(len(r) > 1 and not any(sorted(g["members"]) == sorted(r) for g in results.get("groups", []))
                      for r in arm.replicas)
    logits = _load_logits(run_dir) if need_logits else None
    return [replica_score(results, r, logits) for r in arm.replicas]
