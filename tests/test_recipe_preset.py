"""The ``tts4ctr`` preset at the config and converter level (issue 11, section 1).

- config: ``preset = "tts4ctr"`` gives the official recipe (aTitye/TTS4CTR ``trainer_group.py``
  and ``avazu_train_group.sh``: Adam lr 1e-4, weight decay 0, batch 4096, max 20 epochs, stop at
  the first epoch without a val-AUC gain), adds ``preset=tts4ctr`` to every member spec without
  one, lets every value the TOML or ``--set`` gives win, and records itself in ``hparams()``;
- converters: ``--preset tts4ctr`` exempts Criteo's numeric tokens from min-count (the official
  ``white_list``), its threshold is the official one, explicit flags win, and the saved vocabulary
  records the exemption so ``--vocab-from`` and serving reproduce the ids.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recsys.config import ConfigError, load_config
from recsys.config.preset import RECIPES, spec_with_preset
from recsys.data.schema import Schema, SparseFeature

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    Schema("toy", (SparseFeature("C0", 10), SparseFeature("C1", 12)), splits={"train": 10, "val": 5, "test": 5}).save(d)
    return d


def write(tmp_path: Path, body: str, data_dir: Path) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(f'data_dir = "{data_dir}"\n' + body)
    return p


# ----------------------------------------------------------------------------- config


def test_preset_sets_the_official_recipe(tmp_path: Path, data_dir: Path) -> None:
    cfg = load_config(write(tmp_path, 'preset = "tts4ctr"\nmembers = ["fnn:seed=1", "dcnv2"]\n', data_dir))
    assert cfg.preset == "tts4ctr"
    # The official values (trainer_group.py defaults, avazu_train_group.sh's --lr 0.0001 --l2 0.0).
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.patience) == (4096, 20, 1)
    assert (cfg.dense_optimizer.lr, cfg.dense_optimizer.weight_decay) == (1e-4, 0.0)
    for device in ("cpu", "cuda"):  # one Adam over everything: fused on CUDA, dense kernel on CPU
        emb = cfg.embedding_optimizer.resolve(device)
        assert (emb.name, emb.lr, emb.weight_decay) == ("adam", 1e-4, 0.0), device
    assert cfg.members == ["fnn:seed=1,preset=tts4ctr", "dcnv2:preset=tts4ctr"]
    hp = cfg.hparams()
    assert hp["preset"] == "tts4ctr" and hp["dense_optimizer.lr"] == 1e-4 and hp["train.epochs"] == 20
    assert hp["embedding_optimizer.name"] == "adam" and hp["embedding_optimizer.lr"] == 1e-4
    assert cfg.to_dict()["preset"] == "tts4ctr"


def test_without_preset_our_defaults_stay(tmp_path: Path, data_dir: Path) -> None:
    cfg = load_config(write(tmp_path, 'members = ["fnn"]\n', data_dir))
    assert cfg.preset == "" and cfg.members == ["fnn"] and cfg.hparams()["preset"] == "none"
    assert cfg.dense_optimizer.lr == 1e-3 and cfg.train.epochs == 10
    assert cfg.embedding_optimizer.resolve("cpu").name == "rowwise_adagrad"


def test_explicit_values_win_over_the_preset(tmp_path: Path, data_dir: Path) -> None:
    body = ('preset = "tts4ctr"\nmembers = ["fnn:preset=", "dcnv2:preset=tts4ctr,seed=2"]\n'
            '[train]\nepochs = 2\n[embedding_optimizer]\nname = "rowwise_adagrad"\n')
    cfg = load_config(write(tmp_path, body, data_dir), ["dense_optimizer.lr=0.003"])
    assert cfg.train.epochs == 2 and cfg.train.batch_size == 4096  # the file's epochs, the preset's batch
    assert cfg.dense_optimizer.lr == 0.003  # --set wins too
    emb = cfg.embedding_optimizer.resolve("cpu")
    assert (emb.name, emb.lr) == ("rowwise_adagrad", 1e-4)  # the file's name, the preset's lr
    # A member that names a preset (our defaults: "preset=") keeps its own.
    assert cfg.members == ["fnn:preset=", "dcnv2:preset=tts4ctr,seed=2"]
    # The preset can come from --set too.
    cfg = load_config(write(tmp_path, 'members = ["fnn"]\n', data_dir), ["preset=tts4ctr"])
    assert cfg.dense_optimizer.lr == 1e-4 and cfg.members == ["fnn:preset=tts4ctr"]


def test_unknown_preset_is_one_line_naming_the_valid_ones(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, 'preset = "paper"\nmembers = ["fnn"]\n', data_dir))
    msg = str(e.value)
    assert "\n" not in msg and "unknown preset 'paper'" in msg and "tts4ctr" in msg and "c.toml" in msg
    with pytest.raises(ConfigError, match="preset: expected a string"):
        load_config(write(tmp_path, 'preset = 3\nmembers = ["fnn"]\n', data_dir))


def test_recipe_keys_are_config_keys() -> None:
    """Every key the preset sets is a field of its section (a typo would be silently dropped)."""
    import dataclasses

    from recsys.config.schema import SECTIONS

    for name, recipe in RECIPES.items():
        for section, values in recipe.items():
            fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
            assert set(values) <= fields, (name, section, set(values) - fields)


def test_spec_with_preset() -> None:
    assert spec_with_preset("fnn", "tts4ctr") == "fnn:preset=tts4ctr"
    assert spec_with_preset("fnn:", "tts4ctr") == "fnn:preset=tts4ctr"
    assert spec_with_preset("fnn:seed=1, mlp=8", "tts4ctr") == "fnn:seed=1,mlp=8,preset=tts4ctr"
    assert spec_with_preset("fnn:seed=1, preset = ", "tts4ctr") == "fnn:seed=1, preset = "


def test_config_with_preset_imports_no_torch(tmp_path: Path, data_dir: Path) -> None:
    """``recsys.config.preset`` stays light: the launcher reads a preset config without torch
    (the member checks import it lazily, so only the import of the package is checked)."""
    code = "import sys, recsys.config.preset, recsys.config; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
