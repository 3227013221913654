"""The member contract: one CTR model with its own EBC, returning logits [B], and the
two helpers every builder composes a member with.

A member is composed as TorchRec composes DLRM (``torchrec/models/dlrm.py``; the arches
are in ``recsys.modules.arches``)::

    SparseArch (the member's own EBC)  -> [B, F, D]
    DenseArch  (optional)              -> [B, 1, D]   appended as one more token
    Interaction (model-specific)       -> [B, H]      the only part a model file defines
    OverArch   (MLP -> logit)          -> [B]

``compose_member`` builds the parts in that order under the caller's (seeded) RNG,
so a model file is its config, its interaction and a one-call builder.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.schema import Schema
from recsys.models.embedding_init import make_ebc
from recsys.models.protocols import FlopCounted, Interaction
from recsys.models.spec import MemberConfig
from recsys.modules.arches import DenseArch, OverArch, SparseArch

MemberT = TypeVar("MemberT", bound="Member")


class Member(nn.Module):
    """One ensemble member: SparseArch -> (+ DenseArch token) -> interaction -> head.

    ``interaction`` maps tokens [B, T, D] to [B, H].  ``over_arch`` maps [B, H] to
    logits [B]; models whose head is part of the interaction (DeepFM, FinalMLP)
    return [B, 1] or [B] from the interaction and pass ``over_arch=None``.

    Every part with dense parameters is ``FlopCounted`` (see ``recsys.modules``
    for the convention), and so is the member.

    Example::

        member = build_member("dcnv2:seed=3", schema, name="m0")
        logits = member(dense, kjt)   # [B]
    """

    # Submodules (registered by nn.Module.__setattr__), declared for the type checker.
    sparse_arch: SparseArch
    dense_arch: DenseArch | None
    interaction: Interaction
    over_arch: OverArch | None

    def __init__(
        self,
        name: str,
        spec: str,
        sparse_arch: SparseArch,
        interaction: Interaction,
        over_arch: OverArch | None,
        dense_arch: DenseArch | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.spec = spec
        self.sparse_arch = sparse_arch
        self.dense_arch = dense_arch
        self.interaction = interaction
        self.over_arch = over_arch

    def tokens(self, dense: torch.Tensor, features: KeyedJaggedTensor) -> torch.Tensor:
        emb = self.sparse_arch(features)  # [B, F, D]
        if self.dense_arch is not None:
            emb = torch.cat([emb, self.dense_arch(dense)], dim=1)  # [B, F+1, D]
        return emb

    def forward(self, dense: torch.Tensor, features: KeyedJaggedTensor) -> torch.Tensor:
        h = self.interaction(self.tokens(dense, features))  # [B, H]
        if self.over_arch is not None:
            return self.over_arch(h)  # [B]
        return h.reshape(h.shape[0])  # [B]

    def auxiliary_loss(self) -> torch.Tensor | None:
        """An extra loss term from the last forward (D-MoE's de-correlation), or None.

        The group loss adds it to the BCE of the group's mean logit.
        """
        return None

    def flops_per_example(self) -> int:
        parts: list[FlopCounted | None] = [self.dense_arch, self.interaction, self.over_arch]
        return sum(p.flops_per_example() for p in parts if p is not None)


def num_tokens(schema: Schema) -> int:
    """Tokens the interaction sees: one per sparse field, plus one dense token if any.

    Example::

        num_tokens(Schema("toy", sparse_features, ("I1", "I2")))   # len(sparse_features) + 1
    """
    return schema.num_sparse + (1 if schema.num_dense else 0)


def member_arches(
    name: str, schema: Schema, cfg: MemberConfig
) -> tuple[SparseArch, DenseArch | None]:
    """The parts every builder shares: the member's own EBC and, if the schema has
    dense features, the DenseArch that turns them into one more token.  Tables are stored at
    ``cfg.embedding_dim`` columns; both arches give tokens of ``cfg.width`` (``model_dim``).

    Example::

        sparse_arch, dense_arch = member_arches("m0", schema, MemberConfig(embedding_dim=16))
        member = Member("m0", "ipnn", sparse_arch, interaction, over_arch, dense_arch)
    """
    ebc = make_ebc(name, schema, cfg.embedding_dim, init=cfg.embedding_init, init_std=cfg.embedding_init_std,
                   seed=cfg.seed, model_dim=cfg.width)
    sparse_arch = SparseArch(ebc, schema.sparse_names, cfg.width)  # [B, F, cfg.width]
    dense_arch = DenseArch(schema.num_dense, cfg.width) if schema.num_dense else None
    return sparse_arch, dense_arch


def assemble_member(
    member_cls: type[MemberT],
    model: str,
    cfg: MemberConfig,
    name: str,
    sparse_arch: SparseArch,
    dense_arch: DenseArch | None,
    interaction: Interaction,
    head: Sequence[int] | None,
    head_bias: bool = True,
) -> MemberT:
    """The member from its built arches and interaction, plus an ``OverArch`` with MLP
    ``head`` on the interaction's ``output_dim`` (``head=()``: one linear layer; ``None``:
    no over arch, the interaction returns the logit; ``head_bias=False``: its last linear has
    no bias, as the official DCN's).  The over arch is built last, so
    the seeded RNG draws its weights after the other parts'.

    Example::

        sparse_arch, dense_arch = member_arches("m0", schema, cfg)
        member = assemble_member(Member, "ipnn", cfg, "m0", sparse_arch, dense_arch,
                                 InnerProductInteraction(6, 16), head=(256, 128))
    """
    over_arch = None if head is None else OverArch(interaction.output_dim, head, cfg.dropout, head_bias)
    return member_cls(
        name=name,
        spec=model,
        sparse_arch=sparse_arch,
        dense_arch=dense_arch,
        interaction=interaction,
        over_arch=over_arch,
    )


def compose_member(
    model: str,
    cfg: MemberConfig,
    schema: Schema,
    name: str,
    make_interaction: Callable[[int, int], Interaction],
    head: Sequence[int] | None,
    head_bias: bool = True,
) -> Member:
    """A one-embedding-set member: ``member_arches``, then ``make_interaction(T, D)`` on the
    T tokens of width D = ``cfg.width`` (``model_dim``, else ``embedding_dim``), then the over
    arch (see ``assemble_member``).

    Example::

        member = compose_member("ipnn", cfg, schema, "m0", InnerProductInteraction, head=cfg.mlp)
        logits = member(dense, kjt)   # [B]
    """
    sparse_arch, dense_arch = member_arches(name, schema, cfg)
    interaction = make_interaction(num_tokens(schema), cfg.width)
    return assemble_member(Member, model, cfg, name, sparse_arch, dense_arch, interaction, head, head_bias)
