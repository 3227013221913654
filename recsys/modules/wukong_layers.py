"""The Wukong layer (arXiv 2403.02545): a factorization-machine block and a linear-compress block.

One layer maps n input tokens to ``lcb_tokens + fmb_tokens`` tokens of the same
width D, so depth and width scale independently of the number of fields::

    LCB(X) = W_lcb X                             [B, n, D] -> [B, k_lcb, D]
    FMB(X) = MLP(LN(flatten(X (X^T W_r))))       [B, n, D] -> [B, k_fmb, D]
             W_r [n, r]: the rank-r FM.  X X^T W_r is computed as X (X^T W_r), so
             the pairwise-dot matrix X X^T [n, n] is never formed.
    out    = LN(concat(FMB, LCB) + residual(X))  residual = W_res X when n changes

W_lcb, W_r and W_res all map along the token axis of the same X, so they run as
ONE bias-free ``Linear(n, k_lcb + r [+ k_out])`` on X^T (one matmul and one
transpose instead of three); each block's weights keep nn.Linear's init, so
this is the same model as three separate maps.

The layer order (FMB tokens first), the ReLU after every FMB MLP layer and the
bias-free token maps follow the reference code (aTitye/TTS4CTR).
"""
from __future__ import annotations

import torch
from torch import nn

from recsys.modules.mlp import MLP


class WukongLayer(nn.Module):
    """One Wukong layer: [B, n, D] -> [B, k_fmb + k_lcb, D].

    Example::

        layer = WukongLayer(39, dim=16, lcb_tokens=16, fmb_tokens=16, rank=24, fmb_mlp=(512, 512))
        y = layer(torch.randn(8, 39, 16))   # [8, 32, 16]
    """

    def __init__(
        self,
        in_tokens: int,
        dim: int,
        lcb_tokens: int,
        fmb_tokens: int,
        rank: int,
        fmb_mlp: tuple[int, ...],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_tokens, self.dim, self.rank = in_tokens, dim, rank
        self.fmb_tokens = fmb_tokens
        self.out_tokens = lcb_tokens + fmb_tokens
        residual_tokens = self.out_tokens if in_tokens != self.out_tokens else 0  # 0: identity residual
        self.split = [lcb_tokens, rank, residual_tokens]
        self.token_maps = nn.Linear(in_tokens, sum(self.split), bias=False)  # [W_lcb; W_r; W_res]^T
        self.fmb_norm = nn.LayerNorm(in_tokens * rank)
        self.fmb_mlp = MLP(in_tokens * rank, (*fmb_mlp, fmb_tokens * dim), dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.token_maps(x.transpose(1, 2))  # [B, D, n] -> [B, D, k_lcb + r + k_res]
        lcb, proj, res = maps.split(self.split, dim=2)
        fm = torch.bmm(x, proj)  # [B, n, D] @ [B, D, r] -> [B, n, r]
        fmb = self.fmb_mlp(self.fmb_norm(fm.flatten(1))).view(-1, self.fmb_tokens, self.dim)  # [B, k_fmb, D]
        out = torch.cat([fmb, lcb.transpose(1, 2)], dim=1)  # [B, k_fmb + k_lcb, D]
        residual = x if self.split[2] == 0 else res.transpose(1, 2)  # [B, k_fmb + k_lcb, D]
        return self.norm(out + residual)

    def flops_per_example(self) -> int:
        token_maps = 2 * self.in_tokens * sum(self.split) * self.dim
        fm = 2 * self.in_tokens * self.dim * self.rank
        return token_maps + fm + self.fmb_mlp.flops_per_example()
