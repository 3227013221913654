"""IPNN: field embeddings plus all pairwise inner products -> MLP -> logit."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.data.schema import Schema
from recsys.models.blocks import OverArch, member_arches, num_tokens
from recsys.models.member import Member
from recsys.models.spec import MemberConfig


@dataclass
class IPNNConfig(MemberConfig):
    mlp: tuple[int, ...] = (1024, 512, 256)

    def __post_init__(self) -> None:
        if any(h <= 0 for h in self.mlp):
            raise ValueError(f"mlp sizes must be positive, got {self.mlp}")


class InnerProductInteraction(nn.Module):
    """Tokens [B, T, D] -> [B, T*D + T*(T-1)/2]: the flat tokens and every <e_i, e_j>, i < j.

    The reference gathers token pairs and multiplies element-wise; one batched
    Gram matrix (``bmm``) computes the same products with a single matmul, at
    2*T*T*D FLOPs per example, of which the upper triangle is kept.

    Example::

        inter = InnerProductInteraction(num_tokens=4, dim=8)
        h = inter(torch.randn(2, 4, 8))   # [2, 4*8 + 6]
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.dim = dim
        rows, cols = torch.triu_indices(num_tokens, num_tokens, offset=1)
        # Flat indices into the [T, T] Gram matrix; a buffer so it follows .to(device).
        self.register_buffer("pair_index", rows * num_tokens + cols, persistent=False)
        self.output_dim = num_tokens * dim + rows.numel()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(tokens, tokens.transpose(1, 2))  # [B, T, T]
        pairs = gram.flatten(1)[:, self.pair_index]  # [B, T*(T-1)/2]
        return torch.cat([tokens.flatten(1), pairs], dim=1)  # [B, T*D + T*(T-1)/2]

    def flops_per_example(self) -> int:
        return 2 * self.num_tokens * self.num_tokens * self.dim


def build_ipnn(cfg: IPNNConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("ipnn:mlp=256-128", schema, name="ipnn0")
        logits = member(dense, kjt)   # [B]
    """
    sparse_arch, dense_arch = member_arches(name, schema, cfg)
    interaction = InnerProductInteraction(num_tokens(schema), cfg.embedding_dim)
    return Member(
        name=name,
        spec="ipnn",
        sparse_arch=sparse_arch,
        dense_arch=dense_arch,
        interaction=interaction,
        over_arch=OverArch(interaction.output_dim, cfg.mlp, cfg.dropout),
    )
