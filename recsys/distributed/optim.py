"""The optimizer of a sharded group: Adam on the dense part, combined with the embeddings' own.

Why: fused embedding optimizers run inside backward and keep their state in the DMP, so the
dense parameters need their own optimizer and the two must checkpoint as one
(``CombinedOptimizer``, keys ``dense.`` / ``embedding.``).

Example::

    opt = make_optimizer(dmp, lr=1e-3, emb_opt=EmbeddingOptimizerConfig("rowwise_adagrad", lr=0.01))
    loss.backward(); opt.step(); opt.zero_grad()
"""
from __future__ import annotations

import torch
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardedModule
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.config.schema import EmbeddingOptimizerConfig


def _sharded_params(dmp: DistributedModelParallel) -> dict[str, nn.Parameter]:
    """Embedding parameters (those owned by sharded modules), by FQN."""
    out: dict[str, nn.Parameter] = {}
    for prefix, m in dmp.named_modules():
        if isinstance(m, ShardedModule):
            for name, p in m.named_parameters():
                out[f"{prefix}.{name}"] = p
    return out


def make_optimizer(
    dmp: DistributedModelParallel,
    lr: float,
    weight_decay: float = 0.0,
    *,
    emb_opt: EmbeddingOptimizerConfig,
) -> CombinedOptimizer:
    """Adam on the dense parameters, combined with the embedding optimizer.

    Fused kernels: the embeddings are updated inside backward; ``dmp.fused_optimizer``
    carries their state (and lr) for checkpoints.  Dense kernel (Adam on CPU):
    ``KeyedOptimizerWrapper(torch.optim.Adam)`` over the embedding shards, with the
    lr/eps/weight decay of ``emb_opt`` -- pass the config given to ``shard_module``.
    ``state_dict()`` / ``load_state_dict()`` work on the result (torchrec
    ``CombinedOptimizer``, keys prefixed ``dense.`` / ``embedding.``).
    """
    emb_params = _sharded_params(dmp)
    emb_ids = {id(p) for p in emb_params.values()}
    dense_params = {
        n: p
        for n, p in in_backward_optimizer_filter(dmp.named_parameters())
        if id(p) not in emb_ids and p.requires_grad
    }
    parts: list[tuple[str, KeyedOptimizer]] = [
        ("dense", KeyedOptimizerWrapper(dense_params, lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=weight_decay)))
    ]
    fused = [n for n, p in emb_params.items() if hasattr(p, "_in_backward_optimizers")]
    if fused:
        parts.append(("embedding", dmp.fused_optimizer))
    unfused = {n: p for n, p in emb_params.items() if not hasattr(p, "_in_backward_optimizers")}
    if unfused:
        parts.append(
            (
                "embedding_dense",
                KeyedOptimizerWrapper(
                    unfused,
                    lambda ps: torch.optim.Adam(ps, lr=emb_opt.lr, eps=emb_opt.eps, weight_decay=emb_opt.weight_decay),
                ),
            )
        )
    return CombinedOptimizer(parts)
