"""Model registry: name -> (config dataclass, builder), and ``build_member``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from recsys.data.schema import Schema
from recsys.models.blocks import materialize_embeddings
from recsys.models.embedding_init import EMBEDDING_INITS
from recsys.models.dcn import DCNConfig, build_dcn
from recsys.models.dcnv2 import DCNv2Config, build_dcnv2
from recsys.models.deepfm import DeepFMConfig, build_deepfm
from recsys.models.dmoe import DMoEConfig, build_dmoe
from recsys.models.finalmlp import FinalMLPConfig, build_finalmlp
from recsys.models.fnn import FNNConfig, build_fnn
from recsys.models.ipnn import IPNNConfig, build_ipnn
from recsys.models.member import Member
from recsys.models.multiembed import MultiEmbedConfig, build_multiembed
from recsys.models.rankmixer import RankMixerConfig, build_rankmixer
from recsys.models.spec import MemberConfig, SpecError, parse_spec
from recsys.models.wukong import WukongConfig, build_wukong


@dataclass(frozen=True)
class ModelEntry:
    config: type[MemberConfig]
    builder: Callable[[MemberConfig, Schema, str], Member]


MODELS: dict[str, ModelEntry] = {
    "fnn": ModelEntry(FNNConfig, build_fnn),  # type: ignore[arg-type]
    # -- models A (ipnn, deepfm, dcn, dcnv2, finalmlp) --
    "ipnn": ModelEntry(IPNNConfig, build_ipnn),  # type: ignore[arg-type]
    "deepfm": ModelEntry(DeepFMConfig, build_deepfm),  # type: ignore[arg-type]
    "dcn": ModelEntry(DCNConfig, build_dcn),  # type: ignore[arg-type]
    "dcnv2": ModelEntry(DCNv2Config, build_dcnv2),  # type: ignore[arg-type]
    "finalmlp": ModelEntry(FinalMLPConfig, build_finalmlp),  # type: ignore[arg-type]
    # -- models B (wukong, rankmixer, multiembed, dmoe) --
    "wukong": ModelEntry(WukongConfig, build_wukong),  # type: ignore[arg-type]
    "rankmixer": ModelEntry(RankMixerConfig, build_rankmixer),  # type: ignore[arg-type]
    "multiembed": ModelEntry(MultiEmbedConfig, build_multiembed),  # type: ignore[arg-type]
    "dmoe": ModelEntry(DMoEConfig, build_dmoe),  # type: ignore[arg-type]
}


def build_member(spec: str, schema: Schema, name: str | None = None, materialize: bool = True) -> Member:
    """Builds a member from a spec string; the spec's seed fully determines the init.

    The build runs under a forked RNG seeded with ``cfg.seed``, so building a
    member never disturbs the caller's RNG and the same spec always gives the
    same weights.  Its embedding tables are born on the ``meta`` device; with
    ``materialize`` (the default) they are then allocated whole on CPU and filled from
    their seeded ``TableInit``s.  ``materialize=False`` leaves them on meta, for
    ``recsys.distributed.shard_module`` to allocate and fill only each rank's shards.

    Example::

        m = build_member("dcnv2:seed=3,cross_layers=4,mlp=512-256", schema, name="m0")
    """
    model, cfg = parse_spec(spec, {k: v.config for k, v in MODELS.items()})
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
