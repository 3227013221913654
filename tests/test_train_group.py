"""End-to-end grouped training through the real entry point (torchrun with 2 gloo ranks).

Slow by nature (each run is a fresh torchrun world), so the data is tiny and one
2-rank reference run is shared by all tests:

- the parallel schedule (2 groups on 1 rank each) equals the sequential one, both in
  one process and on 2 ranks (each group then trains on both ranks);
- one group of 2 members on 2 ranks equals the same group in 1 process (the loader's
  global batches and TorchRec's gradient averaging make a group's result independent
  of its rank count);
- K = M equals training a member alone;
- TensorBoard event files hold the expected tags and values;
- a run killed mid-epoch and resumed with --resume ends exactly where the
  uninterrupted run does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.data.schema import Schema
from tests.dist_harness import run_ranks
from tests.fault_injection import SCRIPT as FAULT_INJECTION
from tests.toy_data import toy_arrays, toy_schema

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = ["fnn:mlp=16,seed=1,embedding_dim=8", "dcnv2:mlp=16,seed=2,embedding_dim=8,cross_layers=1"]
TRAIN_ROWS, BATCH = 1024, 128  # 8 steps per epoch


def make_data(d: Path) -> None:
    schema = toy_schema(num_fields=4, vocab=40, num_dense=2)
    sizes = {"train": TRAIN_ROWS, "val": 300, "test": 301}  # odd sizes: uneven eval row split
    for i, (split, n) in enumerate(sizes.items()):
        dense, sparse, labels = toy_arrays(schema, n, seed=i)
        np.save(d / f"{split}_dense.npy", dense)
        np.save(d / f"{split}_sparse.npy", sparse)
        np.save(d / f"{split}_labels.npy", labels)
    Schema(schema.dataset, schema.sparse_features, schema.dense_features, splits=sizes).save(d)


def write_config(root: Path, name: str, members: list[str], groups: list[list[int]]) -> Path:
    p = root / f"{name}.toml"
    p.write_text(
        f'name = "{name}"\ndata_dir = "{root / "data"}"\nmembers = {json.dumps(members)}\n'
        f"groups = {json.dumps(groups)}\nseed = 3\n"
        f'log_dir = "{root / "runs"}"\ncheckpoint_dir = "{root / "ckpt"}"\n'
        f"[train]\nbatch_size = {BATCH}\nepochs = 2\npatience = 0\ncheckpoint_interval = 3\nlog_every = 2\n"
        f"[dense_optimizer]\nlr = 0.003\n[embedding_optimizer]\nname = \"rowwise_adagrad\"\nlr = 0.05\n"
    )
    return p


def run(config: Path, nproc: int, *extra: str, check: bool = True,
        script: Path = ROOT / "recsys" / "train_group.py") -> subprocess.CompletedProcess[str]:
    """The entry point (``script``: or tests/fault_injection.py, which adds --fail-at-step) on
    ``nproc`` ranks (1: one plain process)."""
    if nproc == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd + ["--config", str(config), *extra], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=240)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def logits(root: Path, name: str) -> torch.Tensor:
    return torch.load(root / "runs" / name / "logits_test.pt")["member_logits"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The uninterrupted 2-rank run: K = M = 2 groups, parallel schedule."""
    root = tmp_path_factory.mktemp("tg")
    (root / "data").mkdir()
    make_data(root / "data")
    r = run(write_config(root, "ref", MEMBERS, [[0], [1]]), 2)
    return root, r


