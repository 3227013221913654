"""Training the study's runs: each is ``recsys/train_group.py --config <run>.toml`` in a
subprocess (torchrun with ``--nproc`` > 1), so the numbers come from exactly the code users run.

``--reuse`` skips a run whose ``results.json`` exists and whose config on disk trains the same
thing as the one it would write now (compared as loaded ``ExperimentConfig``\\ s, so a config
written by an earlier version of the study, formatted differently, is still reused).

Example::

    seconds = train_run(run, TrainSettings(epochs=1), Path("runs/tts_vs_params"), nproc=1, reuse=True)
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from recsys.errors import UserError
from recsys.study.configs import TrainSettings, config_toml, same_config
from recsys.study.plan import RunPlan

ROOT = Path(__file__).resolve().parents[2]  # the repository: scripts and relative paths are taken from here


class DataPrepFailed(UserError):
    """Synthesizing or converting the demo data failed."""


class RunFailed(RuntimeError):
    """``train_group.py`` exited non-zero; the message ends with the last lines of its log."""


def ensure_data(data_dir: Path, rows: int) -> None:
    """Creates the demo's synthetic Criteo data as scripts/demo.sh does, if it is missing."""
    if (data_dir / "meta.json").is_file():
        return
    raw = data_dir.parent / "raw" / "criteo_synthetic.tsv"
    raw.parent.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    print(f"tts_vs_params: {data_dir}/meta.json missing; synthesizing {rows:,} Criteo rows", flush=True)
    try:
        subprocess.run([py, "data_prep/synthesize.py", "--dataset", "criteo", "--rows", str(rows), "--output",
                        str(raw), "--seed", "0", "--no-progress"], cwd=ROOT, check=True)
        subprocess.run([py, "data_prep/criteo_to_npy.py", "--input", str(raw), "--output", str(data_dir),
                        "--min-count", "5", "--workers", "2", "--no-progress"], cwd=ROOT, check=True)
    except subprocess.CalledProcessError as e:
        raise DataPrepFailed(f"creating {data_dir} failed: {e}") from None


def train_command(config: Path, nproc: int) -> list[str]:
    """The command line that trains ``config`` on ``nproc`` ranks."""
    script = str(ROOT / "recsys" / "train_group.py")
    if nproc <= 1:
        return [sys.executable, script, "--config", str(config)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            script, "--config", str(config)]


def train_run(run: RunPlan, settings: TrainSettings, work: Path, nproc: int, reuse: bool) -> float:
    """Trains one run unless ``reuse`` and its results match this exact config; returns seconds."""
    text = config_toml(run, settings)
    config = work / f"{run.name}.toml"
    run_dir = Path(settings.log_dir) / run.name
    log = work / f"{run.name}.log"
    if reuse and (run_dir / "results.json").is_file() and config.is_file() and same_config(config.read_text(), text):
        print(f"tts_vs_params: reusing {run_dir} (same config)", flush=True)
        # the earlier training time: the config is written just before training, the log last written at its end
        return log.stat().st_mtime - config.stat().st_mtime if log.is_file() else 0.0
    config.write_text(text)
    t0 = time.perf_counter()
    print(f"tts_vs_params: training {run.name}: {len(run.members)} members in {len(run.groups)} groups "
          f"(log {log})", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(train_command(config, nproc), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RunFailed(f"{run.name}: train_group.py exited with {proc.returncode}; last lines of {log}:\n"
                        + "\n".join(tail))
    return time.perf_counter() - t0
