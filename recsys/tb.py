"""TensorBoard and report output of a training run.

Layout of ``runs/<name>/``::

    events.out.tfevents...      global rank 0: final val/test AUC, logloss, NE and calibration
                                per member, group and ensemble, DeLong's ensemble-vs-best-
                                member AUC gain and p, the AUC-vs-m curve (step = m) and its
                                PNG as an image, total examples/s, hparams
    group<k>/events...          the leader of group k: train loss and examples/s, and the
                                per-epoch val AUC/logloss of its members and its group mean
    results.md / results.json / auc_vs_m.png            test split (recsys.eval.report.write_report)
    val_results.md / val_results.json / val_auc_vs_m.png
    logits_val.pt / logits_test.pt                      {"member_logits": [N, M], "labels": [N]}

Why one writer per group: in the parallel schedule a group's losses live on that
group's ranks only; gathering them to rank 0 every few steps would couple the
groups' loops (and deadlock once one group stops early).

Why no per-epoch ensemble curve: the ensemble's val AUC needs every member's logits
for the same model state, but groups do not reach "epoch e" together.  In parallel,
each group runs its own epochs and early stopping (a per-epoch world collective would
deadlock once one group stops, and would tie every group to the slowest); in sequence,
group 1 has not started when group 0 finishes.  So the per-epoch signal is each
group's own: ``val/auc/group<k>`` (the AUC of the group's mean logit, which is the
ensemble's when K = 1, and the early-stopping signal), next to its members' AUCs.
The ensemble's val and test metrics are logged once, for the restored best members
(``final_val/...``, ``test/...``).

After ``--resume`` the group writers open with ``purge_step`` = checkpoint step + 1:
the steps after the checkpoint are trained again, and TensorBoard drops the killed
run's events for them, so every step appears once.

Tags (``<m>`` = member name such as ``m0_fnn``)::

    train/loss/group<k>, train/examples_per_s/group<k>           (group<k>/)
    val/{auc,logloss,ne,calibration}/{<m>,group<k>}            (group<k>/, per epoch)
    final_val/auc/{<m>,group<k>,ensemble}, final_val/logloss/... (run dir)
    final_val/ne/..., final_val/calibration/...                  (run dir)
    test/auc/{<m>,group<k>,ensemble}, test/logloss/...           (run dir)
    test/ne/..., test/calibration/...                            (run dir)
    {final_val,test}/ensemble_vs_best_member/{auc_diff,delong_p} (run dir)
    test/auc_vs_m, test/logloss_vs_m, val/auc_vs_m               (run dir, step = m)
    test/ne_vs_m, test/calibration_vs_m                          (run dir, step = m)
    train/examples_per_s, train/member_examples_per_s            (run dir, whole ensemble)
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from recsys.config import ExperimentConfig
from recsys.eval.report import EnsembleReport, curve_figure, score, write_report

#: The per-row metrics of every report row (``recsys.eval.metrics.Metrics`` fields), one tag each.
_METRICS = ("auc", "logloss", "ne", "calibration")


class RunLogger:
    """Global rank 0's writer: final metrics, curve, plot, hparams, report files."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.run_dir))

    @staticmethod
    def group_writer(cfg: ExperimentConfig, k: int, purge_step: int | None = None) -> SummaryWriter:
        """Group k's writer.  ``purge_step`` (after a resume: checkpoint step + 1) makes
        TensorBoard drop the killed run's events from that step on, which are replayed."""
        return SummaryWriter(log_dir=str(cfg.run_dir / f"group{k}"), purge_step=purge_step)

    def _log_report(self, prefix: str, report: EnsembleReport) -> None:
        w = self.writer
        rows = [*zip(report.names, report.members), *((f"group{k}", m) for k, m in enumerate(report.group_metrics)),
                ("ensemble", report.ensemble)]
        for name, m in rows:
            for metric in _METRICS:
                w.add_scalar(f"{prefix}/{metric}/{name}", getattr(m, metric), 0)
        if (c := report.ensemble_vs_best_member) is not None:
            w.add_scalar(f"{prefix}/ensemble_vs_best_member/auc_diff", c.diff, 0)
            w.add_scalar(f"{prefix}/ensemble_vs_best_member/delong_p", c.p, 0)

    def final(
        self,
        val: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor],
        examples_per_s: float,  # member-examples/s of the whole ensemble
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Scores the merged [N, M] logits of both splits, writes reports and TensorBoard."""
        cfg, w = self.cfg, self.writer
        names = cfg.member_names
        extra = dict(extra or {})
        val_rep = score(val[0], val[1], names, cfg.groups, extra={"split": "val", **extra})
        test_rep = score(test[0], test[1], names, cfg.groups, extra={"split": "test", **extra})
        write_report(val_rep, self.run_dir, prefix="val_")
        paths = write_report(test_rep, self.run_dir)
        torch.save({"member_logits": val[0], "labels": val[1]}, self.run_dir / "logits_val.pt")
        torch.save({"member_logits": test[0], "labels": test[1]}, self.run_dir / "logits_test.pt")

        self._log_report("final_val", val_rep)
        self._log_report("test", test_rep)
        for i, (mv, mt) in enumerate(zip(val_rep.curve, test_rep.curve)):
            w.add_scalar("val/auc_vs_m", mv.auc, i + 1)
            w.add_scalar("test/auc_vs_m", mt.auc, i + 1)
            w.add_scalar("test/logloss_vs_m", mt.logloss, i + 1)
            w.add_scalar("test/ne_vs_m", mt.ne, i + 1)
            w.add_scalar("test/calibration_vs_m", mt.calibration, i + 1)
        # The figure itself (add_figure renders it with Agg), not the PNG read back; close=False:
        # a bare Figure is not in pyplot's registry, there is nothing to close.
        w.add_figure("test/auc_vs_m_plot", curve_figure(test_rep), 0, close=False)
        w.add_scalar("train/member_examples_per_s", examples_per_s, 0)
        w.add_scalar("train/examples_per_s", examples_per_s / len(names), 0)
        self._log_hparams(
            {
                "hparam/test_auc_ensemble": test_rep.ensemble.auc,
                "hparam/test_logloss_ensemble": test_rep.ensemble.logloss,
                "hparam/val_auc_ensemble": val_rep.ensemble.auc,
            }
        )
        w.flush()
        return {"val": val_rep.to_json(), "test": test_rep.to_json(), "paths": {k: str(v) for k, v in paths.items()}}

    def _log_hparams(self, metrics: dict[str, float]) -> None:
        # add_hparams writes the three hparams summaries (experiment, session start and end)
        # and the metrics as scalars through a second writer in <log_dir>/<run_name>.  Its
        # default run_name (a timestamp) would split one run into two in TensorBoard;
        # run_name "." puts that writer's event file in this run's own directory, so
        # TensorBoard shows hparams and scalars as one run.
        self.writer.flush()
        self.writer.add_hparams(self.cfg.hparams(), metrics, run_name=".")

    def close(self) -> None:
        self.writer.close()
