"""Preprocessing benchmark: our Criteo converter vs TorchRec's ``BinaryCriteoUtils.tsv_to_npys``.

Why each run is a subprocess: peak memory must be measured per converter, and a
converter's memory is its whole process tree (ours forks ``--workers``
processes).  A sampler thread sums RSS over the child's process tree from
/proc every 20 ms; ``getrusage(RUSAGE_CHILDREN)`` would only give the largest
single process.  Seconds are measured inside the child around the conversion
call, so interpreter start-up and ``import torchrec`` are not charged to either
side; our worker start-up is.

TorchRec's converter keeps every row as Python lists, so by default it runs on a
slice (``--torchrec-rows``) and its rows/s is reported as measured on that slice
(its cost is linear in rows; memory is extrapolated linearly and marked so).  It
runs first and last, and ratios use the mean of the two: the load of a shared
machine drifts.  Loading our C kernels (``kernel_load_seconds`` in meta.json, ~1 ms)
is included in our seconds and also shown in its own column; building them (first
use of a source version, ~1 s) happens in an untimed warm-up run.

Example::

    python -m recsys.bench.preprocess                       # 1M rows, hash at 1M, 4M and 16M (4M x 4)
    python -m recsys.bench.preprocess --rows 200000 --hash-rows 200000 400000 --torchrec-rows 50000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from recsys.data.synth import write_criteo


@dataclass
class Measurement:
    name: str
    rows: int
    seconds: float
    cpu_seconds: float  # user + sys of the converter and its worker processes
    peak_rss_mb: float
    kernel_load_seconds: float = 0.0  # C kernels' load: included in seconds, also shown apart
    phases: dict[str, float] | None = None  # our converter's wall seconds per phase (meta.json)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (Linux /proc), walked through
    ``/proc/<pid>/task/<tid>/children``: a few reads per sample.  Scanning every process in
    /proc instead cost ~3 ms of CPU per sample, ~15% of a core at 20 ms intervals, which on a
    2-core machine slowed a 2-worker converter and not the single-threaded TorchRec one.
    A process that exits during the walk is left out with its children."""
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):  # the process (or thread) just exited
            continue
    return out


def _tree_rss_kb(root: int) -> int:
    """Sum of RSS over ``root`` and all its descendants (``tree_pids``)."""
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * page_kb
        except (OSError, IndexError, ValueError):  # it just exited
            continue
    return total


def run_child(name: str, rows: int, code: str) -> Measurement:
    """Runs ``code`` in a fresh interpreter; it must print one JSON line ``{"seconds": s}`` last."""
    # as data_prep/*_to_npy.py do; neither converter calls BLAS (its idle threads would spin ~0.1 s)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_kb(proc.pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    done.set()
    t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")
    res = json.loads(out.strip().splitlines()[-1])
    return Measurement(name, rows, res["seconds"], res["cpu"], peak / 1024, res.get("kernel_load_seconds", 0.0),
                       res.get("phase_seconds"))


def head_rows(src: Path, dst: Path, rows: int) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for i, line in enumerate(fi):
            if i >= rows:
                break
            fo.write(line)


# CPU seconds of this process and its reaped children (our pool workers), measured in the child
_CPU_START = (
    "import resource\n"
    "def cpu():\n"
    "    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime\n"
    "c0 = cpu()\n"
)


def ours_code(inp: Path | list[Path], out: Path, workers: int, extra: list[str]) -> str:
    inputs = [str(x) for x in (inp if isinstance(inp, list) else [inp])]
    argv = ["--input", *inputs, "--output", str(out), "--workers", str(workers), "--no-progress", *extra]
    return (
        "import json, time\n"
        "from recsys.data.convert.cli import main\n"
        + _CPU_START +
        "t = time.perf_counter()\n"
        f"rc = main('criteo', {argv!r})\n"
        "assert rc == 0, rc\n"
        "s, c = time.perf_counter() - t, cpu() - c0\n"
        f"pre = json.load(open({str(out / 'meta.json')!r}))['preprocessing']\n"
        "print(json.dumps({'seconds': s, 'cpu': c, 'kernel_load_seconds': pre.get('kernel_load_seconds', 0.0),\n"
        "                  'phase_seconds': pre.get('phase_seconds')}))\n"
    )


