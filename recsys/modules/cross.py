"""DCN / DCN-v2 cross networks on the flattened tokens, and their FLOP counts.

TorchRec's cross nets (``torchrec.modules.crossnet``: ``VectorCrossNet`` for DCN,
``CrossNet`` / ``LowRankCrossNet`` for DCN-v2) carry no FLOP count, so the counts
live here beside the wrappers that use them:

- ``ParallelCrossInteraction``: a cross net and an MLP side by side (DCN's and
  DCN-v2's "parallel" structure), [B, T, D] -> [B, T*D + mlp[-1]];
- ``CrossFeatures``: a DCN-v2 matrix cross net alone, [B, T, D] -> [B, T*D]
  (Multi-Embed's per-set interaction and D-MoE's cross expert).
"""
from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.crossnet import CrossNet

from recsys.modules.mlp import MLP


def vector_cross_flops(in_features: int, num_layers: int) -> int:
    """VectorCrossNet per layer: x·w (a tensordot, 2N) and x0 @ (x·w) (a [N,1]x[1,1]
    bmm, 2N), so 4N per layer.

    Example::

        vector_cross_flops(96, 3)   # 1152
    """
    return 4 * in_features * num_layers


def matrix_cross_flops(in_features: int, num_layers: int, low_rank: int = 0) -> int:
    """Per layer: W x is 2*N*N FLOPs at full rank, V x then U (V x) is 2*2*N*r at rank r.

    Example::

        matrix_cross_flops(96, 3), matrix_cross_flops(96, 3, low_rank=8)   # 55296, 9216
    """
    per_layer = 2 * in_features * in_features if low_rank == 0 else 4 * in_features * low_rank
    return per_layer * num_layers


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


class CrossFeatures(nn.Module):
    """DCNv2 cross network on the flattened tokens: [B, T, D] -> [B, T*D].

    Example::

        feats = CrossFeatures(num_tokens=6, dim=16, layers=3)
        h = feats(torch.randn(8, 6, 16))   # [8, 96]
    """

    def __init__(self, num_tokens: int, dim: int, layers: int) -> None:
        super().__init__()
        self.output_dim, self.layers = num_tokens * dim, layers
        self.cross = CrossNet(self.output_dim, layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.cross(tokens.flatten(1))  # [B, T*D]

    def flops_per_example(self) -> int:
        return matrix_cross_flops(self.output_dim, self.layers)
