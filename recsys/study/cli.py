"""``python -m recsys.study``: train every arm of the study, score and cost it, and write the
table (``<work-dir>/tts_vs_params.md``), the JSON and the plot.

Exit status: 0; 2 after one ``tts_vs_params: error: ...`` line for a user error (a bad
option, schema or spec, a knob that cannot match, the demo data failing to build); 1 when a
training run fails (with the last lines of its log) or its results cannot be read.

Examples::

    # the committed experiment (docs/tts_vs_params.md): ~13 min on 2 idle CPU cores, ~20 min when shared
    python -m recsys.study
    # quick smoke run: 1 epoch, fewer replicas, width knob only
    python -m recsys.study --epochs 1 --ens-seeds 4 --seeds 1 --knobs mlp_width --no-joint --no-hetero
    # a bigger run: more data, more epochs, M up to 8, 2 ranks per run
    python -m recsys.study --data data/criteo --epochs 5 --ms 1 2 4 8 --ens-seeds 16 --seeds 3 --nproc 2
    # rebuild the table and the plot from the runs already on disk (no training)
    python -m recsys.study --reuse
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from recsys.cli import parser_with_examples, run_main
from recsys.data.schema import Schema
from recsys.study.configs import TrainSettings
from recsys.study.cost import measure_budgets
from recsys.study.plan import DEFAULT_BASE, DEFAULT_HETERO, DEFAULT_KNOBS, build_plan, short_spec
from recsys.study.paired import ALPHA, gain_threshold
from recsys.study.report import (
    build_rows,
    latency_verdict_lines,
    plot_diversity,
    plot_rows,
    table_markdown,
    verdict_lines,
)
from recsys.study.run import ROOT, ensure_data, train_run
from recsys.study.score import arm_scores, load_test_logits

PROG = "tts_vs_params"  # the prefix of every line the study prints (and the name of its outputs)


def build_parser() -> argparse.ArgumentParser:
    """The study's options (the same as the old ``python -m recsys.bench.tts_vs_params``)."""
    p = parser_with_examples(
        "python -m recsys.study",
        "Ensembles (test-time scaling) vs FLOP-matched wider/deeper single models "
        "(parameter scaling), trained with recsys/train_group.py.",
        "Examples::" + (__doc__ or "Examples::").split("Examples::", 1)[1],
    )
    p.add_argument("--data", default="data/demo/criteo", help="converted dataset dir (created as demo.sh does "
                   "when it is the default and missing)")
    p.add_argument("--demo-rows", type=int, default=300_000, help="rows to synthesize when --data is missing")
    p.add_argument("--base", default=DEFAULT_BASE, help="the base member spec (its seed is ignored)")
    p.add_argument("--ms", type=int, nargs="+", default=[1, 2, 4], help="ensemble sizes / FLOP budgets")
    p.add_argument("--ens-seeds", type=int, default=8,
                   help="base members trained (seeds 1..N); ensembles of M use N//M disjoint replicas")
    p.add_argument("--seeds", type=int, default=2, help="seeds per parameter-scaled single model")
    p.add_argument("--knobs", default=",".join(DEFAULT_KNOBS),
                   help="parameter-scaling knobs, comma-separated (mlp_width, cross_layers, embedding_dim, "
                   "layers, ...); empty for none")
    p.add_argument("--hetero", default=";".join(DEFAULT_HETERO),
                   help="';'-separated specs added to base seed 1 as a heterogeneous ensemble")
    p.add_argument("--no-hetero", action="store_true", help="skip the heterogeneous ensemble")
    p.add_argument("--no-joint", action="store_true", help="skip the K=1 joint ensemble of the largest M")
    p.add_argument("--tol", type=float, default=0.05, help="relative FLOP-matching tolerance")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--patience", type=int, default=1, help="early stopping on val AUC (0 = off)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="0 = the whole train split")
    p.add_argument("--dense-lr", type=float, default=1e-3)
    p.add_argument("--embedding-optimizer", default="rowwise_adagrad")
    p.add_argument("--embedding-lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0, help="config seed (data order), the same for every run")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--nproc", type=int, default=1, help="ranks per run (torchrun when > 1); note that with fewer "
                   "ranks than groups, groups train one after another on all ranks with a split batch")
    p.add_argument("--prefix", default="tts_", help="run-name prefix (runs/<prefix>indep, ...)")
    p.add_argument("--log-dir", default="runs")
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.add_argument("--work-dir", default="runs/tts_vs_params", help="configs, logs, table and JSON go here")
    p.add_argument("--plot", default="docs/tts_vs_params.png")
    p.add_argument("--latency-batch", type=int, default=1024, help="0 skips latency")
    p.add_argument("--latency-repeats", type=int, default=50, help="timed rounds over all arms (round-robin; each arm's median is kept)")
    p.add_argument("--latency-threads", type=int, default=1,
                   help="torch threads while timing (1 = least disturbed by the other jobs on a shared machine)")
    p.add_argument("--reuse", action="store_true", help="skip runs whose results exist with the same config")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--plan-only", action="store_true", help="print the plan (specs, FLOPs) and exit")
    return p


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """What every run shares, from the command line."""
    return TrainSettings(
        data_dir=str(args.data), seed=args.seed, device=args.device, epochs=args.epochs, patience=args.patience,
        batch_size=args.batch_size, max_steps_per_epoch=args.max_steps_per_epoch, dense_lr=args.dense_lr,
        embedding_optimizer=args.embedding_optimizer, embedding_lr=args.embedding_lr,
        log_dir=args.log_dir, checkpoint_dir=args.checkpoint_dir,
    )


