"""Factorization machine's second-order term (DeepFM's FM component)."""
from __future__ import annotations

import torch


def fm_second_order(tokens: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} <e_i, e_j> in O(T*D) by the FM identity: [B, T, D] -> [B].

    Element-wise only, so 0 FLOPs under the matmul-only convention.

    Example::

        fm_second_order(torch.randn(2, 4, 8))   # [2]
    """
    square_of_sum = tokens.sum(dim=1).pow(2)  # [B, D]
    sum_of_squares = tokens.pow(2).sum(dim=1)  # [B, D]
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)  # [B]
