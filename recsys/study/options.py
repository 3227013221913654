"""The study's command line: its options, the plan they describe, and the training of its runs
(``recsys.study.cli`` then scores, costs and reports them).

Why a module of its own: the options decide everything up to trained runs (arms, recipe,
launcher); the scoring and reporting after them is ``cli``'s, so each side can change alone.

Examples::

    # the default study: base-model knobs, M = 1, 2, 4, every run to convergence (patience 2)
    python -m recsys.study
    # quick smoke run: 1 epoch, fewer replicas, width knob only
    python -m recsys.study --epochs 1 --ens-seeds 4 --seeds 1 --knobs mlp_width --no-joint --no-hetero
    # the paper's study: every arm, the 8-model heterogeneous ensemble, K = 1, 2, 4, each arm at its best lr
    python -m recsys.study --knobs all --hetero-all --hetero-seeds 2 --groups-k 1 2 4 --seeds 3 \\
        --lr-sweep 3e-4 1e-3 3e-3
    # the same with the official TTS4CTR recipe (its batch size, optimizers and lr), in runs of its own
    python -m recsys.study --preset tts4ctr --knobs all --hetero-all --groups-k 1 2 4 --prefix tts4ctr_ \
        --work-dir runs/tts4ctr
    # every run a TorchX job, in parallel on Slurm (print the commands first with --dry-run)
    python -m recsys.study --launcher torchx --scheduler slurm --scheduler-args partition=gpu \\
        --component-args "--gpu 1" --device cuda
    # a bigger run: more data, M up to 8, 2 ranks per run
    python -m recsys.study --data data/criteo --ms 1 2 4 8 --ens-seeds 16 --seeds 3 --nproc 2
    # rebuild the table and the plot from the runs already on disk (done runs are skipped)
    python -m recsys.study
"""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.cli import parser_with_examples
from recsys.study.configs import PRESET_RECIPE, TrainSettings
from recsys.study.plan import ALL_KNOBS, DEFAULT_BASE, DEFAULT_HETERO, DEFAULT_KNOBS, Arm, RunPlan, build_plan, short_spec
from recsys.study.run import LAUNCHERS, ROOT, Launcher, dry_run, recorded_seconds, train_runs

if TYPE_CHECKING:
    from recsys.data.schema import Schema

