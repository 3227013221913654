"""Multi-Embed (arXiv 2310.04400): M embedding sets, one interaction module per set.

The paper's cure for embedding collapse: instead of one wider embedding, learn M
independent embedding sets; set k feeds its own interaction module I_k, and the
M interaction outputs are averaged before a shared MLP tail::

    h = (1/M) * sum_k I_k(e^(k)_1, ..., e^(k)_T)    -> MLP -> logit

The interaction we use is DCNv2's matrix cross network
(``torchrec.modules.crossnet.CrossNet``, ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``
on the flattened [T*D] tokens), i.e. the paper's "multi-embedding DCNv2" in its
stacked form.  The paper stresses that the per-set interaction must be non-linear
in the embeddings, or averaging would collapse the sets into one; the cross
network is polynomial in them.

All M sets live in the member's ONE EBC (tables ``<member>__e{k}__<field>``), so
DMP shards them like any member's tables.  Several tables reading one KJT feature
is supported by EBC: its pooled outputs are then keyed ``<field>@<table>``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.schema import Schema
from recsys.models.embedding_init import make_ebc
from recsys.models.member import Member, MemberT, assemble_member, num_tokens
from recsys.models.protocols import Interaction, total_flops
from recsys.models.spec import MemberConfig, check_layer_sizes
from recsys.modules.arches import DenseArch, MultiSetSparseArch
from recsys.modules.cross import CrossFeatures

__all__ = [
    "CrossFeatures", "MultiEmbedConfig", "MultiEmbedInteraction", "MultiSetMember", "MultiSetSparseArch",
    "build_multi_set_member", "build_multiembed",
]


@dataclass
class MultiEmbedConfig(MemberConfig):
    """``num_embeddings_sets`` M is the embedding-scaling knob (M times the embedding parameters)."""

    num_embeddings_sets: int = 2
    cross_layers: int = 3
    mlp: tuple[int, ...] = (1024, 512, 256)

    def __post_init__(self) -> None:
        if self.num_embeddings_sets < 1:
            raise ValueError(f"num_embeddings_sets must be >= 1, got {self.num_embeddings_sets}")
        if self.cross_layers < 0:
            raise ValueError(f"cross_layers must be >= 0, got {self.cross_layers}")
        check_layer_sizes(mlp=self.mlp)


class MultiSetMember(Member):
    """A member with M embedding sets in one EBC: ``tokens`` returns [B, M, T, D].

    The dense arch, if any, projects the dense features to M*D, i.e. one dense
    token per set.  The interaction maps [B, M, T, D] to [B, H] as usual.

    Example::

        member = build_member("multiembed:num_embeddings_sets=3", schema, name="me0")
        member.tokens(dense, kjt)   # [B, 3, T, D]
        member(dense, kjt)          # [B]
    """

    def tokens(self, dense: torch.Tensor, features: KeyedJaggedTensor) -> torch.Tensor:
        emb = self.sparse_arch(features)  # [B, M, F, D]
        if self.dense_arch is not None:
            B, M, _, D = emb.shape
            dense_tok = self.dense_arch(dense).view(B, M, 1, D)  # [B, 1, M*D] -> [B, M, 1, D]
            emb = torch.cat([emb, dense_tok], dim=2)  # [B, M, F+1, D]
        return emb


def build_multi_set_member(
    member_cls: type[MemberT],
    model: str,
    cfg: MemberConfig,
    schema: Schema,
    name: str,
    num_sets: int,
    interaction: Interaction,
    mlp: tuple[int, ...],
) -> MemberT:
    """Assembles a multi-set member: M tables per field in one EBC, one dense token
    per set, ``interaction`` ([B, M, T, D] -> [B, H]) and an MLP head on H.

    Example::

        interaction = MultiEmbedInteraction(3, num_tokens(schema), 16, cross_layers=2)
        member = build_multi_set_member(MultiSetMember, "multiembed", cfg, schema, "me0", 3, interaction, (256,))
    """
    ebc = make_ebc(name, schema, cfg.embedding_dim, num_sets=num_sets, init=cfg.embedding_init,
                   init_std=cfg.embedding_init_std, seed=cfg.seed, model_dim=cfg.width)
    sparse_arch = MultiSetSparseArch(ebc, num_sets, cfg.width)  # [B, M, F, cfg.width]
    dense_arch = DenseArch(schema.num_dense, num_sets * cfg.width) if schema.num_dense else None
    return assemble_member(member_cls, model, cfg, name, sparse_arch, dense_arch, interaction, mlp)


class MultiEmbedInteraction(nn.Module):
    """One cross network per embedding set, outputs averaged: [B, M, T, D] -> [B, T*D].

    Example::

        inter = MultiEmbedInteraction(num_sets=2, num_tokens=6, dim=16, cross_layers=3)
        h = inter(torch.randn(8, 2, 6, 16))   # [8, 96]
    """

    def __init__(self, num_sets: int, num_tokens: int, dim: int, cross_layers: int) -> None:
        super().__init__()
        self.output_dim = num_tokens * dim
        self.crosses = nn.ModuleList(CrossFeatures(num_tokens, dim, cross_layers) for _ in range(num_sets))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        outs = [cross(tokens[:, k]) for k, cross in enumerate(self.crosses)]  # M x [B, T*D]
        return torch.stack(outs, dim=0).mean(dim=0)  # [B, T*D]

    def flops_per_example(self) -> int:
        return total_flops(self.crosses)


def build_multiembed(cfg: MultiEmbedConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("multiembed:num_embeddings_sets=4,mlp=256-128", schema, name="me0")
        logits = member(dense, kjt)   # [B]
    """
    M = cfg.num_embeddings_sets
    interaction = MultiEmbedInteraction(M, num_tokens(schema), cfg.width, cfg.cross_layers)
    return build_multi_set_member(MultiSetMember, "multiembed", cfg, schema, name, M, interaction, cfg.mlp)
