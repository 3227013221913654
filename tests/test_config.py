"""Experiment config: defaults, shipped configs, and one-line errors before any process group."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recsys.config import ConfigError, load_config
from recsys.data.schema import Schema, SparseFeature

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    Schema("toy", (SparseFeature("C0", 10), SparseFeature("C1", 12)), splits={"train": 10, "val": 5, "test": 5}).save(d)
    return d


def write(tmp_path: Path, body: str, data_dir: Path | None = None) -> Path:
    p = tmp_path / "c.toml"
    head = f'data_dir = "{data_dir}"\n' if data_dir is not None else ""
    p.write_text(head + body)
    return p


def test_defaults(tmp_path: Path, data_dir: Path) -> None:
    cfg = load_config(write(tmp_path, 'members = ["fnn:seed=1", "fnn:seed=2", "fnn"]\n', data_dir))
    assert cfg.groups == [[0], [1], [2]]  # one group per member
    assert cfg.member_names == ["m0_fnn", "m1_fnn", "m2_fnn"]
    assert cfg.train.batch_size == 4096 and cfg.train.patience == 1
    assert cfg.dense_optimizer.lr == 1e-3
    assert cfg.run_dir == Path("runs/run") and cfg.ckpt_dir == Path("checkpoints/run")
    # "auto" embedding optimizer: Adam on GPU (the reference), row-wise Adagrad on CPU.
    assert cfg.embedding_optimizer.resolve("cpu").name == "rowwise_adagrad"
    assert cfg.embedding_optimizer.resolve("cuda").name == "adam"
    hp = cfg.hparams()
    assert hp["num_members"] == 3 and hp["train.batch_size"] == 4096


def test_overrides(tmp_path: Path, data_dir: Path) -> None:
    p = write(tmp_path, 'members = ["fnn", "fnn"]\n[train]\nepochs = 5\n', data_dir)
    cfg = load_config(p, ["train.epochs=1", "name=try2", "groups=[[0, 1]]", "embedding_optimizer.lr=0.5"])
    assert cfg.train.epochs == 1 and cfg.name == "try2" and cfg.groups == [[0, 1]]
    assert cfg.embedding_optimizer.lr == 0.5


@pytest.mark.parametrize(
    "body, needle",
    [
        ('members = ["nosuchmodel"]\n', "unknown model 'nosuchmodel'"),
        ('members = ["fnn:depth=3"]\n', "unknown key 'depth'"),
        ('members = ["fnn", "fnn"]\ngroups = [[0, 1], [1]]\n', "member 1 is in groups 0 and 1"),
        ('members = ["fnn", "fnn", "fnn"]\ngroups = [[0, 1]]\n', "miss member(s) [2]"),
        ('members = ["fnn"]\ngroups = [[0, 5]]\n', "out of range"),
        ('members = ["fnn"]\nbogus = 1\n', "unknown key 'bogus'"),
        ('members = ["fnn"]\n[train]\nbatchsize = 3\n', "unknown key 'batchsize'"),
        ('members = ["fnn"]\n[train]\nepochs = "two"\n', "train.epochs: expected an integer"),
        ('members = ["fnn"]\n[train]\nbatch_size = 0\n', "train.batch_size must be positive"),
        ('members = ["fnn"]\n[embedding_optimizer]\nname = "lion"\n', "embedding_optimizer.name must be one of"),
        ('members = ["fnn"]\n[sharding]\nsharding_type = "diagonal"\n', "sharding.sharding_type"),
        ('members = ["fnn"]\ndevice = "tpu"\n', "device must be one of"),
        ("members = []\n", "non-empty list"),
        ("members = [\n", "invalid TOML"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, data_dir: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, body, data_dir))
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg and str(tmp_path / "c.toml") in msg


def test_missing_data_dir_and_meta(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required key 'data_dir'"):
        load_config(write(tmp_path, 'members = ["fnn"]\n'))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="meta.json: no such file"):
        load_config(write(tmp_path, 'members = ["fnn"]\n', tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("name", ["paper_heterogeneous", "paper_homogeneous", "demo"])
def test_shipped_configs_parse(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.toml", check_data=False)
    if name == "paper_heterogeneous":
        models = [n.split("_", 1)[1] for n in cfg.member_names]
        assert models == ["fnn", "ipnn", "deepfm", "dcn", "dcnv2", "finalmlp", "wukong", "rankmixer"]
    elif name == "paper_homogeneous":
        assert cfg.members == [f"dcnv2:seed={s}" for s in (1, 2, 3, 4)]
    else:
        assert len(cfg.members) == 4 and cfg.groups == [[0, 1], [2, 3]]
        assert cfg.data_dir == "data/demo/criteo"


def test_cli_reports_config_error_before_any_process_group(tmp_path: Path, data_dir: Path) -> None:
    p = write(tmp_path, 'members = ["fnn", "fnn"]\ngroups = [[0], [0, 1]]\n', data_dir)
    r = subprocess.run(
        [sys.executable, str(ROOT / "recsys" / "train_group.py"), "--config", str(p)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "groups overlap: member 0" in r.stderr and "Traceback" not in r.stderr
