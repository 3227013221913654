"""Peak memory per rank of a sharded member: tables built whole then sharded (the old path)
against tables born sharded on ``meta`` (the new one), in the same run.

Why a benchmark and not a test: RSS depends on the allocator and the machine.  What it
shows: with W ranks, each rank should pay its 1/W of the tables plus a fixed overhead
(Python, torch, torchrec, the dense part, a few batches), measured here as the same member
with tiny tables.  The ratio to that ideal is the figure of merit (target: <= 1.15x).

Each case is a fresh 2-rank gloo world (torchrun) that builds one FNN member whose F tables
of dim D hold the requested bytes, shards it (table- or row-wise, fused row-wise Adagrad),
trains a few steps on real batches, and reports its ``ru_maxrss``.  The data is a small real
split whose ``meta.json`` declares the large vocabularies (ids stay in range; table memory
depends on the declared rows, not on the data).

``--big GB`` is the capacity check: grouped training (``recsys/train_group.py``) of one
member with GB of tables on 2 ranks, 20 steps with a checkpoint at step 10, evaluation,
killed at step 15, then ``--resume`` to the end; peak RSS of every rank is sampled from
``/proc/<pid>/status`` (VmHWM).

Examples::

    python -m recsys.bench.memory                          # 1 and 4 GB, table/row-wise, old vs new
    python -m recsys.bench.memory --sizes-gb 1 --paths new --shardings row_wise
    python -m recsys.bench.memory --big 12 --workdir /tmp/mem12   # the 12 GB train/kill/resume run
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.schema import Schema, SparseFeature

FIELDS, DIM, DENSE = 8, 64, 4
SPEC = f"fnn:embedding_dim={DIM},mlp=32,seed=1"
GIB = 1 << 30


def table_rows(gb: float) -> int:
    """Rows per table so that FIELDS tables of DIM float32 columns hold ``gb`` GiB."""
    return max(16, int(gb * GIB / (FIELDS * DIM * 4)))


def write_data(out: Path, rows_per_table: int, n_rows: int = 8192, seed: int = 0) -> None:
    """A small real split triple whose meta.json declares ``rows_per_table`` ids per field."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {"train": n_rows, "val": n_rows // 4, "test": n_rows // 4}
    for split, n in splits.items():
        np.save(out / f"{split}_dense.npy", rng.standard_normal((n, DENSE)).astype(np.float32))
        np.save(out / f"{split}_sparse.npy", rng.integers(0, rows_per_table, (n, FIELDS)).astype(np.int32))
        np.save(out / f"{split}_labels.npy", (rng.random(n) < 0.25).astype(np.float32))
    Schema("membench", tuple(SparseFeature(f"C{i}", rows_per_table) for i in range(FIELDS)),
           tuple(f"I{i}" for i in range(DENSE)), splits=splits).save(out)


# ----------------------------------------------------------------------------- one case (a rank)


def _worker(args: argparse.Namespace) -> int:
    """One rank: build, shard, train ``--steps`` steps, report peak RSS (rank 0 writes all ranks')."""
    # lazy: only the torchrun workers load torch and the model stack; the launcher stays light
    import torch
    import torch.distributed as dist

    from recsys.data.loader import make_loader
    from recsys.distributed import (
        EmbeddingOptimizerConfig,
        ShardingConfig,
        init_distributed,
        make_optimizer,
        shard_module,
    )
    from recsys.ensemble import GroupTrain, build_group

    torch.set_num_threads(1)
    env = init_distributed("cpu")
    schema = Schema.load(args.data)
    t0 = time.perf_counter()
    module = GroupTrain(build_group([SPEC], ["m0"], [0], schema, materialize=args.path == "old"))
    emb = EmbeddingOptimizerConfig("rowwise_adagrad", lr=0.01)
    dmp = shard_module(module, None, env, emb, ShardingConfig(args.sharding))
    del module
    opt = make_optimizer(dmp, 1e-3, emb_opt=emb)
    build_s = time.perf_counter() - t0
    loader = make_loader(args.data, "train", 1024, rank=env.rank, world_size=env.world_size, global_batch=True,
                         drop_last=True, shuffle=True, seed=0)
    it = iter(loader)
    for _ in range(args.steps):
        loss, _ = dmp(next(it))
        opt.zero_grad()
        loss.backward()
        opt.step()
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0], dtype=torch.float64)
    peaks = [torch.zeros(1, dtype=torch.float64) for _ in range(env.world_size)]
    dist.all_gather(peaks, peak)
    if env.rank == 0:
        Path(args.result).write_text(json.dumps({"peak_bytes": [float(p[0]) for p in peaks], "build_s": build_s}))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def run_case(data: Path, path: str, sharding: str, steps: int, workdir: Path) -> dict[str, Any]:
    result = workdir / f"result-{os.getpid()}-{time.time_ns()}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "recsys.bench.memory", "--worker", "--data", str(data), "--path", path, "--sharding", sharding,
           "--steps", str(steps), "--result", str(result)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"case {path}/{sharding} on {data} failed ({r.returncode}): {r.stderr[-3000:]}")
    out = json.loads(result.read_text())
    result.unlink()
    return out


