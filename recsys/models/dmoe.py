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

De-correlation loss (``recsys.modules.decorrelation``, where its formula and
rank-count independence are written down).  A training forward keeps the experts'
outputs; the term is computed from them only when ``auxiliary_loss()`` is called,
so a forward costs exactly ``flops_per_example`` in train and eval mode alike, and
eval forwards keep nothing::

    L_dec = decorrelation_weight * mean_{i<j} ||C_ij||_F^2 / P

It is returned by ``auxiliary_loss()`` and added to the group's BCE by the group
loss; ``auxiliary_loss()`` then drops the kept outputs, so the batch's autograd
graph is not held until the next forward (a second call returns None).

The batch of the term is the whole batch of the group the member is sharded on:
``recsys.distributed.shard_module`` calls ``set_process_group(pg)`` on every module
that has it.  Not the default (world) group: in the parallel schedule that spans
other groups, which train other members (a collective there would mix them, or
hang).  Without a group, or of size 1, the moments are the local batch's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from recsys.data.schema import Schema
from recsys.models.member import Member, num_tokens
from recsys.models.multiembed import MultiSetMember, build_multi_set_member
from recsys.models.protocols import total_flops
from recsys.models.spec import MemberConfig, check_layer_sizes
from recsys.modules.cross import CrossFeatures
from recsys.modules.decorrelation import decorrelation_loss
from recsys.modules.flatten import FlattenInteraction
from recsys.modules.inner_product import InnerProductInteraction
from recsys.modules.mlp import MLP

__all__ = [
    "EXPERT_KINDS", "DMoEConfig", "DMoEInteraction", "DMoEMember", "Expert", "build_dmoe", "decorrelation_loss",
]

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
        check_layer_sizes(expert_mlp=self.expert_mlp, mlp=self.mlp)

    def expert_kinds(self) -> list[str]:
        return [k.strip().lower() for k in self.experts.split("-") if k.strip()]


class Expert(nn.Module):
    """Interaction features then an MLP: [B, T, D] -> [B, P].

    Example::

        expert = Expert("ipnn", num_tokens=6, dim=16, cfg=DMoEConfig(expert_mlp=(32,)))
        z = expert(torch.randn(8, 6, 16))   # [8, 32]
    """

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
        return gate + total_flops(self.experts)


class DMoEMember(MultiSetMember):
    """A multi-set member whose ``auxiliary_loss`` is the experts' de-correlation term.

    Example::

        member = build_member("dmoe", schema, "moe0")
        member.train()(dense, kjt)
        member.auxiliary_loss()   # scalar tensor; None after eval forwards or a second call
    """

    interaction: DMoEInteraction

    def auxiliary_loss(self) -> torch.Tensor | None:
        return self.interaction.decorrelation()


def build_dmoe(cfg: DMoEConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("dmoe:experts=cross-ipnn-mlp,expert_mlp=128,mlp=256", schema, name="moe0")
        logits = member(dense, kjt)        # [B]
        aux = member.auxiliary_loss()      # scalar tensor after a training forward
    """
    E = len(cfg.expert_kinds())
    interaction = DMoEInteraction(num_tokens(schema), cfg.width, cfg)
    return build_multi_set_member(DMoEMember, "dmoe", cfg, schema, name, E, interaction, cfg.mlp)
