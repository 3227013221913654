"""The DLRM-style arches every member is composed of (as ``torchrec/models/dlrm.py``)::

    SparseArch (the member's own EBC)  -> [B, F, D]     (MultiSetSparseArch: [B, M, F, D])
    DenseArch  (optional)              -> [B, 1, D]     appended as one more token
    InteractionArch (model-specific)   -> [B, H]        recsys.models.<architecture>
    OverArch   (MLP -> logit)          -> [B]

``recsys.models.member.Member`` wires them; the EBC itself is made (on the meta device,
with seeded per-table inits) by ``recsys.models.embedding_init.make_ebc``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, get_embedding_names_by_table
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.modules.mlp import MLP


class SparseArch(nn.Module):
    """Looks up the member's embeddings: KJT -> [B, F, D] in schema field order.

    ``dim`` (0: the stored width) keeps only the first ``dim`` columns of every table: FBGEMM
    stores tables at widths % 4 == 0, so a model that needs D = 39 (the official RankMixer
    on Criteo) stores 40 and sees 39.  The unseen column gets no gradient and never reaches
    the logit.

    Example::

        sparse = SparseArch(make_ebc("m0", schema, 16), schema.sparse_names)
        emb = sparse(kjt)   # [B, F, 16]
        SparseArch(make_ebc("m0", schema, 40), schema.sparse_names, dim=39)(kjt)   # [B, F, 39]
    """

    def __init__(
        self, embedding_bag_collection: EmbeddingBagCollection, fields: Sequence[str], dim: int = 0
    ) -> None:
        super().__init__()
        self.embedding_bag_collection = embedding_bag_collection
        self.fields = list(fields)
        stored = embedding_bag_collection.embedding_bag_configs()[0].embedding_dim
        if not 0 <= dim <= stored:
            raise ValueError(f"SparseArch: dim={dim} must be in [0, the stored width {stored}]")
        self.stored_dim = stored
        self.D: int = dim or stored

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.embedding_bag_collection(features)  # KeyedTensor
        values = pooled.to_dict()
        emb = torch.stack([values[f] for f in self.fields], dim=1)  # [B, F, stored]
        return emb if self.D == self.stored_dim else emb[..., : self.D]  # [B, F, D]


class MultiSetSparseArch(SparseArch):
    """Looks up M embedding sets from one EBC: KJT -> [B, M, F, D].

    The EBC holds M tables per field (``make_ebc(..., num_sets=M)``), set-major;
    their pooled outputs are keyed ``<field>@<table>`` because tables share features.
    Used by Multi-Embed and D-MoE.

    Example::

        sparse = MultiSetSparseArch(make_ebc("m0", schema, 16, num_sets=2), num_sets=2)
        emb = sparse(kjt)   # [B, 2, F, 16]
    """

    def __init__(self, embedding_bag_collection: EmbeddingBagCollection, num_sets: int, dim: int = 0) -> None:
        tables = embedding_bag_collection.embedding_bag_configs()
        names = [k for keys in get_embedding_names_by_table(tables) for k in keys]
        super().__init__(embedding_bag_collection, names, dim)
        self.num_sets = num_sets

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        emb = super().forward(features)  # [B, M*F, D]
        return emb.view(emb.shape[0], self.num_sets, -1, emb.shape[2])  # [B, M, F, D]


class DenseArch(nn.Module):
    """Projects the dense features to one extra D-dim token: [B, Dd] -> [B, 1, D].

    Example::

        dense_arch = DenseArch(in_features=13, embedding_dim=16)
        tok = dense_arch(torch.randn(8, 13))   # [8, 1, 16]
    """

    def __init__(self, in_features: int, embedding_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, embedding_dim)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.proj(dense).unsqueeze(1)

    def flops_per_example(self) -> int:
        return 2 * self.proj.in_features * self.proj.out_features


class OverArch(nn.Module):
    """MLP -> Linear(., 1): [B, H] -> [B] logits.  ``layer_sizes=()`` is one linear layer.

    ``bias=False`` drops the last linear's bias (the official DCN's ``combination`` has none).

    Example::

        head = OverArch(96, [64, 32])
        logits = head(torch.randn(8, 96))   # [8]
    """

    def __init__(
        self, in_features: int, layer_sizes: Sequence[int], dropout: float = 0.0, bias: bool = True
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_features, layer_sizes, dropout)
        self.out = nn.Linear(self.mlp.out_features, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(x)).squeeze(-1)

    def flops_per_example(self) -> int:
        return self.mlp.flops_per_example() + 2 * self.out.in_features