# ----------------------------------------------------------------------------- the 12 GB run


class PeakSampler:
    """Peak RSS (VmHWM, the kernel's own high-water mark) of every process below ``root``."""

    def __init__(self, root: int, every_s: float = 0.2) -> None:
        self.root, self.every_s = root, every_s
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from recsys.bench.preprocess import tree_pids  # lazy: pyarrow, only for the --big run

        while not self._stop.is_set():
            for pid in tree_pids(self.root):
                try:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                self.peaks[pid] = max(self.peaks.get(pid, 0), int(line.split()[1]) * 1024)
                except OSError:  # it just exited
                    pass
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def ranks(self, top: int = 2) -> list[int]:
        """The ``top`` largest peaks (the ranks; torchrun's own process is far smaller)."""
        return sorted(self.peaks.values(), reverse=True)[:top]


def big_run(gb: float, workdir: Path) -> dict[str, Any]:
    """Trains, checkpoints, evaluates, is killed and resumes a member with ``gb`` GiB of tables."""
    repo = Path(__file__).resolve().parents[2]
    data = workdir / "data"
    if not (data / "meta.json").exists():
        write_data(data, table_rows(gb), n_rows=32768)  # 32 global batches: the 20 steps fit in one epoch
    cfg = workdir / "big.toml"
    cfg.write_text(
        f'name = "big"\ndata_dir = "{data}"\nmembers = ["{SPEC}"]\ngroups = [[0]]\ndevice = "cpu"\n'
        f'log_dir = "{workdir / "runs"}"\ncheckpoint_dir = "{workdir / "ckpt"}"\n'
        "[train]\nbatch_size = 1024\nepochs = 1\nmax_steps_per_epoch = 20\ncheckpoint_interval = 10\nlog_every = 5\n"
        '[sharding]\nsharding_type = "row_wise"\n'
    )
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    train = [str(repo / "recsys" / "train_group.py"), "--config", str(cfg)]
    # The planned kill is a test hook (tests/fault_injection.py wraps the real CLI), not a train flag.
    killer = [str(repo / "tests" / "fault_injection.py"), "--config", str(cfg)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    phases: dict[str, Any] = {}
    for phase, cmd in (("killed at step 15", killer + ["--fail-at-step", "15"]), ("resumed", train + ["--resume"])):
        t0 = time.perf_counter()
        p = subprocess.Popen(launch + cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        with PeakSampler(p.pid) as sampler:
            out, _ = p.communicate()
        phases[phase] = {"returncode": p.returncode, "seconds": round(time.perf_counter() - t0, 1),
                         "peak_bytes": sampler.ranks(), "tail": "\n".join(ln for ln in out.splitlines()
                                                                       if "fail-at-step" in ln or "group 0]" in ln
                                                                       or "train_group:" in ln)[-3000:]}
        print(f"{phase}: rc={p.returncode} in {phases[phase]['seconds']} s, peak RSS per rank "
              f"{', '.join(f'{b / GIB:.2f}' for b in sampler.ranks())} GiB", flush=True)
    results = workdir / "runs" / "big" / "results.json"
    phases["results"] = json.loads(results.read_text()) if results.exists() else None
    return phases


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recsys.bench.memory", description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="examples:" + __doc__.split("Examples::")[1]
        if __doc__ else None)
    p.add_argument("--sizes-gb", default="1,4", help="table sizes to measure, GiB (comma-separated)")
    p.add_argument("--paths", default="old,new", help="old: tables built whole, then sharded; new: born sharded")
    p.add_argument("--shardings", default="table_wise,row_wise")
    p.add_argument("--steps", type=int, default=3, help="training steps per case")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsys_membench"))
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--max-old-gb", type=float, default=2.0,
                   help="skip the old path above this table size (it needs ~3x the tables per rank)")
    p.add_argument("--big", type=float, default=0.0, metavar="GB",
                   help="instead: train/checkpoint/kill/resume a member with GB GiB of tables on 2 ranks")
    # one rank of one case (what run_case launches)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--path", choices=["old", "new"], help=argparse.SUPPRESS)
    p.add_argument("--sharding", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.big:
        res = big_run(args.big, args.workdir)
        if args.out:
            args.out.write_text(json.dumps(res, indent=1))
        killed, resumed = res["killed at step 15"], res["resumed"]
        # torchrun exits 1 when a rank dies; the rank's own line says it was the planned kill.
        ok = killed["returncode"] != 0 and "--fail-at-step 15: exiting" in killed["tail"] and resumed["returncode"] == 0
        return 0 if ok and res["results"] is not None else 1
    sizes = [float(x) for x in args.sizes_gb.split(",")]
    paths, shardings = args.paths.split(","), args.shardings.split(",")
    rows: list[dict[str, Any]] = []
    small = args.workdir / "small"
    write_data(small, 64)
    for sharding in shardings:
        base = max(run_case(small, "new", sharding, args.steps, args.workdir)["peak_bytes"])
        print(f"{sharding}: overhead (tiny tables) {base / GIB:.2f} GiB per rank", flush=True)
        for gb in sizes:
            data = args.workdir / f"t{gb:g}"
            write_data(data, table_rows(gb))
            tables = FIELDS * table_rows(gb) * DIM * 4
            ideal = tables / 2 + base
            for path in paths:
                if path == "old" and tables / GIB > args.max_old_gb:
                    # Measured ~2.9x the tables per rank: 2 ranks of 4 GiB would need ~23 GiB.
                    print(f"{sharding} {tables / GIB:.2f} GiB old: skipped (above --max-old-gb "
                          f"{args.max_old_gb:g}: ~3x the tables on each of 2 ranks would not fit in RAM)", flush=True)
                    rows.append({"sharding": sharding, "tables_gib": tables / GIB, "path": path, "skipped": True})
                    continue
                res = run_case(data, path, sharding, args.steps, args.workdir)
                peak = max(res["peak_bytes"])
                rows.append({"sharding": sharding, "tables_gib": tables / GIB, "path": path,
                             "peak_gib_per_rank": [b / GIB for b in res["peak_bytes"]], "ideal_gib": ideal / GIB,
                             "ratio_to_ideal": peak / ideal, "overhead_gib": base / GIB,
                             "build_s": round(res["build_s"], 2)})
                print(f"{sharding} {tables / GIB:.2f} GiB {path}: peak {peak / GIB:.2f} GiB per rank, ideal "
                      f"{ideal / GIB:.2f}, ratio {peak / ideal:.2f}x, build+shard {res['build_s']:.1f} s", flush=True)
    print("\n| sharding | tables | path | peak RSS per rank (GiB) | ideal (GiB) | ratio | build + shard (s) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        if r.get("skipped"):
            print(f"| {r['sharding']} | {r['tables_gib']:.2f} GiB | {r['path']} | does not fit (~3x the tables "
                  "per rank) | | | |")
            continue
        print(f"| {r['sharding']} | {r['tables_gib']:.2f} GiB | {r['path']} | "
              f"{' / '.join(f'{x:.2f}' for x in r['peak_gib_per_rank'])} | {r['ideal_gib']:.2f} | "
              f"{r['ratio_to_ideal']:.2f}x | {r['build_s']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
