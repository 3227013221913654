"""Training the study's runs: each is ``recsys/train_group.py --config <run>.toml``, so the
numbers come from exactly the code users run; launched one after another in subprocesses
(``local``: torchrun with ``--nproc`` > 1) or all at once as TorchX jobs (``torchx``: one
``torchx run`` of ``torchx_components/recsys.py:grouped_train`` per run, on any scheduler, so a
cluster trains them in parallel).

Restarting the study skips every run already done with the same config on the same data: its
``runs/<name>/study_run.json`` (written once the run's results are) holds the config it trained,
which must compare equal as a loaded ``ExperimentConfig`` (so a config written by an earlier
version of the study, formatted differently, still counts), and the data it trained on (the
sha256 of the data dir's ``meta.json``, each split's row count in the files) with the member
specs resolved against that data (``resolve_spec``), which must be the same today: the config
names only a path and a preset, so a dataset converted again in place, or a preset that builds
differently now, would otherwise be skipped with stale results.  A ``study_run.json`` from
before this fingerprint, and a run from before ``study_run.json``, are trained again.  A run
killed half-way has no such file (``train_group.py`` set its old directory aside) and is
trained again; ``retrain`` forces all.

Example::

    seconds = train_run(run, TrainSettings(epochs=1), Path("runs/tts_vs_params"), nproc=1, reuse=True)
    done = train_runs(runs, settings, work, Launcher("torchx", scheduler="slurm"), retrain=False)
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Sequence

from recsys.errors import UserError
from recsys.study.configs import TrainSettings, config_toml, load_config_text, same_config
from recsys.study.plan import RunPlan

ROOT = Path(__file__).resolve().parents[2]  # the repository: scripts and relative paths are taken from here
DONE_FILE = "study_run.json"  # in runs/<name>: the config the finished run trained, and its seconds
# absolute, so a printed command (--dry-run) names the component from any directory
COMPONENT = f"{ROOT / 'torchx_components' / 'recsys.py'}:grouped_train"
LAUNCHERS = ("local", "torchx")
# a started run: its plan, config text, data fingerprint, log, process, open log file, start time
_Job = tuple[RunPlan, str, dict[str, Any] | None, Path, subprocess.Popen[bytes], IO[bytes], float]


class DataPrepFailed(UserError):
    """Synthesizing or converting the demo data failed."""


class RunFailed(RuntimeError):
    """``train_group.py`` exited non-zero; the message ends with the last lines of its log."""


@dataclass
class Launcher:
    """How runs are started: ``local`` (one after another, here) or ``torchx`` (every run a
    ``torchx run -s <scheduler>`` job, at most ``parallel`` at once; 0 = all)."""

    kind: str = "local"
    nproc: int = 1  # ranks per run
    scheduler: str = "local_cwd"
    scheduler_args: str = ""  # torchx -cfg, e.g. "partition=gpu,time=2:00:00"
    component_args: str = ""  # extra grouped_train args, e.g. "--image reg/recsys:1 --gpu 1"
    parallel: int = 0

    def __post_init__(self) -> None:
        if self.kind not in LAUNCHERS:
            raise UserError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {self.kind!r}")
        if self.nproc < 1 or self.parallel < 0:
            raise UserError(f"--nproc must be >= 1 and --parallel >= 0, got {self.nproc}, {self.parallel}")


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


def torchx_command(run: RunPlan, config: Path, launcher: Launcher) -> list[str]:
    """``torchx run`` of the grouped_train component for one run; ``--wait`` so the study
    knows when its results are there (several such commands run at once)."""
    cfg = ["-cfg", launcher.scheduler_args] if launcher.scheduler_args else []
    return [sys.executable, "-m", "torchx.cli.main", "run", "-s", launcher.scheduler, "--wait", *cfg, COMPONENT,
            "--config", str(config), "--nproc_per_node", str(launcher.nproc), "--name", f"recsys_study/{run.name}",
            *shlex.split(launcher.component_args)]


def launch_command(run: RunPlan, config: Path, launcher: Launcher) -> list[str]:
    """The command that trains ``run`` from ``config`` with ``launcher``."""
    if launcher.kind == "torchx":
        return torchx_command(run, config, launcher)
    return train_command(config, launcher.nproc)


def data_fingerprint(text: str) -> dict[str, Any] | None:
    """What the run of config ``text`` trains on beyond the config's own words: the sha256 of
    its data dir's ``meta.json``, each split's rows in the files, and the member specs resolved
    against that schema (what a preset builds on this data).  None when the data or a spec
    cannot be read (such a run is never counted as done; training names the problem)."""
    from recsys.data.schema import META_FILE, Schema
    from recsys.data.source import NpySplit
    from recsys.models.preset import resolve_spec

    try:
        cfg = load_config_text(text)
        data = Path(cfg.data_dir)
        meta = (data / META_FILE).read_bytes()
        schema = Schema.load(data)
        return {"meta_sha256": hashlib.sha256(meta).hexdigest(),
                "rows": {split: len(NpySplit(data, split)) for split in sorted(schema.splits)},
                "members": [resolve_spec(m, schema) for m in cfg.members]}
    except (OSError, UserError):
        return None


def done_seconds(run: RunPlan, text: str, settings: TrainSettings) -> float | None:
    """The training seconds of ``run`` if it already finished with the config ``text`` on the
    data that is there now (``data_fingerprint``), else None; a finished run that is trained
    again for its data or its missing fingerprint gets one line saying so."""
    run_dir = Path(settings.log_dir) / run.name
    done = run_dir / DONE_FILE
    if not (run_dir / "results.json").is_file() or not done.is_file():
        return None
    d = json.loads(done.read_text())
    if not same_config(str(d["config"]), text):
        return None
    if "data" not in d:
        print(f"tts_vs_params: retraining {run.name}: its {done} is from before data fingerprints", flush=True)
        return None
    now = data_fingerprint(text)
    if now is None or d["data"] != now:
        print(f"tts_vs_params: retraining {run.name}: its data ({load_config_text(text).data_dir}) or what its "
              "member specs build on it changed since it trained", flush=True)
        return None
    return float(d["seconds"])


def recorded_seconds(run: RunPlan, settings: TrainSettings) -> float:
    """The training seconds ``run``'s ``study_run.json`` recorded (0.0 without one), for
    ``--report-only``, which scores the runs on disk without training or checking them."""
    done = Path(settings.log_dir) / run.name / DONE_FILE
    try:
        return float(json.loads(done.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _finish(run: RunPlan, text: str, data: dict[str, Any] | None, settings: TrainSettings, log: Path,
            returncode: int, seconds: float) -> None:
    """Checks that ``run`` wrote its results and records it done with the config and the data
    fingerprint taken when it started (``data``), so a restart can skip it."""
    run_dir = Path(settings.log_dir) / run.name
    if returncode != 0 or not (run_dir / "results.json").is_file():
        tail = log.read_text().splitlines()[-15:] if log.is_file() else []
        raise RunFailed(f"{run.name}: training exited with {returncode}"
                        f"{'' if returncode else ' without writing results.json'}; last lines of {log}:\n"
                        + "\n".join(tail))
    (run_dir / DONE_FILE).write_text(json.dumps({"config": text, "seconds": seconds, "data": data}))


def _tool_env() -> dict[str, str]:
    """local_cwd runs ``torchrun`` from PATH: this interpreter's environment first."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def train_run(run: RunPlan, settings: TrainSettings, work: Path, nproc: int, reuse: bool) -> float:
    """Trains one run here unless ``reuse`` and it is done with this exact config; returns seconds."""
    return train_runs([run], settings, work, Launcher(nproc=nproc), retrain=not reuse)[run.name]


