"""Wukong (arXiv 2403.02545): stacked factorization-machine + linear-compress layers.

Wiring: ``layers`` x ``WukongLayer`` (``recsys.modules.wukong_layers``, where the
layer's maths is written down), each mapping its input tokens to ``fmb_tokens +
lcb_tokens`` tokens of width D, flattened -> ``OverArch(mlp)`` -> [B].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.data.schema import Schema
from recsys.models.member import Member, compose_member
from recsys.models.protocols import total_flops
from recsys.models.spec import MemberConfig, check_layer_sizes
from recsys.modules.wukong_layers import WukongLayer

__all__ = ["WukongConfig", "WukongInteraction", "WukongLayer", "build_wukong"]


@dataclass
class WukongConfig(MemberConfig):
    """Reference defaults; ``layers`` is the depth knob, the token counts, rank and MLPs the width knobs."""

    layers: int = 3
    lcb_tokens: int = 16
    fmb_tokens: int = 16
    fmb_rank: int = 24
    fmb_mlp: tuple[int, ...] = (512, 512)
    mlp: tuple[int, ...] = (1024, 512, 256)

    def __post_init__(self) -> None:
        for key in ("layers", "lcb_tokens", "fmb_tokens", "fmb_rank"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        check_layer_sizes(fmb_mlp=self.fmb_mlp, mlp=self.mlp)


class WukongInteraction(nn.Module):
    """Stacked Wukong layers, flattened: [B, T, D] -> [B, (k_fmb + k_lcb) * D].

    Example::

        inter = WukongInteraction(num_tokens=6, dim=16, cfg=WukongConfig(layers=2))
        h = inter(torch.randn(8, 6, 16))   # [8, 32 * 16]
    """

    def __init__(self, num_tokens: int, dim: int, cfg: WukongConfig) -> None:
        super().__init__()
        layers: list[WukongLayer] = []
        n = num_tokens
        for _ in range(cfg.layers):
            layers.append(WukongLayer(n, dim, cfg.lcb_tokens, cfg.fmb_tokens, cfg.fmb_rank, cfg.fmb_mlp, cfg.dropout))
            n = layers[-1].out_tokens
        self.layers = nn.Sequential(*layers)
        self.output_dim = n * dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens).flatten(1)  # [B, (k_fmb + k_lcb) * D]

    def flops_per_example(self) -> int:
        return total_flops(self.layers)


def build_wukong(cfg: WukongConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("wukong:layers=2,fmb_rank=8,mlp=256-128", schema, name="wk0")
        logits = member(dense, kjt)   # [B]
    """
    return compose_member(
        "wukong", cfg, schema, name, lambda t, d: WukongInteraction(t, d, cfg), head=cfg.mlp
    )