def _study(args: argparse.Namespace) -> int:
    os.chdir(ROOT)  # relative paths (data, runs, the plot) are the repository's, as train_group.py's are
    data = Path(args.data)
    if args.data == "data/demo/criteo":
        ensure_data(data, args.demo_rows)
    schema = Schema.load(data)
    knobs = [k.strip() for k in args.knobs.split(",") if k.strip()]
    hetero = [] if args.no_hetero else [s.strip() for s in args.hetero.split(";") if s.strip()]
    runs, arms, notes = build_plan(args.base, schema, args.ms, args.ens_seeds, args.seeds, knobs, hetero,
                                   not args.no_joint, args.prefix, args.tol)
    settings = settings_from_args(args)
    print(f"{PROG}: plan")
    for a in arms:
        print(f"  {a.budget_m}x {a.label:36s} {short_spec(a.specs)}  ({len(a.replicas)} replicas, run {a.run})")
    for n in notes:
        print(f"  note: {n}")
    if args.plan_only:
        return 0

    from tqdm import tqdm  # lazy: only a real run shows progress; --help stays fast


    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    try:
        for run in tqdm(runs, desc="training runs", unit="run"):
            try:
                seconds[run.name] = train_run(run, settings, work, args.nproc, args.reuse)
            finally:
                if not args.keep_checkpoints:
                    shutil.rmtree(Path(args.checkpoint_dir) / run.name, ignore_errors=True)
        scores = [arm_scores(a, Path(args.log_dir)) for a in arms]
    except (RuntimeError, FileNotFoundError, ValueError) as e:  # a failed run keeps its log's tail: not one line
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1

    logits = load_test_logits(arms, Path(args.log_dir))  # refuses runs scored on different test rows
    budgets = measure_budgets(arms, schema, args.latency_batch, args.latency_repeats, args.latency_threads)
    rows = build_rows(arms, scores, budgets, logits)
    table = table_markdown(rows)
    verdict = verdict_lines(rows) + latency_verdict_lines(rows)
    total = time.perf_counter() - start
    header = (f"data {data} ({schema.dataset}), epochs {args.epochs}, patience {args.patience}, batch "
              f"{args.batch_size}, config seed {args.seed}, latency at batch {args.latency_batch} on "
              f"{args.latency_threads} thread(s); training {sum(seconds.values()):.0f} s, total {total:.0f} s")
    (work / "tts_vs_params.md").write_text(f"{header}\n\n{table}\n\n"
                                          + "\n".join(f"- {v}" for v in verdict + notes) + "\n")
    (work / "tts_vs_params.json").write_text(json.dumps(
        {"settings": dataclasses.asdict(settings), "base": args.base, "run_seconds": seconds, "notes": notes,
         "significance": {"test": "DeLong, paired, replica r against replica r (replica 0 quoted)",
                          "alpha": ALPHA, "auc_gain_threshold": gain_threshold()},
         "rows": [r.to_dict() for r in rows]}, indent=2))
    plot_rows(rows, Path(args.plot), f"{schema.dataset}: ensemble vs FLOP-matched single models")
    div_plot = Path(args.plot).with_name(Path(args.plot).stem + "_diversity.png")
    wrote = [str(work / "tts_vs_params.md"), str(work / "tts_vs_params.json"), str(args.plot)]
    if plot_diversity(rows, div_plot, f"{schema.dataset}: ensemble AUC gain vs member diversity"):
        wrote.append(str(div_plot))
    print(header)
    print()
    print(table)
    print()
    print("\n".join(verdict + notes))
    print(f"\n{PROG}: wrote {', '.join(wrote)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the study for the command line ``argv``; returns the exit status (see above)."""
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _study(args))
