"""DCN: a vector cross network in parallel with an MLP, outputs concatenated -> linear."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchrec.modules.crossnet import VectorCrossNet

from recsys.data.schema import Schema
from recsys.models.blocks import MLP, OverArch, member_arches, num_tokens
from recsys.models.member import Member
from recsys.models.spec import MemberConfig


@dataclass
class DCNConfig(MemberConfig):
    mlp: tuple[int, ...] = (1024, 512, 256)
    cross_layers: int = 3

    def __post_init__(self) -> None:
        if any(h <= 0 for h in self.mlp):
            raise ValueError(f"mlp sizes must be positive, got {self.mlp}")
        if self.cross_layers < 1:
            raise ValueError(f"cross_layers must be >= 1, got {self.cross_layers}")


class ParallelCrossInteraction(nn.Module):
    """Tokens [B, T, D] -> [B, T*D + mlp[-1]]: a cross net and an MLP side by side on
    the flat tokens, concatenated (DCN's and DCN-v2's "parallel" structure).

    The cross net is any module [B, N] -> [B, N]; TorchRec's cross nets carry no
    FLOP count, so the builder passes ``cross_flops`` (per example).

    Example::

        cross = VectorCrossNet(in_features=32, num_layers=3)
        inter = ParallelCrossInteraction(cross, 4 * 32 * 3, num_tokens=4, dim=8, mlp=[16])
        h = inter(torch.randn(2, 4, 8))   # [2, 32 + 16]
    """

    def __init__(
        self,
        cross: nn.Module,
        cross_flops: int,
        num_tokens: int,
        dim: int,
        mlp: tuple[int, ...],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.cross = cross
        self.cross_flops = cross_flops
        self.mlp = MLP(num_tokens * dim, mlp, dropout)
        self.output_dim = num_tokens * dim + self.mlp.out_features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        flat = tokens.flatten(1)  # [B, N], N = T*D
        return torch.cat([self.cross(flat), self.mlp(flat)], dim=1)  # [B, N + mlp[-1]]

    def flops_per_example(self) -> int:
        return self.cross_flops + self.mlp.flops_per_example()


def vector_cross_flops(in_features: int, num_layers: int) -> int:
    """VectorCrossNet per layer: x·w (a tensordot, 2N) and x0 @ (x·w) (a [N,1]x[1,1]
    bmm, 2N), so 4N per layer."""
    return 4 * in_features * num_layers


def build_cross_member(
    cfg: DCNConfig,
    schema: Schema,
    name: str,
    model: str,
    make_cross: Callable[[int], tuple[nn.Module, int]],
) -> Member:
    """A DCN-style member; ``make_cross(N)`` returns the cross net on N = T*D features
    and its FLOPs per example.  Shared by DCN and DCN-v2, which differ only there."""
    sparse_arch, dense_arch = member_arches(name, schema, cfg)
    cross, cross_flops = make_cross(num_tokens(schema) * cfg.embedding_dim)
    interaction = ParallelCrossInteraction(
        cross, cross_flops, num_tokens(schema), cfg.embedding_dim, cfg.mlp, cfg.dropout
    )
    return Member(
        name=name,
        spec=model,
        sparse_arch=sparse_arch,
        dense_arch=dense_arch,
        interaction=interaction,
        over_arch=OverArch(interaction.output_dim, (), cfg.dropout),  # one linear -> logit
    )


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
