"""One command for a lent GPU machine: environment, CUDA tests, the demo on CUDA, train-step throughput.

Why one command: a lent GPU comes for ~15 minutes of device time in calls of at most 10 minutes,
so everything that needs the GPU runs here, in order, each step but ``env`` in its own subprocess with its
own time limit, inside one overall budget.  The summary (``summary.json`` + ``summary.md``,
plus each step's log) is rewritten after every step, so a call that is cut short still returns
what was done.  Steps:

(a) ``env``    torch / fbgemm_gpu / torchrec versions, GPU, CUDA, NCCL, driver (in this process);
(b) ``tests``  ``pytest -m cuda tests/test_cuda.py`` (fused kernels, DCP, NCCL gather, training);
(c) ``demo``   the demo config (configs/demo.toml) through recsys/train_group.py with
               ``--device cuda`` on min(2, #GPUs) NCCL ranks, data synthesized first if missing
               (scripts/demo.sh itself would run setup_env.sh, which needs the network);
(d) ``bench``  train-step examples/s of DCNv2 and FNN members at batch 4096 and 16384: the
               DMP member (FBGEMM fused row-wise Adagrad) vs its plain-PyTorch twin on the GPU,
               with recsys.bench.train_step's schema, batches and twin.  (train_step itself has
               no --device flag and runs on CPU; when it gains one, ``--bench-cli`` runs it.)

Without CUDA it says so in one line and exits 2.  ``--plan`` prints the steps and their limits
without running anything (any machine).

Example::

    python -m recsys.bench.gpu_check --out "$OUT"                     # all steps, 540 s budget
    python -m recsys.bench.gpu_check --out "$OUT" --steps env,tests
    python -m recsys.bench.gpu_check --out /tmp/g --steps bench --batch-sizes 4096 --models dcnv2
    python -m recsys.bench.gpu_check --plan
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("env", "tests", "demo", "bench")
LIMITS = {"env": 60, "tests": 240, "demo": 240, "bench": 180}  # seconds; all four fit a 10-minute call
DEMO_CONFIG = "configs/demo.toml"
DEMO_NAME = "demo_cuda"  # its own run/checkpoint names: never overwrites a CPU demo's runs/demo


@dataclass
class StepResult:
    """What one step did: ``status`` is ok | failed | timeout | skipped."""

    name: str
    status: str
    seconds: float = 0.0
    command: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    log: str = ""  # the step's log file, relative to the output dir


def pytest_counts(output: str) -> dict[str, int]:
    """Counts from pytest's closing line, e.g. ``4 passed, 1 skipped in 9.1s`` -> {passed: 4, skipped: 1}.

    Example::

        pytest_counts("== 3 passed, 1 failed in 2.0s ==")   # {"passed": 3, "failed": 1}
    """
    lines = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    if not lines:
        return {}
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", lines[-1])}


def step_limit(name: str, limits: dict[str, int], budget_left: float, reserve: float = 10.0) -> float:
    """The step's own limit, cut to what is left of the overall budget (minus a reserve for the
    summary).  Below 20 s the step is not started (returns 0).

    Example::

        step_limit("tests", {"tests": 240}, budget_left=100.0)   # 90.0
    """
    left = min(float(limits[name]), budget_left - reserve)
    return left if left >= 20 else 0.0


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "4")
    return env


def _run(cmd: list[str], limit: float, log: Path, cwd: Path = ROOT) -> tuple[str, str, float]:
    """Runs ``cmd`` with a time limit, all output to ``log``; (status, output, seconds).

    The command gets its own process group, and a timeout kills the whole group: torchrun's
    and pytest's worker processes must not outlive their step and hold the GPU.
    """
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=limit)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            status = f"timeout ({limit:.0f} s)"
        f.write(out)
    return status, out, time.monotonic() - t0


# ----------------------------------------------------------------------------- the steps


def env_report() -> dict[str, Any]:
    """Versions and the device, as this process sees them."""
    import torch  # lazy: `--plan` runs on any machine without loading torch

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    d: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable, "torch": torch.__version__,
                         "torch_cuda": torch.version.cuda, "fbgemm_gpu": ver("fbgemm_gpu"),
                         "fbgemm_gpu_cpu": ver("fbgemm_gpu_cpu"), "torchrec": ver("torchrec")}
    try:
        # lazy: a broken CUDA stack is reported here, not an import error of this module
        import fbgemm_gpu
        import torchrec  # noqa: F401

        d["fbgemm_variant"] = getattr(fbgemm_gpu, "__variant__", "?")
    except Exception as e:  # noqa: BLE001 -- reported, and the later steps will fail on it
        d["import_error"] = f"{type(e).__name__}: {e}"
    if torch.cuda.is_available():
        nccl = torch.cuda.nccl.version()
        d.update(gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                 capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                 memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                 nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
                 cudnn=torch.backends.cudnn.version())
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        d["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        d["nvidia_smi"] = f"unavailable: {e}"
    return d


def _tests(limit: float, out: Path) -> StepResult:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={out / 'cuda_tests.xml'}"]
    status, text, secs = _run(cmd, limit, out / "tests.log")
    counts = pytest_counts(text)
    if status == "ok" and (counts.get("skipped", 0) and not counts.get("passed", 0)):
        status = "failed (every CUDA test skipped: no GPU in the test process?)"
    return StepResult("tests", status, secs, " ".join(cmd), {"counts": counts}, "tests.log")


def _demo(limit: float, out: Path, rows: int, nproc: int) -> StepResult:
    t0 = time.monotonic()
    log = out / "demo.log"
    data, raw = ROOT / "data/demo/criteo", ROOT / "data/demo/raw/criteo_synthetic.tsv"
    cmds: list[list[str]] = []
    if not (data / "meta.json").is_file():
        raw.parent.mkdir(parents=True, exist_ok=True)
        cmds += [[sys.executable, "data_prep/synthesize.py", "--dataset", "criteo", "--rows", str(rows), "--output",
                  str(raw), "--seed", "0", "--no-progress"],
                 [sys.executable, "data_prep/criteo_to_npy.py", "--input", str(raw), "--output", str(data),
                  "--min-count", "5", "--workers", "4", "--no-progress"]]
    train = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
             "recsys/train_group.py", "--config", DEMO_CONFIG, "--device", "cuda", "--set", f"name={DEMO_NAME}"]
    status = "ok"
    for cmd in cmds + [train]:
        status, text, _ = _run(cmd, max(1.0, limit - (time.monotonic() - t0)), log)
        if status != "ok":
            break
    detail: dict[str, Any] = {"nproc": nproc, "data_rows": rows if cmds else "reused data/demo/criteo"}
    results = ROOT / "runs" / DEMO_NAME / "results.json"
    if status == "ok" and results.is_file():
        res = json.loads(results.read_text())
        detail["ensemble_auc"] = res["ensemble"]["auc"]
        detail["members_auc"] = {m["name"]: m["auc"] for m in res["members"]}
        try:
            # lazy: inside the try, so a broken tensorboard only loses this one figure
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            acc = EventAccumulator(str(results.parent), size_guidance={"scalars": 0}).Reload()
            detail["train_examples_per_s"] = acc.Scalars("train/examples_per_s")[-1].value
        except Exception as e:  # noqa: BLE001 -- a missing scalar must not fail a finished run
            detail["train_examples_per_s"] = f"unavailable: {e}"
        (out / "demo_results.md").write_text((results.parent / "results.md").read_text())
    elif status == "ok":
        status = "failed (no results.json)"
    return StepResult("demo", status, time.monotonic() - t0, " ".join(train), detail, "demo.log")


def bench_worker(models: list[str], batch_sizes: list[int], steps: int, warmup: int, device: str = "cuda",
                 num_fields: int = 39, vocab: int = 100_000) -> list[dict[str, Any]]:
    """Runs in the ``--_bench-worker`` subprocess: one process, one DMP member per model.

    Same schema (39 fields x 100k rows, Zipf 1.1 ids), batches and plain twin as
    recsys.bench.train_step, but everything on the GPU, and each step ends with a
    ``torch.cuda.synchronize()`` so that the wall-clock median is the step's real time.
    (``device="cpu"`` with a small schema is how tests/test_gpu_check.py checks this code.)

    Example::

        bench_worker(["dcnv2"], [4096], steps=10, warmup=2)   # [{"model": "dcnv2", "torchrec_eps": ...}]
    """
    # lazy: runs in the ``--_bench-worker`` subprocess; the driver process stays light
    import torch

    from recsys.bench.train_step import bench_schema, make_batches, paired_steps, time_interleaved
    from recsys.distributed import EmbeddingOptimizerConfig, init_distributed
    from recsys.models import build_member

    env = init_distributed(device)
    dev = env.device
    on_gpu = dev.type == "cuda"
    schema = bench_schema(num_fields, vocab, 0)
    emb_opt = EmbeddingOptimizerConfig("rowwise_adagrad", lr=0.01)
    rows = []
    for bsz in batch_sizes:
        batches = [(d.to(dev), k.to(dev), y.to(dev)) for d, k, y in make_batches(schema, bsz, n=4, zipf=1.1)]
        for name in models:
            tr_step, plain_step = paired_steps(build_member(name, schema, name="m0"), emb_opt, env, batches)
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(dev)
            t_tr, t_plain = time_interleaved([tr_step, plain_step], warmup, steps)
            peak = torch.cuda.max_memory_allocated(dev) / 2**30 if on_gpu else float("nan")
            rows.append({"model": name, "batch_size": bsz, "torchrec_eps": bsz / t_tr, "plain_eps": bsz / t_plain,
                         "ratio": t_plain / t_tr, "peak_mem_gib": peak})
            del tr_step, plain_step  # they hold the sharded member and its twin
            if on_gpu:
                torch.cuda.empty_cache()
    return rows


def _bench(limit: float, out: Path, models: list[str], batch_sizes: list[int], steps: int, cli: bool) -> StepResult:
    if cli:  # recsys.bench.train_step itself, once it can run on CUDA
        t0, status, detail = time.monotonic(), "ok", {}
        for bsz in batch_sizes:
            cmd = [sys.executable, "-m", "recsys.bench.train_step", "--models", ",".join(models), "--batch-size",
                   str(bsz), "--steps", str(steps), "--device", "cuda", "--json", str(out / f"train_step_{bsz}.json")]
            status, _, _ = _run(cmd, max(1.0, limit - (time.monotonic() - t0)), out / "bench.log")
            detail[str(bsz)] = status
            if status != "ok":
                break
        return StepResult("bench", status, time.monotonic() - t0, "recsys.bench.train_step --device cuda", detail, "bench.log")
    cmd = [sys.executable, "-m", "recsys.bench.gpu_check", "--_bench-worker", "--models", ",".join(models),
           "--batch-sizes", ",".join(map(str, batch_sizes)), "--bench-steps", str(steps)]
    status, text, secs = _run(cmd, limit, out / "bench.log")
    rows = [json.loads(ln[len("BENCH_ROW "):]) for ln in text.splitlines() if ln.startswith("BENCH_ROW ")]
    return StepResult("bench", status, secs, " ".join(cmd), {"rows": rows}, "bench.log")


# ----------------------------------------------------------------------------- summary


def markdown(results: list[StepResult], env: dict[str, Any]) -> str:
    """The summary as markdown: one line per step, then the env, the tests, the demo and the bench table."""
    lines = ["# GPU check", "", "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {r.name} | {r.status} | {r.seconds:.0f} |" for r in results]
    if env:
        lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    for r in results:
        if r.name == "tests" and r.detail.get("counts"):
            lines += ["", "## CUDA tests", "", ", ".join(f"{n} {k}" for k, n in r.detail["counts"].items())]
        if r.name == "demo" and r.detail:
            lines += ["", "## Demo on CUDA", ""] + [f"- {k}: {v}" for k, v in r.detail.items()]
        if r.name == "bench" and r.detail.get("rows"):
            lines += ["", "## Train step on the GPU (fp32, table-wise, fused row-wise Adagrad)", "",
                      "| model | batch | torchrec ex/s | plain ex/s | torchrec / plain | peak GiB |",
                      "|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {x['model']} | {x['batch_size']} | {x['torchrec_eps']:,.0f} | {x['plain_eps']:,.0f} | "
                      f"{x['ratio']:.2f}x | {x['peak_mem_gib']:.2f} |" for x in r.detail["rows"]]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, results: list[StepResult], env: dict[str, Any]) -> None:
    """summary.json + summary.md in ``out`` (rewritten after every step)."""
    data = {"steps": [asdict(r) for r in results], "env": env,
            "ok": bool(results) and all(r.status in ("ok", "skipped") for r in results)}
    for name, text in (("summary.json", json.dumps(data, indent=1, default=str)), ("summary.md", markdown(results, env))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recsys.bench.gpu_check", description=__doc__.split("\n\n")[0],
                                epilog=__doc__[__doc__.index("Example::") + len("Example::"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_check", help="where summary.json/.md and the logs go (default runs/gpu_check)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--budget-s", type=float, default=540.0, help="overall time budget; later steps are cut or skipped")
    for s in STEPS:
        p.add_argument(f"--limit-{s}", type=int, default=LIMITS[s], help=f"time limit of step {s} (default {LIMITS[s]} s)")
    p.add_argument("--demo-rows", type=int, default=300_000, help="synthetic rows if data/demo/criteo is missing")
    p.add_argument("--models", default="dcnv2,fnn", help="bench: member models")
    p.add_argument("--batch-sizes", default="4096,16384", help="bench: batch sizes")
    p.add_argument("--bench-steps", type=int, default=10, help="bench: timed steps per path (2 warmup)")
    p.add_argument("--bench-cli", action="store_true", help="bench: run recsys.bench.train_step --device cuda instead")
    p.add_argument("--plan", action="store_true", help="print the steps and their time limits; run nothing")
    p.add_argument("--_bench-worker", dest="bench_worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    steps = _csv(args.steps)
    bad = [s for s in steps if s not in STEPS]
    if bad:
        p.error(f"unknown step(s) {bad}; valid: {','.join(STEPS)}")
    models, sizes = _csv(args.models), [int(b) for b in _csv(args.batch_sizes)]
    limits = {s: getattr(args, f"limit_{s}") for s in STEPS}
    if args.plan:
        total = 0
        for s in steps:
            total += limits[s]
            print(f"{s:6s} limit {limits[s]:4d} s")
        print(f"total  limit {total:4d} s, cut to the budget of {args.budget_s:.0f} s")
        return 0
    import torch  # lazy: `--plan` and `--help` stay torch-free

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check", file=sys.stderr)
        return 2
    if args.bench_worker:
        for row in bench_worker(models, sizes, args.bench_steps, warmup=2):
            print("BENCH_ROW " + json.dumps(row), flush=True)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results: list[StepResult] = []
    env: dict[str, Any] = {}
    for s in steps:
        limit = step_limit(s, limits, args.budget_s - (time.monotonic() - start))
        if not limit:
            results.append(StepResult(s, "skipped", detail={"why": "out of the time budget"}))
        elif s == "env":
            t0 = time.monotonic()
            env = env_report()
            results.append(StepResult("env", "failed (import)" if "import_error" in env else "ok",
                                      time.monotonic() - t0, detail=env))
        elif s == "tests":
            results.append(_tests(limit, out))
        elif s == "demo":
            results.append(_demo(limit, out, args.demo_rows, min(2, torch.cuda.device_count())))
        else:
            results.append(_bench(limit, out, models, sizes, args.bench_steps, args.bench_cli))
        write_summary(out, results, env)
        print(f"gpu_check: {s}: {results[-1].status} ({results[-1].seconds:.0f} s)", flush=True)
    print(markdown(results, env))
    return 0 if all(r.status in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
