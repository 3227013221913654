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

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recsys.config import ConfigError, load_config
from recsys.config.preset import RECIPES, spec_with_preset
from recsys.config.schema import AUTO_EMBEDDING_LR
from recsys.data.convert import main as convert_main
from recsys.data.synth import write_criteo
from tests.test_config import data_dir, write  # noqa: F401  (data_dir: the fixture of a two-field toy schema)

ROOT = Path(__file__).resolve().parent.parent


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
    # the file's optimizer with its own default lr: the preset's lr 1e-4 is Adam's, 200x below Adagrad's
    assert (emb.name, emb.lr) == ("rowwise_adagrad", AUTO_EMBEDDING_LR["rowwise_adagrad"])
    # A member that names a preset (our defaults: "preset=") keeps its own.
    assert cfg.members == ["fnn:preset=", "dcnv2:preset=tts4ctr,seed=2"]
    # The preset can come from --set too.
    cfg = load_config(write(tmp_path, 'members = ["fnn"]\n', data_dir), ["preset=tts4ctr"])
    assert cfg.dense_optimizer.lr == 1e-4 and cfg.members == ["fnn:preset=tts4ctr"]


def test_preset_embedding_lr_applies_only_to_its_own_optimizer(tmp_path: Path, data_dir: Path) -> None:
    """The preset's embedding lr / weight decay are Adam's: another named optimizer gets its own."""
    def emb(section: str) -> tuple[str, float, float]:
        cfg = load_config(write(tmp_path, f'preset = "tts4ctr"\nmembers = ["fnn"]\n{section}', data_dir))
        e = cfg.embedding_optimizer.resolve("cpu")
        return e.name, e.lr, e.weight_decay

    assert emb("") == ("adam", 1e-4, 0.0)  # unset: the preset's optimizer and lr
    assert emb('[embedding_optimizer]\nname = "adam"\n') == ("adam", 1e-4, 0.0)  # the preset's name: its lr
    for name in ("rowwise_adagrad", "sgd"):
        assert emb(f'[embedding_optimizer]\nname = "{name}"\n') == (name, AUTO_EMBEDDING_LR[name], 0.0)
    # an explicit lr wins either way
    assert emb('[embedding_optimizer]\nname = "rowwise_adagrad"\nlr = 0.05\n')[1] == 0.05
    assert emb('[embedding_optimizer]\nlr = 0.05\n') == ("adam", 0.05, 0.0)


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


# ----------------------------------------------------------------------------- converters


def _official_token(raw: str) -> str:
    """The official Criteo numeric bucket (criteo2TF.py ``bucket``), written from its rule:
    v > 2 -> floor(ln(v)^2), else int(v); an empty value is its own token."""
    if raw == "":
        return "empty"
    v = float(raw)
    return str(int(math.floor(math.log(v) ** 2)) if v > 2 else int(v))


def _numeric_tokens(path: Path) -> list[list[str]]:
    """Per row, the 13 numeric tokens of a Criteo TSV."""
    return [[_official_token(x) for x in line.rstrip("\n").split("\t")[1:14]] for line in path.open()]


def _convert(tmp_path: Path, name: str, train: Path, test: Path, *flags: str) -> Path:
    out = tmp_path / name
    rc = convert_main("criteo", ["--train", str(train), "--val", str(test), "--test", str(test), "--output", str(out),
                                 "--workers", "1", "--no-progress", *flags])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def criteo_raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("raw")
    write_criteo(d / "train.tsv", 800, seed=1)
    write_criteo(d / "test.tsv", 200, seed=2)
    return d / "train.tsv", d / "test.tsv"


def test_preset_exempts_numeric_tokens_from_min_count(tmp_path: Path, criteo_raw: tuple[Path, Path]) -> None:
    train, test = criteo_raw
    plain = _convert(tmp_path, "plain", train, test)
    paper = _convert(tmp_path, "paper", train, test, "--preset", "tts4ctr")
    tokens = _numeric_tokens(train)
    a, b = np.load(plain / "train_sparse.npy"), np.load(paper / "train_sparse.npy")
    assert a.shape == b.shape == (800, 39)
    rare_seen = 0
    for j in range(13):
        col = [row[j] for row in tokens]
        counts = Counter(col)
        # the preset: every train token has its own id, one id per token
        assert (b[:, j] > 0).all(), f"I{j + 1}"
        assert len({(t, int(i)) for t, i in zip(col, b[:, j])}) == len(counts) == len(set(b[:, j].tolist()))
        # without it: the tokens seen fewer than 10 times go to OOV (0), the others keep an id
        rare = np.array([counts[t] < 10 for t in col])
        assert ((a[:, j] == 0) == rare).all(), f"I{j + 1}"
        rare_seen += int(rare.sum())
    assert rare_seen > 0  # the data has rare numeric tokens, so the test can fail
    # categorical fields: min count 10 either way (the official --threshold default), the same ids
    assert (a[:, 13:] == b[:, 13:]).all()
    meta_a, meta_b = (json.loads((d / "meta.json").read_text())["preprocessing"] for d in (plain, paper))
    assert meta_b["min_count"] == meta_a["min_count"] == 10
    assert meta_b["preset"] == "tts4ctr" and meta_a["preset"] is None
    assert meta_b["field_min_counts"] == {f"I{j}": 1 for j in range(1, 14)} and meta_a["field_min_counts"] is None
    manifest = json.loads((paper / "vocab" / "manifest.json").read_text())
    assert [f["min_count"] for f in manifest["fields"]] == [1] * 13 + [10] * 26