def test_parallel_equals_sequential(ref: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, r = ref
    assert "parallel schedule" in r.stdout
    s = run(write_config(root, "seq", MEMBERS, [[0], [1]]), 1)
    assert "sequential schedule" in s.stdout
    a, b = logits(root, "ref"), logits(root, "seq")
    assert a.shape == (301, 2)
    assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()
    # Sequential on 2 ranks: each group now trains on 2 ranks instead of 1.
    s2 = run(write_config(root, "seq2", MEMBERS, [[0], [1]]), 2, "--schedule", "sequential")
    assert "sequential schedule" in s2.stdout
    c = logits(root, "seq2")
    assert torch.allclose(a, c, atol=1e-4, rtol=0), (a - c).abs().max()
    # Training moved the members away from their (different) inits and toward the signal.
    res = json.loads((root / "runs" / "ref" / "results.json").read_text())
    assert res["ensemble"]["auc"] > 0.55
    assert res["num_rows"] == 301


def test_k_equals_m_equals_member_alone(ref: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = ref
    # Also the plain training loop (no TrainPipelineSparseDist): the pipeline only overlaps
    # input distribution with compute, so the numbers must not change.
    # --resume with nothing to resume: a one-line notice, then exactly a fresh run (which clears
    # runs/<name>, here holding a stale file).
    stale = root / "runs" / "alone" / "stale.txt"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("old run")
    r = run(write_config(root, "alone", [MEMBERS[1]], [[0]]), 1, "--set", "train.pipeline=false", "--resume")
    assert f"--resume: no checkpoint under {root / 'ckpt' / 'alone'}; starting fresh" in r.stdout, r.stdout
    assert not stale.exists()
    a, b = logits(root, "ref")[:, 1], logits(root, "alone")[:, 0]
    assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()
    assert not torch.allclose(logits(root, "ref")[:, 0], b, atol=1e-2)  # a different member differs


def test_one_group_on_two_ranks_equals_one_rank(ref: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """K = 1 (joint training of both members): W = 2 equals W = 1, member by member."""
    root, _ = ref
    one_epoch = ("--set", "train.epochs=1")
    run(write_config(root, "joint1", MEMBERS, [[0, 1]]), 1, *one_epoch)
    run(write_config(root, "joint2", MEMBERS, [[0, 1]]), 2, *one_epoch)
    a, b = logits(root, "joint1"), logits(root, "joint2")
    assert a.shape == (301, 2)
    assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()
    # Joint training is not independent training: the members moved elsewhere than in ref
    # (one epoch there too would still differ; here it guards against comparing two copies).
    assert not torch.allclose(a, logits(root, "ref"), atol=1e-3)


def test_tensorboard_events(ref: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = ref
    run_dir = root / "runs" / "ref"
    res = json.loads((run_dir / "results.json").read_text())
    main = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = set(main.Tags()["scalars"])
    for t in ("test/auc/m0_fnn", "test/auc/m1_dcnv2", "test/auc/group1", "test/auc/ensemble",
              "test/logloss/ensemble", "final_val/auc/ensemble", "test/auc_vs_m", "train/examples_per_s"):
        assert t in tags, (t, sorted(tags))
    assert main.Scalars("test/auc/ensemble")[0].value == pytest.approx(res["ensemble"]["auc"], abs=1e-6)
    assert main.Scalars("test/auc/m1_dcnv2")[0].value == pytest.approx(res["members"][1]["auc"], abs=1e-6)
    curve = main.Scalars("test/auc_vs_m")
    assert [e.step for e in curve] == [1, 2]
    assert [e.value for e in curve] == pytest.approx([c["auc"] for c in res["curve"]], abs=1e-6)
    assert main.Scalars("train/examples_per_s")[0].value > 0
    assert "test/auc_vs_m_plot" in main.Tags()["images"]
    # The three hparams summaries (experiment, session start, session end) in the run's own file.
    assert set(main.PluginTagToContent("hparams")) == {
        "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    for k in (0, 1):
        g = EventAccumulator(str(run_dir / f"group{k}"), size_guidance={"scalars": 0}).Reload()
        loss = g.Scalars(f"train/loss/group{k}")
        assert [e.step for e in loss] == list(range(2, 17, 2))  # log_every = 2, 2 epochs of 8 steps
        assert all(0.3 < e.value < 1.0 for e in loss)
        val = g.Scalars(f"val/auc/group{k}")
        assert [e.step for e in val] == [8, 16]  # one per epoch
        assert len(g.Scalars(f"train/examples_per_s/group{k}")) == len(loss)
        ne = g.Scalars(f"val/ne/group{k}")  # TorchRec's normalized entropy, beside AUC and logloss
        assert [e.step for e in ne] == [8, 16] and all(0.3 < e.value < 1.5 for e in ne)
        assert [e.step for e in g.Scalars(f"val/calibration/group{k}")] == [8, 16]


def test_segments_split_at_checkpoint_and_eval_boundaries() -> None:
    from recsys.train.loop import _segments

    assert list(_segments(8, 0, 3, 0)) == [3, 3, 2]
    assert list(_segments(8, 4, 3, 0)) == [2, 2]  # resumed mid-epoch at step 4
    assert list(_segments(8, 0, 3, 4)) == [3, 1, 2, 2]
    assert list(_segments(8, 0, 0, 0)) == [8]
    assert list(_segments(8, 8, 3, 0)) == []


def test_kill_and_resume(ref: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = ref
    cfg = write_config(root, "kr", MEMBERS, [[0], [1]])
    # Rank 1 dies after step 12 (epoch 1, step 4 of 8): its last checkpoint is the mid-epoch
    # one at epoch step 3 (global step 11), so step 12 is lost and replayed; torchrun
    # then tears rank 0 down.
    k = run(cfg, 2, "--fail-at-step", "12", "--fail-rank", "1", check=False, script=FAULT_INJECTION)
    assert k.returncode != 0
    steps = sorted(p.name for p in (root / "ckpt" / "kr" / "group1").glob("step-*"))
    assert steps[-1] == "step-00000011", steps
    assert not (root / "runs" / "kr" / "results.json").exists()
    r = run(cfg, 2, "--resume")
    assert "[group 1] resumed from step 11 (epoch 1)" in r.stdout
    a, b = logits(root, "ref"), logits(root, "kr")
    assert torch.allclose(a, b, atol=1e-6, rtol=0), (a - b).abs().max()
    # TensorBoard: the killed run's events for the replayed step 12 are purged (purge_step), so
    # every step appears once, as in the uninterrupted run.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    g = EventAccumulator(str(root / "runs" / "kr" / "group1"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in g.Scalars("train/loss/group1")] == list(range(2, 17, 2))
    assert [e.step for e in g.Scalars("val/auc/group1")] == [8, 16]
    ra = json.loads((root / "runs" / "ref" / "results.json").read_text())
    rb = json.loads((root / "runs" / "kr" / "results.json").read_text())
    assert ra["ensemble"] == pytest.approx(rb["ensemble"], abs=1e-6)


# ----------------------------------------------------------------------------- gradient scaling

GRAD_SPEC = "fnn:mlp=8,seed=4,embedding_dim=4"
GRAD_ROWS, GRAD_LR = 32, 0.5


def _full_state(dmp: torch.nn.Module, pg) -> dict[str, torch.Tensor]:
    """Unsharded copy of a DMP's tables: each rank fills its shards, a SUM all-reduce joins them."""
    import torch.distributed as dist
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out = {}
    for k, v in dmp.state_dict().items():
        if isinstance(v, ShardedTensor):
            full = torch.zeros(tuple(v.size()))
            for sh in v.local_shards():
                idx = tuple(slice(o, o + n) for o, n in zip(sh.metadata.shard_offsets, sh.metadata.shard_sizes))
                full[idx] = sh.tensor
            dist.all_reduce(full, group=pg)
            out[k.removeprefix("_dmp_wrapped_module.").removeprefix("module.")] = full
    return out


def _one_sgd_step(sharding: str, pg, group_rank: int, group_size: int) -> dict:
    """One step on the same global batch, this rank holding its 1/G slice: the dense grads,
    and the tables after fused EXACT_SGD (applied inside backward)."""
    from recsys.data.batch import batch_from_arrays
    from recsys.distributed import EmbeddingOptimizerConfig, ShardingConfig, init_distributed, shard_module
    from recsys.ensemble import GroupTrain, build_group

    env = init_distributed("cpu")
    schema = toy_schema(num_fields=3, vocab=12, num_dense=2)
    dmp = shard_module(GroupTrain(build_group([GRAD_SPEC], ["m0"], [0], schema)), pg, env,
                       EmbeddingOptimizerConfig("sgd", lr=GRAD_LR), ShardingConfig(sharding))
    d, s, y = toy_arrays(schema, GRAD_ROWS, seed=9)
    n = GRAD_ROWS // group_size
    lo = group_rank * n
    loss, _ = dmp(batch_from_arrays(d[lo : lo + n], s[lo : lo + n], y[lo : lo + n], schema.sparse_names))
    loss.backward()
    dense = {k.removeprefix("_dmp_wrapped_module.").removeprefix("module."): p.grad.clone()
             for k, p in dmp.named_parameters() if p.grad is not None}
    return {"dense": dense, "tables": _full_state(dmp, pg)}


def _grad_worker(rank: int, world: int) -> dict:
    from torchrec.distributed import comm_ops

    from recsys.distributed import new_subgroups

    solo = new_subgroups([[0], [1]])  # each rank alone: G = 1 (rank 1's group lacks global rank 0)
    out = {}
    for sharding in ("table_wise", "row_wise", "column_wise"):
        out[sharding, 2] = _one_sgd_step(sharding, None, rank, 2)
        out[sharding, 1] = _one_sgd_step(sharding, solo[rank], 0, 1)
    comm_ops.set_gradient_division(False)  # what recsys.grad_sync guards against
    try:
        out["no_division", 2] = _one_sgd_step("row_wise", None, rank, 2)
    finally:
        comm_ops.set_gradient_division(True)
    return out


def test_global_batch_gradients_do_not_depend_on_ranks() -> None:
    """One SGD step on the same 32-row global batch, on G = 1 and G = 2 ranks (2 gloo ranks).

    DDP averages the dense grads over the group; TorchRec's sharded embedding backward
    sums the ranks' gradients and divides by the group size (GRADIENT_DIVISION).  So
    both are the global-batch mean gradient for table-, row- and column-wise shards,
    and no extra scaling is needed.  With the division off, G = 2 steps twice as far.
    """
    from recsys.ensemble import build_group
    from recsys.grad_sync import GradientScalingError, require_global_mean_gradients

    res = run_ranks(_grad_worker, 2, timeout=240)
    ref = build_group([GRAD_SPEC], ["m0"], [0], toy_schema(num_fields=3, vocab=12, num_dense=2))
    init = {f"group.{k}": v for k, v in ref.state_dict().items()}
    for sharding in ("table_wise", "row_wise", "column_wise", "no_division"):
        one, two = res[0][("row_wise" if sharding == "no_division" else sharding), 1], res[0][sharding, 2]
        assert one["dense"].keys() == two["dense"].keys() and len(one["dense"]) > 0
        for k in one["dense"]:
            torch.testing.assert_close(two["dense"][k], one["dense"][k], rtol=1e-5, atol=1e-7)
        assert one["tables"].keys() == two["tables"].keys() and len(one["tables"]) == 3
        for k in one["tables"]:
            step1, step2 = one["tables"][k] - init[k], two["tables"][k] - init[k]
            assert step1.abs().max() > 1e-4, k  # the table did move
            want = 2 * step1 if sharding == "no_division" else step1
            torch.testing.assert_close(step2, want, rtol=1e-4, atol=1e-6)
            # rank 1 (alone in its group, without global rank 0) took the same G = 1 step
            if sharding != "no_division":
                torch.testing.assert_close(res[1][sharding, 1]["tables"][k], one["tables"][k])
    require_global_mean_gradients()  # the default passes
    from torchrec.distributed import comm_ops

    comm_ops.set_gradient_division(False)
    try:
        with pytest.raises(GradientScalingError, match="set_gradient_division"):
            require_global_mean_gradients()
    finally:
        comm_ops.set_gradient_division(True)


def test_trains_on_torchrec_criteo_layout(tmp_path: Path) -> None:
    """A config with [torchrec_criteo] trains straight from day_{i}_*.npy files (no meta.json),
    1 process, through the real entry point, and writes results.json."""
    from tests.test_config import TORCHREC_SECTION, write_torchrec_days

    write_torchrec_days(tmp_path / "npy")
    p = tmp_path / "tr.toml"
    p.write_text(
        f'name = "tr"\ndata_dir = "{tmp_path / "npy"}"\nmembers = ["fnn:mlp=8,seed=1,embedding_dim=4"]\n'
        f'log_dir = "{tmp_path / "runs"}"\ncheckpoint_dir = "{tmp_path / "ckpt"}"\ndevice = "cpu"\n'
        "[train]\nbatch_size = 100\nepochs = 3\npatience = 0\n"
        '[embedding_optimizer]\nname = "rowwise_adagrad"\nlr = 0.1\n' + TORCHREC_SECTION
    )
    run(p, 1, "--set", "train.epochs=1")
    assert not (tmp_path / "npy" / "meta.json").exists()
    res = json.loads((tmp_path / "runs" / "tr" / "results.json").read_text())
    test = torch.load(tmp_path / "runs" / "tr" / "logits_test.pt")
    assert test["member_logits"].shape == (120, 1) and res["num_rows"] == 120
    # The test split is day 2's second half, in file order (int32 [N, 1] labels read as [N]).
    day2 = np.load(tmp_path / "npy" / "day_2_labels.npy")[120:, 0]
    np.testing.assert_array_equal(test["labels"].numpy(), day2)
    # The label follows field 0's raw id parity (ids mod 50 keep it): one epoch learns some of it.
    assert 0.55 < res["ensemble"]["auc"] <= 1.0, res["ensemble"]


# ----------------------------------------------------------------------------- the tts4ctr recipe


def test_preset_recipe_stops_early_restores_the_best_and_refuses_an_unsafe_resume(tmp_path: Path) -> None:
    """The official early stopping (trainer_group.py: stop at the first epoch whose val AUC does not
    improve, reload the best weights, score test with them) under ``preset = "tts4ctr"``: Adam on
    the CPU tables through the dense kernel, one group on 2 gloo ranks.

    The val labels are flipped, so the better the model fits train, the lower its val AUC: epoch 0
    is the best, epoch 1 is worse and stops the run, and the scores after training must be those
    of epoch 0's weights.  Then ``--resume`` of that group (Adam's state over 2 ranks does not
    reshard) is one line, not "every checkpoint is damaged".
    """
    d = tmp_path / "data"
    d.mkdir()
    make_data(d)
    np.save(d / "val_labels.npy", 1.0 - np.load(d / "val_labels.npy"))
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        f'name = "p"\ndata_dir = "{d}"\npreset = "tts4ctr"\nmembers = ["fnn:mlp=16,seed=1,embedding_dim=8,preset="]\n'
        f'log_dir = "{tmp_path / "runs"}"\ncheckpoint_dir = "{tmp_path / "ckpt"}"\n'
        f"[train]\nbatch_size = {BATCH}\nepochs = 6\nlog_every = 4\n"  # patience: the preset's 1
        "[dense_optimizer]\nlr = 0.01\n[embedding_optimizer]\nlr = 0.05\n"  # name: the preset's adam
    )
    r = run(cfg, 2)
    assert "warning: Adam on CPU tables over 2 ranks" in r.stdout, r.stdout
    epochs = [line for line in r.stdout.splitlines() if line.startswith("[group 0] epoch ")]
    assert len(epochs) == 2, epochs  # epoch 1 did not improve: stopped there, not at epochs = 6
    assert "step 8: val AUC" in epochs[0] and "(best" in epochs[1] and "at step 8)" in epochs[1], epochs
    best_auc = float(epochs[0].split("val AUC ")[1].split()[0])
    second = float(epochs[1].split("val AUC ")[1].split()[0])
    assert second < best_auc
    val = json.loads((tmp_path / "runs" / "p" / "val_results.json").read_text())
    assert val["ensemble"]["auc"] == pytest.approx(best_auc, abs=1e-5)  # epoch 0's weights, restored
    assert json.loads((tmp_path / "runs" / "p" / "results.json").read_text())["num_rows"] == 301  # test scored
    again = run(cfg, 2, "--resume", check=False)
    assert again.returncode != 0
    lines = [line for line in again.stderr.splitlines() if "train_group: error:" in line]
    assert len(lines) == 1 and "Adam on CPU embedding tables" in lines[0] and "2 ranks" in lines[0], again.stderr
