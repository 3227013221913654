"""Each run's experiment config: the study's shared settings plus one run's members and groups,
as an ``ExperimentConfig`` and as the TOML file ``train_group.py`` reads.

Why a generic writer: the config schema has one definition, ``recsys.config``'s dataclasses.
The TOML is written by walking those dataclasses' fields (only values that differ from the
defaults), so a new config field can never be missed or misspelled here; ``recsys.config``
loads the file back into an equal ``ExperimentConfig`` (tested for every arm).

Example::

    cfg = experiment_config(RunPlan("tts_indep", ["dcnv2:seed=1"], [[0]]), TrainSettings(epochs=1))
    text = config_to_toml(cfg)   # 'name = "tts_indep"\\ndata_dir = ...\\n\\n[train]\\nbatch_size = 1024 ...'
    same_config(text, Path("runs/tts_vs_params/tts_indep.toml").read_text())  # True: --reuse may skip it
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection

from recsys.config import (
    DenseOptimizerConfig,
    EmbeddingOptimizerSection,
    ExperimentConfig,
    TrainConfig,
    config_from_dict,
)
from recsys.errors import UserError
from recsys.study.plan import RunPlan

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

LOG_EVERY = 50  # TensorBoard train-loss interval of every study run, in steps


# The settings a preset's recipe sets when the command line does not (``--preset``): with a
# preset, a setting in ``TrainSettings.from_preset`` is left out of the config, and every other
# recipe setting is written even at its default, so that the preset cannot change it.
PRESET_RECIPE = ("batch_size", "dense_lr", "embedding_optimizer", "embedding_lr")
_SETTING_KEYS = {  # TrainSettings field -> the config key it sets
    "seed": "seed", "device": "device", "batch_size": "train.batch_size", "eval_batch_size": "train.eval_batch_size",
    "epochs": "train.epochs", "patience": "train.patience", "max_steps_per_epoch": "train.max_steps_per_epoch",
    "dense_lr": "dense_optimizer.lr", "embedding_optimizer": "embedding_optimizer.name",
    "embedding_lr": "embedding_optimizer.lr",
}


@dataclass
class TrainSettings:
    """What every arm shares, so that only the member specs differ between arms.

    The default recipe trains to convergence: early stopping on val AUC with patience 2, and
    an epoch cap (100) that only a run that never stops improving reaches.  ``preset`` (e.g.
    "tts4ctr") goes into every config; ``from_preset`` names the settings (of
    ``PRESET_RECIPE``) left to it.
    """

    data_dir: str = "data/demo/criteo"
    seed: int = 0
    device: str = "cpu"
    epochs: int = 100
    patience: int = 2
    batch_size: int = 1024
    eval_batch_size: int = 4096
    max_steps_per_epoch: int = 0
    dense_lr: float = 1e-3
    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.02
    log_dir: str = "runs"
    checkpoint_dir: str = "checkpoints"
    preset: str = ""
    from_preset: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = [k for k in self.from_preset if k not in PRESET_RECIPE]
        if bad or (self.from_preset and not self.preset):
            raise ValueError(f"from_preset needs a preset and names from {PRESET_RECIPE}, got {self.from_preset}")


def experiment_config(run: RunPlan, s: TrainSettings) -> ExperimentConfig:
    """The ``ExperimentConfig`` of one run: its members and groups, everything else from ``s``
    (the run's own ``lr``, a point of the lr sweep, replaces ``s.dense_lr``)."""
    mine = set(PRESET_RECIPE) - set(s.from_preset)  # the settings this study sets itself
    dense_lr = run.lr if run.lr is not None else (s.dense_lr if "dense_lr" in mine else DenseOptimizerConfig().lr)
    emb = EmbeddingOptimizerSection()
    emb = EmbeddingOptimizerSection(name=s.embedding_optimizer if "embedding_optimizer" in mine else emb.name,
                                    lr=s.embedding_lr if "embedding_lr" in mine else _swept_embedding_lr(run, s))
    cfg = ExperimentConfig(
        name=run.name,
        data_dir=s.data_dir,
        members=list(run.members),
        groups=[list(g) for g in run.groups],
        seed=s.seed,
        device=s.device,
        log_dir=s.log_dir,
        checkpoint_dir=s.checkpoint_dir,
        train=TrainConfig(batch_size=s.batch_size if "batch_size" in mine else TrainConfig().batch_size,
                          eval_batch_size=s.eval_batch_size, epochs=s.epochs, patience=s.patience,
                          max_steps_per_epoch=s.max_steps_per_epoch, log_every=LOG_EVERY),
        dense_optimizer=DenseOptimizerConfig(lr=dense_lr),
        embedding_optimizer=emb,
    )
    return dataclasses.replace(cfg, preset=s.preset) if s.preset else cfg


def _swept_embedding_lr(run: RunPlan, s: TrainSettings) -> float | None:
    """A preset's recipe has one lr for all parameters (TTS4CTR: one Adam), so a swept lr
    replaces the embedding lr too when the preset sets it; else the embedding lr stays."""
    return run.lr if s.preset and "embedding_lr" in s.from_preset else None


def written_keys(run: RunPlan, s: TrainSettings) -> set[str]:
    """The config keys written even at their default: with a preset, every recipe setting
    the study sets itself (and the run's swept lr), so the preset's recipe cannot replace it."""
    if not s.preset:
        return set()
    keys = {key for name, key in _SETTING_KEYS.items() if name not in s.from_preset}
    swept = {"dense_optimizer.lr"} if run.lr is not None else set()
    return keys | swept | ({"embedding_optimizer.lr"} if _swept_embedding_lr(run, s) is not None else set())


def _toml_value(v: object, where: str) -> str:
    """One TOML value; ``json.dumps`` writes valid TOML basic strings (its escapes are TOML's)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        items = [_toml_value(x, where) for x in v]
        if v and all(isinstance(x, str) for x in v):  # member specs: one a line
            return "[\n" + "".join(f"  {x},\n" for x in items) + "]"
        return "[" + ", ".join(items) + "]"
    raise TypeError(f"{where}: cannot write {type(v).__name__} {v!r} as TOML")


def _changed(obj: DataclassInstance, always: Collection[str] = (), prefix: str = "") -> list[tuple[str, object]]:
    """(field, value) of a config dataclass for each field that differs from its default;
    a field without a default, or named in ``always`` (``prefix`` + name), is always kept."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if prefix + f.name in always or any(k.startswith(f"{prefix}{f.name}.") for k in always):
            out.append((f.name, value))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            out.append((f.name, value))
            continue
        if value != default:
            out.append((f.name, value))
    return out


def config_to_toml(cfg: ExperimentConfig, header: str = "written by recsys.study",
                   always: Collection[str] = ()) -> str:
    """``cfg`` as TOML: top-level keys, then one ``[section]`` per section with changed fields.

    Only values that differ from the dataclasses' defaults are written, and the dotted keys in
    ``always`` (e.g. ``train.epochs``) whatever their value (``source``, the file
    a config came from, is not a key and always stays at its default).  A value TOML cannot
    hold (``None`` where the default is not ``None``) is a ``TypeError``: a bug, not input.
    """
    top: list[str] = []
    sections: list[str] = []
    for name, value in _changed(cfg, always):
        if name == "source":
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            body = [f"{k} = {_toml_value(v, f'{name}.{k}')}" for k, v in _changed(value, always, f"{name}.")]
            if body:
                sections.append("\n".join([f"[{name}]", *body]))
        else:
            top.append(f"{name} = {_toml_value(value, name)}")
    return "\n\n".join([f"# {header}\n" + "\n".join(top), *sections]) + "\n"


def config_toml(run: RunPlan, s: TrainSettings) -> str:
    """The TOML config of one run, as ``train_group.py --config`` reads it."""
    return config_to_toml(experiment_config(run, s), always=written_keys(run, s))


def load_config_text(text: str, source: str = "<study>") -> ExperimentConfig:
    """A config's TOML text, validated as ``train_group.py`` would (the data dir is not opened)."""
    return config_from_dict(tomllib.loads(text), source=source, check_data=False)


def same_config(a: str, b: str) -> bool:
    """Whether two config texts train the same thing (they load to equal ``ExperimentConfig``\\ s);
    text that does not load counts as different.  Why not compare the text: a config written by
    an earlier version of this study, with other formatting, still describes the same run."""
    try:
        return load_config_text(a) == load_config_text(b)
    except (tomllib.TOMLDecodeError, UserError):
        return False
