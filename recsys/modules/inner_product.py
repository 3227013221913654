"""IPNN's product layer: the flat tokens and all their pairwise inner products."""
from __future__ import annotations

import torch
from torch import nn


class InnerProductInteraction(nn.Module):
    """Tokens [B, T, D] -> [B, T*D + T*(T-1)/2]: the flat tokens and every <e_i, e_j>, i < j.

    The reference gathers token pairs and multiplies element-wise; one batched
    Gram matrix (``bmm``) computes the same products with a single matmul, at
    2*T*T*D FLOPs per example, of which the upper triangle is kept.

    Example::

        inter = InnerProductInteraction(num_tokens=4, dim=8)
        h = inter(torch.randn(2, 4, 8))   # [2, 4*8 + 6]
    """

    pair_index: torch.Tensor  # a buffer, registered in __init__

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
