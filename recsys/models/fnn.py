"""FNN: concatenated field embeddings -> MLP -> logit."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.data.schema import Schema
from recsys.models.blocks import DenseArch, OverArch, SparseArch, make_ebc
from recsys.models.member import Member
from recsys.models.spec import MemberConfig


@dataclass
class FNNConfig(MemberConfig):
    mlp: tuple[int, ...] = (1024, 512, 256)


class FlattenInteraction(nn.Module):
    """FNN has no explicit interaction: tokens [B, T, D] -> [B, T*D]."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.output_dim = num_tokens * dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.flatten(1)  # [B, T*D]

    def flops_per_example(self) -> int:
        return 0


def build_fnn(cfg: FNNConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("fnn:mlp=256-128", schema, name="fnn0")
    """
    num_tokens = schema.num_sparse + (1 if schema.num_dense else 0)
    interaction = FlattenInteraction(num_tokens, cfg.embedding_dim)
    return Member(
        name=name,
        spec="fnn",
        sparse_arch=SparseArch(make_ebc(name, schema, cfg.embedding_dim, init=cfg.embedding_init,
                                           init_std=cfg.embedding_init_std, seed=cfg.seed), schema.sparse_names),
        dense_arch=DenseArch(schema.num_dense, cfg.embedding_dim) if schema.num_dense else None,
        interaction=interaction,
        over_arch=OverArch(interaction.output_dim, cfg.mlp, cfg.dropout),
    )