def test_preset_ids_are_reproduced_by_vocab_from_and_serving(tmp_path: Path, criteo_raw: tuple[Path, Path]) -> None:
    from recsys.data.convert import RawRowEncoder

    train, test = criteo_raw
    paper = _convert(tmp_path, "paper", train, test, "--preset", "tts4ctr")
    again = tmp_path / "again"
    assert convert_main("criteo", ["--test", str(train), "--output", str(again), "--vocab-from", str(paper),
                                   "--workers", "1", "--no-progress"]) == 0
    assert (np.load(again / "test_sparse.npy") == np.load(paper / "train_sparse.npy")).all()
    meta = json.loads((again / "meta.json").read_text())["preprocessing"]
    assert meta["field_min_counts"] == {f"I{j}": 1 for j in range(1, 14)}
    _, sparse = RawRowEncoder.from_dir(paper).encode_lines(train.read_text().splitlines()[:50])
    assert (sparse == np.load(paper / "train_sparse.npy")[:50]).all()


def test_explicit_flags_win_over_the_converter_preset(tmp_path: Path, criteo_raw: tuple[Path, Path]) -> None:
    train, test = criteo_raw
    plain = _convert(tmp_path, "plain", train, test)
    same = _convert(tmp_path, "same", train, test, "--preset", "tts4ctr", "--numeric-min-count", "10")
    assert (np.load(plain / "train_sparse.npy") == np.load(same / "train_sparse.npy")).all()
    low = _convert(tmp_path, "low", train, test, "--preset", "tts4ctr", "--min-count", "3")
    meta = json.loads((low / "meta.json").read_text())["preprocessing"]
    assert meta["min_count"] == 3 and meta["field_min_counts"] == {f"I{j}": 1 for j in range(1, 14)}


def test_converter_preset_with_hash_is_refused(tmp_path: Path, criteo_raw: tuple[Path, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Hashing has no min-count, so the preset would apply nothing yet be recorded in meta.json."""
    train, test = criteo_raw
    out = tmp_path / "h"
    argv = ["--train", str(train), "--val", str(test), "--test", str(test), "--output", str(out), "--workers", "1",
            "--no-progress", "--hash", "1000"]
    assert convert_main("criteo", [*argv, "--preset", "tts4ctr"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--preset tts4ctr sets min-counts; it does not apply with --hash" in err
    assert not out.exists()
    assert convert_main("criteo", argv) == 0  # --hash alone converts
    assert json.loads((out / "meta.json").read_text())["preprocessing"]["preset"] is None


def test_converter_preset_errors_are_one_line(tmp_path: Path, criteo_raw: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    train, _ = criteo_raw
    base = ["--input", str(train), "--output", str(tmp_path / "o"), "--no-progress"]
    assert convert_main("criteo", [*base, "--numeric-min-count", "2", "--numeric", "dense"]) == 2
    assert "--numeric-min-count: criteo has no numeric tokens with --numeric dense" in capsys.readouterr().err
    assert convert_main("criteo", [*base, "--numeric-min-count", "0"]) == 2
    assert "--numeric-min-count must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the valid names
        convert_main("criteo", [*base, "--preset", "paper"])
    assert "invalid choice: 'paper'" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_python_m_recsys_data_convert(tmp_path: Path, criteo_raw: tuple[Path, Path]) -> None:
    """The module form runs the same converter (and its --help has the preset example)."""
    train, _ = criteo_raw
    r = subprocess.run([sys.executable, "-m", "recsys.data.convert", "criteo", "--help"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--preset tts4ctr" in r.stdout and "python -m recsys.data.convert criteo" in r.stdout
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "recsys.data.convert", "criteo", "--input", str(train), "--output",
                        str(out), "--preset", "tts4ctr", "--workers", "1", "--no-progress"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "meta.json").read_text())["preprocessing"]["preset"] == "tts4ctr"
    r = subprocess.run([sys.executable, "-m", "recsys.data.convert", "critio"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown dataset 'critio'" in r.stderr
