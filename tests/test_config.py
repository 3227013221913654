"""Experiment config: defaults, shipped configs, and one-line errors before any process group."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import torch

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
    # With no lr given, each resolves to its own lr (Adam's 1e-3 would barely move Adagrad rows).
    cpu, gpu = cfg.embedding_optimizer.resolve("cpu"), cfg.embedding_optimizer.resolve("cuda")
    assert (cpu.name, cpu.lr) == ("rowwise_adagrad", 0.02)
    assert (gpu.name, gpu.lr) == ("adam", 1e-3)
    hp = cfg.hparams()
    assert hp["num_members"] == 3 and hp["train.batch_size"] == 4096
    assert hp["embedding_optimizer.lr"] == "auto"


def test_explicit_embedding_lr_is_kept(tmp_path: Path, data_dir: Path) -> None:
    cfg = load_config(write(tmp_path, 'members = ["fnn"]\n[embedding_optimizer]\nlr = 0.5\n', data_dir))
    assert cfg.embedding_optimizer.resolve("cpu").lr == 0.5 and cfg.embedding_optimizer.resolve("cuda").lr == 0.5
    cfg = load_config(write(tmp_path, 'members = ["fnn"]\n[embedding_optimizer]\nname = "sgd"\n', data_dir))
    assert (cfg.embedding_optimizer.resolve("cpu").name, cfg.embedding_optimizer.resolve("cpu").lr) == ("sgd", 0.01)
    with pytest.raises(ConfigError, match="embedding_optimizer.lr: expected a number"):
        load_config(write(tmp_path, 'members = ["fnn"]\n[embedding_optimizer]\nlr = "fast"\n', data_dir))
    with pytest.raises(ConfigError, match="learning rates must be positive"):
        load_config(write(tmp_path, 'members = ["fnn"]\n[embedding_optimizer]\nlr = 0\n', data_dir))


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


@pytest.mark.parametrize(
    "splits, needle",
    [
        ({"train": 10, "val": 5}, "has no 'test' split (splits: train, val)"),
        ({"train": 10, "test": 5}, "has no 'val' split"),
        ({"train": 10, "val": 0, "test": 5}, "split 'val' has 0 rows"),
        ({}, "has no 'train' split (splits: none)"),
    ],
)
def test_splits_must_exist_and_be_nonempty(tmp_path: Path, splits: dict[str, int], needle: str) -> None:
    d = tmp_path / "data"
    Schema("toy", (SparseFeature("C0", 10),), splits=splits).save(d)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, 'members = ["fnn"]\n', d))
    assert needle in str(e.value) and str(d / "meta.json") in str(e.value) and "\n" not in str(e.value), e.value


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_without_cuda_is_a_config_error(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="torch.cuda.is_available\\(\\) is False"):
        load_config(write(tmp_path, 'members = ["fnn"]\ndevice = "cuda"\n', data_dir))
    load_config(write(tmp_path, 'members = ["fnn"]\ndevice = "cpu"\n', data_dir))


@pytest.mark.parametrize("name", ["paper_heterogeneous", "paper_homogeneous", "demo"])
def test_shipped_configs_parse(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.toml", check_data=False)
    emb = cfg.embedding_optimizer.resolve("cpu")
    if name.startswith("paper"):  # "auto": Adam's lr on GPU, Adagrad's on CPU
        assert (emb.name, emb.lr) == ("rowwise_adagrad", 0.02)
        assert (cfg.embedding_optimizer.resolve("cuda").name, cfg.embedding_optimizer.resolve("cuda").lr) == ("adam", 1e-3)
    else:
        assert (emb.name, emb.lr) == ("rowwise_adagrad", 0.02)
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


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "recsys" / "train_group.py"), *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cli_device_cuda_on_cpu_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    r = _cli("--config", str(write(tmp_path, 'members = ["fnn"]\n', data_dir)), "--device", "cuda")
    assert r.returncode == 2
    assert r.stderr.startswith("train_group: error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert "torch.cuda.is_available() is False" in r.stderr and "Traceback" not in r.stderr


def test_cli_data_error_after_process_group_start_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    """meta.json promises the splits but no .npy file exists: the loader fails inside train(),
    after init_distributed, and that is still one line and exit 2."""
    p = write(tmp_path, 'members = ["fnn:mlp=8,embedding_dim=4"]\n'
              f'log_dir = "{tmp_path / "runs"}"\ncheckpoint_dir = "{tmp_path / "ckpt"}"\n'
              '[train]\nbatch_size = 2\n', data_dir)
    r = _cli("--config", str(p), "--device", "cpu")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("train_group: error: "), r.stderr
    assert lines[0].endswith(f"{data_dir / 'train_sparse.npy'}: no such file (split 'train')"), lines[0]


# --------------------------------------------------------------------------- [torchrec_criteo]

TORCHREC_ROWS = (300, 200, 240)  # rows of day_0, day_1, day_2


def write_torchrec_days(d: Path, rows: tuple[int, ...] = TORCHREC_ROWS, seed: int = 0) -> None:
    """TorchRec's Criteo-1TB layout, tiny: raw hashed int64 ids (taken modulo the table sizes),
    int32 labels [N, 1], float32 dense [N, 13]; the label follows field 0's id parity, so a
    model can learn it."""
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for day, n in enumerate(rows):
        sparse = rng.integers(0, 1 << 40, size=(n, 26), dtype=np.int64)
        flip = rng.random(n) < 0.1
        labels = ((sparse[:, 0] % 2 == 0) ^ flip).astype(np.int32).reshape(n, 1)
        np.save(d / f"day_{day}_dense.npy", rng.standard_normal((n, 13)).astype(np.float32))
        np.save(d / f"day_{day}_sparse.npy", sparse)
        np.save(d / f"day_{day}_labels.npy", labels)


TORCHREC_SECTION = (
    "[torchrec_criteo]\ntrain_days = [0, 1]\nval_days = [[2, 0.0, 0.5]]\ntest_days = [[2, 0.5, 1.0]]\n"
    "num_embeddings_per_feature = 50\n"
)


def test_torchrec_layout_needs_no_meta_json(tmp_path: Path) -> None:
    from recsys.data.loader import make_loader
    from recsys.data.torchrec_layout import TorchRecCriteo

    d = tmp_path / "npy"
    write_torchrec_days(d)
    cfg = load_config(write(tmp_path, 'members = ["fnn"]\n' + TORCHREC_SECTION, d))
    assert not (d / "meta.json").exists()
    schema = cfg.schema()
    assert schema.splits == {"train": 500, "val": 120, "test": 120}
    assert schema.num_sparse == 26 and schema.num_dense == 13
    assert all(f.num_embeddings == 50 for f in schema.sparse_features)
    src = cfg.data_source()
    assert isinstance(src, TorchRecCriteo)
    batch = next(iter(make_loader(src, "test", 64)))
    assert batch.sparse_features.values().max() < 50  # ids taken modulo the table size
    assert "torchrec_criteo.train_days" in cfg.hparams()
    # Without the section, data_source is the directory itself.
    plain = load_config(write(tmp_path, 'members = ["fnn"]\n', d), check_data=False)
    assert plain.data_source() == str(d) and plain.torchrec_criteo is None


@pytest.mark.parametrize(
    "section, needle",
    [
        ("train_days = [0, 1, 5]\nval_days = [2]\ntest_days = [2]\nnum_embeddings_per_feature = 50\n",
         "missing day files in {d}: day_5_dense.npy, day_5_sparse.npy, day_5_labels.npy"),
        ("train_days = [0]\nval_days = [2]\ntest_days = [2]\nnum_embeddings_per_feature = 50\n"
         'sparse_suffix = "sparse_contig"\n',
         "missing day files in {d}: day_0_sparse_contig.npy, day_2_sparse_contig.npy"),
        ("train_days = [0]\nval_days = [[2, 0.5, 0.2]]\ntest_days = [2]\nnum_embeddings_per_feature = 50\n",
         "torchrec_criteo.val_days: bad day [2, 0.5, 0.2]"),
        ("train_days = []\nval_days = [2]\ntest_days = [2]\nnum_embeddings_per_feature = 50\n",
         "torchrec_criteo.train_days: expected a non-empty list of days"),
        ("train_days = [0]\nval_days = [2]\nnum_embeddings_per_feature = 50\n",
         "torchrec_criteo: missing required key 'test_days'"),
        ("train_days = [0]\nval_days = [2]\ntest_days = [2]\nnum_embeddings_per_feature = [50, 60]\n",
         "num_embeddings_per_feature: expected a positive integer or a list of 26, got [50, 60]"),
        ("train_days = [0]\nval_days = [2]\ntest_days = [2]\nnum_embeddings_per_feature = 50\nhashes = 3\n",
         "torchrec_criteo: unknown key 'hashes'"),
        ("train_days = [0]\nval_days = [[2, 0.0, 0.001]]\ntest_days = [2]\nnum_embeddings_per_feature = 50\n",
         "torchrec_criteo.val_days select no rows"),
    ],
)
def test_torchrec_layout_errors_are_one_line(tmp_path: Path, section: str, needle: str) -> None:
    d = tmp_path / "npy"
    write_torchrec_days(d)
    p = write(tmp_path, 'members = ["fnn"]\n[torchrec_criteo]\n' + section, d)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(p)), msg
    assert needle.format(d=d) in msg, msg


def test_torchrec_layout_bad_shape_is_one_line(tmp_path: Path) -> None:
    import numpy as np

    d = tmp_path / "npy"
    write_torchrec_days(d)
    np.save(d / "day_1_dense.npy", np.zeros((200, 12), dtype=np.float32))
    with pytest.raises(ConfigError, match=r"torchrec_criteo: .*day_1_dense\.npy: shape \[200, 12\], expected \[200, 13\]"):
        load_config(write(tmp_path, 'members = ["fnn"]\n' + TORCHREC_SECTION, d))


def test_shipped_torchrec_layout_config_parses() -> None:
    cfg = load_config(ROOT / "configs" / "criteo_1tb_torchrec_layout.toml", check_data=False)
    tr = cfg.torchrec_criteo
    assert tr is not None and tr.sparse_suffix == "sparse"
    days = tr.days()
    assert [d for d, _, _ in days["train"]] == list(range(23))
    assert days["val"] == [(23, 0.0, 0.5)] and days["test"] == [(23, 0.5, 1.0)]
    assert isinstance(tr.num_embeddings_per_feature, list) and len(tr.num_embeddings_per_feature) == 26


def test_import_is_light() -> None:
    """``import recsys.config`` pulls in neither torch nor torchrec (the launcher reads configs
    before anything heavy): checks that need torch import it inside the check."""
    code = ("import sys, recsys.config; "
            "print(sorted(m for m in ('torch', 'torchrec', 'fbgemm_gpu', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
