"""CPU-side checks of the GPU tooling: recsys.bench.gpu_check (no CUDA: one line, exit 2; plan,
budget, summary) and scripts/gpu_wheels.sh (bundle -> carry batches -> stash -> unpack gives
back the same wheels, and a damaged part is refused).  A GPU session has minutes, not hours:
everything here must already work when it starts.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from recsys.bench import gpu_check
from recsys.bench.gpu_check import StepResult, markdown, pytest_counts, step_limit, write_summary

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_wheels.sh"
TAG = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _no_cuda_env() -> dict[str, str]:
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))


def test_without_cuda_one_line_and_exit_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "recsys.bench.gpu_check", "--out", str(tmp_path / "g")],
                       capture_output=True, text=True, cwd=ROOT, env=_no_cuda_env(), timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no CUDA device" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "g").exists()  # nothing half-written


def test_help_and_plan_need_no_gpu() -> None:
    h = subprocess.run([sys.executable, "-m", "recsys.bench.gpu_check", "--help"], capture_output=True, text=True,
                       cwd=ROOT, env=_no_cuda_env(), timeout=60)
    assert h.returncode == 0 and "--plan" in h.stdout and "python -m recsys.bench.gpu_check --out" in h.stdout
    p = subprocess.run([sys.executable, "-m", "recsys.bench.gpu_check", "--plan", "--steps", "env,bench",
                        "--limit-bench", "99"], capture_output=True, text=True, cwd=ROOT, env=_no_cuda_env(), timeout=60)
    assert p.returncode == 0, p.stderr
    assert [ln.split()[0] for ln in p.stdout.splitlines()] == ["env", "bench", "total"]
    assert "limit   99 s" in p.stdout and f"limit {gpu_check.LIMITS['env'] + 99:4d} s" in p.stdout
    bad = subprocess.run([sys.executable, "-m", "recsys.bench.gpu_check", "--plan", "--steps", "env,nope"],
                         capture_output=True, text=True, cwd=ROOT, env=_no_cuda_env(), timeout=60)
    assert bad.returncode == 2 and "unknown step(s) ['nope']" in bad.stderr


def test_default_budget_fits_one_device_call() -> None:
    # A device command runs at most 10 minutes: the overall budget (not the per-step caps, which
    # add up to more) is what keeps one gpu_check call inside it, with a minute to spare.
    budget = gpu_check.build_parser().parse_args([]).budget_s
    assert budget <= 540 and all(limit <= budget for limit in gpu_check.LIMITS.values())


def test_step_limit_cuts_to_the_budget() -> None:
    limits = {"tests": 240, "demo": 240}
    assert step_limit("tests", limits, budget_left=500) == 240
    assert step_limit("demo", limits, budget_left=100) == 90  # 10 s kept for the summary
    assert step_limit("demo", limits, budget_left=25) == 0  # too little left: not started


def test_run_kills_the_whole_process_group_on_timeout(tmp_path: Path) -> None:
    """A step past its limit is stopped with its children (a torchrun's workers must not keep the GPU)."""
    pid_file = tmp_path / "child.pid"
    script = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)"
    status, out, secs = gpu_check._run([sys.executable, "-c", script], 3.0, tmp_path / "x.log")
    assert status == "timeout (3 s)" and "started" in out and secs < 30, (status, out, secs)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    state = Path(f"/proc/{child}/stat").read_text().split()[2] if Path(f"/proc/{child}").exists() else "gone"
    assert state in ("gone", "Z"), f"the step's child {child} survived the timeout ({state})"
    assert "started" in (tmp_path / "x.log").read_text()


def test_pytest_counts() -> None:
    assert pytest_counts("....\n=== 4 passed, 1 skipped in 9.10s ===") == {"passed": 4, "skipped": 1}
    assert pytest_counts("F\nFAILED tests/x.py::t\n1 failed, 3 passed, 2 deselected in 1s") == {
        "failed": 1, "passed": 3, "deselected": 2}
    assert pytest_counts("no summary here") == {}


def test_summary_json_and_markdown(tmp_path: Path) -> None:
    rows = [{"model": "dcnv2", "batch_size": 4096, "torchrec_eps": 812345.6, "plain_eps": 400000.0,
             "ratio": 2.03, "peak_mem_gib": 1.5}]
    results = [StepResult("env", "ok", 1.0), StepResult("tests", "failed (exit 1)", 50.0, detail={"counts": {"passed": 3, "failed": 1}}),
               StepResult("bench", "ok", 70.0, detail={"rows": rows})]
    write_summary(tmp_path, results, {"torch": "2.11.0+cu130", "gpus": ["NVIDIA H200"]})
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["ok"] is False and [s["status"] for s in data["steps"]] == ["ok", "failed (exit 1)", "ok"]
    md = (tmp_path / "summary.md").read_text()
    assert md == markdown(results, data["env"])
    assert "| tests | failed (exit 1) | 50 |" in md and "3 passed, 1 failed" in md
    assert "| dcnv2 | 4096 | 812,346 | 400,000 | 2.03x | 1.50 |" in md
    assert not list(tmp_path.glob("*.tmp"))


def _bench_on_cpu(rank: int, world: int) -> list[dict]:
    return gpu_check.bench_worker(["dcnv2", "fnn"], [32], steps=2, warmup=1, device="cpu", num_fields=4, vocab=50)


