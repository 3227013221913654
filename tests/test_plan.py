"""Planning that knows the hardware (issue 8): ``python -m recsys.plan`` plans a hypothetical
cluster without allocating a table, its per-rank bytes are exact for the tables, and a plan
that cannot fit is refused in one line (shortfall, largest table) before anything exists,
both by the CLI and by training."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.config import ConfigError, load_config
from recsys.plan import GB, plan_experiment
from tests.hostile_util import REPO, one_line_error, run_cli
from tests.test_train_group import MEMBERS, make_data, run, write_config

DLRMV2 = REPO / "configs" / "criteo_1tb_dlrmv2.toml"
MLPERF_ROWS = 204_184_588  # sum of MLPerf DLRMv2's num_embeddings_per_feature


def test_dlrmv2_plan_for_8_gpus_places_every_row_exactly_once() -> None:
    cfg = load_config(DLRMV2, ["topology.hbm_gb=80"], check_data=False)
    tr = cfg.torchrec_criteo
    assert tr is not None and sum(tr.num_embeddings_per_feature) == MLPERF_ROWS  # type: ignore[arg-type]
    plans = plan_experiment(cfg, world_size=8, local_world_size=8, device="cuda")
    assert len(plans) == 4 and all(p.topology.world_size == 2 for p in plans)  # parallel: 8 / 4 groups
    for gp in plans:
        # Every table's rows x 128 columns, fp32, land on the group's 2 ranks exactly once.
        assert sum(r.tables for r in gp.ranks) == MLPERF_ROWS * 128 * 4
        assert sum(r.optimizer for r in gp.ranks) == MLPERF_ROWS * 4  # row-wise Adagrad: a float per row
        assert all(r.total < 80 * GB * 0.85 for r in gp.ranks)
        assert len(gp.sharding_types) == 26


def test_plan_cli_prints_per_rank_memory_and_headroom() -> None:
    r = subprocess.run([sys.executable, "-m", "recsys.plan", "--config", str(DLRMV2), "--world-size", "16",
                        "--local-world-size", "8", "--device", "cuda", "--hbm-gb", "80"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert out.count("| rank | shards | tables GB | optimizer GB") == 4
    assert len(re.findall(r"^\| [0-3] \| \d+ \| ", out, re.M)) == 16  # 4 ranks x 4 groups
    assert out.count("fits: yes") == 4 and "headroom" in out


def test_plan_that_cannot_fit_is_one_line_naming_the_largest_table_and_shortfall() -> None:
    rc, err = run_cli(["-m", "recsys.plan", "--config", str(DLRMV2), "--world-size", "8", "--device", "cpu",
                       "--ddr-gb", "50"])
    assert rc == 2
    line = one_line_error(err)
    assert "group 0: the sharding plan does not fit" in line, line
    assert "shortfall 20.36 GB" in line and "largest table is m0_dcnv2__cat_0 (40,000,000 x 128" in line, line


def test_training_refuses_a_plan_that_does_not_fit_before_allocating(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    make_data(tmp_path / "data")
    cfg = write_config(tmp_path, "tiny_ram", MEMBERS[:1], [[0]])
    r = run(cfg, 1, "--set", "topology.ddr_gb=0.00001", check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    line = one_line_error(r.stderr)
    assert "the sharding plan does not fit" in line and "largest table is" in line, line
    assert not (tmp_path / "ckpt" / "tiny_ram").exists()


@pytest.mark.parametrize("key, value", [("hbm_gb", -1), ("uvm_caching_ratio", 1.5), ("local_world_size", -2)])
def test_topology_section_is_validated(tmp_path: Path, key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"topology.{key}"):
        load_config(DLRMV2, [f"topology.{key}={value}"], check_data=False)


def test_adam_state_is_counted_even_where_torchrec_planner_accepts_the_plan() -> None:
    """TorchRec 1.8's planner places DLRMv2 with fused Adam on 8 x 80 GB (its estimate leaves out
    the two moment tables); our exact accounting refuses it, naming the rank and shortfall."""
    rc, err = run_cli(["-m", "recsys.plan", "--config", str(DLRMV2), "--world-size", "8", "--device", "cuda",
                       "--hbm-gb", "80", "--set", "embedding_optimizer.name=adam"])
    assert rc == 2
    line = one_line_error(err)
    assert "rank 0 needs 185.35 GB for its tables and adam state" in line and "shortfall 117.35 GB" in line, line