PROG = "tts_vs_params"  # the prefix of every line the study prints (and the name of its outputs)
# Our recipe, where --preset does not supply one (the preset's recipe fills what is not given).
OUR_RECIPE = {"batch_size": 1024, "dense_lr": 1e-3, "embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.02}
DEMO_DATA = "data/demo/criteo"  # --data's default, in the repository: synthesized when missing
EPOCH_CAP = 100  # "to convergence": early stopping ends every run long before this


class _CwdPath(argparse.Action):
    """Stores a path the user gives as an absolute path, against the directory they ran the
    command from: the study changes into the repository (whose relative defaults, ``runs``,
    ``data/demo/criteo``, stay the repository's), so ``--data mydata`` from another directory
    would otherwise name the repository's ``mydata``.  Defaults are left as they are
    (argparse runs an action only for a given option), so configs of the default paths do
    not change."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, os.path.abspath(str(values)))


def build_parser() -> argparse.ArgumentParser:
    """The study's options (a superset of the old ``python -m recsys.bench.tts_vs_params``'s)."""
    p = parser_with_examples(
        "python -m recsys.study",
        "Ensembles (test-time scaling) vs FLOP-matched wider/deeper single models "
        "(parameter scaling), trained with recsys/train_group.py.",
        "Examples::" + (__doc__ or "Examples::").split("Examples::", 1)[1],
    )
    p.add_argument("--data", default=DEMO_DATA, action=_CwdPath,
                   help="converted dataset dir (created as demo.sh does when it is the default and missing); "
                   "this and the other paths given are relative to where you run from, defaults to the repository")
    p.add_argument("--demo-rows", type=int, default=300_000, help="rows to synthesize when --data is missing")
    p.add_argument("--base", default=DEFAULT_BASE, help="the base member spec (its seed is ignored)")
    p.add_argument("--ms", type=int, nargs="+", default=[1, 2, 4], help="ensemble sizes / FLOP budgets")
    p.add_argument("--ens-seeds", type=int, default=8,
                   help="base members trained (seeds 1..N); ensembles of M use N//M disjoint replicas")
    p.add_argument("--seeds", type=int, default=2, help="seeds per parameter-scaled single model")
    p.add_argument("--knobs", default=",".join(DEFAULT_KNOBS),
                   help=f"parameter-scaling arms, comma-separated: knobs of the base (mlp_width, cross_layers, "
                   f"embedding_dim, layers, ...) and rivals (multiembed, dmoe, wukong, rankmixer); 'all' = "
                   f"{','.join(ALL_KNOBS)}; empty for none")
    p.add_argument("--hetero", default=";".join(DEFAULT_HETERO),
                   help="';'-separated specs added to a base member as a heterogeneous ensemble")
    p.add_argument("--hetero-all", action="store_true",
                   help="the heterogeneous ensemble of the paper's 8 models (fnn, ipnn, deepfm, dcn, dcnv2, finalmlp, "
                   "wukong, rankmixer), sized to the base's embedding dim and MLP (replaces --hetero)")
    p.add_argument("--hetero-seeds", type=int, default=1, help="replicas of the heterogeneous ensemble")
    p.add_argument("--no-hetero", action="store_true", help="skip the heterogeneous ensemble")
    p.add_argument("--groups-k", type=int, nargs="+", default=None,
                   help="grouped ensembles of the largest M: its members in K disjoint groups, each trained on "
                   "its mean logit's loss (K=1 joint, K=M independent); default 1 (the joint one)")
    p.add_argument("--no-joint", action="store_true", help="skip the K=1 joint ensemble (default --groups-k)")
    p.add_argument("--tol", type=float, default=0.05, help="relative FLOP-matching tolerance")
    p.add_argument("--epochs", type=int, default=EPOCH_CAP,
                   help=f"epoch cap (default {EPOCH_CAP}: train until early stopping)")
    p.add_argument("--patience", type=int, default=2, help="early stopping on val AUC (0 = off)")
    p.add_argument("--lr-sweep", type=float, nargs="+", default=None,
                   help="train every arm at each dense lr and keep each arm's best val AUC (\"each arm at its "
                   "best\"); without it every arm uses --dense-lr (\"same recipe\")")
    p.add_argument("--preset", default="", choices=["", "tts4ctr"],
                   help="write preset = NAME into every config: the official recipe for every setting below "
                   "(batch size, optimizers, lrs) not given here; epochs and patience stay the study's")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {OUR_RECIPE['batch_size']} (or the preset's)")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="0 = the whole train split")
    p.add_argument("--dense-lr", type=float, default=None, help=f"default {OUR_RECIPE['dense_lr']} (or the preset's)")
    p.add_argument("--embedding-optimizer", default=None,
                   help=f"default {OUR_RECIPE['embedding_optimizer']} (or the preset's)")
    p.add_argument("--embedding-lr", type=float, default=None,
                   help=f"default {OUR_RECIPE['embedding_lr']} (or the preset's)")
    p.add_argument("--seed", type=int, default=0, help="config seed (data order), the same for every run")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--nproc", type=int, default=1, help="ranks per run (torchrun when > 1); note that with fewer "
                   "ranks than groups, groups train one after another on all ranks with a split batch")
    p.add_argument("--launcher", default="local", choices=list(LAUNCHERS),
                   help="local: runs one after another here; torchx: each run a `torchx run` job, in parallel")
    p.add_argument("--scheduler", default="local_cwd", help="torchx scheduler (local_cwd, slurm, kubernetes, ...)")
    p.add_argument("--scheduler-args", default="", help="torchx -cfg, e.g. partition=gpu,time=2:00:00")
    p.add_argument("--component-args", default="",
                   help="extra grouped_train args, e.g. \"--image registry/recsys:1 --gpu 1 --cpu 8\"")
    p.add_argument("--parallel", type=int, default=0, help="torchx jobs at once (0 = all)")
    p.add_argument("--dry-run", action="store_true", help="write the configs, print the launch commands, exit")
    p.add_argument("--prefix", default="tts_", help="run-name prefix (runs/<prefix>indep, ...)")
    p.add_argument("--log-dir", default="runs", action=_CwdPath)
    p.add_argument("--checkpoint-dir", default="checkpoints", action=_CwdPath)
    p.add_argument("--work-dir", default="runs/tts_vs_params", action=_CwdPath, help="configs, logs, table and JSON go here")
    p.add_argument("--plot", default="docs/tts_vs_params.png", action=_CwdPath)
    p.add_argument("--latency-batch", type=int, default=1024, help="0 skips latency")
    p.add_argument("--latency-repeats", type=int, default=50, help="timed rounds over all arms (round-robin; each arm's median is kept)")
    p.add_argument("--latency-threads", type=int, default=1,
                   help="torch threads while timing (1 = least disturbed by the other jobs on a shared machine)")
    p.add_argument("--retrain", action="store_true", help="train every run again, even those done with the same config")
    p.add_argument("--reuse", action="store_true", help="(the default now: done runs are skipped; kept for old scripts)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: score, time and plot the runs on disk as they are (no config or data check; "
                        "a run without results.json is an error), e.g. to re-measure latency on a quiet machine")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--plan-only", action="store_true", help="print the plan (specs, FLOPs) and exit")
    return p


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """What every run shares, from the command line: a recipe setting not given is ours, or,
    with ``--preset``, left to the preset."""
    given = {k: getattr(args, k) for k in PRESET_RECIPE if getattr(args, k) is not None}
    if args.preset and "embedding_optimizer" in given and "embedding_lr" not in given:
        given.update(_own_embedding_lr(args.preset, given["embedding_optimizer"]))
    recipe = given if args.preset else {**OUR_RECIPE, **given}
    return TrainSettings(
        data_dir=str(args.data), seed=args.seed, device=args.device, epochs=args.epochs, patience=args.patience,
        max_steps_per_epoch=args.max_steps_per_epoch, log_dir=args.log_dir, checkpoint_dir=args.checkpoint_dir,
        preset=args.preset, from_preset=tuple(k for k in PRESET_RECIPE if k not in recipe), **recipe,
    )


def _own_embedding_lr(preset: str, name: str) -> dict[str, float]:
    """``{"embedding_lr": lr}`` when ``--embedding-optimizer`` is not the preset's: the preset's
    lr is its optimizer's (tts4ctr: Adam's 1e-4, 200x below row-wise Adagrad's 0.02), so the
    named optimizer's own default is written, and a swept lr (one lr for all under the preset)
    does not replace it either.  Empty for the preset's own optimizer, or a name without a
    default (``auto``: the config resolves it)."""
    from recsys.config.preset import RECIPES
    from recsys.config.schema import AUTO_EMBEDDING_LR

    if name == RECIPES[preset].get("embedding_optimizer", {}).get("name") or name not in AUTO_EMBEDDING_LR:
        return {}
    return {"embedding_lr": AUTO_EMBEDDING_LR[name]}


def launcher_from_args(args: argparse.Namespace) -> Launcher:
    return Launcher(args.launcher, args.nproc, args.scheduler, args.scheduler_args, args.component_args, args.parallel)


def knobs_from_arg(text: str) -> list[str]:
    """``--knobs``: comma-separated, ``all`` for every arm of ``ALL_KNOBS``, each kept once.

    Example: ``knobs_from_arg("mlp_width,all")[:2] == ["mlp_width", "cross_layers"]``."""
    names = [k.strip() for k in text.split(",") if k.strip()]
    return list(dict.fromkeys(k2 for k in names for k2 in (ALL_KNOBS if k == "all" else (k,))))


def plan_from_args(args: argparse.Namespace, schema: Schema) -> tuple[list[RunPlan], list[Arm], list[str]]:
    """``build_plan`` with the command line's arms, then every run once per ``--lr-sweep`` lr."""
    from recsys.study.rivals import hetero_specs
    from recsys.study.sweep import expand_lrs

    knobs = knobs_from_arg(args.knobs)
    if args.no_hetero:
        hetero: list[str] = []
    elif args.hetero_all:
        hetero = hetero_specs(args.base)
    else:
        hetero = [s.strip() for s in args.hetero.split(";") if s.strip()]
    groups_k = [] if args.no_joint and args.groups_k is None else args.groups_k
    runs, arms, notes = build_plan(args.base, schema, args.ms, args.ens_seeds, args.seeds, knobs, hetero,
                                   not args.no_joint, args.prefix, args.tol, groups_k=groups_k,
                                   hetero_seeds=args.hetero_seeds, preset=args.preset)
    runs, arms = expand_lrs(runs, arms, args.lr_sweep or [])
    return runs, arms, notes


