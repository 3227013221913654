"""What merged evaluation costs at Criteo-1TB size: gathering [N, M] member logits on rank 0
and scoring them, measured at 1M-16M rows on 2 gloo ranks and extrapolated to a test day.

Why: every group scores the same N rows, so rank 0 ends with an [N, M] matrix; for a
Criteo-1TB test day (~89M rows in TorchRec's day 23 half) that must fit and finish in
reasonable time.  Each case is a fresh 2-rank world (2 groups of 2 members, one rank each,
the parallel schedule); each rank holds its group's [N, 2] logits; ``assemble_member_logits``
places them on rank 0 (``new``: point-to-point to rank 0; ``all``: every rank receives every
block, as ``all_gather`` did before), then ``score`` computes AUC and logloss for every
member, group, the ensemble and the AUC-vs-m curve.

Examples::

    python -m recsys.bench.eval_scale                        # 1M, 4M, 16M rows
    python -m recsys.bench.eval_scale --rows 2000000 --modes new
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

M, K = 4, 2
TEST_DAY_ROWS = 89_137_318  # half of Criteo-1TB day 23 (178,274,637 rows), TorchRec's DLRM test split


def _worker(rows: int, mode: str, result: str) -> int:
    # lazy: only the torchrun workers load torch; their RSS baseline is taken after these imports
    import torch
    import torch.distributed as dist

    from recsys.distributed import init_distributed
    from recsys.eval.gather import assemble_member_logits
    from recsys.eval.report import score

    env = init_distributed("cpu")
    labels = (torch.rand(rows, generator=torch.Generator().manual_seed(0)) < 0.25).float()  # same rows everywhere
    local = torch.randn(rows, 2, generator=torch.Generator().manual_seed(1 + env.rank)) + labels[:, None]
    cols = [2 * env.rank, 2 * env.rank + 1]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dist.barrier()
    t0 = time.perf_counter()
    out = assemble_member_logits(local, labels, 0, rows, cols, M, group=None, dst=0 if mode == "new" else None)
    t_gather = time.perf_counter() - t0
    t_score = 0.0
    auc = float("nan")
    if env.rank == 0:
        assert out is not None
        t0 = time.perf_counter()
        rep = score(out[0], out[1], [f"m{i}" for i in range(M)], [[0, 1], [2, 3]])
        t_score = time.perf_counter() - t0
        auc = rep.ensemble.auc
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = torch.tensor([peak - base, peak, t_gather, t_score], dtype=torch.float64)
    every = [torch.zeros_like(stats) for _ in range(env.world_size)]
    dist.all_gather(every, stats)
    if env.rank == 0:
        Path(result).write_text(json.dumps({"per_rank": [e.tolist() for e in every], "auc": auc}))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def run_case(rows: int, mode: str, workdir: Path) -> dict:
    result = workdir / f"eval-{rows}-{mode}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "recsys.bench.eval_scale", "--worker", "--rows", str(rows), "--modes", mode, "--result", str(result)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if r.returncode != 0:
        raise RuntimeError(f"{rows} rows, {mode}: {r.stderr[-2000:]}")
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys.bench.eval_scale", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:" + __doc__.split("Examples::")[1])
    p.add_argument("--rows", default="1000000,4000000,16000000", help="row counts (comma-separated)")
    p.add_argument("--modes", default="all,new", help="all: every rank receives every block; new: rank 0 only")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsys_evalbench"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(int(args.rows), args.modes, args.result)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows_list = [int(x) for x in args.rows.split(",")]
    print("| rows | mode | rank 0 added RSS (GiB) | rank 1 added RSS (GiB) | gather (s) | score (s) |")
    print("|---:|---|---:|---:|---:|---:|")
    fits = {}
    for rows in rows_list:
        for mode in args.modes.split(","):
            res = run_case(rows, mode, args.workdir)
            r0, r1 = res["per_rank"]
            print(f"| {rows:,} | {mode} | {r0[0] / 2**30:.2f} | {r1[0] / 2**30:.2f} | {r0[2]:.2f} | {r0[3]:.2f} |",
                  flush=True)
            fits[(rows, mode)] = r0
    largest = max(rows_list)
    for mode in args.modes.split(","):
        r0 = fits[(largest, mode)]
        f = TEST_DAY_ROWS / largest
        print(f"{mode}: extrapolated to a Criteo-1TB test day ({TEST_DAY_ROWS:,} rows x {M} members), linear in "
              f"rows from {largest:,}: rank 0 +{r0[0] * f / 2**30:.1f} GiB, gather {r0[2] * f:.0f} s, "
              f"score {r0[3] * f:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
