"""``python -m recsys.study``: train every arm of the study, score and cost it, and write the
table (``<work-dir>/tts_vs_params.md``), the JSON and the plot.

Exit status: 0; 2 after one ``tts_vs_params: error: ...`` line for a user error (a bad
option, schema or spec, a knob that cannot match, the demo data failing to build); 1 when a
training run fails (with the last lines of its log) or its results cannot be read.

Examples: ``python -m recsys.study --help`` (``recsys.study.options``, which holds the options).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from recsys.cli import run_main
from recsys.data.schema import Schema
from recsys.study.cost import measure_budgets
from recsys.study.options import (
    DEMO_DATA,
    PROG,
    build_parser,
    plan_from_args,
    print_dry_run,
    print_plan,
    recipe_summary,
    settings_from_args,
    train_study,
)
from recsys.study.paired import ALPHA, gain_threshold
from recsys.study.report import (
    build_rows,
    latency_verdict_lines,
    plot_diversity,
    plot_rows,
    table_markdown,
    verdict_lines,
)
from recsys.study.run import ROOT, ensure_data
from recsys.study.score import LogitsCache, arm_scores, load_test_logits


def _study(args: argparse.Namespace) -> int:
    # The default paths (data, runs, the plot) are the repository's, as train_group.py's are;
    # the paths the user gave are absolute already (``options._CwdPath``, at parse time).
    os.chdir(ROOT)
    data = Path(args.data)
    if data.resolve() == (ROOT / DEMO_DATA).resolve():
        ensure_data(data, args.demo_rows)
    schema = Schema.load(data)
    settings = settings_from_args(args)
    runs, arms, notes = plan_from_args(args, schema)
    print_plan(runs, arms, notes, settings)
    if args.plan_only:
        return 0
    if args.dry_run:
        print_dry_run(args, runs, settings)
        return 0

    work = Path(args.work_dir)
    start = time.perf_counter()
    try:
        seconds, arms, lr_picks = train_study(args, runs, arms, settings, work)
        notes += lr_picks
        cache: LogitsCache = {}  # each run's test logits read once, for the scores and the paired tests
        scores = [arm_scores(a, Path(args.log_dir), cache) for a in arms]
    except (RuntimeError, FileNotFoundError, ValueError) as e:  # a failed run keeps its log's tail: not one line
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1

    logits = load_test_logits(arms, Path(args.log_dir), cache)  # refuses runs scored on different test rows
    budgets = measure_budgets(arms, schema, args.latency_batch, args.latency_repeats, args.latency_threads)
    rows = build_rows(arms, scores, budgets, logits)
    table = table_markdown(rows)
    verdict = verdict_lines(rows) + latency_verdict_lines(rows)
    total = time.perf_counter() - start
    header = (f"data {data} ({schema.dataset}), {recipe_summary(settings, args.lr_sweep)}, config seed "
              f"{args.seed}, latency at batch {args.latency_batch} on "
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
