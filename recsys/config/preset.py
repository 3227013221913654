"""The config-level presets: ``preset = "tts4ctr"`` fills in the official TTS4CTR recipe.

Why a table of TOML values and not code: a preset is only defaults, so it is merged into the
parsed TOML *under* what the file (and ``--set``) gives; every value the user writes wins, and
the type walk and range checks of ``load`` see the merged values like any others.  The member
half of a preset (the architectures, the init) is the member spec key ``preset=`` that
``recsys.models.preset.resolve_spec`` resolves at build time; here each member spec without
one is given the config's.

The ``tts4ctr`` recipe, read from the official code (aTitye/TTS4CTR ``trainer_group.py``,
``utils/trainUtils.py``, ``avazu_train_group.sh``): one ``torch.optim.Adam`` over all
parameters at lr 1e-4 and weight decay (``--l2``) 0, batch 4096, at most ``--max_epoch`` 20
epochs, stopping at the first epoch whose val AUC does not beat the best (patience 1), then
restoring the best weights and scoring test with them.  Here that is Adam on the dense part
and Adam on the tables, at the same lr (fused on CUDA, TorchRec's dense kernel with
``torch.optim.Adam`` on CPU).

Example::

    raw = {"data_dir": "d", "members": ["dcnv2:seed=1"], "preset": "tts4ctr", "train": {"epochs": 2}}
    raw = apply_preset(raw, "c.toml")
    raw["members"]                      # ["dcnv2:seed=1,preset=tts4ctr"]
    raw["train"]                        # {"batch_size": 4096, "epochs": 2, "patience": 1}
    # [embedding_optimizer] name = "rowwise_adagrad" (not the preset's adam): its own lr 0.02, not 1e-4
    apply_preset({"preset": "x"}, "c.toml")   # ConfigError: c.toml: preset: unknown preset 'x'; ...
"""
from __future__ import annotations

from typing import Any

from recsys.config.schema import ConfigError

# name -> {section: {key: value}}, values as a TOML file would hold them.  "" is our defaults.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "tts4ctr": {
        "train": {"batch_size": 4096, "epochs": 20, "patience": 1},
        "dense_optimizer": {"lr": 1e-4, "weight_decay": 0.0},
        "embedding_optimizer": {"name": "adam", "lr": 1e-4, "weight_decay": 0.0},
    },
}
PRESETS = tuple(RECIPES)


def check_preset(name: object, where: str) -> str:
    """``name`` if it is "" or a known preset, else one ``ConfigError`` line naming the valid ones."""
    if not isinstance(name, str):
        raise ConfigError(f"{where}: expected a string, got {name!r}")
    if name and name not in RECIPES:
        raise ConfigError(f"{where}: unknown preset {name!r}; valid: {', '.join(PRESETS)} (or \"\" for our defaults)")
    return name


def spec_with_preset(spec: str, preset: str) -> str:
    """``spec`` with ``preset=<preset>`` appended unless it sets a preset itself.

    Example: ``spec_with_preset("fnn", "tts4ctr")`` -> ``"fnn:preset=tts4ctr"``;
    ``spec_with_preset("fnn:preset=", "tts4ctr")`` -> unchanged (the member asks for our defaults).
    """
    name, colon, rest = spec.strip().partition(":")
    items = [s.strip() for s in rest.split(",") if s.strip()]
    if any(item.partition("=")[0].strip() == "preset" for item in items):
        return spec
    return f"{name}:{','.join([*items, f'preset={preset}'])}"


def apply_preset(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The parsed TOML with the preset's values under the file's own (a new dict; ``raw`` is kept).

    Member specs (when ``members`` is a list of strings) get ``preset=<name>``; malformed
    members and sections are left for ``load``'s checks to name.
    """
    name = check_preset(raw.get("preset", ""), f"{source}: preset")
    if not name:
        return raw
    out = dict(raw)
    members = raw.get("members")
    if isinstance(members, list) and all(isinstance(m, str) for m in members):
        out["members"] = [spec_with_preset(m, name) for m in members]
    for section, values in RECIPES[name].items():
        given = raw.get(section, {})
        if isinstance(given, dict):
            out[section] = {**_for_given_optimizer(section, values, given), **given}
    return out


def _for_given_optimizer(section: str, values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The preset's ``[embedding_optimizer]`` values that still apply under the file's.

    The preset's lr / eps / weight decay belong to the preset's optimizer (Adam): under another
    ``name`` (e.g. ``rowwise_adagrad``) Adam's lr 1e-4 would be 200x below Adagrad's 0.02,
    silently, so then none of them applies and the named optimizer's own defaults do
    (``AUTO_EMBEDDING_LR``)."""
    if section != "embedding_optimizer" or "name" not in given or given["name"] == values.get("name"):
        return values
    return {}
