"""The multi-layer perceptron every model's streams and heads are made of."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Linear + ReLU stack.  ``MLP(in, [1024, 512, 256])`` -> output dim 256.

    Shapes: [B, in_features] -> [B, layer_sizes[-1]] (or [B, in_features] when
    ``layer_sizes`` is empty: then it is the identity, which lets a head be a
    single linear layer).  ReLU follows every layer, dropout (if > 0) every ReLU.

    Example::

        mlp = MLP(64, [32, 16])
        y = mlp(torch.randn(8, 64))   # [8, 16]
    """

    def __init__(
        self, in_features: int, layer_sizes: Sequence[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_features
        for h in layer_sizes:
            layers.append(nn.Linear(d, h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def flops_per_example(self) -> int:
        return sum(
            2 * m.in_features * m.out_features for m in self.layers if isinstance(m, nn.Linear)
        )
