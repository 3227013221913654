"""Exact inference cost of one member: dense and embedding parameters, FLOPs and embedding
bytes per example, and (optionally) measured latency.

Why exact: the study compares an M-member ensemble with one scaled-up model at the same
budget, so estimates would blur the very differences it measures.

Example::

    b = member_budget(build_member("dcnv2", schema, "m0"), schema, batch_size=1024)
    b.dense_params, b.embedding_params, b.flops_per_example, b.latency_ms
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recsys.budget.latency import forward_latency_ms
from recsys.data.schema import Schema
from recsys.models.member import Member

_EMBEDDING_MODULES = (EmbeddingBagCollection, EmbeddingCollection, nn.Embedding, nn.EmbeddingBag)


@dataclass
class MemberBudget:
    name: str
    spec: str
    dense_params: int
    embedding_params: int
    flops_per_example: int
    embedding_bytes_per_example: int
    latency_ms: float | None = None  # median forward time at `batch_size`; None = not measured
    batch_size: int = 0

    @property
    def params(self) -> int:
        return self.dense_params + self.embedding_params


def _embedding_param_ids(module: nn.Module) -> set[int]:
    return {id(p) for m in module.modules() if isinstance(m, _EMBEDDING_MODULES) for p in m.parameters()}


def count_params(module: nn.Module) -> tuple[int, int]:
    """(dense, embedding) parameter counts; shared parameters are counted once."""
    emb_ids = _embedding_param_ids(module)
    dense = emb = 0
    for p in module.parameters():  # parameters() de-duplicates shared tensors
        if id(p) in emb_ids:
            emb += p.numel()
        else:
            dense += p.numel()
    return dense, emb


def embedding_bytes_per_example(module: nn.Module) -> int:
    """Bytes of embedding rows read per example: one row per (table, feature) pair.

    Only TorchRec collections are counted: they carry their feature mapping.  A
    member using a bare nn.Embedding would need its own accounting (none does).
    """
    total = 0
    for m in module.modules():
        if isinstance(m, EmbeddingBagCollection):
            weights = {n: b.weight for n, b in m.embedding_bags.items()}
            configs = m.embedding_bag_configs()
        elif isinstance(m, EmbeddingCollection):
            weights = {n: b.weight for n, b in m.embeddings.items()}
            configs = m.embedding_configs()
        else:
            continue
        for cfg in configs:
            total += len(cfg.feature_names) * cfg.embedding_dim * weights[cfg.name].element_size()
    return total


def member_budget(
    member: Member,
    schema: Schema,
    batch_size: int = 0,
    warmup: int = 2,
    repeats: int = 5,
    device: torch.device | str = "cpu",
) -> MemberBudget:
    """Exact counts for one member; latency too when ``batch_size > 0``.

    Example::

        b = member_budget(build_member("dcnv2", schema, "m0"), schema, batch_size=1024)
        b.flops_per_example, b.latency_ms
    """
    dense, emb = count_params(member)
    out = MemberBudget(
        name=member.name,
        spec=member.spec,
        dense_params=dense,
        embedding_params=emb,
        flops_per_example=int(member.flops_per_example()),
        embedding_bytes_per_example=embedding_bytes_per_example(member),
    )
    if batch_size > 0:
        out.latency_ms = forward_latency_ms(member, schema, batch_size, warmup, repeats, device)
        out.batch_size = batch_size
    return out
