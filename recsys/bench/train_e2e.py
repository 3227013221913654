"""End-to-end training throughput for M = 1, 2, 4 members, and the evaluation gather share.

Runs the real entry point (``recsys/train_group.py`` under torchrun) once per M with
a fixed number of training steps, then reads back what the run logged:

- training examples/s: rows per second through all M members (``train/examples_per_s``),
  over the wall time of the training steps (evaluation and checkpoints excluded);
  parallel groups overlap in time, sequential ones add up;
- member-examples/s: examples/s x M, the work the ensemble does (``train/member_examples_per_s``);
- evaluation: ``recsys.eval`` times the forward passes, the gather of the
  [N, M] logit matrix to rank 0 and the merge separately; the gather share is
  (gather + merge) / (forward + gather + merge), target < 3%.

Each M uses the same member spec (different seeds).  ``--groups independent`` (K = M):
on W = 2 ranks, M = 1 trains one group on both ranks, M = 2 two groups in parallel on
one rank each, and M = 4 (W < K) four groups one after another on both ranks.
``--groups joint`` (K = 1): all M members in one group on both ranks.

Example::

    python -m recsys.bench.train_e2e --data data/demo/criteo --steps 100
    python -m recsys.bench.train_e2e --data data/demo/criteo --members 1 2 4 --groups joint --out docs/bench_training.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp: Path, data: Path, spec: str, m: int, groups: str, steps: int, batch: int) -> Path:
    members = [f"{spec},seed={i + 1}" if ":" in spec else f"{spec}:seed={i + 1}" for i in range(m)]
    grp = [[i] for i in range(m)] if groups == "independent" else [list(range(m))]
    p = tmp / f"bench_m{m}.toml"
    p.write_text(
        f'name = "bench_m{m}_{groups}"\ndata_dir = "{data.resolve()}"\nmembers = {json.dumps(members)}\n'
        f"groups = {json.dumps(grp)}\n"
        f'log_dir = "{tmp / "runs"}"\ncheckpoint_dir = "{tmp / "ckpt"}"\n'
        f"[train]\nbatch_size = {batch}\neval_batch_size = {4 * batch}\nepochs = 1\npatience = 0\n"
        f"max_steps_per_epoch = {steps}\nlog_every = {max(1, steps // 10)}\n"
        f'[embedding_optimizer]\nname = "rowwise_adagrad"\nlr = 0.02\n'
    )
    return p


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    # lazy: tensorboard only after the training subprocesses have run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for d in [run_dir, *sorted(run_dir.glob("group*"))]:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0}).Reload()
        for tag in acc.Tags()["scalars"]:
            out[tag] = [e.value for e in acc.Scalars(tag)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recsys.bench.train_e2e",
        description=__doc__.split("Example::")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m recsys.bench.train_e2e --data data/demo/criteo --steps 100 --out docs/bench_training.md",
    )
    p.add_argument("--data", required=True, type=Path, help="converted data dir (meta.json + npy)")
    p.add_argument("--members", type=int, nargs="+", default=[1, 2, 4], help="ensemble sizes M")
    p.add_argument("--spec", default="dcnv2:embedding_dim=16,mlp=256-128,cross_layers=2", help="member spec")
    p.add_argument("--groups", choices=["independent", "joint"], default="independent", help="K = M or K = 1")
    p.add_argument("--nproc", type=int, default=2, help="ranks (torchrun --nproc_per_node)")
    p.add_argument("--steps", type=int, default=100, help="training steps per run")
    p.add_argument("--batch", type=int, default=1024, help="global batch size per group")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsys_bench"))
    p.add_argument("--out", type=Path, default=None, help="append a markdown table to this file")
    args = p.parse_args(argv)
    if not (args.data / "meta.json").is_file():
        print(f"error: {args.data}/meta.json: no such file (convert data first, e.g. scripts/demo.sh)", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in args.members:
        cfg = _config(args.workdir, args.data, args.spec, m, args.groups, args.steps, args.batch)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               str(ROOT / "recsys" / "train_group.py"), "--config", str(cfg), "--device", args.device]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), RECSYS_EVAL_TIMINGS="1")
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-4000:], file=sys.stderr)
            return 1
        run_dir = args.workdir / "runs" / f"bench_m{m}_{args.groups}"
        sc = _scalars(run_dir)
        timings = json.loads((run_dir / "results.json").read_text())["extra"].get("eval_timings", {})
        fw, ga, me = (timings.get(k, 0.0) for k in ("forward", "gather", "merge"))
        frac = (ga + me) / (fw + ga + me) if fw + ga + me > 0 else float("nan")
        schedule = "parallel" if "parallel schedule" in r.stdout else "sequential"
        row = {
            "M": m, "K": m if args.groups == "independent" else 1, "schedule": schedule,
            "examples_per_s": sc["train/examples_per_s"][0],
            "member_examples_per_s": sc["train/member_examples_per_s"][0],
            "eval_forward_s": fw, "eval_gather_s": ga, "eval_merge_s": me, "gather_fraction": frac, "wall_s": wall,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        f"\n### {args.spec}, {args.groups} groups, {args.nproc} ranks, device {args.device}, "
        f"batch {args.batch}, {args.steps} steps\n",
        "| M | K | schedule | train examples/s | member-examples/s | eval forward s | gather+merge s | gather share | wall s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r_ in rows:
        lines.append(
            f"| {r_['M']} | {r_['K']} | {r_['schedule']} | {r_['examples_per_s']:,.0f} | {r_['member_examples_per_s']:,.0f} | "
            f"{r_['eval_forward_s']:.2f} | {r_['eval_gather_s'] + r_['eval_merge_s']:.3f} | "
            f"{100 * r_['gather_fraction']:.2f}% | {r_['wall_s']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
