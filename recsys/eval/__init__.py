"""Evaluation, one module per stage of the data flow:

- ``metrics``: exact AUC (tie-correct), logloss, normalized entropy and calibration; numpy at import,
  no torch or torchrec
- ``significance``: DeLong's test (fast midrank form) and a stratified paired bootstrap for two AUCs
  on the same rows; numpy at import
- ``gather``: the collectives that assemble per-rank row blocks of member logits into [N, M]
- ``runner``: driving a (DMP-sharded) group over this rank's eval rows (``evaluate_split``)
- ``report``: ``score()`` of [N, M] logits, results.json / results.md, the AUC-vs-m plot
- ``cli``: ``python -m recsys.eval`` on saved checkpoints

This ``__init__`` imports nothing, so that ``recsys.eval.metrics`` stays as light as it is
(the data generator uses it without loading torch); import from the submodules.

Example::

    from recsys.eval.metrics import auc_score
    from recsys.eval.report import score, write_report
"""