def recipe_summary(settings: TrainSettings, lrs: list[float] | None = None) -> str:
    """The recipe every run shares, in words: e.g. ``epochs <= 100, patience 2, batch 1024, dense lr
    0.001, rowwise_adagrad lr 0.02``; what a preset supplies is named as the preset's."""
    dense = f"{', '.join(f'{x:g}' for x in lrs)} (best per arm)" if lrs else f"{settings.dense_lr:g}"
    own = {"batch_size": f"batch {settings.batch_size}", "dense_lr": f"dense lr {dense}",
           "embedding_optimizer": f"embedding optimizer {settings.embedding_optimizer}",
           "embedding_lr": f"embedding lr {settings.embedding_lr:g}"}
    parts = [f"epochs <= {settings.epochs}", f"patience {settings.patience}"]
    parts += [v for k, v in own.items() if k not in settings.from_preset or (k == "dense_lr" and lrs)]
    if settings.preset:
        theirs = ", ".join(k.replace("_", " ") for k in settings.from_preset)
        parts.append(f"preset {settings.preset}" + (f" (its {theirs})" if theirs else ""))
    return ", ".join(parts)


def print_plan(runs: list[RunPlan], arms: list[Arm], notes: list[str], settings: TrainSettings) -> None:
    """The arms (one line each; with an lr sweep, once per lr), the runs and the notes."""
    lrs = sorted({a.lr for a in arms if a.lr is not None})
    print(f"{PROG}: plan ({recipe_summary(settings, lrs)})")
    for a in arms:
        lr = f", lr {a.lr:g}" if a.lr is not None else ""
        matched = f", {a.budget}-matched" if a.target_flops else ""
        print(f"  {a.budget_m}x {a.label:38s} {short_spec(a.specs)}  ({len(a.replicas)} replicas, run {a.run}"
              f"{lr}{matched})")
    for r in runs:
        print(f"  run {r.name}: {len(r.members)} members in {len(r.groups)} groups")
    for n in notes:
        print(f"  note: {n}")


def train_study(args: argparse.Namespace, runs: list[RunPlan], arms: list[Arm], settings: TrainSettings,
                work: Path) -> tuple[dict[str, float], list[Arm], list[str]]:
    """Trains the runs not done yet; returns seconds per run, the arms to score (with an lr
    sweep: each at its best val AUC) and one line per swept arm saying which lr it got."""
    from recsys.study.sweep import best_lr_arms

    if args.report_only:
        seconds = {r.name: recorded_seconds(r, settings) for r in runs}
    else:
        seconds = train_runs(runs, settings, work, launcher_from_args(args), args.retrain, args.keep_checkpoints)
    best, lines = best_lr_arms(arms, Path(args.log_dir))
    return seconds, best, lines


def print_dry_run(args: argparse.Namespace, runs: list[RunPlan], settings: TrainSettings) -> None:
    """The command of every run still to train (its config written to ``--work-dir``), each
    prefixed with ``cd <repository> &&`` and with absolute paths, so it runs from anywhere."""
    for cmd in dry_run(runs, settings, Path(args.work_dir), launcher_from_args(args), args.retrain):
        print(f"cd {shlex.quote(str(ROOT))} && {shlex.join(cmd)}")
