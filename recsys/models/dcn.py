"""DCN: a vector cross network in parallel with an MLP, outputs concatenated -> linear.

Wiring: ``ParallelCrossInteraction(VectorCrossNet, MLP)`` (tokens [B, T, D] ->
[B, T*D + mlp[-1]]) -> one linear layer -> [B].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn
from torchrec.modules.crossnet import VectorCrossNet

from recsys.data.schema import Schema
from recsys.models.member import Member, compose_member
from recsys.models.spec import MemberConfig, check_layer_sizes
from recsys.modules.cross import ParallelCrossInteraction, vector_cross_flops

__all__ = ["DCNConfig", "ParallelCrossInteraction", "build_cross_member", "build_dcn", "vector_cross_flops"]


@dataclass
class DCNConfig(MemberConfig):
    """``head_bias``: whether the final linear on [cross, MLP] has a bias.  Ours has one (it
    is the logit's offset, which nothing else in the member supplies); the official
    ``combination`` layer has ``bias=False``, which the tts4ctr preset sets."""

    mlp: tuple[int, ...] = (1024, 512, 256)
    cross_layers: int = 3
    head_bias: bool = True

    def __post_init__(self) -> None:
        check_layer_sizes(mlp=self.mlp)
        if self.cross_layers < 1:
            raise ValueError(f"cross_layers must be >= 1, got {self.cross_layers}")


def build_cross_member(
    cfg: DCNConfig,
    schema: Schema,
    name: str,
    model: str,
    make_cross: Callable[[int], tuple[nn.Module, int]],
) -> Member:
    """A DCN-style member; ``make_cross(N)`` returns the cross net on N = T*D features
    and its FLOPs per example.  Shared by DCN and DCN-v2, which differ only there.

    Example::

        build_cross_member(cfg, schema, "m0", "dcn", lambda n: (VectorCrossNet(n, 3), vector_cross_flops(n, 3)))
    """

    def interaction(tokens: int, dim: int) -> ParallelCrossInteraction:
        cross, cross_flops = make_cross(tokens * dim)
        return ParallelCrossInteraction(cross, cross_flops, tokens, dim, cfg.mlp, cfg.dropout)

    return compose_member(model, cfg, schema, name, interaction, head=(), head_bias=cfg.head_bias)  # one linear


def build_dcn(cfg: DCNConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("dcn:mlp=256-128,cross_layers=4", schema, name="dcn0")
        logits = member(dense, kjt)   # [B]
    """

    def make_cross(n: int) -> tuple[nn.Module, int]:
        return VectorCrossNet(in_features=n, num_layers=cfg.cross_layers), vector_cross_flops(
            n, cfg.cross_layers
        )

    return build_cross_member(cfg, schema, name, "dcn", make_cross)