def test_bench_worker_runs_and_reports_rows() -> None:
    """The GPU bench's code on CPU (a tiny schema): every model x batch gives a plausible row."""
    from tests.dist_harness import run_ranks

    (rows,) = run_ranks(_bench_on_cpu, 1, timeout=180)
    assert [(r["model"], r["batch_size"]) for r in rows] == [("dcnv2", 32), ("fnn", 32)]
    for r in rows:
        assert r["torchrec_eps"] > 0 and r["plain_eps"] > 0
        assert r["ratio"] == pytest.approx(r["torchrec_eps"] / r["plain_eps"])


def test_env_report_names_the_stack() -> None:
    env = gpu_check.env_report()
    assert "import_error" not in env, env
    assert env["torch"].split("+")[0].count(".") == 2 and env["torchrec"][0].isdigit(), env


# ----------------------------------------------------------------------------- scripts/gpu_wheels.sh


def _wheel(d: Path, name: str, payload: bytes) -> Path:
    """A minimal valid wheel: one module with ``payload`` in a data file, executable bit on a script."""
    path = d / f"{name}-1.0-py3-none-any.whl"
    files = {f"{name}/__init__.py": b"X = 1\n", f"{name}/blob.bin": payload, f"{name}/tool.sh": b"#!/bin/sh\necho hi\n",
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for fn, data in files.items():
            info = zipfile.ZipInfo(fn, (2024, 1, 2, 3, 4, 6))
            info.external_attr = (0o100755 if fn.endswith(".sh") else 0o100644) << 16
            z.writestr(info, data)
        z.writestr(f"{name}-1.0.dist-info/RECORD", "")
        z.writestr(f"{name}/", "")  # a directory entry, as some real wheels have (charset-normalizer)
    return path


def _members(whl: Path) -> dict[str, tuple[str, int]]:
    with zipfile.ZipFile(whl) as z:
        return {i.filename: (hashlib.sha256(z.read(i)).hexdigest(), i.external_attr >> 16) for i in z.infolist()}


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"gpu_wheels.sh {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.mark.skipif(shutil.which("xz") is None, reason="needs xz")
@pytest.mark.parametrize("plain", [False, True], ids=["bundle", "plain"])
def test_wheels_survive_batches_stash_and_unpack(tmp_path: Path, plain: bool) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    big = _wheel(wheels, "demo_a", os.urandom(2_500_000))  # incompressible: 3 parts of 1 MiB
    small = _wheel(wheels, "demo_b", b"b" * 1000)
    out, base = tmp_path / "prep", tmp_path / "gpu-home"
    extra = ["--plain"] if plain else []
    p = _sh("prepare", "--wheels", str(wheels), "--out", str(out), "--python-version", TAG,
            "--part-mib", "1", "--batch-mib", "1", *extra)
    carry = out / f"cp{TAG.replace('.', '')}" / "carry"
    batches = sorted(d.name for d in carry.iterdir())
    assert len(batches) >= 3 and f"({len(batches)} calls" in p.stdout, (batches, p.stdout)
    for d in carry.iterdir():
        assert sum(f.stat().st_size for f in d.iterdir()) <= (1 << 20) + 4096, d  # a batch fits its limit
    # The GPU machine: batches arrive one call at a time in a fresh tree (only what was carried).
    remote = tmp_path / "remote" / f"cp{TAG.replace('.', '')}" / "carry"
    remote.mkdir(parents=True)
    args = ["--out", str(tmp_path / "remote"), "--base", str(base), "--python", sys.executable]
    shutil.copytree(carry / batches[0], remote / batches[0])
    s1 = _sh("stash", *args)
    assert f"1/{len(batches)} batches; missing: {' '.join(batches[1:])}" in s1.stdout, s1.stdout
    assert _sh("unpack", *args, check=False).returncode != 0  # incomplete: refused, naming the batch
    shutil.rmtree(remote / batches[0])  # the next call carries only its own batch
    for b in batches[1:]:
        shutil.copytree(carry / b, remote / b)
    assert "complete: run install" in _sh("stash", *args).stdout
    u = _sh("unpack", *args)
    rebuilt = base / f"cp{TAG.replace('.', '')}" / "wheels"
    for orig in (big, small):
        got = rebuilt / orig.name
        assert _members(got) == _members(orig), orig.name  # same files, bytes and modes
        if plain:
            assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(orig.read_bytes()).digest()
    assert "every file's sha256 as prepared" in u.stdout or plain
    # A part damaged in transit is refused when it arrives.
    victim = next(f for f in (remote / batches[-1]).iterdir() if f.name != "SHA256SUMS")
    victim.write_bytes(b"\0" + victim.read_bytes()[1:])
    (base / f"cp{TAG.replace('.', '')}" / victim.name).unlink()
    bad = _sh("stash", *args, check=False)
    assert bad.returncode != 0 and "arrived damaged" in bad.stderr + bad.stdout, (bad.stdout, bad.stderr)


def test_wheel_script_help_and_bad_mode() -> None:
    h = _sh("--help")
    assert "prepare" in h.stdout and "install" in h.stdout and "Examples:" in h.stdout
    bad = _sh("nonsense", check=False)
    assert bad.returncode == 2 and "unknown mode 'nonsense'" in bad.stderr
