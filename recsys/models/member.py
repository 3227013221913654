"""The member contract: one CTR model with its own EBC, returning logits [B]."""
from __future__ import annotations

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.models.blocks import DenseArch, SparseArch


class Member(nn.Module):
    """One ensemble member: SparseArch -> (+ DenseArch token) -> interaction -> head.

    ``interaction`` maps tokens [B, T, D] to [B, H].  ``over_arch`` maps [B, H] to
    logits [B]; models whose head is part of the interaction (DeepFM, FinalMLP)
    return [B, 1] or [B] from the interaction and pass ``over_arch=None``.

    Every submodule with dense parameters implements ``flops_per_example()``
    (see ``recsys.models.blocks`` for the convention).

    Example::

        member = build_member("dcnv2:seed=3", schema, name="m0")
        logits = member(dense, kjt)   # [B]
    """

    def __init__(
        self,
        name: str,
        spec: str,
        sparse_arch: SparseArch,
        interaction: nn.Module,
        over_arch: nn.Module | None,
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
        total = 0
        for m in (self.dense_arch, self.interaction, self.over_arch):
            if m is not None:
                total += m.flops_per_example()  # type: ignore[operator]
        return total
