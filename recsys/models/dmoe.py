"""D-MoE, the de-correlated mixture of experts (arXiv 2505.17925).

E heterogeneous interaction experts, each on its OWN embedding set (set e of the
member's one EBC, tables ``<member>__e{e}__<field>``), a softmax gate, and a
loss term that pushes the experts' outputs apart so that the mixture gains what
an ensemble gains from diverse members::

    z_e = MLP_e(I_e(tokens_e))                    [B, P]   expert e, P = expert_mlp[-1]
    g   = softmax(W_g [tokens_1; ...; tokens_E])  [B, E]   gate on all sets' embeddings
    h   = sum_e g_e * z_e                         [B, P]   -> MLP tail -> logit

Experts (knob ``experts``, names joined by '-', repeats allowed):

- ``cross``: DCNv2 matrix cross network (``torchrec.modules.crossnet.CrossNet``)
  on the flattened tokens;
- ``ipnn``: all pairwise inner products of the tokens, concatenated with the
  flattened tokens (IPNN's product layer);
- ``mlp``: the flattened tokens alone (a plain MLP expert).

De-correlation loss.  A training forward keeps the experts' outputs; the term
is computed from them only when ``auxiliary_loss()`` is called, so a forward
costs exactly ``flops_per_example`` in train and eval mode alike, and eval
forwards keep nothing.  Standardize each expert's
output over the batch, zhat_e = (z_e - mean_B z_e) / (std_B z_e + eps), take
the cross-correlation matrix of every expert pair, C_ij = zhat_i^T zhat_j / B
(entry [a, b] is the Pearson correlation of dim a of expert i with dim b of
expert j), and penalize its squared Frobenius norm scaled by 1/P::

    L_dec = decorrelation_weight * mean_{i<j} ||C_ij||_F^2 / P

It is ~P/B for independent experts, and >= 1 (times the weight) for identical
ones, since the diagonal of C_ii alone is P ones.  It is returned by
``auxiliary_loss()`` and added to the group's BCE by the group loss;
``auxiliary_loss()`` then drops the kept outputs, so the batch's autograd graph
is not held until the next forward (a second call returns None).

Rank-count independence.  The batch moments (sums of z_e, z_e^2 and z_i^T z_j)
are summed over the group's ranks before the correlations are formed, so on G
ranks the term is the one of the whole global batch, as on one rank, and its
gradient is too (the all-reduce's backward sums the ranks' gradients, G times
the per-rank share, which DDP / TorchRec's gradient division then average).
The group is the one the member is sharded on: ``recsys.distributed.shard_module``
calls ``set_process_group(pg)`` on every module that has it.  Not the default
(world) group: in the parallel schedule that spans other groups, which train
other members (a collective there would mix them, or hang).  Without a group,
or of size 1, the moments are the local batch's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from recsys.data.schema import Schema
from recsys.models.blocks import MLP, num_tokens
from recsys.models.fnn import FlattenInteraction
from recsys.models.ipnn import InnerProductInteraction
from recsys.models.member import Member
from recsys.models.multiembed import CrossFeatures, MultiSetMember, build_multi_set_member
from recsys.models.spec import MemberConfig

EXPERT_KINDS = ("cross", "ipnn", "mlp")


@dataclass
class DMoEConfig(MemberConfig):
    """``experts`` lists one expert (and one embedding set) per name; see the module doc for the loss."""

    experts: str = "cross-ipnn-mlp"
    cross_layers: int = 3
    expert_mlp: tuple[int, ...] = (512, 256)
    mlp: tuple[int, ...] = (1024, 512, 256)
    decorrelation_weight: float = 0.1

    def __post_init__(self) -> None:
        kinds = self.expert_kinds()
        bad = [k for k in kinds if k not in EXPERT_KINDS]
        if not kinds or bad:
            raise ValueError(f"bad experts {self.experts!r}; use names from {', '.join(EXPERT_KINDS)} joined by '-'")
        if not self.expert_mlp:
            raise ValueError("expert_mlp must have at least one layer (its last size is the expert output width)")
        if self.decorrelation_weight < 0:
            raise ValueError(f"decorrelation_weight must be >= 0, got {self.decorrelation_weight}")

    def expert_kinds(self) -> list[str]:
        return [k.strip().lower() for k in self.experts.split("-") if k.strip()]


class Expert(nn.Module):
    """Interaction features then an MLP: [B, T, D] -> [B, P]."""

    def __init__(self, kind: str, num_tokens: int, dim: int, cfg: DMoEConfig) -> None:
        super().__init__()
        self.kind = kind
        features: CrossFeatures | InnerProductInteraction | FlattenInteraction
        if kind == "cross":
            features = CrossFeatures(num_tokens, dim, cfg.cross_layers)
        elif kind == "ipnn":
            features = InnerProductInteraction(num_tokens, dim)
        else:
            features = FlattenInteraction(num_tokens, dim)
        self.features = features
        self.mlp = MLP(features.output_dim, cfg.expert_mlp, cfg.dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(tokens))

    def flops_per_example(self) -> int:
        return self.features.flops_per_example() + self.mlp.flops_per_example()


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

    The batch is the union of the slices of ``process_group``'s ranks (each passes
    its own ``outputs``; all must call this together), or the local batch for None.
    Moments are accumulated in float64: the raw sums are only subtracted after the
    all-reduce (one collective instead of two), and float64 keeps that exact enough.

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


class DMoEInteraction(nn.Module):
    """Experts on their own embedding sets, softmax-gated: [B, E, T, D] -> [B, P].

    A training forward keeps the expert outputs for ``decorrelation()``, which
    drops them again.

    Example::

        inter = DMoEInteraction(num_tokens=6, dim=16, cfg=DMoEConfig(expert_mlp=(32,)))
        h = inter(torch.randn(8, 3, 6, 16))   # [8, 32]
    """

    def __init__(self, num_tokens: int, dim: int, cfg: DMoEConfig) -> None:
        super().__init__()
        kinds = cfg.expert_kinds()
        self.experts = nn.ModuleList(Expert(kind, num_tokens, dim, cfg) for kind in kinds)
        self.gate = nn.Linear(len(kinds) * num_tokens * dim, len(kinds))
        self.output_dim = cfg.expert_mlp[-1]
        self.decorrelation_weight = cfg.decorrelation_weight
        self.last_expert_outputs: list[torch.Tensor] | None = None
        self.process_group: dist.ProcessGroup | None = None  # see set_process_group

    def set_process_group(self, pg: dist.ProcessGroup | None) -> None:
        """The group whose ranks' slices form the batch of the de-correlation term.

        Called by ``recsys.distributed.shard_module`` with the group's process group.
        """
        self.process_group = pg

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        z = [expert(tokens[:, e]) for e, expert in enumerate(self.experts)]  # E x [B, P]
        g = torch.softmax(self.gate(tokens.flatten(1)), dim=1)  # [B, E]
        h = (torch.stack(z, dim=1) * g.unsqueeze(2)).sum(dim=1)  # [B, E, P] -> [B, P]
        self.last_expert_outputs = z if self.training else None  # eval keeps no autograd graph alive
        return h

    def decorrelation(self) -> torch.Tensor | None:
        """The weighted de-correlation term of the last training forward, or None.

        Consumes the kept outputs: the returned term holds the graph from here on.
        """
        outputs, self.last_expert_outputs = self.last_expert_outputs, None
        if outputs is None:
            return None
        return self.decorrelation_weight * decorrelation_loss(outputs, process_group=self.process_group)

    def flops_per_example(self) -> int:
        gate = 2 * self.gate.in_features * self.gate.out_features
        return gate + sum(expert.flops_per_example() for expert in self.experts)


class DMoEMember(MultiSetMember):
    """A multi-set member whose ``auxiliary_loss`` is the experts' de-correlation term."""

    def auxiliary_loss(self) -> torch.Tensor | None:
        return self.interaction.decorrelation()  # type: ignore[operator]


def build_dmoe(cfg: DMoEConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("dmoe:experts=cross-ipnn-mlp,expert_mlp=128,mlp=256", schema, name="moe0")
        logits = member(dense, kjt)        # [B]
        aux = member.auxiliary_loss()      # scalar tensor after a training forward
    """
    E = len(cfg.expert_kinds())
    interaction = DMoEInteraction(num_tokens(schema), cfg.embedding_dim, cfg)
    return build_multi_set_member(DMoEMember, "dmoe", cfg, schema, name, E, interaction, cfg.mlp)
