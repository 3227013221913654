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
from typing import TYPE_CHECKING

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


@dataclass
class TrainSettings:
    """What every arm shares, so that only the member specs differ between arms."""

    data_dir: str = "data/demo/criteo"
    seed: int = 0
    device: str = "cpu"
    epochs: int = 2
    patience: int = 1
    batch_size: int = 1024
    eval_batch_size: int = 4096
    max_steps_per_epoch: int = 0
    dense_lr: float = 1e-3
    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.02
    log_dir: str = "runs"
    checkpoint_dir: str = "checkpoints"


def experiment_config(run: RunPlan, s: TrainSettings) -> ExperimentConfig:
    """The ``ExperimentConfig`` of one run: its members and groups, everything else from ``s``."""
    return ExperimentConfig(
        name=run.name,
        data_dir=s.data_dir,
        members=list(run.members),
        groups=[list(g) for g in run.groups],
        seed=s.seed,
        device=s.device,
        log_dir=s.log_dir,
        checkpoint_dir=s.checkpoint_dir,
        train=TrainConfig(batch_size=s.batch_size, eval_batch_size=s.eval_batch_size, epochs=s.epochs,
                          patience=s.patience, max_steps_per_epoch=s.max_steps_per_epoch, log_every=LOG_EVERY),
        dense_optimizer=DenseOptimizerConfig(lr=s.dense_lr),
        embedding_optimizer=EmbeddingOptimizerSection(name=s.embedding_optimizer, lr=s.embedding_lr),
    )


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


def _changed(obj: DataclassInstance) -> list[tuple[str, object]]:
    """(field, value) of a config dataclass for each field that differs from its default;
    a field without a default is always kept."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
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


def config_to_toml(cfg: ExperimentConfig, header: str = "written by recsys.study") -> str:
    """``cfg`` as TOML: top-level keys, then one ``[section]`` per section with changed fields.

    Only values that differ from the dataclasses' defaults are written (``source``, the file
    a config came from, is not a key and always stays at its default).  A value TOML cannot
    hold (``None`` where the default is not ``None``) is a ``TypeError``: a bug, not input.
    """
    top: list[str] = []
    sections: list[str] = []
    for name, value in _changed(cfg):
        if name == "source":
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            body = [f"{k} = {_toml_value(v, f'{name}.{k}')}" for k, v in _changed(value)]
            if body:
                sections.append("\n".join([f"[{name}]", *body]))
        else:
            top.append(f"{name} = {_toml_value(value, name)}")
    return "\n\n".join([f"# {header}\n" + "\n".join(top), *sections]) + "\n"


def config_toml(run: RunPlan, s: TrainSettings) -> str:
    """The TOML config of one run, as ``train_group.py --config`` reads it."""
    return config_to_toml(experiment_config(run, s))


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
