"""FinalMLP: two gated MLP streams fused by multi-head bilinear aggregation into a logit."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.data.schema import Schema
from recsys.models.blocks import MLP, member_arches, num_tokens
from recsys.models.member import Member
from recsys.models.spec import MemberConfig


@dataclass
class FinalMLPConfig(MemberConfig):
    """``mlp`` is stream 1 and, unless ``mlp2`` is given, stream 2 as well.

    ``gating`` turns on FinalMLP's stream-specific feature gating; ``gate_hidden``
    is the gate MLP's hidden width (0: a single linear layer).  ``num_heads``
    splits both stream outputs into heads for the bilinear aggregation (the
    reference uses 1); it must divide both streams' last widths.
    """

    mlp: tuple[int, ...] = (1024, 512, 256)
    mlp2: tuple[int, ...] = ()
    num_heads: int = 1
    gating: bool = True
    gate_hidden: int = 64

    def __post_init__(self) -> None:
        for key, dims in (("mlp", self.mlp), ("mlp2", self.mlp2)):
            if any(h <= 0 for h in dims):
                raise ValueError(f"{key} sizes must be positive, got {dims}")
        if not self.mlp:
            raise ValueError("mlp must not be empty (it sets the streams' output widths)")
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")
        if self.gate_hidden < 0:
            raise ValueError(f"gate_hidden must be >= 0, got {self.gate_hidden}")
        for key, dims in (("mlp", self.mlp), ("mlp2", self.stream2)):
            if dims[-1] % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide {key}'s last width {dims[-1]}")

    @property
    def stream2(self) -> tuple[int, ...]:
        return self.mlp2 or self.mlp


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


class BilinearAggregation(nn.Module):
    """Fuses two stream outputs into a logit: [B, d1], [B, d2] -> [B].

    logit = w1·x1 + w2·x2 + b + sum_h x1_h^T W_h x2_h, with x1, x2 split into
    ``num_heads`` heads (so W_h is [d1/h, d2/h]: more heads, fewer parameters).

    Example::

        agg = BilinearAggregation(16, 16, num_heads=2)
        logit = agg(torch.randn(3, 16), torch.randn(3, 16))   # [3]
    """

    def __init__(self, dim1: int, dim2: int, num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.linear = nn.Linear(dim1 + dim2, 1)
        self.weight = nn.Parameter(torch.empty(num_heads, dim1 // num_heads, dim2 // num_heads))
        nn.init.xavier_normal_(self.weight)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        batch = x1.shape[0]
        logit = self.linear(torch.cat([x1, x2], dim=1)).squeeze(-1)  # [B]
        h1 = x1.view(batch, self.num_heads, -1)  # [B, H, d1/H]
        h2 = x2.view(batch, self.num_heads, -1)  # [B, H, d2/H]
        # bmm rather than einsum: einsum's weight gradient comes back with permuted
        # strides, which makes DDP copy it every step ("grad strides do not match").
        projected = torch.bmm(h1.transpose(0, 1), self.weight).transpose(0, 1)  # [B, H, d2/H]
        return logit + (projected * h2).sum(dim=(1, 2))  # [B]

    def flops_per_example(self) -> int:
        return 2 * self.linear.in_features + 2 * self.weight.numel()


class FinalMLPInteraction(nn.Module):
    """Tokens [B, T, D] -> logit [B]: two (gated) MLP streams -> bilinear aggregation.

    Example::

        inter = FinalMLPInteraction(4, 8, mlp1=(32, 16), mlp2=(32, 16), num_heads=2)
        logit = inter(torch.randn(2, 4, 8))   # [2]
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        mlp1: tuple[int, ...],
        mlp2: tuple[int, ...],
        num_heads: int = 1,
        gating: bool = True,
        gate_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.gate1 = FeatureGate(num_tokens, dim, gate_hidden) if gating else None
        self.gate2 = FeatureGate(num_tokens, dim, gate_hidden) if gating else None
        self.stream1 = MLP(num_tokens * dim, mlp1, dropout)
        self.stream2 = MLP(num_tokens * dim, mlp2, dropout)
        self.aggregate = BilinearAggregation(self.stream1.out_features, self.stream2.out_features, num_heads)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x1 = self.gate1(tokens) if self.gate1 is not None else tokens.flatten(1)  # [B, T*D]
        x2 = self.gate2(tokens) if self.gate2 is not None else tokens.flatten(1)  # [B, T*D]
        return self.aggregate(self.stream1(x1), self.stream2(x2))  # [B]

    def flops_per_example(self) -> int:
        gates = [g.flops_per_example() for g in (self.gate1, self.gate2) if g is not None]
        streams = self.stream1.flops_per_example() + self.stream2.flops_per_example()
        return sum(gates) + streams + self.aggregate.flops_per_example()


def build_finalmlp(cfg: FinalMLPConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("finalmlp:mlp=512-256,num_heads=4", schema, name="fmlp0")
        logits = member(dense, kjt)   # [B]
    """
    sparse_arch, dense_arch = member_arches(name, schema, cfg)
    return Member(
        name=name,
        spec="finalmlp",
        sparse_arch=sparse_arch,
        dense_arch=dense_arch,
        interaction=FinalMLPInteraction(
            num_tokens(schema),
            cfg.embedding_dim,
            cfg.mlp,
            cfg.stream2,
            cfg.num_heads,
            cfg.gating,
            cfg.gate_hidden,
            cfg.dropout,
        ),
        over_arch=None,
    )