def pending_runs(runs: Sequence[RunPlan], settings: TrainSettings,
                 retrain: bool) -> tuple[list[RunPlan], dict[str, float]]:
    """The runs still to train, and the seconds of those already done (skipped)."""
    todo: list[RunPlan] = []
    done: dict[str, float] = {}
    for run in runs:
        seconds = None if retrain else done_seconds(run, config_toml(run, settings), settings)
        if seconds is None:
            todo.append(run)
        else:
            done[run.name] = seconds
    return todo, done


def dry_run(runs: Sequence[RunPlan], settings: TrainSettings, work: Path, launcher: Launcher,
            retrain: bool) -> list[list[str]]:
    """Writes the configs of the runs still to train and returns their launch commands, with
    absolute paths (the config, the script or component), to be run from the repository
    (``cd ROOT``: the configs' default paths and the component's script are the repository's)."""
    work.mkdir(parents=True, exist_ok=True)
    todo, _ = pending_runs(runs, settings, retrain)
    out = []
    for run in todo:
        config = Path(os.path.abspath(work / f"{run.name}.toml"))
        config.write_text(config_toml(run, settings))
        out.append(launch_command(run, config, launcher))
    return out


def train_runs(runs: Sequence[RunPlan], settings: TrainSettings, work: Path, launcher: Launcher,
               retrain: bool = False, keep_checkpoints: bool = True) -> dict[str, float]:
    """Trains every run not already done (all with ``retrain``); returns seconds per run.

    ``local`` trains them one after another; ``torchx`` starts up to ``launcher.parallel``
    jobs at once (0: all) and waits for them.  Checkpoints are deleted as each run ends unless
    ``keep_checkpoints``.  ``RunFailed`` after all started jobs ended, if any failed."""
    work.mkdir(parents=True, exist_ok=True)
    todo, seconds = pending_runs(runs, settings, retrain)
    for name in seconds:
        print(f"tts_vs_params: skipping {Path(settings.log_dir) / name} (done with the same config)", flush=True)
    width = 1 if launcher.kind == "local" else (launcher.parallel or max(1, len(todo)))
    running: list[_Job] = []
    failures: list[str] = []

    def reap(job: _Job) -> None:
        run, text, data, log, proc, f, t0 = job
        code = proc.wait()
        f.close()
        took = time.perf_counter() - t0
        try:
            _finish(run, text, data, settings, log, code, took)
            seconds[run.name] = took
        except RunFailed as e:
            failures.append(str(e))
        finally:
            if not keep_checkpoints:
                shutil.rmtree(Path(settings.checkpoint_dir) / run.name, ignore_errors=True)

    try:
        for run in todo:
            while len(running) >= width:
                reap(running.pop(0))
            if failures and launcher.kind == "local":
                break  # one after another: a failure stops the study (its log says why)
            text = config_toml(run, settings)
            data = data_fingerprint(text)  # before training: the data it starts from
            config, log = work / f"{run.name}.toml", work / f"{run.name}.log"
            config.write_text(text)
            print(f"tts_vs_params: training {run.name}: {len(run.members)} members in {len(run.groups)} groups "
                  f"({launcher.kind}; log {log})", flush=True)
            out = open(log, "wb")
            proc = subprocess.Popen(launch_command(run, config, launcher), cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT, env=_tool_env())
            running.append((run, text, data, log, proc, out, time.perf_counter()))
        while running:
            reap(running.pop(0))
    finally:
        for run, _, _, _, proc, f, _ in running:  # interrupted: stop what this study started
            proc.terminate()
            proc.wait()
            f.close()
    if failures:
        raise RunFailed("\n".join(failures))
    return seconds
