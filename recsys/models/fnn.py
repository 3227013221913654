"""FNN: concatenated field embeddings -> MLP -> logit.

Wiring: ``FlattenInteraction`` (tokens [B, T, D] -> [B, T*D]) -> ``OverArch(mlp)`` -> [B].
"""
from __future__ import annotations

from dataclasses import dataclass

from recsys.data.schema import Schema
from recsys.models.member import Member, compose_member
from recsys.models.spec import MemberConfig, check_layer_sizes
from recsys.modules.flatten import FlattenInteraction

__all__ = ["FNNConfig", "FlattenInteraction", "build_fnn"]


@dataclass
class FNNConfig(MemberConfig):
    mlp: tuple[int, ...] = (1024, 512, 256)

    def __post_init__(self) -> None:
        check_layer_sizes(mlp=self.mlp)


def build_fnn(cfg: FNNConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("fnn:mlp=256-128", schema, name="fnn0")
        logits = member(dense, kjt)   # [B]
    """
    return compose_member("fnn", cfg, schema, name, FlattenInteraction, head=cfg.mlp)
