"""TorchX components (torchx_components/recsys.py): the AppDefs they build, and a real run of
training then evaluation through ``torchx run -s local_cwd`` (2 gloo ranks, tiny data)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train_group import MEMBERS, ROOT, make_data, write_config
from torchx_components.recsys import evaluate, grouped_train, serve_latency, study


def test_appdefs() -> None:
    train = grouped_train(config="c.toml", nnodes=2, nproc_per_node=4, resume=True, device="cpu",
                          overrides=["train.epochs=1", "name=try2"], cpu=8)
    (role,) = train.roles
    cmd = role.args[-1]
    assert role.num_replicas == 2 and "--nnodes 2 --nproc_per_node 4" in cmd
    assert cmd.endswith("recsys/train_group.py --config c.toml --resume --device cpu --set train.epochs=1 "
                        "--set name=try2")
    assert role.env["OMP_NUM_THREADS"] == "2"  # 8 CPUs over 4 ranks
    (ev,) = evaluate(config="c.toml", checkpoint="ck", split="val", which="latest", overrides=["device=cpu"]).roles
    assert ev.entrypoint == "python" and ev.args == ["-m", "recsys.eval", "--config", "c.toml", "--checkpoint",
                                                     "ck", "--split", "val", "--which", "latest", "--set",
                                                     "device=cpu"]
    (sv,) = serve_latency(config="c.toml", checkpoint="ck", batch=8, requests=5, sweep=True).roles
    assert sv.args[:2] == ["-m", "recsys.serve"] and sv.args[-1] == "--sweep" and "--batch" in sv.args
    (st,) = study("--knobs", "all", "--device", "cuda", gpu=1).roles
    assert st.args == ["-m", "recsys.study", "--knobs", "all", "--device", "cuda"] and st.resource.gpu == 1


def _torchx(*args: str) -> subprocess.CompletedProcess[str]:
    # local_cwd runs torchrun / python from PATH: this interpreter's environment first
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torchx.cli.main", "run", "-s", "local_cwd", *args], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"torchx {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def test_train_then_evaluate_through_torchx(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    make_data(tmp_path / "data")
    cfg = write_config(tmp_path, "tx", MEMBERS, [[0], [1]])
    r = _torchx("torchx_components/recsys.py:grouped_train", "--config", str(cfg), "--nproc_per_node", "2")
    assert "parallel schedule" in r.stdout + r.stderr  # 2 ranks, 2 groups: one rank each
    trained = json.loads((tmp_path / "runs" / "tx" / "results.json").read_text())
    assert trained["ensemble"]["auc"] > 0.55
    out = tmp_path / "runs" / "tx"
    _torchx("torchx_components/recsys.py:evaluate", "--config", str(cfg), "--checkpoint", str(tmp_path / "ckpt" / "tx"))
    rescored = json.loads((out / "test_results.json").read_text())
    # the same best checkpoints scored again in one process: the same ensemble
    assert abs(rescored["ensemble"]["auc"] - trained["ensemble"]["auc"]) < 1e-6
    assert [m["name"] for m in rescored["members"]] == [m["name"] for m in trained["members"]]


def _dryrun(scheduler: str, *cfg: str) -> subprocess.CompletedProcess[str]:
    torchx = str(Path(sys.executable).with_name("torchx"))
    return subprocess.run(
        [torchx, "run", "-s", scheduler, "--dryrun", *cfg, "torchx_components/recsys.py:grouped_train",
         "--image", "registry.example.com/recsys:latest", "--config", "configs/criteo_1tb_dlrmv2.toml",
         "--nnodes", "2", "--nproc_per_node", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_multi_node_slurm_dryrun() -> None:
    """The same component and config, 2 nodes x 8 ranks on Slurm (docs/launching.md): the
    sbatch script runs one torchrun per node with c10d rendezvous and our entry point."""
    r = _dryrun("slurm", "-cfg", "partition=gpu,time=12:00:00")
    assert r.returncode == 0, r.stderr[-2000:]
    script = r.stdout.split("# SBATCH_SCRIPT", 1)[1]  # after the AppDef, the sbatch script itself
    assert script.count("bash -c 'torchrun --rdzv_backend c10d") == 2, script[-3000:]  # one per node
    assert "--nnodes 2 --nproc_per_node 8" in script
    assert "recsys/train_group.py --config configs/criteo_1tb_dlrmv2.toml" in script
    assert "--partition=gpu" in script


def test_multi_node_kubernetes_dryrun() -> None:
    pytest.importorskip("kubernetes", reason="torchx's kubernetes scheduler needs the kubernetes client package")
    r = _dryrun("kubernetes", "--workspace", "", "-cfg", "queue=default,namespace=ml")  # no image build
    assert r.returncode == 0, r.stderr[-2000:]
    assert "replicas: 2" in r.stdout and "recsys/train_group.py" in r.stdout


def test_study_runs_fan_out_through_torchx(tmp_path: Path) -> None:
    """recsys.study's torchx launcher: two runs as two `torchx run -s local_cwd` jobs at once,
    each leaving its results and the config it trained; a restart then skips both."""
    from recsys.study import Launcher, RunPlan, TrainSettings, train_runs
    from recsys.study.run import DONE_FILE, pending_runs

    (tmp_path / "data").mkdir()
    make_data(tmp_path / "data")
    settings = TrainSettings(data_dir=str(tmp_path / "data"), epochs=1, batch_size=128, log_dir=str(tmp_path / "runs"),
                             checkpoint_dir=str(tmp_path / "ckpt"))
    runs = [RunPlan("a", [MEMBERS[0]], [[0]]), RunPlan("b", [MEMBERS[1]], [[0]])]
    seconds = train_runs(runs, settings, tmp_path / "work", Launcher("torchx"), keep_checkpoints=False)
    assert sorted(seconds) == ["a", "b"]
    for name in ("a", "b"):
        assert json.loads((tmp_path / "runs" / name / "results.json").read_text())["members"][0]["auc"] > 0.5
        assert (tmp_path / "runs" / name / DONE_FILE).is_file() and not (tmp_path / "ckpt" / name).exists()
        assert "Job finished: SUCCEEDED" in (tmp_path / "work" / f"{name}.log").read_text()
    assert pending_runs(runs, settings, retrain=False)[0] == []
