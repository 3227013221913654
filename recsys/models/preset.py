"""Member presets: named bundles of spec values, resolved against the data's schema.

Why: our defaults depart from the official TTS4CTR code (aTitye/TTS4CTR) where we think
ours are better (docs/preset.md lists every departure), but the paper's study must also
run the official models.  ``preset=tts4ctr`` in a member spec selects them: every knob the
official code fixes gets the official value, unless the spec sets that key itself.  Some
values depend on the data (RankMixer's D = the number of fields), so a preset is resolved
against the schema, by ``build_member`` and everything in ``recsys.budget`` that builds.

The tts4ctr values (trainer_group.py's defaults, modules/models.py and layers.py):

- every model: ``embedding_init=xavier_global`` (one bound over all fields' rows, as its one
  global table), ``embedding_dim=16``, ``dropout=0``;
- FNN, IPNN, DeepFM: ``mlp=1024-512-256``; DeepFM without a first-order term;
- DCN, DCN-v2: 3 cross layers, full rank, ``head_bias=false`` (its ``combination`` has no bias);
- FinalMLP: no gating, one head, ``stream_biases=true``;
- Wukong: 3 layers, LCB 16, FMB 16, rank 24, FMB MLP 512-512;
- RankMixer: 3 layers, expansion 2, T = H = tokens, D = tokens (stored at the next multiple
  of 4, ``model_dim`` = tokens), ``norm=tensor``;
- models the official code does not have (multiembed, dmoe): the shared member values only.

Example::

    resolve_spec("rankmixer:preset=tts4ctr,seed=2", criteo)
    # "rankmixer:preset=tts4ctr,seed=2,embedding_init=xavier_global,...,embedding_dim=40,model_dim=39,..."
"""
from __future__ import annotations

from recsys.data.schema import Schema
from recsys.models.member import num_tokens
from recsys.models.spec import SpecError, spec_items

PRESETS = ("tts4ctr",)

_MLP = "1024-512-256"


def _tts4ctr(model: str, schema: Schema) -> dict[str, str]:
    """The official values of ``model``'s knobs on ``schema`` (see the module doc)."""
    values = {"embedding_init": "xavier_global", "embedding_dim": "16", "model_dim": "0", "dropout": "0.0"}
    if model in ("fnn", "ipnn", "deepfm", "dcn", "dcnv2", "finalmlp", "wukong", "rankmixer"):
        values["mlp"] = _MLP
    if model == "deepfm":
        values["first_order"] = "false"
    if model in ("dcn", "dcnv2"):
        values.update(cross_layers="3", head_bias="false")
    if model == "dcnv2":
        values["low_rank"] = "0"
    if model == "finalmlp":
        values.update(mlp2="none", num_heads="1", gating="false", stream_biases="true")
    if model == "wukong":
        values.update(layers="3", lcb_tokens="16", fmb_tokens="16", fmb_rank="24", fmb_mlp="512-512")
    if model == "rankmixer":
        # The official mixing needs D % H == 0 with H = T = fields: D = T, stored at the next
        # multiple of 4 (FBGEMM's rule), of which the model sees T columns.
        t = num_tokens(schema)
        values.update(
            layers="3", expansion="2", tokens="0", token_dim="0", heads="0", norm="tensor",
            embedding_dim=str(-(-t // 4) * 4), model_dim=str(t),
        )
    return values


def preset_values(preset: str, model: str, schema: Schema) -> dict[str, str]:
    """The spec values (key -> text) that ``preset`` gives ``model`` on ``schema``.

    Example::

        preset_values("tts4ctr", "dcn", criteo)["head_bias"]   # "false"
    """
    if preset not in PRESETS:
        raise SpecError(f"{model}: unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return _tts4ctr(model, schema)


def resolve_spec(spec: str, schema: Schema) -> str:
    """The spec with its preset's values appended for every key it does not set itself; a
    spec without ``preset`` (or ``preset=``) comes back unchanged.  Resolving twice gives
    the same spec.  A spec that sets ``embedding_dim`` but not ``model_dim`` gets
    ``model_dim=0`` (the model sees the width the spec chose), so RankMixer at an explicit
    small width builds with our free-(T, D, H) mixing instead of failing on D = tokens.

    Example::

        resolve_spec("dcn:seed=1", criteo)                            # "dcn:seed=1"
        resolve_spec("dcn:preset=tts4ctr,cross_layers=4", criteo)
        # "dcn:preset=tts4ctr,cross_layers=4,embedding_init=xavier_global,...,head_bias=false"
    """
    model, items = spec_items(spec)
    given = dict(items)
    preset = given.get("preset", "")
    if not preset:
        return spec
    values = preset_values(preset, model, schema)
    if "embedding_dim" in given and "model_dim" not in given:
        # A width the spec chose itself (the study's small bases, a scaled rival) is the width
        # the model sees: RankMixer's D = tokens cannot hold at, say, embedding_dim=8, and our
        # mixing splits D into H near-equal chunks there (recsys.modules.token_mixing).
        values["model_dim"] = "0"
    missing = [f"{k}={v}" for k, v in values.items() if k not in given]
    if not missing:
        return spec
    return f"{model}:" + ",".join([f"{k}={v}" for k, v in items] + missing)
