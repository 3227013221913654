"""The identity interaction: the tokens, flattened (FNN, and D-MoE's plain MLP expert)."""
from __future__ import annotations

import torch
from torch import nn


class FlattenInteraction(nn.Module):
    """No explicit interaction: tokens [B, T, D] -> [B, T*D] (0 FLOPs).

    Example::

        inter = FlattenInteraction(num_tokens=4, dim=8)
        h = inter(torch.randn(2, 4, 8))   # [2, 32]
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.output_dim = num_tokens * dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.flatten(1)  # [B, T*D]

    def flops_per_example(self) -> int:
        return 0
