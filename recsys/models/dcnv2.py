"""DCN-v2: a matrix cross network (TorchRec's CrossNet / LowRankCrossNet) in parallel
with an MLP, outputs concatenated -> linear.

Wiring: as DCN (``recsys.models.dcn.build_cross_member``) with a matrix cross net.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet

from recsys.data.schema import Schema
from recsys.models.dcn import DCNConfig, build_cross_member
from recsys.models.member import Member
from recsys.modules.cross import matrix_cross_flops

__all__ = ["DCNv2Config", "build_dcnv2", "matrix_cross_flops"]


@dataclass
class DCNv2Config(DCNConfig):
    """``low_rank=0`` is the full-rank cross ``x0 * (W x + b) + x`` of the reference;
    ``low_rank=r`` factors W = U V with rank r (TorchRec's LowRankCrossNet)."""

    low_rank: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low_rank < 0:
            raise ValueError(f"low_rank must be >= 0 (0 = full rank), got {self.low_rank}")


def build_dcnv2(cfg: DCNv2Config, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("dcnv2:mlp=2048-1024-512,cross_layers=6", schema, name="dcnv2_0")
        logits = member(dense, kjt)   # [B]
    """

    def make_cross(n: int) -> tuple[nn.Module, int]:
        cross: nn.Module
        if cfg.low_rank == 0:
            cross = CrossNet(in_features=n, num_layers=cfg.cross_layers)
        else:
            cross = LowRankCrossNet(in_features=n, num_layers=cfg.cross_layers, low_rank=cfg.low_rank)
        return cross, matrix_cross_flops(n, cfg.cross_layers, cfg.low_rank)

    return build_cross_member(cfg, schema, name, "dcnv2", make_cross)
