"""Deprecated: evaluation moved to the package ``recsys.eval``; this module re-exports its names.

``python -m recsys.evaluate`` prints one deprecation line and runs ``python -m recsys.eval``.

Example::

    from recsys.eval.report import score        # instead of: from recsys.evaluate import score
"""
from __future__ import annotations

from recsys.cli import warn_moved

warn_moved("recsys.evaluate", "recsys.eval", __name__)

import sys

from recsys.eval.cli import main
from recsys.eval.gather import assemble_member_logits, gather_rows
from recsys.eval.metrics import Metrics, auc_score, logloss_score
from recsys.eval.report import EnsembleReport, curve_figure, plot_curve, report_markdown, score, write_report
from recsys.eval.runner import EvalResult, evaluate_batches, evaluate_split

__all__ = [
    "EnsembleReport", "EvalResult", "Metrics", "assemble_member_logits", "auc_score", "curve_figure",
    "evaluate_batches", "evaluate_split", "gather_rows", "logloss_score", "main", "plot_curve",
    "report_markdown", "score", "write_report",
]

DEPRECATION = "python -m recsys.evaluate is deprecated; use python -m recsys.eval (same options)"

if __name__ == "__main__":
    print(DEPRECATION, file=sys.stderr, flush=True)
    sys.exit(main())