def torchrec_code(inp: Path, out: Path) -> str:
    return (
        "import json, time\n"
        "from torchrec.datasets.criteo import BinaryCriteoUtils\n"
        + _CPU_START +
        "t = time.perf_counter()\n"
        f"BinaryCriteoUtils.tsv_to_npys({str(inp)!r}, {str(out / 'd.npy')!r}, {str(out / 's.npy')!r}, "
        f"{str(out / 'l.npy')!r})\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'cpu': cpu() - c0}))\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recsys.bench.preprocess",
        description="Rows/s and peak RSS: our Criteo converter vs TorchRec's tsv_to_npys, same run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m recsys.bench.preprocess --rows 200000 --hash-rows 200000 400000 --torchrec-rows 50000",
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="rows for the main comparison")
    p.add_argument("--torchrec-rows", type=int, default=200_000,
                   help="rows TorchRec converts (a slice of the same file; 0 = all --rows)")
    p.add_argument("--hash-rows", type=int, nargs="*", default=[1_000_000, 4_000_000],
                   help="row counts for the --hash memory check")
    p.add_argument("--hash-repeat", type=int, default=4,
                   help="one more --hash run on the largest --hash-rows file given this many times")
    p.add_argument("--hash-size", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--workdir", default=None, help="scratch dir (default: a temp dir, removed after)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_preprocess_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        max_rows = max([args.rows, *args.hash_rows])
        src = work / f"criteo_{max_rows}.tsv"
        print(f"generating {max_rows:,} synthetic Criteo rows -> {src}", flush=True)
        t = time.perf_counter()
        planted_auc = write_criteo(src, max_rows, args.seed, progress=True)
        gen_s = time.perf_counter() - t
        print(f"  {max_rows / gen_s:,.0f} rows/s, planted AUC {planted_auc:.4f}", flush=True)

        def sized(rows: int) -> Path:
            if rows == max_rows:
                return src
            dst = work / f"criteo_{rows}.tsv"
            if not dst.exists():
                head_rows(src, dst, rows)
            return dst

        for rows in {args.rows, args.torchrec_rows or args.rows, *args.hash_rows}:
            sized(rows)
        # The inputs were just written: without a sync the kernel writes their ~1 GB back to disk
        # ~30 s later (dirty_expire), in the middle of the timed runs, taking CPU from them.
        t = time.perf_counter()
        os.sync()
        print(f"inputs flushed to disk ({time.perf_counter() - t:.1f} s)", flush=True)

        # the C kernels are compiled on the first use of a source version (~1 s); this small
        # run makes sure the library is built, so the timed runs below only load it (~1 ms)
        print("C kernels: build if needed (1,000 rows) ...", flush=True)
        warm = run_child("warm-up", 1000, ours_code(sized(1000), work / "warm", 1, []))
        shutil.rmtree(work / "warm", ignore_errors=True)
        print(f"  kernel build/load: {warm.kernel_load_seconds:.2f} s", flush=True)

        def torchrec(tag: str) -> Measurement:
            print(f"TorchRec tsv_to_npys on {tr_rows:,} rows ({tag}) ...", flush=True)
            (work / "tr").mkdir(exist_ok=True)
            m = run_child(f"torchrec tsv_to_npys ({tag})", tr_rows, torchrec_code(sized(tr_rows), work / "tr"))
            shutil.rmtree(work / "tr", ignore_errors=True)
            return m

        results: list[Measurement] = []
        tr_rows = args.torchrec_rows or args.rows
        results.append(torchrec("first"))
        hash_flag = ["--hash", str(args.hash_size)]
        runs = [(f"ours min-count, {args.workers} workers", args.rows, [], args.workers),
                ("ours min-count, 1 worker", args.rows, [], 1),
                (f"ours min-count --numeric dense, {args.workers} workers", args.rows, ["--numeric", "dense"],
                 args.workers),
                (f"ours min-count, --engine arrow (previous parser), {args.workers} workers", args.rows, ["--engine", "arrow"],
                 args.workers)]
        runs += [(f"ours --hash {args.hash_size}, {args.workers} workers", r, hash_flag, args.workers)
                 for r in args.hash_rows]
        if args.hash_repeat > 1 and args.hash_rows:  # the largest file given N times: memory at N x the rows
            runs += [(f"ours --hash {args.hash_size}, {args.workers} workers ({args.hash_repeat} inputs)",
                      args.hash_repeat * max(args.hash_rows), hash_flag, args.workers)]
        runs += [(f"ours --hash {args.hash_size} --numeric dense, {args.workers} workers", args.rows,
                  hash_flag + ["--numeric", "dense"], args.workers)]
        for name, rows, extra, workers in runs:
            print(f"{name} on {rows:,} rows ...", flush=True)
            out = work / "ours"
            inp = [sized(max(args.hash_rows))] * args.hash_repeat if "inputs)" in name else sized(rows)
            results.append(run_child(name, rows, ours_code(inp, out, workers, extra)))
            shutil.rmtree(out, ignore_errors=True)
        results.append(torchrec("last"))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    # TorchRec ran first and last: the ratios use the mean of its two rates, since the
    # load of this shared machine drifts during the run
    trs = [m for m in results if m.name.startswith("torchrec")]
    tr = trs[0]
    tr_rate = sum(m.rows_per_s for m in trs) / len(trs)
    tr_cpu = sum(m.cpu_seconds / m.rows for m in trs) / len(trs)
    print("| converter | rows | wall s | rows/s | x TorchRec (wall) | CPU us/row | x TorchRec (CPU) "
          "| kernel load s | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in results:
        ratio = m.rows_per_s / tr_rate
        cpu = m.cpu_seconds / m.rows
        print(f"| {m.name} | {m.rows:,} | {m.seconds:.2f} | {m.rows_per_s:,.0f} | {ratio:.1f} | "
              f"{cpu * 1e6:.2f} | {tr_cpu / cpu:.1f} | {m.kernel_load_seconds:.3f} | {m.peak_rss_mb:,.0f} |")
    print("\nwall seconds per phase of our converter (meta.json phase_seconds):")
    for m in results:
        if m.phases:
            print(f"  {m.name}, {m.rows:,} rows: " + ", ".join(f"{k} {v:.3f}" for k, v in m.phases.items()))
    main_run = next(m for m in results if m.name.startswith(f"ours min-count, {args.workers} workers"))
    print(f"\ntarget: >= 30x TorchRec's rows/s in min-count mode with {args.workers} workers: "
          f"{main_run.rows_per_s / tr_rate:.1f}x ({main_run.rows_per_s:,.0f} vs {tr_rate:,.0f} rows/s)")
    load = os.getloadavg()
    print(f"\nload average at the end (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          f"on {os.cpu_count()} CPUs")
    tr_mb_per_row = tr.peak_rss_mb / tr.rows
    print()
    print(f"TorchRec peak RSS {tr.peak_rss_mb:,.0f} MB on {tr.rows:,} rows; linear extrapolation to "
          f"{args.rows:,} rows: ~{tr_mb_per_row * args.rows:,.0f} MB (it holds all rows as Python lists).")
    hashed = [m for m in results if "--hash" in m.name and "--numeric" not in m.name]
    if len(hashed) >= 2:
        print(f"--hash peak RSS: " + ", ".join(f"{m.rows:,} rows -> {m.peak_rss_mb:,.0f} MB" for m in hashed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
