"""IPNN: field embeddings plus all pairwise inner products -> MLP -> logit.

Wiring: ``InnerProductInteraction`` (tokens [B, T, D] -> [B, T*D + T*(T-1)/2]) ->
``OverArch(mlp)`` -> [B].
"""
from __future__ import annotations

from dataclasses import dataclass

from recsys.data.schema import Schema
from recsys.models.member import Member, compose_member
from recsys.models.spec import MemberConfig, check_layer_sizes
from recsys.modules.inner_product import InnerProductInteraction

__all__ = ["IPNNConfig", "InnerProductInteraction", "build_ipnn"]


@dataclass
class IPNNConfig(MemberConfig):
    mlp: tuple[int, ...] = (1024, 512, 256)

    def __post_init__(self) -> None:
        check_layer_sizes(mlp=self.mlp)


def build_ipnn(cfg: IPNNConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("ipnn:mlp=256-128", schema, name="ipnn0")
        logits = member(dense, kjt)   # [B]
    """
    return compose_member("ipnn", cfg, schema, name, InnerProductInteraction, head=cfg.mlp)
