"""Blocks shared by every member: the DLRM-style arches and an MLP.

A member is composed as TorchRec composes DLRM (``torchrec/models/dlrm.py``)::

    SparseArch (the member's own EBC)  -> [B, F, D]
    DenseArch  (optional)              -> [B, 1, D]   appended as one more token
    InteractionArch (model-specific)   -> [B, H]
    OverArch   (MLP -> logit)          -> [B]

FLOP accounting convention (used by ``recsys.budget`` and checked against
``torch.utils.flop_counter.FlopCounterMode`` in tests): count only the
matrix-multiply family (``mm``/``addmm``/``bmm``/``matmul``/``einsum``), 2 FLOPs per
multiply-add, per example.  Element-wise ops, activations and norms are not
counted, exactly as FlopCounterMode does not count them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.schema import Schema
from recsys.models.embedding_init import EMBEDDING_INITS, TableInit
from recsys.models.spec import MemberConfig


def table_name(member: str, field: str) -> str:
    """Table names are ``<member>__<field>``.

    DESIGN.md asks for ``<member>.<field>``, but EBC keeps tables in an
    ``nn.ModuleDict`` keyed by table name, which refuses dots.
    """
    return f"{member}__{field}"


class MLP(nn.Module):
    """Linear + ReLU stack.  ``MLP(in, [1024, 512, 256])`` -> output dim 256.

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


def make_ebc(
    member: str,
    schema: Schema,
    embedding_dim: int,
    num_sets: int | None = None,
    init: str = "xavier",  # as MemberConfig.embedding_init; "normal" draws N(0, init_std^2)
    init_std: float = 1e-4,
    seed: int = 0,
) -> EmbeddingBagCollection:
    """The member's own EBC, on the ``meta`` device: one table per field, named ``<member>__<field>``.

    No table memory is allocated here.  Each table's init is recorded in
    ``ebc.table_inits`` (name -> ``TableInit``, a pure function of seed, table, row and
    column); ``materialize_embeddings`` fills whole tables for one process, and
    ``recsys.distributed.shard_module`` fills only each rank's shards.

    With ``num_sets=M`` (Multi-Embed, D-MoE) it holds M independent tables per
    field, named ``<member>__e{k}__<field>``, set-major, all in this ONE EBC so DMP
    shards them like any other member's.  Several tables then read the same KJT
    feature; EBC supports that and names the pooled outputs ``<field>@<table>``
    (``torchrec.modules.embedding_modules.get_embedding_names_by_table``).

    Example::

        ebc = make_ebc("m0", schema, 16, seed=3)        # meta: nothing allocated
        materialize_embeddings(ebc)                     # [rows, 16] tables on CPU, seeded
    """
    if init not in EMBEDDING_INITS:
        raise ValueError(f"embedding_init must be one of {', '.join(EMBEDDING_INITS)}, got {init!r}")
    prefixes = [member] if num_sets is None else [f"{member}__e{k}" for k in range(num_sets)]
    tables = [
        EmbeddingBagConfig(
            name=table_name(prefix, f.name),
            embedding_dim=embedding_dim,
            num_embeddings=f.num_embeddings,
            feature_names=[f.name],
            pooling=PoolingType.SUM,
        )
        for prefix in prefixes
        for f in schema.sparse_features
    ]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    ebc.table_inits = {  # type: ignore[assignment]
        t.name: TableInit(t.name[len(member) + 2:], t.num_embeddings, t.embedding_dim, seed, init, init_std)
        for t in tables
    }
    return ebc


def table_inits(module: nn.Module) -> dict[str, TableInit]:
    """Every table's ``TableInit`` in every EBC made by ``make_ebc`` inside ``module``."""
    out: dict[str, TableInit] = {}
    for m in module.modules():
        if isinstance(m, EmbeddingBagCollection):
            out.update(getattr(m, "table_inits", {}))
    return out


def materialize_embeddings(module: nn.Module, device: torch.device | str = "cpu", fill: bool = True) -> None:
    """Allocates every meta-device EBC inside ``module`` on ``device``, whole, and fills each
    table from its ``TableInit`` (``fill=False`` leaves them uninitialized, for a checkpoint
    load that overwrites them anyway).  For one process holding whole members: tests,
    evaluation, serving.  Training shards instead (``recsys.distributed.shard_module``)."""
    for m in module.modules():
        if isinstance(m, EmbeddingBagCollection) and any(p.is_meta for p in m.parameters()):
            m.to_empty(device=device)
            if fill:
                inits = getattr(m, "table_inits", {})
                for name, bag in m.embedding_bags.items():
                    inits[name].fill(bag.weight.data, 0)


class SparseArch(nn.Module):
    """Looks up the member's embeddings: KJT -> [B, F, D] in schema field order.

    Example::

        sparse = SparseArch(make_ebc("m0", schema, 16), schema.sparse_names)
        emb = sparse(kjt)   # [B, F, 16]
    """

    def __init__(self, embedding_bag_collection: EmbeddingBagCollection, fields: Sequence[str]) -> None:
        super().__init__()
        self.embedding_bag_collection = embedding_bag_collection
        self.fields = list(fields)
        self.D: int = embedding_bag_collection.embedding_bag_configs()[0].embedding_dim

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.embedding_bag_collection(features)  # KeyedTensor
        values = pooled.to_dict()
        return torch.stack([values[f] for f in self.fields], dim=1)  # [B, F, D]


class DenseArch(nn.Module):
    """Projects the dense features to one extra D-dim token: [B, Dd] -> [B, 1, D]."""

    def __init__(self, in_features: int, embedding_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, embedding_dim)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.proj(dense).unsqueeze(1)

    def flops_per_example(self) -> int:
        return 2 * self.proj.in_features * self.proj.out_features


class OverArch(nn.Module):
    """MLP -> Linear(., 1): [B, H] -> [B] logits."""

    def __init__(self, in_features: int, layer_sizes: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = MLP(in_features, layer_sizes, dropout)
        self.out = nn.Linear(self.mlp.out_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(x)).squeeze(-1)

    def flops_per_example(self) -> int:
        return self.mlp.flops_per_example() + 2 * self.out.in_features


def num_tokens(schema: Schema) -> int:
    """Tokens the interaction sees: one per sparse field, plus one dense token if any."""
    return schema.num_sparse + (1 if schema.num_dense else 0)


def member_arches(
    name: str, schema: Schema, cfg: MemberConfig
) -> tuple[SparseArch, DenseArch | None]:
    """The parts every builder shares: the member's own EBC and, if the schema has
    dense features, the DenseArch that turns them into one more token.

    Example::

        sparse_arch, dense_arch = member_arches("m0", schema, MemberConfig(embedding_dim=16))
        member = Member("m0", "ipnn", sparse_arch, interaction, over_arch, dense_arch)
    """
    ebc = make_ebc(name, schema, cfg.embedding_dim, init=cfg.embedding_init, init_std=cfg.embedding_init_std,
                   seed=cfg.seed)
    sparse_arch = SparseArch(ebc, schema.sparse_names)
    dense_arch = DenseArch(schema.num_dense, cfg.embedding_dim) if schema.num_dense else None
    return sparse_arch, dense_arch
