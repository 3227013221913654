"""Model registry: name -> (config dataclass, builder), and ``build_member``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch

from recsys.data.schema import Schema
from recsys.models.dcn import DCNConfig, build_dcn
from recsys.models.dcnv2 import DCNv2Config, build_dcnv2
from recsys.models.deepfm import DeepFMConfig, build_deepfm
from recsys.models.dmoe import DMoEConfig, build_dmoe
from recsys.models.embedding_init import EMBEDDING_INITS, materialize_embeddings
from recsys.models.finalmlp import FinalMLPConfig, build_finalmlp
from recsys.models.fnn import FNNConfig, build_fnn
from recsys.models.ipnn import IPNNConfig, build_ipnn
from recsys.models.member import Member
from recsys.models.multiembed import MultiEmbedConfig, build_multiembed
from recsys.models.preset import resolve_spec
from recsys.models.protocols import MemberBuilder
from recsys.models.rankmixer import RankMixerConfig, build_rankmixer
from recsys.models.spec import MemberConfig, SpecError, parse_spec
from recsys.models.wukong import WukongConfig, build_wukong

ConfigT = TypeVar("ConfigT", bound=MemberConfig)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its config class and a builder that takes any ``MemberConfig``
    (it checks that the config is ``config``'s).  Made by ``model_entry``, which checks
    the pairing statically."""

    config: type[MemberConfig]
    builder: MemberBuilder[MemberConfig]


def model_entry(config: type[ConfigT], builder: MemberBuilder[ConfigT]) -> ModelEntry:
    """Pairs a config class with the builder that takes it (mypy checks the pair).

    Example::

        model_entry(IPNNConfig, build_ipnn)     # fine
        model_entry(IPNNConfig, build_wukong)   # mypy: build_wukong takes a WukongConfig
    """

    def build(cfg: MemberConfig, schema: Schema, name: str) -> Member:
        if not isinstance(cfg, config):
            raise TypeError(f"this builder takes a {config.__name__}, got a {type(cfg).__name__}")
        return builder(cfg, schema, name)

    return ModelEntry(config, build)


MODELS: dict[str, ModelEntry] = {
    "fnn": model_entry(FNNConfig, build_fnn),
    "ipnn": model_entry(IPNNConfig, build_ipnn),
    "deepfm": model_entry(DeepFMConfig, build_deepfm),
    "dcn": model_entry(DCNConfig, build_dcn),
    "dcnv2": model_entry(DCNv2Config, build_dcnv2),
    "finalmlp": model_entry(FinalMLPConfig, build_finalmlp),
    "wukong": model_entry(WukongConfig, build_wukong),
    "rankmixer": model_entry(RankMixerConfig, build_rankmixer),
    "multiembed": model_entry(MultiEmbedConfig, build_multiembed),
    "dmoe": model_entry(DMoEConfig, build_dmoe),
}


def build_member(spec: str, schema: Schema, name: str | None = None, materialize: bool = True) -> Member:
    """Builds a member from a spec string; the spec's seed fully determines the init.

    The build runs under a forked RNG seeded with ``cfg.seed``, so building a
    member never disturbs the caller's RNG and the same spec always gives the
    same weights.  Its embedding tables are born on the ``meta`` device; with
    ``materialize`` (the default) they are then allocated whole on CPU and filled from
    their seeded ``TableInit``s.  ``materialize=False`` leaves them on meta, for
    ``recsys.distributed.shard_module`` to allocate and fill only each rank's shards.

    A ``preset`` in the spec is resolved against ``schema`` first
    (``recsys.models.preset.resolve_spec``); ``member.spec`` keeps the spec as given.

    Example::

        m = build_member("dcnv2:seed=3,cross_layers=4,mlp=512-256", schema, name="m0")
        m = build_member("rankmixer:preset=tts4ctr", schema)   # the official RankMixer for schema
    """
    model, cfg = parse_spec(resolve_spec(spec, schema), {k: v.config for k, v in MODELS.items()})
    name = name or model
    if not name.isidentifier():
        raise SpecError(f"member name {name!r} must be a Python identifier")
    if cfg.embedding_init not in EMBEDDING_INITS:
        raise SpecError(f"{model}: embedding_init must be one of {', '.join(EMBEDDING_INITS)}, "
                        f"got {cfg.embedding_init!r}")
    if not cfg.embedding_init_std > 0:
        raise SpecError(f"{model}: embedding_init_std must be > 0, got {cfg.embedding_init_std}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        member = MODELS[model].builder(cfg, schema, name)
    if materialize:
        materialize_embeddings(member)
    member.spec = spec
    return member
