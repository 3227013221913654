"""``python -m recsys.bench.quantize``: what int8 embedding tables cost and save, per member and
for the merged ensemble, measured on a split of a trained run.

Why a benchmark: whether quantized tables may serve depends on the AUC they cost on held-out
rows, and the memory and time they save depend on the table widths and the machine; none of
that is a unit test's to assert.  For each member (and for the ensemble, the merge of all
members, ``sigmoid(mean logit)``) it reports:

- AUC and logloss of the float32 and the quantized (``recsys.serve.quantize``) member on the
  split, scored exactly as ``python -m recsys.eval`` scores (``evaluate_split`` + ``score``);
- embedding-table bytes before and after, counted from the tensors (``table_bytes``), their
  ratio, and the ratio of the whole model's weights (tables plus the float32 dense part,
  ``dense_bytes``);
- forward latency of one batch, float and quantized timed interleaved in the same process
  (alternating which goes first), as the median over ``--repeats`` and the ratio.

Examples::

    python -m recsys.bench.quantize --config configs/demo.toml --checkpoint checkpoints/demo
    python -m recsys.bench.quantize --config configs/demo.toml --checkpoint checkpoints/demo \\
        --split val --dtype int4 --latency-batch 1024 --out runs/demo/quantized.md
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from recsys.cli import parser_with_examples, run_main

if TYPE_CHECKING:
    import torch
    from torchrec.datasets.utils import Batch

    from recsys.config import ExperimentConfig
    from recsys.eval.metrics import Metrics
    from recsys.models.member import Member

PROG = "python -m recsys.bench.quantize"


def build_parser() -> argparse.ArgumentParser:
    """The command line; ``--help`` shows the examples.  Imports no torch (fast ``--help``)."""
    p = parser_with_examples(
        PROG,
        "Float32 vs quantized embedding tables of a trained run: AUC/logloss on a split, "
        "table bytes and forward latency, per member and for the merged ensemble.",
        f"""examples:
  {PROG} --config configs/demo.toml --checkpoint checkpoints/demo
  {PROG} --config configs/demo.toml --checkpoint checkpoints/demo --split val --out runs/demo/quantized.md
  {PROG} --config configs/demo.toml --checkpoint checkpoints/demo --dtype int4 --latency-batch 1024
