"""``python -m recsys.eval``: score saved group checkpoints on one split, single process.

Why single process: DCP reshards whatever layout training saved into unsharded groups, so
evaluation needs neither torchrun nor the training world size; each group is scored in
turn on the same rows and the blocks are placed by ``ensemble.stack_member_logits``.

Example::

    python -m recsys.eval --config configs/demo.toml --checkpoint checkpoints/demo --split val
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from recsys.checkpoint import load_trained_group
from recsys.cli import parser_with_examples, run_main
from recsys.config import load_config
from recsys.ensemble import stack_member_logits
from recsys.eval.report import report_markdown, score, write_report
from recsys.eval.runner import evaluate_split

PROG = "python -m recsys.eval"


def build_parser() -> argparse.ArgumentParser:
    """The command line; ``--help`` shows the examples."""
    p = parser_with_examples(
        PROG,
        "Score saved group checkpoints on an eval split and write results.json/.md and auc_vs_m.png.",
        f"""examples:
  {PROG} --config configs/demo.toml --checkpoint checkpoints/demo
  {PROG} --config configs/demo.toml --checkpoint checkpoints/demo --split val --out runs/demo-eval
  {PROG} --config configs/demo.toml --checkpoint checkpoints/demo --device cuda
""",
    )
    p.add_argument("--config", required=True, help="experiment TOML (members, groups, data_dir)")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir of the run, holding group0/, group1/, ...")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="eval split (default: test)")
    p.add_argument("--batch-size", type=int, default=0, help="eval batch size (default: from the config)")
    p.add_argument("--out", default=None, help="report directory (default: the config's run dir)")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint of each group to load")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. data_dir=data/x")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where to run the forwards (default: the config's device; auto = cuda if available)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Single-process evaluation of saved checkpoints; a user error (config, data, a missing
    or damaged checkpoint) is one ``error: ...`` line and exit status 2."""
    args = build_parser().parse_args(argv)
    return run_main("", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """Loads each group's checkpoint, scores the split, writes and prints the report."""
    # load_config checks the splits and that a requested cuda device exists (one-line errors).
    cfg = load_config(args.config, list(args.set) + ([f"device={args.device}"] if args.device else []))
    cfg.schema()  # a bad data dir fails here, in one line, before any checkpoint is read
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    names = cfg.member_names
    batch_size = args.batch_size or cfg.train.eval_batch_size or cfg.train.batch_size
    ckpt_root = Path(args.checkpoint)
    blocks: list[torch.Tensor] = []
    labels: torch.Tensor | None = None
    for k, idx in enumerate(cfg.groups):
        group, step = load_trained_group(cfg, k, ckpt_root, args.which)
        # The bare group: its forward is the logits [B, M_k] (GroupTrain would add the loss).
        res = evaluate_split(group.to(device), cfg.data_source(), args.split, batch_size,
                             columns=list(range(len(idx))), num_members=len(idx), device=device, progress=True)
        assert res.member_logits is not None and res.labels is not None  # dst=0 and one process: rank 0 holds them
        blocks.append(res.member_logits.float().cpu())
        labels = res.labels.float().cpu()
        print(f"group {k} ({', '.join(names[i] for i in idx)}): step {step}, {res.member_logits.shape[0]} rows")
    assert labels is not None  # cfg.groups is never empty (the config checks it)
    member_logits = stack_member_logits(blocks, cfg.groups, len(names))
    report = score(member_logits, labels, names, cfg.groups, extra={"split": args.split, "config": str(args.config)})
    out_dir = Path(args.out) if args.out else cfg.run_dir
    paths = write_report(report, out_dir, prefix=f"{args.split}_")
    print(report_markdown(report))
    print(f"report: {paths['md']}")
    return 0
