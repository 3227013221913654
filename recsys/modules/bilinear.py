"""FinalMLP's multi-head bilinear aggregation: two stream outputs fused into one logit."""
from __future__ import annotations

import torch
from torch import nn


class BilinearAggregation(nn.Module):
    """Fuses two stream outputs into a logit: [B, d1], [B, d2] -> [B].

    logit = w1·x1 + w2·x2 + b + sum_h x1_h^T W_h x2_h, with x1, x2 split into
    ``num_heads`` heads (so W_h is [d1/h, d2/h]: more heads, fewer parameters).
    ``stream_biases`` splits b into one bias per stream, b1 + b2, as the official code's two
    ``Linear(d, 1)`` terms: the same function with one more parameter (b2 starts at 0).

    Example::

        agg = BilinearAggregation(16, 16, num_heads=2)
        logit = agg(torch.randn(3, 16), torch.randn(3, 16))   # [3]
    """

    def __init__(self, dim1: int, dim2: int, num_heads: int = 1, stream_biases: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.linear = nn.Linear(dim1 + dim2, 1)
        self.bias2 = nn.Parameter(torch.zeros(1)) if stream_biases else None
        self.weight = nn.Parameter(torch.empty(num_heads, dim1 // num_heads, dim2 // num_heads))
        nn.init.xavier_normal_(self.weight)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        batch = x1.shape[0]
        logit = self.linear(torch.cat([x1, x2], dim=1)).squeeze(-1)  # [B]
        if self.bias2 is not None:
            logit = logit + self.bias2
        h1 = x1.view(batch, self.num_heads, -1)  # [B, H, d1/H]
        h2 = x2.view(batch, self.num_heads, -1)  # [B, H, d2/H]
        # bmm rather than einsum: einsum's weight gradient comes back with permuted
        # strides, which makes DDP copy it every step ("grad strides do not match").
        projected = torch.bmm(h1.transpose(0, 1), self.weight).transpose(0, 1)  # [B, H, d2/H]
        return logit + (projected * h2).sum(dim=(1, 2))  # [B]

    def flops_per_example(self) -> int:
        return 2 * self.linear.in_features + 2 * self.weight.numel()
