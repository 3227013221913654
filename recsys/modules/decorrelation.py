"""D-MoE's de-correlation term (arXiv 2505.17925): pushes experts' outputs apart.

Standardize each expert's output over the batch, zhat_e = (z_e - mean_B z_e) /
(std_B z_e + eps), take the cross-correlation matrix of every expert pair,
C_ij = zhat_i^T zhat_j / B (entry [a, b] is the Pearson correlation of dim a of
expert i with dim b of expert j), and penalize its squared Frobenius norm scaled
by 1/P::

    L_dec = mean_{i<j} ||C_ij||_F^2 / P

It is ~P/B for independent experts, and >= 1 for identical ones, since the
diagonal of C_ii alone is P ones.

Rank-count independence.  The batch moments (sums of z_e, z_e^2 and z_i^T z_j)
are summed over a process group's ranks before the correlations are formed, so on
G ranks the term is the one of the whole global batch, as on one rank, and its
gradient is too (the all-reduce's backward sums the ranks' gradients, G times
the per-rank share, which DDP / TorchRec's gradient division then average).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.fx._symbolic_trace import is_fx_symbolic_tracing


class _SumOverGroup(torch.autograd.Function):
    """all_reduce(SUM) with the matching backward (the gradient is summed too).

    ``torch.distributed.nn.functional.all_reduce`` does the same but is deprecated
    in torch 2.13, and ``_functional_collectives.all_reduce`` has no backward.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, pg: dist.ProcessGroup) -> torch.Tensor:
        ctx.pg = pg
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=pg)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=ctx.pg)
        return out, None


def decorrelation_loss(
    outputs: list[torch.Tensor], eps: float = 1e-5, process_group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """mean over expert pairs i<j of ||C_ij||_F^2 / P, C_ij the [P, P] batch cross-correlation.

    ``outputs`` is E tensors [B, P]; the result is a scalar.  The batch is the union
    of the slices of ``process_group``'s ranks (each passes its own ``outputs``; all
    must call this together), or the local batch for None.  Moments are accumulated
    in float64: the raw sums are only subtracted after the all-reduce (one collective
    instead of two), and float64 keeps that exact enough.

    Example::

        z = torch.randn(256, 8)
        decorrelation_loss([z, z])                      # >= 1: identical experts
        decorrelation_loss([z, torch.randn(256, 8)])    # ~ P/B = 0.03
    """
    E = len(outputs)
    if E < 2:  # one expert: nothing to de-correlate
        return outputs[0].new_zeros(())
    P = outputs[0].shape[1]
    z = torch.stack(outputs).double()  # [E, B, P]
    pairs = [(i, j) for i in range(E) for j in range(i + 1, E)]
    cross = torch.stack([z[i].t() @ z[j] for i, j in pairs])  # [E(E-1)/2, P, P]
    count = z.new_ones(1) * z.shape[1]  # B; no float(): stays traceable under FX
    # One flat vector: [count | sum z (E*P) | sum z^2 (E*P) | sum z_i^T z_j]
    flat = torch.cat([count, z.sum(1).flatten(), z.pow(2).sum(1).flatten(), cross.flatten()])
    if process_group is not None and process_group.size() > 1 and not is_fx_symbolic_tracing():
        # Skipped while FX traces (TorchRec's pipeline traces only to find the
        # sharded modules' inputs and then runs the original forward).
        flat = _SumOverGroup.apply(flat, process_group)
    n = flat[0]
    mean = flat[1 : 1 + E * P].view(E, P) / n  # [E, P]
    sq = flat[1 + E * P : 1 + 2 * E * P].view(E, P) / n
    # Population std, [E, P]; the clamp keeps sqrt's gradient finite for dead units.
    std = (sq - mean.pow(2)).clamp_min(eps * eps).sqrt() + eps
    cross = flat[1 + 2 * E * P :].view(len(pairs), P, P) / n
    terms = [
        ((cross[k] - mean[i].unsqueeze(1) * mean[j].unsqueeze(0)) / (std[i].unsqueeze(1) * std[j].unsqueeze(0)))
        .pow(2)
        .sum()
        / P
        for k, (i, j) in enumerate(pairs)
    ]
    return torch.stack(terms).mean().to(outputs[0].dtype)
