"""Test-time scaling vs parameter scaling at the same inference budget (``python -m recsys.study``).

The project's headline claim is that, for a fixed dense FLOPs-per-example
budget, averaging the logits of M members beats spending the same FLOPs on
one wider or deeper model.  This study tests it end to end with the real
training entry point, so the numbers come from exactly the code users run:

- a base member (``--base``) trained with ``--ens-seeds`` different seeds, each
  alone (K = M, independent groups).  Disjoint subsets of those members form
  the homogeneous ensembles of M = 1, 2, 4 (``--ms``), so every M has
  ``ens_seeds // M`` independent replicas and a spread;
- for each M > 1, single models whose dense FLOPs per example match the
  M-member ensemble within ``--tol`` (``recsys.budget.match_flops``): wider MLPs
  (``mlp_width``), deeper cross networks (``cross_layers``) and wider
  embeddings (``embedding_dim``).  An integer knob rarely lands within 5% on
  its own, so it is set to the largest value under the budget and the MLP
  width closes the rest; the spec in the table says exactly what was trained;
- the paper's rivals at the same budgets (``--knobs all``): Multi-Embed, D-MoE, scaled-up
  Wukong and RankMixer (``recsys.study.rivals``);
- grouped ensembles of the largest M (``--groups-k``: K disjoint groups, each trained on its
  mean logit's loss; K = 1 is the joint one, on by default) and a heterogeneous ensemble
  (``--hetero``, or ``--hetero-all``: the paper's 8 models; trained independently).

Every arm uses the same config seed (data order), early stopping (patience 2, until
convergence) and optimizers; only the member specs differ.  ``--lr-sweep`` trains every run at
each learning rate and reads each arm at its best val AUC (``recsys.study.sweep``); ``--preset
tts4ctr`` trains with the official recipe.  Runs fan out locally or as TorchX jobs
(``--launcher torchx``), and a re-run skips every run done with the same config.  Each run is a TOML config written from
``recsys.config``'s dataclasses and given to ``recsys/train_group.py`` in a subprocess
(1 process, or torchrun with ``--nproc``).  Test AUC / logloss are read back from
``runs/<name>/results.json`` and, for ensembles of a subset of a run's members, from the
member logits in ``runs/<name>/logits_test.pt`` (mean logit, as the evaluator merges).
Checkpoints are deleted after reading unless ``--keep-checkpoints``.

The package follows the study's data flow: ``plan`` (arms, FLOP-matched specs) ->
``configs`` (each run's experiment config) -> ``run`` (training subprocesses or TorchX jobs;
``options`` holds the command line) -> ``score``
(AUC / logloss per replica) and ``cost`` (parameters, FLOPs, latency) -> ``report`` (table,
verdict, plot); ``cli`` ties them together.  Importing it is light (no torch): the heavy
imports happen in the functions that need them.

Example::

    python -m recsys.study --epochs 1 --ens-seeds 4 --seeds 1 --knobs mlp_width --no-joint --no-hetero
"""
from __future__ import annotations

from recsys.study.cli import build_parser, main
from recsys.study.configs import (
    PRESET_RECIPE,
    TrainSettings,
    config_to_toml,
    config_toml,
    experiment_config,
    same_config,
)
from recsys.study.cost import Budget, arm_budget, arm_modules, interleaved_latency_ms, measure_budgets
from recsys.study.plan import (
    ALL_KNOBS,
    BUDGETS,
    DEFAULT_BASE,
    DEFAULT_HETERO,
    DEFAULT_KNOBS,
    EMBEDDING_DIM_MULTIPLE,
    KIND_LABELS,
    TTS_KINDS,
    Arm,
    PlanError,
    RunPlan,
    build_plan,
    match_budget,
    set_fields,
    short_spec,
    spec_field,
    spec_model,
)
from recsys.study.rivals import HETERO_MODELS, RIVALS, hetero_specs, match_rival
from recsys.study.report import Row, build_rows, plot_rows, table_markdown, verdict_lines
from recsys.study.run import (
    ROOT,
    DataPrepFailed,
    Launcher,
    RunFailed,
    dry_run,
    ensure_data,
    launch_command,
    torchx_command,
    train_command,
    train_run,
    train_runs,
)
from recsys.study.sweep import best_lr_arms, expand_lrs, val_auc
from recsys.study.score import LogitsMissing, ResultsMissing, Score, arm_scores, replica_score

__all__ = [
    "ALL_KNOBS",
    "BUDGETS",
    "DEFAULT_BASE",
    "DEFAULT_HETERO",
    "DEFAULT_KNOBS",
    "EMBEDDING_DIM_MULTIPLE",
    "HETERO_MODELS",
    "KIND_LABELS",
    "PRESET_RECIPE",
    "RIVALS",
    "ROOT",
    "TTS_KINDS",
    "Arm",
    "Budget",
    "DataPrepFailed",
    "Launcher",
    "LogitsMissing",
    "PlanError",
    "ResultsMissing",
    "Row",
    "RunFailed",
    "RunPlan",
    "Score",
    "TrainSettings",
    "arm_budget",
    "arm_modules",
    "arm_scores",
    "best_lr_arms",
    "build_parser",
    "build_plan",
    "build_rows",
    "config_to_toml",
    "config_toml",
    "dry_run",
    "ensure_data",
    "expand_lrs",
    "experiment_config",
    "hetero_specs",
    "interleaved_latency_ms",
    "launch_command",
    "main",
    "match_budget",
    "match_rival",
    "measure_budgets",
    "plot_rows",
    "replica_score",
    "same_config",
    "set_fields",
    "short_spec",
    "spec_field",
    "spec_model",
    "table_markdown",
    "torchx_command",
    "train_command",
    "train_run",
    "train_runs",
    "val_auc",
    "verdict_lines",
]
