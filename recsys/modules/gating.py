"""FinalMLP's stream-specific feature gating."""
from __future__ import annotations

import torch
from torch import nn

from recsys.modules.mlp import MLP


class FeatureGate(nn.Module):
    """Per-stream feature selection: flat tokens [B, T*D] scaled by 2*sigmoid(g(ctx)).

    FinalMLP conditions each gate on chosen "context" fields and falls back to a
    learned constant when none are given, which makes the gate input-independent
    (a per-feature scale the next linear layer could absorb).  No field is
    privileged in a generic schema, so the context here is the mean token [B, D]:
    input-dependent and cheap.  The factor 2 keeps the gate's centre at 1.

    Example::

        gate = FeatureGate(num_tokens=4, dim=8, hidden=16)
        x = gate(torch.randn(2, 4, 8))   # [2, 32]
    """

    def __init__(self, num_tokens: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = MLP(dim, (hidden,) if hidden else ())
        self.out = nn.Linear(self.hidden.out_features, num_tokens * dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        context = tokens.mean(dim=1)  # [B, D]
        gate = 2.0 * torch.sigmoid(self.out(self.hidden(context)))  # [B, T*D]
        return tokens.flatten(1) * gate  # [B, T*D]

    def flops_per_example(self) -> int:
        return self.hidden.flops_per_example() + 2 * self.out.in_features * self.out.out_features
