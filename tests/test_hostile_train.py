"""Hostile inputs to training, checkpoints and evaluation (issue 12): every case asserts the
exit code, the one line that names the file, row or step at fault, and that nothing already
written was lost.

- non-finite or extreme data: NaN / inf in dense values and labels stop the run naming the row;
  a loss that diverges stops it naming the step, before a NaN checkpoint can be kept;
- ``train.batch_size`` above the train split's rows is refused before anything runs;
- truncated or missing arrays of ANY split (train, val, test) are found before the previous
  run is touched; a fresh run sets the previous one aside until its own first checkpoint;
- a damaged latest checkpoint (each file kind) makes ``--resume`` fall back to the newest
  intact one and say so; the resumed run ends exactly where an uninterrupted run does;
- ``recsys.eval`` on a damaged checkpoint: one line naming the file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.hostile_util import assert_unchanged, one_line_error, snapshot
from tests.fault_injection import SCRIPT as FAULT_INJECTION
from tests.test_train_group import MEMBERS, make_data, run, write_config

ONE = [MEMBERS[0]]  # one small FNN member: the cheapest real run


def _fresh(root: Path, name: str) -> Path:
    """A data dir of its own (cases damage it) and a config whose run checkpoints every epoch."""
    data = root / name / "data"
    data.mkdir(parents=True)
    make_data(data)
    cfg = write_config(root / name, name, ONE, [[0]])
    return cfg


def _run_dirs(cfg_path: Path) -> tuple[Path, Path]:
    root, name = cfg_path.parent, cfg_path.stem
    return root / "runs" / name, root / "ckpt" / name


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed 1-process run (2 epochs, checkpoints every 3 steps); cases copy it."""
    root = tmp_path_factory.mktemp("hostile_train")
    cfg = _fresh(root, "base")
    run(cfg, 1)
    return cfg


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run (data, runs, checkpoints) with its config re-pointed."""
    src = trained.parent
    dst = tmp_path / "case"
    shutil.copytree(src, dst)
    cfg = dst / trained.name
    cfg.write_text(cfg.read_text().replace(str(src), str(dst)))
    return cfg


def _fail(cfg: Path, *extra: str, nproc: int = 1) -> str:
    r = run(cfg, nproc, *extra, check=False)
    assert r.returncode == 2, f"rc={r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return one_line_error(r.stderr)


# ----------------------------------------------------------------------------- data


def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3])  # a copy cut short


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("kind", ["sparse", "dense", "labels"])
def test_preflight_finds_a_truncated_array_of_any_split(trained: Path, tmp_path: Path, split: str,
                                                        kind: str) -> None:
    """In-process (the CLI case below shows main runs this before anything else)."""
    from recsys.config import load_config
    from recsys.data.loader import LoaderError
    from recsys.train.run_dir import preflight

    cfg = _copy_run(trained, tmp_path)
    f = cfg.parent / "data" / f"{split}_{kind}.npy"
    _truncate(f)
    with pytest.raises(LoaderError) as e:
        preflight(load_config(cfg))
    assert f"{f}: not a readable .npy file" in str(e.value)


@pytest.mark.parametrize("split", ["train", "test"])
def test_truncated_split_is_refused_before_the_previous_run_is_touched(trained: Path, tmp_path: Path,
                                                                       split: str) -> None:
    cfg = _copy_run(trained, tmp_path)
    runs, ckpt = _run_dirs(cfg)
    before_runs, before_ckpt = snapshot(runs), snapshot(ckpt)
    f = cfg.parent / "data" / f"{split}_sparse.npy"
    _truncate(f)
    line = _fail(cfg)
    assert f"{f}: not a readable .npy file" in line, line
    assert_unchanged(before_runs, runs)  # still in place: nothing was even moved
    assert_unchanged(before_ckpt, ckpt)


def test_batch_size_larger_than_train_split_is_refused(trained: Path, tmp_path: Path) -> None:
    cfg = _copy_run(trained, tmp_path)
    runs, ckpt = _run_dirs(cfg)
    before = snapshot(ckpt)
    line = _fail(cfg, "--set", "train.batch_size=2048")
    assert "train.batch_size=2048 is larger than the train split (1024 rows)" in line, line
    assert_unchanged(before, ckpt)


@pytest.mark.parametrize("kind, value", [("dense", np.nan), ("dense", np.inf), ("labels", np.nan)])
def test_non_finite_data_stops_the_run_naming_the_row(trained: Path, tmp_path: Path, kind: str,
                                                      value: float) -> None:
    cfg = _copy_run(trained, tmp_path)
    runs, ckpt = _run_dirs(cfg)
    before_ckpt = snapshot(ckpt)
    f = cfg.parent / "data" / f"train_{kind}.npy"
    arr = np.load(f)
    row = 517
    if kind == "dense":
        arr[row, 1] = value
    else:
        arr[row] = value
    np.save(f, arr)
    # No mid-epoch checkpoints: the bad row is met before the new run's first checkpoint,
    # so the set-aside previous run must still be there afterwards.
    line = _fail(cfg, "--set", "train.checkpoint_interval=0")
    assert f"{f} row {row}:" in line, line
    assert ("dense feature 'I1'" in line) if kind == "dense" else ("label is nan" in line), line
    # The old run waits beside the new one (which never checkpointed), byte for byte.
    assert_unchanged(before_ckpt, ckpt.with_name(ckpt.name + ".previous"))
    assert not list(ckpt.glob("group*/step-*")) if ckpt.exists() else True


def test_diverging_loss_stops_the_run_naming_the_step_and_keeps_no_nan_checkpoint(
    trained: Path, tmp_path: Path
) -> None:
    """Finite but extreme dense values (3e38) overflow the first layer: the loss is inf/nan."""
    cfg = _copy_run(trained, tmp_path)
    runs, ckpt = _run_dirs(cfg)
    before_ckpt = snapshot(ckpt)
    f = cfg.parent / "data" / "train_dense.npy"
    arr = np.load(f)
    arr[:, 0] = 3e38
    np.save(f, arr)
    line = _fail(cfg)
    assert "group 0: training loss is" in line and "at step 1 (epoch 0)" in line, line
    assert "stopped before saving a checkpoint" in line
    assert not ckpt.exists() or not list(ckpt.glob("group*/step-*")), "a checkpoint of a NaN run was saved"
    assert_unchanged(before_ckpt, ckpt.with_name(ckpt.name + ".previous"))
    # The next fresh run that works replaces both: the set-aside copy goes after its first checkpoint.
    np.save(f, np.full_like(arr, 0.5))
    r = run(cfg, 1)
    assert "kept in" in r.stdout and ".previous" in r.stdout
    assert not ckpt.with_name(ckpt.name + ".previous").exists()
    assert not runs.with_name(runs.name + ".previous").exists()
    assert (runs / "results.json").is_file() and list(ckpt.glob("group0/step-*"))


def test_diverging_group_on_rank_1_is_reported_by_rank_1(trained: Path, tmp_path: Path) -> None:
    """2 ranks, 2 groups in parallel; only group 1 (on rank 1) diverges (its embeddings start
    at an absurd scale).  The line must come from the rank that saw it, not be lost behind
    rank 0, which has nothing to report."""
    cfg = _copy_run(trained, tmp_path)
    wild = MEMBERS[1] + ",embedding_init=normal,embedding_init_std=1e30"
    cfg.write_text(cfg.read_text().replace(json.dumps(ONE), json.dumps([MEMBERS[0], wild]))
                   .replace("groups = [[0]]", "groups = [[0], [1]]"))
    r = run(cfg, 2, check=False)
    assert r.returncode != 0
    # torchrun adds its own failure summary (with a traceback of the launcher); ours is one line.
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("train_group: error:")]
    assert len(ours) == 1, r.stderr[-3000:]
    assert "[rank 1] group 1: training loss is" in ours[0], ours


# ----------------------------------------------------------------------------- checkpoints


def _latest(ckpt: Path) -> Path:
    return sorted((ckpt / "group0").glob("step-*"))[-1]


@pytest.mark.parametrize("victim", ["__0_0.distcp", ".metadata", "rank0.pt", "state.json"])
def test_resume_falls_back_from_a_damaged_latest_checkpoint(trained: Path, tmp_path: Path, victim: str) -> None:
    """A rerun killed at step 13 keeps two checkpoints: step 8 (epoch 0's end, the best) and
    step 11 (the latest).  Damaging step 11 must resume from step 8, say so, and end exactly
    where the uninterrupted run ended."""
    cfg = _copy_run(trained, tmp_path)
    runs, ckpt = _run_dirs(cfg)
    reference = json.loads((runs / "results.json").read_text())
    r = run(cfg, 1, "--fail-at-step", "13", check=False, script=FAULT_INJECTION)
    assert r.returncode == 17, r.stderr[-2000:]
    steps = sorted(p.name for p in (ckpt / "group0").glob("step-*"))
    assert steps == ["step-00000008", "step-00000011"], steps
    f = _latest(ckpt) / victim
    f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])
    r = run(cfg, 1, "--resume")
    assert "checkpoint step-00000011 is damaged, skipping it" in r.stdout and str(f) in r.stdout, r.stdout
    assert "resumed from step 8" in r.stdout
    resumed = json.loads((runs / "results.json").read_text())
    assert resumed["ensemble"] == reference["ensemble"]
    assert resumed["members"] == reference["members"]
    assert (ckpt / "group0" / ".damaged-step-00000011").is_dir()  # kept for a post-mortem, never loaded


def test_resume_with_every_checkpoint_damaged_is_one_line(trained: Path, tmp_path: Path) -> None:
    cfg = _copy_run(trained, tmp_path)
    _, ckpt = _run_dirs(cfg)
    for d in (ckpt / "group0").glob("step-*"):
        (d / ".metadata").write_bytes(b"")
    line = _fail(cfg, "--resume")
    assert "every checkpoint is damaged" in line and str(ckpt / "group0") in line, line


@pytest.mark.parametrize("victim", ["__0_0.distcp", ".metadata", "state.json", "best.json"])
def test_evaluate_on_a_damaged_checkpoint_names_the_file(trained: Path, tmp_path: Path, victim: str) -> None:
    from tests.hostile_util import run_cli

    cfg = _copy_run(trained, tmp_path)
    _, ckpt = _run_dirs(cfg)
    best = json.loads((ckpt / "group0" / "best.json").read_text())
    d = ckpt / "group0" / f"step-{best['step']:08d}"
    f = ckpt / "group0" / victim if victim == "best.json" else d / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    before = snapshot(ckpt)
    rc, err = run_cli(["-m", "recsys.eval", "--config", str(cfg), "--checkpoint", str(ckpt)])
    assert rc == 2, err
    line = one_line_error(err)
    assert str(f) in line, line
    assert_unchanged(before, ckpt)  # evaluation never repairs or deletes anything


def test_manifest_detects_a_changed_small_file(tmp_path: Path) -> None:
    """Same size, different bytes: the sha256 of a small file catches it."""
    from recsys.checkpoint import CheckpointCorrupt, verify_checkpoint, write_manifest

    d = tmp_path / "step-00000001"
    d.mkdir()
    (d / "state.json").write_text('{"step": 1}')
    (d / "rank0.pt").write_bytes(b"abcdef")
    write_manifest(d)
    verify_checkpoint(d)  # intact
    (d / "rank0.pt").write_bytes(b"abcdeX")
    with pytest.raises(CheckpointCorrupt, match="rank0.pt: content differs"):
        verify_checkpoint(d)
    (d / "rank0.pt").unlink()
    with pytest.raises(CheckpointCorrupt, match="rank0.pt: missing"):
        verify_checkpoint(d)


# ----------------------------------------------------------------------------- the previous run


def test_resume_after_a_fresh_run_that_died_continues_the_set_aside_run(trained: Path, tmp_path: Path) -> None:
    """A fresh run sets the old one aside and dies before checkpointing; --resume must continue
    the old run (not start fresh and later delete it)."""
    cfg = _copy_run(trained, tmp_path)
    runs, ckpt = _run_dirs(cfg)
    reference = json.loads((runs / "results.json").read_text())
    before = snapshot(ckpt)
    f = cfg.parent / "data" / "train_dense.npy"
    good = f.read_bytes()
    arr = np.load(f)
    arr[:, 0] = 3e38  # the fresh run diverges at step 1, before any checkpoint
    np.save(f, arr)
    _fail(cfg)
    assert_unchanged(before, ckpt.with_name(ckpt.name + ".previous"))
    f.write_bytes(good)
    r = run(cfg, 1, "--resume")
    assert "--resume: continuing the run kept in" in r.stdout, r.stdout
    assert json.loads((runs / "results.json").read_text())["ensemble"] == reference["ensemble"]
    assert not ckpt.with_name(ckpt.name + ".previous").exists()


def test_fresh_run_refuses_to_drop_an_unfinished_run_with_checkpoints(trained: Path, tmp_path: Path) -> None:
    cfg = _copy_run(trained, tmp_path)
    runs, ckpt = _run_dirs(cfg)
    r = run(cfg, 1, "--fail-at-step", "5", check=False, script=FAULT_INJECTION)  # sets the finished run aside, checkpoints at 3, dies
    assert r.returncode == 17
    before_prev, before_cur = snapshot(ckpt.with_name(ckpt.name + ".previous")), snapshot(ckpt)
    assert before_prev and before_cur
    line = _fail(cfg)
    assert "holds an unfinished run with checkpoints" in line and "--resume" in line, line
    assert_unchanged(before_prev, ckpt.with_name(ckpt.name + ".previous"))
    assert_unchanged(before_cur, ckpt)


def test_log_dir_equal_to_checkpoint_dir_keeps_the_previous_run(tmp_path: Path) -> None:
    from recsys.config import load_config
    from recsys.train.run_dir import release_previous_run, set_aside_previous_run

    (tmp_path / "data").mkdir()
    make_data(tmp_path / "data")
    cfg_path = write_config(tmp_path, "same", ONE, [[0]])
    cfg_path.write_text(cfg_path.read_text().replace(str(tmp_path / "runs"), str(tmp_path / "ckpt")))
    cfg = load_config(cfg_path)
    assert cfg.run_dir == cfg.ckpt_dir
    (cfg.ckpt_dir / "group0" / "step-00000001").mkdir(parents=True)
    (cfg.ckpt_dir / "group0" / "step-00000001" / "state.json").write_text("{}")
    before = snapshot(cfg.ckpt_dir)
    set_aside_previous_run(cfg)
    assert_unchanged(before, cfg.ckpt_dir.with_name("same.previous"))
    release_previous_run(cfg)
    assert not cfg.ckpt_dir.with_name("same.previous").exists()


# ----------------------------------------------------------------------------- more checkpoint damage


def _group_ckpt(tmp_path: Path) -> tuple[object, object, object]:
    """A 1-member group's GroupTrain and optimizer, and a checkpointer without a process group."""
    import torch

    from recsys.checkpoint import GroupCheckpointer
    from recsys.ensemble import GroupTrain, build_group
    from tests.toy_data import toy_schema

    schema = toy_schema(num_fields=2, vocab=20, num_dense=0)
    model = GroupTrain(build_group(ONE, ["m0"], [0], schema))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, GroupCheckpointer(tmp_path / "group0", None, 0)


def test_without_a_process_group_load_latest_works_and_a_bad_manifest_is_corrupt(tmp_path: Path) -> None:
    import torch

    from recsys.checkpoint import CheckpointCorrupt, TrainState, verify_checkpoint

    model, opt, ck = _group_ckpt(tmp_path)
    d = ck.dir / "step-00000001"
    d.mkdir(parents=True)
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": model.state_dict()}, checkpoint_id=str(d))
    torch.save({"rng": None}, d / "rank0.pt")
    (d / "state.json").write_text(json.dumps(TrainState(step=1).to_json()))
    from recsys.checkpoint import write_manifest

    write_manifest(d)
    state, _ = ck.load_latest(model, None)  # type: ignore[attr-defined]
    assert state.step == 1
    for bad in ('{"files": []}', '{"files": {"state.json": {}}}', "{"):
        (d / "manifest.json").write_text(bad)
        with pytest.raises(CheckpointCorrupt, match="unreadable manifest"):
            verify_checkpoint(d)


def test_a_checkpoint_that_verifies_but_cannot_load_is_skipped(tmp_path: Path) -> None:
    """A pre-manifest checkpoint with a damaged shard passes verification (only state.json is
    checked) and fails inside DCP: the fallback must still take the older intact one."""
    import torch
    import torch.distributed.checkpoint as dcp

    from recsys.checkpoint import TrainState, write_manifest

    model, _, ck = _group_ckpt(tmp_path)
    for step in (1, 2):
        d = ck.dir / f"step-{step:08d}"
        d.mkdir(parents=True)
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(d))
        torch.save({"rng": None}, d / "rank0.pt")
        (d / "state.json").write_text(json.dumps(TrainState(step=step).to_json()))
        write_manifest(d)
    newest = ck.dir / "step-00000002"
    (newest / "manifest.json").unlink()  # as written before manifests existed
    shard = newest / "__0_0.distcp"
    shard.write_bytes(b"\0" * shard.stat().st_size)  # same size, garbage inside
    said: list[str] = []
    state, _ = ck.load_latest(model, None, log=said.append)  # type: ignore[attr-defined]
    assert state.step == 1
    assert any("step-00000002 is damaged" in s for s in said), said
    assert (ck.dir / ".damaged-step-00000002").is_dir()
