"""FinalMLP: two gated MLP streams fused by multi-head bilinear aggregation into a logit.

Wiring: ``FinalMLPInteraction`` (tokens [B, T, D] -> two ``FeatureGate`` + ``MLP``
streams -> ``BilinearAggregation`` -> logit [B]); no over arch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.data.schema import Schema
from recsys.models.member import Member, compose_member
from recsys.models.spec import MemberConfig, check_layer_sizes
from recsys.modules.bilinear import BilinearAggregation
from recsys.modules.gating import FeatureGate
from recsys.modules.mlp import MLP

__all__ = ["BilinearAggregation", "FeatureGate", "FinalMLPConfig", "FinalMLPInteraction", "build_finalmlp"]


@dataclass
class FinalMLPConfig(MemberConfig):
    """``mlp`` is stream 1 and, unless ``mlp2`` is given, stream 2 as well.

    ``gating`` turns on FinalMLP's stream-specific feature gating; ``gate_hidden``
    is the gate MLP's hidden width (0: a single linear layer).  ``num_heads``
    splits both stream outputs into heads for the bilinear aggregation (the
    reference uses 1); it must divide both streams' last widths.

    ``gating`` is on by default: gating is what the FinalMLP paper adds to two plain MLPs,
    and it costs little.  The official TTS4CTR FinalMLP has no gating (the tts4ctr preset
    turns it off).  ``stream_biases``: the official aggregation has one linear term per
    stream, each with its own bias (two biases that add up to one constant); ours has one
    linear over both streams and one bias.  Same model, one parameter apart; the preset
    sets it for exact parity of parameter counts.
    """

    mlp: tuple[int, ...] = (1024, 512, 256)
    mlp2: tuple[int, ...] = ()
    num_heads: int = 1
    gating: bool = True
    gate_hidden: int = 64
    stream_biases: bool = False

    def __post_init__(self) -> None:
        check_layer_sizes(mlp=self.mlp, mlp2=self.mlp2)
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


class FinalMLPInteraction(nn.Module):
    """Tokens [B, T, D] -> logit [B]: two (gated) MLP streams -> bilinear aggregation.

    Example::

        inter = FinalMLPInteraction(4, 8, mlp1=(32, 16), mlp2=(32, 16), num_heads=2)
        logit = inter(torch.randn(2, 4, 8))   # [2]
    """

    output_dim = 1  # the logit: the member has no over arch

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
        stream_biases: bool = False,
    ) -> None:
        super().__init__()
        self.gate1 = FeatureGate(num_tokens, dim, gate_hidden) if gating else None
        self.gate2 = FeatureGate(num_tokens, dim, gate_hidden) if gating else None
        self.stream1 = MLP(num_tokens * dim, mlp1, dropout)
        self.stream2 = MLP(num_tokens * dim, mlp2, dropout)
        self.aggregate = BilinearAggregation(
            self.stream1.out_features, self.stream2.out_features, num_heads, stream_biases
        )

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
    return compose_member(
        "finalmlp", cfg, schema, name,
        lambda t, d: FinalMLPInteraction(
            t, d, cfg.mlp, cfg.stream2, cfg.num_heads, cfg.gating, cfg.gate_hidden, cfg.dropout,
            cfg.stream_biases,
        ),
        head=None,
    )