""",
    )
    p.add_argument("--config", required=True, help="experiment TOML (members, groups, data_dir)")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir of the run, holding group0/, group1/, ...")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="split to score (default: test)")
    # the keys of recsys.serve.quantize.QUANT_DTYPES, not imported here: --help stays torch-free
    p.add_argument("--dtype", choices=("int8", "int4", "fp16"), default="int8", help="table dtype (default: int8)")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint of each group to load")
    p.add_argument("--batch-size", type=int, default=0, help="eval batch size (default: from the config)")
    p.add_argument("--latency-batch", type=int, default=512, help="rows per timed forward (default: 512)")
    p.add_argument("--repeats", type=int, default=30, help="timed forwards per model and variant (default: 30)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. data_dir=data/x")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The benchmark; a user error (config, data, a missing checkpoint, an unsupported dtype) is
    one ``python -m recsys.bench.quantize: error: ...`` line and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.latency_batch, args.repeats, args.threads) < 1:
        parser.error("--latency-batch, --repeats and --threads must be >= 1")
    return run_main(PROG, lambda: run(args))


@dataclass
class Row:
    """One line of the table: a member or the ensemble, float vs quantized."""

    name: str
    float_metrics: Metrics
    quant_metrics: Metrics
    float_bytes: int
    quant_bytes: int
    dense_bytes: int
    float_ms: float
    quant_ms: float


def interleaved_ms(fns: Sequence[Callable[[], object]], repeats: int, warmup: int = 3) -> list[float]:
    """Median milliseconds of each of ``fns``, timed in alternating order (forward, then reversed)
    so that a load change on a shared machine hits every variant alike.

    Example::

        f_ms, q_ms = interleaved_ms([lambda: member(d, k), lambda: qmember(d, k)], repeats=30)
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def markdown_table(rows: Sequence[Row], dtype: str) -> str:
    """The result table, one line per member and one for the ensemble (bytes and time: sums)."""
    lines = [
        f"| model | AUC fp32 | AUC {dtype} | ΔAUC | logloss fp32 | logloss {dtype} | Δlogloss "
        f"| tables fp32 | tables {dtype} | tables ratio | whole model ratio | ms fp32 | ms {dtype} | time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, q = r.float_metrics, r.quant_metrics
        lines.append(
            f"| {r.name} | {f.auc:.5f} | {q.auc:.5f} | {q.auc - f.auc:+.6f} | {f.logloss:.5f} | {q.logloss:.5f} "
            f"| {q.logloss - f.logloss:+.6f} | {_fmt_bytes(r.float_bytes)} | {_fmt_bytes(r.quant_bytes)} "
            f"| {r.float_bytes / r.quant_bytes:.2f}x "
            f"| {(r.float_bytes + r.dense_bytes) / (r.quant_bytes + r.dense_bytes):.2f}x | {r.float_ms:.2f} | {r.quant_ms:.2f} "
            f"| {r.quant_ms / r.float_ms:.2f}x |"
        )
    return "\n".join(lines)


def _first_batch(cfg: ExperimentConfig, split: str, rows: int) -> Batch:
    from recsys.data.loader import make_loader

    return next(iter(make_loader(cfg.data_source(), split, rows, shuffle=False, drop_last=False)))


def _score_groups(cfg: ExperimentConfig, groups: Sequence[Sequence[Member]], split: str,
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, M] member logits (config order) and labels [N] of ``groups`` (one member list per
    config group) on ``split``, as ``python -m recsys.eval`` computes them."""
    from recsys.ensemble import EnsembleGroup, stack_member_logits
    from recsys.eval.runner import evaluate_split

    blocks = []
    labels = None
    for members in groups:
        res = evaluate_split(EnsembleGroup(members), cfg.data_source(), split, batch_size,
                             columns=list(range(len(members))), num_members=len(members))
        assert res.member_logits is not None and res.labels is not None  # one process: rank 0 holds them
        blocks.append(res.member_logits.float())
        labels = res.labels.float()
    assert labels is not None  # a config has at least one group
    return stack_member_logits(blocks, cfg.groups, len(cfg.member_names)), labels


def run(args: argparse.Namespace) -> int:
    """Loads each group, quantizes its members, scores both variants, times them, prints the table."""
    import torch

    from recsys.checkpoint import load_trained_group
    from recsys.config import load_config
    from recsys.ensemble import merge_logits
    from recsys.eval.report import score
    from recsys.models.member import Member
    from recsys.serve.quantize import check_kernels, dense_bytes, quantize_member, table_bytes

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, list(args.set) + ["device=cpu"])
    cfg.schema()  # a bad data dir fails here, in one line, before any checkpoint is read
    batch_size = args.batch_size or cfg.train.eval_batch_size or cfg.train.batch_size
    float_groups: list[list[Member]] = []
    for k in range(len(cfg.groups)):  # every checkpoint is checked before anything is quantized
        group, step = load_trained_group(cfg, k, Path(args.checkpoint), args.which)
        members = [m.eval() for m in group.members.values() if isinstance(m, Member)]
        assert len(members) == len(group.members)  # an EnsembleGroup holds only Members
        float_groups.append(members)
        print(f"group {k}: step {step}, {len(members)} members")
    check_kernels(args.dtype)
    quant_groups = [[quantize_member(m, args.dtype) for m in members] for members in float_groups]
    names = cfg.member_names
    float_logits, labels = _score_groups(cfg, float_groups, args.split, batch_size)
    quant_logits, _ = _score_groups(cfg, quant_groups, args.split, batch_size)
    rep_f = score(float_logits, labels, names, cfg.groups)
    rep_q = score(quant_logits, labels, names, cfg.groups)

    by_index = {j: (f, q) for idx, fs, qs in zip(cfg.groups, float_groups, quant_groups) for j, f, q in zip(idx, fs, qs)}
    batch = _first_batch(cfg, args.split, args.latency_batch)
    dense, kjt = batch.dense_features, batch.sparse_features
    rows: list[Row] = []
    with torch.inference_mode():
        for j, name in enumerate(names):
            f, q = by_index[j]
            f_ms, q_ms = interleaved_ms([partial(f, dense, kjt), partial(q, dense, kjt)], args.repeats)
            rows.append(Row(name, rep_f.members[j], rep_q.members[j], table_bytes(f), table_bytes(q),
                            dense_bytes(f), f_ms, q_ms))
        ordered = [by_index[j] for j in range(len(names))]

        def ensemble(variant: int) -> torch.Tensor:
            return merge_logits(torch.stack([pair[variant](dense, kjt) for pair in ordered], dim=1))

        f_ms, q_ms = interleaved_ms([lambda: ensemble(0), lambda: ensemble(1)], args.repeats)
    rows.append(Row(f"ensemble (M={len(names)})", rep_f.ensemble, rep_q.ensemble,
                    sum(r.float_bytes for r in rows), sum(r.quant_bytes for r in rows),
                    sum(r.dense_bytes for r in rows), f_ms, q_ms))
    table = markdown_table(rows, args.dtype)
    note = (f"{args.split} split, {rep_f.num_rows} rows; latency: median of {args.repeats} forwards of "
            f"{dense.shape[0]} rows, {args.threads} thread(s), fp32 and {args.dtype} interleaved")
    print(table)
    print(note)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n\n" + note + "\n")
        print(f"table: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
